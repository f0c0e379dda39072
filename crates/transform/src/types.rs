//! capstan's column types on Arrow, and the type classes formulas and steps check against.

use arrow::datatypes::{DataType, TimeUnit};
use capstan_core::visual::ColumnType;

pub fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

pub fn is_int(t: &DataType) -> bool {
    t.is_integer()
}

pub fn is_float(t: &DataType) -> bool {
    t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

pub fn is_numeric(t: &DataType) -> bool {
    is_int(t) || is_float(t)
}

pub fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
    )
}

pub fn is_bool(t: &DataType) -> bool {
    matches!(t, DataType::Boolean)
}

/// A literal `null`, which fits any type.
pub fn is_null(t: &DataType) -> bool {
    matches!(t, DataType::Null)
}

/// The Arrow type capstan writes for a column type.
pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
    }
}

/// The capstan name of an Arrow type, in messages and schemas (`string`, `int64`…); other
/// types by Arrow's name.
pub fn type_name(t: &DataType) -> String {
    match t {
        t if is_string(t) => "string".into(),
        DataType::Int64 => "int64".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int64".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "int64".into(),
        DataType::Float64 | DataType::Float32 => "float64".into(),
        DataType::Boolean => "bool".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        DataType::Null => "null".into(),
        other => other.to_string(),
    }
}

/// The type capstan stores a computed column as: its own six types, so what one engine
/// writes reads the same everywhere (Utf8View becomes Utf8, Int32 becomes Int64…).
pub fn stored_type(t: &DataType) -> DataType {
    match t {
        t if is_string(t) => DataType::Utf8,
        t if is_int(t) => DataType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Decimal128(..) | DataType::Decimal256(..) => DataType::Float64,
        DataType::Date64 => DataType::Date32,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        // A column of only nulls: a string column of nulls.
        DataType::Null => DataType::Utf8,
        other => other.clone(),
    }
}

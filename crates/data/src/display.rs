//! Batches as people and scripts read them: a text table, or JSON rows.

use arrow::array::{Array, BooleanArray, Float64Array, Int64Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// A text table (`capstan dataset head`).
pub fn table(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .map(|t| t.to_string())
        .unwrap_or_else(|e| format!("cannot display the rows: {e}"))
}

/// JSON rows, numbers and booleans as such, other types as their text.
pub fn json_rows(batches: &[RecordBatch]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let options = FormatOptions::default();
    for b in batches {
        let schema = b.schema();
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        for row in 0..b.num_rows() {
            let mut obj = serde_json::Map::new();
            for (i, field) in schema.fields().iter().enumerate() {
                let col = b.column(i);
                let v = if col.is_null(row) {
                    serde_json::Value::Null
                } else {
                    match field.data_type() {
                        DataType::Int64 => col
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .map_or(serde_json::Value::Null, |a| a.value(row).into()),
                        DataType::Float64 => col
                            .as_any()
                            .downcast_ref::<Float64Array>()
                            .and_then(|a| serde_json::Number::from_f64(a.value(row)))
                            .map_or(serde_json::Value::Null, serde_json::Value::Number),
                        DataType::Boolean => col
                            .as_any()
                            .downcast_ref::<BooleanArray>()
                            .map_or(serde_json::Value::Null, |a| a.value(row).into()),
                        _ => formatters[i]
                            .as_ref()
                            .map_or(serde_json::Value::Null, |f| f.value(row).to_string().into()),
                    }
                };
                obj.insert(field.name().clone(), v);
            }
            out.push(serde_json::Value::Object(obj));
        }
    }
    out
}

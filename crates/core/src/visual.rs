//! Visual recipes: typed, versioned specs of data transformations that capstan's own engine
//! runs (DataFusion, in `capstan-transform`) or compiles to PySpark.
//!
//! A visual recipe's TOML holds its spec in a table named after its kind:
//!
//! ```toml
//! kind = "group"
//! inputs = ["wine"]
//! outputs = ["wine_by_cultivar_group"]
//!
//! [group]
//! version = 1
//! keys = ["cultivar"]
//! aggregates = [{ column = "alcohol", functions = ["avg", "max"] }]
//! ```
//!
//! The spec types are plain serde types (strict: an unknown key is an error), so the same value
//! travels to the engine as JSON. Where each part of a spec was written is kept beside it, in
//! [`SpecLocs`], keyed by the part's path (`steps[2].column`), so that an error found later —
//! an unknown column during schema propagation, say — still points at its file and line.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::de::DeValue;

use crate::diag::{FileId, Loc, SourceMap};
use crate::model::RecipeKind;

/// The spec versions this capstan reads.
pub const SPEC_VERSION: u32 = 1;

/// A visual recipe's spec, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisualSpec {
    Prepare(PrepareSpec),
    Group(GroupSpec),
    Window(WindowSpec),
    Join(JoinSpec),
    Stack(StackSpec),
    Split(SplitSpec),
    Sort(SortSpec),
    TopN(TopNSpec),
    Distinct(DistinctSpec),
    Pivot(PivotSpec),
    Filter(FilterSpec),
    Sync(SyncSpec),
}

/// A visual recipe as loaded: its spec and where each part was written.
#[derive(Clone, Debug, PartialEq)]
pub struct VisualRecipe {
    pub spec: VisualSpec,
    pub locs: SpecLocs,
}

fn default_version() -> u32 {
    SPEC_VERSION
}

fn yes() -> bool {
    true
}

// --- Prepare ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// Applied in order; each sees the columns the previous one left.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// A literal value in a spec (a fill value, a value to match).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Literal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x}"),
            Literal::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// What a filtering step does with the rows its condition matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowAction {
    /// Keep the matching rows, remove the others.
    #[default]
    Keep,
    /// Remove the matching rows.
    Remove,
    /// Keep every row; set the matching rows' cell in `column` to null.
    Clear,
    /// Keep every row; add the boolean column `flag_column`, true where the condition matches.
    Flag,
}

/// How a value is matched against a cell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Matching {
    /// The whole cell equals the value.
    #[default]
    Exact,
    /// The cell contains the value.
    Substring,
    /// The value is a regular expression found in the cell.
    Regex,
}

/// What a formula does where it cannot compute a value (a division by zero, a bad date).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The cell is null.
    #[default]
    Null,
    /// The run fails, naming the step and the row's value.
    Fail,
}

/// The column types of capstan datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Bool,
    Date,
    Timestamp,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMode {
    Upper,
    Lower,
    /// Leading and trailing whitespace removed.
    Trim,
    /// Trimmed, and every run of whitespace inside made one space.
    NormalizeSpaces,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundMode {
    #[default]
    Round,
    Floor,
    Ceil,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyHow {
    /// A row goes when any of the columns is empty.
    #[default]
    Any,
    /// A row goes when all of the columns are empty.
    All,
}

/// Date and time units, for parts, differences and truncation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateUnit {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
}

impl DateUnit {
    pub const NAMES: [&'static str; 8] = [
        "year", "quarter", "month", "week", "day", "hour", "minute", "second",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DateUnit::Year => "year",
            DateUnit::Quarter => "quarter",
            DateUnit::Month => "month",
            DateUnit::Week => "week",
            DateUnit::Day => "day",
            DateUnit::Hour => "hour",
            DateUnit::Minute => "minute",
            DateUnit::Second => "second",
        }
    }

    pub fn parse(s: &str) -> Option<DateUnit> {
        Self::NAMES.iter().position(|n| *n == s).map(|i| {
            [
                DateUnit::Year,
                DateUnit::Quarter,
                DateUnit::Month,
                DateUnit::Week,
                DateUnit::Day,
                DateUnit::Hour,
                DateUnit::Minute,
                DateUnit::Second,
            ][i]
        })
    }
}

/// A date part a `date_part` step extracts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatePart {
    Year,
    Quarter,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// 1 = Monday … 7 = Sunday (ISO 8601).
    DayOfWeek,
    DayOfYear,
}

impl DatePart {
    pub fn as_str(self) -> &'static str {
        match self {
            DatePart::Year => "year",
            DatePart::Quarter => "quarter",
            DatePart::Month => "month",
            DatePart::Day => "day",
            DatePart::Hour => "hour",
            DatePart::Minute => "minute",
            DatePart::Second => "second",
            DatePart::DayOfWeek => "day_of_week",
            DatePart::DayOfYear => "day_of_year",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochUnit {
    #[default]
    Seconds,
    Milliseconds,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    pub find: String,
    pub replace: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A formula: the condition.
    pub when: String,
    /// A formula: the value where the condition holds.
    pub then: String,
}

/// A Prepare step (a processor). `type` names it; the other keys are its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    // Columns.
    /// Renames columns: `columns = { old = "new" }`.
    Rename { columns: BTreeMap<String, String> },
    /// Keeps only these columns, in this order.
    Keep { columns: Vec<String> },
    /// Removes these columns.
    Remove { columns: Vec<String> },
    /// Moves these columns first, in this order; the others follow as they were.
    Reorder { columns: Vec<String> },
    /// Copies a column.
    Copy { column: String, to: String },
    // Formulas.
    /// Sets `column` (new or existing) to a formula's value.
    Formula {
        column: String,
        expression: String,
        #[serde(default)]
        on_error: OnError,
    },
    /// If/then/else: the first rule whose condition holds gives the value, else `otherwise`.
    IfThenElse {
        to: String,
        rules: Vec<Rule>,
        #[serde(default, rename = "else")]
        otherwise: Option<String>,
    },
    // Filters.
    /// Rows whose cell matches one of the values.
    FilterValue {
        column: String,
        values: Vec<Literal>,
        #[serde(default)]
        matching: Matching,
        #[serde(default)]
        action: RowAction,
        #[serde(default)]
        flag_column: Option<String>,
    },
    /// Rows whose number lies in [min, max] (either bound may be left out).
    FilterRange {
        column: String,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        action: RowAction,
        #[serde(default)]
        flag_column: Option<String>,
    },
    /// Rows whose date lies in [from, to] (ISO 8601 dates; either may be left out).
    FilterDate {
        column: String,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        action: RowAction,
        #[serde(default)]
        flag_column: Option<String>,
    },
    /// Rows where a formula is true (null counts as false).
    FilterFormula {
        expression: String,
        #[serde(default)]
        action: RowAction,
        #[serde(default)]
        flag_column: Option<String>,
    },
    /// Removes rows whose cells are empty (null, or a string of only whitespace).
    RemoveEmpty {
        columns: Vec<String>,
        #[serde(default)]
        how: EmptyHow,
    },
    // Cleaning.
    /// Fills empty cells (null, or blank strings) with a value.
    FillEmpty {
        columns: Vec<String>,
        value: Literal,
    },
    /// Replaces text: each `find` by its `replace`, in order.
    FindReplace {
        column: String,
        replacements: Vec<Replacement>,
        #[serde(default)]
        matching: Matching,
        #[serde(default)]
        to: Option<String>,
    },
    /// Upper- or lower-cases, trims or normalises spaces.
    StringTransform {
        columns: Vec<String>,
        mode: StringMode,
    },
    /// Extracts a regular expression's groups into columns (`to`, one per group); no match:
    /// null.
    RegexExtract {
        column: String,
        pattern: String,
        to: Vec<String>,
    },
    /// Splits a column on a separator into the columns `to` (missing parts: null).
    SplitColumn {
        column: String,
        separator: String,
        to: Vec<String>,
    },
    /// Concatenates columns with a separator (empty cells are left out).
    Concat {
        columns: Vec<String>,
        #[serde(default)]
        separator: String,
        to: String,
    },
    /// Rounds numbers to `digits` decimals (half away from zero), or floors or ceils them.
    Round {
        columns: Vec<String>,
        #[serde(default)]
        digits: i32,
        #[serde(default)]
        mode: RoundMode,
    },
    /// Bounds numbers to [min, max].
    Clip {
        column: String,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
    },
    /// Replaces a number by the lower bound of its bin of `width`.
    Bin {
        column: String,
        width: f64,
        #[serde(default)]
        to: Option<String>,
    },
    /// Converts a column to another type.
    Convert {
        column: String,
        to: ColumnType,
        #[serde(default)]
        on_error: OnError,
    },
    /// Replaces values by their SHA-256 (hex), to pseudonymise them.
    Hash { columns: Vec<String> },
    // Dates.
    /// Parses text into timestamps with the first of `formats` (Java-style patterns, as
    /// `yyyy-MM-dd HH:mm:ss`) that fits; none fits: null.
    ParseDate {
        column: String,
        formats: Vec<String>,
        #[serde(default)]
        to: Option<String>,
    },
    /// Formats dates or timestamps as text with a Java-style pattern.
    FormatDate {
        column: String,
        format: String,
        #[serde(default)]
        to: Option<String>,
    },
    /// Extracts parts of a date into `<column>_<part>` columns.
    DatePart {
        column: String,
        parts: Vec<DatePart>,
    },
    /// `column - other` in whole `unit`s, truncated toward zero.
    DateDiff {
        column: String,
        other: String,
        unit: DateUnit,
        to: String,
    },
    /// Truncates timestamps to the start of their `unit`.
    DateTrunc {
        column: String,
        unit: DateUnit,
        #[serde(default)]
        to: Option<String>,
    },
    /// Reads UNIX times (seconds or milliseconds since 1970, UTC) as timestamps.
    UnixTime {
        column: String,
        #[serde(default)]
        unit: EpochUnit,
        #[serde(default)]
        to: Option<String>,
    },
    // Reshaping.
    /// Folds columns into rows: one row per column, with its name in `key_column` and its
    /// value in `value_column`.
    Fold {
        columns: Vec<String>,
        key_column: String,
        value_column: String,
    },
    /// Unfolds a column's values into columns `<prefix><value>`: 1 where the row had that value
    /// (or the row's `value_column`), else null. The values found are kept with the run.
    Unfold {
        column: String,
        #[serde(default)]
        value_column: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
        /// At most this many columns (default 100): more values fail the run.
        #[serde(default)]
        max_columns: Option<u32>,
    },
}

impl Step {
    /// The step's type, as written in `type = "..."`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Step::Rename { .. } => "rename",
            Step::Keep { .. } => "keep",
            Step::Remove { .. } => "remove",
            Step::Reorder { .. } => "reorder",
            Step::Copy { .. } => "copy",
            Step::Formula { .. } => "formula",
            Step::IfThenElse { .. } => "if_then_else",
            Step::FilterValue { .. } => "filter_value",
            Step::FilterRange { .. } => "filter_range",
            Step::FilterDate { .. } => "filter_date",
            Step::FilterFormula { .. } => "filter_formula",
            Step::RemoveEmpty { .. } => "remove_empty",
            Step::FillEmpty { .. } => "fill_empty",
            Step::FindReplace { .. } => "find_replace",
            Step::StringTransform { .. } => "string_transform",
            Step::RegexExtract { .. } => "regex_extract",
            Step::SplitColumn { .. } => "split_column",
            Step::Concat { .. } => "concat",
            Step::Round { .. } => "round",
            Step::Clip { .. } => "clip",
            Step::Bin { .. } => "bin",
            Step::Convert { .. } => "convert",
            Step::Hash { .. } => "hash",
            Step::ParseDate { .. } => "parse_date",
            Step::FormatDate { .. } => "format_date",
            Step::DatePart { .. } => "date_part",
            Step::DateDiff { .. } => "date_diff",
            Step::DateTrunc { .. } => "date_trunc",
            Step::UnixTime { .. } => "unix_time",
            Step::Fold { .. } => "fold",
            Step::Unfold { .. } => "unfold",
        }
    }
}

/// Every Prepare step type, as written in `type = "..."`.
pub const STEP_TYPES: [&str; 31] = [
    "rename",
    "keep",
    "remove",
    "reorder",
    "copy",
    "formula",
    "if_then_else",
    "filter_value",
    "filter_range",
    "filter_date",
    "filter_formula",
    "remove_empty",
    "fill_empty",
    "find_replace",
    "string_transform",
    "regex_extract",
    "split_column",
    "concat",
    "round",
    "clip",
    "bin",
    "convert",
    "hash",
    "parse_date",
    "format_date",
    "date_part",
    "date_diff",
    "date_trunc",
    "unix_time",
    "fold",
    "unfold",
];

// --- Group, window ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    /// The sample standard deviation.
    Stddev,
    Median,
    /// The first value in `order_by` order (required for first and last).
    First,
    Last,
}

impl AggFn {
    pub fn as_str(self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::CountDistinct => "count_distinct",
            AggFn::Sum => "sum",
            AggFn::Avg => "avg",
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Stddev => "stddev",
            AggFn::Median => "median",
            AggFn::First => "first",
            AggFn::Last => "last",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    pub column: String,
    pub functions: Vec<AggFn>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortKey {
    pub column: String,
    #[serde(default)]
    pub descending: bool,
    /// Where nulls go; default: first when ascending, last when descending.
    #[serde(default)]
    pub nulls_first: Option<bool>,
}

impl SortKey {
    pub fn nulls_first(&self) -> bool {
        self.nulls_first.unwrap_or(!self.descending)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// The columns to group by; none: one row for the whole input.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Output columns are named `<column>_<function>`.
    #[serde(default)]
    pub aggregates: Vec<Aggregate>,
    /// Adds `count`, the rows per group.
    #[serde(default = "yes")]
    pub count: bool,
    /// The order `first` and `last` see.
    #[serde(default)]
    pub order_by: Vec<SortKey>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowFn {
    RowNumber,
    Rank,
    DenseRank,
    Lag,
    Lead,
    Sum,
    Avg,
    Min,
    Max,
    Count,
    First,
    Last,
}

impl WindowFn {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowFn::RowNumber => "row_number",
            WindowFn::Rank => "rank",
            WindowFn::DenseRank => "dense_rank",
            WindowFn::Lag => "lag",
            WindowFn::Lead => "lead",
            WindowFn::Sum => "sum",
            WindowFn::Avg => "avg",
            WindowFn::Min => "min",
            WindowFn::Max => "max",
            WindowFn::Count => "count",
            WindowFn::First => "first",
            WindowFn::Last => "last",
        }
    }

    /// Ranking and offset functions number rows; they need an order and take no frame.
    pub fn is_ranking(self) -> bool {
        matches!(
            self,
            WindowFn::RowNumber
                | WindowFn::Rank
                | WindowFn::DenseRank
                | WindowFn::Lag
                | WindowFn::Lead
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowCompute {
    pub function: WindowFn,
    /// The column aggregated or offset (not for row_number, rank, dense_rank).
    #[serde(default)]
    pub column: Option<String>,
    /// lag and lead: how many rows back or ahead (default 1).
    #[serde(default)]
    pub offset: Option<u32>,
    pub to: String,
}

/// A frame in rows around the current one; `None` on a side: unbounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    #[serde(default)]
    pub preceding: Option<u32>,
    #[serde(default)]
    pub following: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(default)]
    pub partition_by: Vec<String>,
    #[serde(default)]
    pub order_by: Vec<SortKey>,
    /// Aggregates' frame. Without one, an aggregate sees its whole partition (not, as in SQL,
    /// the rows up to the current one), on every engine.
    #[serde(default)]
    pub frame: Option<Frame>,
    pub compute: Vec<WindowCompute>,
}

// --- Join, stack, split ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinType {
    #[default]
    Inner,
    Left,
    Right,
    Full,
    LeftAnti,
    RightAnti,
    Cross,
}

impl JoinType {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinType::Inner => "inner",
            JoinType::Left => "left",
            JoinType::Right => "right",
            JoinType::Full => "full",
            JoinType::LeftAnti => "left_anti",
            JoinType::RightAnti => "right_anti",
            JoinType::Cross => "cross",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinKey {
    /// A column of the first input.
    pub left: String,
    /// A column of the second input.
    pub right: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(default, rename = "type")]
    pub join_type: JoinType,
    /// Equality conditions, all of which must hold (none for a cross join).
    #[serde(default)]
    pub on: Vec<JoinKey>,
    /// The output that receives the first input's rows that matched nothing.
    #[serde(default)]
    pub unmatched_left: Option<String>,
    /// The output that receives the second input's rows that matched nothing.
    #[serde(default)]
    pub unmatched_right: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// Adds a column holding the name of each row's input.
    #[serde(default)]
    pub origin_column: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRule {
    pub output: String,
    /// A formula; a row goes to the first rule whose condition is true.
    pub when: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    pub rules: Vec<SplitRule>,
    /// The output of rows that no rule took; none: they are dropped.
    #[serde(default)]
    pub otherwise: Option<String>,
}

// --- Sort, top N, distinct, pivot, filter, sync ----------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    pub by: Vec<SortKey>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopNSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// The order; ties are broken by the remaining columns, in order, so every engine keeps
    /// the same rows.
    pub by: Vec<SortKey>,
    /// Per group of these columns; none: over the whole input.
    #[serde(default)]
    pub partition_by: Vec<String>,
    pub top: u64,
    /// The output that receives the rows not kept.
    #[serde(default)]
    pub rest: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistinctSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// Distinct on these columns (the output has only them); none: on all columns.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Adds the number of input rows each output row stands for.
    #[serde(default)]
    pub count_column: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PivotSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// The row identifiers: one output row per distinct combination.
    pub index: Vec<String>,
    /// The column whose values become columns.
    pub column: String,
    /// What each cell holds: `<value>_<column>_<function>`; none: `<value>_count`.
    #[serde(default)]
    pub aggregates: Vec<Aggregate>,
    /// At most this many values (default 100): more fail the run.
    #[serde(default)]
    pub max_columns: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// The first this many rows (after the filter), in input order.
    pub rows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// A formula; rows where it is true are kept (null counts as false).
    #[serde(default, rename = "where")]
    pub condition: Option<String>,
    #[serde(default)]
    pub sample: Option<Sample>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    #[serde(default = "default_version")]
    pub version: u32,
    /// The columns copied (in this order); none: all.
    #[serde(default)]
    pub columns: Vec<String>,
}

impl VisualSpec {
    pub fn kind(&self) -> RecipeKind {
        match self {
            VisualSpec::Prepare(_) => RecipeKind::Prepare,
            VisualSpec::Group(_) => RecipeKind::Group,
            VisualSpec::Window(_) => RecipeKind::Window,
            VisualSpec::Join(_) => RecipeKind::Join,
            VisualSpec::Stack(_) => RecipeKind::Stack,
            VisualSpec::Split(_) => RecipeKind::Split,
            VisualSpec::Sort(_) => RecipeKind::Sort,
            VisualSpec::TopN(_) => RecipeKind::TopN,
            VisualSpec::Distinct(_) => RecipeKind::Distinct,
            VisualSpec::Pivot(_) => RecipeKind::Pivot,
            VisualSpec::Filter(_) => RecipeKind::Filter,
            VisualSpec::Sync(_) => RecipeKind::Sync,
        }
    }

    pub fn version(&self) -> u32 {
        match self {
            VisualSpec::Prepare(s) => s.version,
            VisualSpec::Group(s) => s.version,
            VisualSpec::Window(s) => s.version,
            VisualSpec::Join(s) => s.version,
            VisualSpec::Stack(s) => s.version,
            VisualSpec::Split(s) => s.version,
            VisualSpec::Sort(s) => s.version,
            VisualSpec::TopN(s) => s.version,
            VisualSpec::Distinct(s) => s.version,
            VisualSpec::Pivot(s) => s.version,
            VisualSpec::Filter(s) => s.version,
            VisualSpec::Sync(s) => s.version,
        }
    }

    /// Every formula in the spec, with its path (for its location).
    pub fn formulas(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        match self {
            VisualSpec::Prepare(p) => {
                for (i, step) in p.steps.iter().enumerate() {
                    match step {
                        Step::Formula { expression, .. }
                        | Step::FilterFormula { expression, .. } => {
                            out.push((format!("steps[{i}].expression"), expression.as_str()))
                        }
                        Step::IfThenElse {
                            rules, otherwise, ..
                        } => {
                            for (j, r) in rules.iter().enumerate() {
                                out.push((format!("steps[{i}].rules[{j}].when"), r.when.as_str()));
                                out.push((format!("steps[{i}].rules[{j}].then"), r.then.as_str()));
                            }
                            if let Some(e) = otherwise {
                                out.push((format!("steps[{i}].else"), e.as_str()));
                            }
                        }
                        _ => {}
                    }
                }
            }
            VisualSpec::Split(s) => {
                for (i, r) in s.rules.iter().enumerate() {
                    out.push((format!("rules[{i}].when"), r.when.as_str()));
                }
            }
            VisualSpec::Filter(f) => {
                if let Some(c) = &f.condition {
                    out.push(("where".into(), c.as_str()));
                }
            }
            _ => {}
        }
        out
    }
}

// --- Where each part was written -------------------------------------------------------------

/// Where each part of a spec was written: `path` → location of its value, for paths such as
/// `keys[0]`, `steps[2]`, `steps[2].column`. The spec table itself is the empty path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecLocs {
    /// The name of the spec's table (`prepare`, `group`…), to name fields in diagnostics.
    pub table: String,
    map: BTreeMap<String, Loc>,
    /// Where each string value starts in its file (after the opening quote), for formulas:
    /// their errors point at the character.
    starts: BTreeMap<String, (Loc, bool)>,
}

impl SpecLocs {
    /// No locations yet, for the spec table `table`.
    pub(crate) fn named(table: &str) -> SpecLocs {
        SpecLocs {
            table: table.to_string(),
            ..SpecLocs::default()
        }
    }

    /// The location of `path`, or of the nearest enclosing part that has one.
    pub fn loc(&self, path: &str) -> Loc {
        let mut p = path;
        loop {
            if let Some(l) = self.map.get(p) {
                return *l;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.map.get("").copied().unwrap_or(Loc::NOWHERE),
            }
        }
    }

    /// The location of the character at byte `offset` of the string value at `path` (a
    /// formula). Exact for strings on one line without escapes, else the string's own start.
    pub fn loc_in(&self, path: &str, text: &str, offset: usize) -> Loc {
        match self.starts.get(path) {
            Some((start, true)) if !text.contains('\n') => {
                let chars = text.get(..offset).map(|s| s.chars().count()).unwrap_or(0);
                Loc {
                    col: start.col + chars as u32,
                    ..*start
                }
            }
            _ => self.loc(path),
        }
    }

    /// The field name of `path` in a diagnostic: `group.keys[0]`.
    pub fn field(&self, path: &str) -> String {
        if path.is_empty() {
            self.table.clone()
        } else {
            format!("{}.{path}", self.table)
        }
    }

    pub(crate) fn record(
        &mut self,
        sources: &SourceMap,
        file: FileId,
        text: &str,
        path: String,
        v: &toml::Spanned<DeValue<'_>>,
    ) {
        let span = v.span();
        let loc = sources.loc(file, &span);
        if let DeValue::String(s) = v.get_ref() {
            // `"..."` or `'...'` on one line with nothing escaped: the value starts one past
            // the quote, and its characters are the file's.
            let raw = text.get(span.clone()).unwrap_or("");
            let plain =
                raw.len() == s.len() + 2 && !raw.starts_with("\"\"\"") && !raw.starts_with("'''");
            let start = sources.loc(file, &(span.start + 1..span.start + 1));
            self.starts.insert(path.clone(), (start, plain));
        }
        match v.get_ref() {
            DeValue::Table(t) => {
                for (k, child) in t.iter() {
                    let p = if path.is_empty() {
                        k.get_ref().to_string()
                    } else {
                        format!("{path}.{}", k.get_ref())
                    };
                    self.record(sources, file, text, p, child);
                }
            }
            DeValue::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    self.record(sources, file, text, format!("{path}[{i}]"), child);
                }
            }
            _ => {}
        }
        self.map.insert(path, loc);
    }
}

/// Why a spec could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecError {
    pub span: Option<Range<usize>>,
    pub message: String,
    pub help: Option<String>,
}

impl SpecError {
    /// serde's refusal of a spec, with an unknown key or value named as `check` names them
    /// (and the nearest valid one).
    pub(crate) fn from_toml(e: &toml::de::Error) -> SpecError {
        let message = e.message().trim().to_string();
        match unknown_name(&message) {
            Some((what, name, help)) => SpecError {
                span: e.span(),
                message: format!("unknown {what} `{name}`"),
                help: Some(help),
            },
            None => SpecError {
                span: e.span(),
                message,
                help: None,
            },
        }
    }
}

/// Reads the spec of a visual recipe of `kind` from its file's text, with where each part was
/// written. `table` is the spec's table in the parsed document, if the file has one.
pub fn read_spec(
    kind: RecipeKind,
    text: &str,
    table: Option<&toml::Spanned<DeValue<'_>>>,
    sources: &SourceMap,
    file: FileId,
) -> Result<VisualRecipe, SpecError> {
    let name = kind.as_str();
    let Some(table) = table else {
        return Err(SpecError {
            span: None,
            message: format!("a {name} recipe needs its spec in a [{name}] table"),
            help: Some(format!(
                "see the {name} recipe in the visual recipes reference (docs/visual-recipes.md)"
            )),
        });
    };
    // serde decodes the whole file, so that its errors carry the file's own byte spans; the
    // other tables and keys are the recipe's and ignored here.
    let spec = decode(kind, text).map_err(|e| SpecError::from_toml(&e))?;
    if spec.version() != SPEC_VERSION {
        let span = match table.get_ref() {
            DeValue::Table(t) => t.get("version").map(|v| v.span()),
            _ => None,
        };
        return Err(SpecError {
            span,
            message: format!(
                "spec version {} is not one this capstan reads",
                spec.version()
            ),
            help: Some(format!("this capstan reads version {SPEC_VERSION}")),
        });
    }
    let mut locs = SpecLocs {
        table: name.to_string(),
        ..SpecLocs::default()
    };
    locs.record(sources, file, text, String::new(), table);
    Ok(VisualRecipe { spec, locs })
}

fn decode(kind: RecipeKind, text: &str) -> Result<VisualSpec, toml::de::Error> {
    #[derive(Deserialize)]
    struct File<T> {
        #[serde(alias = "prepare", alias = "group", alias = "window", alias = "join")]
        #[serde(alias = "stack", alias = "split", alias = "sort", alias = "top_n")]
        #[serde(alias = "distinct", alias = "pivot", alias = "filter", alias = "sync")]
        spec: T,
    }
    // Only the recipe's own kind's table is read: `File` takes the first of the aliases it
    // finds, and the file has only its kind's (`load` refuses the others).
    fn read<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, toml::de::Error> {
        toml::from_str::<File<T>>(text).map(|f| f.spec)
    }
    Ok(match kind {
        RecipeKind::Prepare => VisualSpec::Prepare(read(text)?),
        RecipeKind::Group => VisualSpec::Group(read(text)?),
        RecipeKind::Window => VisualSpec::Window(read(text)?),
        RecipeKind::Join => VisualSpec::Join(read(text)?),
        RecipeKind::Stack => VisualSpec::Stack(read(text)?),
        RecipeKind::Split => VisualSpec::Split(read(text)?),
        RecipeKind::Sort => VisualSpec::Sort(read(text)?),
        RecipeKind::TopN => VisualSpec::TopN(read(text)?),
        RecipeKind::Distinct => VisualSpec::Distinct(read(text)?),
        RecipeKind::Pivot => VisualSpec::Pivot(read(text)?),
        RecipeKind::Filter => VisualSpec::Filter(read(text)?),
        RecipeKind::Sync => VisualSpec::Sync(read(text)?),
        other => unreachable!("{} is not a visual kind", other.as_str()),
    })
}

/// serde's "unknown variant `x`, expected one of `a`, `b`" and "unknown field" messages, as
/// (what, the name, the nearest valid name or the list of valid ones).
fn unknown_name(message: &str) -> Option<(&'static str, String, String)> {
    let (what, rest) = [("unknown variant `", "value"), ("unknown field `", "key")]
        .iter()
        .find_map(|(p, what)| message.split_once(p).map(|(_, r)| (*what, r)))?;
    let (name, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    if candidates.is_empty() {
        return None;
    }
    Some((
        what,
        name.to_string(),
        crate::toml_read::unknown_help(name, &candidates, "name"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::de::DeTable;

    fn read(kind: RecipeKind, text: &str) -> Result<VisualRecipe, SpecError> {
        let mut sources = SourceMap::default();
        let file = sources.add(crate::diag::SourceFile::new(
            "recipes/r.toml".into(),
            text.to_string(),
        ));
        let (doc, _) = DeTable::parse_recoverable(text);
        let doc = doc.into_inner();
        let table = doc.get(kind.as_str()).cloned();
        read_spec(kind, text, table.as_ref(), &sources, file)
    }

    #[test]
    fn a_prepare_spec_reads_with_where_each_step_was_written() {
        let text = r#"kind = "prepare"
inputs = ["wine"]

[prepare]
[[prepare.steps]]
type = "rename"
columns = { alcohol = "abv" }

[[prepare.steps]]
type = "formula"
column = "strong"
expression = "abv > 13"
"#;
        let r = read(RecipeKind::Prepare, text).unwrap();
        let VisualSpec::Prepare(p) = &r.spec else {
            panic!()
        };
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[1].type_name(), "formula");
        assert_eq!(r.locs.loc("steps[1].column").line, 11);
        assert_eq!(
            r.locs.loc("steps[1].nothing").line,
            r.locs.loc("steps[1]").line
        );
        // The formula's 6th character (`>`) is at column 15 + 4 = 19 of line 12.
        let at = r.locs.loc_in("steps[1].expression", "abv > 13", 4);
        assert_eq!((at.line, at.col), (12, 19));
    }

    #[test]
    fn unknown_step_types_and_keys_name_the_nearest() {
        let text = "kind = \"prepare\"\n[prepare]\n[[prepare.steps]]\ntype = \"fromula\"\n";
        let e = read(RecipeKind::Prepare, text).unwrap_err();
        assert_eq!(e.message, "unknown value `fromula`");
        assert_eq!(e.help.as_deref(), Some("did you mean `formula`?"));
        let text = "kind = \"group\"\n[group]\nkeys = [\"a\"]\nagregates = []\n";
        let e = read(RecipeKind::Group, text).unwrap_err();
        assert_eq!(e.message, "unknown key `agregates`");
        assert_eq!(e.help.as_deref(), Some("did you mean `aggregates`?"));
        assert!(e.span.is_some());
    }

    #[test]
    fn the_spec_table_is_required_and_its_version_checked() {
        let e = read(RecipeKind::Sort, "kind = \"sort\"\n").unwrap_err();
        assert!(e.message.contains("[sort] table"), "{}", e.message);
        let e = read(
            RecipeKind::Sort,
            "kind = \"sort\"\n[sort]\nversion = 2\nby = []\n",
        )
        .unwrap_err();
        assert!(e.message.contains("version 2"), "{}", e.message);
    }

    #[test]
    fn specs_travel_as_json_unchanged() {
        let text = "kind = \"join\"\n[join]\ntype = \"left\"\non = [{ left = \"a\", right = \"b\" }]\nunmatched_left = \"x\"\n";
        let r = read(RecipeKind::Join, text).unwrap();
        let json = serde_json_like(&r.spec);
        assert_eq!(r.spec, json);
    }

    fn serde_json_like(spec: &VisualSpec) -> VisualSpec {
        // Through TOML's own serializer, the same serde data model as JSON's.
        let s = toml::to_string(&std::collections::BTreeMap::from([("s", spec)])).unwrap();
        toml::from_str::<std::collections::BTreeMap<String, VisualSpec>>(&s).unwrap()["s"].clone()
    }
}

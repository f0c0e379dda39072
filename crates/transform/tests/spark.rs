//! The PySpark programs capstan generates from visual recipes' specs: what they look like
//! (snapshots), that Python reads them, and — with `CAPSTAN_TEST_PYSPARK` set to a Python that
//! has pyspark — that Spark running them gives what the built-in engine gives, row for row, on
//! small typed data with nulls, for every recipe kind, every Prepare step and every formula
//! function.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use capstan_core::visual::VisualSpec;
use capstan_transform::{PlanError, Source};

// --- Data ------------------------------------------------------------------------------------

fn days(y: i32, m: u32, d: u32) -> i32 {
    let date = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
    (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

fn micros(text: &str) -> i64 {
    let f = if text.contains('.') {
        "%Y-%m-%d %H:%M:%S%.f"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    chrono::NaiveDateTime::parse_from_str(text, f)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// `t`: one column of each of capstan's types, with nulls, blanks, edge numbers and dates.
fn table_t() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("g", DataType::Utf8, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("b", DataType::Boolean, true),
        Field::new("d", DataType::Date32, true),
        Field::new("ts", ts_type(), true),
    ]));
    let s = vec![
        Some("Hello World"),
        Some("  padded  "),
        None,
        Some(""),
        Some("12"),
        Some(" 3.5 "),
        Some("a,b,,c"),
        Some("x1y22z333"),
        Some("   "),
        Some("Straße Ünïcode"),
        Some("2024-05-06"),
        Some("true"),
    ];
    let f = vec![
        Some(2.675),
        Some(-2.5),
        None,
        Some(0.0),
        Some(1e7),
        Some(1.5e-4),
        Some(123.456),
        Some(-0.001),
        Some(0.1 + 0.2),
        Some(1e20),
        Some(-1234.5678),
        Some(99.995),
    ];
    let d = vec![
        Some(days(2024, 1, 15)),
        Some(days(2023, 12, 31)),
        None,
        Some(days(2024, 2, 29)),
        Some(days(1999, 6, 1)),
        Some(days(2024, 3, 31)),
        Some(days(1970, 1, 1)),
        Some(days(2024, 6, 30)),
        Some(days(2024, 1, 1)),
        Some(days(2000, 2, 29)),
        Some(days(2020, 12, 31)),
        Some(days(2010, 10, 10)),
    ];
    let ts = vec![
        Some(micros("2024-01-15 10:30:00")),
        Some(micros("2023-12-31 23:59:59.5")),
        None,
        Some(micros("2024-02-29 00:00:00")),
        Some(micros("1999-06-01 12:00:00.123")),
        Some(micros("2024-03-31 06:07:08.123456")),
        Some(micros("1970-01-01 00:00:00")),
        Some(micros("2024-06-30 18:00:00")),
        Some(micros("2024-01-01 00:00:01")),
        Some(micros("2000-02-29 12:34:56")),
        Some(micros("2020-12-31 23:00:00")),
        Some(micros("2010-10-10 10:10:10")),
    ];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from((1..=12).collect::<Vec<i64>>())),
        Arc::new(StringArray::from(vec![
            Some("a"),
            Some("b"),
            None,
            Some("a"),
            Some("b"),
            Some("a"),
            Some("c"),
            Some("b"),
            Some("c"),
            Some("a"),
            None,
            Some("b"),
        ])),
        Arc::new(StringArray::from(s)),
        Arc::new(Int64Array::from(vec![
            Some(3),
            Some(-7),
            None,
            Some(0),
            Some(12),
            Some(100),
            Some(2147483647),
            Some(-1),
            Some(5),
            Some(42),
            Some(8),
            Some(-100),
        ])),
        Arc::new(Float64Array::from(f)),
        Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(false),
            Some(true),
            None,
            Some(false),
            Some(true),
            Some(false),
            Some(true),
            None,
        ])),
        Arc::new(Date32Array::from(d)),
        Arc::new(TimestampMicrosecondArray::from(ts)),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

/// `u`: a second input, for joins and stacks (ids that match `t`'s, and some that do not).
fn table_u() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("g", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("f", DataType::Int64, true),
        Field::new("at", ts_type(), true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![
            Some(1),
            Some(2),
            Some(3),
            Some(13),
            None,
            Some(5),
            Some(5),
        ])),
        Arc::new(StringArray::from(vec![
            Some("a"),
            Some("b"),
            None,
            Some("z"),
            Some("a"),
            Some("b"),
            Some("b"),
        ])),
        Arc::new(StringArray::from(vec![
            Some("one"),
            Some("two"),
            Some("three"),
            Some("thirteen"),
            Some("nobody"),
            Some("five"),
            None,
        ])),
        Arc::new(Int64Array::from(vec![
            Some(10),
            None,
            Some(30),
            Some(130),
            Some(0),
            Some(50),
            Some(55),
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            Some(micros("2024-01-15 00:00:00")),
            None,
            Some(micros("2001-01-01 01:01:01")),
            Some(micros("2013-01-13 13:13:13")),
            Some(micros("1990-01-01 00:00:00")),
            Some(micros("2005-05-05 05:05:05")),
            Some(micros("2005-05-05 05:05:06")),
        ])),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

/// `x`: the edges of each type: NaN, infinities, -0.0, times before 1970, month ends, Unicode
/// whitespace, line breaks.
fn table_x() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("d", DataType::Date32, true),
        Field::new("ts", ts_type(), true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])),
        Arc::new(StringArray::from(vec![
            Some("\u{a0}42\u{3000}"),
            Some("line\nbreak\r\n"),
            Some("\u{85}"),
            Some(" 1e3 "),
            Some("0x1A"),
            Some("Infinity"),
        ])),
        Arc::new(Int64Array::from(vec![
            Some(-2147483648),
            Some(2147483648),
            Some(-3),
            Some(7),
            Some(0),
            None,
        ])),
        Arc::new(Float64Array::from(vec![
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(-0.0),
            Some(f64::NEG_INFINITY),
            Some(1e-300),
            Some(-7.5),
        ])),
        Arc::new(Date32Array::from(vec![
            Some(days(2024, 1, 31)),
            Some(days(1969, 12, 31)),
            Some(days(1900, 3, 1)),
            Some(days(2023, 1, 31)),
            Some(days(2024, 12, 31)),
            None,
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            Some(micros("2024-01-31 23:59:59.999999")),
            Some(micros("1969-12-31 23:59:59.75")),
            Some(micros("1969-07-20 20:17:40.5")),
            Some(micros("2023-01-31 12:00:00")),
            Some(micros("1900-03-01 00:00:00.001")),
            None,
        ])),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

fn input(name: &str) -> RecordBatch {
    match name {
        "x" => table_x(),
        "t" => table_t(),
        "u" => table_u(),
        other => panic!("no input {other}"),
    }
}

fn schemas(inputs: &[&str]) -> Vec<(String, SchemaRef)> {
    inputs
        .iter()
        .map(|n| (n.to_string(), input(n).schema()))
        .collect()
}

fn spec(text: &str) -> VisualSpec {
    toml::from_str::<VisualSpec>(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A prepare spec of one formula step per `(column, expression)`.
fn formulas(items: &[(&str, &str)]) -> String {
    let mut s = String::from("[prepare]\n");
    for (c, e) in items {
        s.push_str(&format!(
            "[[prepare.steps]]\ntype = \"formula\"\ncolumn = {}\nexpression = {}\n",
            toml::Value::String(c.to_string()),
            toml::Value::String(e.to_string())
        ));
    }
    s
}

async fn generate(
    spec: &VisualSpec,
    inputs: &[&str],
    outputs: &[&str],
) -> Result<String, PlanError> {
    let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    capstan_transform::pyspark::generate(spec, &schemas(inputs), &outputs).await
}

fn tmp(label: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("spark-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Python reads every program (`python3 -m py_compile`).
fn py_compile(programs: &[(String, String)]) {
    let dir = tmp("compile");
    let mut paths = Vec::new();
    for (name, code) in programs {
        let p = dir.join(format!("{name}.py"));
        std::fs::write(&p, code).unwrap();
        paths.push(p);
    }
    let python = std::env::var("CAPSTAN_TEST_PYSPARK").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("-m")
        .arg("py_compile")
        .args(&paths)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "py_compile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- Snapshots -------------------------------------------------------------------------------

fn snapshot_specs() -> Vec<(&'static str, String, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (
            "prepare",
            r#"
[prepare]
[[prepare.steps]]
type = "rename"
columns = { s = "text" }

[[prepare.steps]]
type = "formula"
column = "ratio"
expression = "i / f"
on_error = "fail"

[[prepare.steps]]
type = "if_then_else"
to = "size"
rules = [{ when = "i > 10", then = "'big'" }, { when = "i > 0", then = "'small'" }]
else = "'none'"

[[prepare.steps]]
type = "filter_value"
column = "g"
values = ["a", "b"]
action = "flag"
flag_column = "ab"

[[prepare.steps]]
type = "regex_extract"
column = "text"
pattern = '([a-z])(\d+)'
to = ["letter", "digits"]

[[prepare.steps]]
type = "parse_date"
column = "text"
formats = ["yyyy-MM-dd", "dd/MM/yyyy HH:mm"]
to = "parsed"

[[prepare.steps]]
type = "fill_empty"
columns = ["g"]
value = "none"
"#
            .to_string(),
            vec!["t"],
            vec!["out"],
        ),
        (
            "group",
            r#"
[group]
keys = ["g"]
aggregates = [{ column = "f", functions = ["sum", "avg", "median"] }, { column = "s", functions = ["first", "last"] }]
order_by = [{ column = "id" }]
"#
            .to_string(),
            vec!["t"],
            vec!["by_g"],
        ),
        (
            "window",
            r#"
[window]
partition_by = ["g"]
order_by = [{ column = "ts", descending = true }]
compute = [
  { function = "row_number", to = "n" },
  { function = "lag", column = "i", offset = 2, to = "i_before" },
  { function = "sum", column = "i", to = "i_total" },
]
"#
            .to_string(),
            vec!["t"],
            vec!["out"],
        ),
        (
            "join",
            r#"
[join]
type = "full"
on = [{ left = "id", right = "id" }]
unmatched_left = "only_t"
"#
            .to_string(),
            vec!["t", "u"],
            vec!["joined", "only_t"],
        ),
        (
            "pivot",
            r#"
[pivot]
index = ["b"]
column = "g"
aggregates = [{ column = "i", functions = ["sum", "count"] }]
max_columns = 10
"#
            .to_string(),
            vec!["t"],
            vec!["out"],
        ),
        (
            "split",
            r#"
[split]
rules = [{ output = "small", when = "i < 5" }, { output = "texts", when = "contains(s, 'a')" }]
otherwise = "rest"
"#
            .to_string(),
            vec!["t"],
            vec!["small", "texts", "rest", "unused"],
        ),
        (
            "unfold",
            r#"
[prepare]
[[prepare.steps]]
type = "unfold"
column = "g"
prefix = "is_"

[[prepare.steps]]
type = "reorder"
columns = ["s"]
"#
            .to_string(),
            vec!["t"],
            vec!["out"],
        ),
    ]
}

#[tokio::test]
async fn generated_programs_read_as_their_specs() {
    let mut programs = Vec::new();
    for (name, text, inputs, outputs) in snapshot_specs() {
        let code = generate(&spec(&text), &inputs, &outputs)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_snapshot!(name, code);
        // Deterministic: the same spec gives the same program.
        assert_eq!(
            generate(&spec(&text), &inputs, &outputs).await.unwrap(),
            code
        );
        programs.push((name.to_string(), code));
    }
    py_compile(&programs);
}

#[tokio::test]
async fn specs_the_built_in_engine_refuses_are_refused_with_its_message() {
    let s = spec("[prepare]\n[[prepare.steps]]\ntype = \"keep\"\ncolumns = [\"nope\"]\n");
    let PlanError::Spec(p) = generate(&s, &["t"], &["out"]).await.unwrap_err() else {
        panic!()
    };
    let checked = capstan_transform::check(&s, &schemas(&["t"]), &["out".to_string()])
        .await
        .unwrap_err();
    let PlanError::Spec(q) = checked else {
        panic!()
    };
    assert_eq!(p, q);
    assert_eq!(p.path, "steps[0].columns[0]");
}

#[tokio::test]
async fn what_spark_cannot_mirror_is_refused_naming_its_place() {
    for (expression, want) in [
        ("regex_extract(s, /(a)|(b)/, 2)", "group 2 may take no part"),
        ("matches(s, /(?i)abc/)", "inline flags"),
        ("matches(s, /[[:alpha:]]/)", "POSIX classes"),
        ("parse_date(s, 'yy-MM-dd')", "two-digit years"),
        ("format_date(ts, 'yyyy-MM-dd Z')", "time zone offsets"),
        ("to_int(d)", "to_int of a date"),
    ] {
        let s = spec(&formulas(&[("x", expression)]));
        let err = generate(&s, &["t"], &["out"]).await.unwrap_err();
        let PlanError::Spec(p) = err else {
            panic!("{expression}: {err}")
        };
        assert!(
            p.message.contains("is not available on Spark") && p.message.contains(want),
            "{expression}: {}",
            p.message
        );
        assert_eq!(p.path, "steps[0].expression", "{expression}");
        assert!(p.span.is_some(), "{expression}");
    }
}

// --- The two engines, side by side -----------------------------------------------------------

/// One spec run on both engines.
struct Case {
    name: String,
    spec: VisualSpec,
    inputs: Vec<&'static str>,
    outputs: Vec<&'static str>,
    /// The output rows' order matters (sorted outputs): by these columns' values.
    ordered_by: Vec<&'static str>,
    /// Both engines fail, with a message that contains this.
    fails_with: Option<&'static str>,
}

fn case(name: &str, text: &str, inputs: &[&'static str], outputs: &[&'static str]) -> Case {
    Case {
        name: name.to_string(),
        spec: spec(text),
        inputs: inputs.to_vec(),
        outputs: outputs.to_vec(),
        ordered_by: vec![],
        fails_with: None,
    }
}

fn prepare(name: &str, steps: &str) -> Case {
    case(name, &format!("[prepare]\n{steps}"), &["t"], &["out"])
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // Columns.
        prepare(
            "rename_keep_remove_reorder_copy",
            r#"
[[prepare.steps]]
type = "rename"
columns = { s = "g", g = "s" }
[[prepare.steps]]
type = "copy"
column = "i"
to = "i2"
[[prepare.steps]]
type = "remove"
columns = ["f"]
[[prepare.steps]]
type = "reorder"
columns = ["ts", "i2"]
[[prepare.steps]]
type = "keep"
columns = ["i2", "ts", "s", "id", "d"]
"#,
        ),
        prepare(
            "odd_column_names",
            r#"
[[prepare.steps]]
type = "rename"
columns = { s = "a.b", g = "x y", i = "tick`", f = "F" }
[[prepare.steps]]
type = "copy"
column = "b"
to = "B"
[[prepare.steps]]
type = "formula"
column = "sum.1"
expression = "`tick\\`` + 1"
[[prepare.steps]]
type = "formula"
column = "t"
expression = "val('a.b') + `x y`"
[[prepare.steps]]
type = "unfold"
column = "x y"
[[prepare.steps]]
type = "remove"
columns = ["a.b"]
[[prepare.steps]]
type = "rename"
columns = { B = "b.2" }
"#,
        ),
        // Formulas, conditions.
        prepare(
            "if_then_else",
            r#"
[[prepare.steps]]
type = "if_then_else"
to = "size"
rules = [{ when = "i > 10", then = "i" }, { when = "i > 0", then = "f" }, { when = "b", then = "null" }]
else = "-1"
[[prepare.steps]]
type = "if_then_else"
to = "label"
rules = [{ when = "contains(s, 'a')", then = "'has a'" }]
"#,
        ),
        prepare(
            "filter_value_exact_keep",
            r#"
[[prepare.steps]]
type = "filter_value"
column = "g"
values = ["a", "c"]
"#,
        ),
        prepare(
            "filter_value_numbers_and_dates",
            r#"
[[prepare.steps]]
type = "filter_value"
column = "i"
values = [3, 12, 2147483647]
action = "flag"
flag_column = "i_hit"
[[prepare.steps]]
type = "filter_value"
column = "f"
values = [2.675, 0]
action = "flag"
flag_column = "f_hit"
[[prepare.steps]]
type = "filter_value"
column = "d"
values = ["2024-02-29", "1970-01-01T00:00:00"]
action = "flag"
flag_column = "d_hit"
[[prepare.steps]]
type = "filter_value"
column = "ts"
values = ["2024-01-15 10:30:00", "2024-02-29"]
action = "flag"
flag_column = "ts_hit"
[[prepare.steps]]
type = "filter_value"
column = "b"
values = [true]
action = "clear"
"#,
        ),
        prepare(
            "filter_value_substring_remove",
            r#"
[[prepare.steps]]
type = "filter_value"
column = "s"
values = ["a", "ll"]
matching = "substring"
action = "remove"
"#,
        ),
        prepare(
            "filter_value_regex_clear",
            r#"
[[prepare.steps]]
type = "filter_value"
column = "s"
values = ['^\d+$', 'z\d{3}$']
matching = "regex"
action = "clear"
"#,
        ),
        prepare(
            "filter_range",
            r#"
[[prepare.steps]]
type = "filter_range"
column = "i"
min = 0
max = 100
action = "flag"
flag_column = "in_range"
[[prepare.steps]]
type = "filter_range"
column = "f"
min = -3.0
"#,
        ),
        prepare(
            "filter_date",
            r#"
[[prepare.steps]]
type = "filter_date"
column = "d"
from = "2000-01-01"
to = "2024-03-31"
action = "flag"
flag_column = "recent"
[[prepare.steps]]
type = "filter_date"
column = "ts"
to = "2024-01-15T10:30:00"
action = "remove"
"#,
        ),
        prepare(
            "filter_formula",
            r#"
[[prepare.steps]]
type = "filter_formula"
expression = "i > 2 || is_null(f)"
action = "flag"
flag_column = "hit"
[[prepare.steps]]
type = "filter_formula"
expression = "b"
"#,
        ),
        prepare(
            "remove_empty_any",
            r#"
[[prepare.steps]]
type = "remove_empty"
columns = ["s", "b"]
"#,
        ),
        prepare(
            "remove_empty_all",
            r#"
[[prepare.steps]]
type = "remove_empty"
columns = ["s", "f"]
how = "all"
"#,
        ),
        prepare(
            "fill_empty",
            r#"
[[prepare.steps]]
type = "fill_empty"
columns = ["s", "g"]
value = "(none)"
[[prepare.steps]]
type = "fill_empty"
columns = ["i"]
value = -1
[[prepare.steps]]
type = "fill_empty"
columns = ["f"]
value = 7
[[prepare.steps]]
type = "fill_empty"
columns = ["d", "ts"]
value = "2000-01-02"
[[prepare.steps]]
type = "fill_empty"
columns = ["b"]
value = false
"#,
        ),
        prepare(
            "find_replace",
            r#"
[[prepare.steps]]
type = "find_replace"
column = "g"
replacements = [{ find = "a", replace = "A" }, { find = "b", replace = "$B\\" }]
[[prepare.steps]]
type = "find_replace"
column = "s"
matching = "substring"
replacements = [{ find = "l", replace = "L" }, { find = ",", replace = ";" }]
to = "s2"
[[prepare.steps]]
type = "find_replace"
column = "s"
matching = "regex"
replacements = [{ find = '\d+', replace = "<$0\\1>" }, { find = '\s+$', replace = "" }, { find = 'z*', replace = "-" }]
to = "s3"
"#,
        ),
        prepare(
            "string_transform",
            r#"
[[prepare.steps]]
type = "copy"
column = "s"
to = "u"
[[prepare.steps]]
type = "copy"
column = "s"
to = "l"
[[prepare.steps]]
type = "copy"
column = "s"
to = "n"
[[prepare.steps]]
type = "string_transform"
columns = ["u"]
mode = "upper"
[[prepare.steps]]
type = "string_transform"
columns = ["l"]
mode = "lower"
[[prepare.steps]]
type = "string_transform"
columns = ["s"]
mode = "trim"
[[prepare.steps]]
type = "string_transform"
columns = ["n"]
mode = "normalize_spaces"
"#,
        ),
        prepare(
            "regex_extract",
            r#"
[[prepare.steps]]
type = "regex_extract"
column = "s"
pattern = '([a-z])(\d+)'
to = ["letter", "digits"]
[[prepare.steps]]
type = "regex_extract"
column = "s"
pattern = '\p{Lu}\w+'
to = ["word"]
[[prepare.steps]]
type = "regex_extract"
column = "s"
pattern = '(?P<head>\w)(?:\w*)$'
to = ["last_word_head"]
"#,
        ),
        prepare(
            "split_column",
            r#"
[[prepare.steps]]
type = "split_column"
column = "s"
separator = ","
to = ["p1", "p2", "p3", "p4", "p5"]
[[prepare.steps]]
type = "split_column"
column = "s"
separator = " "
to = ["w1", "w2"]
[[prepare.steps]]
type = "split_column"
column = "s"
separator = "."
to = ["dot1", "dot2"]
"#,
        ),
        prepare(
            "concat",
            r#"
[[prepare.steps]]
type = "concat"
columns = ["s", "i", "f", "b", "d", "ts"]
separator = "|"
to = "all"
[[prepare.steps]]
type = "concat"
columns = ["g", "id"]
to = "key"
"#,
        ),
        prepare(
            "round",
            r#"
[[prepare.steps]]
type = "copy"
column = "f"
to = "f_floor"
[[prepare.steps]]
type = "copy"
column = "f"
to = "f_ceil"
[[prepare.steps]]
type = "copy"
column = "i"
to = "i_tens"
[[prepare.steps]]
type = "round"
columns = ["f", "i"]
digits = 2
[[prepare.steps]]
type = "round"
columns = ["f_floor"]
digits = 1
mode = "floor"
[[prepare.steps]]
type = "round"
columns = ["f_ceil"]
mode = "ceil"
[[prepare.steps]]
type = "round"
columns = ["i_tens"]
digits = -1
"#,
        ),
        prepare(
            "clip_and_bin",
            r#"
[[prepare.steps]]
type = "clip"
column = "f"
min = -10
max = 100.5
[[prepare.steps]]
type = "clip"
column = "i"
max = 10
[[prepare.steps]]
type = "bin"
column = "f"
width = 2.5
to = "f_bin"
[[prepare.steps]]
type = "bin"
column = "id"
width = 5
"#,
        ),
        prepare(
            "convert",
            r#"
[[prepare.steps]]
type = "copy"
column = "s"
to = "s_int"
[[prepare.steps]]
type = "copy"
column = "s"
to = "s_float"
[[prepare.steps]]
type = "copy"
column = "s"
to = "s_bool"
[[prepare.steps]]
type = "copy"
column = "s"
to = "s_date"
[[prepare.steps]]
type = "copy"
column = "s"
to = "s_ts"
[[prepare.steps]]
type = "formula"
column = "f_int"
expression = "f / 1000000"
[[prepare.steps]]
type = "copy"
column = "f"
to = "f_str"
[[prepare.steps]]
type = "copy"
column = "i"
to = "i_bool"
[[prepare.steps]]
type = "copy"
column = "ts"
to = "ts_str"
[[prepare.steps]]
type = "copy"
column = "ts"
to = "ts_date"
[[prepare.steps]]
type = "convert"
column = "s_int"
to = "int64"
[[prepare.steps]]
type = "convert"
column = "s_float"
to = "float64"
[[prepare.steps]]
type = "convert"
column = "s_bool"
to = "bool"
[[prepare.steps]]
type = "convert"
column = "s_date"
to = "date"
[[prepare.steps]]
type = "convert"
column = "s_ts"
to = "timestamp"
[[prepare.steps]]
type = "convert"
column = "f_int"
to = "int64"
[[prepare.steps]]
type = "convert"
column = "f_str"
to = "string"
[[prepare.steps]]
type = "convert"
column = "i_bool"
to = "bool"
[[prepare.steps]]
type = "convert"
column = "ts_str"
to = "string"
[[prepare.steps]]
type = "convert"
column = "ts_date"
to = "date"
[[prepare.steps]]
type = "copy"
column = "d"
to = "d_str"
[[prepare.steps]]
type = "copy"
column = "b"
to = "b_str"
[[prepare.steps]]
type = "convert"
column = "d_str"
to = "string"
[[prepare.steps]]
type = "convert"
column = "b_str"
to = "string"
[[prepare.steps]]
type = "convert"
column = "d"
to = "timestamp"
[[prepare.steps]]
type = "convert"
column = "b"
to = "int64"
[[prepare.steps]]
type = "convert"
column = "i"
to = "float64"
"#,
        ),
        prepare(
            "hash",
            r#"
[[prepare.steps]]
type = "hash"
columns = ["s", "i", "f", "ts"]
"#,
        ),
        prepare(
            "parse_and_format_dates",
            r#"
[[prepare.steps]]
type = "parse_date"
column = "s"
formats = ["yyyy-MM-dd", "dd.MM.yyyy"]
to = "parsed"
[[prepare.steps]]
type = "format_date"
column = "ts"
format = "yyyy/MM/dd HH:mm:ss.SSS 'at' h a, EEEE d MMMM, D"
to = "long_text"
[[prepare.steps]]
type = "format_date"
column = "d"
format = "EEE M/d/yy [#]"
"#,
        ),
        prepare(
            "date_part_diff_trunc",
            r#"
[[prepare.steps]]
type = "date_part"
column = "ts"
parts = ["year", "quarter", "month", "day", "hour", "minute", "second", "day_of_week", "day_of_year"]
[[prepare.steps]]
type = "date_part"
column = "d"
parts = ["day_of_week", "quarter"]
[[prepare.steps]]
type = "date_diff"
column = "ts"
other = "d"
unit = "hour"
to = "hours"
[[prepare.steps]]
type = "date_diff"
column = "d"
other = "ts"
unit = "week"
to = "weeks"
[[prepare.steps]]
type = "date_trunc"
column = "ts"
unit = "week"
to = "week_start"
[[prepare.steps]]
type = "date_trunc"
column = "d"
unit = "quarter"
"#,
        ),
        prepare(
            "unix_time",
            r#"
[[prepare.steps]]
type = "unix_time"
column = "i"
to = "from_seconds"
[[prepare.steps]]
type = "formula"
column = "f_small"
expression = "f / 1e9"
[[prepare.steps]]
type = "unix_time"
column = "f_small"
unit = "milliseconds"
to = "from_millis"
"#,
        ),
        prepare(
            "fold",
            r#"
[[prepare.steps]]
type = "fold"
columns = ["i", "f"]
key_column = "which"
value_column = "value"
"#,
        ),
        prepare(
            "fold_mixed_types_as_text",
            r#"
[[prepare.steps]]
type = "keep"
columns = ["id", "s", "f", "b", "ts"]
[[prepare.steps]]
type = "fold"
columns = ["s", "f", "b", "ts"]
key_column = "k"
value_column = "v"
"#,
        ),
        prepare(
            "unfold_then_columns_of_the_data",
            r#"
[[prepare.steps]]
type = "unfold"
column = "g"
[[prepare.steps]]
type = "unfold"
column = "b"
value_column = "f"
prefix = "f_when_"
[[prepare.steps]]
type = "unfold"
column = "d"
max_columns = 20
[[prepare.steps]]
type = "rename"
columns = { s = "text" }
[[prepare.steps]]
type = "reorder"
columns = ["text"]
[[prepare.steps]]
type = "remove"
columns = ["ts", "d"]
"#,
        ),
        prepare(
            "unfold_numbers_then_fold",
            r#"
[[prepare.steps]]
type = "keep"
columns = ["id", "f", "ts", "i"]
[[prepare.steps]]
type = "unfold"
column = "f"
[[prepare.steps]]
type = "unfold"
column = "ts"
value_column = "i"
[[prepare.steps]]
type = "fold"
columns = ["i"]
key_column = "k"
value_column = "v"
"#,
        ),
        // Recipes.
        case(
            "group",
            r#"
[group]
keys = ["g"]
aggregates = [
  { column = "i", functions = ["count", "count_distinct", "sum", "avg", "min", "max", "stddev", "median"] },
  { column = "f", functions = ["sum", "avg", "stddev", "median", "min", "max"] },
  { column = "s", functions = ["min", "max", "first", "last", "count"] },
  { column = "ts", functions = ["min", "max", "first"] },
  { column = "b", functions = ["min", "max"] },
]
order_by = [{ column = "f", descending = true }, { column = "id" }]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "group_without_keys",
            r#"
[group]
aggregates = [{ column = "f", functions = ["sum", "max"] }, { column = "d", functions = ["min", "last"] }]
order_by = [{ column = "d", nulls_first = false }]
count = true
"#,
            &["t"],
            &["out"],
        ),
        case(
            "group_keys_only",
            r#"
[group]
keys = ["g", "b"]
count = false
"#,
            &["t"],
            &["out"],
        ),
        case(
            "window_default_frame",
            r#"
[window]
partition_by = ["g"]
order_by = [{ column = "id" }]
compute = [
  { function = "row_number", to = "n" },
  { function = "rank", to = "r" },
  { function = "dense_rank", to = "dr" },
  { function = "lag", column = "s", to = "s_before" },
  { function = "lead", column = "f", offset = 2, to = "f_after2" },
  { function = "sum", column = "i", to = "i_sum" },
  { function = "sum", column = "f", to = "f_sum" },
  { function = "avg", column = "i", to = "i_avg" },
  { function = "min", column = "s", to = "s_min" },
  { function = "max", column = "ts", to = "ts_max" },
  { function = "count", to = "rows" },
  { function = "count", column = "f", to = "f_count" },
  { function = "first", column = "s", to = "s_first" },
  { function = "last", column = "f", to = "f_last" },
]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "window_frame_and_ties",
            r#"
[window]
order_by = [{ column = "g", nulls_first = false }, { column = "id", descending = true }]
frame = { preceding = 2, following = 0 }
compute = [
  { function = "sum", column = "i", to = "moving" },
  { function = "min", column = "s", to = "s_min" },
  { function = "avg", column = "i", to = "i_avg" },
  { function = "rank", to = "r" },
  { function = "lag", column = "id", offset = 0, to = "same" },
]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "window_whole_table",
            r#"
[window]
compute = [{ function = "sum", column = "f", to = "f_total" }, { function = "count", column = "s", to = "texts" }]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "window_frame_ahead",
            r#"
[window]
partition_by = ["b"]
order_by = [{ column = "f" }, { column = "id" }]
frame = { following = 1 }
compute = [{ function = "max", column = "f", to = "so_far_and_next" }, { function = "count", to = "n" }]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "join_inner",
            r#"
[join]
on = [{ left = "id", right = "id" }]
"#,
            &["t", "u"],
            &["out"],
        ),
        case(
            "join_left_with_clashes_and_unmatched",
            r#"
[join]
type = "left"
on = [{ left = "g", right = "g" }, { left = "i", right = "f" }]
unmatched_left = "only_t"
unmatched_right = "only_u"
"#,
            &["t", "u"],
            &["out", "only_t", "only_u"],
        ),
        case(
            "join_right",
            r#"
[join]
type = "right"
on = [{ left = "id", right = "id" }]
"#,
            &["t", "u"],
            &["out"],
        ),
        case(
            "join_full_by_other_names",
            r#"
[join]
type = "full"
on = [{ left = "id", right = "f" }, { left = "ts", right = "at" }]
"#,
            &["t", "u"],
            &["out"],
        ),
        case(
            "join_full_same_key",
            r#"
[join]
type = "full"
on = [{ left = "id", right = "id" }]
"#,
            &["t", "u"],
            &["out"],
        ),
        case(
            "join_anti",
            r#"
[join]
type = "left_anti"
on = [{ left = "g", right = "g" }]
"#,
            &["t", "u"],
            &["out"],
        ),
        case(
            "join_right_anti",
            r#"
[join]
type = "right_anti"
on = [{ left = "id", right = "id" }]
"#,
            &["t", "u"],
            &["out"],
        ),
        case(
            "join_cross",
            r#"
[join]
type = "cross"
"#,
            &["u", "t"],
            &["out"],
        ),
        case(
            "stack",
            r#"
[stack]
origin_column = "source"
"#,
            &["t", "u"],
            &["out"],
        ),
        case(
            "stack_without_origin",
            r#"
[stack]
"#,
            &["u", "u"],
            &["out"],
        ),
        case(
            "split",
            r#"
[split]
rules = [
  { output = "small", when = "i < 5" },
  { output = "texts", when = "contains(s, 'a')" },
  { output = "small", when = "f > 100" },
]
otherwise = "rest"
"#,
            &["t"],
            &["small", "texts", "rest", "unused"],
        ),
        case(
            "split_dropping_the_rest",
            r#"
[split]
rules = [{ output = "yes", when = "b" }]
"#,
            &["t"],
            &["yes", "none"],
        ),
        Case {
            ordered_by: vec!["i", "id"],
            ..case(
                "sort_nulls_first_ascending",
                r#"
[sort]
by = [{ column = "i" }, { column = "id" }]
"#,
                &["t"],
                &["out"],
            )
        },
        Case {
            ordered_by: vec!["g", "f", "s"],
            ..case(
                "sort_descending_and_mixed",
                r#"
[sort]
by = [{ column = "g", descending = true }, { column = "f", nulls_first = true }, { column = "s", descending = true, nulls_first = false }]
"#,
                &["t"],
                &["out"],
            )
        },
        Case {
            ordered_by: vec!["ts"],
            ..case(
                "sort_timestamps",
                r#"
[sort]
by = [{ column = "ts", descending = true }]
"#,
                &["t"],
                &["out"],
            )
        },
        case(
            "top_n",
            r#"
[top_n]
by = [{ column = "f", descending = true }]
partition_by = ["g"]
top = 2
rest = "others"
"#,
            &["t"],
            &["best", "others"],
        ),
        case(
            "top_n_ties_broken_by_the_other_columns",
            r#"
[top_n]
by = [{ column = "g" }]
top = 4
"#,
            &["u"],
            &["out"],
        ),
        case(
            "distinct",
            r#"
[distinct]
columns = ["g", "b"]
count_column = "rows"
"#,
            &["t"],
            &["out"],
        ),
        case(
            "distinct_all_columns",
            r#"
[distinct]
"#,
            &["u"],
            &["out"],
        ),
        case(
            "pivot_counts",
            r#"
[pivot]
index = ["b"]
column = "g"
"#,
            &["t"],
            &["out"],
        ),
        case(
            "pivot_aggregates",
            r#"
[pivot]
index = ["g"]
column = "b"
aggregates = [{ column = "f", functions = ["sum", "avg", "min", "max", "count", "count_distinct", "stddev", "median"] }, { column = "i", functions = ["sum"] }, { column = "s", functions = ["max"] }]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "pivot_on_dates_and_floats",
            r#"
[pivot]
index = ["id"]
column = "f"
aggregates = [{ column = "d", functions = ["max"] }]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "pivot_on_timestamps",
            r#"
[pivot]
index = ["g"]
column = "at"
aggregates = [{ column = "name", functions = ["min"] }]
"#,
            &["u"],
            &["out"],
        ),
        case(
            "filter_where_and_sample",
            r#"
[filter]
where = "i > 0 && is_not_null(s)"
sample = { rows = 3 }
"#,
            &["t"],
            &["out"],
        ),
        case(
            "filter_where",
            r#"
[filter]
where = "f * 2 <= 200 || g == 'c'"
"#,
            &["t"],
            &["out"],
        ),
        case(
            "sync_columns",
            r#"
[sync]
columns = ["ts", "s", "id"]
"#,
            &["t"],
            &["out"],
        ),
        case(
            "sync_all",
            r#"
[sync]
"#,
            &["t"],
            &["out"],
        ),
        // Failures.
        Case {
            fails_with: Some("steps[0] (formula): division by zero"),
            ..prepare(
                "formula_fails_by_zero",
                r#"
[[prepare.steps]]
type = "formula"
column = "x"
expression = "id / (i - 3)"
on_error = "fail"
"#,
            )
        },
        Case {
            fails_with: Some("steps[0] (convert): a value of `s` is not a valid int64"),
            ..prepare(
                "convert_fails",
                r#"
[[prepare.steps]]
type = "convert"
column = "s"
to = "int64"
on_error = "fail"
"#,
            )
        },
        // A float with no integer (1e20, NaN, infinities) converts to null on both engines.
        Case {
            ..prepare(
                "convert_out_of_range_is_null",
                r#"
[[prepare.steps]]
type = "convert"
column = "f"
to = "int64"
"#,
            )
        },
        // The square root of a negative number is null on both engines.
        Case {
            ..prepare(
                "sqrt_of_a_negative_number_is_null",
                r#"
[[prepare.steps]]
type = "formula"
column = "r"
expression = "sqrt(f)"
"#,
            )
        },
        Case {
            fails_with: Some(
                "`g` has more than 2 distinct values, each of which would become a column",
            ),
            ..case(
                "pivot_too_many_values",
                r#"
[pivot]
index = ["b"]
column = "g"
max_columns = 2
"#,
                &["t"],
                &["out"],
            )
        },
    ];
    // Every formula function, and the operators, on every type.
    let groups: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "formula_operators",
            vec![
                ("add", "i + 1"),
                ("sub_mixed", "i - f"),
                ("mul", "i * 2"),
                ("mul_big", "i * 3000000000"),
                ("mul_f", "f * 2"),
                ("div", "i / 2"),
                ("div_zero", "i / 0"),
                ("div_f", "f / i"),
                ("idiv", "i // 2"),
                ("idiv_neg", "-7 // 2"),
                ("idiv_neg_divisor", "i // -2"),
                ("idiv_both_neg", "-7 // -2"),
                ("idiv_big", "(0 - 9007199254740993) // 2"),
                ("idiv_big_col", "(i + 9007199254740993) // 1"),
                ("idiv_f", "f // 0.5"),
                ("idiv_zero", "i // 0"),
                ("mod", "i % 3"),
                ("mod_f", "f % 2"),
                ("mod_zero", "i % 0"),
                ("neg", "-i"),
                ("neg_f", "-f"),
                ("text_plus", "s + '!'"),
                ("text_plus_int", "s + i"),
                ("int_plus_text", "5 + g"),
                ("text_plus_null", "g + null"),
                ("gt_mixed", "i > f"),
                ("lt_text", "s < 'b'"),
                ("eq_bool", "b == true"),
                ("ne_int", "i != 3"),
                ("le_date_text", "d <= '2024-01-15'"),
                ("ge_ts_date", "ts >= d"),
                ("eq_date_ts", "d == ts"),
                ("gt_ts_text", "ts > '2024-01-15T10:30:00'"),
                ("eq_null", "i == null"),
                ("not", "!(i > 3)"),
                ("and", "i > 3 && b"),
                ("or", "b || i > 3"),
                ("and_null", "null && b"),
                ("literal_int", "7"),
                ("literal_null", "null"),
                ("literal_text", "'it\\'s'"),
                ("literal_float", "2.5e-3"),
                ("column_val", "val('s')"),
            ],
        ),
        (
            "formula_control_and_math",
            vec![
                ("if1", "if(i > 3, 'big', 'small')"),
                ("if_mixed", "if(b, i, f)"),
                ("if_no_else", "if(i > 0, 1)"),
                ("if_dates", "if(b, d, ts)"),
                ("coalesce_int", "coalesce(i, 0)"),
                ("coalesce_text", "coalesce(s, g, 'none')"),
                ("coalesce_mixed", "coalesce(f, i)"),
                ("is_null", "is_null(s)"),
                ("is_not_null", "is_not_null(f)"),
                ("is_blank", "is_blank(s)"),
                ("is_blank_int", "is_blank(i)"),
                ("null_if", "null_if(i, 0)"),
                ("null_if_text", "null_if(s, '')"),
                ("abs", "abs(i)"),
                ("abs_f", "abs(f)"),
                ("round0", "round(f)"),
                ("round2", "round(f, 2)"),
                ("round_neg", "round(f, -1)"),
                ("round_int", "round(i, 1)"),
                ("floor", "floor(f)"),
                ("ceil", "ceil(f)"),
                ("floor_int", "floor(i)"),
                ("sqrt", "sqrt(abs(f))"),
                ("pow", "pow(f, 2)"),
                ("pow_int", "pow(i, 0.5)"),
                ("exp", "exp(i / 100)"),
                ("ln", "ln(f)"),
                ("log", "log(f)"),
                ("sign", "sign(f)"),
                ("sign_int", "sign(i)"),
                ("min_mixed", "min(i, f)"),
                ("max_int", "max(i, 5)"),
                ("min_null", "min(i, null, 3)"),
                ("max3", "max(f, i, 0)"),
                ("clip", "clip(f, 0, 100)"),
                ("clip_int", "clip(i, -5, 50)"),
            ],
        ),
        (
            "formula_text",
            vec![
                ("length", "length(s)"),
                ("upper", "upper(s)"),
                ("lower", "lower(s)"),
                ("trim", "trim(s)"),
                ("sub14", "substring(s, 1, 4)"),
                ("sub2", "substring(s, 2)"),
                ("sub_back", "substring(s, 5, 2)"),
                ("left", "left(s, 3)"),
                ("right", "right(s, 3)"),
                ("right0", "right(s, 0)"),
                ("contains", "contains(s, 'a')"),
                ("contains_empty", "contains(s, '')"),
                ("contains_col", "contains(s, g)"),
                ("starts", "starts_with(s, 'He')"),
                ("ends", "ends_with(s, 'd')"),
                ("replace", "replace(s, 'l', 'L')"),
                ("replace_regex", "replace(s, /[0-9]+/, '#')"),
                ("replace_empty", "replace(s, '', '-')"),
                ("replace_ci_literal", "replace(s, /O/i, '$1\\\\')"),
                ("replace_col", "replace(s, g, '_')"),
                ("replace_dot", "replace(s, /.$/, '.')"),
                ("matches", "matches(s, /^[a-z]/)"),
                ("matches_end", "matches(s, /\\d+$/)"),
                ("matches_ci", "matches(s, /STRASSE|straße/i)"),
                ("matches_text", "matches(s, '\\\\s')"),
                ("extract", "regex_extract(s, /([a-z])(\\d+)/)"),
                ("extract2", "regex_extract(s, /([a-z])(\\d+)/, 2)"),
                ("extract_whole", "regex_extract(s, /[A-Z]\\w+/, 0)"),
                ("extract_missing_group", "regex_extract(s, /(a)/, 5)"),
                ("extract_empty_group", "regex_extract(s, /(z*)\\d/)"),
                (
                    "concat",
                    "concat(s, '-', i, '-', f, '-', b, '-', d, '-', ts)",
                ),
                ("concat_nulls", "concat(g, null, id)"),
                ("split2", "split_part(s, ',', 2)"),
                ("split4", "split_part(s, ',', 4)"),
                ("split_space", "split_part(s, ' ', 1)"),
                ("split_dot", "split_part(s, '.', 2)"),
                ("to_string_f", "to_string(f)"),
                ("to_string_i", "to_string(i)"),
                ("to_string_b", "to_string(b)"),
                ("to_string_d", "to_string(d)"),
                ("to_string_ts", "to_string(ts)"),
                ("to_number", "to_number(s)"),
                ("to_number_i", "to_number(i)"),
                ("to_number_b", "to_number(b)"),
                ("to_int", "to_int(s)"),
                ("to_int_f", "to_int(f / 1000)"),
                ("to_int_b", "to_int(b)"),
                ("sha256", "sha256(s)"),
                ("pad", "pad_left(s, 8, '*')"),
                ("pad_zero", "pad_left(to_string(i), 5, '0')"),
                ("pad_empty_fill", "pad_left(g, 3, '')"),
            ],
        ),
        (
            "formula_dates",
            vec![
                ("year", "year(d)"),
                ("month", "month(ts)"),
                ("day", "day(d)"),
                ("hour", "hour(ts)"),
                ("minute", "minute(ts)"),
                ("second", "second(ts)"),
                ("dow", "day_of_week(d)"),
                ("dow_ts", "day_of_week(ts)"),
                ("diff_h", "date_diff(ts, d, 'hour')"),
                ("diff_d", "date_diff(d, ts, 'day')"),
                ("diff_s", "date_diff(d, ts, 'second')"),
                ("diff_w", "date_diff(ts, d, 'week')"),
                ("diff_m", "date_diff(ts, d, 'minute')"),
                ("add_month", "date_add(d, 1, 'month')"),
                ("add_year", "date_add(ts, -2, 'year')"),
                ("add_quarter", "date_add(d, 1, 'quarter')"),
                ("add_week", "date_add(d, 2, 'week')"),
                ("add_day", "date_add(d, -10, 'day')"),
                ("add_hour", "date_add(ts, 3, 'hour')"),
                ("add_minute", "date_add(ts, 90, 'minute')"),
                ("add_second", "date_add(ts, -30, 'second')"),
                ("trunc_month", "date_trunc(ts, 'month')"),
                ("trunc_week", "date_trunc(d, 'week')"),
                ("trunc_quarter", "date_trunc(ts, 'quarter')"),
                ("trunc_year", "date_trunc(d, 'year')"),
                ("trunc_hour", "date_trunc(ts, 'hour')"),
                ("trunc_minute", "date_trunc(ts, 'minute')"),
                ("trunc_second", "date_trunc(ts, 'second')"),
                ("trunc_day", "date_trunc(ts, 'day')"),
                ("parse", "parse_date(s, 'yyyy-MM-dd')"),
                (
                    "parse_time",
                    "parse_date(concat(s, ' 10:11:12'), 'yyyy-MM-dd HH:mm:ss')",
                ),
                ("format", "format_date(ts, 'yyyy/MM/dd HH:mm:ss.SSS')"),
                ("format_names", "format_date(d, 'EEE, d MMM yyyy')"),
                ("format_12h", "format_date(ts, 'h a, hh:m:s')"),
                ("format_doy", "format_date(d, 'D')"),
                ("format_micros", "format_date(ts, 'ss.SSSSSS')"),
                ("now", "is_not_null(now())"),
            ],
        ),
    ];
    for (name, items) in groups {
        v.push(prepare_formulas(name, &items));
    }
    v.extend(edge_cases());
    v
}

/// Formulas and steps on `x`, the edges of each type.
fn edge_cases() -> Vec<Case> {
    let items: Vec<(&str, &str)> = vec![
        ("add", "f + 1"),
        ("neg_i", "-i"),
        ("mul_i", "i * i"),
        ("div", "i / f"),
        ("div_f", "1 / f"),
        ("idiv", "i // f"),
        ("mod", "f % 2"),
        ("mod_by", "7 % f"),
        ("eq0", "f == 0"),
        ("gt", "f > 1e308"),
        ("lt", "f < 0"),
        ("ne", "f != f"),
        ("abs", "abs(f)"),
        ("abs_i", "abs(i)"),
        ("round", "round(f, 1)"),
        ("round_text", "to_string(round(f - 0.01, 1))"),
        ("ceil_text", "to_string(ceil(f - 0.5))"),
        ("floor_text", "to_string(floor(f))"),
        ("floor", "floor(f)"),
        ("ceil", "ceil(f)"),
        ("sqrt", "sqrt(abs(f))"),
        ("pow", "pow(f, 0)"),
        ("pow1", "pow(1, f)"),
        ("exp", "exp(f)"),
        ("ln", "ln(f)"),
        ("log", "log(f)"),
        ("sign", "sign(f)"),
        ("min", "min(f, 1)"),
        ("max", "max(f, 1)"),
        ("clip", "clip(f, -1, 1)"),
        ("to_string", "to_string(f)"),
        ("concat", "concat(f, '|', ts, '|', d)"),
        ("to_string_ts", "to_string(ts)"),
        ("to_number", "to_number(s)"),
        ("to_int", "to_int(s)"),
        ("is_blank", "is_blank(s)"),
        ("trim", "trim(s)"),
        ("length", "length(s)"),
        ("matches_dot", "matches(s, /^.+$/)"),
        ("matches_end", "matches(s, /break$/)"),
        ("matches_space", "matches(s, /\\s/)"),
        ("upper", "upper(s)"),
        ("year", "year(ts)"),
        ("second", "second(ts)"),
        ("dow", "day_of_week(d)"),
        ("diff_s", "date_diff(ts, d, 'second')"),
        ("diff_d", "date_diff(d, ts, 'day')"),
        ("add_month", "date_add(d, 1, 'month')"),
        ("add_year", "date_add(ts, 1, 'year')"),
        ("add_q", "date_add(ts, -1, 'quarter')"),
        ("trunc_w", "date_trunc(ts, 'week')"),
        ("trunc_s", "date_trunc(ts, 'second')"),
        ("format", "format_date(ts, 'yyyy-MM-dd HH:mm:ss.SSSSSS')"),
        ("cmp_text", "ts < '1970-01-01'"),
    ];
    let mut f = prepare_formulas("edge_formulas", &items);
    f.inputs = vec!["x"];
    let mut cases = vec![f];
    for (name, text) in [
        (
            "edge_group",
            "[group]\nkeys = []\naggregates = [{ column = \"f\", functions = [\"sum\", \"avg\", \"min\", \"max\", \"median\", \"count_distinct\"] }]\n",
        ),
        ("edge_sort", "[sort]\nby = [{ column = \"f\" }]\n"),
        ("edge_distinct", "[distinct]\ncolumns = [\"f\"]\n"),
        (
            "edge_pivot",
            "[pivot]\nindex = [\"id\"]\ncolumn = \"s\"\naggregates = [{ column = \"f\", functions = [\"max\"] }]\n",
        ),
        (
            "edge_pivot_ints",
            "[pivot]\nindex = [\"d\"]\ncolumn = \"i\"\n",
        ),
        (
            "edge_steps",
            "[prepare]\n[[prepare.steps]]\ntype = \"round\"\ncolumns = [\"f\"]\ndigits = 1\nmode = \"floor\"\n[[prepare.steps]]\ntype = \"bin\"\ncolumn = \"i\"\nwidth = 3\n[[prepare.steps]]\ntype = \"convert\"\ncolumn = \"s\"\nto = \"float64\"\n[[prepare.steps]]\ntype = \"concat\"\ncolumns = [\"f\", \"ts\"]\nto = \"c\"\n[[prepare.steps]]\ntype = \"filter_range\"\ncolumn = \"f\"\nmin = -1\naction = \"flag\"\nflag_column = \"in\"\n[[prepare.steps]]\ntype = \"convert\"\ncolumn = \"f\"\nto = \"bool\"\n[[prepare.steps]]\ntype = \"date_part\"\ncolumn = \"ts\"\nparts = [\"second\", \"day_of_year\"]\n",
        ),
    ] {
        let mut c = case(name, text, &["x"], &["out"]);
        if name == "edge_sort" {
            c.ordered_by = vec!["f"];
        }
        cases.push(c);
    }
    cases
}

fn prepare_formulas(name: &str, items: &[(&str, &str)]) -> Case {
    Case {
        name: name.to_string(),
        spec: spec(&formulas(items)),
        inputs: vec!["t"],
        outputs: vec!["out"],
        ordered_by: vec![],
        fails_with: None,
    }
}

/// A cell, comparable across engines.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Date(i32),
    Ts(i64),
}

impl Cell {
    fn rank(&self) -> u8 {
        match self {
            Cell::Null => 0,
            Cell::Bool(_) => 1,
            Cell::Int(_) => 2,
            Cell::Float(_) => 3,
            Cell::Text(_) => 4,
            Cell::Date(_) => 5,
            Cell::Ts(_) => 6,
        }
    }

    fn cmp(&self, o: &Cell) -> std::cmp::Ordering {
        use Cell::*;
        match (self, o) {
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Text(a), Text(b)) => a.cmp(b),
            (Date(a), Date(b)) => a.cmp(b),
            (Ts(a), Ts(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn same(&self, o: &Cell) -> bool {
        match (self, o) {
            (Cell::Float(a), Cell::Float(b)) => {
                (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
            }
            (a, b) => a == b,
        }
    }
}

struct Table {
    fields: Vec<(String, DataType)>,
    rows: Vec<Vec<Cell>>,
}

fn read(path: &Path) -> Table {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut fields = None;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        fields.get_or_insert_with(|| {
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        });
        for r in 0..batch.num_rows() {
            rows.push(batch.columns().iter().map(|c| cell(c, r)).collect());
        }
    }
    let fields = fields.unwrap_or_else(|| {
        let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(path).unwrap(),
        )
        .unwrap();
        b.schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    });
    Table { fields, rows }
}

fn cell(c: &ArrayRef, r: usize) -> Cell {
    if c.is_null(r) {
        return Cell::Null;
    }
    let a = c.as_any();
    if let Some(x) = a.downcast_ref::<BooleanArray>() {
        Cell::Bool(x.value(r))
    } else if let Some(x) = a.downcast_ref::<Int64Array>() {
        Cell::Int(x.value(r))
    } else if let Some(x) = a.downcast_ref::<Float64Array>() {
        Cell::Float(x.value(r))
    } else if let Some(x) = a.downcast_ref::<StringArray>() {
        Cell::Text(x.value(r).to_string())
    } else if let Some(x) = a.downcast_ref::<Date32Array>() {
        Cell::Date(x.value(r))
    } else if let Some(x) = a.downcast_ref::<TimestampMicrosecondArray>() {
        Cell::Ts(x.value(r))
    } else {
        Cell::Text(format!("<{}>", c.data_type()))
    }
}

fn sort_rows(rows: &mut [Vec<Cell>]) {
    rows.sort_by(|a, b| {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.cmp(y))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

fn show(row: &[Cell]) -> String {
    format!("{row:?}")
}

/// The differences between the built-in engine's output and Spark's (empty: none).
fn compare(case: &Case, output: &str, ours: Table, theirs: Table) -> Vec<String> {
    let mut problems = Vec::new();
    let at = format!("{} → {output}", case.name);
    if ours.fields != theirs.fields {
        problems.push(format!(
            "{at}: schemas differ\n  built-in: {:?}\n  spark:    {:?}",
            ours.fields, theirs.fields
        ));
        return problems;
    }
    if ours.rows.len() != theirs.rows.len() {
        problems.push(format!(
            "{at}: {} rows on the built-in engine, {} on Spark",
            ours.rows.len(),
            theirs.rows.len()
        ));
    }
    if !case.ordered_by.is_empty() {
        let idx: Vec<usize> = case
            .ordered_by
            .iter()
            .map(|c| ours.fields.iter().position(|(n, _)| n == c).unwrap())
            .collect();
        let keys = |t: &Table| {
            t.rows
                .iter()
                .map(|r| idx.iter().map(|&i| r[i].clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        let (a, b) = (keys(&ours), keys(&theirs));
        if a.len() != b.len()
            || a.iter()
                .zip(&b)
                .any(|(x, y)| x.iter().zip(y).any(|(p, q)| !p.same(q)))
        {
            problems.push(format!(
                "{at}: the order differs\n  built-in: {a:?}\n  spark:    {b:?}"
            ));
        }
    }
    let (mut a, mut b) = (ours.rows, theirs.rows);
    sort_rows(&mut a);
    sort_rows(&mut b);
    for (ra, rb) in a.iter().zip(&b) {
        let diffs: Vec<String> = ra
            .iter()
            .zip(rb)
            .enumerate()
            .filter(|(_, (x, y))| !x.same(y))
            .map(|(i, (x, y))| format!("{}: {x:?} ≠ {y:?}", ours.fields[i].0))
            .collect();
        if !diffs.is_empty() {
            problems.push(format!(
                "{at}: row {}\n    vs {}\n  {}",
                show(ra),
                show(rb),
                diffs.join("\n  ")
            ));
            if problems.len() > 6 {
                break;
            }
        }
    }
    problems
}

/// Runs every program in one Python process (one JVM), each with its own inputs and outputs.
const DRIVER: &str = r#"
import json, os, sys, time, traceback
from pyspark.sql import SparkSession

spark = (
    SparkSession.builder.master("local[2]")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.shuffle.partitions", "1")
    .config("spark.sql.adaptive.enabled", "false")
    .config("spark.driver.extraJavaOptions", "-Duser.timezone=America/New_York")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
cases = json.load(open(sys.argv[1]))
results = {}
for c in cases:
    os.environ["CAPSTAN_SPARK_INPUTS"] = json.dumps(c["inputs"])
    os.environ["CAPSTAN_SPARK_OUTPUTS"] = json.dumps(c["outputs"])
    start = time.time()
    try:
        code = open(c["program"]).read()
        exec(compile(code, c["program"], "exec"), {"__name__": "__main__"})
        results[c["name"]] = {"ok": True}
    except BaseException as e:
        results[c["name"]] = {"ok": False, "error": "".join(traceback.format_exception_only(type(e), e))}
    results[c["name"]]["seconds"] = round(time.time() - start, 2)
json.dump(results, open(sys.argv[2], "w"), indent=1)
"#;

#[tokio::test]
async fn spark_gives_what_the_built_in_engine_gives() {
    let python = match std::env::var("CAPSTAN_TEST_PYSPARK") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "set CAPSTAN_TEST_PYSPARK to a Python interpreter that has pyspark (e.g. a venv with pyspark==4.3.0, \
                 pandas and pyarrow): the cross-engine equivalence suite must run in CI"
            );
            eprintln!(
                "note: CAPSTAN_TEST_PYSPARK is not set; the Spark equivalence suite did not run"
            );
            return;
        }
    };
    let started = std::time::Instant::now();
    let dir = tmp("equivalence");
    let mut inputs = BTreeMap::new();
    for name in ["t", "u", "x"] {
        let p = dir.join(format!("{name}.parquet"));
        let batch = input(name);
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&p).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        inputs.insert(name, p);
    }
    let cases = cases();
    let mut plan = Vec::new();
    let mut ours: BTreeMap<String, Result<Vec<(String, PathBuf)>, String>> = BTreeMap::new();
    let mut programs = Vec::new();
    for c in &cases {
        let cdir = dir.join(&c.name);
        std::fs::create_dir_all(cdir.join("spark")).unwrap();
        let code = generate(&c.spec, &c.inputs, &c.outputs)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", c.name));
        let program = cdir.join("program.py");
        std::fs::write(&program, &code).unwrap();
        programs.push((c.name.clone(), code));
        // The built-in engine.
        let ctx = capstan_transform::session(&capstan_transform::Limits::default()).unwrap();
        let srcs: Vec<(String, Source)> = c
            .inputs
            .iter()
            .map(|n| (n.to_string(), Source::Parquet(inputs[n].clone())))
            .collect();
        let outs: Vec<(String, PathBuf)> = c
            .outputs
            .iter()
            .map(|o| (o.to_string(), cdir.join(format!("{o}.parquet"))))
            .collect();
        let ran = capstan_transform::run(&ctx, &c.spec, &srcs, &outs).await;
        ours.insert(
            c.name.clone(),
            ran.map(|r| {
                r.rows
                    .iter()
                    .map(|(n, _)| (n.clone(), cdir.join(format!("{n}.parquet"))))
                    .collect()
            })
            .map_err(|e| e.to_string()),
        );
        let spark_outs: BTreeMap<&str, String> = c
            .outputs
            .iter()
            .map(|o| {
                (
                    *o,
                    cdir.join("spark")
                        .join(format!("{o}.parquet"))
                        .display()
                        .to_string(),
                )
            })
            .collect();
        let spark_ins: BTreeMap<&str, String> = c
            .inputs
            .iter()
            .map(|n| (*n, inputs[n].display().to_string()))
            .collect();
        plan.push(serde_json::json!({
            "name": c.name, "program": program.display().to_string(), "inputs": spark_ins, "outputs": spark_outs,
        }));
    }
    py_compile(&programs);
    let built_in = started.elapsed();
    let driver = dir.join("driver.py");
    std::fs::write(&driver, DRIVER).unwrap();
    let pythonpath = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../python/capstan")
        .canonicalize()
        .unwrap();
    // A few Spark drivers side by side (each its own JVM), each running its share of the cases.
    let shares = std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 4)
        .clamp(1, 4);
    let mut children = Vec::new();
    for k in 0..shares {
        let share: Vec<&serde_json::Value> = plan.iter().skip(k).step_by(shares).collect();
        let plan_path = dir.join(format!("cases-{k}.json"));
        std::fs::write(&plan_path, serde_json::to_string_pretty(&share).unwrap()).unwrap();
        let child = Command::new(&python)
            .arg(&driver)
            .arg(&plan_path)
            .arg(dir.join(format!("results-{k}.json")))
            .env("PYTHONPATH", &pythonpath)
            .env("SPARK_LOCAL_IP", "127.0.0.1")
            .env("TZ", "America/New_York")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        children.push(child);
    }
    let mut stdout = String::new();
    let mut results = serde_json::Map::new();
    for (k, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "the Spark driver failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("results-{k}.json"))).unwrap(),
        )
        .unwrap();
        results.extend(r.as_object().unwrap().clone());
    }
    let results = serde_json::Value::Object(results);
    let mut problems = Vec::new();
    for c in &cases {
        let r = &results[&c.name];
        let spark_ok = r["ok"].as_bool() == Some(true);
        match (&ours[&c.name], spark_ok, c.fails_with) {
            (Err(e), false, Some(want)) => {
                let theirs = r["error"].as_str().unwrap_or_default();
                if !e.contains(want) || !theirs.contains(want) {
                    problems.push(format!(
                        "{}: both fail, but not with {want:?}:\n  built-in: {e}\n  spark: {theirs}",
                        c.name
                    ));
                }
            }
            (_, _, Some(want)) => problems.push(format!(
                "{}: should fail with {want:?} on both engines: built-in {:?}, spark {r}",
                c.name, ours[&c.name]
            )),
            (Err(e), _, None) => {
                problems.push(format!("{}: the built-in engine failed: {e}", c.name))
            }
            (Ok(_), false, None) => problems.push(format!(
                "{}: Spark failed: {}",
                c.name,
                r["error"].as_str().unwrap_or_default()
            )),
            (Ok(written), true, None) => {
                for (o, path) in written {
                    let spark = dir.join(&c.name).join("spark").join(format!("{o}.parquet"));
                    if !spark.exists() {
                        problems.push(format!("{} → {o}: Spark wrote no file", c.name));
                        continue;
                    }
                    problems.extend(compare(c, o, read(path), read(&spark)));
                }
            }
        }
    }
    eprintln!(
        "{} cases on both engines in {:.1?} (the built-in engine's runs and the programs: {built_in:.1?})",
        cases.len(),
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} differences:\n\n{}\n\n(Spark's output:\n{stdout})",
        problems.len(),
        problems.join("\n\n")
    );
}

//! The built-in engine on real Parquet files: what each recipe kind and the formula language
//! give, cell by cell, on small typed data with nulls; failures as a data scientist reads them;
//! and a group-by larger than its memory budget, which spills instead of failing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use capstan_core::visual::VisualSpec;
use capstan_transform::{Limits, PlanError, Source};

/// Each output: its name, its columns (`name:type`), its rows as text.
type Outputs = Vec<(String, Vec<String>, Vec<Vec<String>>)>;

fn dir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capstan-transform-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, batch: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// `people`: id, name, dept, salary (nullable), bonus (float, nullable), active.
fn people() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("dept", DataType::Utf8, true),
        Field::new("salary", DataType::Int64, true),
        Field::new("bonus", DataType::Float64, true),
        Field::new("active", DataType::Boolean, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])),
        Arc::new(StringArray::from(vec![
            Some("Ada"),
            Some(" bob "),
            None,
            Some("Cy"),
            Some("Dee"),
            Some(""),
        ])),
        Arc::new(StringArray::from(vec![
            Some("eng"),
            Some("eng"),
            Some("ops"),
            None,
            Some("ops"),
            Some("eng"),
        ])),
        Arc::new(Int64Array::from(vec![
            Some(100),
            Some(80),
            None,
            Some(50),
            Some(80),
            Some(0),
        ])),
        Arc::new(Float64Array::from(vec![
            Some(2.675),
            None,
            Some(1.5),
            Some(-2.5),
            Some(0.0),
            Some(10.0),
        ])),
        Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(true),
            Some(false),
        ])),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

/// `depts`: dept, floor.
fn depts() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("dept", DataType::Utf8, true),
        Field::new("floor", DataType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![Some("eng"), Some("hr")])),
            Arc::new(Int64Array::from(vec![Some(3), Some(1)])),
        ],
    )
    .unwrap()
}

fn spec(kind: &str, toml_text: &str) -> VisualSpec {
    let text = format!("[{kind}]\n{toml_text}");
    let table: toml::Table = toml::from_str(&text).unwrap();
    let value = serde_json::json!({ kind: serde_json::to_value(&table[kind]).unwrap() });
    serde_json::from_value(value).unwrap()
}

/// Runs `spec` over `people` (and `depts`) and returns each output's rows as text.
fn run_with(
    label: &str,
    spec: &VisualSpec,
    inputs: &[&str],
    outputs: &[&str],
    limits: Limits,
) -> Result<Outputs, PlanError> {
    let d = dir(label);
    let mut sources = Vec::new();
    for i in inputs {
        let p = d.join(format!("{i}.parquet"));
        write(&p, &if *i == "depts" { depts() } else { people() });
        sources.push((i.to_string(), Source::Parquet(p)));
    }
    let outs: Vec<(String, PathBuf)> = outputs
        .iter()
        .map(|o| (o.to_string(), d.join(format!("out-{o}.parquet"))))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = capstan_transform::session(&limits)?;
        capstan_transform::run(&ctx, spec, &sources, &outs).await
    })?;
    let mut result = Vec::new();
    for (name, path) in outs {
        let f = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        for b in reader {
            let b = b.unwrap();
            columns = b
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    format!(
                        "{}:{}",
                        f.name(),
                        capstan_transform::types::type_name(f.data_type())
                    )
                })
                .collect();
            for r in 0..b.num_rows() {
                rows.push(
                    b.columns()
                        .iter()
                        .map(|c| {
                            if c.is_null(r) {
                                "∅".to_string()
                            } else {
                                array_value_to_string(c, r).unwrap()
                            }
                        })
                        .collect(),
                );
            }
        }
        result.push((name, columns, rows));
    }
    let _ = std::fs::remove_dir_all(&d);
    Ok(result)
}

fn run(label: &str, spec: &VisualSpec, inputs: &[&str], outputs: &[&str]) -> Outputs {
    run_with(label, spec, inputs, outputs, Limits::default()).unwrap()
}

fn column(out: &(String, Vec<String>, Vec<Vec<String>>), name: &str) -> Vec<String> {
    let i = out
        .1
        .iter()
        .position(|c| c.split(':').next() == Some(name))
        .unwrap_or_else(|| panic!("no column {name} in {:?}", out.1));
    out.2.iter().map(|r| r[i].clone()).collect()
}

#[test]
fn formulas_follow_the_documented_semantics() {
    let s = spec(
        "prepare",
        r#"
[[prepare.steps]]
type = "formula"
column = "ratio"
expression = "salary / (salary - 80)"
[[prepare.steps]]
type = "formula"
column = "floor_div"
expression = "(0 - salary) // 30"
[[prepare.steps]]
type = "formula"
column = "big_div"
expression = "(salary * 0 - 9007199254740993) // 2"
[[prepare.steps]]
type = "formula"
column = "rounded"
expression = "round(bonus, 2)"
[[prepare.steps]]
type = "formula"
column = "label"
expression = 'upper(trim(name)) + "-" + dept'
[[prepare.steps]]
type = "formula"
column = "joined"
expression = 'concat(name, "/", dept)'
[[prepare.steps]]
type = "formula"
column = "blank"
expression = "is_blank(name)"
[[prepare.steps]]
type = "formula"
column = "biggest"
expression = "max(salary, 90)"
[[prepare.steps]]
type = "formula"
column = "rich"
expression = 'if(salary >= 80 && active, "yes", "no")'
[[prepare.steps]]
type = "formula"
column = "initial"
expression = 'regex_extract(name, "([A-Z])[a-z]+")'
"#,
    );
    let out = &run("formulas", &s, &["people"], &["out"])[0];
    // Division by zero (salary 80) gives null; a null salary gives null.
    assert_eq!(
        column(out, "ratio"),
        ["5.0", "∅", "∅", "-1.6666666666666667", "∅", "-0.0"]
    );
    // Floor division rounds down: -100 // 30 = -4; it stays an integer.
    assert_eq!(column(out, "floor_div"), ["-4", "-3", "∅", "-2", "-3", "0"]);
    assert!(out.1.contains(&"floor_div:int64".to_string()));
    // Exact beyond 2^53, where a float would have made it -4503599627370496.
    assert_eq!(
        column(out, "big_div"),
        [
            "-4503599627370497",
            "-4503599627370497",
            "∅",
            "-4503599627370497",
            "-4503599627370497",
            "-4503599627370497"
        ]
    );
    // Half away from zero on the shortest decimal: 2.675 → 2.68, -2.5 → -2.5.
    assert_eq!(
        column(out, "rounded"),
        ["2.68", "∅", "1.5", "-2.5", "0.0", "10.0"]
    );
    // `+` on text propagates nulls; concat takes them as empty.
    assert_eq!(
        column(out, "label"),
        ["ADA-eng", "BOB-eng", "∅", "∅", "DEE-ops", "-eng"]
    );
    assert_eq!(
        column(out, "joined"),
        ["Ada/eng", " bob /eng", "/ops", "Cy/", "Dee/ops", "/eng"]
    );
    assert_eq!(
        column(out, "blank"),
        ["false", "false", "true", "false", "false", "true"]
    );
    // min and max skip nulls.
    assert_eq!(
        column(out, "biggest"),
        ["100", "90", "90", "90", "90", "90"]
    );
    // A null condition takes the else branch.
    assert_eq!(column(out, "rich"), ["yes", "no", "no", "no", "yes", "no"]);
    // No match: null.
    assert_eq!(column(out, "initial"), ["A", "∅", "∅", "C", "D", "∅"]);
}

#[test]
fn a_formula_that_fails_by_its_setting_names_its_step() {
    let s = spec(
        "prepare",
        r#"
[[prepare.steps]]
type = "keep"
columns = ["id", "salary"]
[[prepare.steps]]
type = "formula"
column = "ratio"
expression = "100 / (salary - 80)"
on_error = "fail"
"#,
    );
    let e = run_with("fail", &s, &["people"], &["out"], Limits::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("steps[1] (formula): division by zero"),
        "{text}"
    );
}

#[test]
fn filters_act_on_matching_rows() {
    let s = spec(
        "prepare",
        r#"
[[prepare.steps]]
type = "filter_value"
column = "dept"
values = ["eng"]
action = "flag"
flag_column = "is_eng"
[[prepare.steps]]
type = "filter_range"
column = "salary"
min = 60
action = "remove"
[[prepare.steps]]
type = "fill_empty"
columns = ["name"]
value = "?"
[[prepare.steps]]
type = "find_replace"
column = "dept"
replacements = [{ find = "ops", replace = "operations" }]
"#,
    );
    let out = &run("filters", &s, &["people"], &["out"])[0];
    // Rows with salary ≥ 60 go; null salaries stay (a null does not match).
    assert_eq!(column(out, "id"), ["3", "4", "6"]);
    assert_eq!(column(out, "is_eng"), ["false", "false", "true"]);
    assert_eq!(column(out, "name"), ["?", "Cy", "?"]);
    assert_eq!(column(out, "dept"), ["operations", "∅", "eng"]);
}

#[test]
fn group_join_top_n_and_pivot_shape_their_outputs() {
    let g = spec(
        "group",
        r#"keys = ["dept"]
aggregates = [{ column = "salary", functions = ["sum", "avg", "max", "count"] }]"#,
    );
    let out = &run("group", &g, &["people"], &["out"])[0];
    assert_eq!(
        out.1,
        [
            "dept:string",
            "count:int64",
            "salary_sum:int64",
            "salary_avg:float64",
            "salary_max:int64",
            "salary_count:int64"
        ]
    );
    let mut rows = out.2.clone();
    rows.sort();
    assert_eq!(
        rows,
        [
            vec!["eng", "3", "180", "60.0", "100", "3"],
            vec!["ops", "2", "80", "80.0", "80", "1"],
            vec!["∅", "1", "50", "50.0", "50", "1"],
        ]
    );

    let j = spec(
        "join",
        r#"type = "left"
on = [{ left = "dept", right = "dept" }]
unmatched_left = "lonely""#,
    );
    let outs = run("join", &j, &["people", "depts"], &["joined", "lonely"]);
    let mut pairs: Vec<(String, String)> = column(&outs[0], "id")
        .into_iter()
        .zip(column(&outs[0], "floor"))
        .collect();
    pairs.sort();
    let floors: Vec<&str> = pairs.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(floors, ["3", "3", "∅", "∅", "∅", "3"]);
    // Null keys match nothing, on every engine.
    let mut lonely = column(&outs[1], "id");
    lonely.sort();
    assert_eq!(lonely, ["3", "4", "5"]);

    let t = spec(
        "top_n",
        r#"by = [{ column = "salary", descending = true }]
partition_by = ["dept"]
top = 1
rest = "rest""#,
    );
    let outs = run("topn", &t, &["people"], &["top", "rest"]);
    let mut top = column(&outs[0], "id");
    top.sort();
    // The top salary per department (ops: 80 over null, nulls last when descending); the
    // department of nulls keeps its one row.
    assert_eq!(top, ["1", "4", "5"]);
    assert_eq!(outs[0].2.len() + outs[1].2.len(), 6);

    let p = spec(
        "pivot",
        r#"index = ["active"]
column = "dept"
aggregates = [{ column = "salary", functions = ["sum"] }]"#,
    );
    let out = &run("pivot", &p, &["people"], &["out"])[0];
    assert_eq!(
        out.1,
        [
            "active:bool",
            "eng_salary_sum:int64",
            "ops_salary_sum:int64"
        ]
    );
}

#[test]
fn stack_and_split_route_rows_by_name_and_rule() {
    let s = spec("stack", r#"origin_column = "from""#);
    let out = &run("stack", &s, &["people", "depts"], &["out"])[0];
    assert_eq!(
        out.1,
        [
            "id:int64",
            "name:string",
            "dept:string",
            "salary:int64",
            "bonus:float64",
            "active:bool",
            "floor:int64",
            "from:string"
        ]
    );
    assert_eq!(out.2.len(), 8);
    let s = spec(
        "split",
        r#"rules = [{ output = "high", when = "salary >= 80" }, { output = "low", when = "salary < 80" }]
otherwise = "unknown""#,
    );
    let outs = run("split", &s, &["people"], &["high", "low", "unknown"]);
    assert_eq!(column(&outs[0], "id"), ["1", "2", "5"]);
    assert_eq!(column(&outs[1], "id"), ["4", "6"]);
    assert_eq!(column(&outs[2], "id"), ["3"]);
}

#[test]
fn a_group_by_larger_than_its_memory_budget_spills_and_completes() {
    // 2M distinct keys with a text aggregate: some hundreds of MiB of hash table, against a
    // 64 MiB limit (a 32 MiB pool).
    let d = dir("spill");
    let n = 2_000_000i64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
        Field::new("v", DataType::Float64, false),
    ]));
    let input = d.join("big.parquet");
    {
        let f = std::fs::File::create(&input).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).unwrap();
        let chunk = 250_000i64;
        for start in (0..n).step_by(chunk as usize) {
            let ks: Vec<i64> = (start..start + chunk).map(|i| (i * 7919) % n).collect();
            let ss: Vec<String> = ks.iter().map(|k| format!("key-{k:012}")).collect();
            let vs: Vec<f64> = ks.iter().map(|k| *k as f64 * 0.5).collect();
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ks)),
                    Arc::new(StringArray::from(ss)),
                    Arc::new(Float64Array::from(vs)),
                ],
            )
            .unwrap();
            w.write(&b).unwrap();
        }
        w.close().unwrap();
    }
    let g = spec(
        "group",
        r#"keys = ["k", "s"]
aggregates = [{ column = "v", functions = ["sum", "max"] }]"#,
    );
    let out = d.join("out.parquet");
    let spill = d.join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        spill_dir: Some(spill.clone()),
        threads: Some(2),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(async {
            let ctx = capstan_transform::session(&limits)?;
            capstan_transform::run(
                &ctx,
                &g,
                &[("big".into(), Source::Parquet(input.clone()))],
                &[("out".into(), out.clone())],
            )
            .await
        })
        .expect("the group-by completes within its budget by spilling");
    assert_eq!(report.rows, [("out".to_string(), n as u64)]);
    // The parallel writer: bounded row groups, every key once, the Arrow types kept.
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&out).unwrap(),
    )
    .unwrap();
    // Closed at 1M rows or 64 MiB of Arrow data, whichever comes first.
    let groups: Vec<i64> = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert!(
        groups.len() >= 2 && groups.iter().all(|r| *r <= 1 << 20),
        "{groups:?}"
    );
    assert_eq!(
        reader.schema().field_with_name("k").unwrap().data_type(),
        &DataType::Int64
    );
    let (mut sum, mut rows) = (0i64, 0usize);
    for b in reader.build().unwrap() {
        let b = b.unwrap();
        rows += b.num_rows();
        let k = b
            .column_by_name("k")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        sum += k.iter().flatten().sum::<i64>();
    }
    assert_eq!((rows, sum), (n as usize, n * (n - 1) / 2));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_date_compares_with_a_literal_iso_date_and_nothing_computed() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("d", DataType::Date32, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (expression, want) in [
        (
            "d < s",
            Err("a date compared with text computed for each row"),
        ),
        ("d < \"31/01/2024\"", Err("\"31/01/2024\" is not a date")),
        ("d < \"2024-01-31\"", Ok(())),
        ("\"2024-01-31T10:00:00\" >= d", Ok(())),
    ] {
        let s = spec(
            "prepare",
            &format!(
                "[[prepare.steps]]\ntype = \"formula\"\ncolumn = \"x\"\nexpression = '{expression}'\n"
            ),
        );
        let got = rt
            .block_on(capstan_transform::check(
                &s,
                &[("t".into(), schema.clone())],
                &["out".into()],
            ))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{expression}");
    }
}

/// What `capstan check` finds wrong with `spec` on the people table (there must be something).
fn problem(spec: &VisualSpec) -> capstan_transform::Problem {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    match rt
        .block_on(capstan_transform::check(
            spec,
            &[("people".into(), people().schema())],
            &["out".into()],
        ))
        .unwrap_err()
    {
        PlanError::Spec(p) => p,
        e => panic!("not a problem of the spec: {e}"),
    }
}

#[test]
fn checking_finds_a_misspelt_column_with_its_place_and_the_nearest_name() {
    let s = spec(
        "prepare",
        r#"
[[prepare.steps]]
type = "rename"
columns = { salary = "pay" }
[[prepare.steps]]
type = "formula"
column = "x"
expression = "salary * 2"
"#,
    );
    let p = problem(&s);
    assert_eq!(p.path, "steps[1].expression");
    assert_eq!(p.span, Some(0..6));
    assert_eq!(p.message, "no column `salary`");
    assert_eq!(
        p.help.as_deref(),
        Some("the columns here are: `id`, `name`, `dept`, `pay`, `bonus`, `active`")
    );
}

#[test]
fn a_step_that_would_make_two_columns_of_one_name_is_a_problem_at_that_step() {
    let check = |s: &VisualSpec| {
        let p = problem(s);
        (p.path, p.message)
    };
    // Renamed onto a column that stays.
    let renamed = spec(
        "prepare",
        r#"
[[prepare.steps]]
type = "formula"
column = "x"
expression = "salary * 2"
[[prepare.steps]]
type = "rename"
columns = { name = "dept" }
"#,
    );
    assert_eq!(
        check(&renamed),
        (
            "steps[1].columns.name".into(),
            "column `dept` exists already".into()
        )
    );
    // Caught by DataFusion, said at the place in the spec.
    let kept = spec(
        "prepare",
        "[[prepare.steps]]\ntype = \"remove\"\ncolumns = [\"id\"]\n[[prepare.steps]]\ntype = \"keep\"\ncolumns = [\"dept\", \"dept\"]",
    );
    assert_eq!(
        check(&kept),
        (
            "steps[1]".into(),
            "two columns would be named `dept`".into()
        )
    );
    let twice = spec(
        "group",
        "keys = [\"dept\"]\naggregates = [{ column = \"salary\", functions = [\"sum\", \"sum\"] }]",
    );
    assert_eq!(
        check(&twice),
        ("".into(), "two columns would be named `salary_sum`".into())
    );
}

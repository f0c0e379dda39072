//! The built-in engine against pandas, DuckDB and local Spark on the same Parquet files, in one
//! run: a group-by with four aggregates over 10M rows, a join of those rows with a 1M-row
//! table, and a 10-step prepare; then the group-by again under a memory limit of a quarter of
//! its input's size.
//!
//! Run: `cargo bench -p capstan-transform --bench visual` (env `BENCH_ROWS`, default
//! 10,000,000; `BENCH_PYTHON`, a Python with pandas, pyarrow, duckdb and pyspark, default a
//! venv it makes under /var/cache/capstan/bench-venv).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use capstan_core::visual::VisualSpec;
use capstan_transform::{Limits, Source};

fn spec(kind: &str, body: &str) -> VisualSpec {
    let table: toml::Table = toml::from_str(&format!("[{kind}]\n{body}")).unwrap();
    serde_json::from_value(serde_json::json!({ kind: serde_json::to_value(&table[kind]).unwrap() }))
        .unwrap()
}

fn generate(dir: &Path, rows: usize) -> (PathBuf, PathBuf, u64) {
    let big = dir.join("big.parquet");
    let dim = dir.join("dim.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]));
    let names: Vec<String> = (0..1000).map(|i| format!("customer-{i:04}")).collect();
    let mut arrow_bytes = 0u64;
    let f = std::fs::File::create(&big).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).unwrap();
    let chunk = 1 << 20;
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let ids: Vec<i64> = (start as i64..(start + n) as i64).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from_iter_values(
                ids.iter().map(|i| (i * 7919) % 1_000_000),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| (*i % 10_000) as f64 * 0.01),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| names[(*i % 1000) as usize].as_str()),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                ids.iter().map(|i| 1_700_000_000_000_000 + i * 1_000_000),
            )),
        ];
        let b = RecordBatch::try_new(schema.clone(), columns).unwrap();
        arrow_bytes += b.get_array_memory_size() as u64;
        w.write(&b).unwrap();
        start += n;
    }
    w.close().unwrap();
    let dschema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("weight", DataType::Float64, false),
    ]));
    let f = std::fs::File::create(&dim).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, dschema.clone(), None).unwrap();
    let ks: Vec<i64> = (0..1_000_000).collect();
    let b = RecordBatch::try_new(
        dschema,
        vec![
            Arc::new(Int64Array::from(ks.clone())),
            Arc::new(StringArray::from_iter_values(
                ks.iter().map(|k| format!("seg-{}", k % 37)),
            )),
            Arc::new(Float64Array::from_iter_values(
                ks.iter().map(|k| (*k % 100) as f64 / 10.0),
            )),
        ],
    )
    .unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    (big, dim, arrow_bytes)
}

const PREPARE: &str = r#"
[[prepare.steps]]
type = "rename"
columns = { price = "amount" }
[[prepare.steps]]
type = "formula"
column = "gross"
expression = "amount * 1.2"
[[prepare.steps]]
type = "filter_range"
column = "amount"
min = 1
[[prepare.steps]]
type = "string_transform"
columns = ["customer"]
mode = "upper"
[[prepare.steps]]
type = "formula"
column = "label"
expression = 'customer + "/" + to_string(k)'
[[prepare.steps]]
type = "round"
columns = ["gross"]
digits = 1
[[prepare.steps]]
type = "date_part"
column = "at"
parts = ["year", "month"]
[[prepare.steps]]
type = "formula"
column = "band"
expression = 'if(amount >= 50, "high", "low")'
[[prepare.steps]]
type = "remove"
columns = ["at"]
[[prepare.steps]]
type = "formula"
column = "share"
expression = "amount / (k + 1)"
"#;

/// The same three workloads in pandas, DuckDB and PySpark; each prints `NAME SECONDS`.
const PYTHON: &str = r#"
import sys, time, os
big, dim, out, which = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
if which == "pandas":
    import pandas as pd, numpy as np
    t = time.perf_counter(); df = pd.read_parquet(big)
    g = df.groupby("k").agg(count=("id", "size"), price_sum=("price", "sum"), price_avg=("price", "mean"), price_max=("price", "max")).reset_index()
    g.to_parquet(out + "/pd-group.parquet"); print("group", time.perf_counter() - t, flush=True)
    t = time.perf_counter(); df = pd.read_parquet(big); d = pd.read_parquet(dim)
    df.merge(d, on="k", how="inner").to_parquet(out + "/pd-join.parquet"); print("join", time.perf_counter() - t, flush=True)
    t = time.perf_counter(); df = pd.read_parquet(big).rename(columns={"price": "amount"})
    df["gross"] = df["amount"] * 1.2
    df = df[df["amount"] >= 1]
    df["customer"] = df["customer"].str.upper()
    df["label"] = df["customer"] + "/" + df["k"].astype(str)
    df["gross"] = df["gross"].round(1)
    df["at_year"] = df["at"].dt.year; df["at_month"] = df["at"].dt.month
    df["band"] = np.where(df["amount"] >= 50, "high", "low")
    df = df.drop(columns=["at"])
    df["share"] = df["amount"] / (df["k"] + 1)
    df.to_parquet(out + "/pd-prepare.parquet"); print("prepare", time.perf_counter() - t, flush=True)
elif which == "duckdb":
    import duckdb
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(f"COPY (SELECT k, count(*) AS count, sum(price) AS price_sum, avg(price) AS price_avg, max(price) AS price_max FROM '{big}' GROUP BY k) TO '{out}/dd-group.parquet'")
    print("group", time.perf_counter() - t, flush=True)
    t = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM '{big}' b JOIN '{dim}' d USING (k)) TO '{out}/dd-join.parquet'")
    print("join", time.perf_counter() - t, flush=True)
    t = time.perf_counter()
    con.execute(f"""COPY (SELECT id, k, price AS amount, round(price * 1.2, 1) AS gross, upper(customer) AS customer,
        upper(customer) || '/' || CAST(k AS VARCHAR) AS label, year("at") AS at_year, month("at") AS at_month,
        CASE WHEN price >= 50 THEN 'high' ELSE 'low' END AS band, price / (k + 1) AS share
        FROM '{big}' WHERE price >= 1) TO '{out}/dd-prepare.parquet'""")
    print("prepare", time.perf_counter() - t, flush=True)
else:
    from pyspark.sql import SparkSession, functions as F
    spark = SparkSession.builder.master("local[2]").config("spark.driver.memory", "4g").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    t = time.perf_counter(); df = spark.read.parquet(big)
    df.groupBy("k").agg(F.count("*").alias("count"), F.sum("price").alias("price_sum"), F.avg("price").alias("price_avg"), F.max("price").alias("price_max")).write.mode("overwrite").parquet(out + "/sp-group")
    print("group", time.perf_counter() - t, flush=True)
    t = time.perf_counter(); df.join(spark.read.parquet(dim), "k").write.mode("overwrite").parquet(out + "/sp-join"); print("join", time.perf_counter() - t, flush=True)
    t = time.perf_counter()
    p = (df.withColumnRenamed("price", "amount").withColumn("gross", F.col("amount") * 1.2).filter(F.col("amount") >= 1)
         .withColumn("customer", F.upper("customer")).withColumn("label", F.concat(F.col("customer"), F.lit("/"), F.col("k").cast("string")))
         .withColumn("gross", F.round("gross", 1)).withColumn("at_year", F.year("at")).withColumn("at_month", F.month("at"))
         .withColumn("band", F.when(F.col("amount") >= 50, "high").otherwise("low")).drop("at").withColumn("share", F.col("amount") / (F.col("k") + 1)))
    p.write.mode("overwrite").parquet(out + "/sp-prepare"); print("prepare", time.perf_counter() - t, flush=True)
"#;

fn python() -> Option<String> {
    if let Ok(p) = std::env::var("BENCH_PYTHON") {
        return Some(p);
    }
    let venv = Path::new("/var/cache/capstan/bench-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        println!(
            "making {} (pandas, pyarrow, duckdb, pyspark)…",
            venv.display()
        );
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(venv)
            .status()
            .ok()?
            .success()
            && Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    "pandas==2.3.3",
                    "pyarrow==26.0.1",
                    "duckdb",
                    "pyspark==4.3.0",
                ])
                .status()
                .ok()?
                .success();
        if !ok {
            return None;
        }
    }
    Some(py.display().to_string())
}

fn others(py: &str, big: &Path, dim: &Path, out: &Path, which: &str) -> Vec<(String, f64)> {
    let script = out.join("bench.py");
    std::fs::write(&script, PYTHON).unwrap();
    let o = Command::new(py)
        .arg(&script)
        .arg(big)
        .arg(dim)
        .arg(out)
        .arg(which)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .unwrap();
    if !o.status.success() {
        println!(
            "{which} failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return Vec::new();
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

fn main() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = std::env::temp_dir().join("capstan-bench-visual");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (big, dim, arrow_bytes) = generate(&dir, rows);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "{rows} rows ({:.0} MB in Arrow, {:.0} MB of Parquet), a 1M-row table to join, {threads} threads",
        arrow_bytes as f64 / 1e6,
        std::fs::metadata(&big).unwrap().len() as f64 / 1e6
    );
    let group = spec(
        "group",
        "keys = [\"k\"]\naggregates = [{ column = \"price\", functions = [\"sum\", \"avg\", \"max\"] }]",
    );
    let join = spec(
        "join",
        "type = \"inner\"\non = [{ left = \"k\", right = \"k\" }]",
    );
    let prepare = spec("prepare", PREPARE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let ours = |s: &VisualSpec, inputs: Vec<(String, Source)>, limits: Limits, out: &str| -> f64 {
        let t = Instant::now();
        rt.block_on(async {
            let ctx = capstan_transform::session(&limits).unwrap();
            capstan_transform::run(
                &ctx,
                s,
                &inputs,
                &[(out.to_string(), dir.join(format!("{out}.parquet")))],
            )
            .await
        })
        .unwrap();
        t.elapsed().as_secs_f64()
    };
    let b = || ("big".to_string(), Source::Parquet(big.clone()));
    let d = || ("dim".to_string(), Source::Parquet(dim.clone()));
    let limits = || Limits {
        threads: Some(threads),
        ..Limits::default()
    };
    let mut results: Vec<(String, f64)> = vec![
        ("group".into(), ours(&group, vec![b()], limits(), "cg")),
        ("join".into(), ours(&join, vec![b(), d()], limits(), "cj")),
        ("prepare".into(), ours(&prepare, vec![b()], limits(), "cp")),
    ];
    let quarter = arrow_bytes / 4;
    let spill = dir.join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let limited = ours(
        &group,
        vec![b()],
        Limits {
            memory_bytes: Some(quarter),
            spill_dir: Some(spill),
            threads: Some(threads),
        },
        "cgl",
    );
    let py = python();
    let mut table: Vec<(&str, Vec<(String, f64)>)> = Vec::new();
    if let Some(py) = &py {
        for which in ["pandas", "duckdb", "spark"] {
            table.push((which, others(py, &big, &dim, &dir, which)));
        }
    } else {
        println!("no Python with pandas, duckdb and pyspark: set BENCH_PYTHON");
    }
    println!();
    println!("| workload | capstan (DataFusion) | pandas | DuckDB | Spark local[2] |");
    println!("|---|---|---|---|---|");
    for (name, secs) in results.drain(..) {
        let mut line = format!("| {name} | {secs:.2} s |");
        for (_, r) in &table {
            match r.iter().find(|(n, _)| *n == name) {
                Some((_, s)) => line += &format!(" {s:.2} s ({:.2}×) |", s / secs),
                None => line += " – |",
            }
        }
        println!("{line}");
    }
    println!();
    println!(
        "group-by under a memory limit of {:.0} MB (a quarter of its input in Arrow; the pool is half of that): {limited:.2} s",
        quarter as f64 / 1e6
    );
    println!("(× is the other engine's time over capstan's: above 1, capstan is faster)");
    let _ = std::fs::remove_dir_all(&dir);
}

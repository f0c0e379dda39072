//! capstan's built-in engine for visual recipes.
//!
//! A visual recipe's spec (`capstan_core::visual`) is compiled, step by step, into one
//! DataFusion plan per output through the DataFrame and Expr APIs ([`plan`]), checked against
//! the schemas of its inputs: that is how `capstan check` propagates schemas through a flow
//! without data ([`check`]), and how `capstan transform run` executes a recipe ([`run`]),
//! within a memory budget that spills to disk rather than exceed it. The same spec also
//! becomes PySpark code ([`pyspark`]), with the same semantics, for Spark configurations.
//!
//! DataFusion lives in this crate only, so the rest of the workspace does not pay its build.

pub mod dates;
pub mod formula;
pub mod plan;
mod prepare;
pub mod pyspark;
pub mod types;
mod udf;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use capstan_core::visual::VisualSpec;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

pub use plan::{Mode, PlanError, Planned, Problem};

/// What a run may use.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// The activity's memory limit: DataFusion's pool gets a share of it and spills beyond.
    pub memory_bytes: Option<u64>,
    /// Where spills go (the activity's private folder); none: the system's temporary folder.
    pub spill_dir: Option<PathBuf>,
    /// Threads (the CPU limit, rounded up); none: the machine's.
    pub threads: Option<usize>,
}

/// The share of the memory limit DataFusion's pool may hold. The rest is for what the pool
/// does not track: Parquet decoding buffers, the output writer, the binary itself.
pub const POOL_SHARE: f64 = 0.5;

/// A session for one run (or one check) within `limits`.
pub fn session(limits: &Limits) -> datafusion::error::Result<SessionContext> {
    let mut config = SessionConfig::new()
        // Strings as Utf8, not views: outputs keep capstan's types, and the plans shown by
        // `recipe explain` read as their schemas say.
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_bool("datafusion.execution.parquet.binary_as_string", false);
    if let Some(t) = limits.threads {
        config = config.with_target_partitions(t.max(1));
    }
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = limits.memory_bytes {
        let pool = (bytes as f64 * POOL_SHARE) as usize;
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(pool)));
    }
    if let Some(dir) = &limits.spill_dir {
        runtime = runtime.with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
        );
    }
    Ok(SessionContext::new_with_config_rt(
        config,
        runtime.build_arc()?,
    ))
}

/// Where an input's rows are.
#[derive(Clone, Debug)]
pub enum Source {
    /// A Parquet file: a local dataset's, or one the data API sent as it is stored.
    Parquet(PathBuf),
    /// No rows, only a schema (checking).
    Empty(SchemaRef),
}

/// The input `name` (registered under its dataset's name, which plans then show).
pub async fn open(
    ctx: &SessionContext,
    name: &str,
    source: &Source,
) -> datafusion::error::Result<DataFrame> {
    use datafusion::common::TableReference;
    let table = TableReference::bare(name);
    if ctx.table_exist(table.clone())? {
        return ctx.table(table).await;
    }
    match source {
        Source::Parquet(p) => {
            ctx.register_parquet(
                table.clone(),
                path_str(p),
                ParquetReadOptions::default().file_extension(&extension(p)),
            )
            .await?
        }
        Source::Empty(schema) => {
            ctx.register_table(
                table.clone(),
                Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?),
            )?;
        }
    }
    ctx.table(table).await
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// DataFusion filters listed files by extension; a file is read whatever it is called.
fn extension(p: &Path) -> String {
    p.extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default()
}

/// What checking a spec against its inputs' schemas found.
#[derive(Debug)]
pub struct Checked {
    pub outputs: Vec<(String, SchemaRef)>,
    /// The step after which the output's columns depend on the data (unfold, pivot).
    pub dynamic: Option<String>,
}

/// Plans the spec over empty inputs of the given schemas: its problems, or its outputs'
/// schemas.
pub async fn check(
    spec: &VisualSpec,
    inputs: &[(String, SchemaRef)],
    outputs: &[String],
) -> Result<Checked, PlanError> {
    let ctx = session(&Limits::default())?;
    let mut dfs = Vec::new();
    for (name, schema) in inputs {
        dfs.push((
            name.clone(),
            open(&ctx, name, &Source::Empty(schema.clone())).await?,
        ));
    }
    let planned = plan::plan(spec, dfs, outputs, Mode::Check).await?;
    Ok(Checked {
        outputs: planned
            .outputs
            .iter()
            .map(|(n, df)| (n.clone(), Arc::new(df.schema().as_arrow().clone())))
            .collect(),
        dynamic: planned.dynamic,
    })
}

/// What `capstan recipe explain` shows of each output: the logical plan as compiled, the plan
/// DataFusion's optimizer makes of it, and the schema.
pub struct Explained {
    pub output: String,
    pub logical: String,
    pub optimized: String,
    pub schema: SchemaRef,
}

pub async fn explain(
    spec: &VisualSpec,
    inputs: &[(String, Source)],
    outputs: &[String],
) -> Result<(Vec<Explained>, Option<String>), PlanError> {
    let ctx = session(&Limits::default())?;
    let mut dfs = Vec::new();
    for (name, source) in inputs {
        dfs.push((name.clone(), open(&ctx, name, source).await?));
    }
    let mode = if inputs.iter().all(|(_, s)| !matches!(s, Source::Empty(_))) {
        Mode::Run
    } else {
        Mode::Check
    };
    let planned = plan::plan(spec, dfs, outputs, mode).await?;
    let mut out = Vec::new();
    for (name, df) in planned.outputs {
        let schema = Arc::new(df.schema().as_arrow().clone());
        let logical = df.logical_plan().display_indent().to_string();
        let optimized = df.into_optimized_plan()?.display_indent().to_string();
        out.push(Explained {
            output: name,
            logical,
            optimized,
            schema,
        });
    }
    Ok((out, planned.dynamic))
}

/// What a run wrote.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Rows written, per output.
    pub rows: Vec<(String, u64)>,
    /// What two-pass steps found in the data.
    pub discovered: Vec<String>,
}

/// Runs the spec: reads the inputs, writes each output as Parquet to its path (whole or not at
/// all: into a temporary file beside it, renamed when complete).
pub async fn run(
    ctx: &SessionContext,
    spec: &VisualSpec,
    inputs: &[(String, Source)],
    outputs: &[(String, PathBuf)],
) -> Result<RunReport, PlanError> {
    let mut dfs = Vec::new();
    for (name, source) in inputs {
        dfs.push((name.clone(), open(ctx, name, source).await?));
    }
    let names: Vec<String> = outputs.iter().map(|(n, _)| n.clone()).collect();
    let planned = plan::plan(spec, dfs, &names, Mode::Run).await?;
    let mut report = RunReport {
        discovered: planned.discovered,
        ..RunReport::default()
    };
    for (name, df) in planned.outputs {
        let Some((_, path)) = outputs.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let rows = write_parquet(df, path).await?;
        report.rows.push((name, rows));
    }
    Ok(report)
}

/// Streams a plan's batches into a Parquet file, as capstan's store writes them (snappy, one
/// row group per 1M rows), its columns encoded on the session's threads.
pub async fn write_parquet(df: DataFrame, path: &Path) -> Result<u64, PlanError> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    let threads = df.task_ctx().session_config().target_partitions();
    let stream = df.execute_stream().await?;
    Ok(writer::write(stream, schema, path, threads).await?)
}

//! Visual recipes from the binary's side: `capstan transform run` (the built-in engine, as an
//! activity runs it), schema propagation for `capstan check`, `capstan recipe explain`, and the
//! PySpark the daemon runs for visual recipes on a Spark configuration.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use capstan_core::diag::Diagnostic;
use capstan_core::model::{Home, Project, Recipe};
use capstan_core::visual::{ColumnType, VisualRecipe, VisualSpec};
use capstan_core::{Severity, flow};
use capstan_data::DatasetStore;
use capstan_data::arrow::datatypes::{Field, Schema, SchemaRef};
use capstan_engine::backend::ActivitySpec;
use capstan_transform::{Limits, PlanError, Problem, Source};

use crate::cli::{RecipeExplainArgs, TransformInstallArgs, TransformRunArgs};

/// `capstan transform run SPEC`: one visual recipe's activity. Inputs and outputs are files
/// named by `CAPSTAN_TRANSFORM_INPUTS` and `_OUTPUTS` (JSON maps, in the recipe's order); the
/// memory and CPU budget is the activity's limits, which its backend passes as arguments.
pub fn run(args: &TransformRunArgs) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("cannot read the recipe's spec {}", args.spec.display()))?;
    let spec: VisualSpec = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a visual recipe's spec", args.spec.display()))?;
    // Local activities get their datasets as files; containers and pods, through the data
    // API (the variables then list names, not paths).
    let api =
        std::env::var("CAPSTAN_TRANSFORM_INPUTS").is_ok_and(|v| v.trim_start().starts_with('['));
    let (inputs, outputs) = if api {
        // Somewhere writable whoever the container runs as.
        let work = std::env::temp_dir().join(format!(
            "capstan-transform-{}",
            std::env::var("CAPSTAN_ACTIVITY_ID").unwrap_or_default()
        ));
        (
            names_from_env("CAPSTAN_TRANSFORM_INPUTS")?
                .into_iter()
                .map(|n| {
                    let p = work.join("inputs").join(format!("{n}.parquet"));
                    (n, p)
                })
                .collect::<Vec<_>>(),
            names_from_env("CAPSTAN_TRANSFORM_OUTPUTS")?
                .into_iter()
                .map(|n| {
                    let p = work.join("outputs").join(format!("{n}.parquet"));
                    (n, p)
                })
                .collect::<Vec<_>>(),
        )
    } else {
        (
            files_from_env("CAPSTAN_TRANSFORM_INPUTS")?,
            files_from_env("CAPSTAN_TRANSFORM_OUTPUTS")?,
        )
    };
    let limits = Limits {
        memory_bytes: args.memory_limit,
        spill_dir: std::env::var_os("CAPSTAN_TRANSFORM_SPILL")
            .map(PathBuf::from)
            .or_else(|| {
                api.then(|| {
                    std::env::temp_dir()
                        .join(format!(
                            "capstan-transform-{}",
                            std::env::var("CAPSTAN_ACTIVITY_ID").unwrap_or_default()
                        ))
                        .join("spill")
                })
            }),
        threads: args.threads,
    };
    if let Some(dir) = &limits.spill_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the spill folder {}", dir.display()))?;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = limits.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build()?;
    let kind = spec.kind().as_str();
    println!(
        "capstan's built-in engine (DataFusion): {kind} recipe, {} input{}, memory budget {}",
        inputs.len(),
        if inputs.len() == 1 { "" } else { "s" },
        match limits.memory_bytes {
            Some(b) => format!(
                "{} of the {} limit, spilling to disk beyond",
                crate::jobs::human_bytes((b as f64 * capstan_transform::POOL_SHARE) as u64),
                crate::jobs::human_bytes(b)
            ),
            None => "unlimited".into(),
        }
    );
    let started = std::time::Instant::now();
    let api_client = if api {
        Some(DataApi::from_env()?)
    } else {
        None
    };
    if let Some(client) = &api_client {
        rt.block_on(async {
            for (name, path) in &inputs {
                let rows = client.fetch(name, path).await?;
                println!(
                    "read {rows} row{} of {name} through the data API",
                    if rows == 1 { "" } else { "s" }
                );
            }
            for (_, path) in &outputs {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
            }
            anyhow::Ok(())
        })?;
    }
    let result = rt.block_on(async {
        let ctx = capstan_transform::session(&limits)?;
        let inputs: Vec<(String, Source)> = inputs
            .into_iter()
            .map(|(n, p)| (n, Source::Parquet(p)))
            .collect();
        capstan_transform::run(&ctx, &spec, &inputs, &outputs).await
    });
    if let (Some(client), Ok(_)) = (&api_client, &result) {
        rt.block_on(async {
            for (name, path) in &outputs {
                client.upload(name, path).await?;
            }
            anyhow::Ok(())
        })?;
    }
    match result {
        Ok(report) => {
            for d in &report.discovered {
                println!("{d}");
            }
            for (name, rows) in &report.rows {
                println!(
                    "wrote {rows} row{} to {name}",
                    if *rows == 1 { "" } else { "s" }
                );
            }
            println!("done in {:.2}s", started.elapsed().as_secs_f64());
            let _ = std::io::stdout().flush();
            Ok(0)
        }
        Err(e) => {
            let _ = std::io::stdout().flush();
            // One line, last on stderr: it becomes the job's diagnosis.
            eprintln!("{}", failure_line(kind, &e));
            Ok(1)
        }
    }
}

/// What a failed run says, for a data scientist: the step and what went wrong, without
/// DataFusion's own framing.
fn failure_line(kind: &str, e: &PlanError) -> String {
    match e {
        PlanError::Spec(p) => format!(
            "the {kind} recipe's spec is wrong at {}: {}{}",
            if p.path.is_empty() { kind } else { &p.path },
            p.message,
            p.help
                .as_ref()
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        ),
        PlanError::Engine(e) => {
            let text = e.to_string();
            // Our own failures (`on_error = "fail"`) come wrapped in DataFusion's context.
            let inner = text
                .rsplit("Execution error: ")
                .next()
                .unwrap_or(&text)
                .trim();
            if let Some(resources) = text.find("Resources exhausted") {
                return format!(
                    "the built-in engine ran out of its memory budget and could not spill: {} (ask for a configuration with more memory)",
                    text[resources..].trim()
                );
            }
            format!("the {kind} recipe failed: {inner}")
        }
    }
}

fn files_from_env(var: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let raw = std::env::var(var).with_context(|| {
        format!("{var} is not set: `capstan transform run` runs a visual recipe's activity, started by the daemon (use `capstan run`)")
    })?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&raw).with_context(|| format!("{var} is not a JSON object"))?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(p) => Ok((k, PathBuf::from(p))),
            other => bail!("{var}: `{k}` is {other}, not a path"),
        })
        .collect()
}

fn names_from_env(var: &str) -> anyhow::Result<Vec<String>> {
    let raw = std::env::var(var).with_context(|| format!("{var} is not set"))?;
    serde_json::from_str(&raw).with_context(|| format!("{var} is not a JSON list of dataset names"))
}

/// `capstan transform install FROM TO`: copies the engine's files, keeping their modes, so that
/// the pod's main container can run them from the `emptyDir` the init container fills.
pub fn install(args: &TransformInstallArgs) -> anyhow::Result<u8> {
    fn copy(from: &Path, to: &Path) -> anyhow::Result<u64> {
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        let mut bytes = 0;
        for entry in
            std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
        {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                bytes += copy(&entry.path(), &target)?;
            } else {
                bytes += std::fs::copy(entry.path(), &target).with_context(|| {
                    format!(
                        "cannot copy {} to {}",
                        entry.path().display(),
                        target.display()
                    )
                })?;
            }
        }
        Ok(bytes)
    }
    let bytes = copy(&args.from, &args.to)?;
    println!(
        "capstan's engine copied to {} ({})",
        args.to.display(),
        crate::jobs::human_bytes(bytes)
    );
    Ok(crate::exit::OK)
}

/// The data API, as an activity in a container or pod reaches it: its address and token from
/// the environment, the datasets of its own project.
struct DataApi {
    http: reqwest::Client,
    base: String,
    token: String,
    project: String,
}

impl DataApi {
    fn from_env() -> anyhow::Result<DataApi> {
        let base = std::env::var("CAPSTAN_API_URL").context("CAPSTAN_API_URL is not set")?;
        // A file in Docker containers; a variable from the activity's Secret in pods.
        let token = match std::env::var("CAPSTAN_TOKEN_FILE") {
            Ok(file) => std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the activity's token {file}"))?,
            Err(_) => std::env::var("CAPSTAN_TOKEN")
                .context("neither CAPSTAN_TOKEN_FILE nor CAPSTAN_TOKEN is set")?,
        }
        .trim()
        .to_string();
        Ok(DataApi {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token,
            project: std::env::var("CAPSTAN_PROJECT").context("CAPSTAN_PROJECT is not set")?,
        })
    }

    fn url(&self, dataset: &str) -> String {
        format!(
            "{}/api/v1/projects/{}/datasets/{dataset}/data",
            self.base, self.project
        )
    }

    async fn refused(&self, what: &str, resp: reqwest::Response) -> anyhow::Error {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        anyhow::anyhow!("the data API refused to {what}: {status}: {message}")
    }

    /// Downloads an input's stored Parquet file as it is (no decoding on either side), which
    /// DataFusion then reads with its projection and on every thread; returns its rows.
    async fn fetch(&self, dataset: &str, path: &Path) -> anyhow::Result<u64> {
        use futures_util::StreamExt;
        let resp = self
            .http
            .get(format!("{}?format=parquet", self.url(dataset)))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the capstan data API at {}", self.base))?;
        if !resp.status().is_success() {
            return Err(self.refused(&format!("read `{dataset}`"), resp).await);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = tokio::fs::File::create(path).await?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        drop(file);
        let file = std::fs::File::open(path)?;
        let rows =
            capstan_data::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                file,
            )
            .with_context(|| format!("the data API sent `{dataset}` as no valid Parquet file"))?
            .metadata()
            .file_metadata()
            .num_rows();
        Ok(rows.max(0) as u64)
    }

    /// Streams an output's Parquet file to the API as Arrow IPC.
    async fn upload(&self, dataset: &str, path: &Path) -> anyhow::Result<()> {
        use capstan_data::arrow::array::RecordBatchReader;
        use capstan_data::arrow::ipc::writer::StreamWriter;
        use capstan_data::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        let path = path.to_path_buf();
        let producer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            struct Chunks(tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>, Vec<u8>);
            impl std::io::Write for Chunks {
                fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                    self.1.extend_from_slice(b);
                    if self.1.len() >= 1 << 20 {
                        self.flush()?;
                    }
                    Ok(b.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    if !self.1.is_empty() {
                        let chunk = std::mem::take(&mut self.1);
                        self.0
                            .blocking_send(Ok(chunk))
                            .map_err(|_| std::io::Error::other("the upload stopped"))?;
                    }
                    Ok(())
                }
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?
                .with_batch_size(64 * 1024)
                .build()?;
            let mut writer = StreamWriter::try_new(Chunks(tx, Vec::new()), &reader.schema())?;
            for batch in reader {
                writer.write(&batch?)?;
            }
            writer.finish()?;
            writer.into_inner()?.flush()?;
            Ok(())
        });
        let body = reqwest::Body::wrap_stream(tokio_stream(rx));
        let resp = self
            .http
            .put(self.url(dataset))
            .bearer_auth(&self.token)
            .header("content-type", "application/vnd.apache.arrow.stream")
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the capstan data API at {}", self.base))?;
        // The API's answer first: a refusal stops it reading, which the producer sees only as
        // a stopped upload.
        if !resp.status().is_success() {
            return Err(self.refused(&format!("write `{dataset}`"), resp).await);
        }
        producer.await??;
        Ok(())
    }
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// --- Schemas of a project's datasets ---------------------------------------------------------

/// The Arrow schema a dataset declares in project.toml, if it declares one.
fn declared_schema(project: &Project, dataset: &str) -> Option<SchemaRef> {
    let d = project.datasets.get(dataset)?;
    if d.schema.is_empty() {
        return None;
    }
    let fields: Option<Vec<Field>> = d
        .schema
        .iter()
        .map(|(name, t)| {
            let ct: ColumnType =
                serde_json::from_value(serde_json::Value::String(t.value.clone())).ok()?;
            Some(Field::new(
                name,
                capstan_transform::types::arrow_type(ct),
                true,
            ))
        })
        .collect();
    Some(Arc::new(Schema::new(fields?)))
}

/// What is known of a project's datasets' schemas: stored data's, declared ones, and those
/// derived through visual recipes in flow order. With the problems visual recipes have.
pub struct Schemas {
    pub known: BTreeMap<String, SchemaRef>,
    /// The datasets that have data (their stored schema).
    pub stored: BTreeMap<String, SchemaRef>,
    pub problems: Vec<Diagnostic>,
    /// Visual recipes not checked, and why (an input of unknown schema).
    pub unchecked: Vec<(String, String)>,
}

pub async fn project_schemas(root: &Path, home: &Home, project: &Project) -> Schemas {
    let store = capstan_data::ParquetStore::new(root);
    let mut known = BTreeMap::new();
    // What the data has, else what the dataset declares (a declared schema may name only
    // some of the columns).
    let mut stored = BTreeMap::new();
    for name in project.datasets.keys() {
        if let Ok(Some(info)) = store.info(&project.key, name) {
            stored.insert(name.clone(), info.schema.clone());
            known.insert(name.clone(), info.schema);
        } else if let Some(s) = declared_schema(project, name) {
            known.insert(name.clone(), s);
        }
    }
    let mut out = Schemas {
        known,
        stored: stored.clone(),
        problems: Vec::new(),
        unchecked: Vec::new(),
    };
    for recipe in flow::order(project) {
        if let Some(ml) = &recipe.ml {
            out.problems
                .extend(ml_problems(home, project, recipe, ml, &out.known));
            continue;
        }
        let Some(visual) = &recipe.visual else {
            continue;
        };
        let inputs: Vec<String> = recipe.inputs.iter().map(|i| i.value.clone()).collect();
        let outputs: Vec<String> = recipe.outputs.iter().map(|o| o.value.clone()).collect();
        let mut schemas = Vec::new();
        for i in &inputs {
            match out.known.get(i) {
                Some(s) => schemas.push((i.clone(), s.clone())),
                None => break,
            }
        }
        if schemas.len() < inputs.len() {
            let missing = inputs.iter().find(|i| !out.known.contains_key(*i));
            out.unchecked.push((
                recipe.name.clone(),
                format!(
                    "input `{}` has no data and declares no schema",
                    missing.map(String::as_str).unwrap_or("")
                ),
            ));
            for o in &outputs {
                out.known.remove(o);
            }
            continue;
        }
        match capstan_transform::check(&visual.spec, &schemas, &outputs).await {
            Ok(checked) => {
                for (name, schema) in checked.outputs {
                    if checked.dynamic.is_none() {
                        out.known.insert(name, schema);
                    } else if let Some(s) = stored.get(&name) {
                        // Columns from the data: what the last run wrote.
                        out.known.insert(name, s.clone());
                    } else {
                        out.known.remove(&name);
                    }
                }
                if let Some(step) = checked.dynamic {
                    out.unchecked.push((
                        recipe.name.clone(),
                        format!("its output columns come from the data ({step}): recipes downstream are checked when it has run"),
                    ));
                }
            }
            Err(e) => {
                out.problems.push(diagnostic(home, recipe, visual, &e));
                for o in &outputs {
                    out.known.remove(o);
                }
            }
        }
    }
    out
}

/// What an ML recipe's spec says of its input's columns (the first input is the data: a
/// training's target and features must be its columns), and of a saved model it does not
/// name among its inputs or outputs, or that the project does not declare.
fn ml_problems(
    home: &Home,
    project: &Project,
    recipe: &Recipe,
    ml: &capstan_core::ml::MlRecipe,
    known: &BTreeMap<String, SchemaRef>,
) -> Vec<Diagnostic> {
    use capstan_core::ml::MlSpec;
    let file = home.sources.path(recipe.kind.loc.file).to_path_buf();
    let at = |path: &str, message: String, help: Option<String>| {
        let loc = ml.locs.loc(path);
        Diagnostic {
            severity: Severity::Error,
            file: file.clone(),
            line: loc.line,
            col: loc.col,
            field: ml.locs.field(path),
            message,
            help,
        }
    };
    let mut out = Vec::new();
    let (model, path) = match &ml.spec {
        MlSpec::Train(_) => (
            recipe
                .outputs
                .iter()
                .find(|o| project.models.contains_key(&o.value)),
            "outputs",
        ),
        MlSpec::Score(a) | MlSpec::Evaluate(a) => {
            (recipe.inputs.iter().find(|i| i.value == a.model), "inputs")
        }
    };
    match (&ml.spec, model) {
        (MlSpec::Train(_), None) => out.push(at(
            "",
            format!("a training writes a saved model: none of its {path} is one"),
            Some("declare it as [model.NAME] in project.toml and list it in `outputs`".into()),
        )),
        (MlSpec::Score(a) | MlSpec::Evaluate(a), _) if !project.models.contains_key(&a.model) => {
            out.push(at(
                "model",
                format!("no saved model `{}` in project `{}`", a.model, project.key),
                Some(format!("declare it as [model.{}] in project.toml", a.model)),
            ))
        }
        (MlSpec::Score(a) | MlSpec::Evaluate(a), None) => out.push(at(
            "model",
            format!("the model `{}` is not one of the recipe's {path}", a.model),
            Some(format!("add \"{}\" to `inputs`", a.model)),
        )),
        _ => {}
    }
    let data = recipe
        .inputs
        .iter()
        .find(|i| !project.models.contains_key(&i.value));
    if let (MlSpec::Train(t), Some(input)) = (&ml.spec, data)
        && let Some(schema) = known.get(&input.value)
    {
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for (path, message, help) in capstan_core::ml::schema_problems(t, &input.value, &columns) {
            out.push(at(&path, message, help));
        }
    }
    out
}

/// A planning problem as `check` reports it: at the file, line and column of the part of the
/// spec it concerns (for a formula, of the character).
fn diagnostic(home: &Home, recipe: &Recipe, visual: &VisualRecipe, e: &PlanError) -> Diagnostic {
    let file = home.sources.path(recipe.kind.loc.file).to_path_buf();
    match e {
        PlanError::Spec(Problem {
            path,
            span,
            message,
            help,
        }) => {
            let loc = match span {
                Some(span) => {
                    let text = visual
                        .spec
                        .formulas()
                        .into_iter()
                        .find(|(p, _)| p == path)
                        .map(|(_, t)| t.to_string())
                        .unwrap_or_default();
                    visual.locs.loc_in(path, &text, span.start)
                }
                None => visual.locs.loc(path),
            };
            Diagnostic {
                severity: Severity::Error,
                file,
                line: loc.line,
                col: loc.col,
                field: visual.locs.field(path),
                message: message.clone(),
                help: help.clone(),
            }
        }
        PlanError::Engine(e) => Diagnostic {
            severity: Severity::Error,
            file,
            line: recipe.kind.loc.line,
            col: recipe.kind.loc.col,
            field: visual.locs.table.clone(),
            message: format!("the built-in engine cannot plan this recipe: {e}"),
            help: None,
        },
    }
}

/// `check`'s schema propagation over every project.
pub fn check_flows(root: &Path, home: &Home) -> Vec<Diagnostic> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return Vec::new();
    };
    rt.block_on(async {
        let mut out = Vec::new();
        for project in home.projects.values() {
            if project
                .recipes
                .values()
                .any(|r| r.visual.is_some() || r.ml.is_some())
            {
                out.extend(project_schemas(root, home, project).await.problems);
            }
        }
        out
    })
}

// --- Visual recipes on Spark -----------------------------------------------------------------

/// The daemon's PySpark for visual recipes on a Spark configuration, from the inputs' stored
/// schemas.
pub struct Codegen;

impl capstan_engine::SparkCodegen for Codegen {
    fn pyspark<'a>(
        &'a self,
        spec: &'a ActivitySpec,
    ) -> futures_util::future::BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let capstan_engine::backend::Workload::Transform { spec: json } = &spec.workload else {
                return Err("not a visual recipe".into());
            };
            let visual: VisualSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
            let store = capstan_data::ParquetStore::new(&spec.home_root);
            let mut inputs = Vec::new();
            for i in &spec.inputs {
                match store.info(&spec.project, i) {
                    Ok(Some(info)) => inputs.push((i.clone(), info.schema)),
                    Ok(None) => return Err(format!("input `{i}` has no data")),
                    Err(e) => return Err(format!("cannot read input `{i}`: {e}")),
                }
            }
            capstan_transform::pyspark::generate(&visual, &inputs, &spec.outputs)
                .await
                .map_err(|e| format!("this recipe cannot run on Spark: {}", plan_text(&e)))
        })
    }
}

fn plan_text(e: &PlanError) -> String {
    match e {
        PlanError::Spec(p) if p.path.is_empty() => p.message.clone(),
        PlanError::Spec(p) => format!("{}: {}", p.path, p.message),
        PlanError::Engine(e) => e.to_string(),
    }
}

// --- capstan recipe explain ------------------------------------------------------------------

pub fn explain(root: &Path, args: &RecipeExplainArgs) -> anyhow::Result<u8> {
    let (home, r) = crate::explain::resolve_target(root, &args.target, &args.user, &args.select)?;
    let (project, recipe) = home
        .recipe(&r.project, &r.recipe)
        .context("the resolved recipe is gone")?;
    let Some(visual) = &recipe.visual else {
        bail!(
            "{}/{} is a {} recipe: `recipe explain` shows visual recipes (for any recipe, see `capstan config explain`)",
            r.project,
            r.recipe,
            recipe.kind.value.as_str()
        );
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let schemas = project_schemas(root, &home, project).await;
        let inputs: Vec<String> = recipe.inputs.iter().map(|i| i.value.clone()).collect();
        let outputs: Vec<String> = recipe.outputs.iter().map(|o| o.value.clone()).collect();
        // With data where there is some (two-pass steps then read it), else on the schemas.
        let mut sources = Vec::new();
        for i in &inputs {
            let file = root.join("data").join(&r.project).join(i).join("data.parquet");
            match (schemas.stored.contains_key(i), schemas.known.get(i)) {
                (true, _) => sources.push((i.clone(), Source::Parquet(file))),
                (false, Some(s)) => sources.push((i.clone(), Source::Empty(s.clone()))),
                _ => bail!(
                    "input `{i}` has no data and declares no schema, so its columns are unknown: build it first, or declare its schema in project.toml"
                ),
            }
        }
        let (engine, why) = if r.on_spark() {
            (
                "Spark".to_string(),
                format!(
                    "spark_config `{}` ({})",
                    r.spark_config.value.as_deref().unwrap_or(""),
                    r.spark_config.origin
                ),
            )
        } else {
            (
                "capstan's built-in engine (DataFusion)".to_string(),
                format!(
                    "no Spark configuration is chosen; it runs {}",
                    match r.kind.value {
                        capstan_core::model::ExecKind::Local => "as a local process".to_string(),
                        capstan_core::model::ExecKind::Kubernetes => format!(
                            "in a Kubernetes pod, copied from the engine image ({})",
                            home.engine_image_record().map_or(
                                "not built yet: run `capstan image build-engine`".to_string(),
                                |rec| format!("capstan-engine:{}", rec.tag)
                            )
                        ),
                        other => format!("in a {other} container"),
                    }
                ),
            )
        };
        let explained = capstan_transform::explain(&visual.spec, &sources, &outputs).await;
        let schemas_in: Vec<(String, SchemaRef)> = inputs
            .iter()
            .filter_map(|i| schemas.known.get(i).map(|s| (i.clone(), s.clone())))
            .collect();
        let pyspark = if schemas_in.len() == inputs.len() {
            capstan_transform::pyspark::generate(&visual.spec, &schemas_in, &outputs)
                .await
                .map_err(|e| plan_text(&e))
        } else {
            Err("input schemas unknown".to_string())
        };
        let (explained, dynamic) = match explained {
            Ok(e) => e,
            Err(e) => {
                let d = diagnostic(&home, recipe, visual, &e);
                eprintln!("{d}");
                return Ok(crate::exit::FAILURE);
            }
        };
        if args.json {
            let out = serde_json::json!({
                "recipe": format!("{}/{}", r.project, r.recipe),
                "kind": recipe.kind.value.as_str(),
                "engine": engine,
                "why": why,
                "outputs": explained.iter().map(|e| serde_json::json!({
                    "dataset": e.output,
                    "schema": e.schema.fields().iter().map(|f| serde_json::json!({
                        "name": f.name(),
                        "type": capstan_transform::types::type_name(f.data_type()),
                    })).collect::<Vec<_>>(),
                    "plan": e.logical,
                    "optimized_plan": e.optimized,
                })).collect::<Vec<_>>(),
                "dynamic": dynamic,
                "pyspark": pyspark.as_ref().ok(),
                "pyspark_unavailable": pyspark.as_ref().err(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(0);
        }
        println!("{}/{}: a {} recipe", r.project, r.recipe, recipe.kind.value.as_str());
        println!("engine: {engine}");
        println!("  why: {why}");
        if let Some(step) = &dynamic {
            println!("  note: the columns after {step} come from the data; with no data yet, they are not shown");
        }
        for e in &explained {
            println!();
            println!("output {}:", e.output);
            for f in e.schema.fields() {
                println!(
                    "  {:<28} {}",
                    f.name(),
                    capstan_transform::types::type_name(f.data_type())
                );
            }
            println!();
            println!("DataFusion plan (as compiled):");
            for l in e.logical.lines() {
                println!("  {l}");
            }
            println!();
            println!("DataFusion plan (optimized):");
            for l in e.optimized.lines() {
                println!("  {l}");
            }
        }
        println!();
        match &pyspark {
            Ok(code) => {
                println!("PySpark (what a Spark configuration runs):");
                for l in code.lines() {
                    println!("  {l}");
                }
            }
            Err(why) => println!("PySpark: not available: {why}"),
        }
        Ok(0)
    })
}

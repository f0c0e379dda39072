//! The backend trait: what the engine needs from local processes, Docker and Kubernetes.
//!
//! A backend runs one activity to completion ([`Backend::run`]), reporting progress through
//! [`ActivityControl`] and honouring its cancellation token; after a daemon restart it finds an
//! activity again from what [`ActivityEvent::Started`] recorded ([`Backend::resume`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capstan_core::access::LocalIdentity;
use capstan_core::job::JobState;
use capstan_core::model::{CodeEnv, ExecConfig, ExecKind, RecipeKind, SparkConfig};
use capstan_core::quantity::{Cpu, Duration, Memory};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Everything a backend needs to run one activity.
#[derive(Clone, Debug)]
pub struct ActivitySpec {
    pub job_id: i64,
    pub idx: i64,
    pub attempt: i64,
    /// The activity's own folder under the home's `state/`: logs, status, staged code.
    pub dir: PathBuf,
    pub home_root: PathBuf,
    pub project: String,
    pub recipe: String,
    pub recipe_kind: RecipeKind,
    pub user: String,
    /// Who a local recipe runs as (containers and pods are isolated by their engine).
    pub identity: LocalIdentity,
    /// Whether the job's user is an instance admin (or the daemon's local caller): where
    /// the daemon cannot switch users, only their local recipes run.
    pub admin: bool,
    /// Absolute path of the recipe's code file.
    pub code_file: Option<PathBuf>,
    /// Absolute path of the project's shared library folder.
    pub lib_dir: Option<PathBuf>,
    /// The datasets the recipe declares it reads and writes (its token allows exactly these).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub kind: ExecKind,
    pub exec_config: Option<String>,
    pub cluster: Option<String>,
    pub image: Option<String>,
    pub docker_host: Option<String>,
    /// Kubernetes: the namespace, the kubeconfig context and file (`None`: the usual search).
    pub namespace: Option<String>,
    pub kube_context: Option<String>,
    pub kubeconfig: Option<String>,
    pub env: BTreeMap<String, String>,
    pub code_env: Option<CodeEnv>,
    pub timeout: Option<Duration>,
    pub cpu_limit: Option<Cpu>,
    pub memory_limit: Option<Memory>,
    pub gpus: u32,
    /// The execution configuration itself, for engine-specific options (Docker run options,
    /// shared memory, Kubernetes placement).
    pub exec: Option<ExecConfig>,
    /// How the recipe reaches its datasets: the data API and its own token.
    pub data: Option<DataAccess>,
    /// Spark recipes: the resolved Spark configuration (`None`: local mode with defaults).
    pub spark: Option<SparkConfig>,
    /// What runs: the recipe's code, a visual recipe's spec, or code generated for it.
    pub workload: Workload,
    /// A visual recipe on Kubernetes: the engine image its pod copies capstan from (see
    /// [`crate::engine_image`]); `None` when it was never built.
    pub engine_image: Option<String>,
    /// The recipe's saved models among its inputs and outputs (the others are datasets): a
    /// training stages a version of its output model, an evaluation an evaluation of its input
    /// model, both committed with the activity.
    pub models: Vec<String>,
    /// ML recipes: what the runner trains, scores or evaluates.
    pub ml: Option<capstan_core::ml::MlSpec>,
    /// A training's policy for whether its version becomes the active one.
    pub activation: capstan_core::ml::Activation,
    /// Its share of a distributed search (`None`: the activity is whole).
    pub part: Option<capstan_core::job::Part>,
}

/// What an activity runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Workload {
    /// The recipe's code file (`code_file`), run by its kind's interpreter.
    #[default]
    Code,
    /// A visual recipe's spec (JSON), run by capstan's built-in engine: `capstan transform
    /// run` reads it from [`TRANSFORM_SPEC`] in the activity's working folder.
    Transform { spec: String },
    /// Code capstan generated for the recipe (a visual recipe's PySpark, an ML recipe's
    /// runner), staged as `name` in place of a code file.
    Generated { name: String, source: String },
}

/// The file a visual recipe's spec is staged as.
pub const TRANSFORM_SPEC: &str = "transform.json";

impl ActivitySpec {
    /// Whether this is a notebook kernel's activity (its agent), not a recipe's.
    pub fn is_kernel(&self) -> bool {
        self.recipe == capstan_core::job::KERNEL_RECIPE
    }

    /// The arguments of `capstan transform run` for this activity: its spec, and the limits
    /// its engine plans within (the memory limit, the CPU limit in whole threads).
    pub fn transform_args(&self, spec_path: &str) -> Vec<String> {
        let mut args = vec!["transform".to_string(), "run".into(), spec_path.to_string()];
        if let Some(m) = self.memory_limit {
            args.extend(["--memory-limit".into(), m.bytes().to_string()]);
        }
        if let Some(c) = self.cpu_limit {
            args.extend([
                "--threads".into(),
                c.millis().div_ceil(1000).max(1).to_string(),
            ]);
        }
        args
    }
}

/// The data API's address and an activity's token. Backends hand the token to the recipe as a
/// file, never as an environment variable (which `docker inspect` would show).
#[derive(Clone, PartialEq, Eq)]
pub struct DataAccess {
    pub api_url: String,
    pub token: String,
}

impl std::fmt::Debug for DataAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in a log line.
        f.debug_struct("DataAccess")
            .field("api_url", &self.api_url)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl ActivitySpec {
    /// A spec that knows where the activity is and little else; the rest takes its defaults
    /// (no limits, no code, no data).
    pub fn bare(
        job_id: i64,
        attempt: i64,
        dir: PathBuf,
        home_root: PathBuf,
        kind: ExecKind,
    ) -> ActivitySpec {
        ActivitySpec {
            job_id,
            idx: 0,
            attempt,
            dir,
            home_root,
            project: String::new(),
            recipe: String::new(),
            recipe_kind: RecipeKind::Shell,
            user: String::new(),
            identity: LocalIdentity::Daemon,
            admin: false,
            code_file: None,
            lib_dir: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            kind,
            exec_config: None,
            cluster: None,
            image: None,
            docker_host: None,
            namespace: None,
            kube_context: None,
            kubeconfig: None,
            env: BTreeMap::new(),
            code_env: None,
            timeout: None,
            cpu_limit: None,
            memory_limit: None,
            gpus: 0,
            exec: None,
            data: None,
            spark: None,
            workload: Workload::Code,
            engine_image: None,
            models: Vec::new(),
            ml: None,
            activation: capstan_core::ml::Activation::Always,
            part: None,
        }
    }

    /// The variables every recipe gets, whatever runs it: who and what it is (capstan's
    /// runtime reads them), and unbuffered Python output, so the log shows lines as printed.
    pub fn capstan_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CAPSTAN_JOB_ID", self.job_id.to_string()),
            ("CAPSTAN_ACTIVITY_ID", self.activity_id()),
            ("CAPSTAN_PROJECT", self.project.clone()),
            ("CAPSTAN_RECIPE", self.recipe.clone()),
            ("CAPSTAN_USER", self.user.clone()),
            (
                "CAPSTAN_EXEC_CONFIG",
                self.exec_config.clone().unwrap_or_default(),
            ),
            ("PYTHONUNBUFFERED", "1".to_string()),
        ]
    }

    /// The files a recipe runs with, as (path relative to its work folder, contents): its code
    /// file by name, and the project's library under `lib/`. Every file must resolve inside the
    /// project's folder: a symbolic link that leads elsewhere (to the home's `state/`, say) is
    /// refused, since the daemon reads these files with its own rights.
    pub fn code_files(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut files = Vec::new();
        match &self.workload {
            Workload::Code => {}
            Workload::Transform { spec } => {
                files.push((TRANSFORM_SPEC.to_string(), spec.clone().into_bytes()))
            }
            Workload::Generated { name, source } => {
                files.push((name.clone(), source.clone().into_bytes()))
            }
        }
        if self.code_file.is_none() && self.lib_dir.is_none() {
            return Ok(files);
        }
        let project = self.home_root.join("projects").join(&self.project);
        let inside = std::fs::canonicalize(&project)
            .map_err(|e| format!("cannot read the project folder {}: {e}", project.display()))?;
        if let Some(code) = &self.code_file
            && self.workload == Workload::Code
        {
            let name = code
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, read_inside(&inside, code)?));
        }
        if let Some(lib) = &self.lib_dir {
            collect_inside(&inside, lib, "lib", 0, &mut files)?;
        }
        Ok(files)
    }

    /// `job-activity`, as used in labels, cgroup names and logs.
    pub fn activity_id(&self) -> String {
        format!("{}-{}", self.job_id, self.idx)
    }

    /// The log file: one line per output line, `TIMESTAMP STREAM TEXT`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// How to name the configuration in a diagnosis.
    /// The configuration that placed the activity, in the user's words (in diagnoses such as
    /// "out of memory: exceeded the 2 GiB limit of …").
    pub fn config_phrase(&self) -> String {
        match (&self.exec_config, &self.spark) {
            (Some(c), _) => format!("execution configuration '{c}'"),
            // A Spark driver pod on Kubernetes: placed by its Spark configuration.
            (None, Some(s))
                if self.recipe_kind.is_spark()
                    && s.master.value == capstan_core::model::SparkMaster::Kubernetes =>
            {
                format!("Spark configuration '{}'", s.name)
            }
            (None, _) => "the built-in local execution".to_string(),
        }
    }
}

/// Where `path` really is, if that is inside the folder `inside` (canonical).
fn resolve_inside(inside: &Path, path: &Path) -> Result<PathBuf, String> {
    let real =
        std::fs::canonicalize(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !real.starts_with(inside) {
        return Err(format!(
            "{} is a link to {}, outside the project's folder: capstan runs only code that is in the project",
            path.display(),
            real.display()
        ));
    }
    Ok(real)
}

/// Reads `path` if it resolves inside the folder `inside` (canonical).
fn read_inside(inside: &Path, path: &Path) -> Result<Vec<u8>, String> {
    let real = resolve_inside(inside, path)?;
    std::fs::read(&real).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn collect_inside(
    inside: &Path,
    dir: &Path,
    at: &str,
    depth: usize,
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), String> {
    // Links inside the project are followed, so a loop of them must end somewhere.
    if depth > 32 {
        return Err(format!(
            "{} is nested more than 32 folders deep",
            dir.display()
        ));
    }
    let read = |e: std::io::Error| format!("cannot read {}: {e}", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read)?
        .collect::<Result<_, _>>()
        .map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = format!("{at}/{}", e.file_name().to_string_lossy());
        let real = resolve_inside(inside, &path)?;
        if real.is_dir() {
            collect_inside(inside, &path, &rel, depth + 1, out)?;
        } else if real.is_file() {
            let bytes = std::fs::read(&real)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            out.push((rel, bytes));
        }
    }
    Ok(())
}

/// How an activity ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityOutcome {
    /// Succeeded, Failed, Cancelled or TimedOut.
    pub state: JobState,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    /// In the user's terms: what happened and what to do.
    pub diagnosis: Option<String>,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
}

impl ActivityOutcome {
    /// Stopped on request (the engine records who asked).
    pub fn cancelled() -> ActivityOutcome {
        ActivityOutcome {
            state: JobState::Cancelled,
            ..ActivityOutcome::failed("")
        }
        .without_diagnosis()
    }

    fn without_diagnosis(mut self) -> ActivityOutcome {
        self.diagnosis = None;
        self
    }

    pub fn failed(diagnosis: impl Into<String>) -> ActivityOutcome {
        ActivityOutcome {
            state: JobState::Failed,
            exit_code: None,
            signal: None,
            diagnosis: Some(diagnosis.into()),
            peak_memory_bytes: None,
            cpu_time_ms: None,
        }
    }
}

/// Progress reports from a backend to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActivityEvent {
    /// About to start the process, container or pod.
    Starting,
    /// Started: `backend_ref` is what [`Backend::resume`] needs to find it after a restart.
    Started { backend_ref: String },
    /// The user's code is running.
    Running,
    /// Not started yet, for a reason the user should see (a pod pending on quota or scheduling).
    Waiting(String),
}

/// The engine's side of a running activity.
#[derive(Clone, Debug)]
pub struct ActivityControl {
    /// Cancelled by `capstan cancel` or a shutdown with `--stop-jobs`.
    pub cancel: CancellationToken,
    pub events: UnboundedSender<ActivityEvent>,
}

impl ActivityControl {
    pub fn report(&self, event: ActivityEvent) {
        // The engine may have stopped listening (shutdown); the work goes on regardless.
        let _ = self.events.send(event);
    }
}

/// What resuming an activity after a daemon restart found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// It never started and never will: safe to run it again.
    NeverStarted,
    /// It ran (or was still running and has now finished).
    Finished(ActivityOutcome),
}

/// Identifies one attempt of one activity, for finding its work after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActivityKey {
    pub job_id: i64,
    pub idx: i64,
    pub attempt: i64,
}

impl ActivityKey {
    /// The key a container's or pod's labels carry, looked up by `label` under the backend's
    /// names for the job, the activity (`JOB-IDX`) and the attempt.
    pub fn from_labels<'a>(
        label: impl Fn(&str) -> Option<&'a str>,
        [job, activity, attempt]: [&str; 3],
    ) -> Option<ActivityKey> {
        let num = |k: &str| label(k).and_then(|v| v.parse::<i64>().ok());
        let idx = label(activity)
            .and_then(|a| a.rsplit('-').next())
            .and_then(|i| i.parse().ok())?;
        Some(ActivityKey {
            job_id: num(job)?,
            idx,
            attempt: num(attempt)?,
        })
    }
}

/// One engine (a Docker engine, a Kubernetes namespace of a cluster) and what this instance
/// has on it, for the cluster monitoring page.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineListing {
    /// The engine in the user's words: "the local Docker engine", "cluster gpu (tcp://…)",
    /// "namespace capstan of context prod".
    pub engine: String,
    /// Why the engine could not be listed (it is down, refused the listing), if so.
    pub error: Option<String>,
    pub workloads: Vec<EngineWorkload>,
}

/// A container or pod of this instance, as its engine reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineWorkload {
    /// The backend's own reference to it, given back to [`Backend::remove_workload`].
    pub handle: String,
    /// Its name on the engine (container or pod name).
    pub name: String,
    /// The activity it runs, from its labels (`None`: labelled by this instance, but not as an
    /// activity: always a leftover).
    pub key: Option<ActivityKey>,
    /// The job from its labels, where there is one without a full activity key (Spark
    /// executors carry their driver's).
    pub job_id: Option<i64>,
    /// The engine's word for its state: `running`, `exited`, `Pending`, `Running`…
    pub state: String,
    pub cpu_request: Option<f64>,
    pub cpu_limit: Option<f64>,
    pub memory_request: Option<u64>,
    pub memory_limit: Option<u64>,
    /// Live usage, where the engine can tell (running Docker containers).
    pub usage: Option<Usage>,
}

impl EngineWorkload {
    /// The job its labels name.
    pub fn job(&self) -> Option<i64> {
        self.key.map(|k| k.job_id).or(self.job_id)
    }
}

/// Live resource usage of a running activity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
}

pub trait Backend: Send + Sync {
    fn kind(&self) -> ExecKind;

    /// Runs an activity to completion. Never fails: problems become a failed outcome with a
    /// diagnosis.
    fn run<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, ActivityOutcome>;

    /// Finds an activity again after a restart and waits for it to finish.
    fn resume<'a>(
        &'a self,
        spec: &'a ActivitySpec,
        backend_ref: Option<&'a str>,
        ctl: ActivityControl,
    ) -> BoxFuture<'a, Resumed>;

    /// Whether this backend will run a recipe as `identity` for a caller (`admin`: an instance
    /// admin), checked at submit so that a refusal is a 403, not a failed job. The local backend
    /// refuses when it cannot switch to that user.
    fn admit(&self, identity: &LocalIdentity, admin: bool) -> Result<(), String> {
        let _ = (identity, admin);
        Ok(())
    }

    /// Live usage of a running activity, where the backend can tell.
    fn usage<'a>(&'a self, spec: &'a ActivitySpec) -> BoxFuture<'a, Option<Usage>>;

    /// Removes what this instance left on the backend's engines that belongs to no active
    /// activity (containers, pods), and says what it removed. Called once at start, after
    /// recovery has claimed the active ones.
    fn sweep<'a>(
        &'a self,
        home: &'a capstan_core::model::Home,
        active: &'a [ActivityKey],
    ) -> BoxFuture<'a, Vec<String>> {
        let _ = (home, active);
        Box::pin(async { Vec::new() })
    }

    /// What this instance has on the backend's engines now, engine by engine: the cluster
    /// monitoring page. Backends without containers or pods have nothing.
    fn workloads<'a>(
        &'a self,
        home: &'a capstan_core::model::Home,
    ) -> BoxFuture<'a, Vec<EngineListing>> {
        let _ = home;
        Box::pin(async { Vec::new() })
    }

    /// Removes one workload [`Backend::workloads`] listed (a leftover), and waits until its
    /// engine no longer has it.
    fn remove_workload<'a>(
        &'a self,
        home: &'a capstan_core::model::Home,
        workload: &'a EngineWorkload,
    ) -> BoxFuture<'a, Result<(), String>> {
        let _ = (home, workload);
        Box::pin(async { Err("this backend has no workloads to remove".to_string()) })
    }
}

/// The interpreter a container runs a recipe's code with, or why `backend` (a backend's name in
/// the user's words: "Docker", "Kubernetes") cannot run this kind of recipe. Spark recipes run
/// `capstan_spark::container_command` instead.
pub fn container_program(kind: RecipeKind, backend: &str) -> Result<&'static str, String> {
    match kind {
        RecipeKind::Python => Ok("python3"),
        RecipeKind::R => Ok("Rscript"),
        RecipeKind::Shell => Ok("sh"),
        other => Err(format!(
            "{} recipes do not run on the {backend} backend yet",
            other.as_str()
        )),
    }
}

//! capstan's engine: submission, the scheduler, the job lifecycle and crash recovery.
//!
//! The engine owns the instance's state database and its backends. [`Engine::submit`] resolves
//! and checks a run request and queues a job; the scheduler claims queued jobs first come,
//! first served, within each execution configuration's and cluster's `max_concurrent`; each
//! claimed job runs on its backend in its own task. On start, [`Engine::start`] accounts for
//! every job the last daemon left behind: queued jobs run, running ones are re-attached, and
//! ones that never started are queued again — nothing is lost and nothing runs twice.

pub mod backend;
pub mod build;
pub mod cluster_test;
pub mod diagnose;
mod drive;
pub mod engine_image;
mod home_cache;
pub mod kernel;
mod ml;
pub mod monitor;
pub use ml::stage_for_render as stage_ml_for_render;
pub mod record;
mod scheduler;
pub mod schedules;
mod search;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use capstan_core::job::JobState;
use capstan_core::model::{ExecKind, Home, Permission};
use capstan_core::resolve::{Resolution, ResolveError, RunRequest, resolve};
use capstan_store::{ActivityRow, EventRow, JobFilter, JobRow, NewJob, Outcome, Store, StoreError};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{ActivitySpec, Backend, Usage};
use crate::home_cache::HomeCache;
use crate::scheduler::{SchedMsg, Slot};

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
    /// False for the daemon's own local token, which stands for the machine's admin rather than
    /// a user of `users.toml`.
    pub in_home: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Invalid {
        message: String,
        details: Vec<ResolveError>,
    },
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no backend for {0} execution is available in this daemon")]
    NoBackend(ExecKind),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare the job's folder {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The text of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A job with everything `job show` needs.
#[derive(Clone, Debug)]
pub struct JobDetail {
    pub job: JobRow,
    pub events: Vec<EventRow>,
    pub activities: Vec<ActivityRow>,
    pub usage: Option<Usage>,
}

/// A claimed job, from the moment its task starts until its final state is recorded. Cancel
/// and the job's task meet here, under the `running` lock: a cancel either finds the entry open
/// (and the job will end cancelled) or closed (the job's end was already decided).
struct Running {
    cancel: CancellationToken,
    /// Why it is cancelled, for the record ("cancelled by alice"); set once, with `cancel`.
    reason: Option<String>,
    /// Set when the job's end is decided: a cancel after that is too late.
    closed: bool,
    /// What runs each of its activities now, by index (for `job show`'s live usage).
    work: std::collections::BTreeMap<i64, (Arc<ActivitySpec>, Arc<dyn Backend>)>,
}

impl Running {
    fn cancel(&mut self, reason: String) {
        self.reason.get_or_insert(reason);
        self.cancel.cancel();
    }
}

struct Inner {
    root: PathBuf,
    jobs_dir: PathBuf,
    home: HomeCache,
    store: Mutex<Store>,
    backends: Vec<Arc<dyn Backend>>,
    data_plane: Option<Arc<dyn DataPlane>>,
    sched: mpsc::UnboundedSender<SchedMsg>,
    running: Mutex<HashMap<i64, Running>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Bumped after every change the store commits (see [`Engine::changes`]).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Visual recipes on Spark: their PySpark (see [`Engine::set_spark_codegen`]).
    codegen: std::sync::OnceLock<Arc<dyn SparkCodegen>>,
    /// Held while a part of a distributed search ends: the last part to end sees every other
    /// one's final state, and merges (see `search.rs`).
    search_ends: Mutex<()>,
}

/// The engine of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Opens the instance's state (`state/capstan.db` under the home) with the given backends.
    /// Nothing runs until [`Engine::start`].
    pub fn open(
        root: &Path,
        home: Home,
        backends: Vec<Arc<dyn Backend>>,
        data_plane: Option<Arc<dyn DataPlane>>,
    ) -> Result<(Engine, EngineStarter), EngineError> {
        let state = root.join("state");
        let jobs_dir = state.join("jobs");
        std::fs::create_dir_all(&jobs_dir).map_err(|source| EngineError::Io {
            path: jobs_dir.clone(),
            source,
        })?;
        let mut store = Store::open(&state.join("capstan.db"))?;
        let changes = Arc::new(tokio::sync::watch::Sender::new(0u64));
        store.on_change({
            let changes = changes.clone();
            move || changes.send_modify(|n| *n = n.wrapping_add(1))
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Engine {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                jobs_dir,
                home: HomeCache::new(root, home),
                store: Mutex::new(store),
                backends,
                data_plane,
                sched: tx,
                running: Mutex::new(HashMap::new()),
                search_ends: Mutex::new(()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                changes,
                codegen: std::sync::OnceLock::new(),
            }),
        };
        Ok((engine.clone(), EngineStarter { engine, rx }))
    }

    /// How visual recipes on Spark get their PySpark; without one they fail, saying so.
    pub fn set_spark_codegen(&self, codegen: Arc<dyn SparkCodegen>) {
        let _ = self.inner.codegen.set(codegen);
    }

    pub(crate) fn spark_codegen(&self) -> Option<&Arc<dyn SparkCodegen>> {
        self.inner.codegen.get()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock would be a bug; the data behind it is still a valid
        // SQLite connection, so carry on rather than poison every later request.
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes when any job, activity or history changes: wait on it (then look again)
    /// instead of polling.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub fn home(&self) -> Arc<Home> {
        self.inner.home.current()
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn backend(&self, kind: ExecKind) -> Option<Arc<dyn Backend>> {
        self.inner
            .backends
            .iter()
            .find(|b| b.kind() == kind)
            .cloned()
    }

    /// Whether `caller` may do `wanted` in `project` (instance admins and the daemon's local
    /// caller may do everything), or a 403 naming the missing permission.
    pub fn authorize(
        &self,
        caller: &Caller,
        project: &str,
        wanted: Permission,
    ) -> Result<(), EngineError> {
        if caller.admin {
            return Ok(());
        }
        capstan_core::access::check(&self.home(), project, &caller.name, false, wanted)
            .map_err(|d| EngineError::Denied(d.message))
    }

    /// Resolves, checks and queues a run of `project/recipe`.
    pub fn submit(
        &self,
        caller: &Caller,
        project: &str,
        recipe: &str,
        mut request: RunRequest,
    ) -> Result<JobRow, EngineError> {
        // Looked at now, not within the last look's interval: a recipe saved a moment ago
        // runs as saved, not as it was.
        let home = self.inner.home.fresh_now();
        if !caller.admin {
            capstan_core::access::check(&home, project, &caller.name, false, Permission::Run)
                .map_err(|d| EngineError::Denied(d.message))?;
        }
        if build::search_parts(&home, project, recipe) > 1 {
            return self.submit_split(caller, project, recipe, request);
        }
        request.user = caller.in_home.then(|| caller.name.clone());
        let resolution = resolve(&home, project, recipe, &request).map_err(resolve_error)?;
        let job = self.queue(&home, caller, &request, &resolution)?;
        tracing::info!(job_id = job.id, project, recipe, user = %caller.name, "job queued");
        Ok(job)
    }

    /// Queues the run `resolution` describes, once its backend admits the caller.
    fn queue(
        &self,
        home: &Home,
        caller: &Caller,
        request: &RunRequest,
        resolution: &Resolution,
    ) -> Result<JobRow, EngineError> {
        let kind = resolution.kind.value;
        let Some(backend) = self.backend(kind) else {
            return Err(EngineError::NoBackend(kind));
        };
        let identity = capstan_core::access::local_identity(home, request.user.as_deref());
        backend
            .admit(&identity, caller.admin)
            .map_err(EngineError::Denied)?;
        let job = self.store().insert_job(&NewJob {
            project: resolution.project.clone(),
            recipe: resolution.recipe.clone(),
            user: caller.name.clone(),
            request_json: record::request_json(request).to_string(),
            resolution_json: record::resolution_json(resolution).to_string(),
            exec_config: resolution.exec_config.value.clone(),
            cluster: resolution.cluster.value.clone(),
            kind: kind.as_str().to_string(),
            build: None,
        })?;
        let _ = self.inner.sched.send(SchedMsg::Queued(Slot::of(&job)));
        Ok(job)
    }

    /// The run of a training whose search is split over several activities: a job with one
    /// activity per part, as a forced build of the recipe's outputs queues it.
    fn submit_split(
        &self,
        caller: &Caller,
        project: &str,
        recipe: &str,
        request: RunRequest,
    ) -> Result<JobRow, EngineError> {
        let home = self.inner.home.current();
        let targets = home
            .recipe(project, recipe)
            .map(|(_, r)| r.outputs.iter().map(|o| o.value.clone()).collect())
            .unwrap_or_default();
        let answer = self.build(
            caller,
            project,
            build::BuildRequest {
                targets,
                mode: capstan_core::flow::BuildMode::Force,
                dry_run: false,
                request,
            },
        )?;
        answer.job.ok_or_else(|| EngineError::Invalid {
            message: format!("recipe `{recipe}` has nothing to run"),
            details: Vec::new(),
        })
    }

    pub fn job(&self, caller: &Caller, id: i64) -> Result<JobRow, EngineError> {
        let job = self.store().job(id)?;
        match job {
            // A job one may not see is reported as missing, so ids do not tell what exists.
            Some(j) if self.may_see(caller, &j) => Ok(j),
            _ => Err(EngineError::NotFound(format!("no job {id}"))),
        }
    }

    /// One's own jobs, and those of projects one may read.
    fn may_see(&self, caller: &Caller, job: &JobRow) -> bool {
        caller.admin
            || job.user == caller.name
            || self
                .authorize(caller, &job.project, Permission::Read)
                .is_ok()
    }

    /// A job with its history and activities, and, with `usage`, what its running work uses
    /// now (sampled over 200 ms: not for clients that only wait for the job to move).
    pub async fn job_detail(
        &self,
        caller: &Caller,
        id: i64,
        usage: bool,
    ) -> Result<JobDetail, EngineError> {
        let job = self.job(caller, id)?;
        let (events, activities) = {
            let store = self.store();
            (store.events(id)?, store.activities(id)?)
        };
        let running = {
            let map = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&id).and_then(|r| r.work.values().next().cloned())
        };
        let usage = match running {
            Some((spec, backend)) if usage && job.state == JobState::Running => {
                backend.usage(&spec).await
            }
            _ => None,
        };
        Ok(JobDetail {
            job,
            events,
            activities,
            usage,
        })
    }

    pub fn jobs(&self, caller: &Caller, mut filter: JobFilter) -> Result<Vec<JobRow>, EngineError> {
        if !caller.admin {
            let home = self.home();
            let readable = home
                .projects
                .keys()
                .filter(|p| {
                    capstan_core::access::check(&home, p, &caller.name, false, Permission::Read)
                        .is_ok()
                })
                .cloned()
                .collect();
            filter.visible_to = Some((caller.name.clone(), readable));
        }
        Ok(self.store().jobs(&filter)?)
    }

    /// The log file of a job's activity (of `recipe`, in a build; else its first), and
    /// whether that activity is over.
    pub fn log_file(
        &self,
        caller: &Caller,
        id: i64,
        recipe: Option<&str>,
    ) -> Result<(Option<PathBuf>, bool), EngineError> {
        let job = self.job(caller, id)?;
        let acts = self.store().activities(id)?;
        let act = match recipe {
            None => acts.first(),
            // By name, or by recipe (a distributed search's first part).
            Some(r) => Some(
                acts.iter()
                    .find(|a| a.name() == r || a.recipe == r)
                    .ok_or_else(|| {
                        let names: Vec<String> = acts.iter().map(|a| a.name()).collect();
                        EngineError::NotFound(format!(
                            "job {id} has no activity `{r}` (its activities: {})",
                            names.join(", ")
                        ))
                    })?,
            ),
        };
        let path = act
            .and_then(|a| a.dir.as_ref())
            .map(|d| PathBuf::from(d).join("log"));
        let over = if job.is_build() {
            act.is_none_or(|a| a.state.is_final()) || job.state.is_final()
        } else {
            job.state.is_final()
        };
        Ok((path, over))
    }

    /// One activity of a job, as recorded now.
    pub fn activity(&self, job_id: i64, idx: i64) -> Option<ActivityRow> {
        self.store()
            .activities(job_id)
            .ok()?
            .into_iter()
            .find(|a| a.idx == idx)
    }

    pub fn state_of(&self, id: i64) -> Result<Option<JobState>, EngineError> {
        Ok(self.store().job(id)?.map(|j| j.state))
    }

    /// Cancels a job: a queued one at once, a claimed one by stopping its work. A cancel that
    /// is accepted always ends the job `cancelled`, even one accepted before its work started
    /// or before a daemon restart: it is recorded in the state database first.
    pub fn cancel(&self, caller: &Caller, id: i64) -> Result<JobState, EngineError> {
        let job = self.job(caller, id)?;
        if job.user != caller.name {
            // Someone else's job: a project admin's to cancel.
            self.authorize(caller, &job.project, Permission::Admin)?;
        }
        if job.state.is_final() {
            return Err(EngineError::Conflict(format!(
                "job {id} is already {}",
                job.state
            )));
        }
        let message = format!("cancelled by {}", caller.name);
        let cancelled = self.store().transition(
            id,
            &[JobState::Queued],
            JobState::Cancelled,
            Some(&message),
            &Outcome {
                diagnosis: Some(message.clone()),
                ..Outcome::default()
            },
        )?;
        if cancelled {
            return Ok(JobState::Cancelled);
        }
        // Claimed. Under the lock the job's task registers with (reading the request) and
        // decides its end with, so the two cannot miss each other.
        let mut map = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        let too_late = |state: Option<JobState>| {
            EngineError::Conflict(format!(
                "job {id} is already {}",
                state.map_or("over".into(), |s| s.to_string())
            ))
        };
        if map.get(&id).is_some_and(|r| r.closed) {
            return Err(too_late(self.state_of(id)?));
        }
        if !self.store().request_cancel(id, &message)? {
            return Err(too_late(self.state_of(id)?));
        }
        // Not registered yet: the job's task finds the request in the database when it does.
        if let Some(r) = map.get_mut(&id) {
            r.cancel(message);
        }
        Ok(self
            .store()
            .job(id)?
            .map_or(JobState::Cancelled, |j| j.state))
    }

    /// Stops scheduling. With `stop_jobs`, running work is cancelled and waited for; without,
    /// it is left running and re-attached by the next daemon.
    pub async fn shutdown(&self, stop_jobs: bool) {
        self.inner.shutdown.cancel();
        if stop_jobs {
            {
                let mut map = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
                for r in map.values_mut().filter(|r| !r.closed) {
                    r.cancel("stopped by the daemon's shutdown (--stop-jobs)".into());
                }
            }
            self.inner.tasks.close();
            self.inner.tasks.wait().await;
        }
    }
}

/// The spec of activity 0 of a job of `resolution`, everything but its data access, which the
/// engine grants when it runs (also what `capstan k8s render` shows).
pub fn spec_from(
    home: &Home,
    root: &Path,
    r: &Resolution,
    job_id: i64,
    attempt: i64,
    dir: PathBuf,
) -> ActivitySpec {
    let kernel;
    let (project, recipe) = if r.recipe == capstan_core::job::KERNEL_RECIPE {
        kernel = capstan_core::resolve::kernel_recipe(r.recipe_kind);
        let project = home
            .projects
            .get(&r.project)
            .expect("a resolution names an existing project");
        (project, &kernel)
    } else {
        home.recipe(&r.project, &r.recipe)
            .expect("a resolution names an existing recipe")
    };
    let code_env = r
        .code_env
        .value
        .as_ref()
        .and_then(|n| home.code_envs.get(n))
        .cloned();
    let kubeconfig = r
        .cluster
        .value
        .as_ref()
        .and_then(|c| home.clusters.get(c))
        .and_then(|c| match &c.target {
            capstan_core::model::ClusterTarget::Kubernetes { kubeconfig, .. } => {
                kubeconfig.as_ref().map(|k| k.value.clone())
            }
            _ => None,
        });
    ActivitySpec {
        project: r.project.clone(),
        recipe: r.recipe.clone(),
        user: r.user.clone().unwrap_or_default(),
        identity: capstan_core::access::local_identity(home, r.user.as_deref()),
        admin: r
            .user
            .as_ref()
            .is_none_or(|u| home.users.get(u).is_some_and(|u| u.admin)),
        recipe_kind: recipe.kind.value,
        code_file: recipe.code.as_ref().map(|c| root.join(&c.value)),
        lib_dir: project.lib_dir.as_ref().map(|l| root.join(l)),
        inputs: recipe.inputs.iter().map(|i| i.value.clone()).collect(),
        outputs: recipe.outputs.iter().map(|o| o.value.clone()).collect(),
        exec_config: r.exec_config.value.clone(),
        cluster: r.cluster.value.clone(),
        image: r.image.value.clone(),
        docker_host: r.docker_host.value.clone(),
        namespace: r.namespace.value.clone(),
        kube_context: r.context.value.clone(),
        kubeconfig,
        env: r
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect(),
        code_env,
        timeout: r.timeout.value,
        cpu_limit: r.cpu_limit.value,
        memory_limit: r.memory_limit.value,
        gpus: r.gpus.value,
        exec: r
            .exec_config
            .value
            .as_ref()
            .and_then(|n| home.exec_configs.get(n))
            .cloned(),
        spark: r
            .spark_config
            .value
            .as_ref()
            .and_then(|n| home.spark_configs.get(n))
            .cloned(),
        workload: match &recipe.visual {
            Some(v) => backend::Workload::Transform {
                spec: serde_json::to_string(&v.spec).unwrap_or_default(),
            },
            None => backend::Workload::Code,
        },
        engine_image: engine_image_for(home, r, recipe),
        models: recipe
            .inputs
            .iter()
            .chain(&recipe.outputs)
            .filter(|n| project.models.contains_key(&n.value))
            .map(|n| n.value.clone())
            .collect(),
        ml: recipe.ml.as_ref().map(|m| m.spec.clone()),
        activation: ml::activation(project, recipe),
        ..ActivitySpec::bare(job_id, attempt, dir, root.to_path_buf(), r.kind.value)
    }
}

/// A visual recipe's pod on Kubernetes copies the built-in engine from capstan's engine image,
/// in the registry its configuration pushes to.
fn engine_image_for(
    home: &Home,
    r: &Resolution,
    recipe: &capstan_core::model::Recipe,
) -> Option<String> {
    if recipe.visual.is_none() || r.kind.value != capstan_core::model::ExecKind::Kubernetes {
        return None;
    }
    let registry = r
        .exec_config
        .value
        .as_ref()
        .and_then(|n| home.exec_configs.get(n))
        .and_then(|c| c.registry.as_ref())
        .map(|r| r.value.as_str());
    home.engine_image_record()
        .map(|rec| engine_image::reference(registry, &rec.tag))
}

/// Compiles a visual recipe's spec to PySpark, for visual recipes on a Spark configuration.
/// The binary provides it (it holds the built-in engine, which the engine crate does not
/// build).
pub trait SparkCodegen: Send + Sync {
    /// The PySpark program of `spec`'s [`backend::Workload::Transform`], given its inputs as
    /// they are now.
    fn pyspark<'a>(
        &'a self,
        spec: &'a ActivitySpec,
    ) -> futures_util::future::BoxFuture<'a, Result<String, String>>;
}

/// The spec of a one-off activity on an execution configuration (`capstan cluster test`): its
/// image, limits and placement, running `code` in `namespace`.
pub fn spec_from_config(
    home: &Home,
    root: &Path,
    config: &capstan_core::model::ExecConfig,
    cluster: &str,
    namespace: &str,
    code: PathBuf,
    dir: PathBuf,
) -> ActivitySpec {
    let prefix = config
        .registry
        .as_ref()
        .map(|r| format!("{}/", r.value.trim_end_matches('/')))
        .unwrap_or_default();
    let image = config.image.as_ref().map(|i| i.value.clone()).or_else(|| {
        let base = config
            .base_image
            .as_ref()
            .map_or("default", |b| b.value.as_str());
        home.base_image_record(base)
            .map(|r| format!("{prefix}capstan-base-{base}:{}", r.tag))
    });
    let (kubeconfig, kube_context) = match home.clusters.get(cluster).map(|c| &c.target) {
        Some(capstan_core::model::ClusterTarget::Kubernetes {
            kubeconfig,
            context,
            ..
        }) => (
            kubeconfig.as_ref().map(|k| k.value.clone()),
            context
                .as_ref()
                .or(config.context.as_ref())
                .map(|c| c.value.clone()),
        ),
        _ => (None, config.context.as_ref().map(|c| c.value.clone())),
    };
    ActivitySpec {
        project: "capstan-test".into(),
        recipe: "cluster-test".into(),
        user: "capstan-test".into(),
        recipe_kind: capstan_core::model::RecipeKind::Python,
        code_file: Some(code),
        exec_config: Some(config.name.clone()),
        cluster: Some(cluster.to_string()),
        image,
        namespace: Some(namespace.to_string()),
        kube_context,
        kubeconfig,
        cpu_limit: config.cpu_limit.as_ref().map(|c| c.value),
        memory_limit: config.memory_limit.as_ref().map(|m| m.value),
        timeout: Some(capstan_core::quantity::Duration::from_secs(300)),
        exec: Some(config.clone()),
        ..ActivitySpec::bare(0, 0, dir, root.to_path_buf(), ExecKind::Kubernetes)
    }
}

fn resolve_error(errors: Vec<ResolveError>) -> EngineError {
    if let Some(e) = errors
        .iter()
        .find(|e| matches!(e, ResolveError::PermissionDenied { .. }))
    {
        return EngineError::Denied(e.to_string());
    }
    let first = &errors[0];
    let with_help = |e: &ResolveError| match e.help() {
        Some(h) => format!("{e} ({h})"),
        None => e.to_string(),
    };
    match first {
        ResolveError::UnknownProject { .. }
        | ResolveError::UnknownRecipe { .. }
        | ResolveError::UnknownUser { .. } => EngineError::NotFound(with_help(first)),
        _ => EngineError::Invalid {
            message: errors.iter().map(with_help).collect::<Vec<_>>().join("; "),
            details: errors,
        },
    }
}

/// Rows an activity read and wrote, per dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoSummary {
    pub read: std::collections::BTreeMap<String, u64>,
    pub written: std::collections::BTreeMap<String, u64>,
    /// What committing said, for the job's log (a saved model's new version and whether it
    /// became the active one).
    pub notes: Vec<String>,
}

/// The data plane, as the engine sees it: credentials for an activity before it starts, and
/// the commit (or discard) of its outputs when it ends.
pub trait DataPlane: Send + Sync {
    /// The data API address and a token for this activity (`Ok(None)` when it has neither
    /// datasets nor an address to reach the API at), or why its container or pod could not
    /// reach the API, said before anything starts.
    fn grant<'a>(
        &'a self,
        spec: &'a ActivitySpec,
    ) -> BoxFuture<'a, Result<Option<backend::DataAccess>, String>>;
    /// A dataset's current version and what wrote it (what builds decide staleness from).
    fn state(&self, project: &str, dataset: &str) -> capstan_core::flow::DatasetState;
    /// Whether a project's dataset has data to read (a committed version, tracked or not).
    fn has_data(&self, project: &str, dataset: &str) -> bool {
        self.state(project, dataset) != capstan_core::flow::DatasetState::Missing
    }
    /// The version of a saved model an activity applies, `pinned` or else the active one,
    /// with its `train_info.json`; or why there is none, in the user's terms.
    fn model_version(
        &self,
        project: &str,
        model: &str,
        pinned: Option<u64>,
    ) -> Result<(u64, serde_json::Value), String>;
    /// Commits the activity's staged outputs, each with `provenance`, when it succeeded,
    /// discards them otherwise, and returns the rows it read and wrote. A training's saved
    /// model gets a version, activated by the activity's policy, and an evaluation's row
    /// joins its model's evaluations.
    fn end(
        &self,
        spec: &ActivitySpec,
        succeeded: bool,
        provenance: &capstan_core::flow::Provenance,
    ) -> Result<IoSummary, String>;
    /// A distributed search once all its parts have ended (a part's own `end` keeps what it
    /// staged): when every part succeeded, the best of the versions they staged becomes the
    /// saved model's one new version, with every part's points in its metrics; otherwise what
    /// they staged goes. Returns lines for the job's log.
    fn end_search(&self, search: &SearchEnd<'_>) -> Result<Vec<String>, String>;
}

/// What [`DataPlane::end_search`] settles.
#[derive(Clone, Debug)]
pub struct SearchEnd<'a> {
    pub project: &'a str,
    /// The saved model the search trains.
    pub model: &'a str,
    pub activation: capstan_core::ml::Activation,
    pub job_id: i64,
    /// Each part's activity index and attempt (what its stage is named by).
    pub parts: Vec<(i64, i64)>,
    /// Whether every part succeeded: merge and commit; else discard.
    pub succeeded: bool,
    pub provenance: &'a capstan_core::flow::Provenance,
}

/// Returned by [`Engine::open`]; starting it recovers the previous daemon's jobs and runs the
/// scheduler.
pub struct EngineStarter {
    engine: Engine,
    rx: mpsc::UnboundedReceiver<SchedMsg>,
}

impl EngineStarter {
    /// Recovers and starts scheduling. Must be called inside a tokio runtime.
    pub fn start(self) -> Result<RecoveryReport, EngineError> {
        let report = scheduler::start(self.engine.clone(), self.rx)?;
        schedules::start(self.engine);
        Ok(report)
    }
}

/// What the engine found at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub queued: usize,
    pub reattached: usize,
}

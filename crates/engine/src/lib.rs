//! capstan's engine: submission, the scheduler, the job lifecycle and crash recovery.
//!
//! The engine owns the instance's state database and its backends. [`Engine::submit`] resolves
//! and checks a run request and queues a job; the scheduler claims queued jobs first come,
//! first served, within each execution configuration's and cluster's `max_concurrent`; each
//! claimed job runs on its backend in its own task. On start, [`Engine::start`] accounts for
//! every job the last daemon left behind: queued jobs run, running ones are re-attached, and
//! ones that never started are queued again — nothing is lost and nothing runs twice.

pub mod backend;
pub mod diagnose;
mod home_cache;
pub mod record;
mod scheduler;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use capstan_core::job::JobState;
use capstan_core::model::{ExecKind, Home, Permission};
use capstan_core::resolve::{Resolution, ResolveError, RunRequest, resolve};
use capstan_store::{ActivityRow, EventRow, JobFilter, JobRow, NewJob, Outcome, Store, StoreError};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{
    ActivityControl, ActivityEvent, ActivityOutcome, ActivitySpec, Backend, Resumed, Usage,
};
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

/// How a job's work ended.
enum Done {
    Outcome(ActivityOutcome),
    /// It had never started (found so after a restart): run it again.
    Requeue,
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
    /// What runs it, once known (for `job show`'s live usage).
    work: Option<(Arc<ActivitySpec>, Arc<dyn Backend>)>,
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
        let store = Store::open(&state.join("capstan.db"))?;
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
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        Ok((engine.clone(), EngineStarter { engine, rx }))
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock would be a bug; the data behind it is still a valid
        // SQLite connection, so carry on rather than poison every later request.
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut home = self.inner.home.fresh();
        if !caller.admin {
            capstan_core::access::check(&home, project, &caller.name, false, Permission::Run)
                .map_err(|d| EngineError::Denied(d.message))?;
        }
        if home.recipe(project, recipe).is_none() {
            // Saved within the last look's interval: look again before calling it unknown.
            home = self.inner.home.fresh_now();
        }
        request.user = caller.in_home.then(|| caller.name.clone());
        let resolution = resolve(&home, project, recipe, &request).map_err(resolve_error)?;
        let kind = resolution.kind.value;
        let Some(backend) = self.backend(kind) else {
            return Err(EngineError::NoBackend(kind));
        };
        let identity = capstan_core::access::local_identity(&home, request.user.as_deref());
        backend
            .admit(&identity, caller.admin)
            .map_err(EngineError::Denied)?;
        let job = self.store().insert_job(&NewJob {
            project: project.to_string(),
            recipe: recipe.to_string(),
            user: caller.name.clone(),
            request_json: record::request_json(&request).to_string(),
            resolution_json: record::resolution_json(&resolution).to_string(),
            exec_config: resolution.exec_config.value.clone(),
            cluster: resolution.cluster.value.clone(),
            kind: kind.as_str().to_string(),
        })?;
        tracing::info!(job_id = job.id, project, recipe, user = %caller.name, "job queued");
        let _ = self.inner.sched.send(SchedMsg::Queued(Slot::of(&job)));
        Ok(job)
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

    pub async fn job_detail(&self, caller: &Caller, id: i64) -> Result<JobDetail, EngineError> {
        let job = self.job(caller, id)?;
        let (events, activities) = {
            let store = self.store();
            (store.events(id)?, store.activities(id)?)
        };
        let running = {
            let map = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&id).and_then(|r| r.work.clone())
        };
        let usage = match running {
            Some((spec, backend)) if job.state == JobState::Running => backend.usage(&spec).await,
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

    /// The log file of a job's (latest) activity, and whether the job is over.
    pub fn log_file(
        &self,
        caller: &Caller,
        id: i64,
    ) -> Result<(Option<PathBuf>, bool), EngineError> {
        let job = self.job(caller, id)?;
        let acts = self.store().activities(id)?;
        let path = acts
            .first()
            .and_then(|a| a.dir.as_ref())
            .map(|d| PathBuf::from(d).join("log"));
        Ok((path, job.state.is_final()))
    }

    /// The current attempt of a job's activity.
    pub fn activity_attempt(&self, job_id: i64, idx: i64) -> Option<i64> {
        self.store()
            .activities(job_id)
            .ok()?
            .into_iter()
            .find(|a| a.idx == idx)
            .map(|a| a.attempt)
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

    /// Builds the spec of a job's activity from the current home.
    fn spec_for(
        &self,
        job: &JobRow,
        attempt: i64,
        dir: PathBuf,
    ) -> Result<(ActivitySpec, ExecKind), String> {
        let home = self.inner.home.current();
        let request = record::request_from_json(&job.request_json);
        let r: Resolution = resolve(&home, &job.project, &job.recipe, &request).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            format!(
                "the configuration changed since the job was queued and it no longer resolves: {}",
                list.join("; ")
            )
        })?;
        let mut spec = spec_from(&home, &self.inner.root, &r, job.id, attempt, dir);
        spec.user = job.user.clone();
        let kind = spec.kind;
        Ok((spec, kind))
    }

    fn activity_dir(&self, job_id: i64, idx: i64, attempt: i64) -> PathBuf {
        self.inner
            .jobs_dir
            .join(job_id.to_string())
            .join(format!("a{idx}-{attempt}"))
    }

    fn finish(&self, job_id: i64, outcome: &ActivityOutcome, message: Option<&str>) {
        let from = [
            JobState::Queued,
            JobState::Preparing,
            JobState::Starting,
            JobState::Running,
        ];
        let message = message.or(outcome.diagnosis.as_deref());
        let result = self.store().transition(
            job_id,
            &from,
            outcome.state,
            message,
            &Outcome {
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                diagnosis: outcome.diagnosis.clone(),
                peak_memory_bytes: outcome.peak_memory_bytes.map(|b| b as i64),
                cpu_time_ms: outcome.cpu_time_ms.map(|c| c as i64),
            },
        );
        match result {
            Ok(_) => tracing::info!(job_id, state = %outcome.state, "job finished"),
            Err(error) => tracing::error!(job_id, %error, "cannot record the end of a job"),
        }
    }

    /// Decides how a job ends: closes its entry, so that a later cancel is refused rather than
    /// lost, and turns the outcome into `cancelled` when a cancel was accepted before — whatever
    /// the work did meanwhile. Returns the cancel's reason with the outcome.
    fn close(&self, job_id: i64, outcome: ActivityOutcome) -> (ActivityOutcome, Option<String>) {
        let reason = {
            let mut map = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
            map.get_mut(&job_id).and_then(|r| {
                r.closed = true;
                r.reason.clone()
            })
        };
        let Some(why) = reason else {
            return (outcome, None);
        };
        let outcome = ActivityOutcome {
            state: JobState::Cancelled,
            diagnosis: Some(why.clone()),
            // What it used until it was stopped is still worth knowing.
            ..outcome
        };
        (outcome, Some(why))
    }

    /// Ends a job that never reached its backend's work (a failed check, or a cancel).
    fn end_early(&self, job_id: i64, outcome: ActivityOutcome) {
        let (outcome, why) = self.close(job_id, outcome);
        self.finish(job_id, &outcome, why.as_deref());
    }

    /// Runs (or, with `resume`, re-attaches) one claimed job to its end. Returns true if the
    /// job went back to the queue because it had never started.
    async fn drive(&self, job: JobRow, resume: Option<ActivityRow>) -> bool {
        let job_id = job.id;
        let cancel = CancellationToken::new();
        {
            // Registered before anything else, under the lock cancel takes: a cancel accepted
            // since the claim (or before a restart) is in the database, and is honoured now.
            let mut map = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
            let mut entry = Running {
                cancel: cancel.clone(),
                reason: None,
                closed: false,
                work: None,
            };
            match self.store().cancel_requested(job_id) {
                Ok(Some(why)) => entry.cancel(why),
                Ok(None) => {}
                Err(error) => tracing::error!(job_id, %error, "cannot read a job's cancel request"),
            }
            map.insert(job_id, entry);
        }
        let requeued = self.drive_registered(job, resume, cancel).await;
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job_id);
        requeued
    }

    async fn drive_registered(
        &self,
        job: JobRow,
        resume: Option<ActivityRow>,
        cancel: CancellationToken,
    ) -> bool {
        let job_id = job.id;
        let (attempt, dir, backend_ref) = match &resume {
            Some(a) => (
                a.attempt,
                a.dir.clone().map(PathBuf::from),
                a.backend_ref.clone(),
            ),
            None => {
                let attempt = self
                    .store()
                    .activities(job_id)
                    .ok()
                    .and_then(|a| a.first().map(|a| a.attempt))
                    .unwrap_or(0);
                (attempt, None, None)
            }
        };
        // Cancelled before anything started: nothing to stop, nothing to start.
        if resume.is_none() && cancel.is_cancelled() {
            self.end_early(job_id, ActivityOutcome::cancelled());
            return false;
        }
        let dir = dir.unwrap_or_else(|| self.activity_dir(job_id, 0, attempt));
        let (spec, kind) = match self.spec_for(&job, attempt, dir.clone()) {
            Ok(s) => s,
            Err(diagnosis) if resume.is_none() => {
                self.end_early(job_id, ActivityOutcome::failed(diagnosis));
                return false;
            }
            Err(_) => {
                // Resuming: the work exists whatever the configuration says now, so find it
                // with what we know.
                let kind = ExecKind::parse(&job.kind).unwrap_or(ExecKind::Local);
                (self.minimal_spec(&job, attempt, dir.clone(), kind), kind)
            }
        };
        let Some(backend) = self.backend(kind) else {
            self.end_early(
                job_id,
                ActivityOutcome::failed(format!("no backend for {kind} execution in this daemon")),
            );
            return false;
        };
        let mut spec = spec;
        if let Some(dp) = &self.inner.data_plane {
            // Checked before anything starts: a missing input would otherwise fail the recipe
            // deep inside its framework (Spark's PATH_NOT_FOUND), after its start-up time.
            if resume.is_none()
                && let Some(input) = spec.inputs.iter().find(|i| !dp.has_data(&spec.project, i))
            {
                let why = diagnose::missing_input(&self.inner.home.current(), &spec.project, input);
                self.end_early(job_id, ActivityOutcome::failed(why));
                return false;
            }
            match dp.grant(&spec).await {
                Ok(access) => spec.data = access,
                Err(why) if resume.is_none() => {
                    self.end_early(job_id, ActivityOutcome::failed(why));
                    return false;
                }
                // Re-attaching: the container already has its address.
                Err(_) => {}
            }
        }
        let spec = Arc::new(spec);
        if resume.is_none() {
            if let Err(error) = std::fs::create_dir_all(&spec.dir) {
                self.end_early(
                    job_id,
                    ActivityOutcome::failed(format!(
                        "cannot create the activity folder {}: {error}",
                        spec.dir.display()
                    )),
                );
                return false;
            }
            let d = spec.dir.display().to_string();
            if let Err(error) = self
                .store()
                .set_activity_location(job_id, 0, Some(&d), None, false)
            {
                tracing::error!(job_id, %error, "cannot record the activity folder");
            }
        }
        if let Some(r) = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&job_id)
        {
            r.work = Some((spec.clone(), backend.clone()));
        }

        let (tx, mut rx) = mpsc::unbounded_channel();
        let ctl = ActivityControl {
            cancel: cancel.clone(),
            events: tx,
        };
        let work = async {
            match &resume {
                None => Done::Outcome(backend.run(&spec, ctl).await),
                Some(_) => match backend.resume(&spec, backend_ref.as_deref(), ctl).await {
                    Resumed::Finished(o) => Done::Outcome(o),
                    Resumed::NeverStarted => Done::Requeue,
                },
            }
        };
        // A panic in a backend must not leave the job unfinished, its slot taken and its
        // container running: it becomes a failure, and the work is stopped below.
        let work = std::panic::AssertUnwindSafe(work).catch_unwind();
        tokio::pin!(work);
        let done = loop {
            tokio::select! {
                biased;
                Some(ev) = rx.recv() => self.apply_event(job_id, ev),
                done = &mut work => {
                    while let Ok(ev) = rx.try_recv() {
                        self.apply_event(job_id, ev);
                    }
                    break done;
                }
            }
        };
        let done = match done {
            Ok(done) => done,
            Err(panic) => {
                let what = panic_message(&panic);
                tracing::error!(job_id, panic = %what, "a backend task panicked");
                self.stop_after_panic(&spec, &backend).await;
                Done::Outcome(ActivityOutcome::failed(format!(
                    "internal error in capstan's {kind} backend ({what}); the job's work was stopped. Please report this as a bug."
                )))
            }
        };
        match done {
            Done::Outcome(outcome) => {
                let (mut outcome, why) = self.close(job_id, outcome);
                // Outputs become visible only with success: a failed, cancelled or timed-out
                // activity leaves the previous versions in place.
                if let Some(dp) = &self.inner.data_plane {
                    match dp.end(&spec, outcome.state == JobState::Succeeded) {
                        Ok(io) => {
                            if let Err(error) = self
                                .store()
                                .set_io(job_id, &record::io_json(&io).to_string())
                            {
                                tracing::error!(job_id, %error, "cannot record the rows a job read and wrote");
                            }
                        }
                        Err(why) => {
                            outcome = ActivityOutcome::failed(format!(
                                "the recipe succeeded, but its outputs could not be committed: {why}"
                            ));
                        }
                    }
                }
                self.finish(job_id, &outcome, why.as_deref());
                false
            }
            Done::Requeue if cancel.is_cancelled() => {
                // It never started, and it was cancelled meanwhile: it stays that way.
                self.end_early(job_id, ActivityOutcome::cancelled());
                false
            }
            Done::Requeue => {
                let next = attempt + 1;
                let requeued = {
                    let mut store = self.store();
                    let _ = store.set_activity_location(job_id, 0, None, None, true);
                    store.transition(
                        job_id,
                        &[JobState::Preparing, JobState::Starting],
                        JobState::Queued,
                        Some("requeued: it had not started when the previous daemon stopped"),
                        &Outcome::default(),
                    )
                };
                tracing::info!(job_id, attempt = next, "job requeued after restart");
                matches!(requeued, Ok(true))
            }
        }
    }

    /// After a backend panicked: finds the activity's work again the way a restarted daemon
    /// would, with a cancelled token, so that the backend stops and removes it.
    async fn stop_after_panic(&self, spec: &ActivitySpec, backend: &Arc<dyn Backend>) {
        let backend_ref = self
            .store()
            .activities(spec.job_id)
            .ok()
            .and_then(|a| a.into_iter().next())
            .and_then(|a| a.backend_ref);
        let (tx, _rx) = mpsc::unbounded_channel();
        let ctl = ActivityControl {
            cancel: CancellationToken::new(),
            events: tx,
        };
        ctl.cancel.cancel();
        let stop = std::panic::AssertUnwindSafe(backend.resume(spec, backend_ref.as_deref(), ctl))
            .catch_unwind();
        if tokio::time::timeout(std::time::Duration::from_secs(120), stop)
            .await
            .is_err()
        {
            tracing::error!(
                job_id = spec.job_id,
                "could not stop the work of a job whose backend panicked"
            );
        }
    }

    /// What is known of an activity without resolving its job: enough to find its work again.
    fn minimal_spec(
        &self,
        job: &JobRow,
        attempt: i64,
        dir: PathBuf,
        kind: ExecKind,
    ) -> ActivitySpec {
        ActivitySpec {
            project: job.project.clone(),
            recipe: job.recipe.clone(),
            user: job.user.clone(),
            exec_config: job.exec_config.clone(),
            cluster: job.cluster.clone(),
            ..ActivitySpec::bare(job.id, attempt, dir, self.inner.root.clone(), kind)
        }
    }

    fn apply_event(&self, job_id: i64, ev: ActivityEvent) {
        let mut store = self.store();
        let result = match ev {
            ActivityEvent::Starting => store
                .transition(
                    job_id,
                    &[JobState::Preparing],
                    JobState::Starting,
                    None,
                    &Outcome::default(),
                )
                .map(|_| ()),
            ActivityEvent::Started { backend_ref } => {
                store.set_activity_location(job_id, 0, None, Some(&backend_ref), false)
            }
            ActivityEvent::Waiting(message) => store.note(job_id, &message),
            ActivityEvent::Running => store
                .transition(
                    job_id,
                    &[JobState::Preparing, JobState::Starting],
                    JobState::Running,
                    None,
                    &Outcome::default(),
                )
                .map(|_| ()),
        };
        if let Err(error) = result {
            tracing::error!(job_id, %error, "cannot record a job's progress");
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
    let (project, recipe) = home
        .recipe(&r.project, &r.recipe)
        .expect("a resolution names an existing recipe");
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
        ..ActivitySpec::bare(job_id, attempt, dir, root.to_path_buf(), r.kind.value)
    }
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
    /// Whether a project's dataset has data to read (a committed version).
    fn has_data(&self, project: &str, dataset: &str) -> bool;
    /// Commits the activity's staged outputs when it succeeded, discards them otherwise, and
    /// returns the rows it read and wrote.
    fn end(&self, spec: &ActivitySpec, succeeded: bool) -> Result<IoSummary, String>;
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
        scheduler::start(self.engine, self.rx)
    }
}

/// What the engine found at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub queued: usize,
    pub reattached: usize,
}

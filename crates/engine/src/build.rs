//! Builds: one job whose activities are the recipes that make a project's datasets.
//!
//! [`Engine::build`] plans (with `capstan_core::flow::plan`, from the datasets' versions and
//! the recipes' definitions), resolves each activity that runs on its own execution
//! configuration, and queues one job. Once the job is claimed, `drive_build` starts each
//! activity as soon as the activities it reads from have succeeded and a slot of its own
//! configuration, cluster and Spark configuration is free (the scheduler grants activity slots
//! in the same first-come order as jobs). A failed activity skips everything downstream of it;
//! independent branches go on. After a restart, finished activities stay finished, running ones
//! are re-attached and the rest go on.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use capstan_core::flow::{BuildMode, DatasetState, Plan};
use capstan_core::job::JobState;
use capstan_core::model::{ExecKind, Permission};
use capstan_core::resolve::{Resolution, RunRequest, resolve};
use capstan_store::{ActivityRow, JobRow, NewActivity, NewJob, Outcome, Part};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backend::ActivityOutcome;
use crate::drive::{At, Ran};
use crate::scheduler::{SchedMsg, Slot};
use crate::{Caller, Engine, EngineError, record, resolve_error};

/// A request to build datasets of a project.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    /// Datasets of the project; none: its final outputs.
    pub targets: Vec<String>,
    pub mode: BuildMode,
    /// Plan only: say what would run, start nothing.
    pub dry_run: bool,
    /// Overrides for every activity (`user` is set from the caller).
    pub request: RunRequest,
}

/// One recipe a build considered.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    pub recipe: String,
    pub runs: bool,
    pub why: Vec<String>,
    /// The recipes of the plan whose outputs it reads.
    pub needs: Vec<String>,
    /// Where it runs (for those that run).
    pub kind: Option<ExecKind>,
    pub exec_config: Option<String>,
    pub cluster: Option<String>,
}

/// What a build request did: its plan, and the job when anything runs (not for a dry run).
#[derive(Clone, Debug)]
pub struct BuildAnswer {
    pub project: String,
    pub mode: BuildMode,
    pub targets: Vec<String>,
    pub steps: Vec<PlannedStep>,
    pub job: Option<JobRow>,
}

impl Engine {
    /// A project's whole flow as a smart build of everything would see it (what `capstan flow`
    /// shows, and the web UI's graph): every dataset with its state, every recipe with why it
    /// would run. Needs read permission on the project.
    pub fn flow(
        &self,
        caller: &Caller,
        project: &str,
    ) -> Result<capstan_core::flow::FlowView, EngineError> {
        let home = self.inner.home.fresh_now();
        if !home.projects.contains_key(project) {
            return Err(EngineError::NotFound(format!(
                "unknown project `{project}`"
            )));
        }
        self.authorize(caller, project, Permission::Read)?;
        let request = RunRequest::default();
        let state = |dataset: &str| match &self.inner.data_plane {
            Some(dp) => dp.state(project, dataset),
            None => DatasetState::Missing,
        };
        capstan_core::flow::view(&home, project, state, |r| {
            let res = resolve(&home, project, &r.name, &request).map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            capstan_core::flow::definition(&home, &self.inner.root, &res)
        })
        .map_err(|errors| EngineError::Invalid {
            message: errors.join("; "),
            details: Vec::new(),
        })
    }

    /// Plans a build of `project`'s datasets and, unless it is a dry run or nothing is out of
    /// date, queues it as one job.
    pub fn build(
        &self,
        caller: &Caller,
        project: &str,
        mut req: BuildRequest,
    ) -> Result<BuildAnswer, EngineError> {
        let home = self.inner.home.fresh_now();
        if !home.projects.contains_key(project) {
            return Err(EngineError::NotFound(format!(
                "unknown project `{project}`"
            )));
        }
        self.authorize(caller, project, Permission::Run)?;
        req.request.user = caller.in_home.then(|| caller.name.clone());
        let request = &req.request;
        // Each recipe is resolved once, for its definition and its placement.
        let resolved: RefCell<HashMap<String, Resolution>> = RefCell::default();
        let resolve_one = |recipe: &str| -> Result<Resolution, EngineError> {
            if let Some(r) = resolved.borrow().get(recipe) {
                return Ok(r.clone());
            }
            let r = resolve(&home, project, recipe, request).map_err(resolve_error)?;
            resolved.borrow_mut().insert(recipe.to_string(), r.clone());
            Ok(r)
        };
        let state = |dataset: &str| match &self.inner.data_plane {
            Some(dp) => dp.state(project, dataset),
            None => DatasetState::Missing,
        };
        let definition = |r: &capstan_core::model::Recipe| {
            let res = resolve_one(&r.name).map_err(|e| e.to_string())?;
            capstan_core::flow::definition(&home, &self.inner.root, &res)
        };
        let plan: Plan =
            capstan_core::flow::plan(&home, project, &req.targets, req.mode, state, definition)
                .map_err(|errors| EngineError::Invalid {
                    message: errors.join("; "),
                    details: Vec::new(),
                })?;
        let mut steps = Vec::new();
        let mut activities = Vec::new();
        // Who the activities run as, and the backends that agreed to it: asked once each.
        let identity = capstan_core::access::local_identity(&home, request.user.as_deref());
        let mut admitted: HashSet<ExecKind> = HashSet::new();
        // Plan step index -> its activities' indices (several for a distributed search), for
        // those that run.
        let mut idx_of: HashMap<usize, Vec<i64>> = HashMap::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let needs = step
                .needs
                .iter()
                .map(|n| plan.steps[*n].recipe.clone())
                .collect();
            let mut planned = PlannedStep {
                recipe: step.recipe.clone(),
                runs: step.runs,
                why: step.why.clone(),
                needs,
                kind: None,
                exec_config: None,
                cluster: None,
            };
            // A dry run only says where each would run: it records nothing.
            if step.runs {
                let r = resolve_one(&step.recipe)?;
                let kind = r.kind.value;
                if admitted.insert(kind) {
                    let Some(backend) = self.backend(kind) else {
                        return Err(EngineError::NoBackend(kind));
                    };
                    backend
                        .admit(&identity, caller.admin)
                        .map_err(EngineError::Denied)?;
                }
                planned.kind = Some(kind);
                planned.exec_config = r.exec_config.value.clone();
                planned.cluster = r.cluster.value.clone();
                if req.dry_run {
                    steps.push(planned);
                    continue;
                }
                // Only what runs is waited for: an up-to-date input is there already.
                let needs: Vec<i64> = step
                    .needs
                    .iter()
                    .filter_map(|n| idx_of.get(n))
                    .flatten()
                    .copied()
                    .collect();
                let parts = search_parts(&home, project, &step.recipe);
                let first = activities.len() as i64;
                idx_of.insert(i, (first..first + i64::from(parts)).collect());
                for index in 0..parts {
                    activities.push(NewActivity {
                        recipe: step.recipe.clone(),
                        resolution_json: record::resolution_json(&r).to_string(),
                        exec_config: r.exec_config.value.clone(),
                        cluster: r.cluster.value.clone(),
                        kind: kind.as_str().to_string(),
                        needs: needs.clone(),
                        why_json: serde_json::json!(step.why).to_string(),
                        part: (parts > 1).then_some(Part {
                            index,
                            count: parts,
                        }),
                    });
                }
            }
            steps.push(planned);
        }
        let mut answer = BuildAnswer {
            project: project.to_string(),
            mode: plan.mode,
            targets: plan.targets.clone(),
            steps,
            job: None,
        };
        if req.dry_run || activities.is_empty() {
            return Ok(answer);
        }
        let n = activities.len();
        let job = self.store().insert_job(&NewJob {
            project: project.to_string(),
            recipe: plan.targets.join(", "),
            user: caller.name.clone(),
            request_json: record::request_json(request).to_string(),
            resolution_json: "{}".into(),
            exec_config: None,
            cluster: None,
            kind: "build".into(),
            build: Some((
                record::build_json(&plan.targets, plan.mode).to_string(),
                activities,
            )),
        })?;
        tracing::info!(job_id = job.id, project, activities = n, mode = %plan.mode, user = %caller.name, "build queued");
        let _ = self.inner.sched.send(SchedMsg::Queued(Slot::of(&job)));
        answer.job = Some(job);
        Ok(answer)
    }

    /// Runs a claimed build to its end (or, with `resume`, takes it up where the previous
    /// daemon left it).
    pub(crate) async fn drive_build(&self, job: JobRow, resume: bool, cancel: CancellationToken) {
        let job_id = job.id;
        let acts = self.store().activities(job_id).unwrap_or_default();
        let _ = self.store().transition(
            job_id,
            &[JobState::Preparing],
            JobState::Running,
            Some(&format!(
                "building: {} activit{}",
                acts.len(),
                if acts.len() == 1 { "y" } else { "ies" }
            )),
            &Outcome::default(),
        );
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i64>();
        let mut in_flight: HashSet<i64> = HashSet::new();
        if resume {
            // What the previous daemon left running is found again first, on the slots it
            // already held.
            for a in acts.iter().filter(|a| a.state.is_active()) {
                in_flight.insert(a.idx);
                self.spawn_activity(&job, a.clone(), true, &cancel, &done_tx);
            }
        }
        let mut cancel_seen = false;
        loop {
            let acts = self.store().activities(job_id).unwrap_or_default();
            let mut state: HashMap<i64, (JobState, String, Option<String>)> = acts
                .iter()
                .map(|a| (a.idx, (a.state, a.name(), a.diagnosis.clone())))
                .collect();
            for a in acts.iter().filter(|a| a.state == JobState::Queued) {
                if in_flight.contains(&a.idx) {
                    continue;
                }
                let skip = if cancel.is_cancelled() {
                    Some("skipped: the build was cancelled".to_string())
                } else {
                    a.needs.iter().find_map(|n| match state.get(n) {
                        Some((s, _, Some(why))) if *s == JobState::Skipped => Some(why.clone()),
                        Some((s, recipe, _)) if s.is_final() && *s != JobState::Succeeded => {
                            Some(format!("skipped (upstream {}/{recipe} {s})", job.project))
                        }
                        _ => None,
                    })
                };
                if let Some(why) = skip {
                    let at = At {
                        job_id,
                        idx: a.idx,
                        build: true,
                    };
                    self.skip_activity(at, &why);
                    state.insert(a.idx, (JobState::Skipped, a.name(), Some(why)));
                    continue;
                }
                let ready = a
                    .needs
                    .iter()
                    .all(|n| state.get(n).is_some_and(|s| s.0 == JobState::Succeeded));
                if ready {
                    in_flight.insert(a.idx);
                    self.spawn_activity(&job, a.clone(), false, &cancel, &done_tx);
                }
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some(idx) = done_rx.recv() => {
                    in_flight.remove(&idx);
                }
                _ = cancel.cancelled(), if !cancel_seen => cancel_seen = true,
            }
        }
        let acts = match self.store().activities(job_id) {
            Ok(a) => a,
            Err(error) => {
                tracing::error!(job_id, %error, "cannot read a build's activities");
                self.end_early(
                    job_id,
                    ActivityOutcome::failed(format!("cannot read the build's activities: {error}")),
                );
                return;
            }
        };
        self.sweep_searches(job_id, &acts);
        let (outcome, io) = build_outcome(&job.project, &acts);
        if let Err(error) = self
            .store()
            .set_io(job_id, &record::io_json(&io).to_string())
        {
            tracing::error!(job_id, %error, "cannot record the rows a build read and wrote");
        }
        let (outcome, why) = self.close(job_id, outcome);
        self.finish(job_id, &outcome, why.as_deref());
    }

    /// Runs one activity of a build in a task of its own, on a slot of its configuration; sends
    /// its index on `done` when it is over, whatever happens (a panic included: the activity
    /// then fails, and its slot is given back).
    fn spawn_activity(
        &self,
        job: &JobRow,
        act: ActivityRow,
        resume: bool,
        cancel: &CancellationToken,
        done: &mpsc::UnboundedSender<i64>,
    ) {
        let (e, job, cancel, done) = (self.clone(), job.clone(), cancel.clone(), done.clone());
        self.inner.tasks.spawn(async move {
            let idx = act.idx;
            let at = At {
                job_id: job.id,
                idx,
                build: true,
            };
            let slot = Slot::of_activity(&act);
            // A re-attached activity's slot was counted by the scheduler at start.
            let mut held = resume;
            let work = std::panic::AssertUnwindSafe(
                e.run_on_slot(&job, act, at, resume, &slot, &mut held, &cancel),
            )
            .catch_unwind()
            .await;
            if let Err(panic) = work {
                let what = crate::panic_message(&panic);
                tracing::error!(job_id = job.id, idx, panic = %what, "a build's activity panicked");
                e.finish_activity(
                    at,
                    &ActivityOutcome::failed(format!(
                        "internal error in capstan ({what}). Please report this as a bug."
                    )),
                );
            }
            if held {
                let _ = e.inner.sched.send(SchedMsg::Finished(slot));
            }
            let _ = done.send(idx);
        });
    }

    /// An activity's life on its slot: waits for the slot (unless `held`), runs it, and runs it
    /// again if the previous daemon left it unstarted. `held` says, at every await, whether the
    /// slot is this activity's.
    #[allow(clippy::too_many_arguments)]
    async fn run_on_slot(
        &self,
        job: &JobRow,
        mut act: ActivityRow,
        at: At,
        mut resume: bool,
        slot: &Slot,
        held: &mut bool,
        cancel: &CancellationToken,
    ) {
        loop {
            if !*held {
                *held = self.acquire(slot.clone(), cancel).await;
                if !*held {
                    self.skip_activity(at, "skipped: the build was cancelled");
                    return;
                }
            }
            let part = act.part.is_some();
            match self.run_activity(job, &act, at, resume, cancel).await {
                Ran::Early(outcome) if part => self.finish_part(at, &act.recipe, None, outcome),
                Ran::Early(outcome) => self.finish_activity(at, &outcome),
                Ran::Ended { outcome, spec } => {
                    let outcome = self.commit_outputs(at, &spec, outcome);
                    if part {
                        self.finish_part(at, &act.recipe, Some(&spec), outcome);
                    } else {
                        self.finish_activity(at, &outcome);
                    }
                }
                Ran::Requeue if cancel.is_cancelled() && part => {
                    self.finish_part(at, &act.recipe, None, ActivityOutcome::cancelled())
                }
                Ran::Requeue if cancel.is_cancelled() => {
                    self.finish_activity(at, &ActivityOutcome::cancelled())
                }
                Ran::Requeue => {
                    // It had not started when the previous daemon stopped: queued again, and
                    // started on a slot the scheduler grants anew, after its sweep of what the
                    // previous daemon left (which must not take the new attempt for a leftover).
                    let requeued = {
                        let mut store = self.store();
                        let _ = store.set_activity_location(job.id, at.idx, None, None, true);
                        let _ = store.transition_activity(
                            job.id,
                            at.idx,
                            &[JobState::Preparing, JobState::Starting],
                            JobState::Queued,
                            Some("requeued: it had not started when the previous daemon stopped"),
                            &Outcome::default(),
                        );
                        store
                            .activities(job.id)
                            .ok()
                            .and_then(|a| a.into_iter().find(|a| a.idx == at.idx))
                    };
                    if let Some(a) = requeued {
                        let _ = self.inner.sched.send(SchedMsg::Finished(slot.clone()));
                        *held = false;
                        (act, resume) = (a, false);
                        continue;
                    }
                }
            }
            return;
        }
    }

    /// Skips a queued activity of a build, saying why.
    fn skip_activity(&self, at: At, why: &str) {
        let skipped = self.store().transition_activity(
            at.job_id,
            at.idx,
            &[JobState::Queued],
            JobState::Skipped,
            Some(why),
            &Outcome {
                diagnosis: Some(why.into()),
                ..Outcome::default()
            },
        );
        if let Err(error) = skipped {
            tracing::error!(job_id = at.job_id, %error, "cannot record a skipped activity");
        }
    }

    /// Waits for the scheduler to grant an activity its slot. False if the build was cancelled
    /// first (holding nothing).
    async fn acquire(&self, slot: Slot, cancel: &CancellationToken) -> bool {
        let (tx, mut rx) = oneshot::channel();
        let _ = self.inner.sched.send(SchedMsg::Wants(slot.clone(), tx));
        tokio::select! {
            granted = &mut rx => {
                if granted.is_ok() {
                    return true;
                }
                // The scheduler stopped (the daemon is shutting down): the activity stays
                // queued for the next daemon, unless this one stops its jobs.
                cancel.cancelled().await;
                false
            }
            _ = cancel.cancelled() => {
                rx.close();
                if rx.try_recv().is_ok() {
                    // Granted just as it was cancelled: give the slot back.
                    let _ = self.inner.sched.send(SchedMsg::Finished(slot));
                }
                false
            }
        }
    }
}

/// How many activities a recipe runs as: its training's `search.containers`, else one.
pub(crate) fn search_parts(home: &capstan_core::model::Home, project: &str, recipe: &str) -> u32 {
    match home
        .recipe(project, recipe)
        .and_then(|(_, r)| r.ml.as_ref().map(|m| &m.spec))
    {
        Some(capstan_core::ml::MlSpec::Train(t)) => t.parts(),
        _ => 1,
    }
}

/// A build's end from its activities': failed if any failed (naming them and what they
/// skipped), cancelled if any was cancelled, else succeeded; with the largest peak memory, the
/// total CPU time and every dataset's rows.
fn build_outcome(project: &str, acts: &[ActivityRow]) -> (ActivityOutcome, crate::IoSummary) {
    let named = |states: &[JobState]| -> Vec<&ActivityRow> {
        acts.iter().filter(|a| states.contains(&a.state)).collect()
    };
    // An activity a build ends without (none should be) failed it: never a silent success.
    let failed: Vec<&ActivityRow> = acts
        .iter()
        .filter(|a| matches!(a.state, JobState::Failed | JobState::TimedOut) || !a.state.is_final())
        .collect();
    let cancelled = named(&[JobState::Cancelled]);
    let skipped = named(&[JobState::Skipped]);
    let list = |v: &[&ActivityRow]| {
        v.iter()
            .map(|a| format!("{project}/{}", a.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut outcome = if !failed.is_empty() {
        let first = failed[0];
        let why = first.diagnosis.as_deref().and_then(|d| d.lines().next());
        let mut d = match (failed.len(), why) {
            (1, Some(why)) => format!("{project}/{} failed: {why}", first.name()),
            (1, None) => format!("{project}/{} failed", first.name()),
            (n, why) => {
                let mut d = format!("{n} of {} activities failed: {}", acts.len(), list(&failed));
                if let Some(why) = why {
                    d += &format!(" ({project}/{}: {why})", first.name());
                }
                d
            }
        };
        if !skipped.is_empty() {
            d += &format!("; skipped: {}", list(&skipped));
        }
        ActivityOutcome::failed(d)
    } else if !cancelled.is_empty() || !skipped.is_empty() {
        ActivityOutcome::cancelled()
    } else {
        ActivityOutcome {
            state: JobState::Succeeded,
            diagnosis: None,
            ..ActivityOutcome::failed(String::new())
        }
    };
    outcome.peak_memory_bytes = acts
        .iter()
        .filter_map(|a| a.peak_memory_bytes.map(|b| b as u64))
        .max();
    let cpu: Vec<u64> = acts
        .iter()
        .filter_map(|a| a.cpu_time_ms.map(|c| c as u64))
        .collect();
    outcome.cpu_time_ms = (!cpu.is_empty()).then(|| cpu.iter().sum());
    let mut io = crate::IoSummary::default();
    for a in acts {
        let Some(v) = a
            .io_json
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        else {
            continue;
        };
        for (side, map) in [("read", &mut io.read), ("written", &mut io.written)] {
            for (k, n) in v[side].as_object().into_iter().flatten() {
                *map.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    (outcome, io)
}

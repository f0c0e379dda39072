//! Running activities: the part of a job's life between its claim and its final state.
//!
//! [`Engine::run_activity`] takes one activity from its spec to its outcome (or re-attaches it
//! after a restart). It records progress where the activity's state lives: on the job itself
//! for the run of one recipe, on the activity's own row in a build (whose job has a state of
//! its own, see `build.rs`). The run of one recipe is [`Engine::drive_one`]; a build's
//! activities are driven by `Engine::drive_build`.

use std::path::PathBuf;
use std::sync::Arc;

use capstan_core::flow::{DatasetState, Provenance, WrittenBy};
use capstan_core::job::JobState;
use capstan_core::model::ExecKind;
use capstan_core::resolve::{Resolution, resolve};
use capstan_store::{ActivityRow, JobRow, Outcome};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{
    ActivityControl, ActivityEvent, ActivityOutcome, ActivitySpec, Backend, Resumed,
};
use crate::{Engine, Running, diagnose, panic_message, record, spec_from};

/// Where an activity's progress is recorded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At {
    pub job_id: i64,
    pub idx: i64,
    /// In a build: the activity's own row. Otherwise the job's, which carries its activity.
    pub build: bool,
}

/// How an activity's work went.
pub(crate) enum Ran {
    /// It never reached its backend (a failed check, a cancel): nothing to commit.
    Early(ActivityOutcome),
    /// Its backend ran it (or found it again) to this outcome; outputs are not committed yet.
    Ended {
        outcome: ActivityOutcome,
        spec: Arc<ActivitySpec>,
    },
    /// It had never started (found so after a restart): run it again.
    Requeue,
}

impl Engine {
    /// Builds the spec of an activity from the current home, with its resolution.
    fn spec_for(
        &self,
        job: &JobRow,
        act: &ActivityRow,
        dir: PathBuf,
    ) -> Result<(ActivitySpec, Resolution), String> {
        let home = self.inner.home.current();
        let request = record::request_from_json(&job.request_json);
        let kernel = act.recipe == capstan_core::job::KERNEL_RECIPE;
        let resolved = if kernel {
            capstan_core::resolve::resolve_kernel(&home, &job.project, &request)
        } else {
            resolve(&home, &job.project, &act.recipe, &request)
        };
        let r: Resolution = resolved.map_err(|errors| {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            format!(
                "the configuration changed since the job was queued and it no longer resolves: {}",
                list.join("; ")
            )
        })?;
        let mut spec = spec_from(&home, &self.inner.root, &r, job.id, act.attempt, dir);
        spec.idx = act.idx;
        spec.user = job.user.clone();
        spec.part = act.part;
        if kernel {
            crate::kernel::stage_agent(&mut spec);
        }
        Ok((spec, r))
    }

    pub(crate) fn activity_dir(&self, job_id: i64, idx: i64, attempt: i64) -> PathBuf {
        self.inner
            .jobs_dir
            .join(job_id.to_string())
            .join(format!("a{idx}-{attempt}"))
    }

    /// Records a job's final state.
    pub(crate) fn finish(&self, job_id: i64, outcome: &ActivityOutcome, message: Option<&str>) {
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
            &store_outcome(outcome),
        );
        match result {
            Ok(_) => tracing::info!(job_id, state = %outcome.state, "job finished"),
            Err(error) => tracing::error!(job_id, %error, "cannot record the end of a job"),
        }
    }

    /// Records an activity's final state (for a run of one recipe, see [`Engine::finish`]).
    pub(crate) fn finish_activity(&self, at: At, outcome: &ActivityOutcome) {
        let from = [
            JobState::Queued,
            JobState::Preparing,
            JobState::Starting,
            JobState::Running,
        ];
        let result = self.store().transition_activity(
            at.job_id,
            at.idx,
            &from,
            outcome.state,
            outcome.diagnosis.as_deref(),
            &store_outcome(outcome),
        );
        match result {
            Ok(_) => {
                tracing::info!(job_id = at.job_id, idx = at.idx, state = %outcome.state, "activity finished")
            }
            Err(error) => {
                tracing::error!(job_id = at.job_id, %error, "cannot record the end of an activity")
            }
        }
    }

    /// Decides how a job ends: closes its entry, so that a later cancel is refused rather than
    /// lost, and turns the outcome into `cancelled` when a cancel was accepted before — whatever
    /// the work did meanwhile. Returns the cancel's reason with the outcome.
    pub(crate) fn close(
        &self,
        job_id: i64,
        outcome: ActivityOutcome,
    ) -> (ActivityOutcome, Option<String>) {
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
    pub(crate) fn end_early(&self, job_id: i64, outcome: ActivityOutcome) {
        let (outcome, why) = self.close(job_id, outcome);
        self.finish(job_id, &outcome, why.as_deref());
    }

    /// Runs (or, with `resume`, re-attaches) one claimed job to its end. Returns true if the
    /// job went back to the queue because it had never started.
    pub(crate) async fn drive(&self, job: JobRow, resume: bool) -> bool {
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
                work: Default::default(),
            };
            match self.store().cancel_requested(job_id) {
                Ok(Some(why)) => entry.cancel(why),
                Ok(None) => {}
                Err(error) => tracing::error!(job_id, %error, "cannot read a job's cancel request"),
            }
            map.insert(job_id, entry);
        }
        let requeued = if job.is_build() {
            self.drive_build(job, resume, cancel).await;
            false
        } else {
            self.drive_one(job, resume, cancel).await
        };
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job_id);
        requeued
    }

    /// The run of one recipe: its activity's end is the job's.
    async fn drive_one(&self, job: JobRow, resume: bool, cancel: CancellationToken) -> bool {
        let job_id = job.id;
        let act = match self.store().activities(job_id) {
            Ok(a) => a.into_iter().next(),
            Err(error) => {
                tracing::error!(job_id, %error, "cannot read a job's activity");
                None
            }
        };
        let Some(act) = act else {
            self.end_early(
                job_id,
                ActivityOutcome::failed("the job has no activity record"),
            );
            return false;
        };
        let at = At {
            job_id,
            idx: act.idx,
            build: false,
        };
        match self.run_activity(&job, &act, at, resume, &cancel).await {
            Ran::Early(outcome) => {
                self.end_early(job_id, outcome);
                false
            }
            Ran::Ended { outcome, spec } => {
                let (outcome, why) = self.close(job_id, outcome);
                let outcome = self.commit_outputs(at, &spec, outcome);
                self.finish(job_id, &outcome, why.as_deref());
                false
            }
            Ran::Requeue if cancel.is_cancelled() => {
                // It never started, and it was cancelled meanwhile: it stays that way.
                self.end_early(job_id, ActivityOutcome::cancelled());
                false
            }
            Ran::Requeue => {
                let requeued = {
                    let mut store = self.store();
                    let _ = store.set_activity_location(job_id, act.idx, None, None, true);
                    store.transition(
                        job_id,
                        &[JobState::Preparing, JobState::Starting],
                        JobState::Queued,
                        Some("requeued: it had not started when the previous daemon stopped"),
                        &Outcome::default(),
                    )
                };
                tracing::info!(
                    job_id,
                    attempt = act.attempt + 1,
                    "job requeued after restart"
                );
                matches!(requeued, Ok(true))
            }
        }
    }

    /// Commits (or discards) an activity's outputs by its outcome, recording their provenance
    /// and the rows it read and wrote. Outputs become visible only with success: a failed,
    /// cancelled or timed-out activity leaves the previous versions in place.
    pub(crate) fn commit_outputs(
        &self,
        at: At,
        spec: &ActivitySpec,
        outcome: ActivityOutcome,
    ) -> ActivityOutcome {
        let Some(dp) = &self.inner.data_plane else {
            return outcome;
        };
        let provenance = self.provenance_of(at, &spec.recipe);
        match dp.end(spec, outcome.state == JobState::Succeeded, &provenance) {
            Ok(io) => {
                for line in &io.notes {
                    tracing::info!(job_id = at.job_id, recipe = %spec.recipe, "{line}");
                    note(spec, line);
                }
                let json = record::io_json(&io).to_string();
                let mut store = self.store();
                let saved = if at.build {
                    store.set_activity_io(at.job_id, at.idx, &json)
                } else {
                    store.set_io(at.job_id, &json)
                };
                if let Err(error) = saved {
                    tracing::error!(job_id = at.job_id, %error, "cannot record the rows an activity read and wrote");
                }
                outcome
            }
            Err(why) => ActivityOutcome::failed(format!(
                "the recipe succeeded, but its outputs could not be committed: {why}"
            )),
        }
    }

    /// What an activity's outputs record as having written them: the activity, and the input
    /// versions and definition fixed when it started.
    pub(crate) fn provenance_of(&self, at: At, recipe: &str) -> Provenance {
        let (inputs, definition) = self
            .store()
            .activities(at.job_id)
            .ok()
            .and_then(|a| a.into_iter().find(|a| a.idx == at.idx))
            .and_then(|a| a.provenance_json)
            .map(|p| record::provenance_from_json(&p))
            .unwrap_or_default();
        Provenance {
            written_by: WrittenBy::Activity {
                job: at.job_id,
                idx: at.idx,
                recipe: recipe.to_string(),
            },
            inputs,
            definition,
        }
    }

    /// Moves an activity's state where it is recorded.
    fn move_to(&self, at: At, from: &[JobState], to: JobState, message: Option<&str>) {
        let mut store = self.store();
        let result = if at.build {
            store.transition_activity(at.job_id, at.idx, from, to, message, &Outcome::default())
        } else {
            store.transition(at.job_id, from, to, message, &Outcome::default())
        };
        if let Err(error) = result {
            tracing::error!(job_id = at.job_id, %error, "cannot record an activity's progress");
        }
    }

    /// Runs (or, with `resume`, re-attaches) one activity of a claimed job to its outcome.
    /// A visual recipe on a Spark configuration runs as the PySpark its spec compiles to,
    /// generated now (its inputs' schemas are the ones it will read). Re-attaching, only the
    /// kind changes: the program is already running.
    async fn on_spark(&self, spec: &mut ActivitySpec, resume: bool) -> Result<(), String> {
        if !(spec.recipe_kind.is_visual() && spec.spark.is_some()) {
            return Ok(());
        }
        let name = format!("{}.py", spec.recipe);
        let source = if resume {
            String::new()
        } else {
            let Some(codegen) = self.spark_codegen() else {
                return Err("this daemon cannot compile visual recipes for Spark".into());
            };
            codegen.pyspark(spec).await?
        };
        spec.workload = crate::backend::Workload::Generated {
            name: name.clone(),
            source,
        };
        spec.code_file = Some(PathBuf::from(name));
        spec.recipe_kind = capstan_core::model::RecipeKind::PySpark;
        Ok(())
    }

    pub(crate) async fn run_activity(
        &self,
        job: &JobRow,
        act: &ActivityRow,
        at: At,
        resume: bool,
        cancel: &CancellationToken,
    ) -> Ran {
        let job_id = job.id;
        let attempt = act.attempt;
        let dir = act.dir.clone().map(PathBuf::from).filter(|_| resume);
        let backend_ref = act.backend_ref.clone().filter(|_| resume);
        // Cancelled before anything started: nothing to stop, nothing to start.
        if !resume && cancel.is_cancelled() {
            return Ran::Early(ActivityOutcome::cancelled());
        }
        let dir = dir.unwrap_or_else(|| self.activity_dir(job_id, act.idx, attempt));
        let kind_of = || {
            act.kind
                .as_deref()
                .or(Some(job.kind.as_str()))
                .and_then(ExecKind::parse)
                .unwrap_or(ExecKind::Local)
        };
        let (mut spec, resolution) = match self.spec_for(job, act, dir.clone()) {
            Ok((s, r)) => (s, Some(r)),
            Err(diagnosis) if !resume => return Ran::Early(ActivityOutcome::failed(diagnosis)),
            // Resuming: the work exists whatever the configuration says now, so find it with
            // what we know.
            Err(_) => (self.minimal_spec(job, act, dir.clone(), kind_of()), None),
        };
        let kind = spec.kind;
        let Some(backend) = self.backend(kind) else {
            return Ran::Early(ActivityOutcome::failed(format!(
                "no backend for {kind} execution in this daemon"
            )));
        };
        if at.build && !resume {
            self.move_to(at, &[JobState::Queued], JobState::Preparing, None);
        }
        if let Some(dp) = &self.inner.data_plane {
            if !resume {
                // Checked before anything starts: a missing input would otherwise fail the
                // recipe deep inside its framework (Spark's PATH_NOT_FOUND), after its start-up.
                // Each input looked at once: for its data here, for its version below.
                let inputs: Vec<(&String, DatasetState)> = spec
                    .inputs
                    .iter()
                    .map(|i| (i, dp.state(&spec.project, i)))
                    .collect();
                if let Some((input, _)) = inputs.iter().find(|(_, s)| *s == DatasetState::Missing) {
                    let why =
                        diagnose::missing_input(&self.inner.home.current(), &spec.project, input);
                    return Ran::Early(ActivityOutcome::failed(why));
                }
                // A kernel writes no outputs: nothing to record their provenance for.
                if let Some(r) = resolution
                    .as_ref()
                    .filter(|r| r.recipe != capstan_core::job::KERNEL_RECIPE)
                {
                    self.fix_provenance(at, &inputs, r);
                }
            }
            match dp.grant(&spec).await {
                Ok(access) => spec.data = access,
                Err(why) if !resume => return Ran::Early(ActivityOutcome::failed(why)),
                // Re-attaching: the container already has its address.
                Err(_) => {}
            }
        }
        if let Err(why) = self.on_spark(&mut spec, resume).await {
            return Ran::Early(ActivityOutcome::failed(why));
        }
        if spec.recipe_kind.is_ml() {
            if resume {
                crate::ml::resumed(&mut spec);
            } else {
                let Some(dp) = &self.inner.data_plane else {
                    return Ran::Early(ActivityOutcome::failed(
                        "ML recipes need the data plane, which this daemon runs without",
                    ));
                };
                match crate::ml::prepare(&mut spec, dp.as_ref()) {
                    // The runner prints the version it applies in the job's log; a backend
                    // starts the log afresh, so nothing is written there before it runs.
                    Ok(said) => tracing::info!(job_id, recipe = %spec.recipe, "{said}"),
                    Err(why) => return Ran::Early(ActivityOutcome::failed(why)),
                }
            }
        }
        let spec = Arc::new(spec);
        if !resume {
            if let Err(error) = std::fs::create_dir_all(&spec.dir) {
                return Ran::Early(ActivityOutcome::failed(format!(
                    "cannot create the activity folder {}: {error}",
                    spec.dir.display()
                )));
            }
            let d = spec.dir.display().to_string();
            if let Err(error) =
                self.store()
                    .set_activity_location(job_id, act.idx, Some(&d), None, false)
            {
                tracing::error!(job_id, %error, "cannot record the activity folder");
            }
        }
        self.with_running(job_id, |r| {
            r.work.insert(act.idx, (spec.clone(), backend.clone()));
        });

        let (tx, mut rx) = mpsc::unbounded_channel();
        let ctl = ActivityControl {
            cancel: cancel.clone(),
            events: tx,
        };
        let (s, b) = (spec.clone(), backend.clone());
        let work = async move {
            if resume {
                match b.resume(&s, backend_ref.as_deref(), ctl).await {
                    Resumed::Finished(o) => Some(o),
                    Resumed::NeverStarted => None,
                }
            } else {
                Some(b.run(&s, ctl).await)
            }
        };
        // A panic in a backend must not leave the job unfinished, its slot taken and its
        // container running: it becomes a failure, and the work is stopped below.
        let work = std::panic::AssertUnwindSafe(work).catch_unwind();
        tokio::pin!(work);
        let done = loop {
            tokio::select! {
                biased;
                Some(ev) = rx.recv() => self.apply_event(at, ev),
                done = &mut work => {
                    while let Ok(ev) = rx.try_recv() {
                        self.apply_event(at, ev);
                    }
                    break done;
                }
            }
        };
        self.with_running(job_id, |r| {
            r.work.remove(&act.idx);
        });
        match done {
            Ok(Some(outcome)) => Ran::Ended { outcome, spec },
            Ok(None) => Ran::Requeue,
            Err(panic) => {
                let what = panic_message(&panic);
                tracing::error!(job_id, panic = %what, "a backend task panicked");
                self.stop_after_panic(&spec, &backend).await;
                Ran::Ended {
                    outcome: ActivityOutcome::failed(format!(
                        "internal error in capstan's {kind} backend ({what}); the job's work was stopped. Please report this as a bug."
                    )),
                    spec,
                }
            }
        }
    }

    /// Changes the entry of a claimed job, if it is registered.
    fn with_running(&self, job_id: i64, f: impl FnOnce(&mut Running)) {
        let mut map = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get_mut(&job_id) {
            f(r);
        }
    }

    /// Records, before an activity starts, what its outputs will name as read and as defining
    /// them: the inputs' current versions and the hashes of its definition.
    fn fix_provenance(&self, at: At, inputs: &[(&String, DatasetState)], r: &Resolution) {
        let inputs = inputs
            .iter()
            .filter_map(|(i, state)| match state {
                DatasetState::Version { version, .. } => Some(((*i).clone(), *version)),
                _ => None,
            })
            .collect();
        let home = self.inner.home.current();
        let definition =
            capstan_core::flow::definition(&home, &self.inner.root, r).unwrap_or_else(|why| {
                // Without a definition its outputs are stale at once: safe, and said.
                tracing::warn!(job_id = at.job_id, %why, "cannot hash an activity's definition");
                Default::default()
            });
        let json = record::provenance_json(&inputs, &definition).to_string();
        if let Err(error) = self
            .store()
            .set_activity_provenance(at.job_id, at.idx, &json)
        {
            tracing::error!(job_id = at.job_id, %error, "cannot record an activity's provenance");
        }
    }

    /// After a backend panicked: finds the activity's work again the way a restarted daemon
    /// would, with a cancelled token, so that the backend stops and removes it.
    async fn stop_after_panic(&self, spec: &ActivitySpec, backend: &Arc<dyn Backend>) {
        let backend_ref = self
            .store()
            .activities(spec.job_id)
            .ok()
            .and_then(|a| a.into_iter().find(|a| a.idx == spec.idx))
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
        act: &ActivityRow,
        dir: PathBuf,
        kind: ExecKind,
    ) -> ActivitySpec {
        let mut spec = ActivitySpec {
            project: job.project.clone(),
            recipe: act.recipe.clone(),
            user: job.user.clone(),
            exec_config: act.exec_config.clone().or_else(|| job.exec_config.clone()),
            cluster: act.cluster.clone().or_else(|| job.cluster.clone()),
            ..ActivitySpec::bare(job.id, act.attempt, dir, self.inner.root.clone(), kind)
        };
        spec.idx = act.idx;
        spec.part = act.part;
        spec
    }

    fn apply_event(&self, at: At, ev: ActivityEvent) {
        let job_id = at.job_id;
        match ev {
            ActivityEvent::Starting => {
                self.move_to(at, &[JobState::Preparing], JobState::Starting, None)
            }
            ActivityEvent::Started { backend_ref } => {
                if let Err(error) = self.store().set_activity_location(
                    job_id,
                    at.idx,
                    None,
                    Some(&backend_ref),
                    false,
                ) {
                    tracing::error!(job_id, %error, "cannot record where an activity runs");
                }
            }
            ActivityEvent::Waiting(message) => {
                let mut store = self.store();
                let result = if at.build {
                    store.note_activity(job_id, at.idx, &message)
                } else {
                    store.note(job_id, &message)
                };
                if let Err(error) = result {
                    tracing::error!(job_id, %error, "cannot record a job's progress");
                }
            }
            ActivityEvent::Running => self.move_to(
                at,
                &[JobState::Preparing, JobState::Starting],
                JobState::Running,
                None,
            ),
        }
    }
}

fn store_outcome(outcome: &ActivityOutcome) -> Outcome {
    Outcome {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        diagnosis: outcome.diagnosis.clone(),
        peak_memory_bytes: outcome.peak_memory_bytes.map(|b| b as i64),
        cpu_time_ms: outcome.cpu_time_ms.map(|c| c as i64),
    }
}

/// Appends one of capstan's own lines to an activity's log, after what the recipe printed.
pub(crate) fn note(spec: &ActivitySpec, line: &str) {
    use std::io::Write;
    let path = spec.log_path();
    let written = std::fs::create_dir_all(&spec.dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                // In the log's own format (stamp, stream, text), so readers show it in place.
                let stamp = humantime::format_rfc3339_micros(std::time::SystemTime::now());
                writeln!(f, "{stamp} o [capstan] {line}")
            })
    });
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot add a line to an activity's log");
    }
}

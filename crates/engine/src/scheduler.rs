//! The scheduler: first come, first served within the `max_concurrent` of each execution
//! configuration, cluster and Spark configuration.
//!
//! It owns the in-memory queue (a mirror of the queued jobs, in id order, and of the activities
//! of running builds waiting for a slot, after their job) and the counts of active work; the
//! database stays the truth, and every claim of a job is a compare-and-set in it, so a job
//! cancelled while queued is simply skipped. A build's job takes no slot itself: each of its
//! activities takes one of its own configuration's when it is ready to run.

use std::collections::{BTreeMap, HashMap};

use capstan_core::job::JobState;
use capstan_store::{ActivityRow, JobRow, Outcome};
use tokio::sync::{mpsc, oneshot};

use crate::backend::ActivityKey;
use crate::{Engine, EngineError, RecoveryReport};

#[derive(Clone, Debug)]
pub(crate) struct Slot {
    id: i64,
    /// The activity's index in its build; -1 for a job's own slot.
    idx: i64,
    exec_config: Option<String>,
    cluster: Option<String>,
    spark_config: Option<String>,
}

/// The Spark configuration of a stored resolution (it has no column of its own).
fn spark_config_of(resolution_json: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(resolution_json)
        .ok()
        .and_then(|r| {
            r["settings"]["spark_config"]["value"]
                .as_str()
                .map(String::from)
        })
}

impl Slot {
    pub(crate) fn of(job: &JobRow) -> Slot {
        Slot {
            id: job.id,
            idx: -1,
            exec_config: job.exec_config.clone(),
            cluster: job.cluster.clone(),
            spark_config: spark_config_of(&job.resolution_json),
        }
    }

    pub(crate) fn of_activity(act: &ActivityRow) -> Slot {
        Slot {
            id: act.job_id,
            idx: act.idx,
            exec_config: act.exec_config.clone(),
            cluster: act.cluster.clone(),
            spark_config: act.resolution_json.as_deref().and_then(spark_config_of),
        }
    }
}

pub(crate) enum SchedMsg {
    Queued(Slot),
    Finished(Slot),
    Requeued(Slot),
    /// An activity of a running build waits for a slot; granted by sending on the channel.
    Wants(Slot, oneshot::Sender<()>),
}

/// What waits in the queue: a job to claim, or a build's activity to grant a slot to.
enum Waiter {
    Job(Slot),
    Activity(Slot, oneshot::Sender<()>),
}

impl Waiter {
    fn slot(&self) -> &Slot {
        match self {
            Waiter::Job(s) | Waiter::Activity(s, _) => s,
        }
    }
}

#[derive(Default)]
struct Counts {
    by_exec: HashMap<String, u32>,
    by_cluster: HashMap<String, u32>,
    by_spark: HashMap<String, u32>,
}

impl Counts {
    fn add(&mut self, s: &Slot, delta: i32) {
        for (map, key) in [
            (&mut self.by_exec, &s.exec_config),
            (&mut self.by_cluster, &s.cluster),
            (&mut self.by_spark, &s.spark_config),
        ] {
            if let Some(k) = key {
                let n = map.entry(k.clone()).or_default();
                *n = (*n as i32 + delta).max(0) as u32;
            }
        }
    }
}

pub(crate) fn start(
    engine: Engine,
    mut rx: mpsc::UnboundedReceiver<SchedMsg>,
) -> Result<RecoveryReport, EngineError> {
    let (queued, active) = {
        let store = engine.store();
        (
            store.jobs_in(&[JobState::Queued])?,
            store.jobs_in(&[JobState::Preparing, JobState::Starting, JobState::Running])?,
        )
    };
    let report = RecoveryReport {
        queued: queued.len(),
        reattached: active.len(),
    };
    let mut queue: BTreeMap<(i64, i64), Waiter> = queued
        .iter()
        .map(|j| ((j.id, -1), Waiter::Job(Slot::of(j))))
        .collect();
    let mut counts = Counts::default();
    let active_ids: Vec<i64> = active.iter().map(|j| j.id).collect();
    for job in active {
        let slot = Slot::of(&job);
        counts.add(&slot, 1);
        let activities = engine.store().activities(job.id)?;
        if job.is_build() {
            // A build's activities that were under way hold their own slots, counted before
            // anything is granted (the build's task gives each back when it ends).
            for a in activities.iter().filter(|a| a.state.is_active()) {
                counts.add(&Slot::of_activity(a), 1);
            }
        }
        match activities.first() {
            Some(_) => {
                tracing::info!(job_id = job.id, state = %job.state, "re-attaching a job of the previous daemon");
                spawn_drive(&engine, job, true, slot);
            }
            None => {
                // A job without an activity row cannot have run anything.
                let _ = engine.store().transition(
                    job.id,
                    &[job.state],
                    JobState::Failed,
                    Some("the job has no activity record"),
                    &Outcome::default(),
                );
                counts.add(&slot, -1);
            }
        }
    }
    // With every active job claimed for recovery, what else the engines hold is an orphan.
    let keys: Vec<ActivityKey> = {
        let store = engine.store();
        active_ids
            .iter()
            .flat_map(|id| store.activities(*id).unwrap_or_default())
            .map(|a| ActivityKey {
                job_id: a.job_id,
                idx: a.idx,
                attempt: a.attempt,
            })
            .collect()
    };
    let shutdown = engine.inner.shutdown.clone();
    tokio::spawn(async move {
        // Before the first claim, so nothing started by this daemon can be mistaken for a
        // leftover.
        let home = engine.home();
        for backend in &engine.inner.backends {
            for removed in backend.sweep(&home, &keys).await {
                tracing::warn!(what = %removed, "removed a leftover the state does not know");
            }
        }
        loop {
            dispatch(&engine, &mut queue, &mut counts);
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = rx.recv() => match msg { Some(m) => m, None => break },
            };
            let mut handle = |m: SchedMsg| match m {
                SchedMsg::Queued(s) => {
                    queue.insert((s.id, s.idx), Waiter::Job(s));
                }
                SchedMsg::Finished(s) => counts.add(&s, -1),
                SchedMsg::Requeued(s) => {
                    counts.add(&s, -1);
                    queue.insert((s.id, s.idx), Waiter::Job(s));
                }
                SchedMsg::Wants(s, grant) => {
                    queue.insert((s.id, s.idx), Waiter::Activity(s, grant));
                }
            };
            handle(msg);
            // Take everything that is waiting before dispatching again: a burst of 1,000
            // submissions costs one pass, not 1,000.
            while let Ok(m) = rx.try_recv() {
                handle(m);
            }
        }
        tracing::info!("scheduler stopped");
    });
    Ok(report)
}

fn dispatch(engine: &Engine, queue: &mut BTreeMap<(i64, i64), Waiter>, counts: &mut Counts) {
    if queue.is_empty() || engine.inner.shutdown.is_cancelled() {
        return;
    }
    let home = engine.home();
    let limit_exec = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| home.exec_configs.get(n))
            .and_then(|c| c.max_concurrent.as_ref())
            .map(|m| m.value)
    };
    let limit_cluster = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| home.clusters.get(n))
            .and_then(|c| c.max_concurrent.as_ref())
            .map(|m| m.value)
    };
    let limit_spark = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| home.spark_configs.get(n))
            .and_then(|c| c.max_concurrent.as_ref())
            .map(|m| m.value)
    };
    let full = |limit: Option<u32>, key: &Option<String>, counts: &HashMap<String, u32>| {
        limit.is_some_and(|max| {
            key.as_ref()
                .map_or(0, |k| counts.get(k).copied().unwrap_or(0))
                >= max
        })
    };
    let mut claimed = Vec::new();
    let mut granted = Vec::new();
    let mut gone = Vec::new();
    for (key, waiter) in queue.iter() {
        let slot = waiter.slot();
        if full(
            limit_exec(&slot.exec_config),
            &slot.exec_config,
            &counts.by_exec,
        ) || full(
            limit_cluster(&slot.cluster),
            &slot.cluster,
            &counts.by_cluster,
        ) || full(
            limit_spark(&slot.spark_config),
            &slot.spark_config,
            &counts.by_spark,
        ) {
            continue;
        }
        if let Waiter::Activity(_, grant) = waiter {
            if grant.is_closed() {
                // Its build was cancelled while it waited: it takes no slot.
                gone.push(*key);
                continue;
            }
            counts.add(slot, 1);
            granted.push(*key);
            continue;
        }
        let id = &key.0;
        let claim = engine.store().transition(
            *id,
            &[JobState::Queued],
            JobState::Preparing,
            None,
            &Outcome::default(),
        );
        match claim {
            Ok(true) => {
                counts.add(slot, 1);
                claimed.push(*key);
            }
            // Cancelled (or otherwise moved on) while queued.
            Ok(false) => gone.push(*key),
            Err(error) => {
                tracing::error!(job_id = id, %error, "cannot claim a job");
                break;
            }
        }
    }
    for key in gone {
        queue.remove(&key);
    }
    for key in granted {
        if let Some(Waiter::Activity(slot, grant)) = queue.remove(&key)
            && grant.send(()).is_err()
        {
            // Its build was cancelled while it waited.
            counts.add(&slot, -1);
        }
    }
    for key in claimed {
        let Some(Waiter::Job(slot)) = queue.remove(&key) else {
            continue;
        };
        match engine.store().job(key.0) {
            Ok(Some(job)) => spawn_drive(engine, job, false, slot),
            _ => counts.add(&slot, -1),
        }
    }
}

fn spawn_drive(engine: &Engine, job: JobRow, resume: bool, slot: Slot) {
    let e = engine.clone();
    engine.inner.tasks.spawn(async move {
        let requeued = e.drive(job, resume).await;
        let msg = if requeued {
            SchedMsg::Requeued(slot)
        } else {
            SchedMsg::Finished(slot)
        };
        let _ = e.inner.sched.send(msg);
    });
}

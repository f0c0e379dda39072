//! The scheduler: first come, first served within the `max_concurrent` of each execution
//! configuration, cluster and Spark configuration.
//!
//! It owns the in-memory queue (a mirror of the queued jobs, in id order) and the counts of
//! active jobs; the database stays the truth, and every claim is a compare-and-set in it, so a
//! job cancelled while queued is simply skipped.

use std::collections::{BTreeMap, HashMap};

use capstan_core::job::JobState;
use capstan_store::{JobRow, Outcome};
use tokio::sync::mpsc;

use crate::backend::ActivityKey;
use crate::{Engine, EngineError, RecoveryReport};

#[derive(Clone, Debug)]
pub(crate) struct Slot {
    id: i64,
    exec_config: Option<String>,
    cluster: Option<String>,
    spark_config: Option<String>,
}

impl Slot {
    pub(crate) fn of(job: &JobRow) -> Slot {
        // The Spark configuration is in the job's resolution (it has no column of its own).
        let spark_config = serde_json::from_str::<serde_json::Value>(&job.resolution_json)
            .ok()
            .and_then(|r| {
                r["settings"]["spark_config"]["value"]
                    .as_str()
                    .map(String::from)
            });
        Slot {
            id: job.id,
            exec_config: job.exec_config.clone(),
            cluster: job.cluster.clone(),
            spark_config,
        }
    }
}

pub(crate) enum SchedMsg {
    Queued(Slot),
    Finished(Slot),
    Requeued(Slot),
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
    let mut queue: BTreeMap<i64, Slot> = queued.iter().map(|j| (j.id, Slot::of(j))).collect();
    let mut counts = Counts::default();
    let active_ids: Vec<i64> = active.iter().map(|j| j.id).collect();
    for job in active {
        let slot = Slot::of(&job);
        counts.add(&slot, 1);
        let activity = engine.store().activities(job.id)?.into_iter().next();
        match activity {
            Some(a) => {
                tracing::info!(job_id = job.id, state = %job.state, "re-attaching a job of the previous daemon");
                spawn_drive(&engine, job, Some(a), slot);
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
                    queue.insert(s.id, s);
                }
                SchedMsg::Finished(s) => counts.add(&s, -1),
                SchedMsg::Requeued(s) => {
                    counts.add(&s, -1);
                    queue.insert(s.id, s);
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

fn dispatch(engine: &Engine, queue: &mut BTreeMap<i64, Slot>, counts: &mut Counts) {
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
    let mut gone = Vec::new();
    for (id, slot) in queue.iter() {
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
                claimed.push(*id);
            }
            // Cancelled (or otherwise moved on) while queued.
            Ok(false) => gone.push(*id),
            Err(error) => {
                tracing::error!(job_id = id, %error, "cannot claim a job");
                break;
            }
        }
    }
    for id in gone {
        queue.remove(&id);
    }
    for id in claimed {
        let Some(slot) = queue.remove(&id) else {
            continue;
        };
        match engine.store().job(id) {
            Ok(Some(job)) => spawn_drive(engine, job, None, slot),
            _ => counts.add(&slot, -1),
        }
    }
}

fn spawn_drive(
    engine: &Engine,
    job: JobRow,
    resume: Option<capstan_store::ActivityRow>,
    slot: Slot,
) {
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

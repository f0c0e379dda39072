//! Cluster monitoring: what this instance has on each Docker engine and Kubernetes cluster,
//! tied to the jobs in the store, and the removal of what no job accounts for (leftovers).
//!
//! A workload is a leftover when its labels name no job, or a job the store does not have, or
//! a job that is over. The store is read *after* the engines are listed: a job cannot end
//! before its containers and pods are gone ("no container or pod outlives its job"), so a
//! finished job's workload seen in a listing made before that read is truly left over, and a
//! job that starts while the listing runs is simply not in it. This is why the removal can run
//! while jobs run, unlike the sweep at start, which compares with exact activity attempts.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_core::job::JobState;
use capstan_store::JobRow;

use crate::backend::{Backend, EngineWorkload};
use crate::{Caller, Engine, EngineError};

/// One engine's workloads as the monitoring page shows them.
#[derive(Clone, Debug)]
pub struct EngineView {
    /// `docker` or `kubernetes`.
    pub kind: &'static str,
    pub engine: String,
    pub error: Option<String>,
    pub workloads: Vec<WorkloadView>,
}

/// A workload with the job it belongs to (when the caller may see that job).
#[derive(Clone, Debug)]
pub struct WorkloadView {
    pub workload: EngineWorkload,
    pub job: Option<JobRow>,
    /// No job accounts for it: "remove leftovers" removes it.
    pub leftover: bool,
}

/// Whether a workload is a leftover, given the state of the job its labels name (`None`: the
/// store has no such job).
pub fn is_leftover(w: &EngineWorkload, job: Option<JobState>) -> bool {
    w.job().is_none() || job.is_none_or(JobState::is_final)
}

impl Engine {
    /// Every engine's workloads of this instance. Admins see all of them; others, only the
    /// workloads of jobs they may see (and no leftover, which belongs to nobody).
    pub async fn workloads(&self, caller: &Caller) -> Result<Vec<EngineView>, EngineError> {
        let mut out = Vec::new();
        for (_, mut e) in self.survey().await? {
            e.workloads.retain(|v| {
                caller.admin || v.job.as_ref().is_some_and(|j| self.may_see(caller, j))
            });
            // Which engines exist and why one is down is the admins' business.
            e.error = e.error.filter(|_| caller.admin);
            out.push(e);
        }
        Ok(out)
    }

    /// Removes every leftover (admins only), and says what it removed and what it could not.
    pub async fn remove_leftovers(&self, caller: &Caller) -> Result<Vec<String>, EngineError> {
        if !caller.admin {
            return Err(EngineError::Denied(
                "removing leftovers is for instance admins".into(),
            ));
        }
        let home = self.home();
        let mut said = Vec::new();
        for (backend, e) in self.survey().await? {
            for v in e.workloads.iter().filter(|v| v.leftover) {
                let what = format!("{} on {}", v.workload.name, e.engine);
                match backend.remove_workload(&home, &v.workload).await {
                    Ok(()) => {
                        tracing::warn!(what = %what, "removed a leftover on request");
                        said.push(format!("removed {what}"));
                    }
                    Err(error) => said.push(format!("could not remove {what}: {error}")),
                }
            }
        }
        Ok(said)
    }

    /// Each backend's engines and their workloads, each with its job as the store has it now,
    /// read after the listing (see the module's comment), and whether it is a leftover.
    async fn survey(&self) -> Result<Vec<(Arc<dyn Backend>, EngineView)>, EngineError> {
        let home = self.home();
        let mut out = Vec::new();
        for backend in &self.inner.backends {
            let listings = backend.workloads(&home).await;
            // Looked up after this backend's listing only: a job read before it could have
            // started since, and its work would pass for a leftover.
            let mut jobs: BTreeMap<i64, Option<JobRow>> = BTreeMap::new();
            for e in listings {
                let mut workloads = Vec::new();
                for w in e.workloads {
                    let job = match w.job() {
                        Some(id) => match jobs.get(&id) {
                            Some(j) => j.clone(),
                            None => {
                                let j = self.store().job(id)?;
                                jobs.insert(id, j.clone());
                                j
                            }
                        },
                        None => None,
                    };
                    let leftover = is_leftover(&w, job.as_ref().map(|j| j.state));
                    workloads.push(WorkloadView {
                        workload: w,
                        job,
                        leftover,
                    });
                }
                let view = EngineView {
                    kind: backend.kind().as_str(),
                    engine: e.engine,
                    error: e.error,
                    workloads,
                };
                out.push((backend.clone(), view));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ActivityKey;

    fn workload(key: Option<ActivityKey>, job_id: Option<i64>) -> EngineWorkload {
        EngineWorkload {
            handle: "h".into(),
            name: "capstan-x".into(),
            key,
            job_id,
            state: "running".into(),
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
            usage: None,
        }
    }

    #[test]
    fn a_workload_is_left_over_when_no_running_job_accounts_for_it() {
        let key = Some(ActivityKey {
            job_id: 7,
            idx: 0,
            attempt: 1,
        });
        assert!(!is_leftover(&workload(key, None), Some(JobState::Running)));
        assert!(!is_leftover(&workload(key, None), Some(JobState::Queued)));
        assert!(is_leftover(&workload(key, None), Some(JobState::Succeeded)));
        assert!(is_leftover(&workload(key, None), Some(JobState::Cancelled)));
        assert!(
            is_leftover(&workload(key, None), None),
            "a job the store does not have"
        );
        // A Spark executor carries its driver's job only.
        assert!(!is_leftover(
            &workload(None, Some(7)),
            Some(JobState::Running)
        ));
        assert!(
            is_leftover(&workload(None, None), None),
            "labelled, but by no job"
        );
    }
}

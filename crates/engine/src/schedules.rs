//! Schedules: the daemon starts each project's `[schedule.NAME]` builds at their times.
//!
//! Which slot is due is `capstan_core::schedule::due`'s to say, from the last slot handled and
//! when the daemon first saw the schedule (both in the state database, so a restart neither
//! repeats a run nor makes up more than one). Here: a slot is not started while the schedule's
//! previous build is still going (the schedule's record says so), and a build runs as the
//! schedule's user, with that user's permissions.

use std::time::Duration;

use capstan_core::flow::BuildMode;
use capstan_core::job::JobState;
use capstan_core::model::Permission;
use capstan_core::schedule::{self, Due};
use capstan_store::now_ms;

use crate::build::BuildRequest;
use crate::{Caller, Engine, EngineError};

/// A schedule with its next and last runs, as `capstan schedules` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleView {
    pub project: String,
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    pub build: Vec<String>,
    pub mode: BuildMode,
    pub user: Option<String>,
    pub catch_up: &'static str,
    pub enabled: bool,
    pub next_run: Option<i64>,
    /// The slot of its last run (or of the last slot it did not start, with `note`).
    pub last_slot: Option<i64>,
    pub last_job: Option<i64>,
    pub last_job_state: Option<JobState>,
    /// Why its last slot started nothing, if it did not.
    pub note: Option<String>,
}

/// The longest the loop sleeps: how soon a schedule added to the home is seen.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Engine {
    /// The schedules of the projects `caller` may read.
    pub fn schedules(&self, caller: &Caller) -> Result<Vec<ScheduleView>, EngineError> {
        let home = self.home();
        let now = now_ms();
        let mut out = Vec::new();
        for p in home.projects.values() {
            if self.authorize(caller, &p.key, Permission::Read).is_err() {
                continue;
            }
            for s in p.schedules.values() {
                let row = self.store().schedule(&p.key, &s.name, now)?;
                let last_job_state = match row.last_job {
                    Some(id) => self.store().job(id)?.map(|j| j.state),
                    None => None,
                };
                out.push(ScheduleView {
                    project: p.key.clone(),
                    name: s.name.clone(),
                    cron: s.cron.value.clone(),
                    time_zone: s
                        .time_zone
                        .as_ref()
                        .map_or("UTC".into(), |z| z.value.clone()),
                    build: s.build.iter().map(|b| b.value.clone()).collect(),
                    mode: s.mode,
                    user: s.user.as_ref().map(|u| u.value.clone()),
                    catch_up: s.catch_up.as_str(),
                    enabled: s.enabled,
                    next_run: s
                        .enabled
                        .then(|| schedule::next_after(&s.cron_parsed, &s.tz, now))
                        .flatten(),
                    last_slot: row.last_slot,
                    last_job: row.last_job,
                    last_job_state,
                    note: row.last_note,
                });
            }
        }
        Ok(out)
    }

    /// Starts what is due at `now`; returns the next slot of any schedule.
    fn tick_schedules(&self, now: i64) -> Option<i64> {
        // Looked at again when its files changed: a schedule edited a moment ago runs as
        // edited.
        let home = self.inner.home.fresh();
        let mut next: Option<i64> = None;
        for p in home.projects.values() {
            for s in p.schedules.values().filter(|s| s.enabled) {
                let row = match self.store().schedule(&p.key, &s.name, now) {
                    Ok(r) => r,
                    Err(error) => {
                        tracing::error!(%error, schedule = %s.name, "cannot read a schedule's record");
                        continue;
                    }
                };
                let due = schedule::due(
                    &s.cron_parsed,
                    &s.tz,
                    row.last_slot,
                    now,
                    s.catch_up,
                    row.first_seen,
                );
                let (slot, next_ms) = match due {
                    Due::Wait { next_ms } => (None, next_ms),
                    Due::Skip { slot_ms, next_ms } => {
                        let note =
                            "not started: the daemon was down at its time, and catch_up = \"none\"";
                        tracing::info!(project = %p.key, schedule = %s.name, "{note}");
                        self.schedule_handled(&p.key, &s.name, slot_ms, None, Some(note));
                        (None, next_ms)
                    }
                    Due::Run { slot_ms, next_ms } => (Some(slot_ms), next_ms),
                };
                if let Some(n) = next_ms {
                    next = Some(next.map_or(n, |m: i64| m.min(n)));
                }
                let Some(slot) = slot else { continue };
                // Never two of its builds at once: the slot is skipped, and said so.
                let previous = row
                    .last_job
                    .and_then(|id| self.store().job(id).ok().flatten())
                    .filter(|j| !j.state.is_final());
                if let Some(job) = previous {
                    let note = format!(
                        "not started: its previous build (job {}) was still {}",
                        job.id, job.state
                    );
                    tracing::info!(project = %p.key, schedule = %s.name, "{note}");
                    self.schedule_handled(&p.key, &s.name, slot, None, Some(&note));
                    continue;
                }
                let caller = match &s.user {
                    Some(u) => Caller {
                        name: u.value.clone(),
                        admin: home.users.get(&u.value).is_some_and(|u| u.admin),
                        in_home: true,
                    },
                    None => Caller {
                        name: format!("schedule {}", s.name),
                        admin: true,
                        in_home: false,
                    },
                };
                let req = BuildRequest {
                    targets: s.build.iter().map(|b| b.value.clone()).collect(),
                    mode: s.mode,
                    ..BuildRequest::default()
                };
                match self.build(&caller, &p.key, req) {
                    Ok(answer) => match answer.job {
                        Some(job) => {
                            tracing::info!(project = %p.key, schedule = %s.name, job_id = job.id, "scheduled build started");
                            self.schedule_handled(&p.key, &s.name, slot, Some(job.id), None);
                        }
                        None => self.schedule_handled(
                            &p.key,
                            &s.name,
                            slot,
                            None,
                            Some("nothing to run: everything was up to date"),
                        ),
                    },
                    Err(error) => {
                        let note = format!("not started: {error}");
                        tracing::warn!(project = %p.key, schedule = %s.name, %error, "a scheduled build could not start");
                        self.schedule_handled(&p.key, &s.name, slot, None, Some(&note));
                    }
                }
            }
        }
        next
    }

    fn schedule_handled(
        &self,
        project: &str,
        name: &str,
        slot: i64,
        job: Option<i64>,
        note: Option<&str>,
    ) {
        if let Err(error) = self.store().schedule_ran(project, name, slot, job, note) {
            tracing::error!(%error, schedule = name, "cannot record a schedule's run");
        }
    }
}

/// Runs the schedules until the daemon shuts down: wakes at the next slot, or at least every
/// [`LOOK_EVERY`] to see schedules added to the home.
pub(crate) fn start(engine: Engine) {
    let shutdown = engine.inner.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let now = now_ms();
            let next = engine.tick_schedules(now);
            let wait = next
                .map(|n| Duration::from_millis((n - now).max(0) as u64))
                .map_or(LOOK_EVERY, |w| w.min(LOOK_EVERY));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

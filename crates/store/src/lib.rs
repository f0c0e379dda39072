//! capstan's persistent state: jobs, their activities and every state change, in SQLite.
//!
//! One [`Store`] owns one connection; the daemon serialises access to it, so the database is
//! never contended inside an instance (no `SQLITE_BUSY` under a burst of submissions). WAL
//! journaling keeps readers (a second `capstan` process inspecting the file) from blocking the
//! writer. Migrations are plain SQL files embedded in the binary and tracked with
//! `PRAGMA user_version`.
//!
//! Every state change goes through [`Store::transition`], a compare-and-set inside one
//! transaction that also appends the event: a job is claimed by exactly one scheduler pass, and
//! its history can never disagree with its state.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use capstan_core::job::JobState;
pub use capstan_core::job::Part;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

/// The migrations, in order. Never edit one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_jobs.sql"),
    include_str!("../migrations/0002_io.sql"),
    include_str!("../migrations/0003_cancel.sql"),
    include_str!("../migrations/0004_builds.sql"),
    include_str!("../migrations/0005_search_parts.sql"),
    include_str!("../migrations/0006_job_list_indexes.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state database was written by a newer capstan (schema {found}, this one knows {known})"
    )]
    TooNew { found: i64, known: i64 },
    #[error("state database error")]
    Sql(#[from] rusqlite::Error),
    #[error("job {0} has an unknown state `{1}` in the database")]
    BadState(i64, String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A job as submitted.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub project: String,
    pub recipe: String,
    pub user: String,
    pub request_json: String,
    pub resolution_json: String,
    pub exec_config: Option<String>,
    pub cluster: Option<String>,
    pub kind: String,
    /// For a build: its targets and mode, as JSON, and its activities (at least one).
    pub build: Option<(String, Vec<NewActivity>)>,
}

/// An activity of a build, as planned.
#[derive(Clone, Debug, PartialEq)]
pub struct NewActivity {
    pub recipe: String,
    pub resolution_json: String,
    pub exec_config: Option<String>,
    pub cluster: Option<String>,
    pub kind: String,
    /// The indices of the activities whose outputs it reads.
    pub needs: Vec<i64>,
    /// Why the plan runs it, as a JSON list.
    pub why_json: String,
    /// Its share of a distributed search.
    pub part: Option<Part>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub project: String,
    pub recipe: String,
    pub user: String,
    pub request_json: String,
    pub resolution_json: String,
    pub exec_config: Option<String>,
    pub cluster: Option<String>,
    pub kind: String,
    pub state: JobState,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub diagnosis: Option<String>,
    pub peak_memory_bytes: Option<i64>,
    pub cpu_time_ms: Option<i64>,
    /// Rows read and written per dataset, as JSON.
    pub io_json: Option<String>,
    /// A build's targets and mode, as JSON; `None` for the run of one recipe.
    pub build_json: Option<String>,
}

impl JobRow {
    pub fn is_build(&self) -> bool {
        self.build_json.is_some()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub at: i64,
    /// The activity it is about; `None` for the job as a whole.
    pub activity: Option<i64>,
    pub state: JobState,
    pub message: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActivityRow {
    pub job_id: i64,
    pub idx: i64,
    pub recipe: String,
    pub state: JobState,
    pub attempt: i64,
    pub dir: Option<String>,
    pub backend_ref: Option<String>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub diagnosis: Option<String>,
    pub peak_memory_bytes: Option<i64>,
    pub cpu_time_ms: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// A build's activity: its own resolution and placement (`None` in a run of one recipe,
    /// whose job holds them).
    pub resolution_json: Option<String>,
    pub exec_config: Option<String>,
    pub cluster: Option<String>,
    pub kind: Option<String>,
    pub needs: Vec<i64>,
    pub why_json: Option<String>,
    pub io_json: Option<String>,
    /// The input versions and definition its outputs record, fixed when it started.
    pub provenance_json: Option<String>,
    /// Its share of a distributed search.
    pub part: Option<Part>,
}

impl ActivityRow {
    /// How people and the API name it: its recipe, and for a part of a distributed search,
    /// `RECIPE:N` counting from 1.
    pub fn name(&self) -> String {
        match self.part {
            Some(p) => format!("{}:{}", self.recipe, p.index + 1),
            None => self.recipe.clone(),
        }
    }
}

/// Fields set together with a state change (each `Some` overwrites).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub diagnosis: Option<String>,
    pub peak_memory_bytes: Option<i64>,
    pub cpu_time_ms: Option<i64>,
}

/// Which jobs to list.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub user: Option<String>,
    /// Only jobs of `.0` or of the projects `.1` (what a user may see).
    pub visible_to: Option<(String, Vec<String>)>,
    pub states: Vec<JobState>,
    pub project: Option<String>,
    pub exec_config: Option<String>,
    /// Only jobs created at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Only jobs older than this id: the next page of a list that is newest first (keyset
    /// paging, as fast on page 1,000 as on page 1).
    pub before_id: Option<i64>,
    pub limit: Option<u32>,
}

/// What the daemon remembers of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRow {
    pub project: String,
    pub name: String,
    pub first_seen: i64,
    pub last_slot: Option<i64>,
    pub last_job: Option<i64>,
    pub last_note: Option<String>,
}

pub struct Store {
    conn: Connection,
    /// Called after each committed change of a job, an activity or their history: how the
    /// daemon wakes whoever waits for a job to move (the CLI's long polls, log followers).
    on_change: Option<Box<dyn Fn() + Send>>,
}

const JOB_COLUMNS: &str = "id, project, recipe, user, request, resolution, exec_config, cluster, kind, state, created_at, started_at, finished_at, exit_code, diagnosis, peak_memory_bytes, cpu_time_ms, io, build";
const ACTIVITY_COLUMNS: &str = "job_id, idx, recipe, state, attempt, dir, backend_ref, exit_code, signal, diagnosis, peak_memory_bytes, cpu_time_ms, started_at, finished_at, resolution, exec_config, cluster, kind, needs, why, io, provenance, part, parts";

fn state_of(id: i64, s: String) -> Result<JobState> {
    JobState::parse(&s).ok_or(StoreError::BadState(id, s))
}

fn job_row(row: &Row<'_>) -> rusqlite::Result<(JobRow, String)> {
    Ok((
        JobRow {
            id: row.get(0)?,
            project: row.get(1)?,
            recipe: row.get(2)?,
            user: row.get(3)?,
            request_json: row.get(4)?,
            resolution_json: row.get(5)?,
            exec_config: row.get(6)?,
            cluster: row.get(7)?,
            kind: row.get(8)?,
            state: JobState::Queued,
            created_at: row.get(10)?,
            started_at: row.get(11)?,
            finished_at: row.get(12)?,
            exit_code: row.get(13)?,
            diagnosis: row.get(14)?,
            peak_memory_bytes: row.get(15)?,
            cpu_time_ms: row.get(16)?,
            io_json: row.get(17)?,
            build_json: row.get(18)?,
        },
        row.get(9)?,
    ))
}

/// Moves the activities `filter` selects (`?1` the job, `?2` the index) to `to` at `now`,
/// with the fields of `outcome` that are set.
fn set_activities(
    tx: &rusqlite::Transaction<'_>,
    filter: &str,
    (job_id, idx): (i64, Option<i64>),
    to: JobState,
    now: i64,
    outcome: &Outcome,
) -> rusqlite::Result<usize> {
    let started = (to == JobState::Running).then_some(now);
    let finished = to.is_final().then_some(now);
    tx.execute(
        &format!(
            "UPDATE activities SET state = ?3,
                started_at = COALESCE(?4, started_at),
                finished_at = COALESCE(?5, finished_at),
                exit_code = COALESCE(?6, exit_code),
                signal = COALESCE(?7, signal),
                diagnosis = COALESCE(?8, diagnosis),
                peak_memory_bytes = COALESCE(?9, peak_memory_bytes),
                cpu_time_ms = COALESCE(?10, cpu_time_ms)
             WHERE {filter}"
        ),
        params![
            job_id,
            idx,
            to.as_str(),
            started,
            finished,
            outcome.exit_code,
            outcome.signal,
            outcome.diagnosis,
            outcome.peak_memory_bytes,
            outcome.cpu_time_ms
        ],
    )
}

const SCHEDULE_COLUMNS: &str = "project, name, first_seen, last_slot, last_job, last_note";

fn schedule_row(r: &Row<'_>) -> rusqlite::Result<ScheduleRow> {
    Ok(ScheduleRow {
        project: r.get(0)?,
        name: r.get(1)?,
        first_seen: r.get(2)?,
        last_slot: r.get(3)?,
        last_job: r.get(4)?,
        last_note: r.get(5)?,
    })
}

/// `[0, 2]` → `vec![0, 2]` (written by [`needs_json`]; anything else reads as none).
fn parse_needs(s: &str) -> Vec<i64> {
    s.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn needs_json(needs: &[i64]) -> String {
    let list: Vec<String> = needs.iter().map(|n| n.to_string()).collect();
    format!("[{}]", list.join(","))
}

fn activity_row(row: &Row<'_>) -> rusqlite::Result<(ActivityRow, String)> {
    Ok((
        ActivityRow {
            job_id: row.get(0)?,
            idx: row.get(1)?,
            recipe: row.get(2)?,
            state: JobState::Queued,
            attempt: row.get(4)?,
            dir: row.get(5)?,
            backend_ref: row.get(6)?,
            exit_code: row.get(7)?,
            signal: row.get(8)?,
            diagnosis: row.get(9)?,
            peak_memory_bytes: row.get(10)?,
            cpu_time_ms: row.get(11)?,
            started_at: row.get(12)?,
            finished_at: row.get(13)?,
            resolution_json: row.get(14)?,
            exec_config: row.get(15)?,
            cluster: row.get(16)?,
            kind: row.get(17)?,
            needs: row
                .get::<_, Option<String>>(18)?
                .map(|n| parse_needs(&n))
                .unwrap_or_default(),
            why_json: row.get(19)?,
            io_json: row.get(20)?,
            provenance_json: row.get(21)?,
            part: match (
                row.get::<_, Option<u32>>(22)?,
                row.get::<_, Option<u32>>(23)?,
            ) {
                (Some(index), Some(count)) => Some(Part { index, count }),
                _ => None,
            },
        },
        row.get(3)?,
    ))
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // WAL lets readers in other processes proceed while the daemon writes; NORMAL
        // synchronous is durable across process crashes (the WAL is fsynced at checkpoints),
        // which is the failure this database must survive.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store {
            conn,
            on_change: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Sets what to call after each committed change (see [`Store`]'s `on_change`).
    pub fn on_change(&mut self, f: impl Fn() + Send + 'static) {
        self.on_change = Some(Box::new(f));
    }

    fn changed(&self) {
        if let Some(f) = &self.on_change {
            f();
        }
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Inserts a queued job with its one activity per recipe.
    pub fn insert_job(&mut self, job: &NewJob) -> Result<JobRow> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO jobs (project, recipe, user, request, resolution, exec_config, cluster, kind, state, created_at, build)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10)",
            params![
                job.project,
                job.recipe,
                job.user,
                job.request_json,
                job.resolution_json,
                job.exec_config,
                job.cluster,
                job.kind,
                now,
                job.build.as_ref().map(|b| &b.0),
            ],
        )?;
        let id = tx.last_insert_rowid();
        match &job.build {
            None => {
                tx.execute(
                    "INSERT INTO activities (job_id, idx, recipe, state) VALUES (?1, 0, ?2, 'queued')",
                    params![id, job.recipe],
                )?;
            }
            Some((_, activities)) => {
                for (idx, a) in activities.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO activities (job_id, idx, recipe, state, resolution, exec_config, cluster, kind, needs, why, part, parts)
                         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        params![
                            id,
                            idx as i64,
                            a.recipe,
                            a.resolution_json,
                            a.exec_config,
                            a.cluster,
                            a.kind,
                            needs_json(&a.needs),
                            a.why_json,
                            a.part.map(|p| p.index),
                            a.part.map(|p| p.count),
                        ],
                    )?;
                }
            }
        }
        tx.execute(
            "INSERT INTO job_events (job_id, at, state, message) VALUES (?1, ?2, 'queued', NULL)",
            params![id, now],
        )?;
        tx.commit()?;
        self.changed();
        Ok(self.job(id)?.expect("job just inserted"))
    }

    pub fn job(&self, id: i64) -> Result<Option<JobRow>> {
        let r = self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_row,
            )
            .optional()?;
        r.map(|(mut j, s)| {
            j.state = state_of(j.id, s)?;
            Ok(j)
        })
        .transpose()
    }

    /// Jobs, newest first.
    pub fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobRow>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(u) = &filter.user {
            args.push(u.clone().into());
            sql += &format!(" AND user = ?{}", args.len());
        }
        if let Some((user, projects)) = &filter.visible_to {
            args.push(user.clone().into());
            let mut any = vec![format!("user = ?{}", args.len())];
            for p in projects {
                args.push(p.clone().into());
                any.push(format!("project = ?{}", args.len()));
            }
            sql += &format!(" AND ({})", any.join(" OR "));
        }
        if !filter.states.is_empty() {
            let marks: Vec<String> = filter
                .states
                .iter()
                .map(|s| {
                    args.push(s.as_str().to_string().into());
                    format!("?{}", args.len())
                })
                .collect();
            sql += &format!(" AND state IN ({})", marks.join(", "));
        }
        for (column, value) in [
            ("project", &filter.project),
            ("exec_config", &filter.exec_config),
        ] {
            if let Some(v) = value {
                args.push(v.clone().into());
                sql += &format!(" AND {column} = ?{}", args.len());
            }
        }
        if let Some(t) = filter.since {
            args.push(t.into());
            sql += &format!(" AND created_at >= ?{}", args.len());
        }
        if let Some(id) = filter.before_id {
            args.push(id.into());
            sql += &format!(" AND id < ?{}", args.len());
        }
        sql += " ORDER BY id DESC";
        if let Some(limit) = filter.limit {
            sql += &format!(" LIMIT {limit}");
        }
        self.collect_jobs(&sql, rusqlite::params_from_iter(args))
    }

    /// Jobs in the given states, oldest first (the scheduler's order).
    pub fn jobs_in(&self, states: &[JobState]) -> Result<Vec<JobRow>> {
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({}) ORDER BY id",
            list.join(", ")
        );
        self.collect_jobs(&sql, [])
    }

    fn collect_jobs(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<JobRow>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, job_row)?;
        let mut out = Vec::new();
        for r in rows {
            let (mut j, s) = r?;
            j.state = state_of(j.id, s)?;
            out.push(j);
        }
        Ok(out)
    }

    pub fn events(&self, job_id: i64) -> Result<Vec<EventRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, state, message, activity FROM job_events WHERE job_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([job_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (at, s, message, activity) = r?;
            out.push(EventRow {
                at,
                activity,
                state: state_of(job_id, s)?,
                message,
            });
        }
        Ok(out)
    }

    pub fn activities(&self, job_id: i64) -> Result<Vec<ActivityRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ACTIVITY_COLUMNS} FROM activities WHERE job_id = ?1 ORDER BY idx"
        ))?;
        let rows = stmt.query_map([job_id], activity_row)?;
        let mut out = Vec::new();
        for r in rows {
            let (mut a, s) = r?;
            a.state = state_of(job_id, s)?;
            out.push(a);
        }
        Ok(out)
    }

    /// Moves a job (and, for the run of one recipe, its activity; for a build that ends, the
    /// activities still queued, to `skipped`) to `to` if it is in one of `from`, recording the event.
    /// Returns false, changing nothing, if the job was not in one of `from` — the
    /// compare-and-set that makes a claim or a final state happen exactly once.
    pub fn transition(
        &mut self,
        job_id: i64,
        from: &[JobState],
        to: JobState,
        message: Option<&str>,
        outcome: &Outcome,
    ) -> Result<bool> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .query_row("SELECT state FROM jobs WHERE id = ?1", [job_id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(current) = current else {
            return Ok(false);
        };
        let current = state_of(job_id, current)?;
        if !from.contains(&current) || !current.can_become(to) {
            return Ok(false);
        }
        let started = (to == JobState::Running).then_some(now);
        let finished = to.is_final().then_some(now);
        tx.execute(
            "UPDATE jobs SET state = ?2,
                started_at = COALESCE(?3, started_at),
                finished_at = COALESCE(?4, finished_at),
                exit_code = COALESCE(?5, exit_code),
                diagnosis = COALESCE(?6, diagnosis),
                peak_memory_bytes = COALESCE(?7, peak_memory_bytes),
                cpu_time_ms = COALESCE(?8, cpu_time_ms)
             WHERE id = ?1",
            params![
                job_id,
                to.as_str(),
                started,
                finished,
                outcome.exit_code,
                outcome.diagnosis,
                outcome.peak_memory_bytes,
                outcome.cpu_time_ms
            ],
        )?;
        // The run of one recipe: its activity is the job.
        set_activities(
            &tx,
            "job_id = ?1 AND (SELECT build FROM jobs WHERE id = ?1) IS NULL",
            (job_id, None),
            to,
            now,
            outcome,
        )?;
        if to.is_final() {
            // A build that ends (cancelled while queued, say) leaves no activity waiting.
            let why = format!("skipped: the build ended ({}) before its turn", to.as_str());
            tx.execute(
                "UPDATE activities SET state = 'skipped', finished_at = ?2, diagnosis = ?3
                 WHERE job_id = ?1 AND state = 'queued' AND (SELECT build FROM jobs WHERE id = ?1) IS NOT NULL",
                params![job_id, now, why],
            )?;
        }
        tx.execute(
            "INSERT INTO job_events (job_id, at, state, message) VALUES (?1, ?2, ?3, ?4)",
            params![job_id, now, to.as_str(), message],
        )?;
        tx.commit()?;
        self.changed();
        Ok(true)
    }

    /// Records that a job still in progress is to be cancelled, with the reason, and notes it
    /// in its history. Returns false, changing nothing, if the job is over (or unknown).
    pub fn request_cancel(&mut self, job_id: i64, reason: &str) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE jobs SET cancel_requested = COALESCE(cancel_requested, ?2)
             WHERE id = ?1 AND state IN ('queued', 'preparing', 'starting', 'running')",
            params![job_id, reason],
        )?;
        if changed == 1 {
            tx.execute(
                "INSERT INTO job_events (job_id, at, state, message) SELECT id, ?2, state, ?3 FROM jobs WHERE id = ?1",
                params![job_id, now_ms(), format!("cancel requested: {reason}")],
            )?;
        }
        tx.commit()?;
        if changed == 1 {
            self.changed();
        }
        Ok(changed == 1)
    }

    /// Why a job is to be cancelled, if a cancel was accepted for it.
    pub fn cancel_requested(&self, job_id: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT cancel_requested FROM jobs WHERE id = ?1",
                [job_id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Records a message about a job without changing its state ("waiting for quota…").
    pub fn note(&mut self, job_id: i64, message: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO job_events (job_id, at, state, message) SELECT id, ?2, state, ?3 FROM jobs WHERE id = ?1",
            params![job_id, now_ms(), message],
        )?;
        self.changed();
        Ok(())
    }

    /// Records the rows a job read and wrote.
    pub fn set_io(&mut self, job_id: i64, io_json: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE jobs SET io = ?2 WHERE id = ?1",
            params![job_id, io_json],
        )?;
        Ok(())
    }

    /// Moves one activity of a build to `to` if it is in one of `from`, recording the event
    /// (with the activity's index); the compare-and-set of [`Store::transition`], for one
    /// activity. The job's own state is not touched.
    pub fn transition_activity(
        &mut self,
        job_id: i64,
        idx: i64,
        from: &[JobState],
        to: JobState,
        message: Option<&str>,
        outcome: &Outcome,
    ) -> Result<bool> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .query_row(
                "SELECT state FROM activities WHERE job_id = ?1 AND idx = ?2",
                params![job_id, idx],
                |r| r.get(0),
            )
            .optional()?;
        let Some(current) = current else {
            return Ok(false);
        };
        let current = state_of(job_id, current)?;
        if !from.contains(&current) || !current.can_become(to) {
            return Ok(false);
        }
        set_activities(
            &tx,
            "job_id = ?1 AND idx = ?2",
            (job_id, Some(idx)),
            to,
            now,
            outcome,
        )?;
        tx.execute(
            "INSERT INTO job_events (job_id, at, state, message, activity) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job_id, now, to.as_str(), message, idx],
        )?;
        tx.commit()?;
        self.changed();
        Ok(true)
    }

    /// Records a message about one activity without changing its state.
    pub fn note_activity(&mut self, job_id: i64, idx: i64, message: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO job_events (job_id, at, state, message, activity)
             SELECT job_id, ?3, state, ?4, idx FROM activities WHERE job_id = ?1 AND idx = ?2",
            params![job_id, idx, now_ms(), message],
        )?;
        self.changed();
        Ok(())
    }

    /// Records the rows one activity read and wrote.
    pub fn set_activity_io(&mut self, job_id: i64, idx: i64, io_json: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE activities SET io = ?3 WHERE job_id = ?1 AND idx = ?2",
            params![job_id, idx, io_json],
        )?;
        Ok(())
    }

    /// Records what an activity's outputs will name as their provenance.
    pub fn set_activity_provenance(&mut self, job_id: i64, idx: i64, json: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE activities SET provenance = ?3 WHERE job_id = ?1 AND idx = ?2",
            params![job_id, idx, json],
        )?;
        Ok(())
    }

    /// A schedule's record: when the daemon first saw it, its last run's slot and job, and
    /// why its last slot did not start (if so). Created, as first seen `now`, if new.
    pub fn schedule(&mut self, project: &str, name: &str, now: i64) -> Result<ScheduleRow> {
        self.conn.execute(
            "INSERT OR IGNORE INTO schedules (project, name, first_seen) VALUES (?1, ?2, ?3)",
            params![project, name, now],
        )?;
        Ok(self.conn.query_row(
            &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE project = ?1 AND name = ?2"),
            params![project, name],
            schedule_row,
        )?)
    }

    /// Every schedule's record.
    pub fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY project, name"
        ))?;
        let rows = stmt.query_map([], schedule_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a schedule's slot as handled: by `job` when it started one, else with `note`
    /// (why it did not).
    pub fn schedule_ran(
        &mut self,
        project: &str,
        name: &str,
        slot: i64,
        job: Option<i64>,
        note: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE schedules SET last_slot = ?3, last_job = COALESCE(?4, last_job), last_note = ?5
             WHERE project = ?1 AND name = ?2",
            params![project, name, slot, job, note],
        )?;
        Ok(())
    }

    /// Records where an activity's work is (its folder and the backend's reference to it),
    /// and bumps its attempt when `new_attempt` is set.
    pub fn set_activity_location(
        &mut self,
        job_id: i64,
        idx: i64,
        dir: Option<&str>,
        backend_ref: Option<&str>,
        new_attempt: bool,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE activities SET dir = COALESCE(?3, dir), backend_ref = ?4,
                attempt = attempt + ?5 WHERE job_id = ?1 AND idx = ?2",
            params![job_id, idx, dir, backend_ref, new_attempt as i64],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_job(recipe: &str) -> NewJob {
        NewJob {
            project: "p".into(),
            recipe: recipe.into(),
            user: "alice".into(),
            request_json: "{}".into(),
            resolution_json: "{}".into(),
            exec_config: Some("local".into()),
            cluster: None,
            kind: "local".into(),
            build: None,
        }
    }

    #[test]
    fn lifecycle_is_compare_and_set() {
        let mut s = Store::open_in_memory().unwrap();
        let j = s.insert_job(&new_job("r")).unwrap();
        assert_eq!(j.state, JobState::Queued);
        let none = Outcome::default();
        // Claimed once, and only once.
        assert!(
            s.transition(j.id, &[JobState::Queued], JobState::Preparing, None, &none)
                .unwrap()
        );
        assert!(
            !s.transition(j.id, &[JobState::Queued], JobState::Preparing, None, &none)
                .unwrap()
        );
        // The lifecycle refuses skipping to an impossible state.
        assert!(
            !s.transition(
                j.id,
                &[JobState::Preparing],
                JobState::Succeeded,
                None,
                &none
            )
            .unwrap()
        );
        assert!(
            s.transition(
                j.id,
                &[JobState::Preparing],
                JobState::Starting,
                None,
                &none
            )
            .unwrap()
        );
        assert!(
            s.transition(j.id, &[JobState::Starting], JobState::Running, None, &none)
                .unwrap()
        );
        let out = Outcome {
            exit_code: Some(0),
            peak_memory_bytes: Some(1024),
            ..Outcome::default()
        };
        assert!(
            s.transition(
                j.id,
                &[JobState::Running],
                JobState::Succeeded,
                Some("done"),
                &out
            )
            .unwrap()
        );
        // Final is final.
        assert!(
            !s.transition(j.id, &[JobState::Succeeded], JobState::Failed, None, &none)
                .unwrap()
        );
        let j = s.job(j.id).unwrap().unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.exit_code, Some(0));
        assert!(j.started_at.is_some() && j.finished_at.is_some());
        let states: Vec<_> = s.events(j.id).unwrap().iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            [
                JobState::Queued,
                JobState::Preparing,
                JobState::Starting,
                JobState::Running,
                JobState::Succeeded
            ]
        );
        assert_eq!(s.activities(j.id).unwrap()[0].state, JobState::Succeeded);
    }

    #[test]
    fn a_builds_activities_move_on_their_own_and_what_never_ran_is_skipped_at_its_end() {
        let mut s = Store::open_in_memory().unwrap();
        let changes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = changes.clone();
        s.on_change(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let act = |recipe: &str, needs: Vec<i64>| NewActivity {
            recipe: recipe.into(),
            resolution_json: "{}".into(),
            exec_config: Some("local".into()),
            cluster: None,
            kind: "local".into(),
            needs,
            why_json: "[\"never built\"]".into(),
            part: None,
        };
        let j = s
            .insert_job(&NewJob {
                build: Some((
                    "{}".into(),
                    vec![
                        act("a", vec![]),
                        act("b", vec![0]),
                        NewActivity {
                            part: Some(Part { index: 1, count: 3 }),
                            ..act("c", vec![0, 1])
                        },
                    ],
                )),
                ..new_job("a, b, c")
            })
            .unwrap();
        assert!(j.is_build());
        let none = Outcome::default();
        assert!(
            s.transition(j.id, &[JobState::Queued], JobState::Preparing, None, &none)
                .unwrap()
        );
        assert!(
            s.transition(j.id, &[JobState::Preparing], JobState::Running, None, &none)
                .unwrap()
        );
        // The job's own moves leave its activities where they are.
        let acts = s.activities(j.id).unwrap();
        assert!(acts.iter().all(|a| a.state == JobState::Queued));
        assert_eq!(acts[2].needs, [0, 1]);
        assert_eq!(acts[2].part, Some(Part { index: 1, count: 3 }));
        assert_eq!(acts[2].part.unwrap().to_string(), "part 2/3");
        assert_eq!(
            (acts[2].name().as_str(), acts[1].name().as_str()),
            ("c:2", "b")
        );
        assert_eq!(acts[1].part, None);
        for to in [JobState::Preparing, JobState::Starting, JobState::Running] {
            let from = [JobState::Queued, JobState::Preparing, JobState::Starting];
            assert!(
                s.transition_activity(j.id, 0, &from, to, None, &none)
                    .unwrap()
            );
        }
        assert!(
            s.transition_activity(
                j.id,
                0,
                &[JobState::Running],
                JobState::Failed,
                Some("boom"),
                &none
            )
            .unwrap()
        );
        // Final is final for an activity too.
        assert!(
            !s.transition_activity(j.id, 0, &[JobState::Failed], JobState::Running, None, &none)
                .unwrap()
        );
        assert!(
            s.transition_activity(
                j.id,
                1,
                &[JobState::Queued],
                JobState::Skipped,
                Some("skipped (upstream p/a failed)"),
                &none
            )
            .unwrap()
        );
        assert!(
            s.transition(
                j.id,
                &[JobState::Running],
                JobState::Failed,
                Some("p/a failed"),
                &none
            )
            .unwrap()
        );
        let states: Vec<JobState> = s
            .activities(j.id)
            .unwrap()
            .iter()
            .map(|a| a.state)
            .collect();
        assert_eq!(
            states,
            [JobState::Failed, JobState::Skipped, JobState::Skipped]
        );
        // Each activity event names its activity; the job's name none.
        let events: Vec<(Option<i64>, JobState)> = s
            .events(j.id)
            .unwrap()
            .iter()
            .map(|e| (e.activity, e.state))
            .collect();
        assert_eq!(events[3], (Some(0), JobState::Preparing));
        assert_eq!(events.last(), Some(&(None, JobState::Failed)));
        assert!(changes.load(std::sync::atomic::Ordering::SeqCst) >= 9);
    }

    #[test]
    fn survives_reopen_and_lists_in_order() {
        let dir = std::env::temp_dir().join(format!("capstan-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let mut s = Store::open(&path).unwrap();
            for r in ["a", "b", "c"] {
                s.insert_job(&new_job(r)).unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        let queued: Vec<_> = s
            .jobs_in(&[JobState::Queued])
            .unwrap()
            .into_iter()
            .map(|j| j.recipe)
            .collect();
        assert_eq!(queued, ["a", "b", "c"]);
        let newest = s
            .jobs(&JobFilter {
                limit: Some(2),
                ..JobFilter::default()
            })
            .unwrap();
        assert_eq!(
            newest.iter().map(|j| j.recipe.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lists_page_by_id_with_every_filter() {
        let mut s = Store::open_in_memory().unwrap();
        for (i, r) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let mut j = new_job(r);
            if i % 2 == 1 {
                j.project = "q".into();
                j.user = "bob".into();
                j.exec_config = Some("docker-small".into());
            }
            s.insert_job(&j).unwrap();
        }
        let recipes = |f: JobFilter| -> Vec<String> {
            s.jobs(&f).unwrap().into_iter().map(|j| j.recipe).collect()
        };
        let page1 = recipes(JobFilter {
            limit: Some(2),
            ..JobFilter::default()
        });
        assert_eq!(page1, ["e", "d"]);
        // The next page starts below the last id shown.
        assert_eq!(
            recipes(JobFilter {
                before_id: Some(4),
                limit: Some(2),
                ..JobFilter::default()
            }),
            ["c", "b"]
        );
        assert_eq!(
            recipes(JobFilter {
                project: Some("q".into()),
                ..JobFilter::default()
            }),
            ["d", "b"]
        );
        assert_eq!(
            recipes(JobFilter {
                exec_config: Some("local".into()),
                user: Some("alice".into()),
                before_id: Some(5),
                ..JobFilter::default()
            }),
            ["c", "a"]
        );
        assert!(
            recipes(JobFilter {
                since: Some(i64::MAX),
                ..JobFilter::default()
            })
            .is_empty()
        );
    }
}

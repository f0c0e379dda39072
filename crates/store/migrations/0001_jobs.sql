-- Jobs: one request to run a recipe. Times are milliseconds since the Unix epoch.
CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    project           TEXT NOT NULL,
    recipe            TEXT NOT NULL,
    user              TEXT NOT NULL,
    request           TEXT NOT NULL,  -- the run request, as JSON
    resolution        TEXT NOT NULL,  -- every effective setting with its origin, as JSON
    exec_config       TEXT,
    cluster           TEXT,
    kind              TEXT NOT NULL,
    state             TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    exit_code         INTEGER,
    diagnosis         TEXT,
    peak_memory_bytes INTEGER,
    cpu_time_ms       INTEGER
);
CREATE INDEX jobs_by_state ON jobs (state, id);

-- Activities: each recipe run inside a job. `attempt` grows when an activity that never
-- started is requeued after a crash; `dir` is its folder under the home's state/.
CREATE TABLE activities (
    job_id            INTEGER NOT NULL REFERENCES jobs (id),
    idx               INTEGER NOT NULL,
    recipe            TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    dir               TEXT,
    backend_ref       TEXT,           -- what the backend needs to find the work again
    exit_code         INTEGER,
    signal            INTEGER,
    diagnosis         TEXT,
    peak_memory_bytes INTEGER,
    cpu_time_ms       INTEGER,
    started_at        INTEGER,
    finished_at       INTEGER,
    PRIMARY KEY (job_id, idx)
);

-- Every state change, with its time.
CREATE TABLE job_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    at      INTEGER NOT NULL,
    state   TEXT NOT NULL,
    message TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);

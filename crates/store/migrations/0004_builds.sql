-- Builds: a job that builds datasets runs several activities, one per recipe, each with its own
-- resolved settings, in dependency order. `build` is NULL for the run of one recipe.
ALTER TABLE jobs ADD COLUMN build TEXT;            -- {"targets": [...], "mode": "smart"}
ALTER TABLE activities ADD COLUMN resolution TEXT; -- as jobs.resolution, for this activity
ALTER TABLE activities ADD COLUMN exec_config TEXT;
ALTER TABLE activities ADD COLUMN cluster TEXT;
ALTER TABLE activities ADD COLUMN kind TEXT;
ALTER TABLE activities ADD COLUMN needs TEXT;      -- the idx of the activities it waits for, JSON
ALTER TABLE activities ADD COLUMN why TEXT;        -- why the plan runs it, JSON list
ALTER TABLE activities ADD COLUMN io TEXT;         -- rows read and written, as jobs.io
-- What the activity's outputs will record as read and defining them (input versions and the
-- definition's hashes), fixed when it starts: edits made while it runs make it stale.
ALTER TABLE activities ADD COLUMN provenance TEXT;
-- The event of an activity (NULL: of the job as a whole).
ALTER TABLE job_events ADD COLUMN activity INTEGER;

-- Schedules: when the daemon first saw each, and its last run (the slot it was for and the job).
CREATE TABLE schedules (
    project    TEXT NOT NULL,
    name       TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_slot  INTEGER,
    last_job   INTEGER,
    last_note  TEXT,
    PRIMARY KEY (project, name)
);

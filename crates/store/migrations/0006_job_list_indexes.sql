-- The jobs list (the web UI's and `capstan jobs`') filters by user, project or configuration
-- and pages newest first by id: each filter gets an index that ends in id, so a page is a
-- range scan, whatever the number of jobs.
CREATE INDEX jobs_by_user ON jobs (user, id);
CREATE INDEX jobs_by_project ON jobs (project, id);
CREATE INDEX jobs_by_exec_config ON jobs (exec_config, id);

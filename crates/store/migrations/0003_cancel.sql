-- A cancel accepted while a job was being prepared or running: why, and by whom. Kept in the
-- database (not only in the daemon's memory) so that a cancel answered just before a crash
-- still ends the job cancelled after the restart.
ALTER TABLE jobs ADD COLUMN cancel_requested TEXT;

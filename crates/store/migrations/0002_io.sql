-- Rows each job read and wrote, per dataset, as JSON: {"read": {...}, "written": {...}}.
ALTER TABLE jobs ADD COLUMN io TEXT;

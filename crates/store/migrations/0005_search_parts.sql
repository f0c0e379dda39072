-- A distributed search: an ML training split over several activities of one job, each trying
-- its share of the points. `part` counts from 0; both are NULL for an activity that is whole.
ALTER TABLE activities ADD COLUMN part INTEGER;
ALTER TABLE activities ADD COLUMN parts INTEGER;

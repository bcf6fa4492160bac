-- Search returns hits newest meeting first. Sorting every match by the meeting's start
-- (a join) made common words slow; with the meeting's start on each segment and an index
-- in result order, PostgreSQL can walk that index and stop after the first hits (common
-- words) or take the GIN index and sort the few matches (rare words), whichever it
-- estimates cheaper.
ALTER TABLE segments ADD COLUMN meeting_started_at timestamptz;

-- The owner fills the new column across tenants: forced row-level security would hide
-- every row from it, so it is lifted for this statement only, inside this migration's
-- transaction.
ALTER TABLE segments NO FORCE ROW LEVEL SECURITY;
ALTER TABLE segments DISABLE ROW LEVEL SECURITY;
UPDATE segments g SET meeting_started_at = m.started_at
    FROM meetings m WHERE m.tenant_id = g.tenant_id AND m.meeting_id = g.meeting_id;
ALTER TABLE segments ENABLE ROW LEVEL SECURITY;
ALTER TABLE segments FORCE ROW LEVEL SECURITY;

ALTER TABLE segments ALTER COLUMN meeting_started_at SET NOT NULL;
CREATE INDEX segments_search_order
    ON segments (tenant_id, meeting_started_at DESC, meeting_id, start_ms);

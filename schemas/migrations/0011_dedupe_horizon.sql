-- Raising a metric's lateness must not open a window for double counting: dedupe entries of events
-- older than the old lateness may be gone already. When lateness goes up, the mapping remembers the
-- earliest event time from which every dedupe entry still exists (see streams/policy.py): an older
-- event is too late, whatever the new lateness says, until the window has caught up.
ALTER TABLE metric_mappings ADD COLUMN dedupe_horizon timestamptz;

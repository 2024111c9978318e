-- Read your writes: which keyed message each counter snapshot has applied, so a replay or an
-- adjustment can wait until the counters show its control message (deltas carry keyedPartition and
-- keyedOffset). Rows written before this migration have none; they are refreshed by their next delta.
ALTER TABLE counters ADD COLUMN keyed_partition integer, ADD COLUMN keyed_offset bigint;

-- Where an apply's control messages went, and when the counters showed all of them.
ALTER TABLE replays ADD COLUMN targets jsonb, ADD COLUMN visible_at timestamptz;
ALTER TABLE adjustments ADD COLUMN keyed_partition integer, ADD COLUMN keyed_offset bigint,
    ADD COLUMN visible_at timestamptz;

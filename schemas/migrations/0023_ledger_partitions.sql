-- The ledger is partitioned by time, so that retention drops whole partitions (never a DELETE):
-- `events` becomes a table partitioned by RANGE (ledger_time), one partition a day, created ahead and
-- dropped after STRIPEMETER_LEDGER_RETENTION_DAYS by the sink's upkeep
-- (stripemeter/adapters/postgres/ledger_partitions.py; docs/decisions.md "The ledger's partition key").
--
-- The key: ledger_time is the event's time (ts) for counted, duplicate and too-late events, and the
-- dead-letter record's timestamp for a rejected input (which has no event time). Both are fixed by
-- the input: a record the sink writes again after a crash or a restore lands in the same partition and
-- conflicts on the unique key (the source position plus ledger_time; the table's key, since a
-- partitioned table's unique keys must hold its partition key), as before. Receive time
-- (recorded_at, now()) would not be: a rewrite on another day would be a second row. Event time also
-- makes retention mean what a replay window needs: every event whose ts is inside retention is kept.
--
-- The existing table is not copied: it becomes the first partition, `events_unpartitioned`, holding
-- every time before the day after tomorrow (UTC). Its rows take ledger_time 1970-01-01 UTC (a constant
-- default: no table rewrite), and so do rows the previous release's sink writes (it names no
-- ledger_time) while both releases run. The partition keeps its old primary key on the source
-- position alone as a unique index, so the previous release's INSERT ... ON CONFLICT DO NOTHING and
-- this release's rewrite of the same input (ledger_time = ts) still conflict: no input has two rows.
-- The partition is dropped like a day's once its whole range is past retention.
-- Rows with a time no partition holds (an event older than retention arriving now) go to the default
-- partition `events_outside`, which the upkeep empties once nothing in it is inside retention.
-- On a large ledger, build events_unpartitioned_key beforehand with CREATE UNIQUE INDEX CONCURRENTLY
-- on (source_topic, source_partition, source_offset, source_index, ledger_time) after adding the
-- column by hand (the same statement as below); the migration keeps it.
--
-- It renames the old table, which releases shipping 0022 do not name (they read and write `events`,
-- the partitioned table): they run with it.
-- oldest-code: 0022
ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned ADD COLUMN IF NOT EXISTS ledger_time timestamptz NOT NULL
    DEFAULT '1970-01-01 00:00:00+00';
ALTER INDEX events_pkey RENAME TO events_unpartitioned_pkey;
ALTER INDEX events_by_stream RENAME TO events_unpartitioned_by_stream;
ALTER INDEX events_by_key RENAME TO events_unpartitioned_by_key;
ALTER INDEX events_late RENAME TO events_unpartitioned_late;
ALTER INDEX events_by_tenant_time RENAME TO events_unpartitioned_by_tenant_time;
ALTER INDEX events_by_metric_time RENAME TO events_unpartitioned_by_metric_time;
CREATE UNIQUE INDEX IF NOT EXISTS events_unpartitioned_key
    ON events_unpartitioned (source_topic, source_partition, source_offset, source_index, ledger_time);
ALTER TABLE events_unpartitioned ADD CONSTRAINT events_unpartitioned_key UNIQUE USING INDEX events_unpartitioned_key;

CREATE TABLE events (
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    source_index     integer     NOT NULL,
    outcome          text        NOT NULL CONSTRAINT events_outcome_check
                                 CHECK (outcome IN ('counted', 'duplicate', 'late', 'rejected')),
    tenant_id        text,
    metric           text,
    customer_ref     text,
    quantity_micros  numeric(38, 0),
    ts               timestamptz,
    idempotency_key  text,
    key_derived      boolean,
    resource_id      text,
    meta             jsonb,
    error_code       text,
    error_message    text,
    raw              text,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    ledger_time      timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',  -- the partition key (see above)
    CONSTRAINT events_source_key UNIQUE (source_topic, source_partition, source_offset, source_index, ledger_time)
) PARTITION BY RANGE (ledger_time);
-- The same indexes as before, per partition; the old table's are taken over as they are.
CREATE INDEX events_by_stream ON events (tenant_id, metric, customer_ref, ts);
CREATE INDEX events_by_key ON events (tenant_id, idempotency_key);
CREATE INDEX events_late ON events (tenant_id, metric, ts) WHERE outcome = 'late';
CREATE INDEX events_by_tenant_time
    ON events (tenant_id, ts, source_topic, source_partition, source_offset, source_index);
CREATE INDEX events_by_metric_time
    ON events (tenant_id, metric, ts, source_topic, source_partition, source_offset, source_index);

CREATE TABLE events_outside PARTITION OF events DEFAULT;

DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE events ATTACH PARTITION events_unpartitioned FOR VALUES FROM (MINVALUE) TO (%L)',
        date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '2 days');
END
$$;

-- Corrections that apply once at any later time, from durable records here, not from the meter's
-- dedupe entries (which expire after the lateness window plus an hour).

-- POST /v1/adjustments with an Idempotency-Key (Stripe's semantics): the answer given, stored once
-- the adjustment is done, so the same key and body return it again (same status, same body) and
-- nothing is sent to the meter again. NULL: not answered yet (the request failed or is under way;
-- a retry finishes it: it re-sends the correction only while status is still 'pending').
ALTER TABLE adjustments ADD COLUMN response_status smallint, ADD COLUMN response_body json;

-- Replay: the events a correction covers are fixed and stored before it is sent. An apply records
-- its corrections (status 'recorded') and claims their events' idempotency keys in replayed_keys in
-- one transaction, then sends, then marks them 'sent' with where they landed. A later apply first
-- re-sends what is still 'recorded' (same ids: the meter applies each once) and plans only events
-- that no correction claims.
CREATE TABLE replay_corrections (
    correction_id   text        PRIMARY KEY,
    replay_id       text        NOT NULL,  -- the apply that planned and recorded it
    tenant_id       text        NOT NULL,
    metric          text        NOT NULL,
    customer_ref    text        NOT NULL,
    bucket          timestamptz NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('add', 'last')),
    micros          numeric(38, 0) NOT NULL,
    ts_ms           bigint      NOT NULL,
    events          integer     NOT NULL,  -- how many claimed keys it counts
    status          text        NOT NULL CHECK (status IN ('recorded', 'sent')),
    sent_by         text,                  -- the apply whose send the broker acknowledged
    keyed_partition integer,
    keyed_offset    bigint,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX replay_corrections_unsent ON replay_corrections (tenant_id, metric, bucket)
    WHERE status = 'recorded';

-- Which correction counts the key (NULL: claimed before this migration, by a replay that had sent
-- its corrections already).
ALTER TABLE replayed_keys ADD COLUMN correction_id text;

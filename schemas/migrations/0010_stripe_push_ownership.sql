-- The Stripe writer with any number of workers, against Stripe's real semantics (see
-- stripemeter/stripe_push/writer.py and the README's "Stripe" section).
--
-- Ownership: a counter's deltas arrive in one partition of usage.deltas, and only the writer holding
-- that partition pushes the counter. Each claim of a partition bumps its epoch; every change of a
-- push row names the epoch it was decided under and its row version (compare-and-set), so a writer
-- that lost the partition or read a stale row changes nothing.
CREATE TABLE stripe_writer_leases (
    app_id     text        NOT NULL,
    partition  integer     NOT NULL,
    owner      text        NOT NULL,
    epoch      bigint      NOT NULL,
    claimed_at timestamptz NOT NULL,
    PRIMARY KEY (app_id, partition)
);

ALTER TABLE stripe_pushes
    -- the app (STRIPEMETER_APP_ID) whose usage.deltas the row comes from: its writers push it
    ADD COLUMN app_id          text,
    ADD COLUMN delta_partition integer,
    ADD COLUMN version         bigint  NOT NULL DEFAULT 0,
    -- the first hour of the billing period the hour belongs to (the customer's cycle, if anchored):
    -- whole units are carried from hour to hour within it, so no fraction is lost
    ADD COLUMN period_start    timestamptz,
    -- the exact request (identifier, event name, payload, timestamp, target), recorded before the
    -- call; a retry sends it unchanged
    ADD COLUMN pending_request jsonb,
    ADD COLUMN pending_since   timestamptz,
    -- the idempotency key's suffix: Stripe replays a 500 to the same key, so a retry after one uses a
    -- new key (the identifier, unchanged, still stops a double count)
    ADD COLUMN pending_attempt integer NOT NULL DEFAULT 0;

-- A push recorded as pending by the writer before this migration: its exact request (the timestamp)
-- was not recorded. Keep what is known and let the writer ask Stripe's summaries whether it landed
-- before anything is sent again (pending_since in the past makes it do so at once).
UPDATE stripe_pushes
SET pending_request = jsonb_build_object(
        'identifier', pending_identifier, 'toUnits', pending_to_units, 'recorded', false),
    pending_since = updated_at - interval '2 days'
WHERE pending_identifier IS NOT NULL;

ALTER TABLE stripe_pushes DROP COLUMN pending_identifier, DROP COLUMN pending_to_units;
CREATE INDEX stripe_pushes_by_partition ON stripe_pushes (app_id, delta_partition)
    WHERE status IN ('waiting', 'pending');

-- Every meter event request the writer sent, by identifier: what an error report from Stripe
-- (v1.billing.meter.error_report_triggered, naming the identifier) refers to, and an audit trail.
CREATE TABLE stripe_push_requests (
    identifier   text        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    metric       text        NOT NULL,
    customer_ref text        NOT NULL,
    bucket       timestamptz NOT NULL,
    request      jsonb       NOT NULL,
    status       text        NOT NULL CHECK (status IN ('sent', 'delivered', 'refused', 'dropped')),
    reason       text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX stripe_push_requests_by_counter
    ON stripe_push_requests (tenant_id, metric, customer_ref, bucket);

-- The reconciler's aligning meter events, recorded exactly before they are sent (a resend after a
-- crash is the same request).
ALTER TABLE adjustments ADD COLUMN request jsonb;

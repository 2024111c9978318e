-- Configuration is read-your-writes: every change of a metric mapping gets a version from one
-- sequence, and the API sends the new rules to every keyed partition as a control message carrying
-- that version (an event that reaches Kafka after the answer lies behind it). Workers keep the highest
-- version they have seen per metric, from those messages and from reloading this table, so an older
-- read never undoes a newer change.
CREATE SEQUENCE mapping_versions;
ALTER TABLE metric_mappings ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE customer_mappings ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- A deleted metric mapping leaves its version behind, so a worker that read the mapping before the
-- delete learns that it is gone (the metric is counted under the defaults again), and the dedupe
-- horizon that going back to the default lateness may need (see 0011).
CREATE TABLE metric_mapping_tombstones (
    tenant_id      text        NOT NULL,
    metric         text        NOT NULL,
    version        bigint      NOT NULL,
    dedupe_horizon timestamptz,
    deleted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, metric)
);

-- A replay counts its too-late events into a counter as events, folded every way (their sum, how
-- many, and the newest one's value and time), so the counter keeps every aggregation's total.
ALTER TABLE replay_corrections ADD COLUMN last_micros numeric(38, 0);
ALTER TABLE replay_corrections DROP CONSTRAINT replay_corrections_kind_check;
ALTER TABLE replay_corrections ADD CONSTRAINT replay_corrections_kind_check
    CHECK (kind IN ('add', 'events', 'last'));

-- Whom a Stripe customer belongs to, and which streams send to one Stripe pair, are checked on every
-- mapping change (and reconciliation looks for pairs more than one stream maps to): no scans.
CREATE INDEX customer_mappings_by_stripe_id ON customer_mappings (stripe_customer_id);
CREATE INDEX metric_mappings_by_event_name ON metric_mappings (stripe_meter_event_name);

-- Every (Stripe meter event name, Stripe customer) pair a counter stream (tenant, metric, customerRef)
-- was ever mapped to. One pair takes one stream's usage: a mapping change that would send a second
-- stream to a pair, or leave usage of open periods behind at an old one, is refused (the reconciler
-- compares each stream with its pair's summary, so a shared pair would correct one stream's usage
-- away). The history finds the streams that may still hold usage at a pair they no longer map to.
CREATE TABLE stripe_destinations (
    event_name         text        NOT NULL,
    stripe_customer_id text        NOT NULL,
    tenant_id          text        NOT NULL,
    metric             text        NOT NULL,
    customer_ref       text        NOT NULL,
    first_mapped_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_name, stripe_customer_id, tenant_id, metric, customer_ref)
);
CREATE INDEX stripe_destinations_by_customer ON stripe_destinations (stripe_customer_id);
INSERT INTO stripe_destinations (event_name, stripe_customer_id, tenant_id, metric, customer_ref)
SELECT m.stripe_meter_event_name, c.stripe_customer_id, m.tenant_id, m.metric, c.customer_ref
FROM metric_mappings m JOIN customer_mappings c USING (tenant_id)
ON CONFLICT DO NOTHING;

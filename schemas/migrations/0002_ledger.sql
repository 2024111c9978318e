-- The event ledger: every event read from usage.events with its outcome. One row per input
-- (source topic, partition, offset, position in an array message), so writing a batch twice
-- changes nothing.
CREATE TABLE events (
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    source_index     integer     NOT NULL,
    outcome          text        NOT NULL CHECK (outcome IN ('counted', 'duplicate', 'late', 'rejected')),
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
    raw              text,       -- rejected inputs only; at most 64 KiB (the dead-letter topic keeps all)
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset, source_index)
);
CREATE INDEX events_by_stream ON events (tenant_id, metric, customer_ref, ts);
CREATE INDEX events_by_key ON events (tenant_id, idempotency_key);

-- Newest event time counted per counter stream, as the ledger saw it.
CREATE TABLE watermarks (
    tenant_id    text        NOT NULL,
    metric       text        NOT NULL,
    customer_ref text        NOT NULL,
    watermark    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, metric, customer_ref)
);

-- What ties local names to Stripe, and per-metric rules.
CREATE TABLE metric_mappings (
    tenant_id                text        NOT NULL,
    metric                   text        NOT NULL,
    stripe_meter_event_name  text        NOT NULL,
    aggregation              text        NOT NULL CHECK (aggregation IN ('sum', 'count', 'last')),
    lateness_seconds         integer     CHECK (lateness_seconds >= 0),
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, metric)
);

CREATE TABLE customer_mappings (
    tenant_id          text        NOT NULL,
    customer_ref       text        NOT NULL,
    stripe_customer_id text        NOT NULL,
    billing_anchor     timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_ref)
);

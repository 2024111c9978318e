-- Reconciliation: every run, every item it checked, and the latest verdict per item.
CREATE TABLE reconciliation_runs (
    run_id         text        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    metric         text,                   -- NULL: every metric of the tenant
    period         text        NOT NULL,   -- YYYY-MM
    trigger        text        NOT NULL,   -- schedule | api | cli
    epsilon        double precision NOT NULL,
    status         text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished', 'failed')),
    items          integer     NOT NULL DEFAULT 0,
    parity         integer     NOT NULL DEFAULT 0,
    within_epsilon integer     NOT NULL DEFAULT 0,
    drift          integer     NOT NULL DEFAULT 0,
    adjusted       integer     NOT NULL DEFAULT 0,
    stripe_calls   integer     NOT NULL DEFAULT 0,
    error          text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX reconciliation_runs_by_tenant ON reconciliation_runs (tenant_id, started_at DESC);

CREATE TABLE reconciliation_items (
    run_id       text        NOT NULL REFERENCES reconciliation_runs ON DELETE CASCADE,
    tenant_id    text        NOT NULL,
    metric       text        NOT NULL,
    customer_ref text        NOT NULL,
    period       text        NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    local        numeric     NOT NULL,
    stripe       numeric     NOT NULL,
    diff_abs     numeric     NOT NULL,
    diff_pct     double precision NOT NULL,
    status       text        NOT NULL CHECK (status IN ('parity', 'within_epsilon', 'drift')),
    action       text        NOT NULL,  -- none | wait | adjusted | replay
    in_flight    numeric     NOT NULL DEFAULT 0,
    causes       jsonb       NOT NULL DEFAULT '[]',
    hours        jsonb       NOT NULL DEFAULT '[]',
    checked_at   timestamptz NOT NULL,
    PRIMARY KEY (run_id, metric, customer_ref)
);

-- The newest verdict per item, whichever run produced it: what the summary endpoint and the gauges read.
CREATE TABLE reconciliation_latest (
    LIKE reconciliation_items,
    PRIMARY KEY (tenant_id, metric, customer_ref, period)
);

-- Audited corrections. target 'stripe': a meter event sent by the reconciler to align Stripe with
-- local totals (recorded as pending before the call, with its identifier, so a crash resends the same
-- event). target 'counter': a correction counted into a local counter (POST /v1/adjustments).
CREATE TABLE adjustments (
    adjustment_id  text        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    metric         text        NOT NULL,
    customer_ref   text        NOT NULL,
    bucket         timestamptz NOT NULL,
    ts             timestamptz NOT NULL,
    delta_micros   numeric(38, 0) NOT NULL,
    reason         text        NOT NULL,
    target         text        NOT NULL CHECK (target IN ('stripe', 'counter')),
    status         text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'failed')),
    run_id         text,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    applied_at     timestamptz
);
CREATE INDEX adjustments_by_item ON adjustments (tenant_id, metric, customer_ref, bucket);

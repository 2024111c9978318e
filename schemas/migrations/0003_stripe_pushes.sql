-- What the Stripe writer knows per counter: the newest local total (from usage.deltas), what Stripe
-- has been sent (whole units), and a push in flight. A push is recorded here before the Stripe call
-- (status 'pending' with its identifier and target), so after a crash the same identifier is sent
-- again and Stripe recognises it: nothing is counted twice, nothing is lost.
CREATE TABLE stripe_pushes (
    tenant_id          text        NOT NULL,
    metric             text        NOT NULL,
    customer_ref       text        NOT NULL,
    bucket             timestamptz NOT NULL,
    latest_micros      numeric(38, 0) NOT NULL,
    latest_seq         bigint      NOT NULL,
    pushed_units       bigint      NOT NULL DEFAULT 0,
    pending_identifier text,
    pending_to_units   bigint,
    status             text        NOT NULL DEFAULT 'waiting'
                       CHECK (status IN ('waiting', 'pending', 'synced', 'unmapped', 'parked')),
    reason             text,
    attempts           integer     NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, metric, customer_ref, bucket)
);
CREATE INDEX stripe_pushes_todo ON stripe_pushes (status) WHERE status IN ('waiting', 'pending', 'unmapped');

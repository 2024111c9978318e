-- Hour-bucket counters as last published on usage.deltas: the queryable copy of the worker's
-- Faust table. Rows carry the delta's seq; an older or repeated delta never overwrites a newer one.
CREATE TABLE counters (
    tenant_id    text        NOT NULL,
    metric       text        NOT NULL,
    customer_ref text        NOT NULL,
    bucket       timestamptz NOT NULL,
    total_micros numeric(38, 0) NOT NULL,
    seq          bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, metric, customer_ref, bucket)
);

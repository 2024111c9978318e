-- What the scheduled reconciliation knows about each item (tenant, metric, customer, period) without
-- reading Stripe again: when Stripe was last read for it, and, when that read proved parity with every
-- hour settled, a digest of the local state it was proven on (hours, writer state, corrections,
-- mappings, late events). A scheduled pass reads Stripe only for items whose digest changed, or that
-- were never proven, or whose turn in the rolling sweep or before their invoice has come
-- (docs/reconciliation.md). Releases that do not know this table read every item: nothing depends on
-- it being complete.
CREATE TABLE reconciliation_proofs (
    tenant_id    text        NOT NULL,
    metric       text        NOT NULL,
    customer_ref text        NOT NULL,
    period       text        NOT NULL,  -- YYYY-MM, as in reconciliation_latest
    read_at      timestamptz NOT NULL,  -- the last run that read Stripe for the item (application clock)
    digest       text,                  -- NULL: that read did not prove settled parity
    PRIMARY KEY (tenant_id, metric, customer_ref, period)
);

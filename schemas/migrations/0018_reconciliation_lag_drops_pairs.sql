-- Stripe's meter event summaries are eventually consistent, with no documented bound. When the
-- reconciler finds an hour whose summary shows only the first steps (delivered requests and applied
-- corrections) it took, it records how long the first unseen step has been unseen; once a later read
-- shows that step, the lag is confirmed. The settle time in use is a multiple of the longest lag
-- confirmed lately (capped), across every process of the app (STRIPEMETER_APP_ID: one deployment, one
-- Stripe account). Times are unix seconds (the steps' delivery times, compared exactly).
CREATE TABLE stripe_summary_lags (
    app_id       text             NOT NULL,
    tenant_id    text             NOT NULL,
    metric       text             NOT NULL,
    customer_ref text             NOT NULL,
    bucket       timestamptz      NOT NULL,
    unseen_since double precision NOT NULL,  -- when the first step the summary did not show was delivered
    lag_seconds  double precision NOT NULL,  -- the longest it was seen missing
    observed_at  timestamptz      NOT NULL,  -- the last time it was seen missing, or shown
    shown        boolean          NOT NULL DEFAULT false,  -- a later read showed it: it was lag
    PRIMARY KEY (app_id, tenant_id, metric, customer_ref, bucket, unseen_since)
);
CREATE INDEX stripe_summary_lags_confirmed ON stripe_summary_lags (app_id, observed_at) WHERE shown;

-- The value Stripe's summary showed for the hour when the reconciler decided a correction: until the
-- correction shows, the summary may still show it (NULL: decided before this migration).
ALTER TABLE adjustments ADD COLUMN stripe_seen bigint;

-- 'dropped': Stripe accepted the correction and then reported it dropped (an error report naming it):
-- it did not land.
ALTER TABLE adjustments DROP CONSTRAINT adjustments_status_check;
ALTER TABLE adjustments ADD CONSTRAINT adjustments_status_check
    CHECK (status IN ('pending', 'applied', 'failed', 'unknown', 'dropped'));

-- A delivered request Stripe reported dropped after the reconciler had already made up for it (a
-- correction of the hour recorded after the request): the correction stands in for it, up to its
-- amount, so the writer does not push it again. What each correction covers is recorded once; a
-- correction that turns out not to have landed (refused, or reported dropped) gives its cover back.
CREATE TABLE stripe_drop_covers (
    identifier    text        NOT NULL,  -- the dropped request (stripe_push_requests)
    adjustment_id text        NOT NULL,  -- the correction standing in for it (adjustments)
    units         bigint      NOT NULL CHECK (units > 0),
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (identifier, adjustment_id)
);
CREATE INDEX stripe_drop_covers_by_adjustment ON stripe_drop_covers (adjustment_id);

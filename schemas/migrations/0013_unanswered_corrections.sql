-- The reconciler's corrections (adjustments with target 'stripe') by what Stripe's answer means:
--   'applied': delivered (2xx, or "an event already exists with identifier");
--   'failed':  refused (4xx): it did not land;
--   'pending': recorded and not answered clearly (a crash, a 5xx, a timeout, no connection after
--              retries): it may have landed, so its hour stays in flight and the recorded request is
--              sent again under its identifier; after a 5xx under a new idempotency key
--              (identifier-rN, N = send_attempt), since Stripe replays a 500 to the same key;
--   'unknown': still unanswered when Stripe's identifier window (24 h) closed: never sent again (it
--              could count twice); Stripe's settled summaries show whether it landed.
ALTER TABLE adjustments ADD COLUMN send_attempt integer NOT NULL DEFAULT 0;
ALTER TABLE adjustments DROP CONSTRAINT adjustments_status_check;
ALTER TABLE adjustments ADD CONSTRAINT adjustments_status_check
    CHECK (status IN ('pending', 'applied', 'failed', 'unknown'));

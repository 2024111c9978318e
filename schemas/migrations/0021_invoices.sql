-- The pre-invoice guard: every Stripe invoice heard of (invoice.* webhooks), what the guard did with it
-- and why, and the proof it keeps per metered line. One row per invoice, written by the API (an event
-- arrived: check it now) and by the worker that guards it (services/invoice_guard.py). Stripe's invoice
-- is the truth: each check reads it again, so events delivered twice or out of order change nothing.
CREATE TABLE invoices (
    invoice_id          text        PRIMARY KEY,
    stripe_customer     text        NOT NULL,
    tenant_id           text,                 -- known once a line maps to a tenant's counters
    customer_ref        text,
    period_start        timestamptz,
    period_end          timestamptz,
    stripe_status       text        NOT NULL,  -- draft, open, paid, void, uncollectible (Stripe's)
    -- received: not checked yet; proving: checked, not proven, not held (yet); held: auto_advance set
    -- false by the guard; released: proven (or released by policy), handed to finalization; finalized:
    -- Stripe finalized it; unguarded: no line bills stripemeter's counters
    guard_state         text        NOT NULL DEFAULT 'received'
        CHECK (guard_state IN ('received', 'proving', 'held', 'released', 'finalized', 'unguarded')),
    reason              text,                 -- why it is in that state, for humans
    reason_code         text,                 -- proven, in_flight, beyond_epsilon, period_mismatch, ...
    hold_requests       integer     NOT NULL DEFAULT 0,  -- auto_advance=false calls recorded before sent
    release_requests    integer     NOT NULL DEFAULT 0,  -- finalize / auto_advance=true calls, same
    finalizes_at        timestamptz,          -- Stripe's automatically_finalizes_at
    deadline            timestamptz,          -- finalizes_at minus the guard's margin
    test_clock          text,
    checks              integer     NOT NULL DEFAULT 0,
    next_check_at       timestamptz NOT NULL DEFAULT now(),
    first_event_at      timestamptz NOT NULL DEFAULT now(),
    last_event_type     text,
    held_at             timestamptz,
    released_at         timestamptz,
    release_reason      text,
    finalized_at        timestamptz,
    lines               jsonb       NOT NULL DEFAULT '[]',  -- the proof: one object per metered line
    unbilled            jsonb       NOT NULL DEFAULT '[]',  -- usage counted after it was finalized
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_due ON invoices (next_check_at) WHERE guard_state <> 'unguarded';
CREATE INDEX invoices_by_tenant ON invoices (tenant_id, period_start DESC, invoice_id);

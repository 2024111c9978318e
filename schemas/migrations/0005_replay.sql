-- Replay: too-late events counted on an operator's request, exactly once.
-- The idempotency keys a replay has counted (the ledger itself is never rewritten).
CREATE TABLE replayed_keys (
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL,
    replay_id       text NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
-- Replays and the reconciler look only at too-late events; keep finding them cheap in big windows.
CREATE INDEX events_late ON events (tenant_id, metric, ts) WHERE outcome = 'late';

CREATE TABLE replays (
    replay_id      text        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    metrics        text[]      NOT NULL,
    customer_ref   text,
    since          timestamptz NOT NULL,
    until          timestamptz NOT NULL,
    mode           text        NOT NULL CHECK (mode IN ('dry-run', 'apply')),
    status         text        NOT NULL CHECK (status IN ('planned', 'applying', 'applied', 'failed')),
    events_scanned bigint      NOT NULL,
    report         jsonb       NOT NULL,  -- the response body, as returned
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX replays_by_tenant ON replays (tenant_id, created_at DESC);

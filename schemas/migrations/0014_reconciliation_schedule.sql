-- The scheduled reconciliation pass: once per STRIPEMETER_RECONCILE_INTERVAL_SECONDS across all
-- workers. Every worker runs the schedule; the one that takes the schedule's advisory lock claims the
-- pass by moving started_at forward, which it may only do when the last pass (whoever made it) started
-- an interval ago or more. started_at is on the application's clock (stripemeter/clock.py).
CREATE TABLE reconciliation_schedule (
    name        text        PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    started_by  text        NOT NULL
);

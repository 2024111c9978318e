-- Every worker says it is alive every few seconds, with what it is doing and the lag it measured;
-- the API's readiness reads it (a worker that stopped writing is down).
CREATE TABLE worker_heartbeats (
    worker_id   text        PRIMARY KEY,
    app_id      text        NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    ready       boolean     NOT NULL,
    state       jsonb       NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now()
);

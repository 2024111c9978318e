-- The Stripe writer pushes every configuration as Stripe bills it (see the README's "Stripe" section).

-- Counters carry the app (STRIPEMETER_APP_ID) whose sink wrote them: the app's writer makes push rows
-- from them when their deltas are gone from usage.deltas (Stripe configured later, a writer down for
-- longer than the topic keeps records). Rows written before this migration have none: no writer
-- adopts them on its own.
ALTER TABLE counters ADD COLUMN app_id text;
CREATE INDEX counters_by_app ON counters (app_id, bucket, tenant_id, metric, customer_ref);

ALTER TABLE stripe_pushes
    -- the newest timestamp a request of the hour was recorded with: a last meter bills the value of
    -- the newest event, so each request of a last hour is stamped one second after the previous one
    ADD COLUMN last_timestamp bigint,
    -- when Stripe first refused the pending request for now (a temporary refusal): after an hour of
    -- them it is parked
    ADD COLUMN refused_since  timestamptz;

UPDATE stripe_pushes p SET last_timestamp = r.newest
FROM (
    SELECT tenant_id, metric, customer_ref, bucket, max((request ->> 'timestamp')::bigint) AS newest
    FROM stripe_push_requests WHERE request ? 'timestamp'
    GROUP BY tenant_id, metric, customer_ref, bucket
) r
WHERE p.tenant_id = r.tenant_id AND p.metric = r.metric AND p.customer_ref = r.customer_ref
  AND p.bucket = r.bucket;

-- A last hour whose value was 0 from the start was marked synced without sending anything: Stripe holds
-- no event of it, so the period's newest event is an earlier hour's. Such hours Stripe still takes are
-- due again.
UPDATE stripe_pushes p SET status = 'waiting', version = p.version + 1
FROM metric_mappings m
WHERE m.tenant_id = p.tenant_id AND m.metric = p.metric AND m.aggregation = 'last'
  AND p.status = 'synced' AND p.pushed_units = 0 AND p.pending_request IS NULL
  AND p.bucket >= now() - interval '35 days' + interval '2 hours'
  AND NOT EXISTS (
      SELECT 1 FROM stripe_push_requests r
      WHERE r.tenant_id = p.tenant_id AND r.metric = p.metric AND r.customer_ref = p.customer_ref
        AND r.bucket = p.bucket AND r.status = 'delivered');

-- The usage.deltas partition of each counter stream: all of a stream's push rows are in it, so one
-- writer pushes the whole stream. It is the partition of the stream's newest delta; a stream whose
-- deltas move to another partition (usage.deltas gained partitions) moves all its rows with them.
CREATE TABLE stripe_push_streams (
    tenant_id       text    NOT NULL,
    metric          text    NOT NULL,
    customer_ref    text    NOT NULL,
    app_id          text,
    delta_partition integer NOT NULL,
    PRIMARY KEY (tenant_id, metric, customer_ref)
);

INSERT INTO stripe_push_streams (tenant_id, metric, customer_ref, app_id, delta_partition)
SELECT DISTINCT ON (tenant_id, metric, customer_ref) tenant_id, metric, customer_ref, app_id, delta_partition
FROM stripe_pushes
WHERE delta_partition IS NOT NULL
ORDER BY tenant_id, metric, customer_ref, bucket DESC;

UPDATE stripe_pushes p SET delta_partition = s.delta_partition, version = p.version + 1
FROM stripe_push_streams s
WHERE s.tenant_id = p.tenant_id AND s.metric = p.metric AND s.customer_ref = p.customer_ref
  AND p.delta_partition IS DISTINCT FROM s.delta_partition AND p.delta_partition IS NOT NULL;

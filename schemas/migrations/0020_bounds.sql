-- Lateness is at most 35 days (3,024,000 s): Stripe takes meter events up to 35 days old, and a longer
-- window only keeps dedupe entries alive (stripemeter/domain/policy.py MAX_LATENESS_SECONDS). A mapping
-- stored with more is lowered to 35 days under a new version, so every worker's reload of the mappings
-- takes it (lowering lateness keeps the dedupe horizon; an event it now makes too late is kept in the
-- ledger and usage.late, where a replay can still count it). Each one is named in a NOTICE, which the
-- migrator logs as a warning. The CHECK keeps every later write within the bound.
DO $$
DECLARE
    lowered record;
BEGIN
    FOR lowered IN
        WITH over AS (
            SELECT tenant_id, metric, lateness_seconds AS was FROM metric_mappings
            WHERE lateness_seconds > 3024000 OR lateness_seconds < 0
            FOR UPDATE
        )
        UPDATE metric_mappings m
        SET lateness_seconds = least(greatest(m.lateness_seconds, 0), 3024000),
            version = nextval('mapping_versions'), updated_at = now()
        FROM over
        WHERE m.tenant_id = over.tenant_id AND m.metric = over.metric
        RETURNING m.tenant_id, m.metric, over.was, m.lateness_seconds AS now_seconds
    LOOP
        RAISE NOTICE 'metric mapping %/%: latenessSeconds % is outside 0..3024000 (35 days); lowered to %',
            lowered.tenant_id, lowered.metric, lowered.was, lowered.now_seconds;
    END LOOP;
END
$$;
ALTER TABLE metric_mappings ADD CONSTRAINT metric_mappings_lateness_bounded
    CHECK (lateness_seconds BETWEEN 0 AND 3024000);

-- Every list endpoint reads one page in its own order through an index, whatever the tenant holds:
-- GET /v1/events newest first (a tenant's, or one metric's; with a customer too, events_by_stream),
-- GET /v1/stripe/pushes newest hour first (all, or of one status), GET /v1/adjustments newest first.
-- Mappings, customers and watermarks page through their primary keys. On a large ledger, build these
-- beforehand with CREATE INDEX CONCURRENTLY under the same names (writes go on); the migration keeps them.
CREATE INDEX IF NOT EXISTS events_by_tenant_time
    ON events (tenant_id, ts, source_topic, source_partition, source_offset, source_index);
CREATE INDEX IF NOT EXISTS events_by_metric_time
    ON events (tenant_id, metric, ts, source_topic, source_partition, source_offset, source_index);
CREATE INDEX IF NOT EXISTS stripe_pushes_by_tenant ON stripe_pushes (tenant_id, bucket, metric, customer_ref);
CREATE INDEX IF NOT EXISTS stripe_pushes_by_status ON stripe_pushes (tenant_id, status, bucket, metric, customer_ref);
CREATE INDEX IF NOT EXISTS adjustments_by_tenant ON adjustments (tenant_id, created_at, adjustment_id);

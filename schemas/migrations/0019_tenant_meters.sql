-- Which Stripe meters each tenant may map its metrics to: the operator's decision (tenants share one
-- Stripe account, and a meter event pushed under a meter bills whichever customer it names). A tenant's
-- own admin maps metrics only to meters granted here; an operator grants and revokes.
CREATE TABLE tenant_meters (
    tenant_id  text        NOT NULL,
    event_name text        NOT NULL,  -- the Stripe meter's event_name
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_name)
);

-- Mappings made before grants existed keep working: their meters are granted to their tenants.
INSERT INTO tenant_meters (tenant_id, event_name)
SELECT DISTINCT tenant_id, stripe_meter_event_name FROM metric_mappings
ON CONFLICT DO NOTHING;

-- API keys: only a salted hash is stored; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    key_id       text        PRIMARY KEY,
    tenant_id    text        NOT NULL,  -- '*': every tenant (operators' keys)
    scopes       text[]      NOT NULL,
    salt         bytea       NOT NULL,
    hash         bytea       NOT NULL,
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id);

-- The audit log: append-only, one hash chain per tenant. The service connects as
-- `kiroku_audit`, which may INSERT and SELECT entries and nothing else (no UPDATE, no
-- DELETE), under forced row-level security like every Kiroku schema.

CREATE FUNCTION kiroku_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('kiroku.tenant_id', true), '')::uuid $$;

CREATE TABLE audit_log (
    tenant_id uuid NOT NULL,
    seq bigint NOT NULL,
    event_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    actor_id text NOT NULL,
    actor_kind text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    outcome text NOT NULL,
    source_ip text NOT NULL,
    details jsonb NOT NULL,
    trace_id text NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, event_id)
);
CREATE INDEX audit_log_time ON audit_log (tenant_id, occurred_at);
CREATE INDEX audit_log_action ON audit_log (tenant_id, action, seq);

CREATE TABLE tenant_settings (
    tenant_id uuid PRIMARY KEY,
    time_zone text NOT NULL DEFAULT 'Asia/Tokyo'
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audit_log', 'tenant_settings'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = kiroku_current_tenant())'
                       ' WITH CHECK (tenant_id = kiroku_current_tenant())', t);
    END LOOP;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO kiroku_audit', current_schema());
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO kiroku_audit', current_schema());
END $$;

GRANT SELECT, INSERT ON audit_log TO kiroku_audit;
GRANT SELECT, INSERT, UPDATE ON tenant_settings TO kiroku_audit;

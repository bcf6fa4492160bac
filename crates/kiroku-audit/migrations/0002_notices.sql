-- Notices from the service operator (controls 12.1.2, 12.6.1, 16.1.1) and their mail
-- deliveries. A notice concerns every tenant (tenants IS NULL) or the tenants listed.
-- Row-level security as everywhere: a tenant transaction sees only the notices that
-- concern its tenant and only its own deliveries; the operator's transactions (publish,
-- the mailer, the operator's listing) set kiroku.operator = 'on'.

CREATE FUNCTION kiroku_operator() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('kiroku.operator', true), '') = 'on' $$;

CREATE TABLE notices (
    id uuid PRIMARY KEY,
    seq bigserial UNIQUE,
    kind text NOT NULL CHECK (kind IN ('change', 'maintenance', 'vulnerability', 'incident')),
    title text NOT NULL,
    body text NOT NULL,
    tenants uuid[],
    detected_at timestamptz,
    deadline timestamptz,
    published_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'incident') = (detected_at IS NOT NULL AND deadline IS NOT NULL))
);

CREATE TABLE notice_deliveries (
    notice_id uuid NOT NULL REFERENCES notices (id),
    tenant_id uuid NOT NULL,
    email text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    sent_at timestamptz,
    PRIMARY KEY (notice_id, tenant_id, email)
);
CREATE INDEX notice_deliveries_due ON notice_deliveries (next_attempt_at) WHERE state = 'pending';

ALTER TABLE notices ENABLE ROW LEVEL SECURITY;
ALTER TABLE notices FORCE ROW LEVEL SECURITY;
CREATE POLICY notice_audience ON notices
    USING (kiroku_operator() OR tenants IS NULL OR kiroku_current_tenant() = ANY (tenants))
    WITH CHECK (kiroku_operator());

ALTER TABLE notice_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE notice_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY delivery_tenant ON notice_deliveries
    USING (kiroku_operator() OR tenant_id = kiroku_current_tenant())
    WITH CHECK (kiroku_operator());

GRANT SELECT, INSERT ON notices TO kiroku_audit;
GRANT SELECT, INSERT, UPDATE ON notice_deliveries TO kiroku_audit;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %I.notices_seq_seq TO kiroku_audit', current_schema());
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.kiroku_operator() TO kiroku_audit', current_schema());
END $$;

-- One row per session (refresh-token family). Refresh locks it FOR UPDATE and every
-- revocation (logout, password or role change, disable, reuse detection) updates it, so
-- a refresh racing a revocation either finishes first (and its new token is revoked with
-- the session) or sees the session revoked: no token escapes a revocation.
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);

INSERT INTO sessions (id, tenant_id, user_id, created_at, revoked_at)
SELECT family_id, tenant_id, user_id, min(created_at),
       CASE WHEN bool_and(revoked_at IS NOT NULL) THEN now() END
FROM refresh_tokens GROUP BY family_id, tenant_id, user_id
ON CONFLICT DO NOTHING;

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions
    USING (tenant_id = kiroku_current_tenant()) WITH CHECK (tenant_id = kiroku_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON sessions TO kiroku_account;

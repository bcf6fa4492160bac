-- Accounts schema. Runs as the schema owner; the service then connects as the
-- non-owner role `kiroku_account` (granted below), so row-level security applies to it.
-- Every table is tenant-scoped, with RLS ENABLED and FORCED: a transaction sees only
-- the tenant it set with set_config('kiroku.tenant_id', ..., true) (SET LOCAL), and a
-- transaction that set none sees nothing.

CREATE FUNCTION kiroku_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('kiroku.tenant_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id uuid PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    name text NOT NULL,
    -- 1 = none, 2 = all participants (ConsentPolicy in account.proto)
    consent_policy smallint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email text NOT NULL,
    display_name text NOT NULL,
    -- 1 viewer, 2 member, 3 admin, 4 owner (Role in account.proto)
    role smallint NOT NULL,
    password_hash text NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    totp_secret bytea,
    totp_enabled boolean NOT NULL DEFAULT false,
    -- the last accepted TOTP time step: a code is usable once
    totp_last_step bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

CREATE TABLE invitations (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email text NOT NULL,
    role smallint NOT NULL,
    token_hash bytea NOT NULL UNIQUE,
    invited_by uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    accepted_at timestamptz
);

CREATE TABLE refresh_tokens (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- one family per sign-in; every rotation stays in the family
    family_id uuid NOT NULL,
    token_hash bytea NOT NULL UNIQUE,
    mfa boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (tenant_id, family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (tenant_id, user_id);

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL,
    scopes text[] NOT NULL,
    key_hash bytea NOT NULL UNIQUE,
    created_by uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE meeting_participants (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    meeting_id text NOT NULL,
    participant text NOT NULL,
    PRIMARY KEY (tenant_id, meeting_id, participant)
);

CREATE TABLE consents (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    meeting_id text NOT NULL,
    participant text NOT NULL,
    method text NOT NULL,
    given_at timestamptz NOT NULL DEFAULT now(),
    recorded_by text NOT NULL
);
CREATE INDEX consents_meeting ON consents (tenant_id, meeting_id);

-- Row-level security on every table, the tenants table included.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = kiroku_current_tenant()) WITH CHECK (id = kiroku_current_tenant());

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'invitations', 'refresh_tokens', 'api_keys',
                             'meeting_participants', 'consents'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = kiroku_current_tenant())'
                       ' WITH CHECK (tenant_id = kiroku_current_tenant())', t);
    END LOOP;
END $$;

-- Sign-in knows the tenant's slug, not its id: this one function (running as the owner)
-- maps a slug to an id without opening the tenants table to the service role.
CREATE FUNCTION kiroku_tenant_id_for_slug(wanted text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path FROM CURRENT
    AS $$ SELECT id FROM tenants WHERE slug = wanted $$;

-- The service role: data rights only, no ownership, no BYPASSRLS.
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO kiroku_account', current_schema());
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO kiroku_account',
                   current_schema());
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO kiroku_account', current_schema());
END $$;

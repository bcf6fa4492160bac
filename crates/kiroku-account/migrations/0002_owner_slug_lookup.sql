-- With FORCE ROW LEVEL SECURITY the schema owner is bound by the policies too. Where the
-- owner is not a superuser (production), `kiroku_tenant_id_for_slug` (SECURITY DEFINER,
-- runs as the owner) would then see no tenant at all and sign-in would fail. This policy
-- lets the migrating owner role (and only it) read the tenants table; the service role
-- `kiroku_account` stays confined to its current tenant.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY owner_slug_lookup ON tenants FOR SELECT TO %I USING (true)',
                   current_user);
END $$;

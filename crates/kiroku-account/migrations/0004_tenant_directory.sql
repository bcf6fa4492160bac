-- Notices (audit service) are mailed to every admin and owner of the tenants they
-- concern. Listing tenants crosses tenants, which the service role cannot do under
-- forced row-level security; this one function (running as the owner, like
-- kiroku_tenant_id_for_slug) returns ids and slugs only. The recipients themselves are
-- then read per tenant, with the tenant set, by the operator-only RPC
-- ListNoticeRecipients.
CREATE FUNCTION kiroku_tenant_directory() RETURNS TABLE (id uuid, slug text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path FROM CURRENT
    AS $$ SELECT id, slug FROM tenants ORDER BY created_at, slug $$;

DO $$
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.kiroku_tenant_directory() TO kiroku_account',
                   current_schema());
END $$;

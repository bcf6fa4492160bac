-- Master-key rotation re-wraps every tenant's data key under the current master key.
-- Finding the keys to re-wrap crosses tenants, which the service role cannot do under
-- forced row-level security: this one function (running as the schema owner) lists the
-- tenants whose key another master key wrapped; each key is then re-wrapped in that
-- tenant's own transaction.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY owner_key_listing ON data_keys FOR SELECT TO %I USING (true)',
                   current_user);
END $$;

CREATE FUNCTION kiroku_tenants_to_rewrap(current_key_id text) RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path FROM CURRENT
    AS $$ SELECT tenant_id FROM data_keys WHERE key_id <> current_key_id ORDER BY tenant_id $$;

DO $$
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.kiroku_tenants_to_rewrap(text) TO kiroku_storage',
                   current_schema());
END $$;
GRANT UPDATE ON data_keys TO kiroku_storage;

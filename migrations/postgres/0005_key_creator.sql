-- The key lookup also returns the key's creator: keys with the `api` scope act for them.

DROP FUNCTION gantry_find_api_key(TEXT);
CREATE FUNCTION gantry_find_api_key(p_hash TEXT)
RETURNS TABLE (id TEXT, tenant_id TEXT, name TEXT, scopes TEXT, expires_at BIGINT, revoked_at BIGINT,
               policy TEXT, tenant_policy TEXT, created_by TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT k.id, k.tenant_id, k.name, k.scopes, k.expires_at, k.revoked_at, k.policy, t.policy, k.created_by
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash = p_hash
$$;
ALTER FUNCTION gantry_find_api_key(TEXT) OWNER TO gantry_definer;
REVOKE ALL ON FUNCTION gantry_find_api_key(TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gantry_find_api_key(TEXT) TO gantry_app;

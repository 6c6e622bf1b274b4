-- Access policies (JSON, NULL = unrestricted) for tenants and API keys; the key lookup
-- returns both, so authentication yields everything the gateway enforces.

ALTER TABLE tenants ADD COLUMN policy TEXT;
ALTER TABLE api_keys ADD COLUMN policy TEXT;

DROP FUNCTION gantry_find_api_key(TEXT);
CREATE FUNCTION gantry_find_api_key(p_hash TEXT)
RETURNS TABLE (id TEXT, tenant_id TEXT, name TEXT, scopes TEXT, expires_at BIGINT, revoked_at BIGINT,
               policy TEXT, tenant_policy TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT k.id, k.tenant_id, k.name, k.scopes, k.expires_at, k.revoked_at, k.policy, t.policy
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash = p_hash
$$;
ALTER FUNCTION gantry_find_api_key(TEXT) OWNER TO gantry_definer;
REVOKE ALL ON FUNCTION gantry_find_api_key(TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gantry_find_api_key(TEXT) TO gantry_app;

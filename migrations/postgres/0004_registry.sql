-- The MCP server registry: servers a tenant registers through the API, run by every
-- gateway. Settings are the same document as an [upstreams.NAME] table of gantry.toml.

CREATE TABLE mcp_servers (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    settings    TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_by  TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

ALTER TABLE mcp_servers ENABLE ROW LEVEL SECURITY;
ALTER TABLE mcp_servers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mcp_servers
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_user = 'gantry_definer')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- What every gateway runs, across tenants.
CREATE FUNCTION gantry_all_servers()
RETURNS TABLE (id TEXT, tenant_id TEXT, name TEXT, settings TEXT, version BIGINT, created_by TEXT,
               created_at BIGINT, updated_at BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT s.id, s.tenant_id, s.name, s.settings, s.version, s.created_by, s.created_at, s.updated_at
    FROM mcp_servers s ORDER BY s.tenant_id, s.name
$$;
GRANT SELECT ON mcp_servers TO gantry_definer;
ALTER FUNCTION gantry_all_servers() OWNER TO gantry_definer;
REVOKE ALL ON FUNCTION gantry_all_servers() FROM PUBLIC;

GRANT SELECT, INSERT, UPDATE, DELETE ON mcp_servers TO gantry_app;
GRANT EXECUTE ON FUNCTION gantry_all_servers() TO gantry_app;

-- Identity: tenants, users, memberships, API keys and refresh tokens.
--
-- Tenant-owned tables have row-level security keyed on the transaction-local setting
-- app.tenant_id, FORCE'd so that even the owner is subject to it. The services connect
-- as gantry_app, which owns nothing. The few lookups that must cross tenants (an API
-- key by its hash, a user's memberships at login, the platform admin's tenant list) are
-- SECURITY DEFINER functions owned by gantry_definer, the only role the policies let
-- see across tenants; nobody logs in as it.

DO $$
BEGIN
    CREATE ROLE gantry_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- roles are cluster-wide
END $$;

DO $$
BEGIN
    CREATE ROLE gantry_definer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    display_name    TEXT NOT NULL DEFAULT '',
    password_hash   TEXT,
    platform_admin  BOOLEAN NOT NULL DEFAULT FALSE,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL
);

CREATE TABLE memberships (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    scopes        TEXT NOT NULL,
    created_by    TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id, created_at);

-- Refresh tokens belong to a user's login, not to tenant data: no RLS, and the service
-- only ever reaches them by the hash of a token the caller holds.
CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = current_setting('app.tenant_id', true) OR current_user = 'gantry_definer')
    WITH CHECK (id = current_setting('app.tenant_id', true));

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memberships
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_user = 'gantry_definer')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_user = 'gantry_definer')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

CREATE FUNCTION gantry_find_api_key(p_hash TEXT)
RETURNS TABLE (id TEXT, tenant_id TEXT, name TEXT, scopes TEXT, expires_at BIGINT, revoked_at BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT k.id, k.tenant_id, k.name, k.scopes, k.expires_at, k.revoked_at
    FROM api_keys k WHERE k.key_hash = p_hash
$$;

CREATE FUNCTION gantry_user_tenants(p_user TEXT)
RETURNS TABLE (tenant_id TEXT, slug TEXT, name TEXT, role TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT t.id, t.slug, t.name, m.role
    FROM memberships m JOIN tenants t ON t.id = m.tenant_id
    WHERE m.user_id = p_user ORDER BY t.slug
$$;

CREATE FUNCTION gantry_all_tenants()
RETURNS TABLE (id TEXT, slug TEXT, name TEXT, created_at BIGINT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT t.id, t.slug, t.name, t.created_at FROM tenants t ORDER BY t.slug
$$;

CREATE FUNCTION gantry_tenant_slug_taken(p_slug TEXT)
RETURNS BOOLEAN
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT EXISTS (SELECT 1 FROM tenants WHERE slug = p_slug)
$$;

GRANT SELECT ON tenants, memberships, api_keys TO gantry_definer;
ALTER FUNCTION gantry_find_api_key(TEXT) OWNER TO gantry_definer;
ALTER FUNCTION gantry_user_tenants(TEXT) OWNER TO gantry_definer;
ALTER FUNCTION gantry_all_tenants() OWNER TO gantry_definer;
ALTER FUNCTION gantry_tenant_slug_taken(TEXT) OWNER TO gantry_definer;
REVOKE ALL ON FUNCTION gantry_find_api_key(TEXT), gantry_user_tenants(TEXT),
    gantry_all_tenants(), gantry_tenant_slug_taken(TEXT) FROM PUBLIC;

GRANT USAGE ON SCHEMA public TO gantry_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, memberships, api_keys, refresh_tokens TO gantry_app;
GRANT EXECUTE ON FUNCTION gantry_find_api_key(TEXT), gantry_user_tenants(TEXT),
    gantry_all_tenants(), gantry_tenant_slug_taken(TEXT) TO gantry_app;
GRANT SELECT ON _sqlx_migrations TO gantry_app;

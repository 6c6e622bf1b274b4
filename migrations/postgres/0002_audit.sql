-- Audit events: append-only for the services (INSERT and SELECT only, under row-level
-- security); retention deletes go through a SECURITY DEFINER function.

CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,          -- '' for configuration keys (embedded mode)
    time        BIGINT NOT NULL,
    principal   TEXT NOT NULL,
    server      TEXT NOT NULL,
    method      TEXT NOT NULL,
    tool        TEXT,
    arguments   TEXT,
    outcome     TEXT NOT NULL,
    latency_ms  DOUBLE PRECISION NOT NULL,
    request_id  TEXT
);
CREATE INDEX audit_events_tenant_time ON audit_events(tenant_id, time DESC, id);

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_user = 'gantry_definer')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

CREATE FUNCTION gantry_purge_audit(p_before BIGINT)
RETURNS BIGINT
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public AS $$
    WITH gone AS (DELETE FROM audit_events WHERE time < p_before RETURNING 1)
    SELECT count(*) FROM gone
$$;
GRANT SELECT, DELETE ON audit_events TO gantry_definer;
ALTER FUNCTION gantry_purge_audit(BIGINT) OWNER TO gantry_definer;
REVOKE ALL ON FUNCTION gantry_purge_audit(BIGINT) FROM PUBLIC;

GRANT SELECT, INSERT ON audit_events TO gantry_app;
GRANT EXECUTE ON FUNCTION gantry_purge_audit(BIGINT) TO gantry_app;

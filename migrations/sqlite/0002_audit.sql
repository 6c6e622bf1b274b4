CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    time        BIGINT NOT NULL,
    principal   TEXT NOT NULL,
    server      TEXT NOT NULL,
    method      TEXT NOT NULL,
    tool        TEXT,
    arguments   TEXT,
    outcome     TEXT NOT NULL,
    latency_ms  REAL NOT NULL,
    request_id  TEXT
);
CREATE INDEX audit_events_tenant_time ON audit_events(tenant_id, time DESC, id);

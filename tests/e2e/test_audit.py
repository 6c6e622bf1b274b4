"""Audit: one document per MCP request, with redacted arguments, queryable per tenant;
written off the call's path to SQL (SQLite, PostgreSQL) or MongoDB (SecantusDB); kept
through a store outage and a gantry restart by the spill file; what cannot be kept is
counted."""

from __future__ import annotations

import time

import httpx2
import pytest

from conftest import key_call, problem, wait_until

SECRET = "sk-live-do-not-log-me"


def setup_key(api):
    token = api.login()["access_token"]
    key = api.request("POST", "/v1/keys", token=token, json_body={"name": "audited"}).json()
    return token, key["key"], key["api_key"]["id"]


def events(api, token, **params):
    r = api.request("GET", "/v1/audit", token=token, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def audited(api, token, count, timeout=30.0):
    """The newest events once at least `count` are readable: the audit is written in
    batches, within audit.flush_interval_ms of the calls."""
    def enough():
        items = events(api, token)["items"]
        return items if len(items) >= count else None
    return wait_until(enough, timeout=timeout, what=f"{count} audit events")


def test_every_request_is_audited_with_redacted_arguments(control_plane):
    g, api = control_plane()
    token, key, key_id = setup_key(api)
    before = int(time.time() * 1000)
    assert key_call(g.base, key, "tools/call", {"name": "demo__echo", "arguments": {"message": "hi", "api_token": SECRET}}).status_code == 200
    assert key_call(g.base, key, "tools/call", {"name": "demo__add", "arguments": {"a": 1, "b": 2}}).status_code == 200
    assert key_call(g.base, key, "tools/list").status_code == 200
    unknown = key_call(g.base, key, "tools/call", {"name": "demo__nope", "arguments": {}})
    assert "error" in unknown.json()

    items = audited(api, token, 4)
    assert [e["time"] for e in items] == sorted((e["time"] for e in items), reverse=True), "newest first"
    echo = next(e for e in items if e["tool"] == "echo")
    assert echo["server"] == "demo" and echo["method"] == "tools/call" and echo["outcome"] == "ok"
    assert echo["principal"] == f"key:{key_id}"
    assert echo["arguments"] == {"message": "hi", "api_token": "[REDACTED]"}
    assert echo["request_id"] and echo["latency_ms"] >= 0 and echo["time"] >= before
    listing = next(e for e in items if e["method"] == "tools/list")
    assert listing["server"] == "*"
    assert SECRET not in str(items)

    # Filters, each narrowing to what it names.
    assert [e["tool"] for e in events(api, token, tool="add")["items"]] == ["add"]
    assert {e["outcome"] for e in events(api, token, outcome="error")["items"]} == {"error"}
    assert len(events(api, token, server="demo")["items"]) == 2
    assert len(events(api, token, principal=f"key:{key_id}")["items"]) == 4
    assert events(api, token, principal="key:someone-else")["items"] == []
    assert events(api, token, to="2000-01-01T00:00:00Z")["items"] == []
    assert len(events(api, token, **{"from": str(before)})["items"]) == 4
    assert problem(api.request("GET", "/v1/audit", token=token, params={"from": "yesterday"}), 422)["field"] == "from"

    # Cursor pages cover everything once.
    seen, cursor = [], None
    while True:
        page = events(api, token, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == len(items)

    # Another tenant sees none of it; members who are not admins see nothing at all.
    r = api.request("POST", "/v1/users", token=token, json_body={"email": "mem@example.com", "password": "member password 1", "role": "member"})
    assert r.status_code == 201
    member = api.login("mem@example.com", "member password 1")["access_token"]
    problem(api.request("GET", "/v1/audit", token=member), 403)
    created = api.request("POST", "/v1/tenants", token=token, json_body={"slug": "gamma", "name": "G", "owner_email": "mem@example.com"})
    assert created.status_code == 201
    gamma = api.login("mem@example.com", "member password 1", tenant="gamma")["access_token"]
    assert events(api, gamma)["items"] == []


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_mongodb_audit_survives_a_store_outage(control_plane, mongo):
    mongo.start()
    g, api = control_plane({"audit": {"store": mongo.url, "retention_days": 30}})
    token, key, _ = setup_key(api)
    for i in range(5):
        assert key_call(g.base, key, "tools/call", {"name": "demo__echo", "arguments": {"message": f"before {i}"}}).status_code == 200
    wait_until(lambda: len(events(api, token)["items"]) == 5, what="5 events in MongoDB")
    indexes = mongo.client()["gantry_audit"]["audit_events"].index_information()
    assert indexes["retention"]["expireAfterSeconds"] == 30 * 86400
    assert any(spec["key"][0][0] == "tenant_id" for spec in indexes.values())

    mongo.stop()
    started = time.time()
    for i in range(20):
        r = key_call(g.base, key, "tools/call", {"name": "demo__echo", "arguments": {"message": f"during {i}"}})
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == f"during {i}"
    assert time.time() - started < 10, "calls must not wait for the audit store"
    ready = wait_until(lambda: (lambda r: r if r.status_code == 503 else None)(api.request("GET", "/ready")),
                       what="readiness to report the audit store")
    assert ready.json()["failed"] == ["audit"]
    wait_until(lambda: (g.metric("audit_events_total", result="spilled") or 0) >= 20, what="events spilled")

    mongo.start()
    wait_until(lambda: len(events(api, token, limit=100)["items"]) == 25, timeout=60, what="spilled events replayed")
    items = events(api, token, limit=100)["items"]
    assert len({e["id"] for e in items}) == 25
    assert sorted(e["arguments"]["message"] for e in items if e["arguments"]["message"].startswith("during")) == \
        sorted(f"during {i}" for i in range(20))
    assert api.request("GET", "/ready").status_code == 200
    assert not g.metric("audit_events_dropped_total")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_spilled_events_outlive_a_gantry_restart(control_plane, mongo, gantry):
    config = {"audit": {"store": mongo.url}}
    g, api = control_plane(config)  # the store is not running yet
    token, key, _ = setup_key(api)
    for i in range(3):
        assert key_call(g.base, key, "tools/call", {"name": "demo__echo", "arguments": {"message": f"m{i}"}}).status_code == 200
    wait_until(lambda: (g.metric("audit_events_total", result="spilled") or 0) >= 3, what="events spilled")
    assert g.stop() == 0
    spill = g.dir / "audit-spill" / "audit-spill.jsonl"
    assert spill.exists() and len(spill.read_text().splitlines()) >= 3

    mongo.start()
    g2, api2 = control_plane(config, bootstrap=False)
    assert g2.dir == g.dir, "same working directory, so the same spill file"
    token = api2.login()["access_token"]
    audited(api2, token, 3, timeout=60)  # replayed after the restart
    wait_until(lambda: not spill.exists(), what="spill file removed once replayed")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_events_that_cannot_be_kept_are_counted(control_plane, mongo):
    g, api = control_plane({"audit": {"store": mongo.url, "spill_max_bytes": 2048}})
    token, key, _ = setup_key(api)
    for i in range(30):
        assert key_call(g.base, key, "tools/call", {"name": "demo__echo", "arguments": {"message": "x" * 200}}).status_code == 200
    def counted():
        dropped = g.metric("audit_events_dropped_total", reason="spill_full") or 0
        spilled = g.metric("audit_events_total", result="spilled") or 0
        return (dropped, spilled) if dropped + spilled >= 30 else None

    # Every call's event is accounted for: spilled while the file had room, then dropped.
    dropped, spilled = wait_until(counted, what="all 30 events spilled or counted as dropped")
    assert dropped > 0 and spilled > 0 and dropped + spilled == 30, (dropped, spilled)
    assert "audit spill file full" in g.logs()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_embedded_database_answers_reads_while_a_write_is_open(control_plane, database):
    """Embedded mode keeps the audit in the same SQLite file as everything else: in WAL mode
    a reader (the API) never waits for a writer (the audit, an operator's script)."""
    import sqlite3

    g, api = control_plane()
    token, key, _ = setup_key(api)
    assert key_call(g.base, key, "tools/call", {"name": "demo__add", "arguments": {"a": 1, "b": 2}}).status_code == 200
    audited(api, token, 1)
    writer = sqlite3.connect(database.url.removeprefix("sqlite://"), timeout=1, isolation_level=None)
    try:
        assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        writer.execute("BEGIN EXCLUSIVE")  # with a rollback journal this would lock readers out
        writer.execute("DELETE FROM audit_events")
        r = api.request("GET", "/v1/audit", token=token)
        assert r.status_code == 200 and r.json()["items"], r.text
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_text_a_column_cannot_hold_does_not_stop_the_audit(control_plane):
    """A NUL in a client-chosen tool name or argument (PostgreSQL text cannot hold one)
    must not fail the batch it travels in, and with it every replay of that batch: the
    event is kept (NUL replaced in names, escaped in the arguments' JSON) and so is every
    event after it."""
    g, api = control_plane()
    token, key, _ = setup_key(api)
    h = {"Authorization": f"Bearer {key}"}
    init = g.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}}},
        path="/mcp/demo", headers=h)
    h.update({"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"})
    g.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, path="/mcp/demo", headers=h)

    unknown = g.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo\u0000x", "arguments": {}}},
                     path="/mcp/demo", headers=h).json()
    assert "error" in unknown or unknown["result"]["isError"], unknown
    echoed = g.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "a\u0000b"}}},
                    path="/mcp/demo", headers=h).json()
    assert echoed["result"]["content"][0]["text"] == "a\u0000b"
    assert key_call(g.base, key, "tools/call", {"name": "demo__add", "arguments": {"a": 1, "b": 2}}).status_code == 200

    items = audited(api, token, 3)
    assert {e["tool"] for e in items} == {"echo\ufffdx", "echo", "add"}
    assert next(e for e in items if e["tool"] == "echo")["arguments"] == {"message": "a\u0000b"}
    assert not g.metric("audit_events_total", result="spilled"), "the store never refused a batch"
    assert api.request("GET", "/ready").status_code == 200

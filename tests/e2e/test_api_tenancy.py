"""Tenants, members, roles and API keys through the API, on SQLite and PostgreSQL; the
keys it issues are what MCP clients present to /mcp, on `serve` and on a separate
`gantry gateway` process sharing the database."""

from __future__ import annotations

import httpx2
import pytest

from conftest import ACCEPT, MEMBER_PASSWORD, ADMIN_EMAIL, StreamReader, key_call, problem, wait_until

def mcp_list(base: str, key: str) -> httpx2.Response:
    return key_call(base, key, "tools/list")


def add_member(api, token, email, role, password=MEMBER_PASSWORD) -> httpx2.Response:
    return api.request("POST", "/v1/users", token=token,
                       json_body={"email": email, "password": password, "role": role})


def test_tenants_are_created_by_platform_admins_and_hidden_from_others(control_plane):
    g, api = control_plane()
    admin = api.login()["access_token"]
    assert add_member(api, admin, "olga@example.com", "viewer").status_code == 201
    created = api.request("POST", "/v1/tenants", token=admin,
                          json_body={"slug": "beta", "name": "Beta Ltd", "owner_email": "olga@example.com"})
    assert created.status_code == 201, created.text
    beta = created.json()
    problem(api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "beta", "name": "Again"}), 409)
    slugs = [t["slug"] for t in api.request("GET", "/v1/tenants", token=admin).json()["items"]]
    assert slugs == ["acme", "beta"]

    # Olga is viewer in acme and owner of beta: she must say which tenant she acts in.
    body = problem(api.request("POST", "/v1/auth/login",
                               json_body={"email": "olga@example.com", "password": MEMBER_PASSWORD}), 422)
    assert body["field"] == "tenant"
    olga_acme = api.login("olga@example.com", MEMBER_PASSWORD, tenant="acme")["access_token"]
    olga_beta = api.login("olga@example.com", MEMBER_PASSWORD, tenant="beta")
    assert olga_beta["tenant"]["role"] == "owner"
    problem(api.request("POST", "/v1/tenants", token=olga_beta["access_token"],
                        json_body={"slug": "gamma", "name": "G"}), 403)
    acme_id = api.login()["tenant"]["tenant_id"]
    # From beta, acme does not exist.
    problem(api.request("GET", f"/v1/tenants/{acme_id}", token=olga_beta["access_token"]), 404)
    assert api.request("GET", f"/v1/tenants/{beta['id']}", token=olga_beta["access_token"]).status_code == 200
    mine = [t["slug"] for t in api.request("GET", "/v1/tenants", token=olga_acme).json()["items"]]
    assert mine == ["acme", "beta"]


def test_roles_decide_who_may_change_members(control_plane):
    g, api = control_plane()
    owner = api.login()["access_token"]
    assert add_member(api, owner, "ada@example.com", "admin").status_code == 201
    assert add_member(api, owner, "vic@example.com", "viewer").status_code == 201
    ada = api.login("ada@example.com", MEMBER_PASSWORD)["access_token"]
    vic = api.login("vic@example.com", MEMBER_PASSWORD)["access_token"]

    problem(add_member(api, vic, "eve@example.com", "member"), 403)  # viewers only look
    problem(add_member(api, ada, "eve@example.com", "owner"), 403)  # only owners make owners
    assert add_member(api, ada, "eve@example.com", "member").status_code == 201
    emails = [m["email"] for m in api.request("GET", "/v1/users", token=vic).json()["items"]]
    assert emails == sorted(["admin@example.com", "ada@example.com", "vic@example.com", "eve@example.com"])

    me = api.request("GET", "/v1/auth/me", token=owner).json()
    owner_id = me["user"]["id"]
    problem(api.request("DELETE", f"/v1/users/{owner_id}", token=ada), 403)
    body = problem(api.request("DELETE", f"/v1/users/{owner_id}", token=owner), 409)
    assert "last owner" in body["detail"]
    vic_id = next(m["user_id"] for m in api.request("GET", "/v1/users", token=owner).json()["items"]
                  if m["email"] == "vic@example.com")
    assert api.request("DELETE", f"/v1/users/{vic_id}", token=ada).status_code == 204
    # Vic's access token lives out its minutes, but signing in again finds no tenant.
    problem(api.request("POST", "/v1/auth/login", json_body={"email": "vic@example.com", "password": MEMBER_PASSWORD}), 403)


def test_api_keys_work_on_mcp_until_revoked(control_plane):
    g, api = control_plane()
    owner = api.login()["access_token"]
    created = api.request("POST", "/v1/keys", token=owner, json_body={"name": "laptop"})
    assert created.status_code == 201, created.text
    key, record = created.json()["key"], created.json()["api_key"]
    assert key.startswith("gty_") and len(key) == 47
    assert record["prefix"] == key[:12] and record["scopes"] == ["mcp"]
    listed = api.request("GET", "/v1/keys", token=owner).json()["items"]
    assert [k["id"] for k in listed] == [record["id"]]
    assert key not in str(listed) and "hash" not in str(listed)

    r = mcp_list(g.base, key)
    assert r.status_code == 200, r.text
    assert "demo__echo" in [t["name"] for t in r.json()["result"]["tools"]]
    # The last use is written beside the call, never in its way: poll the record for it.
    wait_until(lambda: api.request("GET", f"/v1/keys/{record['id']}", token=owner).json()["last_used_at"],
               timeout=10, what="the key's last use to be recorded")

    api_only = api.request("POST", "/v1/keys", token=owner, json_body={"name": "ops", "scopes": ["api"]}).json()["key"]
    assert mcp_list(g.base, api_only).status_code == 401, "a key without the mcp scope is refused on /mcp"

    assert api.request("DELETE", f"/v1/keys/{record['id']}", token=owner).status_code == 204
    refused = mcp_list(g.base, key)
    assert refused.status_code == 401
    assert "invalid_token" in refused.headers["www-authenticate"]
    problem(api.request("DELETE", f"/v1/keys/{record['id']}", token=owner), 404)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_revoked_key_loses_the_streams_it_opened(control_plane):
    # A revoked key's requests are refused within the key cache's period; the streams it
    # opened before would otherwise go on carrying its servers' messages for as long as
    # the client holds them. Another key's streams stay.
    g, api = control_plane()
    owner = api.login()["access_token"]

    def streams_of(key):
        g.key = key
        sid, _ = g.initialize()
        get = StreamReader(g, "GET", "/mcp", {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25",
                                              "Accept": "text/event-stream"})
        body, h = g.modern_request("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        listen = StreamReader(g, "POST", "/mcp", {**h, "Content-Type": "application/json", "Accept": ACCEPT}, body)
        assert get.primed.wait(10) and listen.primed.wait(10), "the streams open"
        return get, listen

    revoked = api.request("POST", "/v1/keys", token=owner, json_body={"name": "lost laptop"}).json()
    kept = api.request("POST", "/v1/keys", token=owner, json_body={"name": "desktop"}).json()
    lost_streams, kept_streams = streams_of(revoked["key"]), streams_of(kept["key"])
    assert api.request("DELETE", f"/v1/keys/{revoked['api_key']['id']}", token=owner).status_code == 204
    for stream in lost_streams:
        assert stream.ended.wait(20), "a revoked key's stream is still open"
    assert "an open stream was ended" in g.logs()
    # Checked as often as the revoked ones, and still open.
    for stream in kept_streams:
        assert not stream.ended.wait(6), "a valid key's stream was ended"


def test_keys_are_invisible_across_tenants_and_revocable_only_by_their_owner_or_admins(control_plane):
    g, api = control_plane()
    admin = api.login()["access_token"]
    api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "beta", "name": "Beta"})
    assert add_member(api, admin, "mia@example.com", "member").status_code == 201
    assert add_member(api, admin, "max@example.com", "member").status_code == 201
    mia = api.login("mia@example.com", MEMBER_PASSWORD)["access_token"]
    mx = api.login("max@example.com", MEMBER_PASSWORD)["access_token"]
    mia_key = api.request("POST", "/v1/keys", token=mia, json_body={"name": "mia"}).json()["api_key"]
    problem(api.request("DELETE", f"/v1/keys/{mia_key['id']}", token=mx), 403)

    beta_owner = "bea@example.com"
    # Bea belongs to beta only; acme's keys do not exist for her.
    api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "beta2", "name": "B2"})
    r = api.request("POST", "/v1/users", token=api.login(tenant="acme")["access_token"],
                    json_body={"email": beta_owner, "password": MEMBER_PASSWORD, "role": "member"})
    assert r.status_code == 201
    admin_beta = api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "gamma", "name": "G",
                                                                             "owner_email": beta_owner})
    assert admin_beta.status_code == 201
    bea_gamma = api.login(beta_owner, MEMBER_PASSWORD, tenant="gamma")["access_token"]
    problem(api.request("GET", f"/v1/keys/{mia_key['id']}", token=bea_gamma), 404)
    problem(api.request("DELETE", f"/v1/keys/{mia_key['id']}", token=bea_gamma), 404)
    assert api.request("GET", "/v1/keys", token=bea_gamma).json()["items"] == []
    assert api.request("DELETE", f"/v1/keys/{mia_key['id']}", token=mia).status_code == 204


def test_key_listing_pages_by_cursor(control_plane):
    g, api = control_plane()
    owner = api.login()["access_token"]
    ids = {api.request("POST", "/v1/keys", token=owner, json_body={"name": f"k{i}"}).json()["api_key"]["id"]
           for i in range(5)}
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.request("GET", "/v1/keys", token=owner, params=params).json()
        seen += [k["id"] for k in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == 5 and set(seen) == ids
    assert problem(api.request("GET", "/v1/keys", token=owner, params={"cursor": "garbage!"}), 422)["field"] == "cursor"
    assert problem(api.request("GET", "/v1/keys", token=owner, params={"limit": 0}), 422)["field"] == "limit"
    assert problem(api.request("GET", "/v1/keys", token=owner, params={"limt": 3}), 422)["field"] == "limt"


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_separate_gateway_accepts_keys_issued_by_the_api(control_plane, database, gantry):
    g, api = control_plane(role="api")
    assert httpx2.get(g.url, timeout=10).status_code == 404, "the api role serves no /mcp"
    owner = api.login()["access_token"]
    key = api.request("POST", "/v1/keys", token=owner, json_body={"name": "gw"}).json()["key"]
    gw = gantry({"database": {"url": database.url}, "upstreams": {"demo": {
        "transport": "stdio", "command": __import__("conftest").BIN, "args": ["demo-upstream"]}}}, role="gateway")
    r = mcp_list(gw.base, key)
    assert r.status_code == 200, r.text
    assert mcp_list(gw.base, "gty_" + "x" * 43).status_code == 401
    assert httpx2.get(gw.base + "/api/health", timeout=10).status_code == 404, "the gateway serves no /api"

    # The control plane reports upstream health as the gateways see it.
    from conftest import free_port
    dead = f"http://127.0.0.1:{free_port()}"
    _, api2 = control_plane({"api": {"gateway_urls": [gw.base, dead]}}, role="api", bootstrap=False)
    upstreams = api2.request("GET", "/v1/status").json()["upstreams"]
    assert {"name": "demo", "status": "up", "gateway": gw.base} == \
        {k: v for k, v in upstreams[0].items() if k in ("name", "status", "gateway")}, upstreams
    assert upstreams[1]["gateway"] == dead and upstreams[1]["status"] == "unreachable", upstreams


def test_api_scoped_keys_act_for_their_creator_without_platform_rights(control_plane, database):
    g, api = control_plane()
    admin = api.login()["access_token"]
    assert add_member(api, admin, "mo@example.com", "member").status_code == 201
    member = api.login("mo@example.com", MEMBER_PASSWORD)["access_token"]
    created = api.request("POST", "/v1/keys", token=member, json_body={"name": "ci", "scopes": ["api"]}).json()
    api_key = created["key"]
    # The key reads what its creator may read, and no more.
    assert api.request("GET", "/v1/keys", token=api_key).status_code == 200
    assert api.request("GET", "/v1/auth/me", token=api_key).json()["user"]["email"] == "mo@example.com"
    problem(api.request("POST", "/v1/users", token=api_key, json_body={"email": "x@example.com", "password": MEMBER_PASSWORD, "role": "viewer"}), 403)
    # A platform administrator's api key carries no platform rights.
    admin_key = api.request("POST", "/v1/keys", token=admin, json_body={"name": "ops", "scopes": ["api"]}).json()["key"]
    problem(api.request("POST", "/v1/tenants", token=admin_key, json_body={"slug": "nope", "name": "N"}), 403)
    # Keys without the api scope, and revoked ones, are refused.
    mcp_only = api.request("POST", "/v1/keys", token=member, json_body={"name": "m"}).json()["key"]
    problem(api.request("GET", "/v1/keys", token=mcp_only), 401)
    assert api.request("DELETE", f"/v1/keys/{created['api_key']['id']}", token=member).status_code == 204
    problem(api.request("GET", "/v1/keys", token=api_key), 401)
    # The CLI cannot make one: it has no user to act for.
    r = database.gantry("admin", "create-key", "--tenant", "acme", "--name", "x", "--scopes", "api")
    assert r.returncode == 2 and "POST /api/v1/keys" in r.stderr


def test_expired_keys_are_refused_and_cli_keys_work(control_plane, database):
    g, api = control_plane()
    owner = api.login()["access_token"]
    created = api.request("POST", "/v1/keys", token=owner, json_body={"name": "short", "expires_in_days": 1}).json()
    day = 86_400_000
    assert created["api_key"]["expires_at"] - created["api_key"]["created_at"] == day
    assert mcp_list(g.base, created["key"]).status_code == 200
    # A day is long for a test: move the expiry into the past in the database itself.
    if database.kind == "sqlite":
        import sqlite3
        with sqlite3.connect(database.url.removeprefix("sqlite://")) as c:
            c.execute("UPDATE api_keys SET expires_at = 1 WHERE id = ?", (created["api_key"]["id"],))
    else:
        import psycopg
        with psycopg.connect(database.migrate_url, autocommit=True) as c:
            c.execute("UPDATE api_keys SET expires_at = 1 WHERE id = %s", (created["api_key"]["id"],))
    assert mcp_list(g.base, created["key"]).status_code == 401

    # Keys made by the operator's CLI are shown once and work on /mcp.
    r = database.gantry("admin", "create-key", "--tenant", "acme", "--name", "from-cli")
    assert r.returncode == 0, r.stderr
    key = next(line.split(": ", 1)[1] for line in r.stdout.splitlines() if line.startswith("key (shown once)"))
    assert mcp_list(g.base, key).status_code == 200
    assert "from-cli" in [k["name"] for k in api.request("GET", "/v1/keys", token=owner).json()["items"]]

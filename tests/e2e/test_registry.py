"""The MCP server registry: servers a tenant registers through the API run on the
gateway for that tenant only, follow every change without a restart (in-process, and
across processes through PostgreSQL LISTEN/NOTIFY), and obey the registration rules
(stdio only by platform administrators, no SSRF targets, names checked). Where an upstream
may connect is enforced again on every connection, and no upstream follows redirects."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest

from conftest import (MEMBER_PASSWORD, BIN, StreamReader, everything_stdio, free_port, key_call, port_open, problem,
                      wait_until, new_key)

@pytest.fixture
def remote_demo():
    """The built-in demo server over Streamable HTTP on loopback: a real remote server."""
    port = free_port()
    proc = subprocess.Popen([BIN, "demo-upstream", "--http", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: port_open(port), what="demo over HTTP")
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    proc.wait(timeout=10)


def tools(base, key, path="/mcp"):
    r = key_call(base, key, "tools/list", path=path)
    return sorted(t["name"] for t in r.json()["result"]["tools"]) if r.status_code == 200 else r.status_code


def remote(url, **extra):
    return {"transport": "streamable-http", "url": url, **extra}


def test_registered_servers_run_for_their_tenant_and_follow_changes(control_plane, remote_demo):
    g, api = control_plane({"registry": {"allowed_hosts": ["127.0.0.1"]}})
    admin = api.login()["access_token"]
    key = new_key(api, admin)
    created = api.request("POST", "/v1/servers", token=admin, json_body={"name": "remote", "settings": remote(remote_demo)})
    assert created.status_code == 201, created.text
    server = created.json()
    assert server["version"] == 1 and server["settings"]["url"] == remote_demo

    wait_until(lambda: "remote__echo" in tools(g.base, key), what="the registered server on /mcp")
    r = key_call(g.base, key, "tools/call", {"name": "remote__echo", "arguments": {"message": "via registry"}})
    assert r.json()["result"]["content"][0]["text"] == "via registry"
    assert "echo" in tools(g.base, key, path="/mcp/remote")
    health = api.request("GET", f"/v1/servers/{server['id']}/health", token=admin).json()
    assert health["status"] == "up"
    listed = api.request("GET", f"/v1/servers/{server['id']}/tools", token=admin).json()
    assert "echo" in [t["name"] for t in listed["tools"]]

    # Another tenant sees nothing of it.
    api.request("POST", "/v1/users", token=admin, json_body={"email": "bo@example.com", "password": MEMBER_PASSWORD, "role": "member"})
    api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "beta", "name": "B", "owner_email": "bo@example.com"})
    beta = api.login("bo@example.com", MEMBER_PASSWORD, tenant="beta")["access_token"]
    beta_key = new_key(api, beta)
    assert not any(t.startswith("remote__") for t in tools(g.base, beta_key))
    assert key_call(g.base, beta_key, "tools/list", path="/mcp/remote").status_code == 404
    problem(api.request("GET", f"/v1/servers/{server['id']}", token=beta), 404)
    assert api.request("GET", "/v1/servers", token=beta).json()["items"] == []

    # Disabling, re-enabling and restarting apply without restarting gantry.
    off = api.request("PUT", f"/v1/servers/{server['id']}", token=admin,
                      json_body={"name": "remote", "settings": remote(remote_demo, enabled=False)})
    assert off.status_code == 200 and off.json()["version"] == 2
    wait_until(lambda: "remote__echo" not in tools(g.base, key), what="the disabled server gone")
    api.request("PUT", f"/v1/servers/{server['id']}", token=admin, json_body={"name": "remote", "settings": remote(remote_demo)})
    wait_until(lambda: "remote__echo" in tools(g.base, key), what="the server back")
    assert api.request("POST", f"/v1/servers/{server['id']}/restart", token=admin).status_code == 202
    wait_until(lambda: api.request("GET", f"/v1/servers/{server['id']}/health", token=admin).json().get("version") == 4,
               what="the restarted server")

    # Names: unique per tenant, never a configured server's, never changed.
    problem(api.request("POST", "/v1/servers", token=admin, json_body={"name": "remote", "settings": remote(remote_demo)}), 409)
    problem(api.request("POST", "/v1/servers", token=admin, json_body={"name": "demo", "settings": remote(remote_demo)}), 409)
    renamed = api.request("PUT", f"/v1/servers/{server['id']}", token=admin, json_body={"name": "other", "settings": remote(remote_demo)})
    assert problem(renamed, 422)["field"] == "name"

    assert api.request("DELETE", f"/v1/servers/{server['id']}", token=admin).status_code == 204
    wait_until(lambda: "remote__echo" not in tools(g.base, key), what="the deleted server gone")
    assert key_call(g.base, key, "tools/list", path="/mcp/remote").status_code == 404


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_credentials_of_a_registered_server_are_masked_and_kept_when_sent_back(control_plane):
    port = free_port()
    secret = "Bearer s3cret-upstream-token"
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "failing_upstream.py"), str(port), secret])
    try:
        wait_until(lambda: port_open(port), what="an upstream requiring a token")
        g, api = control_plane({"registry": {"allowed_hosts": ["127.0.0.1"]}})
        admin = api.login()["access_token"]
        settings = remote(f"http://127.0.0.1:{port}/mcp", headers={"Authorization": secret, "X-Host": "file:/etc/hostname"})
        created = api.request("POST", "/v1/servers", token=admin, json_body={"name": "guarded", "settings": settings})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        health = lambda: api.request("GET", f"/v1/servers/{sid}/health", token=admin).json()  # noqa: E731
        wait_until(lambda: health()["status"] == "up", what="the server up with its token")

        api.request("POST", "/v1/users", token=admin, json_body={"email": "vi@example.com", "password": MEMBER_PASSWORD, "role": "viewer"})
        viewer = api.login("vi@example.com", MEMBER_PASSWORD)["access_token"]
        for token in (admin, viewer):
            for r in (api.request("GET", f"/v1/servers/{sid}", token=token), api.request("GET", "/v1/servers", token=token)):
                assert r.status_code == 200 and "s3cret" not in r.text, r.text
        shown = api.request("GET", f"/v1/servers/{sid}", token=admin).json()["settings"]
        assert shown["headers"] == {"Authorization": "***", "X-Host": "file:/etc/hostname"}, "a reference is no secret"
        assert "s3cret" not in created.text

        # The settings as read, changed and sent back: the masked token is kept, and the
        # restarted server still gets it.
        shown["timeout_secs"] = 7
        r = api.request("PUT", f"/v1/servers/{sid}", token=admin, json_body={"name": "guarded", "settings": shown})
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        wait_until(lambda: health()["version"] == 2 and health()["status"] == "up", what="the restarted server up")

        # A mask standing for nothing stored is refused, not stored as the secret.
        fresh = remote(f"http://127.0.0.1:{port}/mcp", headers={"Authorization": "***"}, enabled=False)
        refused = api.request("POST", "/v1/servers", token=admin, json_body={"name": "masked", "settings": fresh})
        assert "header 'Authorization'" in problem(refused, 422)["detail"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_registration_rules(control_plane, remote_demo):
    g, api = control_plane()
    platform = api.login()["access_token"]
    api.request("POST", "/v1/users", token=platform, json_body={"email": "ad@example.com", "password": MEMBER_PASSWORD, "role": "admin"})
    api.request("POST", "/v1/users", token=platform, json_body={"email": "vi@example.com", "password": MEMBER_PASSWORD, "role": "viewer"})
    tenant_admin = api.login("ad@example.com", MEMBER_PASSWORD)["access_token"]
    viewer = api.login("vi@example.com", MEMBER_PASSWORD)["access_token"]
    stdio = {"transport": "stdio", "command": BIN, "args": ["demo-upstream"]}

    problem(api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "local", "settings": stdio}), 403)
    problem(api.request("POST", "/v1/servers", token=viewer, json_body={"name": "x", "settings": remote(remote_demo)}), 403)
    made = api.request("POST", "/v1/servers", token=platform, json_body={"name": "local", "settings": stdio})
    assert made.status_code == 201, made.text
    key = new_key(api, platform)
    wait_until(lambda: "local__echo" in tools(g.base, key), what="the registered stdio server")
    problem(api.request("DELETE", f"/v1/servers/{made.json()['id']}", token=tenant_admin), 403)

    # SSRF: loopback, link-local (cloud metadata) and names resolving there are refused.
    port = remote_demo.rsplit(":", 1)[1].split("/")[0]
    for url in (remote_demo, "http://169.254.169.254/latest/meta-data", f"http://localhost:{port}/mcp",
                "http://[::1]:8080/mcp", "http://0.0.0.0:8080/mcp"):
        r = api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "ssrf", "settings": remote(url)})
        assert problem(r, 422)["field"] == "settings.url", (url, r.text)

    missing = api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "x", "settings": {"transport": "streamable-http"}})
    assert problem(missing, 422)["field"] == "settings.url"
    unknown = api.request("POST", "/v1/servers", token=tenant_admin,
                          json_body={"name": "x", "settings": {"transport": "sse", "url": "http://10.0.0.1/sse", "colour": "red"}})
    assert problem(unknown, 422)["field"].startswith("settings")
    bad_name = api.request("POST", "/v1/servers", token=tenant_admin,
                           json_body={"name": "no spaces", "settings": remote("http://10.0.0.1/mcp")})
    assert problem(bad_name, 422)["field"] == "name"
    # References resolve on the gateway host: a tenant's server could send the gateway's
    # own secrets to its URL, so only platform administrators may use them.
    leak = api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "leak", "settings": remote(
        "http://10.0.0.1/mcp", headers={"Authorization": "env:GANTRY_AUTH__JWT_SECRET"})})
    assert "secret of the gateway host" in problem(leak, 403)["detail"]
    oauth_leak = api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "leak", "settings": remote(
        "http://10.0.0.1/mcp", oauth={"client_id": "c", "client_secret": "file:/run/secrets/jwt"})})
    assert "oauth 'client_secret' refers to a secret of the gateway host" in problem(oauth_leak, 403)["detail"]
    key_leak = api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "leak", "settings": remote(
        "http://10.0.0.1/mcp", oauth={"client_id": "c", "token_endpoint_auth": "private_key_jwt",
                                      "private_key": "file:/run/secrets/tls.key"})})
    assert "oauth 'private_key' refers to a secret of the gateway host" in problem(key_leak, 403)["detail"]
    no_key = api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "x", "settings": remote(
        "http://10.0.0.1/mcp", oauth={"client_id": "c", "token_endpoint_auth": "private_key_jwt"})})
    assert problem(no_key, 422)["field"] == "settings.oauth.private_key"
    on_sse = api.request("POST", "/v1/servers", token=tenant_admin, json_body={"name": "x", "settings": {
        "transport": "sse", "url": "http://10.0.0.1/sse", "oauth": {"client_id": "c", "client_secret": "s"}}})
    assert problem(on_sse, 422)["field"] == "settings.oauth"
    # (Registered disabled: test traffic stays on loopback.)
    trusted = api.request("POST", "/v1/servers", token=platform, json_body={"name": "trusted", "settings": remote(
        "http://10.0.0.2/mcp", headers={"Authorization": "env:UPSTREAM_TOKEN"}, enabled=False)})
    assert trusted.status_code == 201, trusted.text
    # A private address is a legitimate internal server.
    ok = api.request("POST", "/v1/servers", token=tenant_admin,
                     json_body={"name": "internal", "settings": remote("http://10.0.0.1/mcp", enabled=False)})
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_separate_gateway_follows_the_registry_through_notifications(control_plane, database, gantry, remote_demo):
    g, api = control_plane({"registry": {"allowed_hosts": ["127.0.0.1"]}}, role="api")
    admin = api.login()["access_token"]
    key = new_key(api, admin)
    # The gateway polls only every 10 minutes: what it learns sooner came by NOTIFY.
    gw = gantry({"database": {"url": database.url}, "registry": {"poll_secs": 600, "allowed_hosts": ["127.0.0.1"]},
                 "gateway": {"demo_upstream": False}},
                role="gateway")
    assert tools(gw.base, key) == []
    created = api.request("POST", "/v1/servers", token=admin, json_body={"name": "remote", "settings": remote(remote_demo)}).json()
    wait_until(lambda: "remote__echo" in tools(gw.base, key), timeout=10, what="the gateway to start the server")
    assert api.request("DELETE", f"/v1/servers/{created['id']}", token=admin).status_code == 204
    wait_until(lambda: "remote__echo" not in tools(gw.base, key), timeout=10, what="the gateway to stop it")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_an_aggregate_stream_follows_the_servers_the_registry_adds_and_removes(control_plane):
    # /mcp's lists are its servers' together: a client holding its GET stream is told when
    # a server comes or goes, and hears what a server added after it opened sends. A
    # stream on /mcp/{server} ends with its server.
    g, api = control_plane()
    admin = api.login()["access_token"]
    g.key = new_key(api, admin)  # registered servers are their tenant's: the tenant's key sees them
    sid, _ = g.initialize()
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    stream = StreamReader(g, "GET", "/mcp", {**session, "Accept": "text/event-stream"})
    assert stream.primed.wait(10), "the GET stream's priming event"
    made = api.request("POST", "/v1/servers", token=admin,
                       json_body={"name": "everything", "settings": everything_stdio()})
    assert made.status_code == 201, made.text
    stream.next("notifications/tools/list_changed")
    wait_until(lambda: "everything__echo" in tools(g.base, g.key), what="the added server's tools on /mcp")

    # The added server's own messages reach the stream opened before it came.
    uri = key_call(g.base, g.key, "resources/list", path="/mcp/everything").json()["result"]["resources"][0]["uri"]
    sid, _ = g.initialize(path="/mcp/everything")
    alone_headers = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25", "Accept": "text/event-stream"}
    alone = StreamReader(g, "GET", "/mcp/everything", alone_headers)
    call = lambda i, method, params: g.post({"jsonrpc": "2.0", "id": i, "method": method, "params": params}, headers=session)
    assert call(1, "resources/subscribe", {"uri": uri}).json()["result"] == {}
    assert "result" in call(2, "tools/call", {"name": "everything__toggle-subscriber-updates", "arguments": {}}).json()
    stream.next("notifications/resources/updated", uri)

    assert api.request("DELETE", f"/v1/servers/{made.json()['id']}", token=admin).status_code == 204
    stream.next("notifications/tools/list_changed")
    assert "everything__echo" not in tools(g.base, g.key)
    # A stream on the removed server alone ends: nothing more can come on it.
    assert alone.ended.wait(10), "the removed server's GET stream is still open"
    assert httpx2.get(g.base + "/mcp/everything", headers={**g.auth(), **alone_headers}, timeout=10).status_code == 404
    assert not stream.ended.is_set()


def series(g, name: str, **labels) -> list[str]:
    """The lines of `name` in /metrics whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return [line for line in g.metrics().splitlines()
            if line.startswith(name + "{") and all(w in line.split("}")[0] for w in want)]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_upstream_metrics_tell_tenants_apart_and_go_with_their_server(control_plane, remote_demo):
    # Two tenants each register a server named "tools": one reachable, one not. Each has its
    # own series, so the down one alerts and the other does not mask it; a server removed
    # leaves no series behind (a stale `mcp_upstream_up 0` would alert for ever), and one
    # the registry replaces shows its new instance's state alone.
    g, api = control_plane({"registry": {"allowed_hosts": ["127.0.0.1"]}})
    admin_login = api.login()
    admin, acme = admin_login["access_token"], admin_login["tenant"]["tenant_id"]
    key = new_key(api, admin)
    api.request("POST", "/v1/users", token=admin, json_body={"email": "bo@example.com", "password": MEMBER_PASSWORD, "role": "member"})
    api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "beta", "name": "B", "owner_email": "bo@example.com"})
    beta_login = api.login("bo@example.com", MEMBER_PASSWORD, tenant="beta")
    beta, beta_id = beta_login["access_token"], beta_login["tenant"]["tenant_id"]
    up = api.request("POST", "/v1/servers", token=admin, json_body={"name": "tools", "settings": remote(remote_demo)})
    down = api.request("POST", "/v1/servers", token=beta,
                       json_body={"name": "tools", "settings": remote(f"http://127.0.0.1:{free_port()}/mcp")})
    assert up.status_code == 201 and down.status_code == 201, (up.text, down.text)
    assert up.json()["tenant_id"] == acme and down.json()["tenant_id"] == beta_id

    wait_until(lambda: g.metric("mcp_upstream_up", server="tools", tenant=acme) == 1.0, what="acme's server up")
    assert g.metric("mcp_upstream_up", server="tools", tenant=beta_id) == 0.0
    # The log says whose server failed, too.
    wait_until(lambda: any("upstream failed to start" in line and f'"tenant":"{beta_id}"' in line
                           for line in g.logs().splitlines()), what="the failure logged with its tenant")
    assert g.metric("mcp_upstream_up", server="demo") == 1.0, "the configured server keeps its series"
    r = key_call(g.base, key, "tools/call", {"name": "tools__echo", "arguments": {"message": "m"}})
    assert r.json()["result"]["content"][0]["text"] == "m"
    assert g.metric("mcp_requests_total", server="tools", tenant=acme, outcome="ok") >= 1
    assert not series(g, "mcp_requests_total", server="tools", tenant=beta_id)

    assert api.request("DELETE", f"/v1/servers/{down.json()['id']}", token=beta).status_code == 204
    wait_until(lambda: not series(g, "mcp_upstream_", tenant=beta_id), what="the removed server's series gone")
    assert g.metric("mcp_upstream_up", server="tools", tenant=acme) == 1.0

    assert api.request("POST", f"/v1/servers/{up.json()['id']}/restart", token=admin).status_code == 202
    wait_until(lambda: api.request("GET", f"/v1/servers/{up.json()['id']}/health", token=admin).json().get("version") == 2,
               what="the restarted server")
    wait_until(lambda: g.metric("mcp_upstream_up", server="tools", tenant=acme) == 1.0, what="the new instance up")
    for family in ("mcp_upstream_up", "mcp_upstream_circuit_open", "mcp_upstream_restarts_total"):
        assert len(series(g, family, server="tools", tenant=acme)) == 1, family


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_servers_own_tool_lists_and_rate_limit_bind_every_caller(control_plane, remote_demo):
    g, api = control_plane({"registry": {"allowed_hosts": ["127.0.0.1"]}})
    admin = api.login()["access_token"]
    key = new_key(api, admin)
    settings = remote(remote_demo, tools_deny=["add", "kv_*"], rate_limit_per_minute=30)
    assert api.request("POST", "/v1/servers", token=admin, json_body={"name": "remote", "settings": settings}).status_code == 201
    wait_until(lambda: "remote__echo" in tools(g.base, key), what="the registered server")
    listed = tools(g.base, key)
    assert "remote__add" not in listed and not any(t.startswith("remote__kv_") for t in listed), listed
    assert "demo__add" in listed, "another server's tools are unaffected"
    assert "add" not in tools(g.base, key, path="/mcp/remote")
    err = key_call(g.base, key, "tools/call", {"name": "remote__add", "arguments": {"a": 1, "b": 2}}).json()["error"]
    assert err["code"] == -32602
    # 30 a minute allows bursts of 3 calls to this server, whoever makes them.
    outcomes = [key_call(g.base, key, "tools/call", {"name": "remote__echo", "arguments": {"message": "x"}}).status_code
                for _ in range(4)]
    assert outcomes == [200, 200, 200, 429], outcomes
    assert g.metric("rate_limited_total", scope="server", kind="rate") == 1
    bad = api.request("POST", "/v1/servers", token=admin,
                      json_body={"name": "bad", "settings": remote(remote_demo, tools_deny=["no spaces"])})
    assert problem(bad, 422)["field"] == "settings.tools_deny"


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_registered_servers_addresses_are_checked_on_every_connection(control_plane, remote_demo):
    """Registration checked the URL; a name that later resolves to a forbidden address, or
    an allow-list the operator has since tightened, is enforced where it is used."""
    port = remote_demo.rsplit(":", 1)[1].split("/")[0]
    urls = {"byname": f"http://localhost:{port}/mcp", "byaddress": remote_demo}
    g, api = control_plane({"registry": {"allowed_hosts": ["localhost", "127.0.0.1"]}})
    admin = api.login()["access_token"]
    ids = {}
    for name, url in urls.items():
        r = api.request("POST", "/v1/servers", token=admin, json_body={"name": name, "settings": remote(url)})
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    health = lambda api, name: api.request("GET", f"/v1/servers/{ids[name]}/health", token=api.login()["access_token"]).json()
    for name in urls:
        wait_until(lambda: health(api, name)["status"] == "up", what=f"{name} up while allowed")

    # The same registry, served by a gateway whose operator allows no loopback host.
    g2, api2 = control_plane(bootstrap=False)
    for name in urls:
        got = wait_until(lambda: (lambda h: h if h["status"] == "down" else None)(health(api2, name)),
                         what=f"{name} refused on connection")
        assert "loopback" in got["reason"] and "registry.allowed_hosts" in got["reason"], got


def test_upstreams_do_not_follow_redirects(gantry, remote_demo):
    """A redirect would carry the request (body and headers) to a URL nobody checked."""
    asked = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            asked.append(self.path)
            self.send_response(307)
            self.send_header("Location", remote_demo)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mcp"
        g = gantry({"upstreams": {"moved": {"transport": "streamable-http", "url": url, "timeout_secs": 2}}})
        assert asked, "gantry never tried the upstream"
        assert g.metric("mcp_upstream_up", server="moved") == 0.0
        assert "does not follow redirects" in g.logs()
    finally:
        server.shutdown()

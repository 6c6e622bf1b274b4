"""The REST bridge (tools for clients that do not speak MCP), the Swagger UI served from
vendored assets, and CORS limited to the configured origins."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx2
import pytest

from conftest import problem, wait_until

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def test_rest_bridge_lists_and_calls_tools_under_the_keys_policy(control_plane):
    g, api = control_plane()
    token = api.login()["access_token"]
    key = api.request("POST", "/v1/keys", token=token,
                      json_body={"name": "rest", "policy": {"tools": ["demo:echo", "demo:add"]}}).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}

    tools = httpx2.get(g.base + "/api/v1/tools", headers=auth, timeout=30)
    assert tools.status_code == 200, tools.text
    assert sorted(t["name"] for t in tools.json()["tools"]) == ["demo__add", "demo__echo"]

    r = httpx2.post(g.base + "/api/v1/tools/demo__add/call", headers=auth, json={"arguments": {"a": 2, "b": 40}}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "42" and r.json()["isError"] is False

    problem(httpx2.post(g.base + "/api/v1/tools/demo__time/call", headers=auth, json={}, timeout=30), 404)
    problem(httpx2.post(g.base + "/api/v1/tools/nope/call", headers=auth, json={}, timeout=30), 404)
    # The server reports bad arguments as a failed tool result, and the bridge keeps it so.
    bad = httpx2.post(g.base + "/api/v1/tools/demo__add/call", headers=auth, json={"arguments": {"a": "two"}}, timeout=30)
    assert bad.status_code == 200 and bad.json()["isError"] is True
    assert problem(httpx2.post(g.base + "/api/v1/tools/demo__add/call", headers=auth, json={"args": {}}, timeout=30),
                   422)["field"] == "args"
    problem(httpx2.post(g.base + "/api/v1/tools/demo__add/call", headers=auth, content=b"{", timeout=30), 400)
    problem(httpx2.get(g.base + "/api/v1/tools", timeout=30), 401)
    problem(httpx2.get(g.base + "/api/v1/tools", headers={"Authorization": f"Bearer {token}"}, timeout=30), 401)

    # The audit is written in batches (within audit.flush_interval_ms), so it is awaited.
    wait_until(lambda: {"a": 2, "b": 40} in [e["arguments"] for e in api.request(
        "GET", "/v1/audit", token=token, params={"tool": "add"}).json()["items"]],
        what="the bridge call in the audit, like an MCP call's")


def test_the_rest_bridge_is_held_to_no_rule_of_mcp_clients(control_plane):
    # Mcp-Param-* headers mirror a tool's arguments on MCP's HTTP transport (2026-07-28);
    # a REST call has none to send, and its tool is called all the same. Nor can it declare
    # a capability: a server asking it for sampling is declined, and the server's answer
    # is the call's, not a -32021 asking the caller to declare what it cannot.
    upstream = Path(__file__).parent / "conformance_upstream.py"
    g, api = control_plane({"upstreams": {"conf": {"transport": "stdio", "command": sys.executable,
                                                   "args": [str(upstream)]}}})
    token = api.login()["access_token"]
    key = api.request("POST", "/v1/keys", token=token, json_body={"name": "rest"}).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx2.post(g.base + "/api/v1/tools/conf__test_param_headers/call", headers=auth,
                    json={"arguments": {"region": "eu"}}, timeout=30)
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "Deploying to eu", r.text
    r = httpx2.post(g.base + "/api/v1/tools/conf__test_sampling/call", headers=auth,
                    json={"arguments": {"prompt": "hi"}}, timeout=30)
    assert r.status_code == 200 and "no client connected through the gateway can answer" in r.text, r.text


def test_swagger_ui_is_served_from_vendored_assets(control_plane):
    g, api = control_plane()
    page = httpx2.get(g.base + "/api/docs/", timeout=30, follow_redirects=True)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    init = httpx2.get(g.base + "/api/docs/swagger-initializer.js", timeout=30)
    assert init.status_code == 200 and "/api/openapi.json" in init.text
    bundle = httpx2.get(g.base + "/api/docs/swagger-ui-bundle.js", timeout=30)
    assert bundle.status_code == 200 and len(bundle.content) > 100_000


def test_cors_allows_only_configured_origins(control_plane):
    g, api = control_plane({"api": {"cors_allowed_origins": ["https://admin.example.com"]}})
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx2.options(g.base + "/api/v1/auth/login", headers={"Origin": "https://admin.example.com", **pre}, timeout=30)
    assert ok.headers.get("access-control-allow-origin") == "https://admin.example.com"
    assert "authorization" in ok.headers.get("access-control-allow-headers", "").lower()
    evil = httpx2.options(g.base + "/api/v1/auth/login", headers={"Origin": "https://evil.example", **pre}, timeout=30)
    assert "access-control-allow-origin" not in evil.headers
    simple = api.request("GET", "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-credentials" not in ok.headers

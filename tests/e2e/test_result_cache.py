"""Tool results a server opts in to caching (`cache_tools`): answered from the gateway
for `cache_ttl_secs` without reaching the server, never shared across tenants, never
for failed calls, and only for the tools named."""

from __future__ import annotations

import time

import pytest

from conftest import MEMBER_PASSWORD, BIN, key_call, wait_until

def text(r) -> str:
    body = r.json()
    assert "result" in body, body
    return body["result"]["content"][0]["text"]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_opted_in_tool_results_are_cached_per_tenant_until_they_expire(control_plane):
    g, api = control_plane({"upstreams": {"demo": {"transport": "stdio", "command": BIN, "args": ["demo-upstream"],
                                                   "cache_tools": ["kv_get"], "cache_ttl_secs": 3}}})
    admin = api.login()["access_token"]
    key = api.request("POST", "/v1/keys", token=admin, json_body={"name": "a"}).json()["key"]
    api.request("POST", "/v1/users", token=admin, json_body={"email": "b@example.com", "password": MEMBER_PASSWORD, "role": "member"})
    api.request("POST", "/v1/tenants", token=admin, json_body={"slug": "beta", "name": "B", "owner_email": "b@example.com"})
    beta = api.login("b@example.com", MEMBER_PASSWORD, tenant="beta")["access_token"]
    beta_key = api.request("POST", "/v1/keys", token=beta, json_body={"name": "b"}).json()["key"]

    def kv(k, tool, **args):
        return key_call(g.base, k, "tools/call", {"name": f"demo__{tool}", "arguments": args})

    # A missing key is a failed call: not kept, so the value set next is seen at once.
    assert kv(key, "kv_get", key="colour").json()["result"]["isError"] is True
    assert text(kv(key, "kv_set", key="colour", value="red"))
    assert text(kv(key, "kv_get", key="colour")) == "red"
    assert text(kv(key, "kv_set", key="colour", value="blue"))
    # Within the TTL this tenant is answered from the cache: the old value.
    assert text(kv(key, "kv_get", key="colour")) == "red"
    # Another tenant has its own entries, so it reaches the server and sees the new value.
    assert text(kv(beta_key, "kv_get", key="colour")) == "blue"
    # kv_set is not opted in: every call reaches the server.
    assert g.metric("mcp_tool_cache_total", server="demo", result="hit") == 1
    assert g.metric("mcp_requests_total", server="demo", method="tools/call", outcome="cached") == 1
    started = time.time()
    wait_until(lambda: text(kv(key, "kv_get", key="colour")) == "blue", timeout=10, what="the entry to expire")
    assert time.time() - started < 4, "served no longer than cache_ttl_secs"
    token = api.login()["access_token"]
    cached = wait_until(lambda: api.request("GET", "/v1/audit", token=token, params={"outcome": "cached"}).json()["items"],
                        what="the cached answer in the audit")
    assert cached[0]["tool"] == "kv_get"

"""Access policy on /mcp from the control plane: denied servers and tools are absent
from lists and refused like absent ones, on the aggregate and the pass-through; a
tenant's policy bounds its keys; rate limits (GCRA in the machine's Redis, shared by
replicas, in-process when Redis is down) and concurrency caps (leases in Redis, shared the
same way) answer 429."""

from __future__ import annotations

import signal
import threading

import httpx2
import pytest
import redis

from conftest import BIN, key_call, new_key, problem, wait_until

TWO_SERVERS = {"upstreams": {
    "demo": {"transport": "stdio", "command": BIN, "args": ["demo-upstream"]},
    "other": {"transport": "stdio", "command": BIN, "args": ["demo-upstream"]},
}}


def tool_names(r) -> list[str]:
    assert r.status_code == 200, r.text
    return sorted(t["name"] for t in r.json()["result"]["tools"])


def test_denied_servers_and_tools_are_absent_and_refused(control_plane):
    g, api = control_plane(TWO_SERVERS)
    token = api.login()["access_token"]
    open_key = new_key(api, token)
    key = new_key(api, token, {"servers": ["demo"], "tools": ["demo:echo", "demo:add"]})

    assert "other__echo" in tool_names(key_call(g.base, open_key, "tools/list"))
    assert tool_names(key_call(g.base, key, "tools/list")) == ["demo__add", "demo__echo"]
    ok = key_call(g.base, key, "tools/call", {"name": "demo__echo", "arguments": {"message": "hi"}})
    assert ok.json()["result"]["content"][0]["text"] == "hi"
    for denied in ("demo__time", "other__echo"):
        err = key_call(g.base, key, "tools/call", {"name": denied, "arguments": {}}).json()["error"]
        assert err["code"] == -32602 and "Unknown tool" in err["message"], err

    # A denied server answers exactly like one that does not exist.
    denied = key_call(g.base, key, "tools/list", path="/mcp/other")
    absent = key_call(g.base, key, "tools/list", path="/mcp/nowhere")
    assert denied.status_code == absent.status_code == 404
    assert denied.json()["error"]["message"].replace("other", "X") == absent.json()["error"]["message"].replace("nowhere", "X")

    # The pass-through lists and refuses the same way.
    assert tool_names(key_call(g.base, key, "tools/list", path="/mcp/demo")) == ["add", "echo"]
    err = key_call(g.base, key, "tools/call", {"name": "time", "arguments": {}}, path="/mcp/demo").json()["error"]
    assert err["code"] == -32602
    assert key_call(g.base, key, "tools/call", {"name": "echo", "arguments": {"message": "x"}}, path="/mcp/demo").status_code == 200
    denied_events = wait_until(lambda: api.request("GET", "/v1/audit", token=token, params={"outcome": "denied"}).json()["items"],
                               what="the refused call in the audit")
    assert denied_events[0]["tool"] == "time" and denied_events[0]["server"] == "demo"


def test_the_tenant_policy_bounds_every_key(control_plane):
    g, api = control_plane(TWO_SERVERS)
    admin = api.login()
    token, tenant_id = admin["access_token"], admin["tenant"]["tenant_id"]
    key = new_key(api, token, {"tools": ["demo:*"]})
    assert tool_names(key_call(g.base, key, "tools/list")) == ["demo__add", "demo__echo", "demo__kv_get", "demo__kv_list",
                                                          "demo__kv_set", "demo__sleep", "demo__time"]
    put = api.request("PUT", f"/v1/tenants/{tenant_id}/policy", token=token, json_body={"tools": ["*:echo"]})
    assert put.status_code == 200, put.text
    assert api.request("GET", f"/v1/tenants/{tenant_id}/policy", token=token).json() == {"tools": ["*:echo"]}
    # The key allows demo:*, the tenant *:echo: only demo's echo remains.
    assert tool_names(key_call(g.base, key, "tools/list")) == ["demo__echo"]
    assert tool_names(key_call(g.base, new_key(api, token), "tools/list")) == ["demo__echo", "other__echo"]

    bad = api.request("PUT", f"/v1/tenants/{tenant_id}/policy", token=token, json_body={"tools": ["echo"]})
    assert problem(bad, 422)["field"] == "policy.tools"
    bad_key = api.request("POST", "/v1/keys", token=token, json_body={"name": "x", "policy": {"rate_limit_per_minute": 0}})
    assert problem(bad_key, 422)["field"] == "policy.rate_limit_per_minute"
    r = api.request("POST", "/v1/users", token=token, json_body={"email": "own@example.com", "password": "owner password 1", "role": "owner"})
    assert r.status_code == 201
    owner = api.login("own@example.com", "owner password 1")["access_token"]
    problem(api.request("PUT", f"/v1/tenants/{tenant_id}/policy", token=owner, json_body={}), 403)


def limited(r) -> bool:
    if r.status_code != 429:
        assert r.status_code == 200, r.text
        return False
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == -32029
    return True


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_rate_limits_are_shared_by_replicas_through_redis(control_plane, gantry, database, redis_prefix):
    prefix = redis_prefix
    config = {"cache": {"url": "redis://127.0.0.1:6379/0", "key_prefix": prefix}}
    g1, api = control_plane(config)
    token = api.login()["access_token"]
    # 60 per minute allows bursts of 6.
    key = new_key(api, token, {"rate_limit_per_minute": 60})
    g2, _ = control_plane(config, bootstrap=False)
    outcomes = [limited(key_call(g.base, key, "server/discover")) for g in (g1, g2) * 5]
    assert outcomes[:6] == [False] * 6 and all(outcomes[6:]), outcomes
    assert g1.metric("rate_limited_total", scope="key", kind="rate") + g2.metric("rate_limited_total", scope="key", kind="rate") == 4
    assert redis.Redis(host="127.0.0.1", port=6379).keys(prefix + "rl:key:*"), "the bucket lives in Redis"
    assert api.request("GET", "/ready").json()["checks"]["cache"] == {"status": "up", "backend": "redis"}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_rate_limits_hold_in_process_when_redis_is_down(control_plane):
    from conftest import free_port
    g, api = control_plane({"cache": {"url": f"redis://127.0.0.1:{free_port()}/0"}})  # nothing listens there
    token = api.login()["access_token"]
    tenant_id = api.login()["tenant"]["tenant_id"]
    api.request("PUT", f"/v1/tenants/{tenant_id}/policy", token=token, json_body={"rate_limit_per_minute": 30})
    key = new_key(api, token)
    outcomes = [limited(key_call(g.base, key, "server/discover")) for _ in range(5)]
    assert outcomes == [False, False, False, True, True], outcomes  # 30/min: bursts of 3, tenant-wide
    assert g.metric("rate_limit_fallback_total") >= 1
    assert "Redis unavailable for rate limits" in g.logs()
    ready = api.request("GET", "/ready")
    assert ready.status_code == 503 and ready.json()["failed"] == ["cache"]


def slow_call(base: str, key: str, ms: int) -> tuple[threading.Thread, dict]:
    """A `demo__sleep` call in a thread of its own; its response (or the error that ended
    it) lands in the dict."""
    out = {}

    def run():
        try:
            out["r"] = key_call(base, key, "tools/call", {"name": "demo__sleep", "arguments": {"ms": ms}})
        except httpx2.HTTPError as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize("cache", ["memory", "redis down"])
def test_concurrency_cap_refuses_the_extra_call(control_plane, cache):
    from conftest import free_port
    # Nothing listens at the Redis address of "redis down": the cap is held in-process.
    config = {"cache": {"url": f"redis://127.0.0.1:{free_port()}/0"}} if cache == "redis down" else {}
    g, api = control_plane(config)
    token = api.login()["access_token"]
    key = new_key(api, token, {"max_concurrency": 1})
    t, slow = slow_call(g.base, key, 1500)
    wait_until(lambda: (g.metric("mcp_requests_in_flight", server="demo") or 0) >= 1, what="the slow call in flight")
    extra = key_call(g.base, key, "server/discover")
    assert limited(extra)
    assert "concurrency" in extra.json()["error"]["message"]
    t.join()
    assert slow["r"].status_code == 200
    assert not limited(key_call(g.base, key, "server/discover"))
    if cache == "redis down":
        assert g.metric("rate_limit_fallback_total", kind="concurrency") >= 1
        assert "Redis unavailable for concurrency caps" in g.logs()


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_concurrency_caps_are_shared_by_replicas_through_redis(control_plane, database, redis_prefix):
    config = {"cache": {"url": "redis://127.0.0.1:6379/0", "key_prefix": redis_prefix}}
    g1, api = control_plane(config)
    token = api.login()["access_token"]
    key = new_key(api, token, {"max_concurrency": 1})
    g2, _ = control_plane(config, bootstrap=False)
    r = redis.Redis(host="127.0.0.1", port=6379)
    held = lambda: sum(r.zcard(k) for k in r.keys(redis_prefix + "cc:*"))

    # A call in flight on one replica holds the key's one slot on every replica.
    t, slow = slow_call(g1.base, key, 1500)
    wait_until(lambda: (g1.metric("mcp_requests_in_flight", server="demo") or 0) >= 1, what="the slow call in flight")
    extra = key_call(g2.base, key, "server/discover")
    assert limited(extra) and "concurrency" in extra.json()["error"]["message"]
    assert held() == 1
    t.join()
    assert slow["r"].status_code == 200
    # A slot is given back before its answer goes out: a client calling one request after
    # another, whichever replica each reaches, is never refused.
    outcomes = [limited(key_call(g.base, key, "server/discover")) for g in (g1, g2) * 10]
    assert not any(outcomes), outcomes
    assert held() == 0

    # A replica that dies holding a slot does not hold it for ever: its lease lapses.
    t, slow = slow_call(g1.base, key, 60_000)
    wait_until(lambda: held() == 1, what="the slot taken")
    assert limited(key_call(g2.base, key, "server/discover"))
    g1.stop(signal.SIGKILL)
    t.join()
    wait_until(lambda: not limited(key_call(g2.base, key, "server/discover")), timeout=30, interval=0.5,
               what="the dead replica's slot to lapse")

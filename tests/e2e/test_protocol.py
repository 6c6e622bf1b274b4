"""Client-facing protocol: both eras on one endpoint, each MUST of the spec for servers."""

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from conftest import ACCEPT, INSPECTOR_CLI, MODERN, demo_stdio, everything_stdio, sdk_client, sse_messages

CONFORMANCE_UPSTREAM = Path(__file__).parent / "conformance_upstream.py"


@pytest.fixture
def g(gantry):
    return gantry({"upstreams": {"demo": demo_stdio()}})


# ---- session-based eras (2025-03-26, 2025-06-18, 2025-11-25) ----------------------------

@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", "2025-11-25"])
def test_initialize_negotiates_each_legacy_version_and_mints_a_session(g, version):
    sid, result = g.initialize(version=version)
    assert result["protocolVersion"] == version
    assert sid and all(c.isalnum() or c in "-_" for c in sid)
    r = g.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
               headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": version})
    assert r.status_code == 200
    assert "demo__echo" in [t["name"] for t in r.json()["result"]["tools"]]


def test_initialize_asking_for_the_modern_version_gets_the_latest_legacy_one(g):
    _, result = g.initialize(version=MODERN)
    assert result["protocolVersion"] == "2025-11-25"


def test_request_without_session_is_400(g):
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"MCP-Protocol-Version": "2025-11-25"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32600


def test_unknown_or_tampered_session_is_404(g):
    sid, _ = g.initialize()
    for bad in ["nonsense", sid[:-4] + ("AAAA" if not sid.endswith("AAAA") else "BBBB"), "x" * 5000]:
        r = g.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"Mcp-Session-Id": bad})
        assert r.status_code == 404, bad[:20]


def test_protocol_version_header_must_name_a_version_sessions_speak(g):
    sid, _ = g.initialize(version="2025-06-18")
    # Another session-era version is served (the official conformance suite sends one and
    # the reference SDKs accept it); an unknown one, or the sessionless era's, is a 400.
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
               headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-03-26"})
    assert r.status_code == 200 and r.json()["result"]["tools"], r.text
    for bad in ["1999-01-01", "2026-07-28"]:
        r = g.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": bad})
        assert r.status_code == 400, bad
        err = r.json()["error"]
        assert err["code"] == -32600 and bad in err["message"] and "2025-06-18" in err["message"]


def test_missing_version_header_is_accepted_as_2025_03_26_behaviour(g):
    sid, _ = g.initialize(version="2025-03-26")
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"Mcp-Session-Id": sid})
    assert r.status_code == 200 and r.json()["result"] == {}


def test_notifications_get_202_and_delete_ends_the_session(g):
    sid, _ = g.initialize()
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    r = g.post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}, headers=h)
    assert r.status_code == 202 and r.content == b""
    r = httpx2.delete(g.url, headers={**g.auth(), **h})
    assert r.status_code == 204
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=h)
    assert r.status_code == 404


def test_get_stream_needs_a_session_and_sse(g):
    r = httpx2.get(g.url, headers={**g.auth(), "Accept": "text/event-stream"})
    assert r.status_code == 405
    sid, _ = g.initialize()
    r = httpx2.get(g.url, headers={**g.auth(), "Accept": "application/json", "Mcp-Session-Id": sid})
    assert r.status_code == 406
    with httpx2.stream("GET", g.url, headers={**g.auth(), "Accept": "text/event-stream", "Mcp-Session-Id": sid},
                       timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")


def test_session_bound_to_one_endpoint_is_not_valid_on_another(g):
    sid, _ = g.initialize(path="/mcp/demo")
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"Mcp-Session-Id": sid})
    assert r.status_code == 404


# ---- the stateless 2026-07-28 era ---------------------------------------------------------

def test_discover_lists_every_supported_version(g):
    r = g.modern("server/discover")
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["supportedVersions"][0] == MODERN and "2025-03-26" in result["supportedVersions"]
    assert result["resultType"] == "complete" and result["serverInfo"]["name"] == "gantry"
    r = g.modern("server/discover", path="/mcp/demo")
    assert r.json()["result"]["serverInfo"]["name"] == "gantry-demo"


def test_modern_call_needs_no_session_and_mints_none(g):
    r = g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "hi"}})
    assert r.status_code == 200, r.text
    assert "mcp-session-id" not in r.headers
    assert r.json()["result"]["content"][0]["text"] == "hi"
    assert r.json()["result"]["resultType"] == "complete"


@pytest.mark.parametrize("headers", [
    {"Mcp-Method": "tools/list"},
    {"Mcp-Name": "demo__add"},
    {"Mcp-Name": "=?base64?ZGVtb19fYWRk?="},  # base64 of demo__add
    {"MCP-Protocol-Version": "2025-11-25"},
])
def test_header_body_mismatch_is_400_header_mismatch(g, headers):
    r = g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "x"}}, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] in (-32020, -32022)
    if "MCP-Protocol-Version" not in headers:
        assert r.json()["error"]["code"] == -32020


def test_base64_encoded_name_header_is_decoded(g):
    r = g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "b64"}},
                 headers={"Mcp-Name": "=?base64?ZGVtb19fZWNobw==?="})
    assert r.status_code == 200, r.text


def test_errors_repeat_only_the_start_of_a_hostile_value(g):
    # A request body's worth of tool name comes back as a short message, not echoed whole.
    name = "x" * 200_000
    mismatch = g.modern("tools/call", {"name": name, "arguments": {}}, headers={"Mcp-Name": "demo__echo"})
    unknown = g.modern("tools/call", {"name": name, "arguments": {}})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020, mismatch.text[:300]
    assert unknown.json()["error"]["code"] == -32602, unknown.text[:300]
    for r in (mismatch, unknown):
        assert "x" * 100 in r.json()["error"]["message"] and len(r.content) < 1000, len(r.content)


def test_missing_required_headers_are_rejected(g):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}}}
    r = g.post(body)  # neither MCP-Protocol-Version nor Mcp-Method
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020
    r = g.post(body, headers={"MCP-Protocol-Version": MODERN})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020


def test_unsupported_version_lists_supported_ones(g):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2099-01-01", "io.modelcontextprotocol/clientCapabilities": {}}}}
    r = g.post(body, headers={"MCP-Protocol-Version": "2099-01-01", "Mcp-Method": "tools/list"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == -32022 and MODERN in err["data"]["supported"] and err["data"]["requested"] == "2099-01-01"


def test_unknown_method_is_404_with_method_not_found(g):
    r = g.modern("no/such/method")
    assert r.status_code == 404 and r.json()["error"]["code"] == -32601
    r = g.modern("no/such/method", path="/mcp/demo")
    assert r.status_code == 404 and r.json()["error"]["code"] == -32601


@pytest.mark.parametrize("path", ["/mcp", "/mcp/everything"])
def test_the_methods_2026_07_28_removed_are_not_modern_ones(gantry, path):
    # 2026-07-28 removed the handshake, ping and logging/setLevel, and replaced
    # resources/subscribe and unsubscribe by subscriptions/listen. The session-era server
    # behind gantry still implements them: passed on, a stateless client's subscribe would
    # leave a subscription nobody receives or ends, its setLevel set the level every
    # client of the shared upstream session gets.
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    uri = g.modern("resources/list", path="/mcp/everything").json()["result"]["resources"][0]["uri"]
    removed = {"resources/subscribe": ({"uri": uri}, "subscriptions/listen"),
               "resources/unsubscribe": ({"uri": uri}, "subscriptions/listen"),
               "logging/setLevel": ({"level": "debug"}, "io.modelcontextprotocol/logLevel"),
               "ping": ({}, "server/discover"),
               "initialize": ({"protocolVersion": MODERN, "capabilities": {}}, "server/discover")}
    for method, (params, replacement) in removed.items():
        r = g.modern(method, params, path=path)
        assert r.status_code == 404, (method, r.text)
        err = r.json()["error"]
        assert err["code"] == -32601 and replacement in err["message"], err
    # The session eras keep them.
    sid, _ = g.initialize(path=path)
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    for method, (params, _) in removed.items():
        if method != "initialize":
            r = g.post({"jsonrpc": "2.0", "id": 2, "method": method, "params": params}, path=path, headers=session)
            assert r.json()["result"] == {}, (method, r.text)


def test_arguments_mirrored_in_headers_must_agree_with_the_body(gantry):
    # SEP-2243: a tool may ask clients to send an argument as an Mcp-Param-* header too, for
    # proxies to route on; whatever acts on the body checks the two agree. The session-era
    # server never sees the headers: gantry checks them, on the aggregate under its names.
    g = gantry({"gateway": {"prefix_mode": "always"}, "upstreams": {
        "conf": {"transport": "stdio", "command": sys.executable, "args": [str(CONFORMANCE_UPSTREAM)]}}})
    tool = "conf__test_param_headers"

    def call(arguments, headers=None, path="/mcp", name=tool):
        return g.modern("tools/call", {"name": name, "arguments": arguments}, path=path, headers=headers)

    encoded = "=?base64?" + base64.b64encode("Zürich".encode()).decode() + "?="
    for arguments, headers in [({"region": "eu-west"}, {"Mcp-Param-Region": "eu-west"}),
                               ({"region": "Zürich"}, {"Mcp-Param-Region": encoded}),
                               ({"region": "eu", "replicas": 3}, {"Mcp-Param-Region": "eu", "Mcp-Param-Replicas": "3"})]:
        r = call(arguments, headers)
        assert r.status_code == 200 and arguments["region"] in r.json()["result"]["content"][0]["text"], r.text
    for arguments, headers, why in [({"region": "eu"}, {}, "required"),
                                    ({"region": "eu"}, {"Mcp-Param-Region": "us"}, "does not match"),
                                    ({"region": "eu", "replicas": 3}, {"Mcp-Param-Region": "eu", "Mcp-Param-Replicas": "4"},
                                     "does not match"),
                                    ({"region": "eu"}, {"Mcp-Param-Region": "=?base64?%%%?="}, "Base64")]:
        r = call(arguments, headers)
        err = r.json()["error"]
        assert r.status_code == 400 and err["code"] == -32020 and why in err["message"], r.text
    r = call({"region": "eu"}, {"Mcp-Param-Region": "us"}, path="/mcp/conf", name="test_param_headers")
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020, r.text
    # A session-era request has no such headers to agree with.
    sid, _ = g.initialize()
    r = g.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": {"region": "eu"}}},
               headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    assert "Deploying to eu" in r.json()["result"]["content"][0]["text"], r.text


def test_modern_get_and_delete_are_405(g):
    assert httpx2.get(g.url, headers={**g.auth(), "Accept": "text/event-stream"}).status_code == 405
    assert httpx2.delete(g.url, headers=g.auth()).status_code == 405


def test_subscriptions_listen_acknowledges_with_the_subscription_id(g):
    body = {"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen", "params": {
        "notifications": {"toolsListChanged": True},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {}}}}
    h = {**g.auth(), "Content-Type": "application/json", "Accept": ACCEPT,
         "MCP-Protocol-Version": MODERN, "Mcp-Method": "subscriptions/listen"}
    with httpx2.stream("POST", g.url, content=json.dumps(body), headers=h, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                ack = json.loads(line[5:])
                break
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1"
    assert ack["params"]["notifications"] == {"toolsListChanged": True}


# ---- real clients --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["legacy", MODERN, "auto"])
def test_python_sdk_in_every_mode(g, mode):
    async def use():
        async with sdk_client(g, mode=mode) as client:
            tools = await client.list_tools()
            assert "demo__kv_set" in [t.name for t in tools.tools]
            await client.call_tool("demo__kv_set", {"key": "k", "value": mode})
            got = await client.call_tool("demo__kv_get", {"key": "k"})
            assert got.content[0].text == mode
        async with sdk_client(g, path="/mcp/demo", mode=mode) as client:
            got = await client.call_tool("kv_get", {"key": "k"})
            assert got.content[0].text == mode, "the demo's key-value store is shared by both endpoints"
    asyncio.run(use())


def inspector(g, *args, path="/mcp"):
    cmd = [str(INSPECTOR_CLI), "--cli", g.base + path, "--transport", "http",
           "--header", f"Authorization: Bearer {g.key}", *args]
    # inspector-cli 1.0.x checks for its package.json relative to the working directory
    # (fs.existsSync) but imports it relative to its module: run it from its build folder.
    cwd = INSPECTOR_CLI.resolve().parent
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


def test_inspector_cli_lists_and_calls_tools(g):
    tools = inspector(g, "--method", "tools/list")
    assert "demo__echo" in [t["name"] for t in tools["tools"]]
    result = inspector(g, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=inspected", path="/mcp/demo")
    assert result["content"][0]["text"] == "inspected"


def test_sessions_expire_after_their_ttl(gantry):
    from conftest import wait_until
    g = gantry({"auth": {"session_ttl_secs": 1}, "upstreams": {"demo": demo_stdio()}})
    sid, _ = g.initialize()
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    assert g.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=h).status_code == 200
    wait_until(lambda: g.post({"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=h).status_code == 404,
               timeout=10, what="session expiry")


def test_a_get_stream_ends_with_its_session(gantry):
    # An expired session's requests get 404; its GET stream must not outlive it either.
    from conftest import StreamReader
    g = gantry({"auth": {"session_ttl_secs": 3}, "upstreams": {"demo": demo_stdio()}})
    sid, _ = g.initialize()
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    stream = StreamReader(g, "GET", "/mcp", {**h, "Accept": "text/event-stream"})
    assert stream.primed.wait(10), "the GET stream opens while the session lives"
    assert stream.ended.wait(20), "the GET stream outlived its session"
    assert g.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=h).status_code == 404

"""Messages the server starts: roots requests, log messages, resource updates, and the
client's cancellation, through the transparent path."""

import asyncio
import json
import threading
import time

import httpx2
from mcp import types

from conftest import ACCEPT, MODERN, everything_stdio, sdk_client, wait_until


def test_roots_and_logging_reach_the_client_over_its_get_stream(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    logs = []

    async def roots(context):
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def on_log(params):
        logs.append(params.data)

    async def use():
        async with sdk_client(g, path="/mcp/everything", list_roots_callback=roots,
                              logging_callback=on_log) as client:
            # The server asks for roots when the client says they changed; that request
            # belongs to no call, so it travels on the client's GET stream.
            deadline = time.time() + 20
            text = ""
            while time.time() < deadline:
                await client.send_roots_list_changed()
                result = await client.call_tool("get-roots-list", {})
                text = str(result.content)
                if "file:///work/project" in text:
                    break
                await asyncio.sleep(0.2)
            assert "file:///work/project" in text, text
            while time.time() < deadline and not any("Roots updated" in str(l) for l in logs):
                await asyncio.sleep(0.1)
            assert any("Roots updated: 1 root" in str(l) for l in logs), logs
    asyncio.run(use())


def test_resource_subscription_updates_reach_a_session(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    updates = []

    async def on_message(message):
        if isinstance(message, types.ServerNotification) and isinstance(message, types.ResourceUpdatedNotification):
            updates.append(message.params.uri)
        root = getattr(message, "root", None)
        if isinstance(root, types.ResourceUpdatedNotification):
            updates.append(root.params.uri)

    async def use():
        async with sdk_client(g, path="/mcp/everything", message_handler=on_message) as client:
            uri = (await client.list_resources()).resources[0].uri
            await client.subscribe_resource(uri)
            await client.call_tool("toggle-subscriber-updates", {})
            deadline = time.time() + 15  # the server sends updates every 5 s
            while time.time() < deadline and uri not in updates:
                await asyncio.sleep(0.1)
            assert uri in updates, updates
    asyncio.run(use())


def test_modern_listen_stream_delivers_subscribed_resource_updates(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    uri = g.modern("resources/list", path="/mcp/everything").json()["result"]["resources"][0]["uri"]
    g.modern("tools/call", {"name": "toggle-subscriber-updates", "arguments": {}}, path="/mcp/everything")
    body = {"jsonrpc": "2.0", "id": 77, "method": "subscriptions/listen", "params": {
        "notifications": {"resourceSubscriptions": [uri], "toolsListChanged": True},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}}}
    headers = {**g.auth(), "Content-Type": "application/json", "Accept": ACCEPT,
               "MCP-Protocol-Version": MODERN, "Mcp-Method": "subscriptions/listen"}
    seen = []
    with httpx2.stream("POST", g.base + "/mcp/everything", content=json.dumps(body), headers=headers,
                       timeout=httpx2.Timeout(20.0)) as r:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            seen.append(msg)
            if msg["method"] == "notifications/resources/updated":
                break
    ack, update = seen[0], seen[-1]
    assert ack["params"]["notifications"] == {"toolsListChanged": True, "resourceSubscriptions": [uri]}
    assert update["method"] == "notifications/resources/updated" and update["params"]["uri"] == uri
    assert update["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 77


def test_client_cancellation_ends_the_call_promptly(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    sid, _ = g.initialize(path="/mcp/everything")
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    result = {}

    def long_call():
        started = time.time()
        result["r"] = g.post({"jsonrpc": "2.0", "id": "long-1", "method": "tools/call", "params": {
            "name": "trigger-long-running-operation", "arguments": {"duration": 30, "steps": 30}}},
            path="/mcp/everything", headers=h, timeout=60)
        result["seconds"] = time.time() - started
    t = threading.Thread(target=long_call)
    t.start()
    wait_until(lambda: g.metric("mcp_requests_in_flight", server="everything") == 1.0, what="call in flight")
    r = g.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": "long-1", "reason": "user pressed stop"}},
               path="/mcp/everything", headers=h)
    assert r.status_code == 202
    t.join(timeout=60)
    assert result["seconds"] < 10, "the gateway stopped waiting for the upstream"
    assert g.metric("mcp_requests_total", server="everything", method="tools/call", outcome="cancelled") == 1

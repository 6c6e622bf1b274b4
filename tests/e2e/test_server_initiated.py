"""Messages the server starts: roots requests, log messages, resource updates, and the
client's cancellation, through the transparent path."""

import asyncio
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
from mcp import types

from conftest import (ACCEPT, MODERN, StreamReader, everything_stdio, free_port, port_open, sdk_client, sse_messages,
                      streamed_messages, subscribed_session, wait_until)
from test_mrtr import two_replicas
from test_resilience import children, replicas_sharing_redis
from test_slow_clients import chatty_stdio


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


LOG_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
LOGGING_UPSTREAM = Path(__file__).parent / "logging_upstream.py"


@pytest.fixture
def logging_servers(gantry):
    """gantry in front of logging_upstream.py twice: `logs` over stdio, where its messages
    belong to no call and come on GET streams, and `hlogs` over Streamable HTTP, where they
    come in the call's own stream."""
    port = free_port()
    http = subprocess.Popen([sys.executable, str(LOGGING_UPSTREAM), "--http", str(port)])
    wait_until(lambda: port_open(port), what="the logging server over HTTP")
    yield gantry({"upstreams": {
        "logs": {"transport": "stdio", "command": sys.executable, "args": [str(LOGGING_UPSTREAM)]},
        "hlogs": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp"}}})
    http.terminate()
    http.wait(timeout=10)


class LoggingClient:
    """A 2025-11-25 session on `path` that asked for `level` (if given)."""

    def __init__(self, g, path, level=None):
        self.g, self.path = g, path
        sid, _ = g.initialize(path=path)
        self.headers = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
        if level:
            assert self.set_level(level)["result"] == {}

    def set_level(self, level):
        body = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": level}}
        return self.g.post(body, path=self.path, headers=self.headers).json()

    def call(self, tool, later=False) -> list[str]:
        """Calls `tool`; the levels of the log messages its answer's stream carried."""
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": {"later": later}}}
        return levels_logged(self.g.post(body, path=self.path, headers=self.headers))


def levels_logged(response) -> list[str]:
    """The levels of the log messages a `log_each_level` call's answer carried."""
    messages = sse_messages(response)
    assert messages[-1]["result"]["content"][0]["text"] == "logged", messages
    return [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"]


# The server keeps one level for its one client, gantry, whichever session asked it: one
# session's logging/setLevel must neither silence another's messages nor flood it.

@pytest.mark.parametrize("path", ["/mcp/hlogs", "/mcp"])
def test_a_call_brings_its_session_the_log_messages_of_the_level_it_set(logging_servers, path):
    g = logging_servers
    tool = "log_each_level" if path == "/mcp/hlogs" else "hlogs__log_each_level"
    verbose, quiet = LoggingClient(g, path, "debug"), LoggingClient(g, path, "error")
    assert quiet.call(tool) == LOG_LEVELS[4:]
    assert verbose.call(tool) == LOG_LEVELS, "another session's quieter level silenced this one's"
    assert LoggingClient(g, path).call(tool) == LOG_LEVELS, "a session that set no level gets what the server sends"
    assert quiet.set_level("verbose")["error"]["code"] == -32602


def modern_logged(g, path, tool, level=None) -> list[str]:
    """A 2026-07-28 call of `tool` naming `level` in its `_meta` (if given); the levels of
    the log messages its answer's stream carried."""
    meta = {"io.modelcontextprotocol/logLevel": level} if level else {}
    return levels_logged(g.modern("tools/call", {"name": tool, "arguments": {}, "_meta": meta}, path=path))


@pytest.mark.parametrize("path", ["/mcp/hlogs", "/mcp"])
def test_a_2026_07_28_call_brings_log_messages_only_at_the_level_it_names(logging_servers, path):
    g = logging_servers
    tool = "log_each_level" if path == "/mcp/hlogs" else "hlogs__log_each_level"
    # The server sends warning and up until asked otherwise; a request naming no level gets
    # none of them (2026-07-28: MUST NOT).
    assert modern_logged(g, path, tool) == []
    assert modern_logged(g, path, tool, "error") == LOG_LEVELS[4:]
    # A more verbose level is asked of the server, and held to for the requests that follow.
    assert modern_logged(g, path, tool, "debug") == LOG_LEVELS
    assert modern_logged(g, path, tool, "notice") == LOG_LEVELS[2:]
    assert modern_logged(g, path, tool) == []
    bad = g.modern("tools/call", {"name": tool, "arguments": {}, "_meta": {"io.modelcontextprotocol/logLevel": "loud"}},
                   path=path)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == -32602, bad.text
    # 2026-07-28 has no logging/setLevel: it would set the level of the session every client shares.
    removed = g.modern("logging/setLevel", {"level": "debug"}, path=path)
    assert removed.status_code == 404 and removed.json()["error"]["code"] == -32601, removed.text


@pytest.mark.parametrize("path", ["/mcp/logs", "/mcp"])
def test_a_get_stream_brings_its_session_the_log_messages_of_the_level_it_set(logging_servers, path):
    g = logging_servers
    tool = "log_each_level" if path == "/mcp/logs" else "logs__log_each_level"
    verbose, quiet = LoggingClient(g, path, "debug"), LoggingClient(g, path, "error")
    streams = [StreamReader(g, "GET", path, {**c.headers, "Accept": "text/event-stream"}) for c in (verbose, quiet)]
    assert all(s.primed.wait(10) for s in streams)
    # Over stdio the messages come outside the call, whether sent before its answer or after.
    assert verbose.call(tool, later=True) == []

    def until_emergency(stream):
        seen = []
        while not seen or seen[-1] != "emergency":
            seen.append(stream.next("notifications/message")["params"]["data"])
        return seen

    assert until_emergency(streams[0]) == LOG_LEVELS, "another session's quieter level silenced this one's"
    assert until_emergency(streams[1]) == LOG_LEVELS[4:]


def test_a_restarted_server_is_asked_again_for_the_level_its_sessions_set(logging_servers):
    # The server starts at `warning`, and forgets what it was asked when it restarts.
    g = logging_servers
    verbose = LoggingClient(g, "/mcp/logs", "debug")
    child = next(p for p in children(g.proc.pid) if "logging_upstream" in Path(f"/proc/{p}/cmdline").read_text())
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: g.metric("mcp_upstream_restarts_total", server="logs") == 1.0
               and g.metric("mcp_upstream_up", server="logs") == 1.0, what="the server restarted")
    stream = StreamReader(g, "GET", "/mcp/logs", {**verbose.headers, "Accept": "text/event-stream"})
    assert stream.primed.wait(10)
    assert verbose.call("log_each_level", later=True) == []
    seen = []
    while not seen or seen[-1] != "emergency":
        seen.append(stream.next("notifications/message")["params"]["data"])
    assert seen == LOG_LEVELS, "the restarted server was not asked for the session's level again"


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


def updates_into(log: list):
    """A message handler recording each resource update as (monotonic time, uri)."""
    async def on_message(message):
        root = getattr(message, "root", message)
        if isinstance(root, types.ResourceUpdatedNotification):
            log.append((time.monotonic(), str(root.params.uri)))
    return on_message


async def heard_after(log: list, uri: str, since: float, timeout: float = 15) -> bool:
    """Whether an update of `uri` arrives after `since`; server-everything sends one every 5 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t > since and u == uri for t, u in log):
            return True
        await asyncio.sleep(0.1)
    return False


def test_a_client_unsubscribing_leaves_another_clients_subscription_in_place(gantry):
    # One upstream session serves both clients: the first one's unsubscribe must silence
    # its own updates, not the second one's.
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    heard_a, heard_b = [], []

    async def use():
        async with sdk_client(g, path="/mcp/everything", message_handler=updates_into(heard_a)) as a, \
                sdk_client(g, path="/mcp/everything", message_handler=updates_into(heard_b)) as b:
            uri = str((await a.list_resources()).resources[0].uri)
            await a.subscribe_resource(uri)
            await b.subscribe_resource(uri)
            await a.call_tool("toggle-subscriber-updates", {})
            assert await heard_after(heard_a, uri, 0) and await heard_after(heard_b, uri, 0)
            await a.unsubscribe_resource(uri)
            unsubscribed = time.monotonic()
            assert await heard_after(heard_b, uri, unsubscribed), "the other client's updates stopped"
            # The same upstream notification would have reached the first client by now.
            await asyncio.sleep(0.5)
            assert not [t for t, u in heard_a if t > unsubscribed + 0.2], heard_a
            # The last holder's unsubscribe is the server's to hear.
            await b.unsubscribe_resource(uri)
    asyncio.run(use())
    assert g.metric("mcp_requests_total", server="everything", method="resources/unsubscribe",
                    outcome="held_by_others") == 1
    assert g.metric("mcp_requests_total", server="everything", method="resources/unsubscribe",
                    outcome="ok") == 1


def test_a_subscription_outlives_a_restart_of_its_server(gantry):
    from test_resilience import children
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    heard = []

    async def use():
        async with sdk_client(g, path="/mcp/everything", message_handler=updates_into(heard)) as client:
            uri = str((await client.list_resources()).resources[0].uri)
            await client.subscribe_resource(uri)
            os.kill(children(g.proc.pid)[0], signal.SIGKILL)
            await asyncio.to_thread(wait_until, lambda: g.metric("mcp_upstream_up", server="everything") == 1
                                    and g.metric("mcp_upstream_restarts_total", server="everything") == 1,
                                    what="the server restarted")
            restarted = time.monotonic()
            # The new server process knows neither the subscription nor the updates switch.
            await client.call_tool("toggle-subscriber-updates", {})
            assert await heard_after(heard, uri, restarted), "the subscription went with the old process"
    asyncio.run(use())
    assert g.logged("resource subscriptions restored", "everything")


def test_an_aggregate_stream_is_told_its_lists_changed_when_a_server_comes_back(gantry):
    # /mcp leaves a server that is down out of its lists: a client that listed meanwhile
    # learns from its GET stream when the server is back. /mcp/{server} passes through
    # what the server says, and adds nothing.
    from test_resilience import children
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    heard = {"/mcp": [], "/mcp/everything": []}

    async def use():
        async with sdk_client(g, path="/mcp", message_handler=lists_into(heard["/mcp"])), \
                sdk_client(g, path="/mcp/everything", message_handler=lists_into(heard["/mcp/everything"])):
            def get_streams_open():
                return all((g.metric("http_requests_total", method="GET", route=route, status="200") or 0) >= 1
                           for route in ("/mcp", "/mcp/{server}"))
            await asyncio.to_thread(wait_until, get_streams_open, what="both GET streams open")
            os.kill(children(g.proc.pid)[0], signal.SIGKILL)
            await asyncio.to_thread(wait_until, lambda: g.metric("mcp_upstream_restarts_total", server="everything") == 1
                                    and g.metric("mcp_upstream_up", server="everything") == 1,
                                    what="the server restarted")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not {"prompts", "resources"} <= set(heard["/mcp"]):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # what /mcp/{server} would hear of it has come by then
    asyncio.run(use())
    # server-everything announces its tools list itself as it starts; prompts and
    # resources changes come from gantry alone.
    assert {"tools", "prompts", "resources"} <= set(heard["/mcp"]), heard
    assert not {"prompts", "resources"} & set(heard["/mcp/everything"]), heard


def lists_into(log: list):
    """A message handler recording which list each list-changed notification names."""
    async def on_message(message):
        root = getattr(message, "root", message)
        for kind, cls in (("tools", types.ToolListChangedNotification), ("prompts", types.PromptListChangedNotification),
                          ("resources", types.ResourceListChangedNotification)):
            if isinstance(root, cls):
                log.append(kind)
    return on_message


@pytest.mark.parametrize("holder", ["session", "listen stream"])
def test_the_last_holder_leaving_unsubscribes_the_server(gantry, holder):
    # server-everything logs each subscribe and unsubscribe it receives; the log reaches
    # a watching session's GET stream.
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    logged = []

    async def on_log(params):
        logged.append(str(params.data))

    async def until_logged(text):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(text in line for line in logged):
            await asyncio.sleep(0.05)
        assert any(text in line for line in logged), logged

    def hold_and_leave(uri):
        if holder == "session":
            h = subscribed_session(g, uri, "/mcp/everything")
            r = httpx2.delete(g.base + "/mcp/everything", headers={**g.auth(), **h}, timeout=10)
            assert r.status_code in (200, 204), r.text
            return
        body, h = g.modern_request("subscriptions/listen", {"notifications": {"resourceSubscriptions": [uri]}})
        h = {**g.auth(), **h, "Content-Type": "application/json", "Accept": ACCEPT}
        with httpx2.stream("POST", g.base + "/mcp/everything", json=body, headers=h, timeout=30) as r:
            ack = next(r.iter_lines())  # the acknowledgement's first line: subscribed by then
            assert r.status_code == 200 and ack, ack

    async def use():
        async with sdk_client(g, path="/mcp/everything", logging_callback=on_log) as watcher:
            uri = str((await watcher.list_resources()).resources[0].uri)
            await asyncio.to_thread(hold_and_leave, uri)
            await until_logged(f"Received Unsubscribe Resource request: {uri}")
    asyncio.run(use())


@pytest.mark.parametrize("get_stream", ["held before", "opened after"])
def test_a_subscription_taken_on_another_replica_brings_its_updates_to_the_get_stream(
        gantry, redis_prefix, get_stream):
    # After a rescale nginx sends a session's requests to another replica than the one
    # still holding its GET stream, or the GET stream comes back on another one. Each
    # replica has a server process of its own.
    a, b, session = replicas_sharing_redis(gantry, redis_prefix, "everything", everything_stdio())
    listed = a.post({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}, path="/mcp/everything", headers=session)
    uri = listed.json()["result"]["resources"][0]["uri"]

    def subscribe_on_b():
        body = {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri}}
        assert b.post(body, path="/mcp/everything", headers=session).json()["result"] == {}

    def read_get_stream():
        return StreamReader(a, "GET", "/mcp/everything", {**session, "Accept": "text/event-stream"})

    if get_stream == "held before":
        stream = read_get_stream()
        assert stream.primed.wait(10), "the GET stream's priming event"
        subscribe_on_b()
    else:
        subscribe_on_b()
        stream = read_get_stream()
    toggle = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
              "params": {"name": "toggle-subscriber-updates", "arguments": {}}}
    assert "result" in a.post(toggle, path="/mcp/everything", headers=session).json()
    stream.next("notifications/resources/updated", uri)
    # Let go of on b: a's server hears of it too (and logs it on the stream).
    body = {"jsonrpc": "2.0", "id": 4, "method": "resources/unsubscribe", "params": {"uri": uri}}
    assert b.post(body, path="/mcp/everything", headers=session).json()["result"] == {}
    stream.next("notifications/message", f"Received Unsubscribe Resource request: {uri}")
    stream.done.set()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize("holder", ["session", "listen stream"])
def test_streams_and_subscriptions_follow_a_server_the_registry_replaces(control_plane, holder):
    # A registered server restarted from the API (as any change of its settings) is
    # replaced by a new instance: a client's open stream, and the subscription it holds,
    # must go on with the new one.
    from conftest import new_key
    g, api = control_plane()
    admin = api.login()["access_token"]
    g.key = new_key(api, admin)  # a registered server is its tenant's: the tenant's key calls it
    made = api.request("POST", "/v1/servers", token=admin,
                       json_body={"name": "everything", "settings": everything_stdio()})
    assert made.status_code == 201, made.text
    server = f"/v1/servers/{made.json()['id']}"

    def health():
        return api.request("GET", server + "/health", token=admin).json()
    wait_until(lambda: health().get("status") == "up", what="the registered server up")
    uri = g.modern("resources/list", path="/mcp/everything").json()["result"]["resources"][0]["uri"]
    if holder == "session":
        session = subscribed_session(g, uri, "/mcp/everything")
        stream = StreamReader(g, "GET", "/mcp/everything", {**session, "Accept": "text/event-stream"})
    else:
        body, h = g.modern_request("subscriptions/listen", {"notifications": {"resourceSubscriptions": [uri]}})
        stream = StreamReader(g, "POST", "/mcp/everything", {**h, "Content-Type": "application/json", "Accept": ACCEPT},
                              body)

    def toggle_and_hear():
        g.modern("tools/call", {"name": "toggle-subscriber-updates", "arguments": {}}, path="/mcp/everything")
        stream.next("notifications/resources/updated", uri)
    toggle_and_hear()

    assert api.request("POST", server + "/restart", token=admin).status_code == 202
    wait_until(lambda: health().get("version") == 2 and health().get("status") == "up",
               what="the replacing instance up")
    # The new process knows neither the subscription nor the updates switch; what the
    # old one sent is passed over.
    stream.drain()
    toggle_and_hear()
    assert g.logged("resource subscriptions restored", "everything")


def test_a_session_holds_a_bounded_number_of_subscriptions(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    sid, _ = g.initialize(path="/mcp/everything")
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}

    def ask(method, n):
        body = {"jsonrpc": "2.0", "id": n, "method": method, "params": {"uri": f"demo://resource/{n}"}}
        return g.post(body, path="/mcp/everything", headers=h).json()
    for n in range(256):
        assert ask("resources/subscribe", n)["result"] == {}, n
    refused = ask("resources/subscribe", 256)["error"]
    assert refused["code"] == -32602 and "256 resource subscriptions" in refused["message"], refused
    assert ask("resources/subscribe", 255)["result"] == {}, "one held already is no new one"
    assert ask("resources/unsubscribe", 0)["result"] == {}
    assert ask("resources/subscribe", 256)["result"] == {}


def test_a_listen_stream_naming_too_many_resources_is_refused(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    for uris, why in (([f"demo://resource/{n}" for n in range(257)], "names more than 256 resources"),
                      ("demo://resource/1", "must be an array")):
        body, h = g.modern_request("subscriptions/listen", {"notifications": {"resourceSubscriptions": uris}})
        h = {**g.auth(), **h, "Content-Type": "application/json", "Accept": ACCEPT}
        # Streamed: a listen that is taken never ends.
        with httpx2.stream("POST", g.base + "/mcp/everything", json=body, headers=h, timeout=30) as r:
            assert r.status_code == 400, r.headers
            error = json.loads(r.read())["error"]
        assert error["code"] == -32602 and why in error["message"], error


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
    for msg in streamed_messages(g.base + "/mcp/everything", body, headers, timeout=20):
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


# A client's answer to a sampling request, without its id.
SAMPLED = {"jsonrpc": "2.0", "result": {"role": "assistant", "content": {"type": "text", "text": "ok"}, "model": "m"}}


def _chatty_and_another_key(gantry):
    """gantry in front of the chatty upstream, with a second API key besides the test's:
    the gantry, that key, and the headers of a session the test key opened (able to
    answer sampling)."""
    other = "gty_" + secrets.token_urlsafe(32)
    g = gantry({"upstreams": {"chatty": chatty_stdio()},
                "auth": {"api_keys": [{"name": "other", "sha256": hashlib.sha256(other.encode()).hexdigest()}]}})
    sid, _ = g.initialize(path="/mcp/chatty", capabilities={"sampling": {}})
    return g, other, {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}


def _asking_on(g, session=None):
    """A session on `g` able to answer sampling (`session`, or a new one), and the messages
    of its call (id 5) of the chatty upstream's `ask`, which sends one sampling request and
    waits for its answer."""
    if session is None:
        sid, _ = g.initialize(path="/mcp/chatty", capabilities={"sampling": {}})
        session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask", "arguments": {"count": 1}}}
    headers = {**g.auth(), **session, "Content-Type": "application/json", "Accept": ACCEPT}
    return session, streamed_messages(g.base + "/mcp/chatty", body, headers)


def _outcome_answering(asking, answer) -> dict:
    """Reads the messages of `ask` (see `_asking_on`), handing each sampling request to
    `answer`; what the call says of how they were answered."""
    for msg in asking:
        if msg.get("method") == "sampling/createMessage":
            answer(msg)
        elif msg.get("id") == 5:
            return json.loads(msg["result"]["content"][0]["text"])
    raise AssertionError("the call's stream ended without its answer")


def test_only_the_client_a_server_request_was_relayed_to_can_answer_it(gantry):
    g, other, session = _chatty_and_another_key(gantry)
    r = g.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"sampling": {}}, "clientInfo": {"name": "other", "version": "1"}}},
        path="/mcp/chatty", headers={"Authorization": f"Bearer {other}"})
    other_session = {"Authorization": f"Bearer {other}", "Mcp-Session-Id": r.headers["mcp-session-id"],
                     "MCP-Protocol-Version": "2025-11-25"}
    forged = {"jsonrpc": "2.0", "error": {"code": -1, "message": "forged by another caller"}}

    def answer(request):
        # Another caller that learned the id, with or without a session of its own,
        # and this caller outside the session the request was relayed on: refused,
        # as if no such request were pending, and the request still waits.
        for who in ({"Authorization": f"Bearer {other}"}, other_session, {}):
            refused = g.post({**forged, "id": request["id"]}, path="/mcp/chatty", headers=who)
            assert refused.status_code in (400, 404), (who.keys(), refused.status_code, refused.text)
            assert "no pending server request" in refused.text or "Session" in refused.text, refused.text
        accepted = g.post({**SAMPLED, "id": request["id"]}, path="/mcp/chatty", headers=session)
        assert accepted.status_code == 202, accepted.text

    outcome = _outcome_answering(_asking_on(g, session)[1], answer)
    assert (outcome["answered"], outcome["declined"]) == (1, 0), outcome


def test_an_answer_that_reaches_another_replica_is_carried_to_the_one_whose_server_asked(gantry):
    # After a rescale nginx hashes a session to another replica than before: the answer to
    # a request relayed by the first lands on the second, whose upstream asked nothing.
    a, b, other = two_replicas(gantry)
    session, asking = _asking_on(a)

    def answer_on_b(request):
        assert "127.0.0.1" not in request["id"], "the replica's address is sealed in the id"
        # Carried, and refused there as there: only this session may answer.
        forged = b.post({**SAMPLED, "id": request["id"]}, path="/mcp/chatty", headers=other)
        assert forged.status_code == 400 and "no pending server request" in forged.text, forged.text
        accepted = b.post({**SAMPLED, "id": request["id"]}, path="/mcp/chatty", headers=session)
        assert accepted.status_code == 202, accepted.text

    outcome = _outcome_answering(asking, answer_on_b)
    assert (outcome["answered"], outcome["declined"]) == (1, 0), outcome
    assert b.metric("mcp_requests_forwarded_total", held="server_request", outcome="forwarded") == 2


def test_an_answer_for_a_replica_that_is_gone_is_refused_clearly(gantry):
    a, b, _ = two_replicas(gantry)
    session, asking = _asking_on(a)
    asked = next(m for m in asking if m.get("method") == "sampling/createMessage")
    asking.close()
    a.stop()
    refused = b.post({**SAMPLED, "id": asked["id"]}, path="/mcp/chatty", headers=session)
    assert refused.status_code == 400, refused.text
    assert "another gateway replica, which could not be reached" in refused.json()["error"]["message"]
    assert b.metric("mcp_requests_forwarded_total", held="server_request", outcome="unreachable") == 1


def test_a_server_request_on_a_get_stream_is_answered_by_that_session_alone(gantry):
    g, other, session = _chatty_and_another_key(gantry)
    second, _ = g.initialize(path="/mcp/chatty", capabilities={"sampling": {}})
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers={**g.auth(), **session, "Accept": "text/event-stream"},
                       timeout=30) as stream:
        assert stream.status_code == 200
        body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "ask_later",
                                                                             "arguments": {"count": 1}}}
        assert g.post(body, path="/mcp/chatty", headers=session).json()["result"]["content"][0]["text"] == "asking"
        deadline = time.monotonic() + 20  # the stream's keep-alives come every 15 s
        # Answered while the stream is read: a client that leaves its stream leaves its
        # requests to be declined for it.
        for line in stream.iter_lines():
            assert time.monotonic() < deadline, "no request relayed on the GET stream"
            # (An empty data line is the stream's priming event: an id, no message.)
            if not (line.startswith("data: ") and line[6:] and json.loads(line[6:]).get("method") == "sampling/createMessage"):
                continue
            request_id = json.loads(line[6:])["id"]
            # Another key, and the same key on another of its sessions: refused.
            for who in ({"Authorization": f"Bearer {other}"},
                        {"Mcp-Session-Id": second, "MCP-Protocol-Version": "2025-11-25"}):
                refused = g.post({**SAMPLED, "id": request_id}, path="/mcp/chatty", headers=who)
                assert refused.status_code == 400 and "no pending server request" in refused.text, refused.text
            accepted = g.post({**SAMPLED, "id": request_id}, path="/mcp/chatty", headers=session)
            assert accepted.status_code == 202, accepted.text
            break
    wait_until(lambda: g.logged("later: ", upstream="chatty"), what="the request answered")
    [said] = [json.loads(l)["message"] for l in g.logs().splitlines() if "later: " in l]
    outcome = json.loads(said[said.index("later: ") + len("later: "):])
    assert (outcome["answered"], outcome["declined"]) == (1, 0), outcome


def test_server_request_ids_relayed_to_clients_cannot_be_guessed(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty", capabilities={"sampling": {}})
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask", "arguments": {"count": 3}}}
    headers = {**g.auth(), **session, "Content-Type": "application/json", "Accept": ACCEPT}
    ids = []
    for msg in streamed_messages(g.base + "/mcp/chatty", body, headers):
        if msg.get("method") == "sampling/createMessage":
            ids.append(msg["id"])
            if len(ids) == 3:
                for i in ids:
                    g.post({**SAMPLED, "id": i}, path="/mcp/chatty", headers=session)
        elif msg.get("id") == 5:
            break
    # Each id carries at least 96 random bits: no shared stem longer than the server's name.
    assert len(set(ids)) == 3
    for a, b in ((ids[0], ids[1]), (ids[1], ids[2])):
        common = len(os.path.commonprefix([a, b]))
        assert len(a) - common >= 24, (a, b)

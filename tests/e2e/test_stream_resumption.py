"""A client that loses a session's event stream takes it up again (2025-11-25,
"Resumability and Redelivery"): every event carries an id, a GET naming the last one it got
delivers what it missed and what came meanwhile, and the call went on while it was away.
Only that session may resume the stream, and only for `server.stream_resume_secs` (a stream
delivered to its end included: its last events may have died with the connection)."""

import asyncio
import json
import time

import httpx2
import pytest

from conftest import ACCEPT, wait_until
from test_mrtr import two_replicas
from test_slow_clients import chatty_stdio


def events(lines):
    """The events of an SSE body, as {"id", "data"}; comments (keep-alives) skipped."""
    event = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value[1:] if value.startswith(" ") else value


def flood(count: int, pause_ms: int, id=7) -> dict:
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "flood", "arguments": {"count": count, "burst": 1, "pause_ms": pause_ms},
        "_meta": {"progressToken": "p"}}}


def progress_of(got: list[dict]) -> list[int]:
    messages = [json.loads(e["data"]) for e in got if e.get("data")]
    return [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"]


def start_call(g, session: dict, body: dict, messages: int) -> list[dict]:
    """POSTs `body`, reads its stream until `messages` messages came, and drops the connection."""
    got = []
    headers = {**g.auth(), **session, "Content-Type": "application/json", "Accept": ACCEPT}
    with httpx2.stream("POST", g.base + "/mcp/chatty", content=json.dumps(body), headers=headers, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.read()
        for event in events(r.iter_lines()):
            got.append(event)
            if sum(1 for e in got if e.get("data")) == messages:
                break
    return got


def resume(g, session: dict, last_event_id: str, until_id=7) -> list[dict]:
    """GETs the stream from after `last_event_id` until the answer to `until_id` (or 20 s:
    keep-alives would hold a stream that never brings it open for ever)."""
    got = []
    headers = {**g.auth(), **session, "Accept": "text/event-stream", "Last-Event-ID": last_event_id}
    deadline = time.monotonic() + 20
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for event in events(r.iter_lines()):
            got.append(event)
            if event.get("data") and json.loads(event["data"]).get("id") == until_id:
                break
            assert time.monotonic() < deadline, f"no answer on the resumed stream: {got}"
    return got


def refused(g, session: dict, last_event_id: str) -> str:
    headers = {**g.auth(), **session, "Accept": "text/event-stream", "Last-Event-ID": last_event_id}
    r = httpx2.get(g.base + "/mcp/chatty", headers=headers, timeout=10)
    assert r.status_code == 400, (r.status_code, r.text)
    return r.json()["error"]["message"]


def log_while_away(g, session: dict, count: int):
    """Has the upstream send `count` log messages outside any call while the session's
    client has no GET stream open, and waits until it sent them."""
    r = g.post({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                "params": {"name": "log_later", "arguments": {"count": count, "size": 0}}},
               path="/mcp/chatty", headers=session)
    assert r.json()["result"]["content"][0]["text"] == "logging"
    wait_until(lambda: g.logged("logs sent", upstream="chatty"), what="the upstream's logs")


def logs_resumed(g, session: dict, last_event_id: str, count: int) -> list[int]:
    """Resumes the session's GET stream on `g` after `last_event_id`; the numbers of the
    first `count` log messages it brings (fewer if 20 s pass)."""
    headers = {**g.auth(), **session, "Accept": "text/event-stream", "Last-Event-ID": last_event_id}
    got = []
    deadline = time.monotonic() + 20  # keep-alives come every 15 s
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for event in events(r.iter_lines()):
            message = json.loads(event["data"]) if event.get("data") else {}
            if message.get("method") == "notifications/message":
                got.append(message["params"]["data"]["n"])
            if len(got) == count or time.monotonic() > deadline:
                break
    return got


@pytest.mark.parametrize("version", ["2025-11-25", "2025-06-18"])
def test_a_client_that_loses_a_calls_stream_resumes_it_and_nothing_is_lost(gantry, version):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty", version=version)
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": version}
    before = start_call(g, session, flood(10, pause_ms=150), messages=3)
    if version == "2025-11-25":
        # The priming event: an id before any message, and an empty data line.
        assert before[0].get("id") and before[0].get("data") == "", before[0]
    else:
        assert all(e.get("data") for e in before), "no priming event for clients before 2025-11-25"
    after = resume(g, session, before[-1]["id"])
    got = before + after
    assert all(e.get("id") for e in got), "every event carries an id"
    assert len({e["id"] for e in got}) == len(got), "ids are unique"
    assert progress_of(got) == list(range(1, 11)), "every notification once, in order"
    answer = json.loads(after[-1]["data"])
    assert answer["result"]["content"][0]["text"] == "flooded 10", "the call went on while the client was away"
    assert g.metric("mcp_stream_resumptions_total", outcome="resumed") == 1


def test_a_get_stream_keeps_what_came_while_its_client_was_away(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    headers = {**g.auth(), **session, "Accept": "text/event-stream"}
    # The priming event comes at once (a read timeout below the keep-alives' 15 s says if not).
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers=headers, timeout=httpx2.Timeout(30, read=5)) as r:
        priming = next(events(r.iter_lines()))
    assert priming.get("id") and priming.get("data") == ""
    log_while_away(g, session, count=5)
    assert logs_resumed(g, session, priming["id"], count=5) == [0, 1, 2, 3, 4]


def primed_get_stream(g, session: dict) -> dict:
    """Opens the session's GET stream on `g`, takes its priming event and drops it."""
    headers = {**g.auth(), **session, "Accept": "text/event-stream"}
    # The priming event comes at once (a read timeout below the keep-alives' 15 s says if not).
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers=headers, timeout=httpx2.Timeout(30, read=5)) as r:
        assert r.status_code == 200, r.read()
        return next(events(r.iter_lines()))


def test_a_stream_resumed_on_another_replica_is_carried_from_the_one_holding_it(gantry):
    # After a rescale nginx hashes a session to another replica than before: a client that
    # lost its stream resumes it there.
    a, b, _ = two_replicas(gantry)
    sid, _ = a.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    before = start_call(a, session, flood(10, pause_ms=150), messages=3)
    assert not any("127.0.0.1" in e["id"] for e in before), "the replica's address is sealed in the ids"
    after = resume(b, session, before[-1]["id"])
    got = before + after
    assert progress_of(got) == list(range(1, 11)), "every notification once, in order"
    assert json.loads(after[-1]["data"])["result"]["content"][0]["text"] == "flooded 10"
    assert a.metric("mcp_stream_resumptions_total", outcome="resumed") == 1, "resumed where it was held"
    assert b.metric("mcp_requests_forwarded_total", held="stream", outcome="forwarded") == 1

    # A GET stream too: what came while its client was away comes through the other replica.
    priming = primed_get_stream(a, session)
    log_while_away(a, session, count=3)
    assert logs_resumed(b, session, priming["id"], count=3) == [0, 1, 2]
    assert a.metric("mcp_stream_resumptions_total", outcome="resumed") == 2
    assert b.metric("mcp_requests_forwarded_total", held="stream", outcome="forwarded") == 2
    assert not b.metric("mcp_stream_resumptions_total", outcome="resumed"), "b resumed nothing itself"


def test_a_get_stream_a_gone_gateway_process_held_is_opened_anew(gantry):
    # A replica that stopped (or restarted) took its streams with it; the session goes on
    # (its id is sealed) on another.
    old, new, _ = two_replicas(gantry)
    sid, _ = old.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    priming = primed_get_stream(old, session)
    old.stop()
    headers = {**new.auth(), **session, "Accept": "text/event-stream", "Last-Event-ID": priming["id"]}
    with httpx2.stream("GET", new.base + "/mcp/chatty", headers=headers, timeout=httpx2.Timeout(30, read=5)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.read()
        fresh = next(events(r.iter_lines()))
    assert fresh.get("id") and fresh["id"] != priming["id"] and fresh.get("data") == "", "a new stream, primed"
    assert new.metric("mcp_stream_resumptions_total", outcome="restarted") == 1
    assert new.metric("mcp_requests_forwarded_total", held="stream", outcome="unreachable") == 1
    # A call's stream is another matter: its answer is lost, and the client must hear so.
    call_id = "c" + priming["id"][1:]
    assert "the gateway replica holding it is gone" in refused(new, session, call_id)


def test_only_the_streams_own_session_resumes_it_and_bad_ids_are_refused_clearly(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    mine = g.initialize(path="/mcp/chatty")[0]
    theirs = g.initialize(path="/mcp/chatty")[0]
    session = {"Mcp-Session-Id": mine, "MCP-Protocol-Version": "2025-11-25"}
    other = {"Mcp-Session-Id": theirs, "MCP-Protocol-Version": "2025-11-25"}

    # A stream delivered to its end is kept too: the connection (or a proxy) may have
    # taken the last events and died with them.
    done = start_call(g, session, flood(2, pause_ms=0, id=5), messages=3)
    assert json.loads(done[-1]["data"])["id"] == 5
    first_progress = next(e for e in done if e.get("data"))
    again = resume(g, session, first_progress["id"], until_id=5)
    assert progress_of(again) == [2] and json.loads(again[-1]["data"])["id"] == 5

    before = start_call(g, session, flood(10, pause_ms=150), messages=2)
    last = before[-1]["id"]
    assert "no stream of this session has it" in refused(g, other, last), "another session's stream"
    # A mark this gateway did not seal (forged, or another deployment's) names no replica:
    # the id is answered here, never carried anywhere.
    forged_mark = "c0000000000000000-1." + "A" * 46
    for bad in ("garbage", "0-1", last.split("-")[0] + "-99999", forged_mark):
        message = refused(g, session, bad)
        assert "cannot resume from Last-Event-ID" in message, message
    assert not g.metric("mcp_requests_forwarded_total"), "nothing carried to another replica"
    # Still there for its own session, whole.
    got = before + resume(g, session, last)
    assert progress_of(got) == list(range(1, 11))
    assert g.metric("mcp_stream_resumptions_total", outcome="refused") == 5


def test_a_stream_nobody_resumes_in_time_cancels_its_call(gantry):
    g = gantry({"server": {"stream_resume_secs": 1}, "upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    before = start_call(g, session, flood(100, pause_ms=100), messages=1)
    wait_until(lambda: g.metric("mcp_requests_total", server="chatty", method="tools/call",
                                outcome="cancelled") == 1, what="the call cancelled")
    assert "no stream of this session has it" in refused(g, session, before[-1]["id"])
    assert g.metric("mcp_stream_resumptions_total", outcome="expired") == 1


def test_ending_the_session_ends_the_stream_it_left(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    before = start_call(g, session, flood(100, pause_ms=100), messages=1)
    # The call goes on without its client: a resumption finds it still sending.
    headers = {**g.auth(), **session, "Accept": "text/event-stream", "Last-Event-ID": before[-1]["id"]}
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers=headers, timeout=httpx2.Timeout(30, read=5)) as r:
        assert r.status_code == 200
        assert progress_of([next(events(r.iter_lines()))]) == [2]
    r = httpx2.delete(g.base + "/mcp/chatty", headers={**g.auth(), **session}, timeout=10)
    assert r.status_code == 204
    wait_until(lambda: g.metric("mcp_requests_total", server="chatty", method="tools/call",
                                outcome="cancelled") == 1, what="the call cancelled")


async def cutting_proxy(target: str, marker: bytes, after: int):
    """A TCP proxy to `target` that cuts the first connection on which the server has sent
    `marker` `after` times, as a network failure would; `cut` tells whether it did."""
    host, port = target.rsplit(":", 1)
    state = {"cut": False}

    async def handle(client_r, client_w):
        server_r, server_w = await asyncio.open_connection(host, int(port))

        async def pump(src, dst, watch):
            seen = 0
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                    if watch and not state["cut"]:
                        seen += data.count(marker)
                        if seen >= after:
                            state["cut"] = True
                            break
            finally:
                for w in (client_w, server_w):
                    w.close()

        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, state


def test_the_python_sdk_rides_out_a_connection_cut_mid_call(gantry):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    g = gantry({"upstreams": {"chatty": chatty_stdio()}})

    async def run():
        proxy, state = await cutting_proxy(g.addr, b'"notifications/progress"', after=3)
        port = proxy.sockets[0].getsockname()[1]
        progress = []

        async def on_progress(value, total, message):
            progress.append(int(value))

        async with proxy:
            http = httpx2.AsyncClient(headers=g.auth(), timeout=httpx2.Timeout(60.0))
            async with http:
                transport = streamable_http_client(f"http://127.0.0.1:{port}/mcp/chatty", http_client=http)
                async with Client(transport, mode="legacy") as client:
                    result = await client.call_tool(
                        "flood", {"count": 10, "burst": 1, "pause_ms": 150}, progress_callback=on_progress)
        return state["cut"], progress, result

    cut, progress, result = asyncio.run(run())
    assert cut, "the proxy cut the call's connection"
    assert result.content[0].text == "flooded 10"
    assert progress == list(range(1, 11))

"""Clients that read their answers slowly or not at all, in front of an upstream that sends
faster than they read: gantry's memory stays bounded, the upstream's slot is given back
when the upstream is done, and what reaches the client is whole, in order, and accounted
for."""

import http.client
import json
import socket
import sys
import time
from pathlib import Path

import httpx2

from conftest import ACCEPT, streamed_messages, wait_until

CHATTY = Path(__file__).parent / "chatty_upstream.py"


def chatty_stdio(**extra) -> dict:
    return {"transport": "stdio", "command": sys.executable, "args": [str(CHATTY)], **extra}


def flood_params(count: int, **pacing) -> dict:
    return {"name": "flood", "arguments": {"count": count, **pacing}, "_meta": {"progressToken": "p"}}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def sse_events(body: bytes) -> list[dict]:
    # An empty data line is a stream's priming event (an id, no message).
    return [json.loads(line[len(b"data: "):]) for line in body.splitlines() if line.startswith(b"data: ") and line[6:]]


def progress_of(messages: list[dict]) -> list[int]:
    return [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"]


def stalled_request(g, body: dict, headers: dict, path: str, rcvbuf: int | None = 4096) -> socket.socket:
    """Sends a request on a connection, by default one whose receive buffer is small, and
    reads nothing."""
    host, port = g.addr.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    payload = json.dumps(body).encode()
    head = {"Host": g.addr, "Content-Type": "application/json", "Accept": ACCEPT,
            "Content-Length": str(len(payload)), **g.auth(), **headers}
    request = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    sock.sendall(request.encode() + payload)
    return sock


def test_a_flood_larger_than_the_backlog_reaches_a_client_that_keeps_up_whole_and_in_order(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    # About 9 MB of notifications, twice the per-call backlog, in bursts of 150 kB: the
    # backlog bounds what waits for the client, not what passes through to it.
    count = 60_000
    r = g.modern("tools/call", flood_params(count, burst=1_000, pause_ms=20), path="/mcp/chatty",
                 timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    messages = sse_events(r.content)
    assert progress_of(messages) == list(range(1, count + 1))
    assert all(m["params"]["progressToken"] == "p" for m in messages[:-1]), "the client's own token"
    assert messages[-1]["result"]["content"][0]["text"] == f"flooded {count}"
    assert g.metric("mcp_notifications_dropped_total", server="chatty") == 0


def test_a_caller_that_gives_no_progress_token_gets_no_progress(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    # `_meta` without a token: the upstream (which sends progress only when given a token)
    # must not be handed one, nor the client get progress it cannot tell apart.
    params = {"name": "flood", "arguments": {"count": 5}, "_meta": {"trace": "t-1"}}
    r = g.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}, path="/mcp/chatty",
               headers=session)
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    assert r.json()["result"]["content"][0]["text"] == "flooded 5"


def test_a_client_that_stops_reading_costs_bounded_memory_holds_no_slot_and_still_gets_its_answer(gantry):
    # One slot: a call that kept it until its client read would block every other call.
    g = gantry({"upstreams": {"chatty": chatty_stdio(max_concurrency=1, timeout_secs=20)}})
    assert g.modern("tools/call", flood_params(10), path="/mcp/chatty").status_code == 200
    before = rss_kib(g.proc.pid)
    count = 200_000  # about 30 MB of notifications, sent in one burst
    body, headers = g.modern_request("tools/call", flood_params(count), id=7)
    sock = stalled_request(g, body, headers, "/mcp/chatty")
    try:
        # The upstream answers while the client reads nothing: the call is settled then,
        # and what did not fit the client's backlog was dropped and counted.
        wait_until(lambda: (g.metric("mcp_requests_total", server="chatty", method="tools/call",
                                     outcome="ok") or 0) >= 2,
                   timeout=60, what="the flooded call settled while its client reads nothing")
        dropped = g.metric("mcp_notifications_dropped_total", server="chatty")
        assert dropped and dropped > count / 2, dropped
        grown_mib = (rss_kib(g.proc.pid) - before) / 1024
        assert grown_mib < 64, f"gantry grew by {grown_mib:.0f} MiB for a client that reads nothing"
        # The upstream's one slot is free again while that client still reads nothing.
        r = g.modern("tools/call", flood_params(3), path="/mcp/chatty", id=8, timeout=15)
        assert sse_events(r.content)[-1]["result"]["content"][0]["text"] == "flooded 3"

        # The client reads at last: what was kept, in order, then the answer.
        sock.settimeout(30)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        messages = sse_events(response.read())
    finally:
        sock.close()
    assert messages[-1]["id"] == 7
    assert messages[-1]["result"]["content"][0]["text"] == f"flooded {count}"
    progress = progress_of(messages)
    assert progress[0] == 1 and progress == sorted(progress), "a gap, never a shuffle"
    assert len(progress) + dropped == count, "every notification was delivered or counted"
    assert g.logged("notifications were dropped", upstream="chatty")


def read_rest(sock: socket.socket) -> bytes:
    """What the connection still brings: up to the end of the chunked answer, or until
    gantry closes the connection."""
    sock.settimeout(30)
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_client_that_takes_none_of_its_answer_is_cut_off_but_a_slow_reader_is_not(gantry):
    g = gantry({"server": {"response_write_timeout_secs": 3}, "upstreams": {"chatty": chatty_stdio()}})
    assert g.metric("http_connections_timed_out_total", timeout="write") == 0, "shown from the start"
    # 15 MB of notifications per call, paced so that gantry's writes fill the kernel's
    # buffers (megabytes) as well as the backlog: a stalled client then blocks gantry's
    # writes, rather than having its whole answer sit in the kernel.
    flood = flood_params(100_000, burst=1_000, pause_ms=20)
    body, headers = g.modern_request("tools/call", flood, id=7)
    stalled = stalled_request(g, body, headers, "/mcp/chatty")
    body, headers = g.modern_request("tools/call", flood, id=8)
    slow = stalled_request(g, body, headers, "/mcp/chatty", rcvbuf=None)
    try:
        # The slow client takes 64 kB every 30 ms, less than gantry sends. The kernel lets
        # gantry write again only once a good part of its send buffer has drained, so
        # "takes bytes" means about a megabyte per timeout, as for nginx's send_timeout.
        slow.settimeout(10)
        received = b""
        started, cut = time.monotonic(), None
        while not received.endswith(b"\r\n0\r\n\r\n") and time.monotonic() - started < 60:
            received += slow.recv(65536)
            time.sleep(0.03)
            if cut is None and g.metric("http_connections_timed_out_total", timeout="write"):
                cut = time.monotonic()
        if cut is None:
            wait_until(lambda: g.metric("http_connections_timed_out_total", timeout="write"),
                       timeout=30, what="the client that takes nothing cut off")
        assert g.metric("http_connections_timed_out_total", timeout="write") == 1, \
            "the client that took nothing, and only that one, was cut off"
        assert received.startswith(b"HTTP/1.1 200")
        assert b'"text":"flooded 100000"' in received, "the slow reader got its answer"
        assert time.monotonic() - started > 3, "the slow reader was slow for longer than the timeout"

        # The stalled client finds its answer cut short: the connection closed under it.
        cut = read_rest(stalled)
        assert cut.startswith(b"HTTP/1.1 200") and b"flooded" not in cut
    finally:
        stalled.close()
        slow.close()
    assert "closed a connection that waited on its client" in g.logs()


def test_server_requests_past_the_bound_are_declined_for_a_client_that_has_not_answered_yet(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty", capabilities={"sampling": {}})
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask", "arguments": {"count": 100}}}
    headers = {**g.auth(), **session, "Content-Type": "application/json", "Accept": ACCEPT}
    waiting, result = [], None
    # The upstream sends 100 sampling requests at once and waits for an answer to each.
    # The client answers none until it holds the 64 the gateway lets wait at a time
    # (README): the other 36 are answered for it with an error, so the upstream is not
    # left waiting, and the call goes on.
    for msg in streamed_messages(g.base + "/mcp/chatty", body, headers):
        if msg.get("method") == "sampling/createMessage":
            waiting.append(msg["id"])
            if len(waiting) == 64:
                for request_id in waiting:
                    answer = g.post({"jsonrpc": "2.0", "id": request_id, "result": {
                        "role": "assistant", "content": {"type": "text", "text": "ok"}, "model": "m"}},
                        path="/mcp/chatty", headers=session)
                    assert answer.status_code == 202, answer.text
        elif msg.get("id") == 5:
            result = msg
            break
    assert len(waiting) == 64, f"{len(waiting)} requests relayed"
    outcome = json.loads(result["result"]["content"][0]["text"])
    assert (outcome["answered"], outcome["declined"]) == (64, 36), outcome
    [reason] = outcome["reasons"]
    assert "64" in reason and "wait for the client" in reason, reason
    assert g.logged("gantry declined them for it", upstream="chatty")


def test_server_requests_for_a_client_that_stops_reading_are_declined_past_the_backlog(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio(timeout_secs=3)}})
    sid, _ = g.initialize(path="/mcp/chatty", capabilities={"sampling": {}})
    before = rss_kib(g.proc.pid)
    # 60 requests of 1 MB: under the count bound, 15 times the 4 MiB backlog.
    body = {"jsonrpc": "2.0", "id": 6, "method": "tools/call",
            "params": {"name": "ask", "arguments": {"count": 60, "size": 1_000_000}}}
    sock = stalled_request(g, body, {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}, "/mcp/chatty")
    try:
        # The upstream waits for answers the client never sends: the call times out, and
        # the relay then logs what it declined.
        wait_until(lambda: g.logged("gantry declined them for it", upstream="chatty"), what="the declines logged")
        grown = rss_kib(g.proc.pid) - before
    finally:
        sock.close()
    [line] = [json.loads(l) for l in g.logs().splitlines() if "gantry declined them for it" in l]
    # The backlog holds 4 MiB: four of these requests, and a fifth takes it past; what the
    # connection's buffers took off the queue before they filled let a few more in.
    assert 45 <= line["declined"] <= 55, line
    assert g.metric("mcp_server_requests_declined_total", server="chatty") == line["declined"]
    assert grown < 40 * 1024, f"gantry grew by {grown} KiB for 60 MB of requests"


def test_server_requests_outside_calls_are_bounded_counted_and_answered_when_the_client_leaves(gantry):
    # A client that leaves has `stream_resume_secs` to come back for its stream; this one
    # never does.
    g = gantry({"server": {"stream_resume_secs": 1}, "upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty", capabilities={"sampling": {}})
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    headers = {**g.auth(), **session, "Accept": "text/event-stream"}
    relayed = []
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        # 100 sampling requests that belong to no call travel on the session's GET
        # stream; its client answers none of them.
        body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "ask_later",
                                                                             "arguments": {"count": 100}}}
        assert g.post(body, path="/mcp/chatty", headers=session).json()["result"]["content"][0]["text"] == "asking"
        deadline = time.monotonic() + 20  # the stream's keep-alives come every 15 s
        for line in stream.iter_lines():
            if line.startswith("data: ") and line[6:] and json.loads(line[6:]).get("method") == "sampling/createMessage":
                relayed.append(line)
            if len(relayed) == 64 or time.monotonic() > deadline:
                break
        assert len(relayed) == 64, f"{len(relayed)} requests relayed"
        wait_until(lambda: g.metric("mcp_server_requests_declined_total", server="chatty") == 36,
                   what="the requests past the 64 waiting declined and counted")
    # The client has gone for good: the 64 it held are answered for it, so the upstream
    # waits on nothing.
    wait_until(lambda: g.logged("later: ", upstream="chatty"), what="every request answered")
    [said] = [json.loads(l)["message"] for l in g.logs().splitlines() if "later: " in l]
    outcome = json.loads(said[said.index("later: ") + len("later: "):])
    assert (outcome["answered"], outcome["declined"]) == (0, 100), outcome
    assert len(outcome["reasons"]) == 2 and any("stream ended" in r for r in outcome["reasons"]), outcome
    # One log line for the stream, with the count, not one per request.
    wait_until(lambda: g.logged("gantry declined them for it", upstream="chatty"), what="the declines logged")
    [line] = [json.loads(l) for l in g.logs().splitlines() if "gantry declined them for it" in l]
    assert (line["declined"], line["method"]) == (36, "GET"), line


def test_a_burst_outside_calls_reaches_a_get_stream_that_keeps_up_whole_and_in_order(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    count, got = 5000, []
    with httpx2.stream("GET", g.base + "/mcp/chatty", headers={**g.auth(), **session, "Accept": "text/event-stream"},
                       timeout=30) as stream:
        assert stream.status_code == 200
        # The upstream writes them all at once: gantry reads many per pipe read, and the
        # stream must get its turn while they are routed, not find them gone.
        r = g.post({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                    "params": {"name": "log_later", "arguments": {"count": count, "size": 0}}},
                   path="/mcp/chatty", headers=session)
        assert r.json()["result"]["content"][0]["text"] == "logging"
        deadline = time.monotonic() + 20  # the stream's keep-alives come every 15 s
        for line in stream.iter_lines():
            if line.startswith("data: ") and line[6:]:
                msg = json.loads(line[6:])
                if msg.get("method") == "notifications/message":
                    got.append(msg["params"]["data"]["n"])
            if len(got) == count or time.monotonic() > deadline:
                break
    assert got == list(range(count)), f"{len(got)} of {count} received"
    assert g.metric("mcp_notifications_dropped_total", server="chatty") == 0


def test_a_get_stream_whose_client_stops_reading_costs_bounded_memory(gantry):
    # The stream ends (and logs its drops) once its client has not come back for 1 s.
    g = gantry({"server": {"stream_resume_secs": 1}, "upstreams": {"chatty": chatty_stdio()}})
    sid, _ = g.initialize(path="/mcp/chatty")
    session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    host, port = g.addr.rsplit(":", 1)
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, int(port)))
    head = {"Host": g.addr, "Accept": "text/event-stream", **g.auth(), **session}
    stalled.sendall(("GET /mcp/chatty HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
                     + "\r\n").encode())
    try:
        assert stalled.recv(200).startswith(b"HTTP/1.1 200"), "the stream is open"
        before = rss_kib(g.proc.pid)
        # 150 log messages of 1 MB that belong to no call, for a client that reads none.
        r = g.post({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                    "params": {"name": "log_later", "arguments": {"count": 150, "size": 1_000_000}}},
                   path="/mcp/chatty", headers=session)
        assert r.json()["result"]["content"][0]["text"] == "logging"
        wait_until(lambda: g.logged("logs sent", upstream="chatty"), what="the upstream's logs")
        # The upstream's pipe is read in order: once this is answered, gantry has taken them all.
        r = g.post({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                    "params": {"name": "big", "arguments": {"size": 1}}}, path="/mcp/chatty", headers=session)
        assert r.json()["result"]["content"][0]["text"] == "z"
        grown = rss_kib(g.proc.pid) - before
        assert grown < 48 * 1024, f"gantry grew by {grown} KiB holding 150 MB for a stalled GET stream"
    finally:
        stalled.close()
    wait_until(lambda: g.logged("notifications were dropped", upstream="chatty"), what="the drops logged")
    [line] = [json.loads(l) for l in g.logs().splitlines() if "notifications were dropped" in l]
    assert line["method"] == "GET" and line["dropped"] >= 100, line
    assert g.metric("mcp_notifications_dropped_total", server="chatty") >= line["dropped"]


"""Upstreams that send more than gantry will hold in one message: a remote server's endless
or too-large answer or event, a stdio child's too-long line. The call gets a prompt
JSON-RPC error naming `max_message_bytes`, gantry's memory stays bounded, and the upstream
goes on serving the next call."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from conftest import free_port, port_open, sse_messages, wait_until
from test_slow_clients import chatty_stdio, progress_of, rss_kib

OVERSIZED = Path(__file__).parent / "oversized_upstream.py"
LIMIT = 1 << 20


@pytest.fixture
def oversized_url():
    port = free_port()
    server = subprocess.Popen([sys.executable, str(OVERSIZED), str(port)])
    try:
        wait_until(lambda: port_open(port), what="oversized upstream")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(timeout=10)


def call(g, server: str, tool: str, arguments: dict | None = None, **meta):
    params = {"name": tool, "arguments": arguments or {}}
    if meta:
        params["_meta"] = meta
    return g.modern("tools/call", params, path=f"/mcp/{server}", timeout=60)


def assert_refused(r, server: str, code: int):
    err = sse_messages(r)[-1]["error"]
    assert err["code"] == code, err
    assert f"larger than {LIMIT} bytes" in err["message"] and "max_message_bytes" in err["message"], err
    assert err["data"]["server"] == server


def test_remote_answers_and_events_over_the_limit_fail_their_call_only(gantry, oversized_url):
    g = gantry({"upstreams": {"big": {"transport": "streamable-http", "url": oversized_url,
                                      "max_message_bytes": LIMIT, "timeout_secs": 60,
                                      "circuit_breaker_failures": 2}}})
    assert call(g, "big", "fine").json()["result"]["content"][0]["text"] == "fine"
    before = rss_kib(g.proc.pid)
    # Each of these would send up to 1 GiB; without a bound gantry would hold all of it.
    for tool in ["endless_json", "declared_huge", "endless_event", "endless_lines"]:
        started = time.time()
        # The server did answer: an error of the call (-32603), not of the server.
        assert_refused(call(g, "big", tool), "big", -32603)
        assert time.time() - started < 20, f"{tool}: refused once over the limit, not at the timeout"
    grown = rss_kib(g.proc.pid) - before
    assert grown < 64 * 1024, f"gantry grew by {grown} KiB"
    # The bound is per message: a stream three times the limit, in events of 1 kB, passes.
    r = call(g, "big", "many_events", {"count": 3000, "size": 1000}, progressToken="p")
    messages = sse_messages(r)
    assert messages[-1]["result"]["content"][0]["text"] == "sent 3000"
    assert progress_of(messages) == list(range(1, 3001))
    assert call(g, "big", "fine").json()["result"]["content"][0]["text"] == "fine"
    assert g.metric("mcp_upstream_up", server="big") == 1.0
    assert g.metric("mcp_upstream_restarts_total", server="big") == 0.0
    assert g.metric("mcp_upstream_circuit_open", server="big") == 0.0, "refusals are no failures of the server"
    assert g.logged("max_message_bytes", upstream="big")


def test_a_stdio_line_over_the_limit_fails_its_call_and_restarts_the_child(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio(max_message_bytes=LIMIT)}})
    ok = call(g, "chatty", "big", {"size": LIMIT // 2}).json()
    assert len(ok["result"]["content"][0]["text"]) == LIMIT // 2
    # The rest of the line cannot be told from the next message: the child restarts, and
    # its calls in flight fail as with any crash (-32010).
    assert_refused(call(g, "chatty", "big", {"size": 4 * LIMIT}), "chatty", -32010)
    wait_until(lambda: g.metric("mcp_upstream_restarts_total", server="chatty") == 1.0,
               what="the child restarted")
    assert g.logged("max_message_bytes", upstream="chatty")
    # The restarted child serves the next call.
    wait_until(lambda: "result" in call(g, "chatty", "big", {"size": 10}).json(), what="a call after the restart")


def test_a_legacy_sse_event_over_the_limit_fails_its_call_and_reconnects(gantry, oversized_url):
    sse_url = oversized_url.removesuffix("/mcp") + "/sse"
    g = gantry({"upstreams": {"legacy": {"transport": "sse", "url": sse_url, "max_message_bytes": LIMIT}}})
    assert call(g, "legacy", "fine").json()["result"]["content"][0]["text"] == "fine"
    started = time.time()
    # One stream carries every answer, so the event cannot be skipped: the stream is
    # dropped and its calls fail as when it breaks (-32010).
    assert_refused(call(g, "legacy", "endless_event"), "legacy", -32010)
    assert time.time() - started < 20, "refused once over the limit, not at the timeout"
    wait_until(lambda: g.metric("mcp_upstream_restarts_total", server="legacy") == 1.0, what="a new stream")
    wait_until(lambda: "result" in call(g, "legacy", "fine").json(), what="a call on the new stream")


def test_a_list_is_read_whole_across_pages_or_left_out_when_it_breaks_a_bound(gantry, oversized_url):
    base = oversized_url.removesuffix("/mcp")

    def paged(mode: str) -> dict:
        return {"transport": "streamable-http", "url": f"{base}/{mode}/mcp", "max_message_bytes": LIMIT}

    g = gantry({"upstreams": {"pages": paged("pages"), "endless": paged("endless-pages"),
                              "looping": paged("looping-pages")}})
    started = time.time()
    tools = g.modern("tools/list").json()["result"]["tools"]
    # Every page, in order; the endless list is refused once its pages pass the limit,
    # not asked for again until the list timeout, and the looping one at its second page.
    assert [t["name"] for t in tools] == [f"pages__t{i}" for i in range(1, 151)]
    assert time.time() - started < 4, "refused at the bound, not at the 5 s list timeout"
    assert g.logged(f"tools/list is larger than {LIMIT} bytes", upstream="endless")
    assert g.logged("came back to the cursor of an earlier page", upstream="looping")
    # A tool of the last page is known to the gateway, so its call is routed.
    r = g.modern("tools/call", {"name": "pages__t150", "arguments": {}})
    assert r.json()["result"]["content"][0]["text"] == "fine"


def test_callers_that_need_a_list_at_once_share_one_fetch_of_its_pages(gantry, oversized_url):
    base = oversized_url.removesuffix("/mcp")
    g = gantry({"upstreams": {"pages": {"transport": "streamable-http", "url": f"{base}/pages/mcp"}}})
    # Eight callers find no list kept: one reads the 150 pages, the others wait for it.
    with ThreadPoolExecutor(8) as pool:
        lists = list(pool.map(lambda i: g.modern("tools/list", id=i).json()["result"]["tools"], range(8)))
    assert all(len(tools) == 150 for tools in lists)
    assert httpx2.get(f"{base}/lists-served").text == "150"

"""2026-07-28 clients in front of a session-era upstream: the upstream's own requests
(sampling, elicitation) become MRTR round trips (InputRequiredResult, then a retry)."""

import asyncio
import base64
import hashlib
import json
import secrets
import time

from mcp import types

from conftest import MODERN, everything_stdio, sdk_client, sse_messages, wait_until
from test_slow_clients import chatty_stdio, progress_of, rss_kib


def test_modern_sdk_answers_sampling_and_elicitation_through_mrtr(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    seen = []

    async def sampling(context, params):
        seen.append("sampling")
        return types.CreateMessageResult(role="assistant", model="m",
                                         content=types.TextContent(type="text", text="answer-from-modern-client"))

    async def elicitation(context, params):
        seen.append("elicitation")
        return types.ElicitResult(action="accept", content={"name": "Grace Hopper"})

    async def use():
        for path, prefix in [("/mcp/everything", ""), ("/mcp", "everything__")]:
            async with sdk_client(g, path=path, mode=MODERN, sampling_callback=sampling,
                                  elicitation_callback=elicitation) as client:
                r = await client.call_tool(prefix + "trigger-sampling-request", {"prompt": "hello?"})
                assert "answer-from-modern-client" in str(r.content)
                r = await client.call_tool(prefix + "trigger-elicitation-request", {})
                assert "Grace Hopper" in str(r.content)
    asyncio.run(use())
    assert seen == ["sampling", "elicitation"] * 2
    assert g.metric("mcp_requests_total", server="everything", method="tools/call", outcome="input_required") == 4


def _call(g, request_id, params, caps):
    params = {**params, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                                  "io.modelcontextprotocol/clientCapabilities": caps}}
    return g.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params},
                  path="/mcp/everything",
                  headers={"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": params["name"]}).json()


def test_request_state_is_bound_to_its_request_and_used_once(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio()}})
    caps = {"sampling": {}}
    first = _call(g, 1, {"name": "trigger-sampling-request", "arguments": {"prompt": "p"}}, caps)["result"]
    assert first["resultType"] == "input_required"
    (key, request), = first["inputRequests"].items()
    assert request["method"] == "sampling/createMessage"
    state = first["requestState"]
    answer = {key: {"role": "assistant", "model": "m", "content": {"type": "text", "text": "raw-answer"}}}

    wrong_tool = _call(g, 2, {"name": "echo", "arguments": {"message": "x"}, "requestState": state,
                              "inputResponses": answer}, caps)
    assert wrong_tool["error"]["code"] == -32602
    tampered = _call(g, 3, {"name": "trigger-sampling-request", "arguments": {"prompt": "p"},
                            "requestState": state[:-2] + ("AA" if not state.endswith("AA") else "BB"),
                            "inputResponses": answer}, caps)
    assert tampered["error"]["code"] == -32602
    done = _call(g, 4, {"name": "trigger-sampling-request", "arguments": {"prompt": "p"}, "requestState": state,
                        "inputResponses": answer}, caps)
    assert done["id"] == 4 and "raw-answer" in str(done["result"]["content"])
    again = _call(g, 5, {"name": "trigger-sampling-request", "arguments": {"prompt": "p"}, "requestState": state,
                         "inputResponses": answer}, caps)
    assert again["error"]["code"] == -32602, "a request state is good for one retry"


def test_client_without_the_capability_is_told_which_one_the_call_needs(gantry):
    # 2026-07-28: a request needing a capability its client did not declare is refused with
    # -32021 naming it (HTTP 400), rather than answered with whatever the server makes of a
    # declined request; the call is cancelled upstream, and its slot given back.
    g = gantry({"upstreams": {"everything": everything_stdio(max_concurrency=1)}})
    for path, tool in [("/mcp/everything", "trigger-sampling-request"), ("/mcp", "everything__trigger-sampling-request"),
                       ("/mcp/everything", "trigger-elicitation-request")]:
        capability = "sampling" if "sampling" in tool else "elicitation"
        r = g.modern("tools/call", {"name": tool, "arguments": {"prompt": "p"}}, path=path, capabilities={"roots": {}})
        error = r.json()["error"]
        assert r.status_code == 400 and error["code"] == -32021, r.text
        assert error["data"]["requiredCapabilities"] == {capability: {}}, r.text
        r = g.modern("tools/call", {"name": "echo", "arguments": {"message": "slot is free"}}, path="/mcp/everything")
        assert "slot is free" in str(r.json()["result"]["content"]), r.text
    assert g.metric("mcp_requests_total", server="everything", method="tools/call", outcome="missing_capability") == 3
    # The session era keeps its rule: the server's request is declined and the server decides.
    sid, _ = g.initialize(path="/mcp/everything")
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "p"}}}
    r = g.post(body, path="/mcp/everything", headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    assert r.json()["result"]["isError"] is True, r.text


def test_an_abandoned_round_trip_gives_its_slot_back(gantry):
    g = gantry({"upstreams": {"everything": everything_stdio(timeout_secs=2, max_concurrency=1)}})
    first = _call(g, 1, {"name": "trigger-sampling-request", "arguments": {"prompt": "p"}}, {"sampling": {}})
    assert first["result"]["resultType"] == "input_required"
    # The client never retries: the parked call expires with its deadline.
    wait_until(lambda: g.metric("mcp_requests_in_flight", server="everything") == 0.0, timeout=10,
               what="parked call expired")
    r = _call(g, 2, {"name": "echo", "arguments": {"message": "slot is free"}}, {})
    assert "slot is free" in str(r["result"]["content"])


def test_a_parked_call_keeps_what_its_upstream_sends_within_the_backlog_and_relays_it_on_the_retry(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    count = 200_000  # about 20 MB of progress, sent while the call waits for the client's input
    params = {"name": "ask_then_flood", "arguments": {"count": count}, "_meta": {"progressToken": "p"}}
    before = rss_kib(g.proc.pid)
    first = _park(g, params)
    wait_until(lambda: g.logged("flood sent", upstream="chatty"), what="the upstream's flood")
    grown = rss_kib(g.proc.pid) - before
    assert grown < 32 * 1024, f"gantry grew by {grown} KiB holding a parked call's flood"

    # The retry is a request of its own, with its own progress token.
    messages = sse_messages(_retry(g, first, params, {"progressToken": "p2"}))
    assert messages[-1]["id"] == 2 and messages[-1]["result"]["content"][0]["text"] == "answer: ok"
    # What was kept comes first and in order, then what the upstream sent after its input;
    # the rest past the backlog was dropped and counted.
    progress = progress_of(messages)
    held, after = progress[:-1], progress[-1]
    assert held == list(range(1, len(held) + 1)) and len(held) > 1000 and after == count + 1, len(held)
    tokens = {m["params"]["progressToken"] for m in messages if m.get("method") == "notifications/progress"}
    assert tokens == {"p2"}, "progress relayed on the retry carries the retry's token"
    dropped = g.metric("mcp_notifications_dropped_total", server="chatty")
    assert len(held) + dropped == count
    assert g.logged("notifications of a call waiting for the client's input were dropped", upstream="chatty")


def test_a_parked_call_holds_server_requests_within_the_backlog_and_declines_the_rest(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    asks, size = 60, 1_000_000  # 60 MB of sampling requests, sent while the call waits for its first input
    params = {"name": "ask_then_flood", "arguments": {"count": 0, "asks": asks, "size": size}}
    before = rss_kib(g.proc.pid)
    result = _park(g, params)
    wait_until(lambda: g.logged("flood sent", upstream="chatty"), what="the upstream's requests")
    grown = rss_kib(g.proc.pid) - before
    assert grown < 32 * 1024, f"gantry grew by {grown} KiB holding a parked call's requests"

    # Each held request comes back as one more round trip; then the answer.
    rounds = 0
    while result.get("resultType") == "input_required":
        rounds += 1
        assert rounds <= asks, "more rounds than the upstream sent requests"
        answer = _retry(g, result, params, {}, id=1 + rounds)
        result = sse_messages(answer)[-1]["result"]
    text = result["content"][0]["text"]
    assert text.startswith("answer: ok "), text
    summary = json.loads(text.removeprefix("answer: ok "))
    held = rounds - 1
    assert held + summary["declined"] == asks
    assert held >= 4, f"only {held} requests held: the backlog holds about 4 MB of them"
    assert summary["reasons"] == ["gantry: the requests already waiting for the client's input fill its backlog"]
    assert g.metric("mcp_server_requests_declined_total", server="chatty") == summary["declined"]


# A 2026-07-28 client that can answer sampling requests.
SAMPLING_CAPS = {"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}


def _park(g, params: dict) -> dict:
    """Sends `params` as tools/call id 1 to the chatty upstream, whose tool asks for input
    at once: the result, an InputRequiredResult."""
    body, headers = g.modern_request("tools/call", params, id=1)
    body["params"]["_meta"].update(SAMPLING_CAPS)
    result = g.post(body, path="/mcp/chatty", headers=headers).json()["result"]
    assert result["resultType"] == "input_required", result
    return result


def _retry(g, first: dict, params: dict, meta: dict, id: int = 2, headers=None):
    """The retry, by default id 2, of the request `params` that got the InputRequiredResult
    `first`, sent to `g` with `g`'s key and then `headers`."""
    (key, _), = first["inputRequests"].items()
    retry = {**params, "_meta": meta, "requestState": first["requestState"],
             "inputResponses": {key: {"role": "assistant", "model": "m", "content": {"type": "text", "text": "ok"}}}}
    body, mcp_headers = g.modern_request("tools/call", retry, id=id)
    body["params"]["_meta"].update(SAMPLING_CAPS)
    return g.post(body, path="/mcp/chatty", headers={**mcp_headers, **(headers or {})})


def two_replicas(gantry):
    """Two gantry processes in front of the chatty upstream with the same keys (the test's,
    and a second one returned too) and the same session key, as replicas behind a load
    balancer have."""
    session_key = base64.b64encode(secrets.token_bytes(32)).decode()
    other = "gty_" + secrets.token_urlsafe(32)
    config = {"upstreams": {"chatty": chatty_stdio()},
              "auth": {"api_keys": [{"name": "other", "sha256": hashlib.sha256(other.encode()).hexdigest()}]}}
    a = gantry(config, session_key=session_key)
    b = gantry(config, session_key=session_key, key=a.key)
    return a, b, {"Authorization": f"Bearer {other}"}


def test_a_retry_that_reaches_another_replica_is_carried_to_the_one_holding_its_call(gantry):
    a, b, other = two_replicas(gantry)
    params = {"name": "ask_then_flood", "arguments": {"count": 20}, "_meta": {"progressToken": "p"}}
    first = _park(a, params)
    wait_until(lambda: a.logged("flood sent", upstream="chatty"), what="the upstream's progress")

    # Another key cannot take the call on, on b or carried to a.
    stranger = _retry(b, first, params, {}, id=9, headers=other)
    assert stranger.json()["error"]["code"] == -32602, stranger.text
    # A request another replica already carried is not carried again: b answers it itself.
    marked = _retry(b, first, params, {}, id=9, headers={"Gantry-Forwarded": "1"})
    assert "another gateway replica" in marked.json()["error"]["message"], marked.text
    assert b.metric("mcp_requests_forwarded_total") is None, "neither was carried to a"

    messages = sse_messages(_retry(b, first, params, {"progressToken": "p2"}))
    assert messages[-1]["id"] == 2 and messages[-1]["result"]["content"][0]["text"] == "answer: ok", messages[-1]
    progress = progress_of(messages)
    assert progress == list(range(1, 22)), "a's held progress, then what came after the input, through b"
    assert {m["params"]["progressToken"] for m in messages if "params" in m} == {"p2"}
    assert b.metric("mcp_requests_forwarded_total", held="retry", outcome="forwarded") == 1
    assert b.metric("mcp_requests_total", server="chatty", method="tools/call") is None, "b's upstream saw nothing"
    assert a.metric("mcp_requests_total", server="chatty", method="tools/call", outcome="ok") == 1

    again = _retry(b, first, params, {}, id=3)
    assert again.json()["error"]["code"] == -32602, "the state was used once, on a"


def test_a_retry_for_a_replica_that_is_gone_is_told_to_start_over(gantry):
    a, b, _ = two_replicas(gantry)
    params = {"name": "ask_then_flood", "arguments": {"count": 0}}
    first = _park(a, params)
    a.stop()
    started = time.monotonic()
    r = _retry(b, first, params, {})
    assert time.monotonic() - started < 5, "a replica that is gone is not waited for"
    error = r.json()["error"]
    assert error["code"] == -32602 and "could not be reached" in error["message"], error
    assert "send the request again without it" in error["message"]
    assert b.metric("mcp_requests_forwarded_total", held="retry", outcome="unreachable") == 1


def test_a_retry_that_asks_for_no_progress_gets_none_of_the_parked_calls(gantry):
    g = gantry({"upstreams": {"chatty": chatty_stdio()}})
    params = {"name": "ask_then_flood", "arguments": {"count": 20}, "_meta": {"progressToken": "p"}}
    first = _park(g, params)
    wait_until(lambda: g.logged("flood sent", upstream="chatty"), what="the upstream's progress")
    r = _retry(g, first, params, {})
    # Nothing came before the answer, so it is plain JSON.
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    assert r.json()["result"]["content"][0]["text"] == "answer: ok"

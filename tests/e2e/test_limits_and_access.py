"""Limits, bad input, access control and observability."""

import http.client
import json
import socket
import threading
import time

import httpx2
import pytest

from conftest import ACCEPT, demo_stdio


@pytest.fixture
def g(gantry):
    return gantry({"server": {"max_body_bytes": 64 * 1024},
                   "upstreams": {"demo": demo_stdio(), "slow": demo_stdio(timeout_secs=1, max_concurrency=1)}})


def test_missing_and_wrong_keys_get_401_with_a_challenge(g):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    for headers in [{}, {"Authorization": "Bearer gty_wrong"}, {"Authorization": "Basic abc"}]:
        r = httpx2.post(g.url, content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert g.key not in r.text


def test_oversized_body_is_413(g):
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 100_000}})
    for path in ("/mcp", "/mcp/demo"):
        r = g.post(big, path=path)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == -32600 and "max_body_bytes" in r.json()["error"]["message"], (r.headers, r.text)
    # A caller who is not admitted is refused before its body is read.
    r = httpx2.post(g.url, content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 401


def test_malformed_json_is_parse_error(g):
    r = g.post(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700 and r.json()["id"] is None


@pytest.mark.parametrize("body", [
    {"jsonrpc": "1.0", "id": 1, "method": "ping"},
    {"jsonrpc": "2.0", "id": {"nested": True}, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1, "method": 42},
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": "not-an-object"},
    [{"jsonrpc": "2.0", "id": 1, "method": "ping"}],
    json.dumps("a JSON string, not an object"),
])
def test_invalid_requests_are_32600(g, body):
    r = g.post(body)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600


def test_unknown_tool_is_a_clear_invalid_params_error(g):
    r = g.modern("tools/call", {"name": "demo__nope", "arguments": {}})
    assert r.json()["error"]["code"] == -32602 and "demo__nope" in r.json()["error"]["message"]
    r = g.modern("tools/call", {"name": "nosuchserver__echo", "arguments": {}})
    assert r.json()["error"]["code"] == -32602
    r = g.modern("tools/call", {"name": "nope", "arguments": {}}, path="/mcp/demo")
    assert "error" in r.json() or r.json()["result"].get("isError"), r.text


def test_unknown_server_path_is_404(g):
    assert g.modern("tools/list", path="/mcp/nosuch").status_code == 404


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Host": "evil.example"}])
def test_dns_rebinding_origin_and_host_are_refused(g, headers):
    r = g.modern("tools/list", headers=headers)
    assert r.status_code == 403


def test_loopback_origin_is_accepted(g):
    assert g.modern("tools/list", headers={"Origin": "http://localhost:6274"}).status_code == 200


def test_per_upstream_timeout_answers_and_frees_the_slot(g):
    r = g.modern("tools/call", {"name": "slow__sleep", "arguments": {"ms": 5000}}, timeout=30)
    err = r.json()["error"]
    assert err["code"] == -32001 and "slow" in err["message"]
    r = g.modern("tools/call", {"name": "slow__echo", "arguments": {"message": "free"}})
    assert r.json()["result"]["content"][0]["text"] == "free", "the timed-out call gave its slot back"
    assert g.metric("mcp_requests_total", server="slow", method="tools/call", outcome="timeout") >= 1


def test_concurrency_cap_queues_then_times_out(g):
    results = []
    def call(ms):
        results.append(g.modern("tools/call", {"name": "slow__sleep", "arguments": {"ms": ms}}, timeout=30).json())
    threads = [threading.Thread(target=call, args=(800,)), threading.Thread(target=call, args=(800,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if "result" in r]
    late = [r for r in results if "error" in r]
    assert len(ok) == 1 and len(late) == 1, results
    assert late[0]["error"]["code"] == -32001, "the second waited for the single slot and ran out of time"


def test_metrics_and_health_endpoints(g):
    g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "m"}})
    text = g.metrics()
    for name in ["http_requests_total", "http_request_duration_seconds_bucket", "mcp_requests_total",
                 "mcp_request_duration_seconds_bucket", "mcp_upstream_up", "mcp_upstream_restarts_total",
                 "mcp_requests_in_flight"]:
        assert name in text, name
    assert g.metric("http_requests_total", method="POST", route="/mcp", status="200") >= 1
    assert g.metric("mcp_requests_total", server="demo", method="tools/call", outcome="ok") == 1
    assert httpx2.get(g.base + "/health").json() == {"status": "ok"}
    ready = httpx2.get(g.base + "/ready").json()
    assert ready["status"] == "ready" and ready["upstreams"]["demo"]["status"] == "up"


def test_hostile_method_names_do_not_become_metric_labels(g):
    g.modern("x" * 200, id=9)
    assert "x" * 200 not in g.metrics()


def test_logs_are_json_with_request_ids_and_never_contain_the_key(g):
    r = g.modern("tools/list")
    request_id = r.headers["x-request-id"]
    lines = [json.loads(l) for l in g.logs().splitlines() if l.startswith("{")]
    assert any(l.get("span", {}).get("request_id") == request_id for l in lines)
    assert g.key not in g.logs()


def test_deeply_nested_json_is_a_parse_error_not_a_crash(g):
    deep = "[" * 20_000 + "]" * 20_000  # 40 KB: under the body limit, far past any sane depth
    r = g.post(deep)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700
    r = g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "still alive"}})
    assert r.json()["result"]["content"][0]["text"] == "still alive"


def test_slow_silent_and_idle_clients_are_disconnected_but_a_long_call_is_answered(gantry):
    g = gantry({"server": {"request_read_timeout_secs": 1}, "upstreams": {"demo": demo_stdio()}})
    host, port = g.addr.rsplit(":", 1)
    silent = socket.create_connection((host, int(port)))
    slowloris = socket.create_connection((host, int(port)))
    slowloris.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: a")
    slow_body = socket.create_connection((host, int(port)))
    slow_body.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {g.key}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
    kept_alive = http.client.HTTPConnection(host, int(port), timeout=30)

    def call(method, params):
        body, headers = g.modern_request(method, params)
        headers = {"Content-Type": "application/json", "Accept": ACCEPT, **g.auth(), **headers}
        kept_alive.request("POST", "/mcp", body=json.dumps(body), headers=headers)
        r = kept_alive.getresponse()
        return r.status, r.read()

    # The timeout bounds the wait for a request, not the answer to one.
    status, body = call("tools/call", {"name": "demo__sleep", "arguments": {"ms": 2500}})
    assert status == 200 and "result" in json.loads(body), body
    # Nor is a kept-alive connection closed under the request sent right after a long answer.
    status, body = call("tools/list", {})
    assert status == 200 and "result" in json.loads(body), body
    answered = time.monotonic()
    for client in (silent, slowloris, slow_body, kept_alive.sock):
        client.settimeout(10)
        try:
            assert client.recv(1024) == b"", "no answer to a request never finished"
        except ConnectionResetError:
            pass
    # A kept-alive connection gets the whole timeout for its next request.
    assert time.monotonic() - answered >= 0.95
    for client in (silent, slowloris, slow_body):
        client.close()
    kept_alive.close()
    assert g.modern("tools/list").status_code == 200


def test_oversized_headers_and_garbage_session_ids_are_refused_cleanly(g):
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"Mcp-Session-Id": "\u00e9".encode("latin-1") * 10})
    assert r.status_code in (400, 404)
    r = g.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"X-Padding": "x" * 200_000})
    assert r.status_code in (400, 431)
    assert g.modern("tools/list").status_code == 200

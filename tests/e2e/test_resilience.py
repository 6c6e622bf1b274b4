"""Aggregation under failure, sessions across replicas, supervision and shutdown."""

import base64
import json
import os
import secrets
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx2

from conftest import ACCEPT, BIN, EVERYTHING_JS, demo_stdio, everything_stdio, wait_until


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = children(p)
        except FileNotFoundError:
            continue
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        return state != "Z"
    except FileNotFoundError:
        return False


def in_background(call) -> tuple[threading.Thread, dict]:
    """Runs `call` in a thread; its return value lands in the dict under "r", an
    exception under "error"."""
    result = {}

    def run():
        try:
            result["r"] = call()
        except Exception as e:  # noqa: BLE001 - reported to the test through `result`
            result["error"] = e
    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_aggregate_names_order_and_routing(gantry):
    g = gantry({"upstreams": {"zeta": demo_stdio(), "alpha": demo_stdio()}})
    r = g.modern("tools/list")
    names = [t["name"] for t in r.json()["result"]["tools"]]
    alpha = [n for n in names if n.startswith("alpha__")]
    zeta = [n for n in names if n.startswith("zeta__")]
    assert names == alpha + zeta, "servers in name order"
    assert names == [t["name"] for t in g.modern("tools/list").json()["result"]["tools"]], "deterministic"
    g.modern("tools/call", {"name": "zeta__kv_set", "arguments": {"key": "where", "value": "zeta"}})
    r = g.modern("tools/call", {"name": "alpha__kv_get", "arguments": {"key": "where"}})
    assert r.json()["result"]["isError"] is True, "calls reach the server named by the prefix"
    r = g.modern("tools/call", {"name": "zeta__kv_get", "arguments": {"key": "where"}})
    assert r.json()["result"]["content"][0]["text"] == "zeta"


def test_on_conflict_prefixes_only_shared_names(gantry):
    g = gantry({"gateway": {"prefix_mode": "on-conflict"},
                "upstreams": {"demo": demo_stdio(), "everything": everything_stdio()}})
    names = [t["name"] for t in g.modern("tools/list").json()["result"]["tools"]]
    assert "demo__echo" in names and "everything__echo" in names and "echo" not in names
    assert "kv_set" in names and "get-sum" in names
    r = g.modern("tools/call", {"name": "get-sum", "arguments": {"a": 1, "b": 2}})
    assert "3" in r.json()["result"]["content"][0]["text"]


def test_broken_upstream_is_left_out_logged_and_reported_down(gantry, tmp_path):
    g = gantry({"gateway": {"list_timeout_ms": 1000}, "upstreams": {
        "demo": demo_stdio(),
        "broken": {"transport": "stdio", "command": "sh", "args": ["-c", "echo not-json; exit 3"], "timeout_secs": 2},
        "missing": {"transport": "stdio", "command": str(tmp_path / "no-such-binary"), "timeout_secs": 2},
        "unreachable": {"transport": "streamable-http", "url": "http://127.0.0.1:9/mcp", "timeout_secs": 2},
    }})
    r = g.modern("tools/list")
    assert r.status_code == 200
    names = [t["name"] for t in r.json()["result"]["tools"]]
    assert names and all(n.startswith("demo__") for n in names)
    for server in ["broken", "missing", "unreachable"]:
        assert g.metric("mcp_upstream_up", server=server) == 0.0
    assert g.metric("mcp_upstream_up", server="demo") == 1.0
    assert "not-json" in g.logs() or "non-JSON" in g.logs()
    r = g.modern("tools/call", {"name": "missing__x", "arguments": {}}, timeout=30)
    err = r.json()["error"]
    assert "missing" in err["message"] and err["data"]["server"] == "missing"


def test_a_crash_looping_server_answers_at_once_with_its_last_failure(gantry):
    """A server that fails again after being restarted is reported straight away, on every
    path a client can reach it by; waiting would only end in the same failure after the
    server's whole timeout (60 s here), and an aggregate list would wait as long."""
    g = gantry({"gateway": {"list_timeout_ms": 60000}, "upstreams": {
        "demo": demo_stdio(),
        "looping": {"transport": "stdio", "command": "sh", "args": ["-c", "exit 3"], "timeout_secs": 60},
    }})
    failed_starts = lambda: sum('failed to start' in line and '"upstream":"looping"' in line  # noqa: E731
                                for line in g.logs().splitlines())
    wait_until(lambda: failed_starts() >= 2, what="a second failed start")

    def unavailable(r):
        err = r.json()["error"]
        assert err["code"] == -32010 and err["data"]["server"] == "looping", err
        assert "failed attempts in a row; next attempt in" in err["message"], err
        return err

    r = g.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "pytest", "version": "1"}}}, path="/mcp/looping", timeout=15)
    assert "mcp-session-id" not in r.headers, "no session with a server that is not there"
    unavailable(r)
    unavailable(g.modern("server/discover", path="/mcp/looping", timeout=15))
    unavailable(g.modern("tools/list", path="/mcp/looping", timeout=15))
    unavailable(g.modern("tools/call", {"name": "looping__x", "arguments": {}}, timeout=15))
    names = [t["name"] for t in g.modern("tools/list", timeout=15).json()["result"]["tools"]]
    assert names and all(n.startswith("demo__") for n in names), "the others are listed at once"


def session_headers(g, sid: str) -> dict:
    """What a 2025-11-25 client sends with each request of its session `sid`."""
    return {**g.auth(), "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25", "Accept": ACCEPT}


def test_session_continues_on_a_second_process_with_the_same_key(gantry):
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    first = gantry({"upstreams": {"demo": demo_stdio()}}, session_key=key)
    # A second replica on the same configuration file: same API keys, same session key.
    replica = subprocess_gantry(first.config_path, first.dir)
    try:
        sid, _ = first.initialize(path="/mcp/demo")
        h = session_headers(first, sid)
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "replica"}}}
        r = httpx2.post(f"http://{replica}/mcp/demo", json=body, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["content"][0]["text"] == "replica"
        foreign = gantry({"upstreams": {"demo": demo_stdio()}})
        r = httpx2.post(f"{foreign.base}/mcp/demo", json=body,
                        headers={**h, **foreign.auth()}, timeout=30)
        assert r.status_code == 404, "a session sealed with another key is unknown"
    finally:
        replica.stop()


def test_a_session_ended_on_one_replica_is_ended_on_every_replica(gantry, redis_prefix):
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    first = gantry({"upstreams": {"demo": demo_stdio()},
                    "cache": {"url": "redis://127.0.0.1:6379/0", "key_prefix": redis_prefix}}, session_key=key)
    replicas = [subprocess_gantry(first.config_path, first.dir)]
    try:
        sid, _ = first.initialize(path="/mcp/demo")
        h = session_headers(first, sid)
        body = {"jsonrpc": "2.0", "id": 5, "method": "ping"}

        def status(addr):
            return httpx2.post(f"http://{addr}/mcp/demo", json=body, headers=h, timeout=30).status_code

        assert status(replicas[0]) == 200, "any replica serves the session"
        assert httpx2.delete(f"{first.base}/mcp/demo", headers=h, timeout=30).status_code == 204
        assert status(first.addr) == 404
        # The protocol's 404 after DELETE holds on the replica that did not see it, and on
        # one started after it.
        wait_until(lambda: status(replicas[0]) == 404, timeout=10, what="the other replica refusing the session")
        replicas.append(subprocess_gantry(first.config_path, first.dir))
        wait_until(lambda: status(replicas[1]) == 404, timeout=10, what="a later replica refusing the session")
        other_sid, _ = first.initialize(path="/mcp/demo")
        assert httpx2.post(f"http://{replicas[1]}/mcp/demo", json=body, timeout=30,
                           headers={**h, "Mcp-Session-Id": other_sid}).status_code == 200, "only that session ended"
    finally:
        for replica in replicas:
            replica.stop()


def replicas_sharing_redis(gantry, redis_prefix, server="chatty", upstream=None):
    """Two gantry processes in front of `server` (the chatty upstream unless given) with
    the same keys, sharing Redis, each following what the other says of sessions; a
    session of theirs. Each process runs a stdio server of its own."""
    from test_slow_clients import chatty_stdio
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = {"upstreams": {server: upstream or chatty_stdio()},
              "cache": {"url": "redis://127.0.0.1:6379/0", "key_prefix": redis_prefix}}
    a = gantry(config, session_key=key)
    b = gantry(config, session_key=key, key=a.key)
    for g in (a, b):
        wait_until(lambda: "following the sessions other replicas end" in g.logs(), what="the replica following Redis")
    sid, _ = a.initialize(path=f"/mcp/{server}")
    return a, b, {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}


def _long_call_left_running(a, session: dict, id: int):
    """Starts a call of about 10 s on `a` and leaves its stream, which `a` keeps (and the
    call running) for the client to resume."""
    body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "flood", "arguments": {"count": 100, "burst": 1, "pause_ms": 100}, "_meta": {"progressToken": "p"}}}
    headers = {**a.auth(), **session, "Content-Type": "application/json", "Accept": ACCEPT}
    with httpx2.stream("POST", a.base + "/mcp/chatty", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if "notifications/progress" in line)


def test_a_cancellation_that_reaches_another_replica_ends_the_call_where_it_runs(gantry, redis_prefix):
    # After a rescale nginx hashes a session to another replica than the one its call runs on.
    a, b, session = replicas_sharing_redis(gantry, redis_prefix)
    _long_call_left_running(a, session, id=7)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "user"}}
    assert b.post(cancel, path="/mcp/chatty", headers=session).status_code == 202
    # Cancelled, not finished: the call would run for 10 s more.
    wait_until(lambda: a.metric("mcp_requests_total", server="chatty", method="tools/call",
                                outcome="cancelled") == 1, timeout=8, what="the call cancelled on a")
    assert a.metric("mcp_requests_total", server="chatty", method="tools/call", outcome="ok") is None


def test_a_session_ended_on_another_replica_closes_its_streams_here(gantry, redis_prefix):
    a, b, session = replicas_sharing_redis(gantry, redis_prefix)
    _long_call_left_running(a, session, id=7)
    assert httpx2.delete(b.base + "/mcp/chatty", headers={**b.auth(), **session}, timeout=10).status_code == 204
    wait_until(lambda: a.metric("mcp_requests_total", server="chatty", method="tools/call",
                                outcome="cancelled") == 1, timeout=8, what="the call cancelled on a")
    assert a.metric("mcp_requests_total", server="chatty", method="tools/call", outcome="ok") is None


def test_a_session_ended_while_redis_is_down_is_ended_on_its_replica(gantry):
    from conftest import free_port
    g = gantry({"upstreams": {"demo": demo_stdio()},
                "cache": {"url": f"redis://127.0.0.1:{free_port()}/0"}})  # nothing listens there
    sid, _ = g.initialize(path="/mcp/demo")
    h = session_headers(g, sid)
    assert httpx2.delete(f"{g.base}/mcp/demo", headers=h, timeout=30).status_code == 204
    r = httpx2.post(f"{g.base}/mcp/demo", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=h, timeout=30)
    assert r.status_code == 404
    assert "session ended on this replica only" in g.logs()


class subprocess_gantry(str):
    """A second gantry process on the same config file (same keys, same session key)."""

    def __new__(cls, config: Path, tmp: Path):
        ready = tmp / f"ready-{secrets.token_hex(4)}"
        import subprocess
        proc = subprocess.Popen([BIN, "--config", str(config), "serve", "--listen", "127.0.0.1:0",
                                 "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=tmp)  # serve keeps its embedded database in its working directory
        wait_until(lambda: ready.exists() and ready.read_text(), what="replica ready")
        self = super().__new__(cls, ready.read_text().strip())
        self.proc = proc
        return self

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_crash_mid_call_is_reported_restarted_and_counted(gantry):
    g = gantry({"upstreams": {"demo": demo_stdio()}})
    child = children(g.proc.pid)[0]
    t, result = in_background(
        lambda: g.modern("tools/call", {"name": "demo__sleep", "arguments": {"ms": 60000}}, timeout=60))
    wait_until(lambda: g.metric("mcp_requests_in_flight", server="demo") == 1.0, what="call in flight")
    os.kill(child, signal.SIGKILL)
    t.join(timeout=30)
    err = result["r"].json()["error"]
    assert "demo" in err["message"] and err["data"]["server"] == "demo"
    wait_until(lambda: g.metric("mcp_upstream_up", server="demo") == 1.0, what="restart")
    assert g.metric("mcp_upstream_restarts_total", server="demo") == 1.0
    r = g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "back"}})
    assert r.json()["result"]["content"][0]["text"] == "back"
    assert children(g.proc.pid)[0] != child


def test_sigterm_drains_in_flight_calls_and_leaves_no_descendant(gantry):
    npx = {"transport": "stdio", "command": "npx",
           "args": ["--prefix", str(EVERYTHING_JS.parents[4]), "--no-install", "mcp-server-everything", "stdio"]}
    g = gantry({"server": {"shutdown_grace_secs": 10}, "upstreams": {"demo": demo_stdio(), "npx": npx}})
    wait_until(lambda: g.metric("mcp_upstream_up", server="npx") == 1.0, what="npx upstream")
    tree = descendants(g.proc.pid)
    assert len(tree) >= 3, f"expected gantry → demo and npx → node, got {tree}"
    t, result = in_background(
        lambda: g.modern("tools/call", {"name": "demo__sleep", "arguments": {"ms": 1500}}, timeout=30))
    wait_until(lambda: g.metric("mcp_requests_in_flight", server="demo") == 1.0, what="call in flight")
    g.proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert result["r"].json()["result"]["content"][0]["text"] == "slept 1500 ms", "in-flight call drained"
    assert g.proc.wait(timeout=30) == 0
    wait_until(lambda: not any(alive(p) for p in tree), timeout=10, what="every descendant gone")


def test_upstream_http_errors_become_prompt_jsonrpc_errors(gantry):
    import subprocess
    import sys
    from conftest import free_port, port_open
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "failing_upstream.py"), str(port)])
    try:
        wait_until(lambda: port_open(port), what="failing upstream")
        g = gantry({"upstreams": {"flaky": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp",
                                            "timeout_secs": 30}}})
        started = time.time()
        r = g.modern("tools/list", path="/mcp/flaky")
        err = r.json()["error"]
        assert err["code"] == -32010 and "500" in err["message"] and err["data"]["server"] == "flaky"
        assert time.time() - started < 5, "answered at once, not after the 30 s timeout"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_hung_child_is_noticed_by_pings_and_restarted(gantry):
    import sys
    g = gantry({"upstreams": {
        "hung": {"transport": "stdio", "command": sys.executable,
                 "args": [str(Path(__file__).parent / "hanging_upstream.py")],
                 "ping_interval_secs": 1, "timeout_secs": 1},
        "demo": demo_stdio(ping_interval_secs=1),
    }})
    first_child = {p for p in children(g.proc.pid)}
    wait_until(lambda: (g.metric("mcp_upstream_restarts_total", server="hung") or 0) >= 1,
               timeout=30, what="restart after unanswered pings")
    assert "no answer to 3 pings" in g.logs()
    assert g.metric("mcp_upstream_restarts_total", server="demo") == 0.0, "a healthy child answers its pings"
    assert {p for p in children(g.proc.pid)} != first_child, "the hung child was replaced"


def test_aggregate_routes_resources_prompts_and_completion(gantry):
    g = gantry({"upstreams": {"demo": demo_stdio(), "everything": everything_stdio()}})
    resources = g.modern("resources/list").json()["result"]["resources"]
    assert resources and all(r["name"].startswith("everything__") for r in resources)
    uri = resources[0]["uri"]
    read = g.modern("resources/read", {"uri": uri}).json()
    assert read["result"]["contents"][0]["uri"] == uri
    templates = g.modern("resources/templates/list").json()["result"]["resourceTemplates"]
    assert templates, "templates are aggregated too"
    missing = g.modern("resources/read", {"uri": "nowhere://x"}).json()
    assert missing["error"]["code"] == -32002
    prompts = g.modern("prompts/list").json()["result"]["prompts"]
    name = next(p["name"] for p in prompts if p["name"].endswith("simple-prompt"))
    got = g.modern("prompts/get", {"name": name}).json()
    assert got["result"]["messages"], got
    done = g.modern("completion/complete", {
        "ref": {"type": "ref/prompt", "name": "everything__completable-prompt"},
        "argument": {"name": "department", "value": "En"}}).json()
    assert done["result"]["completion"]["values"], done


def test_remote_headers_come_from_references_and_stay_out_of_logs(gantry):
    import subprocess
    import sys
    from conftest import free_port, port_open
    port = free_port()
    secret = "Bearer upstream-" + "s3cr3t-value"
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "failing_upstream.py"), str(port), secret])
    try:
        wait_until(lambda: port_open(port), what="upstream")
        url = f"http://127.0.0.1:{port}/mcp"
        g = gantry({"upstreams": {
            "with_key": {"transport": "streamable-http", "url": url, "headers": {"Authorization": "env:UPSTREAM_AUTH"}},
            "without_key": {"transport": "streamable-http", "url": url, "timeout_secs": 2},
        }}, env={"UPSTREAM_AUTH": secret})
        assert g.metric("mcp_upstream_up", server="with_key") == 1.0
        assert g.metric("mcp_upstream_up", server="without_key") == 0.0
        assert "401" in g.logs()
        assert "s3cr3t-value" not in g.logs()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_child_stderr_is_logged_under_the_server_name(gantry):
    import json
    import sys
    g = gantry({"upstreams": {"hangs": {"transport": "stdio", "command": sys.executable,
                                        "args": [str(Path(__file__).parent / "hanging_upstream.py")]}}})
    def logged():
        lines = [json.loads(l) for l in g.logs().splitlines() if l.startswith("{")]
        return any(l.get("upstream") == "hangs" and l.get("stream") == "stderr"
                   and "hanging-upstream starting" in l.get("message", "") for l in lines)
    wait_until(logged, timeout=10, what="stderr line in the log")


def test_calls_outlasting_the_grace_period_get_a_clear_error_at_shutdown(gantry):
    g = gantry({"server": {"shutdown_grace_secs": 1}, "upstreams": {"demo": demo_stdio()}})
    t, result = in_background(
        lambda: g.modern("tools/call", {"name": "demo__sleep", "arguments": {"ms": 30000}}, timeout=60))
    wait_until(lambda: g.metric("mcp_requests_in_flight", server="demo") == 1.0, what="call in flight")
    started = time.time()
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(timeout=20) == 0
    assert time.time() - started < 10, "the grace period bounds the drain"
    t.join(timeout=30)
    # Ending the upstreams fails the outstanding call, and that answer still reaches the
    # client: a clear error rather than a dropped connection.
    error = result["r"].json()["error"]
    assert error["data"]["server"] == "demo" and "gateway is shutting down" in error["message"]


def test_circuit_breaker_fails_fast_then_half_opens(gantry):
    import subprocess
    import sys
    from conftest import free_port, port_open
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "failing_upstream.py"), str(port)])
    try:
        wait_until(lambda: port_open(port), what="failing upstream")
        g = gantry({"upstreams": {"flaky": {
            "transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp",
            "circuit_breaker_failures": 3, "circuit_breaker_cooldown_secs": 2}}})
        call = lambda: g.modern("tools/list", path="/mcp/flaky").json()["error"]["message"]  # noqa: E731
        for _ in range(3):
            assert "500" in call(), "the upstream itself answers while the circuit is closed"
        assert "circuit open after 3 consecutive failures" in call()
        assert g.metric("mcp_upstream_circuit_open", server="flaky") == 1.0
        wait_until(lambda: "500" in call(), timeout=10, what="half-open trial reaching the upstream")
        assert "circuit open" in call(), "the failed trial opens the circuit again"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_half_open_circuit_lets_exactly_one_trial_through(gantry):
    g = gantry({"upstreams": {"demo": demo_stdio(timeout_secs=1, circuit_breaker_failures=2,
                                                 circuit_breaker_cooldown_secs=1)}})
    slow = lambda: g.modern("tools/call", {"name": "demo__sleep", "arguments": {"ms": 5000}}, timeout=30).json()  # noqa: E731
    for _ in range(2):
        assert slow()["error"]["code"] == -32001
    assert g.metric("mcp_upstream_circuit_open", server="demo") == 1.0

    def trial():
        # Retries while the circuit is open; the first call admitted is the trial.
        deadline = time.time() + 10
        while time.time() < deadline:
            r = slow()
            if "circuit open" not in r["error"]["message"]:
                return r
            time.sleep(0.05)  # pacing between attempts, not synchronisation
    t, result = in_background(trial)
    wait_until(lambda: g.metric("mcp_requests_in_flight", server="demo") == 1.0, what="trial in flight")
    other = g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "x"}}).json()
    assert "circuit open" in other["error"]["message"], "only the trial goes through while it runs"
    t.join(timeout=30)
    assert result["r"]["error"]["code"] == -32001, "the trial itself timed out"
    assert "circuit open" in g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "x"}}).json()["error"]["message"]


class PipeReader:
    """Reads a pipe into lines on a thread, only while `reading` is set."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        self.lines: list[str] = []
        self.reading = threading.Event()
        self.closed = False
        self._partial = b""
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.closed:
            if not self.reading.wait(0.1) or not select.select([self.fd], [], [], 0.1)[0]:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.closed = True
                break
            *whole, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [line.decode() for line in whole]


def test_a_stalled_log_reader_stalls_no_call_and_every_line_is_written_or_counted(gantry):
    # stderr is a pipe that nobody reads at first: its 64 KiB fill after a few hundred
    # access lines, and a gantry that wrote its log itself would stop answering there.
    g = gantry({"upstreams": {"demo": demo_stdio()}, "log": {"level": "info", "buffer_lines": 50}},
               stderr=subprocess.PIPE)
    reader = PipeReader(g.proc.stderr)
    requests = 2000
    with httpx2.Client(base_url=g.base, timeout=10) as client:
        for _ in range(requests):
            assert client.get("/health").status_code == 200
    r = g.modern("tools/call", {"name": "demo__echo", "arguments": {"message": "still here"}})
    assert r.status_code == 200 and "still here" in r.text, r.text

    # Read again: the queued lines come out, then new ones.
    reader.reading.set()
    markers = 0

    def marker_seen():
        nonlocal markers
        markers += 1
        httpx2.get(g.base + "/log-marker", timeout=10)
        return any("/log-marker" in line for line in reader.lines)

    wait_until(marker_seen, timeout=30, interval=0.2, what="a new access line after the log stalled")
    # The log itself says where lines went missing.
    wait_until(lambda: any("log lines were dropped" in line and '"dropped":' in line for line in reader.lines),
               timeout=10, what="the log's own note of the dropped lines")
    entries = [json.loads(line) for line in list(reader.lines)]  # every line whole JSON
    written = sum(1 for e in entries if e.get("span", {}).get("path") == "/health"
                  and e.get("message") == "finished processing request")
    markers_written = sum(1 for e in entries if e.get("span", {}).get("path") == "/log-marker"
                          and e.get("message") == "finished processing request")
    dropped = g.metric("log_lines_dropped_total")
    assert 0 < written < requests and dropped, (written, dropped)
    # Every access line was written or counted; nothing else was dropped but the few
    # lines of the tool call and of the markers sent while the queue was still full.
    assert requests - written <= dropped <= requests - written + (markers - markers_written) + 5

    # A log stalled again holds up neither the calls nor the exit.
    # (The reader may take one more chunk before it sees this: 1,000 lines fill the pipe anyway.)
    reader.reading.clear()
    with httpx2.Client(base_url=g.base, timeout=10) as client:
        for _ in range(1000):
            assert client.get("/health").status_code == 200
    assert g.metric("log_lines_dropped_total") > dropped
    started = time.monotonic()
    assert g.stop(timeout=15) == 0
    assert time.monotonic() - started < 10

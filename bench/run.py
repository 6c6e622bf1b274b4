"""Gateway overhead benchmark: direct to an upstream vs through gantry, in the same run.

For each concurrency, fresh processes are started (server-everything keeps every SSE event
in memory, so it is restarted between runs), wrk drives JSON-RPC tools/call requests with
unique ids and checks every body, and /proc gives CPU time and RSS. Results are printed
as ratios against the direct baseline measured in the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2

HERE = Path(__file__).resolve().parent
GANTRY = os.environ.get("BENCH_GANTRY_BIN", "/var/tmp/gantry-target/release/gantry")
# The optimized build (scripts/build-optimized.sh), measured beside GANTRY when given.
OPTIMIZED = os.environ.get("BENCH_OPTIMIZED_BIN") or None
TOOLS = Path(os.environ.get("E2E_TOOLS_DIR", "/var/tmp/gantry-tools"))
EVERYTHING = TOOLS / "npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
DURATION = os.environ.get("BENCH_DURATION", "5s")
WARMUP = os.environ.get("BENCH_WARMUP", "1s")
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,16,64").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def wait_port(port: int, proc=None, timeout=30):
    """Until something listens on `port`; `proc`, the process that should, is ended if not."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)
    raise RuntimeError(f"nothing listening on {port}")


def start_demo_http():
    port = free_port()
    proc = subprocess.Popen([GANTRY, "demo-upstream", "--http", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def start_everything_http():
    port = free_port()
    proc = subprocess.Popen(["node", str(EVERYTHING), "streamableHttp"], env={**os.environ, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream mcp {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The client's Host, as a production proxy passes it: the built-in demo
            # upstream checks it (DNS rebinding); server-everything does not look.
            proxy_set_header Host $http_host;
            proxy_buffering off;
        }}
    }}
}}
"""


class Nginx:
    """A plain reverse proxy, as the reference for what one extra HTTP hop costs here."""

    def __init__(self, upstream_port: int, tmp: Path, prefix: tuple = ()):
        """`prefix` runs nginx under another program (valgrind): then as one process, with
        no master forking a worker, so that the program sees the proxying."""
        self.port = free_port()
        self.worker: int | None = None
        d = tmp / f"nginx-{secrets.token_hex(3)}"
        d.mkdir()
        (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, upstream=upstream_port, port=self.port))
        single = ["-g", "master_process off;"] if prefix else []
        self.proc = subprocess.Popen([*prefix, "nginx", "-p", str(d), "-c", str(d / "nginx.conf"), *single],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        if single:
            self.worker = self.proc.pid
            return
        # The worker does the proxying; the master only supervises. The master listens
        # before it forks the worker, so the port alone does not say the worker is there.
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.time() + 10
        while not children.read_text().split():
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("nginx started no worker")
            time.sleep(0.01)
        self.worker = int(children.read_text().split()[0])

    def stop(self):
        self.proc.terminate()
        if self.worker == self.proc.pid:
            # Under valgrind the signal waits until nginx returns from epoll_wait, which
            # with nothing to do is its next timer, a minute away (seen here): a
            # connection wakes it.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                pass
        self.proc.wait(timeout=10)


class Gantry:
    def __init__(self, upstreams: str, tmp: Path, binary: str | None = None, prefix: tuple = ()):
        self.key = "gty_" + secrets.token_urlsafe(32)
        cfg = tmp / f"bench-{secrets.token_hex(3)}.toml"
        ready = tmp / f"ready-{secrets.token_hex(3)}"
        cfg.write_text(
            '[log]\nlevel = "warn"\n[[auth.api_keys]]\nname = "bench"\n'
            f'sha256 = "{hashlib.sha256(self.key.encode()).hexdigest()}"\n{upstreams}'
        )
        started = time.perf_counter()
        # In its own directory: `serve` keeps its embedded database (and audit) there.
        self.proc = subprocess.Popen([*prefix, binary or GANTRY, "--config", str(cfg), "serve", "--listen", "127.0.0.1:0",
                                      "--ready-file", str(ready)], cwd=tmp,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (ready.exists() and ready.read_text()):
            if self.proc.poll() is not None:
                raise RuntimeError("gantry exited")
            time.sleep(0.005)
        self.startup_ms = (time.perf_counter() - started) * 1000
        self.addr = ready.read_text().strip()
        self.port = int(self.addr.rsplit(":", 1)[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def initialize(port: int, path: str, auth: str | None) -> str | None:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    r = httpx2.post(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30, content=json.dumps(
        {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}))
    r.raise_for_status()
    sid = r.headers.get("mcp-session-id")
    headers.update({"Mcp-Session-Id": sid or "", "MCP-Protocol-Version": "2025-11-25"})
    httpx2.post(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30,
                content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    return sid


def start_wrk(port: int, path: str, tool: str, conc: int, duration: str, auth, session, id_base: int,
              version="2025-11-25"):
    env = {**os.environ, "BENCH_PATH": path, "BENCH_TOOL": tool, "BENCH_AUTH": auth or "",
           "BENCH_SESSION": session or "", "BENCH_VERSION": version, "BENCH_ID_BASE": str(id_base)}
    # A generous timeout: server-everything pauses now and then (it keeps every event in
    # memory), and a slow answer is a measurement, not a socket error.
    return subprocess.Popen(["wrk", "-t", str(min(conc, 2)), "-c", str(conc), "-d", duration, "--latency", "--timeout", "30s",
                             "-s", str(HERE / "mcp_call.lua"), f"http://127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, text=True, env=env)


def wrk(port: int, path: str, tool: str, conc: int, auth=None, session=None, watch=(), version="2025-11-25"):
    # Warm-up, not measured: a fresh Node upstream compiles its hot paths in its first
    # second, and every configuration starts from a fresh one.
    if WARMUP != "0s":
        warm = start_wrk(port, path, tool, conc, WARMUP, auth, session, 500_000_000, version)
        warm.communicate()
    before = {pid: cpu_seconds(pid) for pid in watch}
    peak = {pid: rss_mb(pid) for pid in watch}
    proc = start_wrk(port, path, tool, conc, DURATION, auth, session, 0, version)
    while proc.poll() is None:
        for pid in watch:
            peak[pid] = max(peak[pid], rss_mb(pid))
        time.sleep(0.2)
    out = proc.stdout.read()
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result = json.loads(line[len("RESULT "):])
    if result["bad"] or result["socket_errors"]:
        raise RuntimeError(f"{result['bad']} bad responses, {result['socket_errors']} socket errors: {result}")
    result["cpu_ms_per_req"] = {pid: (cpu_seconds(pid) - before[pid]) * 1000 / max(result["requests"], 1) for pid in watch}
    result["peak_rss_mb"] = peak
    return result


class Processes:
    """Everything a measurement started, ended (by PID) even when the measurement fails."""

    def __init__(self):
        self.stack = []

    def add(self, stop):
        self.stack.append(stop)

    def stop_all(self):
        while self.stack:
            try:
                self.stack.pop()()
            except Exception as e:  # one that will not stop must not keep the others alive
                print(f"warning: could not stop a benchmark process: {e}", file=sys.stderr)


def ended(proc):
    def stop():
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
    return stop


def measure_once(conc: int, tmp: Path, startup: list, idle_rss: list, round_no: int = 0) -> dict:
    """One round at one concurrency: every configuration, each against fresh processes. The
    two builds take turns going first, so neither is always measured on the later spell."""
    row = {}
    procs = Processes()
    try:
        # Baseline: straight to server-everything over Streamable HTTP.
        upstream, port = start_everything_http(); procs.add(ended(upstream))
        sid = initialize(port, "/mcp", None)
        row["direct"] = wrk(port, "/mcp", "echo", conc, session=sid, watch=(upstream.pid,))
        procs.stop_all()

        # Through nginx (plain proxy) to a fresh server-everything: the reference hop.
        upstream, port = start_everything_http(); procs.add(ended(upstream))
        proxy = Nginx(port, tmp); procs.add(proxy.stop)
        sid = initialize(proxy.port, "/mcp", None)
        row["nginx"] = wrk(proxy.port, "/mcp", "echo", conc, session=sid, watch=(proxy.worker, upstream.pid))
        procs.stop_all()

        # Through gantry to a fresh server-everything over Streamable HTTP.
        for key, binary in builds("via_http", round_no):
            release = binary is None
            row[key] = through_gantry(start_everything_http, "everything", conc, tmp, procs,
                                      startup if release else None, idle_rss if release else None, binary)

        # Through gantry to server-everything over stdio, and to the built-in demo over stdio.
        g = Gantry(f'[upstreams.everything]\ntransport = "stdio"\ncommand = "node"\nargs = ["{EVERYTHING}", "stdio"]\n'
                   f'[upstreams.demo]\ntransport = "stdio"\ncommand = "{GANTRY}"\nargs = ["demo-upstream"]\n', tmp)
        procs.add(g.stop)
        gsid = initialize(g.port, "/mcp/everything", g.key)
        row["via_stdio"] = wrk(g.port, "/mcp/everything", "echo", conc, auth=g.key, session=gsid, watch=(g.proc.pid,))
        dsid = initialize(g.port, "/mcp/demo", g.key)
        row["demo_stdio"] = wrk(g.port, "/mcp/demo", "echo", conc, auth=g.key, session=dsid, watch=(g.proc.pid,))
        procs.stop_all()

        # The built-in demo served over Streamable HTTP: direct, then through gantry.
        upstream, port = start_demo_http(); procs.add(ended(upstream))
        sid = initialize(port, "/mcp", None)
        row["demo_direct"] = wrk(port, "/mcp", "echo", conc, session=sid, watch=(upstream.pid,))
        procs.stop_all()
        for key, binary in builds("demo_http", round_no):
            row[key] = through_gantry(start_demo_http, "demo", conc, tmp, procs, binary=binary)
    finally:
        procs.stop_all()
    return row


def builds(key: str, round_no: int) -> list:
    """(row key, binary) of each build to measure: the release build (None: GANTRY), and the
    optimized one when given, going first in odd rounds."""
    order = [(key, None)] + ([(key + "_opt", OPTIMIZED)] if OPTIMIZED else [])
    return order if round_no % 2 == 0 else order[::-1]


def through_gantry(start_upstream, name: str, conc: int, tmp: Path, procs: Processes,
                   startup: list | None = None, idle_rss: list | None = None, binary: str | None = None) -> dict:
    """wrk → gantry (`binary`, else GANTRY) → a fresh upstream over Streamable HTTP; every
    process is ended before it returns."""
    upstream, port = start_upstream(); procs.add(ended(upstream))
    g = Gantry(f'[upstreams.{name}]\ntransport = "streamable-http"\nurl = "http://127.0.0.1:{port}/mcp"\n', tmp,
               binary)
    procs.add(g.stop)
    if startup is not None:
        startup.append(g.startup_ms)
    if idle_rss is not None:
        idle_rss.append(rss_mb(g.proc.pid))
    gsid = initialize(g.port, f"/mcp/{name}", g.key)
    result = wrk(g.port, f"/mcp/{name}", "echo", conc, auth=g.key, session=gsid, watch=(g.proc.pid, upstream.pid))
    procs.stop_all()
    return result


def median_row(rounds: list) -> dict:
    """Per configuration, the median of each figure over the rounds. Rounds alternate the
    configurations, so a slow spell of the machine (or of server-everything, which slows
    as it runs) touches all of them rather than deciding one ratio."""
    out = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        out[name] = {
            "rps": statistics.median(x["rps"] for x in runs),
            "p50_ms": statistics.median(x["p50_ms"] for x in runs),
            "p99_ms": statistics.median(x["p99_ms"] for x in runs),
            "cpu": [statistics.median(list(x["cpu_ms_per_req"].values())[i] for x in runs)
                    for i in range(len(runs[0]["cpu_ms_per_req"]))],
            # Per watched process, like "cpu": gantry's (or the proxy's) first.
            "peak_rss_mb": [max(list(x["peak_rss_mb"].values())[i] for x in runs)
                            for i in range(len(runs[0]["peak_rss_mb"]))],
            "rounds": [(round(x["rps"]), round(x["p50_ms"], 3), [round(c, 4) for c in x["cpu_ms_per_req"].values()])
                       for x in runs],
        }
    return out


def main():
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"gantry-bench-{secrets.token_hex(3)}"
    tmp.mkdir(parents=True)
    rows = []
    startup = []
    idle_rss = []
    for conc in CONCURRENCY:
        rounds = []
        for n in range(ROUNDS):
            print(f"concurrency {conc}: round {n + 1} of {ROUNDS} …", file=sys.stderr, flush=True)
            rounds.append(measure_once(conc, tmp, startup, idle_rss, n))
        rows.append({"c": conc, **median_row(rounds)})

    def cpu(cell, i=0):
        return cell["cpu"][i]

    print(f"\nmedians of {ROUNDS} interleaved rounds of {DURATION} per cell (raw rounds in the JSON file below)")
    print("\nserver-everything (echo), direct over Streamable HTTP vs through gantry, same run")
    print(f"{'conc':>4} {'direct rps':>10} {'gantry rps':>10} {'ratio':>6} {'p50 direct':>10} {'p50 gantry':>10} "
          f"{'+p50 ms':>8} {'gantry CPU ms/req':>17} {'upstream CPU ms/req':>19} {'gantry peak RSS':>15}")
    for r in rows:
        d, v = r["direct"], r["via_http"]
        print(f"{r['c']:>4} {d['rps']:>10.0f} {v['rps']:>10.0f} {v['rps'] / d['rps']:>6.2f} {d['p50_ms']:>10.3f} "
              f"{v['p50_ms']:>10.3f} {v['p50_ms'] - d['p50_ms']:>8.3f} {cpu(v):>17.3f} "
              f"{cpu(d):>19.3f} {v['peak_rss_mb'][0]:>13.1f}MB")
    print("\nreference: nginx as a plain proxy in front of the same server, same run")
    print(f"{'conc':>4} {'nginx rps':>10} {'ratio':>6} {'+p50 ms':>8} {'nginx CPU ms/req':>16} {'gantry/nginx CPU':>16}")
    for r in rows:
        d, n, v = r["direct"], r["nginx"], r["via_http"]
        print(f"{r['c']:>4} {n['rps']:>10.0f} {n['rps'] / d['rps']:>6.2f} {n['p50_ms'] - d['p50_ms']:>8.3f} "
              f"{cpu(n):>16.3f} {cpu(v) / cpu(n):>15.1f}x")
    print("\nbuilt-in demo upstream (echo): direct over Streamable HTTP vs through gantry (HTTP and stdio upstream)")
    print(f"{'conc':>4} {'direct rps':>10} {'via HTTP':>9} {'ratio':>6} {'+p50 ms':>8} {'CPU ms/req':>10} "
          f"{'via stdio':>9} {'ratio':>6} {'+p50 ms':>8} {'CPU ms/req':>10} {'demo CPU ms/req':>15}")
    for r in rows:
        d, h, st = r["demo_direct"], r["demo_http"], r["demo_stdio"]
        print(f"{r['c']:>4} {d['rps']:>10.0f} {h['rps']:>9.0f} {h['rps'] / d['rps']:>6.2f} {h['p50_ms'] - d['p50_ms']:>8.3f} "
              f"{cpu(h):>10.3f} {st['rps']:>9.0f} {st['rps'] / d['rps']:>6.2f} "
              f"{st['p50_ms'] - d['p50_ms']:>8.3f} {cpu(st):>10.3f} {cpu(d):>15.3f}")
    if OPTIMIZED:
        print("\noptimized build (scripts/build-optimized.sh: PGO + BOLT), HTTP upstreams, same run")
        print(f"{'conc':>4} {'everything rps':>14} {'ratio':>6} {'+p50 ms':>8} {'CPU ms/req':>10} {'CPU vs release':>14} "
              f"{'demo rps':>9} {'ratio':>6} {'+p50 ms':>8} {'CPU ms/req':>10} {'CPU vs release':>14}")
        for r in rows:
            d, o, v = r["direct"], r["via_http_opt"], r["via_http"]
            dd, do, dv = r["demo_direct"], r["demo_http_opt"], r["demo_http"]
            print(f"{r['c']:>4} {o['rps']:>14.0f} {o['rps'] / d['rps']:>6.2f} {o['p50_ms'] - d['p50_ms']:>8.3f} "
                  f"{cpu(o):>10.3f} {cpu(o) / cpu(v):>13.2f}x {do['rps']:>9.0f} {do['rps'] / dd['rps']:>6.2f} "
                  f"{do['p50_ms'] - dd['p50_ms']:>8.3f} {cpu(do):>10.3f} {cpu(do) / cpu(dv):>13.2f}x")
    print("\nserver-everything through gantry over stdio (ratio against its direct HTTP run above)")
    print(f"{'conc':>4} {'rps':>8} {'ratio':>6} {'p50 ms':>7} {'gantry CPU ms/req':>17}")
    for r in rows:
        st, d = r["via_stdio"], r["direct"]
        print(f"{r['c']:>4} {st['rps']:>8.0f} {st['rps'] / d['rps']:>6.2f} {st['p50_ms']:>7.3f} {cpu(st):>17.3f}")
    print(f"\ngantry start-up to ready (with one upstream): {min(startup):.0f} ms (best of {len(startup)})")
    print(f"gantry idle RSS after start-up: {statistics.median(idle_rss):.1f} MB (median of {len(idle_rss)})")

    # The targets, in front of server-everything over Streamable HTTP.
    print("\ntargets (in front of server-everything over Streamable HTTP):")
    checks = []
    measured = [("release", "via_http")] + ([("optimized", "via_http_opt")] if OPTIMIZED else [])
    for build, key in measured:
        for r in rows:
            d, v = r["direct"], r[key]
            checks.append((f"{build} c={r['c']}: throughput >= 0.95 of direct", v["rps"] / d["rps"] >= 0.95,
                           f"{v['rps'] / d['rps']:.2f}"))
            checks.append((f"{build} c={r['c']}: CPU <= 0.12 ms per request", cpu(v) <= 0.12, f"{cpu(v):.3f} ms"))
            if r["c"] == 1:
                added = v["p50_ms"] - d["p50_ms"]
                checks.append((f"{build} c=1: p50 adds <= 0.15 ms", added <= 0.15, f"{added:+.3f} ms"))
    checks.append(("idle RSS < 30 MB", statistics.median(idle_rss) < 30, f"{statistics.median(idle_rss):.1f} MB"))
    for what, ok, got in checks:
        print(f"  {'met ' if ok else 'MISS'}  {what:<52} {got}")
    json.dump(rows, open(tmp / "results.json", "w"), indent=1, default=str)
    print(f"raw results: {tmp / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())

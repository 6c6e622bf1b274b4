"""Authentication and API benchmark: requests per second and p99 for

- `/mcp` tools/call authenticated by a configuration key (the baseline: no database),
  by a key issued through the API (verdict cached for `auth.api_key_cache_secs`), and by
  an issued key with the cache off (a database lookup per request);
- a typical authenticated API read (`GET /api/v1/keys` with an access token: signature
  check plus a tenant-scoped query), against `GET /api/health` as the baseline;

on SQLite and on PostgreSQL, in the same run, as ratios against the baseline.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the gateway benchmark's helpers: wrk, initialize, /proc)

CONC = int(os.environ.get("BENCH_AUTH_CONCURRENCY", "16"))
PASSWORD = "bench password 123"


def wrk_get(port: int, path: str, token: str) -> dict:
    env = {**os.environ, "BENCH_PATH": path, "BENCH_AUTH": token}
    out = subprocess.run(["wrk", "-t", "2", "-c", str(CONC), "-d", run.DURATION, "--latency", "-s",
                          str(run.HERE / "api_read.lua"), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, env=env).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    if result["bad"] or result["socket_errors"]:
        raise RuntimeError(f"bad answers: {result}")
    return result


class Serve:
    def __init__(self, tmp: Path, database_url: str, cache_secs: int, config_key: str):
        import hashlib
        cfg = tmp / f"auth-{secrets.token_hex(3)}.toml"
        cfg.write_text(
            f'[log]\nlevel = "warn"\n[database]\nurl = "{database_url}"\nmigrate_on_start = true\n'
            f'[auth]\njwt_secret = "{secrets.token_hex(32)}"\napi_key_cache_secs = {cache_secs}\n'
            f'[[auth.api_keys]]\nname = "bench"\nsha256 = "{hashlib.sha256(config_key.encode()).hexdigest()}"\n')
        self.cfg = cfg
        ready = tmp / f"ready-{secrets.token_hex(3)}"
        self.proc = subprocess.Popen([run.GANTRY, "--config", str(cfg), "serve", "--listen", "127.0.0.1:0",
                                      "--ready-file", str(ready)], cwd=tmp,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (ready.exists() and ready.read_text()):
            if self.proc.poll() is not None:
                raise RuntimeError("gantry exited")
            time.sleep(0.01)
        self.port = int(ready.read_text().strip().rsplit(":", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def bootstrap(tmp: Path, cfg: Path, base: str) -> tuple[str, str]:
    subprocess.run([run.GANTRY, "--config", str(cfg), "admin", "create-user", "--email", "bench@example.com",
                    "--password-stdin"], input=PASSWORD + "\n", cwd=tmp, check=True, capture_output=True, text=True)
    token = httpx2.post(base + "/api/v1/auth/login",
                        json={"email": "bench@example.com", "password": PASSWORD}).json()["access_token"]
    key = httpx2.post(base + "/api/v1/keys", headers={"Authorization": f"Bearer {token}"},
                      json={"name": "bench"}).json()["key"]
    return token, key


def measure(tmp: Path, label: str, database_url: str) -> list[tuple]:
    rows = []
    config_key = "gty_" + secrets.token_urlsafe(32)
    for cache_secs in (5, 0):
        g = Serve(tmp, database_url, cache_secs, config_key)
        try:
            token, key = bootstrap(tmp, g.cfg, g.base)
            if cache_secs == 5:
                sid = run.initialize(g.port, "/mcp", config_key)
                base = run.wrk(g.port, "/mcp", "demo__echo", CONC, auth=config_key, session=sid)
                rows.append((label, "/mcp tools/call, configuration key (baseline)", base, base))
                sid = run.initialize(g.port, "/mcp", key)
                cached = run.wrk(g.port, "/mcp", "demo__echo", CONC, auth=key, session=sid)
                rows.append((label, "/mcp tools/call, issued key, verdict cached 5 s", cached, base))
                health = wrk_get(g.port, "/api/health", "")
                rows.append((label, "GET /api/health (baseline)", health, health))
                read = wrk_get(g.port, "/api/v1/keys", token)
                rows.append((label, "GET /api/v1/keys with an access token", read, health))
            else:
                sid = run.initialize(g.port, "/mcp", key)
                uncached = run.wrk(g.port, "/mcp", "demo__echo", CONC, auth=key, session=sid)
                rows.append((label, "/mcp tools/call, issued key, database lookup per request", uncached,
                             next(r[2] for r in rows if r[0] == label and "baseline" in r[1] and "/mcp" in r[1])))
        finally:
            g.stop()
    return rows


def main():
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"gantry-bench-auth-{secrets.token_hex(3)}"
    tmp.mkdir(parents=True)
    rows = measure(tmp, "sqlite", f"sqlite://{tmp}/bench.db")
    import psycopg
    name = "gantry_bench_" + secrets.token_hex(4)
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        rows += measure(tmp, "postgres", f"postgres://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"\nconcurrency {CONC}, {run.DURATION} per cell, release build\n")
    print(f"| store | what | req/s | p99 ms | req/s vs baseline | p99 vs baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for store, what, r, base in rows:
        print(f"| {store} | {what} | {r['rps']:.0f} | {r['p99_ms']:.2f} | {r['rps'] / base['rps']:.2f} | "
              f"{r['p99_ms'] / base['p99_ms']:.2f} |")


if __name__ == "__main__":
    main()

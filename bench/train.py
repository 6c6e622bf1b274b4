"""The training workload of the optimized build (scripts/build-optimized.sh): drives an
instrumented gantry through the paths production traffic takes, so the compiler (PGO) and
BOLT lay out the code those paths run as hot and the rest as cold.

Two parts, every answer checked as in the benchmark (a build that answers wrongly fails
here, before it is optimized):

- the gateway: one `gantry serve` in front of the built-in demo upstream over stdio and
  over Streamable HTTP, and server-everything over Streamable HTTP when the test tools are
  installed; wrk sends tools/call requests at concurrency 1 and 16 through the
  pass-through and the aggregate endpoint, in the session-based (2025-11-25) and the
  stateless (2026-07-28) protocol;
- the control plane: a `gantry serve` on a fresh SQLite database, a user and an API key
  created through the API (`gantry admin`, sign-in), then tools/call with the issued key
  (its verdict cached, and looked up in the database on every call) and authenticated API
  reads (`GET /api/v1/keys`, `/api/v1/status`), as `bench/auth.py` measures them.

    python bench/train.py GANTRY_BINARY
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("BENCH_WARMUP", "0s")
os.environ.setdefault("BENCH_DURATION", os.environ.get("TRAIN_DURATION", "2s"))

import auth  # noqa: E402  (the API benchmark's helpers)
import run  # noqa: E402  (reads the environment above)

LEGACY, MODERN = "2025-11-25", "2026-07-28"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run.GANTRY = sys.argv[1]
    # Each training leaves nothing behind: the build trains three times per run.
    with tempfile.TemporaryDirectory(prefix="gantry-train-") as tmp:
        train_gateway(Path(tmp))
        train_api(Path(tmp))
    return 0


def train_gateway(tmp: Path):
    procs = run.Processes()
    try:
        demo, demo_port = run.start_demo_http()
        procs.add(run.ended(demo))
        upstreams = (f'[upstreams.demo]\ntransport = "stdio"\ncommand = "{run.GANTRY}"\nargs = ["demo-upstream"]\n'
                     f'[upstreams.demo_http]\ntransport = "streamable-http"\nurl = "http://127.0.0.1:{demo_port}/mcp"\n')
        routes = [("/mcp/demo", "echo"), ("/mcp/demo_http", "echo"), ("/mcp", "demo__echo")]
        if run.EVERYTHING.exists():
            everything, port = run.start_everything_http()
            procs.add(run.ended(everything))
            upstreams += f'[upstreams.everything]\ntransport = "streamable-http"\nurl = "http://127.0.0.1:{port}/mcp"\n'
            routes.append(("/mcp/everything", "echo"))
        else:
            print(f"train: {run.EVERYTHING} not installed; training without server-everything", file=sys.stderr)
        g = run.Gantry(upstreams, tmp)
        procs.add(g.stop)
        for conc in (1, 16):
            for path, tool in routes:
                session = run.initialize(g.port, path, g.key)
                for version, sid in ((LEGACY, session), (MODERN, None)):
                    result = run.wrk(g.port, path, tool, conc, auth=g.key, session=sid, version=version)
                    print(f"train: c={conc} {path} {tool} {version}: {result['requests']} requests, all answered",
                          file=sys.stderr, flush=True)
    finally:
        # gantry writes its profile when it exits normally: SIGTERM, then its graceful stop.
        procs.stop_all()


def train_api(tmp: Path):
    # Only the PostgreSQL-free half of bench/auth.py: training must not need a database server.
    config_key = "gty_" + secrets.token_urlsafe(32)
    for cache_secs in (5, 0):
        g = auth.Serve(tmp, f"sqlite://{tmp}/train-api-{cache_secs}.db", cache_secs, config_key)
        try:
            token, key = auth.bootstrap(tmp, g.cfg, g.base)
            sid = run.initialize(g.port, "/mcp", key)
            result = run.wrk(g.port, "/mcp", "demo__echo", 16, auth=key, session=sid)
            print(f"train: /mcp with an issued key (verdict cached {cache_secs} s): {result['requests']} requests, "
                  "all answered", file=sys.stderr, flush=True)
            if cache_secs:
                for path in ("/api/v1/keys", "/api/v1/status"):
                    result = auth.wrk_get(g.port, path, token)
                    print(f"train: GET {path}: {result['requests']} requests, all answered", file=sys.stderr,
                          flush=True)
        finally:
            g.stop()


if __name__ == "__main__":
    sys.exit(main())

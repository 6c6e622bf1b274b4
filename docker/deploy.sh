#!/usr/bin/env bash
# Deploys the Gantry stack on this host, in the rollout plan's eight steps:
#   1. prerequisites   2. configuration and secrets   3. directories   4. TLS certificate
#   5. pull images     6. build images                7. start (Vault first, then the rest)
#   8. wait for every healthcheck, then print status and URLs
# Safe to run again: what exists is kept, what changed is applied.
#
#   ./deploy.sh                      deploy (or update) the stack
#   ./deploy.sh --generate-secrets   create .env from env.example if needed and fill every CHANGE_ME
#   ./deploy.sh --dry-run            show what would be done, change nothing
#   ./deploy.sh --no-pull            skip pulling (offline hosts, local images)
#   ./deploy.sh --timeout 300        seconds to wait for health (default 300)
#
# COMPOSE_FILE and COMPOSE_PROFILES in the environment or .env apply as for docker compose.
set -euo pipefail
cd "$(dirname "$0")"

DRY_RUN=false
GENERATE=false
PULL=true
TIMEOUT=300
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=true ;;
    --generate-secrets) GENERATE=true ;;
    --no-pull) PULL=false ;;
    --timeout) shift; TIMEOUT=${1:?--timeout needs seconds} ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "deploy: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -t 1 ]; then BOLD=$'\e[1m'; RED=$'\e[31m'; GREEN=$'\e[32m'; RESET=$'\e[0m'; else BOLD=; RED=; GREEN=; RESET=; fi
step() { printf '\n%s==> [%s/8] %s%s\n' "$BOLD" "$1" "$2" "$RESET"; }
info() { printf '    %s\n' "$*"; }
ok() { printf '    %sok%s %s\n' "$GREEN" "$RESET" "$*"; }
die() { printf '%sdeploy: error:%s %s\n' "$RED" "$RESET" "$*" >&2; exit 1; }
run() { # run CMD…: executes, or only shows under --dry-run
  if $DRY_RUN; then printf '    would run: %s\n' "$*"; else "$@"; fi
}

# env_get / env_set: reading and writing .env (shared with vault/init.sh).
# shellcheck source=SCRIPTDIR/env-file.sh
. ./env-file.sh

# ---------------------------------------------------------------------------------------
step 1 "Checking prerequisites"
missing=0
need() { # need CMD HINT
  if command -v "$1" >/dev/null 2>&1; then ok "$1"; else printf '    %smissing%s %s: %s\n' "$RED" "$RESET" "$1" "$2"; missing=1; fi
}
need docker "install Docker Engine: https://docs.docker.com/engine/install/"
need openssl "apt-get install openssl"
need python3 "apt-get install python3 (vault/init.sh encodes secrets with it)"
if command -v docker >/dev/null 2>&1; then
  if v=$(docker compose version --short 2>/dev/null); then
    case "$v" in
      v2.*|2.*) ok "docker compose $v" ;;
      *) printf '    %sdocker compose %s is not Compose v2%s (docker-compose v1 cannot read this file)\n' "$RED" "$v" "$RESET"; missing=1 ;;
    esac
  else
    printf '    %smissing%s docker compose v2: https://docs.docker.com/compose/install/linux/\n' "$RED" "$RESET"; missing=1
  fi
  if ! $DRY_RUN && ! docker info >/dev/null 2>&1 && ! docker compose ls >/dev/null 2>&1; then
    printf '    %sdocker does not answer%s: is the daemon running, and may this user use it?\n' "$RED" "$RESET"; missing=1
  fi
fi
# The published ports must be free, unless it is this stack's own nginx holding them.
if [ -f .env ] && ! $DRY_RUN && [ -z "$(docker compose ps -q nginx 2>/dev/null)" ]; then
  bind=$(env_get BIND_ADDRESS); bind=${bind:-0.0.0.0}; [ "$bind" = 0.0.0.0 ] && bind=127.0.0.1
  for var in HTTP_PORT HTTPS_PORT; do
    port=$(env_get "$var"); port=${port:-$([ "$var" = HTTP_PORT ] && echo 80 || echo 443)}
    if (exec 3<>"/dev/tcp/$bind/$port") 2>/dev/null; then
      printf '    %sport %s (%s) is in use%s: stop what listens there or change %s in .env\n' "$RED" "$port" "$var" "$RESET" "$var"
      missing=1
    else
      ok "port $port free ($var)"
    fi
  done
fi
[ "$missing" = 0 ] || die "fix what is listed above, then run ./deploy.sh again"

# ---------------------------------------------------------------------------------------
step 2 "Checking configuration and secrets (.env)"
if [ ! -f .env ]; then
  if $GENERATE; then
    run cp env.example .env
    run chmod 600 .env
    info "created .env from env.example"
  else
    die ".env does not exist: cp env.example .env and edit it, or run ./deploy.sh --generate-secrets"
  fi
fi
# A secret that env.example asks for but .env lacks (an .env from an older version).
missing_names=""
if [ -f .env ]; then
  missing_names=$(comm -23 <(sed -n 's/^\([A-Z0-9_]*\)=CHANGE_ME$/\1/p' env.example | sort) \
                           <(sed -n 's/^\([A-Z0-9_]*\)=.*/\1/p' .env | sort) | tr '\n' ' ')
fi
if [ -n "$missing_names" ]; then
  if $GENERATE && ! $DRY_RUN; then
    for name in $missing_names; do env_set "$name" CHANGE_ME; done
    info "added to .env (new in env.example): $missing_names"
  elif $GENERATE; then
    info "would add to .env (new in env.example): $missing_names"
  elif ! $DRY_RUN; then
    die "missing from .env (new in env.example): ${missing_names}— add them, or run ./deploy.sh --generate-secrets"
  fi
fi
if $GENERATE && ! $DRY_RUN; then
  while IFS= read -r name; do
    case "$name" in
      SESSION_KEY) value=$(openssl rand -base64 32) ;;
      SECRET_KEY) value=$(openssl rand -base64 48 | tr -d '\n') ;;
      *) value=$(openssl rand -hex 24) ;;
    esac
    env_set "$name" "$value"
    info "generated $name"
  done < <(sed -n 's/^\([A-Z0-9_]*\)=CHANGE_ME$/\1/p' .env)
elif $GENERATE; then
  sed -n 's/^\([A-Z0-9_]*\)=CHANGE_ME$/    would generate \1/p' .env
fi
if [ -f .env ]; then
  chmod 600 .env 2>/dev/null || true
  unset_names=$(sed -n 's/^\([A-Z0-9_]*\)=CHANGE_ME$/\1/p' .env | tr '\n' ' ')
  if [ -n "$unset_names" ] && ! $DRY_RUN; then
    die "these still say CHANGE_ME in .env: ${unset_names}— set them, or run ./deploy.sh --generate-secrets"
  fi
  secret_key=$(env_get SECRET_KEY)
  if ! $DRY_RUN; then
    case "$secret_key" in
      ""|CHANGE_ME|secret|changeme|password|insecure*) die "SECRET_KEY is missing or a well-known value: ./deploy.sh --generate-secrets makes one" ;;
    esac
    [ "${#secret_key}" -ge 32 ] || die "SECRET_KEY is ${#secret_key} characters: at least 32 are needed (openssl rand -base64 48)"
    session_key=$(env_get SESSION_KEY)
    decoded=$(printf '%s' "$session_key" | openssl base64 -d -A 2>/dev/null | wc -c)
    [ "$decoded" -eq 32 ] || die "SESSION_KEY must be base64 of 32 bytes (openssl rand -base64 32)"
    bridge_key=$(env_get MCP_BRIDGE_KEY)
    digest=$(printf '%s' "$bridge_key" | openssl dgst -sha256 -r | cut -d' ' -f1)
    [ "$(env_get MCP_BRIDGE_KEY_SHA256)" = "$digest" ] || { env_set MCP_BRIDGE_KEY_SHA256 "$digest"; info "MCP_BRIDGE_KEY_SHA256 updated"; }
  fi
  ok "no CHANGE_ME left, SECRET_KEY and SESSION_KEY are strong"
  for pair in GITHUB_TOKEN:github BRAVE_API_KEY:brave; do
    key=${pair%%:*}; profile=${pair##*:}
    if [ -n "$(env_get "$key")" ] && [[ ",$(env_get COMPOSE_PROFILES)," != *",$profile,"* ]]; then
      info "note: $key is set but COMPOSE_PROFILES does not include $profile: that server stays off"
    fi
  done
fi

# ---------------------------------------------------------------------------------------
step 3 "Creating directories and Docker secret files"
run mkdir -p secrets certs certbot/www
run chmod 700 secrets
write_secret() { # write_secret FILE VALUE: rewritten only when the value changed
  local file="secrets/$1"
  if [ -f "$file" ] && [ "$(cat "$file")" = "$2" ]; then return 0; fi
  if $DRY_RUN; then info "would write $file"; return 0; fi
  (umask 077; printf '%s' "$2" > "$file.tmp")
  # Bind-mounted into containers with this mode; the directory itself stays 0700.
  chmod 644 "$file.tmp"; mv "$file.tmp" "$file"
  info "wrote $file"
}
if [ -f .env ]; then
  write_secret postgres_password "$(env_get POSTGRES_PASSWORD)"
  write_secret app_db_password "$(env_get APP_DB_PASSWORD)"
  write_secret redis_password "$(env_get REDIS_PASSWORD)"
  write_secret mongodb_password "$(env_get MONGO_PASSWORD)"
  write_secret mongodb_app_password "$(env_get MONGO_APP_PASSWORD)"
  write_secret grafana_admin_password "$(env_get GRAFANA_ADMIN_PASSWORD)"
  write_secret alert_webhook_url "$(env_get ALERT_WEBHOOK_URL)"
fi
for f in vault_role_id vault_secret_id; do
  [ -f "secrets/$f" ] || run touch "secrets/$f"
done
ok "secrets/ (0700), certs/, certbot/www/"

# ---------------------------------------------------------------------------------------
step 4 "TLS certificate"
domain=$(env_get DOMAIN); domain=${domain:-localhost}
if [ -s certs/fullchain.pem ] && [ -s certs/privkey.pem ]; then
  ends=$(openssl x509 -in certs/fullchain.pem -noout -enddate | cut -d= -f2)
  if openssl x509 -in certs/fullchain.pem -noout -checkend $((14 * 86400)) >/dev/null; then
    ok "certs/fullchain.pem present (valid until $ends)"
  else
    info "warning: certs/fullchain.pem expires within 14 days ($ends): renew it (docs/operations.md)"
  fi
else
  info "no certificate: generating a self-signed one for $domain (replace it for production: docs/operations.md)"
  run openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 365 \
    -subj "/CN=$domain" -addext "subjectAltName=DNS:$domain,DNS:localhost,IP:127.0.0.1" \
    -keyout certs/privkey.pem -out certs/fullchain.pem 2>/dev/null
  if ! $DRY_RUN; then
    # nginx runs as uid 101 inside its container.
    if [ "$(id -u)" = 0 ]; then chown 101:101 certs/privkey.pem; chmod 600 certs/privkey.pem; else chmod 644 certs/privkey.pem; fi
  fi
  ok "certs/fullchain.pem, certs/privkey.pem"
fi

# ---------------------------------------------------------------------------------------
step 5 "Pulling images"
if $PULL; then
  run docker compose pull --ignore-buildable --quiet
else
  info "skipped (--no-pull)"
fi

# ---------------------------------------------------------------------------------------
step 6 "Building images"
run docker compose build

# ---------------------------------------------------------------------------------------
step 7 "Starting the stack"
# Podman's Docker API reports a container's network by name where compose expects its id,
# so compose would recreate every running container on each `up` (and a recreated Vault
# is sealed again). On Podman, running containers are kept; to apply a changed setting
# there, use: docker compose up -d --force-recreate SERVICE (then vault/init.sh for vault).
UP_FLAGS=()
engine=$(docker version --format '{{range .Server.Components}}{{.Name}} {{end}}' 2>/dev/null || true)
if [[ "$engine" == *Podman* ]]; then
  UP_FLAGS=(--no-recreate)
  info "Podman engine: running containers are kept as they are (--no-recreate)"
fi
run docker compose up -d "${UP_FLAGS[@]}" vault
if $DRY_RUN; then info "would run: vault/init.sh"; else bash vault/init.sh; fi
up_failed=false
if ! run docker compose up -d --remove-orphans "${UP_FLAGS[@]}"; then
  # Compose stops at the first dependency that fails its healthcheck: say which below.
  up_failed=true
fi

# ---------------------------------------------------------------------------------------
step 8 "Waiting for every healthcheck (up to ${TIMEOUT}s)"
if $DRY_RUN; then
  info "would wait for: $(docker compose config --services 2>/dev/null | tr '\n' ' ')"
  exit 0
fi
deadline=$(( $(date +%s) + TIMEOUT ))
strikes=0  # polls in a row with a failing service and nothing else still starting
while true; do
  pending=()
  failed=()
  while read -r service name state health; do
    [ -n "$service" ] || continue
    case "$state/$health" in
      running/healthy) ;;
      running/unhealthy) failed+=("$service:$name") ;;
      exited/*|dead/*) failed+=("$service:$name") ;;
      *) pending+=("$service") ;;
    esac
  done < <(docker compose ps --all --format '{{.Service}} {{.Name}} {{.State}} {{.Health}}' | grep -v '^restore ')
  # A failing service fails the run once nothing else is still starting and it stays
  # failed for six polls (a check can fail while a busy host finishes starting it),
  # or at once when compose itself gave up on it, or when time is up.
  if [ "${#failed[@]}" -gt 0 ] && [ "${#pending[@]}" -eq 0 ]; then strikes=$((strikes + 1)); else strikes=0; fi
  if [ "${#failed[@]}" -gt 0 ] && { $up_failed || [ "$strikes" -ge 6 ] || [ "$(date +%s)" -ge "$deadline" ]; }; then
    for f in "${failed[@]}"; do
      printf '\n%s%s (%s) is not healthy%s; its last log lines:\n' "$RED" "${f%%:*}" "${f#*:}" "$RESET" >&2
      docker compose logs --no-log-prefix --tail 25 "${f%%:*}" >&2 || true
    done
    die "the stack did not become healthy; fix the services named above, then run ./deploy.sh again"
  fi
  if [ "${#pending[@]}" -eq 0 ] && [ "${#failed[@]}" -eq 0 ]; then break; fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    for s in $(printf '%s\n' "${pending[@]}" | sort -u); do
      printf '\n%s%s did not become healthy within %ss%s; its last log lines:\n' "$RED" "$s" "$TIMEOUT" "$RESET" >&2
      docker compose logs --tail 25 "$s" >&2 || true
    done
    die "timed out waiting for health"
  fi
  printf '    waiting for: %s\n' "$(printf '%s\n' "${pending[@]}" "${failed[@]%%:*}" | sort -u | tr '\n' ' ')"
  sleep 5
done
ok "every service is healthy"

docker compose ps
https_port=$(env_get HTTPS_PORT); https_port=${https_port:-443}
base="https://$domain"; [ "$https_port" = 443 ] || base="$base:$https_port"
cat <<EOF

${BOLD}Gantry is up.${RESET}
  API health    $base/api/health
  API status    $base/api/v1/status
  API docs      $base/api/docs
  MCP endpoint  $base/mcp
  Grafana       $base/grafana/   (admin / GRAFANA_ADMIN_PASSWORD)
  Logs          docker compose logs -f api_server

First administrator and API key:
  docker compose exec api_server gantry admin create-user --email you@example.com --platform-admin
  docker compose exec api_server gantry admin create-key --tenant default --name laptop
Vault's unseal key and root token are in secrets/vault-init.json: move them somewhere safe.
EOF

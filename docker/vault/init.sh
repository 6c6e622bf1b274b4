#!/usr/bin/env bash
# Initialises, unseals and configures Vault for the Gantry stack. Run from docker/ after
# `docker compose up -d vault` (deploy.sh does). Idempotent:
#   - first run: `vault operator init` (one key share; the key and root token go to
#     secrets/vault-init.json, mode 0600: move them somewhere safe, see docs/operations.md);
#   - every run: unseal when sealed; KV v2 at secret/, AppRole auth, the gantry policy and
#     role; the AppRole role id and secret id written to secrets/ for api_server and
#     mcp_gateway; secret/database and secret/gantry stored when absent (values from
#     secrets/ and .env — later `vault kv put` changes are kept, never overwritten).
set -euo pipefail
cd "$(dirname "$0")/.."

SECRETS_DIR=${SECRETS_DIR:-secrets}
INIT_FILE="$SECRETS_DIR/vault-init.json"
# Plain `docker compose`: COMPOSE_FILE / COMPOSE_PROFILES from the environment apply.
COMPOSE=(docker compose)

log() { printf 'vault: %s\n' "$*"; }
die() { printf 'vault: error: %s\n' "$*" >&2; exit 1; }

# vault CLI inside the container; the token travels in the environment, not the arguments.
vx() { "${COMPOSE[@]}" exec -T -e VAULT_ADDR=http://127.0.0.1:8200 -e VAULT_TOKEN="${VAULT_TOKEN:-}" vault vault "$@"; }

init_field() { # init_field EXPRESSION: a value from the init file, e.g. 'd["root_token"]'
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$INIT_FILE" "$1"
}

status_json() { vx status -format=json 2>/dev/null || true; }

for _ in $(seq 1 60); do
  s=$(status_json)
  [ -n "$s" ] && break
  sleep 1
done
[ -n "${s:-}" ] || die "Vault does not answer; see: docker compose logs vault"

umask 077
mkdir -p "$SECRETS_DIR"
if grep -q '"initialized": *false' <<<"$s"; then
  log "initialising (1 key share)"
  vx operator init -key-shares=1 -key-threshold=1 -format=json > "$INIT_FILE.tmp"
  mv "$INIT_FILE.tmp" "$INIT_FILE"
  log "unseal key and root token written to $INIT_FILE"
  s=$(status_json)
fi
[ -s "$INIT_FILE" ] || die "Vault is initialised but $INIT_FILE is missing: unseal it by hand (vault operator unseal) and set VAULT_TOKEN"

if grep -q '"sealed": *true' <<<"$s"; then
  log "unsealing"
  key=$(init_field 'd["unseal_keys_b64"][0]')
  [ -n "$key" ] || die "no unseal key in $INIT_FILE"
  vx operator unseal "$key" >/dev/null
fi

VAULT_TOKEN=${VAULT_TOKEN:-$(init_field 'd["root_token"]')}
export VAULT_TOKEN

# Listed into a variable first: `grep -q` closing the pipe early would fail it (pipefail).
mounts=$(vx secrets list -format=json)
if ! grep -q '"secret/"' <<<"$mounts"; then
  log "enabling KV v2 at secret/"
  vx secrets enable -path=secret -version=2 kv >/dev/null
fi
auths=$(vx auth list -format=json)
if ! grep -q '"approle/"' <<<"$auths"; then
  log "enabling AppRole"
  vx auth enable approle >/dev/null
fi
"${COMPOSE[@]}" exec -T -e VAULT_ADDR=http://127.0.0.1:8200 -e VAULT_TOKEN="$VAULT_TOKEN" vault \
  vault policy write gantry - < vault/policies/gantry.hcl >/dev/null
vx write auth/approle/role/gantry token_policies=gantry token_ttl=1h token_max_ttl=4h secret_id_ttl=0 >/dev/null
vx read -field=role_id auth/approle/role/gantry/role-id > "$SECRETS_DIR/vault_role_id"
if [ ! -s "$SECRETS_DIR/vault_secret_id" ]; then
  log "issuing the services' AppRole secret id"
  vx write -f -field=secret_id auth/approle/role/gantry/secret-id > "$SECRETS_DIR/vault_secret_id"
fi
# Docker secrets are bind-mounted with their host mode: readable by the services' users.
chmod 0644 "$SECRETS_DIR/vault_role_id" "$SECRETS_DIR/vault_secret_id"

# shellcheck source=SCRIPTDIR/../env-file.sh
. ./env-file.sh
json_string() { python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'; }

put_if_absent() { # put_if_absent PATH JSON
  if vx kv get -format=json "$1" >/dev/null 2>&1; then
    log "$1 exists: kept"
  else
    printf '%s' "$2" | vx kv put "$1" - >/dev/null
    log "$1 stored"
  fi
}

pg=$(json_string < "$SECRETS_DIR/postgres_password")
app=$(json_string < "$SECRETS_DIR/app_db_password")
put_if_absent secret/database "{\"password\": $pg, \"app_password\": $app}"

redis_url=$(printf 'redis://:%s@redis:6379/0' "$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read().strip(), safe=""))' "$SECRETS_DIR/redis_password")" | json_string)
# The services' own MongoDB user (mongodb/init), confined to the audit database.
mongo_url=$(printf 'mongodb://%s:%s@mongodb:27017/gantry_audit?authSource=admin&directConnection=true' \
  "$(mu=$(env_get MONGO_APP_USER); printf "%s" "${mu:-gantry_audit}")" \
  "$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read().strip(), safe=""))' "$SECRETS_DIR/mongodb_app_password")" | json_string)
secret_key=$(env_get SECRET_KEY | tr -d '\n' | json_string)
session_key=$(env_get SESSION_KEY | tr -d '\n' | json_string)
put_if_absent secret/gantry "{\"secret_key\": $secret_key, \"session_key\": $session_key, \"redis_url\": $redis_url, \"mongodb_url\": $mongo_url}"

log "ready: KV v2 at secret/, AppRole role gantry, policy gantry"

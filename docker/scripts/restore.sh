#!/usr/bin/env bash
# Restores one backup made by backup.sh. Checksums are verified before anything is touched.
#
#   docker compose stop api_server mcp_gateway
#   docker compose run --rm restore restore.sh 20261126T023000Z        # everything in it
#   docker compose run --rm restore restore.sh 20261126T023000Z postgres mongodb
#   docker compose start api_server mcp_gateway
#
# Parts: postgres, mongodb, redis (needs redis stopped: its data volume is rewritten),
# volumes (each volume-<name>.tar.gz into /restore/<name>, mounted by the restore service).
# PostgreSQL refuses while other sessions use the database unless --force (which ends them).
set -euo pipefail

BACKUP_DIR=${BACKUP_DIR:-/backups}
POSTGRES_HOST=${POSTGRES_HOST:-database}
POSTGRES_USER=${POSTGRES_USER:-appuser}
POSTGRES_DB=${POSTGRES_DB:-appdb}
MONGO_HOST=${MONGO_HOST:-mongodb}
MONGO_USER=${MONGO_USER:-gantry}
SECRETS=${SECRETS_DIR:-/run/secrets}

log() { printf '%s restore: %s\n' "$(date -u +%FT%TZ)" "$*"; }
die() { log "FAILED: $*" >&2; exit 1; }
secret() { tr -d '\n' < "$SECRETS/$1"; }

force=false
args=()
for a in "$@"; do
  case "$a" in
    --force) force=true ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) args+=("$a") ;;
  esac
done
[ "${#args[@]}" -ge 1 ] || { find "$BACKUP_DIR" -mindepth 1 -maxdepth 1 -type d -name '20*' ! -name '*.partial' -printf '%f\n' | sort; die "name a backup (listed above)"; }
name=${args[0]}
parts=("${args[@]:1}")
[ "${#parts[@]}" -gt 0 ] || parts=(postgres mongodb redis volumes)
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "'$name' is not a backup name (e.g. 20261126T023000Z)"
for p in "${parts[@]}"; do
  case "$p" in postgres|mongodb|redis|volumes) ;; *) die "unknown part '$p' (postgres, mongodb, redis, volumes)" ;; esac
done
dir="$BACKUP_DIR/$name"
[ -d "$dir" ] || die "no backup $dir"
[ -f "$dir/SHA256SUMS" ] || die "$dir has no SHA256SUMS: incomplete or not made by backup.sh"

log "verifying checksums of $name"
(cd "$dir" && sha256sum --quiet -c SHA256SUMS) || die "checksum mismatch: $name is damaged, nothing was restored"

has() { local p; for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

if has postgres; then
  export PGPASSWORD; PGPASSWORD=$(secret postgres_password)
  others=$(psql -h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d postgres -Atc \
    "SELECT count(*) FROM pg_stat_activity WHERE datname = '$POSTGRES_DB' AND pid <> pg_backend_pid()")
  if [ "$others" != 0 ]; then
    $force || die "$others other sessions use $POSTGRES_DB: stop api_server and mcp_gateway first (or pass --force to end them)"
    log "postgres: ending $others sessions (--force)"
    psql -h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d postgres -qAtc \
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$POSTGRES_DB' AND pid <> pg_backend_pid()" >/dev/null
  fi
  log "postgres: roles (existing ones are kept)"
  psql -h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d postgres -q -f "$dir/postgres-roles.sql" >/dev/null 2>&1 || true
  log "postgres: recreating $POSTGRES_DB"
  psql -h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d postgres -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS \"$POSTGRES_DB\" WITH (FORCE)"
  psql -h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d postgres -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$POSTGRES_DB\""
  pg_restore -h "$POSTGRES_HOST" -U "$POSTGRES_USER" -d "$POSTGRES_DB" --exit-on-error "$dir/postgres-$POSTGRES_DB.dump" \
    || die "pg_restore failed"
  unset PGPASSWORD
  log "postgres: restored"
fi

if has mongodb; then
  if [ ! -f "$dir/mongodb.archive.gz" ]; then
    log "mongodb: not in this backup, skipped"
  else
    command -v mongorestore >/dev/null || die "mongorestore is not installed"
    mongo_config=$(mktemp); printf 'password: "%s"\n' "$(secret mongodb_password)" > "$mongo_config"
    mongorestore --quiet --host "$MONGO_HOST" --username "$MONGO_USER" --authenticationDatabase admin \
      --config "$mongo_config" --archive="$dir/mongodb.archive.gz" --gzip --drop \
      || { rm -f "$mongo_config"; die "mongorestore failed"; }
    rm -f "$mongo_config"
    log "mongodb: restored"
  fi
fi

if has redis; then
  if [ -d /restore/redis_data ]; then
    if REDISCLI_AUTH=$(secret redis_password) redis-cli -h redis ping >/dev/null 2>&1; then
      die "redis is running: docker compose stop redis first (its data files are replaced)"
    fi
    rm -f /restore/redis_data/appendonly.aof /restore/redis_data/dump.rdb
    rm -rf /restore/redis_data/appendonlydir
    cp "$dir/redis.rdb" /restore/redis_data/dump.rdb
    log "redis: dump.rdb in place; start redis to load it"
  else
    log "redis: /restore/redis_data is not mounted, skipped"
  fi
fi

if has volumes; then
  for archive in "$dir"/volume-*.tar.gz; do
    [ -f "$archive" ] || continue
    vol=$(basename "$archive" .tar.gz); vol=${vol#volume-}
    if [ ! -d "/restore/$vol" ]; then
      log "volume $vol: /restore/$vol is not mounted, skipped"
      continue
    fi
    find "/restore/$vol" -mindepth 1 -delete
    tar -C "/restore/$vol" -xzf "$archive"
    log "volume $vol: restored"
  done
fi
log "done: $name"

#!/usr/bin/env bash
# One backup of the Gantry stack into $BACKUP_DIR/<UTC timestamp>/:
#   postgres-roles.sql      roles (pg_dumpall --roles-only), so a fresh cluster can own the restored objects
#   postgres-<db>.dump      pg_dump -Fc
#   mongodb.archive.gz      mongodump --archive --gzip (BACKUP_MONGODB=false skips it)
#   redis.rdb               redis-cli --rdb (a consistent snapshot taken by Redis itself)
#   volume-<name>.tar.gz    each directory mounted under /volumes (Vault's data, Grafana's)
#   SHA256SUMS              checked by restore.sh before anything is touched
# A backup is written to <stamp>.partial and renamed when complete, so a half-written one
# is never taken for a good one. Backups older than BACKUP_RETENTION_DAYS are removed.
# Runs inside the backup service: docker compose exec backup backup.sh
set -euo pipefail

BACKUP_DIR=${BACKUP_DIR:-/backups}
RETENTION_DAYS=${BACKUP_RETENTION_DAYS:-7}
POSTGRES_HOST=${POSTGRES_HOST:-database}
POSTGRES_USER=${POSTGRES_USER:-appuser}
POSTGRES_DB=${POSTGRES_DB:-appdb}
REDIS_HOST=${REDIS_HOST:-redis}
MONGO_HOST=${MONGO_HOST:-mongodb}
MONGO_USER=${MONGO_USER:-gantry}
BACKUP_MONGODB=${BACKUP_MONGODB:-true}
SECRETS=${SECRETS_DIR:-/run/secrets}
METRICS_DIR="$BACKUP_DIR/.metrics"

log() { printf '%s backup: %s\n' "$(date -u +%FT%TZ)" "$*"; }
die() { log "FAILED: $*" >&2; write_metrics 0; exit 1; }

write_metrics() { # write_metrics SUCCESS(0|1)
  mkdir -p "$METRICS_DIR"
  local now; now=$(date +%s)
  {
    echo "# HELP gantry_backup_last_run_timestamp_seconds When the last backup run ended."
    echo "# TYPE gantry_backup_last_run_timestamp_seconds gauge"
    echo "gantry_backup_last_run_timestamp_seconds $now"
    echo "# HELP gantry_backup_last_run_success 1 when the last backup run succeeded."
    echo "# TYPE gantry_backup_last_run_success gauge"
    echo "gantry_backup_last_run_success $1"
    if [ "$1" = 1 ]; then
      echo "# HELP gantry_backup_last_success_timestamp_seconds When the last successful backup ended."
      echo "# TYPE gantry_backup_last_success_timestamp_seconds gauge"
      echo "gantry_backup_last_success_timestamp_seconds $now"
      echo "# HELP gantry_backup_last_size_bytes Size of the last successful backup."
      echo "# TYPE gantry_backup_last_size_bytes gauge"
      echo "gantry_backup_last_size_bytes $(du -sb "$final" | cut -f1)"
    elif [ -f "$METRICS_DIR/backup.prom" ]; then
      grep -A2 -E '^# HELP gantry_backup_last_(success_timestamp_seconds|size_bytes)' "$METRICS_DIR/backup.prom" | grep -v '^--$' || true
    fi
  } > "$METRICS_DIR/backup.prom.tmp"
  mv "$METRICS_DIR/backup.prom.tmp" "$METRICS_DIR/backup.prom"
}

secret() { tr -d '\n' < "$SECRETS/$1"; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
final="$BACKUP_DIR/$stamp"
work="$final.partial"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
log "starting $stamp"

export PGPASSWORD; PGPASSWORD=$(secret postgres_password)
log "postgres: roles"
pg_dumpall -h "$POSTGRES_HOST" -U "$POSTGRES_USER" --roles-only -f "$work/postgres-roles.sql" \
  || die "pg_dumpall --roles-only failed"
log "postgres: $POSTGRES_DB"
pg_dump -h "$POSTGRES_HOST" -U "$POSTGRES_USER" -Fc -f "$work/postgres-$POSTGRES_DB.dump" "$POSTGRES_DB" \
  || die "pg_dump $POSTGRES_DB failed"
unset PGPASSWORD

if [ "$BACKUP_MONGODB" = true ]; then
  command -v mongodump >/dev/null || die "mongodump is not installed (set BACKUP_MONGODB=false to back up without MongoDB)"
  log "mongodb: all databases"
  # The password goes through a config file on tmpfs, not the command line.
  mongo_config=$(mktemp); printf 'password: "%s"\n' "$(secret mongodb_password)" > "$mongo_config"
  mongodump --quiet --host "$MONGO_HOST" --username "$MONGO_USER" --authenticationDatabase admin \
    --config "$mongo_config" --archive="$work/mongodb.archive.gz" --gzip \
    || { rm -f "$mongo_config"; die "mongodump failed"; }
  rm -f "$mongo_config"
else
  log "mongodb: skipped (BACKUP_MONGODB=$BACKUP_MONGODB)"
fi

log "redis: snapshot"
REDISCLI_AUTH=$(secret redis_password) redis-cli -h "$REDIS_HOST" --rdb "$work/redis.rdb" >/dev/null \
  || die "redis-cli --rdb failed"

for volume in /volumes/*/; do
  [ -d "$volume" ] || continue
  name=$(basename "$volume")
  log "volume: $name"
  tar -C "$volume" -czf "$work/volume-$name.tar.gz" . || die "tar of $name failed"
done

(cd "$work" && sha256sum -- * > SHA256SUMS)
mv "$work" "$final"
trap - EXIT
log "done: $final ($(du -sh "$final" | cut -f1), $(( $(date +%s) - started )) s)"
write_metrics 1

find "$BACKUP_DIR" -mindepth 1 -maxdepth 1 -type d -name '20*' -mtime +"$RETENTION_DAYS" -print0 \
  | while IFS= read -r -d '' old; do log "retention: removing $(basename "$old")"; rm -rf "$old"; done
find "$BACKUP_DIR" -mindepth 1 -maxdepth 1 -type d -name '*.partial' -mmin +720 -exec rm -rf {} +

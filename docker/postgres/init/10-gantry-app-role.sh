#!/usr/bin/env bash
# First start of the database only: the role the services connect as. It owns nothing,
# so row-level security always applies to it; `gantry migrate` (as the owner, appuser)
# grants it what it needs.
set -euo pipefail
password="$(cat /run/secrets/app_db_password)"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" --set=pw="$password" <<'SQL'
CREATE ROLE gantry_app LOGIN PASSWORD :'pw';
SQL

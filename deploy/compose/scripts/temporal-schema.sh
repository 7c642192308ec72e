#!/bin/sh
# One-shot (temporalio/admin-tools): create Temporal's persistence and visibility databases on
# PostgreSQL and bring both schemas to the version the admin-tools image ships, which matches
# the server image of the same tag. Safe to run again: existing databases are kept and
# update-schema applies only the versions not yet applied.
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${SQL_PASSWORD:?SQL_PASSWORD is required}"
PORT="${DB_PORT:-5432}"
SCHEMA_ROOT=/etc/temporal/schema/postgresql/v12

echo "waiting for PostgreSQL at ${POSTGRES_SEEDS}:${PORT}"
attempt=0
until nc -z -w 5 "$POSTGRES_SEEDS" "$PORT"; do
  attempt=$((attempt + 1))
  [ "$attempt" -lt 30 ] || { echo "PostgreSQL did not answer"; exit 1; }
  sleep 2
done

sql() {
  temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$PORT" -u "$POSTGRES_USER" "$@"
}

for store in temporal:temporal temporal_visibility:visibility; do
  database="${store%%:*}"
  schema="${store##*:}"
  echo "database ${database}: create, set up, upgrade"
  sql --db "$database" create-database
  sql --db "$database" setup-schema -v 0.0
  sql --db "$database" update-schema -d "${SCHEMA_ROOT}/${schema}/versioned"
done
echo "Temporal schemas are up to date"

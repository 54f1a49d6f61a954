#!/usr/bin/env bash
# Run the gateway standalone against the local PostgreSQL, serving the
# example chat page on http://localhost:3000 (metrics on :3001/metrics).
# PGWS_DB_URI (and every other PGWS_* variable) set in the environment wins
# over sample-env: with it set, the local PostgreSQL is left alone.
#   PGWS_DB_URI='postgres://user:password@127.0.0.1:5432/db' scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
pgws_ensure_cargo
if [ -z "${PGWS_DB_URI:-}" ]; then
  pgws_ensure_postgres
else
  echo "using PGWS_DB_URI from the environment" >&2
fi
source ./sample-env
echo "open http://localhost:${PGWS_PORT} (metrics: http://127.0.0.1:${PGWS_ADMIN_PORT}/metrics)" >&2
exec cargo run --release --locked -p pgws-gateway -- "$@"

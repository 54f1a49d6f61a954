#!/usr/bin/env bash
# Run the gateway standalone against the local PostgreSQL, serving the
# example chat page on http://localhost:3000 (metrics on :3001/metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
pgws_ensure_cargo
pgws_ensure_postgres
source ./sample-env
echo "open http://localhost:${PGWS_PORT} (metrics: http://127.0.0.1:${PGWS_ADMIN_PORT}/metrics)" >&2
exec cargo run --release --locked -p pgws-gateway -- "$@"

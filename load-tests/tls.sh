#!/usr/bin/env bash
# Native TLS: the idle, fanout, spread and churn scenarios against one
# standalone gateway over plain ws:// and over wss:// (PGWS_CERTIFICATE_FILE
# / PGWS_KEY_FILE, an ECDSA P-256 certificate for localhost from a throw-away
# CA), back to back. Results in .tmp/tls/results.jsonl; the numbers in
# docs/benchmarks.md ("Native TLS") come from there. Not in CI.
#   load-tests/tls.sh
#   SCALE=0.2 load-tests/tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/tls}"
mkdir -p "$OUT"
pgws_load_setup pgws-tls pgws-gateway pgws-load
SCALE="${SCALE:-1}"
n() { python3 -c "print(max(1, int(round($1 * $SCALE))))"; }
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"
CERTS=$(mktemp -d)
openssl ecparam -name prime256v1 -genkey -noout -out "$CERTS/ca.key"
openssl req -x509 -new -key "$CERTS/ca.key" -subj "/CN=pgws test CA" -days 2 -out "$CERTS/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$CERTS/server.key"
openssl req -new -key "$CERTS/server.key" -subj "/CN=localhost" -out "$CERTS/server.csr" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" > "$CERTS/ext"
openssl x509 -req -in "$CERTS/server.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" -CAcreateserial \
  -days 2 -extfile "$CERTS/ext" -out "$CERTS/server.pem" 2>/dev/null
trap 'rm -rf "$CERTS"; pgws_load_cleanup' EXIT

run() { # label, port, admin port, extra pgws-load args...
  local label=$1 port=$2 admin=$3; shift 3
  local ch="$label-$RUN_TAG"
  local env=(PGWS_DB_URI=$DB PGWS_JWT_SECRET=$SECRET PGWS_HOST=127.0.0.1 PGWS_PORT=$port PGWS_ADMIN_PORT=$admin
    PGWS_LISTEN_CHANNEL=$ch PGWS_LOG_LEVEL=warn PGWS_POOL_SIZE=4)
  if [ "$label" = wss ]; then
    env+=(PGWS_CERTIFICATE_FILE="$CERTS/server.pem" PGWS_KEY_FILE="$CERTS/server.key")
  fi
  env "${env[@]}" "$BIN/pgws-gateway" >"$OUT/$label.log" 2>&1 &
  local gw=$!
  pids+=("$gw")
  wait_ready "$admin"
  local common=(--json --label "$label" --listen-channel "$ch" --url "127.0.0.1:$port" --pid "$gw" "$@")
  "$BIN/pgws-load" "${common[@]}" idle --sockets "$(n 10000)" --channels 100 | tee -a "$RESULTS"
  "$BIN/pgws-load" "${common[@]}" fanout --readers "$(n 2000)" --rate 200 --seconds 10 | tee -a "$RESULTS"
  "$BIN/pgws-load" "${common[@]}" spread --readers "$(n 5000)" --channels "$(n 1000)" --rate 2000 --seconds 10 | tee -a "$RESULTS"
  "$BIN/pgws-load" "${common[@]}" churn --concurrency 32 --seconds 5 | tee -a "$RESULTS"
  kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
}

run ws 3690 3691
run wss 3692 3693 --tls-ca "$CERTS/ca.pem"

#!/usr/bin/env bash
# The soak: 10,000 sockets, 1,000 NOTIFY/s and 100 client writes/s for 10
# minutes, against a standalone gateway and then a cluster (2 coordinators,
# 2 gateways), with the servers' RSS sampled every 10 s. Not in CI.
#   load-tests/soak.sh                 both, 600 s each
#   SOAK_SECONDS=120 load-tests/soak.sh
#   SOAK_MODES=cluster load-tests/soak.sh
# Results: one JSON line per run in .tmp/soak/results.jsonl (the numbers
# in docs/benchmarks.md, "Soak", come from there).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
pgws_ensure_cargo
pgws_ensure_postgres
pgws_ensure_redis

SECONDS_EACH="${SOAK_SECONDS:-600}"
MODES="${SOAK_MODES:-standalone cluster}"
cargo build --release --locked -p pgws-gateway -p pgws-coordinator -p pgws-load
BIN=target/release
OUT="${OUT:-.tmp/soak}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
SECRET=reallyreallyreallyreallyverysafe
DB=postgres://postgres@127.0.0.1:5432/postgres
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  redis-cli --scan --pattern "*pgws-soak-$$*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT
wait_ready() { for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }
soak() { # label, listen channel, pids csv, urls...
  local label=$1 channel=$2 server_pids=$3; shift 3
  local args=(--json --label "$label" --listen-channel "$channel")
  for u in "$@"; do args+=(--url "$u"); done
  for p in ${server_pids//,/ }; do args+=(--pid "$p"); done
  "$BIN/pgws-load" "${args[@]}" soak --sockets 10000 --channels 1000 --rate 1000 \
    --writers 100 --write-rate 100 --seconds "$SECONDS_EACH" | tee -a "$RESULTS"
}

if [[ " $MODES " == *" standalone "* ]]; then
  CH="pgws-soak-$$"
  PGWS_DB_URI=$DB PGWS_JWT_SECRET=$SECRET PGWS_HOST=127.0.0.1 PGWS_PORT=3700 PGWS_ADMIN_PORT=3701 \
    PGWS_LISTEN_CHANNEL=$CH PGWS_LOG_LEVEL=warn PGWS_POOL_SIZE=4 "$BIN/pgws-gateway" >"$OUT/standalone.log" 2>&1 &
  pids+=($!); SA=$!
  wait_ready 3701
  soak standalone "$CH" "$SA" 127.0.0.1:3700
  kill -TERM "$SA"; wait "$SA" 2>/dev/null || true
fi

if [[ " $MODES " == *" cluster "* ]]; then
  CH="pgws-soak-c-$$"; PREFIX="pgws-soak-$$"
  for i in 1 2; do
    PGWS_DB_URI=$DB PGWS_REDIS_URL=redis://127.0.0.1:6379 PGWS_REDIS_PREFIX=$PREFIX PGWS_LISTEN_CHANNEL=$CH \
      PGWS_NODE_ID=soak-c$i PGWS_ADMIN_PORT=$((3720 + i)) PGWS_LOG_LEVEL=warn \
      "$BIN/pgws-coordinator" >"$OUT/coordinator-$i.log" 2>&1 &
    pids+=($!); eval "C$i=$!"
  done
  for i in 1 2; do
    PGWS_JWT_SECRET=$SECRET PGWS_REDIS_URL=redis://127.0.0.1:6379 PGWS_REDIS_PREFIX=$PREFIX PGWS_LISTEN_CHANNEL=$CH \
      PGWS_HOST=127.0.0.1 PGWS_PORT=$((3710 + i)) PGWS_ADMIN_PORT=$((3730 + i)) PGWS_LOG_LEVEL=warn \
      "$BIN/pgws-gateway" >"$OUT/gateway-$i.log" 2>&1 &
    pids+=($!); eval "G$i=$!"
  done
  for p in 3721 3722 3731 3732; do wait_ready $p; done
  soak cluster "$CH" "$G1,$G2,$C1,$C2" 127.0.0.1:3711 127.0.0.1:3712
fi

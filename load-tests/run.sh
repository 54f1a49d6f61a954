#!/usr/bin/env bash
# Benchmark suite: builds release binaries, starts a standalone gateway,
# then a cluster (2 gateways + 2 coordinators), runs every scenario against
# both, and writes docs/benchmarks.md. Loopback only; every run is bounded.
#   load-tests/run.sh            full sizes (the targets of the benchmark issue)
#   SCALE=0.1 load-tests/run.sh  a quick pass at a tenth of the sizes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
pgws_ensure_cargo
pgws_ensure_postgres
pgws_ensure_redis

SCALE="${SCALE:-1}"
n() { python3 -c "import sys; print(max(1, int(round($1 * $SCALE))))"; }
cargo build --release --locked -p pgws-gateway -p pgws-coordinator -p pgws-load
BIN=target/release
OUT="${OUT:-.tmp/bench}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
git rev-parse --short HEAD > "$OUT/commit" 2>/dev/null || true
# One runtime thread per server process: gateways, coordinators, Redis,
# PostgreSQL and the generator share 2 cores (see docs/benchmarks.md).
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"
SECRET=reallyreallyreallyreallyverysafe
DB=postgres://postgres@127.0.0.1:5432/postgres
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  # Only this run's keys (its prefix) in the shared Redis.
  redis-cli --scan --pattern "*pgws-bench-$$*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

wait_ready() { for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }
load() { "$BIN/pgws-load" --json "$@" | tee -a "$RESULTS"; }

run_scenarios() { # label, listen channel, gateway pids (csv), urls...
  local label=$1 channel=$2 gwpids=$3; shift 3
  local urls=() pidargs=()
  for u in "$@"; do urls+=(--url "$u"); done
  for p in ${gwpids//,/ }; do pidargs+=(--pid "$p"); done
  local common=(--label "$label" --listen-channel "$channel" "${urls[@]}" "${pidargs[@]}")
  load idle --sockets "$(n 10000)" --channels 100 "${common[@]}"
  load fanout --readers "$(n 2000)" --rate 200 --seconds 10 "${common[@]}"
  load spread --readers "$(n 5000)" --channels "$(n 1000)" --rate 2000 --seconds 10 "${common[@]}"
  load writers --writers "$(n 200)" --seconds 10 "${common[@]}"
  load writers --writers "$(n 200)" --rate "$(n 50000)" --seconds 10 "${common[@]}"
  load churn --concurrency 32 --seconds 5 "${common[@]}"
}

# --- standalone -------------------------------------------------------------
CH="pgws-bench-$$"
PGWS_DB_URI=$DB PGWS_JWT_SECRET=$SECRET PGWS_HOST=127.0.0.1 PGWS_PORT=3600 PGWS_ADMIN_PORT=3601 \
  PGWS_LISTEN_CHANNEL=$CH PGWS_LOG_LEVEL=warn PGWS_POOL_SIZE=4 "$BIN/pgws-gateway" >"$OUT/standalone.log" 2>&1 &
pids+=($!); SA=$!
wait_ready 3601
run_scenarios standalone "$CH" "$SA" 127.0.0.1:3600
kill -TERM "$SA"; wait "$SA" 2>/dev/null || true

# --- cluster: 2 coordinators + 2 gateways ------------------------------------
CH="pgws-bench-c-$$"; PREFIX="pgws-bench-$$"
for i in 1 2; do
  PGWS_DB_URI=$DB PGWS_REDIS_URL=redis://127.0.0.1:6379 PGWS_REDIS_PREFIX=$PREFIX PGWS_LISTEN_CHANNEL=$CH \
    PGWS_NODE_ID=bench-c$i PGWS_ADMIN_PORT=$((3620 + i)) PGWS_LOG_LEVEL=warn PGWS_LEADER_TTL=2000 \
    "$BIN/pgws-coordinator" >"$OUT/coordinator-$i.log" 2>&1 &
  pids+=($!); eval "C$i=$!"
done
for i in 1 2; do
  PGWS_JWT_SECRET=$SECRET PGWS_REDIS_URL=redis://127.0.0.1:6379 PGWS_REDIS_PREFIX=$PREFIX PGWS_LISTEN_CHANNEL=$CH \
    PGWS_HOST=127.0.0.1 PGWS_PORT=$((3610 + i)) PGWS_ADMIN_PORT=$((3630 + i)) PGWS_LOG_LEVEL=warn \
    "$BIN/pgws-gateway" >"$OUT/gateway-$i.log" 2>&1 &
  pids+=($!); eval "G$i=$!"
done
for p in 3621 3622 3631 3632; do wait_ready $p; done
leader() {
  for i in 1 2; do
    if curl -fsS "http://127.0.0.1:$((3620 + i))/metrics" | grep -q '^pgws_coordinator_leader 1'; then eval "echo \$C$i"; return; fi
  done
}
run_scenarios cluster "$CH" "$G1,$G2,$(leader)" 127.0.0.1:3611 127.0.0.1:3612
LEADER=$(leader)
load failover --leader "$LEADER" --signal TERM --readers "$(n 200)" --rate 200 --seconds 8 \
  --label cluster --listen-channel "$CH" --url 127.0.0.1:3611 --url 127.0.0.1:3612
# Restart a coordinator so a standby exists again, then kill -9 the leader.
PGWS_DB_URI=$DB PGWS_REDIS_URL=redis://127.0.0.1:6379 PGWS_REDIS_PREFIX=$PREFIX PGWS_LISTEN_CHANNEL=$CH \
  PGWS_NODE_ID=bench-c3 PGWS_ADMIN_PORT=3623 PGWS_LOG_LEVEL=warn PGWS_LEADER_TTL=2000 \
  "$BIN/pgws-coordinator" >"$OUT/coordinator-3.log" 2>&1 &
pids+=($!); C3=$!
wait_ready 3623
L=""
for _ in $(seq 1 100); do
  for p in 3621 3622 3623; do
    if curl -fsS "http://127.0.0.1:$p/metrics" 2>/dev/null | grep -q '^pgws_coordinator_leader 1'; then L=$p; fi
  done
  [ -n "$L" ] && break
  sleep 0.1
done
case "$L" in 3621) LEADER=$C1;; 3622) LEADER=$C2;; *) LEADER=$C3;; esac
load failover --leader "$LEADER" --signal KILL --readers "$(n 200)" --rate 200 --seconds 10 \
  --label cluster --listen-channel "$CH" --url 127.0.0.1:3611 --url 127.0.0.1:3612

python3 load-tests/report.py "$RESULTS" "$SCALE" > docs/benchmarks.md
echo "wrote docs/benchmarks.md" >&2

#!/usr/bin/env bash
# A whole pgws cluster on one machine, without Docker: 2 coordinators,
# 3 gateways and HAProxy on loopback, against the local PostgreSQL and Redis.
# Open http://localhost:${LOCAL_CLUSTER_LB_PORT:-3000} for the chat page; Ctrl-C (or
# SIGTERM) stops everything. SIGUSR1 to this script rolls the gateways: each
# in turn is sent SIGTERM (it drains), started again and waited for — a
# rolling upgrade; "$RUN_DIR/rolled" counts completed rolls.
#
# Settings (environment):
#   LOCAL_CLUSTER_BIN_DIR        where pgws-gateway/pgws-coordinator are (default: target/release, built if missing)
#   LOCAL_CLUSTER_LB_PORT        HAProxy port (default 3000)
#   LOCAL_CLUSTER_BASE_PORT      gateways listen on BASE+1..3, their admin ports on BASE+11..13,
#                       coordinators' admin ports on BASE+21..22 (default 3100)
#   PGWS_DB_URI, PGWS_REDIS_URL, PGWS_REDIS_PREFIX, PGWS_LISTEN_CHANNEL, PGWS_JWT_SECRET
#   LOCAL_CLUSTER_RUN_DIR        logs and pid files (default .tmp/local-cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

BIN_DIR="${LOCAL_CLUSTER_BIN_DIR:-target/release}"
LB_PORT="${LOCAL_CLUSTER_LB_PORT:-3000}"
BASE="${LOCAL_CLUSTER_BASE_PORT:-3100}"
RUN_DIR="${LOCAL_CLUSTER_RUN_DIR:-.tmp/local-cluster}"
export PGWS_DB_URI="${PGWS_DB_URI:-postgres://postgres@127.0.0.1:5432/postgres}"
export PGWS_REDIS_URL="${PGWS_REDIS_URL:-redis://127.0.0.1:6379}"
export PGWS_REDIS_PREFIX="${PGWS_REDIS_PREFIX:-pgws-local}"
export PGWS_LISTEN_CHANNEL="${PGWS_LISTEN_CHANNEL:-postgres-websockets-listener}"
export PGWS_JWT_SECRET="${PGWS_JWT_SECRET:-reallyreallyreallyreallyverysafe}"

pgws_ensure_postgres
pgws_ensure_redis
command -v haproxy >/dev/null 2>&1 || { echo "haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }
if [ ! -x "$BIN_DIR/pgws-gateway" ] || [ ! -x "$BIN_DIR/pgws-coordinator" ]; then
  pgws_ensure_cargo
  cargo build --release --locked -p pgws-gateway -p pgws-coordinator
fi
mkdir -p "$RUN_DIR"
pids=()

stop_all() {
  trap - INT TERM EXIT
  echo "stopping the local cluster" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$RUN_DIR"/*.pid
}
trap stop_all INT TERM EXIT

start() { # name, then the command
  local name=$1; shift
  "$@" >>"$RUN_DIR/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  echo "$pid" >"$RUN_DIR/$name.pid"
}

start_gateway() { # 1..3
  local i=$1
  start "gateway-$i" env -u PGWS_DB_URI PGWS_HOST=127.0.0.1 PGWS_PORT=$((BASE + i)) \
    PGWS_ADMIN_PORT=$((BASE + 10 + i)) PGWS_ROOT_PATH=clients/js PGWS_META_CHANNEL=server-info \
    PGWS_LOG_LEVEL="${PGWS_LOG_LEVEL:-info}" "$BIN_DIR/pgws-gateway"
}

wait_ready() { # name, admin port
  for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not become ready; its log:" >&2
  tail -20 "$RUN_DIR/$1.log" >&2
  exit 1
}

for i in 1 2; do
  start "coordinator-$i" env PGWS_NODE_ID="local-coordinator-$i" PGWS_ADMIN_PORT=$((BASE + 20 + i)) \
    PGWS_LOG_LEVEL="${PGWS_LOG_LEVEL:-info}" "$BIN_DIR/pgws-coordinator"
done
for i in 1 2 3; do start_gateway "$i"; done
for i in 1 2; do wait_ready "coordinator-$i" $((BASE + 20 + i)); done
for i in 1 2 3; do wait_ready "gateway-$i" $((BASE + 10 + i)); done

start haproxy env PGWS_LB_BIND="127.0.0.1:$LB_PORT" \
  PGWS_GATEWAY_1="127.0.0.1:$((BASE + 1))" PGWS_GATEWAY_1_ADMIN_PORT=$((BASE + 11)) \
  PGWS_GATEWAY_2="127.0.0.1:$((BASE + 2))" PGWS_GATEWAY_2_ADMIN_PORT=$((BASE + 12)) \
  PGWS_GATEWAY_3="127.0.0.1:$((BASE + 3))" PGWS_GATEWAY_3_ADMIN_PORT=$((BASE + 13)) \
  haproxy -db -f deploy/haproxy/haproxy.cfg
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$LB_PORT/" >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG
pgws local cluster is up (prefix ${PGWS_REDIS_PREFIX}):
  chat page / websockets   http://localhost:${LB_PORT}   (HAProxy, least connections over 3 gateways)
  gateways                 127.0.0.1:$((BASE + 1))-$((BASE + 3)), metrics on :$((BASE + 11))-$((BASE + 13))/metrics
  coordinators             metrics on :$((BASE + 21)) and :$((BASE + 22))/metrics (pgws_coordinator_leader)
  logs and pids            ${RUN_DIR}/
Ctrl-C stops everything.
MSG
# A rolling restart of the gateways, one after another.
roll_gateways() {
  for i in 1 2 3; do
    local old
    old=$(cat "$RUN_DIR/gateway-$i.pid")
    echo "rolling gateway-$i (pid $old)" >&2
    kill -TERM "$old" 2>/dev/null || true
    wait "$old" 2>/dev/null || true
    local kept=()
    for p in "${pids[@]}"; do [ "$p" != "$old" ] && kept+=("$p"); done
    pids=("${kept[@]}")
    start_gateway "$i"
    wait_ready "gateway-$i" $((BASE + 10 + i))
  done
  echo $(( $(cat "$RUN_DIR/rolled" 2>/dev/null || echo 0) + 1 )) >"$RUN_DIR/rolled"
}
roll=0
trap 'roll=1' USR1

echo "ready" >"$RUN_DIR/ready"
while true; do
  wait -n "${pids[@]}" || true
  if [ "$roll" = 1 ]; then
    roll=0
    roll_gateways
    continue
  fi
  break
done
echo "a process of the local cluster exited; stopping the rest" >&2

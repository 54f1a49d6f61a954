# Shared start-up of the load tests (run.sh, soak.sh, forwarder.sh): the
# services, the release build, and the standalone gateway / cluster they run
# against. Sourced, never run. Every process started here is in `pids` and
# stopped by the EXIT trap; every Redis key this run made (its prefix
# contains $RUN_TAG) is removed.
#
#   source load-tests/lib.sh   (from the repository root)
#   pgws_load_setup <tag> <cargo -p packages...>
#   start_standalone <port> <admin port> <listen channel>      -> $SA
#   start_cluster <base port> <listen channel> <redis prefix>  -> $C1 $C2 $G1 $G2
#   leader_pid <admin ports...>                                -> pid of the leader

source scripts/services.sh

BIN=target/release
SECRET=reallyreallyreallyreallyverysafe
# PGWS_DB_URI overrides the local PostgreSQL (see scripts/services.sh for a
# server that asks for a password).
DB="${PGWS_DB_URI:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS=redis://127.0.0.1:6379
pids=()
declare -A PID_BY_ADMIN_PORT=()

# Services, release binaries, and the EXIT trap. RUN_TAG names this run's
# listen channels and Redis prefixes.
pgws_load_setup() {
  RUN_TAG="$1-$$"; shift
  pgws_ensure_cargo
  if [ -z "${PGWS_DB_URI:-}" ]; then pgws_ensure_postgres; fi
  pgws_ensure_redis
  command -v curl >/dev/null 2>&1 || { echo "curl is missing (Debian/Ubuntu: apt-get install curl)" >&2; return 1; }
  command -v python3 >/dev/null 2>&1 || { echo "python3 is missing (Debian/Ubuntu: apt-get install python3)" >&2; return 1; }
  local packages=()
  for p in "$@"; do packages+=(-p "$p"); done
  cargo build --release --locked "${packages[@]}"
  trap pgws_load_cleanup EXIT
}

pgws_load_cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Only this run's keys in the shared Redis.
  redis-cli --scan --pattern "*$RUN_TAG*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}

# The pid of the shared Redis (to measure its CPU).
redis_pid() { redis-cli info server | awk -F: '/^process_id/{print $2}' | tr -d '\r'; }

wait_ready() { # admin port
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "not ready: $1" >&2
  exit 1
}

# A standalone gateway (its own LISTEN connection); its pid in $SA.
start_standalone() { # port, admin port, listen channel
  PGWS_DB_URI=$DB PGWS_JWT_SECRET=$SECRET PGWS_HOST=127.0.0.1 PGWS_PORT=$1 PGWS_ADMIN_PORT=$2 \
    PGWS_LISTEN_CHANNEL=$3 PGWS_LOG_LEVEL=warn PGWS_POOL_SIZE=4 "$BIN/pgws-gateway" >"$OUT/standalone.log" 2>&1 &
  SA=$!
  pids+=("$SA")
  wait_ready "$2"
}

# One coordinator; its pid in $LAST_PID (and PID_BY_ADMIN_PORT).
start_coordinator() { # node id, admin port, listen channel, redis prefix
  PGWS_DB_URI=$DB PGWS_REDIS_URL=$REDIS PGWS_REDIS_PREFIX=$4 PGWS_LISTEN_CHANNEL=$3 \
    PGWS_NODE_ID=$1 PGWS_ADMIN_PORT=$2 PGWS_LOG_LEVEL=warn PGWS_LEADER_TTL=2000 \
    "$BIN/pgws-coordinator" >"$OUT/coordinator-$1.log" 2>&1 &
  LAST_PID=$!
  pids+=("$LAST_PID")
  PID_BY_ADMIN_PORT[$2]=$LAST_PID
}

# Two coordinators (admin ports base+21, base+22) and two gateways (ports
# base+11, base+12; admin ports base+31, base+32). Pids in $C1 $C2 $G1 $G2.
start_cluster() { # base port, listen channel, redis prefix
  local base=$1 channel=$2 prefix=$3
  start_coordinator "c1-$RUN_TAG" $((base + 21)) "$channel" "$prefix"; C1=$LAST_PID
  start_coordinator "c2-$RUN_TAG" $((base + 22)) "$channel" "$prefix"; C2=$LAST_PID
  for i in 1 2; do
    PGWS_JWT_SECRET=$SECRET PGWS_REDIS_URL=$REDIS PGWS_REDIS_PREFIX=$prefix PGWS_LISTEN_CHANNEL=$channel \
      PGWS_HOST=127.0.0.1 PGWS_PORT=$((base + 10 + i)) PGWS_ADMIN_PORT=$((base + 30 + i)) PGWS_LOG_LEVEL=warn \
      "$BIN/pgws-gateway" >"$OUT/gateway-$i.log" 2>&1 &
    pids+=($!)
    eval "G$i=$!"
  done
  for p in $((base + 21)) $((base + 22)) $((base + 31)) $((base + 32)); do wait_ready "$p"; done
}

# The pid of whichever of these coordinators holds the lock, polling up to
# 10 s (a hand-over may be under way).
leader_pid() { # coordinator admin ports...
  for _ in $(seq 1 100); do
    for port in "$@"; do
      if curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -q '^pgws_coordinator_leader 1'; then
        echo "${PID_BY_ADMIN_PORT[$port]}"
        return 0
      fi
    done
    sleep 0.1
  done
  echo "no leader among $*" >&2
  exit 1
}

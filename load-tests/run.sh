#!/usr/bin/env bash
# Benchmark suite: builds release binaries, starts a standalone gateway,
# then a cluster (2 gateways + 2 coordinators), runs every scenario against
# both, and writes docs/benchmarks.md. Loopback only; every run is bounded.
#   load-tests/run.sh            full sizes (the targets of the benchmark issue)
#   SCALE=0.1 load-tests/run.sh  a quick pass at a tenth of the sizes
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/bench}"
mkdir -p "$OUT"
pgws_load_setup pgws-bench pgws-gateway pgws-coordinator pgws-load

SCALE="${SCALE:-1}"
n() { python3 -c "import sys; print(max(1, int(round($1 * $SCALE))))"; }
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
git rev-parse --short HEAD > "$OUT/commit" 2>/dev/null || true
# One runtime thread per server process: gateways, coordinators, Redis,
# PostgreSQL and the generator share 2 cores (see docs/benchmarks.md).
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"

load() { "$BIN/pgws-load" --json "$@" | tee -a "$RESULTS"; }

run_scenarios() { # label, listen channel, server pids (csv), urls...
  local label=$1 channel=$2 server_pids=$3; shift 3
  local urls=() pidargs=()
  for u in "$@"; do urls+=(--url "$u"); done
  for p in ${server_pids//,/ }; do pidargs+=(--pid "$p"); done
  local target=(--listen-channel "$channel" "${urls[@]}" "${pidargs[@]}")
  local common=(--label "$label" "${target[@]}")
  local v2=(--label "$label-v2" --protocol v2 "${target[@]}")
  load idle --sockets "$(n 10000)" --channels 100 "${common[@]}"
  load fanout --readers "$(n 2000)" --rate 200 --seconds 10 "${common[@]}"
  load spread --readers "$(n 5000)" --channels "$(n 1000)" --rate 2000 --seconds 10 "${common[@]}"
  # Protocol v2 readers: the same fan-out and spread, and recovery.
  load fanout --readers "$(n 2000)" --rate 200 --seconds 10 "${v2[@]}"
  load spread --readers "$(n 5000)" --channels "$(n 1000)" --rate 2000 --seconds 10 "${v2[@]}"
  load recover --clients "$(n 1000)" --history 100 "${common[@]}"
  load writers --writers "$(n 200)" --seconds 10 "${common[@]}"
  load writers --writers "$(n 200)" --rate "$(n 50000)" --seconds 10 "${common[@]}"
  load churn --concurrency 32 --seconds 5 "${common[@]}"
}

# --- the floor: spread's publisher and rate, a bare LISTEN, no gateway -------
load floor --channels "$(n 1000)" --rate 2000 --seconds 10 --label floor --listen-channel "floor-$RUN_TAG"

# --- standalone -------------------------------------------------------------
CH="$RUN_TAG"
start_standalone 3600 3601 "$CH"
run_scenarios standalone "$CH" "$SA" 127.0.0.1:3600
kill -TERM "$SA"; wait "$SA" 2>/dev/null || true

# --- cluster: 2 coordinators + 2 gateways ------------------------------------
CH="c-$RUN_TAG"
start_cluster 3600 "$CH" "$RUN_TAG"
GATEWAYS=(--url 127.0.0.1:3611 --url 127.0.0.1:3612)
run_scenarios cluster "$CH" "$G1,$G2,$(leader_pid 3621 3622)" 127.0.0.1:3611 127.0.0.1:3612
load failover --leader "$(leader_pid 3621 3622)" --signal TERM --readers "$(n 200)" --rate 200 --seconds 8 \
  --label cluster --listen-channel "$CH" "${GATEWAYS[@]}"
# Start a third coordinator so a standby exists again, then kill -9 the leader.
start_coordinator "c3-$RUN_TAG" 3623 "$CH" "$RUN_TAG"
wait_ready 3623
load failover --leader "$(leader_pid 3621 3622 3623)" --signal KILL --readers "$(n 200)" --rate 200 --seconds 10 \
  --label cluster --listen-channel "$CH" "${GATEWAYS[@]}"

# --- cluster with standby listening (PGWS_STANDBY_LISTEN): the failovers again
export PGWS_STANDBY_LISTEN=true
CH="s-$RUN_TAG"
start_cluster 3900 "$CH" "s-$RUN_TAG"
standbys_ready() { # admin ports: every coordinator listens and heard two markers
  for port in "$@"; do
    for _ in $(seq 1 200); do
      heard=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^pgws_stream_markers_heard_total /{print $2}')
      [ "${heard%.*}" -ge 2 ] 2>/dev/null && break
      sleep 0.05
    done
  done
}
standbys_ready 3921 3922
S_GATEWAYS=(--url 127.0.0.1:3911 --url 127.0.0.1:3912)
LEADER=$(leader_pid 3921 3922)
STANDBY=$C1; [ "$LEADER" = "$C1" ] && STANDBY=$C2
# What listening costs a standby: its CPU while 2,000 NOTIFY/s go by.
load spread --readers "$(n 5000)" --channels "$(n 1000)" --rate 2000 --seconds 10 \
  --label standby-listening --listen-channel "$CH" "${S_GATEWAYS[@]}" --pid "$STANDBY"
load failover --leader "$LEADER" --signal KILL --readers "$(n 200)" --rate 200 --seconds 10 \
  --label cluster-standby --listen-channel "$CH" "${S_GATEWAYS[@]}"
start_coordinator "c3-s-$RUN_TAG" 3923 "$CH" "s-$RUN_TAG"
wait_ready 3923
standbys_ready 3923
load failover --leader "$(leader_pid 3921 3922 3923)" --signal KILL --readers "$(n 200)" --rate 200 --seconds 10 \
  --label cluster-standby --listen-channel "$CH" "${S_GATEWAYS[@]}"
unset PGWS_STANDBY_LISTEN

python3 load-tests/report.py "$RESULTS" "$SCALE" > docs/benchmarks.md
echo "wrote docs/benchmarks.md" >&2

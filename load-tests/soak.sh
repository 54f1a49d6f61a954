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
source load-tests/lib.sh
OUT="${OUT:-.tmp/soak}"
mkdir -p "$OUT"
pgws_load_setup pgws-soak pgws-gateway pgws-coordinator pgws-load

SECONDS_EACH="${SOAK_SECONDS:-600}"
MODES="${SOAK_MODES:-standalone cluster}"
RESULTS="$OUT/results.jsonl"
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"

soak() { # label, listen channel, pids csv, urls...
  local label=$1 channel=$2 server_pids=$3; shift 3
  local args=(--json --label "$label" --listen-channel "$channel")
  for u in "$@"; do args+=(--url "$u"); done
  for p in ${server_pids//,/ }; do args+=(--pid "$p"); done
  "$BIN/pgws-load" "${args[@]}" soak --sockets 10000 --channels 1000 --rate 1000 \
    --writers 100 --write-rate 100 --seconds "$SECONDS_EACH" | tee -a "$RESULTS"
}

if [[ " $MODES " == *" standalone "* ]]; then
  CH="$RUN_TAG"
  start_standalone 3700 3701 "$CH"
  soak standalone "$CH" "$SA" 127.0.0.1:3700
  kill -TERM "$SA"; wait "$SA" 2>/dev/null || true
fi

if [[ " $MODES " == *" cluster "* ]]; then
  CH="c-$RUN_TAG"
  start_cluster 3700 "$CH" "$RUN_TAG"
  soak cluster "$CH" "$G1,$G2,$C1,$C2" 127.0.0.1:3711 127.0.0.1:3712
fi

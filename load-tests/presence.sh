#!/usr/bin/env bash
# Presence costs (docs/benchmarks.md, "Presence"; docs/capacity.md): a
# cluster of 2 coordinators and 2 gateways with PGWS_PRESENCE=true, on
# loopback; 10,000 v2 clients join one channel, then 1,000 channels of 10,
# with presence queries in between, and leave; then the Redis side alone
# with 100,000 members (presence-keys). Results in .tmp/presence/.
#   load-tests/presence.sh            full sizes
#   SCALE=0.1 load-tests/presence.sh  a tenth
# The two socket scenarios run twice, in one run: occupancy events off, then
# on (PGWS_OCCUPANCY_EVENTS=true, a meta channel; a second cluster on other
# ports and another prefix), labels suffixed "-occupancy".
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/presence}"
mkdir -p "$OUT"
pgws_load_setup pgws-presence pgws-gateway pgws-coordinator pgws-load
SCALE="${SCALE:-1}"
n() { python3 -c "import sys; print(max(1, int(round($1 * $SCALE))))"; }
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"
# One socket asks every query back to back: lift the per-socket command rate.
export PGWS_PRESENCE=true PGWS_PRESENCE_MAX_LIST=10000 PGWS_COMMAND_RATE=100000
load() { "$BIN/pgws-load" --json "$@" | tee -a "$RESULTS"; }

CH="p-$RUN_TAG"
start_cluster 3700 "$CH" "$RUN_TAG"
target=(--listen-channel "$CH" --url 127.0.0.1:3711 --url 127.0.0.1:3712 --pid "$G1" --pid "$G2" --prefix "$RUN_TAG")
load presence --clients "$(n 10000)" --channels 1 --queries 200 --label "one-channel" "${target[@]}"
load presence --clients "$(n 10000)" --channels "$(n 1000)" --queries 200 --label "channels-of-10" "${target[@]}"
for p in "$C1" "$C2" "$G1" "$G2"; do kill -TERM "$p"; wait "$p" 2>/dev/null || true; done
export PGWS_OCCUPANCY_EVENTS=true PGWS_META_CHANNEL="meta-$RUN_TAG"
start_cluster 3800 "$CH" "$RUN_TAG-o"
target=(--listen-channel "$CH" --url 127.0.0.1:3811 --url 127.0.0.1:3812 --pid "$G1" --pid "$G2" --prefix "$RUN_TAG-o")
load presence --clients "$(n 10000)" --channels 1 --queries 200 --label "one-channel-occupancy" "${target[@]}"
load presence --clients "$(n 10000)" --channels "$(n 1000)" --queries 200 --label "channels-of-10-occupancy" "${target[@]}"
load presence-keys --clients "$(n 100000)" --channels "$(n 1000)" --gateways 5 --label redis

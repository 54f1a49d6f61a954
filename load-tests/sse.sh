#!/usr/bin/env bash
# Server-Sent Events beside websockets, in one run against one standalone
# gateway (docs/benchmarks.md, "Server-Sent Events"): server memory per
# idle stream and per idle websocket (STREAMS of each, both held open),
# then the server CPU to fan RATE notifications a second out to each in
# turn. Results in .tmp/sse/; not in CI.
#   load-tests/sse.sh            (STREAMS=2000 CHANNELS=20 RATE=100 SECONDS=10)
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/sse}"
mkdir -p "$OUT"
pgws_load_setup pgws-sse pgws-gateway pgws-load
ulimit -n 20000 2>/dev/null || true
CH="sse-$RUN_TAG"
start_standalone 3750 3751 "$CH"
"$BIN/pgws-load" --json --label standalone --listen-channel "$CH" --url 127.0.0.1:3750 --pid "$SA" \
  sse --streams "${STREAMS:-2000}" --channels "${CHANNELS:-20}" --rate "${RATE:-100}" \
  --seconds "${SECONDS_EACH:-10}" | tee "$OUT/results.jsonl"

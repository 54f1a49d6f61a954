#!/usr/bin/env bash
# The leader's forwarder alone: put N writer envelopes in a fresh stream, start
# one coordinator (release build), time until the stream is empty, and print
# the rate and the coordinator's CPU per entry; then, once every entry has
# come back through the leader's LISTEN and been republished (history
# script and PUBLISH), the leader's and Redis' CPU per notification. Uses its own key prefix and
# listen channel; removes its keys afterwards.
#   load-tests/forwarder.sh            N=600000
#   N=200000 load-tests/forwarder.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/forwarder}"
mkdir -p "$OUT"
pgws_load_setup pgws-forwarder pgws-coordinator
N="${N:-600000}"
P="$RUN_TAG"
ADMIN_PORT="${ADMIN_PORT:-3741}"
ENVELOPE='{"channel":"chat","event":"WebsocketMessage","payload":"w123 45 678","claims":{"mode":"w","channel":"chat"},"message_delivered_at":1795838085.123}'
# Distinct payloads (a counter appended), as writers' envelopes are.
redis-cli EVAL "for i=1,tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'c', 'chat', 'm', ARGV[2] .. i) end return 1" \
  1 "{$P}:writes" "$N" "$ENVELOPE" >/dev/null
REDIS_PID=$(redis_pid)
redis_before=$(awk '{print $14 + $15}' "/proc/$REDIS_PID/stat")
start=$(date +%s.%N)
start_coordinator "c1-$RUN_TAG" "$ADMIN_PORT" "ch-$RUN_TAG" "$P"
C=$LAST_PID
for _ in $(seq 1 1200); do
  [ "$(redis-cli XLEN "{$P}:writes")" = "0" ] && break
  sleep 0.1
done
end=$(date +%s.%N)
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^pgws_notifications_(published|dropped)_total' || true
ticks=$(awk '{print $14 + $15}' "/proc/$C/stat")
hz=$(getconf CLK_TCK)
python3 -c "n=$N; s=$end-$start; cpu=$ticks/$hz; print(f'drained {n} envelopes in {s:.2f} s = {n/s:,.0f}/s; coordinator CPU {cpu:.2f} s = {cpu/n*1e6:.1f} us per entry')"
published() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^pgws_notifications_published_total/{s += $2} END {print int(s)}'; }
for _ in $(seq 1 1200); do
  [ "$(published)" -ge "$N" ] && break
  sleep 0.1
done
done_at=$(date +%s.%N)
ticks=$(awk '{print $14 + $15}' "/proc/$C/stat")
redis_after=$(awk '{print $14 + $15}' "/proc/$REDIS_PID/stat")
python3 -c "n=$(published); s=$done_at-$start; hz=$hz; print(f'republished {n} notifications within {s:.2f} s of the start = {n/s:,.0f}/s; leader CPU {$ticks/hz:.2f} s, Redis CPU {($redis_after-$redis_before)/hz:.2f} s = {($redis_after-$redis_before)/hz/max(n,1)*1e6:.1f} us per notification')"

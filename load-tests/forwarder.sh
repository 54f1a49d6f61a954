#!/usr/bin/env bash
# The leader's forwarder alone: put N writer envelopes in a fresh stream, start
# one coordinator (release build), time until the stream is empty, and print
# the rate and the coordinator's CPU per entry. Uses its own key prefix and
# listen channel; removes its keys afterwards.
#   load-tests/forwarder.sh            N=600000
#   N=200000 load-tests/forwarder.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
pgws_ensure_cargo
pgws_ensure_postgres
pgws_ensure_redis
cargo build --release --locked -p pgws-coordinator
N="${N:-600000}"
P="pgws-drain-$$"
CH="pgws-drain-ch-$$"
ADMIN_PORT="${ADMIN_PORT:-3741}"
ENVELOPE='{"channel":"chat","event":"WebsocketMessage","payload":"w123 45 678","claims":{"mode":"w","channel":"chat"},"message_delivered_at":1795838085.123}'
cleanup() {
  [ -n "${C:-}" ] && { kill -TERM "$C" 2>/dev/null || true; wait "$C" 2>/dev/null || true; }
  redis-cli DEL "{$P}:writes" "{$P}:leader" "{$P}:epoch" >/dev/null
}
trap cleanup EXIT
# Distinct payloads (a counter appended), as writers' envelopes are.
redis-cli EVAL "for i=1,tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'c', 'chat', 'm', ARGV[2] .. i) end return 1" \
  1 "{$P}:writes" "$N" "$ENVELOPE" >/dev/null
start=$(date +%s.%N)
PGWS_DB_URI=postgres://postgres@127.0.0.1:5432/postgres PGWS_REDIS_URL=redis://127.0.0.1:6379 \
  PGWS_REDIS_PREFIX="$P" PGWS_LISTEN_CHANNEL="$CH" PGWS_NODE_ID=drain-1 PGWS_ADMIN_PORT="$ADMIN_PORT" \
  PGWS_LOG_LEVEL=warn target/release/pgws-coordinator &
C=$!
for _ in $(seq 1 1200); do
  [ "$(redis-cli XLEN "{$P}:writes")" = "0" ] && break
  sleep 0.1
done
end=$(date +%s.%N)
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^pgws_notifications_(published|dropped)_total' || true
ticks=$(awk '{print $14 + $15}' "/proc/$C/stat")
hz=$(getconf CLK_TCK)
python3 -c "n=$N; s=$end-$start; cpu=$ticks/$hz; print(f'drained {n} envelopes in {s:.2f} s = {n/s:,.0f}/s; coordinator CPU {cpu:.2f} s = {cpu/n*1e6:.1f} us per entry')"

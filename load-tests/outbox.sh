#!/usr/bin/env bash
# The durable outbox beside NOTIFY, in one run (issue #19, items 3-5):
#   1. latency: `spread` published with pg_notify and with pgws.send (one
#      per autocommitted transaction), same rate and sockets, alternated
#      twice, alone in their transaction and beside a row of application
#      data (`--with-write`, the usual application transaction), against one standalone gateway with PGWS_OUTBOX=true; then
#      with the doorbell gone (the reader's row removed from pgws.readers,
#      so no sender rings): the delay is bounded by the poll interval;
#   2. writers: `notify-ceiling` with pg_notify and with pgws.send, 1, 4, 16
#      and 64 sessions, 1 and 100 sends per transaction, alone and with a
#      row of application data per transaction; WAL bytes per send;
#      outbox arrivals counted by the gateway's pgws_outbox_messages_total;
#   3. the database's price: with PGWS_OUTBOX_RETENTION=30, pgws.send at a
#      steady rate, table sizes, dead tuples, (auto)vacuum counts and
#      transactions per second sampled every 10 s (results in
#      $OUT/price.jsonl), first as the server runs (autovacuum is off on
#      the shared one), then with a manual VACUUM of the two tables every
#      20 s standing in for autovacuum; and transactions per second idle.
# Everything runs in a database of its own (created here, dropped at the
# end), so the shared one is untouched. Bounded: about 12 minutes.
#   load-tests/outbox.sh            (results in .tmp/outbox/)
#   STEADY=60 load-tests/outbox.sh  shorter steady-rate phases (seconds)
#   PHASES="latency writers" load-tests/outbox.sh   only these phases
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/outbox}"
mkdir -p "$OUT"
pgws_load_setup pgws-obench pgws-gateway pgws-load
STEADY="${STEADY:-120}"
PHASES="${PHASES:-latency writers price}"
phase_on() { [[ " $PHASES " == *" $1 "* ]]; }
RESULTS="$OUT/results.jsonl"
PRICE="$OUT/price.jsonl"
: > "$RESULTS"
: > "$PRICE"
git rev-parse --short HEAD > "$OUT/commit" 2>/dev/null || true
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"

ODB="pgws_obench_$$"
PSQL=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -Atq)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE $ODB"
DB="postgres://postgres@127.0.0.1:5432/$ODB"
outbox_cleanup() {
  pgws_load_cleanup
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $ODB WITH (FORCE)" || true
}
trap outbox_cleanup EXIT
q() { "${PSQL[@]}" -d "$ODB" -c "$1"; }

load() { "$BIN/pgws-load" --json --db "$DB" "$@" | tee -a "$RESULTS"; }
metric() { # admin port, metric name
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'
}
restart_gateway() {
  if [ -n "${SA:-}" ]; then kill -TERM "$SA"; wait "$SA" 2>/dev/null || true; fi
  start_standalone 3700 3701 "$CH"
}
export PGWS_OUTBOX=true
CH="$RUN_TAG"

# --- 1. latency --------------------------------------------------------------
if phase_on latency; then
restart_gateway
SPREAD=(spread --readers 5000 --channels 1000 --rate 2000 --seconds 10 --listen-channel "$CH" --url 127.0.0.1:3700 --pid "$SA")
for round in 1 2; do
  for write in "" --with-write; do
    label="latency-$round${write:+-with-write}"
    load "${SPREAD[@]}" --label "$label" --send notify $write
    polls=$(metric 3701 pgws_outbox_polls_total); bells=$(metric 3701 pgws_outbox_doorbells_total)
    rung=$(metric 3701 pgws_outbox_rung_messages_total)
    load "${SPREAD[@]}" --label "$label" --send outbox $write
    echo "{\"scenario\":\"reader\",\"label\":\"$label\",\"polls\":$(($(metric 3701 pgws_outbox_polls_total) - polls)),\"doorbells\":$(($(metric 3701 pgws_outbox_doorbells_total) - bells)),\"rung_messages\":$(($(metric 3701 pgws_outbox_rung_messages_total) - rung))}" | tee -a "$RESULTS"
  done
done
# The doorbell gone: no reader listed, so no sender rings; the reader
# polls every PGWS_OUTBOX_POLL_INTERVAL (1,000 ms by default).
q "DELETE FROM pgws.readers"
load spread --readers 1000 --channels 100 --rate 100 --seconds 10 --listen-channel "$CH" \
  --url 127.0.0.1:3700 --pid "$SA" --label no-doorbell --send outbox
fi

# --- 2. writers --------------------------------------------------------------
if phase_on writers; then
restart_gateway
for write in "" --with-write; do
  for batch in 1 100; do
    for p in 1 4 16 64; do
      load notify-ceiling --publishers "$p" --batch "$batch" --seconds 5 --listen-channel "$CH" \
        --pid "$SA" --label "writers${write:+-with-write}" --send notify $write
      load notify-ceiling --publishers "$p" --batch "$batch" --seconds 5 --listen-channel "$CH" \
        --pid "$SA" --label "writers${write:+-with-write}" --send outbox $write --outbox-metrics 127.0.0.1:3701
    done
  done
done
fi

# --- 3. the database's price -------------------------------------------------
if ! phase_on price; then echo "results in $RESULTS" >&2; exit 0; fi
export PGWS_OUTBOX_RETENTION=30
restart_gateway
sample() { # phase label
  local pruned
  pruned=$(metric 3701 'pgws_outbox_pruned_total{table="outbox"}' || true)
  "${PSQL[@]}" -d "$ODB" -c "SELECT json_build_object(
      'phase', '$1', 'at', extract(epoch FROM clock_timestamp()),
      'outbox_bytes', pg_total_relation_size('pgws.outbox'),
      'commits_bytes', pg_total_relation_size('pgws.commits'),
      'outbox_live', (SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'pgws.outbox'::regclass),
      'outbox_dead', (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pgws.outbox'::regclass),
      'commits_live', (SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'pgws.commits'::regclass),
      'commits_dead', (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pgws.commits'::regclass),
      'autovacuums', (SELECT sum(autovacuum_count) FROM pg_stat_user_tables WHERE schemaname = 'pgws'),
      'vacuums', (SELECT sum(vacuum_count) FROM pg_stat_user_tables WHERE schemaname = 'pgws'),
      'xact_commit', d.xact_commit, 'tup_returned', d.tup_returned, 'tup_fetched', d.tup_fetched,
      'tup_inserted', d.tup_inserted, 'tup_deleted', d.tup_deleted,
      'pruned', ${pruned:-0}::bigint)
    FROM pg_stat_database d WHERE d.datname = current_database()" >> "$PRICE"
}
phase() { # label, seconds, vacuum every N s (0: never)
  local end=$((SECONDS + $2)) next_vacuum=$((SECONDS + ${3:-0}))
  while [ "$SECONDS" -lt "$end" ]; do
    sample "$1"
    if [ "${3:-0}" -gt 0 ] && [ "$SECONDS" -ge "$next_vacuum" ]; then
      q "VACUUM pgws.outbox, pgws.commits"; next_vacuum=$((SECONDS + $3))
    fi
    sleep 10
  done
}
# Idle: the reader alone (a poll a second without senders).
phase idle 30
# Steady: 500 sends/s over 100 channels, read by 500 sockets.
"$BIN/pgws-load" --json --db "$DB" spread --readers 500 --channels 100 --rate 500 --seconds $((2 * STEADY + 20)) \
  --listen-channel "$CH" --url 127.0.0.1:3700 --pid "$SA" --label steady --send outbox >> "$RESULTS" &
LOADER=$!
sleep 10
phase steady-no-vacuum "$STEADY"
phase steady-vacuum-20s "$STEADY" 20
wait "$LOADER"
tail -1 "$RESULTS"
phase idle-after 30
echo "results in $RESULTS and $PRICE" >&2

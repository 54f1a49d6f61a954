#!/usr/bin/env bash
# What a PostgreSQL restart costs: a private PostgreSQL (initdb in a
# temporary directory, its own port), a standalone gateway (release build,
# self-healing listener, PGWS_CHECK_LISTENER_INTERVAL=1000) and a v1 reader;
# a NOTIFY every 20 ms with a sequence number, `pg_ctl restart -m fast`
# after RESTART_AFTER seconds (default 35: the listener's session is then
# older than its 30 s "healthy" mark and reconnects at once, as a
# long-running one would). Prints how long the server refused
# connections, and which committed notifications never reached the reader
# — the window in which no backend LISTENed. Not in CI.
#   load-tests/pg-restart.sh
#   RESTART_AFTER=2 load-tests/pg-restart.sh   # a young session: backoff first
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/pg-restart}"
mkdir -p "$OUT"
pgws_load_setup pgws-pgrestart pgws-gateway
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DIR=$(mktemp -d)
chown postgres "$DIR"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" -l "$DIR/log" -w start >/dev/null
stop_pg() { runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap 'stop_pg; pgws_load_cleanup' EXIT
URI="postgres://postgres@127.0.0.1:$PORT/postgres"
CH="$RUN_TAG"
PGWS_DB_URI=$URI PGWS_JWT_SECRET=$SECRET PGWS_HOST=127.0.0.1 PGWS_PORT=3680 PGWS_ADMIN_PORT=3681 \
  PGWS_LISTEN_CHANNEL=$CH PGWS_CHECK_LISTENER_INTERVAL=1000 PGWS_LOG_LEVEL=info \
  "$BIN/pgws-gateway" >"$OUT/gateway.log" 2>&1 &
pids+=($!)
wait_ready 3681
node_ws=()
node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || node_ws=(--experimental-websocket)
node "${node_ws[@]}" --no-warnings --input-type=module -e "
import { token } from '$PWD/clients/js/test/helpers.mjs';
import { writeFileSync } from 'node:fs';
const ws = new WebSocket('ws://127.0.0.1:3680/chat/' + token({ mode: 'r' }));
const got = [];
ws.onmessage = (e) => got.push([Number(JSON.parse(e.data).payload), Date.now()]);
ws.onopen = () => writeFileSync('$OUT/reader-ready', '');
process.on('SIGTERM', () => { writeFileSync('$OUT/received.json', JSON.stringify(got)); process.exit(0); });
" &
READER=$!
pids+=($READER)
for _ in $(seq 1 100); do [ -f "$OUT/reader-ready" ] && break; sleep 0.05; done
rm -f "$OUT/reader-ready" "$OUT/sent.txt"
python3 - "$URI" "$CH" "$OUT/sent.txt" "$PGBIN" "$DIR" "${RESTART_AFTER:-35}" <<'PY' &
import subprocess, sys, time
uri, ch, out, pgbin, d, after = sys.argv[1:]
after = float(after)
start = time.time()
n = 0
restarted = False
with open(out, "w") as f:
    while time.time() - start < after + 8:
        if not restarted and time.time() - start > after:
            restarted = True
            subprocess.Popen(["runuser", "-u", "postgres", "--", f"{pgbin}/pg_ctl", "-D", f"{d}/data", "-m", "fast",
                              "-o", f"-p {uri.rsplit(':', 1)[1].split('/')[0]} -k {d} -c listen_addresses=127.0.0.1",
                              "-l", f"{d}/log", "-w", "restart"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n += 1
        sql = f"SELECT pg_notify('{ch}', '{{\"channel\":\"chat\",\"payload\":\"{n}\"}}')"
        ok = subprocess.run(["psql", uri, "-Atqc", sql], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        f.write(f"{n} {int(time.time()*1000)} {int(ok)}\n")
        time.sleep(0.02)
PY
NOTIFIER=$!
wait $NOTIFIER
for _ in $(seq 1 40); do
  curl -fsS http://127.0.0.1:3681/readyz >/dev/null 2>&1 && break
  sleep 0.05
done
kill -TERM $READER; wait $READER 2>/dev/null || true
python3 - "$OUT/sent.txt" "$OUT/received.json" <<'PY'
import json, sys
sent = [l.split() for l in open(sys.argv[1])]
received = {n for n, _ in json.load(open(sys.argv[2]))}
failed = [(int(n), int(t)) for n, t, ok in sent if ok == "0"]
committed = [(int(n), int(t)) for n, t, ok in sent if ok == "1"]
lost = [(n, t) for n, t in committed if n not in received]
down_ms = failed[-1][1] - failed[0][1] if failed else 0
print(f"sent {len(sent)} NOTIFYs, one every 20 ms; {len(failed)} refused while PostgreSQL restarted (about {down_ms} ms)")
if lost:
    back = min(t for n, t in committed if failed and t > failed[-1][1])
    print(f"committed but never delivered: {len(lost)} (numbers {lost[0][0]}..{lost[-1][0]}), "
          f"from {lost[0][1] - back} ms to {lost[-1][1] - back} ms after the server accepted connections again")
else:
    print("committed but never delivered: 0")
PY
grep -E "LISTEN connection lost|listening for notifications|cannot LISTEN" "$OUT/gateway.log" | sed 's/^/  gateway: /' | cut -c1-200

#!/usr/bin/env bash
# The example chat page in headless Chromium, through HAProxy in front of
# the local cluster (deploy/local-cluster.sh with the debug binaries).
# Saves .tmp/screenshots/chat.png and rolling-restart.png (the page after
# every gateway was restarted under it), and sse-rolling-restart.png (an
# EventSource page after the same, tests/browser/sse.test.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/tools.sh
pgws_ensure_postgres
pgws_ensure_redis
pgws_ensure_debs
pgws_ensure_playwright

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export LOCAL_CLUSTER_BIN_DIR="${LOCAL_CLUSTER_BIN_DIR:-target/debug}"
export LOCAL_CLUSTER_LB_PORT="$(free_port)"
# 23 consecutive free ports below the ephemeral range (32768+), where no
# outgoing connection can be holding one; the cluster uses BASE+1..BASE+22.
free_block() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randrange(20000, 32000 - 23)
    socks = []
    try:
        for p in range(base, base + 23):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks: s.close()
    if len(socks) == 23:
        print(base); break
else:
    raise SystemExit("no block of 23 free ports")
PY
}
export LOCAL_CLUSTER_BASE_PORT="$(free_block)"
export LOCAL_CLUSTER_RUN_DIR="$PWD/.tmp/browser-cluster-$$"
export PGWS_REDIS_PREFIX="pgws-browser-$$"
export PGWS_LISTEN_CHANNEL="pgws-browser-$$"
# EventSource reconnects after this (tests/browser/sse.test.mjs): short,
# so a stream misses less than the 100 messages of history while it moves.
export PGWS_SSE_RETRY=250
export PGWS_DB_URI="${PGWS_DB_URI:-postgres://postgres@127.0.0.1:5432/postgres}"
export CHAT_CHANNEL="chat-$$"
# tests/browser/presence.test.mjs: presence on every gateway.
export PGWS_PRESENCE=true
export SCREENSHOT_DIR="$PWD/.tmp/screenshots"
export PLAYWRIGHT_DIR="$PGWS_TOOLS/npm-playwright/node_modules"

if [ ! -x "$LOCAL_CLUSTER_BIN_DIR/pgws-gateway" ] || [ ! -x "$LOCAL_CLUSTER_BIN_DIR/pgws-coordinator" ]; then
  pgws_ensure_cargo
  cargo build --locked -p pgws-gateway -p pgws-coordinator
fi

bash deploy/local-cluster.sh >/dev/null 2>&1 &
cluster=$!
export LOCAL_CLUSTER_PID=$cluster
cleanup() { kill -TERM "$cluster" 2>/dev/null || true; wait "$cluster" 2>/dev/null || true; rm -rf "$LOCAL_CLUSTER_RUN_DIR"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  [ -f "$LOCAL_CLUSTER_RUN_DIR/ready" ] && break
  kill -0 "$cluster" 2>/dev/null || { echo "the local cluster did not start" >&2; exit 1; }
  sleep 0.1
done
[ -f "$LOCAL_CLUSTER_RUN_DIR/ready" ] || { echo "the local cluster did not become ready" >&2; exit 1; }
# One file at a time: the rolling restart would disturb the chat test.
node --test --test-concurrency=1 tests/browser/

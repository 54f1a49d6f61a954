#!/usr/bin/env bash
# The inputs of docs/capacity.md: the CPU each process spends per
# notification and per delivery, standalone and in a cluster, measured
# process by process with `spread` (1,000 channels, 2,000 NOTIFY/s) at 1
# and at 10 readers per channel — two points of the line
#     CPU per notification = a + b × readers
# (a: the per-notification cost — LISTEN, Redis hop, routing; b: the cost
# of one more delivery) — and once at 8,000 NOTIFY/s (5 readers) to see how
# a falls as batches fill. Sockets are spread over the gateways so that
# every reader of a channel is on the same gateway (socket i reads channel
# i mod 1,000 through gateway i mod 2), so each notification reaches one
# gateway. Results in .tmp/capacity/; not in CI.
#   load-tests/capacity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/capacity}"
mkdir -p "$OUT"
pgws_load_setup pgws-cap pgws-gateway pgws-coordinator pgws-load
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"
REDIS_PID=$(redis_pid)

points() { # label, extra pgws-load args...
  local label=$1; shift
  for k in 1 10; do
    "$BIN/pgws-load" --json --label "$label" "$@" spread --readers $((1000 * k)) --channels 1000 \
      --rate 2000 --seconds 10 | tee -a "$RESULTS"
  done
  "$BIN/pgws-load" --json --label "$label" "$@" spread --readers 5000 --channels 1000 \
    --rate 8000 --seconds 10 | tee -a "$RESULTS"
}

CH="cap-$RUN_TAG"
start_standalone 3700 3701 "$CH"
points standalone --listen-channel "$CH" --url 127.0.0.1:3700 --pid "$SA"
kill -TERM "$SA"; wait "$SA" 2>/dev/null || true

CH="capc-$RUN_TAG"
start_cluster 3700 "$CH" "$RUN_TAG"
LEADER=$(leader_pid 3721 3722)
points cluster --listen-channel "$CH" --url 127.0.0.1:3711 --url 127.0.0.1:3712 \
  --pid "$G1" --pid "$G2" --pid "$LEADER" --pid "$REDIS_PID"
echo "roles: gateways $G1 $G2, leader $LEADER, redis $REDIS_PID" | tee "$OUT/roles.txt"

python3 - "$RESULTS" "$G1" "$G2" "$LEADER" "$REDIS_PID" "$SA" <<'EOF' | tee "$OUT/summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
g1, g2, leader, redis, sa = sys.argv[2:7]
def per_notification(r, pids):
    k = r["readers"] / r["channels"]
    return sum(r["server_cpu_us_per_delivery_by_pid"].get(p, 0) for p in pids) * k
roles = {"standalone": {"gateway": [sa]},
         "cluster": {"gateways": [g1, g2], "leader": [leader], "redis": [redis]}}
print("| mode | process | µs per notification, 1 reader | 10 readers | a: per notification | b: per delivery | µs per notification at 8,000/s, 5 readers |")
print("|---|---|---|---|---|---|---|")
for mode, parts in roles.items():
    mine = [r for r in rows if r["label"] == mode]
    one = next(r for r in mine if r["readers"] == 1000)
    ten = next(r for r in mine if r["readers"] == 10000)
    fast = next(r for r in mine if r["notify_per_s"] == 8000)
    for name, pids in list(parts.items()) + [("postgres", None)]:
        if pids is None:
            y1, y10, yf = (r["postgres_cpu_us_per_delivery"] * r["readers"] / r["channels"] for r in (one, ten, fast))
        else:
            y1, y10, yf = (per_notification(r, pids) for r in (one, ten, fast))
        b = (y10 - y1) / 9
        print(f"| {mode} | {name} | {y1:.1f} | {y10:.1f} | {y1 - b:.1f} | {b:.2f} | {yf:.1f} |")
print()
for r in rows:
    print(f"{r['label']} readers {r['readers']} rate {r['notify_per_s']}: lost {r['lost']}, p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms")
EOF

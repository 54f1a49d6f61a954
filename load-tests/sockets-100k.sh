#!/usr/bin/env bash
# 100,000 sockets on one machine, the way production would run them: a
# cluster of $GATEWAYS gateways (6 by default), 2 coordinators and one
# Redis, and one generator process per gateway dialing it directly (a
# process may hold at most 20,000 open files here, so neither one gateway
# nor one generator can hold them all), each from its own loopback source
# address (127.0.0.2, .3, …) so that none searches another's ephemeral ports. Every socket reads one channel; once
# all are connected, one publisher NOTIFYs $MESSAGES broadcasts, one a
# second. Reports memory per socket across the cluster, the time to connect
# all, each broadcast's delivery latency to every socket (p50/p99/max),
# loss, and each process's CPU. Results in .tmp/100k/; the numbers in
# docs/benchmarks.md ("100,000 sockets") come from there. Not in CI.
#   load-tests/sockets-100k.sh
#   SOCKETS=20000 GATEWAYS=2 load-tests/sockets-100k.sh   a smaller pass
set -euo pipefail
cd "$(dirname "$0")/.."
source load-tests/lib.sh
OUT="${OUT:-.tmp/100k}"
mkdir -p "$OUT"
rm -f "$OUT"/ready-* "$OUT"/gen-*.json "$OUT"/cpu-*.txt "$OUT"/result.json
pgws_load_setup pgws-100k pgws-gateway pgws-coordinator pgws-load
SOCKETS="${SOCKETS:-100000}"
GATEWAYS="${GATEWAYS:-6}"
MESSAGES="${MESSAGES:-10}"
export PGWS_WORKER_THREADS="${PGWS_WORKER_THREADS:-1}"
CH="b-$RUN_TAG"
BASE=4000

start_coordinator "c1-$RUN_TAG" $((BASE + 91)) "$CH" "$RUN_TAG"; C1=$LAST_PID
start_coordinator "c2-$RUN_TAG" $((BASE + 92)) "$CH" "$RUN_TAG"; C2=$LAST_PID
wait_ready $((BASE + 91)); wait_ready $((BASE + 92))
GWS=()
for i in $(seq 1 "$GATEWAYS"); do
  PGWS_JWT_SECRET=$SECRET PGWS_REDIS_URL=$REDIS PGWS_REDIS_PREFIX=$RUN_TAG PGWS_LISTEN_CHANNEL=$CH \
    PGWS_HOST=127.0.0.1 PGWS_PORT=$((BASE + i)) PGWS_ADMIN_PORT=$((BASE + 50 + i)) PGWS_LOG_LEVEL=warn \
    "$BIN/pgws-gateway" >"$OUT/gateway-$i.log" 2>&1 &
  pids+=($!)
  GWS+=($!)
done
for i in $(seq 1 "$GATEWAYS"); do wait_ready $((BASE + 50 + i)); done
REDIS_PID=$(redis_pid)
SERVERS=("${GWS[@]}" "$C1" "$C2")
# name=pid pairs whose CPU is reported
NAMED=()
for i in $(seq 1 "$GATEWAYS"); do NAMED+=("gateway-$i=${GWS[$((i - 1))]}"); done
NAMED+=("coordinator-1=$C1" "coordinator-2=$C2" "redis=$REDIS_PID")

rss_kib() { ps -o rss= -p "$(IFS=,; echo "$*")" | awk '{s += $1} END {print s}'; }
cpu_snapshot() { # file: name ticks per line
  for np in "${NAMED[@]}"; do
    echo "${np%%=*} $(awk '{print $14 + $15}' "/proc/${np#*=}/stat")"
  done > "$1"
}

RSS_BEFORE=$(rss_kib "${SERVERS[@]}")
PER=$(( (SOCKETS + GATEWAYS - 1) / GATEWAYS ))
READY=()
GENS=()
T0=$(date +%s.%N)
for i in $(seq 1 "$GATEWAYS"); do
  "$BIN/pgws-load" --json --label "gen-$i" --listen-channel "$CH" --url "127.0.0.1:$((BASE + i))" --bind "127.0.0.$((i + 1))" \
    broadcast --sockets "$PER" --channel "$CH" --messages "$MESSAGES" \
    --ready-file "$OUT/ready-$i" >"$OUT/gen-$i.json" 2>"$OUT/gen-$i.err" &
  pids+=($!)
  GENS+=($!)
  READY+=(--wait-for "$OUT/ready-$i")
done
# All connected: every generator wrote its ready file (polled, bounded).
for _ in $(seq 1 6000); do
  n=$(find "$OUT" -maxdepth 1 -name "ready-*" ! -name "*.done" | wc -l)
  [ "$n" -ge "$GATEWAYS" ] && break
  for g in "${GENS[@]}"; do kill -0 "$g" 2>/dev/null || { echo "generator $g died: $(cat "$OUT"/gen-*.err)" >&2; exit 1; }; done
  sleep 0.1
done
T1=$(date +%s.%N)
sleep 2 # the gateways' allocations settle after the last upgrade
RSS_AFTER=$(rss_kib "${SERVERS[@]}")
cpu_snapshot "$OUT/cpu-before.txt"
"$BIN/pgws-load" --json --label publisher --listen-channel "$CH" --url "127.0.0.1:$((BASE + 1))" \
  broadcast --sockets 0 --channel "$CH" --messages "$MESSAGES" "${READY[@]}" > "$OUT/publisher.json"
# Every generator has all it will get (its sockets still open): the CPU
# the broadcasts cost, without the closing of 100,000 sockets.
for _ in $(seq 1 6000); do
  [ "$(find "$OUT" -maxdepth 1 -name "ready-*.done" | wc -l)" -ge "$GATEWAYS" ] && break
  sleep 0.1
done
cpu_snapshot "$OUT/cpu-after.txt"
for g in "${GENS[@]}"; do wait "$g"; done

python3 - "$OUT" "$SOCKETS" "$GATEWAYS" "$MESSAGES" "$RSS_BEFORE" "$RSS_AFTER" "$T0" "$T1" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys, glob
out, sockets, gateways, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss_before, rss_after, t0, t1 = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
gens = [json.loads(open(f).read().strip().splitlines()[-1]) for f in sorted(glob.glob(f"{out}/gen-*.json"))]
buckets = {}
for g in gens:
    for v, n in g["latency_us_buckets"]:
        buckets[v] = buckets.get(v, 0) + n
values = sorted(buckets.items())
total = sum(n for _, n in values)
def q(p):
    seen = 0
    for v, n in values:
        seen += n
        if seen >= p * total:
            return v / 1000
    return 0
opened = sum(g["sockets"] for g in gens)
expected = sum(g["expected"] for g in gens)
received = sum(g["received"] for g in gens)
ticks = os.sysconf("SC_CLK_TCK")
def snap(name):
    return {l.split()[0]: int(l.split()[1]) for l in open(f"{out}/{name}")}
before, after = snap("cpu-before.txt"), snap("cpu-after.txt")
publisher = json.loads(open(f"{out}/publisher.json").read().strip().splitlines()[-1])
result = {
    "sockets": opened, "gateways": gateways, "broadcasts": publisher["sent"],
    "connect_all_s": round(t1 - t0, 1),
    "rss_per_socket_kib": round((rss_after - rss_before) / opened, 2),
    "rss_before_mib": round(rss_before / 1024, 1), "rss_after_mib": round(rss_after / 1024, 1),
    "expected": expected, "delivered": received, "lost": expected - received,
    "reordered": sum(g["reordered"] for g in gens),
    "closed_by_server": sum(g["closed_by_server"] for g in gens),
    "latency_p50_ms": q(0.5), "latency_p99_ms": q(0.99), "latency_max_ms": values[-1][0] / 1000 if values else 0,
    "cpu_s": {k: round((after[k] - before[k]) / ticks, 2) for k in before},
}
gateway_cpu = sum(v for k, v in result["cpu_s"].items() if k.startswith("gateway"))
result["gateway_cpu_us_per_delivery"] = round(gateway_cpu * 1e6 / max(received, 1), 2)
json.dump(result, open(f"{out}/result.json", "w"))
print(f"| sockets | gateways | connect all (s) | server RSS per socket (KiB) | broadcasts | delivered | lost | reordered | p50 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print(f"| {opened:,} | {gateways} | {result['connect_all_s']} | {result['rss_per_socket_kib']} | {result['broadcasts']} | {received:,} | {result['lost']} | {result['reordered']} | {result['latency_p50_ms']} | {result['latency_p99_ms']} | {result['latency_max_ms']} |")
print()
print("CPU seconds during the broadcasts: " + ", ".join(f"{k} {v}" for k, v in result["cpu_s"].items()))
print(f"Gateways' CPU per delivery: {result['gateway_cpu_us_per_delivery']} µs")
EOF

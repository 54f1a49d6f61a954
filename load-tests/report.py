"""Render pgws-load JSON lines into docs/benchmarks.md."""
import json, os, platform, subprocess, sys, datetime

results = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
scale = sys.argv[2]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem_gib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 1048576
commit_file = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "commit")
commit = (open(commit_file).read().strip() if os.path.exists(commit_file)
          else subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip())

def table(scenario, columns):
    rows = [r for r in results if r["scenario"] == scenario]
    if not rows:
        return ""
    out = ["| mode | " + " | ".join(h for h, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + r.get("label", "") + " | " + " | ".join(str(r.get(k, "")) for _, k in columns) + " |")
    return "\n".join(out) + "\n"


def added_table():
    floor = next((r for r in results if r["scenario"] == "floor"), None)
    rows = [r for r in results if r["scenario"] == "spread" and r.get("label") in ("standalone", "cluster", "standalone-v2", "cluster-v2")]
    if not floor or not rows:
        return ""
    out = ["| mode | spread p50 / p99 / p99.9 ms | floor p50 / p99 / p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | server µs/notification |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        per_notification = r["server_cpu_us_per_delivery"] * r["readers"] / r["channels"]
        trio = lambda x: " / ".join(str(x[k]) for k in ("latency_p50_ms", "latency_p99_ms", "latency_p999_ms"))
        add = lambda k: round(r[k] - floor[k], 3)
        out.append(f"| {r['label']} | {trio(r)} | {trio(floor)} | {add('latency_p50_ms')} | {add('latency_p99_ms')} | {add('latency_p999_ms')} | {per_notification:.1f} |")
    return "\n".join(out) + "\n"

print(f"""# Benchmarks

Measured by `load-tests/run.sh` (the load generator is `pgws-load`, in
`load-tests/`), on loopback: gateway(s), coordinators, PostgreSQL, Redis and
the load generator share one machine, so every number includes the
generator's own CPU competing for the same cores.

* Machine: {os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}
* Date: {datetime.date.today().isoformat()}, commit `{commit}`, size scale {scale}
* Command: `{"SCALE=" + scale + " " if scale != "1" else ""}load-tests/run.sh` (release build; results also in `.tmp/bench/results.jsonl`)
* Cluster mode: 2 gateways + 2 coordinators, one local Redis.
* Every server process runs with `PGWS_WORKER_THREADS={os.environ.get("PGWS_WORKER_THREADS", "0")}` (one runtime thread each: five busy processes share two cores).

## Idle sockets: memory per socket

{table("idle", [("sockets", "sockets"), ("channels", "channels"), ("connects/s", "connect_per_s"), ("server RSS before (MiB)", "server_rss_before_mib"), ("after (MiB)", "server_rss_after_mib"), ("RSS per socket (KiB)", "server_rss_per_socket_kib")])}
Target: ≤ 8 KiB of server RSS per idle socket. In cluster mode the RSS is
summed over both gateways and the leader.

## Fan-out: one channel, many readers

{table("fanout", [("readers", "readers"), ("NOTIFY/s", "notify_per_s"), ("delivered", "delivered"), ("lost", "lost"), ("p50 ms", "latency_p50_ms"), ("p99 ms", "latency_p99_ms"), ("server µs/delivery", "server_cpu_us_per_delivery"), ("+PG µs/delivery", "server_plus_pg_cpu_us_per_delivery"), ("client µs/delivery", "client_cpu_us_per_delivery")])}
Target: no loss; server CPU (gateway + PostgreSQL) ≤ 5 µs per delivery.

## Spread: many channels, few readers each

{table("spread", [("readers", "readers"), ("channels", "channels"), ("NOTIFY/s", "notify_per_s"), ("delivered", "delivered"), ("lost", "lost"), ("p50 ms", "latency_p50_ms"), ("p99 ms", "latency_p99_ms"), ("p99.9 ms", "latency_p999_ms"), ("server µs/delivery", "server_cpu_us_per_delivery"), ("client µs/delivery", "client_cpu_us_per_delivery")])}
The `standby-listening` row is a cluster with `PGWS_STANDBY_LISTEN=true`
serving the same load, its "server" column the CPU of one **standby**
coordinator alone (LISTENing and buffering, per delivery of the whole
cluster: × 10,000 deliveries/s gives its CPU share).
Targets: p50 ≤ 0.5 ms and p99 ≤ 2 ms standalone; cluster adds ≤ 1 ms at p50
and costs ≤ 1.3× the standalone CPU per delivery.

## The latency floor: what the gateway adds

{table("floor", [("channels", "channels"), ("NOTIFY/s", "notify_per_s"), ("sent", "sent"), ("received", "received"), ("p50 ms", "latency_p50_ms"), ("p99 ms", "latency_p99_ms"), ("p99.9 ms", "latency_p999_ms"), ("PostgreSQL µs/notification", "postgres_cpu_us_per_notification")])}
{added_table()}
`floor`: `spread`'s publisher, payloads and rate, received by a bare
LISTEN connection in the load generator (no gateway): what PostgreSQL's
NOTIFY path costs alone. The second table subtracts it from each `spread`
row of the same run: the latency the gateway (and, in cluster mode, the
coordinator and Redis) adds, and the server CPU per *notification* (per
delivery × 5 readers). Goal: ≤ 0.1 ms added at p50 and ≤ 0.3 ms at p99
standalone.

## Protocol v2: recovery

{table("recover", [("clients", "clients"), ("missed (history)", "history"), ("recovered", "recovered"), ("not recovered", "not_recovered"), ("replayed", "replayed"), ("out of order", "out_of_order"), ("all recovered in s", "recover_seconds"), ("per client p50 ms", "per_client_p50_ms"), ("p99 ms", "per_client_p99_ms"), ("server µs/replayed", "server_cpu_us_per_replayed")])}
`recover`: that many v2 clients of one channel lose their sockets at once,
100 messages are published meanwhile, and all of them reconnect together
with `since` (as after a gateway is rolled): the time until every client
has its 100 missed messages, in order, and the server CPU per replayed
message. The `-v2` rows of the fan-out and spread tables are the same
scenarios with v2 readers (subscribe command, `message` frames with
offsets). Target: v2 costs ≤ 10 % more server CPU per delivery than v1.

## Writers: client messages → NOTIFY

{table("writers", [("writer sockets", "writers"), ("offered/s (0 = flat out)", "offered_per_s"), ("sent", "sent"), ("NOTIFYs received", "notifies_received"), ("not received", "lost"), ("sockets closed by the gateway", "refused_sockets"), ("NOTIFY/s", "notifies_per_s"), ("server CPU s", "server_cpu_s"), ("PostgreSQL CPU s", "postgres_cpu_s")])}
Target: ≥ 50,000 client messages/s become NOTIFYs, no loss. Each mode runs
twice: flat out (every writer sends as fast as it can) and at an offered
50,000 messages/s. NOTIFY/s is taken over the time between the first and
the last NOTIFY received. "Not received" counts frames the generator wrote,
including those written after the gateway had closed the socket with 1013
(the stream at its bound): those were refused, not lost — the column
"sockets closed by the gateway" says when that happened.

## Churn: connect / disconnect

{table("churn", [("concurrency", "concurrency"), ("accepted/s", "accepted_per_s"), ("refused/s (bad token)", "refused_per_s"), ("unexpected", "unexpected"), ("server µs per attempt", "server_cpu_us_per_attempt")])}
## Failover (cluster)

{table("failover", [("signal", "signal"), ("readers", "readers"), ("NOTIFY/s", "notify_per_s"), ("sent", "sent"), ("lost at a reader", "lost_at_reader"), ("duplicates", "duplicates"), ("reordered", "reordered"), ("longest gap ms", "longest_gap_ms"), ("first delivery after signal ms", "first_delivery_after_kill_ms")])}
Targets: deliveries resume ≤ lease TTL (2 s here) + 1 s after `kill -9`,
≤ 1 s after SIGTERM. With one LISTEN connection (`cluster`), notifications
sent while no coordinator LISTENs are lost (NOTIFY has no replay): the
"lost" column is that gap times the rate. With standby listening
(`cluster-standby`, `PGWS_STANDBY_LISTEN=true`) the new leader publishes
what its predecessor did not: nothing is lost, duplicated or reordered;
the longest gap is the time to take over, after which the missed
notifications arrive at once, in order.
""")
notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
if os.path.exists(notes):
    print(open(notes).read())

#!/usr/bin/env bash
# The long chaos campaign (issue 20): random seeds, one run after another,
# for CHAOS_MINUTES (30) minutes, each run CHAOS_RUN_SECONDS (120) of
# faults against a private PostgreSQL and Redis, 3 coordinators with
# standby listening and 2 gateways (see chaos/src/main.rs). One report per
# run in target/chaos/long-<date>/; exits non-zero if any run found a
# violation. The short, fixed-seed campaign runs from scripts/test.sh.
#
#   bash load-tests/chaos.sh                 # 30 minutes
#   CHAOS_MINUTES=5 bash load-tests/chaos.sh
#   CHAOS_OUTBOX=1 CHAOS_MINUTES=10 bash load-tests/chaos.sh   # over the durable outbox
#   CHAOS_SENTINEL=1 bash load-tests/chaos.sh  # Redis behind Sentinel, clock steps (libfaketime)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${CHAOS_MINUTES:-30}"
run="${CHAOS_RUN_SECONDS:-120}"
out="target/chaos/long-$(date -u +%Y%m%dT%H%M%S)"
variant=()
if [ -n "${CHAOS_OUTBOX:-}" ]; then
  variant=(--outbox)
  out="$out-outbox"
fi
if [ -n "${CHAOS_SENTINEL:-}" ]; then
  variant+=(--sentinel --clock)
  out="$out-sentinel"
fi
# CHAOS_NO_BUILD=1: use the binaries already in target/debug (or
# PGWS_BIN_DIR for the coordinator and gateway), e.g. while they are rebuilt.
[ -n "${CHAOS_NO_BUILD:-}" ] || cargo build --locked -p pgws-chaos -p pgws-coordinator -p pgws-gateway --bins
chaos="${CHAOS_BIN:-target/debug/pgws-chaos}"
status=0
"$chaos" "${variant[@]}" --campaign $((minutes * 60)) --duration "$run" --out "$out" || status=$?
python3 - "$out" <<'PY'
import pathlib, re, sys
from collections import Counter
faults, checked, expected, violations, runs = Counter(), Counter(), Counter(), Counter(), 0
for report in sorted(pathlib.Path(sys.argv[1]).glob("chaos-*.txt")):
    runs += 1
    section = None
    for line in report.read_text().splitlines():
        if line and not line.startswith(" "):
            section = line.split(" ")[0].rstrip(":")
            continue
        m = re.match(r"\s+(\d+)\s+(.*)", line)
        if not m:
            continue
        n, what = int(m.group(1)), m.group(2)
        {"faults": faults, "checked": checked, "expected": expected, "violations": violations}.get(section, Counter())[what] += n
print(f"{runs} runs")
for title, c in [("faults by kind", faults), ("checked", checked), ("expected losses", expected), ("violations", violations)]:
    print(f"{title}:")
    for what, n in sorted(c.items()):
        print(f"  {n:9}  {what}")
PY
exit "$status"

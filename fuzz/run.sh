#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer on the stable toolchain.
#
#   fuzz/run.sh                  every target, 10,000,000 executions each
#   fuzz/run.sh frames 60s       one target for a minute
#   FUZZ_RUNS=1000000 fuzz/run.sh
#
# cargo-fuzz needs nightly only for its sanitizer flag; the coverage
# instrumentation libFuzzer feeds on is stable (-C passes=sancov-module and
# LLVM's sanitizer-coverage options), so the targets are built with those
# directly, without AddressSanitizer (safe Rust needs none; overflow checks
# and debug assertions stay on). Seeds are in fuzz/seeds/<target>/; what
# libFuzzer learns goes to .tmp/fuzz/corpus/<target>/, crashes to
# fuzz/artifacts/<target>/ (keep each one as a unit test). A summary line
# per target is appended to .tmp/fuzz/results.txt.
set -euo pipefail
cd "$(dirname "$0")"
source ../scripts/services.sh
pgws_ensure_cargo

TARGETS=(frames request claims token bus_message conninfo v2_commands tls_stream sentinel_reply)
[ $# -ge 1 ] && TARGETS=("$1")
RUNS="${FUZZ_RUNS:-10000000}"
TIME_LIMIT=""
if [ $# -ge 2 ]; then TIME_LIMIT="-max_total_time=${2%s}"; fi

TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="--cfg fuzzing -C passes=sancov-module \
  -C llvm-args=-sanitizer-coverage-level=4 \
  -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
  -C llvm-args=-sanitizer-coverage-pc-table \
  -C llvm-args=-sanitizer-coverage-trace-compares \
  -C debug-assertions -C overflow-checks"
# --target keeps the flags off build scripts and proc macros.
cargo build --release --target "$TRIPLE" --bins

mkdir -p ../.tmp/fuzz
for target in "${TARGETS[@]}"; do
  corpus="../.tmp/fuzz/corpus/$target"
  artifacts="artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  log="../.tmp/fuzz/$target.log"
  echo "== $target" >&2
  set +e
  "target/$TRIPLE/release/$target" "$corpus" "seeds/$target" \
    -artifact_prefix="$artifacts/" -runs="$RUNS" $TIME_LIMIT -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  secs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  crashes=$(find "$artifacts" -type f | wc -l)
  line="$(date -u +%F) $target runs=${runs:-?} seconds=${secs:-?} coverage=${cov:-?} crashes=$crashes exit=$status commit=$(git rev-parse --short HEAD)"
  echo "$line" | tee -a ../.tmp/fuzz/results.txt
  if [ "$status" -ne 0 ]; then tail -30 "$log" >&2; fi
done

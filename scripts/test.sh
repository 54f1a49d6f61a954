#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests
# against the real PostgreSQL (started here when it is installed but down).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
pgws_ensure_cargo
pgws_ensure_postgres

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --locked --workspace -- --test-threads "${PGWS_TEST_THREADS:-4}"

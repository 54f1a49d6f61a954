#!/usr/bin/env bash
# The container image, built and run here the way the release builds it:
# deploy/Dockerfile packaging binaries built beforehand (the release: one
# `cargo build --release` per architecture; here: the debug binaries the
# test suite already built, so the suite compiles nothing twice), with
# buildah (root, --storage-driver vfs, --isolation chroot; no Docker engine)
# on a base made by mmdebstrap (no registry is reachable here; the release
# uses the distroless base pinned by digest in the Dockerfile). Then:
#   * hadolint passes on the Dockerfile,
#   * the image runs as 10001:10001 and has no shell,
#   * `buildah run --network host` starts pgws-gateway from the image against
#     the local PostgreSQL: /readyz answers and a websocket receives a NOTIFY,
#   * the chart's `helm test` script (helm/files/websocket-test.js) opens a
#     websocket on it,
#   * its size is printed (recorded in docs/operations.md) and bounded
#     (PGWS_IMAGE_MAX_MB; defaults: 90 MB debug, 60 MB release).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/tools.sh
pgws_ensure_postgres
pgws_ensure_image_tools

profile="${PGWS_IMAGE_PROFILE:-debug}"
tag="localhost/pgws:test-$$"
db="${PGWS_TEST_DB_URI:-postgres://postgres@127.0.0.1:5432/postgres}"
failed=0
passed=0
check() { local name=$1; shift; if "$@"; then echo "ok: $name"; passed=$((passed + 1)); else echo "FAILED: $name"; failed=$((failed + 1)); fi; }
bh() { bash scripts/image.sh buildah "$@"; }

check "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
if [ ! -x "target/$profile/pgws-gateway" ] || [ ! -x "target/$profile/pgws-coordinator" ]; then
  pgws_ensure_cargo
  release=()
  [ "$profile" = release ] && release=(--release)
  cargo build --locked "${release[@]}" -p pgws-gateway -p pgws-coordinator
fi
start=$(date +%s)
had_dist=0
[ -d dist ] && had_dist=1
bash scripts/image.sh stage "$profile"
bash scripts/image.sh base
PGWS_BASE_IMAGE=localhost/pgws-base:bookworm bash scripts/image.sh build "$tag"
echo "image built in $(( $(date +%s) - start )) s (base cached after the first run)"

ctr=$(bh from --pull-never "$tag")
run_pid=""
# buildah run does not pass SIGTERM on to the process it runs: end the
# processes this script started, deepest first, by their ids.
descendants() { local child; for child in $(ps -o pid= --ppid "$1"); do descendants "$child"; echo "$child"; done; }
cleanup() {
  if [ -n "$run_pid" ]; then
    for pid in $(descendants "$run_pid") "$run_pid"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "$run_pid" 2>/dev/null || true
  fi
  bh rm "$ctr" >/dev/null 2>&1 || true
  bh rmi "$tag" >/dev/null 2>&1 || true
  # dist/ staged by someone else (for docker compose) is theirs to keep.
  [ "$had_dist" = 1 ] || rm -rf dist
}
trap cleanup EXIT

size=$(bh images --noheading --format '{{.Size}}' "$tag")
echo "image size: $size ($profile binaries, stripped of debug info)"
# An upper bound, so growth is noticed: the debug image was 69 MB, the
# release image 54 MB (docs/operations.md); PGWS_IMAGE_MAX_MB overrides.
max_mb="${PGWS_IMAGE_MAX_MB:-$([ "$profile" = release ] && echo 60 || echo 90)}"
size_within() {
  local root bytes
  root=$(bh mount "$ctr")
  bytes=$(du -sb "$root" | cut -f1)
  bh umount "$ctr" >/dev/null
  echo "image file system: $bytes bytes, bound $max_mb MB" >&2
  [ "$bytes" -le $((max_mb * 1000 * 1000)) ]
}
check "image size within ${max_mb} MB" size_within
check "runs as 10001:10001" test "$(bh inspect --format '{{.OCIv1.Config.User}}' "$tag")" = "10001:10001"
no_shell() {
  local root; root=$(bh mount "$ctr")
  local found=0
  for sh in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash; do
    [ -e "$root/$sh" ] && { echo "the image has /$sh" >&2; found=1; }
  done
  bh umount "$ctr" >/dev/null
  [ "$found" -eq 0 ]
}
check "no shell in the image" no_shell

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)
listen="pgws-image-$$"
export PGWS_JWT_SECRET="image-test-secret-$$-0123456789abcdef"
bh run --isolation chroot --network host \
  --env "PGWS_DB_URI=$db" --env "PGWS_JWT_SECRET=$PGWS_JWT_SECRET" \
  --env "PGWS_PORT=$port" --env "PGWS_ADMIN_PORT=$admin" --env "PGWS_LISTEN_CHANNEL=$listen" \
  "$ctr" -- /usr/local/bin/pgws-gateway >".tmp/image-gateway-$$.log" 2>&1 &
run_pid=$!
ready() {
  for _ in $(seq 1 150); do
    [ "$(curl -s "http://127.0.0.1:$admin/readyz" 2>/dev/null)" = ready ] && return 0
    kill -0 "$run_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat ".tmp/image-gateway-$$.log" >&2
  return 1
}
check "the image's gateway answers /readyz" ready
node_ws=()
node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || node_ws=(--experimental-websocket)
check "a websocket through the image receives a NOTIFY" node "${node_ws[@]}" --no-warnings tests/image/notify.mjs "$port" "$listen" "$db"
check "the chart's helm test script opens a websocket on the image's gateway" \
  env PGWS_URL="ws://127.0.0.1:$port" node "${node_ws[@]}" --no-warnings helm/files/websocket-test.js
rm -f ".tmp/image-gateway-$$.log"
echo "image: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

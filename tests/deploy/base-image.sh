#!/usr/bin/env bash
# scripts/base-image.sh against a fake registry (a directory of raw
# manifests): `check` passes on a current multi-arch pin and fails on a
# moved tag, an unknown digest or a single-arch base; `bump` rewrites the pin.
# Run by scripts/test-deploy.sh; exits 1 on the first wrong answer.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# The fake registry: docker://<name>:<tag> reads tag-<tag>.json,
# docker://<name>@sha256:<hex> reads the file of that digest, if any.
cat >"$dir/registry" <<'SH'
#!/bin/sh
here=$(dirname "$0")
case "$1" in
  *@sha256:*) for f in "$here"/*.json; do [ "sha256:$(sha256sum "$f" | cut -d' ' -f1)" = "${1##*@}" ] && exec cat "$f"; done; exit 1 ;;
  *:*) exec cat "$here/tag-${1##*:}.json" ;;
esac
exit 1
SH
chmod +x "$dir/registry"
index() { printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$1"; }
amd64='{"digest":"sha256:1","platform":{"os":"linux","architecture":"amd64"}}'
arm64='{"digest":"sha256:2","platform":{"os":"linux","architecture":"arm64"}}'
index "$amd64,$arm64" >"$dir/old.json"
index "$arm64,$amd64" >"$dir/tag-nonroot.json"
index "$amd64" >"$dir/tag-amd64only.json"
digest() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
export PGWS_MANIFEST_CMD="$dir/registry" PGWS_DOCKERFILE="$dir/Dockerfile"
pin() { sed "s|^ARG BASE_IMAGE=.*|ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:$1@$2|" deploy/Dockerfile >"$dir/Dockerfile"; }
fail() { echo "base-image.sh: $*" >&2; exit 1; }
run() { bash scripts/base-image.sh "$@" 2>"$dir/err"; }

# deploy/Dockerfile itself is pinned in the form the script reads.
PGWS_DOCKERFILE=deploy/Dockerfile run pinned >/dev/null || fail "deploy/Dockerfile's pin is unreadable: $(cat "$dir/err")"

pin nonroot "$(digest "$dir/tag-nonroot.json")"
run check || fail "a current multi-arch pin failed the check: $(cat "$dir/err")"

pin nonroot "$(digest "$dir/old.json")"
! run check || fail "a tag that moved passed the check"
grep -q 'base-image.sh bump' "$dir/err" || fail "a moved tag does not say how to bump: $(cat "$dir/err")"
run bump || fail "bump failed: $(cat "$dir/err")"
grep -q "^ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot@$(digest "$dir/tag-nonroot.json")$" "$dir/Dockerfile" || fail "bump did not pin the tag's digest"
run check || fail "the check fails after bump: $(cat "$dir/err")"

pin nonroot "sha256:$(printf '0%.0s' $(seq 64))"
! run check || fail "a digest the registry does not have passed the check"

pin amd64only "$(digest "$dir/tag-amd64only.json")"
! run check || fail "a single-arch base passed the check"
grep -q 'linux/arm64' "$dir/err" || fail "a single-arch base does not name the missing platform: $(cat "$dir/err")"
! run bump || fail "bump accepted a single-arch base"
echo "base-image.sh: current, moved, unknown and single-arch pins answered right; bump rewrites the pin"

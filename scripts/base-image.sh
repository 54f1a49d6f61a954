#!/usr/bin/env bash
# The release image's base, pinned in deploy/Dockerfile as
# `ARG BASE_IMAGE=<name>:<tag>@sha256:<digest>`, against its registry.
#
#   scripts/base-image.sh pinned   print the pinned name, tag and digest
#   scripts/base-image.sh check    exit 1 unless the pinned digest exists, is a
#                                  multi-arch index with linux/amd64 and
#                                  linux/arm64, and is what the tag points to
#                                  now (the release runs this before building)
#   scripts/base-image.sh bump     rewrite the pin to the tag's current digest
#                                  (after checking its platforms)
#
# A digest is the sha256 of the manifest's raw bytes, read with
# `skopeo inspect --raw docker://<ref>`. PGWS_MANIFEST_CMD replaces that
# command (it gets `docker://<name>:<tag>` or `docker://<name>@<digest>` and
# prints the raw manifest; the tests give it a fake registry);
# PGWS_DOCKERFILE replaces deploy/Dockerfile.
# No registry is reachable from this project's machines, so `check` runs in
# the release workflow and the scheduled base-image workflow, not in test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

dockerfile="${PGWS_DOCKERFILE:-deploy/Dockerfile}"
read -r -a manifest_cmd <<<"${PGWS_MANIFEST_CMD:-skopeo inspect --raw}"

pin=$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile")
if ! [[ "$pin" =~ ^([^:@]+):([^:@]+)@(sha256:[0-9a-f]{64})$ ]]; then
  echo "$dockerfile: ARG BASE_IMAGE is not <name>:<tag>@sha256:<digest>: '$pin'" >&2
  exit 1
fi
name=${BASH_REMATCH[1]} tag=${BASH_REMATCH[2]} digest=${BASH_REMATCH[3]}

# The raw manifest of a reference, into a file; its digest on stdout.
fetch() {
  local ref=$1 file=$2
  if ! "${manifest_cmd[@]}" "docker://$ref" >"$file"; then
    echo "cannot read the manifest of $ref" >&2
    return 1
  fi
  echo "sha256:$(sha256sum "$file" | cut -d' ' -f1)"
}

# The manifest must be an index carrying both release platforms.
platforms_ok() {
  python3 - "$1" "$2" <<'PY'
import json, sys
manifest, ref = json.load(open(sys.argv[1])), sys.argv[2]
have = {f"{m['platform']['os']}/{m['platform']['architecture']}" for m in manifest.get('manifests', []) if 'platform' in m}
missing = {'linux/amd64', 'linux/arm64'} - have
if missing:
    sys.exit(f"{ref} is not a multi-arch index with {', '.join(sorted(missing))} (has: {', '.join(sorted(have)) or 'none'})")
PY
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "${1:-}" in
  pinned)
    echo "$name $tag $digest"
    ;;
  check)
    got=$(fetch "$name@$digest" "$tmp/pinned.json")
    if [ "$got" != "$digest" ]; then
      echo "the registry's manifest for $name@$digest hashes to $got" >&2
      exit 1
    fi
    platforms_ok "$tmp/pinned.json" "$name@$digest"
    current=$(fetch "$name:$tag" "$tmp/current.json")
    if [ "$current" != "$digest" ]; then
      echo "$name:$tag is now $current, the Dockerfile pins $digest:" >&2
      echo "  run scripts/base-image.sh bump and commit deploy/Dockerfile (the base-image workflow opens that pull request weekly)" >&2
      exit 1
    fi
    echo "$name:$tag@$digest: current, linux/amd64 and linux/arm64" >&2
    ;;
  bump)
    current=$(fetch "$name:$tag" "$tmp/current.json")
    platforms_ok "$tmp/current.json" "$name:$tag"
    sed -i "s|^ARG BASE_IMAGE=.*|ARG BASE_IMAGE=$name:$tag@$current|" "$dockerfile"
    if [ "$current" = "$digest" ]; then echo "$name:$tag is still $digest" >&2; else echo "$name:$tag: $digest -> $current" >&2; fi
    ;;
  *)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac

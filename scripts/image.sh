#!/usr/bin/env bash
# The pgws image, built with buildah exactly as the tests build it: the
# Dockerfile (deploy/Dockerfile) packages binaries built beforehand.
#
#   scripts/image.sh stage PROFILE [ARCH]   copy target/PROFILE/pgws-{gateway,coordinator}
#                                           (stripped) to dist/ARCH/ (ARCH: amd64, arm64;
#                                           default: this machine's)
#   scripts/image.sh base [ARCH]            a base image from Debian bookworm by mmdebstrap
#                                           (libc6, libgcc-s1, ca-certificates; no shell),
#                                           as localhost/pgws-base:bookworm — for machines
#                                           that cannot pull the pinned distroless base
#   scripts/image.sh build TAG [ARCH]       buildah bud deploy/Dockerfile -> TAG
#
# buildah runs as root with --storage-driver vfs and --isolation chroot (no
# daemon, no overlay mounts needed), in a private store under
# $PGWS_BUILDAH_DIR (default .tmp/buildah) so it never touches the system's.
# PGWS_BASE_IMAGE overrides the Dockerfile's pinned base.
set -euo pipefail
cd "$(dirname "$0")/.."

PGWS_BUILDAH_DIR="${PGWS_BUILDAH_DIR:-$PWD/.tmp/buildah}"
bh() { buildah --root "$PGWS_BUILDAH_DIR/root" --runroot "$PGWS_BUILDAH_DIR/run" --storage-driver vfs "$@"; }

native_arch() { case "$(uname -m)" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) uname -m ;; esac; }

stage() {
  local profile=$1 arch=${2:-$(native_arch)}
  mkdir -p "dist/$arch"
  for bin in pgws-gateway pgws-coordinator; do
    [ -x "target/$profile/$bin" ] || { echo "target/$profile/$bin is missing: run cargo build (--release for release) first" >&2; exit 1; }
    # --strip-debug keeps the symbol table (panic backtraces name functions).
    objcopy --strip-debug "target/$profile/$bin" "dist/$arch/$bin"
  done
  echo "staged target/$profile -> dist/$arch" >&2
}

base() {
  local arch=${1:-$(native_arch)}
  local cache="$PGWS_BUILDAH_DIR/base-bookworm-$arch.tar"
  mkdir -p "$PGWS_BUILDAH_DIR"
  if [ ! -s "$cache" ]; then
    echo "building the base root filesystem with mmdebstrap (bookworm, $arch)" >&2
    # extract: unpack the packages, run no maintainer script (there is no
    # shell to run them with); the CA bundle is what update-ca-certificates
    # would have written.
    mmdebstrap --quiet --variant=extract --architectures="$arch" \
      --include=libc6,libgcc-s1,ca-certificates \
      --customize-hook='mkdir -p "$1/etc/ssl/certs" "$1/tmp" && chmod 1777 "$1/tmp" && cat "$1"/usr/share/ca-certificates/mozilla/*.crt > "$1/etc/ssl/certs/ca-certificates.crt"' \
      --customize-hook='rm -rf "$1/usr/bin/debconf"* "$1/usr/bin/c_rehash" "$1/var/cache/apt" "$1/var/lib/apt/lists"' \
      bookworm "$cache.part" http://deb.debian.org/debian
    mv "$cache.part" "$cache"
  fi
  local ctr
  ctr=$(bh from --arch "$arch" scratch)
  bh add "$ctr" "$cache" / >/dev/null
  bh config --arch "$arch" --os linux "$ctr"
  bh commit --quiet --rm "$ctr" localhost/pgws-base:bookworm >/dev/null
  echo "base image localhost/pgws-base:bookworm" >&2
}

build() {
  local tag=$1 arch=${2:-$(native_arch)}
  local args=(--build-arg "TARGETARCH=$arch" --arch "$arch")
  [ -n "${PGWS_BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$PGWS_BASE_IMAGE")
  bh bud --quiet --isolation chroot --pull-never "${args[@]}" -f deploy/Dockerfile -t "$tag" . >/dev/null
  echo "built $tag" >&2
}

cmd=${1:-}
shift || true
case "$cmd" in
  stage) stage "$@" ;;
  base) base "$@" ;;
  build) build "$@" ;;
  buildah) bh "$@" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac

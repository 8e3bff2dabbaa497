#!/usr/bin/env bash
# Builds the kiln executor image with kiln-executor itself (no other builder): compiles
# kiln-executor and kiln-warmer as static binaries (glibc, +crt-static), assembles a build context
# in a temporary directory (never in the repository), and builds deploy/executor/Dockerfile with
# `kiln-executor --isolation=chroot --reproducible`.
#
# Usage: scripts/build-executor-image.sh [--destination REF]... [--oci-layout DIR] [--tar-path FILE]
#                                        [--insecure] [--no-build]
#   --destination REF  push the image (repeatable)
#   --oci-layout DIR   write it as an OCI image layout
#   --tar-path FILE    write it as a docker archive (podman load -i FILE)
#   --insecure         push over plain HTTP (a local test registry)
#   --no-build         reuse the binaries already in the target directory
# At least one of --destination, --oci-layout, --tar-path is required.
#
# Environment: CARGO_TARGET_DIR (default <repo>/target; the release binaries are cached there),
# KILN_BUILD_NICE (default 10). Prints the image digest on stdout. Needs root (COPY sets owners).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/$TRIPLE/release"

log() { echo "build-executor-image: $*" >&2; }
die() { echo "build-executor-image: $*" >&2; exit 1; }
usage() { sed -n '7,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

OUT_ARGS=()
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --destination) [[ $# -ge 2 ]] || usage; OUT_ARGS+=(--destination "$2"); shift 2 ;;
        --destination=*) OUT_ARGS+=(--destination "${1#*=}"); shift ;;
        --oci-layout) [[ $# -ge 2 ]] || usage; OUT_ARGS+=(--oci-layout-path "$2"); shift 2 ;;
        --oci-layout=*) OUT_ARGS+=(--oci-layout-path "${1#*=}"); shift ;;
        --tar-path) [[ $# -ge 2 ]] || usage; OUT_ARGS+=(--tar-path "$2"); shift 2 ;;
        --tar-path=*) OUT_ARGS+=(--tar-path "${1#*=}"); shift ;;
        --insecure) OUT_ARGS+=(--insecure); shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage ;;
        *) echo "build-executor-image: unknown argument $1" >&2; usage ;;
    esac
done
printf '%s\n' "${OUT_ARGS[@]}" | grep -qE '^--(destination|oci-layout-path|tar-path)$' ||
    die "give --destination REF, --oci-layout DIR or --tar-path FILE"
if ! printf '%s\n' "${OUT_ARGS[@]}" | grep -qx -- --destination; then
    OUT_ARGS+=(--no-push)
fi
[[ "$(id -u)" == 0 ]] || die "must run as root (the image's files are owned by root)"
[[ -r /etc/ssl/certs/ca-certificates.crt ]] ||
    die "no CA bundle at /etc/ssl/certs/ca-certificates.crt: apt-get install ca-certificates"

if [[ "$BUILD" == 1 ]]; then
    log "compiling static kiln-executor and kiln-warmer (release, $TRIPLE)"
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR" \
        nice -n "${KILN_BUILD_NICE:-10}" cargo build --release --target "$TRIPLE" \
        -p kiln-executor -p kiln-warmer --bins)
fi
for b in kiln-executor kiln-warmer; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run without --no-build"
    # In place, / is replaced by the base image: a dynamic loader or libc there is not ours.
    if readelf -l "$BIN/$b" | grep -q 'program interpreter'; then
        die "$BIN/$b is dynamically linked; it must be built with RUSTFLAGS='-C target-feature=+crt-static'"
    fi
done

WORK="$(mktemp -d /tmp/kiln-executor-image.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
CTX="$WORK/context"
mkdir -p "$CTX/kiln" "$CTX/certs" "$CTX/kaniko"
cp "$BIN/kiln-executor" "$CTX/kiln/executor"
cp "$BIN/kiln-warmer" "$CTX/kiln/warmer"
chmod 0755 "$CTX/kiln/executor" "$CTX/kiln/warmer"
# The release profile keeps line tables for backtraces during development; the image does not
# need them (77 MB -> 13 MB per binary). Strip the copies, never the cached build.
if command -v strip >/dev/null; then
    strip "$CTX/kiln/executor" "$CTX/kiln/warmer"
else
    log "strip not found (apt-get install binutils): the image carries debug line tables"
fi
cp /etc/ssl/certs/ca-certificates.crt "$CTX/certs/ca-certificates.crt"
chmod 0644 "$CTX/certs/ca-certificates.crt"
ln -s /kiln/executor "$CTX/kaniko/executor"
cp "$ROOT/deploy/executor/Dockerfile" "$CTX/Dockerfile"

LABELS=(--label "org.opencontainers.image.title=kiln-executor")
if rev="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)"; then
    LABELS+=(--label "org.opencontainers.image.revision=$rev")
fi

log "building the image with $BIN/kiln-executor"
"$BIN/kiln-executor" --isolation=chroot --reproducible \
    --kiln-dir "$WORK/kiln" \
    --context "dir://$CTX" --dockerfile "$CTX/Dockerfile" \
    "${LABELS[@]}" "${OUT_ARGS[@]}"

#!/usr/bin/env bash
# Builds the kiln executor image with kiln-executor itself (no other builder): compiles
# kiln-executor and kiln-warmer as static binaries (glibc, +crt-static), assembles a build context
# in a temporary directory (never in the repository), and builds a target of
# deploy/executor/Dockerfile with `kiln-executor --isolation=chroot --reproducible`. With --operator
# it builds the kiln-operator image (deploy/operator/Dockerfile) the same way.
#
# Usage: scripts/build-executor-image.sh [--destination REF]... [--oci-layout DIR] [--tar-path FILE]
#                                        [--insecure] [--no-build] [--debug] [--cred-helpers DIR]
#                                        [--cloud-helpers] [--operator]
#   --destination REF   push the image (repeatable)
#   --oci-layout DIR    write it as an OCI image layout
#   --tar-path FILE     write it as a docker archive (podman load -i FILE)
#   --insecure          push over plain HTTP (a local test registry)
#   --no-build          reuse the binaries already in the target directory
#   --debug             the debug variant: a busybox shell at /busybox/sh (Debian's busybox-static)
#   --cred-helpers DIR  copy every DIR/docker-credential-* (static binaries) into /kaniko, on PATH
#   --cloud-helpers     also build and add the ECR, GCR and ACR helpers (scripts/cred-helpers.sh,
#                       from the Go module proxy; the release image is built with this)
#   --operator          the kiln-operator image instead (deploy/operator/Dockerfile: the static
#                       kiln-operator, non-root, no shell); not with --debug or the helper options
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
usage() { sed -n '8,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

OUT_ARGS=()
BUILD=1
TARGET=executor
HELPERS=""
CLOUD_HELPERS=0
CLOUD_DIR=""
OPERATOR=0
WORK=""
cleanup() { rm -rf ${CLOUD_DIR:+"$CLOUD_DIR"} ${WORK:+"$WORK"}; }
trap cleanup EXIT
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
        --debug) TARGET=debug; shift ;;
        --cred-helpers) [[ $# -ge 2 ]] || usage; HELPERS="$2"; shift 2 ;;
        --cred-helpers=*) HELPERS="${1#*=}"; shift ;;
        --cloud-helpers) CLOUD_HELPERS=1; shift ;;
        --operator) OPERATOR=1; shift ;;
        -h|--help) usage ;;
        *) echo "build-executor-image: unknown argument $1" >&2; usage ;;
    esac
done
printf '%s\n' "${OUT_ARGS[@]}" | grep -qE '^--(destination|oci-layout-path|tar-path)$' ||
    die "give --destination REF, --oci-layout DIR or --tar-path FILE"
if ! printf '%s\n' "${OUT_ARGS[@]}" | grep -qx -- --destination; then
    OUT_ARGS+=(--no-push)
fi
if [[ "$OPERATOR" == 1 ]]; then
    [[ "$TARGET" != debug && -z "$HELPERS" && "$CLOUD_HELPERS" == 0 ]] ||
        die "--operator builds the operator image: --debug, --cred-helpers and --cloud-helpers are for the executor image"
    TARGET=operator
fi
[[ "$(id -u)" == 0 ]] || die "must run as root (the image's files are owned by root)"
[[ -r /etc/ssl/certs/ca-certificates.crt ]] ||
    die "no CA bundle at /etc/ssl/certs/ca-certificates.crt: apt-get install ca-certificates"
BUSYBOX=/bin/busybox
if [[ "$TARGET" == debug ]]; then
    [[ -x "$BUSYBOX" ]] || die "no $BUSYBOX for --debug: apt-get install busybox-static"
fi
HELPER_FILES=()
if [[ "$CLOUD_HELPERS" == 1 ]]; then
    CLOUD_DIR="$(mktemp -d /tmp/kiln-cloud-helpers.XXXXXX)"
    bash "$ROOT/scripts/cred-helpers.sh" "$CLOUD_DIR" >&2 || die "building the cloud credential helpers failed"
    HELPER_FILES+=("$CLOUD_DIR"/docker-credential-*)
fi
if [[ -n "$HELPERS" ]]; then
    [[ -d "$HELPERS" ]] || die "--cred-helpers $HELPERS: not a directory"
    shopt -s nullglob
    GIVEN=("$HELPERS"/docker-credential-*)
    shopt -u nullglob
    ((${#GIVEN[@]})) || die "--cred-helpers $HELPERS: no docker-credential-* file there"
    HELPER_FILES+=("${GIVEN[@]}")
fi

# The image's binaries, and what cargo builds: the operator image is built by kiln-executor too
# (and kiln-operator's package also has the crdgen tool, which the image does not hold).
BINARIES=(kiln-executor kiln-warmer)
SELECT=(-p kiln-executor -p kiln-warmer --bins)
if [[ "$TARGET" == operator ]]; then
    BINARIES=(kiln-operator kiln-executor)
    SELECT=(-p kiln-operator -p kiln-executor --bin kiln-operator --bin kiln-executor)
fi
if [[ "$BUILD" == 1 ]]; then
    log "compiling static ${BINARIES[*]} (release, $TRIPLE)"
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR" \
        nice -n "${KILN_BUILD_NICE:-10}" cargo build --release --target "$TRIPLE" "${SELECT[@]}")
fi
# In place, / is replaced by the base image: a dynamic loader or libc there is not ours, so every
# program the image runs must be static.
require_static() { # FILE HINT
    [[ -f "$1" && -x "$1" ]] || die "$1 is missing or not executable${2:+: $2}"
    if readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; then
        die "$1 is dynamically linked; the image runs it after / is replaced by a base image${2:+: $2}"
    fi
}
for b in "${BINARIES[@]}"; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run without --no-build"
    require_static "$BIN/$b" "build it with RUSTFLAGS='-C target-feature=+crt-static'"
done
[[ "$TARGET" != debug ]] || require_static "$BUSYBOX" "Debian's busybox-static provides a static one"
for h in "${HELPER_FILES[@]}"; do
    require_static "$h" "build it static (Go: CGO_ENABLED=0)"
done

WORK="$(mktemp -d /tmp/kiln-executor-image.XXXXXX)"
CTX="$WORK/context"
mkdir -p "$CTX/certs"
cp /etc/ssl/certs/ca-certificates.crt "$CTX/certs/ca-certificates.crt"
chmod 0644 "$CTX/certs/ca-certificates.crt"
if [[ "$TARGET" == operator ]]; then
    cp "$BIN/kiln-operator" "$CTX/kiln-operator"
    chmod 0755 "$CTX/kiln-operator"
    if command -v strip >/dev/null; then strip "$CTX/kiln-operator"; fi
    cp "$ROOT/deploy/operator/Dockerfile" "$CTX/Dockerfile"
else
    mkdir -p "$CTX/kiln" "$CTX/kaniko"
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
    ln -s /kiln/executor "$CTX/kaniko/executor"
    ln -s /kiln/warmer "$CTX/kaniko/warmer"
    # kaniko's image has an empty /kaniko/.docker: CI scripts write config.json there without mkdir.
    mkdir -p "$CTX/kaniko/.docker"
    for h in "${HELPER_FILES[@]}"; do
        install -m 0755 "$h" "$CTX/kaniko/$(basename "$h")"
        log "credential helper $(basename "$h")"
    done
    if [[ "$TARGET" == debug ]]; then
        mkdir -p "$CTX/busybox" "$CTX/bin"
        install -m 0755 "$BUSYBOX" "$CTX/busybox/busybox"
        # One relative link per applet, as `busybox --install -s` would make (busybox is not a link).
        while read -r applet; do
            [[ "$applet" == busybox ]] || ln -s busybox "$CTX/busybox/$applet"
        done < <("$BUSYBOX" --list)
        [[ -L "$CTX/busybox/sh" ]] || die "$BUSYBOX has no sh applet"
        ln -s /busybox/sh "$CTX/bin/sh"
    fi
    cp "$ROOT/deploy/executor/Dockerfile" "$CTX/Dockerfile"
fi

# deploy/executor/Dockerfile holds the executor and debug targets; the operator's has one stage.
TARGET_ARGS=(--target "$TARGET")
TITLE=kiln-executor
case "$TARGET" in
    debug) TITLE=kiln-executor-debug ;;
    operator) TITLE=kiln-operator TARGET_ARGS=() ;;
esac
LABELS=(--label "org.opencontainers.image.title=$TITLE")
if rev="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)"; then
    LABELS+=(--label "org.opencontainers.image.revision=$rev")
fi

log "building the $TARGET image with $BIN/kiln-executor"
"$BIN/kiln-executor" --isolation=chroot --reproducible \
    --kiln-dir "$WORK/kiln" \
    --context "dir://$CTX" --dockerfile "$CTX/Dockerfile" "${TARGET_ARGS[@]}" \
    "${LABELS[@]}" "${OUT_ARGS[@]}"

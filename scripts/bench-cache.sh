#!/usr/bin/env bash
# Benchmarks kiln-executor's caches on a Debian-based Dockerfile and prints three timings:
#
#   cold build          no layer cache entries, base image pulled from the registry
#   warm rebuild        same build again with --cache: every RUN is a cache hit (and the base
#                       layers are not downloaded at all, since every step hits)
#   warmed-base build   a changed RUN (so it misses) with the base read from a --cache-dir
#                       filled beforehand through the base-image cache (kiln-warmer's layout)
#
# Needs the local registry and base images (`bash scripts/registry.sh start && bash
# scripts/base-images.sh`), root, and Debian's apt mirror for the `apt-get install` step.
# Environment: KILN_TEST_REGISTRY (default 127.0.0.1:5000), KILN_EXECUTOR and KILN_WARMER
# (binaries; default: built here with cargo into $CARGO_TARGET_DIR or target/).
set -euo pipefail

REG="${KILN_TEST_REGISTRY:-127.0.0.1:5000}"
BASE="$REG/kiln-test/debian:bookworm"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

die() { echo "bench-cache: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "must run as root (RUN steps use namespaces and chroot)"
curl -fsS -o /dev/null --max-time 5 "http://$REG/v2/" || die "no registry on http://$REG/v2/: run 'bash scripts/registry.sh start'"
skopeo inspect --tls-verify=false "docker://$BASE" >/dev/null 2>&1 || die "$BASE is missing: run 'bash scripts/base-images.sh'"

if [[ -z "${KILN_EXECUTOR:-}" || -z "${KILN_WARMER:-}" ]]; then
    (cd "$ROOT" && cargo build -q -p kiln-executor -p kiln-warmer)
fi
EXECUTOR="${KILN_EXECUTOR:-$TARGET/debug/kiln-executor}"
WARMER="${KILN_WARMER:-$TARGET/debug/kiln-warmer}"

WORK="$(mktemp -d /tmp/kiln-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
RUN_ID="$(date +%s)-$$"
DEST="$REG/bench/cache-$RUN_ID"
mkdir -p "$WORK/ctx"
cat > "$WORK/ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*
RUN useradd -m app && echo 'built' > /home/app/marker
RUN jq --version > /jq-version
ARG CHANGE=1
RUN echo "\$CHANGE" > /change
CMD ["jq", "--version"]
DOCKERFILE

# build NAME EXTRA-FLAGS... : runs one build, prints its wall time in seconds.
build() {
    local name="$1"; shift
    local start end
    start="$(date +%s.%N)"
    if ! "$EXECUTOR" --context "dir://$WORK/ctx" --destination "$DEST:$name" --insecure --insecure-pull \
        --cache --cache-repo "$DEST-cache" "$@" >"$WORK/$name.log" 2>&1; then
        tail -30 "$WORK/$name.log" >&2
        die "$name build failed (log above)"
    fi
    end="$(date +%s.%N)"
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

cold="$(build cold)"
warm="$(build warm)"
"$WARMER" --image "$BASE" --cache-dir "$WORK/base-cache" --insecure >"$WORK/warmer.log" 2>&1 ||
    { tail -20 "$WORK/warmer.log" >&2; die "kiln-warmer failed"; }
warmed="$(build warmed-base --cache-dir "$WORK/base-cache" --build-arg CHANGE=2)"

printf '%-20s %8.2fs  (%s)\n' "cold build" "$cold" "$(grep -o 'cache: .*misses' "$WORK/cold.log" | tail -1)"
printf '%-20s %8.2fs  (%s)\n' "warm rebuild" "$warm" "$(grep -o 'cache: .*misses' "$WORK/warm.log" | tail -1)"
printf '%-20s %8.2fs  (%s)\n' "warmed-base build" "$warmed" "$(grep -o 'cache: .*misses' "$WORK/warmed-base.log" | tail -1)"
grep -q "base image layers not needed" "$WORK/warm.log" && echo "warm rebuild: base image layers not needed"
grep -q "read from the base-image cache" "$WORK/warmed-base.log" && echo "warmed-base build: base image read from --cache-dir"

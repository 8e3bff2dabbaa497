#!/usr/bin/env bash
# Benchmarks a two-platform build against two single-platform builds of the same Dockerfile and
# prints the three times (median of KILN_BENCH_RUNS runs, default 3; min and max beside it):
#
#   linux/amd64 alone, linux/arm64 alone (its RUN under QEMU emulation), and
#   --platform linux/amd64,linux/arm64 (both, pushed as one image index)
#
# The Dockerfile is FROM the test registry's amd64 + arm64 busybox index, with a RUN step of some
# CPU work (checksums of generated data) and a COPY. Every build pushes to the registry, without
# the layer cache. Needs root, the local registry and base images (`bash scripts/registry.sh start
# && bash scripts/base-images.sh`) and qemu-user-static. Environment: KILN_TEST_REGISTRY (default
# 127.0.0.1:5000), KILN_EXECUTOR (binary; default: built here with cargo --release into
# $CARGO_TARGET_DIR or target/), KILN_BENCH_RUNS.
set -euo pipefail

REG="${KILN_TEST_REGISTRY:-127.0.0.1:5000}"
BASE="$REG/kiln-test/busybox:multiplatform"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
RUNS="${KILN_BENCH_RUNS:-3}"

die() { echo "bench-platforms: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "must run as root (RUN steps use namespaces)"
curl -fsS -o /dev/null --max-time 5 "http://$REG/v2/" || die "no registry on http://$REG/v2/: run 'bash scripts/registry.sh start'"
skopeo inspect --raw --tls-verify=false "docker://$BASE" >/dev/null 2>&1 || die "$BASE is missing: run 'bash scripts/base-images.sh'"

if [[ -z "${KILN_EXECUTOR:-}" ]]; then
    (cd "$ROOT" && cargo build -q --release -p kiln-executor)
fi
EXECUTOR="${KILN_EXECUTOR:-$TARGET/release/kiln-executor}"

WORK="$(mktemp -d /tmp/kiln-bench-platforms.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/ctx"
seq 1 20000 >"$WORK/ctx/data.txt"
cat >"$WORK/ctx/Dockerfile" <<EOF
FROM $BASE
ARG TARGETARCH
COPY data.txt /data.txt
RUN for i in 1 2 3 4 5 6 7 8; do sha256sum /data.txt; md5sum /data.txt; done > /sums && echo "\$(uname -m) \$TARGETARCH" > /arch
EOF

# One timed build: seconds on stdout.
build() {
    local platforms="$1" n="$2" start end
    start="$(date +%s.%N)"
    "$EXECUTOR" --context "dir://$WORK/ctx" --platform "$platforms" \
        --destination "$REG/kiln-bench/platforms:run$n" --insecure --insecure-pull \
        >"$WORK/log" 2>&1 || { tail -n 20 "$WORK/log" >&2; die "the build for $platforms failed"; }
    end="$(date +%s.%N)"
    awk -v a="$start" -v b="$end" 'BEGIN {printf "%.3f\n", b - a}' 
}

# median min max of the numbers on stdin
stats() { sort -n | awk '{a[NR]=$1} END {printf "%.2f s (min %.2f, max %.2f)", a[int((NR+1)/2)], a[1], a[NR]}'; }

declare -A times
for run in $(seq 1 "$RUNS"); do
    for p in linux/amd64 linux/arm64 linux/amd64,linux/arm64; do
        times[$p]+="$(build "$p" "$run")"$'\n'
    done
done
amd="$(printf '%s' "${times[linux/amd64]}" | stats)"
arm="$(printf '%s' "${times[linux/arm64]}" | stats)"
both="$(printf '%s' "${times[linux/amd64,linux/arm64]}" | stats)"
sum="$(paste <(printf '%s' "${times[linux/amd64]}") <(printf '%s' "${times[linux/arm64]}") | awk '{printf "%.3f\n", $1 + $2}' | stats)"
echo "Two-platform build against two single-platform builds ($RUNS runs, median; load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "  linux/amd64 alone:                $amd"
echo "  linux/arm64 alone (emulated RUN): $arm"
echo "  the two alone, added:             $sum"
echo "  linux/amd64,linux/arm64 at once:  $both"

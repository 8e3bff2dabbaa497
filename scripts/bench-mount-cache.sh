#!/usr/bin/env bash
# Benchmarks RUN --mount=type=cache on an `apt-get install` and prints the step's time in three
# builds of the same Dockerfile, none of which uses the layer cache (so the step always runs):
#
#   first run           empty mount cache: apt downloads every package
#   second run          same mount cache (--mount-cache-dir): apt finds its lists and packages
#                       in the cache mounts and downloads nothing
#   without the cache   a fresh, empty mount cache again, to show the run-to-run spread
#
# Offline and repeatable: the benchmark makes its own Debian repository on loopback (packages
# built with dpkg-deb from fixed pseudo-random data, a flat index) and serves it at a limited rate
# that stands for a mirror (KILN_BENCH_APT_RATE, bytes per second, default 20 MB/s; 0 = no limit).
# Package count and size: KILN_BENCH_APT_PACKAGES (default 4), KILN_BENCH_APT_MB (default 16).
#
# Needs root, python3 (the HTTP server), the local registry and base images (`bash
# scripts/registry.sh start && bash scripts/base-images.sh`). Environment: KILN_TEST_REGISTRY
# (default 127.0.0.1:5000), KILN_EXECUTOR (binary; default: built here with cargo into
# $CARGO_TARGET_DIR or target/).
set -euo pipefail

REG="${KILN_TEST_REGISTRY:-127.0.0.1:5000}"
BASE="$REG/kiln-test/debian:bookworm"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
RATE="${KILN_BENCH_APT_RATE:-20000000}"
PACKAGES="${KILN_BENCH_APT_PACKAGES:-4}"
MB="${KILN_BENCH_APT_MB:-16}"

die() { echo "bench-mount-cache: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "must run as root (RUN steps use namespaces and chroot)"
command -v python3 >/dev/null || die "python3 is needed for the loopback apt repository"
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to build the benchmark's packages"
curl -fsS -o /dev/null --max-time 5 "http://$REG/v2/" || die "no registry on http://$REG/v2/: run 'bash scripts/registry.sh start'"
skopeo inspect --tls-verify=false "docker://$BASE" >/dev/null 2>&1 || die "$BASE is missing: run 'bash scripts/base-images.sh'"

if [[ -z "${KILN_EXECUTOR:-}" ]]; then
    (cd "$ROOT" && cargo build -q -p kiln-executor)
fi
EXECUTOR="${KILN_EXECUTOR:-$TARGET/debug/kiln-executor}"

WORK="$(mktemp -d /tmp/kiln-bench-mount.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The repository: PACKAGES packages of MB MiB each (uncompressed .debs, so building them is quick
# and apt's time is download plus unpack), named in a flat Packages index.
repo="$WORK/repo"
mkdir -p "$repo"
names=()
for i in $(seq 1 "$PACKAGES"); do
    name="kiln-bench-$i"
    names+=("$name")
    pkg="$WORK/pkg-$i"
    mkdir -p "$pkg/DEBIAN" "$pkg/usr/share/kiln-bench"
    python3 -c "import random,sys; r=random.Random($i); sys.stdout.buffer.write(r.randbytes($MB*1048576))" \
        > "$pkg/usr/share/kiln-bench/$name.bin"
    cat > "$pkg/DEBIAN/control" <<CONTROL
Package: $name
Version: 1.0
Architecture: all
Maintainer: Kiln benchmark <bench@kiln.invalid>
Description: benchmark payload $i
CONTROL
    SOURCE_DATE_EPOCH=1704067200 dpkg-deb -Znone --root-owner-group -b "$pkg" "$repo/$name.deb" >/dev/null
done
for deb in "$repo"/*.deb; do
    dpkg-deb -f "$deb"
    echo "Filename: ./$(basename "$deb")"
    echo "Size: $(stat -c %s "$deb")"
    echo "SHA256: $(sha256sum "$deb" | cut -d' ' -f1)"
    echo
done > "$repo/Packages"

# A loopback HTTP server that sends at most RATE bytes per second and counts what it served.
cat > "$WORK/serve.py" <<'PY'
import http.server, os, sys, time
root, rate, portfile, countfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *a):
        pass
    def copyfile(self, src, dst):
        sent = 0
        start = time.monotonic()
        while True:
            chunk = src.read(65536)
            if not chunk:
                break
            dst.write(chunk)
            sent += len(chunk)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        with open(countfile, "a") as f:
            f.write(f"{sent}\n")
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(portfile, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY
python3 "$WORK/serve.py" "$repo" "$RATE" "$WORK/port" "$WORK/served" &
SERVER_PID=$!
for _ in $(seq 1 50); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
[[ -s "$WORK/port" ]] || die "the loopback apt repository did not start"
PORT="$(cat "$WORK/port")"

# Docker's documented apt pattern: lists and archives in locked cache mounts, and apt told to
# keep what it downloads (Debian's docker images delete it; the test base does not, but the line
# keeps the Dockerfile right for both).
mkdir -p "$WORK/ctx"
cat > "$WORK/ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN echo 'deb [trusted=yes] http://127.0.0.1:$PORT ./' > /etc/apt/sources.list \\
 && rm -rf /etc/apt/sources.list.d /etc/apt/apt.conf.d/docker-clean \\
 && echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' > /etc/apt/apt.conf.d/keep-cache
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\
    --mount=type=cache,target=/var/lib/apt,sharing=locked \\
    apt-get update -q && apt-get install -y -q --no-install-recommends ${names[*]}
DOCKERFILE

# build NAME CACHE-DIR: one build without the layer cache; prints the apt step's time (snapshot
# included), what the repository served for it and the step's layer size (the same in every run:
# the cache mounts' contents never reach the layer).
build() {
    local name="$1" cache="$2" step served
    : > "$WORK/served"
    if ! "$EXECUTOR" --context "dir://$WORK/ctx" --no-push --mount-cache-dir "$cache" \
        --insecure-pull >"$WORK/$name.log" 2>&1; then
        tail -30 "$WORK/$name.log" >&2
        die "$name build failed (log above)"
    fi
    step="$(grep -o 'step 2/2 done in [0-9.]*s' "$WORK/$name.log" | grep -o '[0-9.]*s$')" ||
        die "$name: no timing for the apt step in its log"
    layer="$(grep 'step 2/2 done in' "$WORK/$name.log" | grep -o '([0-9.]* [KMG]*i*B)' | head -1 | tr -d '()')"
    served="$(awk '{ s += $1 } END { printf "%.1f", s / 1048576 }' "$WORK/served")"
    printf '%-20s apt step %8s  (%s MiB downloaded, layer %s)\n' "$name" "$step" "$served" "$layer"
}

echo "repository: $PACKAGES packages x $MB MiB on 127.0.0.1:$PORT, rate ${RATE} B/s (0 = unlimited)"
build "first run" "$WORK/mount-cache"
build "second run" "$WORK/mount-cache"
build "without the cache" "$WORK/mount-cache-fresh"

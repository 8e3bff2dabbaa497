#!/usr/bin/env bash
# Builds BuildKit's buildkitd and buildctl (a tool Kiln is measured against) from their Go module and
# starts, prunes and stops a buildkitd for the benchmark. No public image registry is reachable, so
# BuildKit runs as a host daemon (OCI worker = runc, containerd worker off), not as the moby/buildkit image.
#
#   bash scripts/buildkit.sh build        # the binaries only (if missing)
#   bash scripts/buildkit.sh start DIR    # build if needed, start buildkitd with its state under DIR,
#                                         # wait (<= 60 s) until it answers
#   bash scripts/buildkit.sh addr DIR     # print its address: unix://DIR/buildkitd.sock
#   bash scripts/buildkit.sh prune DIR    # empty its build cache (buildctl prune --all), for cold runs
#   bash scripts/buildkit.sh stop DIR     # SIGTERM (then SIGKILL), unmount what is left under DIR/state
#   KILN_BUILDKIT_REBUILD=1 bash ... build # rebuild the binaries
#
# Binaries: /var/cache/kiln/bin/{buildkitd,buildctl} (module github.com/moby/buildkit@$BUILDKIT_VERSION,
#           CGO off, niced), stamped in /var/cache/kiln/bin/buildkitd.version.
# Under DIR: buildkitd.toml (generated: $KILN_TEST_REGISTRY as a plain-HTTP, insecure registry),
#           state/ (--root), buildkitd.sock, buildkitd.log, buildkitd.pid, snapshotter (the one used).
# Snapshotter: overlayfs if an overlay mount works under DIR/state, native otherwise
#           (KILN_BUILDKIT_SNAPSHOTTER overrides: overlayfs, native, auto, ...).
# Needs: root, runc on PATH (apt-get install -y runc), jq, Go >= 1.26.8 (go.mod of v0.35.0).
# Environment: BUILDKIT_VERSION (default v0.35.0), KILN_GO_CACHE (default /var/cache/kiln/go),
#              KILN_TEST_REGISTRY (default 127.0.0.1:5000), KILN_BUILDKIT_SNAPSHOTTER,
#              KILN_BUILDKIT_START_TIMEOUT (seconds, default 60).
set -euo pipefail

VERSION="${BUILDKIT_VERSION:-v0.35.0}"
MODULE=github.com/moby/buildkit
GOC="${KILN_GO_CACHE:-/var/cache/kiln/go}"
BIN_DIR=/var/cache/kiln/bin
BUILDKITD="$BIN_DIR/buildkitd"
BUILDCTL="$BIN_DIR/buildctl"
STAMP="$BIN_DIR/buildkitd.version"
REG="${KILN_TEST_REGISTRY:-127.0.0.1:5000}"
START_TIMEOUT="${KILN_BUILDKIT_START_TIMEOUT:-60}"
STOP_TIMEOUT=30

log() { echo "buildkit.sh: $*" >&2; }
die() { echo "buildkit.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2
    exit 2
}

build_binaries() {
    if [[ -x "$BUILDKITD" && -x "$BUILDCTL" && "$(cat "$STAMP" 2>/dev/null)" == "$VERSION" && -z "${KILN_BUILDKIT_REBUILD:-}" ]]; then
        log "using $BUILDKITD and $BUILDCTL ($VERSION)"
        return
    fi
    [[ -x /usr/local/go/bin/go ]] && ! command -v go >/dev/null && PATH="$PATH:/usr/local/go/bin"
    command -v go >/dev/null || die "go not installed (needs Go >= 1.26.8 on PATH, or /usr/local/go/bin/go)"
    command -v jq >/dev/null || die "jq not installed: apt-get install -y jq"
    mkdir -p "$GOC/mod" "$GOC/cache" "$GOC/path" "$BIN_DIR"
    # As in kaniko.sh: `go mod download` the exact version, copy its source out of the read-only
    # module cache and build it as the main module with the go.mod/go.sum of that tag. GOTOOLCHAIN
    # defaults to local (v0.35.0 says `go 1.26.8`); export GOTOOLCHAIN=goX.Y.Z to let go fetch a newer one.
    local gobin src
    gobin="$(mktemp -d /tmp/kiln-buildkit-bin.XXXXXX)"
    local goenv=(env GOPATH="$GOC/path" GOMODCACHE="$GOC/mod" GOCACHE="$GOC/cache"
        GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}")
    log "go mod download $MODULE@$VERSION"
    if ! src="$("${goenv[@]}" go mod download -json "$MODULE@$VERSION" | jq -r '.Dir // empty')"; then
        rm -rf "$gobin"
        die "go mod download $MODULE@$VERSION failed (output above)"
    fi
    if [[ ! -d "$src/cmd/buildkitd" || ! -d "$src/cmd/buildctl" ]]; then
        rm -rf "$gobin"
        die "go mod download gave no source directory with cmd/buildkitd and cmd/buildctl for $MODULE@$VERSION"
    fi
    cp -r "$src" "$gobin/src"
    chmod -R u+w "$gobin/src"
    log "go build ./cmd/buildkitd ./cmd/buildctl in a copy of $src (slow on 2 cores: several minutes)"
    # -X ...version.Version: what `buildkitd --version` prints (the upstream Makefile stamps it the same way).
    local ldflags="-s -w -X $MODULE/version.Version=$VERSION"
    if ! (cd "$gobin/src" && "${goenv[@]}" nice -n 19 go build -mod=mod -trimpath -ldflags "$ldflags" \
        -o "$gobin/buildkitd" ./cmd/buildkitd &&
        "${goenv[@]}" nice -n 19 go build -mod=mod -trimpath -ldflags "$ldflags" \
            -o "$gobin/buildctl" ./cmd/buildctl); then
        rm -rf "$gobin"
        die "go build of $MODULE $VERSION failed (output above)"
    fi
    mv "$gobin/buildkitd" "$BUILDKITD.tmp"
    mv "$BUILDKITD.tmp" "$BUILDKITD"
    mv "$gobin/buildctl" "$BUILDCTL.tmp"
    mv "$BUILDCTL.tmp" "$BUILDCTL"
    echo "$VERSION" >"$STAMP"
    rm -rf "$gobin"
    log "built $BUILDKITD and $BUILDCTL ($VERSION)"
}

# The state directory as an absolute path, without a trailing slash.
state_dir() {
    [[ -n "${1:-}" ]] || usage
    [[ -d "$1" ]] || die "$1 is not a directory"
    (cd "$1" && pwd -P)
}

addr_of() { echo "unix://$1/buildkitd.sock"; }

# The pid of the buildkitd started for DIR, if it is still running.
running_pid() {
    local pid
    pid="$(cat "$1/buildkitd.pid" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$BUILDKITD"* ]] || return 1
    echo "$pid"
}

# overlayfs if the kernel lets us mount an overlay on the filesystem of DIR/state, native otherwise.
pick_snapshotter() {
    local state="$1" probe
    if [[ -n "${KILN_BUILDKIT_SNAPSHOTTER:-}" ]]; then
        echo "$KILN_BUILDKIT_SNAPSHOTTER"
        return
    fi
    probe="$(mktemp -d "$state/.overlay-probe.XXXXXX")"
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        rm -rf "$probe"
        echo overlayfs
    else
        rm -rf "$probe"
        echo native
    fi
}

write_config() {
    local dir="$1" snapshotter="$2"
    cat >"$dir/buildkitd.toml" <<EOF
# Generated by scripts/buildkit.sh; rewritten on every start.
root = "$dir/state"

[grpc]
  address = ["$(addr_of "$dir")"]

[worker.oci]
  enabled = true
  snapshotter = "$snapshotter"

[worker.containerd]
  enabled = false

[registry."$REG"]
  http = true
  insecure = true
EOF
}

start() {
    local dir pid snapshotter sock waited=0
    dir="$(state_dir "${1:-}")"
    sock="$dir/buildkitd.sock"
    # sun_path holds 108 bytes including the terminating NUL.
    ((${#sock} < 108)) || die "socket path $sock is too long for a unix socket (${#sock} >= 108 bytes); use a shorter DIR"
    build_binaries
    command -v runc >/dev/null || die "runc not installed (the OCI worker runs build steps with it): apt-get install -y runc"
    if pid="$(running_pid "$dir")"; then
        die "a buildkitd for $dir is already running (pid $pid); run: bash $0 stop $dir"
    fi
    mkdir -p "$dir/state"
    snapshotter="$(pick_snapshotter "$dir/state")"
    echo "$snapshotter" >"$dir/snapshotter"
    write_config "$dir" "$snapshotter"
    rm -f "$sock" "$dir/buildkitd.pid"
    log "starting buildkitd $VERSION (oci worker, snapshotter $snapshotter, registry $REG as plain HTTP) in $dir"
    # setsid: its own session, so the caller's job control or Ctrl-C does not reach it.
    setsid "$BUILDKITD" --config "$dir/buildkitd.toml" --root "$dir/state" --addr "$(addr_of "$dir")" \
        --oci-worker=true --containerd-worker=false --oci-worker-snapshotter "$snapshotter" \
        </dev/null >"$dir/buildkitd.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/buildkitd.pid"
    until "$BUILDCTL" --addr "$(addr_of "$dir")" debug workers >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$dir/buildkitd.log" >&2 || true
            rm -f "$dir/buildkitd.pid"
            die "buildkitd exited during startup (log above, full log: $dir/buildkitd.log)"
        fi
        if ((waited >= START_TIMEOUT)); then
            tail -n 30 "$dir/buildkitd.log" >&2 || true
            die "buildkitd (pid $pid) did not answer on $(addr_of "$dir") within ${START_TIMEOUT}s (log above; stop it with: bash $0 stop $dir)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "buildkitd (pid $pid) answers on $(addr_of "$dir") after ~${waited}s"
}

# Mount points under $1, deepest first.
mounts_under() {
    awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r
}

stop() {
    local dir pid waited=0 m left
    dir="$(state_dir "${1:-}")"
    if pid="$(running_pid "$dir")"; then
        log "stopping buildkitd (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT)); do
            sleep 1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "buildkitd (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            waited=0
            while kill -0 "$pid" 2>/dev/null && ((waited < 10)); do
                sleep 1
                waited=$((waited + 1))
            done
            kill -0 "$pid" 2>/dev/null && die "buildkitd (pid $pid) survived SIGKILL"
        fi
    else
        log "no buildkitd running for $dir"
    fi
    rm -f "$dir/buildkitd.pid"
    # Mounts buildkitd leaves behind (overlay snapshots of running steps, after a SIGKILL).
    while read -r m; do
        [[ -n "$m" ]] || continue
        log "unmounting $m"
        umount "$m" 2>/dev/null || umount -l "$m" || log "could not unmount $m"
    done < <(mounts_under "$dir/state")
    left="$(mounts_under "$dir/state")"
    [[ -z "$left" ]] || die "still mounted under $dir/state: $left"
}

prune() {
    local dir
    dir="$(state_dir "${1:-}")"
    [[ -x "$BUILDCTL" ]] || die "$BUILDCTL missing: bash $0 build"
    running_pid "$dir" >/dev/null || die "no buildkitd running for $dir: bash $0 start $dir"
    "$BUILDCTL" --addr "$(addr_of "$dir")" prune --all >&2
    log "pruned the build cache of the buildkitd in $dir"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
build)
    [[ "$(id -u)" == 0 ]] || die "must run as root (writes /var/cache/kiln)"
    build_binaries
    ;;
start)
    [[ "$(id -u)" == 0 ]] || die "must run as root (buildkitd with the runc worker is not run rootless here)"
    start "$@"
    ;;
stop)
    [[ "$(id -u)" == 0 ]] || die "must run as root (signals a root buildkitd, unmounts)"
    stop "$@"
    ;;
prune) prune "$@" ;;
addr) addr_of "$(state_dir "${1:-}")" ;;
*) usage ;;
esac

# shellcheck shell=bash
# Sourced by the scripts that build a small Go command from a pinned Go module into
# /var/cache/kiln/peers/<name>-<version>/ (scripts/buildkit-parse.sh, scripts/kaniko-flags.sh,
# scripts/kstatus.sh):
# the independent side of a conformance test. Everything comes from the Go module proxy: the
# version is the one scripts/<name>/go.mod requires, and every module is checked against
# scripts/<name>/go.sum (-mod=readonly: a module whose hash is not there is an error, not a
# download). The source is built in a copy outside the repository, so the build writes nothing
# into it; no binary is ever committed.
#
#   go_peer NAME MODULE LABEL [EXTRA...]
#
# builds scripts/NAME (which requires MODULE) into $PEERS/NAME-<version>/NAME unless the stamp
# there matches the recipe (the helper's source and pins, the calling script and this file), then
# calls `go_peer_extra OUTDIR MODDIR` (defined by the caller) to lay files beside the command,
# and prints the peer directory on stdout. EXTRA names files or directories that must exist in a
# current peer directory. Exit status 3: the module cannot be had here (Go is not installed, or
# the module proxy cannot be reached) and there is no earlier build to use; the test then fails
# under CI=true and is skipped loudly elsewhere. Any other failure (a hash mismatch, a build
# error) is exit status 1.

PEERS=/var/cache/kiln/peers

go_peer() {
  local name="$1" module="$2" label="$3"
  shift 3
  local extra=("$@")
  local src="$REPO/scripts/$name"
  log() { echo "$name.sh: $*" >&2; }
  die() {
    log "FAIL: $*"
    exit 1
  }
  local version
  version="$(awk -v m="$module" '$1 == "require" && $2 == m { print $3 }' "$src/go.mod")"
  [[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "no pinned $module version in $src/go.mod"
  grep -q "^$module $version h1:" "$src/go.sum" || die "$src/go.sum has no hash for $module $version"
  local out="$PEERS/$name-$version"
  # The recipe: the helper's source and pins, and the scripts that build it.
  local recipe
  recipe="$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" "$0" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
  up_to_date() {
    [[ -x "$out/$name" && "$(cat "$out/stamp" 2>/dev/null)" == "$recipe" ]] || return 1
    local e
    for e in "${extra[@]}"; do [[ -e "$out/$e" ]] || return 1; done
  }
  mkdir -p "$PEERS"
  if up_to_date; then
    echo "$out"
    return 0
  fi
  # Test binaries of several worktrees may ask at once: one builds, the others wait for it.
  exec 9>"$PEERS/.$name-$version.lock"
  flock 9
  if up_to_date; then
    echo "$out"
    return 0
  fi
  local go
  go="$(command -v go || true)"
  [[ -z "$go" && -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go
  if [[ -z "$go" ]]; then
    log "go is not installed (needs Go >= $(awk '$1 == "go" { print $2 }' "$src/go.mod"), from go.dev or the machine image)"
    exit 3
  fi
  export GOPATH="/var/cache/kiln/go/path"
  export GOMODCACHE="${GOMODCACHE:-/var/cache/kiln/go/mod}"
  export GOCACHE="${GOCACHE:-/var/cache/kiln/go/cache}"
  # The host toolchain must do: a toolchain download would be a second, unpinned fetch.
  export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
  mkdir -p "$GOMODCACHE" "$GOCACHE"

  local work
  work="$(mktemp -d "$PEERS/.$name-build.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  cp "$src/main.go" "$src/go.mod" "$src/go.sum" "$work/"
  log "building $label (scripts/$name, $module $version, nice 19)"
  local start=$SECONDS dl
  if ! dl="$(cd "$work" && nice -n 19 "$go" mod download "$module" 2>&1)"; then
    echo "$dl" >&2
    if grep -q "checksum mismatch\|SECURITY ERROR" <<<"$dl"; then
      die "$module@$version from the module proxy does not match scripts/$name/go.sum"
    fi
    log "cannot download $module@$version from the Go module proxy (output above)"
    exit 3
  fi
  (cd "$work" && nice -n 19 "$go" build -p 1 -trimpath -ldflags "-s -w" -o "$work/out/$name" .) ||
    die "go build of scripts/$name failed (output above)"
  local moddir
  moddir="$(cd "$work" && "$go" list -m -f '{{.Dir}}' "$module")"
  go_peer_extra "$work/out" "$moddir"
  chmod -R u+w "$work/out"
  echo "$recipe" >"$work/out/stamp"
  rm -rf "$out.old"
  [[ -e "$out" ]] && mv "$out" "$out.old"
  mv "$work/out" "$out"
  rm -rf "$out.old"
  log "built $out in $((SECONDS - start))s"
  echo "$out"
}

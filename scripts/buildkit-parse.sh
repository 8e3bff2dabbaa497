#!/usr/bin/env bash
# Builds BuildKit's own Dockerfile parser into a small command (scripts/buildkit-parse/main.go)
# and lays BuildKit's parser test files beside it: the independent side of Kiln's parser
# conformance test (crates/dockerfile/tests/buildkit_conformance.rs, which runs this script).
#
#   bash scripts/buildkit-parse.sh     build when needed; print the peer directory on stdout
#
# The peer directory, /var/cache/kiln/peers/buildkit-<version>/, holds
#   buildkit-parse             the command: buildkit-parse DOCKERFILE... prints one JSON line each
#   testfiles/, testfiles-negative/, testfile-line/
#                              BuildKit's frontend/dockerfile/parser test cases, copied from the
#                              module (never into this repository)
#   stamp                      what they were made from; a mismatch rebuilds
# Everything comes from the Go module proxy: the BuildKit version is the one scripts/buildkit-parse/
# go.mod requires, and every module is checked against scripts/buildkit-parse/go.sum (-mod=readonly:
# a module whose hash is not there is an error, not a download). The source is built in a copy
# outside the repository, so the build writes nothing here; no binary is ever committed.
# Exit status 3: BuildKit's parser cannot be had here (Go is not installed, or the module proxy
# cannot be reached) and there is no earlier build to use; the test then fails under CI=true and
# is skipped loudly elsewhere. Any other failure (a hash mismatch, a build error) is exit status 1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$REPO/scripts/buildkit-parse"
PEERS=/var/cache/kiln/peers

log() { echo "buildkit-parse.sh: $*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

VERSION="$(awk '$1 == "require" && $2 == "github.com/moby/buildkit" { print $3 }' "$SRC/go.mod")"
[[ "$VERSION" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "no pinned github.com/moby/buildkit version in $SRC/go.mod"
grep -q "^github.com/moby/buildkit $VERSION h1:" "$SRC/go.sum" ||
  die "$SRC/go.sum has no hash for github.com/moby/buildkit $VERSION"
OUT="$PEERS/buildkit-$VERSION"
# The recipe: the helper's source and pins, and this script. Same recipe, same result.
RECIPE="$(cat "$SRC/main.go" "$SRC/go.mod" "$SRC/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -x "$OUT/buildkit-parse" && -d "$OUT/testfiles" && -d "$OUT/testfiles-negative" && -d "$OUT/testfile-line" &&
    "$(cat "$OUT/stamp" 2>/dev/null)" == "$RECIPE" ]]
}

mkdir -p "$PEERS"
if up_to_date; then
  echo "$OUT"
  exit 0
fi
# Test binaries of several worktrees may ask at once: one builds, the others wait for it.
exec 9>"$PEERS/.buildkit-$VERSION.lock"
flock 9
if up_to_date; then
  echo "$OUT"
  exit 0
fi

GO="$(command -v go || true)"
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
if [[ -z "$GO" ]]; then
  log "go is not installed (needs Go >= $(awk '$1 == "go" { print $2 }' "$SRC/go.mod"), from go.dev or the machine image)"
  exit 3
fi
export GOPATH="/var/cache/kiln/go/path"
export GOMODCACHE="${GOMODCACHE:-/var/cache/kiln/go/mod}"
export GOCACHE="${GOCACHE:-/var/cache/kiln/go/cache}"
# The host toolchain must do: a toolchain download would be a second, unpinned fetch.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
mkdir -p "$GOMODCACHE" "$GOCACHE"

work="$(mktemp -d "$PEERS/.buildkit-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$SRC/main.go" "$SRC/go.mod" "$SRC/go.sum" "$work/"
log "building BuildKit $VERSION's Dockerfile parser (scripts/buildkit-parse, nice 19)"
start=$SECONDS
if ! dl="$(cd "$work" && nice -n 19 "$GO" mod download github.com/moby/buildkit 2>&1)"; then
  echo "$dl" >&2
  if grep -q "checksum mismatch\|SECURITY ERROR" <<<"$dl"; then
    die "github.com/moby/buildkit@$VERSION from the module proxy does not match scripts/buildkit-parse/go.sum"
  fi
  log "cannot download github.com/moby/buildkit@$VERSION from the Go module proxy (output above)"
  exit 3
fi
(cd "$work" && nice -n 19 "$GO" build -trimpath -ldflags "-s -w" -o "$work/out/buildkit-parse" .) ||
  die "go build of scripts/buildkit-parse failed (output above)"
moddir="$(cd "$work" && "$GO" list -m -f '{{.Dir}}' github.com/moby/buildkit)"
[[ -d "$moddir/frontend/dockerfile/parser/testfiles" ]] ||
  die "BuildKit $VERSION has no frontend/dockerfile/parser/testfiles in $moddir"
parser="$moddir/frontend/dockerfile/parser"
cp -r "$parser/testfiles" "$parser/testfiles-negative" "$parser/testfile-line" "$work/out/"
chmod -R u+w "$work/out"
echo "$RECIPE" >"$work/out/stamp"
rm -rf "$OUT.old"
[[ -e "$OUT" ]] && mv "$OUT" "$OUT.old"
mv "$work/out" "$OUT"
rm -rf "$OUT.old"
log "built $OUT/buildkit-parse and copied BuildKit's parser test files in $((SECONDS - start))s"
echo "$OUT"

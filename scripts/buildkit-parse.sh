#!/usr/bin/env bash
# Builds BuildKit's own Dockerfile parser into a small command (scripts/buildkit-parse/main.go)
# and lays BuildKit's parser test files beside it: the independent side of Kiln's parser
# conformance test (crates/dockerfile/tests/buildkit_conformance.rs, which runs this script).
#
#   bash scripts/buildkit-parse.sh     build when needed; print the peer directory on stdout
#
# The peer directory, /var/cache/kiln/peers/buildkit-parse-<version>/, holds
#   buildkit-parse             the command: buildkit-parse DOCKERFILE... prints one JSON line each
#   testfiles/, testfiles-negative/, testfile-line/
#                              BuildKit's frontend/dockerfile/parser test cases, copied from the
#                              module (never into this repository)
#   stamp                      what they were made from; a mismatch rebuilds
# How it is built, pinned and checked, and the exit statuses: scripts/lib/go-peer.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/go-peer.sh
source "$REPO/scripts/lib/go-peer.sh"

go_peer_extra() {
  local out="$1" parser="$2/frontend/dockerfile/parser"
  [[ -d "$parser/testfiles" ]] || die "$2 has no frontend/dockerfile/parser/testfiles"
  cp -r "$parser/testfiles" "$parser/testfiles-negative" "$parser/testfile-line" "$out/"
}

go_peer buildkit-parse github.com/moby/buildkit "BuildKit's Dockerfile parser" \
  testfiles testfiles-negative testfile-line

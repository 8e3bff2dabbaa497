#!/usr/bin/env bash
# Builds scripts/kaniko-flags/main.go, which reads kaniko's flag definitions and environment
# variables from kaniko's own source with go/parser, and lays that source beside it: the
# independent side of Kiln's flag-parity tests (executor/tests/kaniko_flags.rs,
# warmer/tests/kaniko_flags.rs, which run this script). kaniko itself is not built.
#
#   bash scripts/kaniko-flags.sh     build when needed; print the peer directory on stdout
#
# The peer directory, /var/cache/kiln/peers/kaniko-flags-<version>/, holds
#   kaniko-flags      the command: kaniko-flags kaniko-src prints kaniko's flags and variables
#                     as one JSON object
#   kaniko-src/       kaniko's cmd/ and pkg/ Go sources (tests left out), copied from the module
#                     github.com/GoogleContainerTools/kaniko at the version scripts/kaniko-flags/
#                     go.mod pins (never into this repository)
#   kaniko-integration/  kaniko's integration/ directory as the module holds it: the Dockerfiles of
#                     its integration tests (dockerfiles/) and the build context they COPY from
#                     (context/, ignore/, .dockerignore ...), for executor/tests/kaniko_dockerfiles.rs
#                     (the module zip keeps no file modes: files are 0644, directories 0755)
#   stamp             what they were made from; a mismatch rebuilds
# How it is built, pinned and checked, and the exit statuses: scripts/lib/go-peer.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/go-peer.sh
source "$REPO/scripts/lib/go-peer.sh"

go_peer_extra() {
  local out="$1" moddir="$2"
  [[ -f "$moddir/cmd/executor/cmd/root.go" && -f "$moddir/cmd/warmer/cmd/root.go" ]] ||
    die "$moddir has no cmd/executor/cmd/root.go or cmd/warmer/cmd/root.go"
  [[ -d "$moddir/integration/dockerfiles" ]] || die "$moddir has no integration/dockerfiles"
  cp -r "$moddir/integration" "$out/kaniko-integration"
  mkdir -p "$out/kaniko-src"
  (cd "$moddir" && find cmd pkg -name '*.go' ! -name '*_test.go' -print0 |
    xargs -0 cp --parents -t "$out/kaniko-src")
}

go_peer kaniko-flags github.com/GoogleContainerTools/kaniko "kaniko's flag lister" kaniko-src \
  kaniko-integration/dockerfiles

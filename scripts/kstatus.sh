#!/usr/bin/env bash
# Builds scripts/kstatus/main.go, which computes an object's status with the kstatus library of
# sigs.k8s.io/cli-utils (the rules Flux and other GitOps tools read conditions by): the
# independent side of operator/tests/kstatus.rs, which runs this script.
#
#   bash scripts/kstatus.sh     build when needed; print the peer directory on stdout
#
# The peer directory, /var/cache/kiln/peers/kstatus-<version>/, holds
#   kstatus     the command: one JSON object per line on stdin, one {"status","message"} line out
#   stamp       what it was made from; a mismatch rebuilds
# How it is built, pinned and checked, and the exit statuses: scripts/lib/go-peer.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/go-peer.sh
source "$REPO/scripts/lib/go-peer.sh"

go_peer_extra() { :; }

go_peer kstatus sigs.k8s.io/cli-utils "kstatus (sigs.k8s.io/cli-utils)"

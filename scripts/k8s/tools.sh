#!/usr/bin/env bash
# Builds or installs the Kubernetes test tools (etcd, kube-apiserver) into a cache
# directory outside the repository. Idempotent: a tool already there is not rebuilt.
#
#   etcd            from the crates.io crate etcd-bin-vendored-linux-amd64 (fetched with cargo)
#   kube-apiserver  built with Go from k8s.io/kubernetes at $KILN_K8S_VERSION, each
#                   k8s.io/<staging> module replaced by its published v0.x twin
#
# When $KUBEBUILDER_ASSETS is set and holds etcd and kube-apiserver, those are used instead.
# Prints the directory holding both binaries on the last line of stdout.
set -euo pipefail

K8S_VERSION="${KILN_K8S_VERSION:-v1.35.4}"
ETCD_CRATE_VERSION="${KILN_ETCD_CRATE_VERSION:-}"
TOOLS="${KILN_K8S_TOOLS:-/var/cache/kiln/k8s-tools}"
BIN="$TOOLS/bin"
export GOMODCACHE="${GOMODCACHE:-/var/cache/kiln/go/mod}"
export GOCACHE="${GOCACHE:-/var/cache/kiln/go/cache}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { echo "tools.sh: $*" >&2; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/etcd" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]]; then
  log "using binaries from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"

install_etcd() {
  if [[ -x "$BIN/etcd" ]]; then return; fi
  log "fetching etcd from the crate etcd-bin-vendored-linux-amd64"
  local proj="$TOOLS/etcd-fetch"
  rm -rf "$proj"; mkdir -p "$proj/src"
  local req="*"
  [[ -n "$ETCD_CRATE_VERSION" ]] && req="=$ETCD_CRATE_VERSION"
  cat >"$proj/Cargo.toml" <<TOML
[package]
name = "etcd-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
etcd-bin-vendored-linux-amd64 = "$req"
[workspace]
TOML
  echo 'fn main() {}' >"$proj/src/main.rs"
  (cd "$proj" && cargo fetch --quiet)
  local src
  src="$(cd "$proj" && cargo metadata --format-version 1 2>/dev/null |
    jq -r '.packages[] | select(.name=="etcd-bin-vendored-linux-amd64") | .manifest_path' | head -1)"
  src="$(dirname "$src")"
  # The crate ships the binary either plain or compressed; find it.
  local f
  f="$(find "$src" -type f \( -name 'etcd' -o -name 'etcd.*' -o -name 'etcd-*' \) | grep -v '\.rs$' | head -1 || true)"
  if [[ -z "$f" ]]; then log "no etcd binary found in $src"; ls -R "$src" >&2; exit 1; fi
  case "$f" in
    *.zst) zstd -dc "$f" >"$BIN/etcd.tmp" ;;
    *.gz) gzip -dc "$f" >"$BIN/etcd.tmp" ;;
    *.xz) xz -dc "$f" >"$BIN/etcd.tmp" ;;
    *) cp "$f" "$BIN/etcd.tmp" ;;
  esac
  chmod 0755 "$BIN/etcd.tmp"
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  log "etcd: $("$BIN/etcd" --version | head -1)"
}

install_apiserver() {
  if [[ -x "$BIN/kube-apiserver" && "$(cat "$BIN/kube-apiserver.version" 2>/dev/null)" == "$K8S_VERSION" ]]; then return; fi
  local minor="v0.${K8S_VERSION#v1.}"
  local mod="$TOOLS/apiserver-$K8S_VERSION"
  log "building kube-apiserver $K8S_VERSION (staging modules at $minor) in $mod; this takes a while"
  mkdir -p "$mod"
  cd "$mod"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .GoMod)"
  cat >go.mod <<GOMOD
module kiln.dev/k8s-tools

go 1.24

require k8s.io/kubernetes $K8S_VERSION
GOMOD
  # Every "k8s.io/x => ./staging/src/k8s.io/x" replace of kubernetes' own go.mod becomes
  # "k8s.io/x => k8s.io/x v0.<minor>.<patch>": the published twin of the staging copy.
  grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$gomod" | awk -v v="$minor" '{print "replace " $1 " => " $1 " " v}' >>go.mod
  cat >tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
GO
  go mod tidy -e >/dev/null 2>&1 || true
  go mod download
  go build -tags tools -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION" \
    -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  echo "$K8S_VERSION" >"$BIN/kube-apiserver.version"
  log "kube-apiserver: $("$BIN/kube-apiserver" --version)"
}

case "${1:-all}" in
  etcd) install_etcd ;;
  apiserver) install_apiserver ;;
  all) install_etcd; install_apiserver ;;
  *) echo "usage: $0 [all|etcd|apiserver]" >&2; exit 2 ;;
esac
echo "$BIN"

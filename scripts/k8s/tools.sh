#!/usr/bin/env bash
# Builds or installs the Kubernetes test tools (etcd, kube-apiserver) into a cache
# directory outside the repository. Idempotent: a tool already there is not rebuilt.
#
#   etcd            from the crates.io crate etcd-bin-vendored-linux-amd64 (fetched with cargo)
#   kube-apiserver  built with Go from k8s.io/kubernetes at $KILN_K8S_VERSION, each
#                   k8s.io/<staging> module replaced by its published v0.x twin
#   node            (only when asked: `tools.sh node`, for scripts/k8s/cluster.sh) the rest of a
#                   single-node cluster from the same module and replaces, in one `go build` so
#                   they share compiled packages: kube-controller-manager, kube-scheduler,
#                   kubelet, kube-proxy and kubectl; the seconds it took go to $BIN/node.build-seconds
#
# When $KUBEBUILDER_ASSETS is set and holds etcd and kube-apiserver, those are used instead (not
# for `node` or `cluster`).
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

if [[ "${1:-all}" =~ ^(all|etcd|apiserver)$ && -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/etcd" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]]; then
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

# k8s_module DIR IMPORT...: a Go module in DIR that requires k8s.io/kubernetes@$K8S_VERSION, each
# k8s.io/<staging> module replaced by its published twin, with the given packages imported (so
# `go mod tidy` keeps what they need); downloads everything. Used by every build below, so they
# resolve the same versions and share GOCACHE's compiled packages.
k8s_module() {
  local mod="$1"; shift
  local minor="v0.${K8S_VERSION#v1.}"
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
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' "$@"
    printf ')\n'
  } >tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  go mod download
}

# Version stamps for the binaries: servers read k8s.io/component-base/version, kubectl's client
# side k8s.io/client-go/pkg/version.
k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local v
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s ' "$v" "$K8S_VERSION" "$v" "$v" "$minor"
  done
}

install_apiserver() {
  if [[ -x "$BIN/kube-apiserver" && "$(cat "$BIN/kube-apiserver.version" 2>/dev/null)" == "$K8S_VERSION" ]]; then return; fi
  local mod="$TOOLS/apiserver-$K8S_VERSION"
  log "building kube-apiserver $K8S_VERSION (staging modules at v0.${K8S_VERSION#v1.}) in $mod; this takes a while"
  k8s_module "$mod" k8s.io/kubernetes/cmd/kube-apiserver/app
  go build -tags tools -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION" \
    -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  echo "$K8S_VERSION" >"$BIN/kube-apiserver.version"
  log "kube-apiserver: $("$BIN/kube-apiserver" --version)"
}

NODE_BINARIES=(kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

install_node() {
  local b missing=0
  for b in "${NODE_BINARIES[@]}"; do
    [[ -x "$BIN/$b" && "$(cat "$BIN/$b.version" 2>/dev/null)" == "$K8S_VERSION" ]] || missing=1
  done
  ((missing)) || return 0
  local mod="$TOOLS/node-$K8S_VERSION"
  log "building ${NODE_BINARIES[*]} $K8S_VERSION in one go build in $mod; this takes a while"
  k8s_module "$mod" k8s.io/kubernetes/cmd/kube-controller-manager/app \
    k8s.io/kubernetes/cmd/kube-scheduler/app k8s.io/kubernetes/cmd/kubelet/app \
    k8s.io/kubernetes/cmd/kube-proxy/app k8s.io/kubectl/pkg/cmd
  local out="$BIN/node.tmp" start=$SECONDS
  rm -rf "$out"; mkdir -p "$out"
  local pkgs=()
  for b in "${NODE_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  # The flags of the kube-apiserver build above (tags, -trimpath, -s -w), so its compiled
  # packages in GOCACHE are reused; -X only changes the link.
  nice -n "${KILN_BUILD_NICE:-19}" go build -tags tools -trimpath -ldflags "-s -w $(k8s_ldflags)" -o "$out/" "${pkgs[@]}"
  echo $((SECONDS - start)) >"$BIN/node.build-seconds"
  for b in "${NODE_BINARIES[@]}"; do
    mv "$out/$b" "$BIN/$b"
    echo "$K8S_VERSION" >"$BIN/$b.version"
  done
  rmdir "$out"
  log "built in $(cat "$BIN/node.build-seconds")s: $("$BIN/kubelet" --version), kubectl $("$BIN/kubectl" version --client -o json | jq -r .clientVersion.gitVersion)"
}

case "${1:-all}" in
  etcd) install_etcd ;;
  apiserver) install_apiserver ;;
  all) install_etcd; install_apiserver ;;
  node) install_node ;;
  cluster) install_etcd; install_apiserver; install_node ;;
  *) echo "usage: $0 [all|etcd|apiserver|node|cluster]" >&2; exit 2 ;;
esac
echo "$BIN"

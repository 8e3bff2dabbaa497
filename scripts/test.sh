#!/usr/bin/env bash
# THE test command for kiln: `bash scripts/test.sh` (CI runs exactly this through .ci/run).
# Works on a fresh Debian 12 machine as root: installs the tools the tests use, configures
# containers for this machine, starts a local registry, pushes the test base images, runs every test,
# and stops the registry on exit whatever happens. Exits non-zero on any failure.
#
# Environment:
#   KILN_SKIP_APT=1       skip apt-get (the tools are already installed)
#   KILN_REUSE_REGISTRY=1 use the registry already answering on KILN_TEST_REGISTRY and leave it running
#   KILN_DIFF_CASES=a,b   run only these differential corpus cases
#   KILN_DIFF_SELFTEST=1  build both sides of the differential test with buildah (checks the harness)
#   KILN_LINT=0           skip the `cargo fmt --check` and `cargo clippy -D warnings` checks after the tests
#                         (off by default until the whole workspace is rustfmt-clean)
#   CARGO_TARGET_DIR      default /var/cache/kiln/target (outside the clone, reused across runs)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
START=$(date +%s)
step() { echo; echo "==> [$(($(date +%s) - START))s] $*"; }
die() { echo "scripts/test.sh: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (builds chroot, unpack with ownership, run podman)"

PACKAGES=(
    docker-registry skopeo umoci buildah podman runc
    debootstrap busybox-static binutils jq curl openssl ca-certificates apache2-utils pigz
    tar gzip xz-utils zstd git
)
step "installing missing packages"
# shellcheck source=scripts/lib/packages.sh
source scripts/lib/packages.sh
ensure_packages "${PACKAGES[@]}"

# Rust: the machine image provides rustup's toolchain under ~/.cargo (Debian's rustc is too old).
export PATH="$HOME/.cargo/bin:/root/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.85 with rustup (PATH has ~/.cargo/bin)"

step "configuring containers for this machine"
# No ulimit changes inside the sandboxes we run in (setrlimit above the hard limit fails there).
mkdir -p /etc/containers
CONF=/etc/containers/containers.conf
if [[ ! -f "$CONF" ]] || ! grep -q '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[\]' "$CONF"; then
    if [[ -f "$CONF" ]] && grep -q '^\[containers\]' "$CONF"; then
        sed -i '/^\[containers\]/a default_ulimits = []' "$CONF"
    else
        printf '[containers]\ndefault_ulimits = []\n' >>"$CONF"
    fi
fi
# The flags every podman/buildah call in the tests uses; exported for scripts and the Rust tests.
export KILN_PODMAN_FLAGS="--runtime runc --cgroup-manager cgroupfs --storage-driver vfs"
export KILN_BUILDAH_FLAGS="--storage-driver vfs"
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kiln/target}"
export KILN_TEST_REGISTRY="${KILN_TEST_REGISTRY:-127.0.0.1:5000}"
export KILN_REGISTRY_ADDR="$KILN_TEST_REGISTRY"
mkdir -p "$CARGO_TARGET_DIR" /var/cache/kiln/base

step "starting the local registry on $KILN_TEST_REGISTRY"
cleanup() {
    local rc=$?
    bash "$REPO/scripts/k8s/apiserver.sh" stop >/dev/null 2>&1 || true
    [[ "${REUSED_REGISTRY:-0}" == 1 ]] || bash "$REPO/scripts/registry.sh" stop || true
    echo "scripts/test.sh: finished in $(($(date +%s) - START))s with exit code $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# KILN_REUSE_REGISTRY=1 uses a registry that already answers on the address (a developer's own)
# and leaves it running; by default the script starts its own and refuses to share the port.
REUSED_REGISTRY=0
if [[ "${KILN_REUSE_REGISTRY:-}" == 1 ]] && curl -fsS "http://$KILN_TEST_REGISTRY/v2/" >/dev/null 2>&1; then
    REUSED_REGISTRY=1
    echo "reusing the registry on $KILN_TEST_REGISTRY"
else
    bash scripts/registry.sh start
fi

step "building and pushing the test base images"
bash scripts/base-images.sh

step "building and starting the Kubernetes API server (etcd + kube-apiserver) for the operator tests"
bash scripts/k8s/tools.sh
bash scripts/k8s/apiserver.sh start
export KUBECONFIG="${KILN_K8S_RUN:-/var/cache/kiln/k8s-run}/kubeconfig"

step "cargo test --workspace"
# The end-to-end test needs the executor image and the operator set up by scripts/e2e.sh (next step).
KILN_SKIP_E2E=1 cargo test --workspace --locked

step "end-to-end: ImageBuilds through the operator, the executor image and a podman node stand-in"
bash scripts/e2e.sh

step "Helm chart: lint, render, schema and CRD sync checks"
bash scripts/helm.sh check

step "Helm chart against the API server: server-side dry run, RBAC, the operator under the chart's RBAC"
KILN_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/kiln-operator" bash scripts/helm.sh cluster-check

if [[ "${KILN_LINT:-1}" == 1 ]]; then
    step "cargo fmt --check and cargo clippy -D warnings"
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

step "all tests passed"

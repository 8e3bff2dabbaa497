#!/usr/bin/env bash
# The main job, offline: build examples/hello with kiln-executor into a local registry and an OCI
# layout, then run the image. No cluster and no outside image registry: the busybox base image is
# made on this machine (scripts/base-images.sh) and served by a local registry on 127.0.0.1:5000.
#
#   bash scripts/demo.sh             # as root on Debian 12 (installs the registry and image tools)
#   bash scripts/demo.sh --cluster [--keep]
#                                    # the same example through the operator on a real single-node
#                                    # cluster made on this machine (scripts/k8s/demo-cluster.sh)
#
# A registry already answering on 127.0.0.1:5000 is reused; one this script starts is stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ "${1:-}" == --cluster ]]; then
    shift
    exec bash scripts/k8s/demo-cluster.sh "$@"
fi
[[ "$(id -u)" == 0 ]] || { echo "demo.sh: run as root (RUN steps execute in a chroot)" >&2; exit 1; }

# shellcheck source=scripts/lib/packages.sh
source scripts/lib/packages.sh
ensure_packages docker-registry skopeo umoci busybox-static jq curl podman runc
# shellcheck source=scripts/lib/containers.sh
source scripts/lib/containers.sh
configure_containers
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kiln/target}"
REGISTRY=127.0.0.1:5000

started=0
if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
    bash scripts/registry.sh start
    started=1
fi
cleanup() { [[ $started == 1 ]] && bash scripts/registry.sh stop; true; }
trap cleanup EXIT
KILN_BASE_ONLY=busybox bash scripts/base-images.sh

cargo build -q -p kiln-executor
EXECUTOR="$CARGO_TARGET_DIR/debug/kiln-executor"
LAYOUT="$(mktemp -d /tmp/kiln-demo-oci.XXXXXX)"

echo "==> kiln-executor: examples/hello -> $REGISTRY/demo/hello:latest and OCI layout $LAYOUT"
"$EXECUTOR" --context "dir://$PWD/examples/hello" --dockerfile Dockerfile \
    --destination "$REGISTRY/demo/hello:latest" --insecure --insecure-pull \
    --oci-layout-path "$LAYOUT" --digest-file "$LAYOUT.digest"
echo "==> digest $(cat "$LAYOUT.digest")"
skopeo inspect --tls-verify=false "docker://$REGISTRY/demo/hello:latest" | jq '{Digest, Layers}'

if command -v podman >/dev/null; then
    echo "==> running it with podman"
    podman --runtime runc --cgroup-manager cgroupfs --storage-driver vfs run --rm --network host \
        --tls-verify=false "$REGISTRY/demo/hello:latest"
fi

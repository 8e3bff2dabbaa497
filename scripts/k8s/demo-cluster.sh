#!/usr/bin/env bash
# Kiln as a platform team runs it, on a real single-node cluster on this machine: brings the
# cluster up (scripts/k8s/cluster.sh), builds the executor and operator images with kiln-executor
# itself and pushes them to the local registry, installs charts/kiln with helm (two operator
# replicas, leader election), applies examples/imagebuild-configmap.yaml, shows
# `kubectl get imagebuilds` until it reaches Succeeded with the digest, then runs the pushed image
# as a Pod on the same node and prints its output (after `cluster.sh check`, a bare Pod). Offline: base images are made here and served
# from 127.0.0.1:5000.
#
#   bash scripts/demo.sh --cluster [--keep] [--e2e]     # as root on Debian 12
#
# --e2e also runs the end-to-end scenarios of e2e/tests/cluster.rs against the installed chart
# (CI does), before the example.
# --keep leaves the cluster running (then: eval "$(bash scripts/k8s/cluster.sh env)"; kubectl ...;
# bash scripts/k8s/cluster.sh down). KILN_DEMO_NO_BUILD=1 reuses the release binaries already in
# CARGO_TARGET_DIR for the images.
#
# The only values the install changes from a user's, all because the registry is a local one:
#   image.repository / image.tag, executor.image.repository / executor.image.tag,
#   warmer.image.repository / warmer.image.tag
#                                  the images built here, pushed to 127.0.0.1:5000 (the executor
#                                  image holds kiln-warmer too)
#   executor.insecureRegistries    the registry as Pods reach it (plain HTTP)
#   replicaCount=2                 to show leader election (the default is 1)
#   overrides.capabilities={SYS_ADMIN}
#                                  lets the mount-cache scenario give its steps mount namespaces
#                                  (containerd 1.6 has no Pod user namespaces for hostUsers: false)
#   overrides.executorImages={127.0.0.1:5000/kiln-demo/absent-*}
#                                  lets the unpullable-executor scenario name an image that is
#                                  not there
# and the example only in its registry addresses (base image and destination).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
[[ "$(id -u)" == 0 ]] || { echo "demo-cluster: run as root" >&2; exit 1; }
KEEP=0
E2E=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        --e2e) E2E=1 ;;
        *) echo "usage: bash scripts/demo.sh --cluster [--keep] [--e2e]" >&2; exit 2 ;;
    esac
done
log() { echo "==> $*"; }
die() { echo "demo-cluster: $*" >&2; exit 1; }

# shellcheck source=scripts/lib/packages.sh
source scripts/lib/packages.sh
ensure_packages docker-registry skopeo umoci busybox-static jq curl
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kiln/target}"
REGISTRY=127.0.0.1:5000
TAG=demo

started=0
cluster_started=0
cleanup() {
    local rc=$?
    # Only a cluster this run brought up is stopped (another one may be someone else's).
    if [[ $KEEP == 0 && $cluster_started == 1 ]]; then
        bash scripts/k8s/cluster.sh down >/dev/null 2>&1 || true
    fi
    if [[ $started == 1 && $KEEP == 0 ]]; then bash scripts/registry.sh stop || true; fi
    exit "$rc"
}
trap cleanup EXIT
if ! curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then
    bash scripts/registry.sh start
    started=1
fi
if [[ $E2E == 1 ]]; then
    bash scripts/base-images.sh # the examples scenario also warms and builds on the debian base
else
    KILN_BASE_ONLY=busybox bash scripts/base-images.sh
fi

log "the executor and operator images, built by kiln-executor"
no_build=()
[[ "${KILN_DEMO_NO_BUILD:-}" == 1 ]] && no_build=(--no-build)
bash scripts/build-executor-image.sh "${no_build[@]}" --insecure \
    --destination "$REGISTRY/kiln-demo/kiln-executor:$TAG" >/dev/null
bash scripts/build-executor-image.sh "${no_build[@]}" --insecure --operator \
    --destination "$REGISTRY/kiln-demo/kiln-operator:$TAG" >/dev/null
HELM="$(bash scripts/helm.sh build | tail -n 1)"

log "a single-node cluster (scripts/k8s/cluster.sh up)"
cluster_started=1
bash scripts/k8s/cluster.sh up || { cluster_started=0; exit 1; }
bash scripts/k8s/cluster.sh check
eval "$(bash scripts/k8s/cluster.sh env)"
KUBECTL="${KILN_K8S_TOOLS:-/var/cache/kiln/k8s-tools}/bin/kubectl"
k() { "$KUBECTL" "$@"; }
POD_REGISTRY="$KILN_CLUSTER_REGISTRY"

log "helm install kiln charts/kiln (namespace kiln-system, 2 replicas)"
"$HELM" install kiln charts/kiln --namespace kiln-system --create-namespace \
    --set image.repository="$REGISTRY/kiln-demo/kiln-operator" --set image.tag="$TAG" \
    --set executor.image.repository="$REGISTRY/kiln-demo/kiln-executor" \
    --set executor.image.tag="$TAG" \
    --set warmer.image.repository="$REGISTRY/kiln-demo/kiln-executor" --set warmer.image.tag="$TAG" \
    --set "executor.insecureRegistries={$POD_REGISTRY}" \
    --set "overrides.capabilities={SYS_ADMIN}" \
    --set "overrides.executorImages={$REGISTRY/kiln-demo/absent-*}" \
    --set replicaCount=2
k -n kiln-system rollout status deployment/kiln --timeout=180s

if [[ $E2E == 1 ]]; then
    log "end-to-end scenarios on the cluster (cargo test -p kiln-e2e --test cluster)"
    PATH="$(dirname "$KUBECTL"):$PATH" KILN_E2E_POD_REGISTRY="$POD_REGISTRY" \
        KILN_E2E_REGISTRY="$REGISTRY" KILN_SKIP_E2E=0 \
        KILN_E2E_PV_ROOT="${KILN_CLUSTER_DIR:-/var/cache/kiln/cluster}/volumes" \
        cargo test -p kiln-e2e --test cluster --locked -- --nocapture
fi

log "kubectl apply -f examples/imagebuild-configmap.yaml (registry addresses adapted)"
k create namespace kiln-demo
# The example pushes with a docker-registry Secret; the local registry takes any credentials.
k -n kiln-demo create secret docker-registry regcred --docker-server="$POD_REGISTRY" \
    --docker-username=demo --docker-password=demo >/dev/null
sed -e "s#registry.example.com/library/busybox:1.36#$POD_REGISTRY/kiln-test/busybox:latest#" \
    -e "s#registry.example.com/team/#$POD_REGISTRY/kiln-demo/#" \
    examples/imagebuild-configmap.yaml | k -n kiln-demo apply -f -

phase=""
for ((i = 0; i < 120; i++)); do
    phase="$(k -n kiln-demo get imagebuild hello-configmap -o jsonpath='{.status.phase}')"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    ((i % 6 == 0)) && k -n kiln-demo get imagebuilds
    sleep 5
done
k -n kiln-demo get imagebuilds -o wide
[[ "$phase" == Succeeded ]] || {
    k -n kiln-demo get imagebuild hello-configmap -o jsonpath='{.status.message}' >&2 || true
    die "the ImageBuild ended as ${phase:-nothing}"
}
digest="$(k -n kiln-demo get imagebuild hello-configmap -o jsonpath='{.status.image.digest}')"
log "built $POD_REGISTRY/kiln-demo/hello-configmap@$digest; running it as a Pod"
k -n kiln-demo run hello --restart=Never \
    --image="$REGISTRY/kiln-demo/hello-configmap@$digest" >/dev/null
for ((i = 0; i < 60; i++)); do
    phase="$(k -n kiln-demo get pod hello -o jsonpath='{.status.phase}')"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 2
done
out="$(k -n kiln-demo logs hello)"
echo "$out"
[[ "$phase" == Succeeded && "$out" == "Hello from a ConfigMap context" ]] ||
    die "the image's Pod ended as $phase"
log "done$([[ $KEEP == 1 ]] && echo '; the cluster is still up (bash scripts/k8s/cluster.sh down)')"

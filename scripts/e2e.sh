#!/usr/bin/env bash
# Runs the end-to-end tests (e2e/): a real etcd + kube-apiserver, the local registry with the
# test base images, the executor image (built by kiln-executor itself and pushed there), the
# chart's CRDs and RBAC applied, the operator run as the chart's ServiceAccount, and the e2e
# test's node stand-in running the executor Pods with podman. Stops what it started.
#
#   bash scripts/e2e.sh
#
# Environment:
#   CARGO_TARGET_DIR            where cargo builds (default <repo>/target)
#   KILN_K8S_RUN, KILN_ETCD_PORT, KILN_APISERVER_PORT
#                               passed to scripts/k8s/apiserver.sh (defaults: /var/cache/kiln/k8s-run-e2e,
#                               25790, 18443, so the operator's own integration tests can run alongside)
#   KILN_E2E_EXECUTOR_IMAGE     use this already-pushed executor image instead of building one
#   KILN_E2E_IMAGE_SCRIPT       the executor image script (default scripts/build-executor-image.sh)
#   KILN_E2E_IMAGE_TARGET_DIR   CARGO_TARGET_DIR for that script (default CARGO_TARGET_DIR)
#   KILN_E2E_IMAGE_ARGS         extra arguments for it (e.g. --no-build)
#   KILN_E2E_NODE_EXTRA_ARGS    args the node stand-in appends to every container (default none;
#                               logged on each use)
#   KILN_E2E_SCENARIOS          comma-separated subset (build-and-rebuild,failing-run,delete,warm-cache,build-secret);
#                               refused by scripts/test.sh unless KILN_ALLOW_SKIPS=1
#   KILN_SKIP_E2E               ignored and cleared: this script runs the end-to-end test
#   KILN_E2E_KEEP=1             leave the API server running afterwards
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KILN_K8S_RUN="${KILN_K8S_RUN:-/var/cache/kiln/k8s-run-e2e}"
export KILN_ETCD_PORT="${KILN_ETCD_PORT:-25790}"
export KILN_APISERVER_PORT="${KILN_APISERVER_PORT:-18443}"
REG=127.0.0.1:5000
NS=kiln-e2e
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
log() { echo "e2e.sh: $*" >&2; }
die() { echo "e2e.sh: $*" >&2; exit 1; }

# This script is how the end-to-end test runs: an inherited KILN_SKIP_E2E (scripts/test.sh sets it
# for its `cargo test --workspace` step, a developer may have it exported) must not skip it here.
if [[ -n "${KILN_SKIP_E2E+set}" ]]; then
    log "ignoring the inherited KILN_SKIP_E2E=$KILN_SKIP_E2E: this script runs the end-to-end test"
    unset KILN_SKIP_E2E
fi
# A subset is said loudly, and a misspelt name is an error rather than a scenario silently not run
# (the names are those of operator_builds_images_end_to_end in e2e/tests/e2e.rs).
if [[ -n "${KILN_E2E_SCENARIOS:-}" ]]; then
    for s in ${KILN_E2E_SCENARIOS//,/ }; do
        [[ "$s" =~ ^(build-and-rebuild|failing-run|delete|warm-cache|build-secret)$ ]] ||
            die "KILN_E2E_SCENARIOS: unknown scenario '$s' (build-and-rebuild, failing-run, delete, warm-cache, build-secret)"
    done
    log "KILN_E2E_SCENARIOS=$KILN_E2E_SCENARIOS: only these scenarios run, not the whole end-to-end test"
fi

STARTED_REGISTRY=0
STARTED_API=0
# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
    if [[ "$STARTED_API" == 1 && "${KILN_E2E_KEEP:-0}" != 1 ]]; then
        bash "$ROOT/scripts/k8s/apiserver.sh" stop || true
    fi
    if [[ "$STARTED_REGISTRY" == 1 ]]; then bash "$ROOT/scripts/registry.sh" stop || true; fi
}
trap cleanup EXIT

T0=$SECONDS
[[ "$(id -u)" == 0 ]] || die "must run as root (podman, image layers owned by root)"
for t in kubectl podman skopeo buildah curl; do command -v "$t" >/dev/null || die "$t is not installed"; done

# 1. Registry and base images.
if curl -fsS -o /dev/null --max-time 3 "http://$REG/v2/"; then
    log "reusing the registry answering on $REG"
else
    bash "$ROOT/scripts/registry.sh" start
    STARTED_REGISTRY=1
fi
if ! skopeo inspect --tls-verify=false "docker://$REG/kiln-test/busybox:latest" >/dev/null 2>&1; then
    KILN_BASE_ONLY=busybox bash "$ROOT/scripts/base-images.sh"
fi

# 2. The executor image, built by kiln itself; a warmer image is the same image with the
#    warmer as its entrypoint (the operator sets no command on warmer Pods).
EXEC_IMAGE="${KILN_E2E_EXECUTOR_IMAGE:-}"
if [[ -z "$EXEC_IMAGE" ]]; then
    SCRIPT="${KILN_E2E_IMAGE_SCRIPT:-$ROOT/scripts/build-executor-image.sh}"
    [[ -f "$SCRIPT" ]] || die "executor image script missing: $SCRIPT (set KILN_E2E_IMAGE_SCRIPT, or KILN_E2E_EXECUTOR_IMAGE to a pushed image)"
    EXEC_IMAGE="$REG/kiln-e2e/executor:dev"
    log "building the executor image with $SCRIPT"
    # shellcheck disable=SC2086
    CARGO_TARGET_DIR="${KILN_E2E_IMAGE_TARGET_DIR:-$TARGET_DIR}" \
        bash "$SCRIPT" --insecure --destination "$EXEC_IMAGE" ${KILN_E2E_IMAGE_ARGS:-} >/dev/null
fi
WARM_IMAGE="$REG/kiln-e2e/warmer:dev"
ctr="$(buildah --storage-driver vfs from -q --tls-verify=false "docker://$EXEC_IMAGE")"
buildah --storage-driver vfs config --entrypoint '["/kiln/warmer"]' "$ctr"
buildah --storage-driver vfs commit -q "$ctr" "kiln-e2e-warmer" >/dev/null
buildah --storage-driver vfs rm "$ctr" >/dev/null
buildah --storage-driver vfs push -q --tls-verify=false kiln-e2e-warmer "docker://$WARM_IMAGE"
log "images: executor $EXEC_IMAGE, warmer $WARM_IMAGE ($((SECONDS - T0))s)"

# 3. The operator binary and the test (debug builds).
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" nice -n 10 cargo build -q -p kiln-operator --bin kiln-operator)
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" nice -n 10 cargo test -q -p kiln-e2e --no-run)

# 4. API server, namespaces, the chart's CRDs and RBAC (ServiceAccount kiln-operator in
#    kiln-system: the identity of apiserver.sh's kubeconfig-operator).
bash "$ROOT/scripts/k8s/apiserver.sh" start
STARTED_API=1
export KUBECONFIG="$KILN_K8S_RUN/kubeconfig"
kubectl create namespace kiln-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply --server-side -f "$ROOT/charts/kiln/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/imagebuilds.kiln.dev crd/cachewarms.kiln.dev >/dev/null
RENDERED="$KILN_K8S_RUN/chart.yaml"
bash "$ROOT/scripts/helm.sh" template --namespace kiln-system --set fullnameOverride=kiln-operator \
    --set "watchNamespaces={$NS}" >"$RENDERED"
# Only the identity and its permissions: the operator runs here as a process, not a Deployment.
kubectl apply -f "$RENDERED" --dry-run=client -o json |
    jq -c '.items[] | select(.kind | test("^(ServiceAccount|Role|RoleBinding|ClusterRole|ClusterRoleBinding)$"))
        | if (.kind | test("^Cluster")) then . else .metadata.namespace //= "kiln-system" end' |
    kubectl apply -f - >/dev/null
log "cluster ready ($((SECONDS - T0))s)"

# 5. The tests.
export KILN_E2E_OPERATOR_KUBECONFIG="$KILN_K8S_RUN/kubeconfig-operator"
export KILN_E2E_OPERATOR_BIN="$TARGET_DIR/debug/kiln-operator"
export KILN_E2E_EXECUTOR_IMAGE="$EXEC_IMAGE" KILN_E2E_WARMER_IMAGE="$WARM_IMAGE"
export KILN_E2E_NAMESPACE="$NS" KILN_E2E_REGISTRY="$REG"
rc=0
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" nice -n 10 cargo test -q -p kiln-e2e -- --nocapture) || rc=$?
log "done in $((SECONDS - T0))s (exit $rc)"
exit "$rc"

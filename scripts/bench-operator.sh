#!/usr/bin/env bash
# The operator at scale: a real etcd + kube-apiserver of its own (scripts/k8s/apiserver.sh, in a
# separate state directory and ports so it never meets the test server), the release
# kiln-operator running against it as operator/rbac.yaml's user, and N ImageBuilds created at
# once by operator/examples/scale_bench.rs, which prints:
#   the time until every ImageBuild has a status (target 60 s for 1,000), the operator's peak RSS
#   (target 100 MB), its ImageBuild reconcile p50/p99 (target p99 < 1 s; bucket bounds of its
#   histogram) and the API requests per build (the API server's request total, minus the
#   benchmark's own and the server's background rate).
# No kubelet runs, so the executor Pods stay Pending, as on a cluster out of capacity.
#
#   bash scripts/bench-operator.sh [--count N]       # as root; N defaults to 1000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COUNT=1000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --count) COUNT="$2"; shift 2 ;;
        *) echo "usage: bash scripts/bench-operator.sh [--count N]" >&2; exit 2 ;;
    esac
done
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kiln/target}"
export KILN_K8S_RUN=/var/cache/kiln/k8s-run-bench KILN_APISERVER_PORT=36443 KILN_ETCD_PORT=43790
METRICS_PORT=18089
log() { echo "==> $*" >&2; }

op_pid=""
cleanup() {
    [[ -n "$op_pid" ]] && kill "$op_pid" 2>/dev/null && wait "$op_pid" 2>/dev/null
    bash scripts/k8s/apiserver.sh stop >/dev/null 2>&1 || true
    rm -rf "$KILN_K8S_RUN/etcd"
}
trap cleanup EXIT

log "building kiln-operator and the benchmark (release)"
cargo build -q --release --locked -p kiln-operator --bin kiln-operator --example scale_bench
BIN="$CARGO_TARGET_DIR/release"

log "a fresh API server (state in $KILN_K8S_RUN, port $KILN_APISERVER_PORT)"
bash scripts/k8s/apiserver.sh stop >/dev/null 2>&1 || true
rm -rf "$KILN_K8S_RUN/etcd"
bash scripts/k8s/apiserver.sh start >/dev/null
export KUBECONFIG="$KILN_K8S_RUN/kubeconfig"
KUBECTL="${KILN_K8S_TOOLS:-/var/cache/kiln/k8s-tools}/bin/kubectl"
"$KUBECTL" apply --server-side -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/imagebuilds.kiln.dev >/dev/null
"$KUBECTL" create namespace kiln-system >/dev/null
"$KUBECTL" create namespace bench >/dev/null
"$KUBECTL" apply -f operator/rbac.yaml >/dev/null

log "kiln-operator (release) as operator/rbac.yaml's user, watching namespace bench"
KUBECONFIG="$KILN_K8S_RUN/kubeconfig-operator" RUST_LOG=warn "$BIN/kiln-operator" \
    --executor-image reg.local/kiln-executor:bench --watch-namespace bench \
    --no-leader-election --metrics-addr "127.0.0.1:$METRICS_PORT" \
    >"$KILN_K8S_RUN/operator.log" 2>&1 &
op_pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null ||
    { cat "$KILN_K8S_RUN/operator.log" >&2; echo "bench-operator: the operator did not get ready" >&2; exit 1; }

log "$COUNT ImageBuilds at once"
"$BIN/examples/scale_bench" --count "$COUNT" --namespace bench --operator-pid "$op_pid" \
    --operator-metrics "http://127.0.0.1:$METRICS_PORT/metrics"

#!/usr/bin/env bash
# Builds the Kubernetes test tools, starts etcd + kube-apiserver, runs the operator's tests and the
# examples' server-side dry run against them, stops them.
set -euo pipefail; here="$(cd "$(dirname "$0")" && pwd)"; trap '"$here/apiserver.sh" stop' EXIT; "$here/apiserver.sh" start
export KUBECONFIG="${KILN_K8S_RUN:-/var/cache/kiln/k8s-run}/kubeconfig"
cargo test -p kiln-operator "$@"
"$here/examples.sh"

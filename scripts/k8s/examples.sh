#!/usr/bin/env bash
# Applies every YAML file of examples/ with a server-side dry run against the API server that
# $KUBECONFIG names (CRDs installed first), so the examples cannot drift from the CRDs.
# Nothing is created: the namespace it uses is created for the run and deleted after.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[[ -n "${KUBECONFIG:-}" ]] || { echo "examples.sh: set KUBECONFIG to a test API server" >&2; exit 1; }
kubectl apply --server-side --force-conflicts --field-manager=kiln-examples-check -f "$root/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/imagebuilds.kiln.dev crd/cachewarms.kiln.dev >/dev/null
ns="kiln-examples-$$"
kubectl create namespace "$ns" >/dev/null
trap 'kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
shopt -s nullglob
files=("$root"/examples/*.yaml)
(( ${#files[@]} >= 4 )) || { echo "examples.sh: expected at least 4 examples, found ${#files[@]}" >&2; exit 1; }
for f in "${files[@]}"; do
  if ! out="$(kubectl apply --server-side --dry-run=server --field-manager=kiln-examples-check \
    -n "$ns" -f "$f" 2>&1)"; then
    echo "examples.sh: the API server rejects ${f#"$root"/}:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "examples.sh: ok ${f#"$root"/}: $(tr '\n' ' ' <<<"$out")"
done

#!/usr/bin/env bash
# Builds helm from the Go module proxy and runs the checks of the Kiln Helm chart.
#
#   scripts/helm.sh [build]      build helm (skipped when the pinned version is already there);
#                                prints the binary's path on stdout
#   scripts/helm.sh lint         helm lint charts/kiln, plain and --strict
#   scripts/helm.sh template [ARGS...]
#                                helm template charts/kiln with extra helm arguments
#                                (e.g. -f values.yaml); the manifests go to stdout
#   scripts/helm.sh crd-sync     fail when charts/kiln/crds/ differs from the generated crds/
#   scripts/helm.sh copy-crds    make charts/kiln/crds/ a copy of crds/ (after running crdgen)
#   scripts/helm.sh dry-run      with $KUBECONFIG naming a test API server: create the release
#                                and watched namespaces, then `kubectl apply --server-side
#                                --dry-run=server` the CRDs and the chart rendered with default
#                                and full values (the ServiceMonitor only when its CRD is there)
#   scripts/helm.sh crd-upgrade-check
#                                with $KUBECONFIG naming a test API server: helm install over
#                                an older ImageBuild CRD, then the documented upgrade (server-side
#                                apply of crds/, helm upgrade) keeps a newer field
#   scripts/helm.sh rbac-check   with $KUBECONFIG naming a test API server (admin): apply the
#                                chart's ServiceAccount and RBAC for real, then ask the server
#                                (kubectl auth can-i --as the ServiceAccount) that the operator
#                                may do what it does and nothing more
#   scripts/helm.sh operator-check
#                                with $KUBECONFIG (admin of a test API server) and
#                                $KILN_OPERATOR_BIN (a kiln-operator binary): run the operator as
#                                the chart's ServiceAccount, with the chart's Deployment arguments,
#                                in both RBAC modes, and check it creates, reports and cleans up
#                                builds without a single permission error
#   scripts/helm.sh cluster-check
#                                dry-run, crd-upgrade-check, rbac-check, then operator-check when
#                                $KILN_OPERATOR_BIN is set
#   scripts/helm.sh check        everything CI runs without an API server: lint, template
#                                with default and full values, the CRD sync check, and schema
#                                rejections of bad values
#
# Nothing here downloads anything but Go modules: helm is built with `go install` from
# helm.sh/helm/v3/cmd/helm at $KILN_HELM_VERSION, with GOPATH, GOMODCACHE and GOCACHE under
# /var/cache/kiln/go so that every worktree and CI job shares one module cache.
set -euo pipefail

HELM_VERSION="${KILN_HELM_VERSION:-v3.22.0}"
KILN_CACHE="${KILN_CACHE:-/var/cache/kiln}"
HELM_BIN_DIR="${KILN_HELM_BIN_DIR:-$KILN_CACHE/bin}"
HELM="$HELM_BIN_DIR/helm"
# Written beside the binary after a build; names the version and the build recipe, so that a
# binary built another way (say without the Kubernetes version stamp) is rebuilt.
HELM_STAMP="$HELM_BIN_DIR/helm.stamp"
HELM_RECIPE="$HELM_VERSION k8s-version-from-client-go"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$REPO/charts/kiln"

log() { echo "helm.sh: $*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

# The version the binary reports, or nothing when there is no usable binary.
installed_version() {
  [[ -x "$HELM" ]] || return 0
  "$HELM" version --template '{{.Version}}' 2>/dev/null || true
}

build() {
  if [[ "$(installed_version)" == "$HELM_VERSION" && "$(cat "$HELM_STAMP" 2>/dev/null)" == "$HELM_RECIPE" ]]; then
    echo "$HELM"
    return
  fi
  export GOPATH="$KILN_CACHE/go"
  export GOMODCACHE="${GOMODCACHE:-$KILN_CACHE/go/mod}"
  export GOCACHE="${GOCACHE:-$KILN_CACHE/go/cache}"
  # The host toolchain must do; a toolchain download would be a second, unpinned fetch.
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
  export GOFLAGS="${GOFLAGS:--buildvcs=false}"
  export CGO_ENABLED=0
  mkdir -p "$HELM_BIN_DIR" "$GOMODCACHE" "$GOCACHE"
  local tmp
  tmp="$(mktemp -d "$HELM_BIN_DIR/.helm-build.XXXXXX")"
  # shellcheck disable=SC2064 # expand $tmp now: it is local.
  trap "rm -rf '$tmp'" EXIT
  log "building helm $HELM_VERSION from helm.sh/helm/v3/cmd/helm (nice 19; several minutes on a loaded machine)"
  local start=$SECONDS
  # helm's own Makefile stamps, with -X, its version (without it `helm version` reports only
  # "v3.NN", which would defeat the idempotence check above) and the Kubernetes version that
  # `helm template` and `helm lint` assume, derived from the client-go it is built with (without
  # it they assume 1.20 and reject any chart with a later kubeVersion).
  local gomod k8s_minor
  gomod="$(nice -n 19 go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | jq -r .GoMod)"
  k8s_minor="$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2] }' "$gomod")"
  [[ "$k8s_minor" =~ ^[0-9]+$ ]] || die "cannot find the k8s.io/client-go version in $gomod"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  GOBIN="$tmp" nice -n 19 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv -f "$tmp/helm" "$HELM"
  echo "$HELM_RECIPE" >"$HELM_STAMP"
  rm -rf "$tmp"
  trap - EXIT
  log "built $("$HELM" version --short) in $((SECONDS - start))s"
  [[ "$(installed_version)" == "$HELM_VERSION" ]] ||
    die "built helm reports version '$(installed_version)', expected $HELM_VERSION"
  echo "$HELM"
}

ensure_helm() {
  build >/dev/null
}

lint() {
  ensure_helm
  log "helm lint charts/kiln"
  "$HELM" lint "$CHART"
  log "helm lint --strict charts/kiln"
  "$HELM" lint --strict "$CHART"
  log "helm lint --strict charts/kiln -f tests/values-full.yaml"
  "$HELM" lint --strict "$CHART" -f "$CHART/tests/values-full.yaml"
}

template() {
  ensure_helm
  "$HELM" template kiln "$CHART" --namespace kiln-system "$@"
}

crd_sync() {
  # KILN_CRDS_DIR: compare against generated CRDs elsewhere (e.g. a branch not yet merged).
  local top="${KILN_CRDS_DIR:-$REPO/crds}" chart="$CHART/crds"
  [[ -d "$top" ]] || die "no generated CRDs in $top; run the operator's crdgen first"
  if ! diff -ru "$top" "$chart" >&2; then
    die "charts/kiln/crds/ differs from crds/; copy them with: scripts/helm.sh copy-crds"
  fi
  log "charts/kiln/crds/ matches crds/"
}

copy_crds() {
  local top="${KILN_CRDS_DIR:-$REPO/crds}" chart="$CHART/crds"
  compgen -G "$top/*.yaml" >/dev/null || die "no generated CRDs in $top; run the operator's crdgen first"
  rm -f "$chart"/*.yaml
  cp "$top"/*.yaml "$chart/"
  log "copied $(cd "$top" && echo *.yaml) to charts/kiln/crds/"
}

# Runs `helm template` expecting failure, and checks the error names the bad value.
expect_rejected() {
  local what="$1" pattern="$2"
  shift 2
  local out
  if out="$(template "$@" 2>&1)"; then
    die "helm template accepted $what; values.schema.json must reject it"
  fi
  grep -qiE "$pattern" <<<"$out" ||
    die "helm template rejected $what but the error does not mention /$pattern/: $out"
  log "rejected as expected: $what"
}

# Asserts that rendered manifests contain a line matching a pattern.
expect_rendered() {
  local what="$1" pattern="$2" manifests="$3"
  grep -qE -- "$pattern" <<<"$manifests" || die "rendered chart lacks $what (/$pattern/)"
}

check() {
  ensure_helm
  if command -v shellcheck >/dev/null; then
    shellcheck "${BASH_SOURCE[0]}" || die "shellcheck found problems in scripts/helm.sh"
  fi
  crd_sync
  lint

  log "helm template with default values"
  local out
  out="$(template)"
  expect_rendered "the Deployment" '^kind: Deployment$' "$out"
  expect_rendered "a ClusterRole when all namespaces are watched" '^kind: ClusterRole$' "$out"
  expect_rendered "the metrics Service" '^kind: Service$' "$out"
  expect_rendered "the text log format" '--log-format=text' "$out"
  expect_rendered "the read-only root filesystem" 'readOnlyRootFilesystem: true' "$out"
  expect_rendered "the lease permissions" 'coordination.k8s.io' "$out"
  if grep -q '^kind: ServiceMonitor$' <<<"$out"; then die "ServiceMonitor rendered although disabled"; fi
  if grep -q 'kiln-operator.json' <<<"$out"; then die "the Grafana dashboard rendered although disabled"; fi
  if grep -q '^kind: PodDisruptionBudget$' <<<"$out"; then die "a PodDisruptionBudget rendered for one replica (it would block node drains)"; fi
  expect_rendered "the default retention limits" 'KILN_RETENTION_SUCCEEDED_LIMIT' "$out"
  if grep -q 'watch-namespace' <<<"$out"; then die "--watch-namespace rendered although watchNamespaces is empty"; fi
  expect_rendered "readiness on /readyz" 'path: /readyz' "$(sed -n '/readinessProbe:/,/port:/p' <<<"$out")"

  log "helm template with tests/values-full.yaml"
  out="$(template -f "$CHART/tests/values-full.yaml")"
  expect_rendered "the ServiceMonitor" '^kind: ServiceMonitor$' "$out"
  # The dashboard ConfigMap holds dashboards/kiln-operator.json unchanged.
  local dash
  dash="$(template -f "$CHART/tests/values-full.yaml" --show-only templates/dashboard.yaml)"
  expect_rendered "the dashboard in the sidecar's namespace" '^  namespace: monitoring$' "$dash"
  expect_rendered "the dashboard sidecar label" 'grafana_dashboard: "1"' "$dash"
  python3 -c '
import json, sys
lines = sys.stdin.read().split("\n")
start = lines.index("  kiln-operator.json: |-") + 1
body = "\n".join(l[4:] for l in lines[start:] if l.startswith("    ") or not l)
sys.exit(json.loads(body) != json.load(open(sys.argv[1])))' "$CHART/dashboards/kiln-operator.json" <<<"$dash" || die "the dashboard ConfigMap does not hold dashboards/kiln-operator.json"
  expect_rendered "the json log format" '--log-format=json' "$out"
  expect_rendered "a PodDisruptionBudget for two replicas" '^kind: PodDisruptionBudget$' "$out"
  expect_rendered "the executor image pull Secrets" 'value: "pull-executor"' "$out"
  expect_rendered "the warmer image pull Secrets" 'value: "pull-warmer"' "$out"
  expect_rendered "the retention TTL" 'value: "168h"' "$out"
  expect_rendered "the build queue limits" 'KILN_MAX_CONCURRENT_BUILDS_PER_NAMESPACE' "$out"
  expect_rendered "a Role per watched namespace" '^  namespace: team-a$' "$out"
  expect_rendered "a Role per watched namespace" '^  namespace: team-b$' "$out"
  expect_rendered "the watched namespace flag" '--watch-namespace=team-a' "$out"
  if grep -q '^kind: ClusterRole$' <<<"$out"; then die "ClusterRole rendered although watchNamespaces is set"; fi
  [[ "$(grep -c '^kind: Deployment$' <<<"$out")" == 1 ]] ||
    die "expected one operator Deployment for all watched namespaces"
  expect_rendered "the second watched namespace flag" '--watch-namespace=team-b' "$out"
  [[ "$(grep -c -- '--leader-lease=' <<<"$out")" == 1 ]] || die "expected one leader-election Lease"
  [[ "$(grep -c '^kind: Role$' <<<"$out")" == 3 ]] ||
    die "expected a Role per watched namespace (2) and one for the leader-election Leases"
  expect_rendered "standby replicas ready on /readyz too" 'path: /readyz' "$(sed -n '/readinessProbe:/,/port:/p' <<<"$out")"

  log "helm template with a single watched namespace and leader election off"
  out="$(template --set 'watchNamespaces={builds}' --set leaderElection.enabled=false --set replicaCount=1)"
  expect_rendered "--no-leader-election" '--no-leader-election' "$out"
  if grep -q 'coordination.k8s.io' <<<"$out"; then die "Lease permissions rendered although leader election is off"; fi

  expect_rejected "logFormat: xml" "at '/logFormat'" --set logFormat=xml
  expect_rejected "image.pullPolicy: Sometimes" "at '/image/pullPolicy'" --set image.pullPolicy=Sometimes
  expect_rejected "replicaCount: -1" "at '/replicaCount'" --set replicaCount=-1
  expect_rejected "watchNamespaces as a string" "at '/watchNamespaces'" --set watchNamespaces=team-a
  expect_rejected "an unknown top-level value" "additional properties 'logformat'" --set logformat=json
  expect_rejected "metrics.port: 70000" "at '/metrics/port'" --set metrics.port=70000
  expect_rejected "overrides.capabilities: a lower-case name" "at '/overrides/capabilities/0'" \
    --set 'overrides.capabilities={sys_admin}'
  expect_rejected "executor.allowPrivilegeEscalation as a string" "at '/executor/allowPrivilegeEscalation'" \
    --set-string executor.allowPrivilegeEscalation=yes
  expect_rejected "an unknown override" "additional properties 'images'" --set 'overrides.images={x}'
  expect_rejected "two replicas without leader election" "at '/leaderElection/enabled'" \
    --set replicaCount=2 --set leaderElection.enabled=false

  log "all chart checks passed"
}

# Server-side dry run of one rendering: the API server validates every object against its
# schema and runs admission, without storing anything.
dry_run_one() {
  local what="$1"
  shift
  local manifests
  manifests="$(template --include-crds "$@")"
  log "kubectl apply --server-side --dry-run=server: $what"
  # --force-conflicts: the question is whether the server accepts the objects, not who owns
  # fields of objects an earlier run may have left.
  kubectl apply --server-side --force-conflicts --dry-run=server --field-manager=helm-dry-run \
    -f - <<<"$manifests" >&2 ||
    die "the API server rejected the chart rendered with $what"
}

dry_run() {
  ensure_helm
  [[ -n "${KUBECONFIG:-}" ]] || die "set KUBECONFIG to a test API server (scripts/k8s/apiserver.sh start)"
  # Dry runs of namespaced objects need their namespaces to exist; these are the test server's
  # (monitoring: where tests/values-full.yaml puts the Grafana dashboard ConfigMap).
  local ns
  for ns in kiln-system team-a team-b monitoring; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >&2
  done
  # A dry run cannot create the CRDs the custom resources of a later document would need, and
  # the chart renders none; applying the CRDs for real keeps a later e2e run honest about them.
  kubectl apply --server-side --force-conflicts --field-manager=helm-dry-run -f "$CHART/crds/" >&2
  kubectl wait --for=condition=Established --timeout=60s \
    crd/imagebuilds.kiln.dev crd/cachewarms.kiln.dev >&2
  local sm=(--set metrics.serviceMonitor.enabled=false)
  if kubectl get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1; then sm=(); fi
  dry_run_one "default values"
  dry_run_one "tests/values-full.yaml" -f "$CHART/tests/values-full.yaml" "${sm[@]}"
  dry_run_one "one namespace, no leader election" --set 'watchNamespaces={team-a}' \
    --set leaderElection.enabled=false
  # The first ImageBuild NOTES.txt tells users to create must be one the CRD accepts.
  local notes
  notes="$("$HELM" install kiln-notes "$CHART" --namespace kiln-system --dry-run=server \
    --set 'watchNamespaces={team-a}')"
  local example
  example="$(sed -n '/^     apiVersion: kiln.dev/,/^$/p' <<<"$notes" | sed 's/^     //')"
  grep -q '^kind: ImageBuild$' <<<"$example" || die "no ImageBuild found in the rendered NOTES.txt"
  log "kubectl apply --dry-run=server: the ImageBuild of NOTES.txt"
  kubectl apply -n team-a --dry-run=server -f - <<<"$example" >&2 ||
    die "the API server rejected the ImageBuild that NOTES.txt shows"
  log "the API server accepted every rendering"
}

# The documented CRD upgrade path (charts/kiln/README.md, "Upgrading"): Helm installs crds/ only
# when the CRDs do not exist and never upgrades them. An install over CRDs of an older chart
# (made here by removing spec.rerun from the current ImageBuild CRD) cannot take a newer field:
# kubectl's strict validation refuses it (a client without it would see it pruned). Then the
# documented step, a server-side apply of the chart's crds/, and `helm upgrade` make it work.
crd_upgrade_check() {
  ensure_helm
  [[ -n "${KUBECONFIG:-}" ]] || die "set KUBECONFIG to a test API server (scripts/k8s/apiserver.sh start)"
  local ns=kiln-upgrade-check release=kiln-upgrade-check old
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >&2
  # A run that stopped half way left its release and build behind.
  "$HELM" uninstall "$release" --namespace "$ns" >/dev/null 2>&1 || true
  kubectl -n "$ns" delete imagebuild upgrade-check --ignore-not-found --wait=false >&2
  old="$(kubectl create --dry-run=client -o json -f "$CHART/crds/imagebuild.yaml" |
    jq 'del(.spec.versions[].schema.openAPIV3Schema.properties.spec.properties.rerun)')"
  grep -q '"rerun"' <<<"$old" && die "could not make the older ImageBuild CRD"
  log "CRD upgrade: CRDs of an older chart, then helm install"
  kubectl apply --server-side --force-conflicts --field-manager=helm -f - >&2 <<<"$old"
  kubectl wait --for=condition=Established --timeout=60s crd/imagebuilds.kiln.dev >&2
  "$HELM" install "$release" "$CHART" --namespace "$ns" --set 'watchNamespaces={'"$ns"'}' >&2
  local build='{"apiVersion":"kiln.dev/v1alpha1","kind":"ImageBuild","metadata":{"name":"upgrade-check"},"spec":{"source":{"configMap":{"name":"ctx"}},"destinations":["127.0.0.1:5000/upgrade:1"],"rerun":"1"}}'
  local out
  if out="$(kubectl -n "$ns" apply -f - 2>&1 <<<"$build")"; then
    die "the older CRD accepted spec.rerun: this check does not test what it says"
  fi
  grep -q 'unknown field "spec.rerun"' <<<"$out" ||
    die "the older CRD refused the build for another reason: $out"
  log "as expected, the older CRD refuses the newer field: $out"
  log "CRD upgrade: kubectl apply --server-side -f charts/kiln/crds/, then helm upgrade"
  kubectl apply --server-side --force-conflicts -f "$CHART/crds/" >&2
  kubectl wait --for=condition=Established --timeout=60s crd/imagebuilds.kiln.dev >&2
  "$HELM" upgrade "$release" "$CHART" --namespace "$ns" --set 'watchNamespaces={'"$ns"'}' >&2
  kubectl -n "$ns" apply -f - >&2 <<<"$build"
  [[ "$(kubectl -n "$ns" get imagebuild upgrade-check -o jsonpath='{.spec.rerun}')" == 1 ]] ||
    die "after the documented CRD upgrade the API server still prunes spec.rerun"
  kubectl -n "$ns" delete imagebuild upgrade-check --wait=false >&2
  "$HELM" uninstall "$release" --namespace "$ns" >&2
  log "the documented CRD upgrade path works"
}

# kubectl auth can-i as the operator's ServiceAccount; $1 yes|no, the rest the question.
expect_can() {
  local want="$1" sa="$2"
  shift 2
  local got
  got="$(kubectl auth can-i --as="$sa" "$@" 2>/dev/null || true)"
  [[ "$got" == "$want" ]] || die "can-i $* as $sa: got '$got', want '$want'"
}

# Applies the RBAC of one rendering for real and checks it verb by verb. $1: namespaces the
# operator must be able to work in ("" = all, checked in a sample namespace), then helm args.
rbac_check_one() {
  local scope="$1"
  shift
  local manifests sa="system:serviceaccount:kiln-system:kiln-rbac-check"
  manifests="$(template --set fullnameOverride=kiln-rbac-check "$@" --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml)"
  kubectl apply --server-side --force-conflicts --field-manager=helm-rbac-check -f - <<<"$manifests" >&2
  local inside=() excluded=()
  read -ra inside <<<"${scope:-team-a}"
  [[ -n "$scope" ]] && excluded=(kube-system)
  local ns r
  for ns in "${inside[@]}"; do
    for r in imagebuilds.kiln.dev cachewarms.kiln.dev; do
      for v in get list watch patch; do expect_can yes "$sa" "$v" "$r" -n "$ns"; done
      for v in create delete update deletecollection; do expect_can no "$sa" "$v" "$r" -n "$ns"; done
      expect_can yes "$sa" patch "$r" --subresource=status -n "$ns"
      expect_can no "$sa" update "$r" --subresource=status -n "$ns"
      expect_can no "$sa" update "$r" --subresource=finalizers -n "$ns"
    done
    for v in get list watch create delete; do expect_can yes "$sa" "$v" pods -n "$ns"; done
    for v in update patch deletecollection; do expect_can no "$sa" "$v" pods -n "$ns"; done
    expect_can no "$sa" get pods --subresource=log -n "$ns"
    expect_can no "$sa" create pods --subresource=exec -n "$ns"
    # No Secret access of any kind: a missing Secret is read from the Pod's Events.
    for v in get list watch create update patch delete; do expect_can no "$sa" "$v" secrets -n "$ns"; done
    for v in create patch list watch; do expect_can yes "$sa" "$v" events.events.k8s.io -n "$ns"; done
    for v in delete update; do expect_can no "$sa" "$v" events.events.k8s.io -n "$ns"; done
    for r in configmaps persistentvolumeclaims serviceaccounts; do expect_can no "$sa" get "$r" -n "$ns"; done
  done
  for ns in "${excluded[@]}"; do
    for r in imagebuilds.kiln.dev pods secrets; do expect_can no "$sa" get "$r" -n "$ns"; done
  done
  expect_can no "$sa" list nodes
  expect_can no "$sa" create clusterroles.rbac.authorization.k8s.io
  kubectl delete --ignore-not-found -f - <<<"$manifests" >&2
}

rbac_check() {
  ensure_helm
  if command -v shellcheck >/dev/null; then
    shellcheck "${BASH_SOURCE[0]}" || die "shellcheck found problems in scripts/helm.sh"
  fi
  [[ -n "${KUBECONFIG:-}" ]] || die "set KUBECONFIG to a test API server (scripts/k8s/apiserver.sh start)"
  local ns sa="system:serviceaccount:kiln-system:kiln-rbac-check"
  for ns in kiln-system team-a team-b; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >&2
  done
  log "RBAC, all namespaces (ClusterRole)"
  rbac_check_one ""
  expect_can no "$sa" get leases.coordination.k8s.io/other-lease -n kiln-system
  log "RBAC, watchNamespaces team-a, team-b (a Role each)"
  rbac_check_one "team-a team-b" --set 'watchNamespaces={team-a,team-b}'
  log "RBAC, leases"
  local manifests
  manifests="$(template --set fullnameOverride=kiln-rbac-check --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml)"
  kubectl apply --server-side --force-conflicts --field-manager=helm-rbac-check -f - <<<"$manifests" >&2
  for v in get update; do
    expect_can yes "$sa" "$v" leases.coordination.k8s.io/kiln-rbac-check-leader -n kiln-system
    expect_can no "$sa" "$v" leases.coordination.k8s.io/kube-scheduler -n kiln-system
  done
  expect_can yes "$sa" create leases.coordination.k8s.io -n kiln-system
  expect_can no "$sa" create leases.coordination.k8s.io -n team-a
  expect_can no "$sa" delete leases.coordination.k8s.io/kiln-rbac-check-leader -n kiln-system
  kubectl delete --ignore-not-found -f - <<<"$manifests" >&2
  log "RBAC grants what the operator does and nothing more"
}

# Polls a kubectl query until its output matches a pattern; fails after $1 seconds.
wait_for() {
  local secs="$1" pattern="$2" what="$3"
  shift 3
  local out=""
  for _ in $(seq 1 "$secs"); do
    out="$(kubectl "$@" 2>&1 || true)"
    if grep -qE -- "$pattern" <<<"$out"; then return 0; fi
    sleep 1
  done
  die "$what: kubectl $* still gives '$out' after ${secs}s"
}

# One RBAC mode: apply the chart rendered with the helm args given, run the operator as its
# ServiceAccount with its Deployment's arguments, drive an ImageBuild and a CacheWarm through
# creation, status and deletion in namespace $1, and check that namespace $2 (if any) is left
# alone.
operator_check_one() {
  local ns="$1" outside="$2"
  shift 2
  local name=kiln-opcheck run
  run="$(mktemp -d /tmp/kiln-opcheck.XXXXXX)"
  local manifests
  manifests="$(template --set fullnameOverride=$name "$@")"
  kubectl apply --server-side --force-conflicts --field-manager=helm-operator-check -f - <<<"$manifests" >/dev/null
  local deploy args=()
  deploy="$(kubectl -n kiln-system get deploy -l app.kubernetes.io/instance=kiln -o name | grep "/$name" | head -1)"
  mapfile -t args < <(kubectl -n kiln-system get "$deploy" \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
  # No kubelet runs the Deployment: run its container's command here, on a free local port.
  local port=$((20000 + RANDOM % 10000))
  args=("${args[@]/--metrics-addr=*/--metrics-addr=127.0.0.1:$port}")
  local token
  token="$(kubectl -n kiln-system create token "$name" --duration=1h)"
  kubectl config view --raw --minify | sed "s|^\(    token:\).*|\1 $token|" >"$run/kubeconfig"
  # The whole check is void unless the operator really runs as the ServiceAccount.
  local whoami
  whoami="$(KUBECONFIG="$run/kubeconfig" kubectl auth whoami -o jsonpath='{.status.userInfo.username}')"
  [[ "$whoami" == "system:serviceaccount:kiln-system:$name" ]] ||
    die "the operator's kubeconfig authenticates as '$whoami', not the chart's ServiceAccount"
  KUBECONFIG="$run/kubeconfig" POD_NAME="$name-0" RUST_LOG=info,kiln_operator=debug \
    "$KILN_OPERATOR_BIN" "${args[@]}" >"$run/operator.log" 2>&1 &
  local pid=$!
  # shellcheck disable=SC2064 # expand now: locals.
  trap "kill $pid 2>/dev/null || true" EXIT
  for _ in $(seq 1 60); do
    curl -fsS "127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$run/operator.log" >&2; die "the operator exited"; }
    sleep 1
  done
  curl -fsS "127.0.0.1:$port/readyz" >/dev/null || die "the operator never became ready"
  kubectl -n "$ns" create secret docker-registry opcheck-push --docker-server=127.0.0.1:5000 \
    --docker-username=u --docker-password=p --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local n
  for n in "$ns" $outside; do
    kubectl apply -n "$n" -f - >/dev/null <<YAML
apiVersion: kiln.dev/v1alpha1
kind: ImageBuild
metadata: {name: opcheck-build}
spec:
  source: {configMap: {name: opcheck-context}}
  destinations: ["127.0.0.1:5000/opcheck:latest"]
  pushSecret: opcheck-push
---
apiVersion: kiln.dev/v1alpha1
kind: CacheWarm
metadata: {name: opcheck-warm}
spec:
  images: ["127.0.0.1:5000/base:latest"]
  claim: opcheck-cache
---
apiVersion: kiln.dev/v1alpha1
kind: ImageBuild
metadata: {name: opcheck-nosecret}
spec:
  source: {configMap: {name: opcheck-context}}
  destinations: ["127.0.0.1:5000/opcheck:latest"]
  pushSecret: opcheck-missing
YAML
  done
  # The operator may not read Secrets: the build with a missing push Secret gets its Pod too, and
  # the missing Secret is reported from the kubelet's FailedMount Event about that Pod, written
  # here as the kubelet writes it (no kubelet runs).
  local stuck=opcheck-nosecret-build-1-1 uid
  wait_for 45 "$stuck" "the executor Pod of the build without its Secret created" -n "$ns" get pods -o name
  uid="$(kubectl -n "$ns" get pod "$stuck" -o jsonpath='{.metadata.uid}')"
  kubectl -n "$ns" create -f - >/dev/null <<YAML
apiVersion: v1
kind: Event
metadata: {generateName: $stuck.}
involvedObject: {apiVersion: v1, kind: Pod, name: $stuck, namespace: $ns, uid: "$uid"}
reason: FailedMount
type: Warning
message: 'MountVolume.SetUp failed for volume "docker-config" : secret "opcheck-missing" not found'
source: {component: kubelet}
YAML
  wait_for 45 'SecretNotFound' "the missing push Secret reported" \
    -n "$ns" get events.events.k8s.io --field-selector regarding.name=opcheck-nosecret -o custom-columns=R:.reason
  wait_for 60 'CacheWarm' "the warmer Pod created" -n "$ns" get pods -o jsonpath='{.items[*].metadata.ownerReferences[*].kind}'

  wait_for 45 'ImageBuild' "the executor Pod created" -n "$ns" get pods -o jsonpath='{.items[*].metadata.ownerReferences[*].kind}'
  wait_for 30 'Pending|Running' "the ImageBuild status written" -n "$ns" get imagebuild opcheck-build -o jsonpath='{.status.phase}'
  for n in $outside; do
    [[ -z "$(kubectl -n "$n" get imagebuild opcheck-build -o jsonpath='{.status.phase}')" ]] ||
      die "the operator reconciled an ImageBuild in $n, outside watchNamespaces"
  done
  kubectl -n "$ns" delete imagebuild/opcheck-build imagebuild/opcheck-nosecret cachewarm/opcheck-warm --wait=false >/dev/null
  wait_for 30 '^$' "the finalizers removed and the Pods deleted" -n "$ns" get imagebuilds,cachewarms,pods -o name
  # A 403 from the API server reads "... is forbidden: User ... cannot ..." (reason Forbidden).
  if grep -i 'forbidden' "$run/operator.log" >&2; then
    die "the operator hit a permission error under the chart's RBAC (log: $run/operator.log)"
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  trap - EXIT
  for n in $outside; do
    kubectl -n "$n" delete imagebuild/opcheck-build imagebuild/opcheck-nosecret cachewarm/opcheck-warm --wait=false >/dev/null
  done
  kubectl -n "$ns" delete secret opcheck-push >/dev/null
  kubectl delete --ignore-not-found -f - <<<"$manifests" >/dev/null
  kubectl -n kiln-system delete lease --all >/dev/null
  rm -rf "$run"
}

operator_check() {
  ensure_helm
  if command -v shellcheck >/dev/null; then
    shellcheck "${BASH_SOURCE[0]}" || die "shellcheck found problems in scripts/helm.sh"
  fi
  [[ -n "${KUBECONFIG:-}" ]] || die "set KUBECONFIG to a test API server (scripts/k8s/apiserver.sh start)"
  [[ -x "${KILN_OPERATOR_BIN:-}" ]] || die "set KILN_OPERATOR_BIN to a kiln-operator binary (cargo build -p kiln-operator)"
  local ns
  for ns in kiln-system team-a team-b; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  done
  kubectl apply --server-side --force-conflicts --field-manager=helm-operator-check -f "$CHART/crds/" >/dev/null
  kubectl wait --for=condition=Established --timeout=60s crd/imagebuilds.kiln.dev crd/cachewarms.kiln.dev >/dev/null
  # Leftovers of an interrupted run would keep their finalizers with no operator to drop them.
  local o
  for ns in team-a team-b; do
    for o in imagebuild/opcheck-build imagebuild/opcheck-nosecret cachewarm/opcheck-warm; do
      kubectl -n "$ns" patch "$o" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
      kubectl -n "$ns" delete "$o" --ignore-not-found >/dev/null
    done
    kubectl -n "$ns" delete pods -l app.kubernetes.io/managed-by=kiln-operator --ignore-not-found >/dev/null
  done
  local start=$SECONDS
  log "operator as the chart's ServiceAccount, all namespaces (ClusterRole)"
  operator_check_one team-a ""
  log "operator as the chart's ServiceAccount, watchNamespaces={team-b} (Role); team-a left alone"
  operator_check_one team-b team-a --set 'watchNamespaces={team-b}' --set logFormat=json
  log "the operator did its work under the chart's RBAC without a permission error ($((SECONDS - start))s)"
}

cmd="${1:-build}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  build) build ;;
  lint) lint ;;
  template) template "$@" ;;
  crd-sync) crd_sync ;;
  copy-crds) copy_crds ;;
  dry-run) dry_run ;;
  crd-upgrade-check) crd_upgrade_check ;;
  rbac-check) rbac_check ;;
  operator-check) operator_check ;;
  cluster-check)
    dry_run
    crd_upgrade_check
    rbac_check
    if [[ -n "${KILN_OPERATOR_BIN:-}" ]]; then operator_check; else log "KILN_OPERATOR_BIN unset: operator-check skipped"; fi
    ;;
  check) check ;;
  *) die "unknown command '$cmd' (build, lint, template, crd-sync, copy-crds, dry-run, crd-upgrade-check, rbac-check, operator-check, cluster-check, check)" ;;
esac

#!/usr/bin/env bash
# Starts or stops a real etcd + kube-apiserver on 127.0.0.1 for the operator's integration tests.
#
#   scripts/k8s/apiserver.sh start   # builds the tools if needed, starts both, waits for /readyz
#   scripts/k8s/apiserver.sh stop
#   scripts/k8s/apiserver.sh env     # prints KUBECONFIG=... for eval
#
# Writes $RUN/kubeconfig (admin: system:masters) and $RUN/kubeconfig-operator (the user
# system:serviceaccount:kiln-system:kiln-operator, who may do only what operator/rbac.yaml grants).
# There is no kube-controller-manager, scheduler or kubelet: Pods are never scheduled or
# garbage-collected, ServiceAccounts are not created (so the ServiceAccount admission plugin is
# off). Tests play the node by patching Pod status themselves.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
RUN="${KILN_K8S_RUN:-/var/cache/kiln/k8s-run}"
ETCD_PORT="${KILN_ETCD_PORT:-23790}"
API_PORT="${KILN_APISERVER_PORT:-16443}"
log() { echo "apiserver.sh: $*" >&2; }

stop() {
  for p in kube-apiserver etcd; do
    if [[ -f "$RUN/$p.pid" ]]; then
      local pid; pid="$(cat "$RUN/$p.pid")"
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
      fi
      rm -f "$RUN/$p.pid"
    fi
  done
  log "stopped"
}

certs() {
  local c="$RUN/pki"
  [[ -f "$c/sa.pub" ]] && return
  mkdir -p "$c"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kiln-test-ca" \
    -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$c/apiserver.key" -out "$c/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >"$c/ext.cnf"
  openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days 3650 -extfile "$c/ext.cnf" -out "$c/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
  openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
}

kubeconfig() { # file user token
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kiln-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$RUN/pki/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: kiln-test
  context: {cluster: kiln-test, user: $2, namespace: default}
current-context: kiln-test
KC
}

start() {
  local bin
  bin="$("$HERE/tools.sh" | tail -1)"
  stop >/dev/null 2>&1 || true
  mkdir -p "$RUN"
  certs
  local admin_token op_token
  admin_token="admin-$(openssl rand -hex 16)"
  op_token="operator-$(openssl rand -hex 16)"
  cat >"$RUN/tokens.csv" <<CSV
$admin_token,admin,admin-uid,system:masters
$op_token,system:serviceaccount:kiln-system:kiln-operator,operator-uid,system:serviceaccounts
CSV
  rm -rf "$RUN/etcd-data"
  "$bin/etcd" --data-dir "$RUN/etcd-data" --name kiln-test \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-cluster "kiln-test=http://127.0.0.1:$((ETCD_PORT + 10))" \
    --unsafe-no-fsync --log-level warn >"$RUN/etcd.log" 2>&1 &
  echo $! >"$RUN/etcd.pid"
  "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --cert-dir "$RUN/pki" \
    --tls-cert-file "$RUN/pki/apiserver.crt" --tls-private-key-file "$RUN/pki/apiserver.key" \
    --client-ca-file "$RUN/pki/ca.crt" \
    --token-auth-file "$RUN/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$RUN/pki/sa.pub" \
    --service-account-signing-key-file "$RUN/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --disable-admission-plugins ServiceAccount \
    --allow-privileged=true \
    --enable-priority-and-fairness=false \
    --event-ttl 1h \
    >"$RUN/kube-apiserver.log" 2>&1 &
  echo $! >"$RUN/kube-apiserver.pid"
  kubeconfig "$RUN/kubeconfig" admin "$admin_token"
  kubeconfig "$RUN/kubeconfig-operator" kiln-operator "$op_token"
  for i in $(seq 1 120); do
    if curl -fsS --cacert "$RUN/pki/ca.crt" -H "Authorization: Bearer $admin_token" \
      "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then
      log "ready after ${i}s: KUBECONFIG=$RUN/kubeconfig"
      return 0
    fi
    if ! kill -0 "$(cat "$RUN/kube-apiserver.pid")" 2>/dev/null; then
      log "kube-apiserver exited; last log lines:"; tail -20 "$RUN/kube-apiserver.log" >&2; exit 1
    fi
    sleep 1
  done
  log "kube-apiserver not ready after 120s; last log lines:"; tail -20 "$RUN/kube-apiserver.log" >&2
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "KUBECONFIG=$RUN/kubeconfig" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd + runc, kubelet and kube-proxy, all from
# the Kubernetes version scripts/k8s/tools.sh builds, with Debian's containerd, runc and CNI
# plugins and a pause image compiled here. No systemd; cgroup v1 (cgroupfs driver).
#
#   bash scripts/k8s/cluster.sh up       # builds what is missing, starts everything, waits for the
#                                        # node to be Ready; on failure prints the logs and tears down
#   bash scripts/k8s/cluster.sh check    # proves it: a busybox Pod runs to Succeeded under the
#                                        # kubelet, with its service-account token mounted
#   eval "$(bash scripts/k8s/cluster.sh env)"  # exports KUBECONFIG and KILN_CLUSTER_REGISTRY (the
#                                        # registry as the node and its Pods reach it)
#   bash scripts/k8s/cluster.sh status   # each process, and the node
#   bash scripts/k8s/cluster.sh down     # stops every process, unmounts, removes the state
#
# Networking: nothing listens beyond loopback and one network namespace this script creates.
# containerd, the kubelet, kube-proxy, the CNI bridge and every Pod live in the namespace
# "kiln-node", joined to the host by a veth pair: the host end is 10.201.0.1, the node 10.201.0.2.
# The control plane stays on the host, with the API server listening on 10.201.0.1 only. The test
# registry listens on the host's 127.0.0.1:5000, which is not reachable from inside the namespace,
# so a socat on 10.201.0.1:5000 forwards to it, and containerd resolves 127.0.0.1:5000/... through
# that address (certs.d hosts.toml): Pods name images as the tests push them. Pods (10.244.0.0/16,
# bridge kiln0) reach 10.201.0.1 masqueraded by the node; Services (10.96.0.0/16) are kube-proxy's
# iptables rules in the namespace. The host has no route to Pod or Service addresses.
# Why a namespace rather than hostNetwork Pods: Pods keep their own network as on any cluster
# (their ports, the kubernetes Service through kube-proxy for an operator Pod), the CNI bridge and
# kube-proxy's iptables rules never touch the host's tables, and no chart value has to change
# the Pods' network for the tests. A hostNetwork Pod here shares the node's namespace, not the
# host's.
#
# State: everything under $KILN_CLUSTER_DIR (default /var/cache/kiln/cluster); `down` keeps only its
# logs/. Binaries: scripts/k8s/tools.sh cluster (cached under /var/cache/kiln/k8s-tools). The
# registry on 127.0.0.1:5000 must already answer (scripts/registry.sh start); this script never
# starts or stops it. Needs root.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
STATE="${KILN_CLUSTER_DIR:-/var/cache/kiln/cluster}"
K8S_VERSION="${KILN_K8S_VERSION:-v1.35.4}"
TOOLS="${KILN_K8S_TOOLS:-/var/cache/kiln/k8s-tools}"
GOMODCACHE="${GOMODCACHE:-/var/cache/kiln/go/mod}"
NETNS=kiln-node
NODE_NAME=kiln-node
VETH_HOST=kiln-host0
VETH_NODE=kiln-node0
HOST_IP=10.201.0.1
NODE_IP=10.201.0.2
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
ETCD_PORT=24790
API_PORT=26443
REGISTRY=127.0.0.1:5000
NODE_REGISTRY="$HOST_IP:5000"
CGROUP_PARENT=/kiln-node
CTR_SOCK="$STATE/containerd/containerd.sock"
# Start order; `down` stops them in reverse.
PROCESSES=(registry-forward etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

log() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "run as root (network namespace, cgroups, mounts)"

# --- processes ---------------------------------------------------------------------------------

pid_of() { # NAME: the pid in its pid file when that process still runs the same program
    local f="$STATE/run/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline")" == *"$(cat "$STATE/run/$1.cmd" 2>/dev/null)"* ]] || return 1
    echo "$pid"
}

# spawn NAME [--netns] CMD...: starts CMD in its own session, logging to logs/NAME.log. With
# --netns it runs in the node's network namespace (network only: the mount namespace stays the
# host's, so the kubelet's volume mounts and containerd's rootfs mounts see each other).
spawn() {
    local name="$1"; shift
    local pre=()
    if [[ "$1" == --netns ]]; then pre=(nsenter "--net=/run/netns/$NETNS" --); shift; fi
    mkdir -p "$STATE/run" "$STATE/logs"
    echo "$1" >"$STATE/run/$name.cmd"
    setsid "${pre[@]}" "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/run/$name.pid"
}

# alive PID: running, and not a zombie waiting for its parent (here PID 1) to reap it.
alive() {
    local st
    st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$st" && "$st" != Z ]]
}

stop_process() { # NAME
    local pid
    if pid="$(pid_of "$1")"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        log "stopped $1 (pid $pid)"
    fi
    rm -f "$STATE/run/$1.pid" "$STATE/run/$1.cmd"
}

# wait_for WHAT SECONDS PROCESS CMD...: polls CMD each second; fails early when PROCESS exits.
wait_for() {
    local what="$1" secs="$2" proc="$3"; shift 3
    local i
    for ((i = 1; i <= secs; i++)); do
        if "$@" >/dev/null 2>&1; then log "$what after ${i}s"; return 0; fi
        if [[ -n "$proc" ]] && ! pid_of "$proc" >/dev/null; then
            die "$proc exited while waiting for: $what (log: $STATE/logs/$proc.log)"
        fi
        sleep 1
    done
    die "timed out after ${secs}s waiting for: $what"
}

# --- certificates and kubeconfigs ---------------------------------------------------------------

pki() {
    local c="$STATE/pki"
    mkdir -p "$c"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kiln-cluster-ca" \
        -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
    openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
    openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
    cert apiserver "/CN=kube-apiserver" serverAuth \
        "IP:$HOST_IP,IP:$SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
    cert admin "/O=system:masters/CN=kiln-admin" clientAuth
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
    cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
    cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    cert kube-proxy "/CN=system:kube-proxy" clientAuth
}

cert() { # NAME SUBJECT USAGE [SANS]
    local c="$STATE/pki"
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$c/$1.key" -out "$c/$1.csr" 2>/dev/null
    { echo "extendedKeyUsage=$3"; [[ -z "${4:-}" ]] || echo "subjectAltName=$4"; } >"$c/$1.ext"
    openssl x509 -req -in "$c/$1.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
        -days 3650 -extfile "$c/$1.ext" -out "$c/$1.crt" 2>/dev/null
    rm -f "$c/$1.csr" "$c/$1.ext"
}

kubeconfig() { # NAME: a kubeconfig with the client certificate NAME
    local c="$STATE/pki"
    cat >"$STATE/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kiln-cluster
  cluster:
    server: https://$HOST_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$c/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$c/$1.crt")
    client-key-data: $(base64 -w0 "$c/$1.key")
contexts:
- name: kiln-cluster
  context: {cluster: kiln-cluster, user: $1, namespace: default}
current-context: kiln-cluster
KC
}

# --- network namespace ----------------------------------------------------------------------------

netns_up() {
    ip netns add "$NETNS"
    ip link add "$VETH_HOST" type veth peer name "$VETH_NODE" netns "$NETNS"
    ip addr add "$HOST_IP/30" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" addr add "$NODE_IP/30" dev "$VETH_NODE"
    ip -n "$NETNS" link set "$VETH_NODE" up
    # Only the Service range goes to the host end (where kube-proxy's DNAT in the namespace's
    # OUTPUT chain sends it on to the API server); no default route: nothing leaves for elsewhere.
    ip -n "$NETNS" route add "$SERVICE_CIDR" via "$HOST_IP"
    ip netns exec "$NETNS" sysctl -qw net.ipv4.ip_forward=1
}

netns_down() {
    if ip netns list | grep -qw "^$NETNS"; then
        ip netns del "$NETNS"
        log "deleted network namespace $NETNS"
    fi
    ! ip link show "$VETH_HOST" >/dev/null 2>&1 || ip link del "$VETH_HOST"
}

# --- the pause image ------------------------------------------------------------------------------

# Compiles build/pause/linux/pause.c of the k8s.io/kubernetes module statically and pushes it as
# $REGISTRY/kiln-test/pause:<the module's TAG> (as upstream's image: /pause, user 65535).
pause_image() {
    local src="$GOMODCACHE/k8s.io/kubernetes@$K8S_VERSION/build/pause"
    [[ -f "$src/linux/pause.c" ]] || die "no $src/linux/pause.c: scripts/k8s/tools.sh downloads the module"
    PAUSE_TAG="$(sed -n 's/^TAG ?= *//p' "$src/Makefile")"
    [[ -n "$PAUSE_TAG" ]] || die "no TAG in $src/Makefile"
    PAUSE_IMAGE="$REGISTRY/kiln-test/pause:$PAUSE_TAG"
    if skopeo inspect --tls-verify=false "docker://$PAUSE_IMAGE" >/dev/null 2>&1; then return; fi
    local dir="$TOOLS/pause-$PAUSE_TAG"
    if [[ ! -x "$dir/pause" ]]; then
        mkdir -p "$dir"
        gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-kiln" -o "$dir/pause.tmp" "$src/linux/pause.c"
        mv "$dir/pause.tmp" "$dir/pause"
    fi
    local layout="$dir/oci"
    rm -rf "$layout"
    umoci init --layout "$layout"
    umoci new --image "$layout:$PAUSE_TAG"
    umoci insert --image "$layout:$PAUSE_TAG" "$dir/pause" /pause
    umoci config --image "$layout:$PAUSE_TAG" --os linux --architecture amd64 \
        --config.entrypoint /pause --config.user 65535:65535
    skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$PAUSE_TAG" "docker://$PAUSE_IMAGE"
    log "pushed $PAUSE_IMAGE ($(stat -c %s "$dir/pause") byte static pause)"
}

# --- configuration files ---------------------------------------------------------------------------

# true when lowering an oom_score_adj is refused here (no CAP_SYS_RESOURCE), else false.
restrict_oom() {
    local bnd
    bnd="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
    if (((0x$bnd >> 24) & 1)); then echo false; else echo true; fi
}

containerd_config() {
    local d="$STATE/containerd"
    mkdir -p "$d/certs.d/$REGISTRY" "$d/certs.d/$NODE_REGISTRY" "$STATE/cni/net.d"
    cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$CTR_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj: the
  # kubelet's -998 for the pause container made runc's nsexec fail ("failed to update
  # /proc/self/oom_score_adj: Permission denied", seen by runc as "can't get final child's PID
  # from pipe: EOF"). Clamp every score at containerd's own, as for rootless containerd.
  restrict_oom_score_adj = $(restrict_oom)
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$d/certs.d"
TOML
    # The host's registry as the node reaches it (plain HTTP), under both names.
    cat >"$d/certs.d/$REGISTRY/hosts.toml" <<TOML
server = "http://$REGISTRY"
[host."http://$NODE_REGISTRY"]
  capabilities = ["pull", "resolve"]
TOML
    cat >"$d/certs.d/$NODE_REGISTRY/hosts.toml" <<TOML
server = "http://$NODE_REGISTRY"
TOML
    cat >"$STATE/cni/net.d/10-kiln.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kiln",
  "plugins": [
    {
      "type": "bridge", "bridge": "kiln0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

kubelet_config() {
    cat >"$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CTR_SOCK
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_PARENT
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $STATE/pki/kubelet-serving.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
podLogsDir: $STATE/pod-logs
resolvConf: /etc/resolv.conf
registerNode: true
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%
  nodefs.inodesFree: 2%
  imagefs.available: 2%
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
YAML
    cat >"$STATE/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
nodePortAddresses: [primary]
YAML
}

# --- up / down -----------------------------------------------------------------------------------

kc() { "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

node_ready() {
    [[ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

up() {
    # shellcheck source=scripts/lib/packages.sh
    source "$ROOT/scripts/lib/packages.sh"
    ensure_packages containerd runc containernetworking-plugins iproute2 iptables conntrack socat \
        gcc libc6-dev umoci skopeo openssl curl jq
    curl -fsS -o /dev/null --max-time 2 "http://$REGISTRY/v2/" ||
        die "no registry answers on http://$REGISTRY: bash scripts/registry.sh start"
    BIN="$(bash "$HERE/tools.sh" cluster | tail -1)"
    # One cluster per machine (one state directory, network namespace and set of ports): a
    # cluster that runs belongs to someone; only the leftovers of a stopped one are cleared.
    local n
    for n in "${PROCESSES[@]}"; do
        if pid_of "$n" >/dev/null; then
            die "a cluster is already running ($n, pid $(pid_of "$n")): use it, or stop it first with: bash $0 down"
        fi
    done
    down >/dev/null 2>&1 || true
    trap 'rc=$?; if ((rc)); then up_failed; fi' EXIT
    local t0=$SECONDS
    mkdir -p "$STATE"/{run,logs,pod-logs,kubelet}
    rm -f "$STATE"/logs/*.log
    pki
    local k
    for k in admin kube-controller-manager kube-scheduler kubelet kube-proxy; do kubeconfig "$k"; done
    netns_up
    pause_image
    containerd_config
    kubelet_config

    spawn registry-forward socat "TCP-LISTEN:5000,bind=$HOST_IP,fork,reuseaddr" "TCP:$REGISTRY"
    spawn etcd "$BIN/etcd" --data-dir "$STATE/etcd" --name kiln-cluster \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
        --initial-cluster "kiln-cluster=http://127.0.0.1:$((ETCD_PORT + 10))" \
        --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
    local p="$STATE/pki"
    spawn kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address "$HOST_IP" --advertise-address "$HOST_IP" --secure-port "$API_PORT" \
        --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
        --client-ca-file "$p/ca.crt" \
        --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$p/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$p/ca.crt" \
        --kubelet-preferred-address-types InternalIP \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$p/sa.pub" \
        --service-account-signing-key-file "$p/sa.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --allow-privileged=true --profiling=false --event-ttl 1h
    wait_for "kube-apiserver ready" 180 kube-apiserver kc get --raw /readyz
    spawn kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
        --use-service-account-credentials=true \
        --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
        --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" --cluster-name kiln-cluster
    spawn kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false

    # The node: the pods' cgroups go under $CGROUP_PARENT in every v1 hierarchy.
    local h
    for h in /sys/fs/cgroup/*/; do
        if [[ -f "$h/cgroup.procs" ]]; then mkdir -p "$h${CGROUP_PARENT#/}"; fi
    done
    spawn containerd --netns containerd --config "$STATE/containerd/config.toml"
    wait_for "containerd serving" 60 containerd ctr --address "$CTR_SOCK" version
    spawn kubelet --netns "$BIN/kubelet" --config "$STATE/kubelet.yaml" \
        --kubeconfig "$STATE/kubelet.kubeconfig" --root-dir "$STATE/kubelet" \
        --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
    spawn kube-proxy --netns "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
    wait_for "node $NODE_NAME Ready" 180 kubelet node_ready
    wait_for "ServiceAccount default/default" 60 kube-controller-manager kc -n default get serviceaccount default
    trap - EXIT
    log "up in $((SECONDS - t0))s (after the build): kubelet $("$BIN/kubelet" --version | awk '{print $2}'), $(containerd --version | awk '{print $1, $3}'), runc $(runc --version | awk 'NR==1{print $3}')"
}

up_failed() {
    local n
    for n in "${PROCESSES[@]}"; do
        if [[ ! -s "$STATE/logs/$n.log" ]]; then continue; fi
        echo "---- $STATE/logs/$n.log (last 25 lines)" >&2
        tail -25 "$STATE/logs/$n.log" >&2
    done
    log "up failed; tearing down (logs kept in $STATE/logs)"
    down || true
}

# Every process that a container of this cluster runs: the members of the cgroups under
# $CGROUP_PARENT, and the containerd shims serving this containerd's socket.
cluster_pids() {
    local f pid
    for f in /sys/fs/cgroup/*"$CGROUP_PARENT"/; do
        if [[ -d "$f" ]]; then find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null; fi
    done
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"; pid="${pid%/cmdline}"
        if { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qxF -- "$CTR_SOCK"; then echo "$pid"; fi
    done
}

down() {
    local n i pids
    for ((i = ${#PROCESSES[@]} - 1; i >= 0; i--)); do
        n="${PROCESSES[i]}"
        if [[ "$n" == containerd ]] && pid_of containerd >/dev/null && [[ -S "$CTR_SOCK" ]]; then
            # Containers first, through containerd, so their shims exit and unmount cleanly.
            local t
            for t in $(ctr --address "$CTR_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
                ctr --address "$CTR_SOCK" -n k8s.io tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
            done
            sleep 1
            for t in $(ctr --address "$CTR_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
                ctr --address "$CTR_SOCK" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
            done
        fi
        stop_process "$n"
    done
    for _ in 1 2 3; do
        mapfile -t pids < <(cluster_pids | sort -un)
        ((${#pids[@]})) || break
        log "killing leftover container processes: ${pids[*]}"
        kill -9 "${pids[@]}" 2>/dev/null || true
        sleep 1
    done
    # Mounts under the state directory (overlay rootfs, volumes, the Pods' network namespaces,
    # /dev/shm), deepest first.
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    netns_down
    local h
    for h in /sys/fs/cgroup/*"$CGROUP_PARENT"/; do
        if [[ -d "$h" ]]; then find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    done
    # The kubelet's links in /var/log/containers (a fixed path) to logs under $STATE.
    local l
    for l in /var/log/containers/*.log; do
        if [[ -L "$l" && "$(readlink "$l")" == "$STATE/"* ]]; then rm -f "$l"; fi
    done
    if [[ -d "$STATE" ]]; then
        find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
    fi
    log "down"
}

print_env() {
    echo "export KUBECONFIG=$STATE/admin.kubeconfig"
    echo "export KILN_CLUSTER_REGISTRY=$NODE_REGISTRY"
}

status() {
    local n pid rc=0
    for n in "${PROCESSES[@]}"; do
        if pid="$(pid_of "$n")"; then echo "$n: running (pid $pid)"; else echo "$n: not running"; rc=1; fi
    done
    BIN="$TOOLS/bin"
    kc get nodes -o wide || rc=1
    return "$rc"
}

# The proof: a Pod from the local registry runs under the kubelet to Succeeded, and its log shows
# the namespace file of the service-account token the kubelet mounted.
check() {
    BIN="$TOOLS/bin"
    local name="kiln-hello-$$" t0=$SECONDS
    kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: default}
spec:
  restartPolicy: Never
  containers:
  - name: hello
    image: $REGISTRY/kiln-test/busybox:latest
    command: [sh, -c, "echo hello; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"]
YAML
    local phase="" i
    for ((i = 0; i < 180; i++)); do
        phase="$(kc get pod "$name" -o jsonpath='{.status.phase}')"
        [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
        sleep 1
    done
    local logs
    logs="$(kc logs "$name" 2>&1 || true)"
    echo "pod $name: phase $phase after $((SECONDS - t0))s; logs:"
    echo "$logs"
    if [[ "$phase" != Succeeded || "$logs" != $'hello\ndefault' ]]; then
        kc describe pod "$name" >&2 || true
        kc delete pod "$name" --wait=false >/dev/null 2>&1 || true
        die "check failed: expected phase Succeeded and the lines 'hello', 'default'"
    fi
    kc delete pod "$name" >/dev/null
    echo "check passed"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) print_env ;;
    status) status ;;
    check) check ;;
    *) echo "usage: $0 up|down|env|status|check" >&2; exit 2 ;;
esac

# shellcheck shell=bash
# configure_containers: podman/buildah settings for the sandboxes this project runs in. No ulimit
# changes inside containers (setrlimit above the hard limit fails in a sandboxed machine, and podman
# then stops with "error setting rlimit type 7"). Idempotent; used by test.sh and demo.sh.
configure_containers() {
    mkdir -p /etc/containers
    local conf=/etc/containers/containers.conf
    if [[ ! -f "$conf" ]] || ! grep -q '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[\]' "$conf"; then
        if [[ -f "$conf" ]] && grep -q '^\[containers\]' "$conf"; then
            sed -i '/^\[containers\]/a default_ulimits = []' "$conf"
        else
            printf '[containers]\ndefault_ulimits = []\n' >>"$conf"
        fi
    fi
}

# shellcheck shell=bash
# Sourced by scripts that need Debian packages: `ensure_packages NAME...` installs the missing ones
# (apt-get update first, recommends included: podman and buildah rely on some of them).
# KILN_SKIP_APT=1 skips it (the tools are already installed).
ensure_packages() {
    [[ "${KILN_SKIP_APT:-}" == 1 ]] && return 0
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

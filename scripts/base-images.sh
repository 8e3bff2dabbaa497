#!/usr/bin/env bash
# Makes the base images that the tests build FROM and pushes them to the local test registry.
# No public image registry is reachable, so the images are assembled here with tools independent of
# kiln (umoci for the layout and config, skopeo for the push):
#
#   $REG/kiln-test/busybox:latest     busybox-static with its applet symlinks, passwd/group, /tmp 1777
#   $REG/kiln-test/busybox:multiarch  an image index: the same amd64 image plus a fake linux/arm64 entry
#   $REG/kiln-test/busybox:multiplatform  an image index of real linux/amd64 and linux/arm64 images
#                                     (Debian's busybox-static for each; the arm64 package is
#                                     fetched with apt-get download, arm64 added as a foreign
#                                     architecture, and cached under $KILN_BASE_CACHE)
#   $REG/kiln-test/debian:bookworm    debootstrap --variant=minbase bookworm, apt lists removed
#
# The debootstrap root is cached as a tarball under $KILN_BASE_CACHE (default /var/cache/kiln/base) so
# later runs skip debootstrap; delete the tarball to refresh it. Needs root (ownership in layers).
#
# Environment: KILN_TEST_REGISTRY (default 127.0.0.1:5000), KILN_BASE_CACHE, KILN_BASE_ONLY=busybox|debian.
set -euo pipefail

REG="${KILN_TEST_REGISTRY:-127.0.0.1:5000}"
CACHE="${KILN_BASE_CACHE:-/var/cache/kiln/base}"
ONLY="${KILN_BASE_ONLY:-}"
mkdir -p "$CACHE"
WORK="$(mktemp -d /tmp/kiln-base.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

log() { echo "base-images: $*" >&2; }
die() { echo "base-images: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (layers carry uid/gid 0 and 1000)"
for tool in umoci skopeo tar jq; do
    command -v "$tool" >/dev/null || die "$tool not installed: run 'bash scripts/test.sh' or apt-get install it"
done
curl -fsS -o /dev/null --max-time 5 "http://$REG/v2/" ||
    die "no registry answers on http://$REG/v2/: run 'bash scripts/registry.sh start' first"

# Deterministic layer tar of a root directory: sorted, numeric owners, no "./" prefix, fixed mtimes.
layer_tar() {
    local root="$1" out="$2"
    (cd "$root" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort |
        tar --sort=name --numeric-owner --mtime='2024-01-01 00:00:00Z' --xattrs \
            -cf "$out" -T -)
}

# new_image LAYOUT TAG LAYER_TAR -- umoci config args...
new_image() {
    local layout="$1" tag="$2" layer="$3"
    shift 3
    [[ -d "$layout" ]] || umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    umoci raw add-layer --image "$layout:$tag" "$layer"
    umoci config --image "$layout:$tag" --os linux --architecture "${IMAGE_ARCH:-amd64}" \
        --author "kiln scripts/base-images.sh" "$@"
}

push() {
    local src="$1" dest="$2"
    shift 2
    skopeo copy --quiet --dest-tls-verify=false "$@" "oci:$src" "docker://$REG/$dest"
    log "pushed $REG/$dest"
}

# busybox_root ROOT [BINARY]: a busybox root with this machine's busybox, or BINARY (another
# architecture's build of the same version: the applets are listed by this machine's).
busybox_root() {
    local root="$1" bb host
    host="$(readlink -f "$(command -v busybox)")"
    bb="${2:-$host}"
    file_is_static "$bb" || die "$bb is not the static busybox: apt-get install -y busybox-static"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home/app,var,run,dev,proc,sys}
    install -m 0755 "$bb" "$root/bin/busybox"
    # Applets as absolute symlinks at the paths busybox itself lists (bin/ls, sbin/ifconfig, usr/bin/env ...).
    local applet
    while read -r applet; do
        [[ "$applet" == bin/busybox || -e "$root/$applet" || -L "$root/$applet" ]] && continue
        mkdir -p "$root/$(dirname "$applet")"
        ln -s /bin/busybox "$root/$applet"
    done < <("$host" --list-full)
    install -d -m 1777 "$root/tmp" "$root/var/tmp"
    install -d -m 0700 "$root/root"
    chown 1000:1000 "$root/home/app"
    ln -s ../run "$root/var/run"
    cat >"$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
    cat >"$root/etc/group" <<'G'
root:x:0:
app:x:1000:
nogroup:x:65534:
G
    chmod 0644 "$root/etc/passwd" "$root/etc/group"
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    echo "kiln-test" >"$root/etc/hostname"
}

file_is_static() {
    # A static binary has no program interpreter; avoid depending on `file`.
    ! readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

build_busybox() {
    local root="$WORK/busybox-root" layout="$WORK/busybox"
    busybox_root "$root"
    layer_tar "$root" "$WORK/busybox.tar"
    new_image "$layout" latest "$WORK/busybox.tar" \
        --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --config.cmd sh
    push "$layout:latest" kiln-test/busybox:latest

    # A multi-platform index: the real amd64 manifest plus an arm64 entry that reuses the same
    # manifest bytes (busybox here is amd64 only). Builders must pick linux/amd64 from it.
    local idx="$layout/index.json" mdesc
    mdesc="$(jq -c '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="latest")' "$idx")"
    local index
    index="$(jq -cn --argjson m "$mdesc" '{
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [
            ($m | del(.annotations) | .platform = {architecture: "amd64", os: "linux"}),
            ($m | del(.annotations) | .platform = {architecture: "arm64", os: "linux", variant: "v8"})
        ]}')"
    local digest size
    digest="$(printf '%s' "$index" | sha256sum | cut -d' ' -f1)"
    size="$(printf '%s' "$index" | wc -c)"
    printf '%s' "$index" >"$layout/blobs/sha256/$digest"
    jq --arg d "sha256:$digest" --argjson s "$size" '.manifests += [{
        mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
        annotations: {"org.opencontainers.image.ref.name": "multiarch"}}]' "$idx" >"$idx.new"
    mv "$idx.new" "$idx"
    push "$layout:multiarch" kiln-test/busybox:multiarch --all
}

# Debian's busybox-static for arm64, as a .deb in the cache (fetched once).
arm64_busybox_deb() {
    local deb="$CACHE/busybox-static-arm64.deb"
    if [[ ! -s "$deb" ]]; then
        if ! dpkg --print-foreign-architectures | grep -qx arm64; then
            dpkg --add-architecture arm64
        fi
        if ! (cd "$WORK" && apt-get download -qq busybox-static:arm64 >/dev/null 2>&1); then
            apt-get update -qq
            (cd "$WORK" && apt-get download -qq busybox-static:arm64 >/dev/null) ||
                die "apt-get download busybox-static:arm64 failed"
        fi
        mv "$WORK"/busybox-static_*_arm64.deb "$deb"
        log "cached $deb"
    fi
    echo "$deb"
}

build_busybox_multiplatform() {
    local layout="$WORK/busybox-mp" deb x="$WORK/busybox-arm64-deb"
    deb="$(arm64_busybox_deb)"
    dpkg-deb -x "$deb" "$x"
    busybox_root "$WORK/busybox-root-amd64"
    busybox_root "$WORK/busybox-root-arm64" "$x/bin/busybox"
    local arch
    for arch in amd64 arm64; do
        layer_tar "$WORK/busybox-root-$arch" "$WORK/busybox-$arch.tar"
        IMAGE_ARCH="$arch" new_image "$layout" "$arch" "$WORK/busybox-$arch.tar" \
            --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            --config.cmd sh
    done
    local idx="$layout/index.json" index digest size
    index="$(jq -c '{
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [.manifests[] | . as $m | ($m.annotations["org.opencontainers.image.ref.name"]) as $a
            | select($a == "amd64" or $a == "arm64")
            | $m | del(.annotations) | .platform = {architecture: $a, os: "linux"}]}' "$idx")"
    digest="$(printf '%s' "$index" | sha256sum | cut -d' ' -f1)"
    size="$(printf '%s' "$index" | wc -c)"
    printf '%s' "$index" >"$layout/blobs/sha256/$digest"
    jq --arg d "sha256:$digest" --argjson s "$size" '.manifests += [{
        mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
        annotations: {"org.opencontainers.image.ref.name": "multiplatform"}}]' "$idx" >"$idx.new"
    mv "$idx.new" "$idx"
    push "$layout:multiplatform" kiln-test/busybox:multiplatform --all
}

debian_mirror() {
    # Use the mirror this machine's apt already uses rather than naming one here.
    local m
    m="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)"
    [[ -n "$m" ]] || m="$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -n1)"
    [[ -n "$m" ]] || die "no Debian mirror found in /etc/apt/sources.list{,.d}"
    echo "$m"
}

build_debian() {
    local tarball="$CACHE/debian-bookworm-minbase-v2.tar" layout="$WORK/debian"
    if [[ ! -s "$tarball" ]]; then
        command -v debootstrap >/dev/null || die "debootstrap not installed: apt-get install -y debootstrap"
        local root="$WORK/debian-root" mirror
        mirror="$(debian_mirror)"
        log "debootstrap bookworm from $mirror (cached afterwards in $tarball)"
        debootstrap --variant=minbase bookworm "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1 || {
            tail -n 30 "$WORK/debootstrap.log" >&2
            die "debootstrap failed (log above)"
        }
        # Keep the image small and free of host leftovers: apt lists and caches, logs of the bootstrap.
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
            "$root"/var/log/bootstrap.log "$root"/debootstrap
        mkdir -p "$root/var/lib/apt/lists/partial"
        # debootstrap leaves /etc/group- with the same size and mtime as /etc/group but other
        # content; buildah's layer diff (size+mtime) then misses useradd's rewrite of the backup.
        # Real base images ship without these backups, so drop them.
        rm -f "$root"/etc/passwd- "$root"/etc/group- "$root"/etc/shadow- "$root"/etc/gshadow-
        # The files RUN sandboxes bind-mount must exist in the base: otherwise buildah leaves the
        # empty mount-point file it creates in the image, which Docker and kiln do not.
        printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
        : >"$root/etc/resolv.conf"
        echo "kiln-test" >"$root/etc/hostname"
        chmod 0644 "$root/etc/hosts" "$root/etc/resolv.conf" "$root/etc/hostname"
        layer_tar "$root" "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
    else
        log "using cached $tarball"
    fi
    new_image "$layout" bookworm "$tarball" \
        --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --config.cmd bash
    push "$layout:bookworm" kiln-test/debian:bookworm
}

[[ -z "$ONLY" || "$ONLY" == busybox ]] && build_busybox
[[ -z "$ONLY" || "$ONLY" == busybox ]] && build_busybox_multiplatform
[[ -z "$ONLY" || "$ONLY" == debian ]] && build_debian
log "done"

#!/usr/bin/env bash
# Builds kaniko's executor (the tool Kiln is measured against) from its Go module and wraps it in an
# OCI image that podman can run the way a Pod runs kaniko. No public image registry is reachable, so
# the image is assembled here: scratch + /kaniko/executor, /kaniko/warmer + CA certificates, with umoci, then copied
# with skopeo into podman's local storage (vfs) and, when a registry answers, to the local registry.
#
#   bash scripts/kaniko.sh            # binary (if missing) + image (if missing)
#   bash ... --binary-only            # the binaries only (scripts/test.sh: executor/tests/kaniko_cache.rs)
#   KILN_KANIKO_REBUILD=1 bash ...    # rebuild both
#
# Binaries: /var/cache/kiln/bin/kaniko-{executor,warmer} (module $KANIKO_VERSION, CGO off, niced)
# Image:   localhost/kiln-bench/kaniko:$KANIKO_VERSION in podman storage (vfs driver)
#          and $KILN_TEST_REGISTRY/kiln-bench/kaniko:$KANIKO_VERSION if that registry answers.
# Environment: KANIKO_VERSION (default v1.24.0), KILN_GO_CACHE (default /var/cache/kiln/go),
#              KILN_TEST_REGISTRY (default 127.0.0.1:5000).
set -euo pipefail

VERSION="${KANIKO_VERSION:-v1.24.0}"
GOC="${KILN_GO_CACHE:-/var/cache/kiln/go}"
BIN_DIR=/var/cache/kiln/bin
BIN="$BIN_DIR/kaniko-executor"
WARMER="$BIN_DIR/kaniko-warmer"
REG="${KILN_TEST_REGISTRY:-127.0.0.1:5000}"
IMAGE="kiln-bench/kaniko:$VERSION"
STAMP="$BIN_DIR/kaniko-executor.version"

log() { echo "kaniko.sh: $*" >&2; }
die() { echo "kaniko.sh: $*" >&2; exit 1; }

build_binary() {
    if [[ -x "$BIN" && -x "$WARMER" && "$(cat "$STAMP" 2>/dev/null)" == "$VERSION" && -z "${KILN_KANIKO_REBUILD:-}" ]]; then
        log "using $BIN and $WARMER ($VERSION)"
        return
    fi
    [[ -x /usr/local/go/bin/go ]] && ! command -v go >/dev/null && PATH="$PATH:/usr/local/go/bin"
    command -v go >/dev/null || die "go not installed (needs Go >= 1.22 on PATH)"
    mkdir -p "$GOC/mod" "$GOC/cache" "$GOC/path" "$BIN_DIR"
    # `go install module@version` fails on proxy.golang.org for this archived module: the proxy
    # answers 403 to `@v/list`, which go install reads to check for a deprecation notice, although
    # the version's zip itself downloads. So: `go mod download` the exact version (no list lookup),
    # copy its source out of the read-only module cache and build it as the main module, with the
    # go.mod/go.sum of that tag (i.e. exactly the dependency versions kaniko v1.24.0 pinned).
    local gobin src
    gobin="$(mktemp -d /tmp/kiln-kaniko-bin.XXXXXX)"
    goenv=(env GOPATH="$GOC/path" GOMODCACHE="$GOC/mod" GOCACHE="$GOC/cache"
        GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOTOOLCHAIN=local)
    log "go mod download github.com/GoogleContainerTools/kaniko@$VERSION"
    src="$("${goenv[@]}" go mod download -json "github.com/GoogleContainerTools/kaniko@$VERSION" | jq -r .Dir)"
    [[ -d "$src/cmd/executor" ]] || die "go mod download gave no source directory for kaniko $VERSION"
    cp -r "$src" "$gobin/src"
    chmod -R u+w "$gobin/src"
    log "go build ./cmd/executor ./cmd/warmer in a copy of $src (slow on 2 cores: several minutes)"
    if ! (cd "$gobin/src" && "${goenv[@]}" nice -n 19 go build -mod=mod -trimpath -ldflags "-s -w" \
        -o "$gobin/executor" ./cmd/executor &&
        "${goenv[@]}" nice -n 19 go build -mod=mod -trimpath -ldflags "-s -w" \
            -o "$gobin/warmer" ./cmd/warmer); then
        rm -rf "$gobin"
        die "go build of kaniko $VERSION failed (output above)"
    fi
    mv "$gobin/executor" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
    mv "$gobin/warmer" "$WARMER.tmp"
    mv "$WARMER.tmp" "$WARMER"
    echo "$VERSION" >"$STAMP"
    rm -rf "$gobin"
    log "built $BIN and $WARMER"
}

# podman with the same storage options bench.sh uses, so the image is found there.
pm() { podman --storage-driver vfs "$@"; }

build_image() {
    if [[ -z "${KILN_KANIKO_REBUILD:-}" ]] && pm image exists "localhost/$IMAGE" 2>/dev/null; then
        log "podman already has localhost/$IMAGE"
    else
        for tool in umoci skopeo podman; do
            command -v "$tool" >/dev/null || die "$tool not installed: apt-get install -y $tool"
        done
        local work root certs
        work="$(mktemp -d /tmp/kiln-kaniko-img.XXXXXX)"
        trap 'rm -rf "$work"' RETURN
        root="$work/root"
        certs=/etc/ssl/certs/ca-certificates.crt
        [[ -s "$certs" ]] || die "$certs missing: apt-get install -y ca-certificates"
        mkdir -p "$root/kaniko/ssl/certs" "$root/etc/ssl/certs" "$root/workspace" "$root/tmp"
        install -m 0755 "$BIN" "$root/kaniko/executor"
        install -m 0755 "$WARMER" "$root/kaniko/warmer"
        install -m 0644 "$certs" "$root/kaniko/ssl/certs/ca-certificates.crt"
        install -m 0644 "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
        chmod 1777 "$root/tmp"
        (cd "$root" && tar --sort=name --numeric-owner --owner=0 --group=0 \
            --mtime='2024-01-01 00:00:00Z' -cf "$work/layer.tar" .)
        umoci init --layout "$work/oci"
        umoci new --image "$work/oci:$VERSION"
        umoci raw add-layer --image "$work/oci:$VERSION" "$work/layer.tar"
        # The environment of kaniko's own Dockerfile (deploy/Dockerfile): the paths kaniko reads.
        umoci config --image "$work/oci:$VERSION" --os linux --architecture amd64 \
            --author "kiln scripts/kaniko.sh" \
            --config.env "PATH=/usr/local/bin:/kaniko" \
            --config.env "HOME=/root" --config.env "USER=root" \
            --config.env "SSL_CERT_DIR=/kaniko/ssl/certs" \
            --config.env "DOCKER_CONFIG=/kaniko/.docker/" \
            --config.env "DOCKER_CREDENTIAL_GCR_CONFIG=/kaniko/.config/gcloud/docker_credential_gcr_config.json" \
            --config.workingdir /workspace \
            --config.entrypoint /kaniko/executor
        skopeo copy --quiet "oci:$work/oci:$VERSION" \
            "containers-storage:[vfs@/var/lib/containers/storage+/run/containers/storage]localhost/$IMAGE"
        log "podman image localhost/$IMAGE ready"
        if curl -fs -o /dev/null --max-time 2 "http://$REG/v2/"; then
            skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:$VERSION" "docker://$REG/$IMAGE"
            log "pushed $REG/$IMAGE"
        fi
    fi
}

[[ "$(id -u)" == 0 ]] || die "must run as root (podman storage, image ownership)"
build_binary
[[ "${1:-}" == --binary-only ]] && exit 0
build_image

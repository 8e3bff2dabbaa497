#!/usr/bin/env bash
# Builds the cloud registries' docker credential helpers for the executor image, from their Go
# modules at pinned versions (the ones kaniko v1.24 links), and copies them into a directory:
#
#   bash scripts/cred-helpers.sh DIR
#
#   docker-credential-ecr-login  Amazon ECR (IRSA, EKS Pod Identity, instance roles, AWS_* keys)
#   docker-credential-gcr        Google Artifact Registry and GCR (workload identity, metadata server,
#                                GOOGLE_APPLICATION_CREDENTIALS)
#   docker-credential-acr-env    Azure Container Registry (workload identity, AZURE_* service principal)
#
# Each is a static binary (CGO_ENABLED=0), built once and cached in /var/cache/kiln/bin/cred-helpers/
# (with a stamp naming its module version), so a later run only copies. kiln-executor runs a helper
# named in a docker config's credHelpers or credsStore (see the README, "Credential helpers"); in the
# executor image they belong in /kiln (on its PATH), which an in-place build leaves alone.
#
# Environment: KILN_GO_CACHE (default /var/cache/kiln/go), KILN_CRED_HELPERS_REBUILD=1 rebuilds.
# Not run by scripts/test.sh or CI: the tests use a helper of their own.
set -euo pipefail

GOC="${KILN_GO_CACHE:-/var/cache/kiln/go}"
CACHE=/var/cache/kiln/bin/cred-helpers

# name | module | version | package inside the module
HELPERS=(
    "docker-credential-ecr-login|github.com/awslabs/amazon-ecr-credential-helper/ecr-login|v0.9.1|./cli/docker-credential-ecr-login"
    "docker-credential-gcr|github.com/GoogleCloudPlatform/docker-credential-gcr/v2|v2.1.22|."
    "docker-credential-acr-env|github.com/chrismellard/docker-credential-acr-env|v0.0.0-20230304212654-82a0ddb27589|."
)

log() { echo "cred-helpers.sh: $*" >&2; }
die() { echo "cred-helpers.sh: $*" >&2; exit 1; }

[[ $# -eq 1 && "$1" != -* ]] || die "usage: bash scripts/cred-helpers.sh DIR"
OUT="$1"
command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || die "go not installed (needs Go >= 1.22)"
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
command -v jq >/dev/null || die "jq not installed: apt-get install -y jq"
mkdir -p "$GOC/mod" "$GOC/cache" "$GOC/path" "$CACHE" "$OUT"
goenv=(env GOPATH="$GOC/path" GOMODCACHE="$GOC/mod" GOCACHE="$GOC/cache"
    GOFLAGS="-buildvcs=false -p=1" CGO_ENABLED=0 GOTOOLCHAIN=local)

build() {
    local name="$1" module="$2" version="$3" pkg="$4"
    local bin="$CACHE/$name" stamp="$CACHE/$name.version" work src
    if [[ -x "$bin" && "$(cat "$stamp" 2>/dev/null)" == "$module@$version" &&
        -z "${KILN_CRED_HELPERS_REBUILD:-}" ]]; then
        log "using $bin ($module@$version)"
        return
    fi
    work="$(mktemp -d /tmp/kiln-cred-helper.XXXXXX)"
    # As scripts/kaniko.sh does: download the exact version (no @v/list lookup), build a copy of its
    # source as the main module with the go.mod/go.sum of that version.
    log "go mod download $module@$version"
    if ! src="$("${goenv[@]}" go mod download -json "$module@$version" | jq -r '.Dir // empty')" ||
        [[ -z "$src" || ! -d "$src" ]]; then
        rm -rf "$work"
        die "the Go module proxy did not serve $module@$version"
    fi
    cp -r "$src" "$work/src"
    chmod -R u+w "$work/src"
    log "go build $name (niced, one job at a time: a few minutes on 2 cores)"
    if ! (cd "$work/src" && "${goenv[@]}" nice -n 19 go build -mod=mod -trimpath \
        -ldflags "-s -w" -o "$work/$name" "$pkg"); then
        rm -rf "$work"
        die "go build of $name ($module@$version) failed (output above)"
    fi
    # In an in-place build the helper runs after / was replaced by the base image: no loader there.
    if readelf -l "$work/$name" 2>/dev/null | grep -q 'program interpreter'; then
        rm -rf "$work"
        die "$name came out dynamically linked; it must be static (CGO_ENABLED=0)"
    fi
    mv "$work/$name" "$bin.tmp"
    mv "$bin.tmp" "$bin"
    echo "$module@$version" >"$stamp"
    rm -rf "$work"
    log "built $bin"
}

for entry in "${HELPERS[@]}"; do
    IFS='|' read -r name module version pkg <<<"$entry"
    build "$name" "$module" "$version" "$pkg"
    install -m 0755 "$CACHE/$name" "$OUT/$name"
done
log "helpers in $OUT: $(cd "$OUT" && printf '%s ' docker-credential-*)"

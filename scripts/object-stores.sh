#!/usr/bin/env bash
# Installs the object-store API servers that executor/tests/object_store_contexts.rs runs on
# loopback, into a cache directory outside the repository. Idempotent: what is there is kept.
#
#   moto_server      moto[server] from PyPI (S3 and IAM), in a virtualenv that also holds
#                    azure-storage-blob, the client the Azure test uploads with (its python3)
#   fake-gcs-server  built with Go from github.com/fsouza/fake-gcs-server (the Go module proxy)
#   azurite-blob     azurite from npm (Azure Blob)
#
# Prints the directory holding all of them (to put first on PATH) on the last line of stdout.
set -euo pipefail

DIR=/var/cache/kiln/object-stores
BIN="$DIR/bin"
MOTO_VERSION=5.2.1
AZURE_BLOB_VERSION=12.31.1
FAKE_GCS_VERSION=v1.56.1
AZURITE_VERSION=3.37.0
export GOMODCACHE="${GOMODCACHE:-/var/cache/kiln/go/mod}"
export GOCACHE="${GOCACHE:-/var/cache/kiln/go/cache}"
export GOPATH="${GOPATH:-/var/cache/kiln/go/path}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { echo "object-stores.sh: $*" >&2; }

mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"

if [[ ! -x "$DIR/venv/bin/moto_server" ]] ||
    ! "$DIR/venv/bin/python3" -c 'import azure.storage.blob' 2>/dev/null; then
    log "installing moto[server]==$MOTO_VERSION and azure-storage-blob==$AZURE_BLOB_VERSION (pip)"
    python3 -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install -q --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION" "azure-storage-blob==$AZURE_BLOB_VERSION" >&2
fi
ln -sfn "$DIR/venv/bin/moto_server" "$BIN/moto_server"
# A wrapper, not a symlink: Python finds its virtualenv from the path it was started by.
rm -f "$BIN/python3"
printf '#!/bin/sh\nexec %s "$@"\n' "$DIR/venv/bin/python3" >"$BIN/python3"
chmod 755 "$BIN/python3"

if [[ ! -x "$BIN/fake-gcs-server" ]]; then
    log "building fake-gcs-server $FAKE_GCS_VERSION (go install)"
    GOBIN="$BIN" nice -n 19 go install -p 1 "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION" >&2
fi

if [[ ! -x "$DIR/azurite/node_modules/.bin/azurite-blob" ]]; then
    log "installing azurite@$AZURITE_VERSION (npm)"
    npm install --prefix "$DIR/azurite" --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION" >&2
fi
ln -sfn "$DIR/azurite/node_modules/.bin/azurite-blob" "$BIN/azurite-blob"

echo "$BIN"

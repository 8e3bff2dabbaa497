#!/usr/bin/env bash
# Checks that a change to the executor changed no build output: builds every case of
# testdata/corpus with `--reproducible`, twice with the executor of OLD and once with that of NEW,
# pushing to the local test registry. Wherever OLD reproduces its own digest, NEW's digest must be
# identical; the other cases (OLD not reproducible with itself) are compared by their flattened
# trees (type, mode, owner, size, content, link target; never timestamps), read with skopeo and
# umoci, not with kiln.
#
#   bash scripts/same-output.sh OLD [NEW]      # commits; NEW defaults to HEAD
#
# Needs the test registry on 127.0.0.1:5000 with the base images (the corpus names that address):
#   bash scripts/registry.sh start && bash scripts/base-images.sh
# Builds each commit's executor in a temporary worktree (target dir /var/cache/kiln/target-same).
# Exits non-zero when any case differs or fails to build; prints one line per case.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
OLD="${1:?usage: scripts/same-output.sh OLD [NEW]}"
NEW="${2:-HEAD}"
REG="127.0.0.1:5000"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${KILN_SAME_TARGET:-/var/cache/kiln/target-same}"
WORK="$(mktemp -d /tmp/kiln-same.XXXXXX)"
cleanup() {
    local tree
    for tree in "$WORK"/src-*; do
        [[ -d "$tree" ]] && git -C "$REPO" worktree remove --force "$tree"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "same-output: $*" >&2; }
curl -fsS -o /dev/null --max-time 5 "http://$REG/v2/" ||
    { log "no registry on $REG: run scripts/registry.sh start and scripts/base-images.sh"; exit 1; }

# build_executor COMMIT NAME: the executor binary of COMMIT, copied to $WORK/NAME.
build_executor() {
    local commit="$1" name="$2" src="$WORK/src-$2"
    git -C "$REPO" worktree add --detach -q "$src" "$commit"
    log "building the executor of $(git -C "$REPO" rev-parse --short "$commit") ($name)"
    (cd "$src" && cargo build -q --locked -p kiln-executor --bin kiln-executor)
    cp "$CARGO_TARGET_DIR/debug/kiln-executor" "$WORK/$name"
}

# build_case BIN RUN CASE: builds CASE with BIN, pushes it as same/CASE:RUN; prints the digest.
build_case() {
    local bin="$1" run="$2" case="$3" dir="$REPO/testdata/corpus/$3"
    local args=(--context "dir://$dir" --dockerfile "$dir/Dockerfile" --insecure --reproducible
        --destination "$REG/same/$case:$run" --destination "$REG/diff/$case:kiln"
        --digest-file "$WORK/digest")
    if [[ -f "$dir/args" ]]; then
        while IFS= read -r line; do
            line="${line#"${line%%[![:space:]]*}"}"
            [[ -z "$line" || "$line" == \#* ]] && continue
            args+=(--build-arg "$line")
        done <"$dir/args"
    fi
    [[ -s "$dir/target" ]] && args+=(--target "$(tr -d '[:space:]' <"$dir/target")")
    [[ -s "$dir/requires" ]] && args+=(--build-arg DIFF_SIDE=kiln)
    rm -f "$WORK/digest"
    if ! "$bin" "${args[@]}" >"$WORK/log-$case-$run" 2>&1; then
        log "$case: the $run build failed; its log:"; tail -20 "$WORK/log-$case-$run" >&2
        return 1
    fi
    cat "$WORK/digest"
}

# listing IMAGE: the flattened tree, one line per path, without timestamps.
listing() {
    local ref="$1" dir; dir="$(mktemp -d "$WORK/flat.XXXXXX")"
    skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$dir/layout:x" >/dev/null
    umoci raw unpack --rootless --image "$dir/layout:x" "$dir/root" >/dev/null 2>&1 ||
        umoci raw unpack --image "$dir/layout:x" "$dir/root" >/dev/null
    (cd "$dir/root" && find . -printf '%y %m %U %G %s %l %p\n' | sort -k7 |
        while read -r type mode uid gid size link path; do
            sum=-; [[ "$type" == f ]] && sum="$(sha256sum <"$path" | cut -c1-64)"
            echo "$type $mode $uid $gid $size $sum $link $path"
        done)
}

build_executor "$OLD" old
build_executor "$NEW" new

mapfile -t CASES < <(find "$REPO/testdata/corpus" -mindepth 2 -maxdepth 2 -name Dockerfile -printf '%h\n' | xargs -n1 basename | sort)
same=0 trees=0 failed=0 skipped=0
for case in "${CASES[@]}"; do
    # Cases whose build arguments name the differential test's loopback apt repository need that
    # server (executor/tests/differential/apt_repo.rs); apt's own logs carry the build time, so they
    # are compared with buildah there, under the harness's named allowlist, not here.
    if grep -qs '@APT_REPO@' "$REPO/testdata/corpus/$case/args"; then
        echo "skip  $case: needs the differential test's apt repository (compared with buildah there)"
        skipped=$((skipped + 1)); continue
    fi
    if ! a="$(build_case "$WORK/old" old1 "$case")" || ! b="$(build_case "$WORK/old" old2 "$case")" ||
        ! n="$(build_case "$WORK/new" new "$case")"; then
        echo "FAIL  $case: a build failed"; failed=$((failed + 1)); continue
    fi
    if [[ "$a" == "$b" ]]; then
        if [[ "$n" == "$a" ]]; then
            echo "same  $case: $n"; same=$((same + 1))
        else
            echo "FAIL  $case: old reproduces $a, new gives $n"; failed=$((failed + 1))
        fi
    elif diff <(listing "$REG/same/$case:old1") <(listing "$REG/same/$case:new") >"$WORK/tree.diff"; then
        echo "tree  $case: old is not reproducible ($a, $b); new's tree equals old's"; trees=$((trees + 1))
    else
        echo "FAIL  $case: old is not reproducible and new's tree differs:"; head -20 "$WORK/tree.diff"
        failed=$((failed + 1))
    fi
done
echo "same-output: ${#CASES[@]} cases: $same identical digests, $trees equal trees, $skipped skipped, $failed failed"
[[ "$failed" == 0 ]]

#!/usr/bin/env bash
# Meta-test of scripts/test.sh's switch guard (scripts/lib/guard.sh): a green CI must not be
# reachable through a skip switch or a test filter. Runs in a few seconds, needs nothing installed
# beyond bash and coreutils, and is run by scripts/test.sh as one of its first steps.
#
#   bash scripts/check-switches.sh
#
# 1. For every `refused` row of the switch table (the header of scripts/test.sh), with CI=true and
#    without CI: `NAME=VALUE bash scripts/test.sh` must exit non-zero within a few seconds, name the
#    variable, and call none of the tools a run installs or builds with. Those tools (apt-get,
#    cargo, podman, curl, bash, ...) are stubs on PATH here that record any call and fail, so a
#    guard that let a run through would show up (and would get no further than that call).
# 2. The same for KILN_ALLOW_SKIPS under CI, an unclassified KILN_ variable, test filter
#    arguments, and .ci/run (which must set CI=true itself); demo.sh --cluster --e2e clears
#    KILN_SKIP_E2E.
# 3. The guard itself, called directly, accepts a clean environment (with and without CI), allowed
#    and internal variables, and a developer's KILN_ALLOW_SKIPS=1 run (printing the switch loudly).
# 4. Every KILN_ name in the repository's .rs and .sh files has a row in the table, and every row
#    names a variable that something reads or sets.
# Prints "switch guard: N passed, M failed" and exits non-zero when M > 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/guard.sh
source scripts/lib/guard.sh
TABLE=scripts/test.sh
LIMIT_MS=5000

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); }
fail() { FAILED=$((FAILED + 1)); echo "switch guard: FAIL: $*" >&2; }

WORK="$(mktemp -d /tmp/kiln-check-switches.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
STUBS="$WORK/bin"
CALLS="$WORK/calls"
mkdir -p "$STUBS"
: >"$CALLS"
# `bash scripts/test.sh` (as .ci/run calls it) goes to the real bash; any other `bash X` (the
# scripts test.sh runs, this meta-test included) is recorded and fails like the other tools.
cat >"$STUBS/bash" <<EOF
#!/bin/sh
if [ "\$1" = scripts/test.sh ]; then exec "$BASH" "\$@"; fi
echo "bash \$*" >>"$CALLS"
exit 97
EOF
for tool in sh apt-get apt dpkg dpkg-query cargo rustc rustup podman buildah skopeo umoci curl \
    docker-registry registry kubectl helm go etcd kube-apiserver python3 shellcheck debootstrap; do
    printf '#!/bin/sh\necho "%s $*" >>"%s"\nexit 97\n' "$tool" "$CALLS" >"$STUBS/$tool"
done
chmod +x "$STUBS"/*
CLEAN_ENV=(env -i "PATH=$STUBS:/usr/local/bin:/usr/bin:/bin" "HOME=${HOME:-/root}")

indent() { sed 's/^/    /'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# expect_refused LABEL WORD... -- ENV-ASSIGNMENT... [-- SCRIPT-ARG...]: runs scripts/test.sh (or
# .ci/run when SCRIPT is set) in a clean environment plus the assignments; it must exit non-zero
# (not by the timeout) within LIMIT_MS, print every WORD, and call no stubbed tool.
expect_refused() {
    local label="$1"; shift
    local words=() assigns=() args=()
    while [[ $# -gt 0 && "$1" != -- ]]; do words+=("$1"); shift; done
    shift
    while [[ $# -gt 0 && "$1" != -- ]]; do assigns+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    args=("$@")
    local script="${SCRIPT:-scripts/test.sh}" out rc=0 t0 ms w problems=()
    : >"$CALLS"
    t0="$(now_ms)"
    out="$(timeout 20 "${CLEAN_ENV[@]}" "${assigns[@]}" "$BASH" "$script" "${args[@]}" 2>&1)" || rc=$?
    ms=$(($(now_ms) - t0))
    ((rc != 0)) || problems+=("exited 0")
    ((rc != 124)) || problems+=("timed out")
    ((ms <= LIMIT_MS)) || problems+=("took ${ms} ms (limit ${LIMIT_MS} ms)")
    for w in "${words[@]}"; do
        grep -qF -- "$w" <<<"$out" || problems+=("output does not name $w")
    done
    [[ ! -s "$CALLS" ]] || problems+=("called: $(paste -sd, "$CALLS")")
    if ((${#problems[@]})); then
        fail "$label: $(printf '%s; ' "${problems[@]}")output:"
        indent <<<"$out" >&2
    else
        pass
    fi
}

# expect_guard_passes LABEL WORD... -- ENV-ASSIGNMENT...: calls switch_guard directly (not the
# whole suite); it must return 0 and print every WORD.
expect_guard_passes() {
    local label="$1"; shift
    local words=() out rc=0 w problems=()
    while [[ $# -gt 0 && "$1" != -- ]]; do words+=("$1"); shift; done
    shift
    out="$(timeout 20 "${CLEAN_ENV[@]}" "$@" "$BASH" -c \
        'set -euo pipefail; source scripts/lib/guard.sh; switch_guard scripts/test.sh' 2>&1)" || rc=$?
    ((rc == 0)) || problems+=("exit code $rc")
    for w in "${words[@]}"; do
        grep -qF -- "$w" <<<"$out" || problems+=("output does not name $w")
    done
    if ((${#problems[@]})); then
        fail "$label: $(printf '%s; ' "${problems[@]}")output:"
        indent <<<"$out" >&2
    else
        pass
    fi
}

# A value like the one a developer would set (any value is refused: presence is what counts).
value_for() {
    case "$1" in
        KILN_LINT) echo 0 ;;
        KILN_DIFF_CASES) echo symlinks,modes ;;
        KILN_E2E_SCENARIOS) echo delete ;;
        KILN_BASE_ONLY) echo busybox ;;
        *) echo 1 ;;
    esac
}

# ---- 1. every refused switch, with and without CI -------------------------------------------------
mapfile -t REFUSED < <(switch_table "$TABLE" refused | cut -d' ' -f1)
((${#REFUSED[@]} >= 7)) || fail "the switch table lists only ${#REFUSED[@]} refused variables"
for name in "${REFUSED[@]}"; do
    v="$(value_for "$name")"
    expect_refused "CI=true $name=$v" "$name" "CI=true" -- CI=true "$name=$v"
    expect_refused "$name=$v (no CI)" "$name" KILN_ALLOW_SKIPS=1 -- "$name=$v"
done

# ---- 2. the opt-out under CI, bad opt-out values, unclassified names, arguments, .ci/run --------
expect_refused "CI=true KILN_ALLOW_SKIPS=1 KILN_DIFF_CASES=a" KILN_ALLOW_SKIPS KILN_DIFF_CASES -- \
    CI=true KILN_ALLOW_SKIPS=1 KILN_DIFF_CASES=a
expect_refused "KILN_ALLOW_SKIPS=yes" KILN_ALLOW_SKIPS -- KILN_ALLOW_SKIPS=yes
# Built from pieces so that the repository scan below does not find it.
unknown="KILN_""NO_SUCH_SWITCH"
expect_refused "CI=true $unknown=1" "$unknown" "not classified" -- CI=true "$unknown=1"
expect_refused "KILN_ALLOW_SKIPS=1 $unknown=1" "$unknown" -- KILN_ALLOW_SKIPS=1 "$unknown=1"
expect_refused "a test filter argument" "differential" "takes no arguments" -- CI=true -- differential
expect_refused "cargo test's --skip" "--skip" "takes no arguments" -- -- --skip e2e
SCRIPT=.ci/run expect_refused ".ci/run with KILN_SKIP_E2E=1 and no CI" KILN_SKIP_E2E "CI=true" -- \
    KILN_SKIP_E2E=1
SCRIPT=.ci/run expect_refused ".ci/run with KILN_ALLOW_SKIPS=1" KILN_ALLOW_SKIPS -- \
    KILN_ALLOW_SKIPS=1 KILN_DIFF_CASES=a

# demo.sh --cluster --e2e runs the end-to-end test with KILN_SKIP_E2E=0 whatever it inherits
# (test.sh sets it to 1 for cargo test --workspace).
if grep -q 'KILN_SKIP_E2E=0' scripts/k8s/demo-cluster.sh; then
    pass
else
    fail "scripts/k8s/demo-cluster.sh does not run the end-to-end test with KILN_SKIP_E2E=0"
fi

# ---- 3. what the guard accepts ------------------------------------------------------------------
expect_guard_passes "a clean environment under CI" -- CI=true
expect_guard_passes "a clean environment" --
expect_guard_passes "CI=false is not CI: KILN_ALLOW_SKIPS=1 allowed" KILN_DIFF_CASES -- \
    CI=false KILN_ALLOW_SKIPS=1 KILN_DIFF_CASES=a
expect_guard_passes "allowed variables under CI, printed" KILN_SKIP_APT KILN_REUSE_REGISTRY -- \
    CI=true KILN_SKIP_APT=1 KILN_REUSE_REGISTRY=1 KILN_TEST_REGISTRY=127.0.0.1:5000
expect_guard_passes "internal variables under CI" -- CI=true "KILN_PODMAN_FLAGS=--runtime runc"
expect_guard_passes "a developer's KILN_ALLOW_SKIPS=1 run, printed loudly" \
    "does NOT run every test" KILN_DIFF_CASES KILN_LINT -- \
    KILN_ALLOW_SKIPS=1 KILN_DIFF_CASES=symlinks KILN_LINT=0

# ---- 4. the table against the repository ---------------------------------------------------------
mapfile -t CLASSIFIED < <(switch_table "$TABLE" | cut -d' ' -f1 | LC_ALL=C sort)
scan() {
    grep -rhoE --include='*.rs' --include='*.sh' --exclude-dir=target --exclude-dir=.git \
        --exclude=check-switches.sh --exclude=test.sh 'KILN_[A-Z0-9][A-Z0-9_]*' . || true
    # test.sh's own code, not its table.
    grep -v '^#' "$TABLE" | grep -oE 'KILN_[A-Z0-9][A-Z0-9_]*' || true
}
mapfile -t FOUND < <(scan | LC_ALL=C sort -u)
missing="$(LC_ALL=C comm -23 <(printf '%s\n' "${FOUND[@]}") <(printf '%s\n' "${CLASSIFIED[@]}"))"
stale="$(LC_ALL=C comm -13 <(printf '%s\n' "${FOUND[@]}") <(printf '%s\n' "${CLASSIFIED[@]}"))"
dups="$(printf '%s\n' "${CLASSIFIED[@]}" | uniq -d)"
if [[ -n "$missing" ]]; then
    fail "KILN_ variables used in the repository but not classified in $TABLE's switch table: $(tr '\n' ' ' <<<"$missing")"
else
    pass
fi
if [[ -n "$stale" ]]; then
    fail "rows of $TABLE's switch table that nothing reads or sets any more: $(tr '\n' ' ' <<<"$stale")"
else
    pass
fi
if [[ -n "$dups" ]]; then fail "rows classified twice in $TABLE: $(tr '\n' ' ' <<<"$dups")"; else pass; fi

echo "switch guard: $PASSED passed, $FAILED failed"
((FAILED == 0))

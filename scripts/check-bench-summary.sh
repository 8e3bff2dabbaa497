#!/usr/bin/env bash
# Self-check of scripts/bench.sh's table and targets (`bench.sh --summarize RUNS.tsv`) on fake raw
# files, so that the rules hold without running a benchmark: a target whose compared tool failed
# is "NOT EVALUATED" with the reason, failed runs show in the table, and the exit status is
# non-zero when a target is missed or not evaluated or a run failed (0 with --report-only), and
# non-zero whatever the flags when the raw file is empty or malformed. Needs bash and python3;
# takes a few seconds. Run by scripts/test.sh.
#
#   bash scripts/check-bench-summary.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/scripts/bench.sh"
WORK="$(mktemp -d /tmp/kiln-check-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0
HEADER=$'workload\ttool\trun\tseconds\texit\tstatus\tpeak_rss_kb\tnote'

indent() { sed 's/^/    /'; }
# run W TOOL RUN SECONDS EXIT STATUS PEAK NOTE: one raw line.
run() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@"; }
# ok_runs W TOOL SECONDS PEAK_KB: three successful runs.
ok_runs() { local r; for r in 1 2 3; do run "$1" "$2" "$r" "$3" 0 ok "$4" ""; done; }
# w2_steps: kiln's step lines for w2 runs 1-3 (one-file steps well under 0.3 s).
w2_steps() {
    local r s
    echo $'workload\trun\tkiln step line'
    for r in 1 2 3; do
        for s in 2 3 4 5 6; do printf 'w2\t%s\tstep %s/6 done in 0.21s (layer 1 KiB, snapshot 0.12s)\n' "$r" "$s"; done
    done
}
# A run where every target is met: kiln well ahead of the three other tools everywhere, and w7's
# two stages together in 0.55x the time of each built alone, one after the other.
all_good() {
    echo "$HEADER"
    local w
    for w in w1 w2 w3 w4 w5 w6 w7; do
        ok_runs "$w" kiln 1.00 20000
        ok_runs "$w" buildah 10.00 40000
        ok_runs "$w" kaniko 10.00 ""
        ok_runs "$w" buildkit 2.00 60000
    done
    all_good_w7_alone
}
all_good_w7_alone() {
    ok_runs w7-left kiln 0.90 20000
    ok_runs w7-right kiln 0.92 20000
}

# check LABEL EXPECT-RC FILE [BENCH-FLAG...] -- GREP-PATTERN... [-- ABSENT-PATTERN...]: runs
# bench.sh --summarize FILE; EXPECT-RC is 0 or "nonzero"; every pattern (grep -E) must be in the
# output, no ABSENT-PATTERN may be.
check() {
    local label="$1" expect="$2" file="$3"; shift 3
    local flags=() want=() absent=() out rc=0 p problems=()
    while [[ $# -gt 0 && "$1" != -- ]]; do flags+=("$1"); shift; done
    shift
    while [[ $# -gt 0 && "$1" != -- ]]; do want+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    absent=("$@")
    out="$(bash "$BENCH" --summarize "$file" "${flags[@]}" 2>&1)" || rc=$?
    if [[ "$expect" == 0 ]]; then
        ((rc == 0)) || problems+=("exit $rc, expected 0")
    else
        ((rc != 0)) || problems+=("exit 0, expected non-zero")
    fi
    for p in "${want[@]}"; do grep -qE -- "$p" <<<"$out" || problems+=("no line matching: $p"); done
    for p in "${absent[@]}"; do ! grep -qE -- "$p" <<<"$out" || problems+=("a line matches: $p"); done
    if ((${#problems[@]})); then
        FAILED=$((FAILED + 1))
        echo "bench summary check: FAIL: $label: $(printf '%s; ' "${problems[@]}")output:" >&2
        indent <<<"$out" >&2
    else
        PASSED=$((PASSED + 1))
    fi
}

# 1. kaniko failed every w6 run (its known MANIFEST_INVALID bug): the w6 target against kaniko is
#    not evaluated, the table shows the failed runs, the exit is non-zero; 0 with --report-only.
{
    all_good | grep -v $'^w6\tkaniko'
    for r in 1 2 3; do run w6 kaniko "$r" 2.10 1 failed 40000 ""; done
} >"$WORK/w6.runs.tsv"
w2_steps >"$WORK/w6.steps.tsv"
check "kaniko failed every w6 run" nonzero "$WORK/w6.runs.tsv" -- \
    '^  NOT EVALUATED  w6: kiln <= 0\.5x kaniko: kaniko: 3 of 3 runs failed \(run 1 exit 1, run 2 exit 1, run 3 exit 1\)$' \
    '^w6 .* kaniko +3 runs, 3 failed ' \
    '^  w6: kaniko: 3 of 3 runs failed' \
    '^  PASS +w6: kiln <= 0\.7x buildah' \
    '1 not evaluated'
check "the same with --report-only" 0 "$WORK/w6.runs.tsv" --report-only -- \
    '^  NOT EVALUATED  w6: kiln <= 0\.5x kaniko' '--report-only: exit 0'

# 2. Everything met.
all_good >"$WORK/good.runs.tsv"
w2_steps >"$WORK/good.steps.tsv"
check "every target met" 0 "$WORK/good.runs.tsv" -- \
    '^  PASS +w2: snapshot of a one-file RUN on 100k files < 0\.3 s' \
    '^  PASS +w3: kiln peak RSS < 150 MB' \
    '^workload .* kiln/kaniko +kiln/buildah +kiln/buildkit$' \
    '^w1 .* kiln +3 runs +1\.00 +20 +0\.10x +0\.10x +0\.50x$' \
    '^w4 .* buildkit +3 runs +2\.00 +59 ' \
    '^  PASS +w1: kiln <= 0\.8x buildkit +0\.50x +\(met by 1\.6x\)' \
    '^  PASS +w5: kiln <= 0\.8x buildkit' \
    '^w7-left stage left alone .* kiln +3 runs +0\.90 ' \
    '^w7-right stage right alone .* kiln +3 runs +0\.92 ' \
    '^w7 \(kiln\): stages together 1\.00 s; alone 0\.90 \+ 0\.92 = 1\.82 s$' \
    '^  PASS +w7: kiln <= 0\.6x \(w7-left \+ w7-right\) +0\.55x +\(met by 1\.1x\)' \
    '^targets \(issue 7: .*issue 16: ' \
    '^bench: 24 target\(s\): 24 met, 0 missed, 0 not evaluated; 0 tool/workload' -- \
    'NOT EVALUATED' '^  FAIL' '^w7-left .* (buildah|kaniko|buildkit) '

# 3. One kiln run of three failed: shown, its workload's targets not evaluated, non-zero.
{
    all_good | grep -v $'^w1\tkiln\t2'
    run w1 kiln 2 0.40 101 failed 20000 ""
} >"$WORK/kiln-failed.runs.tsv"
w2_steps >"$WORK/kiln-failed.steps.tsv"
check "one failed kiln run" nonzero "$WORK/kiln-failed.runs.tsv" -- \
    '^w1 .* kiln +3 runs, 1 failed ' \
    '^  NOT EVALUATED  w1: kiln <= 0\.5x kaniko: kiln: 1 of 3 runs failed \(run 2 exit 101\)' \
    '^  NOT EVALUATED  w1: kiln <= 0\.7x buildah: kiln: 1 of 3 runs failed'

# 4. A missed target.
{
    all_good | grep -v $'^w4\tbuildah'
    ok_runs w4 buildah 1.20 40000
} >"$WORK/missed.runs.tsv"
w2_steps >"$WORK/missed.steps.tsv"
check "a missed target" nonzero "$WORK/missed.runs.tsv" -- \
    '^  FAIL +w4: kiln <= 0\.7x buildah +0\.83x +\(missed by 1\.2x\)' '1 missed, 0 not evaluated'

# 5. kaniko unavailable, a priming failure, a timeout, no step file, no peak measured.
{
    echo "$HEADER"
    ok_runs w2 kiln 1.00 20000
    run w3 kiln 1 1.00 0 ok "" ""
    ok_runs w4 kiln 1.00 20000
    run w4 kaniko - "" "" unavailable "" "scripts/kaniko.sh failed: no kaniko image"
    ok_runs w5 kiln 1.00 20000
    run w5 buildah prime "" 125 prime-failed "" "the first (cached) build exited 125 (log: x)"
    ok_runs w6 kiln 1.00 20000
    run w6 buildah 1 900.00 124 timeout "" "killed after 900s"
} >"$WORK/missing.runs.tsv"
check "tools that did not run, and missing measurements" nonzero "$WORK/missing.runs.tsv" -- \
    '^  NOT EVALUATED  w2: snapshot of a one-file RUN on 100k files < 0\.3 s \(max\): no step file' \
    "^  NOT EVALUATED  w3: kiln peak RSS < 150 MB: kiln's peak RSS not measured in run\(s\) 1" \
    '^  NOT EVALUATED  w4: kiln <= 0\.5x kaniko: kaniko unavailable \(scripts/kaniko\.sh failed' \
    '^w4 .* kaniko +not run: unavailable' \
    '^  NOT EVALUATED  w5: kiln <= 0\.7x buildah: buildah priming failed \(the first \(cached\) build exited 125' \
    '^  NOT EVALUATED  w6: kiln <= 0\.7x buildah: buildah: 1 of 1 runs failed \(run 1 timed out\)'

# 6. A raw file cut short (the benchmark stopped during w2's buildah runs): the plan line says
#    what is missing, so it cannot pass for a complete run.
{
    echo "$HEADER"
    echo "# plan: workloads=w1,w2,w3 tools=kiln,buildah runs=3"
    ok_runs w1 kiln 1.00 20000
    ok_runs w1 buildah 10.00 40000
    ok_runs w2 kiln 1.00 20000
    run w2 buildah 1 10.00 0 ok 40000 ""
} >"$WORK/short.runs.tsv"
w2_steps >"$WORK/short.steps.tsv"
check "a raw file cut short" nonzero "$WORK/short.runs.tsv" -- \
    '^  NOT EVALUATED  w2: kiln <= 0\.7x buildah: buildah: 1 of 3 planned runs recorded' \
    '^w2 .* buildah +1 run of 3 planned ' \
    '^  NOT EVALUATED  w3: kiln <= 0\.7x buildah: kiln: no runs recorded .*; buildah: no runs recorded' \
    '^  PASS +w1: kiln <= 0\.7x buildah'

# 7. BuildKit could not start (every row unavailable) in one file; in another, one BuildKit run of
#    w4 failed: its targets are not evaluated, the others are, and the exit is non-zero.
{
    all_good | grep -v $'\tbuildkit\t'
    for w in w1 w2 w3 w4 w5 w6 w7; do
        run "$w" buildkit - "" "" unavailable "" "scripts/buildkit.sh start failed: buildkitd exited during startup"
    done
} >"$WORK/bk-missing.runs.tsv"
w2_steps >"$WORK/bk-missing.steps.tsv"
check "BuildKit unavailable" nonzero "$WORK/bk-missing.runs.tsv" -- \
    '^  NOT EVALUATED  w1: kiln <= 0\.8x buildkit: buildkit unavailable \(scripts/buildkit\.sh start failed: buildkitd exited during startup\)$' \
    '^  NOT EVALUATED  w7: kiln <= 0\.8x buildkit: buildkit unavailable' \
    '^w3 .* buildkit +not run: unavailable' \
    '^w1 .* kiln +3 runs +1\.00 +20 +0\.10x +0\.10x +-$' \
    '^  PASS +w1: kiln <= 0\.7x buildah' \
    '^  PASS +w7: kiln <= 0\.6x \(w7-left \+ w7-right\)' \
    '17 met, 0 missed, 7 not evaluated' -- \
    '^  PASS +w[0-9]: kiln <= 0\.8x buildkit'
{
    all_good | grep -v $'^w4\tbuildkit\t2'
    run w4 buildkit 2 30.00 1 failed 80000 ""
} >"$WORK/bk-failed.runs.tsv"
w2_steps >"$WORK/bk-failed.steps.tsv"
check "one failed BuildKit run" nonzero "$WORK/bk-failed.runs.tsv" -- \
    '^  NOT EVALUATED  w4: kiln <= 0\.8x buildkit: buildkit: 1 of 3 runs failed \(run 2 exit 1\)$' \
    '^w4 .* buildkit +3 runs, 1 failed +2\.00 ' \
    '^  w4: buildkit: 1 of 3 runs failed' \
    '^  PASS +w4: kiln <= 0\.7x buildah' \
    '^  PASS +w5: kiln <= 0\.8x buildkit' \
    '23 met, 0 missed, 1 not evaluated'

# 8. w7 against its stages alone: missed; not evaluated when a stage alone failed a run or when
#    the plan had w7 for kiln but the stages alone were never recorded.
{
    all_good | grep -v $'^w7\tkiln\t'
    ok_runs w7 kiln 1.44 20000
} >"$WORK/w7-missed.runs.tsv"
w2_steps >"$WORK/w7-missed.steps.tsv"
check "w7 missed" nonzero "$WORK/w7-missed.runs.tsv" -- \
    '^  FAIL +w7: kiln <= 0\.6x \(w7-left \+ w7-right\) +0\.79x +\(missed by 1\.3x\)' \
    '^w7 \(kiln\): stages together 1\.44 s; alone 0\.90 \+ 0\.92 = 1\.82 s$' \
    '1 missed, 0 not evaluated'
{
    all_good | grep -v $'^w7-right\tkiln\t2'
    run w7-right kiln 2 0.50 101 failed 20000 ""
} >"$WORK/w7-failed.runs.tsv"
w2_steps >"$WORK/w7-failed.steps.tsv"
check "a w7 stage alone failed" nonzero "$WORK/w7-failed.runs.tsv" -- \
    '^  NOT EVALUATED  w7: kiln <= 0\.6x \(w7-left \+ w7-right\): w7-right: kiln: 1 of 3 runs failed \(run 2 exit 101\)$' \
    '^w7-right .* kiln +3 runs, 1 failed ' \
    '^  w7-right: kiln: 1 of 3 runs failed' \
    '^  PASS +w7: kiln <= 0\.8x buildkit'
{
    echo "$HEADER"
    echo "# plan: workloads=w7 tools=kiln,buildkit runs=3"
    ok_runs w7 kiln 1.00 20000
    ok_runs w7 buildkit 2.00 60000
    ok_runs w7-left kiln 0.90 20000
} >"$WORK/w7-short.runs.tsv"
check "w7's stages alone not all recorded" nonzero "$WORK/w7-short.runs.tsv" -- \
    '^  NOT EVALUATED  w7: kiln <= 0\.6x \(w7-left \+ w7-right\): w7-right: kiln: no runs recorded' \
    '^w7-right .* kiln +no runs recorded' \
    '^  PASS +w7: kiln <= 0\.8x buildkit' -- \
    '^w7-(left|right) .* buildkit '

# 9. Nothing to summarize, or not a raw file: non-zero even with --report-only.
echo "$HEADER" >"$WORK/empty.runs.tsv"
check "an empty raw file" nonzero "$WORK/empty.runs.tsv" --report-only -- 'no runs recorded'
printf 'w1\tkiln\t1\tfast\t0\tok\t\t\n' >"$WORK/bad.runs.tsv"
check "a malformed raw file" nonzero "$WORK/bad.runs.tsv" --report-only -- 'must be numbers' 'summary failed'

echo "bench summary check: $PASSED passed, $FAILED failed"
((FAILED == 0))

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
# all_steps: kiln's step lines for w2 runs 1-3 (one-file steps well under 0.3 s) and w8 runs 1-3
# (the two steps before `COPY . /src` cache hits, it and the step after it misses).
all_steps() {
    local r s
    echo $'workload\trun\tkiln step line'
    for r in 1 2 3; do
        for s in 2 3 4 5 6; do printf 'w2\t%s\tstep %s/6 done in 0.21s (layer 1 KiB, snapshot 0.12s)\n' "$r" "$s"; done
    done
    for r in 1 2 3; do w8_steps "$r" hit hit miss miss; done
}
# w8_steps RUN RESULT1 RESULT2 RESULT3 RESULT4: kiln's lines for w8's four steps (hit or miss).
w8_steps() {
    local r="$1" n=0 text res
    shift
    local texts=("COPY deps.txt /deps/deps.txt" "RUN cd /deps && while read -r name version; do (...) done < deps.txt"
        "COPY . /src" "RUN mkdir -p /app && cd /src && find . -type f | sort | xargs sha256sum > /app/SOURCES.sha256")
    for res in "$@"; do
        text="${texts[$n]}"
        n=$((n + 1))
        printf 'w8\t%s\tstep %s/4: %s\n' "$r" "$n" "$text"
        if [[ "$res" == hit ]]; then
            printf 'w8\t%s\tstep %s/4 done in 0.01s (cache hit, layer sha256:%064d)\n' "$r" "$n" "$n"
        else
            printf 'w8\t%s\tstep %s/4 done in 0.02s (cache miss, layer sha256:00000000000%s (2.1 KiB), snapshot 0.00s)\n' "$r" "$n" "$n"
        fi
    done
}
# A run where every target is met: kiln well ahead of the three other tools everywhere, w7's two
# stages together in 0.55x the time of each built alone, one after the other, w9 and w10 within
# 1.3x of their floor, kiln-warmer at a tenth of kaniko's warmer.
all_good() {
    echo "$HEADER"
    local w
    for w in w1 w2 w3 w4 w5 w6 w7 w8 w9 w10; do
        ok_runs "$w" kiln 1.00 20000
        ok_runs "$w" buildah 10.00 40000
        ok_runs "$w" kaniko 10.00 ""
        ok_runs "$w" buildkit 2.00 60000
    done
    all_good_w7_alone
    ok_runs w9 floor 0.90 21000
    ok_runs w10 floor 0.80 23000
    ok_runs w11 kiln 1.00 11000
    ok_runs w11 kaniko 10.00 30000
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
all_steps >"$WORK/w6.steps.tsv"
check "kaniko failed every w6 run" nonzero "$WORK/w6.runs.tsv" -- \
    '^  NOT EVALUATED  w6: kiln <= 0\.5x kaniko: kaniko: 3 of 3 runs failed \(run 1 exit 1, run 2 exit 1, run 3 exit 1\)$' \
    '^w6 .* kaniko +3 runs, 3 failed ' \
    '^  w6: kaniko: 3 of 3 runs failed' \
    '^  PASS +w6: kiln <= 0\.5x buildah' \
    '1 not evaluated'
check "the same with --report-only" 0 "$WORK/w6.runs.tsv" --report-only -- \
    '^  NOT EVALUATED  w6: kiln <= 0\.5x kaniko' '--report-only: exit 0'

# 2. Everything met.
all_good >"$WORK/good.runs.tsv"
all_steps >"$WORK/good.steps.tsv"
check "every target met" 0 "$WORK/good.runs.tsv" -- \
    '^  PASS +w2: snapshot of a one-file RUN on 100k files < 0\.3 s' \
    '^  PASS +w3: kiln peak RSS < 150 MB' \
    '^workload .* kiln/kaniko +kiln/buildah +kiln/buildkit$' \
    '^w1 .* kiln +3 runs +1\.00 +[0-9.]+-[0-9.]+ +20 +0\.10x +0\.10x +0\.50x$' \
    '^w4 .* buildkit +3 runs +2\.00 +[0-9.]+-[0-9.]+ +59 ' \
    '^  PASS +w1: kiln <= 0\.8x buildkit +0\.50x +\(met by 1\.6x\)' \
    '^  PASS +w5: kiln <= 0\.8x buildkit' \
    '^w7-left stage left alone .* kiln +3 runs +0\.90 ' \
    '^w7-right stage right alone .* kiln +3 runs +0\.92 ' \
    '^w7 \(kiln\): stages together 1\.00 s; alone 0\.90 \+ 0\.92 = 1\.82 s$' \
    '^  PASS +w7: kiln <= 0\.6x \(w7-left \+ w7-right\) +0\.55x +\(met by 1\.1x\)' \
    '^  PASS +w8: kiln <= 0\.8x buildkit +0\.50x' \
    '^  PASS +w8: kiln reruns only the steps after the changed COPY +\(every run: steps 1-2 cache hits, steps 3-4 cache misses\)$' \
    '^w9 .* floor +3 runs +0\.90 +[0-9.]+-[0-9.]+ +21 *$' \
    '^  PASS +w9: kiln <= 1\.3x floor +1\.11x +\(met by 1\.2x\)' \
    '^w9 \(kiln\): 1\.00 s; floor \(skopeo copy .*\): 0\.90 s$' \
    '^  PASS +w10: kiln <= 1\.3x floor +1\.25x' \
    '^w11 .* kiln +3 runs +1\.00 +[0-9.]+-[0-9.]+ +11 +0\.10x +- +-$' \
    '^  PASS +w11: kiln-warmer <= 0\.5x kaniko warmer +0\.10x' \
    '^targets \(issue 7: .*issue 16: ' \
    '^bench: 43 target\(s\): 43 met, 0 missed, 0 not evaluated; 0 tool/workload' -- \
    'NOT EVALUATED' '^  FAIL' '^w7-left .* (buildah|kaniko|buildkit) ' \
    'w(9|10): kiln <= 0\.[578]x' 'w11: kiln(-warmer)? <= 0\.[78]x' '^w11 .* (buildah|buildkit) '

# 3. One kiln run of three failed: shown, its workload's targets not evaluated, non-zero.
{
    all_good | grep -v $'^w1\tkiln\t2'
    run w1 kiln 2 0.40 101 failed 20000 ""
} >"$WORK/kiln-failed.runs.tsv"
all_steps >"$WORK/kiln-failed.steps.tsv"
check "one failed kiln run" nonzero "$WORK/kiln-failed.runs.tsv" -- \
    '^w1 .* kiln +3 runs, 1 failed ' \
    '^  NOT EVALUATED  w1: kiln <= 0\.5x kaniko: kiln: 1 of 3 runs failed \(run 2 exit 101\)' \
    '^  NOT EVALUATED  w1: kiln <= 0\.5x buildah: kiln: 1 of 3 runs failed'

# 4. A missed target.
{
    all_good | grep -v $'^w4\tbuildah'
    ok_runs w4 buildah 1.20 40000
} >"$WORK/missed.runs.tsv"
all_steps >"$WORK/missed.steps.tsv"
check "a missed target" nonzero "$WORK/missed.runs.tsv" -- \
    '^  FAIL +w4: kiln <= 0\.5x buildah +0\.83x +\(missed by 1\.7x\)' '1 missed, 0 not evaluated'

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
    '^  NOT EVALUATED  w5: kiln <= 0\.5x buildah: buildah priming failed \(the first \(cached\) build exited 125' \
    '^  NOT EVALUATED  w6: kiln <= 0\.5x buildah: buildah: 1 of 1 runs failed \(run 1 timed out\)'

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
all_steps >"$WORK/short.steps.tsv"
check "a raw file cut short" nonzero "$WORK/short.runs.tsv" -- \
    '^  NOT EVALUATED  w2: kiln <= 0\.5x buildah: buildah: 1 of 3 planned runs recorded' \
    '^w2 .* buildah +1 run of 3 planned ' \
    '^  NOT EVALUATED  w3: kiln <= 0\.5x buildah: kiln: no runs recorded .*; buildah: no runs recorded' \
    '^  PASS +w1: kiln <= 0\.5x buildah'

# 7. BuildKit could not start (every row unavailable) in one file; in another, one BuildKit run of
#    w4 failed: its targets are not evaluated, the others are, and the exit is non-zero.
{
    all_good | grep -v $'\tbuildkit\t'
    for w in w1 w2 w3 w4 w5 w6 w7 w8 w9 w10; do
        run "$w" buildkit - "" "" unavailable "" "scripts/buildkit.sh start failed: buildkitd exited during startup"
    done
} >"$WORK/bk-missing.runs.tsv"
all_steps >"$WORK/bk-missing.steps.tsv"
check "BuildKit unavailable" nonzero "$WORK/bk-missing.runs.tsv" -- \
    '^  NOT EVALUATED  w1: kiln <= 0\.8x buildkit: buildkit unavailable \(scripts/buildkit\.sh start failed: buildkitd exited during startup\)$' \
    '^  NOT EVALUATED  w7: kiln <= 0\.8x buildkit: buildkit unavailable' \
    '^w3 .* buildkit +not run: unavailable' \
    '^w1 .* kiln +3 runs +1\.00 +[0-9.]+-[0-9.]+ +20 +0\.10x +0\.10x +-$' \
    '^  PASS +w1: kiln <= 0\.5x buildah' \
    '^  PASS +w7: kiln <= 0\.6x \(w7-left \+ w7-right\)' \
    '35 met, 0 missed, 8 not evaluated' -- \
    '^  PASS +w[0-9]+: kiln <= 0\.8x buildkit' '^  NOT EVALUATED  w(9|10|11): kiln <= 0\.8x buildkit'
{
    all_good | grep -v $'^w4\tbuildkit\t2'
    run w4 buildkit 2 30.00 1 failed 80000 ""
} >"$WORK/bk-failed.runs.tsv"
all_steps >"$WORK/bk-failed.steps.tsv"
check "one failed BuildKit run" nonzero "$WORK/bk-failed.runs.tsv" -- \
    '^  NOT EVALUATED  w4: kiln <= 0\.8x buildkit: buildkit: 1 of 3 runs failed \(run 2 exit 1\)$' \
    '^w4 .* buildkit +3 runs, 1 failed +2\.00 ' \
    '^  w4: buildkit: 1 of 3 runs failed' \
    '^  PASS +w4: kiln <= 0\.5x buildah' \
    '^  PASS +w5: kiln <= 0\.8x buildkit' \
    '42 met, 0 missed, 1 not evaluated'

# 8. w7 against its stages alone: missed; not evaluated when a stage alone failed a run or when
#    the plan had w7 for kiln but the stages alone were never recorded.
{
    all_good | grep -v $'^w7\tkiln\t'
    ok_runs w7 kiln 1.44 20000
} >"$WORK/w7-missed.runs.tsv"
all_steps >"$WORK/w7-missed.steps.tsv"
check "w7 missed" nonzero "$WORK/w7-missed.runs.tsv" -- \
    '^  FAIL +w7: kiln <= 0\.6x \(w7-left \+ w7-right\) +0\.79x +\(missed by 1\.3x\)' \
    '^w7 \(kiln\): stages together 1\.44 s; alone 0\.90 \+ 0\.92 = 1\.82 s$' \
    '1 missed, 0 not evaluated'
{
    all_good | grep -v $'^w7-right\tkiln\t2'
    run w7-right kiln 2 0.50 101 failed 20000 ""
} >"$WORK/w7-failed.runs.tsv"
all_steps >"$WORK/w7-failed.steps.tsv"
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

# 9. w8's cache target: a rebuild that ran the dependency step again, or did not see the source
#    change, fails it; without kiln's step lines it is not evaluated. When every step of a stage
#    hits, kiln logs "(cache hit, ...)" on the step lines and no "done in" line: read as hits.
all_good >"$WORK/w8-rerun.runs.tsv"
{
    all_steps | grep -v $'^w8\t2\t'
    w8_steps 2 hit miss miss miss
} >"$WORK/w8-rerun.steps.tsv"
check "w8 reran the dependency step" nonzero "$WORK/w8-rerun.runs.tsv" -- \
    '^  FAIL +w8: kiln reruns only the steps after the changed COPY +\(run 2: step 2/4 \(RUN cd /deps && while read -r name ve\.\.\.\) cache miss, expected cache hit\)$' \
    '^  PASS +w8: kiln <= 0\.8x buildkit' '42 met, 1 missed, 0 not evaluated'
all_good >"$WORK/w8-same.runs.tsv"
{
    all_steps | grep -v $'^w8\t3\t'
    # The skip-base form: step lines with the hit on them, no "done in" lines.
    for n in 1 2 3 4; do
        printf 'w8\t3\tstep %s/4: %s (cache hit, layer sha256:%064d)\n' "$n" \
            "$( ((n == 3)) && echo 'COPY . /src' || echo "RUN step $n")" "$n"
    done
} >"$WORK/w8-same.steps.tsv"
check "w8 rebuild did not see the source change" nonzero "$WORK/w8-same.runs.tsv" -- \
    '^  FAIL +w8: kiln reruns only the steps after the changed COPY +\(run 3: step 3/4 \(COPY \. /src\) cache hit, expected cache miss; run 3: step 4/4 \(RUN step 4\) cache hit, expected cache miss\)$'
all_good >"$WORK/w8-nosteps.runs.tsv"
all_steps | grep -v $'^w8\t1\t.*: COPY \. /src$' >"$WORK/w8-nosteps.steps.tsv"
check "w8 without its step lines" nonzero "$WORK/w8-nosteps.runs.tsv" -- \
    "^  NOT EVALUATED  w8: kiln reruns only the steps after the changed COPY: no step lines of kiln with 'COPY \. /src' for run\(s\) 1$"
all_good >"$WORK/w8-nofile.runs.tsv"
check "w8 without a step file" nonzero "$WORK/w8-nofile.runs.tsv" -- \
    '^  NOT EVALUATED  w8: kiln reruns only the steps after the changed COPY: no step file .* for run\(s\) 1, 2, 3$'

# 9b. --w8-cache: recorded in the raw file, named on the w8 rows and in a line under them; without
#     the line, local (the default). The older "# w8-buildkit-cache:" line: registry as registry,
#     local as BuildKit's local state against kiln's and kaniko's registry caches.
all_good | sed '1a # w8-cache: registry' >"$WORK/w8-registry.runs.tsv"
all_good | sed '1a # w8-buildkit-cache: registry' >"$WORK/w8-old-registry.runs.tsv"
all_good | sed '1a # w8-buildkit-cache: local' >"$WORK/w8-old-local.runs.tsv"
all_good | sed '1a # w8-cache: local' >"$WORK/w8-local.runs.tsv"
for f in w8-registry w8-old-registry w8-old-local w8-local; do all_steps >"$WORK/$f.steps.tsv"; done
for f in w8-registry w8-old-registry; do
    check "w8 on registry caches ($f)" 0 "$WORK/$f.runs.tsv" -- \
        '^w8 source change, registry caches +buildkit +3 runs ' \
        '^w8: kiln and kaniko on a registry cache, nothing kept locally; BuildKit a registry cache \(mode=max\) with a fresh buildkitd' \
        '^  PASS +w8: kiln <= 0\.8x buildkit' -- \
        'source change, local caches' "every tool's cache kept locally"
done
for f in w8-local good; do
    check "w8 on local caches ($f)" 0 "$WORK/$f.runs.tsv" -- \
        '^w8 source change, local caches +kiln +3 runs ' \
        "^w8: every tool's cache kept locally: kiln and kaniko an oci: cache repository" -- \
        'registry caches' 'a registry cache \(mode=max\)'
done
check "w8 of an older bench.sh, BuildKit's local state" 0 "$WORK/w8-old-local.runs.tsv" -- \
    '^w8 source change, BK local cache +buildkit +3 runs ' \
    "^w8: kiln and kaniko on a registry cache, nothing kept locally; BuildKit its daemon's state" -- \
    'source change, local caches' 'registry caches'

# 10. The floors: w9 missed; w10's floor could not be primed (kiln's first push not copied) in one
#     file, and in another planned but never recorded; only kiln's floor target for w9 and w10.
{
    all_good | grep -v $'^w9\tkiln\t'
    ok_runs w9 kiln 2.00 20000
} >"$WORK/floor-missed.runs.tsv"
all_steps >"$WORK/floor-missed.steps.tsv"
check "w9 missed its floor" nonzero "$WORK/floor-missed.runs.tsv" -- \
    '^  FAIL +w9: kiln <= 1\.3x floor +2\.22x +\(missed by 1\.7x\)$' \
    '^w9 .* kiln +3 runs +2\.00 +[0-9.]+-[0-9.]+ +20 +0\.20x +0\.20x +1\.00x$' '42 met, 1 missed, 0 not evaluated'
{
    all_good | grep -v $'^w10\tfloor\t'
    run w10 floor prime "" 1 prime-failed "" "skopeo copy of kiln's first push (x) into an OCI layout exited 1 (log: y)"
} >"$WORK/floor-prime.runs.tsv"
all_steps >"$WORK/floor-prime.steps.tsv"
check "w10's floor not primed" nonzero "$WORK/floor-prime.runs.tsv" -- \
    "^  NOT EVALUATED  w10: kiln <= 1\.3x floor: floor priming failed \(skopeo copy of kiln's first push" \
    '^w10 .* floor +not run: priming failed' '42 met, 0 missed, 1 not evaluated'
{
    echo "$HEADER"
    echo "# plan: workloads=w9,w10,w11 tools=kiln,buildah,kaniko,buildkit runs=3"
    all_good | grep -E $'^w(9|10|11)\t' | grep -v $'^w10\tfloor\t'
} >"$WORK/floor-short.runs.tsv"
check "w10's floor planned, not recorded" nonzero "$WORK/floor-short.runs.tsv" -- \
    '^  NOT EVALUATED  w10: kiln <= 1\.3x floor: floor: no runs recorded \(the benchmark stopped before them\?\)$' \
    '^w10 .* floor +no runs recorded' '^  PASS +w9: kiln <= 1\.3x floor' \
    '^bench: 6 target\(s\): 5 met, 0 missed, 1 not evaluated' -- \
    '^w11 .* (buildah|buildkit) '

# 11. w11 is kiln's and kaniko's only: a plan with all four tools expects no buildah or BuildKit
#     runs of it; without kiln in the plan, w9 expects no floor.
{
    echo "$HEADER"
    echo "# plan: workloads=w11 tools=kiln,buildah,kaniko,buildkit runs=3"
    ok_runs w11 kiln 1.00 11000
    ok_runs w11 kaniko 10.00 30000
} >"$WORK/w11.runs.tsv"
check "w11: the warmers only" 0 "$WORK/w11.runs.tsv" -- \
    '^  PASS +w11: kiln-warmer <= 0\.5x kaniko warmer +0\.10x' \
    '^bench: 2 target\(s\): 2 met, 0 missed, 0 not evaluated; 0 tool' -- \
    '^w11 .* (buildah|buildkit) ' 'no runs recorded'
{
    echo "$HEADER"
    echo "# plan: workloads=w9 tools=buildah runs=3"
    ok_runs w9 buildah 10.00 40000
} >"$WORK/w9-buildah.runs.tsv"
check "w9 without kiln: no floor" 0 "$WORK/w9-buildah.runs.tsv" -- \
    '^w9 .* buildah +3 runs ' '^  none for these workloads and tools' -- '^w9 .* floor ' 'NOT EVALUATED'

# 13. Issue 16's memory target holds on every workload (not only w3's), and each median has its
#     runs' spread (min-max) beside it.
{
    all_good | grep -v $'^w2\tkiln'
    run w2 kiln 1 3.00 0 ok 20000 ""
    run w2 kiln 2 1.00 0 ok 160000 ""
    run w2 kiln 3 2.00 0 ok 30000 ""
} >"$WORK/w2-memory.runs.tsv"
all_steps >"$WORK/w2-memory.steps.tsv"
check "w2 over 150 MB, spread of the runs" nonzero "$WORK/w2-memory.runs.tsv" -- \
    '^  FAIL +w2: kiln peak RSS < 150 MB +156\.25 MB' \
    '^w2 .* kiln +3 runs +2\.00 +1\.00-3\.00 +156 ' \
    '^  PASS +w9: kiln peak RSS < 150 MB'

# 12. Nothing to summarize, or not a raw file: non-zero even with --report-only.
echo "$HEADER" >"$WORK/empty.runs.tsv"
check "an empty raw file" nonzero "$WORK/empty.runs.tsv" --report-only -- 'no runs recorded'
printf 'w1\tkiln\t1\tfast\t0\tok\t\t\n' >"$WORK/bad.runs.tsv"
check "a malformed raw file" nonzero "$WORK/bad.runs.tsv" --report-only -- 'must be numbers' 'summary failed'

echo "bench summary check: $PASSED passed, $FAILED failed"
((FAILED == 0))

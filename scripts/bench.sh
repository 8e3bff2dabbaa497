#!/usr/bin/env bash
# Benchmarks kiln-executor against buildah, kaniko v1.24 and BuildKit v0.35 on the workloads of
# bench/ and prints a table: runs and failed runs, median wall time (with the runs' min-max), peak
# memory, the kiln/kaniko,
# kiln/buildah and kiln/buildkit ratios, and the targets of the performance issues (7 and 16): met,
# missed, or not evaluated (and why). Every build pushes to a local registry, as in CI.
#
#   bash scripts/bench.sh                          # all workloads, all tools, 3 runs each (median)
#   bash scripts/bench.sh --runs 1 --only w1,w2 --tools kiln,buildah
#   bash scripts/bench.sh --summarize FILE.runs.tsv    # the table and targets of recorded runs
#
# Runs go round the tools: each run of a workload starts with the next tool (kiln, buildah, kaniko,
# BuildKit; the floor last), after an untimed sync.
# Workloads (bench/README.md has the method):
#   w1  busybox, 200 small files COPY'd, ENV, 2 RUN          w4  Debian bookworm, 8 trivial RUN
#   w2  busybox, RUN making 100,000 files, 5 one-file RUNs    w5  w4 rebuilt with every step cached
#   w3  busybox, RUN writing 400 MiB random + 400 MiB zeros   w6  w4 (steps changed) with the base warmed
#   w7  two independent stages (30,000 files written and checksummed each) and a final stage that
#       COPYs a result of each; kiln also builds each stage alone (--target left / right), recorded
#       as w7-left and w7-right, for the target "w7: kiln <= 0.6x (w7-left + w7-right)"
#   w8  a source change: an application-shaped build (deps.txt COPY'd, a slow dependency step,
#       COPY . /src, a build step) primed once with each tool's layer cache, then rebuilt after
#       one source file changed (differently in each run); kiln's step lines must show cache hits
#       before `COPY . /src` and misses from it on
#   w9  a cold pull: a base of 300 MiB of incompressible data in 5 layers (made and pushed here,
#       kiln-test/w9-base), pulled by every run, plus one RUN; the floor is `skopeo copy` of that
#       base from the registry into an oci: directory (tool "floor")
#   w10 a wide push: 50 RUNs of 2 MiB of random data each, pushed to a new repository every run;
#       the floor is `skopeo copy` of kiln's first pushed image from an oci: layout to a new repository
#   w11 warmers: kiln-warmer and kaniko's warmer filling an empty cache directory with the busybox
#       and Debian bases (kiln and kaniko only)
#
# How each tool runs:
#   kiln     kiln-executor (release, static) --isolation chroot --insecure --insecure-pull, under /usr/bin/time -v
#   buildah  buildah --storage-driver vfs bud --isolation chroot, then buildah push, under /usr/bin/time -v,
#            in a fresh storage root per cold run (so it pulls the base like the others)
#   kaniko   /kaniko/executor in podman (runc, cgroupfs, vfs, --network host), context at /workspace;
#            peak memory = the executor process's VmHWM polled every 0.1 s from /proc (kaniko's
#            own RUN children are not counted; growth in the last 0.1 s could be missed); its w6
#            and w8 (local caches) read a Docker v2s2 copy of the base (same layers), since with the OCI base
#            kaniko v1.24's push is refused (MANIFEST_INVALID, kaniko #2423/#2713)
#   buildkit buildctl build (dockerfile.v0, push=true) against one buildkitd (scripts/buildkit.sh: OCI
#            worker, runc) with its state in the work directory, started here and stopped at exit;
#            cold runs follow `buildkit.sh prune` (untimed, no cache import), w5 rebuilds on its
#            local cache, w6 after a build of w4 with another CHANGE (the base is in its store);
#            peak memory = buildkitd's VmHWM, reset (clear_refs) before each build (its runc
#            children are not counted; nor is buildctl)
#   floor    (w9, w10; with kiln) skopeo copy with an empty blob-info cache (so it uploads what it
#            pushes rather than mounting it from another repository), under /usr/bin/time: what
#            moving the same bytes costs
# w8 primes each tool's layer cache with an untimed build, where --w8-cache says. local (the
# default): every tool keeps its cache on this machine between builds, as a builder with a
# persistent volume (or a long-running daemon) does: kiln --cache --cache-copy-layers with
# --cache-repo oci:DIR and its base in a --cache-dir filled by kiln-warmer, kaniko the same with
# its own (--cache-repo oci:DIR, --cache-dir filled by its warmer), buildah --layers in a kept
# storage root, BuildKit its daemon's local cache (one buildkitd from the priming on, pruned
# before the priming only). registry: kiln and kaniko --cache with a cache repository of their
# own in the registry and nothing kept locally, BuildKit --import-cache/--export-cache
# type=registry (mode=max, a repository of its own) with a fresh buildkitd and an empty state for
# every build, priming included: the tools as they run in a Pod that keeps nothing (buildah has
# only its local storage, kept as in local). The table's w8 rows say which.
# w11 runs kiln-warmer ($KILN_WARMER) and kaniko's /kaniko/warmer (in podman); buildah and BuildKit
# have no warmer and no rows.
# Peak memory for kiln and buildah is "Maximum resident set size" of /usr/bin/time: the largest single
# process of the tree (for buildah that is buildah itself; its RUN children are small).
#
# Flags: --runs N (default 3), --only w1,w2,... (default w1..w11), --tools kiln,buildah,kaniko,buildkit
# (default all four), --timeout SECONDS per build (default 900), --keep (keep the work directory),
# --w8-cache local|registry (where every tool keeps w8's layer cache, default local; see above),
# --results FILE (the table; default /var/tmp/kiln-bench-results/<UTC time>.txt), --report-only
# (exit 0 even when a target is missed or not evaluated), --summarize RUNS.tsv (only print the
# table and targets of a raw file written before).
# Next to the table go FILE's name with .runs.tsv (one line per run, written as the runs go:
# workload, tool, run, seconds, exit, status, peak_rss_kb, note; a "# plan:" line says what was set
# out to run, so a file cut short shows what is missing) and .steps.tsv (kiln's step lines).
# Exit status: 0 when every target was evaluated and met and no run failed; 1 otherwise (a target
# missed, a target not evaluated because a tool it compares failed a run, could not be primed or is
# unavailable, or any failed run), unless --report-only; a failure to benchmark at all is always 1.
# Environment: KILN_BENCH_REGISTRY (default 127.0.0.1:5055: a registry of its own, so the test
# suite's registry on :5000 can start and stop independently), KILN_EXECUTOR / KILN_WARMER (use these
# binaries instead of building), KILN_BENCH_WORK (parent of the work directory, default /dev/shm
# when it is a tmpfs with 12 GB free, else /var/tmp; on a disk every build gets a fresh ext4 on a
# loop device, see "a fresh filesystem per build" below: KILN_BENCH_FRESH_FS=0 turns that off,
# KILN_BENCH_FS_SIZE sets its sparse image's size, default 24G),
# KILN_BENCH_KILN_DIR (parent of kiln's --kiln-dir, default the work directory; /dev/shm = tmpfs).
# Needs root; run it on an otherwise idle machine for numbers worth comparing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REG="${KILN_BENCH_REGISTRY:-127.0.0.1:5055}"
TARGET="${CARGO_TARGET_DIR:-/var/cache/kiln/target}"
KANIKO_IMAGE="localhost/kiln-bench/kaniko:${KANIKO_VERSION:-v1.24.0}"
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --storage-driver vfs)
RUNS=3
ONLY="w1,w2,w3,w4,w5,w6,w7,w8,w9,w10,w11"
TOOLS="kiln,buildah,kaniko,buildkit"
TIMEOUT=900
KEEP=""
RESULTS_OUT=""
REPORT_ONLY=""
SUMMARIZE=""
W8_CACHE=local

log() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs|--only|--tools|--timeout|--results|--summarize|--w8-cache)
            [[ $# -ge 2 ]] || die "$1 needs a value (see --help)" ;;&
        --runs) RUNS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --tools) TOOLS="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --results) RESULTS_OUT="$2"; shift 2 ;;
        --report-only) REPORT_ONLY=1; shift ;;
        --summarize) SUMMARIZE="$2"; shift 2 ;;
        --w8-cache)
            [[ "$2" == local || "$2" == registry ]] || die "--w8-cache is local or registry, not $2"
            W8_CACHE="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d'; exit 0 ;;
        # The flag of the fifth run, replaced by --w8-cache: say which value meant what.
        --w8-buildkit-cache*)
            die "$1 is gone: --w8-cache local (every tool's cache kept on the machine, the default) or --w8-cache registry (every tool's cache in the registry) replaces it" ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
# ---- the table ----------------------------------------------------------------------------------
# summarize RUNS.tsv [STEPS.tsv]: prints the table and the targets of the runs recorded in RUNS.tsv
# (kiln's step lines, for the w2 snapshot target, from STEPS.tsv). Returns 0 when every target was
# evaluated and met and no run failed, 3 when not, anything else when the summary itself failed.
# A target is evaluated only when every run of each tool it compares succeeded: a median over the
# runs that happened to succeed could pass by accident.
summarize() {
    python3 - "$1" "${2:-}" <<'PY'
import collections, os, re, statistics, sys

runs_file, steps_file = sys.argv[1], sys.argv[2]
WORKLOADS = ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "w7-left", "w7-right", "w8", "w9", "w10",
             "w11"]
# "floor": skopeo copy of the same bytes (w9, w10), measured when kiln runs, for kiln's target.
TOOLS = ["kiln", "buildah", "kaniko", "buildkit", "floor"]
# w7's stages built alone (kiln --target left / right): run with w7, by kiln only.
STAGES_ALONE = {"w7": ["w7-left", "w7-right"]}
# What the floor of w9 and w10 times; their target is kiln against it, not against the others.
FLOORS = {"w9": "skopeo copy of the base, registry -> oci: directory",
          "w10": "skopeo copy of kiln's image, oci: layout -> a new repository"}
# Workloads only some tools have the feature for (w11: the warmers).
ONLY_TOOLS = {"w11": ["kiln", "kaniko"]}
# w8: the step whose source changes between builds; kiln must hit the cache before it, not from it on.
W8_CHANGED = "COPY . /src"
STATUSES = {"ok", "failed", "timeout", "prime-failed", "unavailable"}
names = {"w1": "200 small files, COPY, ENV, 2 RUN", "w2": "100,000 files + 5 one-file RUNs",
         "w3": "400 MiB random + 400 MiB zeros", "w4": "Debian, 8 trivial RUN",
         "w5": "cached rebuild (w4)", "w6": "warmed base (w4, steps changed)",
         "w7": "parallel stages left + right", "w7-left": "stage left alone (--target)",
         "w7-right": "stage right alone (--target)", "w8": "source change, local caches",
         "w9": "cold pull, 300 MiB base", "w10": "wide push, 50 layers, new repo",
         "w11": "warmers, busybox + Debian"}
# Issue 7's anchors: wall seconds on a 2-core machine, one run each.
anchors = {"w1": (2.3, 0.87), "w2": (28.1, 37.3), "w3": (27.5, 19.7), "w4": (7.6, 7.1)}

Run = collections.namedtuple("Run", "w tool run seconds exit status peak_kb note")
# "# w8-cache: local|registry": where w8's tools kept their caches (no line: local). Raw files of an
# older bench.sh say "# w8-buildkit-cache: local|registry" instead: there kiln and kaniko always
# used a registry cache, so "local" meant BuildKit's local state against their registry caches.
w8_mode = "local"
entries = collections.OrderedDict()
planned_runs = None
with open(runs_file) as f:
    for n, line in enumerate(f, 1):
        line = line.rstrip("\n")
        # "# plan: workloads=w1,w2 tools=kiln,buildah runs=3": what the benchmark set out to run,
        # so that a raw file cut short cannot pass for a complete one. w7 with kiln brings kiln's
        # runs of w7-left and w7-right, w9 and w10 with kiln the floor's; w11 is kiln's and
        # kaniko's only.
        m = re.match(r"# w8-(buildkit-)?cache: (local|registry)$", line)
        if m:
            w8_mode = "mixed" if m.group(1) and m.group(2) == "local" else m.group(2)
            names["w8"] = {"local": "source change, local caches",
                           "registry": "source change, registry caches",
                           "mixed": "source change, BK local cache"}[w8_mode]
            continue
        m = re.match(r"# plan: workloads=(\S*) tools=(\S*) runs=(\d+)$", line)
        if m:
            planned_runs = int(m.group(3))
            tools = m.group(2).split(",")
            for w in m.group(1).split(","):
                for t in tools:
                    if w in WORKLOADS and t in TOOLS and t in ONLY_TOOLS.get(w, TOOLS):
                        entries.setdefault((w, t), [])
                if "kiln" in tools:
                    for alone in STAGES_ALONE.get(w, []):
                        entries.setdefault((alone, "kiln"), [])
                    if w in FLOORS:
                        entries.setdefault((w, "floor"), [])
            continue
        if not line or line.startswith("workload\t") or line.startswith("#"):
            continue
        p = (line.split("\t") + [""] * 8)[:8]
        w, tool, run, seconds, exit_, status, peak, note = p
        if w not in WORKLOADS or tool not in TOOLS or status not in STATUSES:
            sys.exit(f"bench: {runs_file}:{n}: not a run line (workload, tool, run, seconds, "
                     f"exit, status, peak_rss_kb, note): {line!r}")
        try:
            r = Run(w, tool, run, float(seconds) if seconds else None, exit_, status,
                    int(peak) if peak and int(peak) > 0 else None, note)
        except ValueError:
            sys.exit(f"bench: {runs_file}:{n}: seconds and peak_rss_kb must be numbers: {line!r}")
        if status in ("ok", "failed", "timeout") and r.seconds is None:
            sys.exit(f"bench: {runs_file}:{n}: a {status} run without seconds: {line!r}")
        entries.setdefault((w, tool), []).append(r)

def describe(r):
    if r.status == "timeout":
        return f"run {r.run} timed out"
    return f"run {r.run} exit {r.exit or '?'}"

class State:
    """What one tool did on one workload."""
    def __init__(self, w, t):
        rows = entries[(w, t)]
        self.timed = [r for r in rows if r.status in ("ok", "failed", "timeout")]
        self.ok = [r for r in self.timed if r.status == "ok"]
        self.bad = [r for r in self.timed if r.status != "ok"]
        prime = [r for r in rows if r.status == "prime-failed"]
        unavailable = [r for r in rows if r.status == "unavailable"]
        self.problem = None
        if unavailable:
            self.runs = "not run: unavailable"
            self.problem = f"{t} unavailable ({unavailable[0].note or 'no reason recorded'})"
        elif prime:
            self.runs = "not run: priming failed"
            self.problem = f"{t} priming failed ({prime[0].note or 'exit ' + prime[0].exit})"
        elif not self.timed:
            self.runs = "no runs recorded"
            self.problem = f"{t}: no runs recorded (the benchmark stopped before them?)"
        else:
            self.runs = f"{len(self.timed)} run{'s' if len(self.timed) > 1 else ''}"
            if self.bad:
                self.runs += f", {len(self.bad)} failed"
                self.problem = (f"{t}: {len(self.bad)} of {len(self.timed)} runs failed ("
                                + ", ".join(describe(r) for r in self.bad) + ")")
            elif planned_runs and len(self.timed) < planned_runs:
                self.runs += f" of {planned_runs} planned"
                self.problem = f"{t}: {len(self.timed)} of {planned_runs} planned runs recorded"
        self.wall = statistics.median(r.seconds for r in self.ok) if self.ok else None
        self.spread = (min(r.seconds for r in self.ok), max(r.seconds for r in self.ok)) if self.ok else None
        peaks = [r.peak_kb for r in self.ok if r.peak_kb is not None]
        self.peak_mb = max(peaks) / 1024 if peaks else None
        self.unmeasured = [r.run for r in self.ok if r.peak_kb is None]

states = {k: State(*k) for k in entries}
def st(w, t):
    return states.get((w, t))

out = []
if not any(entries.values()):
    sys.exit(f"bench: no runs recorded in {runs_file}")
out.append("medians over the successful runs (min-max beside); peak = max over them of peak RSS (MB); "
           "a ratio only when both tools had no failed run")
out.append(f"{'workload':<38} {'tool':<8} {'runs':<24} {'wall s':>8} {'min-max':>13} {'peak MB':>8} "
           f"{'kiln/kaniko':>12} {'kiln/buildah':>13} {'kiln/buildkit':>14}")
def ratio(w, other):
    k, o = st(w, "kiln"), st(w, other)
    if not k or not o or k.problem or o.problem:
        return None
    return k.wall / o.wall
for w in WORKLOADS:
    for t in TOOLS:
        s = st(w, t)
        if not s:
            continue
        rk = rb = rbk = ""
        if t == "kiln":
            rk, rb, rbk = (ratio(w, o) for o in ("kaniko", "buildah", "buildkit"))
            rk, rb, rbk = ("-" if r is None else f"{r:.2f}x" for r in (rk, rb, rbk))
        wall = "-" if s.wall is None else f"{s.wall:.2f}"
        spread = "-" if s.spread is None else f"{s.spread[0]:.2f}-{s.spread[1]:.2f}"
        peak = "-" if s.peak_mb is None else f"{s.peak_mb:.0f}"
        out.append(f"{w + ' ' + names[w]:<38} {t:<8} {s.runs:<24} {wall:>8} {spread:>13} {peak:>8} {rk:>12} "
                   f"{rb:>13} {rbk:>14}")

problems = [(w, s.problem) for (w, t), s in
            sorted(states.items(), key=lambda kv: (WORKLOADS.index(kv[0][0]), TOOLS.index(kv[0][1])))
            if s.problem]
if problems:
    out.append("")
    out.append("failed runs, and tools not run")
    for w, p in problems:
        out.append(f"  {w}: {p}")

# targets: (name, verdict, value text, detail)
targets = []
def judge(name, val, lim, unit):
    ok = val <= lim
    by = f"met by {lim / val:.1f}x" if ok and val > 0 else (f"missed by {val / lim:.1f}x" if not ok else "met")
    targets.append((name, "PASS" if ok else "FAIL", f"{val:.2f}{unit}", by))
def not_evaluated(name, why):
    targets.append((name, "NOT EVALUATED", "", why))

steps = collections.defaultdict(list)  # (workload, run) -> kiln step lines
steps_note = None
if not steps_file:
    steps_note = "no step file given"
elif not os.path.exists(steps_file):
    steps_note = f"no step file {steps_file}"
else:
    with open(steps_file) as f:
        for line in f:
            p = line.rstrip("\n").split("\t", 2)
            if len(p) == 3 and p[0] != "workload":
                steps[(p[0], p[1])].append(p[2])

for w in WORKLOADS:
    k = st(w, "kiln")
    if not k:
        continue
    # Issue 7's targets (kaniko, buildah), then issue 16's (BuildKit). Not for w9 and w10, whose
    # target is the floor (below); w11 (the warmers) against kaniko's only.
    # Issue 16 asks kiln <= 0.5x buildah (issue 7 asked 0.7x).
    generic = (("kaniko", 0.2 if w == "w2" else 0.5), ("buildah", 0.5), ("buildkit", 0.8))
    if w in FLOORS:
        generic = ()
    elif w == "w11":
        generic = (("kaniko", 0.5),)
    for other, lim in generic:
        o = st(w, other)
        if not o:
            continue
        name = f"{w}: kiln <= {lim}x {other}"
        if w == "w11":
            name = f"{w}: kiln-warmer <= {lim}x {other} warmer"
        why = "; ".join(p for p in (k.problem, o.problem) if p)
        if why:
            not_evaluated(name, why)
        else:
            judge(name, k.wall / o.wall, lim, "x")
    if w in FLOORS:
        # Issue 16: kiln against what moving the same bytes costs (skopeo copy).
        f = st(w, "floor")
        name = f"{w}: kiln <= 1.3x floor"
        why = [k.problem] if k.problem else []
        if not f:
            why.append("floor: no runs recorded")
        elif f.problem:
            why.append(f.problem)
        if why:
            not_evaluated(name, "; ".join(why))
        else:
            judge(name, k.wall / f.wall, 1.3, "x")
            out.append("")
            out.append(f"{w} (kiln): {k.wall:.2f} s; floor ({FLOORS[w]}): {f.wall:.2f} s")
    if w == "w8":
        out.append("")
        out.append({
            "registry": "w8: kiln and kaniko on a registry cache, nothing kept locally; BuildKit a "
                        "registry cache (mode=max) with a fresh buildkitd and empty state for "
                        "every build; buildah its kept storage (--w8-cache registry)",
            "local": "w8: every tool's cache kept locally: kiln and kaniko an oci: cache "
                     "repository and a warmed --cache-dir, BuildKit its daemon's state, buildah "
                     "its storage (--w8-cache local)",
            "mixed": "w8: kiln and kaniko on a registry cache, nothing kept locally; BuildKit its "
                     "daemon's state, buildah its storage (a raw file of an older bench.sh)",
        }[w8_mode])
        # The rebuild after a source change: kiln's step lines ("step 3/4: COPY . /src", then
        # "step 3/4 done in 0.01s (cache miss, ...)") must show a cache hit for every step before
        # the changed COPY and a miss for it and every step after it, in every run.
        name = "w8: kiln reruns only the steps after the changed COPY"
        wrong, missing, shape = [], [], None
        for r in k.ok:
            text, result, total = {}, {}, None
            for line in steps.get(("w8", r.run), []):
                m = re.match(r"step (\d+)/(\d+) done in \S+ \((.*)\)$", line)
                if m:
                    result[int(m.group(1))] = m.group(3)
                    total = int(m.group(2))
                    continue
                # A step line; when every step of a stage is a hit, kiln logs "(cache hit, ...)"
                # on it and no "done in" line.
                m = re.match(r"step (\d+)/(\d+): (.*?)(?: \((cache hit, [^()]*)\))?$", line)
                if m:
                    text[int(m.group(1))] = m.group(3).strip()
                    total = int(m.group(2))
                    if m.group(4):
                        result[int(m.group(1))] = m.group(4)
            changed = [n for n, t in sorted(text.items()) if t == W8_CHANGED]
            if not changed or not total or set(result) != set(range(1, total + 1)):
                missing.append(r.run)
                continue
            c = changed[0]
            shape = (c, total)
            for n in range(1, total + 1):
                want = "cache hit" if n < c else "cache miss"
                got = result[n].split(",")[0]
                if got != want:
                    t = text.get(n, "?")
                    t = t if len(t) <= 40 else t[:37] + "..."
                    wrong.append(f"run {r.run}: step {n}/{total} ({t}) {got}, expected {want}")
        if k.problem:
            not_evaluated(name, k.problem)
        elif missing:
            not_evaluated(name, (steps_note or f"no step lines of kiln with '{W8_CHANGED}'")
                          + " for run(s) " + ", ".join(missing))
        elif wrong:
            targets.append((name, "FAIL", "", "; ".join(wrong)))
        else:
            c, total = shape
            before = f"steps 1-{c - 1}" if c > 2 else "step 1"
            after = f"steps {c}-{total}" if total > c else f"step {c}"
            targets.append((name, "PASS", "", f"every run: {before} cache hits, {after} "
                            "cache misses" if c > 1 else f"every run: {after} cache misses"))
    if w in STAGES_ALONE:
        # Issue 16: the stages built at the same time, against the sum of each built alone.
        alone = [(a, st(a, "kiln")) for a in STAGES_ALONE[w]]
        name = f"{w}: kiln <= 0.6x ({' + '.join(a for a, _ in alone)})"
        why = [k.problem] if k.problem else []
        for a, s in alone:
            if not s:
                why.append(f"{a}: kiln: no runs recorded")
            elif s.problem:
                why.append(f"{a}: {s.problem}")
        if why:
            not_evaluated(name, "; ".join(why))
        else:
            total = sum(s.wall for _, s in alone)
            judge(name, k.wall / total, 0.6, "x")
            out.append("")
            out.append(f"{w} (kiln): stages together {k.wall:.2f} s; alone "
                       + " + ".join(f"{s.wall:.2f}" for _, s in alone) + f" = {total:.2f} s")
    if True:
        # Issue 16: memory stays flat on every workload (issue 7 asked it of w3).
        name = f"{w}: kiln peak RSS < 150 MB"
        if k.problem:
            not_evaluated(name, k.problem)
        elif k.unmeasured:
            not_evaluated(name, "kiln's peak RSS not measured in run(s) " + ", ".join(k.unmeasured))
        else:
            judge(name, k.peak_mb, 150, " MB")
    if w == "w2":
        # Snapshot of a RUN that changes (almost) nothing on the 100,000-file root: kiln logs each
        # step's snapshot time ("snapshot 0.12s") besides the step's total (RUN + snapshot +
        # layer); w2's one-file RUN steps are steps 2..6. Older binaries log only the total: then
        # the total is judged.
        one, one_total, missing = [], [], []
        for r in k.ok:
            lines = steps.get(("w2", r.run), [])
            found = False
            for line in lines:
                m = re.match(r"step (\d+)/(\d+) done in ([0-9.]+)(m?s)", line)
                if m and int(m.group(1)) >= 2:
                    found = True
                    one_total.append(float(m.group(3)) / (1000 if m.group(4) == "ms" else 1))
                    snap = re.search(r"snapshot ([0-9.]+)s", line)
                    if snap:
                        one.append(float(snap.group(1)))
            if not found:
                missing.append(r.run)
        name = "w2: snapshot of a one-file RUN on 100k files < 0.3 s (max)"
        if k.problem:
            not_evaluated(name, k.problem)
        elif missing:
            not_evaluated(name, (steps_note or "no 'step N/M done in' lines of kiln")
                          + " for run(s) " + ", ".join(missing))
        elif one and len(one) == len(one_total):
            judge(name, max(one), 0.3, " s")
        else:
            judge("w2: one-file RUN step on 100k files < 0.3 s (max)", max(one_total), 0.3, " s")
        if one_total:
            out.append("")
            out.append(f"w2 one-file RUN steps (RUN + snapshot + layer): max {max(one_total):.2f} s, "
                       f"median {statistics.median(one_total):.2f} s")

out.append("")
out.append("targets (issue 7: against buildah and kaniko, w2 snapshot, w3 memory; "
           "issue 16: against BuildKit, w7 stages at the same time, w8 cache use, w9 and w10 "
           "against the floor, w11 warmers)")
if not targets:
    out.append("  none for these workloads and tools (kiln's targets compare it with buildah, kaniko "
               "and BuildKit, w7 with its stages built alone, w9 and w10 with the floor)")
for name, verdict, val, detail in targets:
    if verdict == "NOT EVALUATED":
        out.append(f"  NOT EVALUATED  {name}: {detail}")
    else:
        out.append(f"  {verdict:<13}  {name:<52} {val:>10}  ({detail})")
out.append("")
out.append("issue 7 anchors (one run, same kind of machine): buildah / kaniko wall s")
for w, (b, kk) in anchors.items():
    out.append(f"  {w}: {b} / {kk}")
met = sum(1 for t in targets if t[1] == "PASS")
missed = sum(1 for t in targets if t[1] == "FAIL")
unevaluated = sum(1 for t in targets if t[1] == "NOT EVALUATED")
out.append("")
out.append(f"bench: {len(targets)} target(s): {met} met, {missed} missed, {unevaluated} not evaluated; "
           f"{len(problems)} tool/workload pair(s) with failed or missing runs")
print("\n".join(out))
sys.exit(3 if missed or unevaluated or problems else 0)
PY
}

# finish RC: exits with the benchmark's status for summarize's RC (see the header).
finish() {
    case "$1" in
        0) exit 0 ;;
        3) if [[ -n "$REPORT_ONLY" ]]; then
               log "--report-only: exit 0 although not every target was evaluated and met"
               exit 0
           fi
           exit 1 ;;
        *) die "the summary failed (exit $1)" ;;
    esac
}

if [[ -n "$SUMMARIZE" ]]; then
    command -v python3 >/dev/null || die "python3 not installed"
    [[ -r "$SUMMARIZE" ]] || die "--summarize: cannot read $SUMMARIZE"
    steps=""
    [[ "$SUMMARIZE" == *.runs.tsv ]] && steps="${SUMMARIZE%.runs.tsv}.steps.tsv"
    rc=0
    summarize "$SUMMARIZE" "$steps" || rc=$?
    finish "$rc"
fi

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs: expected a positive integer, got $RUNS"
for t in ${TOOLS//,/ }; do
    [[ "$t" =~ ^(kiln|buildah|kaniko|buildkit)$ ]] || die "--tools: unknown tool $t (kiln, buildah, kaniko, buildkit)"
done
for w in ${ONLY//,/ }; do
    # w7-left and w7-right are not asked for: they come with w7 (kiln only); nor is the floor of
    # w9 and w10 (it comes with them when kiln runs).
    [[ "$w" =~ ^w([1-9]|1[01])$ ]] || die "--only: unknown workload $w (w1..w11)"
done
[[ "$(id -u)" == 0 ]] || die "must run as root (chroot, namespaces, podman)"
want_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }
want_work() { [[ ",$ONLY," == *",$1,"* ]]; }
for tool in curl skopeo jq /usr/bin/time timeout python3 unshare; do
    command -v "$tool" >/dev/null || die "$tool not installed"
done
if want_work w9; then
    # To make w9's base.
    for tool in openssl gzip split tar; do
        command -v "$tool" >/dev/null || die "$tool not installed (w9's base is made with it)"
    done
fi

# The table, and next to it the raw runs (written as they go, so an interrupted benchmark keeps
# them) and kiln's step lines.
if [[ -z "$RESULTS_OUT" ]]; then
    RESULTS_OUT="/var/tmp/kiln-bench-results/$(date -u +%Y%m%dT%H%M%SZ).txt"
fi
OUT_BASE="$RESULTS_OUT"
[[ "$(basename "$OUT_BASE")" != *.txt ]] || OUT_BASE="${OUT_BASE%.txt}"
RUNS_TSV="$OUT_BASE.runs.tsv"
STEPS_TSV="$OUT_BASE.steps.tsv"
mkdir -p "$(dirname "$RESULTS_OUT")"
{
    printf 'workload\ttool\trun\tseconds\texit\tstatus\tpeak_rss_kb\tnote\n'
    echo "# plan: workloads=$ONLY tools=$TOOLS runs=$RUNS"
    echo "# w8-cache: $W8_CACHE"
} >"$RUNS_TSV"
printf 'workload\trun\tkiln step line\n' >"$STEPS_TSV"
log "raw runs go to $RUNS_TSV"

# Where the builds write: tmpfs when it has room, so that the figures are the tools' and not the
# disk's (on ext4 here the same 100,000-file RUN took 4.7 s or 45 s depending on what the disk had
# just deleted; see bench/RESULTS.md). KILN_BENCH_WORK=/var/tmp measures on disk instead.
if [[ -z "${KILN_BENCH_WORK:-}" ]]; then
    KILN_BENCH_WORK=/var/tmp
    if [[ "$(stat -f -c %T /dev/shm 2>/dev/null)" == tmpfs ]] &&
        (($(df -Pk /dev/shm | awk 'NR == 2 { print $4 }') >= 12 * 1024 * 1024)); then
        KILN_BENCH_WORK=/dev/shm
    fi
fi
log "builds write under $KILN_BENCH_WORK ($(stat -f -c %T "$KILN_BENCH_WORK"))"
WORK="$(mktemp -d "$KILN_BENCH_WORK/kiln-bench.XXXXXX")"

# ---- a fresh filesystem per build (disk) ------------------------------------------------------
# On a disk, the state the previous build left behind dominates a many-file build: ext4 skips
# inodes freed in the last 60 s when it allocates new ones, and every tool deletes something (kiln
# its build root, buildah its working container, BuildKit its snapshots on prune), so the same
# 100,000-file RUN took 4.9 s to 67.6 s from one run to the next (bench/RESULTS.md, 2026-12-07).
# So on a disk every timed build (and every priming) gets a new, empty ext4 at $SCRATCH: a sparse
# image file in the work directory on a loop device with direct I/O (the filesystem's writes go to
# the disk, not through a second page cache), inode tables written by mkfs (no lazy-init thread
# beside the build), always mounted at the same path. What a build starts from is copied onto it
# untimed: kaniko's podman storage (the kaniko image) and buildah's primed storage roots (w5, w6,
# w8); buildkitd starts on it for each cold build (see begin_build for w5, w6 and w8). Logs,
# the warmed base caches of w6 (read-only in the timed runs), w9's base and w10's floor layout stay
# in the work directory. KILN_BENCH_FRESH_FS=0 keeps the older method (one filesystem, deletions
# deferred, many-file builds waiting 65 s after the last deletion, BuildKit pruned instead of
# restarted). On tmpfs (no inode allocator to slow down) the builds write in the work directory.
SCRATCH="$WORK"
FRESH_FS=""
FS_SIZE="${KILN_BENCH_FS_SIZE:-24G}"
# Two such filesystems, by name: b (at $SCRATCH, remade for every build) and bk (buildkitd's state
# for a workload that reuses it: w5, w6, w8). Each is mounted at $WORK/NAME from the image
# $WORK/NAME-fs.img on the loop device FS_DEV[NAME].
declare -A FS_DEV=()
# drop_fs NAME: unmounts the filesystem NAME and deletes its image.
drop_fs() {
    local mnt="$WORK/$1"
    if mountpoint -q "$mnt"; then
        umount -R "$mnt" 2>/dev/null || umount -R -l "$mnt" || return 1
    fi
    if [[ -n "${FS_DEV[$1]:-}" ]]; then
        losetup -d "${FS_DEV[$1]}" || return 1
        FS_DEV[$1]=""
    fi
    rm -f "$WORK/$1-fs.img"
}
# fresh_fs NAME: replaces the filesystem NAME with a new, empty one.
fresh_fs() {
    local img="$WORK/$1-fs.img"
    drop_fs "$1" || return 1
    mkdir -p "$WORK/$1"
    truncate -s "$FS_SIZE" "$img" || return 1
    FS_DEV[$1]="$(losetup -f --show --direct-io=on --sector-size 4096 "$img")" || return 1
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "${FS_DEV[$1]}" || return 1
    mount "${FS_DEV[$1]}" "$WORK/$1"
}
if [[ "$(stat -f -c %T "$WORK")" != tmpfs && "${KILN_BENCH_FRESH_FS:-1}" != 0 ]]; then
    if fresh_fs b 2>"$WORK/fresh-fs.log"; then
        FRESH_FS=1
        SCRATCH="$WORK/b"
        log "every build gets a fresh ext4 at $SCRATCH ($FS_SIZE sparse image on ${FS_DEV[b]}, direct I/O: $(losetup -n -O DIO "${FS_DEV[b]}" | tr -d ' '))"
    else
        cat "$WORK/fresh-fs.log" >&2
        drop_fs b || true
        log "no loop-mounted filesystem here (above): builds share $WORK, deletions deferred, many-file builds wait for the last one"
    fi
fi
# save_state REL NAME / restore_state NAME REL: copies a path under $SCRATCH to the work directory's
# state/NAME (after a priming) and back onto a fresh filesystem (before a timed build). A missing
# state (not primed yet) restores nothing.
save_state() {
    rm -rf "$WORK/state/$2"
    mkdir -p "$WORK/state"
    cp -a "$SCRATCH/$1" "$WORK/state/$2"
}
restore_state() {
    [[ -e "$WORK/state/$1" ]] || return 0
    mkdir -p "$(dirname "$SCRATCH/$2")"
    cp -a "$WORK/state/$1" "$SCRATCH/$2"
}

# Where kiln's --kiln-dir (its build root) lives: the build's filesystem unless KILN_BENCH_KILN_DIR
# names a parent (e.g. /dev/shm to measure kiln with its root on tmpfs).
KILN_DIR_PARENT="$SCRATCH"
if [[ -n "${KILN_BENCH_KILN_DIR:-}" ]]; then
    KILN_DIR_PARENT="$(mktemp -d "$KILN_BENCH_KILN_DIR/kiln-bench-dirs.XXXXXX")"
fi
STARTED_REGISTRY=""
# BuildKit's daemon: its state on the build's filesystem (as the other tools' files).
BK_DIR="$SCRATCH/buildkit"
BK_STARTED=""
# bk_start / bk_stop: buildkitd with its state in $BK_DIR (start's messages in
# $WORK/buildkit-start.log); bk_start sets BK_ADDR and BK_PID.
bk_start() {
    mkdir -p "$BK_DIR"
    if KILN_TEST_REGISTRY="$REG" bash "$ROOT/scripts/buildkit.sh" start "$BK_DIR" 2>"$WORK/buildkit-start.log"; then
        BK_STARTED=1
        BK_ADDR="$(bash "$ROOT/scripts/buildkit.sh" addr "$BK_DIR")"
        BK_PID="$(cat "$BK_DIR/buildkitd.pid")"
        return 0
    fi
    # Stop what may have started (a daemon that did not answer in time).
    [[ ! -e "$BK_DIR/buildkitd.pid" ]] || bash "$ROOT/scripts/buildkit.sh" stop "$BK_DIR" >&2 || true
    return 1
}
bk_stop() {
    [[ -n "$BK_STARTED" ]] || return 0
    BK_STARTED=""
    bash "$ROOT/scripts/buildkit.sh" stop "$BK_DIR" >>"$WORK/buildkit-stop.log" 2>&1
}
# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
    local rc=$?
    # Before the work directory goes: buildkitd's snapshots may be mounted under it.
    bk_stop || log "could not stop buildkitd in $BK_DIR (log: $WORK/buildkit-stop.log)"
    # Containers this run started (named kiln-bench-<pid>-*) are removed; nothing else is touched.
    if want_tool kaniko && [[ -z "$FRESH_FS" ]]; then
        "${PODMAN[@]}" ps -a --filter "name=kiln-bench-$$-" -q 2>/dev/null |
            xargs -r "${PODMAN[@]}" rm -f >/dev/null 2>&1 || true
    fi
    if [[ -n "$STARTED_REGISTRY" ]]; then
        KILN_REGISTRY_ADDR="$REG" bash "$ROOT/scripts/registry.sh" stop >/dev/null || true
    fi
    if [[ -z "$KEEP" ]]; then
        if [[ -z "$FRESH_FS" && -d "$WORK/podman" ]]; then
            "${PODMAN[@]}" rm -af >/dev/null 2>&1 || true
            "${PODMAN[@]}" rmi -af >/dev/null 2>&1 || true
        fi
        if [[ -n "$FRESH_FS" ]]; then
            drop_fs b || log "could not unmount $WORK/b or detach its loop device"
            drop_fs bk || log "could not unmount $WORK/bk or detach its loop device"
        fi
        rm -rf "$WORK"
        [[ "$KILN_DIR_PARENT" == "$SCRATCH" ]] || rm -rf "$KILN_DIR_PARENT"
    else
        log "work directory kept: $WORK"
        [[ -z "$FRESH_FS" ]] || log "the last build filesystem is still mounted at $SCRATCH (loop device ${FS_DEV[b]})"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- registry and base images -------------------------------------------------------------------
if curl -fs -o /dev/null --max-time 2 "http://$REG/v2/"; then
    log "reusing the registry on $REG"
else
    KILN_REGISTRY_ADDR="$REG" bash "$ROOT/scripts/registry.sh" start >&2
    STARTED_REGISTRY=1
fi
if ! skopeo inspect --tls-verify=false "docker://$REG/kiln-test/busybox:latest" >/dev/null 2>&1 ||
    ! skopeo inspect --tls-verify=false "docker://$REG/kiln-test/debian:bookworm" >/dev/null 2>&1; then
    log "pushing the base images to $REG"
    KILN_TEST_REGISTRY="$REG" bash "$ROOT/scripts/base-images.sh" >&2
fi
# kaniko's w6 and w8 (local caches): the base copied as a Docker v2 schema 2 image (the same
# layers) under $REG/v2s2/. kaniko v1.24 pushes a manifest the registry refuses (MANIFEST_INVALID)
# when its --cache-dir base is an OCI image (kaniko #2423, #2713), so with the OCI base it has no
# w6 or w8 figure; its warmer and build then read this copy (REGISTRY=$REG/v2s2) and the other
# tools the original.
KANIKO_V2S2_REG="$REG/v2s2"
V2S2_BASES=()
if want_tool kaniko; then
    want_work w6 && V2S2_BASES+=(debian:bookworm)
    want_work w8 && [[ "$W8_CACHE" == local ]] && V2S2_BASES+=(busybox:latest)
fi
for base in "${V2S2_BASES[@]}"; do
    skopeo copy -q --format v2s2 --src-tls-verify=false --dest-tls-verify=false \
        "docker://$REG/kiln-test/$base" "docker://$KANIKO_V2S2_REG/kiln-test/$base" >&2 ||
        die "could not copy the $base base to $KANIKO_V2S2_REG as a Docker v2s2 image"
done

# ---- builders -----------------------------------------------------------------------------------
# podman's and buildah's configuration for this machine (default_ulimits = []: without it a fresh
# machine's containers fail to start, "error setting rlimits").
# shellcheck source=scripts/lib/containers.sh
source "$ROOT/scripts/lib/containers.sh"
configure_containers
KANIKO_MISSING=""
if want_tool kiln; then
    if [[ -z "${KILN_EXECUTOR:-}" || -z "${KILN_WARMER:-}" ]]; then
        log "building kiln-executor and kiln-warmer (release, static) into $TARGET"
        (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET" \
            nice -n 19 cargo build -q --release --target x86_64-unknown-linux-gnu -p kiln-executor -p kiln-warmer) ||
            die "cargo build failed"
    fi
    KILN="${KILN_EXECUTOR:-$TARGET/x86_64-unknown-linux-gnu/release/kiln-executor}"
    KWARM="${KILN_WARMER:-$TARGET/x86_64-unknown-linux-gnu/release/kiln-warmer}"
    [[ -x "$KILN" ]] || die "no kiln-executor at $KILN"
    if want_work w6 || want_work w8 || want_work w11; then
        [[ -x "$KWARM" ]] || die "no kiln-warmer at $KWARM"
    fi
fi
if want_tool buildah; then
    command -v buildah >/dev/null || die "buildah not installed: apt-get install -y buildah"
fi
if want_tool kaniko; then
    if ! bash "$ROOT/scripts/kaniko.sh" >&2; then
        # Benchmarked without it, but not silently: its rows and targets say why.
        KANIKO_MISSING="scripts/kaniko.sh failed: no kaniko image"
        log "kaniko is not available ($KANIKO_MISSING, see above); its targets will not be evaluated"
    else
        # kaniko's container roots go to a podman storage on the builds' filesystem, so all
        # four tools write their files to the same kind of filesystem (kiln's roots, buildah's
        # storage and buildkitd's state are there too). The image is copied in from podman's
        # default storage (and, with a fresh filesystem per build, kept in state/podman and
        # copied onto each kaniko build's filesystem).
        log "copying $KANIKO_IMAGE into a podman storage under $SCRATCH"
        "${PODMAN[@]}" save --format oci-archive -o "$WORK/kaniko-image.tar" "$KANIKO_IMAGE" >/dev/null
        PODMAN+=(--root "$SCRATCH/podman/root" --runroot "$SCRATCH/podman/run")
        "${PODMAN[@]}" load -q -i "$WORK/kaniko-image.tar" >/dev/null
        rm -f "$WORK/kaniko-image.tar"
        [[ -z "$FRESH_FS" ]] || save_state podman/root podman
    fi
fi
BUILDKIT_MISSING=""
BUILDCTL=/var/cache/kiln/bin/buildctl
if want_tool buildkit; then
    mkdir -p "$BK_DIR"
    # Its registry (marked plain HTTP in buildkitd.toml) is the bench's.
    if bk_start; then
        cat "$WORK/buildkit-start.log" >&2
        log "buildkitd $("$BUILDCTL" --addr "$BK_ADDR" debug info 2>/dev/null | awk '/^BuildKit:/ { print $3 }' || true) (pid $BK_PID, snapshotter $(cat "$BK_DIR/snapshotter"))"
        # With a fresh filesystem per build, buildkitd starts on each (begin_build).
        [[ -z "$FRESH_FS" ]] || bk_stop
    else
        cat "$WORK/buildkit-start.log" >&2
        # Benchmarked without it, but not silently: its rows and targets say why. Its log is kept
        # next to the table (the work directory goes at exit).
        BUILDKIT_MISSING="scripts/buildkit.sh start failed: $(grep '^buildkit.sh: ' "$WORK/buildkit-start.log" |
            tail -n1 | sed 's/^buildkit.sh: //; s/ (log above.*//' || true)"
        if [[ -s "$BK_DIR/buildkitd.log" ]] && cp "$BK_DIR/buildkitd.log" "$OUT_BASE.buildkitd.log"; then
            BUILDKIT_MISSING+=" (buildkitd's log: $OUT_BASE.buildkitd.log)"
        fi
        log "BuildKit is not available ($BUILDKIT_MISSING); its targets will not be evaluated"
    fi
fi

# begin_build TOOL WORKLOAD MODE [prime] / end_build TOOL WORKLOAD MODE [prime]: with a fresh
# filesystem per build, before a build or a priming: the new filesystem at $SCRATCH and what the
# build starts from copied onto it (kaniko's podman storage; buildah's primed storage root); after
# a priming, buildah's storage root saved for the timed runs. BuildKit's cold builds start buildkitd
# on their fresh filesystem (an empty state, instead of a prune) and stop it after. Its w5, w6 and
# w8 builds are served by one buildkitd, as a long-running daemon would: started at the priming on
# a fresh filesystem of its own ($WORK/bk), kept running through the timed runs (each with its
# context on a fresh $SCRATCH) and stopped by end_workload. Nothing of this without a fresh
# filesystem per build. begin_build sets BEGIN_NOTE when it fails.
begin_build() {
    local tool="$1" w="$2" mode="$3" prime="${4:-}"
    BEGIN_NOTE=""
    [[ -n "$FRESH_FS" ]] || return 0
    if ! fresh_fs b 2>"$WORK/fresh-fs.log"; then
        BEGIN_NOTE="could not make a fresh filesystem at $SCRATCH: $(tail -n1 "$WORK/fresh-fs.log")"
        return 1
    fi
    # BuildKit on a registry cache keeps nothing between builds: a fresh buildkitd, as for cold.
    bk_registry_cache "$tool" "$w" && mode=cold
    case "$tool/$mode" in
        kaniko/*) restore_state podman podman/root ;;
        buildah/cold) ;;
        buildah/*) restore_state "$(buildah_store "$w" "$mode")" "$(buildah_store "$w" "$mode")" ;;
        buildkit/cold)
            BK_DIR="$SCRATCH/buildkit"
            if ! bk_start; then
                BEGIN_NOTE="buildkit.sh start failed (log: $WORK/buildkit-start.log)"
                return 1
            fi ;;
        buildkit/*)
            if [[ -n "$prime" ]]; then
                bk_stop || true
                if ! fresh_fs bk 2>"$WORK/fresh-fs.log"; then
                    BEGIN_NOTE="could not make a fresh filesystem at $WORK/bk: $(tail -n1 "$WORK/fresh-fs.log")"
                    return 1
                fi
                BK_DIR="$WORK/bk/buildkit"
                if ! bk_start; then
                    BEGIN_NOTE="buildkit.sh start failed (log: $WORK/buildkit-start.log)"
                    return 1
                fi
            elif [[ -z "$BK_STARTED" ]]; then
                BEGIN_NOTE="the buildkitd primed for $w is not running"
                return 1
            fi ;;
    esac
}
end_build() {
    local tool="$1" w="$2" mode="$3" prime="${4:-}"
    [[ -n "$FRESH_FS" ]] || return 0
    bk_registry_cache "$tool" "$w" && mode=cold
    case "$tool/$mode" in
        buildah/cold) ;;
        buildah/*) [[ -z "$prime" ]] || save_state "$(buildah_store "$w" "$mode")" "$(buildah_store "$w" "$mode")" ;;
        buildkit/cold) bk_stop || log "could not stop buildkitd in $BK_DIR (log: $WORK/buildkit-stop.log)" ;;
    esac
}
# bk_registry_cache TOOL WORKLOAD: whether this is BuildKit's w8 on a registry cache
# (--w8-cache registry).
bk_registry_cache() {
    [[ "$1" == buildkit && "$2" == w8 && "$W8_CACHE" == registry ]]
}
# end_workload: with a fresh filesystem per build, stops the buildkitd of w5, w6 or w8 and drops
# its filesystem.
end_workload() {
    [[ -n "$FRESH_FS" ]] || return 0
    bk_stop || log "could not stop buildkitd in $BK_DIR (log: $WORK/buildkit-stop.log)"
    drop_fs bk || log "could not unmount $WORK/bk or detach its loop device"
}

# ---- contexts -----------------------------------------------------------------------------------
# Each build gets a fresh copy of its context so no tool sees another's leftovers.
# make_context WORKLOAD DEST RUN: RUN (a number, or "prime") makes w8's source change.
make_context() {
    local w="$1" dest="$2" run="${3:-}" dir
    case "$w" in
        w1) dir=w1-small-files ;; w2) dir=w2-many-files ;; w3) dir=w3-big-files ;;
        w4|w5|w6) dir=w4-debian-steps ;; w7|w7-*) dir=w7-parallel-stages ;;
        w8) dir=w8-source-change ;; w9) dir=w9-cold-pull ;; w10) dir=w10-wide-push ;;
    esac
    rm -rf "$dest"
    cp -r "$ROOT/bench/$dir" "$dest"
    if [[ "$w" == w8 ]]; then
        # The source change: one file (not deps.txt) different in every build, the priming one
        # included. The other files keep one time in every build (a COPY keeps file times, and
        # a layer cache may key on them); the changed file gets the time of the change, as an
        # editor's save or a checkout gives it. With the old time too (same size, same time),
        # BuildKit's context transfer takes the file for unchanged and its rebuild ships the
        # previous build's source, fully cached (seen: runs 2 and 3 of the sixth run);
        # w8_has_change checks every tool's image for the change.
        printf 'const char *build_id = "bench w8 build %s";\n' "$run" >"$dest/src/version.c"
        find "$dest" -exec touch -h -d '2024-01-01 00:00:00Z' {} +
        touch "$dest/src/version.c"
    fi
    if [[ "$w" == w1 ]]; then
        mkdir -p "$dest/files"
        local i letters=abcdefghijklmnopqrstuvwxyz
        for i in $(seq -w 1 200); do
            # 1-4 KiB of deterministic text per file: file i repeats letter i mod 26.
            head -c $(((10#$i % 4 + 1) * 1024)) /dev/zero | tr '\0' "${letters:$((10#$i % 26)):1}" \
                >"$dest/files/f$i.txt"
        done
    fi
}

# w8_has_change TOOL RUN: whether the image TOOL pushed in w8's run RUN holds that run's source
# change: the last layer's /app/app.c (the last RUN concatenates /src into it) names the run's
# build_id. A tool that took the changed file for unchanged ships the previous build's source.
w8_has_change() {
    local repo="bench/w8-$1" run="$2" manifest layer blob accept
    accept='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'
    accept+=',application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json'
    manifest="$(curl -fsS -H "Accept: $accept" "http://$REG/v2/$repo/manifests/latest")" || return 1
    if jq -e '.manifests' >/dev/null <<<"$manifest"; then
        manifest="$(curl -fsS -H "Accept: $accept" "http://$REG/v2/$repo/manifests/$(jq -r \
            '[.manifests[] | select(.platform.os == "linux" and .platform.architecture == "amd64")][0].digest' \
            <<<"$manifest")")" || return 1
    fi
    layer="$(jq -r '.layers[-1].digest' <<<"$manifest")" || return 1
    blob="$(mktemp "$WORK/w8-layer.XXXXXX")"
    # GNU tar recognises the compression of a file (not of a pipe) by itself. The file's text is
    # read whole, then matched: no pipeline whose reader may stop first (pipefail).
    local app=""
    if curl -fsS -o "$blob" "http://$REG/v2/$repo/blobs/$layer"; then
        app="$(tar -xOf "$blob" --wildcards '*app/app.c' 2>/dev/null)" || app=""
    fi
    rm -f "$blob"
    [[ "$app" == *"\"bench w8 build $run\""* ]]
}

# record WORKLOAD TOOL RUN SECONDS EXIT STATUS PEAK_KB NOTE: one line of the raw runs file.
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RUNS_TSV"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# timed LOG -- CMD...: runs CMD under timeout and /usr/bin/time; sets WALL, PEAK_KB (empty when not
# measured), RC and STATUS (ok, timeout or failed).
timed() {
    local logf="$1"; shift; [[ "$1" == -- ]] && shift
    local tf="$logf.time" start end rc=0
    # Untimed: the previous build's dirty pages are written back now, not during this build
    # (on this kind of disk, writeback of a 100,000-file tree slowed the next build's RUN 3-5x).
    sync
    start="$(now)"
    /usr/bin/time -f '%M' -o "$tf" timeout --kill-after=10 "$TIMEOUT" "$@" >"$logf" 2>&1 || rc=$?
    end="$(now)"
    WALL="$(elapsed "$start" "$end")"
    PEAK_KB="$(tail -n1 "$tf" 2>/dev/null | grep -Eo '^[0-9]+$' || true)"
    set_status "$rc"
}
# set_status RC: sets RC and STATUS from a timed command's exit code.
set_status() {
    RC="$1"
    case "$RC" in 0) STATUS=ok ;; 124|137) STATUS=timeout ;; *) STATUS=failed ;; esac
}

# discard CMD ARGS...: removes a build's leftovers later, not now. ext4 skips inodes freed in the
# last 60 s (300 s while their table block is dirty) when allocating new ones (`recently_deleted`),
# so deleting a tree right before the next build makes that build's file creation several times
# slower (seen in perf: 40 % of a 100,000-file RUN's CPU; a Debian base unpack drifted from 1.6 s to
# 7 s over runs that each deleted the previous root). A build in a Pod starts on a fresh container
# filesystem, so every build here should too: leftovers are deleted after the last workload when
# the disk has room for all of them (about 30 GB for everything with --runs 3: vfs storage copies
# each layer), else after each workload, which is then noted in the output.
DEFERRED=()
DEFER_ALL=1
NOW_DISCARD=""
avail_kb="$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')"
if [[ "$(stat -f -c %T "$WORK")" == tmpfs ]]; then
    # tmpfs has no inode allocator to slow down, but holds everything in memory: delete at once.
    NOW_DISCARD=1
elif [[ -z "$FRESH_FS" ]] && ((avail_kb < 40 * 1024 * 1024)); then
    DEFER_ALL=""
    log "less than 40 GB free under $WORK: leftovers are deleted after each workload, so the first builds of a workload may be slowed by the previous one's deletions"
fi
discard() {
    # With a fresh filesystem per build, what is on it goes with it.
    [[ -z "$FRESH_FS" || "$*" != *" $SCRATCH/"* ]] || return 0
    if [[ -n "$NOW_DISCARD" ]]; then "$@"; else DEFERRED+=("$(printf '%q ' "$@")"); fi
}
flush_discards() {
    local c
    ((${#DEFERRED[@]})) || return 0
    for c in "${DEFERRED[@]}"; do eval "$c"; done
    DEFERRED=()
    sync
    DELETED_AT="$(date +%s)"
}
# shellcheck disable=SC2317  # called through discard
podman_rm() { "${PODMAN[@]}" rm -f "$1" >/dev/null 2>&1 || true; }

# destination WORKLOAD TOOL RUN: where a build pushes. w10's every run goes to a repository of its
# own that nothing was pushed to before.
destination() {
    if [[ "$1" == w10 ]]; then
        echo "$REG/bench/w10-$2-$3-$$:latest"
    else
        echo "$REG/bench/$1-$2:latest"
    fi
}

# The bases w11's warmers fetch into an empty cache directory.
WARM_IMAGES=("$REG/kiln-test/busybox:latest" "$REG/kiln-test/debian:bookworm")

# ---- kiln ---------------------------------------------------------------------------------------
# kiln_build WORKLOAD RUN MODE: MODE is cold, cached, warmed, source (w8: a rebuild on the layer
# cache, COPY layers cached too) or warm (w11: kiln-warmer into an empty directory).
kiln_build() {
    # Separate `local`s: words of one `local` are expanded before any of its assignments.
    local w="$1" run="$2" mode="$3"
    local ctx="$SCRATCH/ctx-$w-kiln-$run" extra=()
    if [[ "$mode" == warm ]]; then
        local dir="$SCRATCH/$w-kiln-cache-$run"
        rm -rf "$dir"
        mkdir -p "$dir"
        local images=() image
        for image in "${WARM_IMAGES[@]}"; do images+=(--image "$image"); done
        timed "$WORK/$w-kiln-$run.log" -- "$KWARM" "${images[@]}" --cache-dir "$dir" --insecure
        discard rm -rf "$dir"
        return
    fi
    make_context "$w" "$ctx" "$run"
    case "$mode" in
        cached) extra=(--cache --cache-repo "$REG/bench/cache-kiln-$$") ;;
        warmed) extra=(--cache-dir "$WORK/kiln-base-cache" --build-arg "CHANGE=warm-$run-$$") ;;
        source)
            extra=(--cache --cache-copy-layers)
            if [[ "$W8_CACHE" == local ]]; then
                extra+=(--cache-repo "oci:$WORK/$w-kiln-layer-cache" --cache-dir "$WORK/$w-kiln-base-cache")
            else
                extra+=(--cache-repo "$REG/bench/cache-kiln-$w-$$")
            fi ;;
    esac
    # w7-left / w7-right: one stage of w7 alone.
    [[ "$w" != w7-* ]] || extra+=(--target "${w#w7-}")
    local kdir="$KILN_DIR_PARENT/kiln-dir-$w-$run"
    mkdir -p "$kdir"
    timed "$WORK/$w-kiln-$run.log" -- "$KILN" --context "dir://$ctx" --dockerfile Dockerfile \
        --destination "$(destination "$w" kiln "$run")" --insecure --insecure-pull --isolation chroot \
        --kiln-dir "$kdir" --build-arg "REGISTRY=$REG" "${extra[@]}"
    rm -rf "$ctx"
    discard rm -rf "$kdir"
}

# ---- buildah ------------------------------------------------------------------------------------
# buildah_build WORKLOAD RUN MODE. Cold runs use a fresh storage root (base pulled, no layer cache);
# cached runs reuse the root primed with --layers (w5's, and w8's own); warmed runs reuse a root
# where the base was pulled.
buildah_build() {
    local w="$1" run="$2" mode="$3"
    local store extra=() ctx="$SCRATCH/ctx-$w-buildah-$run"
    make_context "$w" "$ctx" "$run"
    store="$SCRATCH/buildah-$w-$run"
    [[ "$mode" == cold ]] || store="$SCRATCH/$(buildah_store "$w" "$mode")"
    case "$mode" in
        cached|source) extra=(--layers=true) ;;
        warmed) extra=(--build-arg "CHANGE=warm-$run-$$") ;;
    esac
    local img
    img="$(destination "$w" buildah "$run")"
    local b="buildah --root $store/root --runroot $store/run --storage-driver vfs"
    timed "$WORK/$w-buildah-$run.log" -- sh -c "$b bud --isolation chroot --tls-verify=false \
        --build-arg REGISTRY=$REG ${extra[*]} -f Dockerfile -t $img $ctx && \
        $b push --tls-verify=false $img docker://$img"
    if [[ "$mode" == cold ]]; then discard buildah_wipe "$store"; fi
    rm -rf "$ctx"
}
# buildah_store WORKLOAD MODE: the storage root (under $SCRATCH) that a cached (w5), source (w8) or
# warmed (w6) build reuses, primed once.
buildah_store() {
    case "$2" in
        cached) echo buildah-cached ;;
        source) echo "buildah-$1" ;;
        warmed) echo buildah-warmed ;;
    esac
}
buildah_wipe() {
    buildah --root "$1/root" --runroot "$1/run" --storage-driver vfs rm --all >/dev/null 2>&1 || true
    rm -rf "$1"
}

# ---- kaniko -------------------------------------------------------------------------------------
# kaniko_run LOG CONTAINER-NAME PODMAN-RUN-ARGS... -- KANIKO-ARGS: runs the container, polling the
# executor's peak RSS (VmHWM) from /proc; sets WALL, PEAK_KB (empty when never read), RC, STATUS.
kaniko_run() {
    local logf="$1" name="$2"
    shift 2
    local pargs=() start end rc=0 pid="" hwm=0 k v _
    while [[ "$1" != -- ]]; do pargs+=("$1"); shift; done
    shift
    start="$(now)"
    # No --rm: deleting a vfs container root of 100,000 files takes tens of seconds, which is
    # podman's cleanup, not kaniko's build (a Pod's teardown is not part of its build time either).
    timeout --kill-after=10 "$TIMEOUT" "${PODMAN[@]}" run --name "$name" --network host \
        "${pargs[@]}" "$KANIKO_IMAGE" "$@" >"$logf" 2>&1 &
    local job=$!
    while kill -0 "$job" 2>/dev/null; do
        if [[ -z "$pid" || "$pid" == 0 ]]; then
            pid="$("${PODMAN[@]}" inspect -f '{{.State.Pid}}' "$name" 2>/dev/null || true)"
        fi
        if [[ -n "$pid" && "$pid" != 0 && -r "/proc/$pid/status" ]]; then
            while read -r k v _; do
                [[ "$k" == VmHWM: && "$v" -gt "$hwm" ]] && hwm="$v"
            done <"/proc/$pid/status" 2>/dev/null || true
        fi
        sleep 0.1
    done
    wait "$job" || rc=$?
    end="$(now)"
    [[ -n "$FRESH_FS" ]] || discard podman_rm "$name"
    WALL="$(elapsed "$start" "$end")"
    PEAK_KB="$hwm"
    [[ "$hwm" != 0 ]] || PEAK_KB=""
    set_status "$rc"
}

# kaniko_build WORKLOAD RUN MODE: as kiln_build; warm (w11) runs kaniko's warmer in the kaniko image.
kaniko_build() {
    local w="$1" run="$2" mode="$3"
    local ctx="$SCRATCH/ctx-$w-kaniko-$run" extra=() vols=()
    if [[ "$mode" == warm ]]; then
        local dir="$SCRATCH/$w-kaniko-cache-$run"
        rm -rf "$dir"
        mkdir -p "$dir"
        local images=() image
        for image in "${WARM_IMAGES[@]}"; do images+=(--image "$image"); done
        kaniko_run "$WORK/$w-kaniko-$run.log" "kiln-bench-$$-$w-$run" -v "$dir:/cache" \
            --entrypoint /kaniko/warmer -- --cache-dir /cache "${images[@]}" --insecure-pull
        discard rm -rf "$dir"
        return
    fi
    make_context "$w" "$ctx" "$run"
    local reg="$REG"
    case "$mode" in
        cached) extra=(--cache=true --cache-repo "$REG/bench/cache-kaniko-$$") ;;
        source)
            extra=(--cache=true --cache-copy-layers)
            if [[ "$W8_CACHE" == local ]]; then
                # kaniko writes one OCI layout per entry, at PATH:KEY: inside the volume.
                extra+=(--cache-repo oci:/layer-cache/entry --cache-dir /cache)
                vols=(-v "$WORK/$w-kaniko-layer-cache:/layer-cache" -v "$WORK/$w-kaniko-base-cache:/cache")
                reg="$KANIKO_V2S2_REG"
            else
                extra+=(--cache-repo "$REG/bench/cache-kaniko-$w-$$")
            fi ;;
        # Kaniko reads a warmed base only with --cache=true; RUN-layer caching is switched off so
        # the steps are not looked up in (or pushed to) a layer cache. The base is the Docker v2s2
        # copy its warmer read (see KANIKO_V2S2_REG).
        warmed) extra=(--cache=true --cache-dir /cache --cache-run-layers=false --build-arg "CHANGE=warm-$run-$$")
                vols=(-v "$WORK/kaniko-base-cache:/cache")
                reg="$KANIKO_V2S2_REG" ;;
    esac
    kaniko_run "$WORK/$w-kaniko-$run.log" "kiln-bench-$$-$w-$run" -v "$ctx:/workspace" "${vols[@]}" -- \
        --context dir:///workspace --dockerfile Dockerfile --destination "$(destination "$w" kaniko "$run")" \
        --insecure --insecure-pull --build-arg "REGISTRY=$reg" "${extra[@]}"
    rm -rf "$ctx"
}

# ---- buildkit -----------------------------------------------------------------------------------
# buildkit_prune: empties buildkitd's build cache (cold runs, priming); its output goes to a log.
buildkit_prune() {
    bash "$ROOT/scripts/buildkit.sh" prune "$BK_DIR" >>"$WORK/buildkit-prune.log" 2>&1
}

# On a disk, ext4 skips inodes freed in the last 60 s when it allocates new ones (see discard), so
# a build that creates many files right after BuildKit pruned the previous many-file build runs
# several times slower (seen on w2: kiln's 100,000-file RUN 4 s alone, 52 s right after
# BuildKit's prune; kaniko's 24 s and 53 s). BuildKit's cold state is therefore pruned right after
# its run (untimed), and a build of a workload that writes many files (w2, w7, and w4 and w6 with
# their Debian root) first waits until that prune, and the last deletion of leftovers
# (flush_discards), are 65 s old. Not on tmpfs, nor with a fresh filesystem per build.
BK_PRUNED_AT=0
DELETED_AT=0
settle() {
    local w="$1" wait last
    [[ -z "$FRESH_FS" && -z "$NOW_DISCARD" && "$w" =~ ^(w2|w4|w6|w7) ]] || return 0
    last=$((BK_PRUNED_AT > DELETED_AT ? BK_PRUNED_AT : DELETED_AT))
    wait=$((last + 65 - $(date +%s)))
    if ((wait > 0)); then
        log "$w: waiting ${wait}s for ext4 to reuse the inodes the last deletion freed"
        sleep "$wait"
    fi
}

# buildkit_build WORKLOAD RUN MODE: cold runs follow a prune (untimed; with a fresh filesystem per
# build, buildkitd starts on an empty state instead); cached and warmed runs use
# what buildkitd kept (w5, w8 (source): the primed build's cache; w6: the base, pulled by a build of
# another CHANGE).
# PEAK_KB is buildkitd's VmHWM over the build (reset before it), not buildctl's.
buildkit_build() {
    local w="$1" run="$2" mode="$3"
    local ctx="$SCRATCH/ctx-$w-buildkit-$run" extra=() logf="$WORK/$w-buildkit-$run.log" rc=0
    case "$mode" in
        cold)
            [[ -n "$FRESH_FS" ]] || buildkit_prune || rc=$?
            if [[ "$rc" != 0 ]]; then
                echo "bench: buildkit.sh prune failed before this run (log: $WORK/buildkit-prune.log)" >"$logf"
                WALL=0 PEAK_KB=""
                set_status "$rc"
                return
            fi ;;
        warmed) extra=(--opt "build-arg:CHANGE=warm-$run-$$") ;;
    esac
    if bk_registry_cache buildkit "$w"; then
        # Nothing kept by buildkitd: its state is new (a fresh filesystem) or emptied here.
        if [[ -z "$FRESH_FS" ]] && ! buildkit_prune; then
            echo "bench: buildkit.sh prune failed before this run (log: $WORK/buildkit-prune.log)" >"$logf"
            WALL=0 PEAK_KB=""
            set_status 1
            return
        fi
        local cache_ref="$REG/bench/cache-buildkit-$w-$$"
        extra+=(--import-cache "type=registry,ref=$cache_ref"
            --export-cache "type=registry,ref=$cache_ref,mode=max")
    fi
    make_context "$w" "$ctx" "$run"
    # VmHWM back to the current RSS, so that it is this build's peak; unmeasured if that fails.
    local reset=""
    echo 5 2>/dev/null >"/proc/$BK_PID/clear_refs" && reset=1
    timed "$logf" -- "$BUILDCTL" --addr "$BK_ADDR" build --progress plain --frontend dockerfile.v0 \
        --local "context=$ctx" --local "dockerfile=$ctx" --opt "build-arg:REGISTRY=$REG" "${extra[@]}" \
        --output "type=image,name=$(destination "$w" buildkit "$run"),push=true,registry.insecure=true"
    PEAK_KB=""
    if [[ -n "$reset" ]]; then
        PEAK_KB="$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$BK_PID/status" 2>/dev/null || true)"
    fi
    rm -rf "$ctx"
    # A cold build's state goes now, not right before the next tool's build (see settle).
    if [[ "$mode" == cold && -z "$FRESH_FS" ]]; then
        buildkit_prune || true
        BK_PRUNED_AT="$(date +%s)"
    fi
}

# ---- the floor (w9, w10): skopeo copy of the same bytes ------------------------------------------
# floor_build WORKLOAD RUN MODE: w9: the base from the registry into a fresh oci: directory; w10:
# kiln's first pushed image (copied untimed into an oci: layout by prime) to a new repository.
# Timed as the builds are (sync first, /usr/bin/time, timeout). skopeo runs with an empty
# blob-info cache (a tmpfs over /var/lib/containers/cache, in a mount namespace of its own): with
# its cache, skopeo remembers in which repository it saw each blob and mounts it from there
# (cross-repository) instead of uploading it, so w10's floor would push nothing (seen: 1.3 s with
# 51 "mount OK", 3.3 s uploading).
# shellcheck disable=SC2016  # $@ is the inner shell's
SKOPEO_NO_CACHE=(unshare --mount sh -c 'mount -t tmpfs kiln-bench-floor /var/lib/containers/cache && exec skopeo "$@"' skopeo)
# shellcheck disable=SC2317  # called as "${tool}_build"
floor_build() {
    local w="$1" run="$2" dir="$SCRATCH/$1-floor-$2"
    mkdir -p /var/lib/containers/cache
    case "$w" in
        w9) timed "$WORK/$w-floor-$run.log" -- "${SKOPEO_NO_CACHE[@]}" copy --src-tls-verify=false \
                "docker://$W9_BASE" "oci:$dir:latest"
            discard rm -rf "$dir" ;;
        w10) timed "$WORK/$w-floor-$run.log" -- "${SKOPEO_NO_CACHE[@]}" copy --dest-tls-verify=false \
                "oci:$WORK/w10-floor-layout:latest" "docker://$(destination w10 floor "$run")" ;;
    esac
}

# ---- w9's base ----------------------------------------------------------------------------------
# make_w9_base: pushes $W9_BASE unless the registry has it: the bench busybox plus five layers of
# incompressible data (100, 80, 60, 40 and 20 MiB under /w9/layerN/, in files of 4 MiB): AES-128-CTR
# of zeros under a fixed key and an IV per layer (openssl enc), so the same bytes every time. Each
# layer is a tar (sorted, numeric owners, fixed times) compressed with gzip -1 -n; the OCI layout
# is the busybox image copied by skopeo with the layers, config and manifest added by hand (jq),
# and skopeo pushes it.
W9_BASE="$REG/kiln-test/w9-base:latest"
make_w9_base() {
    if skopeo inspect --tls-verify=false --raw "docker://$W9_BASE" >/dev/null 2>&1; then
        log "reusing $W9_BASE"
        return
    fi
    log "making $W9_BASE (300 MiB of incompressible data in 5 layers, gzip -1; not timed)"
    local d="$WORK/w9-base" layout="$WORK/w9-base/layout" i mib size diff digest
    local key=6b696c6e2d62656e63682d77392d3031 blobs="$layout/blobs/sha256"
    rm -rf "$d"
    mkdir -p "$d"
    skopeo copy --quiet --src-tls-verify=false "docker://$REG/kiln-test/busybox:latest" "oci:$layout:latest"
    local manifest config
    manifest="$blobs/$(jq -r '.manifests[0].digest | ltrimstr("sha256:")' "$layout/index.json")"
    jq -e '.mediaType // "application/vnd.oci.image.manifest.v1+json" |
        . == "application/vnd.oci.image.manifest.v1+json"' "$manifest" >/dev/null ||
        die "the bench busybox is not an OCI image manifest"
    config="$blobs/$(jq -r '.config.digest | ltrimstr("sha256:")' "$manifest")"
    cp "$manifest" "$d/manifest.json"
    cp "$config" "$d/config.json"
    i=0
    for mib in 100 80 60 40 20; do
        i=$((i + 1))
        mkdir -p "$d/root/w9/layer$i"
        head -c $((mib * 1024 * 1024)) /dev/zero |
            openssl enc -aes-128-ctr -nosalt -K "$key" -iv "$(printf '%032x' "$i")" |
            split -b 4M -d -a 3 - "$d/root/w9/layer$i/part"
        tar --sort=name --numeric-owner --owner=0 --group=0 --mtime='2024-01-01 00:00:00Z' \
            -C "$d/root" -cf "$d/layer.tar" w9
        rm -rf "$d/root"
        diff="$(sha256sum "$d/layer.tar" | cut -d' ' -f1)"
        gzip -1 -n -c "$d/layer.tar" >"$d/layer.tar.gz"
        rm -f "$d/layer.tar"
        digest="$(sha256sum "$d/layer.tar.gz" | cut -d' ' -f1)"
        size="$(stat -c %s "$d/layer.tar.gz")"
        mv "$d/layer.tar.gz" "$blobs/$digest"
        jq --arg d "sha256:$digest" --argjson s "$size" \
            '.layers += [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $d, size: $s}]' \
            "$d/manifest.json" >"$d/m.json" && mv "$d/m.json" "$d/manifest.json"
        # History only when the base has some (then it must have an entry per layer).
        jq --arg d "sha256:$diff" --arg by "bench.sh: w9 layer $i, $mib MiB of AES-CTR keystream" \
            '.rootfs.diff_ids += [$d] | if .history then .history += [{created: "2024-01-01T00:00:00Z",
                created_by: $by}] else . end' "$d/config.json" >"$d/c.json" && mv "$d/c.json" "$d/config.json"
    done
    digest="$(sha256sum "$d/config.json" | cut -d' ' -f1)"
    cp "$d/config.json" "$blobs/$digest"
    jq --arg d "sha256:$digest" --argjson s "$(stat -c %s "$d/config.json")" \
        '.config.digest = $d | .config.size = $s' "$d/manifest.json" >"$d/m.json"
    digest="$(sha256sum "$d/m.json" | cut -d' ' -f1)"
    cp "$d/m.json" "$blobs/$digest"
    jq -n --arg d "sha256:$digest" --argjson s "$(stat -c %s "$d/m.json")" '{schemaVersion: 2,
        manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
        annotations: {"org.opencontainers.image.ref.name": "latest"}}]}' >"$layout/index.json"
    skopeo copy --quiet --dest-tls-verify=false "oci:$layout:latest" "docker://$W9_BASE"
    rm -rf "$d"
    log "pushed $W9_BASE"
}

# ---- priming for w5 (cached rebuild), w6 (warmed base), w8 (source change) and w10's floor ------
# warm_base TOOL BASE DIR LOG: kiln-warmer or kaniko's warmer (in the kaniko image) fills DIR with
# the base kiln-test/BASE (kaniko: its Docker v2s2 copy, see KANIKO_V2S2_REG); its exit code.
warm_base() {
    local tool="$1" base="$2" dir="$3" logf="$4" rc=0
    mkdir -p "$dir"
    if [[ "$tool" == kiln ]]; then
        timeout "$TIMEOUT" "$KWARM" --image "$REG/kiln-test/$base" --cache-dir "$dir" --insecure \
            >"$logf" 2>&1 || rc=$?
    else
        timeout "$TIMEOUT" "${PODMAN[@]}" run --rm --name "kiln-bench-$$-warmer" --network host \
            -v "$dir:/cache" --entrypoint /kaniko/warmer "$KANIKO_IMAGE" \
            --cache-dir /cache --image "$KANIKO_V2S2_REG/kiln-test/$base" --insecure-pull \
            >"$logf" 2>&1 || rc=$?
    fi
    return "$rc"
}
# prime WORKLOAD TOOL: the untimed first build, warmer or pull (with a fresh filesystem per build,
# on one of its own, and what it primed saved for the timed runs); on failure sets PRIME_NOTE and
# returns 1.
prime() {
    local w="$1" tool="$2" what logf rc=0 mode=cached
    case "$w" in w6) mode=warmed ;; w8) mode=source ;; esac
    log "$w/$tool: priming (not timed)"
    if ! begin_build "$tool" "$w" "$mode" prime; then
        PRIME_RC=1
        PRIME_NOTE="$BEGIN_NOTE"
        log "$w/$tool: priming failed: $PRIME_NOTE"
        return 1
    fi
    case "$w/$tool" in
        w5/buildkit|w8/buildkit)
            # From an empty cache, so that nothing of the other workloads counts; the timed runs
            # then rebuild on what this build left in buildkitd's cache.
            what="the first (cached) build after buildkit.sh prune"
            logf="$WORK/$w-buildkit-prime.log"
            if [[ -n "$FRESH_FS" ]] || buildkit_prune; then
                buildkit_build "$w" prime "$mode"
                rc="$RC"
            else
                rc=$?
                what="buildkit.sh prune"
                logf="$WORK/buildkit-prune.log"
            fi ;;
        w5/*|w8/*)
            # w8 on local caches: the base warmed into the tool's --cache-dir first, and both that
            # and the oci: layer cache empty before.
            if [[ "$w" == w8 && "$W8_CACHE" == local && "$tool" =~ ^(kiln|kaniko)$ ]]; then
                rm -rf "$WORK/$w-$tool-base-cache" "$WORK/$w-$tool-layer-cache"
                mkdir -p "$WORK/$w-$tool-layer-cache"
                what="the warmer (the busybox base into $WORK/$w-$tool-base-cache)"
                logf="$WORK/$w-$tool-warmer.log"
                warm_base "$tool" busybox:latest "$WORK/$w-$tool-base-cache" "$logf" || rc=$?
            fi
            if [[ "$rc" == 0 ]]; then
                what="the first (cached) build"
                logf="$WORK/$w-$tool-prime.log"
                case "$tool" in
                    kiln) kiln_build "$w" prime "$mode" ;;
                    buildah) buildah_build "$w" prime "$mode" ;;
                    kaniko) kaniko_build "$w" prime "$mode" ;;
                esac
                rc="$RC"
            fi ;;
        w10/floor)
            what="skopeo copy of kiln's first push ($(destination w10 kiln 1)) into an OCI layout"
            logf="$WORK/w10-floor-prime.log"
            timeout "$TIMEOUT" skopeo copy --src-tls-verify=false "docker://$(destination w10 kiln 1)" \
                "oci:$WORK/w10-floor-layout:latest" >"$logf" 2>&1 || rc=$? ;;
        w6/kiln)
            what="kiln-warmer"
            logf="$WORK/w6-kiln-warmer.log"
            warm_base kiln debian:bookworm "$WORK/kiln-base-cache" "$logf" || rc=$? ;;
        w6/buildah)
            what="buildah pull"
            logf="$WORK/w6-buildah-pull.log"
            timeout "$TIMEOUT" buildah --root "$SCRATCH/buildah-warmed/root" --runroot "$SCRATCH/buildah-warmed/run" \
                --storage-driver vfs pull --tls-verify=false "$REG/kiln-test/debian:bookworm" \
                >"$logf" 2>&1 || rc=$? ;;
        w6/buildkit)
            # BuildKit has no warmer: its nearest equivalent is a build of w4 with another CHANGE
            # from an empty cache, which pulls the base into its content store and snapshots.
            what="a build of w4 with CHANGE=warm-prime-$$ after buildkit.sh prune"
            logf="$WORK/w6-buildkit-prime.log"
            if [[ -n "$FRESH_FS" ]] || buildkit_prune; then
                buildkit_build w6 prime warmed
                rc="$RC"
            else
                rc=$?
                what="buildkit.sh prune"
                logf="$WORK/buildkit-prune.log"
            fi ;;
        w6/kaniko)
            what="kaniko's warmer (of the Docker v2s2 copy of the base)"
            logf="$WORK/w6-kaniko-warmer.log"
            warm_base kaniko debian:bookworm "$WORK/kaniko-base-cache" "$logf" || rc=$? ;;
    esac
    end_build "$tool" "$w" "$mode" prime || rc=$?
    PRIME_RC="$rc"
    PRIME_NOTE="$what exited $rc (log: $logf)"
    if [[ "$rc" != 0 ]]; then
        log "$w/$tool: priming failed: $PRIME_NOTE; last lines of its log:"
        tail -n 15 "$logf" >&2 || true
        return 1
    fi
}

# ---- the runs -----------------------------------------------------------------------------------
# w7-left and w7-right: kiln building each of w7's two stages alone (--target), right after w7.
# The floor of w9 and w10 (skopeo copy) runs after the tools, when kiln is one of them.
want_work w9 && make_w9_base
for w in w1 w2 w3 w4 w5 w6 w7 w7-left w7-right w8 w9 w10 w11; do
    want_work "${w%-*}" || continue
    mode=cold
    case "$w" in w5) mode=cached ;; w6) mode=warmed ;; w8) mode=source ;; w11) mode=warm ;; esac
    # The tools that run this workload, each primed first when it needs to be.
    tools=()
    for tool in kiln buildah kaniko buildkit; do
        want_tool "$tool" || continue
        [[ "$w" != w7-* || "$tool" == kiln ]] || continue
        # w11: only kiln and kaniko have a warmer.
        [[ "$w" != w11 || "$tool" == kiln || "$tool" == kaniko ]] || continue
        missing=""
        [[ "$tool" != kaniko ]] || missing="$KANIKO_MISSING"
        [[ "$tool" != buildkit ]] || missing="$BUILDKIT_MISSING"
        if [[ -n "$missing" ]]; then
            record "$w" "$tool" - "" "" unavailable "" "$missing"
            continue
        fi
        if [[ "$mode" =~ ^(cached|warmed|source)$ ]] && ! prime "$w" "$tool"; then
            record "$w" "$tool" prime "" "$PRIME_RC" prime-failed "" "$PRIME_NOTE"
            continue
        fi
        tools+=("$tool")
    done
    # The floor comes after the tools in every run (w10's is kiln's first push, primed once
    # that exists).
    floor=""
    if [[ "$w" == w9 || "$w" == w10 ]] && want_tool kiln; then floor=1; fi
    for run in $(seq 1 "$RUNS"); do
        # The tools' order rotates from one run to the next, so that none always follows the
        # same one (whose leftovers and writeback could slow it).
        order=()
        n="${#tools[@]}"
        for ((i = 0; i < n; i++)); do order+=("${tools[$(((i + run - 1) % n))]}"); done
        [[ -z "$floor" ]] || order+=(floor)
        for tool in "${order[@]}"; do
            # w10's floor copies kiln's first push: primed once run 1's tools are done.
            if [[ "$tool" == floor && "$w/$run" == w10/1 ]] && ! prime w10 floor; then
                record w10 floor prime "" "$PRIME_RC" prime-failed "" "$PRIME_NOTE"
                floor=""
                continue
            fi
            settle "$w"
            if begin_build "$tool" "$w" "$mode"; then
                "${tool}_build" "$w" "$run" "$mode"
                end_build "$tool" "$w" "$mode"
            else
                echo "bench: $BEGIN_NOTE" >"$WORK/$w-$tool-$run.log"
                WALL=0 PEAK_KB=""
                set_status 1
            fi
            note=""
            [[ "$STATUS" != timeout ]] || note="killed after ${TIMEOUT}s"
            if [[ "$w" == w8 && "$STATUS" == ok ]] && ! w8_has_change "$tool" "$run"; then
                # Not a rebuild of the change: no figure to compare.
                STATUS=failed
                note="the pushed image lacks this run's source change"
                echo "bench: $note (checked by w8_has_change)" >>"$WORK/$w-$tool-$run.log"
            fi
            record "$w" "$tool" "$run" "$WALL" "$RC" "$STATUS" "$PEAK_KB" "$note"
            peak="not measured"
            [[ -z "$PEAK_KB" ]] || peak="$((PEAK_KB / 1024)) MB"
            log "$w $tool run $run: $STATUS (exit $RC) ${WALL}s, peak $peak"
            if [[ "$STATUS" != ok ]]; then
                log "last lines of $WORK/$w-$tool-$run.log:"
                tail -n 15 "$WORK/$w-$tool-$run.log" >&2 || true
            fi
            if [[ "$tool" == kiln && "$w" != w11 ]]; then
                # Per-step durations from kiln's log, for the profile in bench/RESULTS.md; for w8
                # also each step's text line, for its cache target.
                pattern='step [0-9]+/[0-9]+ done in [0-9.]+m?s.*'
                [[ "$w" != w8 ]] || pattern='step [0-9]+/[0-9]+(: | done in [0-9.]+m?s).*'
                grep -Eo "$pattern" "$WORK/$w-kiln-$run.log" |
                    sed "s/^/$w\t$run\t/" >>"$STEPS_TSV" || true
            fi
        done
    done
    # w10's floor image: a layout of kiln's first push, no longer needed.
    [[ "$w" != w10 ]] || rm -rf "$WORK/w10-floor-layout"
    [[ -n "$DEFER_ALL" ]] || flush_discards
    end_workload
done
flush_discards
if [[ -z "$FRESH_FS" ]]; then
    want_work w5 && want_tool buildah && buildah_wipe "$WORK/buildah-cached"
    want_work w6 && want_tool buildah && buildah_wipe "$WORK/buildah-warmed"
    want_work w8 && want_tool buildah && buildah_wipe "$WORK/buildah-w8"
fi


rc=0
TABLE="$(summarize "$RUNS_TSV" "$STEPS_TSV")" || rc=$?
echo "$TABLE"
echo "$TABLE" >"$RESULTS_OUT"
log "table: $RESULTS_OUT; raw runs: $RUNS_TSV; kiln's step lines: $STEPS_TSV"
finish "$rc"

//! Stages as a graph: stages before the target that need nothing of each other are built at the
//! same time (one per core), the target after every stage it reads, and a failing stage stops the
//! others. Real builds by the `kiln-executor` binary over the test registry's busybox, written as
//! OCI layouts and read back; only temporary directories and the local test registry.

mod support;

use kiln_testkit::require_root;
use support::{layout_entry, Build};

fn ready() -> bool {
    if !require_root("stages in chroot isolation need root") {
        return false;
    }
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("skipped: one core builds one stage at a time");
        return false;
    }
    true
}

/// Each of two stages leaves its mark in a shared cache mount and waits (at most 60 s) for the
/// other's: the build succeeds only when both steps run at once. The final stage copies from
/// both.
#[test]
fn independent_stages_are_built_at_the_same_time() {
    if !ready() {
        return;
    }
    let wait = |me: &str| {
        format!(
            "RUN --mount=type=cache,id=rendezvous,target=/r \\\n\
             touch /r/{me}; \\\n\
             for i in $(seq 1 600); do \\\n\
               if [ -e /r/left ] && [ -e /r/right ]; then echo {me} > /{me}; exit 0; fi; \\\n\
               sleep 0.1; \\\n\
             done; echo \"{me} waited alone\"; exit 1\n"
        )
    };
    let b = Build::new(
        &format!(
            "FROM BASE AS left\n{}\
             FROM BASE AS right\n{}\
             FROM BASE\n\
             COPY --from=left /left /left\n\
             COPY --from=right /right /right\n",
            wait("left"),
            wait("right")
        ),
        &[],
    );
    let log = b.ok(1, &[], &[]);
    assert!(log.contains("2 stages are built at a time"), "{log}");
    let layout = b.layout(1);
    assert_eq!(layout_entry(&layout, "/left").as_deref(), Some("left\n"));
    assert_eq!(layout_entry(&layout, "/right").as_deref(), Some("right\n"));
}

/// A stage that needs another waits for it, even when it comes first in a lane: `second` reads
/// `first`, which is slow; the target reads both.
#[test]
fn a_stage_starts_after_the_stages_it_reads() {
    if !ready() {
        return;
    }
    let b = Build::new(
        "FROM BASE AS first\n\
         RUN sleep 1 && echo first > /first\n\
         FROM BASE AS other\n\
         RUN echo other > /other\n\
         FROM first AS second\n\
         COPY --from=other /other /other\n\
         RUN cat /first /other > /both\n\
         FROM BASE\n\
         COPY --from=second /both /both\n",
        &[],
    );
    b.ok(1, &[], &[]);
    assert_eq!(
        layout_entry(&b.layout(1), "/both").as_deref(),
        Some("first\nother\n")
    );
}

/// When a stage fails, the one built beside it stops before its next step, and the error is
/// the failed stage's.
#[test]
fn a_failing_stage_stops_the_others() {
    if !ready() {
        return;
    }
    let b = Build::new(
        "FROM BASE AS slow\n\
         RUN sleep 2\n\
         RUN sleep 2\n\
         RUN sleep 2\n\
         RUN sleep 2\n\
         RUN echo never > /never\n\
         FROM BASE AS broken\n\
         RUN echo broken-stage; exit 7\n\
         FROM BASE\n\
         COPY --from=slow /never /never\n\
         COPY --from=broken /x /x\n",
        &[],
    );
    let (ok, log) = b.run(1, &[], &[]);
    assert!(!ok, "{log}");
    assert!(log.contains("exited with code 7"), "{log}");
    assert!(!log.contains("step 5/5"), "the slow stage went on: {log}");
    assert!(
        !log.contains("another stage of the build failed\n"),
        "{log}"
    );
}

/// With the layer cache, a rebuild takes every step of the stages built at the same time from
/// the cache, and the target, which starts FROM one of them, gets that stage's layers (cache
/// hits downloaded by the lane that looked them up).
#[test]
fn a_cached_rebuild_of_stages_built_at_the_same_time() {
    if !ready() {
        return;
    }
    let b = Build::new(
        "FROM BASE AS base\n\
         RUN echo base > /base\n\
         FROM BASE AS tool\n\
         RUN echo tool > /tool\n\
         FROM base\n\
         COPY --from=tool /tool /tool\n\
         RUN cat /base /tool > /both\n",
        &[],
    );
    let cache = format!("oci:{}", b.dir.path().join("layer-cache").display());
    let first = b.ok(1, &["--cache", "--cache-repo", &cache], &[]);
    assert!(first.contains("2 stages are built at a time"), "{first}");
    let second = b.ok(2, &["--cache", "--cache-repo", &cache], &[]);
    // Both stages' RUN and the target's RUN (COPY is not cached by default, as in kaniko).
    assert!(second.contains("cache: 3 hits, 0 misses"), "{second}");
    for layout in [b.layout(1), b.layout(2)] {
        assert_eq!(
            layout_entry(&layout, "/both").as_deref(),
            Some("base\ntool\n")
        );
    }
}

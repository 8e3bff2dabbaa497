//! Layer cache and base-image cache, end to end: the real `kiln-executor` binary against the
//! local test registry (`KILN_TEST_REGISTRY`). Each test uses repositories of its own, so tests
//! run in parallel and never disturb the shared base images.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_testkit::{fetch_rootfs, registry, run_bounded, run_ok, skopeo_delete, umoci_unpack};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// A repository name no other test (or earlier run) uses.
fn unique_repo(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}/cachetest/{name}-{}-{nanos}",
        registry(),
        std::process::id()
    )
}

struct Build {
    digest: String,
    log: String,
    /// The termination message (what the operator reads): digest, cache counts, size.
    termination: serde_json::Value,
}

/// Runs kiln-executor on `context` pushing to `dest`, with `extra` flags; returns the digest and log.
fn build(context: &Path, dest: &str, extra: &[&str]) -> Build {
    let digest_file = context
        .parent()
        .expect("context has a parent")
        .join("digest");
    let _ = fs::remove_file(&digest_file);
    // As in a Pod, the termination message file exists before the executor starts.
    fs::write(context.parent().expect("parent").join("termination"), "")
        .expect("create the termination message file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.arg("--context")
        .arg(format!("dir://{}", context.display()))
        .args([
            "--destination",
            dest,
            "--insecure",
            "--insecure-pull",
            "--reproducible",
        ])
        .arg("--digest-file")
        .arg(&digest_file)
        .args(extra)
        .env(
            "KILN_TERMINATION_LOG",
            context.parent().expect("parent").join("termination"),
        );
    let out = run_ok(&mut cmd, BUILD_TIMEOUT).unwrap_or_else(|e| panic!("kiln build failed: {e}"));
    let digest = fs::read_to_string(&digest_file)
        .expect("kiln wrote --digest-file")
        .trim()
        .to_string();
    let termination = fs::read_to_string(context.parent().expect("parent").join("termination"))
        .expect("kiln wrote the termination message");
    Build {
        digest,
        log: out.stderr,
        termination: serde_json::from_str(&termination).expect("termination message is JSON"),
    }
}

/// The log lines that finish a step (`step N/M done in …`) or report a skipped-base hit.
fn step_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("] step ") && (l.contains(" done in ") || l.contains("(cache hit")))
        .collect()
}

fn count(log: &str, needle: &str) -> usize {
    step_lines(log)
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn context_with(dockerfile: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).expect("context dir");
    fs::write(ctx.join("Dockerfile"), dockerfile).expect("Dockerfile");
    for (name, content) in files {
        fs::write(ctx.join(name), content).expect("context file");
    }
    dir
}

fn busybox() -> String {
    format!("{}/kiln-test/busybox:latest", registry())
}

/// A rebuild of an unchanged context hits every RUN: the RUNs write the current time, so a step
/// that ran again would produce a different layer and image digest. The log says so for each
/// step and counts hits and misses; the cached rebuild of a deterministic Dockerfile gives the
/// same digest as a build without cache.
#[test]
fn unchanged_rebuild_hits_every_run() {
    let dockerfile = format!(
        "FROM {}\nRUN date +%s%N > /first\nCOPY a.txt /a.txt\nRUN cat /a.txt /first > /second; date +%s%N >> /second\nENV DONE=1\n",
        busybox()
    );
    let dir = context_with(&dockerfile, &[("a.txt", "one\n")]);
    let ctx = dir.path().join("ctx");
    let dest = unique_repo("unchanged");
    let cold = build(&ctx, &format!("{dest}:1"), &["--cache"]);
    assert_eq!(
        count(&cold.log, "cache miss"),
        2,
        "cold build: both RUNs miss\n{}",
        cold.log
    );
    assert!(cold.log.contains("cache: 0 hits, 2 misses"), "{}", cold.log);
    assert_eq!(
        count(&cold.log, "not cacheable"),
        2,
        "COPY (flag off) and ENV are not cacheable\n{}",
        cold.log
    );

    let warm = build(&ctx, &format!("{dest}:2"), &["--cache"]);
    assert_eq!(count(&warm.log, "cache hit"), 2, "{}", warm.log);
    assert_eq!(count(&warm.log, "cache miss"), 0, "{}", warm.log);
    assert!(warm.log.contains("cache: 2 hits, 0 misses"), "{}", warm.log);
    // The termination message carries the counts and the image's size in the registry.
    assert_eq!(
        cold.termination["cache"],
        serde_json::json!({"hits": 0, "misses": 2})
    );
    assert_eq!(
        warm.termination["cache"],
        serde_json::json!({"hits": 2, "misses": 0})
    );
    let size = kiln_testkit::registry_image_size(&format!("{dest}:2")).expect("manifest size");
    assert_eq!(warm.termination["size"], size, "{}", warm.termination);
    assert_eq!(
        warm.digest, cold.digest,
        "a RUN ran again: its timestamp changed the image"
    );
}

/// Changing one context file makes exactly the steps after its COPY miss; a build argument no
/// step declares changes nothing.
#[test]
fn changed_file_misses_after_its_copy_and_unused_arg_does_not() {
    let dockerfile = format!(
        "FROM {}\nRUN echo before > /before\nCOPY a.txt /a.txt\nRUN cat /a.txt > /after\nRUN echo last > /last\n",
        busybox()
    );
    let dir = context_with(&dockerfile, &[("a.txt", "one\n")]);
    let ctx = dir.path().join("ctx");
    let dest = unique_repo("changed");
    let flags = ["--cache", "--cache-copy-layers"];
    let first = build(&ctx, &format!("{dest}:1"), &flags);
    assert!(
        first.log.contains("cache: 0 hits, 4 misses"),
        "{}",
        first.log
    );

    let unused = build(
        &ctx,
        &format!("{dest}:2"),
        &[
            "--cache",
            "--cache-copy-layers",
            "--build-arg",
            "NOBODY_DECLARES=x",
        ],
    );
    assert!(
        unused.log.contains("cache: 4 hits, 0 misses"),
        "an undeclared build arg caused a miss\n{}",
        unused.log
    );
    assert_eq!(unused.digest, first.digest);

    fs::write(ctx.join("a.txt"), "two\n").expect("change a.txt");
    let changed = build(&ctx, &format!("{dest}:3"), &flags);
    let lines = step_lines(&changed.log);
    assert_eq!(lines.len(), 4, "{}", changed.log);
    assert!(
        lines[0].contains("cache hit"),
        "RUN before the COPY must hit: {}",
        lines[0]
    );
    for line in &lines[1..] {
        assert!(
            line.contains("cache miss"),
            "steps from the changed COPY on must miss: {line}"
        );
    }
    assert_ne!(changed.digest, first.digest);
}

/// A build whose steps are all cache hits does not download the base image's layers; pushing
/// to a repository that lacks them fetches them then, and the image is complete and identical.
#[test]
fn all_hits_skip_the_base_layers() {
    let dockerfile = format!(
        "FROM {}\nRUN echo hi > /hi\nUSER 1000\nCMD [\"sh\"]\n",
        busybox()
    );
    let dir = context_with(&dockerfile, &[]);
    let ctx = dir.path().join("ctx");
    let dest = unique_repo("skipbase");
    let cache_repo = format!("{dest}-cache");
    let flags = ["--cache", "--cache-repo", cache_repo.as_str()];
    let first = build(&ctx, &format!("{dest}:1"), &flags);
    assert!(
        !first.log.contains("base image layers not needed"),
        "{}",
        first.log
    );

    // A destination repository that has none of the blobs.
    let other = unique_repo("skipbase-other");
    let second = build(&ctx, &format!("{other}:1"), &flags);
    assert!(
        second.log.contains("base image layers not needed"),
        "{}",
        second.log
    );
    assert!(
        !second.log.contains("pulled "),
        "the base image was pulled\n{}",
        second.log
    );
    assert!(
        second.log.contains("cache: 1 hits, 0 misses"),
        "{}",
        second.log
    );
    assert_eq!(second.digest, first.digest);

    // The pushed image is whole: flatten it and find both the base and the cached file.
    let work = tempfile::tempdir().expect("temp dir");
    let rootfs =
        fetch_rootfs(&format!("{other}:1"), work.path(), "img").expect("fetch the pushed image");
    assert_eq!(
        fs::read_to_string(rootfs.join("hi")).expect("/hi from the cached layer"),
        "hi\n"
    );
    assert!(
        rootfs.join("bin/busybox").exists(),
        "base layer missing from the pushed image"
    );

    // Written to a docker archive instead of pushed: the layers the build skipped are fetched
    // for the archive, which skopeo and umoci then read whole.
    let archive = work.path().join("image.tar");
    let archive_flag = archive.display().to_string();
    let mut tar_flags = flags.to_vec();
    tar_flags.extend(["--no-push", "--tar-path", archive_flag.as_str()]);
    let third = build(&ctx, &format!("{other}:2"), &tar_flags);
    assert!(
        third.log.contains("base image layers not needed"),
        "{}",
        third.log
    );
    let layout = work.path().join("from-archive");
    run_ok(
        std::process::Command::new("skopeo").args([
            "copy",
            "--quiet",
            &format!("docker-archive:{}", archive.display()),
            &format!("oci:{}:arch", layout.display()),
        ]),
        std::time::Duration::from_secs(120),
    )
    .expect("skopeo reads the archive");
    let flat = work.path().join("rootfs-archive");
    umoci_unpack(&layout, "arch", &flat).expect("umoci flattens the archive");
    assert_eq!(fs::read_to_string(flat.join("hi")).unwrap(), "hi\n");
    assert!(
        flat.join("bin/busybox").exists(),
        "base layer missing from the archive"
    );
}

/// An `oci:` cache repository works like a registry one.
#[test]
fn oci_layout_cache_repo() {
    let dockerfile = format!("FROM {}\nRUN date +%s%N > /t\n", busybox());
    let dir = context_with(&dockerfile, &[]);
    let ctx = dir.path().join("ctx");
    let repo = format!("oci:{}", dir.path().join("cache").display());
    let dest = unique_repo("ocicache");
    let first = build(
        &ctx,
        &format!("{dest}:1"),
        &["--cache", "--cache-repo", &repo],
    );
    assert!(
        first.log.contains("cache: 0 hits, 1 misses"),
        "{}",
        first.log
    );
    assert!(dir.path().join("cache/index.json").is_file());
    let second = build(
        &ctx,
        &format!("{dest}:2"),
        &["--cache", "--cache-repo", &repo],
    );
    assert!(
        second.log.contains("cache: 1 hits, 0 misses"),
        "{}",
        second.log
    );
    assert_eq!(second.digest, first.digest);
}

/// Copies the busybox base to a repository of the calling test's own (which it may delete or
/// damage) and returns its reference.
fn busybox_copy(name: &str) -> String {
    let base = format!("{}:latest", unique_repo(name));
    run_ok(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}", busybox()),
            &format!("docker://{base}"),
        ]),
        Duration::from_secs(120),
    )
    .expect("copy the base image to a repository of this test");
    base
}

/// Warms `base` into the base-image cache at `cache_dir`, as kiln-warmer does.
fn warm(cache_dir: &Path, base: &str) -> kiln_oci::base_cache::Stored {
    let cache = kiln_oci::base_cache::BaseImageCache::open(cache_dir, Duration::from_secs(3600))
        .expect("open cache");
    let reg = kiln_oci::registry::Registry::new(kiln_oci::registry::RegistryOptions {
        insecure_pull: true,
        ..Default::default()
    })
    .expect("registry client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(cache.store(&reg, base, false))
        .expect("warm the base image")
}

/// With `--cache-dir` warmed, a build works after the base image is deleted from the registry.
#[test]
fn warmed_base_builds_without_the_registry_copy() {
    let base = busybox_copy("warmbase");
    let dir = context_with(&format!("FROM {base}\nRUN echo warmed > /w\n"), &[]);
    let cache_dir = dir.path().join("base-cache");
    warm(&cache_dir, &base);
    skopeo_delete(&base).expect("delete the base image from the registry");

    let ctx = dir.path().join("ctx");
    let cache_arg = cache_dir.display().to_string();
    let built = build(
        &ctx,
        &format!("{}:1", unique_repo("warmed")),
        &["--cache-dir", &cache_arg],
    );
    assert!(
        built.log.contains("read from the base-image cache"),
        "{}",
        built.log
    );
}

/// A warmed base pushed to the registry it was warmed from: its layer is mounted from the
/// base's repository there, as a pulled base's is, not uploaded a second time; and the pushed
/// image names it.
#[test]
fn warmed_base_layers_are_mounted_from_their_repository() {
    let base = busybox_copy("warmmount");
    let dir = context_with(&format!("FROM {base}\nRUN echo warmed > /w\n"), &[]);
    let cache_dir = dir.path().join("base-cache");
    let stored = warm(&cache_dir, &base);
    let base_layer = &stored.image.layers[0].digest;
    let ctx = dir.path().join("ctx");
    let cache_arg = cache_dir.display().to_string();
    let dest = format!("{}:1", unique_repo("warmmount"));
    let built = build(&ctx, &dest, &["--cache-dir", &cache_arg]);
    assert!(
        built.log.contains("read from the base-image cache"),
        "{}",
        built.log
    );
    assert!(built.log.contains("mounted=1"), "{}", built.log);
    let raw = run_ok(
        Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{dest}"),
        ]),
        Duration::from_secs(60),
    )
    .expect("inspect the pushed image");
    assert!(raw.stdout.contains(base_layer.as_str()), "{}", raw.stdout);
}

/// A builder stage used only through `COPY --from` is cached too: its timestamped artifact is
/// reused by the rebuild, so the final image is the same.
#[test]
fn builder_stage_steps_are_cached() {
    let dockerfile = format!(
        "FROM {b} AS build\nRUN date +%s%N > /artifact\nFROM {b}\nCOPY --from=build /artifact /artifact\nRUN cat /artifact > /copy\n",
        b = busybox()
    );
    let dir = context_with(&dockerfile, &[]);
    let ctx = dir.path().join("ctx");
    let dest = unique_repo("multistage");
    let first = build(&ctx, &format!("{dest}:1"), &["--cache"]);
    assert!(
        first.log.contains("cache: 0 hits, 2 misses"),
        "{}",
        first.log
    );
    let second = build(&ctx, &format!("{dest}:2"), &["--cache"]);
    assert!(
        second.log.contains("cache: 2 hits, 0 misses"),
        "{}",
        second.log
    );
    assert_eq!(
        second.digest, first.digest,
        "the builder stage's RUN ran again"
    );
}

#[test]
fn cached_images_equal_the_uncached_image() {
    // Deterministic steps only, so an uncached build can be compared digest for digest.
    let dockerfile = format!(
        "FROM {base} AS builder\nRUN mkdir /out && echo built > /out/artifact\n\
         FROM {base}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy && chmod 0600 /copy\n\
         COPY --from=builder /out/artifact /artifact\nUSER nobody\n",
        base = busybox()
    );
    let dir = context_with(&dockerfile, &[("a.txt", "same\n")]);
    let ctx = dir.path().join("ctx");
    let dest = unique_repo("equal");
    let plain = build(&ctx, &format!("{dest}:plain"), &[]);
    let cold = build(
        &ctx,
        &format!("{dest}:cold"),
        &["--cache", "--cache-copy-layers"],
    );
    let warm = build(
        &ctx,
        &format!("{dest}:warm"),
        &["--cache", "--cache-copy-layers"],
    );
    assert!(warm.log.contains("cache: 4 hits, 0 misses"), "{}", warm.log);
    assert_eq!(
        cold.digest, plain.digest,
        "a cold cached build differs from an uncached one\n{}",
        cold.log
    );
    assert_eq!(
        warm.digest, plain.digest,
        "a build from cache differs from an uncached one\n{}",
        warm.log
    );
}

/// Removes from an `oci:` cache repository the entry of the step whose command contains
/// `needle` (read from each entry's config history); panics unless exactly one matches.
fn forget_cached_step(cache: &Path, needle: &str) {
    let index_path = cache.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).expect("read index.json")).expect("json");
    let blob = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        serde_json::from_slice(&fs::read(cache.join("blobs/sha256").join(hex)).expect("blob"))
            .expect("json blob")
    };
    let manifests = index["manifests"].as_array_mut().expect("manifests");
    let before = manifests.len();
    manifests.retain(|entry| {
        let manifest = blob(entry["digest"].as_str().expect("digest"));
        let config = blob(
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest"),
        );
        !config["history"][0]["created_by"]
            .as_str()
            .unwrap_or_default()
            .contains(needle)
    });
    assert_eq!(
        manifests.len() + 1,
        before,
        "expected exactly one cache entry for {needle:?}"
    );
    fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("write index.json");
}

/// Lookups run ahead of the steps, but the build behaves as if it looked each step up in turn:
/// hits before the first miss are applied, the missed step runs, and a later step that is still
/// cached (its key depends on the previous key, not on the layer) is applied after it, in order.
/// The RUNs write random UUIDs, so a step that ran again shows in its file (busybox's `date`
/// has no nanoseconds); /shared is written by steps 3 and 4, so applying step 4's cached layer
/// before running step 3 would show too.
#[test]
fn a_missing_step_runs_and_later_hits_are_applied_in_order() {
    let uuid = "cat /proc/sys/kernel/random/uuid";
    let dockerfile = format!(
        "FROM {}\n\
         RUN {uuid} > /s1\n\
         RUN {uuid} > /s2\n\
         RUN {uuid} > /s3; echo three > /shared\n\
         RUN {uuid} > /s4; echo four > /shared\n\
         RUN {uuid} > /s5\n",
        busybox()
    );
    let dir = context_with(&dockerfile, &[]);
    let ctx = dir.path().join("ctx");
    let cache = dir.path().join("cache");
    let repo = format!("oci:{}", cache.display());
    let flags = ["--cache", "--cache-repo", repo.as_str()];
    let dest = unique_repo("firstmiss");
    let cold = build(&ctx, &format!("{dest}:cold"), &flags);
    assert!(cold.log.contains("cache: 0 hits, 5 misses"), "{}", cold.log);

    forget_cached_step(&cache, "/s3");
    let rebuilt = build(&ctx, &format!("{dest}:rebuilt"), &flags);
    let lines = step_lines(&rebuilt.log);
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| {
            if l.contains("cache hit") {
                "hit"
            } else if l.contains("cache miss") {
                "miss"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(
        outcomes,
        ["hit", "hit", "miss", "hit", "hit"],
        "{}",
        rebuilt.log
    );
    assert!(
        rebuilt.log.contains("cache: 4 hits, 1 misses"),
        "{}",
        rebuilt.log
    );

    let work = tempfile::tempdir().expect("temp dir");
    let old =
        fetch_rootfs(&format!("{dest}:cold"), work.path(), "cold").expect("fetch the cold image");
    let new = fetch_rootfs(&format!("{dest}:rebuilt"), work.path(), "rebuilt")
        .expect("fetch the rebuilt image");
    let read = |root: &Path, name: &str| fs::read_to_string(root.join(name)).expect(name);
    for cached in ["s1", "s2", "s4", "s5"] {
        assert_eq!(
            read(&old, cached),
            read(&new, cached),
            "/{cached} comes from the cache"
        );
    }
    assert_ne!(read(&old, "s3"), read(&new, "s3"), "step 3 ran again");
    assert_eq!(
        read(&new, "shared"),
        "four\n",
        "step 4 applied before step 3"
    );
}

/// A warmed layer blob is verified while it is unpacked, not read twice. One that was replaced
/// by another valid layer of the same size (with a file /planted in it) is applied, found not
/// to match its digest at its end, thrown away with everything it wrote, and the image is
/// pulled from the registry instead: the image equals one built without the cache, whose RUN
/// lists / (so a leftover /planted would change it). Without a registry copy the build fails,
/// naming the damaged blob.
#[test]
fn damaged_warmed_layer_is_discarded_and_the_base_pulled() {
    let base = busybox_copy("damagedbase");
    let dir = context_with(&format!("FROM {base}\nRUN ls -a / > /listing\n"), &[]);
    let ctx = dir.path().join("ctx");
    let cache_dir = dir.path().join("base-cache");
    let stored = warm(&cache_dir, &base);
    let plain = build(&ctx, &format!("{}:plain", unique_repo("damaged")), &[]);

    // Another valid layer, padded to the real one's size so that only its digest is wrong.
    let blob = &stored.image.layers[0].path;
    let size = fs::metadata(blob).expect("cached layer").len() as usize;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path("planted").expect("name");
    header.set_size(7);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append(&header, &b"planted"[..]).expect("entry");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar.into_inner().expect("tar")).expect("gzip");
    let mut planted = gz.finish().expect("gzip");
    assert!(planted.len() < size, "the replacement must fit");
    planted.resize(size, 0);
    fs::write(blob, &planted).expect("replace the cached layer");

    let cache_arg = cache_dir.display().to_string();
    let rebuilt = build(
        &ctx,
        &format!("{}:warmed", unique_repo("damaged")),
        &["--cache-dir", &cache_arg],
    );
    assert!(
        rebuilt.log.contains("read from the base-image cache"),
        "the damaged entry was not even used\n{}",
        rebuilt.log
    );
    assert!(
        rebuilt.log.contains("does not match its digest")
            && rebuilt.log.contains("pulling the image from its registry"),
        "{}",
        rebuilt.log
    );
    assert_eq!(
        rebuilt.digest, plain.digest,
        "the image differs from one built without the cache (a leftover of the damaged layer?)\n{}",
        rebuilt.log
    );

    skopeo_delete(&base).expect("delete the base image from the registry");
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .arg("--context")
            .arg(format!("dir://{}", ctx.display()))
            .args([
                "--destination",
                &format!("{}:failed", unique_repo("damaged")),
            ])
            .args([
                "--insecure",
                "--insecure-pull",
                "--reproducible",
                "--cache-dir",
                &cache_arg,
            ])
            .env(
                "KILN_TERMINATION_LOG",
                dir.path().join("termination-failed"),
            ),
        BUILD_TIMEOUT,
    )
    .expect("run kiln-executor");
    assert!(
        !out.success(),
        "built from a damaged cache entry\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("does not match its digest")
            && out.stderr.contains(&stored.image.layers[0].digest),
        "{}",
        out.stderr
    );
}

/// A build whose last step fails still stores the cache entries of the steps before it (their
/// pushes run in the background and are awaited, not cut off by the end of the build, which
/// made their threads panic): the rerun with the step fixed hits them.
#[test]
fn a_failed_build_keeps_the_entries_of_its_earlier_steps() {
    let failing = format!(
        "FROM {}\nRUN date +%s%N > /first\nCOPY a.txt /a.txt\nRUN cat /a.txt; exit 3\n",
        busybox()
    );
    let dir = context_with(&failing, &[("a.txt", "one\n")]);
    let ctx = dir.path().join("ctx");
    let dest = unique_repo("failed");
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .arg("--context")
            .arg(format!("dir://{}", ctx.display()))
            .args(["--destination", &format!("{dest}:1")])
            .args([
                "--insecure",
                "--insecure-pull",
                "--cache",
                "--cache-copy-layers",
            ]),
        BUILD_TIMEOUT,
    )
    .expect("kiln-executor runs");
    assert_eq!(out.status, Some(1), "the RUN fails: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(count(&out.stderr, "cache miss"), 2, "{}", out.stderr);

    fs::write(
        ctx.join("Dockerfile"),
        failing.replace("RUN cat /a.txt; exit 3", "RUN cat /a.txt > /copy"),
    )
    .unwrap();
    let fixed = build(
        &ctx,
        &format!("{dest}:2"),
        &["--cache", "--cache-copy-layers"],
    );
    assert!(
        fixed.log.contains("cache: 2 hits, 1 misses"),
        "the RUN and the COPY before the failed step hit: {}",
        fixed.log
    );
}

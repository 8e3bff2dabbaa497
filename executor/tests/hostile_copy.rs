//! Hostile COPY sources through the real `kiln-executor` binary, offline (`FROM scratch`, a
//! directory context, `--no-push --oci-layout-path`): a first stage takes symlinks out of the
//! build (absolute, `../..` chains, to a directory, loops) from the context, copied as symlinks
//! inside a directory, and a second stage copies them with `COPY --from` by glob, by directory
//! and by name; heredoc names try to climb out of the scratch directory. Each build runs twice:
//! with the kernel's `openat2` (where this kernel has it) and with the userspace fallback
//! (`KILN_FORCE_RESOLVE_FALLBACK=1`).
//!
//! Checked on the host after every build: the marker files' content appears in no blob of the
//! output layout (layers decompressed), in no file the build left under its work directory and
//! not in the log; the files beside the markers (a victim among them) are unchanged and nothing
//! appeared next to them; the build either copied what the links name inside the stage (as
//! BuildKit does) or failed with an error naming the source. Safe for the CI machine whatever
//! regresses: every path a regression could reach is under this test's temporary directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_testkit::{require_root, run_bounded};

mod support;

/// One build on a loaded machine: generous, but bounded.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The environment variable that forces the userspace fallback (kiln's `FORCE_FALLBACK_ENV`).
const FORCE_FALLBACK: &str = "KILN_FORCE_RESOLVE_FALLBACK";

/// The host side: secrets the build must never read and a victim it must never write.
struct Host {
    dir: PathBuf,
    /// Unique content of the marker files (`marker`, `subdir/inner`).
    secret: String,
}

impl Host {
    fn new(base: &Path) -> Host {
        let dir = base.join("host");
        fs::create_dir_all(dir.join("subdir")).unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let secret = format!("kiln-hostile-marker-{}-{nanos}", std::process::id());
        fs::write(dir.join("marker"), &secret).unwrap();
        fs::write(dir.join("subdir/inner"), &secret).unwrap();
        fs::write(dir.join("victim"), "victim intact").unwrap();
        Host { dir, secret }
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("marker")
    }

    /// Nothing read from here may show, nothing written here may appear.
    fn assert_untouched(&self, case: &str) {
        let mut names: Vec<_> = walkdir::WalkDir::new(&self.dir)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                e.path()
                    .strip_prefix(&self.dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["marker", "subdir", "subdir/inner", "victim"],
            "{case}: the host directory changed"
        );
        assert_eq!(
            fs::read_to_string(self.dir.join("victim")).unwrap(),
            "victim intact",
            "{case}"
        );
        assert_eq!(fs::read_to_string(self.marker()).unwrap(), self.secret);
    }
}

/// The build context: `x/` holds the links out, `loops/` a symlink loop, and `fake/` the
/// files the links name when read inside a root (what BuildKit copies for them).
fn context(base: &Path, host: &Host) -> PathBuf {
    use std::os::unix::fs::symlink;
    let ctx = base.join("ctx");
    let x = ctx.join("x");
    fs::create_dir_all(&x).unwrap();
    symlink(host.marker(), x.join("abs")).unwrap();
    // Enough `..` to reach `/` on the host from wherever the link lands (a stage root is
    // deeper than the context), then the marker's path: the kernel would read the host's
    // marker; inside a root the chain stops at its top.
    let up = "../".repeat(64);
    let marker_rel = host.marker().strip_prefix("/").unwrap().to_path_buf();
    symlink(format!("{up}{}", marker_rel.display()), x.join("rel")).unwrap();
    symlink(host.dir.join("subdir"), x.join("dir")).unwrap();
    let loops = ctx.join("loops");
    fs::create_dir_all(&loops).unwrap();
    symlink("loop2", loops.join("loop1")).unwrap();
    symlink("loop1", loops.join("loop2")).unwrap();
    let fake = ctx.join("fake").join(host.dir.strip_prefix("/").unwrap());
    fs::create_dir_all(fake.join("subdir")).unwrap();
    fs::write(fake.join("marker"), "in-stage marker").unwrap();
    fs::write(fake.join("subdir/inner"), "in-stage inner").unwrap();
    ctx
}

struct Build {
    ok: bool,
    log: String,
    layout: PathBuf,
    work: PathBuf,
}

/// Build `dockerfile` in `ctx` with the kernel's resolution (`fallback` false) or the
/// userspace one.
fn build(base: &Path, ctx: &Path, name: &str, dockerfile: &str, fallback: bool) -> Build {
    let mode = if fallback { "fallback" } else { "kernel" };
    let dir = base.join(format!("{name}-{mode}"));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("Dockerfile");
    fs::write(&file, dockerfile).unwrap();
    let layout = dir.join("layout");
    let work = dir.join("kiln");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.arg("--context")
        .arg(ctx)
        .arg("--dockerfile")
        .arg(&file)
        .arg("--kiln-dir")
        .arg(&work)
        .args(["--no-push", "--oci-layout-path"])
        .arg(&layout);
    if fallback {
        cmd.env(FORCE_FALLBACK, "1");
    } else {
        cmd.env_remove(FORCE_FALLBACK);
    }
    let out = run_bounded(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("kiln-executor: {e}"));
    Build {
        ok: out.success(),
        log: format!("{}{}", out.stdout, out.stderr),
        layout,
        work,
    }
}

/// The host checks every case ends with.
fn assert_nothing_leaked(host: &Host, b: &Build, case: &str) {
    host.assert_untouched(case);
    let needles = [("the host's marker content", host.secret.as_str())];
    assert!(
        !b.log.contains(&host.secret),
        "{case}: the marker's content is in the log"
    );
    // Every blob of the output, raw and decompressed (a failed build may have written none).
    if b.layout.join("blobs").exists() {
        let (found, _) = support::scan_files(&b.layout.join("blobs"), &needles);
        assert!(found.is_empty(), "{case}: {found:?}");
    }
    // What the build left in its work directory (stage roots, layers, scratch files).
    for e in walkdir::WalkDir::new(&b.work).follow_links(false) {
        let Ok(e) = e else { continue };
        if e.file_type().is_file() {
            let data = fs::read(e.path()).unwrap_or_default();
            let label = e.path().display().to_string();
            let found = support::find_in(&label, &data, &needles);
            assert!(found.is_empty(), "{case}: {found:?}");
        }
    }
}

fn modes() -> [bool; 2] {
    [false, true]
}

#[test]
fn copy_from_never_follows_a_symlink_out_of_the_source_stage() {
    if !require_root("the executor writes stage roots with their owners as root") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let host = Host::new(base);
    let ctx = context(base, &host);

    for fallback in modes() {
        // The links' targets do not exist in the stage: the glob fails and names the match.
        let b = build(
            base,
            &ctx,
            "bare-glob",
            "FROM scratch AS a\nCOPY x /x\nFROM scratch\nCOPY --from=a /x/* /out/\n",
            fallback,
        );
        let case = format!("bare glob (fallback: {fallback})");
        assert_nothing_leaked(&host, &b, &case);
        assert!(!b.ok, "{case}: must fail\n{}", b.log);
        assert!(
            b.log.contains("/x/abs") && b.log.contains("does not exist"),
            "{case}: the error must name the match\n{}",
            b.log
        );

        // By name: the same.
        let b = build(
            base,
            &ctx,
            "bare-named",
            "FROM scratch AS a\nCOPY x /x\nFROM scratch\nCOPY --from=a /x/rel /out/\n",
            fallback,
        );
        let case = format!("bare named (fallback: {fallback})");
        assert_nothing_leaked(&host, &b, &case);
        assert!(!b.ok, "{case}: must fail\n{}", b.log);
        assert!(b.log.contains("/x/rel"), "{case}\n{}", b.log);

        // A symlink loop is an error, not a hang.
        let b = build(
            base,
            &ctx,
            "loops",
            "FROM scratch AS a\nCOPY loops /l\nFROM scratch\nCOPY --from=a /l/* /out/\n",
            fallback,
        );
        let case = format!("loops (fallback: {fallback})");
        assert_nothing_leaked(&host, &b, &case);
        assert!(!b.ok, "{case}: must fail\n{}", b.log);
        assert!(
            b.log.contains("too many levels of symbolic links"),
            "{case}\n{}",
            b.log
        );

        // The stage holds files where the links point inside it: those are copied, under the
        // links' names, as BuildKit does; a directory copies its links as links.
        let b = build(
            base,
            &ctx,
            "faked",
            "FROM scratch AS a\nCOPY x /x\nCOPY fake/ /\n\
             FROM scratch\n\
             COPY --from=a /x/* /glob/\n\
             COPY --from=a /x /tree\n\
             COPY --from=a /x/abs /x/rel /named/\n\
             COPY --from=a /x/dir /dirnamed\n",
            fallback,
        );
        let case = format!("faked (fallback: {fallback})");
        assert_nothing_leaked(&host, &b, &case);
        assert!(b.ok, "{case}: must succeed\n{}", b.log);
        let entry = |p: &str| support::layout_entry(&b.layout, p);
        for copy in ["/glob/abs", "/glob/rel", "/named/abs", "/named/rel"] {
            assert_eq!(
                entry(copy).as_deref(),
                Some("in-stage marker"),
                "{case}: {copy}"
            );
        }
        assert_eq!(
            entry("/dirnamed/inner").as_deref(),
            Some("in-stage inner"),
            "{case}"
        );
        assert_eq!(
            entry("/tree/abs"),
            Some(format!("-> {}", host.marker().display())),
            "{case}: a link inside a copied directory stays a link"
        );
    }
}

#[test]
fn heredoc_names_cannot_leave_the_scratch_directory() {
    if !require_root("the executor writes stage roots with their owners as root") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let host = Host::new(base);
    let ctx = context(base, &host);
    for fallback in modes() {
        for name in ["../../escaped", "../../../../../../../../escaped", "a/b"] {
            let dockerfile = format!("FROM scratch\nCOPY <<{name} /d/\npwned\n{name}\n");
            let b = build(base, &ctx, "heredoc", &dockerfile, fallback);
            let case = format!("heredoc {name} (fallback: {fallback})");
            assert_nothing_leaked(&host, &b, &case);
            assert!(!b.ok, "{case}: must fail\n{}", b.log);
            assert!(
                b.log.contains(name) && b.log.contains("single file name"),
                "{case}: the error must name the heredoc\n{}",
                b.log
            );
            for e in walkdir::WalkDir::new(base).follow_links(false) {
                let e = e.unwrap();
                assert_ne!(
                    e.file_name(),
                    "escaped",
                    "{case}: {} was written",
                    e.path().display()
                );
            }
        }
    }
    // A good name still works, under both.
    for fallback in modes() {
        let b = build(
            base,
            &ctx,
            "heredoc-ok",
            "FROM scratch\nCOPY <<notes.txt /d/\nhello\nnotes.txt\n",
            fallback,
        );
        assert!(b.ok, "{}", b.log);
        assert_eq!(
            support::layout_entry(&b.layout, "/d/notes.txt").as_deref(),
            Some("hello\n")
        );
    }
}

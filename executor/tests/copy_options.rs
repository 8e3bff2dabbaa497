//! COPY/ADD options through the real `kiln-executor` binary, offline (`FROM scratch`, a directory
//! context, `--no-push --oci-layout-path`), checked in the layers it writes: `--exclude`,
//! symbolic `--chmod`, `--link`, `ADD` of an xz archive detected by content; and the options Kiln
//! does not carry out fail the build naming them.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_testkit::{require_root, run_bounded};

mod support;
use support::{layout_entry, layout_mode};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Build `dockerfile` on the context `ctx`; (success, log, layout).
fn build(dir: &Path, ctx: &Path, dockerfile: &str) -> (bool, String, std::path::PathBuf) {
    let file = dir.join("Dockerfile");
    fs::write(&file, dockerfile).unwrap();
    let layout = dir.join("layout");
    let _ = fs::remove_dir_all(&layout);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.arg("--context")
        .arg(ctx)
        .arg("--dockerfile")
        .arg(&file)
        .arg("--kiln-dir")
        .arg(dir.join("kiln"))
        .args(["--no-push", "--oci-layout-path"])
        .arg(&layout);
    let out = run_bounded(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("kiln-executor: {e}"));
    (
        out.success(),
        format!("{}{}", out.stdout, out.stderr),
        layout,
    )
}

fn context(dir: &Path) -> std::path::PathBuf {
    let ctx = dir.join("ctx");
    for (path, body) in [
        ("app/a.txt", "a\n"),
        ("app/b.log", "b\n"),
        ("app/sub/c.txt", "c\n"),
        ("app/keep/d.log", "d\n"),
        ("tool.sh", "#!/bin/sh\n"),
    ] {
        let p = ctx.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    // An xz tar under a name that does not say so.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_500_000_000);
    h.set_cksum();
    tar.append_data(&mut h, "from-xz", &b"unxz'd"[..]).unwrap();
    let data = tar.into_inner().unwrap();
    let mut xz =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
    xz.write_all(&data).unwrap();
    fs::write(ctx.join("payload.bin"), xz.finish().unwrap()).unwrap();
    ctx
}

#[test]
fn copy_options_shape_the_layer() {
    if !require_root("the executor writes layers with their recorded owners") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let (ok, log, layout) = build(
        dir.path(),
        &ctx,
        "FROM scratch\n\
         COPY --exclude=*.log --exclude=sub app /app/\n\
         COPY --exclude=keep app/* /glob/\n\
         COPY --exclude=**/*.log app /deep/\n\
         COPY --chmod=u+x,g-w tool.sh /bin/tool\n\
         COPY --chmod=a=rX,u+w app /modes/\n\
         COPY --link app/a.txt /linked\n\
         ADD payload.bin /x/\n",
    );
    assert!(ok, "{log}");
    let entry = |p: &str| layout_entry(&layout, p);
    assert_eq!(entry("/app/a.txt").as_deref(), Some("a\n"));
    assert_eq!(entry("/app/b.log"), None);
    assert_eq!(entry("/app/sub/c.txt"), None);
    // As in .dockerignore, `*` does not cross `/`: `**/` does.
    assert_eq!(entry("/app/keep/d.log").as_deref(), Some("d\n"));
    assert_eq!(entry("/deep/keep/d.log"), None);
    assert_eq!(entry("/deep/a.txt").as_deref(), Some("a\n"));
    // Each wildcard match is a source of its own: patterns match below it, never the match.
    assert_eq!(entry("/glob/b.log").as_deref(), Some("b\n"));
    assert_eq!(entry("/glob/c.txt").as_deref(), Some("c\n"));
    assert_eq!(entry("/glob/d.log").as_deref(), Some("d\n"));
    assert_eq!(layout_mode(&layout, "/bin/tool"), Some(0o744));
    assert_eq!(layout_mode(&layout, "/modes/a.txt"), Some(0o644));
    assert_eq!(layout_mode(&layout, "/modes/sub"), Some(0o755));
    assert_eq!(entry("/linked").as_deref(), Some("a\n"));
    assert_eq!(entry("/x/from-xz").as_deref(), Some("unxz'd"));
}

/// `--parents` keeps each source's directories below the destination, from the `/./` pivot
/// when there is one, for context and `--from` sources alike.
#[test]
fn parents_keep_source_directories() {
    if !require_root("the executor writes layers with their recorded owners") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let (ok, log, layout) = build(
        dir.path(),
        &ctx,
        "FROM scratch AS one\n\
         COPY --parents ./app/./sub/c.txt app/a.txt app/k* /par/\n\
         FROM scratch\n\
         COPY --from=one --parents /par/./app /par/sub/c.txt /out/\n",
    );
    assert!(ok, "{log}");
    let entry = |p: &str| layout_entry(&layout, p);
    assert_eq!(entry("/out/app/a.txt").as_deref(), Some("a\n"));
    assert_eq!(entry("/out/app/keep/d.log").as_deref(), Some("d\n"));
    assert_eq!(entry("/out/par/sub/c.txt").as_deref(), Some("c\n"));
    assert_eq!(entry("/out/sub/c.txt"), None);
}

/// `COPY --from=${VAR}` is expanded with the global ARGs, as FROM is.
#[test]
fn copy_from_expands_global_args() {
    if !require_root("the executor writes layers with their recorded owners") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let (ok, log, layout) = build(
        dir.path(),
        &ctx,
        "ARG SRC=one\nFROM scratch AS one\nCOPY app/a.txt /a\n\
         FROM scratch\nCOPY --from=${SRC} /a /from-arg\n",
    );
    assert!(ok, "{log}");
    assert_eq!(layout_entry(&layout, "/from-arg").as_deref(), Some("a\n"));
}

/// BuildKit's rule for wildcards that match nothing: the other sources are copied, a COPY whose
/// every source is such a wildcard changes nothing (no destination directory), each is warned
/// about, and a missing plain path still fails.
#[test]
fn empty_wildcards_copy_the_other_sources() {
    if !require_root("the executor writes layers with their recorded owners") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let (ok, log, layout) = build(
        dir.path(),
        &ctx,
        "FROM scratch AS one\nCOPY app/a.txt /s/a.txt\n\
         FROM scratch\n\
         COPY app/*.none nodir/* app/a.txt /some/\n\
         COPY req*.txt /nothing/\n\
         COPY --from=one /s/*.none /s/a* /missing/* /from/\n",
    );
    assert!(ok, "{log}");
    assert_eq!(layout_entry(&layout, "/some/a.txt").as_deref(), Some("a\n"));
    assert_eq!(layout_entry(&layout, "/from/a.txt").as_deref(), Some("a\n"));
    assert_eq!(layout_entry(&layout, "/nothing"), None);
    for pattern in [
        "app/*.none",
        "nodir/*",
        "req*.txt",
        "/s/*.none",
        "/missing/*",
    ] {
        assert!(
            log.contains(&format!("{pattern}: no file")),
            "no warning for {pattern}:\n{log}"
        );
    }
    let (ok, log, _) = build(
        dir.path(),
        &ctx,
        "FROM scratch\nCOPY app/*.none app/nope.txt /x/\n",
    );
    assert!(!ok && log.contains("app/nope.txt"), "{log}");
}

#[test]
fn unsupported_options_fail_naming_them() {
    if !require_root("the executor writes layers with their recorded owners") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    for (dockerfile, want) in [
        (
            "FROM scratch\nCOPY --parents ./*/./a.txt /p/\n",
            "wildcards before the /./ pivot",
        ),
        (
            "FROM scratch\nADD --keep-git-dir https://127.0.0.1:1/r.tar /r\n",
            "--keep-git-dir applies to git URLs only",
        ),
        ("FROM scratch\nCOPY --chmod=u+q tool.sh /t\n", "--chmod=u+q"),
        (
            "FROM scratch AS first\nFROM scratch\nARG S=first\nCOPY --from=${S} /x /x\n",
            "only global ARGs",
        ),
    ] {
        let (ok, log, _) = build(dir.path(), &ctx, dockerfile);
        assert!(!ok && log.contains(want), "{dockerfile}\n{log}");
    }
}

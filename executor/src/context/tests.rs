use super::*;
use std::io::Write;
use std::os::unix::fs::symlink;

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

/// A context tree used by most tests:
/// a.txt b.txt c.md docs/guide.md src/one/main.rs src/two/main.rs secret/key ignored.log
fn sample() -> (tempfile::TempDir, BuildContext) {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for f in [
        "a.txt",
        "b.txt",
        "c.md",
        "docs/guide.md",
        "src/one/main.rs",
        "src/two/main.rs",
        "secret/key",
        "ignored.log",
    ] {
        write(&r.join(f), f);
    }
    let ctx = BuildContext::open(r.to_str().unwrap(), r).unwrap();
    (dir, ctx)
}

fn rels(ctx: &BuildContext, paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            p.strip_prefix(ctx.root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn srcs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn open_dir_forms() {
    let dir = tempfile::tempdir().unwrap();
    let canon = fs::canonicalize(dir.path()).unwrap();
    let spec = format!("dir://{}", dir.path().display());
    assert_eq!(BuildContext::open(&spec, dir.path()).unwrap().root(), canon);
    assert_eq!(
        BuildContext::open(dir.path().to_str().unwrap(), dir.path())
            .unwrap()
            .root(),
        canon
    );
    let missing = BuildContext::open("/definitely/not/here", dir.path()).unwrap_err();
    assert!(matches!(missing, ContextError::Open { .. }), "{missing}");
    let file = dir.path().join("f");
    write(&file, "x");
    let not_dir = BuildContext::open(file.to_str().unwrap(), dir.path()).unwrap_err();
    assert!(
        matches!(not_dir, ContextError::NotADirectory { .. }),
        "{not_dir}"
    );
}

#[test]
fn object_stores_without_credentials_fail_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    for (spec, needs) in [
        ("s3://bucket/ctx.tar.gz", "AWS_ACCESS_KEY_ID"),
        (
            "https://acct.blob.core.windows.net/ctr/ctx.tar.gz",
            "AZURE_STORAGE_ACCESS_KEY",
        ),
    ] {
        let msg = BuildContext::open(spec, dir.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(spec) && msg.contains(needs), "{spec}: {msg}");
    }
}

#[test]
fn unsupported_schemes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for (spec, scheme) in [
        ("ftp://host/ctx.tar.gz", "ftp://"),
        ("oss://bucket/ctx.tar.gz", "oss://"),
    ] {
        let err = BuildContext::open(spec, dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(scheme) && msg.contains("not supported"),
            "{spec}: {msg}"
        );
    }
}

/// A tar header with an arbitrary raw name (the tar crate refuses `..` through its setters).
fn raw_entry(
    builder: &mut tar::Builder<impl Write>,
    name: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1_000_000_000);
    h.set_cksum();
    builder.append(&h, data).unwrap();
}

fn gz_tar(path: &Path, build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<fs::File>>)) {
    let file = fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    build(&mut b);
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn tarball_context_is_extracted_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("ctx.tar.gz");
    gz_tar(&tarball, |b| {
        raw_entry(b, "app/", tar::EntryType::Directory, "", b"");
        raw_entry(b, "app/main.py", tar::EntryType::Regular, "", b"print(1)\n");
        raw_entry(
            b,
            "./Dockerfile",
            tar::EntryType::Regular,
            "",
            b"FROM scratch\n",
        );
        raw_entry(b, "app/link", tar::EntryType::Symlink, "main.py", b"");
    });
    let before = fs::read(&tarball).unwrap();
    let work = dir.path().join("work");
    let ctx = BuildContext::open(&format!("tar://{}", tarball.display()), &work).unwrap();
    assert!(ctx.root().starts_with(fs::canonicalize(&work).unwrap()));
    assert_eq!(
        fs::read_to_string(ctx.root().join("app/main.py")).unwrap(),
        "print(1)\n"
    );
    assert_eq!(
        fs::read_to_string(ctx.root().join("Dockerfile")).unwrap(),
        "FROM scratch\n"
    );
    assert_eq!(
        fs::read_link(ctx.root().join("app/link")).unwrap(),
        Path::new("main.py")
    );
    assert_eq!(
        fs::read(&tarball).unwrap(),
        before,
        "the tarball must not change"
    );

    // A plain (uncompressed) tar works too.
    let plain = dir.path().join("ctx.tar");
    let mut b = tar::Builder::new(fs::File::create(&plain).unwrap());
    raw_entry(&mut b, "x", tar::EntryType::Regular, "", b"plain");
    b.into_inner().unwrap();
    let ctx = BuildContext::open(&format!("tar://{}", plain.display()), &work).unwrap();
    assert_eq!(fs::read_to_string(ctx.root().join("x")).unwrap(), "plain");
}

#[test]
fn tarball_context_traversal_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let tarball = dir.path().join("evil.tar.gz");
    gz_tar(&tarball, |b| {
        raw_entry(b, "ok", tar::EntryType::Regular, "", b"fine");
        raw_entry(b, "../../escaped", tar::EntryType::Regular, "", b"pwned");
    });
    let err = BuildContext::open(&format!("tar://{}", tarball.display()), &work).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(!dir.path().join("escaped").exists());
    assert!(!work.join("escaped").exists());

    // A hard link pointing out of the context is rejected as well.
    let hl = dir.path().join("hl.tar.gz");
    gz_tar(&hl, |b| {
        raw_entry(
            b,
            "passwd",
            tar::EntryType::Link,
            "../../../etc/passwd",
            b"",
        )
    });
    assert!(BuildContext::open(&format!("tar://{}", hl.display()), &work).is_err());
}

#[test]
fn tarball_context_symlink_cannot_redirect_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sentinel = dir.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    let tarball = dir.path().join("evil.tar.gz");
    let target = sentinel.to_str().unwrap().to_string();
    gz_tar(&tarball, |b| {
        raw_entry(b, "link", tar::EntryType::Symlink, &target, b"");
        raw_entry(b, "link/pwned", tar::EntryType::Regular, "", b"pwned");
        raw_entry(b, "up", tar::EntryType::Symlink, "../../../../../..", b"");
        raw_entry(b, "up/pwned2", tar::EntryType::Regular, "", b"pwned");
    });
    let ctx = BuildContext::open(
        &format!("tar://{}", tarball.display()),
        &dir.path().join("work"),
    )
    .unwrap();
    assert_eq!(
        fs::read_dir(&sentinel).unwrap().count(),
        0,
        "nothing may be written through the symlink"
    );
    // The write landed inside the context, where the link resolves when the context is the root.
    let inside = ctx
        .root()
        .join(sentinel.strip_prefix("/").unwrap())
        .join("pwned");
    assert!(inside.exists(), "{} should exist", inside.display());
    assert!(ctx.root().join("pwned2").exists());
}

#[test]
fn dockerignore_file_selection() {
    let (dir, mut ctx) = sample();
    let r = dir.path();
    // No ignore file at all.
    ctx.load_ignore(&r.join("Dockerfile")).unwrap();
    assert!(!ctx.is_excluded(Path::new("a.txt")));
    // The context's .dockerignore.
    write(&r.join(".dockerignore"), "*.txt\n");
    ctx.load_ignore(&r.join("Dockerfile")).unwrap();
    assert!(ctx.is_excluded(Path::new("a.txt")));
    assert!(!ctx.is_excluded(Path::new("c.md")));
    // <Dockerfile>.dockerignore wins over it.
    write(&r.join("Dockerfile.dockerignore"), "*.md\n");
    ctx.load_ignore(&r.join("Dockerfile")).unwrap();
    assert!(!ctx.is_excluded(Path::new("a.txt")));
    assert!(ctx.is_excluded(Path::new("c.md")));
    // Also for a Dockerfile in a sub-directory with another name.
    write(&r.join("build/app.Dockerfile.dockerignore"), "src\n");
    ctx.load_ignore(&r.join("build/app.Dockerfile")).unwrap();
    assert!(ctx.is_excluded(Path::new("src/one/main.rs")));
    assert!(!ctx.is_excluded(Path::new("c.md")));
    // A sub-directory Dockerfile without its own file falls back to the context's.
    ctx.load_ignore(&r.join("build/other.Dockerfile")).unwrap();
    assert!(ctx.is_excluded(Path::new("b.txt")));
    // A bad pattern is reported with the file.
    write(&r.join(".dockerignore"), "[oops\n");
    let err = ctx.load_ignore(&r.join("other/Dockerfile")).unwrap_err();
    assert!(err.to_string().contains(".dockerignore"), "{err}");
}

#[test]
fn excluded_dir_with_reinclusion_is_still_walked() {
    let (dir, mut ctx) = sample();
    write(
        &dir.path().join(".dockerignore"),
        "secret\n!secret/key\nsrc\n",
    );
    ctx.load_ignore(&dir.path().join("Dockerfile")).unwrap();
    assert!(
        !ctx.is_excluded(Path::new("secret")),
        "a ! pattern below keeps the directory walkable"
    );
    assert!(!ctx.is_excluded(Path::new("secret/key")));
    assert!(ctx.is_excluded(Path::new("src")));
    assert!(ctx.is_excluded_host(&ctx.root().join("src/one")));
    assert!(!ctx.is_excluded_host(Path::new("/elsewhere/src")));
}

#[test]
fn resolve_plain_sources() {
    let (_dir, ctx) = sample();
    let got = ctx
        .resolve_sources(&srcs(&[
            "a.txt",
            "/b.txt",
            "./docs/guide.md",
            "src/",
            "docs/../c.md",
        ]))
        .unwrap();
    assert_eq!(
        rels(&ctx, &got),
        ["a.txt", "b.txt", "docs/guide.md", "src", "c.md"]
    );
    assert!(got.iter().all(|p| p.is_absolute()));
    assert_eq!(
        ctx.resolve_sources(&srcs(&["."])).unwrap(),
        [ctx.root().to_path_buf()]
    );
    assert_eq!(
        ctx.resolve_sources(&srcs(&["/"])).unwrap(),
        [ctx.root().to_path_buf()]
    );
}

#[test]
fn resolve_wildcards() {
    let (dir, mut ctx) = sample();
    assert_eq!(
        rels(&ctx, &ctx.resolve_sources(&srcs(&["*.txt"])).unwrap()),
        ["a.txt", "b.txt"]
    );
    assert_eq!(
        rels(&ctx, &ctx.resolve_sources(&srcs(&["?.md"])).unwrap()),
        ["c.md"]
    );
    assert_eq!(
        rels(&ctx, &ctx.resolve_sources(&srcs(&["[ab].txt"])).unwrap()),
        ["a.txt", "b.txt"]
    );
    assert_eq!(
        rels(&ctx, &ctx.resolve_sources(&srcs(&["[^a].txt"])).unwrap()),
        ["b.txt"]
    );
    assert_eq!(
        rels(
            &ctx,
            &ctx.resolve_sources(&srcs(&["src/*/main.rs"])).unwrap()
        ),
        ["src/one/main.rs", "src/two/main.rs"]
    );
    // `*` does not cross directories; a wildcard that matches nothing names no source (BuildKit
    // copies nothing for it) while the other sources stay, and so does one under a directory
    // that is not there.
    assert!(ctx.resolve_sources(&srcs(&["*.rs"])).unwrap().is_empty());
    assert_eq!(
        rels(
            &ctx,
            &ctx.resolve_sources(&srcs(&["*.rs", "a.txt", "nodir/*.txt", "src/*/x*"]))
                .unwrap()
        ),
        ["a.txt"]
    );
    // A plain name that is not there is still an error.
    assert!(matches!(
        ctx.resolve_sources(&srcs(&["*.rs", "nope.rs"])),
        Err(ContextError::NotFound(_))
    ));
    // Ignored paths are not expanded.
    write(&dir.path().join(".dockerignore"), "b.txt\nsrc/two\n");
    ctx.load_ignore(&dir.path().join("Dockerfile")).unwrap();
    assert_eq!(
        rels(&ctx, &ctx.resolve_sources(&srcs(&["*.txt"])).unwrap()),
        ["a.txt"]
    );
    assert_eq!(
        rels(
            &ctx,
            &ctx.resolve_sources(&srcs(&["src/*/main.rs"])).unwrap()
        ),
        ["src/one/main.rs"]
    );
    let err = ctx.resolve_sources(&srcs(&["b.txt"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "b.txt: not found in build context or excluded by .dockerignore"
    );
    assert!(matches!(
        ctx.resolve_sources(&srcs(&["[oops"])),
        Err(ContextError::BadSourcePattern { .. })
    ));
}

#[test]
fn resolve_missing_and_outside() {
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("secret"), "s");
    let (dir, ctx) = sample();
    let r = dir.path();
    let err = ctx.resolve_sources(&srcs(&["nope.txt"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "nope.txt: not found in build context or excluded by .dockerignore"
    );
    let err = ctx.resolve_sources(&srcs(&["../secret"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "COPY source ../secret is outside the build context"
    );
    assert!(matches!(
        ctx.resolve_sources(&srcs(&["a/../../x"])),
        Err(ContextError::OutsideContext(_))
    ));

    symlink(outside.path().join("secret"), r.join("filelink")).unwrap();
    symlink(outside.path(), r.join("dirlink")).unwrap();
    symlink("../../../../../../../../etc/passwd", r.join("rellink")).unwrap();
    symlink(outside.path().join("missing"), r.join("dangling")).unwrap();
    symlink("a.txt", r.join("goodlink")).unwrap();
    for bad in [
        "filelink",
        "dirlink",
        "dirlink/secret",
        "rellink",
        "dangling",
        "dirlink/*",
    ] {
        let err = ctx.resolve_sources(&srcs(&[bad])).unwrap_err();
        assert!(
            matches!(err, ContextError::OutsideContext(_)),
            "{bad}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!("COPY source {bad} is outside the build context")
        );
    }
    // A wildcard that matches an escaping link is refused too.
    assert!(matches!(
        ctx.resolve_sources(&srcs(&["file*"])),
        Err(ContextError::OutsideContext(_))
    ));
    // A symlink that stays inside is fine and is returned unresolved (the copier follows it).
    assert_eq!(
        rels(&ctx, &ctx.resolve_sources(&srcs(&["goodlink"])).unwrap()),
        ["goodlink"]
    );
}

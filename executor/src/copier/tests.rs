//! Expected behaviour was checked by hand against `buildah --storage-driver vfs bud --isolation
//! chroot` (COPY into `FROM scratch`, then inspecting the mounted image) and is encoded here.

use super::*;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

fn no_exclude(_: &Path) -> bool {
    false
}

fn opts() -> CopyOptions<'static> {
    CopyOptions {
        chown: None,
        chmod: None,
        exclude: &no_exclude,
        exclude_patterns: None,
        preserve_owner: false,
    }
}

fn write(path: &Path, content: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

fn mtime(path: &Path) -> i64 {
    fs::symlink_metadata(path).unwrap().mtime()
}

/// Source tree:
/// a.txt (0644), b.txt (04755), d/ (0700) { f (0640, mtime 2001), hl (hard link to f),
/// link -> f, sub/ (0750) { g } }, alink -> a.txt
struct Fixture {
    _dir: tempfile::TempDir,
    src: PathBuf,
    root: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    write(&src.join("a.txt"), "a", 0o644);
    write(&src.join("b.txt"), "b", 0o4755);
    write(&src.join("d/f"), "f", 0o640);
    write(&src.join("d/sub/g"), "g", 0o600);
    fs::hard_link(src.join("d/f"), src.join("d/hl")).unwrap();
    symlink("f", src.join("d/link")).unwrap();
    symlink("a.txt", src.join("alink")).unwrap();
    fs::set_permissions(src.join("d/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
    let old = FileTime::from_unix_time(978_307_200, 0);
    filetime::set_file_times(src.join("d/f"), old, old).unwrap();
    filetime::set_file_times(src.join("d/sub"), old, old).unwrap();
    Fixture {
        _dir: dir,
        src,
        root,
        outside,
    }
}

#[test]
fn file_to_file_creates_parents() {
    let fx = fixture();
    let written = copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/p/q/r", &opts()).unwrap();
    assert_eq!(fs::read_to_string(fx.root.join("p/q/r")).unwrap(), "a");
    assert_eq!(mode(&fx.root.join("p/q/r")), 0o644);
    for d in ["p", "p/q"] {
        assert_eq!(mode(&fx.root.join(d)), 0o755);
        assert_eq!(owner(&fx.root.join(d)), (0, 0));
    }
    assert_eq!(written, ["/p", "/p/q", "/p/q/r"]);
}

#[test]
fn file_into_directory_by_slash_or_existing_dir() {
    let fx = fixture();
    copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/app/", &opts()).unwrap();
    assert!(fx.root.join("app/a.txt").is_file());
    // No trailing slash, but /existing is a directory: the file goes inside.
    fs::create_dir(fx.root.join("existing")).unwrap();
    copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/existing", &opts()).unwrap();
    assert!(fx.root.join("existing/a.txt").is_file());
}

#[test]
fn file_replaces_existing_file_and_symlink() {
    let fx = fixture();
    write(&fx.root.join("etc/conf"), "old", 0o600);
    copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/etc/conf", &opts()).unwrap();
    assert_eq!(fs::read_to_string(fx.root.join("etc/conf")).unwrap(), "a");
    assert_eq!(mode(&fx.root.join("etc/conf")), 0o644);
    // A symlink at the destination is replaced, never written through.
    let victim = fx.outside.join("victim");
    write(&victim, "safe", 0o644);
    symlink(&victim, fx.root.join("etc/link")).unwrap();
    copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/etc/link", &opts()).unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "safe");
    assert!(fs::symlink_metadata(fx.root.join("etc/link"))
        .unwrap()
        .is_file());
}

#[test]
fn directory_contents_are_copied() {
    let fx = fixture();
    copy_into_root(&[fx.src.join("d")], &fx.root, "/newd", &opts()).unwrap();
    let d = fx.root.join("newd");
    // buildah: the destination is created 0755, the source dir's own mode (0700) is not applied.
    assert_eq!(mode(&d), 0o755);
    assert!(!d.join("d").exists(), "contents, not the directory itself");
    assert_eq!(fs::read_to_string(d.join("f")).unwrap(), "f");
    assert_eq!(mode(&d.join("f")), 0o640);
    assert_eq!(mode(&d.join("sub")), 0o750);
    assert_eq!(mtime(&d.join("f")), 978_307_200);
    assert_eq!(
        mtime(&d.join("sub")),
        978_307_200,
        "directory mtimes are kept"
    );
    assert_eq!(fs::read_to_string(d.join("sub/g")).unwrap(), "g");
    assert_eq!(
        fs::read_link(d.join("link")).unwrap(),
        Path::new("f"),
        "symlinks are copied as symlinks"
    );
    // buildah keeps hard links between copied files.
    let f = fs::metadata(d.join("f")).unwrap();
    let hl = fs::metadata(d.join("hl")).unwrap();
    assert_eq!(f.ino(), hl.ino());
    assert_eq!(f.nlink(), 2);
}

#[test]
fn directory_merges_into_existing_directory() {
    let fx = fixture();
    write(&fx.root.join("existing/keep"), "keep", 0o644);
    fs::set_permissions(fx.root.join("existing"), fs::Permissions::from_mode(0o711)).unwrap();
    copy_into_root(&[fx.src.join("d")], &fx.root, "/existing/", &opts()).unwrap();
    assert_eq!(
        fs::read_to_string(fx.root.join("existing/keep")).unwrap(),
        "keep"
    );
    assert!(fx.root.join("existing/sub/g").is_file());
    assert_eq!(
        mode(&fx.root.join("existing")),
        0o711,
        "an existing destination keeps its metadata"
    );
}

#[test]
fn several_sources_need_a_directory() {
    let fx = fixture();
    let two = [fx.src.join("a.txt"), fx.src.join("b.txt")];
    let err = copy_into_root(&two, &fx.root, "/m", &opts()).unwrap_err();
    assert_eq!(
    err.to_string(),
    "when using COPY with more than one source file, the destination must be a directory and end with a /"
);
    assert!(!fx.root.join("m").exists());
    copy_into_root(&two, &fx.root, "/m/", &opts()).unwrap();
    assert!(fx.root.join("m/a.txt").is_file() && fx.root.join("m/b.txt").is_file());
    // buildah also accepts an existing directory without the slash.
    fs::create_dir(fx.root.join("e")).unwrap();
    copy_into_root(&two, &fx.root, "/e", &opts()).unwrap();
    assert!(fx.root.join("e/b.txt").is_file());
}

#[test]
fn chown_applies_to_everything_written_chmod_to_copied_entries() {
    let fx = fixture();
    let o = CopyOptions {
        chown: Some((5, 6)),
        chmod: Some(Chmod::Octal(0o600)),
        exclude: &no_exclude,
        exclude_patterns: None,
        preserve_owner: false,
    };
    copy_into_root(&[fx.src.join("d")], &fx.root, "/x/cho/", &o).unwrap();
    for p in [
        "x",
        "x/cho",
        "x/cho/f",
        "x/cho/sub",
        "x/cho/sub/g",
        "x/cho/link",
    ] {
        assert_eq!(owner(&fx.root.join(p)), (5, 6), "{p}");
    }
    // buildah: --chmod reaches copied files and sub-directories, not the destination or parents.
    assert_eq!(mode(&fx.root.join("x/cho")), 0o755);
    assert_eq!(mode(&fx.root.join("x")), 0o755);
    assert_eq!(mode(&fx.root.join("x/cho/f")), 0o600);
    assert_eq!(mode(&fx.root.join("x/cho/sub")), 0o600);
}

#[test]
fn ownership_from_context_vs_from_stage() {
    let fx = fixture();
    std::os::unix::fs::chown(fx.src.join("a.txt"), Some(1234), Some(5678)).unwrap();
    copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/ctx", &opts()).unwrap();
    assert_eq!(owner(&fx.root.join("ctx")), (0, 0));
    let keep = CopyOptions {
        preserve_owner: true,
        ..opts()
    };
    copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/stage", &keep).unwrap();
    assert_eq!(owner(&fx.root.join("stage")), (1234, 5678));
}

#[test]
fn setuid_bit_is_preserved() {
    let fx = fixture();
    copy_into_root(&[fx.src.join("b.txt")], &fx.root, "/bin/b", &opts()).unwrap();
    assert_eq!(mode(&fx.root.join("bin/b")), 0o4755);
    let o = CopyOptions {
        chown: Some((7, 7)),
        ..opts()
    };
    copy_into_root(&[fx.src.join("b.txt")], &fx.root, "/bin/b2", &o).unwrap();
    assert_eq!(
        mode(&fx.root.join("bin/b2")),
        0o4755,
        "chown must not clear setuid"
    );
}

#[test]
fn top_level_symlink_source_is_followed() {
    let fx = fixture();
    copy_into_root(&[fx.src.join("alink")], &fx.root, "/alink", &opts()).unwrap();
    let m = fs::symlink_metadata(fx.root.join("alink")).unwrap();
    assert!(m.is_file());
    assert_eq!(fs::read_to_string(fx.root.join("alink")).unwrap(), "a");
    // The name stays the source's name.
    copy_into_root(&[fx.src.join("alink")], &fx.root, "/dir/", &opts()).unwrap();
    assert!(fx.root.join("dir/alink").is_file());
    // A symlink to a directory copies the directory's contents.
    symlink("d", fx.src.join("dlink")).unwrap();
    copy_into_root(&[fx.src.join("dlink")], &fx.root, "/dl", &opts()).unwrap();
    assert!(fx.root.join("dl/sub/g").is_file());
}

#[test]
fn excluded_entries_are_skipped() {
    let fx = fixture();
    let sub = fx.src.join("d/sub");
    let f = fx.src.join("d/f");
    let exclude = move |p: &Path| p == sub || p == f;
    let o = CopyOptions {
        exclude: &exclude,
        exclude_patterns: None,
        ..opts()
    };
    copy_into_root(&[fx.src.join("d")], &fx.root, "/x", &o).unwrap();
    assert!(!fx.root.join("x/sub").exists());
    assert!(!fx.root.join("x/f").exists());
    assert!(fx.root.join("x/hl").is_file());
}

#[test]
fn writes_go_through_image_symlinks_inside_the_root() {
    let fx = fixture();
    fs::create_dir_all(fx.root.join("usr/bin")).unwrap();
    symlink("usr/bin", fx.root.join("bin")).unwrap();
    let written = copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/bin/tool", &opts()).unwrap();
    assert!(fx.root.join("usr/bin/tool").is_file());
    assert!(fs::symlink_metadata(fx.root.join("bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(written, ["/usr/bin/tool"]);
    // A directory destination is followed too.
    write(&fx.src.join("tree/bin/sh"), "sh", 0o755);
    copy_into_root(&[fx.src.join("tree/bin")], &fx.root, "/bin", &opts()).unwrap();
    assert!(fx.root.join("usr/bin/sh").is_file());
    assert!(fs::symlink_metadata(fx.root.join("bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    // But a `bin/` directory inside a copied tree replaces the link, as buildah does.
    copy_into_root(&[fx.src.join("tree")], &fx.root, "/", &opts()).unwrap();
    assert!(fs::symlink_metadata(fx.root.join("bin")).unwrap().is_dir());
    assert!(fx.root.join("bin/sh").is_file());
    assert!(fx.root.join("usr/bin/tool").is_file());
}

#[test]
fn hostile_symlinks_in_the_root_cannot_leak_writes() {
    let fx = fixture();
    symlink("/", fx.root.join("evil")).unwrap();
    symlink("../../../../../../../..", fx.root.join("up")).unwrap();
    symlink(&fx.outside, fx.root.join("abs")).unwrap();
    let sentinel_before: Vec<_> = fs::read_dir(&fx.outside).unwrap().collect();
    assert!(sentinel_before.is_empty());
    let outside_rel = fx
        .outside
        .strip_prefix("/")
        .unwrap()
        .to_string_lossy()
        .into_owned();

    copy_into_root(
        &[fx.src.join("a.txt")],
        &fx.root,
        &format!("/evil/{outside_rel}/pwned1"),
        &opts(),
    )
    .unwrap();
    copy_into_root(
        &[fx.src.join("a.txt")],
        &fx.root,
        &format!("/up/{outside_rel}/pwned2"),
        &opts(),
    )
    .unwrap();
    copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/abs/pwned3", &opts()).unwrap();
    copy_into_root(&[fx.src.join("d")], &fx.root, "/abs/", &opts()).unwrap();

    assert_eq!(
        fs::read_dir(&fx.outside).unwrap().count(),
        0,
        "nothing may appear outside the root"
    );
    // They all landed under the root, where the links point when the root is `/`.
    let inside = fx.root.join(&outside_rel);
    for name in ["pwned1", "pwned2", "pwned3", "sub/g"] {
        assert!(inside.join(name).exists(), "{name}");
    }
}

fn tar_with(path: &Path, compress: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let data = b.into_inner().unwrap();
    let out = match compress {
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        }
        "zst" => zstd::encode_all(&data[..], 1).unwrap(),
        "bz2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        }
        "xz" => {
            let mut e =
                lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1))
                    .unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        }
        _ => data,
    };
    fs::write(path, out).unwrap();
}

fn entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
    uid: u64,
) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o750
    } else {
        0o640
    });
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(data.len() as u64);
    h.set_mtime(1_000_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn add_archive_extracts_all_formats() {
    let fx = fixture();
    for compress in ["", "gz", "zst"] {
        let archive = fx.outside.join(format!("a.tar.{compress}"));
        tar_with(&archive, compress, |b| {
            entry(b, "pkg/", tar::EntryType::Directory, "", b"", 42);
            entry(b, "pkg/file", tar::EntryType::Regular, "", b"content", 42);
            entry(b, "pkg/hard", tar::EntryType::Link, "pkg/file", b"", 42);
            entry(b, "pkg/soft", tar::EntryType::Symlink, "file", b"", 42);
        });
        assert!(is_archive(&archive), "{compress}");
        let dest = format!("/opt/{compress}x");
        copy_check(&fx, &archive, &dest);
        fs::remove_file(&archive).unwrap();
    }
}

fn copy_check(fx: &Fixture, archive: &Path, dest: &str) {
    add_archive_into_root(archive, &fx.root, dest, None).unwrap();
    let base = fx.root.join(dest.trim_start_matches('/'));
    assert_eq!(
        fs::read_to_string(base.join("pkg/file")).unwrap(),
        "content"
    );
    assert_eq!(
        owner(&base.join("pkg/file")),
        (42, 42),
        "recorded owner kept without --chown"
    );
    assert_eq!(mode(&base.join("pkg")), 0o750);
    assert_eq!(mtime(&base.join("pkg")), 1_000_000_000);
    assert_eq!(
        fs::metadata(base.join("pkg/file")).unwrap().ino(),
        fs::metadata(base.join("pkg/hard")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(base.join("pkg/soft")).unwrap(),
        Path::new("file")
    );
    // buildah: --chown reaches the created destination, not the extracted entries.
    add_archive_into_root(archive, &fx.root, &format!("{dest}-chown"), Some((9, 9))).unwrap();
    let chowned = fx
        .root
        .join(format!("{}-chown", dest.trim_start_matches('/')));
    assert_eq!(owner(&chowned), (9, 9));
    assert_eq!(owner(&chowned.join("pkg/file")), (42, 42));
}

#[test]
fn add_archive_rejects_escapes() {
    let fx = fixture();
    let archive = fx.outside.join("evil.tar");
    tar_with(&archive, "", |b| {
        entry(b, "../../../escaped", tar::EntryType::Regular, "", b"x", 0)
    });
    let err = add_archive_into_root(&archive, &fx.root, "/dest", None).unwrap_err();
    assert!(
        matches!(err, CopyError::Extract(ExtractError::UnsafeEntry { .. })),
        "{err}"
    );

    tar_with(&archive, "", |b| {
        entry(
            b,
            "hl",
            tar::EntryType::Link,
            "../../../../etc/passwd",
            b"",
            0,
        )
    });
    assert!(add_archive_into_root(&archive, &fx.root, "/dest", None).is_err());

    // A symlink planted by the archive cannot redirect a later entry outside the root.
    let target = fx.outside.to_string_lossy().into_owned();
    tar_with(&archive, "", |b| {
        entry(b, "link", tar::EntryType::Symlink, &target, b"", 0);
        entry(b, "link/pwned", tar::EntryType::Regular, "", b"x", 0);
    });
    add_archive_into_root(&archive, &fx.root, "/dest", None).unwrap();
    assert_eq!(
        fs::read_dir(&fx.outside)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "evil.tar")
            .count(),
        0
    );
    assert!(fx
        .root
        .join(target.trim_start_matches('/'))
        .join("pwned")
        .is_file());
}

#[test]
fn archive_detection() {
    let fx = fixture();
    assert!(!is_archive(&fx.src.join("a.txt")));
    assert!(!is_archive(&fx.outside.join("missing")));
    // gzip of something that is not a tar is copied, not extracted.
    let gz = fx.outside.join("x.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&[b'x'; 1024]).unwrap();
    fs::write(&gz, e.finish().unwrap()).unwrap();
    assert!(!is_archive(&gz));
    // A file that only starts like a bzip2 stream is copied, not extracted.
    let bz = fx.outside.join("x.tar.bz2");
    fs::write(&bz, b"BZh91AY&SY").unwrap();
    assert!(!is_archive(&bz));
}

/// Docker detects the compression of an ADD archive by its content, whatever its name:
/// gzip, bzip2, xz and zstd tars are all extracted.
#[test]
fn add_extracts_every_compression_by_content() {
    let fx = fixture();
    for compress in ["", "gz", "bz2", "xz", "zst"] {
        let archive = fx.outside.join(format!("archive-{compress}.bin"));
        tar_with(&archive, compress, |b| {
            entry(b, "dir/", tar::EntryType::Directory, "", b"", 0);
            entry(b, "dir/file", tar::EntryType::Regular, "", b"payload", 0);
        });
        assert!(is_archive(&archive), "{compress}");
        let dest = format!("/out-{compress}");
        add_archive_into_root(&archive, &fx.root, &dest, None).unwrap();
        let written = fx.root.join(dest.trim_start_matches('/')).join("dir/file");
        assert_eq!(fs::read(&written).unwrap(), b"payload", "{compress}");
    }
    // A truncated xz stream fails the ADD with the archive's name.
    let archive = fx.outside.join("cut.tar.xz");
    tar_with(&archive, "xz", |b| {
        entry(b, "file", tar::EntryType::Regular, "", &[7u8; 4096], 0)
    });
    let data = fs::read(&archive).unwrap();
    fs::write(&archive, &data[..data.len() / 2]).unwrap();
    let err = add_archive_into_root(&archive, &fx.root, "/cut", None).unwrap_err();
    assert!(err.to_string().contains("cut.tar.xz"), "{err}");
}

/// One line per entry under `root`: path, type, mode, owner and content / link target / file
/// mtime; hard links name the first path of their inode. Directory mtimes are left out (created
/// directories get the current time, in buildah as here).
fn listing(root: &Path) -> Vec<String> {
    let mut seen: HashMap<u64, String> = HashMap::new();
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .display()
            .to_string();
        let m = fs::symlink_metadata(entry.path()).unwrap();
        let head = format!("{rel} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
        let line = if m.is_dir() {
            format!("{head} dir")
        } else if m.file_type().is_symlink() {
            format!(
                "{head} -> {}",
                fs::read_link(entry.path()).unwrap().display()
            )
        } else if let Some(first) = seen.get(&m.ino()) {
            format!("{head} hardlink {first}")
        } else {
            seen.insert(m.ino(), rel.clone());
            let bytes = fs::read(entry.path()).unwrap();
            let content: String = String::from_utf8_lossy(&bytes).chars().take(40).collect();
            format!(
                "{head} file {content:?} ({} bytes) mtime {}",
                bytes.len(),
                m.mtime()
            )
        };
        out.push(line);
    }
    out
}

/// One COPY: sources, destination, `--chown`, `--chmod`.
type Step = (
    &'static [&'static str],
    &'static str,
    Option<(u32, u32)>,
    Option<u32>,
);

/// Run the same COPY steps through buildah and through `copy_into_root`, and compare the trees.
/// Skipped (loudly) only when buildah is not installed outside CI.
#[test]
fn matches_buildah() {
    if !have_buildah() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx_dir = dir.path().join("ctx");
    let c = |p: &str| ctx_dir.join(p);
    write(&c("a.txt"), "a", 0o644);
    write(&c("b.txt"), "b", 0o600);
    write(&c("exec.sh"), "#!/bin/sh\n", 0o755);
    write(&c("d/f"), "f", 0o640);
    write(&c("d/sub/g"), "g", 0o600);
    write(&c("d/x.skip"), "skipped", 0o644);
    fs::hard_link(c("d/f"), c("d/hl")).unwrap();
    symlink("f", c("d/link")).unwrap();
    symlink("a.txt", c("alink")).unwrap();
    symlink("d", c("dlink")).unwrap();
    fs::create_dir_all(c("base/usr/bin")).unwrap();
    symlink("usr/bin", c("base/bin")).unwrap();
    write(&c("tree/bin/sh"), "sh", 0o755);
    fs::create_dir(c("exist")).unwrap();
    fs::set_permissions(c("exist"), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(c("d/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(c("d"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&c(".dockerignore"), "**/*.skip\n", 0o644);
    // Fixed file times so that the comparison does not depend on the clock.
    let fixed = FileTime::from_unix_time(1_500_000_000, 0);
    for e in walkdir::WalkDir::new(&ctx_dir) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            filetime::set_file_times(e.path(), fixed, fixed).unwrap();
        }
    }
    let old = FileTime::from_unix_time(978_307_200, 0);
    filetime::set_file_times(c("d/f"), old, old).unwrap();

    // (sources, dest, chown, chmod)
    let steps: &[Step] = &[
        (&["base/"], "/", None, None),
        (&["a.txt"], "/p/q/r", None, None),
        (&["a.txt", "b.txt"], "/m/", None, None),
        (&["d"], "/newd", None, None),
        (&["exist"], "/existing", None, None),
        (&["d"], "/existing/", None, None),
        (&["alink"], "/alink", None, None),
        (&["dlink"], "/dl", None, None),
        (&["d"], "/cho/", Some((5, 6)), None),
        (&["d"], "/chm", None, Some(0o600)),
        (&["a.txt"], "/bin/tool", None, None),
        (&["tree/bin"], "/bin", None, None),
        (&["tree/"], "/", None, None),
        (&["exec.sh"], "/m", None, None),
        (&["b.txt"], "/p/q/r", None, None),
        (&["*.txt"], "/w/", None, None),
        (&["a.txt"], "/deep/er/", Some((7, 8)), None),
    ];
    let mut dockerfile = String::from("FROM scratch\n");
    for (srcs, dest, chown, chmod) in steps {
        dockerfile.push_str("COPY ");
        if let Some((u, g)) = chown {
            dockerfile.push_str(&format!("--chown={u}:{g} "));
        }
        if let Some(m) = chmod {
            dockerfile.push_str(&format!("--chmod={m:o} "));
        }
        dockerfile.push_str(&format!("{} {dest}\n", srcs.join(" ")));
    }
    write(&c("Dockerfile"), &dockerfile, 0o644);

    // Ours.
    let ours = dir.path().join("ours");
    fs::create_dir(&ours).unwrap();
    let mut ctx =
        crate::context::BuildContext::open(ctx_dir.to_str().unwrap(), dir.path()).unwrap();
    ctx.load_ignore(&c("Dockerfile")).unwrap();
    let exclude = |p: &Path| ctx.is_excluded_host(p);
    for (srcs, dest, chown, chmod) in steps {
        let raw: Vec<String> = srcs.iter().map(|s| s.to_string()).collect();
        let sources = ctx.resolve_sources(&raw).unwrap();
        let o = CopyOptions {
            chown: *chown,
            chmod: chmod.map(Chmod::Octal),
            exclude: &exclude,
            exclude_patterns: None,
            preserve_owner: false,
        };
        copy_into_root(&sources, &ours, dest, &o).unwrap();
    }

    let theirs = buildah_tree(dir.path(), &ctx_dir);
    pretty_assertions::assert_eq!(listing(&ours), theirs);
}

/// Whether buildah is there; a missing one fails the test under CI (the test kit's rule) and
/// skips it loudly elsewhere.
fn have_buildah() -> bool {
    kiln_testkit::require_tool("buildah").is_some()
}

/// Build `ctx_dir` (its Dockerfile) with buildah in a private storage under `work` and return
/// the [`listing`] of the resulting root filesystem.
fn buildah_tree(work: &Path, ctx_dir: &Path) -> Vec<String> {
    let storage = work.join("storage");
    let buildah = |args: &[&str]| -> String {
        let out = std::process::Command::new("timeout")
            .arg("300")
            .arg("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    buildah(&[
        "bud",
        "--isolation",
        "chroot",
        "-q",
        "-t",
        "kiln-copier-test",
        ctx_dir.to_str().unwrap(),
    ]);
    let container = buildah(&["from", "-q", "kiln-copier-test"]);
    let mount = buildah(&["mount", &container]);
    let tree = listing(Path::new(&mount));
    buildah(&["umount", &container]);
    buildah(&["rm", &container]);
    tree
}

/// `.dockerignore` (directory exclusion, `!` re-inclusion, `**`) and ADD of local archives,
/// compared with buildah.
#[test]
fn matches_buildah_ignore_and_add() {
    if !have_buildah() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx_dir = dir.path().join("ctx");
    let c = |p: &str| ctx_dir.join(p);
    for f in [
        "docs/a.md",
        "docs/keep.md",
        "docs/sub/x.md",
        "app.log",
        "src/tmp/t",
        "src/main.c",
        "src/tmp2/y",
        "README.md",
    ] {
        write(&c(f), f, 0o644);
    }
    write(
        &c(".dockerignore"),
        "docs\n!docs/keep.md\n*.log\n**/tmp\n",
        0o644,
    );
    write(
    &c("Dockerfile"),
    "FROM scratch\nCOPY . /all/\nCOPY docs /docs\nADD pkg.tar.gz /opt/\nADD pkg.tar /opt2\nADD --chown=3:4 pkg.tar.zst /opt3/\nADD plain.gz /plain/\n",
    0o644,
);
    for (name, compress) in [
        ("pkg.tar.gz", "gz"),
        ("pkg.tar", ""),
        ("pkg.tar.zst", "zst"),
    ] {
        tar_with(&c(name), compress, |b| {
            entry(b, "pkg/", tar::EntryType::Directory, "", b"", 42);
            entry(b, "pkg/file", tar::EntryType::Regular, "", b"content", 42);
            entry(b, "pkg/hard", tar::EntryType::Link, "pkg/file", b"", 42);
            entry(b, "pkg/soft", tar::EntryType::Symlink, "file", b"", 42);
        });
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b"not a tar").unwrap();
    fs::write(c("plain.gz"), e.finish().unwrap()).unwrap();
    let fixed = FileTime::from_unix_time(1_500_000_000, 0);
    for e in walkdir::WalkDir::new(&ctx_dir) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            filetime::set_file_times(e.path(), fixed, fixed).unwrap();
        }
    }

    let ours = dir.path().join("ours");
    fs::create_dir(&ours).unwrap();
    let mut ctx =
        crate::context::BuildContext::open(ctx_dir.to_str().unwrap(), dir.path()).unwrap();
    ctx.load_ignore(&c("Dockerfile")).unwrap();
    let exclude = |p: &Path| ctx.is_excluded_host(p);
    let o = CopyOptions {
        chown: None,
        chmod: None,
        exclude: &exclude,
        exclude_patterns: None,
        preserve_owner: false,
    };
    for (src, dest) in [(".", "/all/"), ("docs", "/docs")] {
        let sources = ctx.resolve_sources(&[src.to_string()]).unwrap();
        copy_into_root(&sources, &ours, dest, &o).unwrap();
    }
    for (src, dest, chown) in [
        ("pkg.tar.gz", "/opt/", None),
        ("pkg.tar", "/opt2", None),
        ("pkg.tar.zst", "/opt3/", Some((3, 4))),
        ("plain.gz", "/plain/", None),
    ] {
        let sources = ctx.resolve_sources(&[src.to_string()]).unwrap();
        if is_archive(&sources[0]) {
            add_archive_into_root(&sources[0], &ours, dest, chown).unwrap();
        } else {
            let with_owner = CopyOptions {
                chown,
                chmod: None,
                ..o
            };
            copy_into_root(&sources, &ours, dest, &with_owner).unwrap();
        }
    }
    let theirs = buildah_tree(dir.path(), &ctx_dir);
    pretty_assertions::assert_eq!(listing(&ours), theirs);
}

#[test]
fn xattrs_and_fifos_are_copied() {
    let fx = fixture();
    let src = fx.src.join("a.txt");
    if let Err(e) = xattr::set(&src, "user.kiln", b"yes") {
        eprintln!("filesystem without user xattrs ({e}); only the fifo is checked");
    } else {
        copy_into_root(&[src], &fx.root, "/x", &opts()).unwrap();
        assert_eq!(
            xattr::get(fx.root.join("x"), "user.kiln")
                .unwrap()
                .as_deref(),
            Some(&b"yes"[..])
        );
    }
    let fifo_dir = fx.src.join("fifo");
    fs::create_dir(&fifo_dir).unwrap();
    nix::unistd::mkfifo(
        &fifo_dir.join("p"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    copy_into_root(&[fifo_dir], &fx.root, "/f", &opts()).unwrap();
    use std::os::unix::fs::FileTypeExt;
    let m = fs::symlink_metadata(fx.root.join("f/p")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o640);
}

/// `--exclude` patterns match paths relative to each source; the named source itself stays.
#[test]
fn exclude_patterns_match_below_each_source() {
    let fx = fixture();
    let copy = |srcs: &[&str], dest: &str, patterns: &[&str]| {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let matcher = IgnoreMatcher::new(&patterns).unwrap();
        let o = CopyOptions {
            exclude_patterns: Some(&matcher),
            ..opts()
        };
        let sources: Vec<PathBuf> = srcs.iter().map(|s| fx.src.join(s)).collect();
        copy_into_root(&sources, &fx.root, dest, &o)
    };
    copy(&["."], "/all/", &["*.txt", "d/sub"]).unwrap();
    assert!(!fx.root.join("all/a.txt").exists());
    assert!(!fx.root.join("all/d/sub").exists());
    assert!(fx.root.join("all/d/f").is_file());
    copy(&["d"], "/d/", &["f", "link"]).unwrap();
    assert!(!fx.root.join("d/f").exists() && fx.root.join("d/hl").is_file());
    assert!(fx.root.join("d/sub/g").is_file());
    // A source named in the instruction is copied even when a pattern matches its name.
    copy(&["a.txt"], "/one/", &["a.txt"]).unwrap();
    assert!(fx.root.join("one/a.txt").is_file());
    let err = copy(&["."], "/re/", &["d", "!d/f"]).unwrap_err();
    assert!(err.to_string().contains("re-including"), "{err}");
}

//! Tests for snapshots: change detection, layer contents, round trips through the unpacker,
//! determinism, and a check of produced layers with GNU tar.

use super::*;
use crate::unpack::{unpack_layer, UnpackOptions};
use sha2::{Digest, Sha256};
use std::io::{Read, Write as _};
use std::os::unix::fs::{symlink, PermissionsExt};

const T0: i64 = 1_600_000_000;

fn write(root: &Path, rel: &str, data: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

/// Give every path under `root` the same old mtime, so two identically built trees match.
fn settle(root: &Path) {
    let t = filetime::FileTime::from_unix_time(T0, 0);
    for entry in walkdir::WalkDir::new(root)
        .min_depth(1)
        .contents_first(true)
    {
        filetime::set_symlink_file_times(entry.unwrap().path(), t, t).unwrap();
    }
}

/// Everything about a tree that a layer must carry, one line per path.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let ft = meta.file_type();
        let body = if ft.is_file() {
            format!(
                "file {:?} links={}",
                fs::read(entry.path()).unwrap(),
                meta.nlink()
            )
        } else if ft.is_symlink() {
            format!("symlink {:?}", fs::read_link(entry.path()).unwrap())
        } else if ft.is_dir() {
            "dir".to_string()
        } else {
            format!("special {:o} rdev={}", meta.mode() & 0o170000, meta.rdev())
        };
        let mut xattrs: Vec<_> = xattr::list(entry.path())
            .unwrap()
            .map(|n| (n.clone(), xattr::get(entry.path(), &n).unwrap()))
            .collect();
        xattrs.sort();
        let mode = if ft.is_symlink() {
            0
        } else {
            meta.mode() & 0o7777
        };
        out.insert(
            entry.path().strip_prefix(root).unwrap().to_path_buf(),
            format!(
                "{body} mode={mode:o} owner={}:{} mtime={} xattrs={xattrs:?}",
                meta.uid(),
                meta.gid(),
                meta.mtime()
            ),
        );
    }
    out
}

/// The tree both the build root and its "copy" start from.
fn base_tree(root: &Path) {
    write(root, "etc/passwd", "root:x:0:0\n");
    write(root, "etc/keep", "same size 1");
    write(root, "etc/gone", "bye");
    write(root, "usr/bin/tool", "#!/bin/sh\n");
    chmod(root, "usr/bin/tool", 0o755);
    write(root, "usr/lib/libx.so", "lib");
    fs::create_dir_all(root.join("var")).unwrap();
    symlink("../etc", root.join("var/link")).unwrap();
    write(root, "data/file", "will be a directory");
    write(root, "olddir/a/b/c", "deep");
    write(root, "hl1", "shared");
    fs::hard_link(root.join("hl1"), root.join("hl2")).unwrap();
    write(root, "chmodme", "m");
    write(root, "chownme", "o");
    write(root, "untouched/file", "u");
    settle(root);
}

/// A build step doing everything a layer has to describe.
fn mutate(root: &Path) {
    write(root, "etc/new", "new file");
    chmod(root, "etc/new", 0o640);
    std::os::unix::fs::lchown(root.join("etc/new"), Some(1000), Some(1000)).unwrap();
    xattr::set(root.join("etc/new"), "user.kiln", b"value").unwrap();
    // A file capability (VFS_CAP_REVISION_2, effective, CAP_NET_BIND_SERVICE permitted).
    let cap: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    write(root, "usr/bin/ping", "elf");
    xattr::set(root.join("usr/bin/ping"), "security.capability", &cap).unwrap();
    write(root, "etc/passwd", "root:x:0:0\nkiln:x:1:1\n");
    fs::remove_file(root.join("etc/gone")).unwrap();
    // Same size, mtime restored: only ctime tells.
    write(root, "etc/keep", "same size 2");
    let t = filetime::FileTime::from_unix_time(T0, 0);
    filetime::set_file_times(root.join("etc/keep"), t, t).unwrap();
    // Directory replaced by a symlink, symlink by a directory, file by a directory.
    fs::remove_dir_all(root.join("usr/lib")).unwrap();
    write(root, "usr/lib64/liby.so", "lib64");
    symlink("lib64", root.join("usr/lib")).unwrap();
    fs::remove_file(root.join("var/link")).unwrap();
    write(root, "var/link/real", "r");
    fs::remove_file(root.join("data/file")).unwrap();
    write(root, "data/file/inner", "i");
    fs::remove_dir_all(root.join("olddir")).unwrap();
    // Content change through one name of a hardlinked pair, and a new pair.
    fs::OpenOptions::new()
        .append(true)
        .open(root.join("hl1"))
        .unwrap()
        .write_all(b" more")
        .unwrap();
    write(root, "new/x", "linked");
    fs::hard_link(root.join("new/x"), root.join("new/y")).unwrap();
    chmod(root, "chmodme", 0o4755);
    std::os::unix::fs::lchown(root.join("chownme"), Some(123), Some(456)).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &root.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    fs::create_dir(root.join("tmp")).unwrap();
    chmod(root, "tmp", 0o1777);
    let long_dir = "d".repeat(60);
    write(root, &format!("{long_dir}/{}", "f".repeat(80)), "long name");
    symlink(format!("/{}", "t".repeat(150)), root.join("longlink")).unwrap();
}

fn options() -> LayerOptions {
    LayerOptions::default()
}

/// Entries of a gzip or zstd layer: (name, type, link target).
fn entries(layer: &LayerFile) -> Vec<(String, EntryType, Option<String>)> {
    let file = fs::File::open(&layer.path).unwrap();
    let reader: Box<dyn Read> = if layer.media_type == MEDIA_TYPE_LAYER_ZSTD {
        Box::new(zstd::stream::read::Decoder::new(file).unwrap())
    } else {
        Box::new(flate2::read::GzDecoder::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                e.header().entry_type(),
                e.link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).unwrap()),
            )
        })
        .collect()
}

fn names(layer: &LayerFile) -> Vec<String> {
    entries(layer).into_iter().map(|(n, _, _)| n).collect()
}

#[test]
fn round_trip_reproduces_the_changed_tree() {
    let build = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    base_tree(build.path());
    base_tree(copy.path());
    assert_eq!(describe(build.path()), describe(copy.path()));

    let mut snap = Snapshotter::new(build.path(), Vec::new()).unwrap();
    mutate(build.path());
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .expect("a layer");
    let listed = names(&layer);
    assert!(
        !listed.iter().any(|n| n.starts_with("untouched")),
        "unchanged paths left out: {listed:?}"
    );
    assert!(
        listed.contains(&"etc/keep".to_string()),
        "ctime-only content change seen: {listed:?}"
    );

    let opts = UnpackOptions {
        ignore: Vec::new(),
        same_owner: true,
    };
    unpack_layer(&layer.path, copy.path(), &opts).unwrap();
    pretty_assertions::assert_eq!(describe(build.path()), describe(copy.path()));

    // Nothing changed since: no layer, and the state is unchanged by looking.
    assert_eq!(snap.snapshot_layer(out.path(), &options()).unwrap(), None);
    assert_eq!(snap.snapshot_layer(out.path(), &options()).unwrap(), None);
}

#[test]
fn layer_identities_match_its_bytes() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut snap = Snapshotter::new(root.path(), Vec::new()).unwrap();
    write(root.path(), "a/b", "content");
    for compression in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        fs::write(root.path().join("a/b"), format!("{compression:?}")).unwrap();
        let opts = LayerOptions {
            reproducible: false,
            compression,
        };
        let layer = snap.snapshot_layer(out.path(), &opts).unwrap().unwrap();
        let blob = fs::read(&layer.path).unwrap();
        assert_eq!(layer.size, blob.len() as u64);
        assert_eq!(
            layer.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&blob)))
        );
        let tar = match compression {
            Compression::Gzip { .. } => {
                assert_eq!(layer.media_type, MEDIA_TYPE_LAYER_GZIP);
                let mut v = Vec::new();
                flate2::read::GzDecoder::new(&blob[..])
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            Compression::Zstd { .. } => {
                assert_eq!(layer.media_type, MEDIA_TYPE_LAYER_ZSTD);
                zstd::decode_all(&blob[..]).unwrap()
            }
        };
        assert_eq!(
            layer.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
        assert_eq!(layer.path.parent(), Some(out.path()));
    }
}

#[test]
fn deleted_directory_gives_one_whiteout_and_replacements_none() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "top/gone/a/b", "x");
    write(r, "top/gone/c", "x");
    write(r, "top/dir2file/child", "x");
    write(r, "top/recreated/old", "x");
    write(r, "rootfile", "x");
    settle(r);
    let mut snap = Snapshotter::new(r, Vec::new()).unwrap();
    fs::remove_dir_all(r.join("top/gone")).unwrap();
    fs::remove_dir_all(r.join("top/dir2file")).unwrap();
    write(r, "top/dir2file", "now a file");
    fs::remove_dir_all(r.join("top/recreated")).unwrap();
    write(r, "top/recreated/new", "x");
    fs::remove_file(r.join("rootfile")).unwrap();
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    assert_eq!(
        names(&layer),
        [
            ".wh.rootfile",
            "top/",
            "top/.wh.gone",
            "top/dir2file",
            "top/recreated/",
            "top/recreated/.wh.old",
            "top/recreated/new",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    );
}

#[test]
fn metadata_only_change_rewrites_the_entry_with_its_parents() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "a/b/c/file", "x");
    write(r, "a/other", "x");
    chmod(r, "a/b", 0o750);
    std::os::unix::fs::lchown(r.join("a/b"), Some(7), Some(8)).unwrap();
    settle(r);
    let mut snap = Snapshotter::new(r, Vec::new()).unwrap();
    chmod(r, "a/b/c/file", 0o600);
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    assert_eq!(names(&layer), vec!["a/", "a/b/", "a/b/c/", "a/b/c/file"]);

    // The layer applies on its own, parents with their real metadata.
    let alone = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        ignore: Vec::new(),
        same_owner: true,
    };
    unpack_layer(&layer.path, alone.path(), &opts).unwrap();
    let meta = fs::metadata(alone.path().join("a/b")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o750, 7, 8)
    );
    assert_eq!(meta.mtime(), T0);
    assert_eq!(
        fs::metadata(alone.path().join("a/b/c/file"))
            .unwrap()
            .mode()
            & 0o7777,
        0o600
    );
}

#[test]
fn hardlinks_are_written_once() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut snap = Snapshotter::new(r, Vec::new()).unwrap();
    write(r, "a", "data");
    fs::hard_link(r.join("a"), r.join("b")).unwrap();
    fs::hard_link(r.join("a"), r.join("c")).unwrap();
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    assert_eq!(
        entries(&layer),
        vec![
            ("a".to_string(), EntryType::Regular, None),
            ("b".to_string(), EntryType::Link, Some("a".to_string())),
            ("c".to_string(), EntryType::Link, Some("a".to_string())),
        ]
    );
}

#[test]
fn ignored_paths_are_not_snapshotted() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "kiln/old", "x");
    fs::create_dir(r.join("proc")).unwrap();
    let mut snap =
        Snapshotter::new(r, vec![PathBuf::from("/kiln"), PathBuf::from("/proc")]).unwrap();
    write(r, "kiln/new", "x");
    fs::remove_file(r.join("kiln/old")).unwrap();
    write(r, "proc/1", "x");
    assert_eq!(snap.snapshot_layer(out.path(), &options()).unwrap(), None);
    write(r, "real", "x");
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    assert_eq!(names(&layer), vec!["real"]);
}

#[test]
fn sockets_are_left_out() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("run")).unwrap();
    let mut snap = Snapshotter::new(root.path(), Vec::new()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(root.path().join("run/sock")).unwrap();
    let layer = snap.snapshot_layer(out.path(), &options()).unwrap();
    drop(listener);
    // The directory changed (a new child); the socket itself cannot go in a tar.
    assert_eq!(names(&layer.expect("run/ changed")), vec!["run/"]);
}

#[test]
fn refresh_forgets_changes() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut snap = Snapshotter::new(root.path(), Vec::new()).unwrap();
    write(root.path(), "from-a-cached-layer", "x");
    snap.refresh().unwrap();
    assert_eq!(snap.snapshot_layer(out.path(), &options()).unwrap(), None);
}

#[test]
fn reproducible_layers_of_identical_trees_are_identical() {
    let build = |mtime: i64, compression: Compression, reproducible: bool| {
        let root = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut snap = Snapshotter::new(root.path(), Vec::new()).unwrap();
        write(root.path(), "app/bin", "binary");
        write(root.path(), "app/conf", "conf");
        symlink("bin", root.path().join("app/run")).unwrap();
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        for p in ["app/bin", "app/conf", "app/run", "app"] {
            filetime::set_symlink_file_times(root.path().join(p), t, t).unwrap();
        }
        let opts = LayerOptions {
            reproducible,
            compression,
        };
        let layer = snap.snapshot_layer(out.path(), &opts).unwrap().unwrap();
        (layer.digest, layer.diff_id)
    };
    for compression in [Compression::default(), Compression::Zstd { level: 3 }] {
        assert_eq!(
            build(1, compression, true),
            build(2_000_000_000, compression, true)
        );
        // The same trees with real mtimes differ, so the check above can fail.
        assert_ne!(
            build(1, compression, false),
            build(2_000_000_000, compression, false)
        );
    }
}

#[test]
fn gnu_tar_reads_the_layer() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut snap = Snapshotter::new(r, Vec::new()).unwrap();
    let long = format!("{}/{}", "d".repeat(70), "f".repeat(70));
    write(r, &long, "long");
    write(r, "etc/owned", "o");
    std::os::unix::fs::lchown(r.join("etc/owned"), Some(4242), Some(4343)).unwrap();
    symlink(format!("/{}", "t".repeat(120)), r.join("ll")).unwrap();
    fs::hard_link(r.join("etc/owned"), r.join("etc/owned2")).unwrap();
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    let output = std::process::Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&layer.path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8(output.stdout).unwrap();
    assert!(listing.contains(&long), "{listing}");
    assert!(
        listing.contains(&format!("ll -> /{}", "t".repeat(120))),
        "{listing}"
    );
    assert!(listing.contains("4242/4343"), "{listing}");
    assert!(
        listing.contains("etc/owned2 link to etc/owned"),
        "{listing}"
    );

    // And GNU tar extracts what we wrote.
    let extracted = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpzf"])
        .arg(&layer.path)
        .arg("-C")
        .arg(extracted.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read_to_string(extracted.path().join(&long)).unwrap(),
        "long"
    );
    assert_eq!(
        fs::metadata(extracted.path().join("etc/owned"))
            .unwrap()
            .uid(),
        4242
    );
}

#[test]
fn unpacks_what_gnu_tar_writes() {
    let src = tempfile::tempdir().unwrap();
    base_tree(src.path());
    mutate(src.path());
    let work = tempfile::tempdir().unwrap();
    // GNU tar writes xattrs only in POSIX archives; the GNU format still covers its long-name
    // records, so drop the xattrs from the expectation for it.
    for format in ["posix", "gnu"] {
        let blob = work.path().join(format!("{format}.tar.gz"));
        let status = std::process::Command::new("tar")
            .arg("--numeric-owner")
            .args(if format == "posix" {
                &["--xattrs", "--xattrs-include=*"][..]
            } else {
                &[][..]
            })
            .arg(format!("--format={format}"))
            .arg("-C")
            .arg(src.path())
            .arg("-czf")
            .arg(&blob)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let dst = tempfile::tempdir().unwrap();
        let opts = UnpackOptions {
            ignore: Vec::new(),
            same_owner: true,
        };
        unpack_layer(&blob, dst.path(), &opts).unwrap();
        let mut expected = describe(src.path());
        if format == "gnu" {
            for line in expected.values_mut() {
                let cut = line.find(" xattrs=").unwrap();
                line.replace_range(cut.., " xattrs=[]");
            }
        }
        pretty_assertions::assert_eq!(expected, describe(dst.path()), "format {format}");
    }
}

//! Tests for snapshots: change detection, layer contents, round trips through the unpacker,
//! determinism, the descriptor-based parallel walk against a plain path-based one, and a check of
//! produced layers with GNU tar.

use super::scan::{open_subdir, scan_with, stat_entry};
use super::*;
use crate::unpack::{unpack_layer, UnpackOptions};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write as _};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};

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
        ..Default::default()
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
        ..Default::default()
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

/// In place, a step moved the directory holding a mounted secret (`mv /var /v`): the mount
/// point, ignored at its new path, stays out of the layer; a path newly ignored is not a deletion.
#[test]
fn a_moved_ignored_path_stays_out_once_the_ignore_list_follows_it() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "var/run/secrets/token", "secret");
    write(r, "var/lib/data", "d");
    write(r, "opt/app/conf", "c");
    let mut snap = Snapshotter::new(r, vec![PathBuf::from("/var/run/secrets/token")]).unwrap();
    fs::rename(r.join("var"), r.join("v")).unwrap();
    snap.set_ignore(vec![
        PathBuf::from("/v/run/secrets/token"),
        PathBuf::from("/opt/app"),
    ]);
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    assert_eq!(
        names(&layer),
        vec![
            ".wh.var",
            "v/",
            "v/lib/",
            "v/lib/data",
            "v/run/",
            "v/run/secrets/",
        ]
    );
    // Unchanged ignore lists change nothing; a path no longer ignored is seen again.
    snap.set_ignore(vec![
        PathBuf::from("/v/run/secrets/token"),
        PathBuf::from("/opt/app"),
    ]);
    assert_eq!(snap.snapshot_layer(out.path(), &options()).unwrap(), None);
    snap.set_ignore(vec![PathBuf::from("/v/run/secrets/token")]);
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    assert_eq!(names(&layer), vec!["opt/", "opt/app/", "opt/app/conf"]);
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

/// A deferred snapshotter reads the root only before a step that may change it: what cached
/// layers put there before (marked stale, not read each time) is not in the next layer, what
/// the step changes is; a snapshot of a root never read is refused, not taken as unchanged.
#[test]
fn a_deferred_state_is_read_once_before_the_next_step() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write(root.path(), "base", "b");
    let mut snap = Snapshotter::deferred(root.path(), Vec::new());
    let err = snap.snapshot_layer(out.path(), &options()).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::NotRecorded { root: r } if r == root.path()),
        "{err}"
    );
    // Two cached layers unpacked, one after the other.
    write(root.path(), "hit-1/file", "1");
    snap.mark_stale();
    write(root.path(), "hit-2/file", "2");
    snap.mark_stale();
    snap.record_if_stale().unwrap();
    // The step that missed.
    write(root.path(), "step/file", "s");
    fs::remove_file(root.path().join("hit-1/file")).unwrap();
    let layer = snap.snapshot_layer(out.path(), &options()).unwrap();
    assert_eq!(
        names(&layer.expect("the step changed the root")),
        vec!["hit-1/", "hit-1/.wh.file", "step/", "step/file"]
    );
    // Not stale any more: recording again keeps the state the snapshot left.
    snap.record_if_stale().unwrap();
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
            ..Default::default()
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

/// A state as one map from relative path to node, the shape it had before it was kept per
/// directory: easy to build and to check by hand.
type Flat = HashMap<RelPath, Node>;

/// The per-directory state holding exactly the paths of `flat`.
fn to_state(flat: &Flat) -> State {
    let mut state = State::default();
    state.dirs.insert(RelPath::default(), Vec::new());
    for (path, node) in flat {
        let (parent, name) = split_parent(path);
        state
            .dirs
            .entry(parent.into())
            .or_default()
            .push((name.into(), node.clone()));
        if node.kind == Kind::Dir {
            state.dirs.entry(path.clone()).or_default();
        }
    }
    for listing in state.dirs.values_mut() {
        listing.sort_by(|a, b| a.0.cmp(&b.0));
    }
    state
}

fn flatten(state: &State) -> BTreeMap<String, Node> {
    state
        .dirs
        .iter()
        .flat_map(|(dir, listing)| {
            listing.iter().map(move |(name, node)| {
                let path = scan::join(dir, name);
                (String::from_utf8_lossy(&path).into_owned(), node.clone())
            })
        })
        .collect()
}

/// The walk as it was done before the descriptor-based one: `walkdir` and `lstat` by full path.
/// The paths and nodes every scan must reproduce exactly.
fn reference_scan(root: &Path, ignore: &[&str]) -> Flat {
    let ignore: Vec<PathBuf> = ignore.iter().map(|p| root.join(p)).collect();
    let mut state = Flat::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !ignore.iter().any(|ig| e.path() == ig));
    for entry in walker {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let link = ft
            .is_symlink()
            .then(|| fs::read_link(entry.path()).unwrap().into_os_string());
        let rel = entry.path().strip_prefix(root).unwrap();
        state.insert(
            rel.as_os_str().as_bytes().into(),
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                ino: meta.ino(),
                dev: meta.dev(),
                rdev: meta.rdev(),
                nlink: meta.nlink(),
                link,
            },
        );
    }
    state
}

/// A tree wide and deep enough that several threads share the walk, with every kind of entry,
/// awkward names, and symlinks to directories inside and outside the root.
fn wide_tree(root: &Path, outside: &Path) {
    for d in 0..40 {
        fs::create_dir_all(root.join(format!("wide/d{d}"))).unwrap();
        for f in 0..(d % 7) {
            write(root, &format!("wide/d{d}/f{f}"), &"x".repeat(d * f));
        }
        fs::create_dir_all(root.join(format!("deep/{}", "n/".repeat(d % 9)))).unwrap();
    }
    write(root, "deep/n/n/n/n/n/n/n/n/leaf", "leaf");
    write(root, "names/a-b", "dash");
    write(root, "names/a/b", "slash");
    write(root, "names/a b", "space");
    write(root, "names/a\u{1}", "control");
    write(root, "names/caf\u{e9}", "utf-8");
    let latin1 = root.join(OsString::from_vec(b"names/caf\xe9".to_vec()));
    fs::write(latin1, "latin-1").unwrap();
    write(outside, "secret", "must not be listed");
    symlink(outside, root.join("names/out")).unwrap();
    symlink("../wide", root.join("names/in")).unwrap();
    symlink("dangling", root.join("names/dangling")).unwrap();
    fs::hard_link(root.join("names/a-b"), root.join("names/a-b-link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("names/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    write(root, "skip/me/file", "ignored");
    write(root, "skip/me-not", "kept");
    write(root, "skipfile", "ignored file");
}

#[test]
fn parallel_scan_matches_a_path_based_walk_whatever_the_thread_count() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let r = root.path();
    wide_tree(r, outside.path());
    let ignore: Vec<RelPath> = vec![b"skip/me"[..].into(), b"skipfile"[..].into()];
    let reference = reference_scan(r, &["skip/me", "skipfile"]);
    assert!(
        reference.len() > 150,
        "the tree is big: {}",
        reference.len()
    );
    let expected = to_state(&reference);
    assert!(expected.dirs.len() > 50, "and has many directories");
    for workers in [1, 2, 3, 4, 8] {
        for _ in 0..3 {
            let state = scan_with(r, &ignore, workers).unwrap();
            if state != expected {
                let (state, expected) = (flatten(&state), flatten(&expected));
                let got: BTreeSet<_> = state.keys().collect();
                let want: BTreeSet<_> = expected.keys().collect();
                panic!(
                    "{workers} threads: missing {:?}, extra {:?}",
                    want.difference(&got).collect::<Vec<_>>(),
                    got.difference(&want).collect::<Vec<_>>()
                );
            }
        }
    }
}

#[test]
fn symlinks_to_directories_are_recorded_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let r = root.path();
    wide_tree(r, outside.path());
    let state = flatten(&scan_with(r, &[], 4).unwrap());
    for (link, target) in [
        ("names/out", outside.path().as_os_str()),
        ("names/in", OsStr::new("../wide")),
        ("names/dangling", OsStr::new("dangling")),
    ] {
        let node = &state[link];
        assert_eq!(node.kind, Kind::Symlink, "{link}");
        assert_eq!(node.link.as_deref(), Some(target), "{link}");
        let below = format!("{link}/");
        assert!(
            !state.keys().any(|k| k.starts_with(&below)),
            "nothing under {link}"
        );
    }
    // What the links point at is walked where it really is (or not at all, outside).
    assert!(state.contains_key("wide/d6/f5"));
    assert!(!state.keys().any(|k| k.contains("secret")));
}

#[test]
fn ignored_subtrees_are_pruned_by_exact_path() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let r = root.path();
    wide_tree(r, outside.path());
    let snap = Snapshotter::new(
        r,
        vec![
            PathBuf::from("/skip/me/"),
            PathBuf::from("skipfile"),
            // Names the root: ignores nothing, as before.
            PathBuf::from("/"),
        ],
    )
    .unwrap();
    let keys: BTreeSet<String> = flatten(&snap.state).into_keys().collect();
    assert!(!keys.contains("skip/me") && !keys.contains("skip/me/file"));
    assert!(!keys.contains("skipfile"));
    // Siblings sharing a prefix with an ignored path are not ignored.
    assert!(
        keys.contains("skip") && keys.contains("skip/me-not"),
        "{keys:?}"
    );
    assert!(keys.contains("wide/d39/f3"));
}

#[test]
fn entries_that_vanish_during_the_walk_are_skipped() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "file", "x");
    symlink("file", r.join("link")).unwrap();
    write(r, "gone-dir/child", "x");
    write(r, "now-file/child", "x");
    write(r, "now-link/child", "x");
    fs::create_dir(r.join("elsewhere")).unwrap();

    // The walk holds the directory open and has read its names; then looks at each.
    let fd = rustix::fs::open(r, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let dirs = ["gone-dir", "now-file", "now-link"];
    // Present: seen, and directories open.
    assert_eq!(stat_entry(&fd, c"file").unwrap().unwrap().kind, Kind::File);
    let link = stat_entry(&fd, c"link").unwrap().unwrap();
    assert_eq!(link.link.as_deref(), Some(OsStr::new("file")));
    for dir in dirs {
        let opened = open_subdir(&fd, dir.as_bytes()).unwrap();
        assert!(opened.is_some(), "{dir}");
    }

    // Then removed or replaced between reading the directory and looking at each entry.
    fs::remove_file(r.join("file")).unwrap();
    fs::remove_file(r.join("link")).unwrap();
    fs::remove_dir_all(r.join("gone-dir")).unwrap();
    fs::remove_dir_all(r.join("now-file")).unwrap();
    write(r, "now-file", "a file now");
    fs::remove_dir_all(r.join("now-link")).unwrap();
    symlink("elsewhere", r.join("now-link")).unwrap();
    assert_eq!(stat_entry(&fd, c"file").unwrap(), None);
    assert_eq!(stat_entry(&fd, c"link").unwrap(), None);
    for dir in dirs {
        let opened = open_subdir(&fd, dir.as_bytes()).unwrap();
        assert!(opened.is_none(), "{dir}");
    }
}

#[test]
fn scan_errors_name_the_path() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "file", "x");
    // A root that is a file cannot be walked; a root that does not exist is empty, as before.
    let err = scan_with(&root.path().join("file"), &[], 2).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Scan { path, .. } if path == &root.path().join("file")),
        "{err}"
    );
    let missing = scan_with(&root.path().join("missing"), &[], 2).unwrap();
    assert_eq!(missing, to_state(&Flat::new()));
}

#[test]
fn layer_order_is_the_component_order_of_paths() {
    let names = [
        "a", "a-b", "a/b", "a/b/c", "a/b-c", "a.b", "a\u{1}", "a b", "ab", "a/a", "b", "a-b/c",
        "a/\u{1}", "a0", "~", "\u{e9}",
    ];
    let by_path: Vec<&str> = names
        .iter()
        .map(Path::new)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| p.to_str().unwrap())
        .collect();
    let mut by_bytes = names.to_vec();
    by_bytes.sort_by(|a, b| layer_order(a.as_bytes(), b.as_bytes()));
    assert_eq!(by_bytes, by_path);
    // Plain byte order differs, so this is not comparing two identical sorts.
    let mut plain = names.to_vec();
    plain.sort();
    assert_ne!(plain, by_path);
    assert_eq!(layer_order(b"a/b", b"a/b"), Ordering::Equal);
}

#[test]
fn a_directory_and_its_subtree_come_before_a_sibling_sorting_between_them() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut snap = Snapshotter::new(r, Vec::new()).unwrap();
    write(r, "x/a-b", "dash");
    write(r, "x/a/b", "slash");
    write(r, "x/a.c", "dot");
    write(r, "x/a/b-c/d", "deeper");
    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .unwrap();
    assert_eq!(
        names(&layer),
        [
            "x/",
            "x/a/",
            "x/a/b",
            "x/a/b-c/",
            "x/a/b-c/d",
            "x/a-b",
            "x/a.c"
        ]
    );
    // Each file's own content, though the files of x/ come before and after x/a's subtree.
    let file = fs::File::open(&layer.path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut contents = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() == EntryType::Regular {
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            contents.insert(name, text);
        }
    }
    let expected = [
        ("x/a/b", "slash"),
        ("x/a/b-c/d", "deeper"),
        ("x/a-b", "dash"),
        ("x/a.c", "dot"),
    ];
    assert_eq!(
        contents,
        expected.map(|(k, v)| (k.to_string(), v.to_string())).into()
    );
}

/// `diff` as it was written over `BTreeMap<PathBuf, _>` states: the changes every `diff` must
/// produce, in this order.
fn reference_diff<'a>(old: &Flat, new: &'a Flat) -> Vec<(Vec<u8>, Change<'a>)> {
    let node_of = |path: &Path| &new[path.as_os_str().as_bytes()];
    let by_path = |state: &Flat| -> BTreeMap<PathBuf, Node> {
        state
            .iter()
            .map(|(k, v)| (PathBuf::from(OsStr::from_bytes(k)), v.clone()))
            .collect()
    };
    let (old, new) = (by_path(old), by_path(new));
    let whiteout_name = |path: &Path| {
        path.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()))
    };
    let mut changes = BTreeMap::new();
    for (path, node) in &new {
        if old.get(path) != Some(node) && node.kind != Kind::Socket && !whiteout_name(path) {
            changes.insert(path.clone(), Change::Entry(node_of(path)));
        }
    }
    for path in old.keys() {
        if new.contains_key(path) {
            continue;
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        let parent_is_dir =
            parent.as_os_str().is_empty() || new.get(parent).is_some_and(|n| n.kind == Kind::Dir);
        if !parent_is_dir {
            continue;
        }
        let mut whiteout = OsString::from(WHITEOUT_PREFIX);
        whiteout.push(path.file_name().unwrap());
        changes.insert(parent.join(whiteout), Change::Whiteout);
    }
    let mut parents: HashSet<PathBuf> = HashSet::new();
    for path in changes.keys() {
        let mut parent = path.parent();
        while let Some(p) = parent {
            if p.as_os_str().is_empty() || !parents.insert(p.to_path_buf()) {
                break;
            }
            parent = p.parent();
        }
    }
    for p in parents {
        if new.get(&p).is_some_and(|n| n.kind == Kind::Dir) {
            let node = node_of(&p);
            changes.entry(p).or_insert(Change::Entry(node));
        }
    }
    changes
        .into_iter()
        .map(|(p, c)| (p.into_os_string().into_vec(), c))
        .collect()
}

/// A small deterministic generator, enough to vary test trees (no dependency for it).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// A random tree over a few names chosen to sort awkwardly and to collide with whiteouts; each
/// node one of two variants, so two trees share many unchanged paths.
fn random_state(rng: &mut Lcg, state: &mut Flat, prefix: &[u8], depth: u32) {
    for name in ["a", "a-b", "a.b", "b", ".wh.a", "a b"] {
        if rng.below(10) < 4 {
            continue;
        }
        let path = join_rel(prefix, name.as_bytes());
        let kind = match rng.below(8) {
            0..=3 if depth < 3 => Kind::Dir,
            0..=4 => Kind::File,
            5 => Kind::Symlink,
            6 => Kind::Socket,
            _ => Kind::Fifo,
        };
        let variant = rng.below(2);
        let node = Node {
            kind,
            mode: 0o644 + variant as u32,
            uid: 0,
            gid: 0,
            size: 1,
            mtime: (1, 0),
            ctime: (1, 0),
            ino: 1,
            dev: 1,
            rdev: 0,
            nlink: 1,
            link: (kind == Kind::Symlink).then(|| OsString::from("t")),
        };
        state.insert(path.clone(), node);
        if kind == Kind::Dir {
            random_state(rng, state, &path, depth + 1);
        }
    }
}

fn join_rel(prefix: &[u8], name: &[u8]) -> RelPath {
    if prefix.is_empty() {
        name.into()
    } else {
        [prefix, b"/", name].concat().into()
    }
}

#[test]
fn diff_gives_the_changes_of_the_path_ordered_diff_in_the_same_order() {
    let mut rng = Lcg(7);
    let (mut entries, mut whiteouts, mut parent_only, mut collisions) = (0, 0, 0, 0);
    for round in 0..400 {
        let (mut old, mut new) = (Flat::new(), Flat::new());
        random_state(&mut rng, &mut old, b"", 0);
        random_state(&mut rng, &mut new, b"", 0);
        if round % 5 == 0 {
            // Mostly the same tree, as between two build steps.
            new = old.clone();
            let keys: Vec<_> = new.keys().cloned().collect();
            for key in keys.iter().filter(|_| rng.below(10) == 0) {
                new.get_mut(key).unwrap().mode ^= 0o100;
            }
        }
        let (old_state, new_state) = (to_state(&old), to_state(&new));
        let got: Vec<(Vec<u8>, Change)> = diff(&old_state, &new_state)
            .into_iter()
            .map(|(p, c)| (p.into_owned(), c))
            .collect();
        let want = reference_diff(&old, &new);
        if got != want {
            let show = |c: &[(Vec<u8>, Change)]| -> Vec<String> {
                c.iter()
                    .map(|(p, c)| format!("{:?} {c:?}", String::from_utf8_lossy(p)))
                    .collect()
            };
            let (got, want) = (show(&got), show(&want));
            let at = got.iter().zip(&want).take_while(|(g, w)| g == w).count();
            panic!(
                "round {round}: first difference at {at}: got {:?}, want {:?}",
                &got[at..got.len().min(at + 3)],
                &want[at..want.len().min(at + 3)]
            );
        }
        for (path, change) in &got {
            match change {
                // A whiteout for `a` where a directory `.wh.a` holds changes: it stays a whiteout.
                Change::Whiteout if new.contains_key(&path[..]) => collisions += 1,
                Change::Whiteout => whiteouts += 1,
                Change::Entry(_) if old.get(&path[..]) == new.get(&path[..]) => parent_only += 1,
                Change::Entry(_) => entries += 1,
            }
        }
    }
    // Every kind of change came up, many times.
    assert!(
        entries > 1000 && whiteouts > 500 && parent_only > 100 && collisions > 0,
        "{entries} {whiteouts} {parent_only} {collisions}"
    );
}

/// Enough files for the read-ahead to use several threads and batches: small files, files past
/// what is read ahead (the writer reads the rest from the open file), an empty one, hardlinks
/// across batches, xattrs; the layer unpacks to the same tree, in the writer's order.
#[test]
fn files_read_ahead_by_several_threads_come_out_whole_and_in_order() {
    let build = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = build.path();
    let mut snap = Snapshotter::new(r, Vec::new()).unwrap();
    for d in 0..7 {
        for f in 0..150 {
            write(r, &format!("d{d}/f{f:03}"), &format!("{d}/{f}\n"));
        }
    }
    let big: String = (0..40_000).map(|i| format!("{i:08}\n")).collect(); // 360 KB
    write(r, "d3/big", &big);
    write(r, "d5/empty", "");
    fs::hard_link(r.join("d0/f001"), r.join("d6/linked")).unwrap();
    let xattr_ok = xattr::set(r.join("d4/f100"), "user.kiln", b"read ahead").is_ok();
    assert!(READ_AHEAD_BATCH * 4 < 1050 && read_ahead_threads(1050) >= 1);

    let layer = snap
        .snapshot_layer(out.path(), &options())
        .unwrap()
        .expect("a layer");
    let listed = entries(&layer);
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listed, sorted, "entries out of order");
    assert!(listed.contains(&(
        "d6/linked".to_string(),
        EntryType::Link,
        Some("d0/f001".to_string())
    )));
    let opts = UnpackOptions {
        ignore: Vec::new(),
        same_owner: true,
        ..Default::default()
    };
    unpack_layer(&layer.path, copy.path(), &opts).unwrap();
    pretty_assertions::assert_eq!(describe(r), describe(copy.path()));
    assert_eq!(fs::read_to_string(copy.path().join("d3/big")).unwrap(), big);
    if xattr_ok {
        assert_eq!(
            xattr::get(copy.path().join("d4/f100"), "user.kiln").unwrap(),
            Some(b"read ahead".to_vec())
        );
    }
}

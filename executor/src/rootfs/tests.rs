//! The merged writer through each of its callers: the same hostile stream, applied as a layer, as
//! an ADD archive and as a tar build context, must leave everything outside the root alone; and
//! the per-caller differences listed in the module documentation hold.

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::{extract_archive, open_archive, with_resolution, ArchiveOwner, Resolution};
use crate::copier::{add_archive_into_root, copy_into_root_with, CopyOptions};
use crate::unpack::{unpack_layer, UnpackOptions};

/// A tar built entry by entry from raw header fields, so that names the tar crate refuses to
/// write (`..`) can be tested.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn raw(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
        mtime: u64,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(42);
        h.set_gid(42);
        h.set_size(data.len() as u64);
        h.set_mtime(mtime);
        // Archives refuse blank device numbers (layers read them as 0).
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(
            name,
            tar::EntryType::Regular,
            "",
            data,
            0o644,
            1_500_000_000,
        )
    }

    fn dir(&mut self, name: &str, mtime: u64) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, "", b"", 0o755, mtime)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name,
            tar::EntryType::Symlink,
            target,
            b"",
            0o777,
            1_500_000_000,
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name,
            tar::EntryType::Link,
            target,
            b"",
            0o644,
            1_500_000_000,
        )
    }

    /// A character or block device with its numbers.
    fn device(&mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(1_500_000_000);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, std::io::empty()).unwrap();
        self
    }

    /// PAX records for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    fn write(&mut self, dir: &Path) -> PathBuf {
        self.0.finish().unwrap();
        let path = dir.join("stream.tar");
        fs::write(&path, self.0.get_ref()).unwrap();
        path
    }
}

/// The three callers that extract tar streams.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Layer,
    Add,
    /// What `BuildContext` does with a `tar://` or https tarball context.
    Context,
}

/// A caller, and how paths inside the root are opened (the kernel's `openat2` and the
/// userspace fallback must both keep every case inside).
#[derive(Debug, Clone, Copy)]
struct Via {
    caller: Caller,
    resolution: Resolution,
}

impl Via {
    /// COPY's: not a tar stream, but the same writer.
    fn add(resolution: Resolution) -> Via {
        Via {
            caller: Caller::Add,
            resolution,
        }
    }
}

/// Every caller under every resolution this machine has.
fn vias() -> Vec<Via> {
    let mut out = Vec::new();
    for resolution in Resolution::available() {
        for caller in [Caller::Layer, Caller::Add, Caller::Context] {
            out.push(Via { caller, resolution });
        }
    }
    out
}

fn apply(via: Via, tar: &Path, root: &Path) -> Result<(), String> {
    with_resolution(via.resolution, || apply_as(via.caller, tar, root))
}

fn apply_as(caller: Caller, tar: &Path, root: &Path) -> Result<(), String> {
    match caller {
        Caller::Layer => {
            let opts = UnpackOptions {
                ignore: Vec::new(),
                same_owner: true,
                ..Default::default()
            };
            unpack_layer(tar, root, &opts)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Caller::Add => add_archive_into_root(tar, root, "/", None)
            .map(drop)
            .map_err(|e| e.to_string()),
        Caller::Context => {
            let stream = open_archive(fs::File::open(tar).unwrap(), "build context")
                .map_err(|e| e.to_string())?;
            extract_archive(stream, root, "/", ArchiveOwner::Root)
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }
}

/// A directory outside the root holding a file and a directory, to prove that hostile streams
/// leave both alone, times included.
struct Outside {
    dir: tempfile::TempDir,
}

const OUTSIDE_TIME: i64 = 1_234_567;

impl Outside {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sentinel"), "safe").unwrap();
        fs::create_dir(dir.path().join("e")).unwrap();
        let t = FileTime::from_unix_time(OUTSIDE_TIME, 0);
        filetime::set_file_times(dir.path().join("e"), t, t).unwrap();
        Outside { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn abs(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Where an absolute link to the outside directory lands when the root is `/`.
    fn inside(&self, root: &Path) -> PathBuf {
        root.join(self.path().strip_prefix("/").unwrap())
    }

    fn assert_untouched(&self, via: Via) {
        let mut names: Vec<_> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["e", "sentinel"], "{via:?}: files appeared outside");
        let sentinel = fs::symlink_metadata(self.path().join("sentinel")).unwrap();
        assert_eq!(
            fs::read_to_string(self.path().join("sentinel")).unwrap(),
            "safe",
            "{via:?}"
        );
        assert_eq!(sentinel.nlink(), 1, "{via:?}: hardlinked into the root");
        let e = fs::symlink_metadata(self.path().join("e")).unwrap();
        assert_eq!(e.mtime(), OUTSIDE_TIME, "{via:?}: directory time changed");
        assert_eq!(fs::read_dir(self.path().join("e")).unwrap().count(), 0);
    }
}

#[test]
fn dotdot_names_are_refused_by_every_caller() {
    let outside = Outside::new();
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let depth = root.path().components().count();
    let escape = format!(
        "{}{}/pwned",
        "../".repeat(depth),
        outside.path().strip_prefix("/").unwrap().display()
    );
    for name in [escape.clone(), format!("a/../{escape}"), "../x".to_string()] {
        let tar = Tar::new()
            .file("ok", b"ok")
            .file(&name, b"x")
            .write(work.path());
        for via in vias() {
            let err = apply(via, &tar, root.path()).unwrap_err();
            assert!(
                err.contains("outside") || err.contains("climbs above"),
                "{via:?} {name}: {err}"
            );
            outside.assert_untouched(via);
        }
    }
}

#[test]
fn symlinked_parents_keep_later_entries_inside() {
    let outside = Outside::new();
    let work = tempfile::tempdir().unwrap();
    let tar = Tar::new()
        .symlink("a", outside.abs())
        .file("a/x", b"pwned")
        .file("a/sentinel", b"pwned")
        .symlink("rel", "../../../../../../..")
        .file("rel/y", b"pwned")
        // A directory written, then replaced by a symlink out, then written below again.
        .dir("d/", 1)
        .file("d/first", b"ok")
        .symlink("d", outside.abs())
        .file("d/z", b"pwned")
        .write(work.path());
    for via in vias() {
        let root = tempfile::tempdir().unwrap();
        apply(via, &tar, root.path()).unwrap();
        outside.assert_untouched(via);
        let inside = outside.inside(root.path());
        for name in ["x", "sentinel", "z"] {
            assert_eq!(fs::read(inside.join(name)).unwrap(), b"pwned", "{via:?}");
        }
        assert_eq!(
            fs::read(root.path().join("y")).unwrap(),
            b"pwned",
            "{via:?}"
        );
    }
}

#[test]
fn hardlinks_never_reach_files_outside_the_root() {
    let outside = Outside::new();
    let work = tempfile::tempdir().unwrap();
    let sentinel = format!("{}/sentinel", outside.abs());
    let cases = [
        // Climbing out with `..`: refused as unsafe.
        Tar::new()
            .hardlink("shadow", "../../../../../../etc/shadow")
            .write(work.path()),
        // An absolute target is named from the root, where there is no such file.
        Tar::new().hardlink("h", &sentinel).write(work.path()),
        // Through a symlink out of the root: resolved inside it, where there is no such file.
        Tar::new()
            .symlink("l", outside.abs())
            .hardlink("h", "l/sentinel")
            .write(work.path()),
    ];
    for tar in &cases {
        for via in vias() {
            let root = tempfile::tempdir().unwrap();
            assert!(apply(via, tar, root.path()).is_err(), "{via:?}");
            outside.assert_untouched(via);
        }
    }

    // A link to `/etc/shadow` through `l -> /etc` links the image's own file.
    let tar = Tar::new()
        .symlink("l", "/etc")
        .hardlink("h", "l/shadow")
        .write(work.path());
    for via in vias() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/shadow"), "image").unwrap();
        apply(via, &tar, root.path()).unwrap();
        let image = fs::metadata(root.path().join("etc/shadow")).unwrap();
        assert_eq!(
            fs::metadata(root.path().join("h")).unwrap().ino(),
            image.ino(),
            "{via:?}"
        );
        if let Ok(host) = fs::metadata("/etc/shadow") {
            assert_ne!(host.ino(), image.ino());
        }
    }
}

/// A directory's time is set after the whole stream; by then a later entry may have replaced
/// one of its parents with a symlink out of the root, which the time change must not follow.
#[test]
fn directory_times_never_follow_a_parent_replaced_by_a_symlink() {
    let outside = Outside::new();
    let work = tempfile::tempdir().unwrap();
    let tar = Tar::new()
        .dir("d/", 1)
        .dir("d/e/", 1)
        .symlink("d", outside.abs())
        .write(work.path());
    for via in vias() {
        let root = tempfile::tempdir().unwrap();
        apply(via, &tar, root.path()).unwrap();
        outside.assert_untouched(via);
        assert!(fs::symlink_metadata(root.path().join("d"))
            .unwrap()
            .is_symlink());
    }

    // COPY of two trees into one destination: the second replaces the first's `d/` by a link.
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("one/d/e")).unwrap();
    fs::create_dir(src.path().join("two")).unwrap();
    symlink(outside.path(), src.path().join("two/d")).unwrap();
    let no = |_: &Path| false;
    let opts = CopyOptions {
        chown: None,
        chmod: None,
        exclude: &no,
        exclude_patterns: None,
        preserve_owner: false,
    };
    let sources = [src.path().join("one"), src.path().join("two")];
    for resolution in Resolution::available() {
        let root = tempfile::tempdir().unwrap();
        copy_into_root_with(&sources, root.path(), "/", &opts, resolution).unwrap();
        outside.assert_untouched(Via::add(resolution));
    }
}

/// COPY remembers where it wrote the first of several hardlinked sources; a later source may
/// replace a parent of that path with a symlink out of the root before the next link is made.
#[test]
fn copy_never_links_through_a_parent_replaced_by_a_symlink() {
    let outside = Outside::new();
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    fs::create_dir_all(s.join("one/d")).unwrap();
    fs::write(s.join("one/d/sentinel"), "copied").unwrap();
    fs::create_dir(s.join("two")).unwrap();
    symlink(outside.path(), s.join("two/d")).unwrap();
    fs::create_dir(s.join("three")).unwrap();
    fs::hard_link(s.join("one/d/sentinel"), s.join("three/x")).unwrap();
    let no = |_: &Path| false;
    let opts = CopyOptions {
        chown: None,
        chmod: None,
        exclude: &no,
        exclude_patterns: None,
        preserve_owner: false,
    };
    let sources = [s.join("one"), s.join("two"), s.join("three")];
    for resolution in Resolution::available() {
        let root = tempfile::tempdir().unwrap();
        let err = copy_into_root_with(&sources, root.path(), "/", &opts, resolution).unwrap_err();
        assert!(err.to_string().contains("no longer reached"), "{err}");
        outside.assert_untouched(Via::add(resolution));
        assert!(!root.path().join("x").exists());
    }
}

/// A process left running by a RUN step may swap a directory of the root for a symlink out of
/// it between the moment a path is resolved and the moment it is written. The writer acts
/// relative to the directory it opened, so whatever it writes next lands in that directory
/// (moved aside here), never outside.
#[test]
fn a_symlink_swapped_in_after_resolution_cannot_redirect_writes() {
    use super::{Content, DirTimes, ImpliedDirs, Meta, NodeKind, Protected, RootWriter};
    use super::{WriterOptions, XattrFailures};
    let outside = Outside::new();
    let now = FileTime::from_unix_time(1_500_000_000, 0);
    let meta = |mode| Meta {
        mode,
        owner: None,
        atime: now,
        mtime: now,
        xattrs: Vec::new(),
    };
    for resolution in Resolution::available() {
        let via = Via::add(resolution);
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("d")).unwrap();
        fs::write(r.join("kept"), "image").unwrap();
        let opts = WriterOptions {
            implied_dirs: ImpliedDirs::Owned((0, 0)),
            xattr_failures: XattrFailures::Ignore,
            dir_times: DirTimes::FirstWins,
            record: false,
        };
        let mut w = RootWriter::new(r, Protected::none(), opts).with_resolution(resolution);
        let mut targets: Vec<_> = [
            "d/file",
            "d/dir",
            "d/link",
            "d/fifo",
            "d/hard",
            "d/sentinel",
        ]
        .iter()
        .map(|p| {
            let mut t = w.locate(Path::new(p)).unwrap();
            w.prepare(&mut t).unwrap();
            t
        })
        .collect();
        fs::rename(r.join("d"), r.join("moved")).unwrap();
        symlink(outside.path(), r.join("d")).unwrap();
        let mut t = targets.remove(0);
        w.file(&mut t, Content::Stream(&mut &b"pwned"[..]), &meta(0o644))
            .unwrap();
        let mut t = targets.remove(0);
        w.dir(&mut t, &meta(0o755)).unwrap();
        let mut t = targets.remove(0);
        w.symlink(&mut t, std::ffi::OsStr::new("x"), &meta(0o777))
            .unwrap();
        let mut t = targets.remove(0);
        w.node(&mut t, NodeKind::Fifo, 0, &meta(0o600)).unwrap();
        let mut t = targets.remove(0);
        w.hardlink(&mut t, &r.join("kept")).unwrap();
        // Replacing what is there removes it in the opened directory too, not `sentinel`
        // outside.
        fs::write(r.join("moved/sentinel"), "in the root").unwrap();
        let mut t = targets.remove(0);
        w.file(&mut t, Content::Stream(&mut &b"replaced"[..]), &meta(0o644))
            .unwrap();
        w.finish().unwrap();
        outside.assert_untouched(via);
        let moved = r.join("moved");
        assert_eq!(fs::read(moved.join("file")).unwrap(), b"pwned", "{via:?}");
        assert!(moved.join("dir").is_dir(), "{via:?}");
        assert!(moved.join("link").is_symlink(), "{via:?}");
        assert!(
            fs::symlink_metadata(moved.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo(),
            "{via:?}"
        );
        assert_eq!(fs::read(moved.join("hard")).unwrap(), b"image", "{via:?}");
        assert_eq!(fs::read(moved.join("sentinel")).unwrap(), b"replaced");
    }
}

/// What the callers deliberately do differently with the same stream.
#[test]
fn each_caller_keeps_its_own_reading_of_an_entry() {
    let work = tempfile::tempdir().unwrap();
    let tar = Tar::new()
        .dir("d/", 100)
        .file(".wh.d", b"")
        .raw(
            "su",
            tar::EntryType::Regular,
            "",
            b"elf",
            0o4755,
            1_500_000_000,
        )
        .raw("null", tar::EntryType::Char, "", b"", 0o666, 1_500_000_000)
        .pax(&[
            ("mtime", b"1600000000.5"),
            ("SCHILY.xattr.user.kiln", b"yes"),
        ])
        .file("pax", b"p")
        .dir("d/", 200)
        .write(work.path());
    for via in vias() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        apply(via, &tar, r).unwrap();
        let meta = |p: &str| fs::symlink_metadata(r.join(p)).unwrap();
        assert_eq!(meta("su").mode() & 0o7777, 0o4755, "{via:?}: setuid kept");
        assert!(meta("null").file_type().is_char_device(), "{via:?}");
        let layer = matches!(via.caller, Caller::Layer);
        // Whiteouts mean something in layers only; elsewhere `.wh.d` is a plain file.
        assert_eq!(r.join(".wh.d").exists(), !layer, "{via:?}");
        assert!(meta("d").is_dir(), "{via:?}");
        // PAX times and xattrs are layer metadata; archives read the header alone.
        assert_eq!(
            meta("pax").mtime(),
            if layer { 1_600_000_000 } else { 1_500_000_000 },
            "{via:?}"
        );
        if layer {
            assert_eq!(meta("pax").mtime_nsec(), 500_000_000);
        } else {
            assert_eq!(xattr::get(r.join("pax"), "user.kiln").unwrap(), None);
        }
        // A directory written twice: layers keep the last time, archives the first.
        assert_eq!(meta("d").mtime(), if layer { 200 } else { 100 }, "{via:?}");
        // Owners: layers and ADD as recorded, a context 0:0.
        let uid = if matches!(via.caller, Caller::Context) {
            0
        } else {
            42
        };
        assert_eq!((meta("su").uid(), meta("su").gid()), (uid, uid), "{via:?}");
    }
}

#[test]
fn archives_decode_bzip2_and_xz_layers_read_them_as_tar() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    for (magic, format) in [(&b"BZh91AY&SY"[..], "bzip2"), (&b"\xfd7zXZ\0"[..], "xz")] {
        let path = work.path().join(format);
        fs::write(&path, magic).unwrap();
        // Archives decode them (this one is cut short); layers never do.
        for caller in [Caller::Add, Caller::Context] {
            let err = apply_as(caller, &path, root.path()).unwrap_err();
            assert!(!err.contains("not supported"), "{err}");
        }
        let err = apply_as(Caller::Layer, &path, root.path()).unwrap_err();
        assert!(err.contains("cannot read layer"), "{err}");
    }
}

/// Where this process may not create device nodes (no `CAP_MKNOD`, as in Kiln's hardened Pods),
/// every caller skips character and block devices and hard links to them, and applies the rest
/// (fifos need no capability), as containerd does in a user namespace.
#[test]
fn device_nodes_are_skipped_without_cap_mknod() {
    let work = tempfile::tempdir().unwrap();
    let tar = Tar::new()
        .file("before", b"b")
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/loop9", tar::EntryType::Block, 7, 9)
        .hardlink("dev/null-link", "dev/null")
        .raw("fifo", tar::EntryType::Fifo, "", b"", 0o600, 1_500_000_000)
        .file("after", b"a")
        .write(work.path());
    for via in vias() {
        let root = tempfile::tempdir().unwrap();
        let (r, stream) = (root.path().to_path_buf(), tar.clone());
        // Capabilities are per thread: only this one goes without CAP_MKNOD.
        std::thread::spawn(move || {
            crate::run::drop_effective_on_this_thread(crate::run::CAP_MKNOD).unwrap();
            apply(via, &stream, &r)
        })
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{via:?}: {e}"));
        let r = root.path();
        for gone in ["dev/null", "dev/loop9", "dev/null-link"] {
            assert!(
                fs::symlink_metadata(r.join(gone)).is_err(),
                "{via:?}: {gone} exists"
            );
        }
        assert_eq!(fs::read(r.join("before")).unwrap(), b"b", "{via:?}");
        assert_eq!(fs::read(r.join("after")).unwrap(), b"a", "{via:?}");
        let fifo = fs::symlink_metadata(r.join("fifo")).unwrap();
        assert!(fifo.file_type().is_fifo(), "{via:?}");
    }
}

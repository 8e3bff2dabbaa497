//! Tests for layer unpacking: entry types and metadata, whiteouts, replacement, ignore paths, and
//! hostile layers that try to write outside the root (each proven harmless with a sentinel).

use super::*;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use tar::EntryType;

/// Builds tar layers entry by entry with raw header fields, so that names the tar crate would
/// refuse to write (`..`, absolute paths) can be tested.
pub(super) struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub(super) fn new() -> Self {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub(super) fn raw(
        &mut self,
        name: &str,
        kind: EntryType,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_500_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub(super) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, EntryType::Regular, None, data, 0o644)
    }

    pub(super) fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Directory, None, b"", 0o755)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Symlink, Some(target), b"", 0o777)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Link, Some(target), b"", 0o644)
    }

    /// An entry from a header the caller built (device numbers, for example), without data.
    pub(super) fn append(&mut self, h: &tar::Header) -> &mut Self {
        self.builder.append(h, io::empty()).unwrap();
        self
    }

    /// PAX records for the next entry.
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    pub(super) fn bytes(&mut self) -> Vec<u8> {
        self.builder.finish().unwrap();
        self.builder.get_ref().clone()
    }

    pub(super) fn write(&mut self, dir: &Path) -> PathBuf {
        let path = dir.join("layer.tar");
        fs::write(&path, self.bytes()).unwrap();
        path
    }
}

pub(super) fn opts() -> UnpackOptions {
    UnpackOptions {
        ignore: Vec::new(),
        same_owner: true,
        ..Default::default()
    }
}

/// A directory outside the root with one file in it, to prove hostile layers leave it alone.
struct Sentinel {
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sentinel"), "safe").unwrap();
        Sentinel { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn assert_untouched(&self) {
        let names: Vec<_> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsStr::new("sentinel").to_os_string()],
            "files appeared outside the root"
        );
        let file = self.path().join("sentinel");
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "safe",
            "sentinel was modified"
        );
        let meta = fs::symlink_metadata(&file).unwrap();
        assert_eq!(meta.nlink(), 1, "sentinel was hardlinked into the root");
        assert_eq!(meta.mode() & 0o7777, 0o644);
    }
}

#[test]
fn entry_types_and_metadata_in_plain_gzip_and_zstd() {
    let mut layer = Layer::new();
    layer
        .dir("etc/")
        .raw("etc/shadow", EntryType::Regular, None, b"secret", 0o640)
        .raw("usr/bin/su", EntryType::Regular, None, b"elf", 0o4755)
        .raw("tmp/", EntryType::Directory, None, b"", 0o1777)
        .symlink("bin", "usr/bin")
        .hardlink("usr/bin/su2", "usr/bin/su")
        .raw("dev/null", EntryType::Char, None, b"", 0o666)
        .raw("run/fifo", EntryType::Fifo, None, b"", 0o600)
        // Created with its own bits less the umask: 0666 and 0444 must still come out as such.
        .raw("shared", EntryType::Regular, None, b"w", 0o666)
        .raw("readonly", EntryType::Regular, None, b"r", 0o444);
    // Owner, device numbers and an xattr via PAX need a header we then tweak: a file of two
    // bytes owned by 1234:5678.
    let owned = |path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_path(path).unwrap();
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_size(2);
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        h
    };
    layer
        .builder
        .append_pax_extensions([("SCHILY.xattr.user.kiln", &b"yes"[..])])
        .unwrap();
    layer
        .builder
        .append(&owned("owned", 0o600), &b"hi"[..])
        .unwrap();
    // Setuid and owned by someone else: the chown (which clears setuid) comes before the chmod.
    layer
        .builder
        .append(&owned("owned-su", 0o4750), &b"su"[..])
        .unwrap();
    let tar_bytes = layer.bytes();

    let work = tempfile::tempdir().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    let blobs = [
        ("plain", tar_bytes.clone()),
        ("gzip", gz.finish().unwrap()),
        ("zstd", zstd::encode_all(&tar_bytes[..], 3).unwrap()),
    ];
    for (label, blob) in blobs {
        let root = tempfile::tempdir().unwrap();
        let path = work.path().join(label);
        fs::write(&path, blob).unwrap();
        let stats = unpack_layer(&path, root.path(), &opts()).unwrap();
        let r = root.path();
        assert_eq!(stats.entries, 12, "{label}");
        assert_eq!(stats.bytes, 6 + 3 + 1 + 1 + 2 + 2, "{label}");
        assert_eq!(fs::read(r.join("etc/shadow")).unwrap(), b"secret");
        let meta = |p: &str| fs::symlink_metadata(r.join(p)).unwrap();
        assert_eq!(meta("etc/shadow").mode() & 0o7777, 0o640);
        assert_eq!(
            meta("usr/bin/su").mode() & 0o7777,
            0o4755,
            "setuid kept ({label})"
        );
        assert_eq!(meta("tmp").mode() & 0o7777, 0o1777, "sticky kept ({label})");
        assert_eq!(fs::read_link(r.join("bin")).unwrap(), Path::new("usr/bin"));
        assert_eq!(
            meta("usr/bin/su2").ino(),
            meta("usr/bin/su").ino(),
            "hardlink ({label})"
        );
        assert!(meta("dev/null").file_type().is_char_device());
        assert!(meta("run/fifo").file_type().is_fifo());
        assert_eq!((meta("owned").uid(), meta("owned").gid()), (1234, 5678));
        assert_eq!(meta("owned").mode() & 0o7777, 0o600, "{label}");
        assert_eq!(
            meta("shared").mode() & 0o7777,
            0o666,
            "umask not applied ({label})"
        );
        assert_eq!(meta("readonly").mode() & 0o7777, 0o444, "{label}");
        assert_eq!(
            (meta("owned-su").uid(), meta("owned-su").gid()),
            (1234, 5678)
        );
        assert_eq!(
            meta("owned-su").mode() & 0o7777,
            0o4750,
            "setuid set after the chown ({label})"
        );
        assert_eq!(meta("owned").mtime(), 1_000_000_000);
        assert_eq!(
            xattr::get(r.join("owned"), "user.kiln").unwrap().as_deref(),
            Some(&b"yes"[..])
        );
        // Directory mtimes survive the children written into them afterwards.
        assert_eq!(meta("etc").mtime(), 1_500_000_000, "{label}");
        assert_eq!(meta("usr/bin/su").mtime(), 1_500_000_000);
    }
}

#[test]
fn device_numbers_are_honoured() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Block);
    h.set_path("dev/blk").unwrap();
    h.set_mode(0o660);
    h.set_device_major(7).unwrap();
    h.set_device_minor(9).unwrap();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h.set_cksum();
    layer.builder.append(&h, io::empty()).unwrap();
    let blob = layer.write(work.path());
    unpack_layer(&blob, root.path(), &opts()).unwrap();
    let meta = fs::symlink_metadata(root.path().join("dev/blk")).unwrap();
    assert!(meta.file_type().is_block_device());
    assert_eq!(meta.rdev(), nix::sys::stat::makedev(7, 9));
}

#[test]
fn whiteouts_delete_lower_paths_and_are_never_created() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("a/tree/deep")).unwrap();
    fs::write(r.join("a/tree/deep/f"), "x").unwrap();
    fs::write(r.join("a/file"), "x").unwrap();
    fs::write(r.join("a/keep"), "x").unwrap();
    let blob = Layer::new()
        .file("a/.wh.file", b"")
        .file("a/.wh.tree", b"")
        .file("a/.wh.missing", b"")
        .write(work.path());
    let stats = unpack_layer(&blob, r, &opts()).unwrap();
    assert_eq!(stats.entries, 3);
    let left: Vec<_> = fs::read_dir(r.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![OsStr::new("keep").to_os_string()]);
}

#[test]
fn opaque_directory_hides_lower_contents_but_keeps_this_layers() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("d/sub")).unwrap();
    fs::write(r.join("d/old"), "x").unwrap();
    fs::write(r.join("d/sub/old2"), "x").unwrap();
    fs::write(r.join("other"), "x").unwrap();
    // The marker after entries of the same layer must not delete them.
    let blob = Layer::new()
        .dir("d/")
        .dir("d/sub/")
        .file("d/sub/new2", b"n")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"n")
        .write(work.path());
    unpack_layer(&blob, r, &opts()).unwrap();
    let mut found: Vec<_> = walkdir::WalkDir::new(r.join("d"))
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(r).unwrap().to_path_buf())
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            PathBuf::from("d/new"),
            PathBuf::from("d/sub"),
            PathBuf::from("d/sub/new2")
        ]
    );
    assert!(r.join("other").exists());
    assert!(!r.join("d/.wh..wh..opq").exists());
}

#[test]
fn opaque_marker_after_deeper_entries_keeps_their_parents() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("x/d")).unwrap();
    fs::write(r.join("x/old"), "x").unwrap();
    fs::write(r.join("x/d/lower"), "x").unwrap();
    let blob = Layer::new()
        .file("x/d/first", b"1")
        .file("x/.wh..wh..opq", b"")
        .file("x/d/second", b"2")
        .write(work.path());
    unpack_layer(&blob, r, &opts()).unwrap();
    let mut found: Vec<_> = walkdir::WalkDir::new(r.join("x"))
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(r).unwrap().to_path_buf())
        .collect();
    found.sort();
    assert_eq!(
        found,
        ["x/d", "x/d/first", "x/d/second"]
            .map(PathBuf::from)
            .to_vec()
    );
}

#[test]
fn entries_replace_paths_of_another_type() {
    let work = tempfile::tempdir().unwrap();
    let outside = Sentinel::new();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::write(r.join("file2dir"), "x").unwrap();
    fs::create_dir_all(r.join("dir2link/sub")).unwrap();
    fs::write(r.join("dir2link/sub/f"), "x").unwrap();
    std::os::unix::fs::symlink(outside.path(), r.join("link2dir")).unwrap();
    // A symlink out of the root replaced by a file must not be written through.
    std::os::unix::fs::symlink(outside.path().join("sentinel"), r.join("link2file")).unwrap();
    fs::create_dir(r.join("dir2dir")).unwrap();
    fs::write(r.join("dir2dir/kept"), "x").unwrap();
    let blob = Layer::new()
        .dir("file2dir/")
        .symlink("dir2link", "/elsewhere")
        .dir("link2dir/")
        .file("link2dir/inside", b"in")
        .file("link2file", b"pwned")
        .raw("dir2dir/", EntryType::Directory, None, b"", 0o700)
        .write(work.path());
    unpack_layer(&blob, r, &opts()).unwrap();
    let meta = |p: &str| fs::symlink_metadata(r.join(p)).unwrap();
    assert!(meta("file2dir").is_dir());
    assert!(meta("dir2link").file_type().is_symlink());
    assert!(meta("link2dir").is_dir());
    assert_eq!(fs::read(r.join("link2dir/inside")).unwrap(), b"in");
    assert!(meta("link2file").is_file());
    assert!(meta("dir2dir").is_dir());
    assert_eq!(
        meta("dir2dir").mode() & 0o7777,
        0o700,
        "metadata of a kept directory updated"
    );
    assert!(
        r.join("dir2dir/kept").exists(),
        "a directory over a directory keeps its contents"
    );
    outside.assert_untouched();
}

#[test]
fn ignored_paths_are_never_touched() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("var/run/secrets")).unwrap();
    fs::write(r.join("var/run/secrets/token"), "t").unwrap();
    fs::create_dir(r.join("kiln")).unwrap();
    fs::write(r.join("kiln/state"), "s").unwrap();
    fs::write(r.join("gone"), "g").unwrap();
    let blob = Layer::new()
        .file("kiln/state", b"overwritten")
        .file("kiln/new", b"n")
        .symlink("k", "/kiln")
        .file("k/through-link", b"n")
        .file(".wh.kiln", b"")
        .symlink("var/run", "/run")
        .file(".wh..wh..opq", b"")
        .file("fresh", b"f")
        .write(work.path());
    let opts = UnpackOptions {
        ignore: vec![PathBuf::from("/kiln"), PathBuf::from("/var/run/secrets")],
        same_owner: true,
        ..Default::default()
    };
    unpack_layer(&blob, r, &opts).unwrap();
    assert_eq!(fs::read_to_string(r.join("kiln/state")).unwrap(), "s");
    assert!(!r.join("kiln/new").exists());
    assert!(!r.join("kiln/through-link").exists());
    assert_eq!(
        fs::read_to_string(r.join("var/run/secrets/token")).unwrap(),
        "t"
    );
    assert!(fs::symlink_metadata(r.join("var/run")).unwrap().is_dir());
    // The opaque root removed everything else of the lower layers, kept this layer's entries.
    assert!(!r.join("gone").exists());
    assert!(r.join("fresh").exists());
    assert!(fs::symlink_metadata(r.join("k"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn absolute_names_land_inside_the_root() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let blob = Layer::new()
        .file("/abs/file", b"a")
        .file("./dot/./file", b"d")
        .write(work.path());
    unpack_layer(&blob, root.path(), &opts()).unwrap();
    assert_eq!(fs::read(root.path().join("abs/file")).unwrap(), b"a");
    assert_eq!(fs::read(root.path().join("dot/file")).unwrap(), b"d");
}

fn expect_unsafe(result: Result<UnpackStats, UnpackError>, blob: &Path, entry: &str) {
    match result {
        Err(e @ UnpackError::Unsafe { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&blob.display().to_string()), "{msg}");
            assert!(msg.contains(entry), "{msg}");
        }
        other => panic!("expected an unsafe-layer error, got {other:?}"),
    }
}

#[test]
fn hostile_dotdot_traversal_is_rejected() {
    let outside = Sentinel::new();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // The relative path from the root to the sentinel directory, through `..`.
    let depth = root.path().components().count();
    let up = "../".repeat(depth);
    let target = format!(
        "{up}{}/sentinel",
        outside.path().strip_prefix("/").unwrap().display()
    );
    for name in [target.clone(), format!("a/../{target}")] {
        let blob = Layer::new()
            .file("ok", b"fine")
            .file(&name, b"pwned")
            .write(work.path());
        expect_unsafe(unpack_layer(&blob, root.path(), &opts()), &blob, &name);
        outside.assert_untouched();
    }
}

#[test]
fn hostile_symlink_parent_is_resolved_inside_the_root() {
    let outside = Sentinel::new();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blob = Layer::new()
        .symlink("a", outside.path().to_str().unwrap())
        .file("a/x", b"pwned")
        .file("a/sentinel", b"pwned")
        .symlink("rel", "../../../../../../..")
        .file("rel/y", b"pwned")
        // A directory resolved for one entry, then replaced by a symlink out of the root.
        .dir("d/")
        .file("d/first", b"ok")
        .symlink("d", outside.path().to_str().unwrap())
        .file("d/z", b"pwned")
        .write(work.path());
    unpack_layer(&blob, root.path(), &opts()).unwrap();
    outside.assert_untouched();
    let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("x")).unwrap(), b"pwned");
    assert_eq!(fs::read(root.path().join("y")).unwrap(), b"pwned");
    assert_eq!(fs::read(inside.join("z")).unwrap(), b"pwned");
}

#[test]
fn hostile_symlink_to_slash_is_resolved_inside_the_root() {
    let outside = Sentinel::new();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let through = format!("r{}/sentinel", outside.path().display());
    let wh_parent = format!("r{}/.wh.sentinel", outside.path().display());
    let blob = Layer::new()
        .symlink("r", "/")
        .file(&through, b"pwned")
        .file(&wh_parent, b"")
        .file(&format!("r{}/.wh..wh..opq", outside.path().display()), b"")
        .write(work.path());
    unpack_layer(&blob, root.path(), &opts()).unwrap();
    outside.assert_untouched();
}

#[test]
fn hostile_hardlinks_are_rejected() {
    let outside = Sentinel::new();
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();

    let blob = Layer::new()
        .hardlink("passwd", "../../etc/passwd")
        .write(work.path());
    expect_unsafe(unpack_layer(&blob, root.path(), &opts()), &blob, "passwd");

    let depth = root.path().components().count();
    let escape = format!(
        "{}{}/sentinel",
        "../".repeat(depth),
        outside.path().strip_prefix("/").unwrap().display()
    );
    let blob = Layer::new().hardlink("h", &escape).write(work.path());
    expect_unsafe(unpack_layer(&blob, root.path(), &opts()), &blob, "h");
    outside.assert_untouched();

    // Through a symlink pointing out: resolved inside the root, where there is no such file.
    let blob = Layer::new()
        .symlink("l", outside.path().to_str().unwrap())
        .hardlink("h2", "l/sentinel")
        .write(work.path());
    let err = unpack_layer(&blob, root.path(), &opts()).unwrap_err();
    assert!(matches!(err, UnpackError::Apply { .. }), "{err}");
    assert!(err.to_string().contains("h2"), "{err}");
    outside.assert_untouched();

    // A hardlink to a symlink that points out links the symlink itself.
    let blob = Layer::new()
        .symlink("s", outside.path().join("sentinel").to_str().unwrap())
        .hardlink("h3", "s")
        .write(work.path());
    unpack_layer(&blob, root.path(), &opts()).unwrap();
    assert!(fs::symlink_metadata(root.path().join("h3"))
        .unwrap()
        .file_type()
        .is_symlink());
    outside.assert_untouched();
}

#[test]
fn garbage_is_a_read_error_naming_the_layer() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let blob = work.path().join("garbage");
    fs::write(&blob, [0x1f, 0x8b, 1, 2, 3, 4, 5]).unwrap();
    let err = unpack_layer(&blob, root.path(), &opts()).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");
    assert!(err.to_string().contains("garbage"));
}

/// The digest check of [`unpack_layer_verified`] covers every byte of the blob: what the
/// decompressor read, and what follows the archive's end (here trailing bytes after the gzip
/// stream's tar end marker, which the unpack itself never needs).
#[test]
fn verified_unpack_hashes_the_whole_blob() {
    let mut layer = Layer::new();
    layer.dir("etc/").file("etc/hostname", b"kiln\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer.bytes()).unwrap();
    let mut blob = gz.finish().unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("layer.tar.gz");
    fs::write(&path, &blob).unwrap();
    let digest = kiln_oci::image::sha256_digest(&blob);

    let root = tempfile::tempdir().unwrap();
    let stats = unpack_layer_verified(&path, root.path(), &opts(), &digest).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(
        fs::read(root.path().join("etc/hostname")).unwrap(),
        b"kiln\n"
    );

    // A plain tar ends with zero blocks the unpack does not need: a change there counts too.
    let plain = layer.bytes();
    let plain_path = work.path().join("layer.tar");
    let mut changed = plain.clone();
    *changed.last_mut().unwrap() = 1;
    fs::write(&plain_path, &changed).unwrap();
    let root = tempfile::tempdir().unwrap();
    let err = unpack_layer_verified(
        &plain_path,
        root.path(),
        &opts(),
        &kiln_oci::image::sha256_digest(&plain),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Digest { .. }), "{err}");
    assert!(
        root.path().join("etc/hostname").exists(),
        "the entries were applied before the end was hashed: the caller discards the root"
    );

    // Bytes after the gzip stream, unread by the unpack, count as well.
    blob.extend_from_slice(b"tail");
    fs::write(&path, &blob).unwrap();
    let err = unpack_layer_verified(&path, root.path(), &opts(), &digest).unwrap_err();
    match &err {
        UnpackError::Digest {
            expected, actual, ..
        } => {
            assert_eq!(expected, &digest);
            assert_eq!(actual, &kiln_oci::image::sha256_digest(&blob));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains("layer.tar.gz"), "{err}");
}

/// A blob corrupted in the middle of its compressed stream breaks the unpack half-way; the
/// error says the blob does not match its digest, not merely that it could not be read.
#[test]
fn corruption_that_breaks_the_stream_is_a_digest_mismatch() {
    let mut layer = Layer::new();
    for i in 0..64 {
        layer.file(&format!("f{i}"), format!("{i}").repeat(4096).as_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer.bytes()).unwrap();
    let blob = gz.finish().unwrap();
    let digest = kiln_oci::image::sha256_digest(&blob);
    let mut broken = blob.clone();
    let middle = broken.len() / 2;
    for b in &mut broken[middle..middle + 64] {
        *b ^= 0x5a;
    }
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("broken.tar.gz");
    fs::write(&path, &broken).unwrap();
    let root = tempfile::tempdir().unwrap();
    let plain = unpack_layer(&path, root.path(), &opts()).unwrap_err();
    assert!(matches!(plain, UnpackError::Read { .. }), "{plain}");
    let root = tempfile::tempdir().unwrap();
    let err = unpack_layer_verified(&path, root.path(), &opts(), &digest).unwrap_err();
    assert!(matches!(err, UnpackError::Digest { .. }), "{err}");
}

/// Resolved parent directories are remembered for the whole layer; replacing or whiting out a
/// directory (or a symlink) forgets them all, so entries below a directory that became a
/// symlink out of the root still land inside it. Entries are created first and replace what is
/// there only on a clash, for every type.
#[test]
fn remembered_parents_never_outlive_what_they_resolved_through() {
    let outside = Sentinel::new();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let work = tempfile::tempdir().unwrap();
    fs::write(r.join("was-file"), "lower").unwrap();
    fs::write(r.join("dev"), "lower").unwrap();
    std::os::unix::fs::symlink("old", r.join("sl")).unwrap();
    let out = outside.path().to_str().unwrap();
    let blob = Layer::new()
        .dir("p/")
        .dir("p/q/")
        .file("p/q/f", b"ok")
        .file("p/other", b"ok")
        // An ancestor of a remembered directory becomes a symlink out of the root.
        .symlink("p", out)
        .file("p/q/g", b"pwned")
        .dir("w/")
        .file("w/a", b"ok")
        .file(".wh.w", b"")
        .symlink("w", out)
        .file("w/b", b"pwned")
        // A new symlink beside remembered directories changes nothing they resolved through.
        .dir("s/")
        .file("s/one", b"1")
        .symlink("s/link", out)
        .file("s/two", b"2")
        .file("s/link/three", b"pwned")
        .hardlink("was-file", "s/one")
        .raw("dev", EntryType::Fifo, None, b"", 0o600)
        .symlink("sl", "new")
        .write(work.path());
    unpack_layer(&blob, r, &opts()).unwrap();
    outside.assert_untouched();
    let inside = r.join(outside.path().strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("q/g")).unwrap(), b"pwned");
    assert_eq!(fs::read(inside.join("b")).unwrap(), b"pwned");
    assert_eq!(fs::read(inside.join("three")).unwrap(), b"pwned");
    assert!(fs::symlink_metadata(r.join("p")).unwrap().is_symlink());
    assert_eq!(fs::read(r.join("s/one")).unwrap(), b"1");
    assert_eq!(fs::read(r.join("s/two")).unwrap(), b"2");
    let meta = |p: &str| fs::symlink_metadata(r.join(p)).unwrap();
    assert_eq!(
        meta("was-file").ino(),
        meta("s/one").ino(),
        "hardlink replaced the file"
    );
    assert!(meta("dev").file_type().is_fifo(), "fifo replaced the file");
    assert_eq!(fs::read_link(r.join("sl")).unwrap(), Path::new("new"));
}

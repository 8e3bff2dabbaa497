//! Tests for the bounds of unpacking (decompressed bytes per layer and per build, entries per
//! layer; a gzip bomb stops at the bound) and for the extended attributes a layer may set.

use std::io::Write;

use super::tests::{opts, Layer};
use super::*;
use kiln_oci::limits::Limit;

/// `opts()` with these bounds and budget.
fn bounded(size: Limit, entries: Limit, budget: Arc<BuildBudget>) -> UnpackOptions {
    UnpackOptions {
        bounds: LayerBounds { size, entries },
        budget,
        ..opts()
    }
}

/// A gzip layer holding one file `name` of `len` zero bytes, streamed: it never exists whole,
/// compressed or not (64 MiB of zeros are about 64 KiB of gzip).
fn zeros_layer(dir: &Path, name: &str, len: u64) -> PathBuf {
    let path = dir.join(format!("{name}.tar.gz"));
    let gz = flate2::write::GzEncoder::new(
        fs::File::create(&path).unwrap(),
        flate2::Compression::best(),
    );
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(1_500_000_000);
    h.set_cksum();
    b.append_data(&mut h, name, io::repeat(0).take(len))
        .unwrap();
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path
}

/// Bytes of regular files under `dir`, as allocated on disk.
fn disk_use(dir: &Path) -> u64 {
    let mut total = 0;
    for e in walkdir::WalkDir::new(dir) {
        let m = e.unwrap().metadata().unwrap();
        if m.is_file() {
            total += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
        }
    }
    total
}

#[test]
fn a_gzip_bomb_stops_at_the_layer_bound_before_it_is_written() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let bomb = zeros_layer(work.path(), "bomb", 64 << 20);
    assert!(fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let limit = 1 << 20;
    let err = unpack_layer(
        &bomb,
        root.path(),
        &bounded(Limit::at(limit), Limit::UNLIMITED, BuildBudget::unlimited()),
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::LayerTooLarge { limit: 1048576, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("--max-layer-size") && text.contains(&bomb.display().to_string()),
        "{text}"
    );
    assert!(text.contains("1MiB"), "{text}");
    let written = fs::metadata(root.path().join("bomb")).unwrap().len();
    assert!(written <= limit, "{written} bytes written past the bound");
    assert!(disk_use(root.path()) <= limit + (64 << 10));

    // The same layer within a bound it fits is applied whole.
    let root = tempfile::tempdir().unwrap();
    let stats = unpack_layer(
        &bomb,
        root.path(),
        &bounded(
            Limit::at(65 << 20),
            Limit::UNLIMITED,
            BuildBudget::unlimited(),
        ),
    )
    .unwrap();
    assert_eq!(
        fs::metadata(root.path().join("bomb")).unwrap().len(),
        64 << 20
    );
    assert!(stats.decompressed >= 64 << 20, "{stats:?}");
}

#[test]
fn sparse_files_count_what_they_write_not_what_they_store() {
    // A GNU sparse entry of 4 MiB storing one 512-byte block: the tar reader writes 4 MiB of
    // zeros for it while the stream holds 2 KiB.
    let work = tempfile::tempdir().unwrap();
    let real: u64 = 4 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    h.set_mtime(1_500_000_000);
    {
        let gnu = h.as_gnu_mut().unwrap();
        let octal = |field: &mut [u8], v: u64| {
            let s = format!("{v:0width$o}", width = field.len() - 1);
            field[..s.len()].copy_from_slice(s.as_bytes());
        };
        octal(&mut gnu.realsize, real);
        octal(&mut gnu.sparse[0].offset, real - 512);
        octal(&mut gnu.sparse[0].numbytes, 512);
    }
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[1u8; 512][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let blob = work.path().join("sparse.tar");
    fs::write(&blob, &tar).unwrap();

    let root = tempfile::tempdir().unwrap();
    unpack_layer(&blob, root.path(), &opts()).unwrap();
    assert_eq!(
        fs::metadata(root.path().join("sparse")).unwrap().len(),
        real
    );

    let root = tempfile::tempdir().unwrap();
    let err = unpack_layer(
        &blob,
        root.path(),
        &bounded(
            Limit::at(1 << 20),
            Limit::UNLIMITED,
            BuildBudget::unlimited(),
        ),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::LayerTooLarge { .. }), "{err}");
}

#[test]
fn entries_are_bounded_per_layer() {
    let work = tempfile::tempdir().unwrap();
    let mut ten = Layer::new();
    ten.dir("d/");
    for i in 0..9 {
        ten.file(&format!("d/f{i}"), b"x");
    }
    let ten = ten.write(work.path());
    let bound = |n| bounded(Limit::UNLIMITED, Limit::at(n), BuildBudget::unlimited());
    let root = tempfile::tempdir().unwrap();
    assert_eq!(
        unpack_layer(&ten, root.path(), &bound(10)).unwrap().entries,
        10
    );

    let dir = work.path().join("eleven");
    fs::create_dir(&dir).unwrap();
    let mut eleven = Layer::new();
    eleven.dir("d/");
    for i in 0..10 {
        eleven.file(&format!("d/f{i}"), b"x");
    }
    let eleven = eleven.write(&dir);
    let root = tempfile::tempdir().unwrap();
    let err = unpack_layer(&eleven, root.path(), &bound(10)).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--max-layer-entries"), "{err}");
    // Refused at the eleventh entry: the ten before it were applied, it was not.
    assert!(root.path().join("d/f8").exists());
    assert!(!root.path().join("d/f9").exists());
}

#[test]
fn the_build_bound_spans_layers() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let budget = BuildBudget::new(Limit::at(3 << 20));
    let opts = bounded(Limit::at(2 << 20), Limit::UNLIMITED, budget.clone());
    let first = zeros_layer(work.path(), "first", 1 << 20);
    let second = zeros_layer(work.path(), "second", 1 << 20);
    let third = zeros_layer(work.path(), "third", 1 << 20);
    unpack_layer(&first, root.path(), &opts).unwrap();
    unpack_layer(&second, root.path(), &opts).unwrap();
    assert!(budget.used() >= 2 << 20, "{}", budget.used());
    let err = unpack_layer(&third, root.path(), &opts).unwrap_err();
    match &err {
        UnpackError::BuildTooLarge { limit, before, .. } => {
            assert_eq!(*limit, 3 << 20);
            assert_eq!(*before, budget.used());
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("--max-build-size"), "{err}");
    let third_written = fs::metadata(root.path().join("third")).unwrap().len();
    assert!(budget.used() + third_written <= 3 << 20);
}

#[test]
fn only_user_and_file_capability_xattrs_are_applied() {
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let probe = root.path().join(".probe");
    fs::write(&probe, b"").unwrap();
    let user_ok = xattr::set(&probe, "user.kiln", b"1").is_ok();
    let trusted_ok = xattr::set(&probe, "trusted.kiln", b"1").is_ok();
    fs::remove_file(&probe).unwrap();
    // A version 2 file capability: cap_net_raw permitted and effective.
    let cap: &[u8] = &[
        0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let blob = Layer::new()
        .pax(&[
            ("SCHILY.xattr.user.kiln", b"yes"),
            ("SCHILY.xattr.trusted.kiln", b"no"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:etc_t:s0",
            ),
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.system.posix_acl_access", b"\x02\x00\x00\x00"),
        ])
        .file("ping", b"elf")
        .write(work.path());
    let stats = unpack_layer(&blob, root.path(), &opts()).unwrap();
    assert_eq!(stats.xattrs_skipped, 4, "{stats:?}");
    let get = |name: &str| xattr::get(root.path().join("ping"), name).unwrap();
    if trusted_ok {
        // Root could have set it: it was left out, not refused by the kernel.
        assert_eq!(get("trusted.kiln"), None);
        assert_eq!(get("trusted.overlay.opaque"), None);
    }
    assert_eq!(get("security.selinux"), None);
    if user_ok {
        assert_eq!(get("user.kiln").as_deref(), Some(&b"yes"[..]));
    }
    if nix::unistd::geteuid().is_root() && user_ok {
        assert_eq!(get("security.capability").as_deref(), Some(cap));
    }
}

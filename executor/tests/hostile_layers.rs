//! Hostile base images against the bounds of kiln-executor: a gzip bomb layer (1 GiB of zeros in
//! about 1 MiB), blobs longer and shorter than their descriptors, manifests and configs over
//! `--max-manifest-size` (one served by the registry, one endless and one oversized from a fault
//! proxy), each of `--max-layer-size`, `--max-layer-entries` and `--max-build-size` at a low
//! value, a disk that fills up, and `--insecure-pull` and `--skip-tls-verify-pull`, which must
//! not weaken the push.
//!
//! Each image is built by hand (layers, config and manifest, some of them lying) and pushed to a
//! test registry of its own on loopback; kiln-executor then builds `FROM` it in chroot mode. Builds
//! that unpack run with `--kiln-dir` on a small tmpfs this test mounts, so the disk a build could
//! fill is bounded by the test itself, and the build's peak disk use (polled on that tmpfs) and
//! peak memory (`/usr/bin/time -v`) are printed and checked. Unpacking as the layer's owners needs
//! root: a test that is not root fails under `CI=true` and skips loudly elsewhere.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_oci::registry::{
    sha256_digest, Platform, Registry, RegistryOptions, MEDIA_TYPE_OCI_MANIFEST,
};
use kiln_testkit::image::{noise, tar_with_file, MEDIA_TYPE_LAYER_GZIP};
use kiln_testkit::{
    bounded, require_root, require_tools, rule, run_bounded, Fault, FaultProxy, Layer, TestImage,
    TestRegistry,
};
use serde_json::json;

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
const MIB: u64 = 1 << 20;
/// What a build's work directory holds besides the layer it is bounded on: the downloaded
/// blobs, directories, the context's copy.
const DISK_MARGIN: u64 = 8 * MIB;
/// Peak memory of a build that must not hold a layer, a manifest or a blob in memory: far below
/// what any of the hostile inputs would take.
const MEMORY_BOUND_KIB: u64 = 256 * 1024;

fn arch() -> String {
    Platform::default().architecture
}

fn config() -> serde_json::Value {
    json!({
        "architecture": arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "history": [{"created_by": "kiln hostile test"}]
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A gzip layer of one file `name` holding `mib` MiB of zeros, written as a multi-member gzip
/// (one member for the tar header, one 1 MiB member repeated, one for the end of the archive), so
/// that 1 GiB takes about 1 MiB and is never made whole. Its diff_id is not the real one:
/// unpacking does not read diff_ids, and hashing 1 GiB would dominate the test.
fn zeros_layer(work: &Path, name: &str, mib: u64) -> Layer {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_size(mib * MIB);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    let zeros = gzip(&vec![0u8; MIB as usize]);
    let path = work.join(format!("{name}.tar.gz"));
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&gzip(header.as_bytes())).unwrap();
    for _ in 0..mib {
        f.write_all(&zeros).unwrap();
    }
    f.write_all(&gzip(&[0u8; 1024])).unwrap();
    drop(f);
    let blob = fs::read(&path).unwrap();
    Layer {
        digest: sha256_digest(&blob),
        size: blob.len() as u64,
        path,
        diff_id: sha256_digest(format!("not checked: {name}").as_bytes()),
        media_type: MEDIA_TYPE_LAYER_GZIP.to_string(),
    }
}

/// A gzip layer of the tar `tar`, with its real diff_id.
fn layer(work: &Path, tar: &[u8]) -> Layer {
    Layer::gzip(work, tar, flate2::Compression::fast())
}

/// A tar of one directory and `files` one-byte files in it: `files + 1` entries.
fn many_entries(files: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "d/", &[][..]).unwrap();
    for i in 0..files {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, format!("d/f{i}"), &b"x"[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Pushes `img` as `repo:tag` with kiln's client; returns the reference.
fn push(reg: &TestRegistry, name: &str, img: &TestImage) -> String {
    let reference = format!("{}/{name}", reg.addr);
    let registry = Registry::new(reg.options()).unwrap();
    bounded(registry.push_image(
        &reference,
        &img.blobs(None),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap_or_else(|e| panic!("push {reference}: {e}"));
    reference
}

/// Pushes `manifest` as `name` (its blobs are in the repository already); returns the reference.
fn push_manifest(reg: &TestRegistry, name: &str, manifest: &serde_json::Value) -> String {
    let reference = format!("{}/{name}", reg.addr);
    let bytes = serde_json::to_vec(manifest).unwrap();
    let registry = Registry::new(reg.options()).unwrap();
    bounded(registry.push_image(&reference, &[], &bytes, MEDIA_TYPE_OCI_MANIFEST))
        .unwrap_or_else(|e| panic!("push {reference}: {e}"));
    reference
}

/// A tmpfs of `size` bytes mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = run_bounded(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0755"))
                .arg("kiln-hostile-test")
                .arg(dir.path()),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(out.success(), "mount tmpfs: {}", out.stderr);
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn used(&self) -> u64 {
        used_bytes(self.path())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn used_bytes(mount: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(mount).unwrap();
    (s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64
}

/// What a build did.
struct Build {
    ok: bool,
    /// stdout and stderr (the log and `/usr/bin/time -v`'s report).
    log: String,
    /// Most bytes in use on the `--kiln-dir` tmpfs while it ran.
    peak_disk: u64,
    /// Maximum resident set size, KiB.
    peak_rss_kib: u64,
}

impl Build {
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: peak disk of the work dir {:.1} MiB, peak memory {:.1} MiB",
            self.peak_disk as f64 / MIB as f64,
            self.peak_rss_kib as f64 / 1024.0
        );
    }

    /// The build failed with `needles` in its log, and without a panic.
    fn fails_with(&self, needles: &[&str]) {
        assert!(!self.ok, "the build succeeded:\n{}", self.log);
        for n in needles {
            assert!(self.log.contains(n), "{n:?} not in:\n{}", self.log);
        }
        assert!(!self.log.contains("panicked"), "{}", self.log);
        if let Some(line) = self.log.lines().find(|l| l.starts_with("kiln-executor: ")) {
            eprintln!("{line}");
        }
    }

    fn succeeds(&self) {
        assert!(self.ok, "the build failed:\n{}", self.log);
    }
}

/// Builds `FROM from` with kiln-executor under `/usr/bin/time -v`, in chroot mode, with `flags`
/// (`--no-push` unless they name a destination) and `--kiln-dir` on `disk` when given.
fn build(from: &str, disk: Option<&Tmpfs>, flags: &[&str]) -> Build {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("Dockerfile"), format!("FROM {from}\n")).unwrap();
    let mut cmd = Command::new(kiln_testkit::tool("time"));
    cmd.arg("-v")
        .arg(env!("CARGO_BIN_EXE_kiln-executor"))
        .arg("--context")
        .arg(format!("dir://{}", ctx.path().display()))
        .args(["--isolation", "chroot"])
        .args(flags)
        .env_remove("KILN_CONTAINER")
        .env("KILN_TERMINATION_LOG", ctx.path().join("termination"));
    if !flags.iter().any(|f| f.starts_with("--destination")) {
        cmd.arg("--no-push");
    }
    let kiln_dir = disk.map(|d| d.path().to_path_buf());
    if let Some(dir) = &kiln_dir {
        // What an earlier build left (the executor clears it too, but only once it runs): the
        // peak measured is this build's.
        let _ = fs::remove_dir_all(dir.join("build"));
        cmd.arg("--kiln-dir").arg(dir);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let poller = kiln_dir.clone().map(|dir| {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(used_bytes(&dir), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    });
    let out = run_bounded(&mut cmd, BUILD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    stop.store(true, Ordering::SeqCst);
    if let Some(p) = poller {
        p.join().unwrap();
    }
    let log = format!("{}{}", out.stdout, out.stderr);
    let peak_rss_kib = log
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in /usr/bin/time's report:\n{log}"));
    Build {
        ok: out.success(),
        log,
        peak_disk: peak.load(Ordering::SeqCst),
        peak_rss_kib,
    }
}

/// The tools and privileges a test that unpacks needs; `false`: return at once.
fn can_unpack() -> bool {
    require_tools(&["docker-registry", "time", "mount", "umount"])
        && require_root("mounting the test's tmpfs and unpacking as the layers' owners need root")
}

/// The work directory's root of the first stage, which a failed unpack must have removed.
fn stage_root(disk: &Tmpfs) -> PathBuf {
    disk.path().join("build/stages/0/rootfs")
}

#[test]
fn gzip_bomb_stops_at_max_layer_size_before_the_disk_fills() {
    if !can_unpack() {
        return;
    }
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let bomb = zeros_layer(work.path(), "bomb", 1024);
    assert!(bomb.size < 2 * MIB, "the bomb is {} bytes", bomb.size);
    let digest = bomb.digest.clone();
    let from = push(
        &reg,
        "hostile/bomb:v1",
        &TestImage::new(vec![bomb], config()),
    );

    let bound = 64 * MIB;
    // The work dir cannot hold more than the bound and its margin: had the unpack gone on past
    // the bound, the build would have failed with ENOSPC instead.
    let disk = Tmpfs::mount(bound + DISK_MARGIN);
    let b = build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-layer-size=64MiB"],
    );
    b.report("gzip bomb (1 GiB of zeros) with --max-layer-size=64MiB");
    b.fails_with(&[
        &format!("unpacking layer {digest} of {from}"),
        "larger than 64MiB decompressed (the --max-layer-size bound)",
    ]);
    assert!(!b.log.contains("No space left"), "{}", b.log);
    assert!(!stage_root(&disk).exists(), "the partial root was left");
    assert!(b.peak_disk <= bound + DISK_MARGIN, "{} bytes", b.peak_disk);
    assert!(b.peak_rss_kib < MEMORY_BOUND_KIB, "{} KiB", b.peak_rss_kib);
}

#[test]
fn blobs_longer_or_shorter_than_their_descriptors_are_refused() {
    if !can_unpack() {
        return;
    }
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let l = layer(work.path(), &tar_with_file("noise.bin", &noise(7, 2 << 20)));
    let img = TestImage::new(vec![l.clone()], config());
    let good = push(&reg, "hostile/blob:good", &img);
    let lying = |size: u64| {
        let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        m["layers"][0]["size"] = json!(size);
        m
    };
    let longer = push_manifest(&reg, "hostile/blob:longer", &lying(l.size - 4096));
    let shorter = push_manifest(&reg, "hostile/blob:shorter", &lying(l.size + 4096));

    let disk = Tmpfs::mount(64 * MIB);
    let b = build(&longer, Some(&disk), &["--insecure-pull"]);
    b.report("a blob 4 KiB longer than its descriptor");
    b.fails_with(&[
        &format!("blob {} of {longer}", l.digest),
        &format!("is longer than its descriptor's {} bytes", l.size - 4096),
    ]);
    // Reading stopped at the descriptor's size and kept nothing.
    assert!(b.peak_disk <= l.size + DISK_MARGIN, "{} bytes", b.peak_disk);
    assert!(b.peak_rss_kib < MEMORY_BOUND_KIB, "{} KiB", b.peak_rss_kib);
    let blob_dir = disk.path().join("build/blobs");
    let kept = fs::read_dir(&blob_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(kept, 0, "blob files left in {}", blob_dir.display());

    let b = build(&shorter, Some(&disk), &["--insecure-pull"]);
    b.fails_with(&[&format!(
        "is shorter than its descriptor's {} bytes ({} bytes)",
        l.size + 4096,
        l.size
    )]);

    // The same blob under its true size is fine.
    build(&good, Some(&disk), &["--insecure-pull"]).succeeds();
}

#[test]
fn max_layer_size_at_a_low_value() {
    if !can_unpack() {
        return;
    }
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let zeros = zeros_layer(work.path(), "zeros", 2);
    let zeros_digest = zeros.digest.clone();
    let from = push(
        &reg,
        "hostile/two-mib:v1",
        &TestImage::new(vec![zeros], config()),
    );
    let disk = Tmpfs::mount(64 * MIB);
    let b = build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-layer-size=1MiB"],
    );
    b.fails_with(&[
        &format!("unpacking layer {zeros_digest} of {from}"),
        "larger than 1MiB decompressed (the --max-layer-size bound)",
    ]);
    assert!(!stage_root(&disk).exists());
    build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-layer-size=3MiB"],
    )
    .succeeds();

    // A blob that could only hold a larger layer is refused before it is downloaded.
    let dense = layer(work.path(), &tar_with_file("noise.bin", &noise(3, 2 << 20)));
    let dense_digest = dense.digest.clone();
    let from = push(
        &reg,
        "hostile/dense:v1",
        &TestImage::new(vec![dense], config()),
    );
    let b = build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-layer-size=1MiB"],
    );
    b.fails_with(&[
        &format!("layer {dense_digest} of {from}"),
        "--max-layer-size bound",
    ]);
    let blob = disk
        .path()
        .join("build/blobs")
        .join(dense_digest.replace(':', "-"));
    assert!(!blob.exists(), "the blob was downloaded");
    assert!(b.peak_disk < MIB, "{} bytes", b.peak_disk);
}

#[test]
fn max_layer_entries_at_a_low_value() {
    if !can_unpack() {
        return;
    }
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let l = layer(work.path(), &many_entries(10));
    let digest = l.digest.clone();
    let from = push(
        &reg,
        "hostile/entries:v1",
        &TestImage::new(vec![l], config()),
    );
    let disk = Tmpfs::mount(64 * MIB);
    let b = build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-layer-entries=10"],
    );
    b.fails_with(&[
        &format!("unpacking layer {digest} of {from}"),
        "has more than 10 entries (the --max-layer-entries bound)",
    ]);
    assert!(!stage_root(&disk).exists());
    build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-layer-entries=11"],
    )
    .succeeds();
}

#[test]
fn max_build_size_at_a_low_value() {
    if !can_unpack() {
        return;
    }
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let layers: Vec<Layer> = (0..3)
        .map(|i| zeros_layer(work.path(), &format!("z{i}"), 1))
        .collect();
    let third = layers[2].digest.clone();
    let from = push(&reg, "hostile/three:v1", &TestImage::new(layers, config()));
    let disk = Tmpfs::mount(64 * MIB);
    // Each layer is 1 MiB of content and 1.5 KiB of tar: two fit in 3 MiB, three do not.
    let b = build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-build-size=3MiB"],
    );
    b.fails_with(&[
        &format!("unpacking layer {third} of {from}"),
        "past 3MiB of unpacked layers (the --max-build-size bound",
    ]);
    assert!(!stage_root(&disk).exists());
    build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--max-build-size=4MiB"],
    )
    .succeeds();
}

#[test]
fn max_manifest_size_at_a_low_value() {
    if !can_unpack() {
        return;
    }
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let l = layer(work.path(), &tar_with_file("a.txt", b"a\n"));
    // A 2 MiB manifest (an annotation pads it), which the registry stores and serves.
    let img = TestImage::new(vec![l.clone()], config());
    push(&reg, "hostile/manifest:plain", &img);
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["annotations"] = json!({"pad": "m".repeat(2 << 20)});
    let big = push_manifest(&reg, "hostile/manifest:big", &m);
    let disk = Tmpfs::mount(64 * MIB);
    let b = build(
        &big,
        Some(&disk),
        &["--insecure-pull", "--max-manifest-size=1MiB"],
    );
    b.fails_with(&[
        &format!("manifest for tag big of {big}"),
        "is larger than 1MiB (the --max-manifest-size bound)",
    ]);
    assert!(b.peak_rss_kib < MEMORY_BOUND_KIB, "{} KiB", b.peak_rss_kib);
    build(&big, Some(&disk), &["--insecure-pull"]).succeeds();

    // A 2 MiB config: the same bound.
    let mut config = config();
    config["config"]["Labels"] = json!({"pad": "c".repeat(2 << 20)});
    let fat = push(&reg, "hostile/config:v1", &TestImage::new(vec![l], config));
    let b = build(
        &fat,
        Some(&disk),
        &["--insecure-pull", "--max-manifest-size=1MiB"],
    );
    b.fails_with(&[
        "config sha256:",
        "is larger than 1MiB (the --max-manifest-size bound)",
    ]);
    build(&fat, Some(&disk), &["--insecure-pull"]).succeeds();
}

#[test]
fn endless_and_oversized_manifests_from_a_hostile_registry_stop_at_the_cap() {
    if !require_tools(&["docker-registry", "time"]) {
        return;
    }
    let reg = TestRegistry::start();
    // 5 MiB with its length announced, and a body without end.
    let five: &'static str =
        Box::leak(format!("{{\"pad\":\"{}\"}}", "x".repeat(5 << 20)).into_boxed_str());
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![
            rule("GET", "/manifests/five", Fault::Status(200, five), 100),
            rule(
                "GET",
                "/manifests/endless",
                Fault::Endless(200, "{\"a\":["),
                100,
            ),
        ],
    );
    let five_ref = format!("{}/hostile/huge:five", proxy.addr);
    let b = build(&five_ref, None, &["--insecure-pull"]);
    b.report("a 5 MiB manifest");
    b.fails_with(&[
        &format!("manifest for tag five of {five_ref}"),
        "is larger than 4MiB (the --max-manifest-size bound); it says",
    ]);
    assert!(b.peak_rss_kib < MEMORY_BOUND_KIB, "{} KiB", b.peak_rss_kib);

    let endless_ref = format!("{}/hostile/huge:endless", proxy.addr);
    let b = build(&endless_ref, None, &["--insecure-pull"]);
    b.report("an endless manifest");
    b.fails_with(&[
        &format!("manifest for tag endless of {endless_ref}"),
        "is larger than 4MiB (the --max-manifest-size bound)",
    ]);
    assert!(b.peak_rss_kib < MEMORY_BOUND_KIB, "{} KiB", b.peak_rss_kib);
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_partial_root_is_removed() {
    if !can_unpack() {
        return;
    }
    let reg = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let big = zeros_layer(work.path(), "big", 32);
    let digest = big.digest.clone();
    let from = push(&reg, "hostile/big:v1", &TestImage::new(vec![big], config()));
    let disk = Tmpfs::mount(8 * MIB);
    let b = build(&from, Some(&disk), &["--insecure-pull"]);
    b.report("a 32 MiB layer on an 8 MiB disk");
    b.fails_with(&[
        &format!("unpacking layer {digest} of {from}"),
        "no space left on device while unpacking layer",
        "build/stages/0/rootfs",
    ]);
    assert!(!stage_root(&disk).exists(), "the partial root was left");
    assert!(disk.used() < MIB, "{} bytes still used", disk.used());
}

#[test]
fn insecure_pull_does_not_weaken_the_push() {
    if !can_unpack() {
        return;
    }
    // Not on 127.0.0.1, where HTTPS falls back to plain HTTP without any flag.
    let reg = TestRegistry::start_not_local();
    let work = tempfile::tempdir().unwrap();
    let from = push(
        &reg,
        "plain/base:v1",
        &TestImage::hello(work.path(), &arch(), "hello\n"),
    );
    let disk = Tmpfs::mount(64 * MIB);
    let dest = format!("{}/plain/out:v1", reg.addr);
    let destination = format!("--destination={dest}");

    // Pulled over plain HTTP, pushed over HTTPS to a plain-HTTP registry: the push fails.
    let b = build(&from, Some(&disk), &["--insecure-pull", &destination]);
    b.fails_with(&[&format!("pulled {from}"), &reg.addr]);
    assert!(!reg.has_tag("plain/out", "v1"), "pushed over plain HTTP");

    // --insecure is kaniko's push flag: alone, it leaves the pull on HTTPS.
    let b = build(&from, Some(&disk), &["--insecure", &destination]);
    b.fails_with(&[&format!("pulling {from}")]);
    assert!(!reg.has_tag("plain/out", "v1"));

    // Both: the pull and the push over plain HTTP.
    build(
        &from,
        Some(&disk),
        &["--insecure-pull", "--insecure", &destination],
    )
    .succeeds();
    assert!(reg.has_tag("plain/out", "v1"));
}

#[test]
fn skip_tls_verify_pull_does_not_weaken_the_push_nor_the_cache() {
    if !require_tools(&["docker-registry", "openssl"]) {
        return;
    }
    let reg = TestRegistry::with_tls();
    let work = tempfile::tempdir().unwrap();
    let img = TestImage::hello(work.path(), &arch(), "tls\n");
    let base = format!("{}/tls/base:v1", reg.addr);
    let dest = format!("{}/tls/out:v1", reg.addr);
    let cache = format!("{}/tls/out/cache", reg.addr);
    let options = |o: RegistryOptions| RegistryOptions {
        docker_config: Some(reg.empty_docker_config()),
        push_repositories: vec![dest.clone(), cache.clone()],
        ..o
    };
    let everywhere = Registry::new(options(RegistryOptions {
        skip_tls_verify: true,
        ..Default::default()
    }))
    .unwrap();
    bounded(everywhere.push_image(
        &base,
        &img.blobs(None),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();

    let pull_only = Registry::new(options(RegistryOptions {
        skip_tls_verify_pull: true,
        ..Default::default()
    }))
    .unwrap();
    // The base image is pulled without verifying the self-signed certificate…
    bounded(pull_only.pull_image(&base)).unwrap();
    // …but neither the push nor a read of the layer cache skips verification.
    let err = bounded(pull_only.push_image(
        &dest,
        &img.blobs(None),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = bounded(pull_only.pull_image(&format!("{cache}:some-key"))).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(!reg.has_tag("tls/out", "v1"));
}

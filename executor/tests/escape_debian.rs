//! The classic escapes of a `RUN` step, as a real build on the Debian base image the test suite
//! pushes (`scripts/base-images.sh`: `$KILN_TEST_REGISTRY/kiln-test/debian:bookworm`), through the
//! `kiln-executor` binary in chroot isolation: the double-chroot escape with perl (perl-base is in
//! Debian's minbase), then `mknod` of a block device and attempts to read it, write it and mount
//! it. `tests/sandbox.rs` does the same with a compiled C probe in a busybox root; this is the
//! attack as a Dockerfile writes it.
//!
//! Checked on the host: the marker the step tries to create next to the host-only file was not
//! written, the victim beside it is unchanged and nothing else appeared there; the host-only
//! file's content is in no blob of the output OCI layout (layers decompressed) and not in the
//! build log; the block device's backing file is unchanged.
//!
//! Safe for the CI machine whatever regresses: every host path the step aims at is under this
//! test's temporary directory, and the "disk" is a loop device over a file of the test's own,
//! never the host's root device (whose numbers a regression would let the step write to).
//!
//! Needs root, `losetup`, `skopeo` and the local test registry with the Debian base: under
//! `CI=true` a missing one fails the test, elsewhere it is skipped loudly.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_testkit::{registry_digest, require_root, require_tools, run_bounded, skip_or_fail};
use support::{find_in, scan_files};

/// Pulling and unpacking the Debian base, three steps and their snapshots on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(600);

/// Where the step runs the device attacks: the root (a bind of itself, `nodev`), the `/dev`
/// tmpfs and `/dev/shm`.
const NODE_DIRS: [&str; 3] = ["/tmp", "/dev", "/dev/shm"];

/// The host side: a file only the host has, a victim, and where a marker would appear.
struct Host {
    dir: tempfile::TempDir,
    secret: String,
}

impl Host {
    fn new() -> Host {
        // Under /tmp, where the issue's step wrote: the step's root has a /tmp too, so only a
        // path into the host's tree could reach these.
        let dir = tempfile::Builder::new()
            .prefix("kiln-escape-host-")
            .tempdir_in("/tmp")
            .expect("host temp dir");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let secret = format!("kiln-host-only-{}-{nanos}", std::process::id());
        fs::write(dir.path().join("secret"), format!("{secret}\n")).unwrap();
        fs::write(dir.path().join("victim"), "victim intact\n").unwrap();
        Host { dir, secret }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Nothing written, nothing replaced, nothing added.
    fn check_untouched(&self) -> Result<(), String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .map_err(|e| e.to_string())?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if names != ["secret", "victim"] {
            return Err(format!(
                "the host directory {} changed: {names:?}",
                self.dir.path().display()
            ));
        }
        let victim = fs::read_to_string(self.path("victim")).map_err(|e| e.to_string())?;
        if victim != "victim intact\n" {
            return Err(format!(
                "the host's victim file was overwritten: {victim:?}"
            ));
        }
        Ok(())
    }
}

/// A loop device over a file of the test's own: the stand-in for the host's disk.
struct LoopDevice {
    dev: String,
}

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        let out = run_bounded(
            Command::new("losetup").args(["-f", "--show"]).arg(file),
            Duration::from_secs(60),
        )
        .expect("losetup");
        assert!(out.success(), "losetup -f --show failed: {}", out.stderr);
        LoopDevice {
            dev: out.stdout.trim().to_string(),
        }
    }

    fn numbers(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let rdev = fs::metadata(&self.dev)
            .unwrap_or_else(|e| panic!("{}: {e}", self.dev))
            .rdev();
        (libc::major(rdev) as u64, libc::minor(rdev) as u64)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("losetup").args(["-d", &self.dev]),
            Duration::from_secs(60),
        );
    }
}

/// The issue's double chroot, aimed at this test's host files. `/stolen`, opened before the
/// escape, is in the image root: whatever the step reads after it lands in a layer (and the log).
fn escape_step(host: &Host) -> String {
    let (marker, secret, victim) = (
        host.path("marker"),
        host.path("secret"),
        host.path("victim"),
    );
    format!(
        r#"RUN perl -e 'open(O, ">", "/stolen") or die "stolen: $!"; \
    mkdir "x"; chroot "x" or print "chroot-in: $!\n"; chdir ".." for 1..64; \
    chroot "." or print "chroot-out: $!\n"; \
    if (open(F, ">", "{marker}")) {{ print F "escaped\n"; close F; print "marker-written\n" }} else {{ print "marker-refused: $!\n" }} \
    if (open(V, ">", "{victim}")) {{ print V "overwritten\n"; close V; print "victim-written\n" }} else {{ print "victim-refused: $!\n" }} \
    if (open(G, "<", "{secret}")) {{ my @l = <G>; print O @l; print @l; print "secret-read\n" }} else {{ print "secret-refused: $!\n" }} \
    close O; print "escape-done\n"'
"#,
        marker = marker.display(),
        secret = secret.display(),
        victim = victim.display(),
    )
}

/// `mknod` of the loop device in every writable place, then read, write and mount attempts,
/// each reported as `<what>-<place>=<exit code>`; the nodes are removed again.
fn device_step(major: u64, minor: u64) -> String {
    let mut script = String::from("RUN mkdir -p /mnt/disk");
    for (i, dir) in NODE_DIRS.iter().enumerate() {
        let node = format!("{dir}/kiln-disk");
        script.push_str(&format!(
            "; \\\n    mknod {node} b {major} {minor}; echo mknod-{i}=$?; \
             dd if={node} of=/dev/null bs=512 count=1; echo read-{i}=$?; \
             printf kiln-overwrite | dd of={node} conv=notrunc; echo write-{i}=$?; \
             mount {node} /mnt/disk; echo mount-{i}=$?; rm -f {node}"
        ));
    }
    script.push_str("; \\\n    echo kiln-escape-control > /control; echo devices-done\n");
    script
}

struct Build {
    ok: bool,
    log: String,
    layout: PathBuf,
}

fn build(work: &Path, dockerfile: &str) -> Build {
    let ctx = work.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let layout = work.join("layout");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.env_remove("KILN_CONTAINER")
        .args(["--isolation", "chroot", "--insecure-pull"])
        .arg("--context")
        .arg(format!("dir://{}", ctx.display()))
        .arg("--dockerfile")
        .arg(ctx.join("Dockerfile"))
        .arg("--kiln-dir")
        .arg(work.join("kiln"))
        .args(["--no-push", "--oci-layout-path"])
        .arg(&layout);
    let out = run_bounded(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("kiln-executor: {e}"));
    Build {
        ok: out.success(),
        log: format!("{}{}", out.stdout, out.stderr),
        layout,
    }
}

/// The value of `<key>=<n>` in the log, as the device step prints it.
fn reported(log: &str, key: &str) -> Option<i32> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
}

/// The registry, when this run has one with the Debian base; else skipped (failed under CI).
fn debian_base() -> Option<String> {
    let reg = match std::env::var("KILN_TEST_REGISTRY") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => {
            skip_or_fail(
                "KILN_TEST_REGISTRY is not set: this test needs the local registry with the \
                 Debian base (`bash scripts/registry.sh start && bash scripts/base-images.sh`)",
            );
            return None;
        }
    };
    let image = format!("{reg}/kiln-test/debian:bookworm");
    if let Err(e) = registry_digest(&image) {
        skip_or_fail(&format!(
            "the Debian base {image} is not in the registry (run `bash scripts/base-images.sh`): {e}"
        ));
        return None;
    }
    Some(image)
}

#[test]
fn double_chroot_and_block_device_stay_inside_a_debian_build() {
    if !require_root("chroot isolation and losetup need root")
        || !require_tools(&["losetup", "skopeo"])
    {
        return;
    }
    let Some(base) = debian_base() else { return };
    let host = Host::new();
    let work = tempfile::Builder::new()
        .prefix("kiln-escape-")
        .tempdir()
        .expect("work dir");
    let backing = work.path().join("disk.img");
    let content: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    fs::write(&backing, &content).unwrap();
    let disk = LoopDevice::attach(&backing);
    let (major, minor) = disk.numbers();

    let dockerfile = format!(
        "FROM {base}\n{}{}",
        escape_step(&host),
        device_step(major, minor)
    );
    let build = build(work.path(), &dockerfile);
    drop(disk);

    // Shown with --nocapture.
    println!("{}", build.log);
    // The host first: whatever the build's outcome, nothing there may have changed.
    let mut failures = Vec::new();
    if let Err(e) = host.check_untouched() {
        failures.push(e);
    }
    if fs::read(&backing).unwrap() != content {
        failures.push("the loop device's backing file changed".to_string());
    }
    let needles = [("the host-only file's content", host.secret.as_str())];
    failures.extend(find_in("the build log", build.log.as_bytes(), &needles));
    let (found, files) = scan_files(&build.layout, &needles);
    failures.extend(found);
    assert!(
        failures.is_empty(),
        "the RUN step reached the host: {failures:?}\n--- build log ---\n{}",
        build.log
    );

    // Then that the attacks really ran, so that a broken step cannot pass as a contained one.
    assert!(build.ok, "the build failed:\n{}", build.log);
    for line in [
        "escape-done",
        "marker-refused",
        "victim-refused",
        "secret-refused",
        "devices-done",
    ] {
        assert!(
            // A line of its own: the log also echoes the step's command.
            build.log.lines().any(|l| l.starts_with(line)),
            "the step did not print {line:?}:\n{}",
            build.log
        );
    }
    // chroot is allowed (CAP_SYS_CHROOT, as in Docker): the climb out was really tried.
    for refused in ["chroot-in:", "chroot-out:"] {
        assert!(
            !build.log.lines().any(|l| l.starts_with(refused)),
            "the step's chroot failed, so the escape was not tried:\n{}",
            build.log
        );
    }
    for (i, place) in NODE_DIRS.iter().enumerate() {
        // mknod is allowed, as in Docker; every writable mount is nodev, so the node opens
        // nothing, and seccomp refuses mount.
        assert_eq!(
            reported(&build.log, &format!("mknod-{i}")),
            Some(0),
            "mknod in {place}:\n{}",
            build.log
        );
        for what in ["read", "write", "mount"] {
            let code = reported(&build.log, &format!("{what}-{i}"));
            assert!(
                matches!(code, Some(c) if c != 0),
                "{what} of the block device in {place} did not fail ({code:?}):\n{}",
                build.log
            );
        }
    }
    // The scanner read the layers: the control file the step wrote is found, decompressed.
    let (control, _) = scan_files(&build.layout, &[("control", "kiln-escape-control")]);
    assert!(
        control.iter().any(|c| c.contains("(decompressed)")),
        "no layer of {} shows the control file ({files} files scanned)",
        build.layout.display()
    );
}

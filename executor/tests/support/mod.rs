//! Shared helpers for kiln's integration tests: the test registry, bounded external commands
//! (buildah, skopeo, umoci, podman), fetching and flattening images, and comparing file trees and
//! image configs. It must not build images itself beyond driving the reference builder, and it must
//! never talk to a registry other than the local test one.
#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod diff;
mod history;
// Only the differential and container-mode tests compare trees; the other test binaries import none.
#[allow(unused_imports)]
pub use diff::*;
#[allow(unused_imports)]
pub use history::*;

/// The flags every podman call uses on these machines (no systemd, no overlay in the sandbox).
pub const PODMAN_FLAGS: &[&str] = &[
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--storage-driver",
    "vfs",
];

/// The flags every buildah call uses (vfs works everywhere, including nested in a container).
pub const BUILDAH_FLAGS: &[&str] = &["--storage-driver", "vfs"];

/// The local test registry (`host:port`), from `KILN_TEST_REGISTRY`.
///
/// Panics with instructions when it is not set: a test that needs the registry must fail loudly,
/// never pass silently, when run outside `scripts/test.sh`.
pub fn registry() -> String {
    match std::env::var("KILN_TEST_REGISTRY") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => panic!(
            "KILN_TEST_REGISTRY is not set: this test needs the local registry and base images. \
             Run `bash scripts/test.sh` (it installs the tools, starts the registry and exports \
             KILN_TEST_REGISTRY), or start them by hand: `bash scripts/registry.sh start && \
             bash scripts/base-images.sh && export KILN_TEST_REGISTRY=127.0.0.1:5000`"
        ),
    }
}

/// The repository root (the workspace), for `testdata/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("executor crate lives one level below the workspace root")
        .to_path_buf()
}

/// What a finished external command produced.
#[derive(Debug)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Why an external command did not succeed, with enough of its output to act on.
#[derive(Debug)]
pub struct CmdError {
    pub command: String,
    pub reason: String,
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.command, self.reason)
    }
}

/// Keeps the last `max` bytes of a command's output: enough to see the error, not the whole log.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.trim_end().to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", s[start..].trim_end())
}

/// Runs a command with a deadline, capturing its output. The command gets its own process group
/// so that a timeout kills everything it started (buildah and podman fork helpers).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| CmdError {
        command: shown.clone(),
        reason: format!(
            "could not start: {e} (is it installed? `bash scripts/test.sh` installs it)"
        ),
    })?;
    let mut out = child.stdout.take().expect("stdout was piped");
    let mut err = child.stderr.take().expect("stderr was piped");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if start.elapsed() > timeout => {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break Err(());
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(CmdError {
                    command: shown,
                    reason: format!("could not be waited for: {e}"),
                })
            }
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    match status {
        Ok(st) => Ok(Output {
            status: st.code(),
            stdout,
            stderr,
        }),
        Err(()) => Err(CmdError {
            command: shown,
            reason: format!(
                "timed out after {}s and was killed; stderr: {}",
                timeout.as_secs(),
                tail(&stderr, 2000)
            ),
        }),
    }
}

/// Like [`run_bounded`] but a non-zero exit is an error carrying the tail of stderr and stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    let shown = format!("{}", cmd.get_program().to_string_lossy());
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = run_bounded(cmd, timeout)?;
    if out.success() {
        Ok(out)
    } else {
        Err(CmdError {
            command: format!("{shown} {}", args.join(" ")),
            reason: format!(
                "exited with {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                out.status,
                tail(&out.stderr, 3000),
                tail(&out.stdout, 1500)
            ),
        })
    }
}

/// Copies an image from the test registry into an OCI layout `layout:tag` (plain HTTP allowed).
pub fn skopeo_fetch(image: &str, layout: &Path, tag: &str) -> Result<(), CmdError> {
    run_ok(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
            &format!("oci:{}:{tag}", layout.display()),
        ]),
        Duration::from_secs(300),
    )
    .map(|_| ())
}

/// The image config JSON (`skopeo inspect --config --raw`) of an image in the test registry.
pub fn image_config(image: &str) -> Result<serde_json::Value, CmdError> {
    let out = run_ok(
        Command::new("skopeo").args([
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ]),
        Duration::from_secs(120),
    )?;
    serde_json::from_str(&out.stdout).map_err(|e| CmdError {
        command: format!("skopeo inspect --config --raw docker://{image}"),
        reason: format!(
            "printed something that is not JSON ({e}): {}",
            tail(&out.stdout, 500)
        ),
    })
}

/// Flattens all layers of `layout:tag` into `rootfs` with umoci (as root: ownership kept).
/// umoci applies whiteouts and opaque directories itself, independently of kiln's unpacker.
pub fn umoci_unpack(layout: &Path, tag: &str, rootfs: &Path) -> Result<(), CmdError> {
    run_ok(
        Command::new("umoci").args([
            "raw",
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            &rootfs.display().to_string(),
        ]),
        Duration::from_secs(300),
    )
    .map(|_| ())
}

/// Fetches an image and flattens it: the result is `dir/rootfs-<tag>`.
pub fn fetch_rootfs(image: &str, dir: &Path, tag: &str) -> Result<PathBuf, CmdError> {
    let layout = dir.join("layout");
    skopeo_fetch(image, &layout, tag)?;
    let rootfs = dir.join(format!("rootfs-{tag}"));
    umoci_unpack(&layout, tag, &rootfs)?;
    Ok(rootfs)
}

/// Runs `image` with podman and checks its output.
pub fn podman_check(image: &str, args: &[&str], expected: &str) -> Result<(), String> {
    let out = run_ok(
        Command::new("podman")
            .args(PODMAN_FLAGS)
            .args([
                "run",
                "--rm",
                "--network",
                "host",
                "--tls-verify=false",
                "--pull=newer",
                image,
            ])
            .args(args),
        Duration::from_secs(180),
    )
    .map_err(|e| format!("podman run failed: {e}"))?;
    let _ = run_bounded(
        Command::new("podman")
            .args(PODMAN_FLAGS)
            .args(["rmi", "-f", image]),
        Duration::from_secs(60),
    );
    let got = out.stdout.trim();
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "podman run {image} {args:?}: expected output {expected:?}, got {got:?} (stderr: {})",
            tail(&out.stderr, 500)
        ))
    }
}

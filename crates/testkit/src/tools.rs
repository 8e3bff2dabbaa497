//! The independent image tools the tests judge kiln with: skopeo fetches, inspects, pushes and
//! deletes, umoci flattens, podman runs, openssl makes certificates. Plain HTTP to the local test
//! registry only; it must never talk to a remote registry or read an image with kiln's own code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{run, run_bounded, run_ok, tail, CmdError};

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

/// Podman's global flags: `KILN_PODMAN_FLAGS` when set (scripts/test.sh exports it), else
/// [`PODMAN_FLAGS`].
pub fn podman_flags() -> Vec<String> {
    match std::env::var("KILN_PODMAN_FLAGS") {
        Ok(v) if !v.trim().is_empty() => v.split_whitespace().map(str::to_string).collect(),
        _ => PODMAN_FLAGS.iter().map(|s| s.to_string()).collect(),
    }
}

/// A `podman` command with [`podman_flags`].
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(podman_flags());
    cmd
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

/// Puts `oci:<layout>:<ref_name>` into the registry as `dest` with skopeo (`extra`: more flags,
/// such as credentials or a manifest format); panics when skopeo fails.
pub fn skopeo_push_layout(layout: &Path, ref_name: &str, dest: &str, extra: &[&str]) {
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:{ref_name}", layout.display()))
        .arg(format!("docker://{dest}")));
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

/// The manifest digest the registry serves for `image` (`host:port/repo:tag`).
pub fn registry_digest(image: &str) -> Result<String, CmdError> {
    let out = run_ok(
        Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{image}"),
        ]),
        Duration::from_secs(120),
    )?;
    Ok(out.stdout.trim().to_string())
}

/// Bytes an image takes in the test registry, read from its manifest by `skopeo inspect --raw`:
/// the config's and the layers' sizes (an independent check of what the executor reports).
pub fn registry_image_size(image: &str) -> Result<u64, CmdError> {
    let out = run_ok(
        Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ]),
        Duration::from_secs(120),
    )?;
    let bad = |what: &str| CmdError {
        command: format!("skopeo inspect --raw docker://{image}"),
        reason: format!("{what}: {}", tail(&out.stdout, 500)),
    };
    let m: serde_json::Value =
        serde_json::from_str(&out.stdout).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let config = m["config"]["size"]
        .as_u64()
        .ok_or_else(|| bad("no config size"))?;
    let layers = m["layers"].as_array().ok_or_else(|| bad("no layers"))?;
    layers.iter().try_fold(config, |sum, l| {
        Ok(sum
            + l["size"]
                .as_u64()
                .ok_or_else(|| bad("a layer without a size"))?)
    })
}

/// Deletes a manifest from the registry (needs `delete.enabled`, which scripts/registry.sh sets).
pub fn skopeo_delete(image: &str) -> Result<(), CmdError> {
    run_ok(
        Command::new("skopeo").args(["delete", "--tls-verify=false", &format!("docker://{image}")]),
        Duration::from_secs(120),
    )
    .map(|_| ())
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

/// `podman run --rm` on the host network (where the test registry is), pulling the image again
/// every time so a tag that moved is seen; the caller adds options, the image and its arguments.
pub fn podman_run_command() -> Command {
    let mut cmd = podman();
    cmd.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--tls-verify=false",
        "--pull=always",
    ]);
    cmd
}

/// [`podman_run_command`] of an image from the test registry, which is removed afterwards (vfs
/// storage keeps a full copy per image).
pub fn podman_run(image: &str, args: &[&str]) -> Result<crate::Output, CmdError> {
    // Tests of one binary run podman at once on one storage, and one's `rmi` of an image can
    // race another's pull of an image sharing a layer: containers/storage then fails the pull
    // with "layer not known". That is the tool's race, not a result: only it is retried.
    let mut attempt = 1;
    let out = loop {
        let out = run_ok(
            podman_run_command().arg(image).args(args),
            Duration::from_secs(180),
        );
        match &out {
            Err(e) if attempt < 3 && e.to_string().contains("layer not known") => {
                eprintln!("podman run {image}: containers/storage's layer race (attempt {attempt}); retrying");
                attempt += 1;
            }
            _ => break out,
        }
    };
    let _ = run_bounded(
        podman().args(["rmi", "-f", "--ignore", image]),
        Duration::from_secs(60),
    );
    out
}

/// Runs `image` with podman and checks its output.
pub fn podman_check(image: &str, args: &[&str], expected: &str) -> Result<(), String> {
    let out = podman_run(image, args).map_err(|e| format!("podman run failed: {e}"))?;
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

/// A self-signed certificate for 127.0.0.1 (its own CA), made by openssl under `dir`:
/// (certificate, key) in PEM.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// A bcrypt htpasswd line, from apache2-utils' htpasswd or Python's crypt module.
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let quick = Duration::from_secs(60);
    if let Ok(out) = run_bounded(
        Command::new("htpasswd").args(["-nbB", user, password]),
        quick,
    ) {
        if out.success() {
            return out.stdout.trim().to_string() + "\n";
        }
    }
    let script =
        "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))";
    match run_bounded(
        Command::new("python3").args(["-W", "ignore", "-c", script, password]),
        quick,
    ) {
        Ok(o) if o.success() && o.stdout.starts_with("$2") => {
            format!("{user}:{}\n", o.stdout.trim())
        }
        _ => panic!(
            "cannot make a bcrypt password hash: install apache2-utils (htpasswd) or a python3 with the crypt module"
        ),
    }
}

//! The executor's secret-bearing environment variables (`GIT_TOKEN`, `GIT_PASSWORD`, `AWS_*`,
//! proxies with passwords, ...): kept out of `/proc/<pid>/environ` from the first instant the
//! build can run a step, while the executor itself still reads them with `std::env::var`. Runs in
//! `main()` before any thread exists and before anything reads the environment; it never logs a
//! value. `RUN` steps never see them in any case: their environment is the image's `ENV` plus the
//! build arguments, handed to the run init, which starts with an empty environment.
//!
//! # Why re-execute
//!
//! `/proc/<pid>/environ` shows the block the kernel put on the stack at `execve`, not the C
//! library's current `environ`: `unsetenv` (and so `std::env::remove_var`) leaves it untouched.
//! Overwriting that block in place works only while nothing else points into it and needs raw
//! writes at addresses read from `/proc/self/stat`. So when such a variable is set, the executor
//! executes itself again (same PID, same arguments, after a hidden marker argument) with those
//! variables left out of the new block, hands them over in a memfd whose number follows the
//! marker, and puts them back into its own heap environment before anything reads them. A step
//! that can read the executor's `/proc/<pid>/environ` (in place, without private namespaces)
//! finds no secret there; in-place builds also make the executor non-dumpable
//! (`run::prepare_in_place`), so without `CAP_SYS_PTRACE` it cannot read that file or the
//! executor's memory at all.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;

/// Hidden argument (followed by the memfd's number) of the re-executed executor.
pub const HANDOVER_ARG: &str = "__kiln-env-handover";

/// Names read as secret-bearing, exactly.
const SECRET_NAMES: [&str; 7] = [
    "GIT_USERNAME",
    "GIT_PASSWORD",
    "GIT_TOKEN",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "FTP_PROXY",
];
/// Cloud SDK variables: some hold keys, and which ones changes with the SDK.
const SECRET_PREFIXES: [&str; 6] = ["AWS_", "AZURE_", "GOOGLE_", "GCP_", "GCLOUD_", "ALIBABA_"];
/// Names a prefix above matches that name where to find something, never a key: settings of
/// the cloud SDKs that CI machines and Pods commonly carry. Leaving them in place spares the
/// re-execution for them alone.
const NOT_SECRET_NAMES: [&str; 3] = ["AWS_CA_BUNDLE", "AWS_REGION", "AWS_DEFAULT_REGION"];
/// Any name containing one of these words.
const SECRET_WORDS: [&str; 8] = [
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "CREDENTIAL",
    "AUTH",
    "API_KEY",
    "PRIVATE_KEY",
];

/// Whether an environment variable may carry a secret. Generous on purpose: a variable taken out
/// of `/proc/<pid>/environ` is still in the executor's own environment, so a false match costs
/// nothing.
pub fn is_secret_name(name: &OsStr) -> bool {
    let upper = name.to_string_lossy().to_ascii_uppercase();
    if NOT_SECRET_NAMES.contains(&upper.as_str()) {
        return false;
    }
    SECRET_NAMES.contains(&upper.as_str())
        || SECRET_PREFIXES.iter().any(|p| upper.starts_with(p))
        || SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Call in `main()` right after `run::maybe_run_init()`: the command-line arguments to parse.
/// When a secret-bearing variable is set, this does not return the first time: the process
/// re-executes itself (see the module documentation). An error means the hand-over arrived
/// broken; the executor should stop.
pub fn protect_environment() -> Result<Vec<OsString>, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).map(OsString::as_os_str) == Some(OsStr::new(HANDOVER_ARG)) {
        let fd = args
            .get(2)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse::<i32>().ok())
            .ok_or_else(|| format!("{HANDOVER_ARG} is internal and needs a descriptor number"))?;
        restore(fd)?;
        let mut rest = vec![args[0].clone()];
        rest.extend(args.into_iter().skip(3));
        return Ok(rest);
    }
    let secrets: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| is_secret_name(name))
        .collect();
    if secrets.is_empty() {
        return Ok(args);
    }
    let err = reexec(&args, &secrets);
    // Still this process: the variables stay in its /proc/<pid>/environ, but the build can run.
    eprintln!(
        "kiln-executor: warning: cannot re-execute without the secret-bearing environment \
         variables ({err}); they stay readable in /proc/{}/environ",
        std::process::id()
    );
    Ok(args)
}

/// `NAME\0VALUE\0` for each variable.
fn encode(vars: &[(OsString, OsString)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in vars {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Vec<(OsString, OsString)>, String> {
    let mut parts = bytes.split(|b| *b == 0);
    let mut out = Vec::new();
    loop {
        match (parts.next(), parts.next()) {
            (Some([]), None) | (None, _) => return Ok(out),
            (Some(name), Some(value)) if !name.is_empty() => out.push((
                OsString::from_vec(name.to_vec()),
                OsString::from_vec(value.to_vec()),
            )),
            _ => return Err("the environment hand-over is malformed".into()),
        }
    }
}

/// Execute `/proc/self/exe` again without the `secrets` in its environment block; returns only
/// on failure.
fn reexec(args: &[OsString], secrets: &[(OsString, OsString)]) -> std::io::Error {
    let memfd = match nix::sys::memfd::memfd_create(
        c"kiln-env-handover",
        nix::sys::memfd::MemFdCreateFlag::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return e.into(),
    };
    let mut file = File::from(memfd);
    if let Err(e) = file
        .write_all(&encode(secrets))
        .and_then(|()| file.rewind())
    {
        return e;
    }
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(&args[0])
        .arg(HANDOVER_ARG)
        .arg(file.as_raw_fd().to_string())
        .args(&args[1..])
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| !is_secret_name(name)));
    // Without FD_CLOEXEC the memfd stays open across exec, as the new process needs.
    cmd.exec()
}

/// In the re-executed process: read the hand-over, close it, and set the variables again.
fn restore(fd: i32) -> Result<(), String> {
    // SAFETY: F_GETFD only inspects the descriptor number the previous image passed.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(format!("{HANDOVER_ARG}: descriptor {fd} is not open"));
    }
    // SAFETY: the previous image of this process opened this memfd for this hand-over alone, and
    // nothing else in this process owns it; it is closed when `file` drops.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("{HANDOVER_ARG}: reading descriptor {fd}: {e}"))?;
    drop(file);
    for (name, value) in decode(&bytes)? {
        // No other thread exists yet (main() calls this first), so changing the environment
        // cannot race a reader.
        std::env::set_var(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bearing_names() {
        for name in [
            "GIT_TOKEN",
            "GIT_PASSWORD",
            "git_username",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "AZURE_CLIENT_SECRET",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "https_proxy",
            "GITHUB_TOKEN",
            "NPM_AUTH_TOKEN",
            "DOCKER_AUTH_CONFIG",
            "REGISTRY_PASSWORD",
            "STRIPE_API_KEY",
        ] {
            assert!(is_secret_name(OsStr::new(name)), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "DOCKER_CONFIG",
            "KILN_CONTAINER",
            "KUBERNETES_SERVICE_HOST",
            "SSL_CERT_FILE",
            "NO_PROXY",
            "GIT_PULL_METHOD",
            "AWS_CA_BUNDLE",
            "aws_region",
            "AWS_DEFAULT_REGION",
        ] {
            assert!(!is_secret_name(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn handover_round_trip() {
        let vars = vec![
            (OsString::from("GIT_TOKEN"), OsString::from("t=o:k en")),
            (OsString::from("EMPTY_SECRET"), OsString::new()),
            (
                OsString::from("AWS_X"),
                OsString::from_vec(vec![0xff, b'a']),
            ),
        ];
        assert_eq!(decode(&encode(&vars)).unwrap(), vars);
        assert_eq!(decode(b"").unwrap(), vec![]);
        assert!(decode(b"NAME").is_err());
        assert!(decode(b"\0value\0").is_err());
    }
}

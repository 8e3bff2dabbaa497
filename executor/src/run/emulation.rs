//! `RUN` steps of a foreign platform under QEMU user emulation, without changing the host.
//!
//! The kernel runs a foreign executable through an interpreter registered in `binfmt_misc`.
//! These machines have no systemd and no `binfmt_misc` mounted, and changing the host kernel's
//! handlers is not a builder's business. Since Linux 6.7 every user namespace may mount its own
//! `binfmt_misc` instance, which only processes in that user namespace use. So, in order:
//!
//! 1. **Private**: where a static `qemu-<arch>-static` is found ([`find_interpreter`]) and a
//!    probe shows the kernel gives a user namespace its own instance, the step's sandbox gets a
//!    user namespace (every id mapped to itself, so files and users mean what they mean on the
//!    host), mounts its own `binfmt_misc` and registers the emulator with the `F` flag (the kernel
//!    opens the interpreter at registration, so it need not exist in the image). Nothing of the
//!    host changes, and the handler is gone with the step.
//! 2. **Host**: otherwise, a handler the host already registered for the architecture (in a
//!    cluster, a node DaemonSet such as `tonistiigi/binfmt --install all`).
//! 3. Otherwise the build fails at once, before the step runs, saying how to get one.
//!
//! The interpreter is named in the registration only. Debian's `<arch>-binfmt-P` links are
//! preferred: registered with the `P` flag they give an emulated program its own `argv[0]`
//! (busybox's applets depend on it); a plain `qemu-<arch>-static` gets the program's path.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_oci::platform::Platform;
use serde::{Deserialize, Serialize};

/// Where `qemu-<arch>-static` may be besides `PATH`: a directory given by the operator of the
/// executor (e.g. the interpreters copied into the executor image).
pub const QEMU_DIR_ENV: &str = "KILN_QEMU_DIR";

/// One `binfmt_misc` registration: the line written to `register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinfmtEntry {
    /// The entry's name (`qemu-aarch64`).
    pub name: String,
    /// `:name:M::magic:mask:interpreter:F`.
    pub line: String,
}

/// How a step of a foreign platform runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// In a user namespace with its own `binfmt_misc` and this registration.
    Private(BinfmtEntry),
    /// Through a handler the host registered.
    Host,
}

/// QEMU's name of the architecture and its ELF magic and mask (QEMU's `qemu-binfmt-conf.sh`,
/// as Debian's `qemu-user-static` registers them).
fn elf_signature(p: &Platform) -> Option<(&'static str, &'static str, &'static str)> {
    const MASK_LE: &str = "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff";
    const MASK_X86: &str = "\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff";
    Some(match (p.os.as_str(), p.architecture.as_str()) {
        ("linux", "arm64") => (
            "aarch64",
            "\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00",
            MASK_LE,
        ),
        ("linux", "arm") => (
            "arm",
            "\\x7fELF\\x01\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x28\\x00",
            MASK_LE,
        ),
        ("linux", "riscv64") => (
            "riscv64",
            "\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xf3\\x00",
            MASK_LE,
        ),
        ("linux", "ppc64le") => (
            "ppc64le",
            "\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x15\\x00",
            "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfc\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\x00",
        ),
        ("linux", "s390x") => (
            "s390x",
            "\\x7fELF\\x02\\x02\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x16",
            "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfc\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff",
        ),
        ("linux", "amd64") => (
            "x86_64",
            "\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x3e\\x00",
            MASK_X86,
        ),
        ("linux", "386") => (
            "i386",
            "\\x7fELF\\x01\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x03\\x00",
            MASK_X86,
        ),
        _ => return None,
    })
}

/// The static QEMU user emulator for `p` and whether it keeps a program's `argv[0]` (the `P`
/// flag): Debian's `<arch>-binfmt-P` (a link to the static emulator, which then takes the
/// original `argv[0]` from the kernel; busybox and other multi-call programs need it) in
/// [`QEMU_DIR_ENV`] or `/usr/libexec/qemu-binfmt`, else `qemu-<arch>-static` in
/// [`QEMU_DIR_ENV`], on `PATH` or in `/usr/bin`. A dynamically linked `qemu-<arch>` would need
/// its libraries inside the build root, so only the static one is taken.
pub fn find_interpreter(p: &Platform) -> Option<(PathBuf, bool)> {
    let (arch, ..) = elf_signature(p)?;
    let qemu_dir = std::env::var_os(QEMU_DIR_ENV).map(PathBuf::from);
    let preserving = format!("{arch}-binfmt-P");
    let found = qemu_dir
        .iter()
        .cloned()
        .chain([PathBuf::from("/usr/libexec/qemu-binfmt")])
        .map(|d| d.join(&preserving))
        .find(|p| is_executable_file(p));
    if let Some(path) = found {
        return Some((path, true));
    }
    let name = format!("qemu-{arch}-static");
    let mut dirs: Vec<PathBuf> = qemu_dir.into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.into_iter()
        .map(|d| d.join(&name))
        .find(|p| is_executable_file(p))
        .map(|p| (p, false))
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The registration of `interpreter` for `p`, with the `F` flag (and `P` when it keeps
/// `argv[0]`).
pub fn entry(p: &Platform, interpreter: &Path, preserve_argv0: bool) -> Option<BinfmtEntry> {
    let (arch, magic, mask) = elf_signature(p)?;
    let name = format!("qemu-{arch}");
    let flags = if preserve_argv0 { "PF" } else { "F" };
    Some(BinfmtEntry {
        line: format!(
            ":{name}:M::{magic}:{mask}:{}:{flags}",
            interpreter.display()
        ),
        name,
    })
}

/// Whether the host's `binfmt_misc` (where it is mounted) has an enabled handler for `p`: an
/// entry whose magic is `p`'s ELF signature.
pub fn host_handler(p: &Platform) -> bool {
    let Some((_, magic, _)) = elf_signature(p) else {
        return false;
    };
    // The kernel shows the magic as plain hex: `magic 7f454c46...`.
    let want: String = magic
        .replace("\\x7fELF", "\\x7f\\x45\\x4c\\x46")
        .split("\\x")
        .filter(|s| !s.is_empty())
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc/sys/fs/binfmt_misc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            return false;
        };
        text.lines().next() == Some("enabled")
            && text.lines().any(|l| {
                l.strip_prefix("magic ")
                    .is_some_and(|m| want.starts_with(m) || m == want)
            })
    })
}

/// Probes, once per process and architecture, whether a user namespace may have its own
/// `binfmt_misc` with this registration (see [`super::probe_private_binfmt`]); the error is
/// the probe's.
static PROBED: Mutex<Vec<(String, Result<(), String>)>> = Mutex::new(Vec::new());

/// How steps of platform `p` run on this machine, or why they cannot (a message saying how to
/// make them run).
pub fn for_platform(p: &Platform, private_allowed: bool) -> Result<Emulation, String> {
    if elf_signature(p).is_none() {
        return Err(format!(
            "Kiln cannot emulate {p}: it knows the QEMU user emulators of linux/arm64, arm, riscv64, ppc64le, s390x, amd64 and 386"
        ));
    }
    let why_not_private;
    if private_allowed {
        match find_interpreter(p) {
            Some((interp, preserve)) => {
                let entry = entry(p, &interp, preserve).expect("checked above");
                let probed = {
                    let mut cache = PROBED.lock().unwrap_or_else(|e| e.into_inner());
                    match cache.iter().find(|(n, _)| *n == entry.line) {
                        Some((_, r)) => r.clone(),
                        None => {
                            let r = super::probe_private_binfmt(&entry).map_err(|e| e.to_string());
                            cache.push((entry.line.clone(), r.clone()));
                            r
                        }
                    }
                };
                match probed {
                    Ok(()) => return Ok(Emulation::Private(entry)),
                    Err(e) => {
                        why_not_private = format!(
                            "; a private binfmt_misc for {} failed ({e}; it needs Linux 6.7 or later and permission to create a user namespace)",
                            interp.display()
                        )
                    }
                }
            }
            None => {
                let (arch, ..) = elf_signature(p).expect("checked above");
                why_not_private = format!(
                    "; no qemu-{arch}-static was found (in ${QEMU_DIR_ENV}, PATH or /usr/bin; Debian: apt-get install qemu-user-static)"
                );
            }
        }
    } else {
        why_not_private =
            "; steps run in place here, where Kiln cannot give them a binfmt_misc of their own"
                .to_string();
    }
    if host_handler(p) {
        return Ok(Emulation::Host);
    }
    Err(format!(
        "no emulator for {p} is available{why_not_private}, and the host has no binfmt_misc handler for it. Register one on the host (it changes the host kernel), e.g. `docker run --privileged --rm tonistiigi/binfmt --install {arch}`, or in Kubernetes a node DaemonSet running that image; or build that stage on this machine's platform (FROM --platform=$BUILDPLATFORM) and COPY --from it",
        arch = p.architecture
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn registrations_match_debians() {
        // Debian's qemu-user-static registers the same magic and mask (with its own path and
        // flags); compared where it is installed.
        for (p, file) in [
            ("linux/arm64", "qemu-aarch64.conf"),
            ("linux/arm", "qemu-arm.conf"),
            ("linux/riscv64", "qemu-riscv64.conf"),
            ("linux/ppc64le", "qemu-ppc64le.conf"),
            ("linux/s390x", "qemu-s390x.conf"),
        ] {
            let e = entry(&platform(p), Path::new("/x/qemu"), true).unwrap();
            let Ok(debian) = std::fs::read_to_string(Path::new("/usr/lib/binfmt.d").join(file))
            else {
                continue;
            };
            let fields = |l: &str| -> Vec<String> {
                l.trim()
                    .replace("\\x7f\\x45\\x4c\\x46", "\\x7fELF")
                    .split(':')
                    .map(str::to_string)
                    .collect()
            };
            let (ours, theirs) = (fields(&e.line), fields(&debian));
            assert_eq!(ours[1..6], theirs[1..6], "{p}");
        }
        let e = entry(
            &platform("linux/arm64"),
            Path::new("/usr/bin/qemu-aarch64-static"),
            false,
        )
        .unwrap();
        assert_eq!(e.name, "qemu-aarch64");
        assert!(
            e.line.ends_with(":/usr/bin/qemu-aarch64-static:F"),
            "{}",
            e.line
        );
        assert!(entry(&platform("linux/mips64le"), Path::new("/q"), false).is_none());
        assert!(entry(&platform("windows/amd64"), Path::new("/q"), false).is_none());
    }

    #[test]
    fn an_unknown_architecture_is_named() {
        let err = for_platform(&platform("linux/mips64le"), true).unwrap_err();
        assert!(err.contains("linux/mips64le"), "{err}");
    }
}

//! Tests of the `RUN` sandbox in chroot mode, observed from inside a step in a busybox root and
//! attacked the ways a hostile Dockerfile would: what the step can see (capabilities, seccomp,
//! namespaces, mounts), which escape syscalls fail, and whether the classic escapes (double
//! chroot, a block device node, kernel tunables, a fork bomb) reach the host. Every attack is
//! made safe for the machine even if the sandbox regresses: it opens and never writes, uses a
//! loop device over a file of its own, and forks a bounded number of processes.
//!
//! `harness = false`: main() calls `maybe_run_init()` first, as the executor binary does. Probes
//! are a small C program (tests/sandbox/probe.c) built with `gcc -static` into the root.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_executor::run::{
    maybe_run_init, prepare_ahead, release_spares, run_with, spare_count, Isolation, Network,
    RunOptions, RunSpec, CGROUP_PREFIX, PIDS_MAX,
};

/// Docker's default capability set, as `CapBnd` shows it in a container.
const DOCKER_CAPS: &str = "00000000a80425fb";
const NO_CAPS: &str = "0000000000000000";

const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "head", "ls", "readlink", "hostname", "echo", "id",
];

/// What a case can end in besides success.
enum Outcome {
    Passed,
    Skipped(String),
}

type Case = fn(&Root) -> Result<Outcome, String>;

fn main() {
    if let Some(code) = maybe_run_init() {
        std::process::exit(code);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("sandbox: skipped, chroot isolation needs root");
        return;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let probe = match build_probe() {
        Ok(p) => p,
        Err(e) => {
            println!("sandbox: cannot build the probe: {e}\nsandbox: 0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let cases: &[(&str, Case)] = &[
        ("sandbox_root_sees_dockers_caps_and_seccomp", root_status),
        ("sandbox_non_root_has_no_caps", user_status),
        ("sandbox_namespaces_differ_from_the_host", namespaces),
        ("sandbox_network_none_has_only_loopback", network_none),
        ("sandbox_writable_mounts_are_nodev", writable_mounts_nodev),
        ("sandbox_escape_syscalls_fail_with_eperm", escape_syscalls),
        ("sandbox_double_chroot_stays_inside", double_chroot),
        ("sandbox_block_device_node_cannot_be_used", block_device),
        ("sandbox_kernel_tunables_are_read_only", kernel_tunables),
        ("sandbox_host_processes_are_invisible", host_processes),
        ("sandbox_fork_bomb_is_bounded", fork_bomb),
        (
            "sandbox_prepared_init_is_bounded_and_released",
            prepared_init,
        ),
    ];
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, case) in cases {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let root = Root::new(&probe);
        let before = root.listing();
        let result = case(&root).and_then(|outcome| {
            root.check_no_leftovers(&before)?;
            Ok(outcome)
        });
        match result {
            Ok(Outcome::Passed) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Ok(Outcome::Skipped(why)) => {
                skipped += 1;
                println!("test {name} ... skipped: {why}");
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n    {e}");
            }
        }
    }
    let _ = std::fs::remove_file(&probe);
    println!("sandbox: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}

/// Compile the probe once, statically, so it runs in a root without a C library.
fn build_probe() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sandbox/probe.c");
    let out = std::env::temp_dir().join(format!("kiln-sandbox-probe-{}", std::process::id()));
    let status = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|e| format!("running gcc (needed to build {}): {e}", src.display()))?;
    if !status.success() {
        return Err(format!("gcc failed on {}: {status}", src.display()));
    }
    Ok(out)
}

/// A busybox root with the probe, a root and a non-root user, and /out for results.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new(probe: &Path) -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["bin", "etc", "out", "mnt"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        for applet in BUSYBOX_APPLETS {
            symlink("busybox", root.join("bin").join(applet)).expect("symlink");
        }
        std::fs::copy(probe, root.join("bin/probe")).expect("copy probe");
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\nbuilder:x:1000:\n").expect("group");
        std::fs::set_permissions(root.join("out"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        Root { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self, argv: &[&str]) -> RunSpec {
        RunSpec {
            root: self.path().to_path_buf(),
            isolation: Isolation::Chroot,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
        }
    }

    /// Run a shell script as root with the host's network.
    fn sh(&self, script: &str) -> Result<(), String> {
        run_with(&self.spec(&["sh", "-c", script]), &RunOptions::default())
            .map_err(|e| format!("{script:?}: {e}"))
    }

    /// Run the probe; its `name=errno` lines as a map.
    fn probe(&self, args: &[&str]) -> Result<BTreeMap<String, String>, String> {
        let mut argv = vec!["/bin/probe", "/out/probe"];
        argv.extend_from_slice(args);
        run_with(&self.spec(&argv), &RunOptions::default())
            .map_err(|e| format!("probe {args:?}: {e}"))?;
        let text = self.out("probe")?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn out(&self, name: &str) -> Result<String, String> {
        std::fs::read_to_string(self.path().join("out").join(name))
            .map(|s| s.trim_end().to_string())
            .map_err(|e| format!("reading /out/{name}: {e}"))
    }

    /// Every path in the root outside /out, sorted.
    fn listing(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = walkdir::WalkDir::new(self.path())
            .into_iter()
            .filter_map(|e| e.ok())
            .map(|e| e.path().strip_prefix(self.path()).unwrap().to_path_buf())
            .filter(|p| !p.starts_with("out"))
            .collect();
        all.sort();
        all
    }

    /// Nothing of the sandbox (mount points, put_old, mounts, cgroups) outlives a step; only
    /// the probe's own escape directory may remain.
    fn check_no_leftovers(&self, before: &[PathBuf]) -> Result<(), String> {
        let extra: Vec<_> = self
            .listing()
            .into_iter()
            .filter(|p| !before.contains(p) && p.as_path() != Path::new("escape-x"))
            .collect();
        if !extra.is_empty() {
            return Err(format!("the run left these in the root: {extra:?}"));
        }
        let mountinfo = read("/proc/self/mountinfo")?;
        let root = self.path().to_string_lossy().to_string();
        if let Some(line) = mountinfo.lines().find(|l| l.contains(&root)) {
            return Err(format!("a mount leaked into the host's namespace: {line}"));
        }
        if let Some(dir) = pids_hierarchy() {
            let left: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&format!("{CGROUP_PREFIX}{}-", std::process::id())))
                .collect();
            if !left.is_empty() {
                return Err(format!("step cgroups left in {}: {left:?}", dir.display()));
            }
        }
        Ok(())
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// `Field:\tvalue` lines of /proc/<pid>/status.
fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

fn check_status(status: &str, want: &[(&str, &str)]) -> Result<(), String> {
    for (field, value) in want {
        expect_eq(field, status_field(status, field), Some(*value))?;
    }
    Ok(())
}

fn root_status(root: &Root) -> Result<Outcome, String> {
    root.sh("cat /proc/self/status > /out/status")?;
    // NoNewPrivs stays 0, as in Docker: setuid programs (su, sudo) must keep working.
    check_status(
        &root.out("status")?,
        &[
            ("CapBnd", DOCKER_CAPS),
            ("CapEff", DOCKER_CAPS),
            ("CapPrm", DOCKER_CAPS),
            ("CapInh", NO_CAPS),
            ("CapAmb", NO_CAPS),
            ("Seccomp", "2"),
            ("NoNewPrivs", "0"),
        ],
    )?;
    Ok(Outcome::Passed)
}

fn user_status(root: &Root) -> Result<Outcome, String> {
    let mut spec = root.spec(&[
        "sh",
        "-c",
        "id -u > /out/uid; cat /proc/self/status > /out/status",
    ]);
    spec.user = "builder".into();
    run_with(&spec, &RunOptions::default()).map_err(|e| e.to_string())?;
    expect_eq("uid", root.out("uid")?.as_str(), "1000")?;
    check_status(
        &root.out("status")?,
        &[
            ("CapBnd", DOCKER_CAPS),
            ("CapEff", NO_CAPS),
            ("CapPrm", NO_CAPS),
            ("CapInh", NO_CAPS),
            ("CapAmb", NO_CAPS),
            ("Seccomp", "2"),
        ],
    )?;
    Ok(Outcome::Passed)
}

const NAMESPACES: [&str; 6] = ["mnt", "pid", "ipc", "uts", "cgroup", "net"];

/// The step's namespace links (`/proc/self/ns/<name>`) by name.
fn step_namespaces(root: &Root, options: &RunOptions) -> Result<BTreeMap<String, String>, String> {
    let script = format!(
        "for n in {}; do echo $n=$(readlink /proc/self/ns/$n); done > /out/ns",
        NAMESPACES.join(" ")
    );
    run_with(&root.spec(&["sh", "-c", &script]), options).map_err(|e| e.to_string())?;
    Ok(root
        .out("ns")?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn host_namespace(name: &str) -> Result<String, String> {
    std::fs::read_link(format!("/proc/self/ns/{name}"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| format!("reading the host's {name} namespace: {e}"))
}

fn namespaces(root: &Root) -> Result<Outcome, String> {
    let step = step_namespaces(root, &RunOptions::default())?;
    for name in NAMESPACES {
        let inside = step
            .get(name)
            .ok_or(format!("no {name} namespace in {step:?}"))?;
        let host = host_namespace(name)?;
        // The host network is the default (RUN apt-get needs it); every other one is new.
        if (name == "net") != (*inside == host) {
            return Err(format!("{name} namespace: step {inside}, host {host}"));
        }
    }
    // A neutral name that tells nothing about the machine and resolves through any /etc/hosts.
    root.sh("hostname > /out/hostname")?;
    expect_eq("hostname", root.out("hostname")?.as_str(), "localhost")?;
    Ok(Outcome::Passed)
}

fn network_none(root: &Root) -> Result<Outcome, String> {
    let none = RunOptions {
        network: Network::None,
        ..Default::default()
    };
    let step = step_namespaces(root, &none)?;
    if step.get("net") == Some(&host_namespace("net")?) {
        return Err("--network=none shares the host's network namespace".into());
    }
    let script = "ls /sys/class/net > /out/ifaces; cat /sys/class/net/lo/flags > /out/lo";
    run_with(&root.spec(&["sh", "-c", script]), &none).map_err(|e| e.to_string())?;
    expect_eq("interfaces", root.out("ifaces")?.as_str(), "lo")?;
    let flags = root.out("lo")?;
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16)
        .map_err(|e| format!("lo flags {flags:?}: {e}"))?;
    if flags & libc::IFF_UP as u32 == 0 {
        return Err(format!("lo is down (flags {flags:#x})"));
    }
    Ok(Outcome::Passed)
}

/// Every mount the step can create files in is `nodev`, so no device node made there opens.
fn writable_mounts_nodev(root: &Root) -> Result<Outcome, String> {
    root.sh("cat /proc/self/mountinfo > /out/mountinfo")?;
    let mountinfo = root.out("mountinfo")?;
    let mut saw_root = false;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (point, opts) = (fields[4], fields[5]);
        let fstype = line.split(" - ").nth(1).and_then(|f| f.split(' ').next());
        saw_root |= point == "/";
        let writable = opts.split(',').any(|o| o == "rw");
        // Single device files bound from the host, /proc's /dev/null masks, and filesystems
        // no file can be created in.
        let exempt = point.starts_with("/proc/")
            || ["null", "zero", "full", "random", "urandom", "tty"]
                .iter()
                .any(|d| point == format!("/dev/{d}"))
            || matches!(fstype, Some("proc" | "sysfs" | "devpts"));
        if writable && !exempt && !opts.split(',').any(|o| o == "nodev") {
            return Err(format!("writable mount without nodev: {line}"));
        }
    }
    if !saw_root {
        return Err(format!(
            "no root mount in the step's mountinfo:\n{mountinfo}"
        ));
    }
    Ok(Outcome::Passed)
}

fn expect_errno(results: &BTreeMap<String, String>, name: &str, want: i32) -> Result<(), String> {
    expect_eq(
        name,
        results.get(name).map(String::as_str),
        Some(want.to_string().as_str()),
    )
}

fn escape_syscalls(root: &Root) -> Result<Outcome, String> {
    let r = root.probe(&["syscalls"])?;
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "unshare_user",
        "unshare_mount",
        "setns",
        "clone_newuser",
        "clone_newns",
        "bpf",
        "open_by_handle_at",
        "init_module",
        "finit_module",
        "kexec_load",
        "keyctl",
        "perf_event_open",
        "fsopen",
        "open_tree",
        "x32_mount",
    ] {
        expect_errno(&r, name, libc::EPERM)?;
    }
    // clone3 cannot be filtered on its flags: ENOSYS sends the C library back to clone.
    expect_errno(&r, "clone3", libc::ENOSYS)?;
    expect_errno(&r, "clone_plain", 0)?;
    expect_errno(&r, "chroot", 0)?;
    match r.get("i386_mount").map(String::as_str) {
        // A kernel without 32-bit emulation kills the attempt; nothing to filter there.
        Some("signal") => println!("    (no i386 emulation in this kernel)"),
        _ => expect_errno(&r, "i386_mount", libc::EPERM)?,
    }
    Ok(Outcome::Passed)
}

fn double_chroot(root: &Root) -> Result<Outcome, String> {
    let host_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let marker = host_dir.path().join("marker");
    let secret = host_dir.path().join("secret");
    std::fs::write(&secret, "host-only secret\n").map_err(|e| e.to_string())?;
    let r = root.probe(&["escape", marker.to_str().unwrap(), secret.to_str().unwrap()])?;
    // chroot itself is allowed (CAP_SYS_CHROOT, as in Docker); climbing out is what must fail.
    expect_errno(&r, "chroot_in", 0)?;
    if marker.exists() {
        return Err("the double chroot wrote a file on the host".into());
    }
    if let Ok(stolen) = std::fs::read_to_string(root.path().join("out/stolen")) {
        if stolen.contains("host-only secret") {
            return Err("the double chroot read a host-only file".into());
        }
    }
    if r.get("read_secret").map(String::as_str) == Some("0") {
        return Err(format!(
            "the host's {} was readable: {r:?}",
            secret.display()
        ));
    }
    std::fs::remove_dir(root.path().join("escape-x")).map_err(|e| e.to_string())?;
    Ok(Outcome::Passed)
}

/// A loop device over a file of the test's own stands in for the host's disk; its block node is
/// made inside the step and opened and mounted from there.
fn block_device(root: &Root) -> Result<Outcome, String> {
    let host_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let backing = host_dir.path().join("disk.img");
    let content: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(&backing, &content).map_err(|e| e.to_string())?;
    let loop_dev = LoopDevice::attach(&backing)?;
    let (major, minor) = loop_dev.numbers()?;
    let r = root.probe(&["mknod", &major.to_string(), &minor.to_string()]);
    drop(loop_dev);
    let r = r?;
    for place in ["root", "dev", "shm"] {
        // mknod stays allowed (CAP_MKNOD, as in Docker): the mount being nodev is the defence.
        expect_errno(&r, &format!("mknod_{place}"), 0)?;
        expect_errno(&r, &format!("open_{place}"), libc::EACCES)?;
        expect_errno(&r, &format!("mount_{place}"), libc::EPERM)?;
    }
    let after = std::fs::read(&backing).map_err(|e| e.to_string())?;
    if after != content {
        return Err("the loop device's backing file changed".into());
    }
    Ok(Outcome::Passed)
}

struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> Result<LoopDevice, String> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .map_err(|e| format!("running losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup -f --show failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(LoopDevice(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }

    fn numbers(&self) -> Result<(u64, u64), String> {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.0)
            .map_err(|e| e.to_string())?
            .rdev();
        Ok((libc::major(rdev) as u64, libc::minor(rdev) as u64))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn kernel_tunables(root: &Root) -> Result<Outcome, String> {
    let before = read("/proc/sys/kernel/core_pattern")?;
    let r = root.probe(&[
        "openw",
        "/proc/sysrq-trigger",
        "/proc/sys/kernel/core_pattern",
    ])?;
    if read("/proc/sys/kernel/core_pattern")? != before {
        // Never expected: the probe does not write. Put the host back as it was regardless.
        let _ = std::fs::write("/proc/sys/kernel/core_pattern", &before);
        return Err("core_pattern changed".into());
    }
    for path in ["/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern"] {
        match r.get(path).and_then(|e| e.parse::<i32>().ok()) {
            Some(libc::EROFS | libc::EACCES) => {}
            // A kernel built without magic SysRq has no trigger file at all.
            Some(libc::ENOENT) if !Path::new(path).exists() => {}
            other => return Err(format!("opening {path} for writing gave errno {other:?}")),
        }
    }
    // Masked files read as /dev/null (empty), masked directories are empty. At most 64 bytes
    // each are read: an unmasked /proc/kcore is as large as the address space.
    root.sh("for f in /proc/kcore /proc/keys /proc/timer_list; do head -c 64 $f; done > /out/masked 2>/dev/null; for d in /proc/acpi /proc/scsi /sys/firmware; do ls -A $d >> /out/masked 2>/dev/null; done; true")?;
    expect_eq(
        "masked /proc and /sys content",
        root.out("masked")?.as_str(),
        "",
    )?;
    Ok(Outcome::Passed)
}

fn host_processes(root: &Root) -> Result<Outcome, String> {
    // cat first: busybox sh execs its last command in place of itself.
    root.sh("cat /proc/1/cmdline > /out/cmdline; ls /proc > /out/proc")?;
    let pids: Vec<String> = root
        .out("proc")?
        .lines()
        .filter(|l| l.chars().all(|c| c.is_ascii_digit()))
        .map(String::from)
        .collect();
    // At most the shell (PID 1) and its ls.
    if pids.len() > 3 {
        return Err(format!("processes outside the step are visible: {pids:?}"));
    }
    let cmdline = root.out("cmdline")?.replace('\0', " ");
    if !cmdline.starts_with("sh -c cat /proc/1/cmdline") {
        return Err(format!("/proc/1 is not the step's command: {cmdline:?}"));
    }
    Ok(Outcome::Passed)
}

/// The directory of the pids controller the executor's cgroups go under, when this machine lets
/// a root process create child cgroups with a pids limit there (cgroup v2 or a v1 pids
/// hierarchy), judged independently of the executor's own detection.
fn pids_hierarchy() -> Option<PathBuf> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let writable = |dir: &Path| nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok();
    let v2_root = Path::new("/sys/fs/cgroup");
    if let Some(path) = membership.lines().find_map(|l| l.strip_prefix("0::")) {
        let dir = v2_root.join(path.trim_start_matches('/'));
        let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok();
        if controllers.is_some_and(|c| c.split_whitespace().any(|x| x == "pids")) && writable(&dir)
        {
            return Some(dir);
        }
    }
    let path = membership.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "pids").then_some(path)
    })?;
    let dir = v2_root.join("pids").join(path.trim_start_matches('/'));
    (dir.join("pids.max").exists() || dir.join("cgroup.procs").exists())
        .then_some(dir)
        .filter(|d| writable(d))
}

fn fork_bomb(root: &Root) -> Result<Outcome, String> {
    let Some(dir) = pids_hierarchy() else {
        let why = "this machine has no writable pids cgroup controller";
        return Ok(Outcome::Skipped(why.into()));
    };
    fork_bomb_fails(root, &dir)?;
    // The step ended and its processes with it: a normal step runs again right away.
    root.sh("true")?;
    Ok(Outcome::Passed)
}

/// A stage's first RUN takes an init started ahead of it; a step whose init was started during
/// the step before (a stage with RUN after RUN) is in a
/// cgroup of its own with the same limit, and a spare no step takes ends with the build,
/// cgroup and all (the harness checks no step cgroup is left).
fn prepared_init(root: &Root) -> Result<Outcome, String> {
    let Some(dir) = pids_hierarchy() else {
        let why = "this machine has no writable pids cgroup controller";
        return Ok(Outcome::Skipped(why.into()));
    };
    // A stage's first RUN takes the init started ahead of it (beside the base's download);
    // nothing is started ahead of a step that runs in place.
    prepare_ahead(Isolation::InPlace);
    expect_eq("spares ahead of an in-place step", spare_count(), 0)?;
    prepare_ahead(Isolation::Chroot);
    expect_eq("spares ahead of a stage's first RUN", spare_count(), 1)?;
    run_with(&root.spec(&["sh", "-c", "true"]), &RunOptions::default())
        .map_err(|e| e.to_string())?;
    expect_eq("spares after the first RUN", spare_count(), 0)?;
    let ahead = RunOptions {
        prepare_next: true,
        ..Default::default()
    };
    run_with(&root.spec(&["sh", "-c", "true"]), &ahead).map_err(|e| e.to_string())?;
    expect_eq(
        "spares after a step that prepares the next",
        spare_count(),
        1,
    )?;
    // The next step takes the spare.
    fork_bomb_fails(root, &dir)?;
    expect_eq("spares after the step that took it", spare_count(), 0)?;
    run_with(&root.spec(&["sh", "-c", "echo ran > /out/ran"]), &ahead)
        .map_err(|e| e.to_string())?;
    expect_eq("step output", root.out("ran")?.as_str(), "ran")?;
    expect_eq("spares before the release", spare_count(), 1)?;
    release_spares();
    expect_eq("spares after the release", spare_count(), 0)?;
    Ok(Outcome::Passed)
}

/// Run a fork bomb of more than [`PIDS_MAX`] processes; it must stop at the limit.
fn fork_bomb_fails(root: &Root, dir: &Path) -> Result<(), String> {
    // Bounded: at most a few hundred past the limit even if the limit is missing.
    let max = (PIDS_MAX + 500).to_string();
    let r = root.probe(&["forks", &max])?;
    let forked: u32 = r
        .get("forked")
        .and_then(|n| n.parse().ok())
        .ok_or("no fork count")?;
    expect_errno(&r, "fork_errno", libc::EAGAIN).map_err(|e| {
        format!(
            "{e}: the pids limit under {} did not stop the fork bomb",
            dir.display()
        )
    })?;
    if forked >= PIDS_MAX {
        return Err(format!(
            "{forked} processes forked past the limit of {PIDS_MAX}"
        ));
    }
    Ok(())
}

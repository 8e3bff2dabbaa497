//! End-to-end tests of `RUN` execution in a busybox root: namespaces, mounts, users, cleanup.
//! It uses `harness = false` so that its own main() can call `maybe_run_init()` first, exactly as
//! the executor binary does; it must not run anything outside temporary directories it creates.
//! Name filters work as libtest's do, but one that selects no case fails the run; not being root
//! fails it under `CI=true` and skips it loudly elsewhere.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_executor::run::{maybe_run_init, run, Isolation, RunError, RunSpec, DEFAULT_PATH};
use kiln_testkit::CaseArgs;

const APPLETS: &[&str] = &[
    "sh", "id", "cat", "ls", "touch", "mount", "ps", "echo", "test", "kill", "sleep",
];

type Case = fn(&Image) -> Result<(), String>;

fn main() {
    if let Some(code) = maybe_run_init() {
        std::process::exit(code);
    }
    if !kiln_testkit::require_root("chroot isolation needs root") {
        return;
    }
    let cases: &[(&str, Case)] = &[
        ("run_exit_code_is_propagated", exit_code_is_propagated),
        ("run_env_and_workdir", env_and_workdir),
        ("run_user_by_name_with_supplementary_groups", user_by_name),
        ("run_user_by_uid_and_uid_gid", user_by_uid),
        ("run_unknown_user_is_an_error", unknown_user),
        ("run_command_is_pid_1_of_a_new_pid_namespace", pid_namespace),
        ("run_proc_dev_sys_resolv_are_provided", mounts_provided),
        (
            "run_writes_land_in_the_root_not_the_host",
            writes_stay_in_root,
        ),
        ("run_spawn_and_workdir_errors", spawn_and_workdir_errors),
        ("run_in_place_applies_env_user_and_signals", in_place),
    ];
    // A filter that matches no case fails the run, naming the filter: zero cases is no pass.
    let selected = CaseArgs::from_env().select("run_isolation", cases);
    let mut failed = 0;
    let ran = selected.len();
    for (name, case) in selected {
        let image = Image::new();
        let before = image.listing();
        let mut result = case(&image);
        // Every case also checks that nothing of the run outlived it.
        if result.is_ok() {
            result = image.check_no_leftovers(&before);
        }
        match result {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n    {e}");
            }
        }
    }
    println!("run_isolation: {ran} run, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// A tiny busybox image: no /proc, /dev, /sys or resolv.conf of its own, but its own /etc/hosts.
struct Image {
    dir: tempfile::TempDir,
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["bin", "etc", "work", "out", "home/builder"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        for applet in APPLETS {
            symlink("busybox", root.join("bin").join(applet)).expect("symlink");
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nwheel:x:10:root,builder\nbuilder:x:1000:\naudio:x:29:builder\nstaff:x:50:\n",
        )
        .expect("group");
        std::fs::write(root.join("etc/hosts"), "127.0.0.1 image-own-hosts\n").expect("hosts");
        // Commands running as other users report through /out.
        std::fs::set_permissions(root.join("out"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        Image { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self, script: &str) -> RunSpec {
        RunSpec {
            root: self.root().to_path_buf(),
            isolation: Isolation::Chroot,
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
        }
    }

    fn out(&self, name: &str) -> Result<String, String> {
        std::fs::read_to_string(self.root().join("out").join(name))
            .map(|s| s.trim_end().to_string())
            .map_err(|e| format!("reading /out/{name}: {e}"))
    }

    /// Every path in the root outside /out, sorted.
    fn listing(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = walkdir::WalkDir::new(self.root())
            .into_iter()
            .filter_map(|e| e.ok())
            .map(|e| {
                e.path()
                    .strip_prefix(self.root())
                    .expect("under root")
                    .to_path_buf()
            })
            .filter(|p| !p.starts_with("out"))
            .collect();
        all.sort();
        all
    }

    fn check_no_leftovers(&self, before: &[PathBuf]) -> Result<(), String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let root = self.root().to_string_lossy().to_string();
        if let Some(line) = mountinfo.lines().find(|l| l.contains(&root)) {
            return Err(format!("a mount leaked into the host's namespace: {line}"));
        }
        let after = self.listing();
        let extra: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
        // /etc/escape is the one file a case writes on purpose.
        let extra: Vec<_> = extra
            .into_iter()
            .filter(|p| p.as_path() != Path::new("etc/escape"))
            .collect();
        if !extra.is_empty() {
            return Err(format!("the run left these in the root: {extra:?}"));
        }
        let hosts =
            std::fs::read_to_string(self.root().join("etc/hosts")).map_err(|e| e.to_string())?;
        if hosts != "127.0.0.1 image-own-hosts\n" {
            return Err(format!("the image's /etc/hosts changed on disk: {hosts:?}"));
        }
        Ok(())
    }
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn exit_code_is_propagated(img: &Image) -> Result<(), String> {
    match run(&img.spec("exit 3")) {
        Err(RunError::Exit { code: 3 }) => {}
        other => return Err(format!("exit 3 gave {other:?}")),
    }
    run(&img.spec("true")).map_err(|e| format!("true failed: {e}"))
}

fn env_and_workdir(img: &Image) -> Result<(), String> {
    let mut spec = img.spec(r#"echo "$FOO|$PWD|$HOME|$PATH" > /out/env; touch made-here"#);
    spec.env = vec!["FOO=bar baz".into()];
    spec.workdir = "/work".into();
    run(&spec).map_err(|e| e.to_string())?;
    expect_eq(
        "env",
        img.out("env")?,
        format!("bar baz|/work|/root|{DEFAULT_PATH}"),
    )?;
    if !img.root().join("work/made-here").is_file() {
        return Err("the relative touch did not land in /work".into());
    }
    std::fs::remove_file(img.root().join("work/made-here")).map_err(|e| e.to_string())?;
    // An explicit PATH and HOME win over the defaults.
    let mut spec = img.spec(r#"echo "$HOME|$PATH" > /out/env2"#);
    spec.env = vec!["PATH=/bin".into(), "HOME=/elsewhere".into()];
    run(&spec).map_err(|e| e.to_string())?;
    expect_eq(
        "explicit env",
        img.out("env2")?,
        "/elsewhere|/bin".to_string(),
    )
}

fn user_by_name(img: &Image) -> Result<(), String> {
    let mut spec = img.spec(r#"echo "$(id -u) $(id -g) $(id -G) $HOME" > /out/id"#);
    spec.user = "builder".into();
    run(&spec).map_err(|e| e.to_string())?;
    let out = img.out("id")?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    expect_eq("uid", fields.first().copied(), Some("1000"))?;
    expect_eq("gid", fields.get(1).copied(), Some("1000"))?;
    expect_eq("home", fields.last().copied(), Some("/home/builder"))?;
    let groups = &fields[2..fields.len() - 1];
    if !(groups.contains(&"10") && groups.contains(&"29") && !groups.contains(&"50")) {
        return Err(format!(
            "supplementary groups should be wheel(10) and audio(29): {out}"
        ));
    }
    Ok(())
}

fn user_by_uid(img: &Image) -> Result<(), String> {
    let cases = [
        ("4242", "4242 0 /"),
        ("4242:4343", "4242 4343 /"),
        ("builder:staff", "1000 50 /home/builder"),
    ];
    for (i, (user, want)) in cases.into_iter().enumerate() {
        // One file per user: /out is sticky, so one user cannot replace another's file.
        let mut spec = img.spec(&format!(r#"echo "$(id -u) $(id -g) $HOME" > /out/uid{i}"#));
        spec.user = user.into();
        run(&spec).map_err(|e| format!("USER {user}: {e}"))?;
        expect_eq(
            &format!("USER {user}"),
            img.out(&format!("uid{i}"))?,
            want.to_string(),
        )?;
    }
    Ok(())
}

fn unknown_user(img: &Image) -> Result<(), String> {
    let mut spec = img.spec("true");
    spec.user = "ghost".into();
    match run(&spec) {
        Err(e @ RunError::User { .. })
            if e.to_string().contains("\"ghost\"") && e.to_string().contains("/etc/passwd") =>
        {
            Ok(())
        }
        other => Err(format!("USER ghost gave {other:?}")),
    }
}

fn pid_namespace(img: &Image) -> Result<(), String> {
    run(&img
        .spec("echo $$ > /out/pid; cat /proc/1/cmdline > /out/cmdline; ps -o pid,comm > /out/ps"))
    .map_err(|e| e.to_string())?;
    expect_eq("shell pid", img.out("pid")?, "1".to_string())?;
    let cmdline = img.out("cmdline")?.replace('\0', " ");
    if !cmdline.starts_with("sh -c echo") {
        return Err(format!("/proc/1 is not the command: {cmdline:?}"));
    }
    // Only the command and its own children are visible: no host process.
    let ps = img.out("ps")?;
    let processes = ps.lines().skip(1).count();
    if processes > 3 {
        return Err(format!("host processes are visible:\n{ps}"));
    }
    Ok(())
}

fn mounts_provided(img: &Image) -> Result<(), String> {
    let script = "test -c /dev/null && echo hidden > /dev/null && test -c /dev/urandom && test -c /dev/zero \
                  && test -d /dev/pts && test -d /dev/shm && test -L /dev/fd \
                  && test -r /proc/self/status && test -d /sys/kernel && ! touch /sys/kernel/x 2>/dev/null \
                  && ! touch /etc/resolv.conf 2>/dev/null \
                  && cat /etc/resolv.conf > /out/resolv && cat /etc/hosts > /out/hosts && ls /dev > /out/dev";
    run(&img.spec(script)).map_err(|e| format!("{e} (one of the checks in {script:?} failed)"))?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").map_err(|e| e.to_string())?;
    expect_eq(
        "resolv.conf",
        img.out("resolv")?,
        host_resolv.trim_end().to_string(),
    )?;
    let host_hosts = std::fs::read_to_string("/etc/hosts").map_err(|e| e.to_string())?;
    expect_eq(
        "hosts",
        img.out("hosts")?,
        host_hosts.trim_end().to_string(),
    )?;
    // The private /dev holds only the standard nodes, not the host's disks.
    let dev = img.out("dev")?;
    if dev
        .lines()
        .any(|l| l.starts_with("sd") || l.starts_with("vd") || l.starts_with("nvme") || l == "mem")
    {
        return Err(format!("host devices are visible in /dev: {dev}"));
    }
    Ok(())
}

fn writes_stay_in_root(img: &Image) -> Result<(), String> {
    let host = Path::new("/etc/escape");
    if host.exists() {
        return Err("/etc/escape already exists on the host; cannot run this check".into());
    }
    run(&img.spec("echo inside > /etc/escape")).map_err(|e| e.to_string())?;
    if host.exists() {
        return Err("the command wrote the host's /etc/escape".into());
    }
    let inside =
        std::fs::read_to_string(img.root().join("etc/escape")).map_err(|e| e.to_string())?;
    expect_eq("escape file", inside.as_str(), "inside\n")
}

fn spawn_and_workdir_errors(img: &Image) -> Result<(), String> {
    let mut spec = img.spec("true");
    spec.argv = vec!["no-such-tool".into()];
    match run(&spec) {
        Err(RunError::Spawn { program, source })
            if program == "no-such-tool" && source.raw_os_error() == Some(libc::ENOENT) => {}
        other => return Err(format!("missing program gave {other:?}")),
    }
    let mut spec = img.spec("true");
    spec.workdir = "/missing".into();
    match run(&spec) {
        Err(RunError::Workdir { workdir, .. }) if workdir == "/missing" => Ok(()),
        other => Err(format!("missing workdir gave {other:?}")),
    }
}

/// In-place mode uses the host's `/` as the image (a container in production); only read-only
/// commands and a temporary directory are used here.
fn in_place(img: &Image) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    let spec = RunSpec {
        root: PathBuf::from("/"),
        isolation: Isolation::InPlace,
        argv: vec![
            "sh".into(),
            "-c".into(),
            r#"echo "$(id -u):$(id -g)|$PWD|$FOO|$$" > out"#.into(),
        ],
        env: vec!["FOO=1".into()],
        workdir: scratch.path().to_string_lossy().into_owned(),
        user: "4242:4343".into(),
    };
    run(&spec).map_err(|e| e.to_string())?;
    let out = std::fs::read_to_string(scratch.path().join("out")).map_err(|e| e.to_string())?;
    let want_prefix = format!("4242:4343|{}|1|", scratch.path().display());
    if !out.starts_with(&want_prefix) || out.trim_end().ends_with("|1") {
        return Err(format!(
            "in-place run wrote {out:?}, want {want_prefix}<pid other than 1>"
        ));
    }
    let mut spec = img.spec("kill -KILL $$");
    spec.root = PathBuf::from("/");
    spec.isolation = Isolation::InPlace;
    match run(&spec) {
        Err(RunError::Signal { signal: 9 }) => Ok(()),
        other => Err(format!("a command killed by SIGKILL gave {other:?}")),
    }
}

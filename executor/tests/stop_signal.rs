//! The executor stops on SIGTERM: it passes the signal on to the running RUN step, removes the
//! step cgroups and exits with 143. As PID 1 (as in its container in a Pod; `unshare --pid
//! --fork` makes it PID 1 of a PID namespace of the test's own) it would otherwise ignore the
//! signal (a PID 1 without a handler does) until the kubelet's SIGKILL, and exiting skipped the
//! removal; elsewhere the default action ended the executor alone, leaving the step's command
//! running and the cgroups on the host. The first of two RUN steps says when SIGTERM reaches it
//! (its command once inherited the signal blocked from the executor) and goes on until it is
//! killed at the end of the grace period; while it runs, a spare init for the second waits in a
//! cgroup of its own.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_testkit::{registry, require_root};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

#[test]
fn sigterm_stops_a_build_when_the_executor_is_pid_1() {
    if !require_root("the executor runs RUN steps in a chroot, as root") {
        return;
    }
    let stopped = build_stopped_by_sigterm(true);
    // Its cgroups are named after its pid in its own namespace.
    stopped.assert_clean_exit("kiln-run-1-");
}

#[test]
fn sigterm_stops_a_build_when_the_executor_is_not_pid_1() {
    if !require_root("the executor runs RUN steps in a chroot, as root") {
        return;
    }
    let stopped = build_stopped_by_sigterm(false);
    stopped.assert_clean_exit(&format!("kiln-run-{}-", stopped.executor));
}

/// A stop while the build waits for something other than a RUN step (here a credential helper)
/// reaches that process too (it once inherited SIGTERM blocked and lived until the SIGKILL at
/// the end of the grace period), and ends the build with the stop's 143, not with the failure of
/// what the stop ended.
#[test]
fn sigterm_during_a_credential_helper_exits_143() {
    if !require_root("the executor runs as PID 1 of a PID namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    let bin = dir.path().join("bin");
    let config = dir.path().join("docker");
    let marker = dir.path().join("helper-started");
    let signalled = dir.path().join("helper-signalled");
    for d in [&ctx, &bin, &config] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}/kiln-test/busybox:latest\nRUN true\n", registry()),
    )
    .unwrap();
    let helper = bin.join("docker-credential-kilnslow");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\ntrap 'echo signalled > {}; exit 1' TERM\necho started > {}\n\
             sleep 600 & wait\n",
            signalled.display(),
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        config.join("config.json"),
        format!(r#"{{"credHelpers": {{"{}": "kilnslow"}}}}"#, registry()),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = executor_command(true, &ctx, &dir.path().join("kiln"))
        .env("DOCKER_CONFIG", &config)
        .env("PATH", path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    let stderr = read_all(child.stderr.take().unwrap());
    let deadline = Instant::now() + WAIT;
    while !marker.exists() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "the credential helper never ran: {}",
                stderr.recv_timeout(WAIT).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    }
    let executor = children(child.id() as i32)[0];
    let status = stop(&mut child, executor);
    let stderr = stderr.recv_timeout(WAIT).unwrap_or_default();
    assert!(
        signalled.exists(),
        "SIGTERM never reached the credential helper\n{stderr}"
    );
    assert_eq!(status.code(), Some(143), "{status:?}\n{stderr}");
}

/// How a build ended after SIGTERM.
struct Stopped {
    executor: i32,
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
    /// The step cgroups while the first step ran (none where the machine gives steps none).
    cgroups: Vec<PathBuf>,
    /// Those of them still there after the executor exited.
    left: Vec<PathBuf>,
}

impl Stopped {
    fn assert_clean_exit(&self, cgroup_prefix: &str) {
        let Stopped {
            status,
            stdout,
            stderr,
            cgroups,
            left,
            ..
        } = self;
        for dir in cgroups {
            let name = dir.file_name().unwrap().to_string_lossy();
            assert!(name.starts_with(cgroup_prefix), "{dir:?}");
        }
        assert!(
            left.is_empty(),
            "step cgroups left behind: {left:?}\n{stderr}"
        );
        assert!(
            stdout.iter().any(|l| l == "step-signalled"),
            "SIGTERM never reached the step's command: {stdout:?}\n{stderr}"
        );
        assert_eq!(status.code(), Some(143), "{status:?}\n{stderr}");
        assert!(
            stderr.contains("SIGTERM received: stopping the build"),
            "{stderr}"
        );
    }
}

/// Run a build whose first step sleeps, as PID 1 of a PID namespace of its own (`pid1`) or as a
/// plain child of the test; once the step runs, send the executor SIGTERM and wait for its end.
fn build_stopped_by_sigterm(pid1: bool) -> Stopped {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/kiln-test/busybox:latest\n\
             RUN trap 'echo step-signalled' TERM; echo step-started; while :; do sleep 1; done\n\
             RUN true\n",
            registry()
        ),
    )
    .unwrap();
    let mut child = executor_command(pid1, &ctx, &dir.path().join("kiln"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the executor (or unshare, from util-linux) runs");
    let (tx, stdout) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = read_all(child.stderr.take().unwrap());

    // Wait for the step to run, reading the log as it comes.
    let start = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("step-started")) {
        match stdout.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => seen.push(line),
            Err(_) if start.elapsed() > WAIT => {
                let _ = child.kill();
                panic!("the step never started: {seen:?}");
            }
            Err(_) => {}
        }
    }
    let executor = if pid1 {
        // The child unshare forked, PID 1 of the new namespace.
        children(child.id() as i32)[0]
    } else {
        child.id() as i32
    };
    let cgroups = StepCgroups(step_cgroups(executor));
    let status = stop(&mut child, executor);
    let left: Vec<PathBuf> = cgroups.0.iter().filter(|d| d.exists()).cloned().collect();
    // A step left running holds the executor's stderr open.
    let cgroups = cgroups.clean();
    let stderr = stderr
        .recv_timeout(WAIT)
        .expect("the executor's stderr is closed once it and its steps are gone");
    // The rest of stdout, closed by the same ends.
    while let Ok(line) = stdout.recv_timeout(WAIT) {
        seen.push(line);
    }
    Stopped {
        executor,
        status,
        stdout: seen,
        stderr,
        cgroups,
        left,
    }
}

/// The executor building `ctx` without pushing, as PID 1 of a PID namespace of its own (`pid1`,
/// through `unshare`) or as a plain child of the test.
fn executor_command(pid1: bool, ctx: &Path, kiln_dir: &Path) -> Command {
    let mut cmd = if pid1 {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(env!("CARGO_BIN_EXE_kiln-executor"));
        cmd
    } else {
        Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
    };
    cmd.args([
        "--isolation",
        "chroot",
        "--insecure-pull",
        "--no-push",
        "--context",
    ])
    .arg(ctx)
    .arg("--kiln-dir")
    .arg(kiln_dir);
    cmd
}

/// Everything `from` gives until its end, read on a thread of its own.
fn read_all(mut from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = from.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// Send SIGTERM to `executor` and wait (bounded) for `child` (it, or the `unshare` around it) to
/// exit.
fn stop(child: &mut Child, executor: i32) -> ExitStatus {
    kill(Pid::from_raw(executor), Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("signalling {executor}: {e}"));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the executor ignored SIGTERM for {WAIT:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// The children of `pid`, from every thread of it.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The step cgroups of the executor's inits: the running step's one (joined before the step
/// ran) and the spare's (joined a moment after it started). None where steps get no cgroup.
fn step_cgroups(executor: i32) -> Vec<PathBuf> {
    let deadline = Instant::now() + WAIT;
    loop {
        let dirs: Vec<PathBuf> = children(executor)
            .into_iter()
            .filter_map(pids_cgroup)
            .filter(|d| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("kiln-run-"))
            })
            .collect();
        if dirs.is_empty() {
            eprintln!(
                "RUN steps get no cgroup here: the removal of the step cgroups is not tested"
            );
            return dirs;
        }
        if dirs.len() >= 2 {
            return dirs;
        }
        assert!(
            Instant::now() < deadline,
            "no spare init joined its step cgroup in {WAIT:?}: {dirs:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// The directory of `pid`'s cgroup in the hierarchy with the pids controller (v1) or else the
/// unified one (v2), where the executor makes its step cgroups.
fn pids_cgroup(pid: i32) -> Option<PathBuf> {
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (mut v1, mut v2) = (None, None);
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "pids") {
            v1 = Some(path);
        } else if id == "0" {
            v2 = Some(path);
        }
    }
    let (v2, path) = match (v1, v2) {
        (Some(path), _) => (false, path),
        (None, path) => (true, path?),
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fs: Vec<&str> = fs.split(' ').collect();
        let wanted = match *fs.first()? {
            "cgroup2" => v2,
            "cgroup" => !v2 && fs.get(2)?.split(',').any(|o| o == "pids"),
            _ => false,
        };
        let fields: Vec<&str> = mount.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        let rel = Path::new(path).strip_prefix(root).ok()?;
        wanted.then(|| Path::new(point).join(rel))
    })
}

/// Step cgroups the test removes if the executor did not, killing what is still in them.
struct StepCgroups(Vec<PathBuf>);

impl StepCgroups {
    fn clean(mut self) -> Vec<PathBuf> {
        let dirs = std::mem::take(&mut self.0);
        remove_cgroups(&dirs);
        dirs
    }
}

impl Drop for StepCgroups {
    fn drop(&mut self) {
        remove_cgroups(&self.0);
    }
}

fn remove_cgroups(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in dirs {
        while dir.exists() && Instant::now() < deadline {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                if pid > 0 {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            if std::fs::remove_dir(dir).is_err() {
                std::thread::sleep(POLL);
            }
        }
    }
}

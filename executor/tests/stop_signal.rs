//! The executor as PID 1 (as in its container in a Pod) stops on SIGTERM: it passes the signal
//! on to the running RUN step and exits with 143, instead of ignoring it (a PID 1 without a
//! handler does) until the kubelet's SIGKILL. `unshare --pid --fork` makes it PID 1 of a PID
//! namespace of the test's own; the step sleeps far longer than the test waits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::{registry, require_root};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn sigterm_stops_a_build_when_the_executor_is_pid_1() {
    if !require_root("the executor runs RUN steps in a chroot, as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/kiln-test/busybox:latest\nRUN echo step-started && sleep 600\n",
            registry()
        ),
    )
    .unwrap();
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_kiln-executor"))
        .args([
            "--isolation",
            "chroot",
            "--insecure-pull",
            "--no-push",
            "--context",
        ])
        .arg(&ctx)
        .arg("--kiln-dir")
        .arg(dir.path().join("kiln"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    let unshare_pid = child.id();
    // Wait for the step to run, reading the log as it comes.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("step-started")) {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => seen.push(line),
            Err(_) if start.elapsed() > WAIT => {
                let _ = child.kill();
                panic!("the step never started: {seen:?}");
            }
            Err(_) => {}
        }
    }
    // The executor: the child unshare forked, PID 1 of the new namespace.
    let children =
        std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
            .unwrap();
    let executor: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(executor),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap_or_else(|e| panic!("signalling {executor}: {e}"));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the executor (PID 1) ignored SIGTERM for {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("SIGTERM received: stopping the build"),
        "{stderr}"
    );
}

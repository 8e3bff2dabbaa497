//! External commands run with a deadline and their output captured, loopback ports, and child
//! processes that die with the test. It must not judge what a command printed.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`run`] lets a helper command (skopeo, umoci, tar, openssl…) take: generous, because
/// two shared cores can be slow, but bounded so a hung tool fails the test instead of hanging it.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

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
#[derive(Debug, thiserror::Error)]
#[error("`{command}` {reason}")]
pub struct CmdError {
    pub command: String,
    pub reason: String,
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

/// The command line as it is shown in errors.
fn shown(cmd: &Command) -> String {
    format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Runs a command with a deadline, capturing its output. The command gets its own process group
/// so that a timeout kills everything it started (buildah and podman fork helpers).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    run_bounded_with_input(cmd, None, timeout)
}

/// [`run_bounded`] with `input` written to the command's stdin (then closed); with `None` its
/// stdin is empty.
pub fn run_bounded_with_input(
    cmd: &mut Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, CmdError> {
    let shown = shown(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd.spawn().map_err(|e| CmdError {
        command: shown.clone(),
        reason: format!(
            "could not start: {e} (is it installed? `bash scripts/test.sh` installs it)"
        ),
    })?;
    if let (Some(data), Some(mut pipe)) = (input, child.stdin.take()) {
        // A writer thread: a command that stops reading must not block the deadline.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
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
    let command = shown(cmd);
    let out = run_bounded(cmd, timeout)?;
    if out.success() {
        Ok(out)
    } else {
        Err(CmdError {
            command,
            reason: format!(
                "exited with {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                out.status,
                tail(&out.stderr, 3000),
                tail(&out.stdout, 1500)
            ),
        })
    }
}

/// Runs a helper command that must succeed, within [`TOOL_TIMEOUT`]; its stdout. Panics with
/// the command and its output otherwise: for test set-up, where a failure is the test's.
pub fn run(cmd: &mut Command) -> String {
    run_ok(cmd, TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"))
        .stdout
}

/// A loopback port that was free a moment ago (for servers that take a port number, not a
/// listener).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address of a bound socket")
        .port()
}

/// How long a test server gets to start answering: generous for a loaded machine.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until something accepts connections on 127.0.0.1:`port`; panics when `child` exits
/// first or nothing answers within [`SERVER_START_TIMEOUT`].
pub fn wait_for_port(port: u16, child: &mut Child) {
    wait_for_addr("127.0.0.1", port, child)
}

/// [`wait_for_port`] on another address of this machine.
pub fn wait_for_addr(host: &str, port: u16, child: &mut Child) {
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect((host, port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server on {host}:{port} exited early: {status}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "server on {host}:{port} did not start within {} s",
        SERVER_START_TIMEOUT.as_secs()
    );
}

/// A child process killed when the test ends, pass or fail.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("short\n", 100), "short");
        assert_eq!(tail("abcdef", 3), "[...]def");
        assert_eq!(tail("ééé", 3), "[...]é");
    }

    #[test]
    fn run_ok_reports_exit_and_output() {
        let out = run_ok(Command::new("sh").args(["-c", "echo hi"]), TOOL_TIMEOUT).unwrap();
        assert_eq!(out.stdout, "hi\n");
        let err = run_ok(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            TOOL_TIMEOUT,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("exited with Some(3)") && msg.contains("oops"),
            "{msg}"
        );
    }

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let start = Instant::now();
        let err = run_bounded(
            Command::new("sh").args(["-c", "sleep 30"]),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(err.reason.contains("timed out"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(25));
    }

    #[test]
    fn input_reaches_stdin() {
        let out = run_bounded_with_input(
            &mut Command::new("cat"),
            Some(b"fed".to_vec()),
            TOOL_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.stdout, "fed");
    }
}

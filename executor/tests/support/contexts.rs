//! Build contexts for the context-source tests: a gzip tarball made in memory, and one run of the
//! real `kiln-executor` binary with a bounded time. Talks to no server itself.

use std::process::Command;
use std::time::Duration;

use kiln_testkit::run_bounded_with_input;

/// How long one build of these tests may take: generous for a loaded machine, but bounded.
const EXECUTOR_TIMEOUT: Duration = Duration::from_secs(300);

/// A tar.gz holding `files` (path, content), each 0644 with a fixed mtime.
pub fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Runs `kiln-executor args` with `envs` added to the environment (and `stdin` piped in);
/// returns whether it succeeded and its stdout and stderr together.
pub fn run_executor(
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<Vec<u8>>,
) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = run_bounded_with_input(&mut cmd, stdin, EXECUTOR_TIMEOUT)
        .unwrap_or_else(|e| panic!("kiln-executor {args:?}: {e}"));
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

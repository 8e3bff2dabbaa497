//! `RUN --mount=type=ssh`: a socket of the step's own (with the mount's mode and owner, as
//! BuildKit's is) that forwards each connection to the ssh agent given with `--ssh`, or serves
//! the key files given there with Kiln's own agent ([`super::ssh_keys`]). The agent's own socket
//! is never mounted, so a step cannot change its permissions, and the agent ends with the step.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::SshSource;

/// Serves connections to `sock` (forwarded to an agent, or answered from key files) until
/// dropped.
pub(super) struct AgentProxy {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentProxy {
    pub(super) fn start(
        agent: &SshSource,
        sock: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<AgentProxy> {
        let listener = UnixListener::bind(sock)?;
        std::os::unix::fs::chown(sock, Some(uid), Some(gid))?;
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(mode))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.clone();
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kiln-ssh-agent".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => match &agent {
                            SshSource::Agent(path) => {
                                if let Err(e) = forward(client, path) {
                                    tracing::warn!("ssh agent forwarding: {e}");
                                }
                            }
                            SshSource::Keys(ring) => {
                                let ring = Arc::clone(ring);
                                let served = std::thread::Builder::new()
                                    .name("kiln-ssh-keys".into())
                                    .spawn(move || {
                                        if let Err(e) = super::ssh_keys::serve(client, &ring) {
                                            tracing::warn!("ssh agent: {e}");
                                        }
                                    });
                                if let Err(e) = served {
                                    tracing::warn!("ssh agent: {e}");
                                }
                            }
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => {
                            tracing::warn!("ssh agent forwarding stopped: {e}");
                            return;
                        }
                    }
                }
            })?;
        Ok(AgentProxy {
            stop,
            thread: Some(thread),
        })
    }
}

/// Copy both ways between the step's connection and a new one to the agent, each way in a
/// thread of its own that ends when its side closes.
fn forward(client: UnixStream, agent: &Path) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = UnixStream::connect(agent)?;
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let (mut u_read, mut c_write) = (upstream, client);
    std::thread::Builder::new()
        .name("kiln-ssh-up".into())
        .spawn(move || {
            let _ = io::copy(&mut c_read, &mut u_write);
            let _ = u_write.shutdown(std::net::Shutdown::Write);
        })?;
    std::thread::Builder::new()
        .name("kiln-ssh-down".into())
        .spawn(move || {
            let _ = io::copy(&mut u_read, &mut c_write);
            let _ = c_write.shutdown(std::net::Shutdown::Write);
        })?;
    Ok(())
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn connections_reach_the_agent_and_the_socket_has_the_mount_mode() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        std::thread::spawn(move || {
            for conn in agent.incoming() {
                let mut conn = conn.unwrap();
                let mut line = String::new();
                BufReader::new(conn.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                conn.write_all(format!("agent got {line}").as_bytes())
                    .unwrap();
            }
        });
        let sock = dir.path().join("proxy");
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let proxy = AgentProxy::start(
            &SshSource::Agent(agent_path.clone()),
            &sock,
            0o600,
            uid,
            gid,
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for _ in 0..2 {
            let mut c = UnixStream::connect(&sock).unwrap();
            c.write_all(b"ping\n").unwrap();
            let mut reply = String::new();
            BufReader::new(c).read_line(&mut reply).unwrap();
            assert_eq!(reply, "agent got ping\n");
        }
        drop(proxy);
    }
}

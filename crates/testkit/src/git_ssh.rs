//! An ssh git server for tests: OpenSSH's `sshd` on a loopback port with a host key and a client
//! key of its own, serving the repositories under a directory with git's own `git-upload-pack`.
//! Runs as the current user (root in CI, as `sshd` needs for its privilege-separation directory).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cmd::{free_port, wait_for_addr, KillOnDrop};

/// A running `sshd`, killed when dropped.
pub struct GitSshServer {
    _child: KillOnDrop,
    pub port: u16,
    /// The user to connect as (the user running the test).
    pub user: String,
    /// The server's host key, as a `known_hosts` line for `[127.0.0.1]:port`.
    pub known_hosts_line: String,
    /// A private key the server accepts (OpenSSH format, no passphrase).
    pub client_key: PathBuf,
}

/// Makes an Ed25519 key pair at `path` (and `path.pub`); returns the public key line.
pub fn ssh_keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(path.with_extension("pub"))
        .expect("the public key")
        .trim()
        .to_string()
}

impl GitSshServer {
    /// Starts `sshd` with its keys and configuration under `base/ssh`; repositories are named by
    /// their absolute paths in URLs. Needs `sshd`, `ssh-keygen` and `git`.
    pub fn start(base: &Path) -> GitSshServer {
        let dir = base.join("ssh");
        fs::create_dir_all(&dir).expect("create the sshd directory");
        let host_pub = ssh_keygen(&dir.join("host_key"));
        let client_pub = ssh_keygen(&dir.join("client_key"));
        fs::write(dir.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
        // sshd's privilege separation directory (created by the package's service otherwise).
        let _ = fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             UsePAM no\nStrictModes no\nPidFile none\nAcceptEnv GIT_PROTOCOL\n\
             PermitRootLogin prohibit-password\n",
            hk = dir.join("host_key").display(),
            ak = dir.join("authorized_keys").display(),
        );
        fs::write(dir.join("sshd_config"), config).unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        wait_for_addr("127.0.0.1", port, &mut child);
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into());
        GitSshServer {
            _child: KillOnDrop(child),
            port,
            user,
            known_hosts_line: format!("[127.0.0.1]:{port} {host_pub}"),
            client_key: dir.join("client_key"),
        }
    }
}

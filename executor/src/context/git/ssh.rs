//! Git over ssh without an ssh binary (the executor image has none): gitoxide fetches
//! `ssh://` repositories by running an ssh program with OpenSSH's arguments
//! (`[-o SendEnv=GIT_PROTOCOL] [-p<port>] [user@]host <command>`) and speaking git on its stdin
//! and stdout. That program is this binary, started under the name [`HELPER_NAME`] (a symlink in
//! the fetch's work directory): a small ssh client (russh) that
//! - checks the server's host key against the `known_hosts` file of the git Secret, always: a
//!   host that is not listed, or listed with another key, is refused, and there is no switch to
//!   turn the check off;
//! - authenticates with the Secret's private key only (`ssh-privatekey`, the key of a
//!   `kubernetes.io/ssh-auth` Secret; passphrase-protected keys are refused, naming the file);
//! - runs the one git command it was given and pipes it.
//!
//! The key never leaves the file: the helper gets the paths from a file beside its symlink, not
//! from arguments or the environment. Messages name files and hosts, never key material.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;

/// The name this binary answers to as gitoxide's ssh program.
pub const HELPER_NAME: &str = "kiln-git-ssh";

/// The files of a `kubernetes.io/ssh-auth` Secret (plus `known_hosts`) the helper uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAuth {
    pub private_key: PathBuf,
    pub known_hosts: PathBuf,
    /// The kiln-executor binary that serves as the ssh program: this process's own executable
    /// when `None` (the library's tests name the built binary).
    pub helper_exe: Option<PathBuf>,
}

/// Puts the helper in `dir` (created): a symlink named [`HELPER_NAME`] to this executable and
/// the file that tells it which key and `known_hosts` to use. Returns the symlink's path, the
/// program gitoxide is to run.
pub fn install(auth: &SshAuth, dir: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let exe = match &auth.helper_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("finding the executor's own binary for ssh: {e}"))?,
    };
    let link = dir.join(HELPER_NAME);
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&exe, &link)
        .map_err(|e| format!("creating {}: {e}", link.display()))?;
    let conf = format!(
        "{}\n{}\n",
        absolute(&auth.private_key)?.display(),
        absolute(&auth.known_hosts)?.display()
    );
    fs::write(config_path(&link), conf).map_err(|e| format!("writing the ssh settings: {e}"))?;
    Ok(link)
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn config_path(link: &Path) -> PathBuf {
    link.with_file_name(format!("{HELPER_NAME}.conf"))
}

/// When this process was started as the ssh helper: runs it and returns its exit code.
pub fn maybe_run_helper() -> Option<i32> {
    let mut args = std::env::args_os();
    let argv0 = PathBuf::from(args.next()?);
    if argv0.file_name()? != HELPER_NAME {
        return None;
    }
    let args: Vec<OsString> = args.collect();
    Some(match run_helper(&argv0, &args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln-executor (ssh): {e}");
            // gitoxide reports a broken handshake, not why: the fetch reads this instead.
            let _ = fs::write(error_path(&argv0), &e);
            255
        }
    })
}

fn error_path(link: &Path) -> PathBuf {
    link.with_file_name(format!("{HELPER_NAME}.error"))
}

/// Why the helper installed at `link` ended the connection, if it did (and clears it).
pub fn take_error(link: &Path) -> Option<String> {
    let path = error_path(link);
    let text = fs::read_to_string(&path).ok()?;
    let _ = fs::remove_file(&path);
    Some(text).filter(|t| !t.is_empty())
}

/// OpenSSH's arguments as gitoxide passes them.
#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    user: Option<String>,
    host: String,
    port: u16,
    command: String,
}

fn parse_args(args: &[OsString]) -> Result<Invocation, String> {
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or("an argument is not UTF-8")
        })
        .collect::<Result<_, _>>()?;
    let mut port = 22;
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        let a = &args[i];
        if a == "-o" {
            // Only SendEnv=GIT_PROTOCOL is ever passed; the variable is forwarded anyway.
            i += 2;
            continue;
        }
        if let Some(p) = a.strip_prefix("-p") {
            let p = if p.is_empty() {
                i += 1;
                args.get(i).map(String::as_str).unwrap_or_default()
            } else {
                p
            };
            port = p.parse().map_err(|_| format!("invalid port {p:?}"))?;
            i += 1;
            continue;
        }
        return Err(format!("unexpected ssh option {a:?}"));
    }
    let dest = args.get(i).ok_or("no host given")?;
    let command = args[i + 1..].join(" ");
    if command.is_empty() {
        return Err("no command given".into());
    }
    let (user, host) = match dest.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, dest.clone()),
    };
    // gitoxide passes an IPv6 address in brackets.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map(str::to_string)
        .unwrap_or(host);
    Ok(Invocation {
        user,
        host,
        port,
        command,
    })
}

/// Checks the server's key against `known_hosts`; the reason of a refusal is kept for the error.
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    refusal: Arc<Mutex<Option<String>>>,
}

impl HostKeyCheck {
    fn verdict(&self, key: &PublicKey) -> Result<(), String> {
        let name = if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let algorithm = key.algorithm();
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "host key verification failed: {name} offered a {algorithm} key {fingerprint}, which the Secret's known_hosts does not list for it (add the host's line, e.g. from ssh-keyscan; host keys are always checked)"
            )),
            Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                "host key verification failed: {name} offered the {algorithm} key {fingerprint}, but line {line} of the Secret's known_hosts records another {algorithm} key for it (a changed key, or someone in the middle)"
            )),
            Err(e) => Err(format!(
                "reading the Secret's known_hosts ({}): {e}",
                self.known_hosts.display()
            )),
        }
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let result = match server {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.verdict(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Err(
                "host key verification failed: the server offered a certificate; list its host key in known_hosts"
                    .to_string(),
            ),
        };
        match result {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

fn run_helper(argv0: &Path, args: &[OsString]) -> Result<i32, String> {
    let inv = parse_args(args)?;
    let conf = fs::read_to_string(config_path(argv0))
        .map_err(|e| format!("reading the ssh settings: {e}"))?;
    let mut lines = conf.lines();
    let (Some(key_path), Some(known_hosts)) = (lines.next(), lines.next()) else {
        return Err("the ssh settings file is incomplete".into());
    };
    let key = russh::keys::load_secret_key(key_path, None).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => format!(
            "the private key {key_path} is protected by a passphrase; use a key without one"
        ),
        other => format!("reading the private key {key_path}: {other}"),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the ssh client: {e}"))?;
    runtime.block_on(session(inv, key, PathBuf::from(known_hosts)))
}

/// How long connecting and authenticating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

async fn session(
    inv: Invocation,
    key: russh::keys::PrivateKey,
    known_hosts: PathBuf,
) -> Result<i32, String> {
    let refusal = Arc::new(Mutex::new(None));
    let check = HostKeyCheck {
        host: inv.host.clone(),
        port: inv.port,
        known_hosts,
        refusal: refusal.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..Default::default()
    });
    let where_ = format!("{}:{}", inv.host, inv.port);
    let user = inv
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".into());
    let connect = async {
        let mut handle = client::connect(config, (inv.host.as_str(), inv.port), check)
            .await
            .map_err(
                |e| match refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    Some(why) => why,
                    None => format!("ssh connection to {where_} failed: {e}"),
                },
            )?;
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| format!("ssh to {where_}: {e}"))?
            .flatten();
        let auth = handle
            .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(|e| format!("ssh to {where_}: {e}"))?;
        if !auth.success() {
            return Err(format!(
                "Permission denied (publickey): {where_} did not accept the Secret's private key for user {user:?}"
            ));
        }
        Ok(handle)
    };
    let handle = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("ssh to {where_}: no session within {CONNECT_TIMEOUT:?}"))??;
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| format!("ssh to {where_}: opening a session: {e}"))?;
    if let Ok(v) = std::env::var("GIT_PROTOCOL") {
        // Servers that do not accept it answer with protocol v1, which gitoxide also speaks.
        let _ = channel.set_env(false, "GIT_PROTOCOL", v).await;
    }
    channel
        .exec(true, inv.command.as_bytes())
        .await
        .map_err(|e| format!("ssh to {where_}: running {}: {e}", inv.command))?;
    let (mut reader, writer) = channel.split();
    // gitoxide's requests, to the remote command's stdin (read on a thread of its own: stdin
    // is blocking).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let pump = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if writer.data_bytes(chunk).await.is_err() {
                break;
            }
        }
        let _ = writer.eof().await;
    });
    let mut code = None;
    let mut stdout = std::io::stdout().lock();
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                stdout
                    .write_all(&data)
                    .and_then(|()| stdout.flush())
                    .map_err(|e| format!("writing to gitoxide: {e}"))?;
            }
            ChannelMsg::ExtendedData { data, .. } => {
                let _ = std::io::stderr().write_all(&data);
            }
            ChannelMsg::ExitStatus { exit_status } => {
                code = Some(i32::try_from(exit_status).unwrap_or(255));
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    pump.abort();
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
    Ok(code.unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn openssh_arguments_as_gitoxide_passes_them() {
        let inv = parse_args(&os(&[
            "-o",
            "SendEnv=GIT_PROTOCOL",
            "-p2222",
            "git@127.0.0.1",
            "git-upload-pack '/srv/repo.git'",
        ]))
        .unwrap();
        assert_eq!(
            inv,
            Invocation {
                user: Some("git".into()),
                host: "127.0.0.1".into(),
                port: 2222,
                command: "git-upload-pack '/srv/repo.git'".into(),
            }
        );
        let inv = parse_args(&os(&["[::1]", "git-upload-pack", "'x'"])).unwrap();
        assert_eq!((inv.user, inv.host.as_str(), inv.port), (None, "::1", 22));
        assert_eq!(inv.command, "git-upload-pack 'x'");
        assert!(parse_args(&os(&["-p", "x", "h", "c"])).is_err());
        assert!(parse_args(&os(&["-v", "h", "c"])).is_err());
        assert!(parse_args(&os(&["h"])).is_err());
    }
}

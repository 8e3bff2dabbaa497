//! A certificate authority made for one test with the `openssl` command: its CA certificate, and
//! server and client certificates it signs, for registries that serve TLS or ask for client
//! certificates. Files live in the CA's own temporary directory; nothing is installed on the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::run;

/// A CA (key and self-signed certificate) under a temporary directory, removed on drop.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA certificate, PEM: what a client passes to trust it.
    pub cert: PathBuf,
    key: PathBuf,
}

/// What a certificate issued by [`TestCa`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server on 127.0.0.1 (and `localhost`).
    Server,
    /// A TLS client (mutual TLS).
    Client,
}

impl TestCa {
    /// A fresh CA named `name` (its subject CN), valid for a day.
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().expect("temporary directory for a CA");
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        TestCa { dir, cert, key }
    }

    /// A certificate for `usage` named `name`, signed by this CA: (certificate, key) in PEM.
    pub fn issue(&self, name: &str, usage: Usage) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (cert, key, csr, ext) = (
            d.join(format!("{name}.pem")),
            d.join(format!("{name}-key.pem")),
            d.join(format!("{name}.csr")),
            d.join(format!("{name}.ext")),
        );
        run(Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        let extensions = match usage {
            Usage::Server => "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
            Usage::Client => "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        };
        std::fs::write(&ext, extensions).expect("write certificate extensions");
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-set_serial"])
            .arg(format!("0x{:x}", rand_serial()))
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.cert)
            .arg("-CAkey")
            .arg(&self.key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert));
        (cert, key)
    }

    /// The directory the CA's files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate directory as skopeo and podman read one (`--cert-dir`): this CA as
    /// `ca.crt`, and `client` (certificate, key) as `client.cert` and `client.key`.
    pub fn cert_dir(&self, name: &str, client: Option<&(PathBuf, PathBuf)>) -> PathBuf {
        let dir = self.dir.path().join(format!("certs.d-{name}"));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        std::fs::copy(&self.cert, dir.join("ca.crt")).expect("copy the CA certificate");
        if let Some((cert, key)) = client {
            std::fs::copy(cert, dir.join("client.cert")).expect("copy the client certificate");
            std::fs::copy(key, dir.join("client.key")).expect("copy the client key");
        }
        dir
    }
}

/// A serial number unlikely to repeat between certificates of one CA.
fn rand_serial() -> u128 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    nanos ^ u128::from(std::process::id()) << 64
}

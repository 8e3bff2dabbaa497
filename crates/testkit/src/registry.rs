//! A real OCI registry for one test: Debian's `docker-registry` on a free loopback port with its
//! own storage, optionally behind basic auth and TLS, killed on drop. It must never listen
//! beyond loopback (127.0.0.1, or 127.0.0.2 for a name that kaniko's rule does not call local) or
//! share its storage with another test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_oci::registry::RegistryOptions;

use crate::cmd::{free_port, SERVER_START_TIMEOUT};
use crate::policy::tool;
use crate::tls::{TestCa, Usage};
use crate::tools::self_signed_cert;

/// How a [`TestRegistry`] serves TLS.
pub enum RegistryTls {
    /// A self-signed certificate for 127.0.0.1.
    SelfSigned,
    /// A certificate and key issued by a [`TestCa`]; with `client_ca`, client certificates
    /// issued by that CA are required.
    Issued {
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    },
}

/// A `docker-registry serve` process with its own storage; killed on drop. It can be stopped
/// and started again on the same address and storage.
pub struct TestRegistry {
    child: Option<Child>,
    /// `127.0.0.1:<port>` (`127.0.0.2:<port>` for [`TestRegistry::start_not_local`]).
    pub addr: String,
    storage: PathBuf,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// The registry's storage directory (its filesystem driver's root).
    pub fn storage(&self) -> &std::path::Path {
        &self.storage
    }

    /// Plain HTTP, no auth. The test must have asked for `docker-registry` with
    /// [`crate::require_tools`].
    pub fn start() -> TestRegistry {
        Self::start_with(None, None)
    }

    /// Plain HTTP, no auth, on 127.0.0.2: still loopback, but not a name kaniko's rule lets
    /// fall back from HTTPS to plain HTTP by itself (it matches the text `127.0.0.1`), so only
    /// the insecure flags reach it.
    pub fn start_not_local() -> TestRegistry {
        Self::start_at("127.0.0.2", None, None)
    }

    /// Protected by `htpasswd` (the content of an htpasswd file, bcrypt; see
    /// [`crate::htpasswd_line`]).
    pub fn with_auth(htpasswd: &str) -> TestRegistry {
        Self::start_with(Some(htpasswd), None)
    }

    /// HTTPS with a fresh self-signed certificate for 127.0.0.1 (needs `openssl`).
    pub fn with_tls() -> TestRegistry {
        Self::start_with(None, Some(RegistryTls::SelfSigned))
    }

    /// HTTPS with a certificate for 127.0.0.1 that `ca` issues; with `client_ca`, every
    /// connection must present a client certificate that CA issued (distribution's
    /// `tls.clientcas`).
    pub fn with_tls_from(ca: &TestCa, client_ca: Option<&TestCa>) -> TestRegistry {
        let (cert, key) = ca.issue("registry", Usage::Server);
        Self::start_with(
            None,
            Some(RegistryTls::Issued {
                cert,
                key,
                client_ca: client_ca.map(|c| c.cert.clone()),
            }),
        )
    }

    fn start_with(htpasswd: Option<&str>, tls: Option<RegistryTls>) -> TestRegistry {
        Self::start_at("127.0.0.1", htpasswd, tls)
    }

    fn start_at(ip: &str, htpasswd: Option<&str>, tls: Option<RegistryTls>) -> TestRegistry {
        let dir = tempfile::tempdir().expect("temporary directory for the registry");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("registry storage directory");
        let addr = format!("{ip}:{}", free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some(h) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, h).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                path.display()
            ));
        }
        if let Some(tls) = tls {
            let (cert, key, client_ca) = match tls {
                RegistryTls::SelfSigned => {
                    let (cert, key) = self_signed_cert(dir.path());
                    (cert, key, None)
                }
                RegistryTls::Issued {
                    cert,
                    key,
                    client_ca,
                } => (cert, key, client_ca),
            };
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            if let Some(ca) = client_ca {
                config.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        std::fs::write(dir.path().join("config.yml"), config).expect("write registry config");
        // No docker config from the environment: tests say which credentials they use.
        std::fs::write(dir.path().join("docker-config.json"), "{}").expect("empty docker config");
        let mut reg = TestRegistry {
            child: None,
            addr,
            storage,
            dir,
        };
        reg.resume();
        reg
    }

    /// Starts the registry again after [`TestRegistry::stop`], on the same address and storage.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the registry is already running");
        let log = std::fs::File::create(self.dir.path().join("registry.log"))
            .expect("create registry log");
        let child = Command::new(tool("docker-registry"))
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops the registry; afterwards nothing answers on its address.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(TcpStream::connect(&self.addr).is_err());
    }

    /// Waits until the registry answers HTTP (a TLS one answers a plain request with a 400).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited with {status}: {}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_ok() {
                    let mut buf = [0u8; 12];
                    if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within {} s: {}",
                self.addr,
                SERVER_START_TIMEOUT.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the registry logged (errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Client options for this registry over plain HTTP, with an empty docker config.
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            insecure_registries: vec![self.addr.clone()],
            docker_config: Some(self.empty_docker_config()),
            ..RegistryOptions::default()
        }
    }

    /// A docker config file (`{}`) that holds no credentials.
    pub fn empty_docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config.json")
    }

    /// A `DOCKER_CONFIG` directory whose `config.json` holds no credentials.
    pub fn docker_config_dir(&self) -> PathBuf {
        let d = self.dir.path().join("docker");
        std::fs::create_dir_all(&d).expect("docker config directory");
        std::fs::write(d.join("config.json"), "{}").expect("empty docker config");
        d
    }

    /// Where the registry stores blob `digest` (for tests that damage it).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Whether the registry holds tag `tag` of `repo`, read from its storage directly.
    pub fn has_tag(&self, repo: &str, tag: &str) -> bool {
        self.storage
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/tags")
            .join(tag)
            .exists()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

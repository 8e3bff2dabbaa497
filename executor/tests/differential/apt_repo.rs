//! A loopback Debian package repository for the corpus's Debian cases, so no build touches the
//! live mirror: two tiny packages made with `dpkg-deb` from files written here, a flat index, and
//! a small HTTP server on 127.0.0.1 that lives as long as the [`AptRepo`] value. It serves only
//! the files it wrote and must never listen beyond loopback.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::support::run_ok;

/// The placeholder a case's `args` file uses for the repository's URL.
pub const PLACEHOLDER: &str = "@APT_REPO@";

/// Fixed times keep the packages and the index identical from run to run (a build must not depend
/// on the date): dpkg-deb clamps file times to it, and the Release file carries it.
const SOURCE_DATE_EPOCH: &str = "1704067200";
const RELEASE_DATE: &str = "Mon, 01 Jan 2024 00:00:00 UTC";

/// One package: name, control fields beyond the usual ones, maintainer scripts, and files
/// (path inside the package, mode, content).
struct Package {
    name: &'static str,
    depends: Option<&'static str>,
    description: &'static str,
    conffiles: &'static [&'static str],
    postinst: Option<&'static str>,
    files: &'static [(&'static str, u32, &'static str)],
}

/// What the corpus installs: `kiln-greeting` depends on `kiln-hello`, so apt resolves a dependency;
/// `kiln-hello` has a conffile and a postinst, so dpkg's conffile and maintainer-script paths run
/// inside the build as they do for real packages.
const PACKAGES: &[Package] = &[
    Package {
        name: "kiln-hello",
        depends: None,
        description: "prints a greeting (kiln test package)",
        conffiles: &["/etc/kiln-hello.conf"],
        postinst: Some(
            "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n  \
             mkdir -p /var/lib/kiln-hello\n  echo configured > /var/lib/kiln-hello/state\nfi\n",
        ),
        files: &[
            (
                "usr/bin/kiln-hello",
                0o755,
                "#!/bin/sh\n. /etc/kiln-hello.conf\necho \"$GREETING\"\n",
            ),
            ("etc/kiln-hello.conf", 0o644, "GREETING='Hello, world!'\n"),
            (
                "usr/share/doc/kiln-hello/copyright",
                0o644,
                "Test package of the kiln project.\n",
            ),
        ],
    },
    Package {
        name: "kiln-greeting",
        depends: Some("kiln-hello (>= 1.0)"),
        description: "a greeting text that uses kiln-hello (kiln test package)",
        conffiles: &[],
        postinst: None,
        files: &[(
            "usr/share/kiln-greeting/greeting.txt",
            0o644,
            "greetings from a loopback repository\n",
        )],
    },
];

/// The running repository; dropping it stops the server.
pub struct AptRepo {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl AptRepo {
    /// Builds the packages and the index in a temporary directory and starts serving it.
    pub fn start() -> Result<AptRepo, String> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-apt-repo-")
            .tempdir()
            .map_err(|e| format!("cannot create the apt repository directory: {e}"))?;
        let repo = dir.path().join("repo");
        fs::create_dir(&repo).map_err(|e| format!("cannot create {}: {e}", repo.display()))?;
        let mut index = String::new();
        for p in PACKAGES {
            let deb = build_deb(p, dir.path(), &repo)?;
            index.push_str(&index_entry(p, &deb)?);
            index.push('\n');
        }
        write(&repo.join("Packages"), index.as_bytes())?;
        // apt refuses a repository without a Release file even when it is `[trusted=yes]`; an
        // unsigned one with the index's hash is what a flat repository needs.
        let release = format!(
            "Origin: kiln-test\nLabel: kiln-test\nDate: {RELEASE_DATE}\nArchitectures: all amd64\n\
             SHA256:\n {} {} Packages\n",
            hex::encode(Sha256::digest(index.as_bytes())),
            index.len()
        );
        write(&repo.join("Release"), release.as_bytes())?;

        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("cannot listen on 127.0.0.1 for the apt repository: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the apt repository's address: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make the apt repository's listener non-blocking: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || serve(listener, repo, stop))
        };
        Ok(AptRepo {
            _dir: dir,
            addr,
            stop,
            server: Some(server),
        })
    }

    /// The URL a sources.list line names: `deb [trusted=yes] <url> ./`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for AptRepo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes the package's tree and builds `<name>_1.0_all.deb` in `repo` with dpkg-deb.
fn build_deb(p: &Package, work: &Path, repo: &Path) -> Result<PathBuf, String> {
    let root = work.join(p.name);
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian).map_err(|e| format!("cannot create {}: {e}", debian.display()))?;
    write(&debian.join("control"), control(p).as_bytes())?;
    if !p.conffiles.is_empty() {
        write(
            &debian.join("conffiles"),
            (p.conffiles.join("\n") + "\n").as_bytes(),
        )?;
    }
    let mut files: Vec<(PathBuf, u32, &str)> = p
        .files
        .iter()
        .map(|(path, mode, body)| (root.join(path), *mode, *body))
        .collect();
    if let Some(script) = p.postinst {
        files.push((debian.join("postinst"), 0o755, script));
    }
    for (path, mode, body) in files {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        write(&path, body.as_bytes())?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    }
    let deb = repo.join(format!("{}_1.0_all.deb", p.name));
    run_ok(
        Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
            .args(["--build", "--root-owner-group", "-Zgzip"])
            .arg(&root)
            .arg(&deb),
        Duration::from_secs(60),
    )
    .map_err(|e| format!("cannot build the test package {}: {e}", p.name))?;
    Ok(deb)
}

fn control(p: &Package) -> String {
    let mut c = format!(
        "Package: {}\nVersion: 1.0\nArchitecture: all\nMaintainer: kiln tests <kiln@invalid>\n",
        p.name
    );
    if let Some(d) = p.depends {
        c.push_str(&format!("Depends: {d}\n"));
    }
    c.push_str(&format!("Description: {}\n", p.description));
    c
}

/// The package's paragraph of the `Packages` index. Written here rather than by
/// dpkg-scanpackages or apt-ftparchive so the test needs only dpkg-deb, which every Debian has.
fn index_entry(p: &Package, deb: &Path) -> Result<String, String> {
    let bytes = fs::read(deb).map_err(|e| format!("cannot read {}: {e}", deb.display()))?;
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format!(
        "{}Filename: ./{name}\nSize: {}\nSHA256: {}\n",
        control(p),
        bytes.len(),
        hex::encode(Sha256::digest(&bytes))
    ))
}

/// Accepts connections until `stop` is set; each connection gets a thread of its own.
fn serve(listener: TcpListener, repo: PathBuf, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let repo = repo.clone();
                thread::spawn(move || {
                    let _ = answer(stream, &repo);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Answers the GET and HEAD requests of one connection in order (apt pipelines them), serving
/// only files directly in `repo`.
fn answer(stream: TcpStream, repo: &Path) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        // Headers carry nothing this server needs; read up to the blank line.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
        }
        let mut parts = request.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let name = target.trim_start_matches('/').trim_start_matches("./");
        let file = (!name.is_empty() && !name.contains('/') && !name.starts_with('.'))
            .then(|| fs::read(repo.join(name)).ok())
            .flatten();
        match (method, file) {
            ("GET" | "HEAD", Some(body)) => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    body.len()
                )?;
                if method == "GET" {
                    out.write_all(&body)?;
                }
            }
            _ => write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
        }
        out.flush()?;
    }
}

//! One build directory for end-to-end tests of the `kiln-executor` binary: a context holding a
//! Dockerfile over the test registry's busybox (`BASE` in the text), OCI layouts written by
//! numbered builds (chroot isolation, no push) and a mount cache shared by them. Uses only a
//! temporary directory and the local test registry.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;

use super::run_executor;
use kiln_testkit::registry;

/// A build directory: the context, layouts, and a mount cache shared by the builds of a case.
pub struct Build {
    pub dir: tempfile::TempDir,
}

impl Build {
    /// A context with `dockerfile` (`BASE_MULTIPLATFORM` replaced by the test registry's
    /// amd64 + arm64 busybox index, `BASE` by its busybox) and `files`.
    pub fn new(dockerfile: &str, files: &[(&str, &str)]) -> Build {
        let dir = tempfile::Builder::new()
            .prefix("kiln-build-")
            .tempdir()
            .expect("temp dir");
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        let base = format!("{}/kiln-test/busybox:latest", registry());
        let multi = format!("{}/kiln-test/busybox:multiplatform", registry());
        let text = dockerfile
            .replace("BASE_MULTIPLATFORM", &multi)
            .replace("BASE", &base);
        fs::write(ctx.join("Dockerfile"), text).unwrap();
        for (name, content) in files {
            let path = ctx.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        Build { dir }
    }

    pub fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    pub fn layout(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("layout{n}"))
    }

    /// Build into layout `n` with `extra` flags and `envs`; whether it succeeded, and the log.
    pub fn run(&self, n: usize, extra: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
        let ctx = self.ctx();
        let layout = self.layout(n);
        let cache = self.dir.path().join("mount-cache");
        let mut args = vec![
            "--isolation",
            "chroot",
            "--insecure-pull",
            "--no-push",
            "--context",
            ctx.to_str().unwrap(),
            "--oci-layout-path",
            layout.to_str().unwrap(),
            "--mount-cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_executor(&args, envs, None)
    }

    /// [`Build::run`] that must succeed; the log.
    pub fn ok(&self, n: usize, extra: &[&str], envs: &[(&str, &str)]) -> String {
        let (ok, log) = self.run(n, extra, envs);
        assert!(ok, "the build failed:\n{log}");
        log
    }
}

/// A loopback TCP listener that says `reached` to every connection and closes it, for as long as
/// the test runs; its port. What a build's network probes connect to.
pub fn reached_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let _ = conn.write_all(b"reached\n");
        }
    });
    port
}

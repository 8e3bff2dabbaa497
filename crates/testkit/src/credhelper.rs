//! A real docker credential helper for tests: `docker-credential-<name>`, a small `/bin/sh`
//! script speaking the protocol of github.com/docker/docker-credential-helpers (`get` with the
//! server on stdin, `{ServerURL, Username, Secret}` on stdout, `credentials not found in native
//! keychain` and exit status 1 when it holds nothing), in a directory of its own to put on a
//! program's `PATH`. It logs each call to a file the test reads. It must never hold credentials
//! other than the test registry's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What the helper does when asked.
pub enum HelperBehaviour {
    /// Answers `username`/`secret` for `server`, "credentials not found" for any other server.
    Answer {
        server: String,
        username: String,
        secret: String,
    },
    /// Holds nothing: "credentials not found" for every server.
    NotFound,
    /// Fails: prints `stdout` on stdout and `stderr` on stderr, exits with status 2.
    Fail { stdout: String, stderr: String },
}

/// `docker-credential-<name>` in a temporary directory.
pub struct TestCredentialHelper {
    dir: tempfile::TempDir,
    /// `<name>` of `docker-credential-<name>`: what a docker config's `credHelpers` or
    /// `credsStore` names.
    pub name: String,
}

impl TestCredentialHelper {
    /// The helper, run by `/bin/sh`.
    pub fn new(name: &str, behaviour: HelperBehaviour) -> TestCredentialHelper {
        Self::with_interpreter(name, behaviour, "/bin/sh")
    }

    /// The helper, run by `interpreter` (its `#!` line, e.g. `/kiln/busybox sh` where a container
    /// has no `/bin/sh`). The script uses shell builtins only, so it needs no other program.
    pub fn with_interpreter(
        name: &str,
        behaviour: HelperBehaviour,
        interpreter: &str,
    ) -> TestCredentialHelper {
        let dir = tempfile::Builder::new()
            .prefix("kiln-credhelper-")
            .tempdir()
            .expect("temporary directory for the credential helper");
        let log = dir.path().join("calls.log");
        let respond = match behaviour {
            HelperBehaviour::Answer {
                server,
                username,
                secret,
            } => format!(
                "if [ \"$server\" = {} ]; then\n  printf '%s\\n' {}\n  exit 0\nfi\n{NOT_FOUND}",
                quote(&server),
                quote(
                    &serde_json::json!({"ServerURL": server, "Username": username, "Secret": secret})
                        .to_string()
                )
            ),
            HelperBehaviour::NotFound => NOT_FOUND.to_string(),
            HelperBehaviour::Fail { stdout, stderr } => format!(
                "printf '%s\\n' {}\nprintf '%s\\n' {} >&2\nexit 2\n",
                quote(&stdout),
                quote(&stderr)
            ),
        };
        let script = format!(
            "#!{interpreter}\n# docker-credential-{name}: a test credential helper\n\
             [ \"$1\" = get ] || {{ echo \"unsupported action $1\"; exit 1; }}\n\
             read -r server || true\n\
             printf '%s\\n' \"$1 $server\" >> {}\n{respond}",
            quote(&log.display().to_string())
        );
        let path = dir.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, script).expect("write the credential helper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the credential helper executable");
        TestCredentialHelper {
            dir,
            name: name.to_string(),
        }
    }

    /// The directory holding the helper, to put on `PATH`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `PATH` with the helper's directory first.
    pub fn path_env(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.dir.path().to_path_buf()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).expect("PATH with the helper's directory")
    }

    /// Every call so far, one `"<action> <server>"` per call, in order.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Writes a docker config naming this helper: for `registry` under `credHelpers`, or with
    /// `None` as `credsStore`; `extra` is merged in (e.g. an `auths` object). Returns the
    /// `DOCKER_CONFIG` directory.
    pub fn docker_config(
        &self,
        dir: &Path,
        registry: Option<&str>,
        extra: serde_json::Value,
    ) -> PathBuf {
        let mut config = match registry {
            Some(r) => serde_json::json!({"credHelpers": {r: self.name}}),
            None => serde_json::json!({"credsStore": self.name}),
        };
        if let (Some(c), serde_json::Value::Object(more)) = (config.as_object_mut(), extra) {
            c.extend(more);
        }
        std::fs::create_dir_all(dir).expect("docker config directory");
        std::fs::write(dir.join("config.json"), config.to_string()).expect("write docker config");
        dir.to_path_buf()
    }
}

const NOT_FOUND: &str = "echo 'credentials not found in native keychain'\nexit 1\n";

/// `s` as one single-quoted shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

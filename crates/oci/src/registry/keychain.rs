//! Which credentials a registry gets: the docker config's `auths` entry, or the answer of the
//! credential helper the config names for it (`credHelpers`, `credsStore`), asked lazily (only
//! for a registry actually contacted) and once per registry for the life of the keychain, the
//! answer kept in memory only. Shared by every registry client of a run (the warmer makes one
//! per platform). It never logs or reports a secret, and adds each helper's answer to the
//! secrets that error messages are cleaned of.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::auth::{normalize_auth_key, Credentials, DockerConfig, HelperChoice};
use super::credhelper::{self, Answer, Failure, HelperSettings};
use super::error::{CredentialHelperError, RegistryError, Secrets};

/// What a registry's helper said, kept for the run.
type Outcome = Result<Option<Credentials>, Failure>;

/// The credentials of every registry of a run. `Debug` shows no secret.
pub struct Keychain {
    config: DockerConfig,
    settings: HelperSettings,
    /// By normalised registry host: the helper's answer, asked at most once.
    answers: Mutex<HashMap<String, Arc<OnceCell<Outcome>>>>,
    secrets: Arc<Secrets>,
}

impl fmt::Debug for Keychain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut asked: Vec<String> = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        asked.sort();
        f.debug_struct("Keychain")
            .field("config", &self.config)
            .field("settings", &self.settings)
            .field("helpers_asked_for", &asked)
            .finish_non_exhaustive()
    }
}

impl Keychain {
    /// Loads the docker config (see [`DockerConfig::load`]); no helper runs yet.
    pub fn load(
        docker_config: Option<&Path>,
        settings: HelperSettings,
    ) -> Result<Arc<Keychain>, RegistryError> {
        Ok(Arc::new(Self::new(
            DockerConfig::load(docker_config)?,
            settings,
        )))
    }

    pub fn new(config: DockerConfig, settings: HelperSettings) -> Keychain {
        let secrets = Secrets::default();
        secrets.add(config.all_secrets());
        Keychain {
            config,
            settings,
            answers: Mutex::new(HashMap::new()),
            secrets: Arc::new(secrets),
        }
    }

    pub(crate) fn secrets(&self) -> &Arc<Secrets> {
        &self.secrets
    }

    /// The credentials for `registry` (`host[:port]`, or `docker.io`); `None` is anonymous.
    /// With a helper for it: the helper's answer (its first call runs it; later and concurrent
    /// calls share that answer), `None` when it has none, an error naming the helper and the
    /// registry when it fails. Otherwise the `auths` entry.
    pub async fn credentials_for(
        &self,
        registry: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        let Some(choice) = self.config.helper_for(registry) else {
            return Ok(self.config.credentials_for(registry).cloned());
        };
        let cell = {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            answers
                .entry(normalize_auth_key(registry))
                .or_default()
                .clone()
        };
        let outcome = cell
            .get_or_init(|| self.ask(registry, &choice))
            .await
            .clone();
        outcome.map_err(|Failure(detail)| {
            RegistryError::CredentialHelper(Box::new(CredentialHelperError {
                helper: choice.name.clone(),
                registry: registry.to_string(),
                registry_key: choice.key.clone(),
                source_desc: self.source(&choice),
                detail,
            }))
        })
    }

    async fn ask(&self, registry: &str, choice: &HelperChoice) -> Outcome {
        let path = credhelper::locate(&choice.name, &self.settings.search_dirs())?;
        tracing::debug!(
            helper = %path.display(),
            registry,
            key = %choice.key,
            "asking the credential helper"
        );
        let answer =
            credhelper::get(&path, &choice.key, &self.settings, &self.secrets.snapshot()).await?;
        Ok(match answer {
            Answer::Found(credentials) => {
                self.secrets.add(credentials.secrets());
                tracing::info!(
                    registry,
                    helper = %format!("docker-credential-{}", choice.name),
                    "credentials from the credential helper"
                );
                Some(credentials)
            }
            Answer::NotFound => {
                tracing::info!(
                    registry,
                    helper = %format!("docker-credential-{}", choice.name),
                    "the credential helper has no credentials for this registry: anonymous access"
                );
                None
            }
        })
    }

    fn source(&self, choice: &HelperChoice) -> String {
        format!("{} in {}", choice.field, self.config.describe())
    }

    /// Where `registry`'s credentials come from, for "check the credentials" hints: the docker
    /// config, or the helper and what it answered.
    pub fn describe_for(&self, registry: &str) -> String {
        let Some(choice) = self.config.helper_for(registry) else {
            return self.config.describe();
        };
        let answered = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&normalize_auth_key(registry))
            .and_then(|cell| cell.get().cloned());
        let helper = format!(
            "credential helper docker-credential-{} ({})",
            choice.name,
            self.source(&choice)
        );
        match answered {
            Some(Ok(None)) => {
                format!("{helper} has none for {registry}, so access was anonymous")
            }
            _ => helper,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A helper script in `dir` that appends each call's argument and input to `dir/calls`,
    /// then runs `body`.
    fn helper(dir: &Path, name: &str, body: &str) {
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nserver=$(cat)\necho \"$1 $server\" >> '{}'\n{body}\n",
                dir.join("calls").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn calls(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("calls")).unwrap_or_default()
    }

    fn keychain(dir: &Path, config: &str) -> Keychain {
        let config = DockerConfig::parse(config.as_bytes(), &dir.join("config.json")).unwrap();
        let settings = HelperSettings {
            path: Some(dir.as_os_str().to_owned()),
            ..HelperSettings::default()
        };
        Keychain::new(config, settings)
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn auths_entries_without_a_helper() {
        let dir = tempfile::tempdir().unwrap();
        let k = keychain(
            dir.path(),
            r#"{"auths": {"r.example": {"username": "u", "password": "p"}}}"#,
        );
        let c = run(k.credentials_for("r.example")).unwrap();
        assert!(matches!(c, Some(Credentials::Basic { .. })));
        assert_eq!(run(k.credentials_for("other.example")).unwrap(), None);
    }

    #[test]
    fn a_helper_is_asked_once_per_registry_and_wins_over_auths() {
        let dir = tempfile::tempdir().unwrap();
        helper(
            dir.path(),
            "t",
            r#"case "$server" in
  a.example) echo '{"ServerURL":"a.example","Username":"ua","Secret":"helper-secret-a"}' ;;
  https://index.docker.io/v1/) echo '{"Username":"<token>","Secret":"hub-token"}' ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac"#,
        );
        let k = keychain(
            dir.path(),
            r#"{"auths": {"a.example": {"username": "file", "password": "file-pw"},
                          "b.example": {"username": "file", "password": "file-pw"}},
                "credsStore": "t"}"#,
        );
        run(async {
            let (a1, a2) = tokio::join!(
                k.credentials_for("a.example"),
                k.credentials_for("A.example")
            );
            let expected = Some(Credentials::Basic {
                username: "ua".into(),
                password: "helper-secret-a".into(),
            });
            assert_eq!(a1.unwrap(), expected);
            assert_eq!(a2.unwrap(), expected);
            assert_eq!(k.credentials_for("a.example").await.unwrap(), expected);
            // Not found: anonymous, though `auths` has an entry (Docker's native store).
            assert_eq!(k.credentials_for("b.example").await.unwrap(), None);
            assert_eq!(k.credentials_for("b.example").await.unwrap(), None);
            assert!(matches!(
                k.credentials_for("docker.io").await.unwrap(),
                Some(Credentials::IdentityToken { .. })
            ));
        });
        assert_eq!(
            calls(dir.path()),
            "get a.example\nget b.example\nget https://index.docker.io/v1/\n"
        );
        let debug = format!("{k:?}");
        assert!(
            !debug.contains("helper-secret-a") && !debug.contains("hub-token"),
            "{debug}"
        );
        assert!(k
            .describe_for("b.example")
            .contains("has none for b.example, so access was anonymous"));
        assert!(k
            .secrets
            .redact("x helper-secret-a hub-token")
            .contains("x <redacted> <redacted>"));
    }

    #[test]
    fn failures_name_the_helper_and_registry_once() {
        let dir = tempfile::tempdir().unwrap();
        helper(
            dir.path(),
            "broken",
            "echo 'stdout-answer-kiln'; echo 'no identity: token file missing' >&2; exit 3",
        );
        let k = keychain(
            dir.path(),
            r#"{"credHelpers": {"r.example:5000": "broken", "m.example": "nowhere-kiln"}}"#,
        );
        for _ in 0..2 {
            let e = run(k.credentials_for("r.example:5000"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("docker-credential-broken (credHelpers in docker config")
                    && e.contains("registry r.example:5000")
                    && e.contains("exit status: 3")
                    && e.contains("no identity: token file missing"),
                "{e}"
            );
            assert!(!e.contains("stdout-answer-kiln"), "{e}");
        }
        assert_eq!(calls(dir.path()), "get r.example:5000\n");
        let e = run(k.credentials_for("m.example")).unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-nowhere-kiln is not an executable file in"),
            "{e}"
        );
    }

    #[test]
    fn a_slow_helper_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        helper(dir.path(), "slow", "sleep 30");
        let mut k = keychain(dir.path(), r#"{"credsStore": "slow"}"#);
        k.settings.timeout = std::time::Duration::from_millis(300);
        let started = std::time::Instant::now();
        let e = run(k.credentials_for("r.example")).unwrap_err().to_string();
        assert!(e.contains("did not answer within 300 ms"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}

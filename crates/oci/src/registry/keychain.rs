//! Which credentials a registry gets, in the order of kaniko v1.24's multi-keychain
//! (`pkg/creds/creds.go`), the first that has some winning: the docker config (its `auths`
//! entry, or the answer of the credential helper it names in `credHelpers` or `credsStore`);
//! then, for a registry it has none for, the credential helper of kaniko's compiled-in keychain
//! whose hosts the registry matches ([`super::cloud`]), when that program is installed; then
//! GitLab CI's variables. Resolved lazily (only for a registry actually contacted) and once per
//! registry for the life of the keychain, answers kept in memory only. Shared by every registry
//! client of a run (the warmer makes one per platform). It never logs or reports a secret, and
//! adds each answer to the secrets that error messages are cleaned of.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::auth::{normalize_auth_key, Credentials, DockerConfig, HelperChoice};
use super::cloud::CloudKeychain;
use super::credhelper::{self, Answer, Failure, HelperSettings};
use super::error::{CredentialHelperError, RegistryError, Secrets};

/// How a registry's credentials were resolved, kept for the run: the credentials, or the
/// docker config's helper and why it failed.
type Outcome = Result<Resolution, (HelperChoice, Failure)>;

#[derive(Clone)]
struct Resolution {
    credentials: Option<Credentials>,
    source: Source,
}

/// Where a registry's credentials came from, or why there are none.
#[derive(Clone)]
enum Source {
    /// The docker config's `auths` entry.
    Auths,
    /// The helper the docker config names.
    ConfigHelper(HelperChoice),
    /// The helper of a kaniko cloud keychain.
    Cloud(CloudKeychain),
    /// `CI_REGISTRY_USER` and `CI_REGISTRY_PASSWORD`.
    GitLabCi,
    /// None: the config's helper that had none, and the cloud helper that gave none.
    Anonymous {
        config_helper: Option<HelperChoice>,
        cloud: Option<(CloudKeychain, CloudMiss)>,
    },
}

/// Why a cloud keychain's helper gave no credentials. kaniko's keychains turn each of these
/// into anonymous access, and so does Kiln; the reason goes into a 401's hint.
#[derive(Clone)]
enum CloudMiss {
    /// The program is not installed where helpers may run (the text says where it looked).
    Absent(String),
    NotFound,
    Failed(String),
}

/// The credentials of every registry of a run. `Debug` shows no secret.
pub struct Keychain {
    config: DockerConfig,
    settings: HelperSettings,
    /// By normalised registry host: how its credentials were resolved, at most once.
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
            .field("resolved_for", &asked)
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
        if let Some(gitlab) = &settings.gitlab_ci {
            secrets.add(gitlab.password.iter().cloned().collect());
        }
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
    /// The first call for a registry resolves them (running helpers); later and concurrent
    /// calls share that result. An error names the docker config's helper and the registry
    /// when that helper fails; a cloud keychain's helper failing means anonymous, as in kaniko.
    pub async fn credentials_for(
        &self,
        registry: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        let outcome = self
            .cell(registry)
            .get_or_init(|| self.resolve(registry))
            .await
            .clone();
        outcome
            .map(|r| r.credentials)
            .map_err(|(choice, Failure(detail))| {
                RegistryError::CredentialHelper(Box::new(CredentialHelperError {
                    helper: choice.name.clone(),
                    registry: registry.to_string(),
                    registry_key: choice.key.clone(),
                    source_desc: self.source(&choice),
                    detail,
                }))
            })
    }

    fn cell(&self, registry: &str) -> Arc<OnceCell<Outcome>> {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .entry(normalize_auth_key(registry))
            .or_default()
            .clone()
    }

    /// kaniko's multi-keychain for one registry: each source in turn until one has credentials.
    async fn resolve(&self, registry: &str) -> Outcome {
        let mut config_helper = None;
        if let Some(choice) = self.config.helper_for(registry) {
            let answer = match credhelper::locate(&choice.name, &self.settings.search_dirs()) {
                Ok(path) => self.ask(&path, registry, &choice.key).await,
                Err(f) => Err(f),
            };
            match answer {
                Ok(Some(credentials)) => {
                    tracing::info!(
                        registry,
                        helper = %format!("docker-credential-{}", choice.name),
                        "credentials from the credential helper"
                    );
                    return Ok(self.found(registry, credentials, Source::ConfigHelper(choice)));
                }
                Ok(None) => {
                    tracing::info!(
                        registry,
                        helper = %format!("docker-credential-{}", choice.name),
                        "the credential helper has no credentials for this registry"
                    );
                    config_helper = Some(choice);
                }
                Err(f) => return Err((choice, f)),
            }
        } else if let Some(credentials) = self.config.credentials_for(registry) {
            return Ok(self.found(registry, credentials.clone(), Source::Auths));
        }

        let mut cloud = None;
        if let Some(keychain) = CloudKeychain::for_registry(registry) {
            let miss = match credhelper::locate(keychain.helper(), &self.settings.search_dirs()) {
                Err(Failure(why)) => {
                    tracing::debug!(
                        registry,
                        helper = %format!("docker-credential-{}", keychain.helper()),
                        "kaniko would ask this credential helper, which is not installed"
                    );
                    CloudMiss::Absent(why)
                }
                // Asked for the registry as kaniko's keychain asks: `host[:port]`.
                Ok(path) => match self.ask(&path, registry, registry).await {
                    Ok(Some(credentials)) => {
                        return Ok(self.found(registry, credentials, Source::Cloud(keychain)));
                    }
                    Ok(None) => CloudMiss::NotFound,
                    Err(Failure(why)) => {
                        tracing::info!(
                            registry,
                            helper = %format!("docker-credential-{}", keychain.helper()),
                            error = %why,
                            "no credentials from the credential helper: anonymous access, as in kaniko"
                        );
                        CloudMiss::Failed(why)
                    }
                },
            };
            cloud = Some((keychain, miss));
        }

        if let Some(credentials) = self
            .settings
            .gitlab_ci
            .as_ref()
            .and_then(|g| g.credentials_for(registry))
        {
            return Ok(self.found(registry, credentials, Source::GitLabCi));
        }
        tracing::debug!(registry, "no credentials: anonymous access");
        Ok(Resolution {
            credentials: None,
            source: Source::Anonymous {
                config_helper,
                cloud,
            },
        })
    }

    fn found(&self, registry: &str, credentials: Credentials, source: Source) -> Resolution {
        tracing::debug!(
            registry,
            source = %self.describe_source(registry, &source),
            "registry credentials"
        );
        Resolution {
            credentials: Some(credentials),
            source,
        }
    }

    /// Runs the helper at `path` for `key`; `None` when it has nothing for it.
    async fn ask(
        &self,
        path: &Path,
        registry: &str,
        key: &str,
    ) -> Result<Option<Credentials>, Failure> {
        tracing::debug!(helper = %path.display(), registry, key, "asking the credential helper");
        let answer = credhelper::get(path, key, &self.settings, &self.secrets.snapshot()).await?;
        Ok(match answer {
            Answer::Found(credentials) => {
                self.secrets.add(credentials.secrets());
                Some(credentials)
            }
            Answer::NotFound => None,
        })
    }

    fn source(&self, choice: &HelperChoice) -> String {
        format!("{} in {}", choice.field, self.config.describe())
    }

    fn helper_desc(&self, choice: &HelperChoice) -> String {
        format!(
            "credential helper docker-credential-{} ({})",
            choice.name,
            self.source(choice)
        )
    }

    /// Where `registry`'s credentials come from, for "check the credentials" hints: the docker
    /// config, a helper, or why access was anonymous (each helper that had none, and the one
    /// kaniko would have asked when it is not installed).
    pub fn describe_for(&self, registry: &str) -> String {
        let resolved = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&normalize_auth_key(registry))
            .and_then(|cell| cell.get().cloned());
        match resolved {
            Some(Ok(r)) => self.describe_source(registry, &r.source),
            Some(Err((choice, _))) => self.helper_desc(&choice),
            None => match self.config.helper_for(registry) {
                Some(choice) => self.helper_desc(&choice),
                None => self.config.describe(),
            },
        }
    }

    fn describe_source(&self, registry: &str, source: &Source) -> String {
        match source {
            Source::Auths => self.config.describe(),
            Source::ConfigHelper(choice) => self.helper_desc(choice),
            Source::Cloud(k) => format!(
                "credential helper docker-credential-{}, asked as kaniko asks it for {} \
                 registries without credentials in the docker config",
                k.helper(),
                k.registries()
            ),
            Source::GitLabCi => "CI_REGISTRY_USER and CI_REGISTRY_PASSWORD of GitLab CI".into(),
            Source::Anonymous {
                config_helper,
                cloud,
            } => {
                let mut parts = vec![match (config_helper, &self.config.path) {
                    (Some(choice), _) => {
                        format!("{} has none for {registry}", self.helper_desc(choice))
                    }
                    (None, _) if cloud.is_none() => return self.config.describe(),
                    (None, Some(path)) => format!(
                        "docker config {} has no credentials for {registry}",
                        path.display()
                    ),
                    (None, None) => "no docker config.json found".to_string(),
                }];
                if let Some((k, miss)) = cloud {
                    let helper = format!("the {} helper", k.registries());
                    let name = format!("docker-credential-{}", k.helper());
                    parts.push(match miss {
                        CloudMiss::Absent(why) => format!("{helper} {why}"),
                        CloudMiss::NotFound => format!("{helper} {name} has none for {registry}"),
                        CloudMiss::Failed(why) => {
                            format!("{helper} {name} failed for {registry}: {why}")
                        }
                    });
                }
                format!("{}, so access was anonymous", parts.join("; "))
            }
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
            gitlab_ci: None,
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

    const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    fn basic(username: &str, password: &str) -> Option<Credentials> {
        Some(Credentials::Basic {
            username: username.into(),
            password: password.into(),
        })
    }

    /// `docker-credential-ecr-login` in `dir`, answering for [`ECR`] only.
    fn ecr_login(dir: &Path) {
        helper(
            dir,
            "ecr-login",
            &format!(
                r#"case "$server" in
  {ECR}) echo '{{"ServerURL":"{ECR}","Username":"AWS","Secret":"ecr-token-secret"}}' ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac"#
            ),
        );
    }

    #[test]
    fn a_cloud_helper_answers_for_its_hosts_without_a_config_entry() {
        let dir = tempfile::tempdir().unwrap();
        ecr_login(dir.path());
        let k = keychain(dir.path(), "{}");
        run(async {
            for _ in 0..2 {
                assert_eq!(
                    k.credentials_for(ECR).await.unwrap(),
                    basic("AWS", "ecr-token-secret")
                );
            }
            assert_eq!(k.credentials_for("public.ecr.aws").await.unwrap(), None);
            // Not an ECR host: the helper is not asked.
            assert_eq!(k.credentials_for("r.example").await.unwrap(), None);
        });
        assert_eq!(
            calls(dir.path()),
            format!("get {ECR}\nget public.ecr.aws\n")
        );
        assert!(k
            .describe_for(ECR)
            .contains("docker-credential-ecr-login, asked as kaniko asks it for Amazon ECR"));
        let d = k.describe_for("public.ecr.aws");
        assert!(
            d.contains(
                "the Amazon ECR helper docker-credential-ecr-login has none for public.ecr.aws, \
                 so access was anonymous"
            ),
            "{d}"
        );
        assert!(!format!("{k:?}").contains("ecr-token-secret"));
        assert!(k.secrets.redact("ecr-token-secret").contains("<redacted>"));
    }

    #[test]
    fn the_docker_config_comes_first_then_the_cloud_helper_then_gitlab_ci() {
        let dir = tempfile::tempdir().unwrap();
        ecr_login(dir.path());
        helper(
            dir.path(),
            "store",
            r#"case "$server" in
  234567890123.dkr.ecr.eu-west-1.amazonaws.com) echo '{"Username":"store","Secret":"store-pw"}' ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac"#,
        );
        let other_ecr = "234567890123.dkr.ecr.eu-west-1.amazonaws.com";
        // An `auths` entry wins: no helper runs.
        let k = keychain(
            dir.path(),
            &format!(r#"{{"auths": {{"{ECR}": {{"username": "file", "password": "file-pw"}}}}}}"#),
        );
        assert_eq!(
            run(k.credentials_for(ECR)).unwrap(),
            basic("file", "file-pw")
        );
        assert_eq!(calls(dir.path()), "");

        // The config's helper first; "not found" from it goes on to the cloud helper.
        let k = keychain(dir.path(), r#"{"credsStore": "store"}"#);
        assert_eq!(
            run(k.credentials_for(other_ecr)).unwrap(),
            basic("store", "store-pw")
        );
        assert_eq!(
            run(k.credentials_for(ECR)).unwrap(),
            basic("AWS", "ecr-token-secret")
        );
        assert_eq!(
            calls(dir.path()),
            format!("get {other_ecr}\nget {ECR}\nget {ECR}\n")
        );

        // GitLab CI's variables last: after a cloud helper that has none.
        let mut k = keychain(dir.path(), "{}");
        k.settings.gitlab_ci = Some(super::super::cloud::GitLabCi {
            registry: other_ecr.into(),
            user: Some("gitlab-ci-token".into()),
            password: Some("job-token".into()),
        });
        assert_eq!(
            run(k.credentials_for(other_ecr)).unwrap(),
            basic("gitlab-ci-token", "job-token")
        );
        assert!(k.describe_for(other_ecr).contains("GitLab CI"));
    }

    #[test]
    fn an_absent_or_failing_cloud_helper_means_anonymous_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let k = keychain(dir.path(), "{}");
        assert_eq!(
            run(k.credentials_for("europe-docker.pkg.dev")).unwrap(),
            None
        );
        let d = k.describe_for("europe-docker.pkg.dev");
        assert!(
            d.starts_with("docker config ")
                && d.contains(
                    "has no credentials for europe-docker.pkg.dev; the Google Artifact Registry \
                     and GCR helper docker-credential-gcr is not an executable file in"
                )
                && d.ends_with(", so access was anonymous"),
            "{d}"
        );

        helper(
            dir.path(),
            "acr-env",
            "echo 'stdout-of-acr'; echo 'AZURE_CLIENT_ID is not set' >&2; exit 1",
        );
        assert_eq!(run(k.credentials_for("team.azurecr.io")).unwrap(), None);
        assert_eq!(run(k.credentials_for("team.azurecr.io")).unwrap(), None);
        assert_eq!(calls(dir.path()), "get team.azurecr.io\n");
        let d = k.describe_for("team.azurecr.io");
        assert!(
            d.contains(
                "the Azure Container Registry helper docker-credential-acr-env failed for \
                 team.azurecr.io: it exited with exit status: 1; its stderr: AZURE_CLIENT_ID is \
                 not set, so access was anonymous"
            ) && !d.contains("stdout-of-acr"),
            "{d}"
        );
    }

    #[test]
    fn a_cloud_helper_runs_only_from_the_directories_helpers_may_run_from() {
        let dir = tempfile::tempdir().unwrap();
        ecr_login(dir.path());
        let mut k = keychain(dir.path(), "{}");
        // In place, only `/kiln`, `/kaniko` and Kiln's directory may hold helpers.
        k.settings.only_under = vec!["/kiln".into(), "/kaniko".into()];
        assert_eq!(run(k.credentials_for(ECR)).unwrap(), None);
        assert_eq!(calls(dir.path()), "");
        let d = k.describe_for(ECR);
        assert!(
            d.contains(
                "the Amazon ECR helper docker-credential-ecr-login is not an executable file in \
                 no directory"
            ),
            "{d}"
        );
    }
}

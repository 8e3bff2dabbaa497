//! Registry credentials in executor and warmer Pods: a `kubernetes.io/dockerconfigjson` Secret
//! mounted read-only as `config.json`, with `DOCKER_CONFIG` naming its directory. Pure Pod-spec
//! pieces; the operator never reads the Secret's data.

use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, SecretVolumeSource, Volume, VolumeMount};

/// Directory holding `config.json` with the registry credentials (`DOCKER_CONFIG`).
pub const DOCKER_CONFIG_DIR: &str = "/kiln/.docker";

/// Name of the Pod volume holding the credentials.
const VOLUME: &str = "docker-config";

/// The volume, its mount and the environment variable that give a container the credentials
/// of one Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    pub volume: Volume,
    pub mount: VolumeMount,
    pub env: EnvVar,
}

impl DockerConfig {
    /// The credentials of the dockerconfigjson Secret `secret`.
    pub fn from_secret(secret: &str) -> Self {
        DockerConfig {
            volume: Volume {
                name: VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_string()),
                    items: Some(vec![KeyToPath {
                        key: ".dockerconfigjson".into(),
                        path: "config.json".into(),
                        mode: None,
                    }]),
                    default_mode: Some(0o440),
                    optional: Some(false),
                }),
                ..Default::default()
            },
            mount: VolumeMount {
                name: VOLUME.into(),
                mount_path: DOCKER_CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            env: EnvVar {
                name: "DOCKER_CONFIG".into(),
                value: Some(DOCKER_CONFIG_DIR.into()),
                value_from: None,
            },
        }
    }

    /// Adds the three pieces to a Pod's volumes, a container's mounts and its environment.
    pub fn add_to(
        self,
        volumes: &mut Vec<Volume>,
        mounts: &mut Vec<VolumeMount>,
        env: &mut Vec<EnvVar>,
    ) {
        volumes.push(self.volume);
        mounts.push(self.mount);
        env.push(self.env);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_becomes_a_read_only_config_json() {
        let dc = DockerConfig::from_secret("push");
        let src = dc.volume.secret.as_ref().unwrap();
        assert_eq!(src.secret_name.as_deref(), Some("push"));
        let item = &src.items.as_ref().unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            (".dockerconfigjson", "config.json")
        );
        assert_eq!(src.optional, Some(false));
        assert_eq!(dc.mount.name, dc.volume.name);
        assert_eq!(dc.mount.mount_path, DOCKER_CONFIG_DIR);
        assert_eq!(dc.mount.read_only, Some(true));
        assert_eq!(dc.env.name, "DOCKER_CONFIG");
        assert_eq!(dc.env.value.as_deref(), Some(DOCKER_CONFIG_DIR));
    }
}

//! What `RUN --mount` needs in the executor Pod: one Secret volume per build secret
//! (`spec.secrets`) and the read-write claim of the mount cache (`spec.cache.mountCacheClaim`),
//! with the executor flags naming them. Pure Pod-spec pieces: the operator never reads a Secret's
//! data, and nothing here puts a value into an argument or a variable, only file paths.

use k8s_openapi::api::core::v1::{
    KeyToPath, PersistentVolumeClaimVolumeSource, SecretVolumeSource, Volume, VolumeMount,
};

use crate::crd::{BuildSecret, ImageBuildSpec};

/// Directory under which each build secret gets a directory of its own, `<dir>/<id>/`.
pub const SECRETS_DIR: &str = "/kiln/secrets";
/// File name of a build secret's value in its directory.
pub const SECRET_FILE: &str = "value";
/// Where the mount-cache claim is mounted (`--mount-cache-dir`): under the executor's own
/// directory, so that it is never snapshotted and steps with private namespaces never see it.
pub const MOUNT_CACHE_DIR: &str = "/kiln/mount-cache";
/// Name of the mount-cache volume.
const MOUNT_CACHE_VOLUME: &str = "mount-cache";

/// The file holding the value of build secret `id` in the executor container.
pub fn secret_path(id: &str) -> String {
    format!("{SECRETS_DIR}/{id}/{SECRET_FILE}")
}

/// Pod volume name of the build secret at `index` of `spec.secrets` (ids need not be DNS labels).
fn secret_volume(index: usize) -> String {
    format!("build-secret-{index}")
}

/// The build secret whose volume the kubelet names (`build-secret-<index>`), if any.
pub fn secret_of_volume<'a>(spec: &'a ImageBuildSpec, volume: &str) -> Option<&'a BuildSecret> {
    let index: usize = volume.strip_prefix("build-secret-")?.parse().ok()?;
    spec.secrets.get(index)
}

/// The executor flags: `--secret=id=<id>,src=<file>` per build secret and `--mount-cache-dir`.
pub fn args(spec: &ImageBuildSpec) -> Vec<String> {
    let mut args: Vec<String> = spec
        .secrets
        .iter()
        .map(|s| format!("--secret=id={},src={}", s.id, secret_path(&s.id)))
        .collect();
    if mount_cache_claim(spec).is_some() {
        args.push(format!("--mount-cache-dir={MOUNT_CACHE_DIR}"));
    }
    args
}

fn mount_cache_claim(spec: &ImageBuildSpec) -> Option<&str> {
    spec.cache
        .as_ref()
        .and_then(|c| c.mount_cache_claim.as_deref())
        .filter(|c| !c.is_empty())
}

/// Adds the build-secret volumes and the mount-cache claim to the executor Pod's volumes and
/// its container's mounts.
pub fn add_to(spec: &ImageBuildSpec, volumes: &mut Vec<Volume>, mounts: &mut Vec<VolumeMount>) {
    for (index, secret) in spec.secrets.iter().enumerate() {
        let (volume, mount) = secret_volume_and_mount(index, secret);
        volumes.push(volume);
        mounts.push(mount);
    }
    if let Some(claim) = mount_cache_claim(spec) {
        volumes.push(Volume {
            name: MOUNT_CACHE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_string(),
                read_only: Some(false),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: MOUNT_CACHE_VOLUME.into(),
            mount_path: MOUNT_CACHE_DIR.into(),
            ..Default::default()
        });
    }
}

/// Only the one key, read-only and readable by its owner only; not optional, so that a missing
/// Secret or key keeps the Pod from starting (the kubelet's Event names the Secret).
fn secret_volume_and_mount(index: usize, secret: &BuildSecret) -> (Volume, VolumeMount) {
    let name = secret_volume(index);
    let volume = Volume {
        name: name.clone(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.secret_key_ref.name.clone()),
            items: Some(vec![KeyToPath {
                key: secret.secret_key_ref.key.clone(),
                path: SECRET_FILE.into(),
                mode: None,
            }]),
            default_mode: Some(0o400),
            optional: Some(false),
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name,
        mount_path: format!("{SECRETS_DIR}/{}", secret.id),
        read_only: Some(true),
        ..Default::default()
    };
    (volume, mount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CacheSpec, SecretKeyRef};

    fn spec() -> ImageBuildSpec {
        ImageBuildSpec {
            secrets: vec![
                BuildSecret {
                    id: "npmrc".into(),
                    secret_key_ref: SecretKeyRef {
                        name: "npm".into(),
                        key: ".npmrc".into(),
                    },
                },
                BuildSecret {
                    id: "GIT_AUTH_TOKEN".into(),
                    secret_key_ref: SecretKeyRef {
                        name: "git".into(),
                        key: "token".into(),
                    },
                },
            ],
            cache: Some(CacheSpec {
                mount_cache_claim: Some("run-cache".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_become_one_key_volumes_and_file_flags() {
        let s = spec();
        assert_eq!(
            args(&s),
            vec![
                "--secret=id=npmrc,src=/kiln/secrets/npmrc/value",
                "--secret=id=GIT_AUTH_TOKEN,src=/kiln/secrets/GIT_AUTH_TOKEN/value",
                "--mount-cache-dir=/kiln/mount-cache",
            ]
        );
        let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
        add_to(&s, &mut volumes, &mut mounts);
        assert_eq!(volumes.len(), 3);
        let v = volumes[0].secret.as_ref().unwrap();
        assert_eq!(v.secret_name.as_deref(), Some("npm"));
        assert_eq!(v.default_mode, Some(0o400));
        assert_eq!(v.optional, Some(false));
        let item = &v.items.as_ref().unwrap()[0];
        assert_eq!((item.key.as_str(), item.path.as_str()), (".npmrc", "value"));
        assert_eq!(
            (mounts[1].name.as_str(), mounts[1].mount_path.as_str()),
            ("build-secret-1", "/kiln/secrets/GIT_AUTH_TOKEN")
        );
        assert!(mounts[..2].iter().all(|m| m.read_only == Some(true)));
        let cache = volumes[2].persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (cache.claim_name.as_str(), cache.read_only),
            ("run-cache", Some(false))
        );
        assert_eq!(mounts[2].mount_path, MOUNT_CACHE_DIR);
        assert_ne!(mounts[2].read_only, Some(true));
        let by_volume = |v: &str| secret_of_volume(&s, v).map(|b| b.id.as_str());
        assert_eq!(by_volume(&mounts[1].name), Some("GIT_AUTH_TOKEN"));
        assert_eq!(by_volume("build-secret-2"), None);
        assert_eq!(by_volume("docker-config"), None);
    }

    #[test]
    fn nothing_without_secrets_or_claim() {
        let mut s = ImageBuildSpec::default();
        assert!(args(&s).is_empty());
        s.cache = Some(CacheSpec {
            mount_cache_claim: Some(String::new()),
            ..Default::default()
        });
        let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
        add_to(&s, &mut volumes, &mut mounts);
        assert!(args(&s).is_empty() && volumes.is_empty() && mounts.is_empty());
    }
}

//! The warmer Pod of one warm run, computed from the `CacheWarm` alone. Pure and deterministic
//! per generation and run, like the executor Pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::config::OperatorConfig;
use crate::crd::{CacheWarm, WarmedImage};
use crate::docker_config::DockerConfig;
use crate::image_build::pod::CACHE_DIR;
use crate::{duration, names};

/// Name of the warmer container (the one whose termination message is read).
pub const CONTAINER: &str = "warmer";

/// What the warmer writes to its termination message on success (compact JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WarmerResult {
    pub images: Vec<WarmedImage>,
}

/// The warmer's arguments (`kiln-warmer`'s real flags), images in spec order.
///
/// `--cache-ttl` is the refresh interval: the warmer skips an image whose cached copy is younger
/// than its TTL, and its default (336h) would turn every refresh shorter than two weeks into a
/// no-op.
/// Where the warmer binary is in Kiln's executor image (and in any warmer image).
pub const WARMER_COMMAND: &str = "/kiln/warmer";

pub fn warmer_args(cw: &CacheWarm, cfg: &OperatorConfig) -> Vec<String> {
    let mut args: Vec<String> = cw
        .spec
        .images
        .iter()
        .map(|i| format!("--image={i}"))
        .collect();
    args.push(format!("--cache-dir={CACHE_DIR}"));
    args.extend(cfg.registry_args());
    let ttl = cw
        .spec
        .refresh_interval
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| duration::format(cfg.default_refresh_interval));
    args.push(format!("--cache-ttl={ttl}"));
    let mut platforms: Vec<&str> = cw
        .spec
        .platform
        .as_deref()
        .filter(|p| !p.is_empty())
        .into_iter()
        .collect();
    for p in &cw.spec.platforms {
        if !platforms.contains(&p.as_str()) {
            platforms.push(p);
        }
    }
    if !platforms.is_empty() {
        args.push(format!("--custom-platform={}", platforms.join(",")));
    }
    args
}

/// The warmer Pod for `run` of the resource's current generation.
pub fn desired_pod(cw: &CacheWarm, cfg: &OperatorConfig, run: i32) -> Pod {
    let name = cw.name_any();
    let generation = cw.meta().generation.unwrap_or(0);
    let mut volumes = vec![Volume {
        name: "cache".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: cw.spec.claim.clone(),
            read_only: Some(false),
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "cache".into(),
        mount_path: CACHE_DIR.into(),
        ..Default::default()
    }];
    let mut env = Vec::new();
    if let Some(secret) = &cw.spec.pull_secret {
        DockerConfig::from_secret(secret).add_to(&mut volumes, &mut mounts, &mut env);
    }
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            crate::MANAGED_BY.to_string(),
        ),
        (
            "app.kubernetes.io/name".to_string(),
            "kiln-warmer".to_string(),
        ),
        (crate::LABEL_WARM.to_string(), names::label_value(&name)),
        (crate::LABEL_GENERATION.to_string(), generation.to_string()),
        (crate::LABEL_ATTEMPT.to_string(), run.to_string()),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(names::warm_pod_name(&name, generation, run)),
            namespace: cw.namespace(),
            labels: Some(labels),
            owner_references: cw.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(
                    cw.spec
                        .warmer_image
                        .clone()
                        .unwrap_or_else(|| cfg.warmer_image.clone()),
                ),
                // The Kiln image's entrypoint is the executor; the warmer lives beside it.
                command: Some(vec![WARMER_COMMAND.into()]),
                args: Some(warmer_args(cw, cfg)),
                env: (!env.is_empty()).then_some(env),
                volume_mounts: Some(mounts),
                termination_message_path: Some("/dev/termination-log".into()),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(crate::security::warmer_container()),
                ..Default::default()
            }],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(crate::security::pod()),
            image_pull_secrets: crate::config::pull_secrets(&cfg.warmer_image_pull_secrets),
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CacheWarmSpec;

    fn cw() -> CacheWarm {
        let mut c = CacheWarm::new(
            "base",
            CacheWarmSpec {
                images: vec!["reg.local/debian:12".into(), "reg.local/alpine:3".into()],
                claim: "warm".into(),
                pull_secret: Some("pull".into()),
                platform: Some("linux/amd64".into()),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("u".into());
        c.metadata.generation = Some(2);
        c
    }

    #[test]
    fn warmer_runs_the_warmer_binary_and_reaches_insecure_registries() {
        let cfg = OperatorConfig {
            insecure_registries: vec!["registry.kiln-system:5000".into()],
            ..Default::default()
        };
        let p = desired_pod(&cw(), &cfg, 1);
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.command.as_deref(),
            Some(&["/kiln/warmer".to_string()][..])
        );
        assert!(c
            .args
            .as_ref()
            .unwrap()
            .contains(&"--insecure-registry=registry.kiln-system:5000".to_string()));
    }

    #[test]
    fn warmer_pod_writes_to_claim() {
        let p = desired_pod(&cw(), &OperatorConfig::default(), 3);
        assert_eq!(p.metadata.name.as_deref(), Some("base-warm-2-3"));
        let s = p.spec.as_ref().unwrap();
        let c = &s.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "--image=reg.local/debian:12",
                "--image=reg.local/alpine:3",
                "--cache-dir=/cache",
                "--cache-ttl=24h",
                "--custom-platform=linux/amd64"
            ]
        );
        let vols = s.volumes.as_ref().unwrap();
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "warm"
        );
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().read_only,
            Some(false)
        );
        assert_eq!(
            vols[1].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("pull")
        );
        assert_eq!(
            c.env.as_ref().unwrap()[0].value.as_deref(),
            Some("/kiln/.docker")
        );
        assert_eq!(s.restart_policy.as_deref(), Some("Never"));
        assert_eq!(s.automount_service_account_token, Some(false));
        assert_eq!(s.enable_service_links, Some(false));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.capabilities.as_ref().unwrap().add, None);
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()[crate::LABEL_WARM],
            "base"
        );
        assert_eq!(
            p.metadata.owner_references.as_ref().unwrap()[0].kind,
            "CacheWarm"
        );
    }

    /// The arguments the operator generates, parsed by the real `kiln-warmer` command line.
    #[test]
    fn warmer_cli_accepts_every_generated_flag() {
        use clap::Parser;
        let parse = |c: &CacheWarm| {
            let mut argv = vec!["kiln-warmer".to_string()];
            argv.extend(warmer_args(c, &OperatorConfig::default()));
            kiln_warmer::Args::try_parse_from(&argv)
                .unwrap_or_else(|e| panic!("kiln-warmer rejects {argv:?}: {e}"))
        };
        let mut c = cw();
        let a = parse(&c);
        assert_eq!(a.images, vec!["reg.local/debian:12", "reg.local/alpine:3"]);
        assert_eq!(a.cache_dir, std::path::PathBuf::from(CACHE_DIR));
        assert_eq!(a.custom_platform.as_deref(), Some("linux/amd64"));
        // The refresh interval is the TTL, so a refresh really pulls again.
        assert_eq!(a.cache_ttl, std::time::Duration::from_secs(24 * 3600));
        c.spec.refresh_interval = Some("1h30m".into());
        c.spec.platform = None;
        let a = parse(&c);
        assert_eq!(a.cache_ttl, std::time::Duration::from_secs(5400));
        assert_eq!(a.custom_platform, None);
        // Several platforms (and `platform` once): every image warmed for each.
        c.spec.platform = Some("linux/amd64".into());
        c.spec.platforms = vec!["linux/arm64".into(), "linux/amd64".into()];
        let a = parse(&c);
        assert_eq!(
            a.custom_platform.as_deref(),
            Some("linux/amd64,linux/arm64")
        );
        let targets = kiln_warmer::targets(&a).unwrap();
        assert_eq!(targets.len(), 4);
        assert_eq!(targets[3].platform.architecture, "arm64");
    }

    /// The warmer's real termination message is what the operator reads.
    #[test]
    fn warmer_termination_message_is_understood() {
        let warmed = kiln_warmer::Warmed {
            target: kiln_warmer::Target {
                reference: "reg.local/debian:12".into(),
                platform: "linux/amd64".parse().unwrap(),
            },
            digest: format!("sha256:{}", "a".repeat(64)),
            outcome: kiln_warmer::Outcome::Cached,
            elapsed: std::time::Duration::from_secs(1),
        };
        let text = kiln_warmer::termination_message(&[warmed]);
        let r: WarmerResult = serde_json::from_str(&text).unwrap();
        assert_eq!(r.images[0].reference, "reg.local/debian:12");
        assert_eq!(r.images[0].digest, format!("sha256:{}", "a".repeat(64)));
    }
}

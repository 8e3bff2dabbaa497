//! The registry flags kiln-executor and kiln-warmer share, defined once so both spell, default,
//! parse and document them alike, and what they mean as [`RegistryOptions`]. Only flags both
//! programs take belong here (`--custom-platform` is not: the warmer alone also accepts kaniko
//! warmer's `--customPlatform`; both read its value with [`crate::platform::from_flag`]); it
//! parses nothing else and never contacts a registry.

use std::path::PathBuf;

use clap::{ArgAction, Args};
use kiln_common::goflag::parse_bool as go_bool;

use crate::limits::{self, Limit};
use crate::platform::Platform;
use crate::registry::{ClientCert, RegistryOptions};

/// How to reach registries, as kaniko spells it. Booleans accept `--flag`, `--flag=true` and
/// `--flag=false` like Go's pflag, so kaniko invocations work unchanged. Flattened into each
/// program's command line with `#[command(flatten)]`.
///
/// Which flag weakens which request is kaniko v1.24's (`cmd/executor/cmd/root.go`,
/// `pkg/image/remote/remote.go`, `pkg/executor/push.go`, `pkg/cache/cache.go`,
/// `pkg/util/transport_util.go`): `--insecure` is plain HTTP for pushes and for the layer cache,
/// `--insecure-pull` for pulls only; `--skip-tls-verify` skips verification for every request,
/// `--skip-tls-verify-pull` for pulls only (kaniko v1.24 declares it and never reads it; Kiln
/// gives it its documented meaning); the `-registry` lists apply to pushes and pulls alike.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RegistryFlags {
    /// Push (destinations and the layer cache) over plain HTTP; base-image pulls are not
    /// affected (see --insecure-pull).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub insecure: bool,

    /// Pull base images over plain HTTP; pushes are not affected.
    #[arg(long = "insecure-pull", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub insecure_pull: bool,

    /// Registry (host[:port]) to reach over plain HTTP, for pushes and pulls; repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,

    /// Reach every registry over HTTPS without verifying certificates (pushes and pulls).
    #[arg(long = "skip-tls-verify", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub skip_tls_verify: bool,

    /// Pull over HTTPS without verifying certificates; pushes are not affected.
    #[arg(long = "skip-tls-verify-pull", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub skip_tls_verify_pull: bool,

    /// Registry (host[:port]) to reach over HTTPS without verifying certificates, for pushes and
    /// pulls; repeatable.
    #[arg(long = "skip-tls-verify-registry")]
    pub skip_tls_verify_registries: Vec<String>,

    /// Mirror tried before docker.io for Docker Hub images; repeatable.
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,

    /// Largest manifest, image index or image config read from a registry (bytes, or KiB, MiB,
    /// GiB; `unlimited`): reading stops there with an error naming the image.
    #[arg(long = "max-manifest-size", value_parser = limits::parse_size, default_value = "4MiB")]
    pub max_manifest_size: Limit,

    /// Largest layer, decompressed (bytes, or KiB, MiB, GiB; `unlimited`). A layer blob larger
    /// than this can only be a layer larger than this, so it is refused before it is downloaded.
    #[arg(long = "max-layer-size", value_parser = limits::parse_size, default_value = "10GiB")]
    pub max_layer_size: Limit,

    // --- TLS material per registry and the mirror fallback (kaniko v1.24 `root.go`,
    // `pkg/util/transport_util.go`, `pkg/image/remote/remote.go`). ---
    /// `REG=PATH`: trust the CA certificates in the PEM file PATH for registry REG, in addition
    /// to the system's; repeatable (the last one for a registry wins).
    #[arg(long = "registry-certificate", value_name = "REG=PATH", value_parser = parse_registry_certificate)]
    pub registry_certificates: Vec<(String, PathBuf)>,

    /// `REG=CERT,KEY`: present the client certificate CERT with its private key KEY (PEM files)
    /// to registry REG, for mutual TLS; repeatable.
    #[arg(long = "registry-client-cert", value_name = "REG=CERT,KEY", value_parser = parse_registry_client_cert)]
    pub registry_client_certs: Vec<ClientCert>,

    /// With --registry-mirror or --registry-map, an image the mirrors and remaps do not serve is
    /// an error instead of being fetched from its own registry.
    #[arg(long = "skip-default-registry-fallback", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub skip_default_registry_fallback: bool,
}

/// kaniko's `REG=PATH` (`keyValueArg`: split at the first `=`).
fn parse_registry_certificate(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((reg, path)) if !reg.is_empty() && !path.is_empty() => {
            Ok((reg.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "expected REG=PATH (my.registry.url=/path/to/ca.pem), got {value:?}"
        )),
    }
}

/// kaniko's `REG=CERT,KEY`: exactly two comma-separated paths.
fn parse_registry_client_cert(value: &str) -> Result<ClientCert, String> {
    let invalid = || {
        format!("expected REG=CERT,KEY (my.registry.url=/path/to/cert,/path/to/key), got {value:?}")
    };
    let (reg, files) = value.split_once('=').ok_or_else(invalid)?;
    let parts: Vec<&str> = files.split(',').collect();
    match parts[..] {
        [cert, key] if !reg.is_empty() && !cert.is_empty() && !key.is_empty() => Ok(ClientCert {
            registry: reg.to_string(),
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        }),
        _ => Err(invalid()),
    }
}

impl Default for RegistryFlags {
    /// What an empty command line means.
    fn default() -> Self {
        RegistryFlags {
            insecure: false,
            insecure_pull: false,
            insecure_registries: Vec::new(),
            skip_tls_verify: false,
            skip_tls_verify_pull: false,
            skip_tls_verify_registries: Vec::new(),
            registry_mirrors: Vec::new(),
            max_manifest_size: Limit::at(limits::DEFAULT_MAX_MANIFEST_SIZE),
            max_layer_size: Limit::at(limits::DEFAULT_MAX_LAYER_SIZE),
            registry_certificates: Vec::new(),
            registry_client_certs: Vec::new(),
            skip_default_registry_fallback: false,
        }
    }
}

impl RegistryFlags {
    /// Registry options for pulling and pushing images of `platform`, each flag applied to the
    /// requests kaniko applies it to (see [`RegistryFlags`]). Options without a shared flag keep
    /// their [`RegistryOptions::default`].
    pub fn options(&self, platform: Platform) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure,
            insecure_pull: self.insecure_pull,
            insecure_registries: self.insecure_registries.clone(),
            skip_tls_verify: self.skip_tls_verify,
            skip_tls_verify_pull: self.skip_tls_verify_pull,
            skip_tls_verify_registries: self.skip_tls_verify_registries.clone(),
            mirrors: self.registry_mirrors.clone(),
            platform,
            max_manifest_size: self.max_manifest_size.or_max(),
            max_layer_size: self.max_layer_size.get(),
            registry_certificates: self.registry_certificates.clone(),
            registry_client_certs: self.registry_client_certs.clone(),
            skip_default_registry_fallback: self.skip_default_registry_fallback,
            ..RegistryOptions::default()
        }
    }

    /// [`RegistryFlags::options`] for a program that only pulls (kiln-warmer): with no push to
    /// weaken, `--insecure` means plain HTTP for its pulls, as the warmer has always read it.
    pub fn pull_only_options(&self, platform: Platform) -> RegistryOptions {
        let mut o = self.options(platform);
        o.insecure_pull |= o.insecure;
        o.insecure = false;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        registry: RegistryFlags,
    }

    fn parse(args: &[&str]) -> RegistryFlags {
        Cli::try_parse_from(std::iter::once("prog").chain(args.iter().copied()))
            .expect("flags parse")
            .registry
    }

    #[test]
    fn booleans_parse_like_go_pflag() {
        assert_eq!(parse(&[]), RegistryFlags::default());
        let on = parse(&["--insecure", "--skip-tls-verify-pull=true"]);
        assert!(on.insecure && on.skip_tls_verify_pull);
        let off = parse(&["--insecure=false", "--skip-tls-verify=false"]);
        assert!(!off.insecure && !off.skip_tls_verify);
        assert!(Cli::try_parse_from(["prog", "--insecure=maybe"]).is_err());
        // Go's other spellings, as pflag reads them.
        let go = parse(&[
            "--insecure=1",
            "--skip-tls-verify=T",
            "--insecure-pull=False",
        ]);
        assert!(go.insecure && go.skip_tls_verify && !go.insecure_pull);
    }

    #[test]
    fn options_follow_the_flags() {
        let flags = parse(&[
            "--insecure-pull",
            "--insecure-registry",
            "a:5000",
            "--insecure-registry=b",
            "--skip-tls-verify-registry",
            "c",
            "--registry-mirror=m/hub",
        ]);
        let arm: Platform = "linux/arm64".parse().unwrap();
        let o = flags.options(arm.clone());
        // Pull-only insecurity stays pull-only.
        assert!(o.insecure_pull && !o.insecure && !o.skip_tls_verify);
        assert_eq!(o.insecure_registries, ["a:5000", "b"]);
        assert_eq!(o.skip_tls_verify_registries, ["c"]);
        assert_eq!(o.mirrors, ["m/hub"]);
        assert_eq!(o.platform, arm);
        let d = RegistryOptions::default();
        assert!(o.registry_maps.is_empty());
        assert_eq!(
            (o.push_retries, o.pull_retries, o.retry_base_delay),
            (d.push_retries, d.pull_retries, d.retry_base_delay)
        );
        assert!(
            parse(&["--skip-tls-verify"])
                .options(arm.clone())
                .skip_tls_verify
        );
        let o = parse(&["--skip-tls-verify-pull"]).options(arm.clone());
        assert!(o.skip_tls_verify_pull && !o.skip_tls_verify);
        let o = parse(&["--insecure"]).options(arm.clone());
        assert!(o.insecure && !o.insecure_pull);
        // The warmer only pulls: its --insecure is a pull setting.
        let o = parse(&["--insecure"]).pull_only_options(arm);
        assert!(o.insecure_pull && !o.insecure);
    }

    #[test]
    fn tls_files_and_fallback_parse_like_kaniko() {
        let f = parse(&[
            "--registry-certificate",
            "a.io=/c/a.pem",
            "--registry-certificate=b.io:5000=/c/b=1.pem",
            "--registry-client-cert=a.io=/c/cert.pem,/c/key.pem",
            "--skip-default-registry-fallback",
        ]);
        let o = f.options(Platform::default());
        assert_eq!(
            o.registry_certificates,
            [
                ("a.io".to_string(), PathBuf::from("/c/a.pem")),
                ("b.io:5000".to_string(), PathBuf::from("/c/b=1.pem"))
            ]
        );
        assert_eq!(
            o.registry_client_certs,
            [ClientCert {
                registry: "a.io".into(),
                cert: "/c/cert.pem".into(),
                key: "/c/key.pem".into()
            }]
        );
        assert!(o.skip_default_registry_fallback);
        assert!(
            !parse(&[])
                .options(Platform::default())
                .skip_default_registry_fallback
        );
        for bad in [
            "--registry-certificate=a.io",
            "--registry-certificate==/c/a.pem",
            "--registry-client-cert=a.io=/c/cert.pem",
            "--registry-client-cert=a.io=/c/cert.pem,/c/key.pem,/c/x",
            "--registry-client-cert=a.io=,/c/key.pem",
        ] {
            assert!(Cli::try_parse_from(["prog", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_have_defaults_and_take_units() {
        let d = parse(&[]);
        assert_eq!(d.max_manifest_size, Limit::at(4 << 20));
        assert_eq!(d.max_layer_size, Limit::at(10 << 30));
        let o = d.options(Platform::default());
        assert_eq!(o.max_manifest_size, 4 << 20);
        assert_eq!(o.max_layer_size, Some(10 << 30));
        let f = parse(&["--max-manifest-size=1KiB", "--max-layer-size", "unlimited"]);
        let o = f.options(Platform::default());
        assert_eq!((o.max_manifest_size, o.max_layer_size), (1024, None));
        let f = parse(&["--max-manifest-size=unlimited"]);
        assert_eq!(f.options(Platform::default()).max_manifest_size, u64::MAX);
        assert!(Cli::try_parse_from(["prog", "--max-layer-size=1MB"]).is_err());
        assert!(Cli::try_parse_from(["prog", "--max-manifest-size=0"]).is_err());
    }
}

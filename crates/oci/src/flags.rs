//! The registry flags kiln-executor and kiln-warmer share, defined once so both spell, default,
//! parse and document them alike, and what they mean as [`RegistryOptions`]. Only flags both
//! programs take belong here (`--custom-platform` is not: the warmer alone also accepts kaniko
//! warmer's `--customPlatform`; both read its value with [`crate::platform::from_flag`]); it
//! parses nothing else and never contacts a registry.

use clap::{ArgAction, Args};

use crate::platform::Platform;
use crate::registry::RegistryOptions;

/// How to reach registries, as kaniko spells it. Booleans accept `--flag`, `--flag=true` and
/// `--flag=false` like Go's pflag, so kaniko invocations work unchanged. Flattened into each
/// program's command line with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RegistryFlags {
    /// Reach every registry over plain HTTP.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub insecure: bool,

    /// Pull over plain HTTP.
    #[arg(long = "insecure-pull", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub insecure_pull: bool,

    /// Registry (host[:port]) to reach over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,

    /// Reach every registry over HTTPS without verifying certificates.
    #[arg(long = "skip-tls-verify", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub skip_tls_verify: bool,

    /// Pull over HTTPS without verifying certificates.
    #[arg(long = "skip-tls-verify-pull", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub skip_tls_verify_pull: bool,

    /// Registry (host[:port]) to reach over HTTPS without verifying certificates; repeatable.
    #[arg(long = "skip-tls-verify-registry")]
    pub skip_tls_verify_registries: Vec<String>,

    /// Mirror tried before docker.io for Docker Hub images; repeatable.
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
}

impl RegistryFlags {
    /// Registry options for pulling (and pushing) images of `platform`. The `-pull` variants
    /// apply to every request: Kiln's client has one transport setting per registry, and both
    /// programs have always read them that way. Options without a shared flag keep their
    /// [`RegistryOptions::default`].
    pub fn options(&self, platform: Platform) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure || self.insecure_pull,
            insecure_registries: self.insecure_registries.clone(),
            skip_tls_verify: self.skip_tls_verify || self.skip_tls_verify_pull,
            skip_tls_verify_registries: self.skip_tls_verify_registries.clone(),
            mirrors: self.registry_mirrors.clone(),
            platform,
            ..RegistryOptions::default()
        }
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
        assert!(o.insecure && !o.skip_tls_verify);
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
        assert!(parse(&["--skip-tls-verify"]).options(arm).skip_tls_verify);
    }
}

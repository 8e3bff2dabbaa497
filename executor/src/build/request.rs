//! The build request: the one reader of the command line ([`Options`]) in the build. Checks the
//! flags and turns them into a plain [`BuildRequest`] that the rest of the build reads. It
//! opens nothing, contacts nothing and logs nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::BuildError;
use crate::cache::layer::CacheRepo;
pub use crate::cli::ImageFormat;
use crate::cli::{CompressionFlag, IsolationFlag, Options};
use crate::commands::CacheFlags;
use crate::context::ContextOptions;
use crate::run::Isolation;
use crate::snapshot::LayerOptions;
use crate::unpack::LayerBounds;
use kiln_oci::limits::Limit;
use kiln_oci::registry::{Platform, RegistryOptions};

/// Everything a build is asked to do.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// `--context` as given.
    pub context: String,
    pub context_options: ContextOptions,
    /// `--dockerfile` as given (found later, against the context).
    pub dockerfile: String,
    pub destinations: Vec<String>,
    /// `--no-push` (or `KANIKO_NO_PUSH`).
    pub no_push: bool,
    /// `--push-ignore-immutable-tag-errors`.
    pub ignore_immutable_tag_errors: bool,
    /// `--image-fs-extract-retry`: how many more times a failed base-image unpack is tried.
    pub extract_retries: u32,
    /// `--force-build-metadata`: every step gets a layer, even an empty one.
    pub force_build_metadata: bool,
    /// `--target`: a stage name or index.
    pub target: Option<String>,
    /// `--skip-unused-stages=false`: build every stage up to the target.
    pub build_all_stages: bool,
    pub build_args: BTreeMap<String, String>,
    /// `--label KEY=VALUE` as given.
    pub labels: Vec<String>,
    /// The platform this build is for (the first of `platforms`).
    pub platform: Platform,
    /// Every platform `--custom-platform` names, in order: more than one makes a build per
    /// platform, pushed as one image index (see `multi`).
    pub platforms: Vec<Platform>,
    /// This build is one platform's of several: its image is pushed by digest only, and the
    /// index, the files and the result files are written by the build of all platforms.
    pub index_member: bool,
    /// `--image-format`: OCI or Docker media types for the manifest, config, layers and index.
    pub image_format: ImageFormat,
    /// What the platform builds of one multi-platform build share (set by `multi` only).
    pub siblings: Option<std::sync::Arc<super::multi::Siblings>>,
    /// Whether `--custom-platform` named the platform (else it is this machine's). As in
    /// BuildKit, a named target platform is the image config's platform even when the final
    /// stage's `FROM --platform` names another; otherwise the config keeps its base's.
    pub platform_explicit: bool,
    pub registry: RegistryOptions,
    /// `--max-layer-size` and `--max-layer-entries`, for every layer the build unpacks.
    pub layer_bounds: LayerBounds,
    /// `--max-build-size`.
    pub max_build_size: Limit,
    pub isolation: Isolation,
    /// `--kiln-dir`.
    pub kiln_dir: Option<String>,
    /// `--ignore-path`, as given.
    pub ignore_paths: Vec<String>,
    pub ignore_var_run: bool,
    pub reproducible: bool,
    /// `SOURCE_DATE_EPOCH` (seconds since the Unix epoch): the `--build-arg` of that name, else
    /// the executor's environment variable, as docker buildx passes its client's on.
    pub source_date_epoch: Option<i64>,
    /// `--base-image-annotations`.
    pub base_image_annotations: bool,
    pub single_snapshot: bool,
    pub layer_options: LayerOptions,
    pub layer_cache: LayerCacheRequest,
    pub cache_flags: CacheFlags,
    /// `--no-push-cache`.
    pub no_push_cache: bool,
    pub cache_ttl: Duration,
    /// `--cache-dir`: the base-image cache volume.
    pub cache_dir: Option<String>,
    /// `--secret`, read and checked, by id.
    pub secrets: BTreeMap<String, crate::run_mounts::SecretSource>,
    /// `--mount-cache-dir`.
    pub mount_cache_dir: Option<String>,
    /// `--ssh`, read and checked (keys loaded), by id.
    pub ssh: BTreeMap<String, crate::run_mounts::SshSource>,
    /// `--allow`.
    pub entitlements: crate::run::entitlements::Entitlements,
    pub outputs: Outputs,
}

/// `--secret` values by id; a later one with the same id wins, as in buildx.
fn secrets(
    opts: &Options,
) -> Result<BTreeMap<String, crate::run_mounts::SecretSource>, BuildError> {
    opts.secrets
        .iter()
        .map(|value| crate::run_mounts::parse_secret_flag(value).map_err(BuildError::Usage))
        .collect()
}

/// What `--cache` asks of the layer cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerCacheRequest {
    Off,
    /// `--cache` with `--single-snapshot`: there are no per-step layers to cache.
    IgnoredWithSingleSnapshot,
    On(CacheRepo),
}

/// Files the build writes besides pushing.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub oci_layout_path: Option<String>,
    pub tar_path: Option<String>,
    pub digest_file: Option<String>,
    pub image_name_with_digest_file: Option<String>,
    pub image_name_tag_with_digest_file: Option<String>,
}

impl BuildRequest {
    /// Check the flags and read them into a request. `in_container` says why Kiln believes it
    /// runs in a container, if it does (it decides the default isolation).
    pub fn from_options(
        opts: &Options,
        in_container: Option<String>,
    ) -> Result<BuildRequest, BuildError> {
        if opts.destinations.is_empty() && !opts.no_push && opts.oci_layout_path.is_none() {
            return Err(BuildError::Usage(
                "no --destination given: name one (repeatable), or pass --no-push (optionally with --oci-layout-path)".into(),
            ));
        }
        let isolation = isolation_for(opts, in_container)?;
        let mut context_options =
            ContextOptions::from_flags(&opts.context_sub_path, opts.git.as_deref())
                .map_err(BuildError::Usage)?;
        if let Some(dir) = &opts.git_secret_dir {
            let (credentials, ssh) =
                crate::context::git_secret_from_dir(Path::new(dir)).map_err(BuildError::Usage)?;
            if credentials.is_some() {
                context_options.git.credentials = credentials;
            }
            context_options.git.ssh = ssh;
        }
        let platforms = kiln_oci::platform::list_from_flag(opts.custom_platform.as_deref())
            .map_err(|e| BuildError::Usage(format!("--custom-platform {e}")))?;
        let platform = platforms[0].clone();
        let cache_ttl = opts.cache_ttl().map_err(BuildError::Usage)?;
        let mut build_args: BTreeMap<String, String> = opts.build_arg_pairs().into_iter().collect();
        // BuildKit's clients pass their `$SOURCE_DATE_EPOCH` on as the build arg.
        if !build_args.contains_key(SOURCE_DATE_EPOCH) {
            if let Ok(v) = std::env::var(SOURCE_DATE_EPOCH) {
                build_args.insert(SOURCE_DATE_EPOCH.to_string(), v);
            }
        }
        let source_date_epoch =
            source_date_epoch(build_args.get(SOURCE_DATE_EPOCH).map(String::as_str))?;
        let layer_cache = layer_cache(opts)?;
        let compression = opts.layer_compression().map_err(BuildError::Usage)?;
        if opts.image_format == ImageFormat::Docker && opts.compression == CompressionFlag::Zstd {
            return Err(BuildError::Usage(
                "--compression=zstd with --image-format=docker: Docker's image format has no zstd \
                 layers (use --image-format=oci, or gzip)"
                    .into(),
            ));
        }
        Ok(BuildRequest {
            context: opts.effective_context(),
            context_options,
            dockerfile: opts.dockerfile.clone(),
            destinations: opts.destinations.clone(),
            no_push: opts.no_push,
            ignore_immutable_tag_errors: opts.push_ignore_immutable_tag_errors,
            extract_retries: opts.image_fs_extract_retry.unwrap_or(0),
            force_build_metadata: opts.force_build_metadata,
            // kaniko's `--target ""` (its default, and what pipelines pass for "no target")
            // builds the last stage.
            target: opts.target.clone().filter(|t| !t.is_empty()),
            build_all_stages: opts.skip_unused_stages == Some(false),
            build_args,
            labels: opts.labels.clone(),
            registry: registry_options(opts, platform.clone(), &layer_cache),
            layer_bounds: LayerBounds {
                size: opts.registry.max_layer_size,
                entries: opts.max_layer_entries,
            },
            max_build_size: opts.max_build_size,
            platform,
            platforms,
            index_member: false,
            image_format: opts.image_format,
            siblings: None,
            platform_explicit: opts.custom_platform.is_some(),
            isolation,
            kiln_dir: opts.kiln_dir.clone(),
            ignore_paths: opts.ignore_paths.clone(),
            ignore_var_run: opts.ignore_var_run,
            reproducible: opts.reproducible,
            source_date_epoch,
            base_image_annotations: opts.base_image_annotations,
            single_snapshot: opts.single_snapshot,
            layer_options: LayerOptions {
                reproducible: opts.reproducible,
                compression,
            },
            layer_cache,
            cache_flags: CacheFlags {
                run: opts.cache_run_layers,
                copy: opts.cache_copy_layers,
            },
            no_push_cache: opts.no_push_cache,
            cache_ttl,
            cache_dir: opts.base_cache_dir(),
            secrets: secrets(opts)?,
            ssh: opts
                .ssh
                .iter()
                .map(|v| crate::run_mounts::parse_ssh_flag(v).map_err(BuildError::Usage))
                .collect::<Result<_, _>>()?,
            mount_cache_dir: opts.mount_cache_dir.clone().filter(|d| !d.is_empty()),
            entitlements: crate::run::entitlements::Entitlements::from_flags(&opts.allow)
                .map_err(BuildError::Usage)?,
            outputs: Outputs {
                oci_layout_path: opts.oci_layout_path.clone(),
                tar_path: opts.tar_path.clone(),
                digest_file: opts.digest_file.clone(),
                image_name_with_digest_file: opts.image_name_with_digest_file.clone(),
                image_name_tag_with_digest_file: opts.image_name_tag_with_digest_file.clone(),
            },
        })
    }
}

/// The isolation for the flags, given why Kiln believes it is in a container (if it does).
pub fn isolation_for(
    opts: &Options,
    in_container: Option<String>,
) -> Result<Isolation, BuildError> {
    match opts.isolation {
        IsolationFlag::Chroot => Ok(Isolation::Chroot),
        IsolationFlag::Auto if in_container.is_some() => Ok(Isolation::InPlace),
        IsolationFlag::Auto => Ok(Isolation::Chroot),
        IsolationFlag::InPlace if in_container.is_some() || opts.force => Ok(Isolation::InPlace),
        IsolationFlag::InPlace => Err(BuildError::Usage(
            "refusing to build in place over / outside a container: it would overwrite this machine's files. \
             Use --isolation=chroot (the default outside containers), or --force if this really is a disposable container"
                .into(),
        )),
    }
}

/// The layer cache the flags ask for.
fn layer_cache(opts: &Options) -> Result<LayerCacheRequest, BuildError> {
    if !opts.cache {
        return Ok(LayerCacheRequest::Off);
    }
    if opts.single_snapshot {
        return Ok(LayerCacheRequest::IgnoredWithSingleSnapshot);
    }
    CacheRepo::from_flags(opts.cache_repo.as_deref(), &opts.destinations)
        .map(LayerCacheRequest::On)
        .ok_or_else(|| {
            BuildError::Usage("--cache needs a cache repository: pass --cache-repo (a repository or oci:/path) or a --destination".into())
        })
}

/// The registry options of the flags. The repositories the build writes (its destinations and
/// its layer cache) are read with the push settings, as kaniko reads its cache repository.
fn registry_options(
    opts: &Options,
    platform: Platform,
    layer_cache: &LayerCacheRequest,
) -> RegistryOptions {
    let mut push_repositories = opts.destinations.clone();
    if let LayerCacheRequest::On(CacheRepo::Registry(repo)) = layer_cache {
        push_repositories.push(repo.clone());
    }
    RegistryOptions {
        push_repositories,
        ..opts.registry_options(platform)
    }
}

pub(super) const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// `SOURCE_DATE_EPOCH` read as BuildKit reads it: empty is unset, anything else must be a whole
/// number of seconds since the Unix epoch.
pub(super) fn source_date_epoch(value: Option<&str>) -> Result<Option<i64>, BuildError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let epoch: i64 = v.parse().map_err(|_| {
        BuildError::Usage(format!(
            "invalid SOURCE_DATE_EPOCH {:?}: expected a whole number of seconds since 1970-01-01 \
             UTC, e.g. $(git log -1 --pretty=%ct)",
            kiln_dockerfile::excerpt::excerpt(v)
        ))
    })?;
    if chrono::DateTime::from_timestamp(epoch, 0).is_none() {
        return Err(BuildError::Usage(format!(
            "invalid SOURCE_DATE_EPOCH {epoch}: out of the range of dates"
        )));
    }
    Ok(Some(epoch))
}

/// `epoch` as the RFC 3339 time of image configs (`2024-01-01T00:00:00Z`).
pub fn epoch_timestamp(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn opts(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("kiln-executor").chain(args.iter().copied()))
            .expect("flags parse")
    }

    fn request(args: &[&str]) -> Result<BuildRequest, BuildError> {
        BuildRequest::from_options(&opts(args), None)
    }

    #[test]
    fn in_place_outside_a_container_needs_force() {
        let container = Some("KILN_CONTAINER is set".to_string());
        let refused = isolation_for(&opts(&["--isolation=in-place"]), None).unwrap_err();
        assert!(
            refused.to_string().contains("refusing to build in place"),
            "{refused}"
        );
        assert_eq!(
            isolation_for(&opts(&["--isolation=in-place", "--force"]), None).unwrap(),
            Isolation::InPlace
        );
        assert_eq!(isolation_for(&opts(&[]), None).unwrap(), Isolation::Chroot);
        assert_eq!(
            isolation_for(&opts(&[]), container.clone()).unwrap(),
            Isolation::InPlace
        );
        assert_eq!(
            isolation_for(&opts(&["--isolation=chroot"]), container).unwrap(),
            Isolation::Chroot
        );
    }

    #[test]
    fn an_empty_target_is_the_last_stage_as_in_kaniko() {
        let r = request(&["--no-push", "--target", ""]).unwrap();
        assert_eq!(r.target, None);
        let r = request(&["--no-push", "--target", "build"]).unwrap();
        assert_eq!(r.target.as_deref(), Some("build"));
    }

    #[test]
    fn destinations_and_usage_errors() {
        let err = request(&[]).unwrap_err();
        assert!(err.to_string().contains("no --destination given"), "{err}");
        assert!(request(&["--no-push"]).is_ok());
        assert!(request(&["--oci-layout-path=/tmp/x"]).is_ok());
        let err = request(&["--no-push", "--custom-platform=linux"]).unwrap_err();
        assert!(matches!(err, BuildError::Usage(_)), "{err}");
        let err = request(&["--no-push", "--cache-ttl=soon"]).unwrap_err();
        assert!(err.to_string().contains("--cache-ttl=soon"), "{err}");
        let err = request(&["--no-push", "--cache"]).unwrap_err();
        assert!(
            err.to_string().contains("--cache needs a cache repository"),
            "{err}"
        );
    }

    #[test]
    fn flags_become_plain_settings() {
        let r = request(&[
            "-d",
            "reg:5000/a/b:1",
            "--insecure-pull",
            "--skip-tls-verify-pull",
            "--push-retry=3",
            "--build-arg",
            "A=1",
            "--skip-unused-stages=false",
            "--cache",
            "--cache-copy-layers",
            "--custom-platform=linux/arm64/v8",
            "--reproducible",
        ])
        .unwrap();
        // Pull-only insecurity stays pull-only.
        assert!(r.registry.insecure_pull && r.registry.skip_tls_verify_pull);
        assert!(!r.registry.insecure && !r.registry.skip_tls_verify);
        assert_eq!(
            r.registry.push_repositories,
            ["reg:5000/a/b:1", "reg:5000/a/b/cache"]
        );
        assert_eq!(r.registry.push_retries, 3);
        assert_eq!(r.registry.platform, r.platform);
        assert_eq!(r.platform.architecture, "arm64");
        assert_eq!(r.build_args.get("A").map(String::as_str), Some("1"));
        assert!(r.build_all_stages);
        assert_eq!(
            r.layer_cache,
            LayerCacheRequest::On(CacheRepo::Registry("reg:5000/a/b/cache".into()))
        );
        assert_eq!(
            r.cache_flags,
            CacheFlags {
                run: true,
                copy: true
            }
        );
        assert!(r.layer_options.reproducible);
        assert_eq!(r.cache_ttl, Duration::from_secs(336 * 3600));
        assert_eq!(r.layer_bounds, LayerBounds::default());
        assert_eq!(r.max_build_size, Limit::at(50 << 30));
        let r = request(&[
            "--no-push",
            "--max-layer-size=1MiB",
            "--max-layer-entries=10",
            "--max-build-size=2MiB",
            "--max-manifest-size=1KiB",
        ])
        .unwrap();
        assert_eq!(
            r.layer_bounds,
            LayerBounds {
                size: Limit::at(1 << 20),
                entries: Limit::at(10)
            }
        );
        assert_eq!(r.max_build_size, Limit::at(2 << 20));
        assert_eq!(r.registry.max_layer_size, Some(1 << 20));
        assert_eq!(r.registry.max_manifest_size, 1024);
        let r = request(&["--no-push", "--cache", "--single-snapshot"]).unwrap();
        assert_eq!(r.layer_cache, LayerCacheRequest::IgnoredWithSingleSnapshot);
        assert!(!request(&["--no-push"]).unwrap().build_all_stages);
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    #[test]
    fn source_date_epoch_is_whole_seconds_or_refused_by_name() {
        assert_eq!(source_date_epoch(None).unwrap(), None);
        assert_eq!(source_date_epoch(Some("")).unwrap(), None);
        assert_eq!(
            source_date_epoch(Some("1704067200")).unwrap(),
            Some(1_704_067_200)
        );
        assert_eq!(epoch_timestamp(1_704_067_200), "2024-01-01T00:00:00Z");
        for bad in ["1.5", "yesterday", "context", "99999999999999999"] {
            let e = source_date_epoch(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("invalid SOURCE_DATE_EPOCH"), "{bad}: {e}");
        }
    }
}

//! kiln-warmer's logic: turns flags into a list of base images, pulls each into the
//! base-image cache ([`kiln_oci::base_cache`]) unless a fresh verified copy is there,
//! and reports the digests. It defines no cache format and no Dockerfile rules of its own
//! (stages are resolved by [`kiln_dockerfile::stages`]) and never builds images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{ArgAction, Parser};
use futures_util::StreamExt;
use kiln_common::termination;
use kiln_dockerfile::excerpt::{bounded, excerpt, MESSAGE_BYTES};
use kiln_dockerfile::stages::{
    build_args_from_flags, Base, FromPlatform, MetaArgError, StageError, Stages,
};
use kiln_dockerfile::{self as dockerfile, ExpandError};
use kiln_oci::base_cache::{BaseImageCache, CacheError, Stored};
use kiln_oci::flags::RegistryFlags;
use kiln_oci::platform;
use kiln_oci::registry::{normalize_reference, Keychain, Platform, Registry};

/// How many images are warmed at once (each also fetches several layers at once).
pub const IMAGE_CONCURRENCY: usize = 3;
/// Temporary files older than this are leftovers of a killed warmer: a live download
/// touches its file continuously.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(600);
pub use kiln_common::termination::{TERMINATION_LOG, TERMINATION_LOG_ENV};

/// The logging flags and their values, shared with the executor so both programs take the same.
pub use kiln_common::logging::{LogFlags, LogFormat, Verbosity};

/// kaniko warmer's command line, with the executor's registry flags. Values are read as Go's
/// pflag reads them: booleans take `--flag` or `--flag=VALUE` with Go's spellings, and a
/// single-valued flag given twice keeps the last value.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kiln-warmer",
    version,
    about = "Pull base images into a cache directory (an OCI image layout) for kiln-executor --cache-dir",
    args_override_self = true
)]
pub struct Args {
    /// Image to warm; repeatable.
    #[arg(short = 'i', long = "image")]
    pub images: Vec<String>,

    /// Warm the base image of every stage of this Dockerfile.
    #[arg(short = 'd', long)]
    pub dockerfile: Option<PathBuf>,

    /// Build argument `KEY=VALUE` for expanding the Dockerfile's FROM lines; a bare `KEY`
    /// takes its value from the environment.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,

    /// The cache directory (an OCI image layout, created when absent).
    #[arg(short = 'c', long = "cache-dir", default_value = "/cache")]
    pub cache_dir: PathBuf,

    /// How long an image warmed from a tag stays current (Go duration, e.g. `336h`).
    #[arg(long = "cache-ttl", default_value = "336h", value_parser = parse_ttl)]
    pub cache_ttl: Duration,

    /// Pull again even when a current copy is cached.
    #[arg(short = 'f', long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = kiln_common::goflag::parse_bool)]
    pub force: bool,

    /// Platform to warm, e.g. `linux/arm64/v8` (default: this machine's); several separated by
    /// commas warm every image for each.
    // Not a shared registry flag: kaniko's warmer spells it `--customPlatform`, its executor
    // does not, and the executor keeps refusing that spelling.
    #[arg(long = "custom-platform", alias = "customPlatform")]
    pub custom_platform: Option<String>,

    /// The registry flags kiln-executor takes too.
    #[command(flatten)]
    pub registry: RegistryFlags,

    /// Pull images of a registry from others first: `ORIGINAL=REMAP` pairs separated by `;`
    /// (repeatable), as kaniko warmer's `--registry-map`; `$KANIKO_REGISTRY_MAP` adds more.
    #[arg(long = "registry-map")]
    pub registry_map: Vec<String>,

    /// The logging flags kiln-executor takes too.
    #[command(flatten)]
    pub logging: LogFlags,
}

impl Args {
    /// kaniko warmer's environment rule (`cmd/warmer/cmd/root.go`): `KANIKO_REGISTRY_MAP`, when
    /// set and not empty, adds `--registry-map` entries after those of the command line.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(map) = env("KANIKO_REGISTRY_MAP").filter(|m| !m.is_empty()) {
            self.registry_map.push(map);
        }
    }

    /// Registry options for pulling images of `platform`: the shared registry flags (the warmer
    /// only pulls) and `--registry-map`.
    pub fn registry_options(&self, platform: Platform) -> kiln_oci::registry::RegistryOptions {
        kiln_oci::registry::RegistryOptions {
            registry_maps: self.registry_map.clone(),
            ..self.registry.pull_only_options(platform)
        }
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    match kiln_common::duration::parse_ns(s) {
        Some(ns) if ns >= 0 => Ok(Duration::from_nanos(ns as u64)),
        _ => Err(format!(
            "invalid duration {s:?}: write a Go duration such as 336h, 90m or 1h30m"
        )),
    }
}

/// Why a warm failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("nothing to warm: give --image (repeatable) or --dockerfile")]
    NothingToWarm,
    #[error("invalid --custom-platform: {0}")]
    Platform(String),
    #[error("cannot read Dockerfile {path}: {source}")]
    ReadDockerfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `detail` is the parser's error (`line N: …`, bounded): invalid UTF-8 is named by its line
    /// and byte offset, as the executor names it.
    #[error("cannot parse Dockerfile {path}: {detail}")]
    ParseDockerfile { path: PathBuf, detail: String },
    /// `base` is an excerpt of the FROM value as written ([`kiln_dockerfile::excerpt`]).
    #[error("Dockerfile {path} line {line}: cannot expand `FROM {base}`: {source}; pass the missing values with --build-arg")]
    ExpandFrom {
        path: PathBuf,
        line: usize,
        base: String,
        #[source]
        source: ExpandError,
    },
    /// A global ARG whose default cannot be expanded (its line, and excerpts of its name and
    /// default).
    #[error("Dockerfile {path} {source}; pass the missing values with --build-arg")]
    ExpandArg {
        path: PathBuf,
        #[source]
        source: Box<MetaArgError>,
    },
    /// `base` is an excerpt of the FROM value as written.
    #[error("Dockerfile {path} line {line}: cannot expand `FROM {base}`: it expands to nothing; pass the missing values with --build-arg")]
    EmptyFrom {
        path: PathBuf,
        line: usize,
        base: String,
    },
    /// `platform` is an excerpt of the expanded `--platform` value.
    #[error("Dockerfile {path} line {line}: invalid --platform {platform:?}: {detail}")]
    StagePlatform {
        path: PathBuf,
        line: usize,
        platform: String,
        detail: String,
    },
    #[error("invalid image reference {reference:?}: {detail}")]
    Reference { reference: String, detail: String },
    #[error("cannot use the cache directory: {0}")]
    Cache(#[source] CacheError),
    #[error("cannot set up registry access: {0}")]
    Registry(#[source] kiln_oci::registry::RegistryError),
    #[error("{failed} of {total} images could not be warmed:\n{details}")]
    Failed {
        failed: usize,
        total: usize,
        details: String,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// One image to warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Normalised reference, e.g. `docker.io/library/debian:bookworm`.
    pub reference: String,
    pub platform: Platform,
}

/// How an image got into the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A current, verified copy was already there: nothing downloaded.
    Cached,
    /// Pulled (manifest and config always; layers that were missing, damaged or forced).
    Pulled {
        fetched_layers: usize,
        reused_layers: usize,
        fetched_bytes: u64,
    },
}

/// One warmed image.
#[derive(Debug, Clone)]
pub struct Warmed {
    pub target: Target,
    pub digest: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// Compact JSON `{"images":[{"reference":"…","digest":"sha256:…"}]}`.
pub fn termination_message(warmed: &[Warmed]) -> String {
    termination::to_json(&termination::WarmMessage {
        images: warmed
            .iter()
            .map(|w| termination::WarmedImage {
                reference: w.target.reference.clone(),
                digest: w.digest.clone(),
            })
            .collect(),
    })
}

/// Writes the termination message (see [`kiln_common::termination::write`]). Returns the path.
pub fn write_termination_log(warmed: &[Warmed]) -> std::io::Result<Option<PathBuf>> {
    termination::write(&termination_message(warmed))
}

/// `--build-arg` values; a bare `KEY` reads the environment and is dropped when unset.
pub fn build_arg_map(build_args: &[String]) -> BTreeMap<String, String> {
    build_args_from_flags(build_args).into_iter().collect()
}

/// The base images of every stage of a Dockerfile: FROM values expanded with the global
/// ARGs (defaults overridden by `build_args`) and the automatic platform ARGs, each for the
/// platform its `FROM --platform` names (else `platform`); `scratch` and references to earlier
/// stages are skipped; duplicates are listed once.
pub fn dockerfile_targets(
    path: &Path,
    text: &str,
    build_args: &BTreeMap<String, String>,
    platform: &Platform,
) -> Result<Vec<Target>, WarmError> {
    let parsed = dockerfile::parse(text).map_err(|e| WarmError::ParseDockerfile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let stages = Stages::new(
        &parsed,
        build_args,
        platform::automatic_args(platform),
        FromPlatform::Honour,
    );
    // The executor builds on with a default it cannot expand; a warm would then fetch the
    // wrong image (or none), so it stops here instead.
    if let Some(e) = stages.unexpanded_defaults().first() {
        return Err(WarmError::ExpandArg {
            path: path.to_path_buf(),
            source: Box::new(e.clone()),
        });
    }
    let mut out: Vec<Target> = Vec::new();
    for stage in stages.all() {
        let stage = stage.map_err(|e| match e {
            StageError::ExpandFrom { line, from, source }
            | StageError::ExpandPlatform {
                line, from, source, ..
            } => WarmError::ExpandFrom {
                path: path.to_path_buf(),
                line,
                base: from,
                source,
            },
        })?;
        let stage_platform =
            platform::for_stage(stage.platform.as_deref(), platform).map_err(|detail| {
                WarmError::StagePlatform {
                    path: path.to_path_buf(),
                    line: stage.line,
                    platform: excerpt(stage.platform.as_deref().unwrap_or_default()),
                    detail: bounded(&detail, MESSAGE_BYTES),
                }
            })?;
        let Base::Image(reference) = &stage.base else {
            continue;
        };
        if reference.trim().is_empty() {
            return Err(WarmError::EmptyFrom {
                path: path.to_path_buf(),
                line: stage.line,
                base: excerpt(&parsed.stages[stage.index].base),
            });
        }
        // The reference comes from the Dockerfile (expanded): quote it only in excerpts.
        let t = target(reference, stage_platform).map_err(|e| match e {
            WarmError::Reference { reference, detail } => WarmError::Reference {
                reference: excerpt(&reference),
                detail: bounded(&detail, MESSAGE_BYTES),
            },
            other => other,
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn target(reference: &str, platform: Platform) -> Result<Target, WarmError> {
    let reference = normalize_reference(reference).map_err(|e| WarmError::Reference {
        reference: reference.to_string(),
        detail: e.to_string(),
    })?;
    Ok(Target {
        reference,
        platform,
    })
}

/// Every image the flags ask for, `--image` first, each once, for every platform of
/// `--custom-platform` (one, or several separated by commas) in order.
pub fn targets(args: &Args) -> Result<Vec<Target>, WarmError> {
    let platforms =
        platform::list_from_flag(args.custom_platform.as_deref()).map_err(WarmError::Platform)?;
    let text = match &args.dockerfile {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| WarmError::ReadDockerfile {
                path: path.clone(),
                source,
            })?;
            // Bytes, not a string: invalid UTF-8 is reported with its line and offset, as the
            // executor reports it.
            Some(
                dockerfile::decode(&bytes)
                    .map_err(|e| WarmError::ParseDockerfile {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?
                    .to_string(),
            )
        }
        None => None,
    };
    let mut out: Vec<Target> = Vec::new();
    for platform in &platforms {
        for image in &args.images {
            let t = target(image, platform.clone())?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if let (Some(path), Some(text)) = (&args.dockerfile, &text) {
            let args_map = build_arg_map(&args.build_args);
            for t in dockerfile_targets(path, text, &args_map, platform)? {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(WarmError::NothingToWarm);
    }
    Ok(out)
}

/// Warms one image: a current verified copy is kept (unless `force`); a missing,
/// expired or damaged one is pulled.
pub async fn warm_one(
    cache: &BaseImageCache,
    registry: &Registry,
    target: &Target,
    force: bool,
) -> Result<Warmed, CacheError> {
    let started = Instant::now();
    if !force {
        let (c, r, p) = (
            cache.clone(),
            target.reference.clone(),
            target.platform.clone(),
        );
        // Verifying hashes every layer: blocking work, off the async threads.
        let found = tokio::task::spawn_blocking(move || c.lookup(&r, &p))
            .await
            .map_err(|e| CacheError::Io {
                action: "cannot look up",
                path: cache.dir().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
        match found {
            Ok(Some(image)) => {
                return Ok(Warmed {
                    target: target.clone(),
                    digest: image.manifest_digest,
                    outcome: Outcome::Cached,
                    elapsed: started.elapsed(),
                })
            }
            Ok(None) => {}
            Err(e) if e.is_damage() => {
                tracing::warn!(reference = %target.reference, error = %e, "cached copy is damaged; pulling it again");
            }
            Err(e) => return Err(e),
        }
    }
    let Stored {
        image,
        fetched_layers,
        reused_layers,
        fetched_bytes,
    } = cache.store(registry, &target.reference, force).await?;
    Ok(Warmed {
        target: target.clone(),
        digest: image.manifest_digest,
        outcome: Outcome::Pulled {
            fetched_layers,
            reused_layers,
            fetched_bytes,
        },
        elapsed: started.elapsed(),
    })
}

/// Warms every target, [`IMAGE_CONCURRENCY`] at a time, and returns one result per target
/// in the order given.
pub async fn warm_all(
    cache: &BaseImageCache,
    registries: &[(Platform, Registry)],
    targets: &[Target],
    force: bool,
) -> Vec<Result<Warmed, CacheError>> {
    let mut results: Vec<(usize, Result<Warmed, CacheError>)> =
        futures_util::stream::iter(targets.iter().enumerate())
            .map(|(i, t)| async move {
                let registry = registries
                    .iter()
                    .find(|(p, _)| *p == t.platform)
                    .map(|(_, r)| r)
                    .expect("a registry client exists for every target platform");
                let r = warm_one(cache, registry, t, force).await;
                log_result(t, &r);
                (i, r)
            })
            .buffer_unordered(IMAGE_CONCURRENCY)
            .collect()
            .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn log_result(t: &Target, r: &Result<Warmed, CacheError>) {
    match r {
        Ok(w) => {
            let seconds = w.elapsed.as_secs_f64();
            match &w.outcome {
                Outcome::Cached => tracing::info!(
                    reference = %t.reference,
                    platform = %t.platform,
                    digest = %w.digest,
                    status = "cached",
                    seconds,
                    "already cached and fresh, nothing downloaded"
                ),
                Outcome::Pulled {
                    fetched_layers,
                    reused_layers,
                    fetched_bytes,
                } => tracing::info!(
                    reference = %t.reference,
                    platform = %t.platform,
                    digest = %w.digest,
                    status = "pulled",
                    fetched_layers,
                    reused_layers,
                    fetched_bytes,
                    seconds,
                    "pulled into the cache"
                ),
            }
        }
        Err(e) => {
            tracing::error!(reference = %t.reference, platform = %t.platform, error = %e, "cannot warm image")
        }
    }
}

/// The whole warm: targets from the flags, the cache opened (and old temporary files of
/// interrupted runs removed), every image warmed, the termination message written. Fails
/// after trying every image if any failed, naming each.
pub fn run(args: &Args) -> Result<Vec<Warmed>, WarmError> {
    let targets = targets(args)?;
    let cache = BaseImageCache::open(&args.cache_dir, args.cache_ttl).map_err(WarmError::Cache)?;
    match cache.clean_temp_files(STALE_TEMP_AGE) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed temporary files of interrupted warms"),
        Err(e) => tracing::warn!(error = %e, "cannot clean temporary files"),
    }
    let mut registries: Vec<(Platform, Registry)> = Vec::new();
    // One keychain for every platform's client: a credential helper is asked once per registry.
    let base_options = args.registry_options(Platform::default());
    let keychain = Keychain::load(
        base_options.docker_config.as_deref(),
        base_options.credential_helpers.clone(),
    )
    .map_err(WarmError::Registry)?;
    for t in &targets {
        if !registries.iter().any(|(p, _)| *p == t.platform) {
            let r = Registry::with_keychain(
                args.registry_options(t.platform.clone()),
                keychain.clone(),
            )
            .map_err(WarmError::Registry)?;
            registries.push((t.platform.clone(), r));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(WarmError::Runtime)?;
    let started = Instant::now();
    let results = runtime.block_on(warm_all(&cache, &registries, &targets, args.force));

    let mut warmed = Vec::new();
    let mut failures = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        match r {
            Ok(w) => warmed.push(w),
            Err(e) => failures.push(format!("  {} ({}): {e}", t.reference, t.platform)),
        }
    }
    let cached = warmed
        .iter()
        .filter(|w| w.outcome == Outcome::Cached)
        .count();
    tracing::info!(
        images = targets.len(),
        cached,
        pulled = warmed.len() - cached,
        failed = failures.len(),
        seconds = started.elapsed().as_secs_f64(),
        cache_dir = %args.cache_dir.display(),
        "warm finished"
    );
    if !failures.is_empty() {
        return Err(WarmError::Failed {
            failed: failures.len(),
            total: targets.len(),
            details: failures.join("\n"),
        });
    }
    match write_termination_log(&warmed) {
        Ok(Some(p)) => tracing::debug!(path = %p.display(), "wrote the termination message"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot write the termination message"),
    }
    Ok(warmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        "linux/amd64".parse().unwrap()
    }

    #[test]
    fn flags_parse_like_kaniko_warmer() {
        let a = Args::try_parse_from([
            "kiln-warmer",
            "--image",
            "busybox",
            "-i",
            "debian:bookworm",
            "--cache-dir=/tmp/c",
            "--cache-ttl=1h30m",
            "--force",
            "--insecure-registry",
            "r:5000",
            "--customPlatform=linux/arm64",
        ])
        .unwrap();
        assert_eq!(a.images, ["busybox", "debian:bookworm"]);
        assert_eq!(a.cache_ttl, Duration::from_secs(5400));
        assert!(a.force);
        assert_eq!(a.custom_platform.as_deref(), Some("linux/arm64"));
        let t = targets(&a).unwrap();
        assert_eq!(t[0].reference, "docker.io/library/busybox:latest");
        assert_eq!(t[0].platform.architecture, "arm64");

        // Several platforms: every image for each, in order.
        let m = Args::try_parse_from([
            "kiln-warmer",
            "--image=busybox",
            "--image=debian:bookworm",
            "--custom-platform=linux/amd64,linux/arm64",
        ])
        .unwrap();
        let t: Vec<String> = targets(&m)
            .unwrap()
            .iter()
            .map(|t| format!("{} {}", t.reference, t.platform))
            .collect();
        assert_eq!(
            t,
            [
                "docker.io/library/busybox:latest linux/amd64",
                "docker.io/library/debian:bookworm linux/amd64",
                "docker.io/library/busybox:latest linux/arm64",
                "docker.io/library/debian:bookworm linux/arm64",
            ]
        );
        let bad =
            Args::try_parse_from(["kiln-warmer", "--image=b", "--custom-platform=linux/amd64,"])
                .unwrap();
        assert!(matches!(targets(&bad), Err(WarmError::Platform(_))));

        let d = Args::try_parse_from(["kiln-warmer"]).unwrap();
        assert_eq!(d.cache_ttl, Duration::from_secs(14 * 24 * 3600));
        assert_eq!(d.cache_dir, PathBuf::from("/cache"));
        assert!(!d.force);
        assert!(matches!(targets(&d), Err(WarmError::NothingToWarm)));
        assert!(Args::try_parse_from(["kiln-warmer", "--cache-ttl=2 weeks"]).is_err());
    }

    #[test]
    fn dockerfile_stages_give_their_bases() {
        let text = "ARG TAG=3.19\nARG REG=r.example:5000\n\
            FROM ${REG}/alpine:${TAG} AS build\nRUN true\n\
            FROM build AS test\n\
            FROM scratch\nCOPY --from=build /x /x\n\
            FROM --platform=$BUILDPLATFORM ${REG}/tools:1 AS tools\n\
            FROM Build\n\
            FROM ${REG}/alpine:${TAG}\n";
        let mut args = BTreeMap::new();
        args.insert("TAG".to_string(), "3.20".to_string());
        let t = dockerfile_targets(Path::new("Dockerfile"), text, &args, &amd64()).unwrap();
        let refs: Vec<&str> = t.iter().map(|t| t.reference.as_str()).collect();
        assert_eq!(
            refs,
            ["r.example:5000/alpine:3.20", "r.example:5000/tools:1"]
        );
        assert_eq!(t[1].platform, Platform::default());
    }

    #[test]
    fn unexpandable_from_names_the_line() {
        let e = dockerfile_targets(
            Path::new("Dockerfile"),
            "FROM ${NOPE:?unset}\n",
            &BTreeMap::new(),
            &amd64(),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("line 1") && s.contains("--build-arg"), "{s}");
    }

    #[test]
    fn unexpandable_global_arg_names_its_line() {
        let e = dockerfile_targets(
            Path::new("Dockerfile"),
            "ARG A=1\nARG BAD=${X:?needed}\nFROM img:${BAD}\n",
            &BTreeMap::new(),
            &amd64(),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            matches!(&e, WarmError::ExpandArg { source, .. } if source.line == 2),
            "{s}"
        );
        assert!(
            s.contains("line 2: cannot expand the default of `ARG BAD=${X:?needed}`")
                && s.contains("--build-arg"),
            "{s}"
        );
    }

    #[test]
    fn invalid_utf8_is_named_by_line_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, b"FROM busybox\nRUN echo \xff\n").unwrap();
        let args = Args::try_parse_from([
            "kiln-warmer".as_ref(),
            "--dockerfile".as_ref(),
            path.as_os_str(),
        ])
        .unwrap();
        let e = targets(&args).unwrap_err();
        let s = e.to_string();
        // The executor's wording, from kiln_dockerfile::decode.
        let expected = dockerfile::decode(b"FROM busybox\nRUN echo \xff\n")
            .unwrap_err()
            .to_string();
        assert!(matches!(e, WarmError::ParseDockerfile { .. }), "{s}");
        assert!(s.ends_with(&expected), "{s}");
        assert!(
            expected.starts_with("line 2: invalid UTF-8 at byte offset 22"),
            "{expected}"
        );
    }

    #[test]
    fn errors_quote_long_from_values_as_excerpts() {
        let empty = format!("ARG E=\nFROM {}\n", "${E}".repeat(100_000));
        let e = dockerfile_targets(Path::new("Dockerfile"), &empty, &BTreeMap::new(), &amd64())
            .unwrap_err();
        assert!(matches!(e, WarmError::EmptyFrom { line: 2, .. }), "{e}");
        assert!(e.to_string().len() < 400, "{e}");
        assert!(e.to_string().contains('…'), "{e}");

        let bad = format!("FROM {}\n", "A".repeat(1_000_000));
        let e = dockerfile_targets(Path::new("Dockerfile"), &bad, &BTreeMap::new(), &amd64())
            .unwrap_err();
        assert!(matches!(e, WarmError::Reference { .. }), "{e}");
        assert!(e.to_string().len() < 1000, "{e}");
    }

    #[test]
    fn termination_message_is_compact_json() {
        let w = Warmed {
            target: Target {
                reference: "r/a:1".into(),
                platform: amd64(),
            },
            digest: "sha256:x".into(),
            outcome: Outcome::Cached,
            elapsed: Duration::ZERO,
        };
        assert_eq!(
            termination_message(&[w]),
            r#"{"images":[{"reference":"r/a:1","digest":"sha256:x"}]}"#
        );
    }
}

//! The build: reads the request ([`request`]), the context and the Dockerfile, plans the stages
//! ([`plan`]) and each stage's steps ([`step`]), builds the needed stages in order (base images
//! from [`base`], the one step loop in [`stage`], the cache-only shortcut in [`skip_base`]), then
//! publishes the image ([`publish`]). Logs each step with its timing. Knows nothing of
//! Kubernetes.

mod base;
mod error;
mod lanes;
mod multi;
mod plan;
mod publish;
mod request;
mod skip_base;
mod stage;
mod step;
mod step_cache;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cache::layer::LayerCache;
use crate::cli::Options;
use crate::context::BuildContext;
use crate::layer::LayerFile;
use crate::run::Isolation;
use base::BaseImages;
use kiln_dockerfile::{self as dockerfile, Dockerfile};
use kiln_oci::base_cache::BaseImageCache;
use kiln_oci::image::{History, ImageConfig};
use kiln_oci::registry::Registry;
use plan::BuildPlan;
use publish::Publisher;
use request::LayerCacheRequest;
use step_cache::StepCache;

pub use error::BuildError;
pub use request::BuildRequest;

use error::io_err;

/// What a finished build produced.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// `sha256:…` of the manifest.
    pub digest: String,
    /// `destination@digest` for every pushed destination.
    pub references: Vec<String>,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    /// The commit of a git context.
    pub commit: Option<String>,
    /// The layer cache's hits and misses, when `--cache` was on.
    pub cache: Option<kiln_common::termination::CacheCounts>,
    /// Bytes of the image: config and (compressed) layers; of every platform's for an index.
    pub size: u64,
}

/// A finished stage: its root filesystem, config and layers.
#[derive(Clone)]
struct BuiltStage {
    root: PathBuf,
    config: ImageConfig,
    layers: Vec<LayerFile>,
}

/// Where a COPY/ADD reads from, once known.
enum SourceRef {
    Context,
    Root(PathBuf),
}

/// Build what the command line describes and write it to every output.
pub fn run_build(opts: &Options) -> Result<BuildResult, BuildError> {
    let request = BuildRequest::from_options(opts, crate::container::detect())?;
    build(&request)
}

/// Build what `req` describes and write it to every output.
pub fn build(req: &BuildRequest) -> Result<BuildResult, BuildError> {
    // RUN steps start the next step's sandbox ahead; what no step took ends with the build.
    let _spares = crate::run::SparesReleased;
    if req.platforms.len() > 1 {
        return multi::build_platforms(req);
    }
    let (work_dir, _temp_guard) = work_dir(req)?;
    // Dropped before the guard: waits for its thread unless the work directory is kept.
    let trash = Arc::new(crate::stage_files::Trash::new(
        work_dir.join("trash"),
        _temp_guard.is_none() && !req.index_member,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("starting the async runtime"))?;

    let mut context = BuildContext::open_with(
        &req.context,
        &work_dir.join("context"),
        &req.context_options,
    )?;
    let commit = context.commit().map(str::to_string);
    let dockerfile_path = locate_dockerfile(&req.dockerfile, context.root())?;
    context.load_ignore(&dockerfile_path)?;
    let text = std::fs::read(&dockerfile_path).map_err(|source| BuildError::Dockerfile {
        path: dockerfile_path.clone(),
        source,
    })?;
    // Bytes, not a string: invalid UTF-8 is then reported with its line and offset.
    let parsed = dockerfile::parse_bytes(&text).map_err(|source| BuildError::Parse {
        path: dockerfile_path.display().to_string(),
        source,
    })?;

    let registry = Arc::new(
        Registry::new(registry_options(req, &work_dir))
            .map_err(BuildError::registry("setting up the registry client"))?,
    );
    let layer_cache = match &req.layer_cache {
        LayerCacheRequest::Off => None,
        LayerCacheRequest::IgnoredWithSingleSnapshot => {
            warn!(
                "--cache is ignored with --single-snapshot: there are no per-step layers to cache"
            );
            None
        }
        LayerCacheRequest::On(repo) => {
            let cache = LayerCache::new(
                repo.clone(),
                registry.clone(),
                req.cache_ttl,
                req.platform.clone(),
                work_dir.join("blobs"),
            );
            info!("layer cache: {}", cache.describe());
            Some(Arc::new(cache))
        }
    };
    let base_cache = req.cache_dir.as_deref().and_then(|dir| {
        match BaseImageCache::open_existing(Path::new(dir), req.cache_ttl) {
            Ok(cache) => Some(cache),
            Err(e) => {
                warn!("--cache-dir {dir}: {e}; base images are pulled from their registries");
                None
            }
        }
    });
    let mount_cache = mount_cache_dir(req, &work_dir, _temp_guard.is_some());
    let mut ignore = IgnorePaths::new(req, &work_dir, context.root());
    if req.isolation == Isolation::InPlace {
        // In place the mount cache is on `/`: never snapshotted, never seen by a step except
        // through its mounts.
        ignore.flags.push(mount_cache.clone());
        // Made now, so that the probe finds it and steps get it covered.
        std::fs::create_dir_all(&mount_cache)
            .map_err(io_err(format!("creating {}", mount_cache.display())))?;
        // Before the first stage replaces `/`: the probe and the paths to hide are about the
        // container as it started.
        let mut hidden = in_place_hidden(req, &work_dir, context.root());
        hidden.push(mount_cache.clone());
        crate::run::prepare_in_place(&hidden);
        // The registry's clients are made when first needed, some after `/` is replaced.
        kiln_oci::registry::load_system_certificates();
    }
    let started = Instant::now();
    let plan = BuildPlan::new(
        &parsed,
        req.target.as_deref(),
        req.build_all_stages,
        &req.build_args,
        &req.platform,
    )?;
    // BuildKit also reads a global `ARG SOURCE_DATE_EPOCH=…` default when neither the build arg
    // nor the environment gave one.
    let with_default_epoch;
    let req = match plan.meta_args.get(request::SOURCE_DATE_EPOCH) {
        Some(Some(v)) if !req.build_args.contains_key(request::SOURCE_DATE_EPOCH) => {
            with_default_epoch = BuildRequest {
                source_date_epoch: request::source_date_epoch(Some(v))?,
                ..req.clone()
            };
            &with_default_epoch
        }
        _ => req,
    };
    let run_mounts = Arc::new(crate::run_mounts::MountEnv {
        secrets: req.secrets.clone(),
        cache_dir: mount_cache,
        work_dir: work_dir.clone(),
        context: Some((context.root().to_path_buf(), context.ignore_rules().clone())),
        froms: Default::default(),
        ssh: req.ssh.clone(),
    });
    let budget = crate::unpack::BuildBudget::new(req.max_build_size);
    // One builder per lane of stages built at the same time; `dir` is its work directory.
    let make_builder = |dir: PathBuf| Builder {
        req,
        plan: &plan,
        dockerfile: &parsed,
        context: &context,
        work_dir: dir.clone(),
        bases: BaseImages::new(
            Arc::clone(&registry),
            &runtime,
            base_cache.clone(),
            req.platform.clone(),
            dir,
            ignore.clone(),
            crate::unpack::UnpackOptions {
                ignore: Vec::new(),
                same_owner: true,
                bounds: req.layer_bounds,
                budget: budget.clone(),
            },
        ),
        cache: layer_cache
            .clone()
            .map(|cache| StepCache::new(cache, &runtime, &context, req.no_push_cache)),
        publisher: Publisher::new(req, registry.clone(), &runtime),
        ignore: ignore.clone(),
        run_mounts: run_mounts.clone(),
        trash: trash.clone(),
        built: HashMap::new(),
        stage_keys: HashMap::new(),
        stop: None,
        offered: Vec::new(),
    };
    let mut builder = make_builder(work_dir.clone());
    let count = plan.order().count();
    info!(
        stages = count,
        "building {count} stage(s) from {}",
        dockerfile_path.display()
    );
    let lanes = lanes::count(req, &plan);
    if lanes > 1 {
        lanes::build_earlier(&mut builder, lanes, &work_dir, &make_builder)?;
    } else {
        for &index in &plan.earlier {
            builder.build_earlier(index)?;
        }
    }
    let final_stage = builder.build_stage(plan.target, true)?;
    builder.offer_to_later_platforms();
    builder.publisher.finish_early_pushes();
    let annotations = if req.base_image_annotations {
        builder.base_annotations()?
    } else {
        Default::default()
    };
    let result = publish::write_outputs(req, &builder.bases, &runtime, final_stage, annotations);
    let mut counts = None;
    if let Some(cache) = builder.cache.as_mut() {
        cache.finish_stores();
        info!("cache: {} hits, {} misses", cache.hits, cache.misses);
        counts = Some(kiln_common::termination::CacheCounts {
            hits: cache.hits as u64,
            misses: cache.misses as u64,
        });
    }
    let mut result = result?;
    result.commit = commit;
    result.cache = counts;
    info!(
        "built {} in {:.2}s",
        result.digest,
        started.elapsed().as_secs_f64()
    );
    if !req.index_member {
        publish::write_result_files(req, &result)?;
    }
    Ok(result)
}

/// The state of one build while its stages are built.
struct Builder<'a> {
    req: &'a BuildRequest,
    plan: &'a BuildPlan,
    dockerfile: &'a Dockerfile,
    context: &'a BuildContext,
    work_dir: PathBuf,
    bases: BaseImages<'a>,
    /// The layer cache, with `--cache` (and not `--single-snapshot`).
    cache: Option<StepCache<'a>>,
    publisher: Publisher<'a>,
    /// What `RUN --mount` reads.
    run_mounts: Arc<crate::run_mounts::MountEnv>,
    ignore: IgnorePaths,
    /// Where pruned stage files go to be removed off the build's path.
    trash: Arc<crate::stage_files::Trash>,
    built: HashMap<usize, BuiltStage>,
    /// The last step key of every built stage (the base identity of stages built FROM it).
    stage_keys: HashMap<usize, String>,
    /// Set when a stage built at the same time failed: this builder stops before its next step.
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// In place: stages the same for every platform this build made, offered to the next
    /// platform's build when this one is done (identity, stage).
    offered: Vec<(String, usize)>,
}

impl Builder<'_> {
    /// Builds stage `index` (not the target): once for every platform when it is the same for
    /// all of a multi-platform build, else here; pruned to what later stages copy from it unless
    /// a later stage starts FROM it.
    fn build_earlier(&mut self, index: usize) -> Result<(), BuildError> {
        let keep_layers = self.plan.used_as_base(index);
        let shared = self
            .req
            .siblings
            .as_deref()
            .and_then(|s| Some((s, self.plan.shared_identity(self.dockerfile, index)?)));
        if let Some((siblings, identity)) = shared {
            if self.req.isolation != Isolation::InPlace {
                return self.build_shared(siblings, &identity, index, keep_layers);
            }
            // In place the platforms are built one after the other and a stage's files stay at
            // `/` until the next stage moves them aside: one an earlier platform left is used,
            // and this platform's are offered to the next once its build is done.
            if self.use_left_by_earlier_platform(siblings, &identity, index) {
                return Ok(());
            }
            self.offered.push((identity, index));
        }
        let stage = self.build_stage(index, keep_layers)?;
        self.built.insert(index, stage);
        if !keep_layers {
            self.keep_only_copied_files(index, self.plan.order())?;
        }
        Ok(())
    }

    /// Fails when a multi-platform sibling or a stage built at the same time has failed.
    fn check_stop(&self) -> Result<(), BuildError> {
        if let Some(siblings) = &self.req.siblings {
            siblings.check()?;
        }
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(BuildError::StageFailed);
        }
        Ok(())
    }
}

impl Builder<'_> {
    /// The OCI annotations naming the image the final stage's files start from (through
    /// stages it is built FROM), for `--base-image-annotations`:
    /// `org.opencontainers.image.base.name` (the normalised reference) and `.base.digest` (the
    /// platform manifest it was read as), as buildah and podman write them; none for `scratch`.
    fn base_annotations(&self) -> Result<std::collections::BTreeMap<String, String>, BuildError> {
        let mut annotations = std::collections::BTreeMap::new();
        let mut base = self.plan.base(self.plan.target)?;
        while let plan::BaseKind::Stage(parent) = base.kind {
            base = self.plan.base(parent)?;
        }
        if base.kind != plan::BaseKind::Image {
            return Ok(annotations);
        }
        if let Some(digest) = self.bases.manifest_digest(&base.name, &base.platform) {
            let name = kiln_oci::registry::normalize_reference(&base.name)
                .unwrap_or_else(|_| base.name.clone());
            annotations.insert(ANNOTATION_BASE_NAME.to_string(), name);
            annotations.insert(ANNOTATION_BASE_DIGEST.to_string(), digest.clone());
        }
        Ok(annotations)
    }
}

const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Paths left out of snapshots and unpacking. In a private root only `--ignore-path` applies;
/// in place, also Kiln's own directory, kernel filesystems, mount points and (by default)
/// /var/run. Worked out anew each time: mount points can change during a build.
#[derive(Debug, Clone)]
struct IgnorePaths {
    flags: Vec<PathBuf>,
    in_place: Option<InPlaceIgnore>,
}

#[derive(Debug, Clone)]
struct InPlaceIgnore {
    work_dir: PathBuf,
    ignore_var_run: bool,
    /// The context must survive clearing `/` even when it is not a mount point (e.g. a
    /// directory baked into the image); its files never belong in a layer.
    context: Option<PathBuf>,
}

impl IgnorePaths {
    fn new(req: &BuildRequest, work_dir: &Path, context_root: &Path) -> IgnorePaths {
        IgnorePaths {
            flags: req
                .ignore_paths
                .iter()
                .map(|p| PathBuf::from(crate::fsutil::clean_abs(p)))
                .collect(),
            in_place: (req.isolation == Isolation::InPlace).then(|| InPlaceIgnore {
                work_dir: work_dir.to_path_buf(),
                ignore_var_run: req.ignore_var_run,
                context: (context_root.is_absolute() && context_root != Path::new("/"))
                    .then(|| context_root.to_path_buf()),
            }),
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = self.flags.clone();
        if let Some(in_place) = &self.in_place {
            paths.extend(crate::container::in_place_ignore_paths(
                &in_place.work_dir,
                in_place.ignore_var_run,
            ));
            paths.extend(in_place.context.clone());
        }
        paths
    }
}

/// What in-place RUN steps must not see besides the fixed places (`/kiln`, `/kaniko`, the
/// service-account and secrets directories) and the read-only mounts: Kiln's directory and work
/// directory, the context, and the docker config in use with its directory.
fn in_place_hidden(req: &BuildRequest, work_dir: &Path, context_root: &Path) -> Vec<PathBuf> {
    let mut paths = vec![work_dir.to_path_buf(), context_root.to_path_buf()];
    paths.extend(work_dir.parent().map(Path::to_path_buf));
    if let Some(config) =
        kiln_oci::registry::DockerConfig::locate(req.registry.docker_config.as_deref())
    {
        paths.extend(config.parent().map(Path::to_path_buf));
        paths.push(config);
    }
    paths
}

/// The registry options of the request, with where credential helpers run: in Kiln's work
/// directory, and in place only from `$PATH` directories the build keeps (`/kiln`, `/kaniko`,
/// Kiln's directory), since elsewhere `/` turns into the build's root and a helper found there
/// would be the base image's file, run with the executor's credentials.
pub(super) fn registry_options(
    req: &BuildRequest,
    work_dir: &Path,
) -> kiln_oci::registry::RegistryOptions {
    let mut opts = req.registry.clone();
    opts.credential_helpers.work_dir = Some(work_dir.join("cred-helpers"));
    if req.isolation == Isolation::InPlace {
        let mut kept = vec![PathBuf::from("/kiln"), PathBuf::from("/kaniko")];
        kept.extend(work_dir.parent().map(Path::to_path_buf));
        opts.credential_helpers.only_under = kept;
    }
    opts
}

/// `--mount-cache-dir`, else `mount-cache` in the kiln dir, else `kiln-mount-cache` next to the
/// temporary work directory (so that caches outlive it).
fn mount_cache_dir(req: &BuildRequest, work_dir: &Path, temporary: bool) -> PathBuf {
    if let Some(dir) = &req.mount_cache_dir {
        return PathBuf::from(dir);
    }
    let parent = work_dir.parent().unwrap_or(work_dir);
    parent.join(if temporary {
        "kiln-mount-cache"
    } else {
        "mount-cache"
    })
}

/// The working directory for blobs, layers and stage roots, and a guard that removes it when temporary.
fn work_dir(req: &BuildRequest) -> Result<(PathBuf, Option<tempfile::TempDir>), BuildError> {
    match explicit_kiln_dir(req) {
        Some(dir) => Ok((fresh_dir(&dir.join("build"))?, None)),
        None => {
            let tmp = temp_work_dir()?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// `--kiln-dir`, else `KILN_DIR` or `KANIKO_DIR`, else `/kiln` in place.
fn explicit_kiln_dir(req: &BuildRequest) -> Option<PathBuf> {
    req.kiln_dir
        .clone()
        .or_else(|| std::env::var("KILN_DIR").ok())
        .or_else(|| std::env::var("KANIKO_DIR").ok())
        .or_else(|| (req.isolation == Isolation::InPlace).then(|| "/kiln".to_string()))
        .map(PathBuf::from)
}

/// `dir`, emptied (or made).
fn fresh_dir(dir: &Path) -> Result<PathBuf, BuildError> {
    // An earlier build in this process may still be emptying its trash there.
    crate::stage_files::wait_detached();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(format!("clearing {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    Ok(dir.to_path_buf())
}

/// Where temporary work directories go: `$TMPDIR`, else `/var/tmp`.
fn temp_parent() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// A temporary work directory, removed when the guard is dropped.
fn temp_work_dir() -> Result<tempfile::TempDir, BuildError> {
    let base = temp_parent();
    tempfile::Builder::new()
        .prefix("kiln-")
        .tempdir_in(&base)
        .map_err(io_err(format!(
            "creating a work directory in {}",
            base.display()
        )))
}

/// kaniko's rule: an absolute path is used as is; a relative one is tried as given, then under the context.
fn locate_dockerfile(flag: &str, context_root: &Path) -> Result<PathBuf, BuildError> {
    let given = PathBuf::from(flag);
    let candidates = if given.is_absolute() {
        vec![given.clone()]
    } else {
        vec![context_root.join(&given), given.clone()]
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| BuildError::DockerfileNotFound {
            flag: flag.to_string(),
            context: context_root.to_path_buf(),
        })
}

/// A history entry for a step.
fn history(req: &BuildRequest, created_by: &str, empty_layer: bool) -> History {
    History {
        created: Some(timestamp(req)),
        created_by: Some(created_by.to_string()),
        comment: Some("kiln".into()),
        empty_layer,
        ..Default::default()
    }
}

/// When the image and its new history entries were made: `SOURCE_DATE_EPOCH` when given, else
/// the Unix epoch for `--reproducible`, else now. BuildKit only clamps times back to
/// `SOURCE_DATE_EPOCH`, so one in the future leaves the time of the build, unless
/// `--reproducible` asks for fixed times.
fn timestamp(req: &BuildRequest) -> String {
    let now = chrono::Utc::now();
    match (req.source_date_epoch, req.reproducible) {
        (Some(epoch), true) => request::epoch_timestamp(epoch),
        (Some(epoch), false) if epoch <= now.timestamp() => request::epoch_timestamp(epoch),
        (None, true) => "1970-01-01T00:00:00Z".to_string(),
        _ => now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    }
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_is_retried_as_often_as_asked() {
        use std::time::Duration;
        // Fails `failures` times, then works; says whether each call was a retry.
        let run = |retries: u32, failures: usize| {
            let mut calls: Vec<bool> = Vec::new();
            let result = base::retry_extract(retries, Duration::ZERO, "img", |retry| {
                calls.push(retry);
                if calls.len() <= failures {
                    Err(BuildError::Usage(format!("attempt {}", calls.len())))
                } else {
                    Ok(calls.len())
                }
            });
            (result.map_err(|e| e.to_string()), calls)
        };
        assert_eq!(run(0, 0), (Ok(1), vec![false]));
        let (result, calls) = run(0, 1);
        assert!(result.unwrap_err().contains("attempt 1"));
        assert_eq!(calls, [false]);
        assert_eq!(run(2, 2), (Ok(3), vec![false, true, true]));
        let (result, calls) = run(2, 3);
        assert!(result.unwrap_err().contains("attempt 3"));
        assert_eq!(calls.len(), 3);
    }

    #[test]
    fn sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(2048), "2.0 KiB");
    }

    #[test]
    fn credential_helpers_run_from_kept_directories_in_place() {
        use clap::Parser;
        let opts = Options::try_parse_from(["kiln-executor", "--no-push"]).unwrap();
        let work = Path::new("/kiln/build");
        let in_place = BuildRequest::from_options(&opts, Some("in a test".into())).unwrap();
        assert_eq!(in_place.isolation, Isolation::InPlace);
        let helpers = registry_options(&in_place, work).credential_helpers;
        assert_eq!(
            helpers.work_dir,
            Some(PathBuf::from("/kiln/build/cred-helpers"))
        );
        assert_eq!(
            helpers.only_under,
            vec![PathBuf::from("/kiln"), "/kaniko".into(), "/kiln".into()]
        );
        let chroot = BuildRequest::from_options(&opts, None).unwrap();
        let helpers = registry_options(&chroot, Path::new("/var/tmp/kiln-x")).credential_helpers;
        assert!(helpers.only_under.is_empty());
        assert_eq!(
            helpers.work_dir,
            Some(PathBuf::from("/var/tmp/kiln-x/cred-helpers"))
        );
    }
}

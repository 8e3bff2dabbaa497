//! The build: reads the Dockerfile and context, builds the needed stages in order (pull or reuse
//! the base, run each instruction, snapshot), assembles the image and writes it to its outputs.
//! Logs each step with its timing. Knows nothing of Kubernetes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cache::key::{base_image_key, scratch_key, FileDigest, StepInput};
use crate::cache::layer::{CacheHit, CacheRepo, LayerCache, NewLayer};
use crate::cache::prefetch::{Lookups, LOOKUP_CONCURRENCY};
use crate::cli::{IsolationFlag, Options};
use crate::commands::{self, CopySource, Outcome, StageState};
use crate::context::BuildContext;
use crate::run::Isolation;
use crate::snapshot::{LayerOptions, Snapshotter};
use crate::unpack::{unpack_layer, unpack_layer_verified, UnpackError, UnpackOptions};
use kiln_dockerfile::{self as dockerfile, Dockerfile, Instruction, Located, Stage};
use kiln_oci::base_cache::BaseImageCache;
use kiln_oci::image::{
    oci_layer_media_type, sha256_digest, Descriptor, History, ImageConfig, Manifest,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST,
};
use kiln_oci::registry::{Blob, BlobSource, Platform, Registry, RegistryOptions};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Usage(String),
    #[error("reading the Dockerfile {path}: {source}")]
    Dockerfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: dockerfile::ParseError,
    },
    #[error("build context: {0}")]
    Context(#[from] crate::context::ContextError),
    #[error("{0}")]
    Registry(#[from] kiln_oci::registry::RegistryError),
    #[error("Dockerfile line {line}: {instruction}: {source}")]
    Step {
        line: usize,
        instruction: String,
        #[source]
        source: commands::CommandError,
    },
    #[error("unpacking layer {digest} of {image}: {source}")]
    Unpack {
        digest: String,
        image: String,
        #[source]
        source: Box<crate::unpack::UnpackError>,
    },
    #[error("snapshotting the filesystem: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the OCI layout at {path}: {message}")]
    Layout { path: String, message: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// A layer of the image being built: its blob on disk and identities.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    pub path: PathBuf,
}

/// What a finished build produced.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// `sha256:…` of the manifest.
    pub digest: String,
    /// `destination@digest` for every pushed destination.
    pub references: Vec<String>,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
}

/// A finished stage: its root filesystem, config and layers.
struct BuiltStage {
    root: PathBuf,
    config: ImageConfig,
    layers: Vec<ImageLayer>,
}

/// Build what the options describe and write it to every output.
pub fn run_build(opts: &Options) -> Result<BuildResult, BuildError> {
    opts.check_supported().map_err(BuildError::Usage)?;
    if opts.destinations.is_empty() && !opts.no_push && opts.oci_layout_path.is_none() {
        return Err(BuildError::Usage(
            "no --destination given: name one (repeatable), or pass --no-push (optionally with --oci-layout-path)".into(),
        ));
    }
    let isolation = choose_isolation(opts)?;
    let (work_dir, _temp_guard) = work_dir(opts, isolation)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("starting the async runtime"))?;

    let context_options =
        crate::context::ContextOptions::from_flags(&opts.context_sub_path, opts.git.as_deref())
            .map_err(BuildError::Usage)?;
    let mut context =
        BuildContext::open_with(&opts.context, &work_dir.join("context"), &context_options)?;
    let dockerfile_path = locate_dockerfile(&opts.dockerfile, context.root())?;
    context.load_ignore(&dockerfile_path)?;
    let text =
        std::fs::read_to_string(&dockerfile_path).map_err(|source| BuildError::Dockerfile {
            path: dockerfile_path.clone(),
            source,
        })?;
    let parsed = dockerfile::parse(&text).map_err(|source| BuildError::Parse {
        path: dockerfile_path.display().to_string(),
        source,
    })?;

    let platform = match &opts.custom_platform {
        Some(p) => p.parse::<Platform>().map_err(BuildError::Usage)?,
        None => Platform::default(),
    };
    let registry = Arc::new(Registry::new(registry_options(opts, platform.clone()))?);
    let ttl = opts.cache_ttl().map_err(BuildError::Usage)?;
    let layer_cache = layer_cache(opts, &registry, ttl, &platform)?;
    let base_cache =
        opts.cache_dir
            .as_deref()
            .and_then(|dir| match BaseImageCache::open(Path::new(dir), ttl) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    warn!("--cache-dir {dir}: {e}; base images are pulled from their registries");
                    None
                }
            });
    let mut builder = Builder {
        opts,
        parsed: &parsed,
        context: &context,
        registry: Arc::clone(&registry),
        runtime: &runtime,
        work_dir: work_dir.clone(),
        isolation,
        platform,
        build_args: opts.build_arg_pairs().into_iter().collect(),
        built: HashMap::new(),
        remote_roots: HashMap::new(),
        layer_opts: LayerOptions {
            reproducible: opts.reproducible,
            compression: opts.layer_compression().map_err(BuildError::Usage)?,
        },
        lookups: layer_cache
            .clone()
            .map(|cache| Lookups::new(cache, LOOKUP_CONCURRENCY)),
        layer_cache,
        base_cache,
        cached_layers: HashMap::new(),
        damaged_cache_refs: BTreeSet::new(),
        checked_layers: RefCell::new(HashMap::new()),
        file_digests: RefCell::new(HashMap::new()),
        pending_stores: Vec::new(),
        pending_pushes: Vec::new(),
        stats: CacheStats::default(),
        stage_keys: HashMap::new(),
        remote_layers: HashMap::new(),
        target: 0,
    };
    let started = Instant::now();
    let target = builder.target_index()?;
    builder.target = target;
    let plan = builder.plan(target)?;
    info!(
        stages = plan.len(),
        "building {} stage(s) from {}",
        plan.len(),
        dockerfile_path.display()
    );
    for &index in &plan {
        let keep_layers = index == target || builder.used_as_base(index, &plan);
        let stage = builder.build_stage(index, keep_layers)?;
        builder.built.insert(index, stage);
        if index != target && !builder.used_as_base(index, &plan) {
            builder.keep_only_copied_files(index, &plan)?;
        }
    }
    let final_stage = builder
        .built
        .remove(&target)
        .ok_or_else(|| BuildError::Usage("target stage was not built".into()))?;
    builder.finish_early_pushes();
    let result = builder.write_outputs(final_stage);
    builder.finish_cache_stores();
    if builder.layer_cache.is_some() {
        info!(
            "cache: {} hits, {} misses",
            builder.stats.hits, builder.stats.misses
        );
    }
    let result = result?;
    info!(
        "built {} in {:.2}s",
        result.digest,
        started.elapsed().as_secs_f64()
    );
    write_result_files(opts, &result)?;
    Ok(result)
}

/// Digest files in kaniko's formats and the termination message for a controller.
fn write_result_files(opts: &Options, result: &BuildResult) -> Result<(), BuildError> {
    use crate::output;
    if let Some(path) = &opts.digest_file {
        std::fs::write(path, &result.digest)
            .map_err(io_err(format!("writing --digest-file {path}")))?;
    }
    if let Some(path) = &opts.image_name_with_digest_file {
        std::fs::write(
            path,
            output::names_with_digest(&opts.destinations, &result.digest),
        )
        .map_err(io_err(format!(
            "writing --image-name-with-digest-file {path}"
        )))?;
    }
    if let Some(path) = &opts.image_name_tag_with_digest_file {
        std::fs::write(
            path,
            output::names_tag_with_digest(&opts.destinations, &result.digest),
        )
        .map_err(io_err(format!(
            "writing --image-name-tag-with-digest-file {path}"
        )))?;
    }
    let termination = std::env::var_os(kiln_common::termination::TERMINATION_LOG_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(output::TERMINATION_LOG));
    output::write_termination_log(&termination, &result.digest, &result.references).map_err(
        io_err(format!(
            "writing the termination message {}",
            termination.display()
        )),
    )?;
    Ok(())
}

fn choose_isolation(opts: &Options) -> Result<Isolation, BuildError> {
    isolation_for(opts, crate::container::detect())
}

/// The isolation for the flags, given why Kiln believes it is in a container (if it does).
fn isolation_for(opts: &Options, in_container: Option<String>) -> Result<Isolation, BuildError> {
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

/// The working directory for blobs, layers and stage roots, and a guard that removes it when temporary.
fn work_dir(
    opts: &Options,
    isolation: Isolation,
) -> Result<(PathBuf, Option<tempfile::TempDir>), BuildError> {
    let explicit = opts
        .kiln_dir
        .clone()
        .or_else(|| std::env::var("KILN_DIR").ok())
        .or_else(|| std::env::var("KANIKO_DIR").ok())
        .or_else(|| (isolation == Isolation::InPlace).then(|| "/kiln".to_string()));
    match explicit {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let build = dir.join("build");
            if build.exists() {
                std::fs::remove_dir_all(&build)
                    .map_err(io_err(format!("clearing {}", build.display())))?;
            }
            std::fs::create_dir_all(&build)
                .map_err(io_err(format!("creating {}", build.display())))?;
            Ok((build, None))
        }
        None => {
            let base = std::env::var_os("TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp"));
            let tmp = tempfile::Builder::new()
                .prefix("kiln-")
                .tempdir_in(&base)
                .map_err(io_err(format!(
                    "creating a work directory in {}",
                    base.display()
                )))?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// kaniko's rule: an absolute path is used as is; a relative one is tried as given, then under the context.
fn locate_dockerfile(flag: &str, context_root: &Path) -> Result<PathBuf, BuildError> {
    let given = PathBuf::from(flag);
    let candidates = if given.is_absolute() {
        vec![given.clone()]
    } else {
        vec![context_root.join(&given), given.clone()]
    };
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        BuildError::Usage(format!(
            "Dockerfile {flag} not found (looked in the context {} and the current directory); set --dockerfile",
            context_root.display()
        ))
    })
}

fn registry_options(opts: &Options, platform: Platform) -> RegistryOptions {
    opts.registry_options(platform)
}

struct Builder<'a> {
    opts: &'a Options,
    parsed: &'a Dockerfile,
    context: &'a BuildContext,
    registry: Arc<Registry>,
    runtime: &'a tokio::runtime::Runtime,
    work_dir: PathBuf,
    isolation: Isolation,
    platform: Platform,
    build_args: BTreeMap<String, String>,
    built: HashMap<usize, BuiltStage>,
    /// Roots of images unpacked for `COPY --from=<image>`, by reference.
    remote_roots: HashMap<String, PathBuf>,
    layer_opts: LayerOptions,
    /// The layer cache, with `--cache` (and not `--single-snapshot`).
    layer_cache: Option<Arc<LayerCache>>,
    /// The base-image cache volume, with `--cache-dir`.
    base_cache: Option<BaseImageCache>,
    /// Layer blobs of base images found in the base-image cache, by path, with the image's
    /// reference. Their digests are checked whenever they are read (while unpacking, or
    /// before an upload or an archive), not when they are found, so each is read once.
    cached_layers: HashMap<PathBuf, String>,
    /// Base images whose cached copy turned out damaged: pulled from their registry from then on.
    damaged_cache_refs: BTreeSet<String>,
    /// Cached layer blobs checked before write_outputs read them: path → the file to read
    /// (itself, or a copy fetched from the registry when it was damaged).
    checked_layers: RefCell<HashMap<PathBuf, PathBuf>>,
    /// Layer-cache lookups, made once per key and started ahead of their steps (the skip-base
    /// probe and the build share them); with the layer cache only.
    lookups: Option<Lookups<LayerCache>>,
    /// Digests of the files COPY/ADD steps read, by what the step reads: a stage's keys are
    /// worked out ahead of its steps and again as they run, and the files are hashed once.
    file_digests: RefCell<HashMap<String, String>>,
    /// Background pushes of new cache entries, awaited before the build ends.
    pending_stores: Vec<std::thread::JoinHandle<()>>,
    /// Background uploads of the target stage's new layers to the destinations, awaited before
    /// the image is pushed.
    pending_pushes: Vec<std::thread::JoinHandle<()>>,
    stats: CacheStats,
    /// The last step key of every built stage (the base identity of stages built FROM it).
    stage_keys: HashMap<usize, String>,
    /// Layers of the image that were not downloaded (base layers of a build that did not need
    /// them, cache hits): digest → reference of a repository holding the blob.
    remote_layers: HashMap<String, String>,
    target: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct CacheStats {
    hits: usize,
    misses: usize,
}

/// The layer cache the flags ask for, if any.
fn layer_cache(
    opts: &Options,
    registry: &Arc<Registry>,
    ttl: Duration,
    platform: &Platform,
) -> Result<Option<Arc<LayerCache>>, BuildError> {
    if !opts.cache {
        return Ok(None);
    }
    if opts.single_snapshot {
        warn!("--cache is ignored with --single-snapshot: there are no per-step layers to cache");
        return Ok(None);
    }
    let repo = CacheRepo::from_flags(opts.cache_repo.as_deref(), &opts.destinations).ok_or_else(|| {
        BuildError::Usage("--cache needs a cache repository: pass --cache-repo (a repository or oci:/path) or a --destination".into())
    })?;
    let cache = LayerCache::new(repo, registry.clone(), ttl, platform.clone());
    info!("layer cache: {}", cache.describe());
    Ok(Some(Arc::new(cache)))
}

/// How the layer cache treats a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cacheable {
    /// Looked up, and stored on a miss.
    Yes,
    /// RUN/COPY/ADD whose caching is turned off by a flag.
    Disabled,
    /// Metadata steps (and WORKDIR): not cached, but part of the key chain.
    No,
}

impl<'a> Builder<'a> {
    fn stage_index_by_name(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.parsed
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    fn target_index(&self) -> Result<usize, BuildError> {
        let last = self
            .parsed
            .stages
            .len()
            .checked_sub(1)
            .ok_or_else(|| BuildError::Usage("the Dockerfile has no FROM".into()))?;
        match &self.opts.target {
            None => Ok(last),
            Some(t) => self.stage_index_by_name(t).ok_or_else(|| {
                let names: Vec<String> = self
                    .parsed
                    .stages
                    .iter()
                    .filter_map(|s| s.name.clone())
                    .collect();
                BuildError::Usage(format!(
                    "--target {t}: no stage of that name (stages: {})",
                    names.join(", ")
                ))
            }),
        }
    }

    /// Global ARG values (for FROM lines): defaults expanded in order, overridden by --build-arg,
    /// plus the automatic platform arguments.
    fn meta_args(&self) -> BTreeMap<String, Option<String>> {
        let mut values: BTreeMap<String, Option<String>> = automatic_platform_args(&self.platform)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for decl in &self.parsed.meta_args {
            let value = if let Some(v) = self.build_args.get(&decl.name) {
                Some(v.clone())
            } else {
                decl.default.as_ref().map(|d| {
                    let lookup = |n: &str| values.get(n).cloned().flatten();
                    dockerfile::expand::expand_word(d, &lookup, self.parsed.escape)
                        .unwrap_or_else(|_| d.clone())
                })
            };
            values.insert(decl.name.clone(), value);
        }
        values
    }

    fn expand_from(&self, stage: &Stage) -> Result<String, BuildError> {
        let meta = self.meta_args();
        let lookup = |n: &str| meta.get(n).cloned().flatten();
        dockerfile::expand::expand_word(&stage.base, &lookup, self.parsed.escape).map_err(|e| {
            BuildError::Step {
                line: stage.line,
                instruction: format!("FROM {}", stage.base),
                source: e.into(),
            }
        })
    }

    /// The stage a FROM or `COPY --from` names, if it names an earlier stage.
    fn stage_ref(&self, name: &str, before: usize) -> Option<usize> {
        if let Ok(i) = name.parse::<usize>() {
            return (i < before).then_some(i);
        }
        self.stage_index_by_name(name).filter(|&i| i < before)
    }

    /// Stage indexes to build, in order: those the target depends on. Only an explicit
    /// `--skip-unused-stages=false` builds every stage up to the target, as kaniko's default does;
    /// skipping is Kiln's default because the image is the same and a broken unused stage
    /// should not fail the build (BuildKit's and buildah's behaviour).
    fn plan(&self, target: usize) -> Result<Vec<usize>, BuildError> {
        if self.opts.skip_unused_stages == Some(false) {
            return Ok((0..=target).collect());
        }
        let mut needed = BTreeSet::new();
        let mut queue = vec![target];
        while let Some(i) = queue.pop() {
            if !needed.insert(i) {
                continue;
            }
            queue.extend(self.dependencies(i)?);
        }
        Ok(needed.into_iter().collect())
    }

    fn dependencies(&self, index: usize) -> Result<Vec<usize>, BuildError> {
        let stage = &self.parsed.stages[index];
        let mut deps = Vec::new();
        if let Some(i) = self.stage_ref(&self.expand_from(stage)?, index) {
            deps.push(i);
        }
        for located in &stage.instructions {
            if let Instruction::Copy(args) | Instruction::Add(args) = &located.instruction {
                if let Some(from) = &args.from {
                    if let Some(i) = self.stage_ref(from, index) {
                        deps.push(i);
                    }
                }
            }
        }
        Ok(deps)
    }

    /// Prune a finished stage that later stages only `COPY --from` to the paths they copy, so the
    /// build keeps those files, not the stage's whole filesystem. In place this runs once the
    /// next stage has moved the stage aside (never on `/`); skipped when a source depends on a
    /// variable.
    fn keep_only_copied_files(&self, index: usize, plan: &[usize]) -> Result<(), BuildError> {
        let Some(built) = self.built.get(&index) else {
            return Ok(());
        };
        if built.root.as_os_str().is_empty() || built.root == Path::new("/") {
            return Ok(());
        }
        let mut sources = Vec::new();
        for &later in plan.iter().filter(|&&i| i > index) {
            for located in &self.parsed.stages[later].instructions {
                if let Instruction::Copy(args) | Instruction::Add(args) = &located.instruction {
                    let from = args.from.as_deref().and_then(|f| self.stage_ref(f, later));
                    if from != Some(index) {
                        continue;
                    }
                    if args.sources.iter().any(|s| s.contains('$')) {
                        return Ok(());
                    }
                    sources.extend(args.sources.iter().cloned());
                }
            }
        }
        let root = &built.root;
        let keep = crate::stage_files::Keep::for_sources(root, &sources).map_err(io_err(
            format!("planning what to keep of stage {}", index + 1),
        ))?;
        let removed = crate::stage_files::prune(root, &keep).map_err(io_err(format!(
            "pruning stage {} to what later stages copy",
            index + 1
        )))?;
        info!(
            "stage {}: kept the {} path(s) later stages copy, removed {removed} other entries",
            index + 1,
            sources.len()
        );
        Ok(())
    }

    /// Whether a later planned stage starts FROM this one (so its layers must be kept).
    fn used_as_base(&self, index: usize, plan: &[usize]) -> bool {
        plan.iter().filter(|&&i| i > index).any(|&i| {
            self.expand_from(&self.parsed.stages[i])
                .ok()
                .and_then(|b| self.stage_ref(&b, i))
                == Some(index)
        })
    }

    fn build_stage(&mut self, index: usize, keep_layers: bool) -> Result<BuiltStage, BuildError> {
        let stage = &self.parsed.stages[index];
        let total = self.parsed.stages.len();
        let label = match &stage.name {
            Some(n) => format!("stage {}/{} ({n})", index + 1, total),
            None => format!("stage {}/{}", index + 1, total),
        };
        let base = self.expand_from(stage)?;
        info!("[{label}] FROM {base}");
        let started = Instant::now();
        if let Some(built) = self.try_skip_base(index, stage, &base, &label)? {
            return Ok(built);
        }
        let root = self.work_dir.join(format!("stages/{index}/rootfs"));
        let (root, config, layers) = if self.isolation == Isolation::InPlace {
            self.prepare_in_place(&base, index, stage)?
        } else {
            std::fs::create_dir_all(&root)
                .map_err(io_err(format!("creating {}", root.display())))?;
            let (config, layers) = self.prepare_base(&base, index, stage, &root)?;
            (root, config, layers)
        };
        info!("[{label}] base ready in {}", secs(started.elapsed()));
        let mut prev_key = self.base_key(&base, index, &config, &layers);

        let mut state = self.stage_state(index, root.clone(), config)?;
        let mut layers = layers;
        let ignore = self.ignore_paths();
        // A stage kept only for `COPY --from` is snapshotted too when caching, so its steps can be
        // stored and hit like any other (builder stages are where the expensive RUNs are).
        let mut snapshotter = if keep_layers || self.layer_cache.is_some() {
            Some(Snapshotter::new(&root, ignore)?)
        } else {
            None
        };
        let layer_dir = self.work_dir.join("layers");
        std::fs::create_dir_all(&layer_dir)
            .map_err(io_err(format!("creating {}", layer_dir.display())))?;
        let steps = self.stage_steps(stage, &base, &mut state)?;
        self.prefetch_lookups(index, &steps, &state, &prev_key)?;

        let mut pending_single_snapshot = false;
        for (n, located) in steps.iter().enumerate() {
            let step_started = Instant::now();
            let text = located.original.trim().to_string();
            info!("[{label}] step {}/{}: {}", n + 1, steps.len(), text);
            let copy_source = self.copy_source(&located.instruction, index)?;
            let cacheable = self.cacheable(&located.instruction);
            let key = match &self.layer_cache {
                Some(_) => Some(self.step_key(&prev_key, located, &state, copy_source.as_ref())?),
                None => None,
            };
            let hit = match (&key, cacheable) {
                (Some(key), Cacheable::Yes) => self.lookup(key),
                _ => None,
            };
            if let (Some(hit), Some(key)) = (hit, &key) {
                let note = self.apply_hit(&hit, &root, &mut layers)?;
                if let Some(snap) = snapshotter.as_mut() {
                    snap.refresh()?;
                }
                if keep_layers {
                    state
                        .config
                        .history
                        .push(self.history(&text, hit.layer.is_none()));
                }
                self.stats.hits += 1;
                info!(
                    "[{label}] step {}/{} done in {} (cache hit, {note})",
                    n + 1,
                    steps.len(),
                    secs(step_started.elapsed())
                );
                prev_key = key.clone();
                continue;
            }
            let cache_note = match (&key, cacheable) {
                (Some(_), Cacheable::Yes) => {
                    self.stats.misses += 1;
                    "cache miss, "
                }
                (Some(_), Cacheable::Disabled) => "not cacheable (disabled by flag), ",
                (Some(_), Cacheable::No) => "not cacheable, ",
                (None, _) => "",
            };
            let source = match &copy_source {
                Some(SourceRef::Context) => Some(CopySource::Context(self.context)),
                Some(SourceRef::Root(p)) => Some(CopySource::Root(p.as_path())),
                None => None,
            };
            let outcome =
                commands::execute(&located.instruction, &mut state, source).map_err(|source| {
                    BuildError::Step {
                        line: located.line,
                        instruction: text.clone(),
                        source,
                    }
                })?;
            let mut layer_note = String::from("no layer");
            let mut snapshot_note = String::new();
            let mut empty_layer = true;
            let mut new_layer = None;
            if outcome == Outcome::Filesystem {
                if let Some(snap) = snapshotter.as_mut() {
                    if self.opts.single_snapshot {
                        pending_single_snapshot = true;
                        layer_note = "snapshot deferred (--single-snapshot)".into();
                    } else if let Some(layer) = {
                        let snap_started = Instant::now();
                        let layer = snap.snapshot_layer(&layer_dir, &self.layer_opts)?;
                        snapshot_note = format!(", snapshot {}", secs(snap_started.elapsed()));
                        layer
                    } {
                        layer_note =
                            format!("layer {} ({})", short(&layer.digest), human(layer.size));
                        new_layer = Some(NewLayer {
                            path: layer.path.clone(),
                            digest: layer.digest.clone(),
                            diff_id: layer.diff_id.clone(),
                            size: layer.size,
                            media_type: layer.media_type.clone(),
                        });
                        let image_layer = ImageLayer {
                            digest: layer.digest,
                            diff_id: layer.diff_id,
                            size: layer.size,
                            media_type: layer.media_type,
                            path: layer.path,
                        };
                        if keep_layers && index == self.target {
                            self.push_ahead(&image_layer);
                        }
                        layers.push(image_layer);
                        empty_layer = false;
                    } else {
                        layer_note = "no changes".into();
                    }
                }
            }
            if let (Some(key), Cacheable::Yes) = (&key, cacheable) {
                // Only a snapshotted step has a known result to store (a stage kept just for
                // `COPY --from` is not snapshotted).
                if snapshotter.is_some() && outcome == Outcome::Filesystem {
                    self.store_in_background(key, new_layer, &text);
                }
            }
            if keep_layers && !(self.opts.single_snapshot && outcome == Outcome::Filesystem) {
                state.config.history.push(self.history(&text, empty_layer));
            }
            info!(
                "[{label}] step {}/{} done in {} ({cache_note}{layer_note}{snapshot_note})",
                n + 1,
                steps.len(),
                secs(step_started.elapsed())
            );
            if let Some(key) = key {
                prev_key = key;
            }
        }
        if pending_single_snapshot {
            if let Some(snap) = snapshotter.as_mut() {
                if let Some(layer) = snap.snapshot_layer(&layer_dir, &self.layer_opts)? {
                    info!(
                        "[{label}] single snapshot: layer {} ({})",
                        short(&layer.digest),
                        human(layer.size)
                    );
                    layers.push(ImageLayer {
                        digest: layer.digest,
                        diff_id: layer.diff_id,
                        size: layer.size,
                        media_type: layer.media_type,
                        path: layer.path,
                    });
                    state
                        .config
                        .history
                        .push(self.history("single snapshot of all steps", false));
                }
            }
        }
        self.stage_keys.insert(index, prev_key);
        // A stage's ARGs are not part of the image; the config keeps only what the image needs.
        Ok(BuiltStage {
            root,
            config: state.config,
            layers,
        })
    }

    /// The state a stage's steps start from, over `root` with the base's config.
    fn stage_state(
        &self,
        index: usize,
        root: PathBuf,
        config: ImageConfig,
    ) -> Result<StageState, BuildError> {
        let scratch = self.work_dir.join(format!("stages/{index}/scratch"));
        std::fs::create_dir_all(&scratch)
            .map_err(io_err(format!("creating {}", scratch.display())))?;
        let mut state = StageState {
            root,
            isolation: self.isolation,
            config,
            args: BTreeMap::new(),
            build_args: self.build_args.clone(),
            meta_args: self.meta_args(),
            escape: self.parsed.escape,
            cmd_set: false,
            scratch,
        };
        state.config.created = None;
        // BuildKit and buildah give every image without a PATH the default one.
        if state.config.env_value("PATH").is_none() {
            state.config.set_env("PATH", crate::run::DEFAULT_PATH);
        }
        Ok(state)
    }

    /// The steps of a stage: the base's ONBUILD triggers first (then dropped from the new
    /// image), then the stage's own instructions.
    fn stage_steps(
        &self,
        stage: &Stage,
        base: &str,
        state: &mut StageState,
    ) -> Result<Vec<Located>, BuildError> {
        let triggers = state.config.config.on_build.take().unwrap_or_default();
        let mut steps: Vec<Located> = Vec::new();
        for trigger in &triggers {
            let located = dockerfile::parse_instruction(trigger, stage.line, self.parsed.escape)
                .map_err(|source| BuildError::Parse {
                    path: format!("ONBUILD trigger {trigger:?} of {base}"),
                    source,
                })?;
            steps.push(located);
        }
        steps.extend(stage.instructions.iter().cloned());
        Ok(steps)
    }

    /// The first link of a stage's key chain: a constant for scratch, the parent stage's last
    /// key, or the base image's identity (config without timestamps, layer digests).
    fn base_key(
        &self,
        base: &str,
        index: usize,
        config: &ImageConfig,
        layers: &[ImageLayer],
    ) -> String {
        if base.eq_ignore_ascii_case("scratch") {
            return scratch_key();
        }
        if let Some(parent) = self.stage_ref(base, index) {
            if let Some(key) = self.stage_keys.get(&parent) {
                return key.clone();
            }
        }
        let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        base_image_key(config, &digests)
    }

    fn cacheable(&self, instruction: &Instruction) -> Cacheable {
        match instruction {
            Instruction::Run(_) if self.opts.cache_run_layers => Cacheable::Yes,
            // What a URL serves can change without the Dockerfile changing: only a pinned
            // checksum makes such an ADD cacheable.
            Instruction::Add(args)
                if args.checksum.is_none() && args.sources.iter().any(|s| s.contains("://")) =>
            {
                Cacheable::No
            }
            Instruction::Copy(_) | Instruction::Add(_) if self.opts.cache_copy_layers => {
                Cacheable::Yes
            }
            Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) => Cacheable::Disabled,
            _ => Cacheable::No,
        }
    }

    /// A step's cache key (see [`crate::cache::key`]). What goes in besides the chain: for RUN
    /// the command as written (the shell expands it) and the variables it runs with; for
    /// COPY/ADD the expanded arguments and the files they read; for metadata steps the text
    /// only, since later steps hash the config they see themselves.
    fn step_key(
        &self,
        previous: &str,
        located: &Located,
        state: &StageState,
        source: Option<&SourceRef>,
    ) -> Result<String, BuildError> {
        let step_err = |e: commands::CommandError| BuildError::Step {
            line: located.line,
            instruction: located.original.trim().to_string(),
            source: e,
        };
        let mut input = StepInput {
            previous: previous.to_string(),
            user: state.config.config.user.clone().unwrap_or_default(),
            workdir: state.workdir(),
            shell: state.shell(),
            ..Default::default()
        };
        match &located.instruction {
            Instruction::Run(args) => {
                input.instruction =
                    format!("RUN {}", serde_json::to_string(args).unwrap_or_default());
                input.visible_env = state.run_env();
            }
            Instruction::Copy(args) | Instruction::Add(args) => {
                let is_add = matches!(located.instruction, Instruction::Add(_));
                let expand_opt = |v: &Option<String>| -> Result<Option<String>, BuildError> {
                    v.as_ref()
                        .map(|t| state.expand(t))
                        .transpose()
                        .map_err(step_err)
                };
                let mut inline = Vec::new();
                let mut origin_sources = Vec::new();
                for raw in &args.sources {
                    if let Some(doc) = args.heredocs.iter().find(|d| &d.name == raw) {
                        // The copy writes the heredoc with variables expanded as the step sees them.
                        let content = if doc.expand {
                            expand_for_key(state, &doc.content)
                        } else {
                            doc.content.clone()
                        };
                        inline.push((doc.name.clone(), content));
                    } else {
                        origin_sources.push(state.expand(raw).map_err(step_err)?);
                    }
                }
                // The context never changes during a build, nor does an earlier stage's or an
                // image's root once a later stage reads it, so what was read decides the digest.
                let read = serde_json::json!({
                    "kind": if is_add { "ADD" } else { "COPY" },
                    "from": match source {
                        Some(SourceRef::Context) => "context".to_string(),
                        Some(SourceRef::Root(root)) => format!("root:{}", root.display()),
                        None => "none".to_string(),
                    },
                    "inline": inline,
                    "sources": origin_sources,
                })
                .to_string();
                let known = self.file_digests.borrow().get(&read).cloned();
                let files = match known {
                    Some(files) => files,
                    None => {
                        let files =
                            self.file_digest(located, source, is_add, &inline, &origin_sources)?;
                        self.file_digests.borrow_mut().insert(read, files.clone());
                        files
                    }
                };
                let expanded = serde_json::json!({
                    "kind": if is_add { "ADD" } else { "COPY" },
                    "sources": origin_sources,
                    "dest": state.in_image_path(&state.expand(&args.dest).map_err(step_err)?),
                    "from": args.from,
                    "chown": expand_opt(&args.chown)?,
                    "chmod": expand_opt(&args.chmod)?,
                    "link": args.link,
                    "checksum": args.checksum,
                    "keep_git_dir": args.keep_git_dir,
                    "exclude": args.exclude,
                    "parents": args.parents,
                });
                input.instruction = expanded.to_string();
                input.files = Some(files);
            }
            _ => input.instruction = located.original.trim().to_string(),
        }
        Ok(input.key())
    }

    /// [`FileDigest::finish`] of what a COPY/ADD reads: its heredocs, then its sources.
    fn file_digest(
        &self,
        located: &Located,
        source: Option<&SourceRef>,
        is_add: bool,
        inline: &[(String, String)],
        origin_sources: &[String],
    ) -> Result<String, BuildError> {
        let hash_err = |e: crate::cache::key::FileHashError| BuildError::Io {
            what: format!("line {}: {}", located.line, e),
            source: std::io::Error::other("cache key"),
        };
        let mut files = FileDigest::new(matches!(source, Some(SourceRef::Root(_))));
        for (name, content) in inline {
            files.add_inline(name, content);
        }
        match source {
            Some(SourceRef::Context) if !origin_sources.is_empty() => {
                let ctx = self.context;
                match ctx.resolve_sources(origin_sources) {
                    Ok(paths) => {
                        let excluded = |p: &Path| ctx.is_excluded_host(p);
                        for path in paths {
                            files
                                .add_source(ctx.root(), &path, &excluded)
                                .map_err(hash_err)?;
                        }
                    }
                    // The step itself reports the missing source when it runs.
                    Err(e) => files.add_inline("unresolved", &e.to_string()),
                }
            }
            Some(SourceRef::Root(root)) => {
                let name = if is_add { "ADD" } else { "COPY" };
                for src in origin_sources {
                    match commands::copy::resolve_root_source(root, src, name) {
                        Ok(paths) => {
                            for path in paths {
                                files
                                    .add_source(root, &path, &|_: &Path| false)
                                    .map_err(hash_err)?;
                            }
                        }
                        Err(e) => files.add_inline("unresolved", &e.to_string()),
                    }
                }
            }
            _ => {}
        }
        Ok(files.finish())
    }

    /// Look a key up in the layer cache (once per build, usually started ahead by
    /// [`Builder::prefetch_lookups`]); any cache error is a warning and a miss.
    fn lookup(&mut self, key: &str) -> Option<CacheHit> {
        self.lookups.as_mut()?.get(self.runtime, key)
    }

    /// Start the layer-cache lookups of a stage's cacheable steps before the first one runs,
    /// [`LOOKUP_CONCURRENCY`] at a time, so that a chain of steps costs about one registry
    /// round trip instead of one per step. A step's key depends on the previous key, never on
    /// a lookup's answer, so the keys are worked out here as the build will work them out: over
    /// a copy of `state` on a scratch root, where metadata steps run (they change only the
    /// config) and RUN/COPY/ADD do not. This only starts lookups: the build still computes
    /// every key itself and takes the answers in step order, so a key predicted wrongly costs a
    /// wasted request, never a wrong hit. Stops at the first step whose key cannot be known
    /// yet (a `COPY --from` an image not pulled yet, a metadata step that fails here).
    fn prefetch_lookups(
        &mut self,
        index: usize,
        steps: &[Located],
        state: &StageState,
        prev_key: &str,
    ) -> Result<(), BuildError> {
        if self.lookups.is_none() {
            return Ok(());
        }
        let probe = self.work_dir.join(format!("stages/{index}/key-probe"));
        let mut probe_state = state.clone();
        probe_state.root = probe.join("rootfs");
        probe_state.scratch = probe.join("scratch");
        for dir in [&probe_state.root, &probe_state.scratch] {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let mut prev = prev_key.to_string();
        let mut started = 0usize;
        for located in steps {
            let source = match &located.instruction {
                Instruction::Copy(args) | Instruction::Add(args) => {
                    // Pulling an image for `COPY --from` is the step's business, not a lookup's.
                    let pulled = args.from.as_ref().is_none_or(|from| {
                        self.stage_ref(from, index).is_some()
                            || self.remote_roots.contains_key(from)
                    });
                    if !pulled {
                        break;
                    }
                    match self.copy_source(&located.instruction, index) {
                        Ok(source) => source,
                        Err(_) => break,
                    }
                }
                _ => None,
            };
            let Ok(key) = self.step_key(&prev, located, &probe_state, source.as_ref()) else {
                break;
            };
            match &located.instruction {
                Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) => {
                    if self.cacheable(&located.instruction) == Cacheable::Yes {
                        if let Some(lookups) = self.lookups.as_mut() {
                            lookups.start(self.runtime, &key);
                            started += 1;
                        }
                    }
                }
                other => {
                    if commands::execute(other, &mut probe_state, None).is_err() {
                        break;
                    }
                }
            }
            prev = key;
        }
        tracing::debug!(
            stage = index + 1,
            started,
            "layer cache lookups started ahead of the steps"
        );
        Ok(())
    }

    /// Apply a cache hit over `root`: fetch the layer (verified), unpack it, and add it to the
    /// image as is (no re-compression: its digest and diff_id are known). Returns a log note.
    fn apply_hit(
        &mut self,
        hit: &CacheHit,
        root: &Path,
        layers: &mut Vec<ImageLayer>,
    ) -> Result<String, BuildError> {
        let Some(layer) = &hit.layer else {
            return Ok("no changes".into());
        };
        let cache = self
            .layer_cache
            .clone()
            .ok_or_else(|| BuildError::Usage("cache hit without a layer cache".into()))?;
        let blob_dir = self.work_dir.join("blobs");
        std::fs::create_dir_all(&blob_dir)
            .map_err(io_err(format!("creating {}", blob_dir.display())))?;
        let path = self
            .runtime
            .block_on(cache.fetch(hit, &blob_dir))
            .map_err(|e| BuildError::Usage(format!("fetching cached layer {}: {e}", layer.digest)))?
            .ok_or_else(|| {
                BuildError::Usage(format!("cached layer {} has no file", layer.digest))
            })?;
        let image_layer = ImageLayer {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            size: layer.size,
            media_type: layer.media_type.clone(),
            path,
        };
        self.unpack(&image_layer, &cache.describe(), root)?;
        let note = format!("layer {}", layer.digest);
        layers.push(image_layer);
        Ok(note)
    }

    /// Push a new cache entry in the background of the build; failures are warnings.
    fn store_in_background(&mut self, key: &str, layer: Option<NewLayer>, created_by: &str) {
        let Some(cache) = self.layer_cache.clone() else {
            return;
        };
        if self.opts.no_push_cache {
            return;
        }
        let key = key.to_string();
        let created_by = created_by.to_string();
        // The registry's push future is not provably `Send` (its blob stream borrows), so it runs
        // on a thread of its own, driven by the builder's runtime, while the build goes on.
        let runtime = self.runtime.handle().clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-cache-push".into())
            .spawn(move || {
                let started = Instant::now();
                match runtime.block_on(cache.store(&key, layer.as_ref(), &created_by)) {
                    Ok(()) => tracing::debug!(
                        "stored cache entry {} in {}",
                        short_key(&key),
                        secs(started.elapsed())
                    ),
                    Err(e) => warn!(
                        "could not store the cache entry {} for {created_by:?}: {e}",
                        short_key(&key)
                    ),
                }
            });
        match spawned {
            Ok(handle) => self.pending_stores.push(handle),
            Err(e) => warn!("could not start a cache push: {e}"),
        }
    }

    /// Start uploading a new layer of the target stage to every destination while the build
    /// goes on, so that the final push has only the config and manifest left to send. Failures
    /// are only logged: the final push uploads whatever is missing and reports its own errors.
    fn push_ahead(&mut self, layer: &ImageLayer) {
        if self.opts.no_push {
            return;
        }
        for dest in &self.opts.destinations {
            let registry = Arc::clone(&self.registry);
            let runtime = self.runtime.handle().clone();
            let dest = dest.clone();
            let blob = Blob {
                digest: layer.digest.clone(),
                size: layer.size,
                source: BlobSource::File(layer.path.clone()),
                mount_from: None,
            };
            // Like cache stores, on a thread of its own: the upload future is not `Send`.
            let spawned = std::thread::Builder::new()
                .name("kiln-push-ahead".into())
                .spawn(move || {
                    if let Err(e) = runtime.block_on(registry.push_blob_ahead(&dest, &blob)) {
                        tracing::debug!(
                            "early upload of {} to {dest} failed, the push will retry: {e}",
                            blob.digest
                        );
                    }
                });
            match spawned {
                Ok(handle) => self.pending_pushes.push(handle),
                Err(e) => tracing::debug!("could not start an early upload: {e}"),
            }
        }
    }

    /// Wait for the early layer uploads before the image itself is pushed.
    fn finish_early_pushes(&mut self) {
        for handle in std::mem::take(&mut self.pending_pushes) {
            if handle.join().is_err() {
                warn!("an early layer upload panicked; the push uploads the layer itself");
            }
        }
    }

    /// Wait for the background cache pushes; the build's result does not depend on them.
    fn finish_cache_stores(&mut self) {
        let handles = std::mem::take(&mut self.pending_stores);
        if handles.is_empty() {
            return;
        }
        let started = Instant::now();
        let count = handles.len();
        for handle in handles {
            if handle.join().is_err() {
                warn!("a cache push task panicked");
            }
        }
        info!(
            "cache: {count} new entr{} pushed (waited {})",
            if count == 1 { "y" } else { "ies" },
            secs(started.elapsed())
        );
    }

    /// When every RUN/COPY/ADD of the target stage is a cache hit (or there are none), build it
    /// without downloading or unpacking the base layers: the image is the base manifest's
    /// layers plus the cached ones. Any step that needs the root (a miss, WORKDIR, COPY
    /// --chown, a metadata step that touches files) means `None`: the normal path.
    fn try_skip_base(
        &mut self,
        index: usize,
        stage: &Stage,
        base: &str,
        label: &str,
    ) -> Result<Option<BuiltStage>, BuildError> {
        if self.layer_cache.is_none()
            || index != self.target
            || base.eq_ignore_ascii_case("scratch")
            || self.stage_ref(base, index).is_some()
        {
            return Ok(None);
        }
        let (config, base_layers, reference) = self.base_manifest(base)?;
        let probe_root = self.work_dir.join(format!("stages/{index}/probe-root"));
        std::fs::create_dir_all(&probe_root)
            .map_err(io_err(format!("creating {}", probe_root.display())))?;
        let mut prev_key = self.base_key(base, index, &config, &base_layers);
        let mut state = self.stage_state(index, probe_root.clone(), config)?;
        let steps = self.stage_steps(stage, base, &mut state)?;
        self.prefetch_lookups(index, &steps, &state, &prev_key)?;
        let mut hits: Vec<(usize, String, CacheHit)> = Vec::new();
        let mut history = Vec::new();
        for (n, located) in steps.iter().enumerate() {
            let text = located.original.trim().to_string();
            let needs_root = |why: &str| {
                tracing::debug!("[{label}] base image needed: {why} ({text})");
            };
            match &located.instruction {
                Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) => {
                    if self.cacheable(&located.instruction) != Cacheable::Yes {
                        needs_root("a step that is not cached");
                        return Ok(None);
                    }
                    if let Instruction::Copy(a) | Instruction::Add(a) = &located.instruction {
                        if a.chown.is_some() {
                            needs_root("--chown resolves names in the image");
                            return Ok(None);
                        }
                    }
                    let source = self.copy_source(&located.instruction, index)?;
                    let key = self.step_key(&prev_key, located, &state, source.as_ref())?;
                    let Some(hit) = self.lookup(&key) else {
                        needs_root("cache miss");
                        return Ok(None);
                    };
                    history.push(self.history(&text, hit.layer.is_none()));
                    hits.push((n, text, hit));
                    prev_key = key;
                }
                Instruction::Workdir(_) => {
                    needs_root("WORKDIR creates its directory in the image");
                    return Ok(None);
                }
                _ => {
                    let key = self.step_key(&prev_key, located, &state, None)?;
                    let outcome = commands::execute(&located.instruction, &mut state, None)
                        .map_err(|source| BuildError::Step {
                            line: located.line,
                            instruction: text.clone(),
                            source,
                        })?;
                    if outcome == Outcome::Filesystem {
                        needs_root("the step changes files");
                        return Ok(None);
                    }
                    history.push(self.history(&text, true));
                    prev_key = key;
                }
            }
        }
        let Some(cache) = self.layer_cache.clone() else {
            return Ok(None);
        };
        let mut layers = base_layers;
        for layer in &layers {
            if !layer.path.exists() {
                self.remote_layers
                    .insert(layer.digest.clone(), reference.clone());
            }
        }
        let total = steps.len();
        for (n, text, hit) in &hits {
            self.stats.hits += 1;
            let Some(layer) = &hit.layer else {
                info!(
                    "[{label}] step {}/{total}: {text} (cache hit, no changes)",
                    n + 1
                );
                continue;
            };
            let path = match cache.blob_reference(&hit.key) {
                Some(reference) => {
                    self.remote_layers.insert(layer.digest.clone(), reference);
                    self.work_dir
                        .join("blobs")
                        .join(layer.digest.replace(':', "-"))
                }
                None => self
                    .runtime
                    .block_on(cache.fetch(hit, &self.work_dir.join("blobs")))
                    .map_err(|e| {
                        BuildError::Usage(format!("reading cached layer {}: {e}", layer.digest))
                    })?
                    .unwrap_or_default(),
            };
            info!(
                "[{label}] step {}/{total}: {text} (cache hit, layer {})",
                n + 1,
                layer.digest
            );
            layers.push(ImageLayer {
                digest: layer.digest.clone(),
                diff_id: layer.diff_id.clone(),
                size: layer.size,
                media_type: layer.media_type.clone(),
                path,
            });
        }
        state.config.history.extend(history);
        info!("[{label}] base image layers not needed: every step is a cache hit or changes only the config");
        self.stage_keys.insert(index, prev_key);
        Ok(Some(BuiltStage {
            root: probe_root,
            config: state.config,
            layers,
        }))
    }

    /// A base image's config and layer descriptors without downloading layers (from the
    /// base-image cache when it holds the image, with its verified files). Returns the
    /// reference the layers can be fetched from later.
    fn base_manifest(
        &mut self,
        reference: &str,
    ) -> Result<(ImageConfig, Vec<ImageLayer>, String), BuildError> {
        if let Some(found) = self.cached_base(reference)? {
            return Ok((found.0, found.1, reference.to_string()));
        }
        let image = self.runtime.block_on(self.registry.pull_image(reference))?;
        let config: ImageConfig = serde_json::from_slice(&image.config_bytes).map_err(|e| {
            BuildError::Usage(format!(
                "the config of {reference} ({}) is not valid JSON: {e}",
                image.config_digest
            ))
        })?;
        let descriptors = image.manifest.layers();
        if descriptors.len() != config.rootfs.diff_ids.len() {
            return Err(BuildError::Usage(format!(
                "{reference}: the manifest lists {} layers but the config {} diff_ids",
                descriptors.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let blob_dir = self.work_dir.join("blobs");
        let layers = descriptors
            .iter()
            .zip(config.rootfs.diff_ids.iter())
            .map(|(desc, diff_id)| ImageLayer {
                digest: desc.digest().to_string(),
                diff_id: diff_id.clone(),
                size: desc.size(),
                media_type: oci_layer_media_type(desc.media_type().as_ref()),
                path: blob_dir.join(desc.digest().to_string().replace(':', "-")),
            })
            .collect();
        Ok((config, layers, image.reference))
    }

    /// The base image from `--cache-dir`, if it holds it (manifest and config verified; each
    /// layer blob is verified when it is read, see [`Builder::cached_layers`]).
    fn cached_base(
        &mut self,
        reference: &str,
    ) -> Result<Option<(ImageConfig, Vec<ImageLayer>)>, BuildError> {
        let Some(cache) = &self.base_cache else {
            return Ok(None);
        };
        if self.damaged_cache_refs.contains(reference) {
            return Ok(None);
        }
        let Some(image) = cache.find_or_pull(reference, &self.platform) else {
            return Ok(None);
        };
        let config: ImageConfig = serde_json::from_slice(&image.config_bytes).map_err(|e| {
            BuildError::Usage(format!(
                "the cached config of {reference} ({}) is not valid JSON: {e}",
                image.config_digest
            ))
        })?;
        let layers: Vec<ImageLayer> = image
            .layers
            .into_iter()
            .map(|l| ImageLayer {
                digest: l.digest,
                diff_id: l.diff_id,
                size: l.size,
                media_type: oci_layer_media_type(&l.media_type),
                path: l.path,
            })
            .collect();
        for layer in &layers {
            self.cached_layers
                .insert(layer.path.clone(), reference.to_string());
        }
        Ok(Some((config, layers)))
    }

    /// The file to read a layer from for an upload or an archive. A blob from the base-image
    /// cache is hashed first (once per build); a damaged one is fetched from its image's
    /// registry into the work directory instead, with a warning.
    fn checked_layer_path(&self, layer: &ImageLayer) -> Result<PathBuf, BuildError> {
        let (Some(reference), Some(cache)) =
            (self.cached_layers.get(&layer.path), &self.base_cache)
        else {
            return Ok(layer.path.clone());
        };
        if let Some(path) = self.checked_layers.borrow().get(&layer.path) {
            return Ok(path.clone());
        }
        let path = match cache.verify_layer(&layer.digest) {
            Ok(()) => layer.path.clone(),
            Err(e) => {
                warn!("{reference}: {e}; fetching the layer from the registry instead");
                let blob_dir = self.work_dir.join("blobs");
                std::fs::create_dir_all(&blob_dir)
                    .map_err(io_err(format!("creating {}", blob_dir.display())))?;
                let dest = blob_dir.join(layer.digest.replace(':', "-"));
                if !dest.exists() {
                    self.runtime.block_on(self.registry.fetch_blob_to_file(
                        reference,
                        &layer.digest,
                        &dest,
                    ))?;
                }
                dest
            }
        };
        self.checked_layers
            .borrow_mut()
            .insert(layer.path.clone(), path.clone());
        Ok(path)
    }

    /// Make a layer's blob present at its path, fetching it from where it was left (a base
    /// image or the cache repository) when the build did not need it until now.
    fn ensure_local(&self, layer: &ImageLayer) -> Result<(), BuildError> {
        if layer.path.exists() {
            return Ok(());
        }
        let reference = self.remote_layers.get(&layer.digest).ok_or_else(|| {
            BuildError::Usage(format!(
                "layer {} is neither on disk nor known in any repository",
                layer.digest
            ))
        })?;
        if let Some(parent) = layer.path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        self.runtime.block_on(self.registry.fetch_blob_to_file(
            reference,
            &layer.digest,
            &layer.path,
        ))?;
        Ok(())
    }

    /// Which of `digests` the repository of `reference` holds, asked several at a time; a
    /// failed check counts as absent (the blob is then uploaded).
    fn blobs_present(&self, reference: &str, digests: Vec<String>) -> BTreeSet<String> {
        use futures_util::StreamExt;
        let registry: &Registry = &self.registry;
        self.runtime.block_on(
            futures_util::stream::iter(digests)
                .map(|digest| async move {
                    let present = registry
                        .blob_exists(reference, &digest)
                        .await
                        .unwrap_or(false);
                    present.then_some(digest)
                })
                .buffer_unordered(LOOKUP_CONCURRENCY)
                .filter_map(|d| async move { d })
                .collect(),
        )
    }

    fn history(&self, created_by: &str, empty_layer: bool) -> History {
        History {
            created: Some(self.timestamp()),
            created_by: Some(created_by.to_string()),
            comment: Some("kiln".into()),
            empty_layer,
            ..Default::default()
        }
    }

    fn timestamp(&self) -> String {
        if self.opts.reproducible {
            "1970-01-01T00:00:00Z".to_string()
        } else {
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        }
    }

    /// Paths left out of snapshots and unpacking. In a private root only `--ignore-path` applies;
    /// in place, also Kiln's own directory, kernel filesystems, mount points and (by default) /var/run.
    fn ignore_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .opts
            .ignore_paths
            .iter()
            .map(|p| PathBuf::from(crate::fsutil::clean_abs(p)))
            .collect();
        if self.isolation == Isolation::InPlace {
            paths.extend(crate::container::in_place_ignore_paths(
                &self.work_dir,
                self.opts.ignore_var_run,
            ));
            // The context must survive clearing `/` even when it is not a mount point
            // (e.g. a directory baked into the image); its files never belong in a layer.
            if self.context.root().is_absolute() && self.context.root() != Path::new("/") {
                paths.push(self.context.root().to_path_buf());
            }
        }
        paths
    }

    /// Set up the base of a stage in a private root: unpack an image, an earlier stage, or nothing.
    fn prepare_base(
        &mut self,
        base: &str,
        index: usize,
        stage: &Stage,
        root: &Path,
    ) -> Result<(ImageConfig, Vec<ImageLayer>), BuildError> {
        if base.eq_ignore_ascii_case("scratch") {
            return Ok((self.scratch_config(), Vec::new()));
        }
        if let Some(parent) = self.stage_ref(base, index) {
            let parent_stage = self.built.get(&parent).ok_or_else(|| {
                BuildError::Usage(format!(
                    "stage {} (FROM {base}) needs stage {parent}, which was not built",
                    index
                ))
            })?;
            // Re-apply the parent's layers: the parent root stays intact for `COPY --from`.
            let (config, layers) = (parent_stage.config.clone(), parent_stage.layers.clone());
            for layer in &layers {
                self.unpack(layer, base, root)?;
            }
            return Ok((config, layers));
        }
        let _ = stage;
        let (config, layers) = self.pull_base(base)?;
        self.unpack_base(base, config, layers, root)
    }

    /// Set up the base of a stage in place: the root is `/`. The base is fetched first (the
    /// registry client still has the executor image's files), then `/` is emptied of everything
    /// not ignored — moving an earlier stage that a later `COPY --from` reads into the work dir
    /// first — and the base's layers are unpacked over it.
    fn prepare_in_place(
        &mut self,
        base: &str,
        index: usize,
        stage: &Stage,
    ) -> Result<(PathBuf, ImageConfig, Vec<ImageLayer>), BuildError> {
        let _ = stage;
        let root = PathBuf::from("/");
        let (config, layers) = if base.eq_ignore_ascii_case("scratch") {
            (self.scratch_config(), Vec::new())
        } else if let Some(parent) = self.stage_ref(base, index) {
            let parent_stage = self.built.get(&parent).ok_or_else(|| {
                BuildError::Usage(format!(
                    "stage {index} (FROM {base}) needs stage {parent}, which was not built"
                ))
            })?;
            (parent_stage.config.clone(), parent_stage.layers.clone())
        } else {
            let (config, layers) = self.pull_base(base)?;
            // `/` is emptied before the layers are applied, and a damaged cached layer found
            // half-way could then only be replaced by a pull without the executor image's
            // files: cached layers are checked (and replaced when damaged) before.
            let layers = layers
                .into_iter()
                .map(|mut layer| {
                    layer.path = self.checked_layer_path(&layer)?;
                    Ok(layer)
                })
                .collect::<Result<Vec<_>, BuildError>>()?;
            (config, layers)
        };

        let ignore = self.ignore_paths();
        let started = Instant::now();
        // At most one earlier stage lives at `/`: the one built just before this one.
        let at_root: Option<usize> = self
            .built
            .iter()
            .filter(|(_, b)| b.root == root)
            .map(|(&i, _)| i)
            .max();
        let save = match at_root {
            Some(n) if self.read_by_later_copy(n, index)? => Some(n),
            _ => None,
        };
        let saved_root = save.map(|n| self.work_dir.join(format!("stages/{n}/saved-root")));
        let stats = crate::container::clear_root(&root, &ignore, saved_root.as_deref()).map_err(
            io_err("clearing / for the next base image (in-place build)"),
        )?;
        if let (Some(n), Some(saved)) = (save, &saved_root) {
            info!(
                "moved stage {n}'s files ({} entries) to {} for COPY --from",
                stats.entries,
                saved.display()
            );
            if let Some(built) = self.built.get_mut(&n) {
                built.root = saved.clone();
            }
            let later: Vec<usize> = (n + 1..self.parsed.stages.len()).collect();
            self.keep_only_copied_files(n, &later)?;
        } else {
            info!(
                "cleared / ({} entries) in {}",
                stats.entries,
                secs(started.elapsed())
            );
        }
        // Stages left at `/` are gone now; nothing reads them again (their layers remain).
        for built in self.built.values_mut().filter(|b| b.root == root) {
            built.root = PathBuf::new();
        }
        for layer in &layers {
            self.unpack(layer, base, &root)?;
        }
        Ok((root, config, layers))
    }

    /// Whether stage `n`'s files are read by a `COPY --from`/`ADD --from` of a planned stage at or after `from_index`.
    fn read_by_later_copy(&self, n: usize, from_index: usize) -> Result<bool, BuildError> {
        let plan = self.plan(self.target_index()?)?;
        Ok(plan.iter().filter(|&&i| i >= from_index).any(|&i| {
            self.parsed.stages[i]
                .instructions
                .iter()
                .any(|located| match &located.instruction {
                    Instruction::Copy(args) | Instruction::Add(args) => {
                        args.from.as_deref().and_then(|f| self.stage_ref(f, i)) == Some(n)
                    }
                    _ => false,
                })
        }))
    }

    /// The config a `FROM scratch` stage starts with.
    fn scratch_config(&self) -> ImageConfig {
        ImageConfig {
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            ..Default::default()
        }
    }

    /// A base image from the base-image cache when it holds it (layers verified as they are
    /// read), else pulled: manifest and config, then every layer blob (verified) into the work dir.
    fn pull_base(&mut self, reference: &str) -> Result<(ImageConfig, Vec<ImageLayer>), BuildError> {
        let started = Instant::now();
        if let Some((config, layers)) = self.cached_base(reference)? {
            info!(
                "{reference}: read from the base-image cache ({} layer(s)) in {}",
                layers.len(),
                secs(started.elapsed())
            );
            return Ok((config, layers));
        }
        self.pull_remote(reference)
    }

    /// Pull a base image from its registry: manifest and config, then every layer blob
    /// (verified) into the work dir.
    fn pull_remote(
        &mut self,
        reference: &str,
    ) -> Result<(ImageConfig, Vec<ImageLayer>), BuildError> {
        let started = Instant::now();
        let image = self.runtime.block_on(self.registry.pull_image(reference))?;
        let config: ImageConfig = serde_json::from_slice(&image.config_bytes).map_err(|e| {
            BuildError::Usage(format!(
                "the config of {reference} ({}) is not valid JSON: {e}",
                image.config_digest
            ))
        })?;
        let blob_dir = self.work_dir.join("blobs");
        std::fs::create_dir_all(&blob_dir)
            .map_err(io_err(format!("creating {}", blob_dir.display())))?;
        let descriptors = image.manifest.layers();
        if descriptors.len() != config.rootfs.diff_ids.len() {
            return Err(BuildError::Usage(format!(
                "{reference}: the manifest lists {} layers but the config {} diff_ids",
                descriptors.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        let mut total = 0u64;
        for (desc, diff_id) in descriptors.iter().zip(config.rootfs.diff_ids.iter()) {
            let digest = desc.digest().to_string();
            let path = blob_dir.join(digest.replace(':', "-"));
            if !path.exists() {
                self.runtime.block_on(self.registry.fetch_blob_to_file(
                    &image.reference,
                    &digest,
                    &path,
                ))?;
            }
            total += desc.size();
            layers.push(ImageLayer {
                digest,
                diff_id: diff_id.clone(),
                size: desc.size(),
                media_type: oci_layer_media_type(desc.media_type().as_ref()),
                path,
            });
        }
        info!(
            "pulled {} ({}, {} layer(s), {}) in {}",
            reference,
            short(&image.manifest_digest),
            layers.len(),
            human(total),
            secs(started.elapsed())
        );
        Ok((config, layers))
    }

    /// Apply a layer over `root`. A blob from the base-image cache is hashed while it is
    /// unpacked; if it does not match, `root` holds part of it and must not be used.
    fn unpack(&self, layer: &ImageLayer, image: &str, root: &Path) -> Result<(), BuildError> {
        let opts = UnpackOptions {
            ignore: self.ignore_paths(),
            same_owner: true,
        };
        let unpacked = if self.cached_layers.contains_key(&layer.path) {
            unpack_layer_verified(&layer.path, root, &opts, &layer.digest)
        } else {
            unpack_layer(&layer.path, root, &opts)
        };
        unpacked.map_err(|source| BuildError::Unpack {
            digest: layer.digest.clone(),
            image: image.to_string(),
            source: Box::new(source),
        })?;
        Ok(())
    }

    /// Apply a base image's layers over `root`. When a layer read from the base-image cache
    /// turns out damaged, whatever was applied is thrown away (`root` is emptied) and the
    /// image is pulled from its registry and applied instead, as a damaged cache entry found
    /// up front would have been. Returns the config and layers actually applied.
    fn unpack_base(
        &mut self,
        reference: &str,
        config: ImageConfig,
        layers: Vec<ImageLayer>,
        root: &Path,
    ) -> Result<(ImageConfig, Vec<ImageLayer>), BuildError> {
        for layer in &layers {
            match self.unpack(layer, reference, root) {
                Ok(()) => {}
                Err(BuildError::Unpack { source, .. })
                    if matches!(*source, UnpackError::Digest { .. })
                        && self.cached_layers.contains_key(&layer.path) =>
                {
                    warn!(
                        "{reference}: cached {source}; discarding {} and pulling the image from its registry",
                        root.display()
                    );
                    self.damaged_cache_refs.insert(reference.to_string());
                    empty_dir(root).map_err(io_err(format!(
                        "emptying {} after a damaged cached layer",
                        root.display()
                    )))?;
                    let (config, layers) = self.pull_remote(reference)?;
                    for layer in &layers {
                        self.unpack(layer, reference, root)?;
                    }
                    return Ok((config, layers));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((config, layers))
    }

    /// Where a COPY/ADD reads from: the context, an earlier stage's root, or an image's root.
    fn copy_source(
        &mut self,
        instruction: &Instruction,
        index: usize,
    ) -> Result<Option<SourceRef>, BuildError> {
        let args = match instruction {
            Instruction::Copy(a) | Instruction::Add(a) => a,
            _ => return Ok(None),
        };
        let Some(from) = &args.from else {
            return Ok(Some(SourceRef::Context));
        };
        if let Some(i) = self.stage_ref(from, index) {
            let built = self.built.get(&i).ok_or_else(|| {
                BuildError::Usage(format!(
                    "COPY --from={from}: stage {i} was not built (is it after this stage?)"
                ))
            })?;
            return Ok(Some(SourceRef::Root(built.root.clone())));
        }
        if self.stage_index_by_name(from).is_some() {
            return Err(BuildError::Usage(format!(
                "COPY --from={from}: a stage can only copy from stages before it"
            )));
        }
        if let Some(root) = self.remote_roots.get(from) {
            return Ok(Some(SourceRef::Root(root.clone())));
        }
        let root = self
            .work_dir
            .join(format!("images/{}", self.remote_roots.len()));
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        let (config, layers) = self.pull_base(from)?;
        self.unpack_base(from, config, layers, &root)?;
        self.remote_roots.insert(from.clone(), root.clone());
        Ok(Some(SourceRef::Root(root)))
    }

    /// Assemble config and manifest, then push to every destination and write the requested files.
    fn write_outputs(&self, stage: BuiltStage) -> Result<BuildResult, BuildError> {
        let mut config = stage.config;
        config.created = Some(self.timestamp());
        config.rootfs.diff_ids = stage.layers.iter().map(|l| l.diff_id.clone()).collect();
        if config.architecture.is_empty() {
            config.architecture = self.platform.architecture.clone();
        }
        if config.os.is_empty() {
            config.os = self.platform.os.clone();
        }
        for label in &self.opts.labels {
            let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
            config
                .config
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(k.to_string(), v.to_string());
        }
        let config_bytes = serde_json::to_vec(&config)
            .map_err(|e| BuildError::Usage(format!("serialising the image config: {e}")))?;
        let config_digest = sha256_digest(&config_bytes);
        let manifest = Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
            config: Descriptor {
                media_type: MEDIA_TYPE_OCI_CONFIG.to_string(),
                digest: config_digest.clone(),
                size: config_bytes.len() as u64,
                annotations: None,
            },
            layers: stage
                .layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    annotations: None,
                })
                .collect(),
            annotations: None,
        };
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| BuildError::Usage(format!("serialising the manifest: {e}")))?;
        let digest = sha256_digest(&manifest_bytes);

        let mut references = Vec::new();
        if !self.opts.no_push {
            for dest in &self.opts.destinations {
                let started = Instant::now();
                // Layers the build never downloaded (base layers it did not need, cache hits) go
                // to the destination only when it lacks them. On the same registry they are
                // named as mount sources, and the push (which checks every blob, several at a
                // time) skips or mounts them; from elsewhere they are fetched now and uploaded
                // unless the destination already has them. Layers in the base-image cache are
                // read (and so verified) only when the destination lacks them.
                let unfetched_from = |l: &ImageLayer| {
                    self.remote_layers
                        .get(&l.digest)
                        .filter(|_| !l.path.exists())
                        .cloned()
                };
                let cached = |l: &ImageLayer| self.cached_layers.contains_key(&l.path);
                let ask: Vec<String> = stage
                    .layers
                    .iter()
                    .filter(|l| {
                        cached(l) || unfetched_from(l).is_some_and(|o| !same_registry(&o, dest))
                    })
                    .map(|l| l.digest.clone())
                    .collect();
                let present = self.blobs_present(dest, ask);
                let mut blobs: Vec<Blob> = Vec::new();
                let mut unfetched = false;
                for l in &stage.layers {
                    let mut mount_from = None;
                    let mut path = l.path.clone();
                    if let Some(origin) = unfetched_from(l) {
                        if same_registry(&origin, dest) {
                            mount_from = Some(origin);
                            unfetched = true;
                        } else if present.contains(&l.digest) {
                            continue;
                        } else {
                            self.ensure_local(l)?;
                        }
                    } else if cached(l) {
                        if present.contains(&l.digest) {
                            continue;
                        }
                        path = self.checked_layer_path(l)?;
                    }
                    blobs.push(Blob {
                        digest: l.digest.clone(),
                        size: l.size,
                        source: BlobSource::File(path),
                        mount_from,
                    });
                }
                blobs.push(Blob {
                    digest: config_digest.clone(),
                    size: config_bytes.len() as u64,
                    source: BlobSource::Bytes(config_bytes.clone()),
                    mount_from: None,
                });
                let mut result = self.runtime.block_on(self.registry.push_image(
                    dest,
                    &blobs,
                    &manifest_bytes,
                    MEDIA_TYPE_OCI_MANIFEST,
                ));
                if let (Err(e), true) = (&result, unfetched) {
                    // A refused mount falls back to an upload, which needs the file.
                    warn!("{dest}: pushing with mounted layers failed ({e}); fetching them and uploading");
                    for l in &stage.layers {
                        self.ensure_local(l)?;
                    }
                    result = self.runtime.block_on(self.registry.push_image(
                        dest,
                        &blobs,
                        &manifest_bytes,
                        MEDIA_TYPE_OCI_MANIFEST,
                    ));
                }
                let pushed = result?;
                if pushed != digest {
                    warn!("{dest}: the registry reports digest {pushed}, Kiln computed {digest}");
                }
                info!("pushed {dest}@{digest} in {}", secs(started.elapsed()));
                references.push(format!("{dest}@{digest}"));
            }
        } else if !self.opts.destinations.is_empty() {
            info!(
                "--no-push: not pushing to {}",
                self.opts.destinations.join(", ")
            );
        }
        if let Some(path) = &self.opts.oci_layout_path {
            let layout_err = |message: String| BuildError::Layout {
                path: path.clone(),
                message,
            };
            let layout = kiln_oci::registry::layout::OciLayout::create(Path::new(path))
                .map_err(|e| layout_err(e.to_string()))?;
            for layer in &stage.layers {
                self.ensure_local(layer)?;
                layout
                    .write_blob_file(&self.checked_layer_path(layer)?, &layer.digest)
                    .map_err(|e| layout_err(e.to_string()))?;
            }
            layout
                .write_blob_bytes(&config_bytes)
                .map_err(|e| layout_err(e.to_string()))?;
            let ref_name = self
                .opts
                .destinations
                .first()
                .and_then(|d| tag_of(d))
                .unwrap_or_else(|| "latest".to_string());
            layout
                .add_manifest(&manifest_bytes, MEDIA_TYPE_OCI_MANIFEST, Some(&ref_name))
                .map_err(|e| layout_err(e.to_string()))?;
            info!("wrote OCI layout {path} (ref {ref_name})");
        }
        if let Some(path) = &self.opts.tar_path {
            let layers: Vec<crate::output::ArchiveLayer> = stage
                .layers
                .iter()
                .map(|l| {
                    // A layer the build skipped (base or cache hit) is fetched for the archive.
                    self.ensure_local(l)?;
                    Ok(crate::output::ArchiveLayer {
                        digest: l.digest.clone(),
                        path: self.checked_layer_path(l)?,
                    })
                })
                .collect::<Result<_, BuildError>>()?;
            let tags = crate::output::repo_tags(&self.opts.destinations);
            crate::output::write_docker_archive(Path::new(path), &config_bytes, &layers, &tags)
                .map_err(io_err(format!("writing --tar-path {path}")))?;
            info!(
                "wrote docker archive {path} (tags: {})",
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            );
        }
        Ok(BuildResult {
            digest,
            references,
            manifest: manifest_bytes,
            config: config_bytes,
        })
    }
}

/// BuildKit's automatic platform ARGs (`TARGETPLATFORM`, `TARGETARCH`, … and the `BUILD*` twins).
/// Kiln builds for the target platform on the host, so BUILDPLATFORM is the host's.
fn automatic_platform_args(target: &Platform) -> Vec<(String, String)> {
    kiln_oci::platform::automatic_args(target)
}

/// A heredoc source as the key sees it: its text and the variables its expansion can use.
fn expand_for_key(state: &StageState, content: &str) -> String {
    format!("{content}\0{}", state.run_env().join("\n"))
}

/// Empty a private root (a chroot build's, a `COPY --from` image's) to fill it again.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    // remove_dir_all never follows symlinks inside the tree.
    std::fs::remove_dir_all(dir)?;
    std::fs::create_dir_all(dir)
}

/// Whether two references name repositories on the same registry (so blobs can be mounted).
fn same_registry(a: &str, b: &str) -> bool {
    match (
        kiln_oci::registry::parse_reference(a),
        kiln_oci::registry::parse_reference(b),
    ) {
        (Ok(a), Ok(b)) => a.registry() == b.registry(),
        _ => false,
    }
}

/// The first hex digits of a cache key, for logs.
fn short_key(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

enum SourceRef {
    Context,
    Root(PathBuf),
}

/// The tag of a reference (`reg:5000/a/b:tag` → `tag`), if it has one.
fn tag_of(reference: &str) -> Option<String> {
    let name = reference.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, t)| t.to_string())
}

fn secs(d: Duration) -> String {
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
    use clap::Parser;

    #[test]
    fn in_place_outside_a_container_needs_force() {
        let opts = |args: &[&str]| {
            Options::try_parse_from(std::iter::once("kiln-executor").chain(args.iter().copied()))
                .expect("flags parse")
        };
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
    fn tags() {
        assert_eq!(tag_of("127.0.0.1:5000/a/b:v1").as_deref(), Some("v1"));
        assert_eq!(tag_of("127.0.0.1:5000/a/b").as_deref(), None);
        assert_eq!(tag_of("a/b:v1@sha256:abc").as_deref(), Some("v1"));
    }

    #[test]
    fn sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(2048), "2.0 KiB");
    }
}

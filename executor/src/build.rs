//! The build: reads the Dockerfile and context, builds the needed stages in order (pull or reuse
//! the base, run each instruction, snapshot), assembles the image and writes it to its outputs.
//! Logs each step with its timing. Knows nothing of Kubernetes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::{IsolationFlag, Options};
use crate::commands::{self, CopySource, Outcome, StageState};
use crate::context::BuildContext;
use crate::dockerfile::{self, Dockerfile, Instruction, Located, Stage};
use crate::image::{
    oci_layer_media_type, sha256_digest, Descriptor, History, ImageConfig, Manifest, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_MANIFEST,
};
use crate::registry::{Blob, BlobSource, Platform, Registry, RegistryOptions};
use crate::run::Isolation;
use crate::snapshot::{LayerOptions, Snapshotter};
use crate::unpack::{unpack_layer, UnpackOptions};

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
    Registry(#[from] crate::registry::RegistryError),
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
        source: crate::unpack::UnpackError,
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

    let mut context = BuildContext::open(&opts.context, &work_dir.join("context"))?;
    let dockerfile_path = locate_dockerfile(&opts.dockerfile, context.root())?;
    context.load_ignore(&dockerfile_path)?;
    let text = std::fs::read_to_string(&dockerfile_path)
        .map_err(|source| BuildError::Dockerfile { path: dockerfile_path.clone(), source })?;
    let parsed = dockerfile::parse(&text)
        .map_err(|source| BuildError::Parse { path: dockerfile_path.display().to_string(), source })?;

    let platform = match &opts.custom_platform {
        Some(p) => p.parse::<Platform>().map_err(BuildError::Usage)?,
        None => Platform::default(),
    };
    let registry = Registry::new(registry_options(opts, platform.clone()))?;
    let mut builder = Builder {
        opts,
        parsed: &parsed,
        context: &context,
        registry: &registry,
        runtime: &runtime,
        work_dir: work_dir.clone(),
        isolation,
        platform,
        build_args: opts.build_arg_pairs().into_iter().collect(),
        built: HashMap::new(),
        remote_roots: HashMap::new(),
        layer_opts: LayerOptions { reproducible: opts.reproducible, ..Default::default() },
    };
    let started = Instant::now();
    let target = builder.target_index()?;
    let plan = builder.plan(target)?;
    info!(stages = plan.len(), "building {} stage(s) from {}", plan.len(), dockerfile_path.display());
    for &index in &plan {
        let keep_layers = index == target || builder.used_as_base(index, &plan);
        let stage = builder.build_stage(index, keep_layers)?;
        builder.built.insert(index, stage);
    }
    let final_stage = builder.built.remove(&target).ok_or_else(|| BuildError::Usage("target stage was not built".into()))?;
    let result = builder.write_outputs(final_stage)?;
    info!("built {} in {:.2}s", result.digest, started.elapsed().as_secs_f64());
    write_result_files(opts, &result)?;
    Ok(result)
}

/// Digest files in kaniko's formats and the termination message for a controller.
fn write_result_files(opts: &Options, result: &BuildResult) -> Result<(), BuildError> {
    use crate::output;
    if let Some(path) = &opts.digest_file {
        std::fs::write(path, &result.digest).map_err(io_err(format!("writing --digest-file {path}")))?;
    }
    if let Some(path) = &opts.image_name_with_digest_file {
        std::fs::write(path, output::names_with_digest(&opts.destinations, &result.digest))
            .map_err(io_err(format!("writing --image-name-with-digest-file {path}")))?;
    }
    if let Some(path) = &opts.image_name_tag_with_digest_file {
        std::fs::write(path, output::names_tag_with_digest(&opts.destinations, &result.digest))
            .map_err(io_err(format!("writing --image-name-tag-with-digest-file {path}")))?;
    }
    let termination = std::env::var_os("KILN_TERMINATION_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(output::TERMINATION_LOG));
    output::write_termination_log(&termination, &result.digest, &result.references)
        .map_err(io_err(format!("writing the termination message {}", termination.display())))?;
    Ok(())
}

fn choose_isolation(opts: &Options) -> Result<Isolation, BuildError> {
    let in_container = crate::container::detect();
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
fn work_dir(opts: &Options, isolation: Isolation) -> Result<(PathBuf, Option<tempfile::TempDir>), BuildError> {
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
                std::fs::remove_dir_all(&build).map_err(io_err(format!("clearing {}", build.display())))?;
            }
            std::fs::create_dir_all(&build).map_err(io_err(format!("creating {}", build.display())))?;
            Ok((build, None))
        }
        None => {
            let base = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
            let tmp = tempfile::Builder::new()
                .prefix("kiln-")
                .tempdir_in(&base)
                .map_err(io_err(format!("creating a work directory in {}", base.display())))?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// kaniko's rule: an absolute path is used as is; a relative one is tried as given, then under the context.
fn locate_dockerfile(flag: &str, context_root: &Path) -> Result<PathBuf, BuildError> {
    let given = PathBuf::from(flag);
    let candidates = if given.is_absolute() { vec![given.clone()] } else { vec![context_root.join(&given), given.clone()] };
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        BuildError::Usage(format!(
            "Dockerfile {flag} not found (looked in the context {} and the current directory); set --dockerfile",
            context_root.display()
        ))
    })
}

fn registry_options(opts: &Options, platform: Platform) -> RegistryOptions {
    RegistryOptions {
        insecure: opts.insecure || opts.insecure_pull,
        insecure_registries: opts.insecure_registries.clone(),
        skip_tls_verify: opts.skip_tls_verify || opts.skip_tls_verify_pull,
        skip_tls_verify_registries: opts.skip_tls_verify_registries.clone(),
        mirrors: opts.registry_mirrors.clone(),
        platform,
        ..Default::default()
    }
}

struct Builder<'a> {
    opts: &'a Options,
    parsed: &'a Dockerfile,
    context: &'a BuildContext,
    registry: &'a Registry,
    runtime: &'a tokio::runtime::Runtime,
    work_dir: PathBuf,
    isolation: Isolation,
    platform: Platform,
    build_args: BTreeMap<String, String>,
    built: HashMap<usize, BuiltStage>,
    /// Roots of images unpacked for `COPY --from=<image>`, by reference.
    remote_roots: HashMap<String, PathBuf>,
    layer_opts: LayerOptions,
}

impl<'a> Builder<'a> {
    fn stage_index_by_name(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.parsed.stages.iter().position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    fn target_index(&self) -> Result<usize, BuildError> {
        let last = self.parsed.stages.len().checked_sub(1).ok_or_else(|| BuildError::Usage("the Dockerfile has no FROM".into()))?;
        match &self.opts.target {
            None => Ok(last),
            Some(t) => self.stage_index_by_name(t).ok_or_else(|| {
                let names: Vec<String> = self.parsed.stages.iter().filter_map(|s| s.name.clone()).collect();
                BuildError::Usage(format!("--target {t}: no stage of that name (stages: {})", names.join(", ")))
            }),
        }
    }

    /// Global ARG values (for FROM lines): defaults expanded in order, overridden by --build-arg,
    /// plus the automatic platform arguments.
    fn meta_args(&self) -> BTreeMap<String, Option<String>> {
        let mut values: BTreeMap<String, Option<String>> = automatic_platform_args(&self.platform).into_iter().map(|(k, v)| (k, Some(v))).collect();
        for decl in &self.parsed.meta_args {
            let value = if let Some(v) = self.build_args.get(&decl.name) {
                Some(v.clone())
            } else {
                decl.default.as_ref().map(|d| {
                    let lookup = |n: &str| values.get(n).cloned().flatten();
                    dockerfile::expand::expand_word(d, &lookup, self.parsed.escape).unwrap_or_else(|_| d.clone())
                })
            };
            values.insert(decl.name.clone(), value);
        }
        values
    }

    fn expand_from(&self, stage: &Stage) -> Result<String, BuildError> {
        let meta = self.meta_args();
        let lookup = |n: &str| meta.get(n).cloned().flatten();
        dockerfile::expand::expand_word(&stage.base, &lookup, self.parsed.escape).map_err(|e| BuildError::Step {
            line: stage.line,
            instruction: format!("FROM {}", stage.base),
            source: e.into(),
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

    /// Whether a later planned stage starts FROM this one (so its layers must be kept).
    fn used_as_base(&self, index: usize, plan: &[usize]) -> bool {
        plan.iter().filter(|&&i| i > index).any(|&i| {
            self.expand_from(&self.parsed.stages[i]).ok().and_then(|b| self.stage_ref(&b, i)) == Some(index)
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
        let root = self.work_dir.join(format!("stages/{index}/rootfs"));
        let (root, config, layers) = if self.isolation == Isolation::InPlace {
            self.prepare_in_place(&base, index, stage)?
        } else {
            std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
            let (config, layers) = self.prepare_base(&base, index, stage, &root)?;
            (root, config, layers)
        };
        info!("[{label}] base ready in {}", secs(started.elapsed()));

        let scratch = self.work_dir.join(format!("stages/{index}/scratch"));
        std::fs::create_dir_all(&scratch).map_err(io_err(format!("creating {}", scratch.display())))?;
        let mut state = StageState {
            root: root.clone(),
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
        let mut layers = layers;
        let ignore = self.ignore_paths();
        let mut snapshotter = if keep_layers { Some(Snapshotter::new(&root, ignore)?) } else { None };
        let layer_dir = self.work_dir.join("layers");
        std::fs::create_dir_all(&layer_dir).map_err(io_err(format!("creating {}", layer_dir.display())))?;

        // ONBUILD triggers of the base run first, then are dropped from the new image.
        let triggers = state.config.config.on_build.take().unwrap_or_default();
        let mut steps: Vec<Located> = Vec::new();
        for trigger in &triggers {
            let located = dockerfile::parse_instruction(trigger, stage.line, self.parsed.escape)
                .map_err(|source| BuildError::Parse { path: format!("ONBUILD trigger {trigger:?} of {base}"), source })?;
            steps.push(located);
        }
        steps.extend(stage.instructions.iter().cloned());

        let mut pending_single_snapshot = false;
        for (n, located) in steps.iter().enumerate() {
            let step_started = Instant::now();
            let text = located.original.trim().to_string();
            info!("[{label}] step {}/{}: {}", n + 1, steps.len(), text);
            let copy_source = self.copy_source(&located.instruction, index)?;
            let source = match &copy_source {
                Some(SourceRef::Context) => Some(CopySource::Context(self.context)),
                Some(SourceRef::Root(p)) => Some(CopySource::Root(p.as_path())),
                None => None,
            };
            let outcome = commands::execute(&located.instruction, &mut state, source).map_err(|source| BuildError::Step {
                line: located.line,
                instruction: text.clone(),
                source,
            })?;
            let mut layer_note = String::from("no layer");
            let mut empty_layer = true;
            if outcome == Outcome::Filesystem {
                if let Some(snap) = snapshotter.as_mut() {
                    if self.opts.single_snapshot {
                        pending_single_snapshot = true;
                        layer_note = "snapshot deferred (--single-snapshot)".into();
                    } else if let Some(layer) = snap.snapshot_layer(&layer_dir, &self.layer_opts)? {
                        layer_note = format!("layer {} ({})", short(&layer.digest), human(layer.size));
                        layers.push(ImageLayer {
                            digest: layer.digest,
                            diff_id: layer.diff_id,
                            size: layer.size,
                            media_type: layer.media_type,
                            path: layer.path,
                        });
                        empty_layer = false;
                    } else {
                        layer_note = "no changes".into();
                    }
                }
            }
            if keep_layers && !(self.opts.single_snapshot && outcome == Outcome::Filesystem) {
                state.config.history.push(self.history(&text, empty_layer));
            }
            info!("[{label}] step {}/{} done in {} ({layer_note})", n + 1, steps.len(), secs(step_started.elapsed()));
        }
        if pending_single_snapshot {
            if let Some(snap) = snapshotter.as_mut() {
                if let Some(layer) = snap.snapshot_layer(&layer_dir, &self.layer_opts)? {
                    info!("[{label}] single snapshot: layer {} ({})", short(&layer.digest), human(layer.size));
                    layers.push(ImageLayer {
                        digest: layer.digest,
                        diff_id: layer.diff_id,
                        size: layer.size,
                        media_type: layer.media_type,
                        path: layer.path,
                    });
                    state.config.history.push(self.history("single snapshot of all steps", false));
                }
            }
        }
        // A stage's ARGs are not part of the image; the config keeps only what the image needs.
        Ok(BuiltStage { root, config: state.config, layers })
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
        let mut paths: Vec<PathBuf> = self.opts.ignore_paths.iter().map(|p| PathBuf::from(crate::fsutil::clean_abs(p))).collect();
        if self.isolation == Isolation::InPlace {
            paths.extend(crate::container::in_place_ignore_paths(&self.work_dir, self.opts.ignore_var_run));
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
                BuildError::Usage(format!("stage {} (FROM {base}) needs stage {parent}, which was not built", index))
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
        for layer in &layers {
            self.unpack(layer, base, root)?;
        }
        Ok((config, layers))
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
                BuildError::Usage(format!("stage {index} (FROM {base}) needs stage {parent}, which was not built"))
            })?;
            (parent_stage.config.clone(), parent_stage.layers.clone())
        } else {
            self.pull_base(base)?
        };

        let ignore = self.ignore_paths();
        let started = Instant::now();
        // At most one earlier stage lives at `/`: the one built just before this one.
        let at_root: Option<usize> = self.built.iter().filter(|(_, b)| b.root == root).map(|(&i, _)| i).max();
        let save = match at_root {
            Some(n) if self.read_by_later_copy(n, index)? => Some(n),
            _ => None,
        };
        let saved_root = save.map(|n| self.work_dir.join(format!("stages/{n}/saved-root")));
        let stats = crate::container::clear_root(&root, &ignore, saved_root.as_deref())
            .map_err(io_err("clearing / for the next base image (in-place build)"))?;
        if let (Some(n), Some(saved)) = (save, &saved_root) {
            info!("moved stage {n}'s files ({} entries) to {} for COPY --from", stats.entries, saved.display());
            if let Some(built) = self.built.get_mut(&n) {
                built.root = saved.clone();
            }
        } else {
            info!("cleared / ({} entries) in {}", stats.entries, secs(started.elapsed()));
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
            self.parsed.stages[i].instructions.iter().any(|located| match &located.instruction {
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

    /// Pull a base image: manifest and config, then every layer blob (verified) into the work dir.
    fn pull_base(&mut self, reference: &str) -> Result<(ImageConfig, Vec<ImageLayer>), BuildError> {
        let started = Instant::now();
        let image = self.runtime.block_on(self.registry.pull_image(reference))?;
        let config: ImageConfig = serde_json::from_slice(&image.config_bytes).map_err(|e| {
            BuildError::Usage(format!("the config of {reference} ({}) is not valid JSON: {e}", image.config_digest))
        })?;
        let blob_dir = self.work_dir.join("blobs");
        std::fs::create_dir_all(&blob_dir).map_err(io_err(format!("creating {}", blob_dir.display())))?;
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
                self.runtime.block_on(self.registry.fetch_blob_to_file(&image.reference, &digest, &path))?;
            }
            total += desc.size();
            layers.push(ImageLayer {
                digest,
                diff_id: diff_id.clone(),
                size: desc.size(),
                media_type: oci_layer_media_type(&desc.media_type().to_string()),
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

    fn unpack(&self, layer: &ImageLayer, image: &str, root: &Path) -> Result<(), BuildError> {
        let opts = UnpackOptions { ignore: self.ignore_paths(), same_owner: true };
        unpack_layer(&layer.path, root, &opts).map_err(|source| BuildError::Unpack {
            digest: layer.digest.clone(),
            image: image.to_string(),
            source,
        })?;
        Ok(())
    }

    /// Where a COPY/ADD reads from: the context, an earlier stage's root, or an image's root.
    fn copy_source(&mut self, instruction: &Instruction, index: usize) -> Result<Option<SourceRef>, BuildError> {
        let args = match instruction {
            Instruction::Copy(a) | Instruction::Add(a) => a,
            _ => return Ok(None),
        };
        let Some(from) = &args.from else { return Ok(Some(SourceRef::Context)) };
        if let Some(i) = self.stage_ref(from, index) {
            let built = self.built.get(&i).ok_or_else(|| {
                BuildError::Usage(format!("COPY --from={from}: stage {i} was not built (is it after this stage?)"))
            })?;
            return Ok(Some(SourceRef::Root(built.root.clone())));
        }
        if self.stage_index_by_name(from).is_some() {
            return Err(BuildError::Usage(format!("COPY --from={from}: a stage can only copy from stages before it")));
        }
        if let Some(root) = self.remote_roots.get(from) {
            return Ok(Some(SourceRef::Root(root.clone())));
        }
        let root = self.work_dir.join(format!("images/{}", self.remote_roots.len()));
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        let (_config, layers) = self.pull_base(from)?;
        for layer in &layers {
            self.unpack(layer, from, &root)?;
        }
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
            config.config.labels.get_or_insert_with(BTreeMap::new).insert(k.to_string(), v.to_string());
        }
        let config_bytes = serde_json::to_vec(&config).map_err(|e| BuildError::Usage(format!("serialising the image config: {e}")))?;
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
                .map(|l| Descriptor { media_type: l.media_type.clone(), digest: l.digest.clone(), size: l.size, annotations: None })
                .collect(),
            annotations: None,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| BuildError::Usage(format!("serialising the manifest: {e}")))?;
        let digest = sha256_digest(&manifest_bytes);

        let mut references = Vec::new();
        if !self.opts.no_push {
            let mut blobs: Vec<Blob> = stage
                .layers
                .iter()
                .map(|l| Blob { digest: l.digest.clone(), size: l.size, source: BlobSource::File(l.path.clone()) })
                .collect();
            blobs.push(Blob { digest: config_digest.clone(), size: config_bytes.len() as u64, source: BlobSource::Bytes(config_bytes.clone()) });
            for dest in &self.opts.destinations {
                let started = Instant::now();
                let pushed = self.runtime.block_on(self.registry.push_image(dest, &blobs, &manifest_bytes, MEDIA_TYPE_OCI_MANIFEST))?;
                if pushed != digest {
                    warn!("{dest}: the registry reports digest {pushed}, Kiln computed {digest}");
                }
                info!("pushed {dest}@{digest} in {}", secs(started.elapsed()));
                references.push(format!("{dest}@{digest}"));
            }
        } else if !self.opts.destinations.is_empty() {
            info!("--no-push: not pushing to {}", self.opts.destinations.join(", "));
        }
        if let Some(path) = &self.opts.oci_layout_path {
            let layout_err = |message: String| BuildError::Layout { path: path.clone(), message };
            let layout = crate::registry::layout::OciLayout::create(Path::new(path)).map_err(|e| layout_err(e.to_string()))?;
            for layer in &stage.layers {
                layout.write_blob_file(&layer.path, &layer.digest).map_err(|e| layout_err(e.to_string()))?;
            }
            layout.write_blob_bytes(&config_bytes).map_err(|e| layout_err(e.to_string()))?;
            let ref_name = self.opts.destinations.first().and_then(|d| tag_of(d)).unwrap_or_else(|| "latest".to_string());
            layout
                .add_manifest(&manifest_bytes, MEDIA_TYPE_OCI_MANIFEST, Some(&ref_name))
                .map_err(|e| layout_err(e.to_string()))?;
            info!("wrote OCI layout {path} (ref {ref_name})");
        }
        if let Some(path) = &self.opts.tar_path {
            let layers: Vec<crate::output::ArchiveLayer> = stage
                .layers
                .iter()
                .map(|l| crate::output::ArchiveLayer { digest: l.digest.clone(), path: l.path.clone() })
                .collect();
            let tags = crate::output::repo_tags(&self.opts.destinations);
            crate::output::write_docker_archive(Path::new(path), &config_bytes, &layers, &tags)
                .map_err(io_err(format!("writing --tar-path {path}")))?;
            info!("wrote docker archive {path} (tags: {})", if tags.is_empty() { "none".to_string() } else { tags.join(", ") });
        }
        Ok(BuildResult { digest, references, manifest: manifest_bytes, config: config_bytes })
    }
}

/// BuildKit's automatic platform ARGs (`TARGETPLATFORM`, `TARGETARCH`, … and the `BUILD*` twins).
/// Kiln builds for the target platform on the host, so BUILDPLATFORM is the host's.
fn automatic_platform_args(target: &Platform) -> Vec<(String, String)> {
    let build = Platform::default();
    let mut args = Vec::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", &build)] {
        args.push((format!("{prefix}PLATFORM"), p.to_string()));
        args.push((format!("{prefix}OS"), p.os.clone()));
        args.push((format!("{prefix}ARCH"), p.architecture.clone()));
        args.push((format!("{prefix}VARIANT"), p.variant.clone().unwrap_or_default()));
    }
    args
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

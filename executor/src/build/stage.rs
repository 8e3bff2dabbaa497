//! The one step loop: builds a stage by setting up its base, then taking each planned step in
//! turn — a cache hit is applied, anything else runs and is snapshotted into a layer — and logs
//! each step with its timing and what the cache did. Also prunes a finished stage to what later
//! stages copy from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::info;

use super::base::{BaseImages, Image};
use super::error::io_err;
use super::plan::{Base, CopyFrom};
use super::step::{plan_steps, stage_steps, MountRead, PlannedStep, StepPlan};
use super::{history, human, secs, short, BuildError, Builder, BuiltStage, SourceRef};
use crate::cache::layer::CacheHit;
use crate::commands::{self, Cacheable, CopySource, Outcome, StageState};
use crate::layer::LayerFile;
use crate::run_mounts::FromRoot;
use crate::snapshot::Snapshotter;

impl Builder<'_> {
    /// Build stage `index`, keeping its layers when `keep_layers` (the target, or a stage a
    /// later one starts FROM).
    pub(super) fn build_stage(
        &mut self,
        index: usize,
        keep_layers: bool,
    ) -> Result<BuiltStage, BuildError> {
        let label = self.plan.stages[index].label.clone();
        let base = self.plan.base(index)?.clone();
        info!("[{label}] FROM {} ({})", base.name, base.platform);
        let started = Instant::now();
        if let Some(built) = self.try_skip_base(index, &base, &label)? {
            return Ok(built);
        }
        // This stage's steps run on its root: the layers of its hits are read.
        if let Some(cache) = self.cache.as_mut() {
            cache.want_downloads();
        }
        // The stage's first RUN gets its init started now, beside the base's download.
        let runs = self.dockerfile.stages[index]
            .instructions
            .iter()
            .any(|i| matches!(i.instruction, kiln_dockerfile::Instruction::Run(_)));
        if runs {
            crate::run::prepare_ahead(self.req.isolation);
        }
        let (root, image) = if self.in_place() {
            self.prepare_in_place(&base, index)?
        } else {
            let root = self.work_dir.join(format!("stages/{index}/rootfs"));
            std::fs::create_dir_all(&root)
                .map_err(io_err(format!("creating {}", root.display())))?;
            let image = self.prepare_base(&base, index, &root)?;
            (root, image)
        };
        info!("[{label}] base ready in {}", secs(started.elapsed()));
        // The image takes the target stage's base layers: the destinations are asked for them now.
        let pushed_stage = keep_layers && index == self.plan.target;
        if pushed_stage {
            self.publisher.check_ahead(&image.layers);
        }
        let mut prev_key = self.base_key(&base, &image);
        let Image { config, mut layers } = image;

        let mut state = self.stage_state(index, root.clone(), config)?;
        // A stage kept only for `COPY --from` is snapshotted too when caching, so its steps can be
        // stored and hit like any other (builder stages are where the expensive RUNs are).
        // Its state is read before the first step that misses the cache.
        let mut snapshotter = if keep_layers || self.cache.is_some() {
            Some(Snapshotter::deferred(&root, self.ignore.paths()))
        } else {
            None
        };
        let layer_dir = self.work_dir.join("layers");
        std::fs::create_dir_all(&layer_dir)
            .map_err(io_err(format!("creating {}", layer_dir.display())))?;
        let plan = self.plan_stage(index, &base, &mut state)?;
        state.emulator = self.emulation(&label, &base, &plan)?;
        self.prefetch(index, &plan, &prev_key);

        let total = plan.steps.len();
        let mut pending_single_snapshot = false;
        for (n, step) in plan.steps.iter().enumerate() {
            self.check_stop()?;
            let step_started = Instant::now();
            let text = &step.text;
            info!("[{label}] step {}/{total}: {text}", n + 1);
            let copy_source = copy_source(&self.built, &mut self.bases, step)?;
            let mount_roots = mount_roots(&self.built, &mut self.bases, step)?;
            let key = match self.cache.as_mut() {
                Some(cache) => {
                    Some(cache.key(&prev_key, step, copy_source.as_ref(), &mount_roots)?)
                }
                None => None,
            };
            let hit = match (&key, step.cacheable, self.cache.as_mut()) {
                (Some(key), Cacheable::Yes, Some(cache)) => cache.lookup(key),
                _ => None,
            };
            if let (Some(hit), Some(key)) = (hit, &key) {
                let mut note = self.apply_hit(&hit, &root, &mut layers)?;
                if let (true, Some(layer)) = (pushed_stage, &hit.layer) {
                    self.publisher.check_ahead(std::slice::from_ref(layer));
                }
                let mut no_layer = hit.layer.is_none();
                if no_layer && self.req.force_build_metadata {
                    if let Some(snap) = snapshotter.as_ref() {
                        note = self.force_empty_layer(snap, &layer_dir, &mut layers)?;
                        no_layer = false;
                    }
                }
                if let Some(snap) = snapshotter.as_mut() {
                    snap.mark_stale();
                }
                if keep_layers {
                    state.config.history.push(history(self.req, text, no_layer));
                }
                if let Some(cache) = self.cache.as_mut() {
                    cache.hits += 1;
                }
                info!(
                    "[{label}] step {}/{total} done in {} (cache hit, {note})",
                    n + 1,
                    secs(step_started.elapsed())
                );
                prev_key = key.clone();
                continue;
            }
            let cache_note = match (&key, step.cacheable, self.cache.as_mut()) {
                (Some(_), Cacheable::Yes, Some(cache)) => {
                    cache.misses += 1;
                    "cache miss, "
                }
                (Some(_), Cacheable::Disabled, _) => "not cacheable (disabled by flag), ",
                (Some(_), Cacheable::No, _) => "not cacheable, ",
                _ => "",
            };
            let source = match &copy_source {
                Some(SourceRef::Context) => Some(CopySource::Context(self.context)),
                Some(SourceRef::Root(p)) => Some(CopySource::Root(p.as_path())),
                None => None,
            };
            state.run_mounts = self.step_mounts(&mount_roots);
            let later = &plan.steps[n + 1..];
            state.run_follows = later
                .iter()
                .any(|s| matches!(s.located.instruction, kiln_dockerfile::Instruction::Run(_)));
            // Whether a later step may write a layer: the last layer's early upload would only
            // end right before the push starts (see `Publisher::stream_ahead`).
            let layers_follow = later.iter().any(|s| {
                use kiln_dockerfile::Instruction::{Add, Copy, Run, Workdir};
                matches!(
                    s.located.instruction,
                    Run(_) | Copy(_) | Add(_) | Workdir(_)
                )
            });
            // The root as the step finds it, to tell what the step changes.
            if let Some(snap) = snapshotter.as_mut() {
                snap.record_if_stale()?;
            }
            let outcome = commands::command(&step.located.instruction)
                .execute(&mut state, source)
                .map_err(|source| BuildError::Step {
                    line: step.located.line,
                    instruction: text.clone(),
                    source,
                })?;
            let mut layer_note = String::from("no layer");
            let mut snapshot_note = String::new();
            let mut empty_layer = true;
            let mut new_layer = None;
            if outcome == Outcome::Filesystem {
                if let Some(snap) = snapshotter.as_mut() {
                    if self.req.single_snapshot {
                        pending_single_snapshot = true;
                        layer_note = "snapshot deferred (--single-snapshot)".into();
                    } else if let Some(layer) = {
                        let snap_started = Instant::now();
                        // In place a step may have moved a mount point: read them again.
                        snap.set_ignore(self.ignore.paths());
                        // The target stage's layers go to the first destination as they
                        // are written (big ones), or once written.
                        let watch = pushed_stage
                            .then(|| self.publisher.stream_ahead(layers_follow))
                            .flatten();
                        let streamed = usize::from(watch.is_some());
                        let layer = snap.snapshot_layer_watched(
                            &layer_dir,
                            &self.req.layer_options,
                            watch,
                        )?;
                        snapshot_note = format!(", snapshot {}", secs(snap_started.elapsed()));
                        layer.map(|l| (l, streamed))
                    } {
                        let (layer, streamed) = layer;
                        layer_note =
                            format!("layer {} ({})", short(&layer.digest), human(layer.size));
                        if pushed_stage && layers_follow {
                            self.publisher.push_ahead_from(&layer, streamed);
                        }
                        new_layer = Some(layer.clone());
                        layers.push(layer);
                        empty_layer = false;
                    } else {
                        layer_note = "no changes".into();
                    }
                }
            }
            // kaniko's --force-build-metadata: a step without changes (a metadata-only one
            // included) still gets a layer, an empty one. Not with --single-snapshot, which
            // takes one layer for the whole stage.
            if empty_layer && self.req.force_build_metadata && !self.req.single_snapshot {
                if let Some(snap) = snapshotter.as_ref() {
                    layer_note = self.force_empty_layer(snap, &layer_dir, &mut layers)?;
                    empty_layer = false;
                }
            }
            if let (Some(key), Cacheable::Yes, Some(cache)) =
                (&key, step.cacheable, self.cache.as_mut())
            {
                // Only a snapshotted step has a known result to store (a stage kept just for
                // `COPY --from` is not snapshotted).
                if snapshotter.is_some() && outcome == Outcome::Filesystem {
                    cache.store_in_background(key, new_layer, text);
                }
            }
            if keep_layers && !(self.req.single_snapshot && outcome == Outcome::Filesystem) {
                state
                    .config
                    .history
                    .push(history(self.req, text, empty_layer));
            }
            info!(
                "[{label}] step {}/{total} done in {} ({cache_note}{layer_note}{snapshot_note})",
                n + 1,
                secs(step_started.elapsed())
            );
            if let Some(key) = key {
                prev_key = key;
            }
        }
        if pending_single_snapshot {
            if let Some(snap) = snapshotter.as_mut() {
                snap.set_ignore(self.ignore.paths());
                if let Some(layer) = snap.snapshot_layer(&layer_dir, &self.req.layer_options)? {
                    info!(
                        "[{label}] single snapshot: layer {} ({})",
                        short(&layer.digest),
                        human(layer.size)
                    );
                    layers.push(layer);
                    state.config.history.push(history(
                        self.req,
                        "single snapshot of all steps",
                        false,
                    ));
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

    /// Add an empty layer for a step that made none (`--force-build-metadata`). Returns a log
    /// note.
    fn force_empty_layer(
        &mut self,
        snap: &Snapshotter,
        layer_dir: &Path,
        layers: &mut Vec<LayerFile>,
    ) -> Result<String, BuildError> {
        let layer = snap.empty_layer(layer_dir, &self.req.layer_options)?;
        let note = format!(
            "empty layer {} (--force-build-metadata)",
            short(&layer.digest)
        );
        layers.push(layer);
        Ok(note)
    }

    /// What `RUN --mount` reads in a step: the build's, plus the roots of the stages and
    /// images the step mounts with `from=`.
    fn step_mounts(
        &self,
        roots: &[(MountRead, FromRoot)],
    ) -> std::sync::Arc<crate::run_mounts::MountEnv> {
        if roots.is_empty() {
            return self.run_mounts.clone();
        }
        std::sync::Arc::new(crate::run_mounts::MountEnv {
            froms: roots
                .iter()
                .map(|(read, root)| (read.from.clone(), root.clone()))
                .collect(),
            ..(*self.run_mounts).clone()
        })
    }

    /// How the RUN steps of a stage of a foreign platform run (see `run::emulation`), decided
    /// before its first step: in a binfmt_misc of their own (the emulator to register), through
    /// the host's handler (`None`), or not at all (an error naming the first RUN and saying how
    /// to get an emulator). `None` for a stage of this machine's platform or without RUN.
    fn emulation(
        &self,
        label: &str,
        base: &super::plan::Base,
        plan: &StepPlan,
    ) -> Result<Option<crate::run::emulation::BinfmtEntry>, BuildError> {
        use crate::run::emulation::{for_platform, Emulation};
        if base.platform.runs_here() {
            return Ok(None);
        }
        let Some(first_run) = plan
            .steps
            .iter()
            .find(|s| matches!(s.located.instruction, kiln_dockerfile::Instruction::Run(_)))
        else {
            return Ok(None);
        };
        let private = self.req.isolation == crate::run::Isolation::Chroot;
        match for_platform(&base.platform, private) {
            Ok(Emulation::Private(entry)) => {
                info!(
                    "[{label}] RUN steps for {} run under QEMU user emulation ({}, in a binfmt_misc of their own)",
                    base.platform,
                    entry.line.rsplit(':').nth(1).unwrap_or_default()
                );
                Ok(Some(entry))
            }
            Ok(Emulation::Host) => {
                info!(
                    "[{label}] RUN steps for {} run through the host's binfmt_misc handler",
                    base.platform
                );
                Ok(None)
            }
            Err(why) => Err(BuildError::ForeignPlatform {
                line: first_run.located.line,
                instruction: first_run.text.clone(),
                platform: base.platform.to_string(),
                host: kiln_oci::platform::Platform::default().to_string(),
                why,
            }),
        }
    }

    /// The state a stage's steps start from, over `root` with the base's config.
    pub(super) fn stage_state(
        &self,
        index: usize,
        root: PathBuf,
        config: kiln_oci::image::ImageConfig,
    ) -> Result<StageState, BuildError> {
        let scratch = self.work_dir.join(format!("stages/{index}/scratch"));
        std::fs::create_dir_all(&scratch)
            .map_err(io_err(format!("creating {}", scratch.display())))?;
        let mut state = StageState {
            root,
            isolation: self.req.isolation,
            config,
            args: Default::default(),
            build_args: self.req.build_args.clone(),
            meta_args: self.plan.meta_args.clone(),
            escape: self.dockerfile.escape,
            cmd_set: false,
            scratch,
            run_mounts: self.run_mounts.clone(),
            entitlements: self.req.entitlements,
            emulator: None,
            run_follows: false,
        };
        state.config.created = None;
        // BuildKit and buildah give every image without a PATH the default one.
        if state.config.env_value("PATH").is_none() {
            state.config.set_env("PATH", crate::run::DEFAULT_PATH);
        }
        Ok(state)
    }

    /// The plan of a stage's steps (the base's ONBUILD triggers, then its own instructions) from
    /// `state`, which loses the triggers.
    pub(super) fn plan_stage(
        &self,
        index: usize,
        base: &Base,
        state: &mut StageState,
    ) -> Result<StepPlan, BuildError> {
        let steps = stage_steps(
            self.dockerfile,
            &self.dockerfile.stages[index],
            &base.name,
            &mut state.config,
        )?;
        Ok(plan_steps(
            self.dockerfile,
            self.plan,
            index,
            steps,
            state,
            self.req.cache_flags,
        ))
    }

    /// Apply a cache hit over `root`: fetch the layer (verified), unpack it, and add it to the
    /// image as is (no re-compression: its digest and diff_id are known). Returns a log note.
    fn apply_hit(
        &mut self,
        hit: &CacheHit,
        root: &Path,
        layers: &mut Vec<LayerFile>,
    ) -> Result<String, BuildError> {
        let (Some(layer), Some(cache)) = (&hit.layer, self.cache.as_mut()) else {
            return Ok("no changes".into());
        };
        let blob_dir = self.work_dir.join("blobs");
        std::fs::create_dir_all(&blob_dir)
            .map_err(io_err(format!("creating {}", blob_dir.display())))?;
        cache.fetch(hit, "fetching")?;
        // A push to the cache's registry mounts the layer from the cache repository.
        if let Some(reference) = cache.blob_reference(&hit.key) {
            self.bases.note_pulled(&layer.digest, reference);
        }
        self.bases.unpack(layer, &cache.describe(), root)?;
        layers.push(layer.clone());
        Ok(format!("layer {}", layer.digest))
    }

    /// Prune a finished stage that later stages only `COPY --from` to the paths the stages in
    /// `readers` copy, so the build keeps those files, not the stage's whole filesystem. In place
    /// this runs once the next stage has moved the stage aside (never on `/`); skipped when a
    /// source depends on a variable.
    pub(super) fn keep_only_copied_files(
        &self,
        index: usize,
        readers: impl IntoIterator<Item = usize>,
    ) -> Result<(), BuildError> {
        let Some(built) = self.built.get(&index) else {
            return Ok(());
        };
        if built.root.as_os_str().is_empty() || built.root == Path::new("/") {
            return Ok(());
        }
        let Some(sources) = self.plan.copied_paths(index, readers) else {
            return Ok(());
        };
        let root = &built.root;
        let keep = crate::stage_files::Keep::for_sources(root, &sources).map_err(io_err(
            format!("planning what to keep of stage {}", index + 1),
        ))?;
        let removed = crate::stage_files::prune_into(root, &keep, &self.trash).map_err(io_err(
            format!("pruning stage {} to what later stages copy", index + 1),
        ))?;
        info!(
            "stage {}: kept the {} path(s) later stages copy, removed {removed} other entries",
            index + 1,
            sources.len()
        );
        Ok(())
    }
}

/// Where a COPY/ADD reads from: the context, an earlier stage's root, or an image's root
/// (pulled and unpacked the first time).
pub(super) fn copy_source(
    built: &HashMap<usize, BuiltStage>,
    bases: &mut BaseImages<'_>,
    step: &PlannedStep,
) -> Result<Option<SourceRef>, BuildError> {
    match &step.source {
        None => Ok(None),
        Some(CopyFrom::Context) => Ok(Some(SourceRef::Context)),
        Some(CopyFrom::Stage(i)) => {
            let built = built.get(i).ok_or_else(|| BuildError::CopyFromNotBuilt {
                line: step.located.line,
                from: step.from.clone().unwrap_or_default(),
                stage: *i,
            })?;
            Ok(Some(SourceRef::Root(built.root.clone())))
        }
        Some(CopyFrom::LaterStage(from)) => Err(BuildError::CopyFromLater {
            line: step.located.line,
            from: from.clone(),
        }),
        Some(CopyFrom::Image(reference)) => Ok(Some(SourceRef::Root(bases.image_root(reference)?))),
    }
}

/// The roots of the stages and images a RUN step mounts with `from=`, with what identifies
/// them, in the step's order. An image is pulled and unpacked the first time, as for
/// `COPY --from`, unless `pull` is false (a lookup ahead of the steps): then `None` when one is
/// not at hand yet.
pub(super) fn known_mount_roots(
    built: &HashMap<usize, BuiltStage>,
    bases: &mut BaseImages<'_>,
    step: &PlannedStep,
    pull: bool,
) -> Result<Option<Vec<(MountRead, FromRoot)>>, BuildError> {
    let fail = |read: &MountRead, problem: String| BuildError::MountFrom {
        line: step.located.line,
        from: read.from.clone(),
        problem,
    };
    let mut roots = Vec::with_capacity(step.mounts.len());
    for read in &step.mounts {
        let root = match &read.reads {
            CopyFrom::Stage(i) => match built.get(i) {
                Some(stage) => FromRoot {
                    root: stage.root.clone(),
                    image_digest: None,
                },
                None if !pull => return Ok(None),
                None => {
                    return Err(fail(
                        read,
                        format!("stage {} was not built (is it after this stage?)", i + 1),
                    ))
                }
            },
            CopyFrom::Image(reference) => {
                let root = match (pull, bases.pulled_image_root(reference)) {
                    (_, Some(root)) => root.clone(),
                    (false, None) => return Ok(None),
                    (true, None) => bases.image_root(reference)?,
                };
                let digest = bases.image_digest(reference).cloned().ok_or_else(|| {
                    fail(
                        read,
                        format!("no manifest digest was recorded for {reference}"),
                    )
                })?;
                FromRoot {
                    root,
                    image_digest: Some(digest),
                }
            }
            CopyFrom::LaterStage(_) if !pull => return Ok(None),
            CopyFrom::LaterStage(_) => {
                return Err(fail(
                    read,
                    "a stage can only mount stages before it".to_string(),
                ))
            }
            // A mount with `from=` never reads the context.
            CopyFrom::Context => continue,
        };
        roots.push((read.clone(), root));
    }
    Ok(Some(roots))
}

/// [`known_mount_roots`], pulling what is needed.
pub(super) fn mount_roots(
    built: &HashMap<usize, BuiltStage>,
    bases: &mut BaseImages<'_>,
    step: &PlannedStep,
) -> Result<Vec<(MountRead, FromRoot)>, BuildError> {
    Ok(known_mount_roots(built, bases, step, true)?.unwrap_or_default())
}

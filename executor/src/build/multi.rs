//! One build for several platforms (`--custom-platform linux/amd64,linux/arm64`), as BuildKit
//! does it: the Dockerfile is built once per target platform, each with its own `TARGET*`
//! automatic ARGs and the same `BUILD*` ones; each platform's image is pushed by digest, then one
//! OCI image index naming them (with their platforms) is pushed to every destination with its
//! tag. `--oci-layout-path` holds every platform's blobs and the index (the layout's
//! `index.json` names the index, as BuildKit's OCI exporter writes it); `--tar-path` is then that
//! layout as a tar (an OCI archive: `podman load` and `skopeo copy oci-archive:` read it). The
//! result files name the index digest, which is what a client pulls by.
//!
//! The platforms are built at the same time, as many at once as the machine has cores (one at a
//! time in place, where every build's root is `/`), each in a work directory of its own that
//! lives until all are done; their log lines carry the platform. A stage that is the same for
//! every platform ([`BuildPlan::shared_identity`](super::plan::BuildPlan::shared_identity): the
//! cross-compiling `FROM --platform=$BUILDPLATFORM` stage that reads no `TARGET*` ARG) is built
//! once, by the first platform to reach it, and the others use it ([`Siblings`]). When one
//! platform's build fails, the others stop before their next step.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use kiln_oci::registry::Registry;
use serde_json::json;
use tracing::{error, info};

use super::error::io_err;
use super::publish::{self, tag_of, ANNOTATION_CREATED};
use super::{secs, BuildError, BuildRequest, BuildResult, Builder, BuiltStage};
use crate::output;
use crate::run::Isolation;

/// One platform's finished image.
struct Member {
    platform: kiln_oci::platform::Platform,
    result: BuildResult,
}

/// What the platform builds of one multi-platform build share.
pub struct Siblings {
    /// Stages built once for every platform, by identity; a slot is locked while its stage is
    /// built, so a platform that reaches the stage meanwhile waits for it.
    stages: Mutex<HashMap<String, Arc<Mutex<Option<SharedStage>>>>>,
    /// Shared stages are built in numbered directories under this one.
    dir: PathBuf,
    /// Set when a platform's build failed: the others stop before their next step.
    failed: AtomicBool,
}

impl std::fmt::Debug for Siblings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Siblings").field("dir", &self.dir).finish()
    }
}

/// A stage built once for every platform.
struct SharedStage {
    stage: BuiltStage,
    /// Its last step's cache key (the base identity of stages built FROM it), with `--cache`.
    key: Option<String>,
    /// The platform whose build built it.
    by: String,
}

impl Siblings {
    fn new(dir: PathBuf) -> Siblings {
        Siblings {
            stages: Mutex::default(),
            dir,
            failed: AtomicBool::new(false),
        }
    }

    /// Fails when another platform's build has failed.
    pub(super) fn check(&self) -> Result<(), BuildError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(BuildError::SiblingFailed);
        }
        Ok(())
    }

    fn slot(&self, identity: &str) -> (Arc<Mutex<Option<SharedStage>>>, usize) {
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        let count = stages.len();
        let slot = stages.entry(identity.to_string()).or_default().clone();
        (slot, count)
    }
}

impl Builder<'_> {
    /// In place: uses stage `index` as an earlier platform's build left it, if it offered it.
    pub(super) fn use_left_by_earlier_platform(
        &mut self,
        siblings: &Siblings,
        identity: &str,
        index: usize,
    ) -> bool {
        let (slot, _) = siblings.slot(identity);
        let shared = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(done) = shared.as_ref() else {
            return false;
        };
        self.adopt(index, done);
        true
    }

    /// Takes stage `index` as another platform's build made it.
    fn adopt(&mut self, index: usize, done: &SharedStage) {
        let label = &self.plan.stages[index].label;
        info!(
            "[{label}] the same for every platform: built once, by the build for {}",
            done.by
        );
        self.built.insert(index, done.stage.clone());
        if let Some(key) = &done.key {
            self.stage_keys.insert(index, key.clone());
        }
    }

    /// In place, once the target is built: offers the stages the same for every platform that
    /// this build made to the next platforms' builds, where what later stages read of them is
    /// still there (moved aside from `/` into the work directory, which outlives this build), or
    /// where later stages only start FROM them (their layers).
    pub(super) fn offer_to_later_platforms(&mut self) {
        let Some(siblings) = self.req.siblings.clone() else {
            return;
        };
        for (identity, index) in std::mem::take(&mut self.offered) {
            let Some(stage) = self.built.get(&index) else {
                continue;
            };
            let files_kept =
                !stage.root.as_os_str().is_empty() && stage.root != std::path::Path::new("/");
            if !files_kept && self.plan.read_by_copy(index, index + 1) {
                continue;
            }
            let (slot, _) = siblings.slot(&identity);
            let mut shared = slot.lock().unwrap_or_else(PoisonError::into_inner);
            shared.get_or_insert_with(|| SharedStage {
                stage: stage.clone(),
                key: self.stage_keys.get(&index).cloned(),
                by: self.req.platform.to_string(),
            });
        }
    }

    /// Stage `index`, which is the same for every platform (its `identity`): built here if no
    /// other platform's build has built it, else theirs is used.
    pub(super) fn build_shared(
        &mut self,
        siblings: &Siblings,
        identity: &str,
        index: usize,
        keep_layers: bool,
    ) -> Result<(), BuildError> {
        let label = self.plan.stages[index].label.clone();
        let (slot, number) = siblings.slot(identity);
        let mut shared = slot.lock().unwrap_or_else(PoisonError::into_inner);
        siblings.check()?;
        if let Some(done) = shared.as_ref() {
            self.adopt(index, done);
            return Ok(());
        }
        info!("[{label}] the same for every platform: built once, here");
        let own = std::mem::replace(&mut self.work_dir, siblings.dir.join(number.to_string()));
        let built = self.build_stage(index, keep_layers);
        self.work_dir = own;
        let built = built?;
        // The layers of a stage other stages start FROM must be files every build can read.
        for layer in &built.layers {
            self.bases.ensure_local(layer)?;
        }
        self.built.insert(index, built.clone());
        if !keep_layers {
            self.keep_only_copied_files(index, self.plan.order())?;
        }
        *shared = Some(SharedStage {
            stage: built,
            key: self.stage_keys.get(&index).cloned(),
            by: self.req.platform.to_string(),
        });
        Ok(())
    }
}

pub fn build_platforms(req: &BuildRequest) -> Result<BuildResult, BuildError> {
    let started = Instant::now();
    let count = req.platforms.len();
    let names: Vec<String> = req.platforms.iter().map(ToString::to_string).collect();
    info!("building for {count} platforms: {}", names.join(", "));
    // `--tar-path` is written from a layout the platform builds fill.
    let tar_layout = match &req.outputs.tar_path {
        Some(_) => {
            Some(tempfile::tempdir().map_err(io_err("creating a directory for --tar-path"))?)
        }
        None => None,
    };
    let layout_dir: Option<String> = req.outputs.oci_layout_path.clone().or_else(|| {
        tar_layout
            .as_ref()
            .map(|d| d.path().join("layout").display().to_string())
    });
    // Every platform's work directory lives until all are built: a shared stage's files and
    // layers are in the directory of the build that made it.
    let (platforms_dir, _platforms_guard, mount_cache) = match super::explicit_kiln_dir(req) {
        Some(dir) => (
            super::fresh_dir(&dir.join("platforms"))?,
            None,
            dir.join("mount-cache"),
        ),
        None => {
            let tmp = super::temp_work_dir()?;
            let dir = tmp.path().to_path_buf();
            (
                dir,
                Some(tmp),
                super::temp_parent().join("kiln-mount-cache"),
            )
        }
    };
    let siblings = Arc::new(Siblings::new(platforms_dir.join("shared")));
    let workers = if req.isolation == Isolation::InPlace {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(count)
    };
    if workers > 1 {
        info!("{workers} platforms are built at a time");
    }
    let build_one = |n: usize| -> Result<BuildResult, BuildError> {
        let platform = &req.platforms[n];
        let one = Instant::now();
        info!("platform {}/{count}: {platform}", n + 1);
        let mut sub = req.clone();
        sub.platform = platform.clone();
        sub.platforms = vec![platform.clone()];
        sub.platform_explicit = true;
        sub.registry.platform = platform.clone();
        sub.index_member = true;
        sub.kiln_dir = Some(platforms_dir.join(n.to_string()).display().to_string());
        sub.mount_cache_dir = Some(
            req.mount_cache_dir
                .clone()
                .unwrap_or_else(|| mount_cache.display().to_string()),
        );
        sub.siblings = Some(siblings.clone());
        if req.isolation == Isolation::InPlace {
            // Clearing `/` for the next platform keeps the earlier platforms' work directories,
            // whose stages it may use.
            sub.ignore_paths.push(platforms_dir.display().to_string());
        }
        sub.outputs = super::request::Outputs {
            oci_layout_path: layout_dir.clone(),
            ..Default::default()
        };
        let result = super::build(&sub)?;
        info!(
            "platform {}/{count}: {platform} built as {} in {}",
            n + 1,
            result.digest,
            secs(one.elapsed())
        );
        Ok(result)
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<BuildResult, BuildError>>>> =
        Mutex::new((0..count).map(|_| None).collect());
    std::thread::scope(|scope| -> Result<(), BuildError> {
        for worker in 0..workers {
            let work = || loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= count || siblings.check().is_err() {
                    return;
                }
                let platform = &req.platforms[n];
                let span = tracing::info_span!("platform", platform = %platform);
                let result = span.in_scope(|| build_one(n));
                if let Err(e) = &result {
                    if !matches!(e, BuildError::SiblingFailed) {
                        error!("platform {}/{count}: {platform} failed: {e}", n + 1);
                    }
                    siblings.failed.store(true, Ordering::SeqCst);
                }
                results.lock().unwrap_or_else(PoisonError::into_inner)[n] = Some(result);
            };
            if workers == 1 {
                work();
            } else {
                std::thread::Builder::new()
                    .name(format!("kiln-platform-{worker}"))
                    .spawn_scoped(scope, work)
                    .map_err(io_err("starting a platform build thread"))?;
            }
        }
        Ok(())
    })?;
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    // The first failure in platform order that is not another's stopping it.
    let mut stopped = None;
    let mut members = Vec::new();
    for (platform, result) in req.platforms.iter().zip(results) {
        match result {
            Some(Ok(result)) => members.push(Member {
                platform: platform.clone(),
                result,
            }),
            Some(Err(BuildError::SiblingFailed)) | None => {
                stopped = Some(BuildError::SiblingFailed)
            }
            Some(Err(e)) => return Err(e),
        }
    }
    if let Some(e) = stopped {
        return Err(e);
    }
    if let Some(guard) = _platforms_guard {
        drop(guard);
    } else {
        let _ = std::fs::remove_dir_all(&platforms_dir);
    }
    let format = req.image_format;
    let index = index_bytes(format, &members)?;
    let digest = kiln_oci::registry::sha256_digest(&index);
    let mut references = Vec::new();
    if !req.no_push && !req.destinations.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting the async runtime"))?;
        let work = tempfile::tempdir().map_err(io_err("creating a work directory"))?;
        let registry = Registry::new(super::registry_options(req, work.path()))
            .map_err(BuildError::registry("setting up the registry client"))?;
        for dest in &req.destinations {
            let pushed = Instant::now();
            runtime
                .block_on(registry.push_image(dest, &[], &index, format.index_type()))
                .map_err(BuildError::registry(format!(
                    "pushing the image index to {dest}"
                )))?;
            info!(
                "pushed {dest}@{digest} (image index of {count} platforms) in {}",
                secs(pushed.elapsed())
            );
            references.push(format!("{dest}@{digest}"));
        }
    }
    if let Some(dir) = &layout_dir {
        add_index_to_layout(req, dir, &index, &members)?;
    }
    if let (Some(tar), Some(dir)) = (&req.outputs.tar_path, &layout_dir) {
        output::write_dir_tar(Path::new(dir), Path::new(tar))
            .map_err(io_err(format!("writing --tar-path {tar}")))?;
        info!("wrote OCI archive {tar} (image index of {count} platforms)");
    }
    let cache = members
        .iter()
        .filter_map(|m| m.result.cache)
        .reduce(|a, b| kiln_common::termination::CacheCounts {
            hits: a.hits + b.hits,
            misses: a.misses + b.misses,
        });
    let result = BuildResult {
        digest: digest.clone(),
        references,
        manifest: index,
        config: Vec::new(),
        commit: members.first().and_then(|m| m.result.commit.clone()),
        cache,
        size: members.iter().map(|m| m.result.size).sum(),
    };
    info!(
        "built {digest} ({count} platforms) in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    publish::write_result_files(req, &result)?;
    Ok(result)
}

/// The image index (Docker's manifest list with `--image-format=docker`) of the platform
/// images, in the order the platforms were named.
fn index_bytes(
    format: super::request::ImageFormat,
    members: &[Member],
) -> Result<Vec<u8>, BuildError> {
    let manifests: Vec<serde_json::Value> = members
        .iter()
        .map(|m| {
            let mut platform = json!({
                "architecture": m.platform.architecture,
                "os": m.platform.os,
            });
            if let Some(v) = &m.platform.variant {
                platform["variant"] = json!(v);
            }
            json!({
                "mediaType": format.manifest_type(),
                "digest": m.result.digest,
                "size": m.result.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": format.index_type(),
        "manifests": manifests,
    });
    serde_json::to_vec(&index).map_err(|source| BuildError::Serialize {
        what: "image index",
        source,
    })
}

/// Names the index in the layout's `index.json` (the platform builds wrote every blob), tagged
/// with the first destination's tag and dated like a single image's entry.
fn add_index_to_layout(
    req: &BuildRequest,
    dir: &str,
    index: &[u8],
    members: &[Member],
) -> Result<(), BuildError> {
    let layout_err = |source| BuildError::Layout {
        path: dir.to_string(),
        source,
    };
    let layout = kiln_oci::registry::layout::OciLayout::open(Path::new(dir)).map_err(layout_err)?;
    let ref_name = req
        .destinations
        .first()
        .and_then(|d| tag_of(d))
        .unwrap_or_else(|| "latest".to_string());
    let created = members
        .first()
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m.result.config).ok())
        .and_then(|c| c.get("created")?.as_str().map(str::to_string))
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(&c).ok())
        .map(|c| {
            c.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
    let annotations: BTreeMap<String, String> = created
        .map(|c| (ANNOTATION_CREATED.to_string(), c))
        .into_iter()
        .collect();
    layout
        .add_manifest_annotated(
            index,
            req.image_format.index_type(),
            Some(&ref_name),
            &annotations,
        )
        .map_err(layout_err)?;
    info!("wrote OCI layout {dir} (ref {ref_name}: image index)");
    Ok(())
}

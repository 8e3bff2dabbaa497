//! The skip-base decision: when every RUN/COPY/ADD of the target stage is a cache hit (or there
//! are none) and the other steps change only the config, the image is the base manifest's
//! layers plus the cached ones, and neither the base image's layers nor the cached ones are
//! downloaded or unpacked. Decided from the stage's step plan; any step that needs the root
//! means the normal step loop builds the stage.

use tracing::info;

use super::error::io_err;
use super::plan::{Base, BaseKind};
use super::stage::{copy_source, mount_roots};
use super::{history, BuildError, Builder, BuiltStage};
use crate::commands::Cacheable;

impl Builder<'_> {
    /// The target stage built without its base image's files, or `None` when a step needs them
    /// (a miss, WORKDIR, COPY --chown, a step that is not cached).
    pub(super) fn try_skip_base(
        &mut self,
        index: usize,
        base: &Base,
        label: &str,
    ) -> Result<Option<BuiltStage>, BuildError> {
        if self.cache.is_none() || index != self.plan.target || base.kind != BaseKind::Image {
            return Ok(None);
        }
        let (image, reference) = self.bases.manifest(&base.name, &base.platform)?;
        let probe_root = self.work_dir.join(format!("stages/{index}/probe-root"));
        std::fs::create_dir_all(&probe_root)
            .map_err(io_err(format!("creating {}", probe_root.display())))?;
        let mut prev_key = self.base_key(base, &image);
        let mut state = self.stage_state(index, probe_root.clone(), image.config)?;
        let plan = self.plan_stage(index, base, &mut state)?;
        self.prefetch(index, &plan, &prev_key);
        let Some(cache) = self.cache.as_mut() else {
            return Ok(None);
        };
        let req = self.req;
        let mut hits = Vec::new();
        let mut history_entries = Vec::new();
        for (n, step) in plan.steps.iter().enumerate() {
            if let Some(why) = step.needs_root {
                tracing::debug!("[{label}] base image needed: {why} ({})", step.text);
                return Ok(None);
            }
            if step.cacheable == Cacheable::Yes {
                let source = copy_source(&self.built, &mut self.bases, step)?;
                let mounts = mount_roots(&self.built, &mut self.bases, step)?;
                let key = cache.key(&prev_key, step, source.as_ref(), &mounts)?;
                let Some(hit) = cache.lookup(&key) else {
                    tracing::debug!("[{label}] base image needed: cache miss ({})", step.text);
                    return Ok(None);
                };
                history_entries.push(history(req, &step.text, hit.layer.is_none()));
                hits.push((n, hit));
                prev_key = key;
            } else {
                let key = cache.key(&prev_key, step, None, &[])?;
                if let Err(e) = &step.configured {
                    return Err(step.error(e));
                }
                history_entries.push(history(req, &step.text, true));
                prev_key = key;
            }
        }
        let mut layers = image.layers;
        for layer in &layers {
            if !layer.path.exists() {
                self.bases.left_in(&layer.digest, reference.clone());
            }
        }
        let total = plan.steps.len();
        // The layers stay in the cache repository (or are read from a layout below).
        cache.drop_downloads();
        for (n, hit) in &hits {
            let text = &plan.steps[*n].text;
            cache.hits += 1;
            let Some(layer) = &hit.layer else {
                info!(
                    "[{label}] step {}/{total}: {text} (cache hit, no changes)",
                    n + 1
                );
                continue;
            };
            match cache.blob_reference(&hit.key) {
                Some(reference) => self.bases.left_in(&layer.digest, reference),
                None => cache.fetch(hit, "reading")?,
            }
            info!(
                "[{label}] step {}/{total}: {text} (cache hit, layer {})",
                n + 1,
                layer.digest
            );
            layers.push(layer.clone());
        }
        let mut config = plan.config;
        config.history.extend(history_entries);
        info!("[{label}] base image layers not needed: every step is a cache hit or changes only the config");
        self.stage_keys.insert(index, prev_key);
        Ok(Some(BuiltStage {
            root: probe_root,
            config,
            layers,
        }))
    }
}

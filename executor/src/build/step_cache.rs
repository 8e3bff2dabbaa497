//! The layer cache as the build uses it: each planned step's key (with the digest of the files a
//! COPY/ADD reads, hashed once per build), lookups started ahead of the steps, new entries stored
//! in the background, and the hit and miss counts. What a hit or a miss means for a step is
//! decided by the step loop and the skip-base decision, not here.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::plan::CopyFrom;
use super::step::{MountRead, PlannedStep, StepPlan};
use super::{secs, BuildError, Builder, SourceRef};
use crate::cache::key::FileDigest;
use crate::cache::layer::{CacheHit, LayerCache};
use crate::cache::prefetch::{Lookups, LOOKUP_CONCURRENCY};
use crate::commands::{self, Cacheable, FilesRead};
use crate::context::BuildContext;
use crate::layer::LayerFile;
use crate::run_mounts::FromRoot;

/// The layer cache of one build, with `--cache`.
pub struct StepCache<'a> {
    cache: Arc<LayerCache>,
    /// Lookups, made once per key and started ahead of their steps (the skip-base decision and
    /// the step loop share them).
    lookups: Lookups<LayerCache>,
    runtime: &'a tokio::runtime::Runtime,
    context: &'a BuildContext,
    /// Digests of the files COPY/ADD steps read, by what the step reads: a stage's keys may be
    /// worked out more than once (ahead of its steps, and as they run), the files are hashed once.
    file_digests: HashMap<String, String>,
    /// Background pushes of new cache entries, awaited before the build ends.
    pending: Vec<std::thread::JoinHandle<()>>,
    /// `--no-push-cache`: look up, never store.
    read_only: bool,
    pub hits: usize,
    pub misses: usize,
}

impl<'a> StepCache<'a> {
    pub fn new(
        cache: Arc<LayerCache>,
        runtime: &'a tokio::runtime::Runtime,
        context: &'a BuildContext,
        read_only: bool,
    ) -> StepCache<'a> {
        StepCache {
            lookups: Lookups::new(cache.clone(), LOOKUP_CONCURRENCY),
            cache,
            runtime,
            context,
            file_digests: HashMap::new(),
            pending: Vec::new(),
            read_only,
            hits: 0,
            misses: 0,
        }
    }

    pub fn describe(&self) -> String {
        self.cache.describe()
    }

    /// A step's cache key (see [`crate::cache::key`]): the planned inputs chained to `previous`,
    /// with the digest of the files a COPY/ADD reads from `source` and of what a RUN's
    /// `--mount=...,from=` read (`mounts`).
    pub fn key(
        &mut self,
        previous: &str,
        step: &PlannedStep,
        source: Option<&SourceRef>,
        mounts: &[(MountRead, FromRoot)],
    ) -> Result<String, BuildError> {
        let planned = step.input.as_ref().map_err(|e| step.error(e))?;
        let mut input = planned.step.clone();
        input.previous = previous.to_string();
        if let Some(files) = &planned.files {
            input.files = Some(self.files_digest(step.located.line, files, source)?);
        }
        if !mounts.is_empty() {
            input.mounts = Some(self.mounts_digest(step.located.line, mounts)?);
        }
        Ok(input.key())
    }

    /// What a RUN's `--mount=...,from=` read: for each, in order, `from` and `source` as written
    /// and the identity of what they name ([`FromRoot::identity`]: an image's manifest digest,
    /// the digest of a stage's files under the source, hashed once per build), so a changed
    /// image or stage makes another key, as a changed file does for `COPY --from`.
    fn mounts_digest(
        &mut self,
        line: usize,
        mounts: &[(MountRead, FromRoot)],
    ) -> Result<String, BuildError> {
        let mut h = crate::cache::key::KeyHasher::new();
        for (read, root) in mounts {
            let known = format!("mount:{}:{}", root.root.display(), read.source);
            let identity = match self.file_digests.get(&known) {
                Some(identity) => identity.clone(),
                None => {
                    let identity = root
                        .identity(&read.from, &read.source)
                        .map_err(|source| BuildError::CacheKey { line, source })?;
                    self.file_digests.insert(known, identity.clone());
                    identity
                }
            };
            h.str("from", &read.from)
                .str("source", &read.source)
                .str("identity", &identity);
        }
        Ok(h.finish())
    }

    /// [`FileDigest::finish`] of what a COPY/ADD reads: its heredocs, then its sources. The
    /// context never changes during a build, nor does an earlier stage's or an image's root once
    /// a later stage reads it, so what was read decides the digest.
    fn files_digest(
        &mut self,
        line: usize,
        files: &FilesRead,
        source: Option<&SourceRef>,
    ) -> Result<String, BuildError> {
        let read = serde_json::json!({
            "kind": if files.is_add { "ADD" } else { "COPY" },
            "from": match source {
                Some(SourceRef::Context) => "context".to_string(),
                Some(SourceRef::Root(root)) => format!("root:{}", root.display()),
                None => "none".to_string(),
            },
            "inline": files.inline,
            "sources": files.sources,
        })
        .to_string();
        if let Some(known) = self.file_digests.get(&read) {
            return Ok(known.clone());
        }
        let hash_err = |source| BuildError::CacheKey { line, source };
        let mut digest = FileDigest::new(matches!(source, Some(SourceRef::Root(_))));
        for (name, content) in &files.inline {
            digest.add_inline(name, content);
        }
        match source {
            Some(SourceRef::Context) if !files.sources.is_empty() => {
                let ctx = self.context;
                match ctx.resolve_sources(&files.sources) {
                    Ok(paths) => {
                        let excluded = |p: &Path| ctx.is_excluded_host(p);
                        for path in paths {
                            digest
                                .add_source(ctx.root(), &path, &excluded)
                                .map_err(hash_err)?;
                        }
                    }
                    // The step itself reports the missing source when it runs.
                    Err(e) => digest.add_inline("unresolved", &e.to_string()),
                }
            }
            Some(SourceRef::Root(root)) => {
                add_root_sources(&mut digest, root, files).map_err(hash_err)?
            }
            _ => {}
        }
        let digest = digest.finish();
        self.file_digests.insert(read, digest.clone());
        Ok(digest)
    }

    /// Look a key up (once per build, usually started ahead by [`Builder::prefetch`]); any
    /// cache error is a warning and a miss.
    pub fn lookup(&mut self, key: &str) -> Option<CacheHit> {
        self.lookups.get(self.runtime, key)
    }

    /// Make a hit's layer available as a verified file, at its path.
    pub fn fetch(&mut self, hit: &CacheHit, action: &'static str) -> Result<(), BuildError> {
        let Some(layer) = &hit.layer else {
            return Ok(());
        };
        // Downloaded after its lookup, perhaps still under way.
        self.lookups.ready(self.runtime, &hit.key);
        self.runtime
            .block_on(self.cache.fetch(hit))
            .map_err(|source| BuildError::CachedLayer {
                action,
                digest: layer.digest.clone(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Let the layer downloads of hits start (see [`Lookups::want_downloads`]).
    pub fn want_downloads(&mut self) {
        self.lookups.want_downloads();
    }

    /// Stop the layer downloads started with the lookups: no step of the stage runs.
    pub fn drop_downloads(&mut self) {
        self.lookups.drop_downloads();
    }

    /// Where a hit's layer blob can be copied from by a push, for a registry cache repository.
    pub fn blob_reference(&self, key: &str) -> Option<String> {
        self.cache.blob_reference(key)
    }

    /// Push a new cache entry in the background of the build; failures are warnings.
    pub fn store_in_background(&mut self, key: &str, layer: Option<LayerFile>, created_by: &str) {
        if self.read_only {
            return;
        }
        let cache = self.cache.clone();
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
            Ok(handle) => self.pending.push(handle),
            Err(e) => warn!("could not start a cache push: {e}"),
        }
    }

    /// Wait for the background cache pushes; the build's result does not depend on them.
    pub fn finish_stores(&mut self) {
        let handles = std::mem::take(&mut self.pending);
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
}

/// A build that fails still stores the entries of the steps that succeeded (a rerun then
/// starts from them), and the pushes under way must not be cut off by the shutdown of the
/// runtime they run on, which made their threads panic. Awaited here, before the runtime goes.
impl Drop for StepCache<'_> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            tracing::debug!("waiting for {} cache push(es) to end", self.pending.len());
            self.finish_stores();
        }
    }
}

impl Builder<'_> {
    /// Start the layer-cache lookups of a stage's cacheable steps before the first one runs,
    /// [`LOOKUP_CONCURRENCY`] at a time, so that a chain of steps costs about one registry
    /// round trip instead of one per step. A step's key depends on the previous key, never on
    /// a lookup's answer, so the planned steps give every key the build will work out. This only
    /// starts lookups: the build still takes the answers in step order, so a key predicted
    /// wrongly costs a wasted request, never a wrong hit. Stops at the first step whose key
    /// cannot be known yet (a `COPY --from` or a mount of an image not pulled yet, a step that
    /// fails).
    pub(super) fn prefetch(&mut self, index: usize, plan: &StepPlan, base_key: &str) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let mut previous = base_key.to_string();
        let mut started = 0usize;
        for step in &plan.steps {
            let source = match &step.source {
                None => None,
                Some(CopyFrom::Context) => Some(SourceRef::Context),
                Some(CopyFrom::Stage(i)) => match self.built.get(i) {
                    Some(built) => Some(SourceRef::Root(built.root.clone())),
                    None => break,
                },
                // Pulling an image for `COPY --from` is the step's business, not a lookup's.
                Some(CopyFrom::Image(reference)) => match self.bases.pulled_image_root(reference) {
                    Some(root) => Some(SourceRef::Root(root.clone())),
                    None => break,
                },
                Some(CopyFrom::LaterStage(_)) => break,
            };
            let mounts =
                match super::stage::known_mount_roots(&self.built, &mut self.bases, step, false) {
                    Ok(Some(mounts)) => mounts,
                    _ => break,
                };
            let Ok(key) = cache.key(&previous, step, source.as_ref(), &mounts) else {
                break;
            };
            if step.cacheable == Cacheable::Yes {
                cache.lookups.start(cache.runtime, &key);
                started += 1;
            }
            if step.configured.is_err() {
                break;
            }
            previous = key;
        }
        tracing::debug!(
            stage = index + 1,
            started,
            "layer cache lookups started ahead of the steps"
        );
    }
}

/// The first hex digits of a cache key, for logs.
/// Add what a `COPY --from` reads from another root to `digest`: each source's matches, under
/// the name each takes in the destination (a renamed symlink to the same file copies a file of
/// another name) and with the content they resolve to inside that root. A source that resolves
/// to nothing is hashed as its error; the step reports it when it runs.
fn add_root_sources(
    digest: &mut FileDigest,
    root: &Path,
    files: &FilesRead,
) -> Result<(), crate::cache::key::FileHashError> {
    let name = if files.is_add { "ADD" } else { "COPY" };
    for src in &files.sources {
        match commands::copy::resolve_root_source(root, src, name) {
            Ok(paths) => {
                for (dest_name, path) in paths {
                    digest.add_inline("from-name", &dest_name.to_string_lossy());
                    digest.add_source(root, &path, &|_: &Path| false)?;
                }
            }
            Err(e) => digest.add_inline("unresolved", &e.to_string()),
        }
    }
    Ok(())
}

fn short_key(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn digest_of(root: &Path, sources: &[&str]) -> String {
        let files = FilesRead {
            is_add: false,
            inline: Vec::new(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
        };
        let mut digest = FileDigest::new(true);
        add_root_sources(&mut digest, root, &files).unwrap();
        digest.finish()
    }

    /// Two roots whose `/x` holds one symlink to the same `/f`, named `a` in one and `b` in the
    /// other: `COPY --from=... /x/* /out/` writes `/out/a` or `/out/b`, so the keys must differ.
    #[test]
    fn a_glob_match_counts_by_its_name_not_only_by_what_it_points_to() {
        let roots: Vec<tempfile::TempDir> = ["a", "b"]
            .iter()
            .map(|link| {
                let root = tempfile::tempdir().unwrap();
                std::fs::write(root.path().join("f"), "same content").unwrap();
                std::fs::create_dir(root.path().join("x")).unwrap();
                symlink("/f", root.path().join("x").join(link)).unwrap();
                root
            })
            .collect();
        let a = digest_of(roots[0].path(), &["/x/*"]);
        let b = digest_of(roots[1].path(), &["/x/*"]);
        assert_ne!(a, b, "renaming the matched symlink must change the key");
        assert_eq!(
            a,
            digest_of(roots[0].path(), &["/x/*"]),
            "the digest is stable"
        );
        // The content the match resolves to, inside the root, counts too.
        std::fs::write(roots[0].path().join("f"), "other content").unwrap();
        assert_ne!(a, digest_of(roots[0].path(), &["/x/*"]));
    }
}

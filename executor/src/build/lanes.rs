//! Stages built at the same time, as BuildKit runs independent parts of its graph: the stages
//! before the target form a graph (a stage needs the stages it starts FROM, `COPY --from`s and
//! mounts with `RUN --mount=from=`), and up to one stage per core is built at once, each by a
//! builder of its own ("lane": its own work directory, base images and cache lookups). A stage
//! starts as soon as every stage it needs is built, first in Dockerfile order; the target is then
//! built by the main builder with every stage's files. Not in place, where every stage's root is
//! `/`. When a stage fails, the others stop before their next step and the error is the failed
//! stage's.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::plan::BuildPlan;
use super::{BuildError, BuildRequest, Builder, BuiltStage};
use crate::run::Isolation;

/// How many stages to build at once: one per core, at most as many as the widest set of stages
/// that need nothing of each other; 1 in place or when the stages form a chain.
pub(super) fn count(req: &BuildRequest, plan: &BuildPlan) -> usize {
    if req.isolation == Isolation::InPlace || plan.earlier.len() < 2 {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 || !has_independent_stages(plan) {
        return 1;
    }
    cores.min(plan.earlier.len())
}

/// Whether two stages before the target need nothing of each other (directly or not).
fn has_independent_stages(plan: &BuildPlan) -> bool {
    let needs = |i: usize| -> BTreeSet<usize> {
        let mut all = BTreeSet::new();
        let mut todo = plan.needs(i);
        while let Some(n) = todo.pop() {
            if all.insert(n) {
                todo.extend(plan.needs(n));
            }
        }
        all
    };
    let closures: HashMap<usize, BTreeSet<usize>> =
        plan.earlier.iter().map(|&i| (i, needs(i))).collect();
    plan.earlier.iter().enumerate().any(|(n, &a)| {
        plan.earlier[n + 1..]
            .iter()
            .any(|&b| !closures[&a].contains(&b) && !closures[&b].contains(&a))
    })
}

/// What the lanes share while they build.
#[derive(Default)]
struct Progress {
    started: BTreeSet<usize>,
    /// Built stages with their last step's cache key.
    done: HashMap<usize, (BuiltStage, Option<String>)>,
    /// The first failure (not a stop caused by it).
    failed: Option<BuildError>,
}

/// Builds the stages before the target in `lanes` threads, each with a builder made by `make`
/// (given its work directory under `work_dir`), and gives `main` every built stage.
pub(super) fn build_earlier<'a, F>(
    main: &mut Builder<'a>,
    lanes: usize,
    work_dir: &Path,
    make: &F,
) -> Result<(), BuildError>
where
    F: Fn(PathBuf) -> Builder<'a> + Sync,
{
    let plan = main.plan;
    tracing::info!(
        "{lanes} stages are built at a time where they need nothing of each other ({} before the target)",
        plan.earlier.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Mutex::new(Progress::default());
    let changed = Condvar::new();
    let counts = Mutex::new((0usize, 0usize));
    std::thread::scope(|scope| -> Result<(), BuildError> {
        for lane in 0..lanes {
            let (stop, progress, changed, counts) = (&stop, &progress, &changed, &counts);
            let work = move || {
                let mut builder = make(work_dir.join(format!("lanes/{lane}")));
                builder.stop = Some(stop.clone());
                loop {
                    let next = {
                        let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
                        loop {
                            if p.failed.is_some() || p.started.len() == plan.earlier.len() {
                                break None;
                            }
                            let ready = plan.earlier.iter().copied().find(|i| {
                                !p.started.contains(i)
                                    && plan.needs(*i).iter().all(|n| {
                                        p.done.contains_key(n) || !plan.earlier.contains(n)
                                    })
                            });
                            if let Some(i) = ready {
                                p.started.insert(i);
                                // What it needs, from the lanes that built it.
                                for n in plan.needs(i) {
                                    if let Some((stage, key)) = p.done.get(&n) {
                                        builder.built.insert(n, stage.clone());
                                        if let Some(key) = key {
                                            builder.stage_keys.insert(n, key.clone());
                                        }
                                    }
                                }
                                break Some(i);
                            }
                            p = changed.wait(p).unwrap_or_else(PoisonError::into_inner);
                        }
                    };
                    let Some(index) = next else { break };
                    let result = builder.build_earlier(index).and_then(|()| {
                        // A stage others start FROM: its layers must be files every lane reads
                        // (a cache hit's layer may not have been downloaded by this lane).
                        match builder.built.get(&index) {
                            Some(stage) if plan.used_as_base(index) => stage
                                .layers
                                .iter()
                                .try_for_each(|l| builder.bases.ensure_local(l)),
                            _ => Ok(()),
                        }
                    });
                    let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(()) => {
                            let stage = builder.built.get(&index).cloned();
                            if let Some(stage) = stage {
                                let key = builder.stage_keys.get(&index).cloned();
                                p.done.insert(index, (stage, key));
                            }
                        }
                        Err(BuildError::StageFailed) => {}
                        Err(e) => {
                            stop.store(true, Ordering::SeqCst);
                            p.failed.get_or_insert(e);
                        }
                    }
                    changed.notify_all();
                }
                if let Some(cache) = builder.cache.as_mut() {
                    cache.finish_stores();
                    let mut c = counts.lock().unwrap_or_else(PoisonError::into_inner);
                    c.0 += cache.hits;
                    c.1 += cache.misses;
                }
            };
            std::thread::Builder::new()
                .name(format!("kiln-stages-{lane}"))
                .spawn_scoped(scope, work)
                .map_err(super::error::io_err("starting a stage build thread"))?;
        }
        Ok(())
    })?;
    let progress = progress
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = progress.failed {
        return Err(e);
    }
    for (index, (stage, key)) in progress.done {
        main.built.insert(index, stage);
        if let Some(key) = key {
            main.stage_keys.insert(index, key);
        }
    }
    let (hits, misses) = counts.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(cache) = main.cache.as_mut() {
        cache.hits += hits;
        cache.misses += misses;
    }
    Ok(())
}

//! The I/O of an `ImageBuild` reconcile: read the build, its current Pod and, while that Pod has
//! not started, the Warning Events the kubelet wrote about it (a missing push Secret shows there:
//! the operator has no permission on Secrets); then create the Pod, delete superseded Pods, write
//! the status with one server-side-apply patch and publish an Event. Decisions are made by the
//! pure [`super::status::plan`], never here.
//!
//! Deletion: without kube-controller-manager nothing garbage-collects owned Pods, and even with
//! it a running build should stop promptly; so a finalizer (`kiln.dev/cleanup`) lets the
//! operator delete the build's Pods itself before the `ImageBuild` goes away. The Pods also carry
//! a controller owner reference, so a cluster's garbage collector removes any left behind.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::pod::{desired_pod, with_defaults};
use super::retention;
use super::status::{self, current_pod_name, Observation, Plan};
use super::validate::{permitted, validate};
use crate::controller::{
    cleanup, create_pod, delete_pod, delete_pods, kube_err, patch_status, pod_not_started,
    publish_event, truncate, PodOwner,
};
use crate::crd::{ImageBuild, Phase};
use crate::metrics::KindLabel;
use crate::ownership;
use crate::{LABEL_BUILD, LABEL_GENERATION};

pub use crate::controller::{Context, Error, FINALIZER};

impl PodOwner for ImageBuild {
    const KIND: &'static str = "ImageBuild";
    const POD_LABEL: &'static str = LABEL_BUILD;
    const POD_ROLE: &'static str = "executor";
}

/// Entry point for the kube-runtime controller.
pub async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = build
        .namespace()
        .ok_or_else(|| Error::NoNamespace(build.name_any()))?;
    let api: Api<ImageBuild> = Api::namespaced(ctx.client.clone(), &ns);
    let start = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, build, |event| async {
        match event {
            finalizer::Event::Apply(b) => apply(&api, &b, &ctx).await,
            finalizer::Event::Cleanup(b) => {
                let action = cleanup(&*b, &ctx.client).await?;
                // A deleted build frees its slot.
                ctx.queue
                    .wake_after((b.namespace().unwrap_or_default(), b.name_any()));
                Ok(action)
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled("ImageBuild", result.is_ok(), start.elapsed());
    result
}

/// Requeue policy for failed reconciles.
pub fn error_policy(build: Arc<ImageBuild>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(build = %build.name_any(), namespace = %build.namespace().unwrap_or_default(), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&KindLabel { kind: "ImageBuild" })
        .inc();
    Action::requeue(Duration::from_secs(5))
}

async fn apply(api: &Api<ImageBuild>, cached: &ImageBuild, ctx: &Context) -> Result<Action, Error> {
    let name = cached.name_any();
    let ns = cached.namespace().unwrap_or_default();
    // The watch cache can lag behind our own status patches; decide on a fresh read so a
    // restart or a burst of Pod events never replays a transition.
    let Some(build) =
        api.get_opt(&name)
            .await
            .map_err(kube_err("reading", "ImageBuild", &ns, &name))?
    else {
        return Ok(Action::await_change());
    };
    // Decide on the build as it runs, operator defaults included, so that messages name the
    // Secret and cache repository actually used.
    let build = with_defaults(&build, &ctx.config);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let now = ctx.config.clock.now();
    let checked =
        validate(&build.spec).and_then(|valid| permitted(&build.spec, &ctx.config).map(|()| valid));
    let plan = match checked {
        Err(e) => status::plan_invalid(&build, &e, now),
        Ok(valid) => {
            let generation = build.metadata.generation.unwrap_or(0);
            let finished = build.status.as_ref().is_some_and(|s| {
                s.observed_generation == Some(generation) && status::is_final(s.phase)
            });
            let mut obs = Observation::default();
            if !finished {
                let pod_name = current_pod_name(&build);
                let found = pods
                    .get_opt(&pod_name)
                    .await
                    .map_err(kube_err("reading", "Pod", &ns, &pod_name))?;
                // Only a Pod this build controls is its executor Pod: anything else under the
                // name (another object's Pod, one created by hand) is reported, never adopted.
                (obs.pod, obs.foreign_pod) =
                    ownership::sort_out(found, build.metadata.uid.as_deref().unwrap_or_default());
                if let Some(pod) = obs.pod.as_ref().filter(|p| pod_not_started(p)) {
                    let warnings = ctx.warnings.for_pod(pod);
                    obs.missing_secret = crate::pod_events::missing_secret(&warnings);
                    obs.missing_secret_key = crate::pod_events::missing_secret_key(&warnings);
                }
            }
            let plan = if build.spec.cancel == Some(true) {
                status::plan_cancelled(&build, &obs, now)
            } else if let Some(queued) = queued(&build, ctx, now).await {
                queued
            } else {
                status::plan(&build, &valid, &obs, &ctx.config, now)
            };
            if let Some(attempt) = plan.create_attempt {
                let pod = desired_pod(&build, &valid, &ctx.config, attempt);
                create_pod::<ImageBuild>(&pods, &pod, &ctx.metrics.builds_started).await?;
            }
            plan
        }
    };
    act(&build, &plan, &pods, ctx).await?;
    let mut requeue = plan.requeue;
    let generation = build.metadata.generation.unwrap_or(0);
    let ended = plan
        .status
        .as_ref()
        .or(build.status.as_ref())
        .is_some_and(|s| s.observed_generation == Some(generation) && status::is_final(s.phase));
    if ended {
        if let Some(next) = retain(&build, &pods, ctx, now).await? {
            requeue = Some(requeue.map_or(next, |r| r.min(next)));
        }
    }
    Ok(requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

/// Deletes the finished executor Pods `spec.retention` (over the operator's defaults) no longer
/// keeps, once the build has ended (so the Pod of a build in progress is never touched); returns
/// when the next one's TTL passes.
async fn retain(
    build: &ImageBuild,
    pods: &Api<Pod>,
    ctx: &Context,
    now: Timestamp,
) -> Result<Option<Duration>, Error> {
    let name = build.name_any();
    let ns = build.namespace().unwrap_or_default();
    // Validated before; a value that does not parse keeps the defaults.
    let r = retention::effective(build.spec.retention.as_ref(), &ctx.config.retention)
        .unwrap_or_else(|_| ctx.config.retention.clone());
    let uid = build.metadata.uid.clone().unwrap_or_default();
    let lp = ListParams::default().labels(&format!(
        "{LABEL_BUILD}={}",
        crate::names::label_value(&name)
    ));
    let list =
        pods.list(&lp)
            .await
            .map_err(kube_err("listing Pods of", "ImageBuild", &ns, &name))?;
    let finished: Vec<retention::FinishedPod> = list
        .items
        .iter()
        .filter(|p| ownership::controlled_by(p, &uid) && p.metadata.deletion_timestamp.is_none())
        .filter_map(retention::finished_pod)
        .collect();
    let (delete, next) = retention::select(&finished, &r, now);
    for pod in delete {
        if delete_pod(pods, &ns, &pod).await? {
            info!(pod = %pod, namespace = %ns, build = %name, "deleted a finished executor Pod (retention)");
        }
    }
    Ok(next)
}

/// With queue limits, a build whose generation has not started and that the queue does not let
/// start now: the Queued plan (its place in the order). `None` lets it start.
async fn queued(build: &ImageBuild, ctx: &Context, now: Timestamp) -> Option<Plan> {
    if !ctx.queue.limits.active() {
        return None;
    }
    let generation = build.metadata.generation.unwrap_or(0);
    let st = build
        .status
        .as_ref()
        .filter(|s| s.observed_generation == Some(generation));
    let waiting = match st.and_then(|s| s.phase) {
        None => true,
        Some(p) => p == Phase::Queued,
    };
    if !waiting {
        return None;
    }
    let key = (build.namespace().unwrap_or_default(), build.name_any());
    ctx.queue.wait_ready().await;
    let schedule = ctx.queue.schedule(None);
    ctx.metrics
        .queue_depth
        .set(i64::try_from(schedule.positions.len()).unwrap_or(i64::MAX));
    if schedule.admitted.contains(&key) {
        if let Some(since) = st.and_then(|s| s.queued_at.as_ref()) {
            let waited = now
                .as_millisecond()
                .saturating_sub(since.0.as_millisecond());
            ctx.metrics
                .queue_wait
                .observe(waited.max(0) as f64 / 1000.0);
        }
        return None;
    }
    // Not in the cache yet (just created): behind everything the cache holds.
    let position = schedule
        .positions
        .get(&key)
        .copied()
        .unwrap_or(schedule.positions.len() + 1);
    let waiting_count = schedule.positions.len().max(position);
    Some(status::plan_queued(
        build,
        position,
        waiting_count,
        &ctx.queue.describe(),
        now,
    ))
}

/// Carries out the side effects of a plan other than Pod creation.
async fn act(build: &ImageBuild, plan: &Plan, pods: &Api<Pod>, ctx: &Context) -> Result<(), Error> {
    let name = build.name_any();
    let ns = build.namespace().unwrap_or_default();
    if plan.supersede_old_generations {
        let generation = build.metadata.generation.unwrap_or(0).to_string();
        delete_pods(pods, build, |p| {
            p.labels().get(LABEL_GENERATION) != Some(&generation) && !status::pod_ended(p)
        })
        .await?;
    }
    if let Some(pod) = &plan.delete_pod {
        if delete_pod(pods, &ns, pod).await? {
            info!(pod = %pod, namespace = %ns, build = %name, "deleted the executor Pod of a failed attempt");
        }
    }
    if let Some(st) = &plan.status {
        patch_status(build, st, &ctx.client).await?;
    }
    if let Some(ev) = &plan.event {
        let event = Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.to_string(),
            note: Some(truncate(&ev.note, 1000)),
            action: "Build".into(),
            secondary: None,
        };
        publish_event(ctx, &event, build).await;
    }
    // A run ended (or was cancelled): the queue lets the next builds start at once.
    let ended = plan.finished.is_some()
        || plan
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Cancelled));
    if ended {
        ctx.queue.wake_after((ns.clone(), name.clone()));
    }
    if let Some((ok, took)) = plan.finished {
        let cache = plan
            .status
            .as_ref()
            .and_then(|s| s.cache.as_ref())
            .map(|c| (c.hits.max(0) as u64, c.misses.max(0) as u64));
        ctx.metrics.build_finished(&ns, ok, took, cache);
        info!(build = %name, namespace = %ns, succeeded = ok, "build finished");
    }
    Ok(())
}

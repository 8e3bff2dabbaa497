//! The I/O of an `ImageBuild` reconcile: read the build, its current Pod and (before creating a
//! Pod) whether the push Secret exists; then create the Pod, delete superseded Pods, write the
//! status with one server-side-apply patch and publish an Event. Decisions are made by the pure
//! [`super::status::plan`], never here.
//!
//! Deletion: without kube-controller-manager nothing garbage-collects owned Pods, and even with
//! it a running build should stop promptly; so a finalizer (`kiln.dev/cleanup`) lets the
//! operator delete the build's Pods itself before the `ImageBuild` goes away. The Pods also carry
//! a controller owner reference, so a cluster's garbage collector removes any left behind.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::pod::{desired_pod, with_defaults};
use super::status::{self, current_pod_name, Observation, Plan};
use super::validate::validate;
use crate::config::OperatorConfig;
use crate::crd::{ImageBuild, ImageBuildStatus, Phase};
use crate::metrics::{KindLabel, Metrics};
use crate::ownership;
use crate::{FIELD_MANAGER, LABEL_BUILD, LABEL_GENERATION};

/// Finalizer that makes the operator delete a build's Pods before the build disappears.
pub const FINALIZER: &str = "kiln.dev/cleanup";

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Metrics,
    pub recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {kind} {namespace}/{name} failed: {source}; check the operator's RBAC and the API server")]
    Kube {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("ImageBuild {0} has no namespace; ImageBuild is a namespaced resource")]
    NoNamespace(String),
    #[error("finalizer {FINALIZER} on ImageBuild: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

pub(crate) fn kube_err(
    action: &'static str,
    kind: &'static str,
    ns: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let (namespace, name) = (ns.to_string(), name.to_string());
    move |source| Error::Kube {
        action,
        kind,
        namespace,
        name,
        source,
    }
}

/// Entry point for the kube-runtime controller.
pub async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = build
        .namespace()
        .ok_or_else(|| Error::NoNamespace(build.name_any()))?;
    let api: Api<ImageBuild> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, build, |event| async {
        match event {
            finalizer::Event::Apply(b) => apply(&api, &b, &ctx).await,
            finalizer::Event::Cleanup(b) => cleanup(&b, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Requeue policy for failed reconciles.
pub fn error_policy(build: Arc<ImageBuild>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(build = %build.name_any(), namespace = ?build.namespace(), error = %err, "reconcile failed");
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
    // Decide on the build as it runs, operator defaults included: the default push Secret
    // must exist like a named one, and messages name the Secret actually used.
    let build = with_defaults(&build, &ctx.config);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    let plan = match validate(&build.spec) {
        Err(e) => status::plan_invalid(&build, &e, now),
        Ok(valid) => {
            let generation = build.metadata.generation.unwrap_or(0);
            let finished = build.status.as_ref().is_some_and(|s| {
                s.observed_generation == Some(generation)
                    && matches!(s.phase, Some(Phase::Succeeded | Phase::Failed))
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
                if obs.pod.is_none() && obs.foreign_pod.is_none() {
                    if let Some(secret) = &build.spec.push_secret {
                        obs.secret_missing = !secret_exists(&ctx.client, &ns, secret).await?;
                    }
                }
            }
            let plan = status::plan(&build, &valid, &obs, &ctx.config, now);
            if let Some(attempt) = plan.create_attempt {
                let pod = desired_pod(&build, &valid, &ctx.config, attempt);
                create_pod(&pods, &pod, &ctx.metrics).await?;
            }
            plan
        }
    };
    act(&build, &plan, &pods, ctx).await?;
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

/// Checks that a Secret exists with a metadata-only `get`: the operator never reads Secret data.
async fn secret_exists(client: &Client, ns: &str, name: &str) -> Result<bool, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let found = secrets
        .get_metadata_opt(name)
        .await
        .map_err(kube_err("checking", "Secret", ns, name))?;
    Ok(found.is_some())
}

async fn create_pod(pods: &Api<Pod>, pod: &Pod, metrics: &Metrics) -> Result<(), Error> {
    let name = pod.name_any();
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match pods.create(&pp, pod).await {
        Ok(_) => {
            metrics.builds_started.inc();
            info!(pod = %name, namespace = ?pod.namespace(), "created executor Pod");
            Ok(())
        }
        // Created by an earlier reconcile whose status patch did not land: same name, same Pod.
        Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(()),
        Err(e) => Err(kube_err(
            "creating",
            "Pod",
            &pod.namespace().unwrap_or_default(),
            &name,
        )(e)),
    }
}

/// Carries out the side effects of a plan other than Pod creation.
async fn act(build: &ImageBuild, plan: &Plan, pods: &Api<Pod>, ctx: &Context) -> Result<(), Error> {
    let name = build.name_any();
    let ns = build.namespace().unwrap_or_default();
    if plan.supersede_old_generations {
        let generation = build.metadata.generation.unwrap_or(0).to_string();
        delete_pods(pods, build, |p| {
            p.labels().get(LABEL_GENERATION) != Some(&generation) && !pod_finished(p)
        })
        .await?;
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
        // An event that cannot be published must not fail the build.
        if let Err(e) = ctx.recorder.publish(&event, &build.object_ref(&())).await {
            warn!(build = %name, error = %e, "could not publish event");
        }
    }
    if let Some((ok, took)) = plan.finished {
        ctx.metrics.build_finished(ok, took);
        info!(build = %name, namespace = %ns, succeeded = ok, "build finished");
    }
    Ok(())
}

fn pod_finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Deletes the Pods labelled for `build` that `build` controls and `which` selects; a Pod that
/// merely carries the label (copied by hand, or of an earlier object of the same name) is left.
async fn delete_pods(
    pods: &Api<Pod>,
    build: &ImageBuild,
    which: impl Fn(&Pod) -> bool,
) -> Result<(), Error> {
    let name = build.name_any();
    let ns = build.namespace().unwrap_or_default();
    let uid = build.metadata.uid.clone().unwrap_or_default();
    let lp = ListParams::default().labels(&format!("{LABEL_BUILD}={name}"));
    let list =
        pods.list(&lp)
            .await
            .map_err(kube_err("listing Pods of", "ImageBuild", &ns, &name))?;
    let ns = ns.as_str();
    for p in list
        .items
        .iter()
        .filter(|p| ownership::controlled_by(p, &uid) && which(p))
    {
        let pn = p.name_any();
        match pods.delete(&pn, &DeleteParams::background()).await {
            Ok(_) => info!(pod = %pn, namespace = %ns, "deleted executor Pod"),
            Err(kube::Error::Api(ae)) if ae.code == 404 => {}
            Err(e) => return Err(kube_err("deleting", "Pod", ns, &pn)(e)),
        }
    }
    Ok(())
}

/// Writes the whole status under the operator's field manager (server-side apply).
pub async fn patch_status(
    build: &ImageBuild,
    st: &ImageBuildStatus,
    client: &Client,
) -> Result<(), Error> {
    let name = build.name_any();
    let ns = build.namespace().unwrap_or_default();
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": ImageBuild::api_version(&()),
        "kind": ImageBuild::kind(&()),
        "status": st,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err("patching status of", "ImageBuild", &ns, &name))?;
    Ok(())
}

async fn cleanup(build: &ImageBuild, ctx: &Context) -> Result<Action, Error> {
    let ns = build.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    delete_pods(&pods, build, |_| true).await?;
    Ok(Action::await_change())
}

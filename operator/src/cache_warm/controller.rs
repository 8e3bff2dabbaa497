//! The I/O of a `CacheWarm` reconcile: read the resource, its current warmer Pod and (before
//! creating a Pod) whether the pull Secret exists; then create the Pod, delete the previous
//! run's Pod, write the status with one server-side-apply patch and publish an Event. Decisions
//! are made by the pure [`super::status::plan`].
//!
//! Warmer Pods are removed by the operator (previous run on refresh, all on deletion through the
//! `kiln.dev/cleanup` finalizer), for the same reason as executor Pods.

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

use super::pod::desired_pod;
use super::reason;
use super::status::{self, current_pod_name, Observation, Plan};
use crate::conditions::{self, Desired, Status};
use crate::config::OperatorConfig;
use crate::crd::{CacheWarm, CacheWarmStatus, Phase};
use crate::image_build::controller::{kube_err, truncate, Error, FINALIZER};
use crate::metrics::{KindLabel, Metrics};
use crate::ownership;
use crate::{FIELD_MANAGER, LABEL_GENERATION, LABEL_WARM};

pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Metrics,
    pub recorder: Recorder,
}

pub async fn reconcile(cw: Arc<CacheWarm>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cw
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cw.name_any()))?;
    let api: Api<CacheWarm> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, cw, |event| async {
        match event {
            finalizer::Event::Apply(c) => apply(&api, &c, &ctx).await,
            finalizer::Event::Cleanup(c) => {
                let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                delete_pods(&pods, &c, |_| true).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(cw: Arc<CacheWarm>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(cachewarm = %cw.name_any(), namespace = ?cw.namespace(), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&KindLabel { kind: "CacheWarm" })
        .inc();
    Action::requeue(Duration::from_secs(5))
}

async fn apply(api: &Api<CacheWarm>, cached: &CacheWarm, ctx: &Context) -> Result<Action, Error> {
    let name = cached.name_any();
    let ns = cached.namespace().unwrap_or_default();
    let Some(cw) =
        api.get_opt(&name)
            .await
            .map_err(kube_err("reading", "CacheWarm", &ns, &name))?
    else {
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    let generation = cw.metadata.generation.unwrap_or(0);
    let plan = match status::validate(&cw, &ctx.config) {
        Err(msg) => {
            let mut st = cw.status.clone().unwrap_or_default();
            st.phase = Some(Phase::Failed);
            st.observed_generation = Some(generation);
            st.message = Some(format!("invalid spec: {msg}"));
            st.conditions = conditions::set(
                &st.conditions,
                Desired {
                    type_: conditions::READY,
                    status: Status::False,
                    reason: reason::INVALID_SPEC,
                    message: msg,
                },
                Some(generation),
                now,
            );
            Plan {
                status: (Some(&st) != cw.status.as_ref()).then_some(st),
                create_run: None,
                delete_pod: None,
                requeue: None,
                event: None,
            }
        }
        Ok(interval) => {
            let pod_name = current_pod_name(&cw);
            let found = pods
                .get_opt(&pod_name)
                .await
                .map_err(kube_err("reading", "Pod", &ns, &pod_name))?;
            // Only a Pod this CacheWarm controls is its warmer Pod; a stranger under the name
            // is reported, never adopted.
            let (pod, foreign_pod) =
                ownership::sort_out(found, cw.metadata.uid.as_deref().unwrap_or_default());
            let mut obs = Observation {
                pod,
                secret_missing: false,
                foreign_pod,
            };
            if obs.pod.is_none() && obs.foreign_pod.is_none() {
                if let Some(secret) = &cw.spec.pull_secret {
                    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
                    obs.secret_missing = secrets
                        .get_metadata_opt(secret)
                        .await
                        .map_err(kube_err("checking", "Secret", &ns, secret))?
                        .is_none();
                }
            }
            let plan = status::plan(&cw, interval, &obs, &ctx.config, now);
            if let Some(run) = plan.create_run {
                let pod = desired_pod(&cw, &ctx.config, run);
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match pods.create(&pp, &pod).await {
                    Ok(_) => {
                        ctx.metrics.warms_started.inc();
                        info!(pod = %pod.name_any(), namespace = %ns, "created warmer Pod");
                    }
                    Err(kube::Error::Api(ae)) if ae.code == 409 => {}
                    Err(e) => return Err(kube_err("creating", "Pod", &ns, &pod.name_any())(e)),
                }
            }
            plan
        }
    };
    let gen_label = generation.to_string();
    if cw.status.as_ref().and_then(|s| s.observed_generation) != Some(generation) {
        // A new generation: stop warms of the old one.
        delete_pods(&pods, &cw, |p| {
            p.labels().get(LABEL_GENERATION) != Some(&gen_label)
        })
        .await?;
    }
    if let Some(old) = &plan.delete_pod {
        match pods.delete(old, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(ae)) if ae.code == 404 => {}
            Err(e) => return Err(kube_err("deleting", "Pod", &ns, old)(e)),
        }
    }
    if let Some(st) = &plan.status {
        patch_status(&cw, st, &ctx.client).await?;
    }
    if let Some((warning, why, note)) = &plan.event {
        let ev = Event {
            type_: if *warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: why.to_string(),
            note: Some(truncate(note, 1000)),
            action: "Warm".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &cw.object_ref(&())).await {
            warn!(cachewarm = %name, error = %e, "could not publish event");
        }
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

/// Deletes the Pods labelled for `cw` that `cw` controls and `which` selects.
async fn delete_pods(
    pods: &Api<Pod>,
    cw: &CacheWarm,
    which: impl Fn(&Pod) -> bool,
) -> Result<(), Error> {
    let owner = cw.name_any();
    let ns = cw.namespace().unwrap_or_default();
    let uid = cw.metadata.uid.clone().unwrap_or_default();
    let lp = ListParams::default().labels(&format!("{LABEL_WARM}={owner}"));
    let list =
        pods.list(&lp)
            .await
            .map_err(kube_err("listing Pods of", "CacheWarm", &ns, &owner))?;
    let ns = ns.as_str();
    for p in list
        .items
        .iter()
        .filter(|p| ownership::controlled_by(p, &uid) && which(p))
    {
        let pn = p.name_any();
        match pods.delete(&pn, &DeleteParams::background()).await {
            Ok(_) => info!(pod = %pn, namespace = %ns, "deleted warmer Pod"),
            Err(kube::Error::Api(ae)) if ae.code == 404 => {}
            Err(e) => return Err(kube_err("deleting", "Pod", ns, &pn)(e)),
        }
    }
    Ok(())
}

pub async fn patch_status(
    cw: &CacheWarm,
    st: &CacheWarmStatus,
    client: &Client,
) -> Result<(), Error> {
    let name = cw.name_any();
    let ns = cw.namespace().unwrap_or_default();
    let api: Api<CacheWarm> = Api::namespaced(client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": CacheWarm::api_version(&()),
        "kind": CacheWarm::kind(&()),
        "status": st,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err("patching status of", "CacheWarm", &ns, &name))?;
    Ok(())
}

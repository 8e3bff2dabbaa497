//! The I/O of a `CacheWarm` reconcile: read the resource, its current warmer Pod and, while that
//! Pod has not started, the kubelet's Warning Events about it (a missing pull Secret shows
//! there); then create the Pod, delete the previous run's Pod, write the status with one
//! server-side-apply patch and publish an Event. Decisions are made by the pure
//! [`super::status::plan`].
//!
//! Warmer Pods are removed by the operator (previous run on refresh, all on deletion through the
//! `kiln.dev/cleanup` finalizer), for the same reason as executor Pods.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, ResourceExt};
use tracing::warn;

use super::pod::desired_pod;
use super::reason;
use super::status::{self, current_pod_name, Observation, Plan};
use crate::conditions::{self, Desired, Status};
use crate::controller::{
    cleanup, create_pod, delete_pod, delete_pods, kube_err, patch_status, pod_not_started,
    publish_event, truncate, PodOwner,
};
use crate::crd::{CacheWarm, Phase};
use crate::metrics::KindLabel;
use crate::ownership;
use crate::{LABEL_GENERATION, LABEL_WARM};

pub use crate::controller::{Context, Error, FINALIZER};

impl PodOwner for CacheWarm {
    const KIND: &'static str = "CacheWarm";
    const POD_LABEL: &'static str = LABEL_WARM;
    const POD_ROLE: &'static str = "warmer";
}

pub async fn reconcile(cw: Arc<CacheWarm>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cw
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cw.name_any()))?;
    let api: Api<CacheWarm> = Api::namespaced(ctx.client.clone(), &ns);
    let start = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, cw, |event| async {
        match event {
            finalizer::Event::Apply(c) => apply(&api, &c, &ctx).await,
            finalizer::Event::Cleanup(c) => cleanup(&*c, &ctx.client).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled("CacheWarm", result.is_ok(), start.elapsed());
    result
}

pub fn error_policy(cw: Arc<CacheWarm>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(cachewarm = %cw.name_any(), namespace = %cw.namespace().unwrap_or_default(), error = %err, "reconcile failed");
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
    let now = ctx.config.clock.now();
    let generation = cw.metadata.generation.unwrap_or(0);
    let plan = match status::validate(&cw, &ctx.config) {
        Err(invalid) => {
            let mut st = cw.status.clone().unwrap_or_default();
            st.phase = Some(Phase::Failed);
            st.observed_generation = Some(generation);
            st.message = Some(if invalid.reason == reason::NOT_PERMITTED {
                format!("not permitted: {invalid}")
            } else {
                format!("invalid spec: {invalid}")
            });
            st.conditions = conditions::set(
                &st.conditions,
                Desired {
                    type_: conditions::READY,
                    status: Status::False,
                    reason: invalid.reason,
                    message: invalid.message,
                },
                Some(generation),
                now,
            );
            status::set_progress(&mut st, generation, now);
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
                missing_secret: None,
                foreign_pod,
            };
            if let Some(pod) = obs.pod.as_ref().filter(|p| pod_not_started(p)) {
                let warnings = ctx.warnings.for_pod(pod);
                obs.missing_secret = crate::pod_events::missing_secret(&warnings);
            }
            let plan = status::plan(&cw, interval, &obs, &ctx.config, now);
            if let Some(run) = plan.create_run {
                let pod = desired_pod(&cw, &ctx.config, run);
                create_pod::<CacheWarm>(&pods, &pod, &ctx.metrics.warms_started).await?;
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
        delete_pod(&pods, &ns, old).await?;
    }
    if let Some(st) = &plan.status {
        patch_status(&cw, st, &ctx.client).await?;
        // A warm run that just failed (the status turns Failed, or a later run's failure).
        let old = cw.status.as_ref();
        let failed_now = st.phase == Some(Phase::Failed)
            && (old.and_then(|o| o.phase) != Some(Phase::Failed)
                || old.and_then(|o| o.runs) != st.runs);
        if failed_now {
            ctx.metrics
                .warms_failed
                .get_or_create(&crate::metrics::NamespaceLabel {
                    namespace: ns.clone(),
                })
                .inc();
        }
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
        publish_event(ctx, &ev, &cw).await;
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

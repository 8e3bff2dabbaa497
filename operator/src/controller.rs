//! The I/O that the `ImageBuild` and `CacheWarm` controllers share: creating and deleting the
//! Pods an object controls, holding the Warning Events the kubelet wrote about them,
//! publishing Events, and writing the object's status with one server-side-apply patch. Generic
//! over [`PodOwner`]; it decides nothing (the pure planners of each kind do). It never touches
//! Secrets: the operator has no permission on them at all.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::OperatorConfig;
use crate::metrics::Metrics;
use crate::pod_events::PodWarning;
use crate::{names, ownership, FIELD_MANAGER, MANAGED_BY};

/// Finalizer that makes the operator delete an object's Pods before the object disappears.
pub const FINALIZER: &str = "kiln.dev/cleanup";

/// Shared by every reconcile of either kind.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// `reportingInstance` of the Events the operator writes itself (see [`publish_event`]).
    pub instance: String,
    /// The build queue (ImageBuilds; no limits, no queue).
    pub queue: std::sync::Arc<crate::image_build::admission::BuildQueue>,
    /// The kubelet's Warning Events about Pods (a Secret it cannot mount).
    pub warnings: std::sync::Arc<WarningEvents>,
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

/// Wraps a failed API call with what was attempted on which object.
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

/// Cuts `s` to at most `max` bytes on a character boundary (Event notes have a size limit).
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

/// A namespaced Kiln resource that runs its work in Pods it controls.
pub trait PodOwner:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned
{
    /// The kind, as error messages name it.
    const KIND: &'static str;
    /// Label on each of its Pods whose value is the owner's name.
    const POD_LABEL: &'static str;
    /// What its Pods are called in logs (`executor`, `warmer`).
    const POD_ROLE: &'static str;
}

/// Creates `pod` under the operator's field manager and counts it in `started`. A Pod that
/// already exists under the name was created by an earlier reconcile whose status patch did
/// not land (names are deterministic), so a conflict is success.
pub async fn create_pod<K: PodOwner>(
    pods: &Api<Pod>,
    pod: &Pod,
    started: &Counter,
) -> Result<(), Error> {
    let name = pod.name_any();
    let ns = pod.namespace().unwrap_or_default();
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match pods.create(&pp, pod).await {
        Ok(_) => {
            started.inc();
            info!(pod = %name, namespace = %ns, "created {} Pod", K::POD_ROLE);
            Ok(())
        }
        Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(()),
        Err(e) => Err(kube_err("creating", "Pod", &ns, &name)(e)),
    }
}

/// Deletes one Pod by name; `Ok(false)` when it was already gone.
pub async fn delete_pod(pods: &Api<Pod>, ns: &str, name: &str) -> Result<bool, Error> {
    match pods.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(ae)) if ae.code == 404 => Ok(false),
        Err(e) => Err(kube_err("deleting", "Pod", ns, name)(e)),
    }
}

/// Deletes the Pods labelled for `owner` that `owner` controls and `which` selects; a Pod that
/// merely carries the label (copied by hand, or of an earlier object of the same name) is left.
pub async fn delete_pods<K: PodOwner>(
    pods: &Api<Pod>,
    owner: &K,
    which: impl Fn(&Pod) -> bool,
) -> Result<(), Error> {
    let name = owner.name_any();
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let lp = ListParams::default().labels(&format!(
        "{}={}",
        K::POD_LABEL,
        crate::names::label_value(&name)
    ));
    let list = pods
        .list(&lp)
        .await
        .map_err(kube_err("listing Pods of", K::KIND, &ns, &name))?;
    for p in list
        .items
        .iter()
        .filter(|p| ownership::controlled_by(p, &uid) && which(p))
    {
        let pn = p.name_any();
        if delete_pod(pods, &ns, &pn).await? {
            info!(pod = %pn, namespace = %ns, "deleted {} Pod", K::POD_ROLE);
        }
    }
    Ok(())
}

/// The finalizer's cleanup: deletes every Pod `owner` controls before it goes away.
pub async fn cleanup<K: PodOwner>(owner: &K, client: &Client) -> Result<Action, Error> {
    let ns = owner.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    delete_pods(&pods, owner, |_| true).await?;
    Ok(Action::await_change())
}

/// A Pod whose phase is still `Pending` (or not written yet): its containers have not started.
pub fn pod_not_started(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        None | Some("Pending")
    )
}

/// Field selector of the Events the operator watches: the kubelet's `FailedMount` Warnings about
/// Pods, which say that a Secret (or a key of one) a Pod mounts does not exist. Nothing else a
/// Pod that has not started says is only in Events: image pull failures and scheduling are in the
/// Pod's own status, which the Pod watch already sees.
pub const WARNING_EVENTS: &str = "type=Warning,reason=FailedMount,regarding.kind=Pod";

/// The Warning Events ([`WARNING_EVENTS`]) the operator's Event watches hold, one store per
/// watch. Reading them costs no API request, and a new one wakes the Pod's owner at once (see
/// `runtime`), so a Pod that does not start needs no polling.
#[derive(Default)]
pub struct WarningEvents {
    stores: std::sync::RwLock<Vec<kube::runtime::reflector::Store<K8sEvent>>>,
}

impl WarningEvents {
    pub fn add_store(&self, store: kube::runtime::reflector::Store<K8sEvent>) {
        self.stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(store);
    }

    /// The Warnings about this very Pod (its UID, not an earlier Pod of the same name), oldest
    /// first.
    pub fn for_pod(&self, pod: &Pod) -> Vec<PodWarning> {
        let ns = pod.namespace();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let stores = self.stores.read().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<std::sync::Arc<K8sEvent>> = stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|e| e.metadata.namespace == ns)
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
            .collect();
        found.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        found
            .iter()
            .map(|e| PodWarning {
                reason: e.reason.clone().unwrap_or_default(),
                message: e.note.clone().unwrap_or_default(),
            })
            .collect()
    }
}

/// The name of the Pod a watched Event is about, with its namespace.
pub fn event_pod(e: &K8sEvent) -> Option<(String, String)> {
    let r = e.regarding.as_ref()?;
    if r.kind.as_deref() != Some("Pod") {
        return None;
    }
    Some((
        r.namespace
            .clone()
            .or_else(|| e.metadata.namespace.clone())?,
        r.name.clone()?,
    ))
}

/// Longest object name whose Events the kube-runtime recorder can name: it calls them
/// `<name>.<nanoseconds in hex>` (up to 16 digits), and an Event name has at most 253 characters.
const RECORDER_MAX_NAME: usize = 253 - 17;

/// Publishes `event` about `owner`. An Event that cannot be published is logged, never an error:
/// it must not fail the reconcile. Objects with names too long for the recorder's Event names
/// get an Event written here, named `<label value of the name>.<nanoseconds>`, which still
/// points at the object (`regarding`).
pub async fn publish_event<K: PodOwner>(ctx: &Context, event: &Event, owner: &K) {
    let reference = owner.object_ref(&());
    let name = owner.name_any();
    let result = if name.len() <= RECORDER_MAX_NAME {
        ctx.recorder.publish(event, &reference).await
    } else {
        create_event(ctx, event, &reference, &name).await
    };
    if let Err(e) = result {
        warn!(kind = K::KIND, name = %name, error = %e, "could not publish event");
    }
}

async fn create_event(
    ctx: &Context,
    event: &Event,
    reference: &ObjectReference,
    name: &str,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    let ns = reference.namespace.clone().unwrap_or_default();
    let body = K8sEvent {
        metadata: kube::api::ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                names::label_value(name),
                now.as_nanosecond()
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        related: event.secondary.clone(),
        reporting_controller: Some(MANAGED_BY.into()),
        reporting_instance: Some(ctx.instance.clone()),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    };
    let api: Api<K8sEvent> = Api::namespaced(ctx.client.clone(), &ns);
    api.create(&PostParams::default(), &body).await.map(|_| ())
}

/// Writes the whole status under the operator's field manager (server-side apply).
pub async fn patch_status<K: PodOwner>(
    owner: &K,
    status: &impl Serialize,
    client: &Client,
) -> Result<(), Error> {
    let name = owner.name_any();
    let ns = owner.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err("patching status of", K::KIND, &ns, &name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        // "é" is two bytes: cutting inside it backs off to the boundary before.
        assert_eq!(truncate("aé", 2), "a");
    }
}

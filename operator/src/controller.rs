//! The I/O that the `ImageBuild` and `CacheWarm` controllers share: creating and deleting the
//! Pods an object controls, checking a Secret exists, and writing the object's status with one
//! server-side-apply patch. Generic over [`PodOwner`]; it decides nothing (the pure planners of
//! each kind do) and never reads Secret data.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::info;

use crate::config::OperatorConfig;
use crate::metrics::Metrics;
use crate::{ownership, FIELD_MANAGER};

/// Finalizer that makes the operator delete an object's Pods before the object disappears.
pub const FINALIZER: &str = "kiln.dev/cleanup";

/// Shared by every reconcile of either kind.
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
    let lp = ListParams::default().labels(&format!("{}={name}", K::POD_LABEL));
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

/// Checks that a Secret exists with a metadata-only `get`: the operator never reads Secret data.
pub async fn secret_exists(client: &Client, ns: &str, name: &str) -> Result<bool, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let found = secrets
        .get_metadata_opt(name)
        .await
        .map_err(kube_err("checking", "Secret", ns, name))?;
    Ok(found.is_some())
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

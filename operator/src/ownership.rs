//! Whether a Pod found under a deterministic name belongs to the object reconciling it. Pure:
//! reads the Pod's controller owner reference only; deciding what to do about a stranger is
//! the status planners' job.

use k8s_openapi::api::core::v1::Pod;

/// Condition reason shared by `ImageBuild` and `CacheWarm` when another object's Pod (or a Pod
/// nobody controls) already has the name the operator needs.
pub const POD_NAME_CONFLICT: &str = "PodNameConflict";

/// `true` when the Pod's controller owner reference is the object with `uid`.
pub fn controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Splits what `get` returned under our Pod name into our Pod, or a description of the
/// stranger that squats the name (for status messages).
pub fn sort_out(pod: Option<Pod>, uid: &str) -> (Option<Pod>, Option<String>) {
    match pod {
        Some(p) if controlled_by(&p, uid) => (Some(p), None),
        Some(p) => {
            let name = p.metadata.name.clone().unwrap_or_default();
            let owner = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| format!("controlled by {} {}", r.kind, r.name))
                .unwrap_or_else(|| "not controlled by any object".to_string());
            (None, Some(format!("Pod {name} exists and is {owner}")))
        }
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(owner: Option<(&str, bool)>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("x-build-1-1".into()),
                owner_references: owner.map(|(uid, controller)| {
                    vec![OwnerReference {
                        api_version: "kiln.dev/v1alpha1".into(),
                        kind: "CacheWarm".into(),
                        name: "x".into(),
                        uid: uid.into(),
                        controller: Some(controller),
                        block_owner_deletion: None,
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn own_pod_is_kept() {
        let (p, foreign) = sort_out(Some(pod(Some(("me", true)))), "me");
        assert!(p.is_some());
        assert_eq!(foreign, None);
    }

    #[test]
    fn strangers_are_described() {
        let (p, foreign) = sort_out(Some(pod(Some(("other", true)))), "me");
        assert!(p.is_none());
        assert_eq!(
            foreign.as_deref(),
            Some("Pod x-build-1-1 exists and is controlled by CacheWarm x")
        );
        // A non-controller reference to us does not make the Pod ours.
        let (p, foreign) = sort_out(Some(pod(Some(("me", false)))), "me");
        assert!(p.is_none());
        assert!(foreign.unwrap().ends_with("not controlled by any object"));
        let (p, foreign) = sort_out(Some(pod(None)), "me");
        assert!(p.is_none() && foreign.is_some());
        assert_eq!(sort_out(None, "me"), (None, None));
    }
}

//! Why a Pod the operator created does not start, read the way a person reads `kubectl describe
//! pod`: from the Pod's own container status and the Warning Events the kubelet wrote about it.
//! This is how a missing push or pull Secret is found, without any permission on Secrets. Pure:
//! it parses what the controller read and never echoes more than a bounded excerpt.

use k8s_openapi::api::core::v1::Pod;

use crate::text::one_line;

/// One Warning Event about a Pod (`reason`, and the message, `note` in events.k8s.io).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWarning {
    pub reason: String,
    pub message: String,
}

/// Longest excerpt of a kubelet message copied into a status.
const MAX_EXCERPT: usize = 256;

/// The Secret the kubelet cannot mount into the Pod because it does not exist: a `FailedMount`
/// Warning such as `MountVolume.SetUp failed for volume "docker-config" : secret "regcred" not
/// found` (the kubelet's watching Secret manager says `secret`, the API's own NotFound error
/// `secrets`). Only a well-formed object name is returned, so nothing else of the message is
/// echoed.
pub fn missing_secret(warnings: &[PodWarning]) -> Option<String> {
    warnings
        .iter()
        .filter(|w| w.reason == "FailedMount")
        .find_map(|w| {
            ["secret \"", "secrets \""].iter().find_map(|prefix| {
                let rest = &w.message[w.message.find(prefix)? + prefix.len()..];
                let name = &rest[..rest.find("\" not found")?];
                is_object_name(name).then(|| name.to_string())
            })
        })
}

/// A key the kubelet cannot find in a Secret it mounts into the Pod (the Secret exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingKey {
    /// The Pod volume naming the Secret.
    pub volume: String,
    pub key: String,
}

/// The key of an existing Secret that the kubelet cannot mount: a `FailedMount` Warning such as
/// `MountVolume.SetUp failed for volume "build-secret-0" : references non-existent secret key:
/// .npmrc`. Only a well-formed volume name and Secret key are returned.
pub fn missing_secret_key(warnings: &[PodWarning]) -> Option<MissingKey> {
    const KEY: &str = "references non-existent secret key: ";
    const VOLUME: &str = "for volume \"";
    warnings
        .iter()
        .filter(|w| w.reason == "FailedMount")
        .find_map(|w| {
            let key = w.message[w.message.find(KEY)? + KEY.len()..].trim_end();
            let rest = &w.message[w.message.find(VOLUME)? + VOLUME.len()..];
            let volume = &rest[..rest.find('"')?];
            let key_ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            (key_ok && volume.len() <= 63 && is_object_name(volume)).then(|| MissingKey {
                volume: volume.to_string(),
                key: key.to_string(),
            })
        })
}

/// A DNS subdomain, as every Secret name is.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Container `waiting` reasons that mean the container will not start by itself.
const STUCK: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Container `waiting` reasons after which the kubelet does not pull the image without a change:
/// it backs off after a failed pull, or the reference cannot be pulled at all.
const PULL_FAILED: [&str; 3] = ["ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

/// The image of container `container` and why the kubelet cannot pull it (`reason: message`),
/// once it has given up for now ([`PULL_FAILED`]).
pub fn image_pull_failed(pod: &Pod, container: &str) -> Option<(String, String)> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?;
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    if !PULL_FAILED.contains(&reason) {
        return None;
    }
    let why = match waiting.message.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {}", one_line(m, MAX_EXCERPT)),
        None => reason.to_string(),
    };
    Some((status.image.clone(), why))
}

/// The scheduler's message when it could not place the Pod (`PodScheduled=False`, reason
/// `Unschedulable`), bounded.
pub fn unschedulable(pod: &Pod) -> Option<String> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    (c.status == "False" && c.reason.as_deref() == Some("Unschedulable")).then(|| {
        one_line(
            c.message.as_deref().unwrap_or("no node fits the Pod"),
            MAX_EXCERPT,
        )
    })
}

/// Why the container `container` of a Pending Pod is stuck, as `reason: message` from its
/// status (`ImagePullBackOff: Back-off pulling image ...`), bounded; `None` while it is merely
/// being created.
pub fn stuck_container(pod: &Pod, container: &str) -> Option<String> {
    let waiting = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    let reason = waiting.reason.as_deref()?;
    if !STUCK.contains(&reason) {
        return None;
    }
    Some(match waiting.message.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {}", one_line(m, MAX_EXCERPT)),
        None => reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    fn warning(reason: &str, message: &str) -> PodWarning {
        PodWarning {
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_kubelets_failed_mount_names_the_secret() {
        let w = [
            warning("FailedScheduling", "0/3 nodes are available"),
            warning(
                "FailedMount",
                "MountVolume.SetUp failed for volume \"docker-config\" : secret \"regcred\" not found",
            ),
        ];
        assert_eq!(missing_secret(&w).as_deref(), Some("regcred"));
        let api_form = [warning(
            "FailedMount",
            "MountVolume.SetUp failed for volume \"docker-config\" : secrets \"push\" not found",
        )];
        assert_eq!(missing_secret(&api_form).as_deref(), Some("push"));
        // Other mount failures, and other reasons quoting a Secret, are not a missing Secret.
        assert_eq!(
            missing_secret(&[warning(
                "FailedMount",
                "MountVolume.SetUp failed for volume \"context\" : configmap \"ctx\" not found"
            )]),
            None
        );
        assert_eq!(
            missing_secret(&[warning("Failed", "secret \"regcred\" not found")]),
            None
        );
        // Nothing but an object name is taken from the message.
        assert_eq!(
            missing_secret(&[warning(
                "FailedMount",
                "secret \"root:x:0:0:root:/root:/bin/bash\" not found"
            )]),
            None
        );
        assert_eq!(missing_secret(&[]), None);
    }

    #[test]
    fn the_kubelets_failed_mount_names_a_missing_key() {
        let w = [warning(
            "FailedMount",
            "MountVolume.SetUp failed for volume \"build-secret-1\" : references non-existent secret key: .npmrc",
        )];
        assert_eq!(
            missing_secret_key(&w),
            Some(MissingKey {
                volume: "build-secret-1".into(),
                key: ".npmrc".into()
            })
        );
        assert_eq!(missing_secret(&w), None);
        let odd = [warning(
            "FailedMount",
            "MountVolume.SetUp failed for volume \"v\" : references non-existent secret key: a b",
        )];
        assert_eq!(missing_secret_key(&odd), None);
    }

    fn waiting(reason: &str, message: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "executor".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some(message.into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn stuck_containers_say_why_in_one_bounded_line() {
        let p = waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"reg.local/kiln-executor:nope\"",
        );
        assert_eq!(
            stuck_container(&p, "executor").as_deref(),
            Some("ImagePullBackOff: Back-off pulling image \"reg.local/kiln-executor:nope\"")
        );
        assert_eq!(stuck_container(&p, "warmer"), None);
        assert_eq!(
            stuck_container(&waiting("ContainerCreating", ""), "executor"),
            None
        );
        let long = waiting("CreateContainerError", &format!("a\nb{}", "x".repeat(1000)));
        let m = stuck_container(&long, "executor").unwrap();
        assert!(
            m.len() <= "CreateContainerError: ".len() + MAX_EXCERPT,
            "{m}"
        );
        assert!(!m.contains('\n') && m.ends_with('…'), "{m}");
    }
}

//! Which finished executor Pods of an `ImageBuild` go, by `spec.retention` over the operator's
//! defaults: each is deleted once its TTL has passed, and beyond the limit of its kind (newest
//! kept). Pure: the clock is a parameter; the controller lists and deletes.

use std::time::Duration;

use jiff::Timestamp;

use crate::crd::Retention;
use crate::duration;

/// Retention as it applies: the spec's values over the operator's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub ttl_after_succeeded: Option<Duration>,
    pub ttl_after_failed: Option<Duration>,
    pub succeeded_limit: usize,
    pub failed_limit: usize,
}

impl Default for Effective {
    /// Ten of each kept, no TTL (the operator's defaults when its flags set none).
    fn default() -> Self {
        Effective {
            ttl_after_succeeded: None,
            ttl_after_failed: None,
            succeeded_limit: 10,
            failed_limit: 10,
        }
    }
}

/// A duration of `spec.retention`, checked: `Err` names the field.
pub fn parse_ttl(field: &str, value: Option<&str>) -> Result<Option<Duration>, String> {
    value
        .map(|v| duration::parse(v).map_err(|e| format!("spec.retention.{field}: {e}")))
        .transpose()
}

/// `spec` over `defaults` (a field the spec leaves unset keeps the default).
pub fn effective(spec: Option<&Retention>, defaults: &Effective) -> Result<Effective, String> {
    let Some(r) = spec else {
        return Ok(defaults.clone());
    };
    let limit = |v: Option<i32>, d: usize| v.map_or(d, |n| usize::try_from(n).unwrap_or(0));
    Ok(Effective {
        ttl_after_succeeded: parse_ttl("ttlAfterSucceeded", r.ttl_after_succeeded.as_deref())?
            .or(defaults.ttl_after_succeeded),
        ttl_after_failed: parse_ttl("ttlAfterFailed", r.ttl_after_failed.as_deref())?
            .or(defaults.ttl_after_failed),
        succeeded_limit: limit(r.succeeded_limit, defaults.succeeded_limit),
        failed_limit: limit(r.failed_limit, defaults.failed_limit),
    })
}

/// A finished executor Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedPod {
    pub name: String,
    pub succeeded: bool,
    pub finished: Timestamp,
}

/// `pod` as retention sees it, when it has finished: when (its containers' latest finish, else
/// its latest condition change, else its creation) and how.
pub fn finished_pod(pod: &k8s_openapi::api::core::v1::Pod) -> Option<FinishedPod> {
    let status = pod.status.as_ref()?;
    let succeeded = match status.phase.as_deref()? {
        "Succeeded" => true,
        "Failed" => false,
        _ => return None,
    };
    let containers = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let conditions = status
        .conditions
        .iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .max();
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    Some(FinishedPod {
        name: pod.metadata.name.clone()?,
        succeeded,
        finished: containers.or(conditions).or(created)?,
    })
}

/// The Pods to delete now, and when the next one's TTL passes (to look again then).
/// Ties in finish time keep the Pod whose name sorts last (a later generation or attempt of the
/// same length of name), so the choice never depends on the order the API server lists them.
pub fn select(
    pods: &[FinishedPod],
    r: &Effective,
    now: Timestamp,
) -> (Vec<String>, Option<Duration>) {
    let mut delete = Vec::new();
    let mut next: Option<Duration> = None;
    for succeeded in [true, false] {
        let (limit, ttl) = if succeeded {
            (r.succeeded_limit, r.ttl_after_succeeded)
        } else {
            (r.failed_limit, r.ttl_after_failed)
        };
        let mut kind: Vec<&FinishedPod> =
            pods.iter().filter(|p| p.succeeded == succeeded).collect();
        kind.sort_by(|a, b| {
            b.finished
                .cmp(&a.finished)
                .then_with(|| b.name.cmp(&a.name))
        });
        for (i, p) in kind.into_iter().enumerate() {
            let age = Duration::from_millis(
                u64::try_from(
                    now.as_millisecond()
                        .saturating_sub(p.finished.as_millisecond()),
                )
                .unwrap_or(0),
            );
            match ttl {
                _ if i >= limit => delete.push(p.name.clone()),
                Some(ttl) if age >= ttl => delete.push(p.name.clone()),
                Some(ttl) => {
                    let left = ttl - age;
                    next = Some(next.map_or(left, |n| n.min(left)));
                }
                None => {}
            }
        }
    }
    delete.sort();
    (delete, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pod(name: &str, succeeded: bool, at: i64) -> FinishedPod {
        FinishedPod {
            name: name.into(),
            succeeded,
            finished: ts(at),
        }
    }

    #[test]
    fn limits_keep_the_newest_of_each_kind() {
        let pods = [
            pod("a-build-1-1", true, 10),
            pod("a-build-2-1", true, 20),
            pod("a-build-3-1", false, 30),
            pod("a-build-3-2", false, 40),
            pod("a-build-4-1", true, 50),
        ];
        let r = Effective {
            succeeded_limit: 2,
            failed_limit: 1,
            ..Default::default()
        };
        let (delete, next) = select(&pods, &r, ts(100));
        assert_eq!(delete, vec!["a-build-1-1", "a-build-3-1"]);
        assert_eq!(next, None);
        let zero = Effective {
            succeeded_limit: 0,
            failed_limit: 10,
            ..Default::default()
        };
        assert_eq!(
            select(&pods, &zero, ts(100)).0,
            vec!["a-build-1-1", "a-build-2-1", "a-build-4-1"]
        );
    }

    #[test]
    fn ttls_delete_expired_pods_and_say_when_the_next_expires() {
        let pods = [
            pod("ok-old", true, 0),
            pod("ok-new", true, 90),
            pod("failed", false, 50),
        ];
        let r = Effective {
            ttl_after_succeeded: Some(Duration::from_secs(60)),
            ttl_after_failed: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let (delete, next) = select(&pods, &r, ts(100));
        assert_eq!(delete, vec!["ok-old"]);
        // ok-new expires at 150 (50 s), the failed one at 3650.
        assert_eq!(next, Some(Duration::from_secs(50)));
    }

    #[test]
    fn the_order_of_the_list_does_not_matter() {
        let mut pods = vec![
            pod("b-build-1-1", true, 10),
            pod("b-build-2-1", true, 10),
            pod("b-build-3-1", true, 10),
        ];
        let r = Effective {
            succeeded_limit: 1,
            ..Default::default()
        };
        let first = select(&pods, &r, ts(20));
        pods.reverse();
        assert_eq!(select(&pods, &r, ts(20)), first);
        assert_eq!(first.0, vec!["b-build-1-1", "b-build-2-1"]);
    }

    #[test]
    fn spec_fields_override_defaults_one_by_one() {
        let defaults = Effective {
            ttl_after_failed: Some(Duration::from_secs(7)),
            ..Default::default()
        };
        let spec = Retention {
            ttl_after_succeeded: Some("1h".into()),
            succeeded_limit: Some(3),
            ..Default::default()
        };
        let e = effective(Some(&spec), &defaults).unwrap();
        assert_eq!(e.ttl_after_succeeded, Some(Duration::from_secs(3600)));
        assert_eq!(e.ttl_after_failed, Some(Duration::from_secs(7)));
        assert_eq!((e.succeeded_limit, e.failed_limit), (3, 10));
        assert_eq!(effective(None, &defaults).unwrap(), defaults);
        let bad = Retention {
            ttl_after_failed: Some("soon".into()),
            ..Default::default()
        };
        assert!(effective(Some(&bad), &defaults)
            .unwrap_err()
            .contains("spec.retention.ttlAfterFailed"));
    }
}

//! Kubernetes-convention conditions, updated purely: a condition's `lastTransitionTime` changes
//! only when its status flips. No I/O; the clock is a parameter.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition `Ready`: the image (or cache) is available.
pub const READY: &str = "Ready";
/// Condition `Succeeded`: the current generation's build finished successfully
/// (`Unknown` while it runs, `False` once it failed for good).
pub const SUCCEEDED: &str = "Succeeded";

/// Condition status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// One desired condition, before it is merged into the existing list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired<'a> {
    pub type_: &'a str,
    pub status: Status,
    pub reason: &'a str,
    pub message: String,
}

/// Merges `desired` into `existing`: reason, message and observedGeneration always follow the
/// desired values; `lastTransitionTime` is kept unless the status changed (or the condition is new).
pub fn set(
    existing: &[Condition],
    desired: Desired<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = existing.to_vec();
    let transition = |old: Option<&Condition>| match old {
        Some(c) if c.status == desired.status.as_str() => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let pos = out.iter().position(|c| c.type_ == desired.type_);
    let cond = Condition {
        last_transition_time: transition(pos.map(|i| &out[i])),
        message: desired.message.clone(),
        observed_generation: generation,
        reason: desired.reason.to_string(),
        status: desired.status.as_str().to_string(),
        type_: desired.type_.to_string(),
    };
    match pos {
        Some(i) => out[i] = cond,
        None => out.push(cond),
    }
    out
}

/// Condition `Reconciling` (kstatus): present, `True`, while the resource works towards its
/// desired state; absent otherwise.
pub const RECONCILING: &str = "Reconciling";
/// Condition `Stalled` (kstatus): present, `True`, when the resource failed and will not get
/// there without a change (a new spec, a re-run); absent otherwise.
pub const STALLED: &str = "Stalled";

/// The kstatus view of a phase: `InProgress` work, a `Failed` end or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Pending, Running, Queued, a retry waiting: `Reconciling=True`.
    InProgress,
    /// Failed for good: `Stalled=True`.
    Failed,
    /// Succeeded (or Ready with a refresh running): neither.
    Done,
}

/// Sets `Reconciling` and `Stalled` as kstatus (`sigs.k8s.io/cli-utils/pkg/kstatus`, read by Flux,
/// `kubectl wait`-style tools and Argo CD's generic checks) reads them: the one that applies is
/// `True` with the `Ready` condition's reason and message, the other is removed (kstatus's
/// "abnormal-true" conditions are absent when they do not hold).
pub fn set_progress(
    existing: &[Condition],
    progress: Progress,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let (reason, message) = get(existing, READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default();
    let (on, off) = match progress {
        Progress::InProgress => (Some(RECONCILING), [STALLED, ""]),
        Progress::Failed => (Some(STALLED), [RECONCILING, ""]),
        Progress::Done => (None, [RECONCILING, STALLED]),
    };
    let mut out: Vec<Condition> = existing
        .iter()
        .filter(|c| !off.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    if let Some(type_) = on {
        out = set(
            &out,
            Desired {
                type_,
                status: Status::True,
                reason: if reason.is_empty() { type_ } else { &reason },
                message,
            },
            generation,
            now,
        );
    }
    out
}

/// The condition of `type_`, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn d(status: Status, reason: &'static str) -> Desired<'static> {
        Desired {
            type_: READY,
            status,
            reason,
            message: format!("{reason} message"),
        }
    }

    #[test]
    fn new_condition_gets_now() {
        let c = set(&[], d(Status::False, "Building"), Some(1), ts(100));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(ts(100)));
        assert_eq!(c[0].status, "False");
        assert_eq!(c[0].observed_generation, Some(1));
    }

    #[test]
    fn same_status_keeps_transition_time_but_updates_reason() {
        let c1 = set(&[], d(Status::False, "Building"), Some(1), ts(100));
        let c2 = set(&c1, d(Status::False, "BuildFailed"), Some(2), ts(200));
        assert_eq!(c2[0].last_transition_time, Time(ts(100)));
        assert_eq!(c2[0].reason, "BuildFailed");
        assert_eq!(c2[0].message, "BuildFailed message");
        assert_eq!(c2[0].observed_generation, Some(2));
    }

    #[test]
    fn flip_changes_transition_time() {
        let c1 = set(&[], d(Status::False, "Building"), Some(1), ts(100));
        let c2 = set(&c1, d(Status::True, "Pushed"), Some(1), ts(300));
        assert_eq!(c2[0].last_transition_time, Time(ts(300)));
        let c3 = set(&c2, d(Status::True, "Pushed"), Some(1), ts(400));
        assert_eq!(c3[0].last_transition_time, Time(ts(300)));
    }

    #[test]
    fn other_conditions_untouched() {
        let c1 = set(&[], d(Status::False, "Building"), Some(1), ts(100));
        let c2 = set(
            &c1,
            Desired {
                type_: SUCCEEDED,
                status: Status::Unknown,
                reason: "Building",
                message: String::new(),
            },
            Some(1),
            ts(150),
        );
        assert_eq!(c2.len(), 2);
        assert_eq!(c2[0], c1[0]);
        assert_eq!(
            get(&c2, SUCCEEDED).unwrap().last_transition_time,
            Time(ts(150))
        );
    }

    #[test]
    fn progress_sets_one_of_reconciling_and_stalled() {
        let c = set(&[], d(Status::False, "Building"), Some(1), ts(100));
        let c = set_progress(&c, Progress::InProgress, Some(1), ts(100));
        let r = get(&c, RECONCILING).unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Building"));
        assert!(get(&c, STALLED).is_none());
        let c = set(&c, d(Status::False, "OOMKilled"), Some(1), ts(200));
        let c = set_progress(&c, Progress::Failed, Some(1), ts(200));
        let st = get(&c, STALLED).unwrap();
        assert_eq!(
            (st.status.as_str(), st.reason.as_str()),
            ("True", "OOMKilled")
        );
        assert_eq!(st.message, "OOMKilled message");
        assert!(get(&c, RECONCILING).is_none());
        let c = set(&c, d(Status::True, "Pushed"), Some(2), ts(300));
        let c = set_progress(&c, Progress::Done, Some(2), ts(300));
        assert!(get(&c, RECONCILING).is_none() && get(&c, STALLED).is_none());
        assert_eq!(c.len(), 1);
    }
}

//! From what was observed (the `CacheWarm`, its Pod of the current run and, while that Pod has
//! not started, what the kubelet says about it) to the next step and the new status. Pure: the
//! clock is a parameter, no client.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::pod::{WarmerResult, CONTAINER};
use super::reason;
use crate::conditions::{self, Desired, Status};
use crate::config::OperatorConfig;
use crate::crd::{CacheWarm, CacheWarmStatus, Phase};
use crate::duration;
use crate::image_build::status::output_excerpt;
use crate::names;
use crate::ownership::POD_NAME_CONFLICT;

#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The warmer Pod of the current run, if it exists and this CacheWarm controls it.
    pub pod: Option<Pod>,
    /// The Secret the kubelet cannot mount into that Pod because it does not exist (from its
    /// Warning Events, read only while it has not started).
    pub missing_secret: Option<String>,
    /// A Pod this CacheWarm does not control holds the current run's name (described).
    pub foreign_pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: Option<CacheWarmStatus>,
    pub create_run: Option<i32>,
    /// Pod of the previous run, removed once the next run starts.
    pub delete_pod: Option<String>,
    pub requeue: Option<Duration>,
    pub event: Option<(bool, &'static str, String)>,
}

/// Why a `CacheWarm` cannot be run: its condition reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `InvalidSpec`, or `NotPermitted` for a warmer image the configuration does not allow.
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn invalid(message: String) -> Invalid {
    Invalid {
        reason: reason::INVALID_SPEC,
        message,
    }
}

/// The refresh interval of a spec, checked, and its warmer image override checked against the
/// operator's configuration (which allows none by default).
pub fn validate(cw: &CacheWarm, cfg: &OperatorConfig) -> Result<Duration, Invalid> {
    if cw.spec.images.is_empty() {
        return Err(invalid(
            "spec.images is empty: list at least one image reference".into(),
        ));
    }
    if let Some(image) = cw.spec.warmer_image.as_deref() {
        if image != cfg.warmer_image && !crate::config::allowed(&cfg.overrides.warmer_images, image)
        {
            return Err(Invalid {
                reason: reason::NOT_PERMITTED,
                message: format!(
                    "spec.warmerImage {:?} is not permitted by the operator's configuration: \
                     remove it to warm with the default warmer image, or ask the cluster \
                     administrator to allow it (Helm value overrides.warmerImages, operator flag \
                     --allowed-warmer-image)",
                    crate::text::one_line(image, 128)
                ),
            });
        }
    }
    match &cw.spec.refresh_interval {
        None => Ok(cfg.default_refresh_interval),
        Some(s) => {
            let d =
                duration::parse(s).map_err(|e| invalid(format!("spec.refreshInterval: {e}")))?;
            if d < Duration::from_secs(1) {
                return Err(invalid(format!(
                    "spec.refreshInterval must be at least 1s, not {s}"
                )));
            }
            Ok(d)
        }
    }
}

/// The run the status says is current for the generation (1 for a new generation).
pub fn current_run(cw: &CacheWarm) -> i32 {
    let generation = cw.metadata.generation.unwrap_or(0);
    match &cw.status {
        Some(s) if s.observed_generation == Some(generation) => s.runs.unwrap_or(1).max(1),
        _ => 1,
    }
}

pub fn current_pod_name(cw: &CacheWarm) -> String {
    names::warm_pod_name(
        &cw.name_any(),
        cw.metadata.generation.unwrap_or(0),
        current_run(cw),
    )
}

fn set_conditions(
    st: &mut CacheWarmStatus,
    ready: Status,
    why: &str,
    msg: &str,
    generation: i64,
    now: Timestamp,
) {
    st.conditions = conditions::set(
        &st.conditions,
        Desired {
            type_: conditions::READY,
            status: ready,
            reason: why,
            message: msg.to_string(),
        },
        Some(generation),
        now,
    );
}

/// `Reconciling`/`Stalled` from the phase and `Ready` (see [`conditions::set_progress`]): a failed
/// warm is `Stalled` (the next try is scheduled, the message says when); a cache that holds its
/// images is done even while a refresh runs; anything else is in progress.
pub fn set_progress(st: &mut CacheWarmStatus, generation: i64, now: Timestamp) {
    let ready =
        conditions::get(&st.conditions, conditions::READY).is_some_and(|c| c.status == "True");
    let progress = match st.phase {
        Some(Phase::Failed) => conditions::Progress::Failed,
        _ if ready => conditions::Progress::Done,
        _ => conditions::Progress::InProgress,
    };
    st.conditions = conditions::set_progress(&st.conditions, progress, Some(generation), now);
}

fn since(t: Timestamp, now: Timestamp) -> Duration {
    let ms = now.as_millisecond().saturating_sub(t.as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Decides the next step of a `CacheWarm`. `interval` comes from [`validate`].
pub fn plan(
    cw: &CacheWarm,
    interval: Duration,
    obs: &Observation,
    cfg: &OperatorConfig,
    now: Timestamp,
) -> Plan {
    let generation = cw.metadata.generation.unwrap_or(0);
    let old = cw.status.clone().unwrap_or_default();
    let same_gen = old.observed_generation == Some(generation);
    let run = current_run(cw);
    let pod_name = names::warm_pod_name(&cw.name_any(), generation, run);
    let mut st = if same_gen {
        old.clone()
    } else {
        CacheWarmStatus {
            conditions: old.conditions.clone(),
            images: old.images.clone(),
            image_count: old.image_count,
            last_warm_time: old.last_warm_time.clone(),
            ..Default::default()
        }
    };
    st.observed_generation = Some(generation);
    st.runs = Some(run);
    let mut plan = Plan {
        status: None,
        create_run: None,
        delete_pod: None,
        requeue: None,
        event: None,
    };
    let start = |st: &mut CacheWarmStatus, plan: &mut Plan, run: i32, previous: Option<String>| {
        let name = names::warm_pod_name(&cw.name_any(), generation, run);
        let m = format!("warm run {run}: warmer Pod {name} created");
        st.phase = Some(Phase::Running);
        st.completion_time = None;
        st.runs = Some(run);
        st.pod_name = Some(name);
        st.message = Some(m.clone());
        let ready = if st.images.is_empty() {
            Status::False
        } else {
            Status::True
        };
        let why = if st.images.is_empty() {
            reason::WARMING
        } else {
            reason::WARMED
        };
        set_conditions(st, ready, why, &m, generation, now);
        plan.create_run = Some(run);
        plan.delete_pod = previous;
        plan.event = Some((false, "Started", m));
    };

    // (phase after the Pod's outcome, when it finished)
    let finished: Option<(bool, Timestamp)> = match &obs.pod {
        None if obs.foreign_pod.is_some() => {
            let foreign = obs.foreign_pod.as_deref().unwrap_or_default();
            let m = format!(
                "{foreign}, not by this CacheWarm, so the warmer Pod cannot be created: delete or \
                 rename that Pod (the warm run starts once the name is free)"
            );
            st.phase = Some(Phase::Pending);
            st.message = Some(m.clone());
            if old.conditions.iter().all(|c| c.reason != POD_NAME_CONFLICT) {
                plan.event = Some((true, POD_NAME_CONFLICT, m.clone()));
            }
            set_conditions(
                &mut st,
                Status::False,
                POD_NAME_CONFLICT,
                &m,
                generation,
                now,
            );
            plan.requeue = Some(Duration::from_secs(30));
            None
        }
        None => {
            let created_before = same_gen && old.pod_name.as_deref() == Some(pod_name.as_str());
            if created_before && matches!(old.phase, Some(Phase::Pending | Phase::Running)) {
                let m = format!("the warmer Pod {pod_name} was deleted before it finished");
                st.phase = Some(Phase::Failed);
                st.message = Some(m.clone());
                set_conditions(
                    &mut st,
                    Status::False,
                    reason::POD_DELETED,
                    &m,
                    generation,
                    now,
                );
                plan.event = Some((true, reason::POD_DELETED, m));
                Some((false, now))
            } else if created_before {
                // Finished earlier and the Pod was removed since: time from the status (a
                // status without it is old enough to run again at once).
                let t = old
                    .completion_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(Timestamp::UNIX_EPOCH);
                Some((old.phase == Some(Phase::Succeeded), t))
            } else {
                start(&mut st, &mut plan, run, None);
                None
            }
        }
        Some(pod) => {
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            let term = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref());
            let at = term
                .and_then(|t| t.finished_at.as_ref())
                .map(|t| t.0)
                .unwrap_or(now);
            let msg = term.and_then(|t| t.message.as_deref()).unwrap_or("");
            match phase {
                "Succeeded" => match serde_json::from_str::<WarmerResult>(msg.trim()) {
                    Ok(r) => {
                        let first = !(same_gen && old.phase == Some(Phase::Succeeded));
                        let m = format!("warmed {} image(s)", r.images.len());
                        st.phase = Some(Phase::Succeeded);
                        st.image_count = Some(i32::try_from(r.images.len()).unwrap_or(i32::MAX));
                        st.images = r.images;
                        st.last_warm_time = Some(Time(at));
                        st.message = Some(m.clone());
                        set_conditions(&mut st, Status::True, reason::WARMED, &m, generation, now);
                        if first {
                            plan.event = Some((false, "Warmed", m));
                        }
                        Some((true, at))
                    }
                    Err(e) => {
                        let m = format!(
                            "the warmer exited successfully but its termination message is not the expected JSON \
                             {{\"images\":[...]}} ({e}): {:?}",
                            output_excerpt(msg, cfg)
                        );
                        st.phase = Some(Phase::Failed);
                        st.message = Some(m.clone());
                        set_conditions(
                            &mut st,
                            Status::False,
                            reason::WARM_FAILED,
                            &m,
                            generation,
                            now,
                        );
                        Some((false, at))
                    }
                },
                "Failed" => {
                    let first = !(same_gen && old.phase == Some(Phase::Failed));
                    let m = format!("the warmer failed:\n{}", output_excerpt(msg, cfg));
                    st.phase = Some(Phase::Failed);
                    st.message = Some(m.clone());
                    set_conditions(
                        &mut st,
                        Status::False,
                        reason::WARM_FAILED,
                        &m,
                        generation,
                        now,
                    );
                    if first {
                        plan.event = Some((true, "Failed", m));
                    }
                    Some((false, at))
                }
                "Pending" if obs.missing_secret.is_some() => {
                    let secret = obs.missing_secret.as_deref().unwrap_or_default();
                    let which = if cw.spec.pull_secret.as_deref() == Some(secret) {
                        "pull Secret"
                    } else {
                        "Secret"
                    };
                    let m = format!(
                        "{which} {secret:?} does not exist in namespace {}, so the kubelet cannot \
                         start warmer Pod {pod_name}: create a kubernetes.io/dockerconfigjson \
                         Secret with that name (the warm run starts once it exists)",
                        cw.namespace().unwrap_or_default()
                    );
                    st.phase = Some(Phase::Pending);
                    st.pod_name = Some(pod_name.clone());
                    st.message = Some(m.clone());
                    if old
                        .conditions
                        .iter()
                        .all(|c| c.reason != reason::SECRET_NOT_FOUND)
                    {
                        plan.event = Some((true, reason::SECRET_NOT_FOUND, m.clone()));
                    }
                    set_conditions(
                        &mut st,
                        Status::False,
                        reason::SECRET_NOT_FOUND,
                        &m,
                        generation,
                        now,
                    );
                    None
                }
                other => {
                    let mut m = format!(
                        "warm run {run}: warmer Pod {pod_name} is {}",
                        other.to_lowercase()
                    );
                    if let Some(why) = crate::pod_events::stuck_container(pod, CONTAINER) {
                        m.push_str(": ");
                        m.push_str(&why);
                    }
                    st.phase = Some(Phase::Running);
                    st.pod_name = Some(pod_name.clone());
                    st.message = Some(m.clone());
                    let ready = if st.images.is_empty() {
                        Status::False
                    } else {
                        Status::True
                    };
                    let why = if st.images.is_empty() {
                        reason::WARMING
                    } else {
                        reason::WARMED
                    };
                    set_conditions(&mut st, ready, why, &m, generation, now);
                    None
                }
            }
        }
    };
    if let Some((ok, at)) = finished {
        st.completion_time = Some(Time(at));
        // Next run after the refresh interval; after a failure, after the retry backoff.
        let wait = if ok {
            interval
        } else {
            cfg.retry_backoff.min(interval)
        };
        let waited = since(at, now);
        if waited >= wait {
            let previous = obs.pod.as_ref().map(|p| p.name_any());
            start(&mut st, &mut plan, run + 1, previous);
        } else {
            plan.requeue = Some(wait - waited);
        }
    }
    set_progress(&mut st, generation, now);
    if st != old {
        plan.status = Some(st);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CacheWarmSpec, WarmedImage};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn cw() -> CacheWarm {
        let mut c = CacheWarm::new(
            "base",
            CacheWarmSpec {
                images: vec!["reg.local/debian:12".into()],
                claim: "warm".into(),
                refresh_interval: Some("1h".into()),
                ..Default::default()
            },
        );
        c.metadata.generation = Some(1);
        c.metadata.namespace = Some("ns".into());
        c
    }

    fn pod(phase: &str, msg: &str, at: i64) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: CONTAINER.into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            message: Some(msg.into()),
                            finished_at: Some(Time(ts(at))),
                            ..Default::default()
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

    fn step(c: &mut CacheWarm, obs: Observation, now: i64) -> Plan {
        let cfg = OperatorConfig::default();
        let interval = validate(c, &cfg).unwrap();
        let p = plan(c, interval, &obs, &cfg, ts(now));
        if let Some(s) = &p.status {
            c.status = Some(s.clone());
        }
        p
    }

    #[test]
    fn warm_cycle_with_refresh() {
        let mut c = cw();
        let p = step(&mut c, Observation::default(), 0);
        assert_eq!(p.create_run, Some(1));
        let ok = r#"{"images":[{"reference":"reg.local/debian:12","digest":"sha256:d1"}]}"#;
        let p = step(
            &mut c,
            Observation {
                pod: Some(pod("Succeeded", ok, 10)),
                ..Default::default()
            },
            11,
        );
        let s = c.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(Phase::Succeeded));
        assert_eq!(
            s.images,
            vec![WarmedImage {
                reference: "reg.local/debian:12".into(),
                digest: "sha256:d1".into()
            }]
        );
        assert_eq!(s.image_count, Some(1));
        assert_eq!(s.last_warm_time, Some(Time(ts(10))));
        assert_eq!(p.requeue, Some(Duration::from_secs(3599)));
        assert_eq!(p.create_run, None);
        // An hour later the next run starts and the previous Pod goes away.
        let p = step(
            &mut c,
            Observation {
                pod: Some(pod("Succeeded", ok, 10)),
                ..Default::default()
            },
            3610,
        );
        assert_eq!(p.create_run, Some(2));
        assert_eq!(p.delete_pod.as_deref(), Some("p"));
        let s = c.status.as_ref().unwrap();
        assert_eq!(s.pod_name.as_deref(), Some("base-warm-1-2"));
        assert_eq!(s.phase, Some(Phase::Running));
        // The cache still holds the last warm's images while refreshing.
        assert_eq!(s.images.len(), 1);
        assert_eq!(
            conditions::get(&s.conditions, "Ready").unwrap().status,
            "True"
        );
    }

    #[test]
    fn failed_warm_retries_after_backoff() {
        let mut c = cw();
        step(&mut c, Observation::default(), 0);
        let p = step(
            &mut c,
            Observation {
                pod: Some(pod("Failed", "pull failed: 404", 5)),
                ..Default::default()
            },
            6,
        );
        assert_eq!(c.status.as_ref().unwrap().phase, Some(Phase::Failed));
        assert!(c
            .status
            .as_ref()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("404"));
        assert_eq!(p.requeue, Some(Duration::from_secs(9)));
        assert_eq!(p.event.as_ref().unwrap().1, "Failed");
    }

    fn pending() -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn missing_pull_secret_is_reported_from_the_pod() {
        let mut c = cw();
        c.spec.pull_secret = Some("pull".into());
        // The Pod is created without looking for the Secret (the operator cannot read Secrets).
        let p = step(&mut c, Observation::default(), 0);
        assert_eq!(p.create_run, Some(1));
        let stuck = || Observation {
            pod: Some(pending()),
            missing_secret: Some("pull".into()),
            ..Default::default()
        };
        let p = step(&mut c, stuck(), 5);
        assert_eq!(p.create_run, None);
        // Nothing polled: the kubelet's next Event, or the Pod starting, wakes it.
        assert_eq!(p.requeue, None);
        let s = c.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(Phase::Pending));
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .starts_with("pull Secret \"pull\" does not exist"),
            "{:?}",
            s.message
        );
        assert_eq!(
            conditions::get(&s.conditions, "Ready").unwrap().reason,
            "SecretNotFound"
        );
        assert_eq!(p.event.unwrap().1, "SecretNotFound");
        // Still missing: no second Event.
        assert_eq!(step(&mut c, stuck(), 20).event, None);
        // The Secret appears and the kubelet starts the Pod.
        let p = step(
            &mut c,
            Observation {
                pod: Some(pod("Running", "", 0)),
                ..Default::default()
            },
            40,
        );
        assert_eq!(p.requeue, None);
        assert_eq!(
            conditions::get(&c.status.as_ref().unwrap().conditions, "Ready")
                .unwrap()
                .reason,
            "Warming"
        );
    }

    #[test]
    fn warmer_image_override_needs_permission() {
        let mut c = cw();
        c.spec.warmer_image = Some("evil.example/warmer:1".into());
        let e = validate(&c, &OperatorConfig::default()).unwrap_err();
        assert_eq!(e.reason, "NotPermitted");
        assert!(e.message.contains("--allowed-warmer-image"), "{e}");
        let cfg = OperatorConfig {
            overrides: crate::config::OverridePolicy {
                warmer_images: vec!["evil.example/*".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(validate(&c, &cfg).is_ok());
    }

    #[test]
    fn deleted_warmer_pod_is_reported_and_rerun() {
        let mut c = cw();
        step(&mut c, Observation::default(), 0);
        let p = step(&mut c, Observation::default(), 5);
        let s = c.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(
            conditions::get(&s.conditions, "Ready").unwrap().reason,
            "PodDeleted"
        );
        assert_eq!(p.requeue, Some(Duration::from_secs(10)));
        let p = step(&mut c, Observation::default(), 16);
        assert_eq!(p.create_run, Some(2));
    }

    #[test]
    fn rejects_bad_interval() {
        let mut c = cw();
        c.spec.refresh_interval = Some("daily".into());
        let e = validate(&c, &OperatorConfig::default()).unwrap_err();
        assert_eq!(e.reason, "InvalidSpec");
        assert!(e.message.contains("refreshInterval"), "{e}");
    }

    #[test]
    fn foreign_pod_under_the_name_is_reported_not_adopted() {
        let mut c = cw();
        let squat = || Observation {
            foreign_pod: Some(
                "Pod base-warm-1-1 exists and is not controlled by any object".into(),
            ),
            ..Default::default()
        };
        let p = step(&mut c, squat(), 0);
        assert_eq!(p.create_run, None);
        assert_eq!(p.requeue, Some(Duration::from_secs(30)));
        assert_eq!(p.event.as_ref().unwrap().1, POD_NAME_CONFLICT);
        let s = c.status.clone().unwrap();
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(s.conditions[0].reason, POD_NAME_CONFLICT);
        let p = step(&mut c, squat(), 30);
        assert_eq!(p.event, None);
        let p = step(&mut c, Observation::default(), 60);
        assert_eq!(p.create_run, Some(1));
    }
}

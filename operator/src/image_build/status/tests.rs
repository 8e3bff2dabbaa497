use super::*;
use crate::crd::{BuildSource, GitSource, ImageBuildSpec};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, PodStatus};

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

fn build(retries: i32) -> ImageBuild {
    let mut b = ImageBuild::new(
        "app",
        ImageBuildSpec {
            source: BuildSource {
                git: Some(GitSource {
                    url: "https://example.com/app.git".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            destinations: vec!["reg.local/app:1".into()],
            retries: Some(retries),
            push_secret: Some("regcred".into()),
            ..Default::default()
        },
    );
    b.metadata.namespace = Some("ns".into());
    b.metadata.generation = Some(1);
    b
}

fn valid(retries: i32) -> ValidSpec {
    ValidSpec {
        timeout: None,
        retries,
    }
}

fn pod(phase: &str, term: Option<(i32, &str, i64)>) -> Pod {
    Pod {
        status: Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: term.map(|(code, msg, at)| {
                vec![ContainerStatus {
                    name: CONTAINER.into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            message: Some(msg.into()),
                            finished_at: Some(Time(ts(at))),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `plan` and stores the resulting status on the build, like the controller's patch.
fn step(b: &mut ImageBuild, retries: i32, obs: Observation, now: i64) -> Plan {
    let cfg = OperatorConfig::default();
    let p = plan(b, &valid(retries), &obs, &cfg, ts(now));
    if let Some(s) = &p.status {
        b.status = Some(s.clone());
    }
    p
}

fn cond<'a>(
    b: &'a ImageBuild,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions::get(&b.status.as_ref().unwrap().conditions, t).unwrap()
}

const OK_MSG: &str = r#"{"digest":"sha256:abc","references":["reg.local/app:1@sha256:abc"]}"#;

#[test]
fn first_reconcile_creates_attempt_one() {
    let mut b = build(0);
    let p = step(&mut b, 0, Observation::default(), 0);
    assert_eq!(p.create_attempt, Some(1));
    assert_eq!(p.event.as_ref().unwrap().reason, "Started");
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    assert_eq!(s.pod_name.as_deref(), Some("app-build-1-1"));
    assert_eq!(s.attempts, Some(1));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(s.start_time, Some(Time(ts(0))));
    assert_eq!(cond(&b, "Ready").reason, "Building");
    assert_eq!(cond(&b, "Succeeded").status, "Unknown");
}

#[test]
fn running_then_succeeded_with_termination_message() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Running", None)),
            ..Default::default()
        },
        5,
    );
    assert_eq!(p.create_attempt, None);
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Running));
    let ready_since = cond(&b, "Ready").last_transition_time.clone();
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Succeeded", Some((0, OK_MSG, 42)))),
            ..Default::default()
        },
        50,
    );
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Succeeded));
    let img = s.image.as_ref().unwrap();
    assert_eq!(img.digest, "sha256:abc");
    assert_eq!(img.references, vec!["reg.local/app:1@sha256:abc"]);
    assert_eq!(s.completion_time, Some(Time(ts(42))));
    assert_eq!(cond(&b, "Ready").status, "True");
    assert_eq!(cond(&b, "Ready").reason, "Pushed");
    assert_ne!(cond(&b, "Ready").last_transition_time, ready_since);
    assert_eq!(p.event.unwrap().reason, "Succeeded");
    assert_eq!(p.finished, Some((true, Some(Duration::from_secs(42)))));
    // Finished: a later reconcile (e.g. after a restart) does nothing, even with the Pod gone.
    let p = step(&mut b, 0, Observation::default(), 100);
    assert_eq!(p.status, None);
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.event, None);
}

#[test]
fn pending_to_running_keeps_condition_transition_time() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    let t0 = cond(&b, "Ready").last_transition_time.clone();
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Running", None)),
            ..Default::default()
        },
        10,
    );
    assert_eq!(cond(&b, "Ready").last_transition_time, t0);
}

#[test]
fn failure_reports_last_output_lines() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    let out: String = (1..=30).map(|i| format!("line {i}\n")).collect();
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Failed", Some((1, &out, 7)))),
            ..Default::default()
        },
        8,
    );
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    let m = s.message.as_deref().unwrap();
    assert!(
        m.starts_with("the executor failed with exit code 1:\nline 11\n"),
        "{m}"
    );
    assert!(m.ends_with("line 30"), "{m}");
    assert!(!m.contains("line 10\n"));
    assert_eq!(cond(&b, "Succeeded").status, "False");
    assert_eq!(cond(&b, "Succeeded").reason, "BuildFailed");
    assert_eq!(p.event.unwrap().reason, "Failed");
    assert_eq!(p.finished.map(|f| f.0), Some(false));
}

#[test]
fn deadline_exceeded_is_timeout() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    let mut p = pod("Failed", None);
    let st = p.status.as_mut().unwrap();
    st.reason = Some("DeadlineExceeded".into());
    st.message = Some("Pod was active on the node longer than the specified deadline".into());
    step(
        &mut b,
        0,
        Observation {
            pod: Some(p),
            ..Default::default()
        },
        600,
    );
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "Timeout");
    assert!(b
        .status
        .as_ref()
        .unwrap()
        .message
        .as_deref()
        .unwrap()
        .contains("spec.timeout"));
}

#[test]
fn succeeded_without_json_is_a_failure() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Succeeded", Some((0, "done", 3)))),
            ..Default::default()
        },
        4,
    );
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Failed));
    assert!(b
        .status
        .as_ref()
        .unwrap()
        .message
        .as_deref()
        .unwrap()
        .contains("termination message"));
}

#[test]
fn deleted_pod_is_reported() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Running", None)),
            ..Default::default()
        },
        1,
    );
    step(&mut b, 0, Observation::default(), 2);
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "PodDeleted");
}

#[test]
fn retries_with_backoff_then_gives_up() {
    let mut b = build(2);
    step(&mut b, 2, Observation::default(), 0);
    let failed = |at| Observation {
        pod: Some(pod("Failed", Some((1, "boom", at)))),
        ..Default::default()
    };
    // Attempt 1 fails at t=10; backoff before attempt 2 is 10s.
    let p = step(&mut b, 2, failed(10), 12);
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.requeue, Some(Duration::from_secs(8)));
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Pending));
    assert_eq!(cond(&b, "Succeeded").reason, "Retrying");
    let p = step(&mut b, 2, failed(10), 20);
    assert_eq!(p.create_attempt, Some(2));
    let s = b.status.as_ref().unwrap();
    assert_eq!(
        (s.attempts, s.pod_name.as_deref()),
        (Some(2), Some("app-build-1-2"))
    );
    // Attempt 2 fails at t=30; backoff doubles to 20s.
    let p = step(&mut b, 2, failed(30), 45);
    assert_eq!(p.requeue, Some(Duration::from_secs(5)));
    let p = step(&mut b, 2, failed(30), 50);
    assert_eq!(p.create_attempt, Some(3));
    // Attempt 3 fails: retries exhausted.
    let p = step(&mut b, 2, failed(60), 61);
    assert_eq!(p.create_attempt, None);
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert!(s
        .message
        .as_deref()
        .unwrap()
        .starts_with("attempt 3 of 3 failed (BuildFailed)"));
    assert_eq!(s.start_time, Some(Time(ts(0))));
}

#[test]
fn missing_secret_is_reported_from_the_pod_that_cannot_mount_it() {
    let mut b = build(0);
    // The Pod is created without looking for the Secret: the operator cannot read Secrets.
    let p = step(&mut b, 0, Observation::default(), 0);
    assert_eq!(p.create_attempt, Some(1));
    // Pending, no word from the kubelet yet: nothing polled (the Pod and Event watches wake it).
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Pending", None)),
            ..Default::default()
        },
        2,
    );
    assert_eq!(p.requeue, None);
    assert_eq!(cond(&b, "Ready").reason, "Building");
    let stuck = || Observation {
        pod: Some(pod("Pending", None)),
        missing_secret: Some("regcred".into()),
        ..Default::default()
    };
    let p = step(&mut b, 0, stuck(), 5);
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.requeue, None);
    assert_eq!(p.event.as_ref().unwrap().reason, "SecretNotFound");
    assert_eq!(cond(&b, "Ready").reason, "SecretNotFound");
    assert_eq!(cond(&b, "Succeeded").status, "Unknown");
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    let m = s.message.as_deref().unwrap();
    assert!(
        m.starts_with("push Secret \"regcred\" does not exist in namespace ns")
            && m.contains("app-build-1-1"),
        "{m}"
    );
    // Still missing: no second event, transition time unchanged.
    let t0 = cond(&b, "Ready").last_transition_time.clone();
    let p = step(&mut b, 0, stuck(), 30);
    assert_eq!(p.event, None);
    assert_eq!(cond(&b, "Ready").last_transition_time, t0);
    // The Secret appears, the kubelet starts the Pod: the build runs, no new Pod.
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Running", None)),
            ..Default::default()
        },
        60,
    );
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.requeue, None);
    assert_eq!(cond(&b, "Ready").reason, "Building");
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Running));
}

#[test]
fn failure_output_is_bounded() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    // A build that printed a whole file (a Dockerfile parse error echoing it, say).
    let file: String = (0..5000)
        .map(|i| format!("root:x:{i}:0:secret line {i}\n"))
        .collect();
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Failed", Some((1, &file, 10)))),
            ..Default::default()
        },
        11,
    );
    let m = b.status.as_ref().unwrap().message.clone().unwrap();
    assert!(m.len() <= 1024 + 64, "{} bytes", m.len());
    assert!(m.ends_with("secret line 4999"), "{m}");
    assert!(m.lines().count() <= 21, "{m}");
}

#[test]
fn new_generation_starts_over() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Succeeded", Some((0, OK_MSG, 5)))),
            ..Default::default()
        },
        6,
    );
    b.metadata.generation = Some(2);
    let p = step(&mut b, 0, Observation::default(), 10);
    assert_eq!(p.create_attempt, Some(1));
    assert!(p.supersede_old_generations);
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.pod_name.as_deref(), Some("app-build-2-1"));
    assert_eq!(s.image, None);
    assert_eq!(s.completion_time, None);
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(cond(&b, "Ready").status, "False");
}

#[test]
fn invalid_spec_plan() {
    let b = build(0);
    let p = plan_invalid(&b, &InvalidSpec::NoDestination, ts(0));
    let s = p.status.unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(s.conditions[0].reason, "InvalidSpec");
    assert_eq!(p.create_attempt, None);
}

#[test]
fn not_permitted_override_plan() {
    let b = build(0);
    let err = InvalidSpec::ExecutorImageNotPermitted {
        image: "evil.example/x:1".into(),
    };
    let p = plan_invalid(&b, &err, ts(0));
    let s = p.status.unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(s.conditions[0].reason, "NotPermitted");
    assert!(s
        .message
        .unwrap()
        .starts_with("not permitted: spec.executorImage"));
    assert_eq!(p.event.unwrap().reason, "NotPermitted");
}

#[test]
fn failed_pod_deleted_during_backoff_still_retries() {
    let mut b = build(1);
    step(&mut b, 1, Observation::default(), 0);
    let failed = Observation {
        pod: Some(pod("Failed", Some((1, "boom", 10)))),
        ..Default::default()
    };
    let p = step(&mut b, 1, failed, 11);
    assert_eq!(p.requeue, Some(Duration::from_secs(9)));
    // The failed Pod disappears while the operator waits.
    let p = step(&mut b, 1, Observation::default(), 12);
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.requeue, Some(Duration::from_secs(8)));
    assert_eq!(cond(&b, "Ready").reason, "PodDeleted");
    let p = step(&mut b, 1, Observation::default(), 20);
    assert_eq!(p.create_attempt, Some(2));
    assert_eq!(b.status.as_ref().unwrap().completion_time, None);
}

#[test]
fn foreign_pod_under_the_name_is_reported_not_adopted() {
    let mut b = build(0);
    let squat = || Observation {
        foreign_pod: Some("Pod app-build-1-1 exists and is controlled by CacheWarm app".into()),
        ..Default::default()
    };
    let p = step(&mut b, 0, squat(), 0);
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.requeue, Some(Duration::from_secs(30)));
    assert_eq!(p.event.as_ref().unwrap().reason, "PodNameConflict");
    let s = b.status.clone().unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    assert_eq!(
        s.pod_name, None,
        "the stranger is not recorded as the build's Pod"
    );
    assert!(s.message.unwrap().contains("controlled by CacheWarm app"));
    assert_eq!(cond(&b, "Ready").reason, "PodNameConflict");
    // Still squatted: no new event, no status change.
    let p = step(&mut b, 0, squat(), 30);
    assert_eq!(p.event, None);
    assert_eq!(p.status, None);
    // The name is free again: the build starts.
    let p = step(&mut b, 0, Observation::default(), 60);
    assert_eq!(p.create_attempt, Some(1));
    assert_eq!(cond(&b, "Ready").reason, "Building");
}

#[test]
fn missing_build_secret_names_its_ids_and_keys_never_a_value() {
    use crate::crd::{BuildSecret, SecretKeyRef};
    let mut b = build(0);
    b.spec.secrets = vec![BuildSecret {
        id: "npmrc".into(),
        secret_key_ref: SecretKeyRef {
            name: "npm".into(),
            key: ".npmrc".into(),
        },
    }];
    step(&mut b, 0, Observation::default(), 0);
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Pending", None)),
            missing_secret: Some("npm".into()),
            ..Default::default()
        },
        5,
    );
    assert_eq!(p.event.as_ref().unwrap().reason, "SecretNotFound");
    assert_eq!(cond(&b, "Ready").reason, "SecretNotFound");
    let m = b.status.as_ref().unwrap().message.clone().unwrap();
    assert_eq!(
        m,
        "build Secret \"npm\" of spec.secrets (id npmrc from key \".npmrc\") does not exist in \
         namespace ns, so the kubelet cannot start executor Pod app-build-1-1: create a Secret \
         with that name and those keys (the build starts once it exists)"
    );
    assert_eq!(p.event.unwrap().note, m);
}

#[test]
fn missing_key_names_the_build_secret_or_the_push_secret() {
    use crate::crd::{BuildSecret, SecretKeyRef};
    use crate::pod_events::MissingKey;
    let mut b = build(0);
    b.spec.secrets = vec![BuildSecret {
        id: "npmrc".into(),
        secret_key_ref: SecretKeyRef {
            name: "npm".into(),
            key: ".npmrc".into(),
        },
    }];
    step(&mut b, 0, Observation::default(), 0);
    let stuck = |volume: &str, key: &str| Observation {
        pod: Some(pod("Pending", None)),
        missing_secret_key: Some(MissingKey {
            volume: volume.into(),
            key: key.into(),
        }),
        ..Default::default()
    };
    let p = step(&mut b, 0, stuck("build-secret-0", ".npmrc"), 5);
    assert_eq!(p.event.as_ref().unwrap().reason, "SecretNotFound");
    let m = b.status.as_ref().unwrap().message.clone().unwrap();
    assert!(
        m.starts_with(
            "build Secret \"npm\" of spec.secrets (id npmrc) has no key \".npmrc\" in namespace ns"
        ),
        "{m}"
    );
    step(&mut b, 0, stuck("docker-config", ".dockerconfigjson"), 6);
    let m = b.status.as_ref().unwrap().message.clone().unwrap();
    assert!(
        m.starts_with("push Secret \"regcred\" has no key \".dockerconfigjson\""),
        "{m}"
    );
}

fn step_timeout(b: &mut ImageBuild, timeout: u64, obs: Observation, now: i64) -> Plan {
    let cfg = OperatorConfig::default();
    let v = ValidSpec {
        timeout: Some(Duration::from_secs(timeout)),
        retries: 0,
    };
    let p = plan(b, &v, &obs, &cfg, ts(now));
    if let Some(s) = &p.status {
        b.status = Some(s.clone());
    }
    p
}

fn has_cond(b: &ImageBuild, t: &str) -> bool {
    conditions::get(&b.status.as_ref().unwrap().conditions, t).is_some()
}

/// A Pod of the first attempt created at `created`, with `status`.
fn pod_created(created: i64, status: PodStatus) -> Pod {
    let mut p = Pod {
        status: Some(status),
        ..Default::default()
    };
    p.metadata.name = Some("app-build-1-1".into());
    p.metadata.creation_timestamp = Some(Time(ts(created)));
    p
}

fn waiting(reason: &str, message: &str) -> PodStatus {
    PodStatus {
        phase: Some("Pending".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: CONTAINER.into(),
            image: "reg.local/kiln-executor:absent".into(),
            state: Some(ContainerState {
                waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn unschedulable_status() -> PodStatus {
    PodStatus {
        phase: Some("Pending".into()),
        conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
                    .into(),
            ),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

#[test]
fn succeeded_reports_commit_cache_and_size() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    let msg = r#"{"digest":"sha256:abc","references":["reg.local/app:1@sha256:abc"],"commit":"0123456789abcdef0123456789abcdef01234567","cache":{"hits":3,"misses":1},"size":123456}"#;
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Succeeded", Some((0, msg, 10)))),
            ..Default::default()
        },
        10,
    );
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.image.as_ref().unwrap().size, Some(123456));
    assert_eq!(
        s.source.as_ref().unwrap().commit.as_deref(),
        Some("0123456789abcdef0123456789abcdef01234567")
    );
    assert_eq!(s.cache, Some(CacheStatus { hits: 3, misses: 1 }));
    // A message from an executor that reports none of them (an older one) still succeeds.
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Succeeded", Some((0, OK_MSG, 10)))),
            ..Default::default()
        },
        10,
    );
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Succeeded));
    assert_eq!((s.source.clone(), s.cache.clone()), (None, None));
}

#[test]
fn kstatus_conditions_follow_the_phase() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    assert_eq!(cond(&b, "Reconciling").status, "True");
    assert_eq!(cond(&b, "Reconciling").reason, "Building");
    assert!(!has_cond(&b, "Stalled"));
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod("Succeeded", Some((0, OK_MSG, 10)))),
            ..Default::default()
        },
        10,
    );
    assert!(!has_cond(&b, "Reconciling") && !has_cond(&b, "Stalled"));

    let mut b = build(1);
    step(&mut b, 1, Observation::default(), 0);
    // A failed attempt with a retry left is still in progress...
    step(
        &mut b,
        1,
        Observation {
            pod: Some(pod("Failed", Some((1, "boom", 5)))),
            ..Default::default()
        },
        5,
    );
    assert_eq!(cond(&b, "Reconciling").status, "True");
    assert_eq!(cond(&b, "Reconciling").reason, "BuildFailed");
    assert!(!has_cond(&b, "Stalled"));
    // ...the last one stalls it, with its reason and message, and observedGeneration.
    step(&mut b, 1, Observation::default(), 100);
    step(
        &mut b,
        1,
        Observation {
            pod: Some(pod("Failed", Some((1, "boom again", 120)))),
            ..Default::default()
        },
        120,
    );
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let stalled = cond(&b, "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "BuildFailed")
    );
    assert!(
        stalled.message.contains("boom again"),
        "{}",
        stalled.message
    );
    assert_eq!(stalled.observed_generation, Some(1));
    assert!(!has_cond(&b, "Reconciling"));
}

#[test]
fn invalid_spec_is_stalled() {
    let b = build(0);
    let p = plan_invalid(&b, &InvalidSpec::NoDestination, ts(0));
    let s = p.status.unwrap();
    let stalled = conditions::get(&s.conditions, "Stalled").unwrap();
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(conditions::get(&s.conditions, "Reconciling").is_none());
}

#[test]
fn oom_killed_names_the_limit() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    let mut p = pod("Failed", Some((137, "", 20)));
    if let Some(cs) = p
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
    {
        cs[0]
            .state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap()
            .reason = Some("OOMKilled".into());
    }
    p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        containers: vec![k8s_openapi::api::core::v1::Container {
            name: CONTAINER.into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                limits: Some(
                    [(
                        "memory".to_string(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("96Mi".into()),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let plan = step(
        &mut b,
        0,
        Observation {
            pod: Some(p),
            ..Default::default()
        },
        20,
    );
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "OOMKilled");
    assert_eq!(cond(&b, "Stalled").reason, "OOMKilled");
    assert!(s
        .message
        .as_deref()
        .unwrap()
        .contains("memory limit of 96Mi (OOMKilled)"));
    // The Pod ended by itself: nothing to delete.
    assert_eq!(plan.delete_pod, None);
}

#[test]
fn eviction_is_reported_with_the_kubelets_message() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    let status = PodStatus {
        phase: Some("Failed".into()),
        reason: Some("Evicted".into()),
        message: Some(
            "Pod ephemeral local storage usage exceeds the total limit of containers 10Mi.".into(),
        ),
        ..Default::default()
    };
    step(
        &mut b,
        0,
        Observation {
            pod: Some(pod_created(0, status)),
            ..Default::default()
        },
        30,
    );
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "Evicted");
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("exceeds the total limit of containers 10Mi"),
        "{s:?}"
    );
}

#[test]
fn an_executor_image_that_cannot_be_pulled_fails_the_attempt_and_deletes_its_pod() {
    let mut b = build(0);
    step(&mut b, 0, Observation::default(), 0);
    // The kubelet's first failed pull: still pending, saying why.
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod_created(0, waiting("ErrImagePull", "manifest unknown"))),
            ..Default::default()
        },
        3,
    );
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Pending));
    assert!(b
        .status
        .as_ref()
        .unwrap()
        .message
        .as_deref()
        .unwrap()
        .contains("ErrImagePull"));
    assert_eq!(p.delete_pod, None);
    // Backed off: the attempt fails and its Pod, which would wait forever, is deleted.
    let p = step(
        &mut b,
        0,
        Observation {
            pod: Some(pod_created(
                0,
                waiting("ImagePullBackOff", "Back-off pulling image"),
            )),
            ..Default::default()
        },
        20,
    );
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "ExecutorImagePullFailed");
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("reg.local/kiln-executor:absent"),
        "{s:?}"
    );
    assert_eq!(p.delete_pod.as_deref(), Some("app-build-1-1"));
}

#[test]
fn unschedulable_waits_then_fails_when_the_timeout_passes() {
    let mut b = build(0);
    step_timeout(&mut b, 60, Observation::default(), 0);
    let obs = || Observation {
        pod: Some(pod_created(1, unschedulable_status())),
        ..Default::default()
    };
    let p = step_timeout(&mut b, 60, obs(), 11);
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    assert_eq!(cond(&b, "Ready").reason, "Unschedulable");
    assert_eq!(cond(&b, "Reconciling").reason, "Unschedulable");
    assert!(s
        .message
        .as_deref()
        .unwrap()
        .contains("node affinity/selector"));
    // It comes back by the deadline (created at 1, limit 60: 50 s left at 11).
    assert!(p.requeue.unwrap() <= Duration::from_secs(50), "{p:?}");
    let p = step_timeout(&mut b, 60, obs(), 61);
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "Unschedulable");
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("within spec.timeout (1m): 0/1 nodes"),
        "{s:?}"
    );
    assert_eq!(p.delete_pod.as_deref(), Some("app-build-1-1"));
}

#[test]
fn the_timeout_counts_from_the_pods_creation() {
    let mut b = build(0);
    step_timeout(&mut b, 30, Observation::default(), 0);
    let running = || Observation {
        pod: Some(pod_created(
            0,
            PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let p = step_timeout(&mut b, 30, running(), 10);
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Running));
    assert_eq!(p.requeue, Some(Duration::from_secs(20)));
    let p = step_timeout(&mut b, 30, running(), 30);
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "Timeout");
    assert_eq!(p.delete_pod.as_deref(), Some("app-build-1-1"));
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("(30s, counted from the creation of executor Pod app-build-1-1)"),
        "{s:?}"
    );
}

#[test]
fn a_pod_waiting_for_its_secret_still_ends_at_the_timeout() {
    // Nothing polls a Pod that cannot mount its Secret: the requeue at spec.timeout is what ends
    // it if the Secret never comes.
    let mut b = build(0);
    step_timeout(&mut b, 30, Observation::default(), 0);
    let stuck = || Observation {
        pod: Some(pod_created(
            0,
            PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            },
        )),
        missing_secret: Some("regcred".into()),
        ..Default::default()
    };
    let p = step_timeout(&mut b, 30, stuck(), 12);
    assert_eq!(cond(&b, "Ready").reason, "SecretNotFound");
    assert_eq!(p.requeue, Some(Duration::from_secs(18)));
    step_timeout(&mut b, 30, stuck(), 30);
    assert_eq!(b.status.as_ref().unwrap().phase, Some(Phase::Failed));
    assert_eq!(cond(&b, "Ready").reason, "Timeout");
}

/// `plan`, or `plan_cancelled` when the spec says so (as the controller chooses).
fn step_any(b: &mut ImageBuild, obs: Observation, now: i64) -> Plan {
    let p = if b.spec.cancel == Some(true) {
        plan_cancelled(b, &obs, ts(now))
    } else {
        plan(b, &valid(0), &obs, &OperatorConfig::default(), ts(now))
    };
    if let Some(s) = &p.status {
        b.status = Some(s.clone());
    }
    p
}

#[test]
fn rerun_token_starts_a_run_only_when_it_changes() {
    let mut b = build(0);
    step_any(&mut b, Observation::default(), 0);
    step_any(
        &mut b,
        Observation {
            pod: Some(pod("Succeeded", Some((0, OK_MSG, 10)))),
            ..Default::default()
        },
        10,
    );
    // Re-applying the same manifest (same generation), or an operator restart (a reconcile with
    // nothing cached), starts nothing.
    for now in [20, 30] {
        let p = step_any(&mut b, Observation::default(), now);
        assert_eq!((p.create_attempt, p.status), (None, None));
    }
    // A new rerun token is a spec change: the API server bumps the generation; a new run.
    b.spec.rerun = Some("2026-12-06T10:00".into());
    b.metadata.generation = Some(2);
    let p = step_any(&mut b, Observation::default(), 40);
    assert_eq!(p.create_attempt, Some(1));
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.pod_name.as_deref(), Some("app-build-2-1"));
    // The first run is in the history.
    assert_eq!(s.history.len(), 1);
    assert_eq!(s.history[0].generation, 1);
    assert_eq!(s.history[0].result, Phase::Succeeded);
    assert_eq!(s.history[0].digest.as_deref(), Some("sha256:abc"));
}

#[test]
fn cancel_stops_the_running_build_and_records_it() {
    let mut b = build(0);
    step_any(&mut b, Observation::default(), 0);
    step_any(
        &mut b,
        Observation {
            pod: Some(pod("Running", None)),
            ..Default::default()
        },
        5,
    );
    b.spec.cancel = Some(true);
    b.metadata.generation = Some(2);
    let p = step_any(&mut b, Observation::default(), 10);
    assert!(p.supersede_old_generations, "the running Pod is deleted");
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.event.as_ref().unwrap().reason, "Cancelled");
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Cancelled));
    assert!(s.message.as_deref().unwrap().contains("app-build-1-1"));
    assert_eq!(cond(&b, "Ready").reason, "Cancelled");
    assert_eq!(cond(&b, "Stalled").reason, "Cancelled");
    assert!(!has_cond(&b, "Reconciling"));
    let h = &s.history[0];
    assert_eq!(
        (h.generation, h.result, h.reason.as_deref()),
        (1, Phase::Cancelled, Some("Cancelled"))
    );
    // Nothing happens while it stays cancelled.
    let p = step_any(&mut b, Observation::default(), 20);
    assert_eq!((p.create_attempt, p.status), (None, None));
    // Un-cancelling is a new generation: it builds again.
    b.spec.cancel = Some(false);
    b.metadata.generation = Some(3);
    let p = step_any(&mut b, Observation::default(), 30);
    assert_eq!(p.create_attempt, Some(1));
    assert_eq!(b.status.as_ref().unwrap().history.len(), 1);
}

#[test]
fn a_build_cancelled_before_it_started_creates_nothing() {
    let mut b = build(0);
    b.spec.cancel = Some(true);
    let p = step_any(&mut b, Observation::default(), 0);
    assert_eq!(p.create_attempt, None);
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Cancelled));
    assert!(s.history.is_empty());
}

#[test]
fn history_keeps_the_last_ten_runs_newest_first() {
    let mut b = build(0);
    for generation in 1..=12 {
        b.metadata.generation = Some(generation);
        let t = generation * 100;
        step_any(&mut b, Observation::default(), t);
        let mut done = pod("Succeeded", Some((0, OK_MSG, t + 10)));
        done.metadata.name = Some(format!("app-build-{generation}-1"));
        step_any(
            &mut b,
            Observation {
                pod: Some(done),
                ..Default::default()
            },
            t + 10,
        );
    }
    let h = &b.status.as_ref().unwrap().history;
    assert_eq!(h.len(), HISTORY_LIMIT);
    let gens: Vec<i64> = h.iter().map(|r| r.generation).collect();
    assert_eq!(gens, (3..=12).rev().collect::<Vec<_>>());
    assert_eq!(h[0].completion_time, Some(Time(ts(1210))));
}

#[test]
fn a_run_replaced_by_a_new_spec_is_recorded_as_superseded() {
    let mut b = build(0);
    step_any(&mut b, Observation::default(), 0);
    b.metadata.generation = Some(2);
    step_any(&mut b, Observation::default(), 5);
    let h = &b.status.as_ref().unwrap().history;
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].generation, h[0].result, h[0].reason.as_deref()),
        (1, Phase::Cancelled, Some("Superseded"))
    );
}

#[test]
fn queued_builds_wait_with_their_place_then_start() {
    let mut b = build(0);
    let p = plan_queued(&b, 3, 5, "at most 2 in the cluster", ts(0));
    assert_eq!(p.create_attempt, None);
    assert_eq!(p.event.as_ref().unwrap().reason, "Queued");
    b.status = p.status;
    let s = b.status.as_ref().unwrap();
    assert_eq!(s.phase, Some(Phase::Queued));
    assert_eq!(s.queue_position, Some(3));
    assert_eq!(s.queued_at, Some(Time(ts(0))));
    assert!(s.message.as_deref().unwrap().contains("3 of 5"));
    assert_eq!(cond(&b, "Reconciling").reason, "Queued");
    // Moving up keeps the time it started waiting, and says so once (no new Event).
    let p = plan_queued(&b, 1, 4, "at most 2 in the cluster", ts(30));
    assert_eq!(p.event, None);
    b.status = p.status;
    let s = b.status.as_ref().unwrap();
    assert_eq!(
        (s.queue_position, s.queued_at.clone()),
        (Some(1), Some(Time(ts(0))))
    );
    // Admitted: the normal plan starts attempt 1 and clears the place.
    let p = step(&mut b, 0, Observation::default(), 40);
    assert_eq!(p.create_attempt, Some(1));
    let s = b.status.as_ref().unwrap();
    assert_eq!((s.phase, s.queue_position), (Some(Phase::Pending), None));
    assert_eq!(s.queued_at, Some(Time(ts(0))));
}

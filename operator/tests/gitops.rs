//! What GitOps tools make of the status the operator writes: every phase of an ImageBuild and a
//! CacheWarm, produced by the operator's own pure reconcile decisions (`plan`), is read
//! - by the kstatus library of `sigs.k8s.io/cli-utils` (the rules Flux and `kubectl wait`-style
//!   tools use; built from the Go module proxy by `scripts/kstatus.sh`): a build in progress must
//!   be `InProgress`, a pushed one `Current`, one that failed for good `Failed`, never "in
//!   progress" forever;
//! - by the Argo CD health script the chart ships (`charts/kiln/argocd/health.lua`), run by
//!   Debian's `lua5.1` (Argo CD's interpreter is Lua 5.1) with the object as Argo CD passes it:
//!   `Progressing`, `Healthy`, `Degraded`.

use std::process::Command;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kiln_operator::config::OperatorConfig;
use kiln_operator::crd::{
    BuildSource, CacheWarm, CacheWarmSpec, GitSource, ImageBuild, ImageBuildSpec,
};
use kiln_operator::image_build::{plan, InvalidSpec, Observation, ValidSpec};
use kiln_testkit::{repo_root, run_bounded, skip_or_fail};
use serde_json::Value;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

/// `scripts/kstatus.sh`'s command, or `None` (after the skip policy) when Go or the module
/// proxy is missing here.
fn kstatus() -> Option<std::path::PathBuf> {
    let script = repo_root().join("scripts/kstatus.sh");
    let out = run_bounded(Command::new("bash").arg(&script), Duration::from_secs(1800))
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    match out.status {
        Some(0) => Some(std::path::PathBuf::from(out.stdout.trim()).join("kstatus")),
        Some(3) => {
            skip_or_fail(&format!(
                "kstatus cannot be built here: {}",
                out.stderr.trim()
            ));
            None
        }
        _ => panic!("{} failed:\n{}", script.display(), out.stderr),
    }
}

/// kstatus's (status, message) of each object.
fn compute(bin: &std::path::Path, objects: &[Value]) -> Vec<(String, String)> {
    let input: String = objects.iter().map(|o| format!("{o}\n")).collect();
    let out = kiln_testkit::run_bounded_with_input(
        &mut Command::new(bin),
        Some(input.into_bytes()),
        Duration::from_secs(60),
    )
    .expect("run kstatus");
    assert!(out.success(), "kstatus failed: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("kstatus prints JSON lines");
            (
                v["status"].as_str().unwrap_or_default().to_string(),
                v["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `value` as a Lua table constructor (JSON null fields left out, as Argo CD's conversion does).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(text) => {
            let mut out = String::from("\"");
            for b in text.bytes() {
                match b {
                    b'"' | b'\\' => {
                        out.push('\\');
                        out.push(b as char);
                    }
                    0x20..=0x7e => out.push(b as char),
                    _ => out.push_str(&format!("\\{b:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Argo CD's (status, message) of `object` by the chart's health script, or `None` (after the
/// skip policy) without `lua5.1`.
fn argo_health(object: &Value) -> Option<(String, String)> {
    let lua_bin = kiln_testkit::require_tool("lua5.1")?;
    let script = repo_root().join("charts/kiln/argocd/health.lua");
    let program = format!(
        "obj = {}\nlocal hs = assert(loadfile({}))()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(object),
        lua(&Value::String(script.display().to_string()))
    );
    let out = run_bounded(
        Command::new(lua_bin).args(["-e", &program]),
        Duration::from_secs(30),
    )
    .expect("run lua5.1");
    assert!(out.success(), "the health script failed: {}", out.stderr);
    let (status, message) = out.stdout.split_once('\n').unwrap_or((&out.stdout, ""));
    Some((status.to_string(), message.to_string()))
}

/// One sample: the object, what kstatus and Argo CD must say.
struct Case {
    name: &'static str,
    object: Value,
    kstatus: &'static str,
    argo: &'static str,
}

fn case<T: serde::Serialize>(
    name: &'static str,
    kind: &str,
    o: &T,
    kstatus: &'static str,
    argo: &'static str,
) -> Case {
    let mut object = serde_json::to_value(o).unwrap();
    object["apiVersion"] = "kiln.dev/v1alpha1".into();
    object["kind"] = kind.into();
    Case {
        name,
        object,
        kstatus,
        argo,
    }
}

/// Checks every case with both tools; all mismatches in one failure.
fn check(cases: &[Case]) {
    let mut wrong = Vec::new();
    if let Some(bin) = kstatus() {
        let objects: Vec<Value> = cases.iter().map(|c| c.object.clone()).collect();
        let got = compute(&bin, &objects);
        assert_eq!(got.len(), cases.len());
        for (c, (status, message)) in cases.iter().zip(&got) {
            if status != c.kstatus {
                wrong.push(format!(
                    "{}: kstatus says {status} ({message}), not {}; status: {}",
                    c.name, c.kstatus, c.object["status"]
                ));
            }
        }
    }
    for c in cases {
        let Some((status, message)) = argo_health(&c.object) else {
            break;
        };
        if status != c.argo {
            wrong.push(format!(
                "{}: Argo CD's health script says {status} ({message}), not {}; status: {}",
                c.name, c.argo, c.object["status"]
            ));
        }
        if status != "Healthy" && message.is_empty() {
            wrong.push(format!(
                "{}: Argo CD's health script gives no message",
                c.name
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn build() -> ImageBuild {
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
            ..Default::default()
        },
    );
    b.metadata.namespace = Some("ns".into());
    b.metadata.generation = Some(1);
    b
}

fn executor_pod(status: PodStatus) -> Pod {
    let mut p = Pod {
        status: Some(status),
        ..Default::default()
    };
    p.metadata.creation_timestamp = Some(Time(ts(0)));
    p
}

fn terminated(phase: &str, code: i32, reason: Option<&str>, message: &str) -> PodStatus {
    PodStatus {
        phase: Some(phase.into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "executor".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: reason.map(str::to_string),
                    message: Some(message.into()),
                    finished_at: Some(Time(ts(20))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The build after the operator's reconciles over `pods` (one observation each, 10 s apart).
fn after(retries: i32, pods: Vec<Option<PodStatus>>) -> ImageBuild {
    let mut b = build();
    let cfg = OperatorConfig {
        retry_backoff: Duration::from_secs(1),
        ..Default::default()
    };
    let valid = ValidSpec {
        timeout: None,
        retries,
    };
    let mut now = 0;
    for pod in std::iter::once(None).chain(pods) {
        let obs = Observation {
            pod: pod.map(executor_pod),
            ..Default::default()
        };
        if let Some(s) = plan(&b, &valid, &obs, &cfg, ts(now)).status {
            b.status = Some(s);
        }
        now += 10;
    }
    b
}

const PUSHED: &str = r#"{"digest":"sha256:abc","references":["reg.local/app:1@sha256:abc"]}"#;

#[test]
fn image_builds_read_as_gitops_tools_expect() {
    let running = || PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    };
    let pull_backoff = PodStatus {
        phase: Some("Pending".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "executor".into(),
            image: "reg.local/absent:1".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some("Back-off pulling image".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut new_generation = after(0, vec![Some(terminated("Succeeded", 0, None, PUSHED))]);
    new_generation.metadata.generation = Some(2);
    let queued = {
        let mut b = build();
        b.status = kiln_operator::image_build::status::plan_queued(
            &b,
            2,
            5,
            "at most 4 in the cluster",
            ts(0),
        )
        .status;
        b
    };
    let cancelled = {
        let mut b = after(0, vec![Some(running())]);
        b.spec.cancel = Some(true);
        b.metadata.generation = Some(2);
        b.status =
            kiln_operator::image_build::plan_cancelled(&b, &Observation::default(), ts(100)).status;
        b
    };
    let invalid = {
        let mut b = build();
        b.status = kiln_operator::image_build::status::plan_invalid(
            &b,
            &InvalidSpec::NoDestination,
            ts(0),
        )
        .status;
        b
    };
    let ib = |name, b: &ImageBuild, kstatus, argo| case(name, "ImageBuild", b, kstatus, argo);
    check(&[
        // kstatus's rule for an object without status.observedGeneration: the operator writes
        // its first status within one reconcile of the object's creation.
        ib("created, no status yet", &build(), "Current", "Progressing"),
        ib(
            "Pod created",
            &after(0, vec![]),
            "InProgress",
            "Progressing",
        ),
        ib(
            "running",
            &after(0, vec![Some(running())]),
            "InProgress",
            "Progressing",
        ),
        ib(
            "pushed",
            &after(0, vec![Some(terminated("Succeeded", 0, None, PUSHED))]),
            "Current",
            "Healthy",
        ),
        ib(
            "an attempt failed, a retry is due",
            &after(1, vec![Some(terminated("Failed", 1, None, "boom"))]),
            "InProgress",
            "Progressing",
        ),
        ib(
            "failed for good",
            &after(0, vec![Some(terminated("Failed", 1, None, "boom"))]),
            "Failed",
            "Degraded",
        ),
        ib(
            "OOM-killed",
            &after(
                0,
                vec![Some(terminated("Failed", 137, Some("OOMKilled"), ""))],
            ),
            "Failed",
            "Degraded",
        ),
        ib(
            "executor image cannot be pulled",
            &after(0, vec![Some(pull_backoff)]),
            "Failed",
            "Degraded",
        ),
        ib("invalid spec", &invalid, "Failed", "Degraded"),
        ib("cancelled", &cancelled, "Failed", "Suspended"),
        ib("queued", &queued, "InProgress", "Progressing"),
        ib(
            "a new generation not yet observed",
            &new_generation,
            "InProgress",
            "Progressing",
        ),
    ]);
}

#[test]
fn cache_warms_read_as_gitops_tools_expect() {
    use kiln_operator::cache_warm::status::{plan, Observation};
    let warmer = |phase: &str, message: &str| {
        let mut p = Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "warmer".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: i32::from(phase != "Succeeded"),
                            message: Some(message.into()),
                            finished_at: Some(Time(ts(20))),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        p.metadata.name = Some("base-warm-1-1".into());
        p
    };
    let after = |pods: Vec<Pod>, until: i64| {
        let mut c = CacheWarm::new(
            "base",
            CacheWarmSpec {
                images: vec!["reg.local/debian:12".into()],
                claim: "warm".into(),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.generation = Some(1);
        let cfg = OperatorConfig::default();
        let mut steps: Vec<(Option<Pod>, i64)> = vec![(None, 0)];
        // Observed just after the Pod finished (at 20), before a failed warm's retry is due.
        steps.extend(pods.into_iter().map(|p| (Some(p), 21)));
        if until > 21 {
            steps.push((None, until));
        }
        for (pod, now) in steps {
            let obs = Observation {
                pod,
                missing_secret: None,
                foreign_pod: None,
            };
            if let Some(s) = plan(&c, Duration::from_secs(3600), &obs, &cfg, ts(now)).status {
                c.status = Some(s);
            }
        }
        c
    };
    let warmed = r#"{"images":[{"reference":"reg.local/debian:12","digest":"sha256:d"}]}"#;
    let cwc = |name, c: &CacheWarm, kstatus, argo| case(name, "CacheWarm", c, kstatus, argo);
    check(&[
        cwc(
            "first warm running",
            &after(vec![], 0),
            "InProgress",
            "Progressing",
        ),
        cwc(
            "warmed",
            &after(vec![warmer("Succeeded", warmed)], 21),
            "Current",
            "Healthy",
        ),
        cwc(
            "warmed, a refresh running",
            &after(vec![warmer("Succeeded", warmed)], 3700),
            "Current",
            "Healthy",
        ),
        cwc(
            "the warm failed",
            &after(vec![warmer("Failed", "pull failed")], 21),
            "Failed",
            "Degraded",
        ),
    ]);
}

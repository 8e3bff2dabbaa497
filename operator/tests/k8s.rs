//! Integration tests against a real kube-apiserver + etcd (scripts/k8s/apiserver.sh). The
//! operator runs in-process as the RBAC-limited user of operator/rbac.yaml; the test plays the
//! node by patching Pod status. Each test has its own namespace and operator instance.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kiln_operator::crd::{
    BuildSource, CacheSpec, CacheWarm, CacheWarmSpec, ConfigMapSource, GitSource, ImageBuild,
    ImageBuildSpec, Phase,
};
use kiln_operator::leader::{Clock, LeaseConfig, LeaseLock};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, ResourceExt};
use serde_json::json;

fn git_build(name: &str) -> ImageBuild {
    ImageBuild::new(
        name,
        ImageBuildSpec {
            source: BuildSource {
                git: Some(GitSource {
                    url: "https://git.local/app.git".into(),
                    revision: Some("main".into()),
                    sub_path: None,
                }),
                ..Default::default()
            },
            destinations: vec!["reg.local/app:1".into()],
            ..Default::default()
        },
    )
}

async fn create_build(env: &Env, b: &ImageBuild) -> ImageBuild {
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.create(&PostParams::default(), b)
        .await
        .unwrap_or_else(|e| panic!("creating ImageBuild {}: {e}", b.name_any()))
}

async fn get_build(env: &Env, name: &str) -> ImageBuild {
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.get(name).await.expect("get ImageBuild")
}

/// Waits until the build's status satisfies `pred`, then returns the build.
async fn wait_build(
    env: &Env,
    name: &str,
    what: &str,
    pred: impl Fn(&ImageBuild) -> bool,
) -> ImageBuild {
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    eventually(60, what, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let b = api.get_opt(name).await.ok().flatten()?;
            pred(&b).then_some(b)
        }
    })
    .await
}

async fn wait_pod(env: &Env, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    eventually(60, &format!("Pod {name}"), || {
        let pods = pods.clone();
        async move { pods.get_opt(name).await.ok().flatten() }
    })
    .await
}

async fn pod_names(env: &Env) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    let mut names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

fn phase(b: &ImageBuild) -> Option<Phase> {
    b.status.as_ref().and_then(|s| s.phase)
}

fn ready_reason(b: &ImageBuild) -> Option<String> {
    let s = b.status.as_ref()?;
    kiln_operator::conditions::get(&s.conditions, "Ready").map(|c| c.reason.clone())
}

const OK_MSG: &str = r#"{"digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","references":["reg.local/app:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]}"#;

/// Runs the real `kubectl` against the test API server in the test's namespace.
fn kubectl(env: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .args(["--namespace", &env.ns])
        .args(args)
        .output()
        .expect("kubectl is installed (it is part of the test tools)");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn create_push_secret(env: &Env, name: &str) {
    let api: Api<Secret> = Api::namespaced(env.admin.clone(), &env.ns);
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(br#"{"auths":{"reg.local":{"auth":"dTpw"}}}"#.to_vec()),
        )])),
        ..Default::default()
    };
    api.create(&PostParams::default(), &s)
        .await
        .expect("create Secret");
}

#[tokio::test]
async fn build_waits_for_secret_then_succeeds_with_digest() {
    let Some(env) = env("ib-success").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut b = git_build("web");
    b.spec.push_secret = Some("regcred".into());
    b.spec.timeout = Some("10m".into());
    create_build(&env, &b).await;

    let b = wait_build(&env, "web", "SecretNotFound", |b| {
        ready_reason(b).as_deref() == Some("SecretNotFound")
    })
    .await;
    assert!(b.status.unwrap().message.unwrap().contains("\"regcred\""));
    assert!(
        pod_names(&env).await.is_empty(),
        "no Pod without the Secret"
    );

    create_push_secret(&env, "regcred").await;
    // The operator rechecks the Secret periodically (30s); an edit of the build triggers it now.
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
    )
    .await
    .unwrap();
    let pod = wait_pod(&env, "web-build-1-1").await;
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(600));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("reg.local/kiln-executor:test"));
    assert!(c
        .args
        .as_ref()
        .unwrap()
        .contains(&"--context=git://git.local/app.git#main".to_string()));
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ImageBuild", Some(true))
    );
    assert_eq!(owner.uid, get_build(&env, "web").await.uid().unwrap());

    pod_running(&env.admin, &env.ns, "web-build-1-1", "executor").await;
    wait_build(&env, "web", "phase Running", |b| {
        phase(b) == Some(Phase::Running)
    })
    .await;
    pod_terminated(&env.admin, &env.ns, "web-build-1-1", "executor", 0, OK_MSG).await;
    let b = wait_build(&env, "web", "phase Succeeded", |b| {
        phase(b) == Some(Phase::Succeeded)
    })
    .await;
    let s = b.status.unwrap();
    let img = s.image.unwrap();
    assert!(img.digest.starts_with("sha256:0123"));
    assert_eq!(img.references.len(), 1);
    assert_eq!(s.observed_generation, b.metadata.generation);
    assert!(s.completion_time.is_some() && s.start_time.is_some());
    let ready = kiln_operator::conditions::get(&s.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Pushed")
    );

    let reasons = eventually(60, "events", || async {
        let r = event_reasons(&env.admin, &env.ns, "web").await;
        r.contains(&"Succeeded".to_string()).then_some(r)
    })
    .await;
    for want in ["SecretNotFound", "Started", "Succeeded"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "event {want} missing: {reasons:?}"
        );
    }
    // The status is written by one field manager with server-side apply.
    let managers: Vec<String> = b
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["kiln-operator".to_string()]);
    let metrics = op.metrics.render();
    assert!(
        metrics.contains("kiln_builds_succeeded_total 1"),
        "{metrics}"
    );
    op.stop().await;
}

#[tokio::test]
async fn failed_attempt_is_retried_then_build_fails_with_output() {
    let Some(env) = env("ib-retry").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut b = git_build("api");
    b.spec.retries = Some(1);
    create_build(&env, &b).await;
    wait_pod(&env, "api-build-1-1").await;
    pod_running(&env.admin, &env.ns, "api-build-1-1", "executor").await;
    pod_terminated(
        &env.admin,
        &env.ns,
        "api-build-1-1",
        "executor",
        1,
        "step 1\nerror: first failure",
    )
    .await;
    // Backoff is 1s in tests; then attempt 2.
    wait_pod(&env, "api-build-1-2").await;
    let b = wait_build(&env, "api", "attempt 2", |b| {
        b.status.as_ref().and_then(|s| s.attempts) == Some(2)
    })
    .await;
    assert_eq!(b.status.unwrap().pod_name.as_deref(), Some("api-build-1-2"));
    let out: String = (1..=40).map(|i| format!("output line {i}\n")).collect();
    pod_terminated(&env.admin, &env.ns, "api-build-1-2", "executor", 2, &out).await;
    let b = wait_build(&env, "api", "phase Failed", |b| {
        phase(b) == Some(Phase::Failed)
    })
    .await;
    let s = b.status.unwrap();
    let m = s.message.unwrap();
    assert!(
        m.contains("exit code 2") && m.contains("output line 40"),
        "{m}"
    );
    assert!(
        !m.contains("output line 20\n"),
        "only the last lines are kept: {m}"
    );
    assert_eq!(
        ready_reason(&get_build(&env, "api").await).as_deref(),
        Some("BuildFailed")
    );
    let succeeded = kiln_operator::conditions::get(&s.conditions, "Succeeded").unwrap();
    assert_eq!(succeeded.status, "False");
    let reasons = eventually(60, "Failed event", || async {
        let r = event_reasons(&env.admin, &env.ns, "api").await;
        r.contains(&"Failed".to_string()).then_some(r)
    })
    .await;
    assert!(reasons.contains(&"Retrying".to_string()), "{reasons:?}");
    assert_eq!(
        pod_names(&env).await,
        vec!["api-build-1-1", "api-build-1-2"]
    );
    op.stop().await;
}

#[tokio::test]
async fn deadline_exceeded_is_reported_as_timeout() {
    let Some(env) = env("ib-timeout").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut b = git_build("slow");
    b.spec.timeout = Some("2s".into());
    create_build(&env, &b).await;
    let pod = wait_pod(&env, "slow-build-1-1").await;
    assert_eq!(pod.spec.unwrap().active_deadline_seconds, Some(2));
    pod_running(&env.admin, &env.ns, "slow-build-1-1", "executor").await;
    pod_deadline_exceeded(&env.admin, &env.ns, "slow-build-1-1").await;
    let b = wait_build(&env, "slow", "phase Failed", |b| {
        phase(b) == Some(Phase::Failed)
    })
    .await;
    assert_eq!(ready_reason(&b).as_deref(), Some("Timeout"));
    op.stop().await;
}

#[tokio::test]
async fn operator_restart_mid_build_neither_duplicates_nor_reruns() {
    let Some(env) = env("ib-restart").await else {
        return;
    };
    let op = Operator::start(&env);
    create_build(&env, &git_build("lib")).await;
    wait_pod(&env, "lib-build-1-1").await;
    pod_running(&env.admin, &env.ns, "lib-build-1-1", "executor").await;
    wait_build(&env, "lib", "phase Running", |b| {
        phase(b) == Some(Phase::Running)
    })
    .await;
    op.stop().await;

    // The build finishes while no operator runs.
    pod_terminated(&env.admin, &env.ns, "lib-build-1-1", "executor", 0, OK_MSG).await;
    let op = Operator::start(&env);
    wait_build(&env, "lib", "phase Succeeded", |b| {
        phase(b) == Some(Phase::Succeeded)
    })
    .await;
    assert_eq!(pod_names(&env).await, vec!["lib-build-1-1"]);
    op.stop().await;

    // Delete the finished Pod and restart again: a finished build is not rerun.
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    pods.delete("lib-build-1-1", &DeleteParams::default())
        .await
        .unwrap();
    let op = Operator::start(&env);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(pod_names(&env).await.is_empty());
    let b = get_build(&env, "lib").await;
    assert_eq!(phase(&b), Some(Phase::Succeeded));
    let started = event_reasons(&env.admin, &env.ns, "lib")
        .await
        .iter()
        .filter(|r| *r == "Started")
        .count();
    assert_eq!(started, 1);
    op.stop().await;
}

#[tokio::test]
async fn new_generation_starts_a_new_build_and_stops_the_old_one() {
    let Some(env) = env("ib-generation").await else {
        return;
    };
    let op = Operator::start(&env);
    create_build(&env, &git_build("gen")).await;
    wait_pod(&env, "gen-build-1-1").await;
    pod_running(&env.admin, &env.ns, "gen-build-1-1", "executor").await;
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.patch(
        "gen",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"destinations": ["reg.local/app:2"]}})),
    )
    .await
    .unwrap();
    let pod = wait_pod(&env, "gen-build-2-1").await;
    assert!(pod.spec.unwrap().containers[0]
        .args
        .as_ref()
        .unwrap()
        .contains(&"--destination=reg.local/app:2".to_string()));
    let b = wait_build(&env, "gen", "generation 2 observed", |b| {
        b.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    assert_eq!(b.status.unwrap().pod_name.as_deref(), Some("gen-build-2-1"));
    // The superseded running Pod is deleted.
    eventually(60, "gen-1-1 deleted", || async {
        (!pod_names(&env).await.contains(&"gen-build-1-1".to_string())).then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn deleted_pod_and_deleted_build() {
    let Some(env) = env("ib-delete").await else {
        return;
    };
    let op = Operator::start(&env);
    create_build(&env, &git_build("gone")).await;
    wait_pod(&env, "gone-build-1-1").await;
    pod_running(&env.admin, &env.ns, "gone-build-1-1", "executor").await;
    wait_build(&env, "gone", "phase Running", |b| {
        phase(b) == Some(Phase::Running)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    pods.delete("gone-build-1-1", &DeleteParams::default())
        .await
        .unwrap();
    let b = wait_build(&env, "gone", "PodDeleted", |b| {
        ready_reason(b).as_deref() == Some("PodDeleted")
    })
    .await;
    assert_eq!(phase(&b), Some(Phase::Failed));

    // Deleting a build deletes its Pods (the operator does it; no garbage collector runs here).
    let mut b2 = git_build("bye");
    b2.spec.source = BuildSource {
        config_map: Some(ConfigMapSource { name: "ctx".into() }),
        ..Default::default()
    };
    create_build(&env, &b2).await;
    wait_pod(&env, "bye-build-1-1").await;
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.delete("bye", &DeleteParams::default()).await.unwrap();
    eventually(60, "ImageBuild bye and its Pod gone", || async {
        let gone = api.get_opt("bye").await.unwrap().is_none();
        (gone && !pod_names(&env).await.contains(&"bye-build-1-1".to_string())).then_some(())
    })
    .await;
    op.stop().await;
}

async fn expect_rejected(api: &Api<ImageBuild>, body: serde_json::Value, want: &str) {
    let obj: ImageBuild = match serde_json::from_value(body.clone()) {
        Ok(o) => o,
        Err(e) => panic!("test object does not deserialize: {e}"),
    };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => panic!("the API server accepted an invalid ImageBuild: {body}"),
        Err(kube::Error::Api(ae)) => {
            assert_eq!(ae.code, 422, "{ae:?}");
            assert!(
                ae.message.contains(want),
                "rejection of {body} should mention {want:?}: {}",
                ae.message
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn admission_rejects_invalid_image_builds() {
    let Some(env) = env("ib-admission").await else {
        return;
    };
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    let base = |name: &str, spec: serde_json::Value| json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name}, "spec": spec});
    let git = json!({"git": {"url": "https://git.local/a.git"}});
    expect_rejected(
        &api,
        base("two-sources", json!({"source": {"git": {"url": "x"}, "url": "https://h/c.tgz"}, "destinations": ["r/a:1"]})),
        "exactly one of git, configMap, persistentVolumeClaim, url",
    )
    .await;
    expect_rejected(
        &api,
        base(
            "no-source",
            json!({"source": {}, "destinations": ["r/a:1"]}),
        ),
        "exactly one of",
    )
    .await;
    expect_rejected(
        &api,
        base("no-dest", json!({"source": git, "destinations": []})),
        "spec.destinations",
    )
    .await;
    expect_rejected(
        &api,
        base(
            "dup-dest",
            json!({"source": git, "destinations": ["r/a:1", "r/a:1"]}),
        ),
        "Duplicate value",
    )
    .await;
    expect_rejected(
        &api,
        base(
            "bad-timeout",
            json!({"source": git, "destinations": ["r/a:1"], "timeout": "ten minutes"}),
        ),
        "spec.timeout",
    )
    .await;
    expect_rejected(
        &api,
        base(
            "bad-retries",
            json!({"source": git, "destinations": ["r/a:1"], "retries": 50}),
        ),
        "spec.retries",
    )
    .await;
    expect_rejected(
        &api,
        base(
            "cache-off",
            json!({"source": git, "destinations": ["r/a:1"], "cache": {"repository": "r/cache"}}),
        ),
        "spec.cache.enabled is not true",
    )
    .await;
    // A valid one with every field is accepted.
    let mut ok = git_build("full");
    ok.spec.cache = Some(CacheSpec {
        enabled: Some(true),
        repository: Some("reg.local/cache".into()),
        ttl: Some("168h".into()),
        warm_claim: Some("warm".into()),
    });
    ok.spec.timeout = Some("1h30m".into());
    ok.spec.retries = Some(2);
    ok.spec.build_args.insert("A".into(), "1".into());
    ok.spec.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into()),
        )])),
        ..Default::default()
    });
    api.create(&PostParams::default(), &ok)
        .await
        .expect("valid ImageBuild accepted");
}

#[tokio::test]
async fn cache_warm_runs_and_refreshes() {
    let Some(env) = env("cw-refresh").await else {
        return;
    };
    let op = Operator::start(&env);
    let api: Api<CacheWarm> = Api::namespaced(env.admin.clone(), &env.ns);
    let cw = CacheWarm::new(
        "base",
        CacheWarmSpec {
            images: vec!["reg.local/debian:12".into()],
            claim: "warm".into(),
            refresh_interval: Some("3s".into()),
            ..Default::default()
        },
    );
    let created = api.create(&PostParams::default(), &cw).await.unwrap();
    // Succeeded lasts only until the 3 s refresh starts the next run: watched, not polled, so
    // it is seen however short it is on a loaded machine.
    let wp = WatchParams::default().fields("metadata.name=base");
    let mut changes = api
        .watch(&wp, &created.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    let pod = wait_pod(&env, "base-warm-1-1").await;
    let c = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("reg.local/kiln-warmer:test"));
    assert!(c
        .args
        .as_ref()
        .unwrap()
        .contains(&"--cache-dir=/cache".to_string()));
    pod_running(&env.admin, &env.ns, "base-warm-1-1", "warmer").await;
    let msg = r#"{"images":[{"reference":"reg.local/debian:12","digest":"sha256:d1"}]}"#;
    pod_terminated(&env.admin, &env.ns, "base-warm-1-1", "warmer", 0, msg).await;
    let warmed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(change) = changes.try_next().await.unwrap() {
            if let WatchEvent::Modified(c) = change {
                if let Some(s) = c.status.filter(|s| s.phase == Some(Phase::Succeeded)) {
                    return s;
                }
            }
        }
        panic!("the CacheWarm watch ended before the CacheWarm Succeeded")
    })
    .await
    .expect("CacheWarm Succeeded within 60s");
    assert_eq!(warmed.images[0].digest, "sha256:d1");
    assert_eq!(warmed.image_count, Some(1));
    assert!(warmed.last_warm_time.is_some());
    // After refreshInterval the next run starts and the previous Pod is removed.
    let refreshing = wait_pod(&env, "base-warm-1-2").await;
    eventually(60, "base-1-1 removed", || async {
        (!pod_names(&env).await.contains(&"base-warm-1-1".to_string())).then_some(())
    })
    .await;
    // The printer columns, read while the refresh runs: a state that holds until the test ends
    // it (nothing finishes run 2), and the cache still counts the last warm's image.
    eventually(60, "CacheWarm Running run 2", || async {
        let s = api.get("base").await.ok()?.status?;
        (s.phase == Some(Phase::Running) && s.pod_name == refreshing.metadata.name).then_some(())
    })
    .await;
    let table = kubectl(&env, &["get", "cw"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "IMAGES", "LAST", "WARM", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["base", "Running", "1"], "{table}");
    // Deleting the CacheWarm removes its warmer Pods.
    api.delete("base", &DeleteParams::default()).await.unwrap();
    eventually(60, "CacheWarm and its Pods gone", || async {
        let gone = api.get_opt("base").await.unwrap().is_none();
        (gone && pod_names(&env).await.is_empty()).then_some(())
    })
    .await;
    op.stop().await;
}

/// A clock running `ahead` of the system's: a candidate reading it sees a Lease expire without
/// the test sleeping through the Lease's duration.
struct Ahead(jiff::SignedDuration);

impl Clock for Ahead {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now() + self.0
    }
}

#[tokio::test]
async fn leader_election_has_one_holder_at_a_time() {
    let Some(env) = env("leader").await else {
        return;
    };
    // A Lease far longer than any stall of a loaded machine: nothing here may depend on a
    // renewal landing in time. Expiry is shown with a clock that runs ahead instead.
    let lease_duration = Duration::from_secs(60);
    let cfg = |id: &str| LeaseConfig {
        namespace: "kiln-system".into(),
        name: format!("lease-{}", env.ns),
        identity: id.into(),
        lease_duration,
        retry_period: Duration::from_millis(200),
    };
    // As the operator's user: operator/rbac.yaml must allow the Lease calls.
    let a = LeaseLock::new(env.operator.clone(), cfg("a"));
    let b = LeaseLock::new(env.operator.clone(), cfg("b"));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    // Both race for an expired Lease: exactly one wins. For candidates whose clock is past
    // a's renewal plus the Lease duration, a's Lease has expired.
    let later: Arc<dyn Clock> = Arc::new(Ahead(jiff::SignedDuration::from_secs(
        lease_duration.as_secs() as i64 + 1,
    )));
    let b = LeaseLock::with_clock(env.operator.clone(), cfg("b"), later.clone());
    let c = LeaseLock::with_clock(env.operator.clone(), cfg("c"), later);
    let (rb, rc) = tokio::join!(b.try_acquire_or_renew(), c.try_acquire_or_renew());
    assert!(
        rb.unwrap() ^ rc.unwrap(),
        "exactly one candidate takes an expired Lease"
    );
    // Release hands over at once: a, on the real clock, takes the Lease although its holder
    // renewed it (by its clock) a Lease duration into the future.
    let holder = if b.try_acquire_or_renew().await.unwrap() {
        &b
    } else {
        &c
    };
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "held, not expired"
    );
    holder.release().await.unwrap();
    assert!(a.try_acquire_or_renew().await.unwrap());
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "kiln-system");
    let l = leases.get(&format!("lease-{}", env.ns)).await.unwrap();
    assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("a"));
    // run(): work runs only while leading and stops on shutdown.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ran2 = ran.clone();
    let d = LeaseLock::new(env.operator.clone(), cfg("d"));
    let task = tokio::spawn(async move {
        d.run(
            async {
                let _ = rx.await;
            },
            move |mut stop| async move {
                ran2.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = stop.wait_for(|v| *v).await;
            },
        )
        .await
    });
    // "a" holds the Lease and renews it while "d" retries every 200 ms: d must not run. How
    // long this takes does not matter; the Lease outlives any delay.
    for _ in 0..6 {
        assert!(a.try_acquire_or_renew().await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "work ran without the Lease"
    );
    a.release().await.unwrap();
    // Only the release can hand over within the wait: the Lease would expire after 60 s.
    eventually(
        50,
        "d becomes leader after a released the Lease",
        || async { ran.load(std::sync::atomic::Ordering::SeqCst).then_some(()) },
    )
    .await;
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("d stops within 60s of shutdown")
        .unwrap()
        .unwrap();
    let l = leases.get(&format!("lease-{}", env.ns)).await.unwrap();
    assert_eq!(
        l.spec.unwrap().holder_identity,
        None,
        "released on shutdown"
    );
}

struct Replica {
    child: std::process::Child,
    port: u16,
}

impl Replica {
    fn start(env: &Env, lease: &str, log_file: &std::path::Path) -> Replica {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = std::fs::File::create(log_file).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-operator"))
            .args([
                "--watch-namespace",
                &env.ns,
                "--leader-namespace",
                "kiln-system",
                "--leader-lease",
                lease,
                // Long enough that no stall of a loaded machine loses the Lease; the handover
                // test waits on the Lease's changes, not on its timing.
                "--lease-duration-seconds",
                "15",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
                "--executor-image",
                "reg.local/kiln-executor:bin",
            ])
            .env("KUBECONFIG", &env.operator_kubeconfig)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start kiln-operator");
        Replica { child, port }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, out))
    }

    /// `kiln_operator_leader` from /metrics.
    async fn is_leader(&self) -> Option<bool> {
        let (code, body) = self.get("/metrics").await?;
        if code != 200 {
            return None;
        }
        let line = body
            .lines()
            .find(|l| l.starts_with("kiln_operator_leader "))?;
        Some(line.trim_end().ends_with(" 1"))
    }

    fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_operator_replicas_one_leader_graceful_handover() {
    let Some(env) = env("replicas").await else {
        return;
    };
    let lease = format!("replicas-{}", env.ns);
    let dir = tempfile::tempdir().unwrap();
    let replicas = [
        Replica::start(&env, &lease, &dir.path().join("r0.log")),
        Replica::start(&env, &lease, &dir.path().join("r1.log")),
    ];
    // Both are healthy and ready (a standby waiting for the Lease is ready); exactly one is the
    // leader, which the kiln_operator_leader metric tells.
    for r in &replicas {
        let (code, _) = eventually(60, "healthz", || r.get("/healthz")).await;
        assert_eq!(code, 200);
        eventually(60, "readyz", || async {
            (r.get("/readyz").await?.0 == 200).then_some(())
        })
        .await;
    }
    let li = eventually(60, "exactly one leader", || async {
        let a = replicas[0].is_leader().await?;
        let b = replicas[1].is_leader().await?;
        match (a, b) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await;
    let mut replicas = replicas;
    create_build(&env, &git_build("bin")).await;
    let pod = wait_pod(&env, "bin-build-1-1").await;
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("reg.local/kiln-executor:bin")
    );
    pod_running(&env.admin, &env.ns, "bin-build-1-1", "executor").await;
    pod_terminated(&env.admin, &env.ns, "bin-build-1-1", "executor", 0, OK_MSG).await;
    wait_build(&env, "bin", "Succeeded", |b| {
        phase(b) == Some(Phase::Succeeded)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            replicas[1 - li].is_leader().await,
            Some(false),
            "the follower must not act"
        );
        assert_eq!(replicas[1 - li].get("/readyz").await.unwrap().0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, metrics) = replicas[li].get("/metrics").await.unwrap();
    assert!(
        metrics.contains("kiln_builds_succeeded_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_builds_started_total 1"), "{metrics}");

    // Every change of the Lease from here on is watched, so the handover is seen as it
    // happens rather than inferred from how long it took.
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "kiln-system");
    let held = leases.get(&lease).await.unwrap();
    let old_holder = held
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .expect("the leader holds the Lease");
    let wp = WatchParams::default().fields(&format!("metadata.name={lease}"));
    let mut changes = leases
        .watch(&wp, &held.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();

    // SIGTERM: the leader stops, releases the Lease, and the follower takes it.
    replicas[li].sigterm();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = replicas[li].child.try_wait().unwrap() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader did not exit within 60s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "graceful shutdown exits 0: {status}");
    let holders = tokio::time::timeout(Duration::from_secs(60), async {
        let mut holders = Vec::new();
        while let Some(change) = changes.try_next().await.unwrap() {
            let lease = match change {
                WatchEvent::Added(l) | WatchEvent::Modified(l) => l,
                WatchEvent::Bookmark(_) => continue,
                other => panic!("unexpected change of the Lease: {other:?}"),
            };
            let holder = lease.spec.and_then(|s| s.holder_identity);
            let taken = holder.as_ref().is_some_and(|h| *h != old_holder);
            holders.push(holder);
            if taken {
                return holders;
            }
        }
        panic!("the Lease watch ended before another replica took the Lease: {holders:?}")
    })
    .await
    .unwrap_or_else(|_| panic!("no other replica took the Lease within 60s of the leader's exit"));
    // The old leader gave the Lease up (no holder) before the follower took it: a handover by
    // release, not by waiting for the Lease to expire (a 15 s Lease held until the end would
    // have gone from the old holder straight to the new one).
    let (new_holder, before) = holders.split_last().unwrap();
    assert_eq!(
        before.last(),
        Some(&None),
        "the Lease was not released before {new_holder:?} took it: {holders:?}"
    );
    assert!(
        before.iter().flatten().all(|h| *h == old_holder),
        "{holders:?}"
    );
    eventually(60, "the follower reports itself leader", || async {
        replicas[1 - li].is_leader().await?.then_some(())
    })
    .await;
    // JSON logs: every line of the old leader's log is a JSON object.
    let log = std::fs::read_to_string(dir.path().join(format!("r{li}.log"))).unwrap();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(log.contains("became leader"), "{log}");
    assert!(log.contains("shutdown signal received"), "{log}");
}

#[tokio::test]
async fn executor_pods_of_every_source_kind_pass_api_validation() {
    let Some(env) = env("ib-sources").await else {
        return;
    };
    create_push_secret(&env, "regcred").await;
    let op = Operator::start(&env);
    let sources = [
        (
            "from-git",
            BuildSource {
                git: Some(GitSource {
                    url: "git://git.local/app.git".into(),
                    revision: Some("v1.2.3".into()),
                    sub_path: Some("services/api".into()),
                }),
                ..Default::default()
            },
        ),
        (
            "from-cm",
            BuildSource {
                config_map: Some(ConfigMapSource { name: "ctx".into() }),
                ..Default::default()
            },
        ),
        (
            "from-pvc",
            BuildSource {
                persistent_volume_claim: Some(kiln_operator::crd::PvcSource {
                    claim_name: "src".into(),
                    sub_path: Some("project".into()),
                }),
                ..Default::default()
            },
        ),
        (
            "from-url",
            BuildSource {
                url: Some("https://files.local/ctx.tar.gz".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, source) in sources {
        let mut b = git_build(name);
        b.spec.source = source;
        b.spec.push_secret = Some("regcred".into());
        b.spec.cache = Some(CacheSpec {
            enabled: Some(true),
            repository: Some("reg.local/cache".into()),
            ttl: Some("24h".into()),
            warm_claim: Some("warm".into()),
        });
        b.spec.node_selector = BTreeMap::from([("kubernetes.io/arch".into(), "amd64".into())]);
        b.spec.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
            key: Some("builds".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }];
        b.spec.service_account_name = Some("builder".into());
        b.spec.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_string(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("500m".into()),
            )])),
            ..Default::default()
        });
        b.spec.timeout = Some("45m".into());
        create_build(&env, &b).await;
    }
    for name in ["from-git", "from-cm", "from-pvc", "from-url"] {
        let pod = wait_pod(&env, &format!("{name}-build-1-1")).await;
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert!(c
            .args
            .as_ref()
            .unwrap()
            .contains(&"--cache-dir=/cache".to_string()));
        let b = wait_build(&env, name, "phase Pending with the Pod", |b| {
            b.status.as_ref().and_then(|s| s.pod_name.as_deref())
                == Some(&format!("{name}-build-1-1"))
        })
        .await;
        assert_eq!(phase(&b), Some(Phase::Pending));
    }
    op.stop().await;
}

/// A Pod under the name the operator wants, created by hand (no owner).
fn squatter(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kiln-operator"}},
        "spec": {"containers": [{"name": "c", "image": "reg.local/other:1"}]}
    }))
    .unwrap()
}

fn controller_uid(p: &Pod) -> Option<String> {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

#[tokio::test]
async fn image_build_and_cache_warm_of_one_name_keep_their_own_pods() {
    let Some(env) = env("collide").await else {
        return;
    };
    let op = Operator::start(&env);
    let cws: Api<CacheWarm> = Api::namespaced(env.admin.clone(), &env.ns);
    let cw = cws
        .create(
            &PostParams::default(),
            &CacheWarm::new(
                "same",
                CacheWarmSpec {
                    images: vec!["reg.local/debian:12".into()],
                    claim: "warm".into(),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    let warm_pod = wait_pod(&env, "same-warm-1-1").await;
    let b = create_build(&env, &git_build("same")).await;
    let build_pod = wait_pod(&env, "same-build-1-1").await;
    assert_eq!(controller_uid(&warm_pod), cw.metadata.uid);
    assert_eq!(controller_uid(&build_pod), b.metadata.uid);
    assert_eq!(build_pod.spec.unwrap().containers[0].name, "executor");
    // The warmer finishing is the CacheWarm's business only.
    pod_running(&env.admin, &env.ns, "same-warm-1-1", "warmer").await;
    let msg = r#"{"images":[{"reference":"reg.local/debian:12","digest":"sha256:d1"}]}"#;
    pod_terminated(&env.admin, &env.ns, "same-warm-1-1", "warmer", 0, msg).await;
    eventually(60, "CacheWarm Succeeded", || async {
        let s = cws.get("same").await.ok()?.status?;
        (s.phase == Some(Phase::Succeeded)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = get_build(&env, "same").await;
    assert_eq!(phase(&b), Some(Phase::Pending), "{:?}", b.status);
    assert_eq!(
        b.status.as_ref().unwrap().pod_name.as_deref(),
        Some("same-build-1-1")
    );
    // The build finishes on its own Pod.
    pod_running(&env.admin, &env.ns, "same-build-1-1", "executor").await;
    pod_terminated(&env.admin, &env.ns, "same-build-1-1", "executor", 0, OK_MSG).await;
    wait_build(&env, "same", "Succeeded", |b| {
        phase(b) == Some(Phase::Succeeded)
    })
    .await;
    assert_eq!(
        pod_names(&env).await,
        vec!["same-build-1-1", "same-warm-1-1"]
    );
    op.stop().await;
}

#[tokio::test]
async fn a_foreign_pod_under_the_name_is_reported_not_adopted() {
    let Some(env) = env("squat").await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &env.ns);
    pods.create(&PostParams::default(), &squatter("squat-build-1-1"))
        .await
        .unwrap();
    let op = Operator::start(&env);
    let b = create_build(&env, &git_build("squat")).await;
    let seen = wait_build(&env, "squat", "PodNameConflict", |b| {
        ready_reason(b).as_deref() == Some("PodNameConflict")
    })
    .await;
    let s = seen.status.unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    assert!(
        s.message.as_deref().unwrap().contains("squat-build-1-1"),
        "{:?}",
        s.message
    );
    assert!(event_reasons(&env.admin, &env.ns, "squat")
        .await
        .contains(&"PodNameConflict".to_string()));
    // The stranger is neither adopted nor changed nor deleted.
    let p = pods.get("squat-build-1-1").await.unwrap();
    assert_eq!(controller_uid(&p), None);
    assert_eq!(p.spec.unwrap().containers[0].name, "c");
    // Its owner removes it: the build starts on a Pod of its own.
    pods.delete("squat-build-1-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let own = eventually(60, "the build's own Pod", || async {
        let p = pods.get_opt("squat-build-1-1").await.ok().flatten()?;
        (controller_uid(&p) == b.metadata.uid).then_some(p)
    })
    .await;
    assert_eq!(own.spec.unwrap().containers[0].name, "executor");
    wait_build(&env, "squat", "Building", |b| {
        ready_reason(b).as_deref() == Some("Building")
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn one_operator_watches_several_namespaces() {
    let Some(env) = env("multi-ns").await else {
        return;
    };
    let other = format!("{}-b", env.ns);
    create_namespace(&env.admin, &other).await;
    let cfg = test_config();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(kiln_operator::runtime::run(
        env.operator.clone(),
        cfg,
        kiln_operator::metrics::Metrics::new(),
        kiln_operator::runtime::Scope {
            namespaces: vec![env.ns.clone(), other.clone()],
            instance: Some("test".into()),
        },
        async {
            let _ = rx.await;
        },
    ));
    for ns in [&env.ns, &other] {
        let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), ns);
        api.create(&PostParams::default(), &git_build("app"))
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
        eventually(60, &format!("Pod app-build-1-1 in {ns}"), || {
            let pods = pods.clone();
            async move { pods.get_opt("app-build-1-1").await.ok().flatten() }
        })
        .await;
    }
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("operator stops within 60s")
        .expect("operator task");
}

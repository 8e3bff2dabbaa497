//! Harness for the integration tests against a real kube-apiserver (started by
//! `scripts/k8s/apiserver.sh`): clients, CRD and RBAC installation, a namespace per test, the
//! operator run in-process, and the "node" that moves Pods through their phases.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kiln_operator::config::OperatorConfig;
use kiln_operator::metrics::Metrics;
use kiln_operator::runtime::{self, Scope};
use kube::api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

pub const MANAGER: &str = "kiln-tests";

pub struct Env {
    pub admin: Client,
    /// Limited to operator/rbac.yaml (admin only outside CI when `kubeconfig-operator` is
    /// missing, with a warning).
    pub operator: Client,
    /// The kubeconfig `operator` was made from, for operator processes the tests start.
    pub operator_kubeconfig: PathBuf,
    pub ns: String,
}

/// The switch that lets a developer without an API server skip these tests.
pub const SKIP_SWITCH: &str = "KILN_SKIP_K8S_TESTS";
/// The low-privilege kubeconfig that scripts/k8s/apiserver.sh writes beside the admin one.
pub const OPERATOR_KUBECONFIG: &str = "kubeconfig-operator";

/// `CI=true` (or `1`), as CI services set it: there, a test that cannot do its job fails
/// instead of passing quietly.
pub fn under_ci() -> bool {
    is_ci(std::env::var("CI").ok().as_deref())
}

fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Prints `text` on the test process's stderr even when libtest captures output: `eprintln!`
/// goes into the capture, which cargo shows only for failing tests, and a skip or a weakened
/// test must be seen when everything passes.
pub fn loud(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// What the skip switch, whose value is `switch`, means for `test`: `Ok(true)` skip,
/// `Ok(false)` run, `Err` fail. Whenever the switch is set, the returned note says what it did.
fn skip_decision(
    test: &str,
    switch: Option<&str>,
    ci: bool,
) -> (Result<bool, String>, Option<String>) {
    match switch {
        None => (Ok(false), None),
        Some("1") if ci => (
            Err(format!(
                "{SKIP_SWITCH}=1 is set under CI=true: {test} and every other API-server test would \
                 be skipped and CI would pass without running them. Unset {SKIP_SWITCH} in CI; it \
                 is only for developers without an API server"
            )),
            None,
        ),
        Some("1") => (
            Ok(true),
            Some(format!(
                "{SKIP_SWITCH}=1: SKIPPING {test} (it does not run; under CI=true this is a failure)"
            )),
        ),
        Some(other) => (
            Ok(false),
            Some(format!(
                "{SKIP_SWITCH}={other:?} is set but only 1 skips: running {test}"
            )),
        ),
    }
}

/// The kubeconfig the operator runs with, given the admin kubeconfig `admin` and whether the
/// low-privilege one beside it exists: `Err` under CI when it is missing (the RBAC of
/// operator/rbac.yaml would go untested), else the admin one with a loud warning.
fn operator_kubeconfig_decision(
    admin: &std::path::Path,
    operator_exists: bool,
    ci: bool,
) -> (Result<PathBuf, String>, Option<String>) {
    let op = admin.with_file_name(OPERATOR_KUBECONFIG);
    if operator_exists {
        return (Ok(op), None);
    }
    if ci {
        return (
            Err(format!(
                "{} not found under CI=true: the operator would run as admin and the RBAC of \
                 operator/rbac.yaml would go untested. scripts/k8s/apiserver.sh start writes it \
                 next to {}; start the API server with that script",
                op.display(),
                admin.display()
            )),
            None,
        );
    }
    let rule = "!".repeat(100);
    (
        Ok(admin.to_path_buf()),
        Some(format!(
            "{rule}\nWARNING: {} not found: the operator runs as ADMIN in these tests, so the RBAC \
             of operator/rbac.yaml is NOT tested (under CI=true this is a failure). Start the API \
             server with scripts/k8s/apiserver.sh, which writes it.\n{rule}",
            op.display()
        )),
    )
}

async fn client_from(path: &PathBuf) -> Client {
    let kc = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", path.display()));
    Client::try_from(cfg).expect("kube client")
}

/// Connects to the test API server, installs CRDs and RBAC, creates a fresh namespace.
/// `None` only when `KILN_SKIP_K8S_TESTS=1` outside CI; a missing API server is a test failure,
/// and so is the skip switch or a missing `kubeconfig-operator` under `CI=true`.
pub async fn env(test: &str) -> Option<Env> {
    let ci = under_ci();
    let switch = std::env::var(SKIP_SWITCH).ok();
    let (skip, note) = skip_decision(test, switch.as_deref(), ci);
    if let Some(note) = note {
        loud(&note);
    }
    match skip {
        Err(msg) => panic!("{msg}"),
        Ok(true) => return None,
        Ok(false) => {}
    }
    // The test build links both ring (kube) and aws-lc-rs (the executor, a dev-dependency):
    // pick kube's provider explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG").map(PathBuf::from) else {
        panic!(
            "KUBECONFIG is not set: these tests need a real kube-apiserver. Run scripts/k8s/test.sh, or \
             `scripts/k8s/apiserver.sh start` and export KUBECONFIG=/var/cache/kiln/k8s-run/kubeconfig; \
             set KILN_SKIP_K8S_TESTS=1 to skip them"
        );
    };
    let admin = client_from(&kubeconfig).await;
    if let Err(e) = admin.apiserver_version().await {
        panic!(
            "the API server of {} is not reachable ({e}): start it with scripts/k8s/apiserver.sh start, \
             or set KILN_SKIP_K8S_TESTS=1 to skip these tests",
            kubeconfig.display()
        );
    }
    install_crds(&admin).await;
    install_rbac(&admin).await;
    let op_exists = kubeconfig.with_file_name(OPERATOR_KUBECONFIG).exists();
    let (op_path, warning) = operator_kubeconfig_decision(&kubeconfig, op_exists, ci);
    if let Some(warning) = warning {
        loud(&warning);
    }
    let operator_kubeconfig = op_path.unwrap_or_else(|msg| panic!("{msg}"));
    let operator = client_from(&operator_kubeconfig).await;
    let suffix = format!("{:x}", std::process::id() as u64 * 1000 + rand_u16() as u64);
    let ns = format!("{}-{}", test.replace('_', "-"), suffix);
    let ns = ns[..ns.len().min(63)].trim_end_matches('-').to_string();
    create_namespace(&admin, &ns).await;
    Some(Env {
        admin,
        operator,
        operator_kubeconfig,
        ns,
    })
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() / 7 % 65_521) as u16
}

pub async fn create_namespace(admin: &Client, ns: &str) {
    let api: Api<Namespace> = Api::all(admin.clone());
    let obj = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(ae)) if ae.code == 409 => {}
        Err(e) => panic!("creating namespace {ns}: {e}"),
    }
}

pub async fn install_crds(admin: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for (_, crd) in kiln_operator::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server rejected CRD {name}: {e}"));
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not established within 60s"))
            .unwrap();
    }
}

/// Applies operator/rbac.yaml (and its namespace) as admin.
pub async fn install_rbac(admin: &Client) {
    create_namespace(admin, "kiln-system").await;
    let text = include_str!("../../rbac.yaml");
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).expect("rbac.yaml parses");
        let obj: DynamicObject = serde_json::from_value(value.clone()).expect("rbac.yaml object");
        let kind = value["kind"].as_str().unwrap();
        let (group, version, plural) = match kind {
            "ServiceAccount" => ("", "v1", "serviceaccounts"),
            "ClusterRole" => ("rbac.authorization.k8s.io", "v1", "clusterroles"),
            "ClusterRoleBinding" => ("rbac.authorization.k8s.io", "v1", "clusterrolebindings"),
            "Role" => ("rbac.authorization.k8s.io", "v1", "roles"),
            "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings"),
            other => panic!("unexpected kind {other} in rbac.yaml"),
        };
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: value["apiVersion"].as_str().unwrap().into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let name = obj.metadata.name.clone().unwrap();
        let api: Api<DynamicObject> = match &obj.metadata.namespace {
            Some(ns) => Api::namespaced_with(admin.clone(), ns, &ar),
            None => Api::all_with(admin.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name} from rbac.yaml: {e}"));
    }
}

pub fn test_config() -> OperatorConfig {
    OperatorConfig {
        executor_image: "reg.local/kiln-executor:test".into(),
        warmer_image: "reg.local/kiln-warmer:test".into(),
        retry_backoff: Duration::from_secs(1),
        ..Default::default()
    }
}

/// The operator's controllers running in-process on one namespace.
pub struct Operator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub metrics: Metrics,
}

impl Operator {
    pub fn start(env: &Env) -> Operator {
        Self::start_with(env, test_config())
    }

    pub fn start_with(env: &Env, cfg: OperatorConfig) -> Operator {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = Metrics::new();
        let task = tokio::spawn(runtime::run(
            env.operator.clone(),
            cfg,
            metrics.clone(),
            Scope {
                namespaces: vec![env.ns.clone()],
                instance: Some("test".into()),
            },
            async {
                let _ = rx.await;
            },
        ));
        Operator {
            stop: Some(tx),
            task,
            metrics,
        }
    }

    /// Stops the controllers and waits for them to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("operator stops within 60s")
            .expect("operator task");
    }
}

/// Polls `f` until it returns `Some`, failing with `what` after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Plays the kubelet: marks the Pod Running.
pub async fn pod_running(admin: &Client, ns: &str, name: &str, container: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let now = now_rfc3339();
    let status = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "containerStatuses": [{
            "name": container, "ready": true, "restartCount": 0,
            "image": "reg.local/test", "imageID": "",
            "state": {"running": {"startedAt": now}}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("marking Pod {ns}/{name} Running: {e}"));
}

/// Plays the kubelet: the container terminated with `code` and `message`; the Pod phase follows.
pub async fn pod_terminated(
    admin: &Client,
    ns: &str,
    name: &str,
    container: &str,
    code: i32,
    message: &str,
) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let now = now_rfc3339();
    let status = json!({"status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": container, "ready": false, "restartCount": 0,
            "image": "reg.local/test", "imageID": "",
            "state": {"terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": now, "finishedAt": now
            }}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("marking Pod {ns}/{name} terminated: {e}"));
}

/// Plays the kubelet on a node that cannot mount the Pod's Secret volume `volume` because the
/// Secret `secret` does not exist: the Pod stays Pending with its container `ContainerCreating`,
/// and the kubelet records a `FailedMount` Warning Event (core/v1, as the kubelet writes it) about
/// the Pod.
pub async fn pod_secret_missing(
    admin: &Client,
    ns: &str,
    name: &str,
    container: &str,
    volume: &str,
    secret: &str,
) {
    let message =
        format!("MountVolume.SetUp failed for volume \"{volume}\" : secret \"{secret}\" not found");
    pod_failed_mount(admin, ns, name, container, &message).await;
}

/// Plays the kubelet on a node that cannot mount a volume of the Pod, for the reason `message`
/// says (the kubelet's own wording): as [`pod_secret_missing`].
pub async fn pod_failed_mount(
    admin: &Client,
    ns: &str,
    name: &str,
    container: &str,
    message: &str,
) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let now = now_rfc3339();
    let status = json!({"status": {
        "phase": "Pending",
        "startTime": now,
        "containerStatuses": [{
            "name": container, "ready": false, "restartCount": 0,
            "image": "reg.local/test", "imageID": "",
            "state": {"waiting": {"reason": "ContainerCreating"}}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("marking Pod {ns}/{name} ContainerCreating: {e}"));
    let pod = pods.get(name).await.expect("the Pod");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), ns);
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"generateName": format!("{name}.")},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version
        },
        "reason": "FailedMount",
        "type": "Warning",
        "message": message,
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1
    }))
    .unwrap();
    events
        .create(&PostParams::default(), &event)
        .await
        .unwrap_or_else(|e| panic!("writing the kubelet's FailedMount Event of {ns}/{name}: {e}"));
}

/// Plays the kubelet enforcing activeDeadlineSeconds.
pub async fn pod_deadline_exceeded(admin: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let status = json!({"status": {
        "phase": "Failed", "reason": "DeadlineExceeded",
        "message": "Pod was active on the node longer than the specified deadline"
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("marking Pod {ns}/{name} DeadlineExceeded: {e}"));
}

/// Reasons of the events.k8s.io Events about `name` in `ns`.
pub async fn event_reasons(admin: &Client, ns: &str, name: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
    let list = api.list(&Default::default()).await.expect("listing events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    #[test]
    fn ci_is_recognised() {
        assert!(is_ci(Some("true")) && is_ci(Some("TRUE")) && is_ci(Some("1")));
        assert!(!is_ci(None) && !is_ci(Some("")) && !is_ci(Some("false")) && !is_ci(Some("0")));
    }

    #[test]
    fn skip_switch_skips_loudly_for_developers_and_fails_under_ci() {
        assert_eq!(skip_decision("t", None, false), (Ok(false), None));
        assert_eq!(skip_decision("t", None, true), (Ok(false), None));
        let (skip, note) = skip_decision("t", Some("1"), false);
        assert_eq!(skip, Ok(true));
        assert!(note.unwrap().contains("KILN_SKIP_K8S_TESTS=1: SKIPPING t"));
        let (skip, _) = skip_decision("t", Some("1"), true);
        let msg = skip.unwrap_err();
        assert!(
            msg.contains("KILN_SKIP_K8S_TESTS=1") && msg.contains("CI=true"),
            "{msg}"
        );
        // Any other value runs the tests, and says so.
        for ci in [false, true] {
            let (skip, note) = skip_decision("t", Some("yes"), ci);
            assert_eq!(skip, Ok(false));
            assert!(note.unwrap().contains("only 1 skips"));
        }
    }

    #[test]
    fn missing_operator_kubeconfig_warns_and_fails_under_ci() {
        let admin = std::path::Path::new("/run/k8s/kubeconfig");
        let op = PathBuf::from("/run/k8s/kubeconfig-operator");
        for ci in [false, true] {
            assert_eq!(
                operator_kubeconfig_decision(admin, true, ci),
                (Ok(op.clone()), None)
            );
        }
        let (path, warning) = operator_kubeconfig_decision(admin, false, false);
        assert_eq!(path, Ok(admin.to_path_buf()));
        assert!(warning.unwrap().contains("WARNING"));
        let (path, _) = operator_kubeconfig_decision(admin, false, true);
        let msg = path.unwrap_err();
        assert!(
            msg.contains("kubeconfig-operator") && msg.contains("CI=true"),
            "{msg}"
        );
    }
}

//! Integration tests against a real kube-apiserver + etcd (scripts/k8s/apiserver.sh). The
//! operator runs in-process as the RBAC-limited user of operator/rbac.yaml (which has no access
//! to Secrets); the test plays the node by patching Pod status and writing the kubelet's Events.
//! Each test has its own namespace and operator instance. This file holds the helpers the test
//! modules share; [`common`] is the harness.

mod common;

mod cache_warm;
mod image_build;
mod integrations;
mod leader;
mod queue;
mod run_mounts;
mod runs;
mod validation;

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
                    secret_ref: None,
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

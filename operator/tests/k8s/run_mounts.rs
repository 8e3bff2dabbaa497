//! Build secrets and the mount cache through the operator: the executor Pod gets one-key Secret
//! volumes, file flags and the read-write cache claim, never a secret value; a missing build
//! Secret or key is reported by name, id and key; the API server refuses invalid secret ids.

use super::*;
use kiln_operator::crd::{BuildSecret, SecretKeyRef};

/// A value no Pod, status, Event or log may hold.
const VALUE: &str = "//npm.local/:_authToken=kiln-test-build-secret-7f3a";

fn build_secret(id: &str, name: &str, key: &str) -> BuildSecret {
    BuildSecret {
        id: id.into(),
        secret_key_ref: SecretKeyRef {
            name: name.into(),
            key: key.into(),
        },
    }
}

#[tokio::test]
async fn build_secrets_and_mount_cache_reach_the_executor_pod_as_files_only() {
    let Some(env) = env("ib-run-mounts").await else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.ns);
    let npm: Secret = serde_json::from_value(json!({
        "metadata": {"name": "npm"},
        "stringData": {".npmrc": VALUE, "unused": "other"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &npm).await.unwrap();
    let op = Operator::start(&env);
    let mut b = git_build("secretive");
    b.spec.secrets = vec![
        build_secret("npmrc", "npm", ".npmrc"),
        build_secret("GIT_AUTH_TOKEN", "git-token", "token"),
    ];
    b.spec.cache = Some(CacheSpec {
        mount_cache_claim: Some("run-cache".into()),
        ..Default::default()
    });
    create_build(&env, &b).await;

    let pod = wait_pod(&env, "secretive-build-1-1").await;
    let spec = pod.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    let args = c.args.clone().unwrap();
    for want in [
        "--secret=id=npmrc,src=/kiln/secrets/npmrc/value",
        "--secret=id=GIT_AUTH_TOKEN,src=/kiln/secrets/GIT_AUTH_TOKEN/value",
        "--mount-cache-dir=/kiln/mount-cache",
    ] {
        assert!(args.contains(&want.to_string()), "{want} not in {args:?}");
    }
    let volumes = spec.volumes.clone().unwrap();
    let npm_volume = volumes.iter().find(|v| v.name == "build-secret-0").unwrap();
    let src = npm_volume.secret.as_ref().unwrap();
    assert_eq!(src.secret_name.as_deref(), Some("npm"));
    assert_eq!(src.default_mode, Some(0o400));
    let items = src.items.as_ref().unwrap();
    assert_eq!(items.len(), 1, "only the key the build names: {items:?}");
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        (".npmrc", "value")
    );
    let mounts = c.volume_mounts.clone().unwrap();
    let m = mounts.iter().find(|m| m.name == "build-secret-1").unwrap();
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        ("/kiln/secrets/GIT_AUTH_TOKEN", Some(true))
    );
    let cache = volumes.iter().find(|v| v.name == "mount-cache").unwrap();
    assert_eq!(
        cache.persistent_volume_claim.as_ref().unwrap().claim_name,
        "run-cache"
    );
    let m = mounts.iter().find(|m| m.name == "mount-cache").unwrap();
    assert_eq!(m.mount_path, "/kiln/mount-cache");
    assert_ne!(m.read_only, Some(true));
    // Files only: no variable refers to a Secret, and the value is nowhere in the Pod.
    assert!(c.env.is_none(), "{:?}", c.env);
    let text = serde_json::to_string(&pod).unwrap();
    assert!(
        !text.contains(VALUE) && !text.contains("authToken"),
        "{text}"
    );

    // The kubelet cannot mount the Secret that does not exist.
    pod_secret_missing(
        &env.admin,
        &env.ns,
        "secretive-build-1-1",
        "executor",
        "build-secret-1",
        "git-token",
    )
    .await;
    let b = wait_build(&env, "secretive", "SecretNotFound", |b| {
        ready_reason(b).as_deref() == Some("SecretNotFound")
    })
    .await;
    let s = b.status.clone().unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    let m = s.message.unwrap();
    assert!(
        m.starts_with(
            "build Secret \"git-token\" of spec.secrets (id GIT_AUTH_TOKEN from key \"token\") \
             does not exist in namespace"
        ) && m.contains("secretive-build-1-1"),
        "{m}"
    );
    let reasons = eventually(60, "SecretNotFound event", || async {
        let r = event_reasons(&env.admin, &env.ns, "secretive").await;
        r.contains(&"SecretNotFound".to_string()).then_some(r)
    })
    .await;
    assert!(!reasons.is_empty());
    let status = serde_json::to_string(&b.status).unwrap();
    assert!(!status.contains(VALUE), "{status}");
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.admin.clone(), &env.ns);
    let all = serde_json::to_string(&events.list(&Default::default()).await.unwrap()).unwrap();
    assert!(!all.contains(VALUE), "an Event holds the secret value");
    op.stop().await;
}

#[tokio::test]
async fn a_missing_key_of_a_build_secret_is_reported_by_id() {
    let Some(env) = env("ib-secret-key").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut b = git_build("keyless");
    b.spec.secrets = vec![build_secret("npmrc", "npm", ".npmrc")];
    create_build(&env, &b).await;
    wait_pod(&env, "keyless-build-1-1").await;
    pod_failed_mount(
        &env.admin,
        &env.ns,
        "keyless-build-1-1",
        "executor",
        "MountVolume.SetUp failed for volume \"build-secret-0\" : references non-existent secret key: .npmrc",
    )
    .await;
    let b = wait_build(&env, "keyless", "SecretNotFound", |b| {
        ready_reason(b).as_deref() == Some("SecretNotFound")
    })
    .await;
    let m = b.status.unwrap().message.unwrap();
    assert!(
        m.starts_with("build Secret \"npm\" of spec.secrets (id npmrc) has no key \".npmrc\""),
        "{m}"
    );
    op.stop().await;
}

#[tokio::test]
async fn admission_rejects_invalid_and_repeated_secret_ids() {
    let Some(env) = env("ib-secret-ids").await else {
        return;
    };
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    let body = |name: &str, secrets: serde_json::Value| {
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
               "metadata": {"name": name},
               "spec": {"source": {"git": {"url": "https://git.local/a.git"}},
                        "destinations": ["r/a:1"], "secrets": secrets}})
    };
    let reference = json!({"name": "npm", "key": ".npmrc"});
    for (i, bad) in ["a/b", "../x", ".npmrc", "a,src=/etc/shadow", "a b", "-x"]
        .iter()
        .enumerate()
    {
        super::validation::expect_rejected(
            &api,
            body(
                &format!("bad-id-{i}"),
                json!([{"id": bad, "secretKeyRef": reference}]),
            ),
            "spec.secrets[].id must be 1-128 letters, digits, '.', '_' or '-'",
        )
        .await;
    }
    super::validation::expect_rejected(
        &api,
        body(
            "dup-id",
            json!([{"id": "npmrc", "secretKeyRef": reference},
                   {"id": "npmrc", "secretKeyRef": {"name": "other", "key": "k"}}]),
        ),
        "Duplicate value",
    )
    .await;
    super::validation::expect_rejected(
        &api,
        body(
            "bad-key",
            json!([{"id": "npmrc", "secretKeyRef": {"name": "npm", "key": "a/b"}}]),
        ),
        "spec.secrets[0].secretKeyRef.key",
    )
    .await;
    // Valid ids, and the mount-cache claim, are accepted.
    let mut ok = git_build("ok");
    ok.spec.secrets = vec![
        build_secret("npmrc", "npm", ".npmrc"),
        build_secret("GIT_AUTH_TOKEN.github.com", "git", "token"),
        build_secret("aws_2", "aws", "credentials"),
    ];
    ok.spec.cache = Some(CacheSpec {
        mount_cache_claim: Some("run-cache".into()),
        ..Default::default()
    });
    api.create(&PostParams::default(), &ok)
        .await
        .expect("valid build secrets accepted");
}

//! What the API server itself enforces: the CRD schema and CEL rules reject invalid
//! ImageBuilds, and every executor Pod the operator writes passes Pod validation.

use super::*;

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

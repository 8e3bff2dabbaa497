//! What the API server itself enforces: the CRD schema and CEL rules reject invalid
//! ImageBuilds (a Dockerfile outside the context among them), and every executor Pod the operator
//! writes passes Pod validation, hardened and with every permitted override; and what the
//! operator refuses: overrides its configuration does not allow.

use super::*;

pub(crate) async fn expect_rejected(api: &Api<ImageBuild>, body: serde_json::Value, want: &str) {
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
    for (name, path, field) in [
        (
            "abs-dockerfile",
            json!({"dockerfile": "/kiln/.docker/config.json"}),
            "spec.dockerfile",
        ),
        (
            "up-dockerfile",
            json!({"dockerfile": "../../etc/passwd"}),
            "spec.dockerfile",
        ),
        (
            "mid-dockerfile",
            json!({"dockerfile": "a/../../b"}),
            "spec.dockerfile",
        ),
        (
            "end-dockerfile",
            json!({"dockerfile": "a/.."}),
            "spec.dockerfile",
        ),
    ] {
        let mut spec = json!({"source": git, "destinations": ["r/a:1"]});
        spec.as_object_mut()
            .unwrap()
            .extend(path.as_object().unwrap().clone());
        expect_rejected(
            &api,
            base(name, spec),
            &format!("{field} must be a path inside the build context"),
        )
        .await;
    }
    expect_rejected(
        &api,
        base(
            "abs-subpath",
            json!({"source": {"git": {"url": "https://git.local/a.git", "subPath": "/etc"}}, "destinations": ["r/a:1"]}),
        ),
        "spec.source.git.subPath must be a path inside the repository",
    )
    .await;
    expect_rejected(
        &api,
        base(
            "up-subpath",
            json!({"source": {"persistentVolumeClaim": {"claimName": "c", "subPath": "x/../.."}}, "destinations": ["r/a:1"]}),
        ),
        "spec.source.persistentVolumeClaim.subPath must be a path inside the volume",
    )
    .await;
    expect_rejected(
        &api,
        base(
            "bad-cap",
            json!({"source": git, "destinations": ["r/a:1"], "addCapabilities": ["sys_admin; rm"]}),
        ),
        "spec.addCapabilities",
    )
    .await;
    // Names that only look like escapes are paths inside the context.
    for (i, ok) in [
        "build/Dockerfile",
        "./Dockerfile",
        "..Dockerfile",
        "a/...",
        "docker/..x",
    ]
    .iter()
    .enumerate()
    {
        let mut b = git_build(&format!("path-{i}"));
        b.spec.dockerfile = Some(ok.to_string());
        api.create(&PostParams::default(), &b)
            .await
            .unwrap_or_else(|e| panic!("dockerfile {ok:?} rejected: {e}"));
    }
    // A valid one with every field is accepted.
    let mut ok = git_build("full");
    ok.spec.cache = Some(CacheSpec {
        enabled: Some(true),
        repository: Some("reg.local/cache".into()),
        ttl: Some("168h".into()),
        warm_claim: Some("warm".into()),
        ..Default::default()
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
    // Every override allowed, and every Pod setting on: the API server validates the result.
    let cfg = kiln_operator::config::OperatorConfig {
        executor_user_namespace: true,
        executor_allow_privilege_escalation: false,
        overrides: kiln_operator::config::OverridePolicy {
            service_accounts: vec!["builder".into()],
            capabilities: vec!["MKNOD".into(), "SYS_CHROOT".into()],
            ..Default::default()
        },
        ..test_config()
    };
    let op = Operator::start_with(&env, cfg);
    let sources = [
        (
            "from-git",
            BuildSource {
                git: Some(GitSource {
                    url: "git://git.local/app.git".into(),
                    revision: Some("v1.2.3".into()),
                    sub_path: Some("services/api".into()),
                    secret_ref: None,
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
            mount_cache_claim: Some("run-cache".into()),
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
        b.spec.add_capabilities = vec!["MKNOD".into(), "CAP_SYS_CHROOT".into()];
        b.spec.secrets = vec![kiln_operator::crd::BuildSecret {
            id: "GIT_AUTH_TOKEN.git.local".into(),
            secret_key_ref: kiln_operator::crd::SecretKeyRef {
                name: "git".into(),
                key: "token".into(),
            },
        }];
        create_build(&env, &b).await;
    }
    for name in ["from-git", "from-cm", "from-pvc", "from-url"] {
        let pod = wait_pod(&env, &format!("{name}-build-1-1")).await;
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.host_users, Some(false));
        assert_eq!(spec.service_account_name.as_deref(), Some("builder"));
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let add = sc.capabilities.as_ref().unwrap().add.clone().unwrap();
        assert!(
            add.contains(&"MKNOD".to_string()) && add.contains(&"SYS_CHROOT".to_string()),
            "{add:?}"
        );
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

#[tokio::test]
async fn overrides_are_refused_unless_the_operator_allows_them() {
    let Some(env) = env("ib-overrides").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut image = git_build("own-image");
    image.spec.executor_image = Some("evil.example/executor:1".into());
    let mut account = git_build("own-account");
    account.spec.service_account_name = Some("deployer".into());
    let mut caps = git_build("own-caps");
    caps.spec.add_capabilities = vec!["SYS_ADMIN".into()];
    let mut default_cap = git_build("default-cap");
    default_cap.spec.add_capabilities = vec!["CHOWN".into()];
    for b in [&image, &account, &caps, &default_cap] {
        create_build(&env, b).await;
    }
    for (name, field) in [
        ("own-image", "spec.executorImage"),
        ("own-account", "spec.serviceAccountName"),
        ("own-caps", "spec.addCapabilities"),
    ] {
        let b = wait_build(&env, name, "NotPermitted", |b| {
            ready_reason(b).as_deref() == Some("NotPermitted")
        })
        .await;
        assert_eq!(phase(&b), Some(Phase::Failed));
        let m = b.status.unwrap().message.unwrap();
        assert!(m.starts_with(&format!("not permitted: {field}")), "{m}");
        eventually(60, "NotPermitted event", || async {
            event_reasons(&env.admin, &env.ns, name)
                .await
                .contains(&"NotPermitted".to_string())
                .then_some(())
        })
        .await;
    }
    // A capability of the default set is no override.
    wait_pod(&env, "default-cap-build-1-1").await;
    assert_eq!(pod_names(&env).await, vec!["default-cap-build-1-1"]);
    // CacheWarm: the warmer image likewise.
    let cws: Api<CacheWarm> = Api::namespaced(env.admin.clone(), &env.ns);
    let mut cw = CacheWarm::new(
        "own-warmer",
        CacheWarmSpec {
            images: vec!["reg.local/debian:12".into()],
            claim: "warm".into(),
            ..Default::default()
        },
    );
    cw.spec.warmer_image = Some("evil.example/warmer:1".into());
    cws.create(&PostParams::default(), &cw).await.unwrap();
    let s = eventually(60, "CacheWarm NotPermitted", || async {
        let s = cws.get("own-warmer").await.ok()?.status?;
        (s.conditions.first()?.reason == "NotPermitted").then_some(s)
    })
    .await;
    assert!(
        s.message.as_deref().unwrap().contains("spec.warmerImage"),
        "{:?}",
        s.message
    );
    assert_eq!(pod_names(&env).await, vec!["default-cap-build-1-1"]);
    op.stop().await;

    // The same objects under an operator that allows them: edited (a new generation), they run.
    let cfg = kiln_operator::config::OperatorConfig {
        overrides: kiln_operator::config::OverridePolicy {
            executor_images: vec!["evil.example/*".into()],
            warmer_images: vec!["evil.example/warmer:1".into()],
            service_accounts: vec!["deployer".into()],
            capabilities: vec!["SYS_ADMIN".into()],
        },
        ..test_config()
    };
    let op = Operator::start_with(&env, cfg);
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    for name in ["own-image", "own-account", "own-caps"] {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"buildArgs": {"RETRY": "1"}}})),
        )
        .await
        .unwrap();
    }
    let pod = wait_pod(&env, "own-image-build-2-1").await;
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("evil.example/executor:1")
    );
    let pod = wait_pod(&env, "own-account-build-2-1").await;
    assert_eq!(
        pod.spec.unwrap().service_account_name.as_deref(),
        Some("deployer")
    );
    let pod = wait_pod(&env, "own-caps-build-2-1").await;
    let add = pod.spec.unwrap().containers[0]
        .security_context
        .clone()
        .unwrap()
        .capabilities
        .unwrap()
        .add
        .unwrap();
    assert!(add.contains(&"SYS_ADMIN".to_string()), "{add:?}");
    cws.patch(
        "own-warmer",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"platform": "linux/amd64"}})),
    )
    .await
    .unwrap();
    let pod = wait_pod(&env, "own-warmer-warm-2-1").await;
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("evil.example/warmer:1")
    );
    op.stop().await;
}

//! ImageBuild through the operator: a missing Secret reported from the Pod, success, retries,
//! timeout, restarts, new generations, deletion, a stranger's Pod under the name, several watched
//! namespaces, the longest object name, no access to Secrets.

use super::*;

#[tokio::test]
async fn missing_secret_is_reported_from_the_pod_then_build_succeeds_with_digest() {
    let Some(env) = env("ib-success").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut b = git_build("web");
    b.spec.push_secret = Some("regcred".into());
    b.spec.timeout = Some("10m".into());
    create_build(&env, &b).await;

    // The operator cannot read Secrets (see operator_has_no_access_to_secrets): it creates the
    // Pod, and the kubelet, which cannot mount the missing Secret, says so in an Event.
    let pod = wait_pod(&env, "web-build-1-1").await;
    pod_secret_missing(
        &env.admin,
        &env.ns,
        "web-build-1-1",
        "executor",
        "docker-config",
        "regcred",
    )
    .await;
    let b = wait_build(&env, "web", "SecretNotFound", |b| {
        ready_reason(b).as_deref() == Some("SecretNotFound")
    })
    .await;
    let s = b.status.unwrap();
    assert_eq!(s.phase, Some(Phase::Pending));
    let m = s.message.unwrap();
    assert!(
        m.starts_with("push Secret \"regcred\" does not exist") && m.contains("web-build-1-1"),
        "{m}"
    );
    assert_eq!(pod_names(&env).await, vec!["web-build-1-1"]);

    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(600));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(
        spec.security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref()
            .unwrap()
            .type_,
        "RuntimeDefault"
    );
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("reg.local/kiln-executor:test"));
    let sc = c.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.clone().unwrap(),
        kiln_operator::security::BUILD_CAPABILITIES.map(String::from)
    );
    assert_eq!((sc.run_as_user, sc.privileged), (Some(0), Some(false)));
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

    // The Secret is created; the kubelet mounts it and starts the container.
    create_push_secret(&env, "regcred").await;
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
    // The build is counted after its status and Event are written: wait for the count.
    eventually(60, "kiln_builds_succeeded_total 1", || async {
        op.metrics
            .render()
            .contains("kiln_builds_succeeded_total 1")
            .then_some(())
    })
    .await;
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
    // The Event is published after the status patch, so it may not be there yet.
    eventually(60, "PodNameConflict event", || async {
        event_reasons(&env.admin, &env.ns, "squat")
            .await
            .contains(&"PodNameConflict".to_string())
            .then_some(())
    })
    .await;
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

#[tokio::test]
async fn operator_has_no_access_to_secrets() {
    let Some(env) = env("no-secrets").await else {
        return;
    };
    create_push_secret(&env, "regcred").await;
    // The identity the operator runs as in every test here (operator/rbac.yaml) is refused any
    // read of a Secret: by name, by list, by watch, in the namespace and cluster-wide.
    let ns: Api<Secret> = Api::namespaced(env.operator.clone(), &env.ns);
    let all: Api<Secret> = Api::all(env.operator.clone());
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(ae)) if ae.code == 403 => {}
        other => panic!("{what} as the operator should be forbidden, got {other:?}"),
    };
    forbidden(ns.get("regcred").await.map(|_| ()), "get secret");
    forbidden(
        ns.get_metadata("regcred").await.map(|_| ()),
        "get secret metadata",
    );
    forbidden(
        ns.list(&ListParams::default()).await.map(|_| ()),
        "list secrets",
    );
    forbidden(
        all.list(&ListParams::default()).await.map(|_| ()),
        "list secrets in all namespaces",
    );
    forbidden(
        ns.watch(&WatchParams::default(), "0").await.map(|_| ()),
        "watch secrets",
    );
}

#[tokio::test]
async fn longest_object_name_builds_and_deletes() {
    let Some(env) = env("ib-longname").await else {
        return;
    };
    let op = Operator::start(&env);
    // 253 characters, the longest name Kubernetes allows, with dots.
    let name = format!("{}.{}.{}", "a".repeat(100), "b".repeat(100), "c".repeat(51));
    assert_eq!(name.len(), 253);
    let b = create_build(&env, &git_build(&name)).await;
    let pod_name = kiln_operator::names::build_pod_name(&name, 1, 1);
    let pod = wait_pod(&env, &pod_name).await;
    let label = &pod.metadata.labels.as_ref().unwrap()[kiln_operator::LABEL_BUILD];
    assert_eq!(*label, kiln_operator::names::label_value(&name));
    assert_eq!(controller_uid(&pod), b.metadata.uid);
    let seen = wait_build(&env, &name, "Pending with its Pod", |b| {
        b.status.as_ref().and_then(|s| s.pod_name.as_deref()) == Some(pod_name.as_str())
    })
    .await;
    assert_eq!(phase(&seen), Some(Phase::Pending));
    // Its Events are published too (the recorder's own names would be too long).
    eventually(60, "Started event of the long-named build", || async {
        event_reasons(&env.admin, &env.ns, &name)
            .await
            .contains(&"Started".to_string())
            .then_some(())
    })
    .await;
    pod_running(&env.admin, &env.ns, &pod_name, "executor").await;
    pod_terminated(&env.admin, &env.ns, &pod_name, "executor", 0, OK_MSG).await;
    wait_build(&env, &name, "phase Succeeded", |b| {
        phase(b) == Some(Phase::Succeeded)
    })
    .await;
    // Deletion completes: the finalizer finds the Pod by its label and deletes it.
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(60, "the long-named ImageBuild and its Pod gone", || async {
        let gone = api.get_opt(&name).await.unwrap().is_none();
        (gone && pod_names(&env).await.is_empty()).then_some(())
    })
    .await;

    // The same for a CacheWarm.
    let cws: Api<CacheWarm> = Api::namespaced(env.admin.clone(), &env.ns);
    let cw = CacheWarm::new(
        &name,
        CacheWarmSpec {
            images: vec!["reg.local/debian:12".into()],
            claim: "warm".into(),
            ..Default::default()
        },
    );
    cws.create(&PostParams::default(), &cw).await.unwrap();
    let warm_pod = kiln_operator::names::warm_pod_name(&name, 1, 1);
    let pod = wait_pod(&env, &warm_pod).await;
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()[kiln_operator::LABEL_WARM],
        kiln_operator::names::label_value(&name)
    );
    cws.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(60, "the long-named CacheWarm and its Pod gone", || async {
        let gone = cws.get_opt(&name).await.unwrap().is_none();
        (gone && pod_names(&env).await.is_empty()).then_some(())
    })
    .await;
    op.stop().await;
}

//! Runs of an ImageBuild through the operator against the real API server: spec.rerun starts a
//! run (re-applying the same spec and an operator restart do not), spec.cancel stops one,
//! status.history records them, and spec.retention removes finished Pods.

use super::*;

async fn patch_spec(env: &Env, name: &str, spec: serde_json::Value) {
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .unwrap_or_else(|e| panic!("patching ImageBuild {name}: {e}"));
}

/// Plays the kubelet for `pod`: running, then exited with the pushed digest.
async fn succeed(env: &Env, pod: &str) {
    wait_pod(env, pod).await;
    pod_running(&env.admin, &env.ns, pod, "executor").await;
    pod_terminated(&env.admin, &env.ns, pod, "executor", 0, OK_MSG).await;
}

async fn wait_generation_succeeded(env: &Env, name: &str, generation: i64) -> ImageBuild {
    wait_build(
        env,
        name,
        &format!("generation {generation} Succeeded"),
        |b| {
            b.status.as_ref().is_some_and(|s| {
                s.observed_generation == Some(generation) && s.phase == Some(Phase::Succeeded)
            })
        },
    )
    .await
}

#[tokio::test]
async fn rerun_cancel_history_and_retention() {
    let Some(env) = env("ib-runs").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut b = git_build("runs");
    b.spec.retention = Some(kiln_operator::crd::Retention {
        succeeded_limit: Some(1),
        ..Default::default()
    });
    create_build(&env, &b).await;
    succeed(&env, "runs-build-1-1").await;
    wait_generation_succeeded(&env, "runs", 1).await;

    // The same spec applied again, and an operator restart: no new run.
    patch_spec(&env, "runs", json!({"retention": {"succeededLimit": 1}})).await;
    op.stop().await;
    let op = Operator::start(&env);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names = pod_names(&env).await;
    assert_eq!(names, vec!["runs-build-1-1".to_string()], "{names:?}");
    assert_eq!(get_build(&env, "runs").await.metadata.generation, Some(1));

    // A new rerun token: generation 2, a new run; retention (one succeeded Pod kept) removes
    // the first run's Pod once the second has succeeded.
    patch_spec(&env, "runs", json!({"rerun": "2026-12-06T10:00"})).await;
    succeed(&env, "runs-build-2-1").await;
    let b = wait_generation_succeeded(&env, "runs", 2).await;
    let history = b.status.unwrap().history;
    assert_eq!(
        history.iter().map(|h| h.generation).collect::<Vec<_>>(),
        vec![2, 1]
    );
    eventually(60, "runs-build-1-1 deleted by retention", || async {
        (pod_names(&env).await == vec!["runs-build-2-1".to_string()]).then_some(())
    })
    .await;

    // Another run, cancelled while it runs: its Pod is deleted, the phase is Cancelled.
    patch_spec(&env, "runs", json!({"rerun": "2026-12-06T11:00"})).await;
    wait_pod(&env, "runs-build-3-1").await;
    pod_running(&env.admin, &env.ns, "runs-build-3-1", "executor").await;
    wait_build(&env, "runs", "phase Running", |b| {
        phase(b) == Some(Phase::Running)
    })
    .await;
    patch_spec(&env, "runs", json!({"cancel": true})).await;
    let b = wait_build(&env, "runs", "phase Cancelled", |b| {
        phase(b) == Some(Phase::Cancelled)
    })
    .await;
    assert_eq!(ready_reason(&b).as_deref(), Some("Cancelled"));
    let h = &b.status.unwrap().history[0];
    assert_eq!((h.generation, h.result), (3, Phase::Cancelled));
    eventually(60, "the cancelled run's Pod deleted", || async {
        (!pod_names(&env)
            .await
            .contains(&"runs-build-3-1".to_string()))
        .then_some(())
    })
    .await;
    // Nothing starts while cancelled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pod_names(&env)
        .await
        .iter()
        .any(|n| n.starts_with("runs-build-4")));
    op.stop().await;
}

#[tokio::test]
async fn retention_ttl_removes_a_failed_pod_after_its_time() {
    let Some(env) = env("ib-ttl").await else {
        return;
    };
    let op = Operator::start(&env);
    let mut b = git_build("ttl");
    b.spec.retention = Some(kiln_operator::crd::Retention {
        ttl_after_failed: Some("3s".into()),
        ..Default::default()
    });
    create_build(&env, &b).await;
    wait_pod(&env, "ttl-build-1-1").await;
    pod_running(&env.admin, &env.ns, "ttl-build-1-1", "executor").await;
    pod_terminated(&env.admin, &env.ns, "ttl-build-1-1", "executor", 1, "boom").await;
    wait_build(&env, "ttl", "phase Failed", |b| {
        phase(b) == Some(Phase::Failed)
    })
    .await;
    // Kept until its TTL has passed (the operator looks again then, with no other event)...
    assert!(pod_names(&env).await.contains(&"ttl-build-1-1".to_string()));
    // ...then deleted; the status keeps the result.
    eventually(30, "ttl-build-1-1 deleted after its TTL", || async {
        (!pod_names(&env).await.contains(&"ttl-build-1-1".to_string())).then_some(())
    })
    .await;
    assert_eq!(phase(&get_build(&env, "ttl").await), Some(Phase::Failed));
    op.stop().await;
}

/// ImageBuild reconciles the operator has finished so far.
fn reconciles(op: &Operator) -> u64 {
    ["success", "error"]
        .iter()
        .map(|r| {
            op.metrics
                .reconciles
                .get_or_create(&kiln_operator::metrics::ReconcileLabels {
                    controller: "ImageBuild",
                    result: r,
                })
                .get()
        })
        .sum()
}

/// Adds an annotation, which makes the operator reconcile the build once more, and waits until
/// that reconcile has run.
async fn poke(env: &Env, op: &Operator, name: &str, value: &str) {
    let before = reconciles(op);
    let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &env.ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "test.kiln.dev/poke": value } } })),
    )
    .await
    .unwrap_or_else(|e| panic!("annotating ImageBuild {name}: {e}"));
    eventually(30, "a reconcile after the annotation", || async {
        (reconciles(op) > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn retention_ttl_counts_on_the_operators_clock() {
    // A day-long TTL checked without waiting a day: the operator's clock is moved forward.
    let Some(env) = env("ib-ttl-clock").await else {
        return;
    };
    let cfg = test_config();
    let clock = cfg.clock.clone();
    let op = Operator::start_with(&env, cfg);
    let mut b = git_build("day");
    b.spec.retention = Some(kiln_operator::crd::Retention {
        ttl_after_succeeded: Some("24h".into()),
        ..Default::default()
    });
    create_build(&env, &b).await;
    succeed(&env, "day-build-1-1").await;
    wait_generation_succeeded(&env, "day", 1).await;
    // An hour later (and a reconcile that looks): kept.
    clock.advance(Duration::from_secs(3600));
    poke(&env, &op, "day", "1").await;
    assert!(pod_names(&env).await.contains(&"day-build-1-1".to_string()));
    // A day after the build ended: deleted at the next reconcile; the status keeps the result.
    clock.advance(Duration::from_secs(23 * 3600));
    poke(&env, &op, "day", "2").await;
    eventually(30, "day-build-1-1 deleted after its TTL", || async {
        (!pod_names(&env).await.contains(&"day-build-1-1".to_string())).then_some(())
    })
    .await;
    let built = get_build(&env, "day").await;
    assert_eq!(phase(&built), Some(Phase::Succeeded));
    assert!(built.status.unwrap().image.is_some());
    op.stop().await;
}

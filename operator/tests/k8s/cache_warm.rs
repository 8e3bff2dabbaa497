//! CacheWarm through the operator: a warm run, its refresh and deletion, and an ImageBuild
//! and a CacheWarm of one name each keeping their own Pods.

use super::*;

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
        let mut seen = created.resource_version().unwrap();
        loop {
            while let Some(change) = changes.try_next().await.unwrap() {
                if let WatchEvent::Modified(c) = change {
                    seen = c.resource_version().unwrap_or(seen);
                    if let Some(s) = c.status.filter(|s| s.phase == Some(Phase::Succeeded)) {
                        return s;
                    }
                }
            }
            // The API server may end a watch at any time: go on from the last version seen,
            // so no change in between is missed.
            changes = api.watch(&wp, &seen).await.unwrap().boxed();
        }
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
        ["NAME", "PHASE", "REASON", "IMAGES", "LAST", "WARM", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["base", "Running", "Warmed", "1"], "{table}");
    // Deleting the CacheWarm removes its warmer Pods.
    api.delete("base", &DeleteParams::default()).await.unwrap();
    eventually(60, "CacheWarm and its Pods gone", || async {
        let gone = api.get_opt("base").await.unwrap().is_none();
        (gone && pod_names(&env).await.is_empty()).then_some(())
    })
    .await;
    op.stop().await;
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
    // The build's status names its Pod before the warmer finishes, so the check below is about
    // the warm run leaving the build alone, not about how soon that status was written.
    wait_build(&env, "same", "status naming same-build-1-1", |b| {
        b.status.as_ref().and_then(|s| s.pod_name.as_deref()) == Some("same-build-1-1")
    })
    .await;
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

//! The build queue against the real API server: 3 namespaces x 10 ImageBuilds under limits of 4
//! builds in the cluster and 2 per namespace. The operator admits exactly the builds the queue's
//! rules (kiln_operator::image_build::queue, unit-tested for order and fairness) choose for the
//! state the API server holds, never more than the limits, reports every waiting build's place,
//! decides the same after a restart, and starts the next builds as runs end.

use std::collections::{BTreeMap, BTreeSet};

use kiln_operator::config::OperatorConfig;
use kiln_operator::image_build::queue::{self, Key, Limits};

use super::*;

const LIMITS: Limits = Limits {
    cluster: Some(4),
    per_namespace: Some(2),
};

fn start(
    env: &Env,
    namespaces: &[String],
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let cfg = OperatorConfig {
        max_concurrent_builds: LIMITS.cluster,
        max_concurrent_builds_per_namespace: LIMITS.per_namespace,
        ..test_config()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(kiln_operator::runtime::run(
        env.operator.clone(),
        cfg,
        kiln_operator::metrics::Metrics::new(),
        kiln_operator::runtime::Scope {
            namespaces: namespaces.to_vec(),
            instance: Some("test".into()),
        },
        async {
            let _ = rx.await;
        },
    ));
    (tx, task)
}

async fn stop(
    op: (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
) {
    let _ = op.0.send(());
    tokio::time::timeout(Duration::from_secs(60), op.1)
        .await
        .expect("operator stops within 60s")
        .expect("operator task");
}

/// Every ImageBuild of `namespaces` as the API server holds it.
async fn builds(env: &Env, namespaces: &[String]) -> Vec<ImageBuild> {
    let mut all = Vec::new();
    for ns in namespaces {
        let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), ns);
        all.extend(
            api.list(&ListParams::default())
                .await
                .expect("list ImageBuilds")
                .items,
        );
    }
    all
}

/// The builds whose executor Pod exists and has not ended (admitted, running), by namespace/name.
async fn started(env: &Env, namespaces: &[String]) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for ns in namespaces {
        let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
        for p in pods
            .list(&ListParams::default())
            .await
            .expect("list Pods")
            .items
        {
            if let Some(b) = p.labels().get(kiln_operator::LABEL_BUILD) {
                let ended = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                if p.metadata.deletion_timestamp.is_none() && !ended {
                    out.insert((ns.clone(), b.clone()));
                }
            }
        }
    }
    out
}

/// Waits until the operator holds `want` started and every other build Queued with the place the
/// rules give; returns the places.
async fn settled(env: &Env, namespaces: &[String], want: &BTreeSet<Key>) -> BTreeMap<Key, i32> {
    eventually(90, "the queue to settle", || async {
        let running = started(env, namespaces).await;
        if &running != want {
            return None;
        }
        let all = builds(env, namespaces).await;
        let mut places = BTreeMap::new();
        for b in &all {
            let key = (b.namespace().unwrap_or_default(), b.name_any());
            if want.contains(&key) {
                continue;
            }
            let s = b.status.as_ref()?;
            if s.phase != Some(Phase::Queued) {
                return None;
            }
            places.insert(key, s.queue_position?);
        }
        Some(places)
    })
    .await
}

/// Every build's phase, place and wait start, for a failure message.
async fn describe(env: &Env, namespaces: &[String]) -> String {
    builds(env, namespaces)
        .await
        .iter()
        .map(|b| {
            let s = b.status.clone().unwrap_or_default();
            format!(
                "{}/{} gen {:?} observed {:?} {:?} pod {:?} pos {:?} since {:?} msg {:?}",
                b.namespace().unwrap_or_default(),
                b.name_any(),
                b.metadata.generation,
                s.observed_generation,
                s.phase,
                s.pod_name,
                s.queue_position,
                s.queued_at,
                s.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the rules say for the API state with the run of `ended` over.
async fn model(env: &Env, namespaces: &[String], ended: &Key) -> queue::Schedule {
    let entries: Vec<queue::Entry> = builds(env, namespaces)
        .await
        .iter()
        .filter_map(queue::entry)
        .filter(|e| &e.key != ended)
        .collect();
    queue::schedule(&entries, &LIMITS)
}

#[tokio::test]
async fn three_namespaces_share_the_queue_fairly_and_a_restart_changes_nothing() {
    let Some(env) = env("queue").await else {
        return;
    };
    // The operator's log, shown if the test fails (the operator runs on this test's thread).
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter("kiln_operator=debug")
            .finish(),
    );
    let namespaces = vec![
        env.ns.clone(),
        format!("{}-b", env.ns),
        format!("{}-c", env.ns),
    ];
    for ns in &namespaces[1..] {
        create_namespace(&env.admin, ns).await;
    }
    // team a submits first, then b, then c: ten builds each.
    for ns in &namespaces {
        let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), ns);
        for i in 0..10 {
            api.create(&PostParams::default(), &git_build(&format!("b{i:02}")))
                .await
                .unwrap();
        }
    }
    let op = start(&env, &namespaces);
    // Four start (two namespaces can hold two, the cluster four): one or two from each
    // namespace, never three from one; the rest wait, each with its place.
    let t = std::time::Instant::now();
    let first = loop {
        let s = started(&env, &namespaces).await;
        if s.len() == 4 {
            break s;
        }
        if t.elapsed() > Duration::from_secs(90) {
            panic!(
                "after 90 s {} builds started, not 4: {s:?}\n{}",
                s.len(),
                describe(&env, &namespaces).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut per_ns: BTreeMap<&str, usize> = BTreeMap::new();
    for (ns, _) in &first {
        *per_ns.entry(ns.as_str()).or_default() += 1;
    }
    assert!(per_ns.values().all(|n| *n <= 2), "{first:?}");
    assert_eq!(per_ns.len(), 3, "every namespace got a slot: {first:?}");
    let places = settled(&env, &namespaces, &first).await;
    assert_eq!(places.len(), 26);
    let mut seen: Vec<i32> = places.values().copied().collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        26,
        "every waiting build has a place of its own: {places:?}"
    );
    // Within a namespace, first come first served: b00 before b01 ...
    for ns in &namespaces {
        let mine: Vec<(&String, &i32)> = places
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|((_, name), p)| (name, p))
            .collect();
        assert!(mine.windows(2).all(|w| w[0].1 < w[1].1), "{ns}: {mine:?}");
    }

    // A restart (a new leader) decides the same: no new Pod, the same places.
    stop(op).await;
    let op = start(&env, &namespaces);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(settled(&env, &namespaces, &first).await, places);

    // Runs end one by one (the oldest running first): each time, the next builds are exactly
    // the ones the rules choose for the state the API server holds, within the limits.
    let mut running = first;
    for step in 0..6 {
        let done = running.iter().next().cloned().unwrap();
        // What the rules say once it ended, from the state just before (nothing else changes).
        let expect = model(&env, &namespaces, &done).await;
        let pod = format!("{}-build-1-1", done.1);
        pod_running(&env.admin, &done.0, &pod, "executor").await;
        pod_terminated(&env.admin, &done.0, &pod, "executor", 0, OK_MSG).await;
        let api: Api<ImageBuild> = Api::namespaced(env.admin.clone(), &done.0);
        eventually(60, "the finished build Succeeded", || async {
            let b = api.get(&done.1).await.ok()?;
            (phase(&b) == Some(Phase::Succeeded)).then_some(())
        })
        .await;

        let want: BTreeSet<Key> = running
            .iter()
            .filter(|k| **k != done)
            .cloned()
            .chain(expect.admitted.iter().cloned())
            .collect();
        assert!(want.len() <= 4, "step {step}: {want:?}");
        // Promptly: the end of a run wakes the next builds (not the 30 s recheck of places).
        let t = std::time::Instant::now();
        let mut now_running = BTreeSet::new();
        while t.elapsed() < Duration::from_secs(20) {
            now_running = started(&env, &namespaces).await;
            now_running.remove(&done);
            if now_running == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if now_running != want {
            let states: Vec<String> = builds(&env, &namespaces)
                .await
                .iter()
                .map(|b| {
                    let s = b.status.clone().unwrap_or_default();
                    format!(
                        "{}/{} {:?} pos {:?} since {:?}",
                        b.namespace().unwrap_or_default(),
                        b.name_any(),
                        s.phase,
                        s.queue_position,
                        s.queued_at
                    )
                })
                .collect();
            panic!(
                "step {step}: started {now_running:?}, want {want:?} (model admitted {:?});\n{}",
                expect.admitted,
                states.join("\n")
            );
        }
        eprintln!(
            "queue step {step}: the next build started {:?} after the run ended",
            t.elapsed()
        );
        running = now_running;
    }
    stop(op).await;
}

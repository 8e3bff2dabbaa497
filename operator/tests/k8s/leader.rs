//! Leader election: the Lease protocol of `LeaseLock`, and two real `kiln-operator` processes
//! with one leader and a graceful handover on SIGTERM.

use super::*;

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
    // The leader counts the build after writing its status and Event: wait for the count.
    let metrics = eventually(
        60,
        "kiln_builds_succeeded_total 1 on the leader",
        || async {
            let (_, m) = replicas[li].get("/metrics").await?;
            m.contains("kiln_builds_succeeded_total 1").then_some(m)
        },
    )
    .await;
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

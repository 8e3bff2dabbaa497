//! End to end: `kubectl apply` of ImageBuilds against a real API server, the operator (as the
//! chart's ServiceAccount), the node stand-in running the executor Pods with podman, and the
//! local registry. Needs the environment `scripts/e2e.sh` prepares; fails (never skips) without
//! it, unless `KILN_SKIP_E2E=1`.
//!
//! The scenarios share one operator and one node stand-in and run in order; each is bounded in
//! time and all of them run even when an earlier one fails, so one run reports every failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kiln_e2e::kubectl::Kubectl;
use kiln_e2e::node::{Node, NodeOptions};
use kiln_e2e::{tools, wait_for};
use serde_json::Value;

const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

struct Env {
    kubectl: Kubectl,
    registry: String,
    run_id: String,
    base: String,
    node: Node,
    _operator: Operator,
    work: PathBuf,
}

/// The operator process; killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(var: &str) -> anyhow::Result<String> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{var} is not set: run the end-to-end tests with scripts/e2e.sh"))
}

fn setup() -> anyhow::Result<Env> {
    let kubeconfig = need("KUBECONFIG")?;
    let op_kubeconfig = need("KILN_E2E_OPERATOR_KUBECONFIG")?;
    let operator_bin = need("KILN_E2E_OPERATOR_BIN")?;
    let executor_image = need("KILN_E2E_EXECUTOR_IMAGE")?;
    let warmer_image =
        std::env::var("KILN_E2E_WARMER_IMAGE").unwrap_or_else(|_| executor_image.clone());
    let namespace = std::env::var("KILN_E2E_NAMESPACE").unwrap_or_else(|_| "kiln-e2e".into());
    let registry = std::env::var("KILN_E2E_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let extra_args: Vec<String> = std::env::var("KILN_E2E_NODE_EXTRA_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let run_id = format!("{}", chrono::Utc::now().timestamp());
    let work = std::env::var("KILN_E2E_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("kiln-e2e"))
        .join(&run_id);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {work:?}"))?;
    let kubectl = Kubectl::new(&kubeconfig, &namespace);
    kubectl
        .run(&["get", "crd", "imagebuilds.kiln.dev"], None)
        .context("the ImageBuild CRD is not installed (scripts/e2e.sh applies the chart's)")?;

    // A private copy of the base image: the warm-cache scenario (run last) deletes it from the registry, and the
    // shared kiln-test images belong to other tests.
    let base = format!("{registry}/kiln-e2e/base-{run_id}:latest");
    tools::run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{registry}/kiln-test/busybox:latest"),
            &format!("docker://{base}"),
        ],
    )
    .context("copying the busybox base image (scripts/base-images.sh pushes it)")?;

    let log = std::fs::File::create(work.join("operator.log"))?;
    let child = Command::new(&operator_bin)
        .env("KUBECONFIG", &op_kubeconfig)
        .env("RUST_LOG", "info,kiln_operator=debug")
        .args([
            &format!("--executor-image={executor_image}"),
            &format!("--warmer-image={warmer_image}"),
            // The test registry speaks plain HTTP, as an in-cluster registry often does.
            &format!("--insecure-registry={registry}"),
            &format!("--watch-namespace={namespace}"),
            "--no-leader-election",
            "--metrics-addr=127.0.0.1:0",
            "--retry-backoff-seconds=1",
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {operator_bin}"))?;
    let operator = Operator(child);
    let node = Node::start(
        kubectl.clone(),
        &work,
        NodeOptions {
            extra_args,
            container_timeout: BUILD_TIMEOUT,
        },
    )?;
    eprintln!("e2e: run {run_id}, work dir {}", work.display());
    Ok(Env {
        kubectl,
        registry,
        run_id,
        base,
        node,
        _operator: operator,
        work,
    })
}

impl Env {
    fn dest(&self, repo: &str) -> String {
        format!("{}/kiln-e2e/{repo}:{}", self.registry, self.run_id)
    }

    /// A ConfigMap context and an ImageBuild of it, applied with kubectl.
    fn apply_build(
        &self,
        name: &str,
        dockerfile: &str,
        files: &[(&str, &str)],
        extra_spec: Value,
    ) -> anyhow::Result<String> {
        // The base is written in; build args are left to what the scenario tests.
        let dockerfile = dockerfile.replace("FROM $BASE", &format!("FROM {}", self.base));
        let mut data = serde_json::Map::new();
        data.insert("Dockerfile".into(), dockerfile.into());
        for (k, v) in files {
            data.insert((*k).into(), (*v).into());
        }
        let dest = self.dest(name);
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-context")},
            "data": data,
        });
        let mut spec = serde_json::json!({
            "source": {"configMap": {"name": format!("{name}-context")}},
            "destinations": [dest],
        });
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(extra.clone());
        }
        let ib = serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name}, "spec": spec,
        });
        self.kubectl.apply(&cm.to_string())?;
        self.kubectl.apply(&ib.to_string())?;
        Ok(dest)
    }

    /// Waits until the build's status reports a final phase for `generation`.
    fn wait_final(&self, name: &str, generation: i64) -> anyhow::Result<Value> {
        wait_for(
            &format!("ImageBuild {name} generation {generation} to finish"),
            BUILD_TIMEOUT,
            || {
                let ib = self
                    .kubectl
                    .get("imagebuild", Some(name))?
                    .with_context(|| format!("ImageBuild {name} is gone"))?;
                let st = &ib["status"];
                let phase = st["phase"].as_str().unwrap_or("");
                let done = st["observedGeneration"].as_i64() == Some(generation)
                    && matches!(phase, "Succeeded" | "Failed");
                Ok((done.then(|| st.clone()), st.to_string()))
            },
        )
        .map_err(|e| e.context(self.diagnostics()))
    }

    fn diagnostics(&self) -> String {
        let op = std::fs::read_to_string(self.work.join("operator.log")).unwrap_or_default();
        let tail: Vec<&str> = op.lines().rev().take(20).collect();
        format!(
            "node stand-in:\n{}\noperator log tail:\n{}",
            self.node.events(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn pods_of(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let out = self.kubectl.run(
            &[
                "get",
                "pods",
                "-l",
                &format!("kiln.dev/image-build={name}"),
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        )?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }
}

const APP_DOCKERFILE: &str = "\
FROM $BASE\n\
ARG GREETING=hello\n\
COPY greet.sh /app/greet.sh\n\
RUN chmod 0755 /app/greet.sh && echo \"$GREETING\" > /app/greeting\n\
CMD [\"/app/greet.sh\"]\n";

const GREET_SH: &str = "#!/bin/sh\necho \"kiln-e2e says $(cat /app/greeting)\"\n";

/// The build succeeded, its digest is the one the registry serves, and the image prints
/// `expected` under podman. Returns the digest.
fn check_pushed(status: &Value, dest: &str, expected: &str) -> anyhow::Result<String> {
    ensure!(
        status["phase"] == "Succeeded",
        "phase is {} (message: {})",
        status["phase"],
        status["message"]
    );
    let digest = status["image"]["digest"]
        .as_str()
        .context("status.image.digest is missing")?
        .to_string();
    let served = tools::registry_digest(dest)?;
    ensure!(
        digest == served,
        "status.image.digest {digest} but the registry serves {served} for {dest}"
    );
    let refs = status["image"]["references"].to_string();
    ensure!(
        refs.contains(&digest),
        "status.image.references {refs} do not name {digest}"
    );
    let out = tools::podman_run(dest, &[])?;
    ensure!(
        out.contains(expected),
        "podman run {dest} printed {out:?}, expected {expected:?}"
    );
    Ok(digest)
}

/// (1) ConfigMap context → Succeeded, digest = registry's, the image runs; then (3) a new build
/// arg → a new generation, a new build and a new digest.
fn scenario_build_and_rebuild(env: &Env) -> anyhow::Result<()> {
    let name = &format!("hello-{}", env.run_id);
    let args = serde_json::json!({});
    let dest = env.apply_build(name, APP_DOCKERFILE, &[("greet.sh", GREET_SH)], args)?;
    let st = env.wait_final(name, 1)?;
    let first = check_pushed(&st, &dest, "kiln-e2e says hello").context("first build")?;
    eprintln!("e2e: (1) built {dest}@{first}");

    let args = serde_json::json!({"buildArgs": {"GREETING": "bonjour"}});
    env.apply_build(name, APP_DOCKERFILE, &[("greet.sh", GREET_SH)], args)?;
    let st = env.wait_final(name, 2)?;
    let second = check_pushed(&st, &dest, "kiln-e2e says bonjour").context("rebuild")?;
    ensure!(
        first != second,
        "the rebuild with GREETING=bonjour kept the digest {first}"
    );
    let pods = env.pods_of(name)?;
    ensure!(
        pods.iter().any(|p| p.contains("-build-2-")),
        "no Pod of generation 2 among {pods:?}"
    );
    eprintln!("e2e: (3) rebuilt {dest}@{second}");
    Ok(())
}

/// (2) A failing RUN → Failed, with the executor's error in status.message.
fn scenario_failing_run(env: &Env) -> anyhow::Result<()> {
    let name = &format!("fails-{}", env.run_id);
    let df = "FROM $BASE\nRUN echo kiln-e2e-before-failure && exit 3\n";
    let args = serde_json::json!({});
    env.apply_build(name, df, &[], args)?;
    let st = env.wait_final(name, 1)?;
    ensure!(
        st["phase"] == "Failed",
        "phase {} for a RUN that exits 3",
        st["phase"]
    );
    let msg = st["message"].as_str().unwrap_or("");
    ensure!(
        msg.contains("exited with code 3"),
        "status.message does not carry the executor's error: {msg:?}"
    );
    eprintln!(
        "e2e: (2) failed as expected: {}",
        msg.lines().last().unwrap_or("")
    );
    Ok(())
}

/// (4) Deleting an ImageBuild whose build is running removes its Pod (and the node stand-in
/// kills the container, as a kubelet would).
fn scenario_delete(env: &Env) -> anyhow::Result<()> {
    let name = &format!("slow-{}", env.run_id);
    let df = "FROM $BASE\nRUN sleep 600\n";
    let args = serde_json::json!({});
    env.apply_build(name, df, &[], args)?;
    wait_for(
        "the slow build to be Running",
        Duration::from_secs(120),
        || {
            let ib = env.kubectl.get("imagebuild", Some(name))?;
            let phase = ib
                .as_ref()
                .and_then(|i| i["status"]["phase"].as_str())
                .unwrap_or("")
                .to_string();
            Ok(((phase == "Running").then_some(()), phase))
        },
    )?;
    ensure!(!env.pods_of(name)?.is_empty(), "Running but no Pod");
    env.kubectl.delete("imagebuild", name)?;
    wait_for(
        "the ImageBuild and its Pods to be gone",
        Duration::from_secs(60),
        || {
            let ib = env.kubectl.get("imagebuild", Some(name))?;
            let pods = env.pods_of(name)?;
            Ok((
                (ib.is_none() && pods.is_empty()).then_some(()),
                format!("imagebuild present: {}, pods: {pods:?}", ib.is_some()),
            ))
        },
    )?;
    let prefix = format!("kiln-e2e-{}-{name}-", env.kubectl.namespace);
    wait_for(
        "the node stand-in to remove the killed container",
        Duration::from_secs(30),
        || {
            let mut args = tools::PODMAN_GLOBAL.to_vec();
            args.extend(["ps", "-a", "--format", "{{.Names}}"]);
            let names = tools::run("podman", &args)?;
            let left: Vec<&str> = names.lines().filter(|n| n.starts_with(&prefix)).collect();
            Ok((
                left.is_empty().then_some(()),
                format!("containers left: {left:?}"),
            ))
        },
    )?;
    eprintln!("e2e: (4) deleting the ImageBuild removed its Pod and its container");
    Ok(())
}

/// (5) A CacheWarm fills a PVC directory; an ImageBuild with `cache.warmClaim` then builds
/// with the base image deleted from the registry.
fn scenario_warm_cache(env: &Env) -> anyhow::Result<()> {
    let claim = "kiln-cache";
    let warm = &format!("warm-{}", env.run_id);
    let cw = serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "CacheWarm",
        "metadata": {"name": warm},
        "spec": {"images": [env.base], "claim": claim},
    });
    env.kubectl.apply(&cw.to_string())?;
    wait_for("the CacheWarm to succeed", BUILD_TIMEOUT, || {
        let cw = env.kubectl.get("cachewarm", Some(warm))?;
        let st = cw.map(|c| c["status"].clone()).unwrap_or_default();
        match st["phase"].as_str() {
            Some("Failed") => bail!("CacheWarm failed: {st}"),
            Some("Succeeded") | Some("Ready") => Ok((Some(()), st.to_string())),
            _ => Ok((None, st.to_string())),
        }
    })
    .map_err(|e| e.context(env.diagnostics()))?;
    let files = std::fs::read_dir(env.node.claim_dir(claim))
        .map(|d| d.count())
        .unwrap_or(0);
    ensure!(files > 0, "the warmed claim directory is empty");

    tools::registry_delete(&env.base).context("deleting the base image")?;
    ensure!(
        tools::registry_digest(&env.base).is_err(),
        "the base image is still served after skopeo delete"
    );
    let name = &format!("cached-{}", env.run_id);
    let args = serde_json::json!({
        "buildArgs": {"GREETING": "from-cache"},
        "cache": {"warmClaim": claim},
    });
    let dest = env.apply_build(name, APP_DOCKERFILE, &[("greet.sh", GREET_SH)], args)?;
    let st = env.wait_final(name, 1)?;
    check_pushed(&st, &dest, "kiln-e2e says from-cache")?;
    eprintln!("e2e: (5) built from the warmed cache with the base deleted");
    Ok(())
}

/// (6) A build secret from a Kubernetes Secret reaches its RUN step (the image holds the
/// value's SHA-256, computed in the step) and nothing else: not the pushed layers, not the
/// config, not the status.
fn scenario_build_secret(env: &Env) -> anyhow::Result<()> {
    let name = &format!("secret-{}", env.run_id);
    let value = format!("kiln-e2e-build-secret-{}", env.run_id);
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{name}-npm")},
        "stringData": {".npmrc": value, "other": "not mounted"},
    });
    env.kubectl.apply(&secret.to_string())?;
    // env= works whether or not the executor's steps get private mount namespaces.
    let df = "FROM $BASE\n\
        RUN --mount=type=secret,id=npmrc,env=NPMRC,required \
        printf %s \"$NPMRC\" | sha256sum | cut -d\" \" -f1 > /secret.sha256\n\
        CMD [\"cat\", \"/secret.sha256\"]\n";
    let args = serde_json::json!({
        "secrets": [{"id": "npmrc", "secretKeyRef": {"name": format!("{name}-npm"), "key": ".npmrc"}}],
    });
    let dest = env.apply_build(name, df, &[], args)?;
    let st = env.wait_final(name, 1)?;
    let want = tools::run(
        "sh",
        &[
            "-c",
            &format!("printf %s '{value}' | sha256sum | cut -d' ' -f1"),
        ],
    )?;
    check_pushed(&st, &dest, want.trim()).context("the RUN step did not see the secret")?;
    ensure!(
        !st.to_string().contains(&value),
        "the status holds the secret: {st}"
    );
    let dir = env.work.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let layout = dir.join("layout");
    kiln_testkit::skopeo_fetch(&dest, &layout, "built")?;
    let found = tools::run(
        "sh",
        &[
            "-c",
            "for b in \"$1\"/blobs/sha256/*; do zcat -f \"$b\"; done | grep -cF -e \"$2\" || true",
            "sh",
            &layout.display().to_string(),
            &value,
        ],
    )?;
    ensure!(
        found.trim() == "0",
        "the pushed image (layers, config or manifest) holds the secret value {found} time(s)"
    );
    let pod = env.kubectl.run(
        &[
            "get",
            "pods",
            "-l",
            &format!("kiln.dev/image-build={name}"),
            "-o",
            "json",
        ],
        None,
    )?;
    ensure!(!pod.contains(&value), "the Pod spec holds the secret value");
    ensure!(
        pod.contains("--secret=id=npmrc,src=/kiln/secrets/npmrc/value"),
        "the Pod does not pass the secret file: {pod}"
    );
    eprintln!("e2e: (6) the build secret reached its step and not the image {dest}");
    Ok(())
}

#[test]
fn operator_builds_images_end_to_end() {
    if std::env::var("KILN_SKIP_E2E").as_deref() == Ok("1") {
        eprintln!("KILN_SKIP_E2E=1: end-to-end tests skipped");
        return;
    }
    type Scenario = fn(&Env) -> anyhow::Result<()>;
    let scenarios: [(&str, Scenario); 5] = [
        ("build-and-rebuild", scenario_build_and_rebuild),
        ("failing-run", scenario_failing_run),
        ("delete", scenario_delete),
        ("build-secret", scenario_build_secret),
        // Last: it deletes the base image from the registry, which the others pull.
        ("warm-cache", scenario_warm_cache),
    ];
    // Checked before the set-up: an unknown name, or a list naming none, fails the test instead
    // of running nothing and passing.
    let names: Vec<&str> = scenarios.iter().map(|(n, _)| *n).collect();
    let only = kiln_testkit::select_from_env("KILN_E2E_SCENARIOS", &names);
    let env = setup().expect("end-to-end setup");
    let mut failures = Vec::new();
    for (name, f) in scenarios {
        if !only.iter().any(|s| s == name) {
            continue;
        }
        let start = Instant::now();
        match f(&env) {
            Ok(()) => eprintln!("e2e: PASS {name} in {:.0?}", start.elapsed()),
            Err(e) => {
                eprintln!("e2e: FAIL {name} in {:.0?}: {e:#}", start.elapsed());
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

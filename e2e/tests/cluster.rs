//! End to end on a real single-node cluster (scripts/k8s/cluster.sh: kubelet, containerd, runc),
//! with the operator installed by `helm install charts/kiln` from images Kiln built: ImageBuilds
//! are applied with kubectl, their executor Pods run under the real kubelet, and every pushed
//! image is run as a Pod on the same node. Run by `bash scripts/demo.sh --cluster --e2e` (CI does),
//! which prepares the environment; fails (never skips) without it, unless `KILN_SKIP_E2E=1`.
//!
//! Environment: `KUBECONFIG` (an admin of the cluster), `KILN_E2E_POD_REGISTRY` (the registry as
//! Pods reach it), `KILN_E2E_REGISTRY` (the same registry as this machine reaches it),
//! `KILN_E2E_PV_ROOT` (a host directory for the test's hostPath PersistentVolumes).
//! Each scenario works in a namespace of its own; all run even when one fails.

#[path = "cluster/examples.rs"]
mod examples;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use kiln_e2e::kubectl::Kubectl;
use kiln_e2e::{tools, wait_for};
use serde_json::{json, Value};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

struct Env {
    kubeconfig: String,
    /// The registry as Pods reach it (executor destinations and FROM lines).
    pod_registry: String,
    /// The same registry from this machine (digests; images the node pulls by this name too).
    registry: String,
    /// Where the test's PersistentVolumes keep their files (host directories).
    pv_root: String,
    run_id: String,
}

fn need(var: &str) -> anyhow::Result<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty()).with_context(|| {
        format!("{var} is not set: run the cluster end-to-end tests with `bash scripts/demo.sh --cluster --e2e`")
    })
}

impl Env {
    fn from_env() -> anyhow::Result<Env> {
        Ok(Env {
            kubeconfig: need("KUBECONFIG")?,
            pod_registry: need("KILN_E2E_POD_REGISTRY")?,
            registry: need("KILN_E2E_REGISTRY")?,
            pv_root: need("KILN_E2E_PV_ROOT")?,
            run_id: format!("{}", std::process::id()),
        })
    }

    /// A fresh namespace for one scenario.
    fn namespace(&self, scenario: &str) -> anyhow::Result<Kubectl> {
        let ns = format!("e2e-{scenario}-{}", self.run_id);
        Kubectl::new(&self.kubeconfig, "default").run(&["create", "namespace", &ns], None)?;
        Ok(Kubectl::new(&self.kubeconfig, &ns))
    }

    /// A ConfigMap context and an ImageBuild of it; returns the destination as Pods name it.
    fn apply_build(
        &self,
        k: &Kubectl,
        name: &str,
        dockerfile: &str,
        extra_spec: Value,
    ) -> anyhow::Result<String> {
        let dockerfile = dockerfile.replace(
            "FROM $BASE",
            &format!("FROM {}/kiln-test/busybox:latest", self.pod_registry),
        );
        let dest = format!("{}/kiln-e2e/{name}:{}", self.pod_registry, self.run_id);
        k.apply(
            &json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("{name}-context")},
                "data": {"Dockerfile": dockerfile},
            })
            .to_string(),
        )?;
        let mut spec = json!({
            "source": {"configMap": {"name": format!("{name}-context")}},
            "destinations": [dest],
        });
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(extra.clone());
        }
        k.apply(
            &json!({
                "apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": name}, "spec": spec,
            })
            .to_string(),
        )?;
        Ok(dest)
    }

    /// The address Pods reach this machine at: the pod registry's host (scripts/k8s/cluster.sh
    /// forwards the registry from the host end of the node's network namespace).
    fn node_address(&self) -> &str {
        self.pod_registry
            .rsplit_once(':')
            .map_or(self.pod_registry.as_str(), |(h, _)| h)
    }

    /// The host-side name of an image pushed to `dest` (a Pod-side name).
    fn host_ref(&self, dest: &str) -> String {
        dest.replacen(&self.pod_registry, &self.registry, 1)
    }
}

/// Waits until the ImageBuild reports a final phase for `generation`; returns its status.
fn wait_final(k: &Kubectl, name: &str, generation: i64) -> anyhow::Result<Value> {
    wait_for(
        &format!("ImageBuild {name} generation {generation} to finish"),
        BUILD_TIMEOUT,
        || {
            let ib = k
                .get("imagebuild", Some(name))?
                .context("the ImageBuild is gone")?;
            let st = &ib["status"];
            let phase = st["phase"].as_str().unwrap_or("");
            let done = st["observedGeneration"].as_i64() == Some(generation)
                && matches!(phase, "Succeeded" | "Failed");
            Ok((done.then(|| st.clone()), st.to_string()))
        },
    )
    .map_err(|e| e.context(pods_summary(k)))
}

fn pods_summary(k: &Kubectl) -> String {
    k.run(&["get", "pods", "-o", "wide"], None)
        .unwrap_or_else(|e| format!("(cannot list Pods: {e:#})"))
}

fn pods_of(k: &Kubectl, name: &str) -> anyhow::Result<Vec<Value>> {
    let out = k.run(
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
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Waits until an executor Pod of ImageBuild `name` runs.
fn wait_running(k: &Kubectl, name: &str) -> anyhow::Result<()> {
    wait_for(&format!("the build {name} to run"), BUILD_TIMEOUT, || {
        let pods = pods_of(k, name)?;
        let running = pods.iter().any(|p| p["status"]["phase"] == "Running");
        Ok((running.then_some(()), format!("{} Pod(s)", pods.len())))
    })
}

/// The reasons the kubelet gives for the containers of `pods` in `state` (`waiting`,
/// `terminated`).
fn container_reasons(pods: &[Value], state: &str) -> Vec<String> {
    pods.iter()
        .flat_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["state"][state]["reason"].as_str().map(str::to_string))
        .collect()
}

/// Runs `image` as a Pod on the node and returns what it printed.
fn run_as_pod(k: &Kubectl, pod: &str, image: &str) -> anyhow::Result<String> {
    k.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "run", "image": image}]},
        })
        .to_string(),
    )?;
    wait_for(
        &format!("Pod {pod} to finish"),
        Duration::from_secs(120),
        || {
            let p = k.get("pod", Some(pod))?.context("the Pod is gone")?;
            let phase = p["status"]["phase"].as_str().unwrap_or("").to_string();
            Ok((
                matches!(phase.as_str(), "Succeeded" | "Failed").then_some(()),
                p["status"].to_string(),
            ))
        },
    )?;
    k.run(&["logs", pod], None)
}

/// The build succeeded, its digest is the registry's, and the image prints `expected` when run
/// as a Pod on the node. Returns the digest.
fn check_pushed(
    env: &Env,
    k: &Kubectl,
    st: &Value,
    dest: &str,
    expected: &str,
) -> anyhow::Result<String> {
    let (digest, out) = pushed_output(env, k, st, dest)?;
    ensure!(
        out.trim() == expected,
        "the image printed {out:?} as a Pod, expected {expected:?}"
    );
    Ok(digest)
}

/// The build succeeded and its digest is the registry's for `dest`; returns the digest and what
/// the image printed when run as a Pod on the node.
fn pushed_output(
    env: &Env,
    k: &Kubectl,
    st: &Value,
    dest: &str,
) -> anyhow::Result<(String, String)> {
    ensure!(
        st["phase"] == "Succeeded",
        "phase {} (message: {})",
        st["phase"],
        st["message"]
    );
    let digest = st["image"]["digest"]
        .as_str()
        .context("status.image.digest is missing")?
        .to_string();
    let host = env.host_ref(dest);
    let served = tools::registry_digest(&host)?;
    ensure!(
        digest == served,
        "status says {digest}, the registry serves {served} for {host}"
    );
    let repo = host.rsplit_once(':').map(|(r, _)| r).unwrap_or(&host);
    let pod = format!("run-{}", &digest[7..19]);
    let out = run_as_pod(k, &pod, &format!("{repo}@{digest}"))?;
    Ok((digest, out))
}

const GREET: &str = "FROM $BASE\nARG GREETING=hello\nRUN echo \"kiln-e2e says $GREETING\" > /greeting\nCMD [\"cat\", \"/greeting\"]\n";

/// A ConfigMap build under the real kubelet; its image runs as a Pod; a new build arg → a new
/// generation, Pod and digest.
fn scenario_build_and_rebuild(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("build")?;
    let dest = env.apply_build(&k, "hello", GREET, json!({}))?;
    let st = wait_final(&k, "hello", 1)?;
    let first = check_pushed(env, &k, &st, &dest, "kiln-e2e says hello")?;
    env.apply_build(
        &k,
        "hello",
        GREET,
        json!({"buildArgs": {"GREETING": "bonjour"}}),
    )?;
    let st = wait_final(&k, "hello", 2)?;
    let second = check_pushed(env, &k, &st, &dest, "kiln-e2e says bonjour")?;
    ensure!(first != second, "the rebuild kept the digest {first}");
    Ok(())
}

/// `spec.platforms`: one ImageBuild for linux/amd64 and linux/arm64 with a builder stage on the
/// build platform; the status digest is the image index the registry serves under the tag, which
/// names both platforms, and the node's runtime picks its own platform's image from it.
fn scenario_multi_platform(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("platforms")?;
    let df = format!(
        "FROM --platform=$BUILDPLATFORM {0}/kiln-test/busybox:latest AS tools\n\
         RUN echo \"tools built on $(uname -m)\" > /tools\n\
         FROM {0}/kiln-test/busybox:multiplatform\n\
         ARG TARGETARCH\n\
         ENV BUILT_FOR=$TARGETARCH\n\
         COPY --from=tools /tools /tools\n\
         CMD [\"sh\", \"-c\", \"cat /tools; echo for $BUILT_FOR\"]\n",
        env.pod_registry
    );
    let spec = json!({"platforms": ["linux/amd64", "linux/arm64"]});
    let dest = env.apply_build(&k, "multi", &df, spec)?;
    let st = wait_final(&k, "multi", 1)?;
    let (digest, out) = pushed_output(env, &k, &st, &dest)?;
    let machine = tools::run("uname", &["-m"])?;
    let arch = if machine.trim() == "x86_64" {
        "amd64"
    } else {
        "arm64"
    };
    ensure!(
        out.trim() == format!("tools built on {}\nfor {arch}", machine.trim()),
        "the image printed {out:?} as a Pod"
    );
    let raw = tools::run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}", env.host_ref(&dest)),
        ],
    )?;
    let index: Value = serde_json::from_str(&raw)?;
    ensure!(
        index["mediaType"] == "application/vnd.oci.image.index.v1+json",
        "{digest} is not an image index: {raw}"
    );
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .context("no manifests")?
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str())
        .collect();
    ensure!(archs == ["amd64", "arm64"], "index platforms {archs:?}");
    // The builder stage ran once for both platforms (the executor's log, from the kubelet).
    let pods = pods_of(&k, "multi")?;
    let pod = pods
        .first()
        .and_then(|p| p["metadata"]["name"].as_str())
        .context("no executor Pod left")?;
    let log = k.run(&["logs", pod], None)?;
    ensure!(
        log.matches("(tools)] step 1/1 done").count() == 1
            && log.contains("(tools)] the same for every platform: built once, by the build for"),
        "the tools stage did not run exactly once:\n{log}"
    );
    Ok(())
}

/// A failing RUN: Failed, the executor's error in status.message (the real termination message).
fn scenario_failing_run(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("fails")?;
    let df = "FROM $BASE\nRUN echo kiln-e2e-before-failure && exit 3\n";
    env.apply_build(&k, "fails", df, json!({}))?;
    let st = wait_final(&k, "fails", 1)?;
    ensure!(st["phase"] == "Failed", "phase {}", st["phase"]);
    let msg = st["message"].as_str().unwrap_or("");
    ensure!(
        msg.contains("exited with code 3"),
        "status.message: {msg:?}"
    );
    Ok(())
}

/// A build secret from a Kubernetes Secret, mounted by the real kubelet, reaches the step (the
/// image holds its SHA-256) and not the status.
fn scenario_build_secret(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("secret")?;
    let value = format!("kiln-e2e-secret-{}", env.run_id);
    k.apply(
        &json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "npm"},
            "stringData": {".npmrc": value},
        })
        .to_string(),
    )?;
    let df = "FROM $BASE\n\
        RUN --mount=type=secret,id=npmrc,env=NPMRC,required \
        printf %s \"$NPMRC\" | sha256sum | cut -d\" \" -f1 > /secret.sha256\n\
        CMD [\"cat\", \"/secret.sha256\"]\n";
    let spec =
        json!({"secrets": [{"id": "npmrc", "secretKeyRef": {"name": "npm", "key": ".npmrc"}}]});
    let dest = env.apply_build(&k, "secret", df, spec)?;
    let st = wait_final(&k, "secret", 1)?;
    let want = tools::run(
        "sh",
        &[
            "-c",
            &format!("printf %s '{value}' | sha256sum | cut -d' ' -f1"),
        ],
    )?;
    check_pushed(env, &k, &st, &dest, want.trim())?;
    ensure!(
        !st.to_string().contains(&value),
        "the status holds the secret"
    );
    Ok(())
}

/// spec.timeout, counted from the executor Pod's creation: the operator deletes the Pod at the
/// deadline (or the real kubelet stops it first by its activeDeadlineSeconds, DeadlineExceeded)
/// and the ImageBuild fails with reason Timeout.
fn scenario_timeout(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("timeout")?;
    env.apply_build(
        &k,
        "slow",
        "FROM $BASE\nRUN sleep 600\n",
        json!({"timeout": "15s"}),
    )?;
    let st = wait_final(&k, "slow", 1)?;
    ensure!(st["phase"] == "Failed", "phase {}", st["phase"]);
    let msg = st["message"].as_str().unwrap_or("");
    ensure!(
        msg.contains("exceeded spec.timeout"),
        "status.message: {msg:?}"
    );
    ensure!(
        ready_reason(&st) == "Timeout",
        "reason {}",
        ready_reason(&st)
    );
    wait_for(
        "the executor Pod to be gone or stopped by its deadline",
        Duration::from_secs(60),
        || {
            let pods = pods_of(&k, "slow")?;
            let done = pods.iter().all(|p| {
                p["status"]["reason"] == "DeadlineExceeded"
                    || p["metadata"]["deletionTimestamp"].is_string()
            });
            Ok((done.then_some(()), format!("{pods:?}")))
        },
    )
}

/// The reason of the `Ready` condition in a status (what the Reason printer column shows).
fn ready_reason(st: &Value) -> String {
    st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["reason"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Deleting an ImageBuild mid-build: its Pod is gone (killed by the kubelet) and the finalizer
/// released, so the ImageBuild is gone too.
fn scenario_delete(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("delete")?;
    env.apply_build(&k, "slow", "FROM $BASE\nRUN sleep 600\n", json!({}))?;
    wait_running(&k, "slow")?;
    k.delete("imagebuild", "slow")?;
    wait_for(
        "the ImageBuild and its Pods to be gone",
        Duration::from_secs(120),
        || {
            let ib = k.get("imagebuild", Some("slow"))?;
            let pods = pods_of(&k, "slow")?;
            Ok((
                (ib.is_none() && pods.is_empty()).then_some(()),
                format!(
                    "imagebuild present: {}, {} Pod(s)",
                    ib.is_some(),
                    pods.len()
                ),
            ))
        },
    )
}

/// An executor Pod over its memory limit is OOM-killed by the kernel, as the real kubelet
/// reports it in the Pod's container status; the build fails.
fn scenario_oom(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("oom")?;
    // The step holds 256 MiB in a shell variable, far above the limit.
    let df = "FROM $BASE\nRUN x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo ${#x}\n";
    let spec = json!({"resources": {"limits": {"memory": "96Mi"}, "requests": {"memory": "96Mi"}}});
    env.apply_build(&k, "oom", df, spec)?;
    let st = wait_final(&k, "oom", 1)?;
    ensure!(st["phase"] == "Failed", "phase {}", st["phase"]);
    let reasons = container_reasons(&pods_of(&k, "oom")?, "terminated");
    ensure!(
        reasons.iter().any(|r| r == "OOMKilled"),
        "no executor container OOMKilled: {reasons:?}"
    );
    ensure!(
        ready_reason(&st) == "OOMKilled",
        "the ImageBuild says {} ({}), not OOMKilled",
        ready_reason(&st),
        st["message"]
    );
    ensure!(
        st["message"].as_str().unwrap_or("").contains("96Mi"),
        "the message does not name the limit: {}",
        st["message"]
    );
    Ok(())
}

/// A build writing more than its ephemeral-storage limit: the real kubelet evicts the executor
/// Pod, and the ImageBuild fails with reason Evicted and the kubelet's message.
fn scenario_evicted(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("evicted")?;
    let df = "FROM $BASE
RUN head -c 67108864 /dev/zero > /big && sleep 300
";
    let spec = json!({"resources": {"limits": {"ephemeral-storage": "16Mi"}}});
    env.apply_build(&k, "big", df, spec)?;
    let st = wait_final(&k, "big", 1)?;
    ensure!(st["phase"] == "Failed", "phase {}", st["phase"]);
    ensure!(
        ready_reason(&st) == "Evicted",
        "the ImageBuild says {} ({}), not Evicted; Pods: {}",
        ready_reason(&st),
        st["message"],
        pods_summary(&k)
    );
    let pods = pods_of(&k, "big")?;
    ensure!(
        pods.iter().any(|p| p["status"]["reason"] == "Evicted"),
        "no Pod evicted by the kubelet: {pods:?}"
    );
    Ok(())
}

/// A node selector no node matches: the build waits as Unschedulable with the scheduler's
/// message, then fails so when spec.timeout passes, and its Pod is deleted.
fn scenario_unschedulable(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("unsched")?;
    let spec = json!({"nodeSelector": {"kiln.dev/e2e-node": "nowhere"}, "timeout": "20s"});
    env.apply_build(&k, "nowhere", GREET, spec)?;
    wait_for(
        "the ImageBuild to report Unschedulable while it waits",
        Duration::from_secs(60),
        || {
            let st = k
                .get("imagebuild", Some("nowhere"))?
                .map(|b| b["status"].clone())
                .unwrap_or_default();
            let waiting = st["phase"] == "Pending" && ready_reason(&st) == "Unschedulable";
            Ok((waiting.then_some(()), st.to_string()))
        },
    )?;
    let st = wait_final(&k, "nowhere", 1)?;
    ensure!(st["phase"] == "Failed", "phase {}", st["phase"]);
    ensure!(
        ready_reason(&st) == "Unschedulable",
        "reason {}",
        ready_reason(&st)
    );
    let msg = st["message"].as_str().unwrap_or("");
    ensure!(
        msg.contains("within spec.timeout") && msg.contains("node"),
        "status.message: {msg:?}"
    );
    wait_for("the Pod to be deleted", Duration::from_secs(60), || {
        let pods = pods_of(&k, "nowhere")?;
        Ok((
            pods.is_empty().then_some(()),
            format!("{} Pod(s)", pods.len()),
        ))
    })
}

/// A PersistentVolume on a host directory (the node's kubelet runs on this machine) bound to a
/// claim `claim` of the scenario's namespace, as a cluster's storage would provide one.
fn claim(env: &Env, k: &Kubectl, claim: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = volume_for(env, k, claim, "ReadWriteOnce")?;
    k.apply(
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": dir.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
                "resources": {"requests": {"storage": "1Gi"}},
            },
        })
        .to_string(),
    )?;
    Ok(dir)
}

/// The PersistentVolume (a host directory, returned) reserved for the claim `claim` of the
/// scenario's namespace, which the scenario (or an example) then makes.
fn volume_for(
    env: &Env,
    k: &Kubectl,
    claim: &str,
    access_mode: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let pv = format!("{}-{claim}", k.namespace);
    let dir = std::path::Path::new(&env.pv_root).join(&pv);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    k.apply(
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "16Gi"}, "accessModes": [access_mode],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "hostPath": {"path": dir, "type": "Directory"},
                "claimRef": {"namespace": k.namespace, "name": claim},
            },
        })
        .to_string(),
    )?;
    Ok(dir)
}

/// A CacheWarm fills a claim under the real kubelet; a build with `cache.warmClaim` then builds
/// with its base image deleted from the registry.
fn scenario_warm_cache(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("warm")?;
    let dir = claim(env, &k, "kiln-cache")?;
    let base = format!("kiln-e2e/base-{}:latest", env.run_id);
    tools::run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/kiln-test/busybox:latest", env.registry),
            &format!("docker://{}/{base}", env.registry),
        ],
    )?;
    let pod_base = format!("{}/{base}", env.pod_registry);
    k.apply(
        &json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "CacheWarm",
            "metadata": {"name": "warm"},
            "spec": {"images": [pod_base], "claim": "kiln-cache"},
        })
        .to_string(),
    )?;
    examples::wait_warmed(&k, "warm")?;
    ensure!(
        std::fs::read_dir(&dir)?.count() > 0,
        "the warmed claim's directory is empty"
    );
    tools::registry_delete(&format!("{}/{base}", env.registry))?;
    let df = format!(
        "FROM {pod_base}\nRUN echo from-the-warmed-cache > /out\nCMD [\"cat\", \"/out\"]\n"
    );
    let dest = env.apply_build(
        &k,
        "cached",
        &df,
        json!({"cache": {"warmClaim": "kiln-cache"}}),
    )?;
    let st = wait_final(&k, "cached", 1)?;
    check_pushed(env, &k, &st, &dest, "from-the-warmed-cache")?;
    Ok(())
}

/// `RUN --mount=type=cache` on the claim named by `cache.mountCacheClaim`: the second build sees
/// what the first left in the cache (kept on the claim between the two Pods). Steps need a mount
/// namespace of their own: the ImageBuild adds SYS_ADMIN (allowed by the test install's
/// overrides.capabilities), as the README says.
fn scenario_mount_cache(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("mountcache")?;
    claim(env, &k, "run-cache")?;
    let df = "FROM $BASE\nARG N\n\
        RUN --mount=type=cache,id=e2e,target=/cache echo run-$N >> /cache/log && cat /cache/log > /seen\n\
        CMD [\"cat\", \"/seen\"]\n";
    let spec = |n: &str| {
        json!({
            "buildArgs": {"N": n},
            "addCapabilities": ["SYS_ADMIN"],
            "cache": {"mountCacheClaim": "run-cache"},
        })
    };
    let dest = env.apply_build(&k, "cached-run", df, spec("1"))?;
    let st = wait_final(&k, "cached-run", 1)?;
    check_pushed(env, &k, &st, &dest, "run-1")?;
    env.apply_build(&k, "cached-run", df, spec("2"))?;
    let st = wait_final(&k, "cached-run", 2)?;
    check_pushed(env, &k, &st, &dest, "run-1\nrun-2")?;
    Ok(())
}

/// Under the namespace label `pod-security.kubernetes.io/enforce=baseline`, the Pod Security level
/// Kiln needs: the API server admits the executor Pod (root with the hardened capability set,
/// RuntimeDefault seccomp, no host namespaces) and the build succeeds.
fn scenario_pod_security_baseline(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("baseline")?;
    Kubectl::new(&env.kubeconfig, "default").run(
        &[
            "label",
            "namespace",
            &k.namespace,
            "pod-security.kubernetes.io/enforce=baseline",
        ],
        None,
    )?;
    let dest = env.apply_build(&k, "hello", GREET, json!({}))?;
    let st = wait_final(&k, "hello", 1)?;
    check_pushed(env, &k, &st, &dest, "kiln-e2e says hello")?;
    Ok(())
}

/// The leader operator Pod deleted mid-build: the other replica takes the Lease over, the build
/// finishes once, and there is one executor Pod, not a duplicate.
fn scenario_leader_failover(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("leader")?;
    let system = Kubectl::new(&env.kubeconfig, "kiln-system");
    let df = "FROM $BASE\nRUN sleep 25 && echo finished-once > /done\nCMD [\"cat\", \"/done\"]\n";
    let dest = env.apply_build(&k, "slow", df, json!({}))?;
    wait_running(&k, "slow")?;
    let holder = |system: &Kubectl| -> anyhow::Result<String> {
        let lease = system
            .get("lease", Some("kiln-leader"))?
            .context("no Lease kiln-leader")?;
        Ok(lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .to_string())
    };
    let leader = holder(&system)?;
    // The identity is `<Pod name>_<pid>`.
    let leader_pod = leader
        .rsplit_once('_')
        .map(|(pod, _)| pod)
        .unwrap_or(&leader);
    ensure!(
        system.get("pod", Some(leader_pod))?.is_some(),
        "the Lease holder {leader:?} names no operator Pod"
    );
    system.delete("pod", leader_pod)?;
    let st = wait_final(&k, "slow", 1)?;
    check_pushed(env, &k, &st, &dest, "finished-once")?;
    let pods = pods_of(&k, "slow")?;
    ensure!(
        pods.len() == 1,
        "{} executor Pods for one build: {:?}",
        pods.len(),
        pods.iter()
            .map(|p| p["metadata"]["name"].clone())
            .collect::<Vec<_>>()
    );
    let now = holder(&system)?;
    ensure!(
        now != leader,
        "the deleted Pod {leader} still holds the Lease"
    );
    Ok(())
}

/// A push Secret that does not exist: the real kubelet's FailedMount Event names it, the
/// ImageBuild says SecretNotFound with the name; once the Secret is created the Pod starts by
/// itself and the build succeeds.
fn scenario_missing_push_secret(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("pushsecret")?;
    let dest = env.apply_build(&k, "hello", GREET, json!({"pushSecret": "late-regcred"}))?;
    wait_for("SecretNotFound in the status", BUILD_TIMEOUT, || {
        let st = k
            .get("imagebuild", Some("hello"))?
            .map(|ib| ib["status"].clone())
            .unwrap_or_default();
        let seen = st.to_string().contains("SecretNotFound")
            && st["message"]
                .as_str()
                .unwrap_or("")
                .contains("late-regcred");
        Ok((seen.then_some(()), st.to_string()))
    })
    .map_err(|e| e.context(pods_summary(&k)))?;
    k.run(
        &[
            "create",
            "secret",
            "docker-registry",
            "late-regcred",
            &format!("--docker-server={}", env.pod_registry),
            "--docker-username=e2e",
            "--docker-password=e2e",
        ],
        None,
    )?;
    // How long the late Secret takes to be picked up: the kubelet retries the mount with its own
    // back-off; the operator adds nothing (it learns from the Pod and Event watches). Measured and
    // printed, not asserted.
    let created = std::time::Instant::now();
    wait_for("the executor Pod to start", BUILD_TIMEOUT, || {
        let started = pods_of(&k, "hello")?.iter().any(|p| {
            p["status"]["phase"]
                .as_str()
                .is_some_and(|ph| ph != "Pending")
        });
        Ok((started.then_some(()), pods_summary(&k)))
    })?;
    let started = created.elapsed();
    let st = wait_final(&k, "hello", 1)?;
    eprintln!(
        "missing-push-secret: the Pod started {:.1} s after the Secret was created, the build ended {:.1} s after",
        started.as_secs_f64(),
        created.elapsed().as_secs_f64()
    );
    check_pushed(env, &k, &st, &dest, "kiln-e2e says hello")?;
    Ok(())
}

/// An executor image that cannot be pulled (allowed by the test install's
/// overrides.executorImages): the real kubelet reports ErrImagePull or ImagePullBackOff on the
/// Pod's container. (Naming it in the ImageBuild's status is the operator lifecycle issue's.)
fn scenario_unpullable_executor(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("pull")?;
    let image = format!("{}/kiln-demo/absent-executor:none", env.registry);
    env.apply_build(&k, "hello", GREET, json!({"executorImage": image}))?;
    wait_for(
        "the executor Pod's image pull to fail",
        BUILD_TIMEOUT,
        || {
            let reasons = container_reasons(&pods_of(&k, "hello")?, "waiting");
            let failed = reasons
                .iter()
                .any(|r| r == "ErrImagePull" || r == "ImagePullBackOff");
            // Or already reported (the operator deletes the Pod once the kubelet backs off).
            let reported = k
                .get("imagebuild", Some("hello"))?
                .is_some_and(|b| ready_reason(&b["status"]) == "ExecutorImagePullFailed");
            Ok(((failed || reported).then_some(()), format!("{reasons:?}")))
        },
    )
    .map_err(|e| e.context(pods_summary(&k)))?;
    // The kubelet backs off: the attempt fails with the operator's reason, naming the image, and
    // the Pod (which would wait forever) is deleted.
    let st = wait_final(&k, "hello", 1)?;
    ensure!(
        st["phase"] == "Failed" && ready_reason(&st) == "ExecutorImagePullFailed",
        "status: {st}"
    );
    let msg = st["message"].as_str().unwrap_or("");
    ensure!(
        msg.contains("ImagePullBackOff") || msg.contains("ErrImagePull"),
        "the message does not carry the kubelet's reason: {msg}"
    );
    ensure!(
        msg.contains("absent-executor:none"),
        "the message does not name the image: {msg}"
    );
    wait_for("the Pod to be deleted", Duration::from_secs(60), || {
        let pods = pods_of(&k, "hello")?;
        Ok((
            pods.is_empty().then_some(()),
            format!("{} Pod(s)", pods.len()),
        ))
    })
}

#[test]
fn operator_builds_on_a_real_cluster() {
    if std::env::var("KILN_SKIP_E2E").as_deref() == Ok("1") {
        eprintln!("KILN_SKIP_E2E=1: end-to-end tests skipped");
        return;
    }
    type Scenario = fn(&Env) -> anyhow::Result<()>;
    let scenarios: [(&str, Scenario); 16] = [
        ("build-and-rebuild", scenario_build_and_rebuild),
        ("multi-platform", scenario_multi_platform),
        ("failing-run", scenario_failing_run),
        ("build-secret", scenario_build_secret),
        ("timeout", scenario_timeout),
        ("delete", scenario_delete),
        ("oom", scenario_oom),
        ("evicted", scenario_evicted),
        ("unschedulable", scenario_unschedulable),
        ("warm-cache", scenario_warm_cache),
        ("mount-cache", scenario_mount_cache),
        ("pod-security-baseline", scenario_pod_security_baseline),
        ("leader-failover", scenario_leader_failover),
        ("missing-push-secret", scenario_missing_push_secret),
        ("unpullable-executor", scenario_unpullable_executor),
        ("examples", examples::scenario_examples),
    ];
    let names: Vec<&str> = scenarios.iter().map(|(n, _)| *n).collect();
    let only = kiln_testkit::select_from_env("KILN_E2E_SCENARIOS", &names);
    let env = Env::from_env().expect("cluster end-to-end environment");
    let mut failures = Vec::new();
    for (name, f) in scenarios {
        if !only.iter().any(|s| s == name) {
            continue;
        }
        let start = Instant::now();
        match f(&env) {
            Ok(()) => eprintln!("e2e-cluster: PASS {name} in {:.0?}", start.elapsed()),
            Err(e) => {
                eprintln!("e2e-cluster: FAIL {name} in {:.0?}: {e:#}", start.elapsed());
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

//! The files of `examples/` applied with kubectl as a user would, adapted only in their registry
//! and source addresses (`kiln_e2e::examples`): ConfigMap, git and PersistentVolumeClaim sources,
//! a CacheWarm and a build reading its bases from that claim with a registry layer cache, and a
//! build secret with a RUN cache on a claim. The examples' git repository is a stand-in served
//! by `git http-backend` on the address Pods reach this machine at; what the examples expect to
//! exist (the push and npm Secrets, storage for their claims, their base images) is made first.
//! Every pushed image runs as a Pod on the node.

use std::fs;

use kiln_e2e::{examples, git};

use super::*;

const BUSYBOX: &str = "library/busybox:1.36";
const DEBIAN: &str = "library/debian:bookworm-slim";

/// `examples/hello` under `dir`, as the stand-in repository and the context volume hold it: its
/// default base image is the local busybox under the name the examples use.
fn hello_files(env: &Env, dir: &str) -> anyhow::Result<Vec<(String, String)>> {
    let src = examples::root().join("examples/hello");
    let local = "127.0.0.1:5000/kiln-test/busybox:latest";
    let mut files = Vec::new();
    for name in ["Dockerfile", "greet.sh"] {
        let text = fs::read_to_string(src.join(name))?;
        ensure!(
            name != "Dockerfile" || text.contains(local),
            "examples/hello/Dockerfile no longer has the base {local}"
        );
        let text = text.replace(local, &format!("{}/{BUSYBOX}", env.pod_registry));
        files.push((format!("{dir}/{name}"), text));
    }
    Ok(files)
}

/// The stand-in repository of the git examples: `hello` (imagebuild-git.yaml), `app`
/// (imagebuild-cache.yaml, on the warmed debian base) and `web` (imagebuild-secrets.yaml: the
/// `npm ci` step its comment shows, with the secret and cache mounts it names).
fn repository_files(env: &Env) -> anyhow::Result<Vec<(String, String)>> {
    let reg = &env.pod_registry;
    let mut files = hello_files(env, "hello")?;
    files.push((
        "app/Dockerfile".into(),
        format!(
            "FROM {reg}/{DEBIAN}\n\
             RUN . /etc/os-release && echo \"app on $ID\" > /app.txt\n\
             CMD [\"cat\", \"/app.txt\"]\n"
        ),
    ));
    files.push((
        "web/Dockerfile".into(),
        format!(
            "FROM {reg}/{BUSYBOX}\n\
             RUN --mount=type=secret,id=npmrc,target=/root/.npmrc \\\n    \
             --mount=type=cache,target=/root/.npm,sharing=locked \\\n    \
             sha256sum /root/.npmrc | cut -d' ' -f1 > /npmrc.sha256 && echo installed >> /root/.npm/installs\n\
             CMD [\"cat\", \"/npmrc.sha256\"]\n"
        ),
    ));
    Ok(files)
}

/// Waits for the CacheWarm `name` to warm; returns its status.
pub(super) fn wait_warmed(k: &Kubectl, name: &str) -> anyhow::Result<Value> {
    wait_for(&format!("CacheWarm {name} to warm"), BUILD_TIMEOUT, || {
        let st = k
            .get("cachewarm", Some(name))?
            .map(|c| c["status"].clone())
            .unwrap_or_default();
        match st["phase"].as_str() {
            Some("Failed") => anyhow::bail!("CacheWarm failed: {st}"),
            Some("Succeeded") | Some("Ready") => Ok((Some(st.clone()), st.to_string())),
            _ => Ok((None, st.to_string())),
        }
    })
    .map_err(|e| e.context(pods_summary(k)))
}

pub(super) fn scenario_examples(env: &Env) -> anyhow::Result<()> {
    let k = env.namespace("examples")?;
    let reg = env.pod_registry.clone();
    for (from, to) in [
        ("kiln-test/busybox:latest", BUSYBOX),
        ("kiln-test/debian:bookworm", DEBIAN),
    ] {
        tools::run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &format!("docker://{}/{from}", env.registry),
                &format!("docker://{}/{to}", env.registry),
            ],
        )?;
    }
    let files = repository_files(env)?;
    let repo = git::serve(env.node_address(), "examples", &files, "v1.0.0", None)?;
    let to = examples::Addresses {
        registry: reg.clone(),
        git_url: repo.url.clone(),
    };
    // imagebuild-git.yaml names a git Secret: its repository needs credentials.
    let git_password = format!("kiln-e2e-git-token-{}", env.run_id);
    let private = git::serve(
        env.node_address(),
        "examples",
        &files,
        "v1.0.0",
        Some(&format!("e2e-user:{git_password}")),
    )?;
    let to_private = examples::Addresses {
        registry: reg.clone(),
        git_url: private.url.clone(),
    };

    // What the examples' comments tell a user to create first.
    k.run(
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            &format!("--docker-server={reg}"),
            "--docker-username=e2e",
            "--docker-password=e2e",
        ],
        None,
    )?;
    let npmrc = format!("//registry.npmjs.org/:_authToken=kiln-e2e-{}", env.run_id);
    k.run(
        &[
            "create",
            "secret",
            "generic",
            "npm",
            &format!("--from-literal=.npmrc={npmrc}"),
        ],
        None,
    )?;
    k.run(
        &[
            "create",
            "secret",
            "generic",
            "git-credentials",
            "--type=kubernetes.io/basic-auth",
            "--from-literal=username=e2e-user",
            &format!("--from-literal=password={git_password}"),
        ],
        None,
    )?;
    // Storage for the examples' claims (they name no storage class; this cluster has none).
    let warmed = volume_for(env, &k, "base-image-cache", "ReadWriteMany")?;
    let run_cache = volume_for(env, &k, "npm-run-cache", "ReadWriteMany")?;
    let contexts = volume_for(env, &k, "build-contexts", "ReadWriteMany")?;
    for (path, text) in hello_files(env, "hello")? {
        let p = contexts.join(path);
        fs::create_dir_all(p.parent().context("a context file has a parent")?)?;
        fs::write(p, text)?;
    }

    // The CacheWarm first: imagebuild-cache.yaml reads its bases from the claim it fills.
    k.apply(&examples::load("cachewarm.yaml", &to)?)?;
    let st = wait_warmed(&k, "base-images")?;
    let images = st["images"].as_array().cloned().unwrap_or_default();
    ensure!(
        images.len() == 2
            && images.iter().all(|i| i["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:"))),
        "the CacheWarm's status lists {images:?}, not both images with their digests"
    );
    ensure!(
        fs::read_dir(&warmed)?.count() > 0,
        "the warmed claim's directory is empty"
    );
    for f in [
        "imagebuild-configmap.yaml",
        "imagebuild-git.yaml",
        "imagebuild-cache.yaml",
        "imagebuild-secrets.yaml",
        "imagebuild-pvc.yaml",
    ] {
        let addresses = if f == "imagebuild-git.yaml" {
            &to_private
        } else {
            &to
        };
        k.apply(&examples::load(f, addresses)?)
            .with_context(|| format!("kubectl apply examples/{f}"))?;
    }
    let mut failures = Vec::new();
    let mut check = |name: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            failures.push(format!("{name}: {e:#}"));
        }
    };

    check(
        "hello-configmap",
        (|| {
            let st = wait_final(&k, "hello-configmap", 1)?;
            check_pushed(
                env,
                &k,
                &st,
                &format!("{reg}/team/hello-configmap:latest"),
                "Hello from a ConfigMap context",
            )?;
            Ok(())
        })(),
    );

    check(
        "hello-git",
        (|| {
            let st = wait_final(&k, "hello-git", 1)?;
            let dest = format!("{reg}/team/hello:1.0.0");
            let (digest, out) = pushed_output(env, &k, &st, &dest)?;
            let lines: Vec<&str> = out.lines().collect();
            ensure!(
            lines.len() == 2 && lines[0] == "Hello from git" && lines[1].starts_with("built on "),
            "the image printed {out:?}: not spec.buildArgs' greeting and the stamp of its RUN step"
        );
            ensure!(
                !st.to_string().contains(&git_password),
                "the status holds the git password"
            );
            let latest =
                tools::registry_digest(&env.host_ref(&format!("{reg}/team/hello:latest")))?;
            ensure!(
                latest == digest,
                "the second destination holds {latest}, not {digest}"
            );
            let config = kiln_testkit::image_config(&env.host_ref(&dest))?;
            let label = &config["config"]["Labels"]["org.opencontainers.image.source"];
            ensure!(
                label == "https://github.com/kiln-build/examples",
                "spec.labels' org.opencontainers.image.source is {label}"
            );
            Ok(())
        })(),
    );

    check(
        "app-cached",
        (|| {
            let st = wait_final(&k, "app-cached", 1)?;
            check_pushed(
                env,
                &k,
                &st,
                &format!("{reg}/team/app:1.0.0"),
                "app on debian",
            )?;
            // Its base came from the warmed claim, not the registry (the executor's log says so).
            let pods = pods_of(&k, "app-cached")?;
            let pod = pods
                .first()
                .and_then(|p| p["metadata"]["name"].as_str())
                .context("app-cached has no Pod")?;
            let log = k.run(&["logs", pod], None)?;
            ensure!(
                log.contains(&format!("{DEBIAN}: read from the base-image cache")),
                "the build did not read its base from the warmed claim: {}",
                kiln_testkit::tail(&log, 2000)
            );
            let cache = env.host_ref(&format!("{reg}/team/app/cache"));
            let tags = tools::run(
                "skopeo",
                &[
                    "list-tags",
                    "--tls-verify=false",
                    &format!("docker://{cache}"),
                ],
            )?;
            let tags: Value = serde_json::from_str(&tags)?;
            ensure!(
                tags["Tags"].as_array().is_some_and(|t| !t.is_empty()),
                "the layer cache repository {cache} holds no layers: {tags}"
            );
            Ok(())
        })(),
    );

    check(
        "web-npm",
        (|| {
            let st = wait_final(&k, "web-npm", 1)?;
            let want = tools::run(
                "sh",
                &[
                    "-c",
                    &format!("printf %s '{npmrc}' | sha256sum | cut -d' ' -f1"),
                ],
            )?;
            check_pushed(env, &k, &st, &format!("{reg}/team/web:1.0.0"), want.trim())?;
            ensure!(
                !st.to_string().contains(&npmrc),
                "the status holds the secret"
            );
            ensure!(
                fs::read_dir(&run_cache)?.count() > 0,
                "the RUN cache's claim is empty after the build"
            );
            Ok(())
        })(),
    );

    check(
        "hello-pvc",
        (|| {
            let st = wait_final(&k, "hello-pvc", 1)?;
            let (_, out) = pushed_output(env, &k, &st, &format!("{reg}/team/hello-pvc:latest"))?;
            ensure!(
                out.lines().next() == Some("Hello from an image built by Kiln"),
                "the image printed {out:?}"
            );
            Ok(())
        })(),
    );

    drop((repo, private));
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

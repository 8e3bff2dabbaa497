//! The node stand-in: plays kubelet for the Pods the operator creates in one namespace. It runs
//! each Pod's single container with podman (image from the local registry, args, env, Secret and
//! ConfigMap volumes written to disk the way a kubelet writes them, PVCs as host directories,
//! `/dev/termination-log` from a host file) and writes the Pod status back: `Running` with a
//! start time, then `Succeeded`/`Failed` with the container's terminated state and termination
//! message. It must never start a container for a Pod outside its namespace, and it removes
//! every container it started.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};

use crate::kubectl::Kubectl;
use crate::tools::PODMAN_GLOBAL;

/// How the stand-in runs containers.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Arguments appended to every container's args. Only for what the test cluster cannot
    /// express through the operator (e.g. `--insecure-registry` for the plain-HTTP registry);
    /// each use is logged.
    pub extra_args: Vec<String>,
    /// A container running longer than this is killed and reported failed.
    pub container_timeout: Duration,
}

/// A running node stand-in; stops (and removes its containers) when dropped.
pub struct Node {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Host directory of each PersistentVolumeClaim, by claim name.
    pub pvc_root: PathBuf,
    /// Every Pod it ran, with what happened (for the test's failure messages).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts watching `kubectl`'s namespace; Pod data goes under `work`.
    pub fn start(kubectl: Kubectl, work: &Path, opts: NodeOptions) -> anyhow::Result<Node> {
        let pvc_root = work.join("pvc");
        fs::create_dir_all(&pvc_root).with_context(|| format!("creating {pvc_root:?}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let ctx = Ctx {
            kubectl,
            work: work.to_path_buf(),
            pvc_root: pvc_root.clone(),
            opts,
            log: log.clone(),
        };
        let s = stop.clone();
        let handle = std::thread::spawn(move || watch(ctx, s));
        Ok(Node {
            stop,
            handle: Some(handle),
            pvc_root,
            log,
        })
    }

    /// The host directory standing in for a PersistentVolumeClaim.
    pub fn claim_dir(&self, claim: &str) -> PathBuf {
        self.pvc_root.join(claim)
    }

    /// What the stand-in did so far, one line per event.
    pub fn events(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Clone)]
struct Ctx {
    kubectl: Kubectl,
    work: PathBuf,
    pvc_root: PathBuf,
    opts: NodeOptions,
    log: Arc<Mutex<Vec<String>>>,
}

impl Ctx {
    fn note(&self, line: String) {
        eprintln!("node: {line}");
        if let Ok(mut l) = self.log.lock() {
            l.push(line);
        }
    }
}

fn container_name(ns: &str, pod: &str) -> String {
    format!("kiln-e2e-{ns}-{pod}")
}

fn remove_container(name: &str) {
    let mut args: Vec<&str> = PODMAN_GLOBAL.to_vec();
    args.extend(["rm", "-f", "-t", "0", "--ignore", name]);
    let _ = Command::new("podman")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The watch loop: a new Pod gets a runner thread; a Pod that disappears gets its container
/// killed (what a kubelet does when the API object is deleted).
fn watch(ctx: Ctx, stop: Arc<AtomicBool>) {
    let mut running: HashMap<String, (String, JoinHandle<()>)> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        match ctx.kubectl.list("pods") {
            Ok(pods) => {
                let present: HashSet<String> = pods
                    .iter()
                    .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
                    .collect();
                for pod in pods {
                    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
                    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
                    if uid.is_empty() || seen.contains(&uid) {
                        continue;
                    }
                    seen.insert(uid.clone());
                    if pod["status"]["phase"]
                        .as_str()
                        .is_some_and(|p| p != "Pending")
                    {
                        continue; // somebody else's (or an earlier run's) Pod
                    }
                    let c = ctx.clone();
                    ctx.note(format!("pod {name}: starting"));
                    let h = std::thread::spawn(move || run_pod(&c, &pod));
                    running.insert(uid, (name, h));
                }
                let gone: Vec<String> = running
                    .keys()
                    .filter(|u| !present.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some((name, h)) = running.remove(&uid) {
                        if !h.is_finished() {
                            ctx.note(format!("pod {name}: deleted from the API, killing it"));
                            remove_container(&container_name(&ctx.kubectl.namespace, &name));
                        }
                        let _ = h.join();
                    }
                }
            }
            Err(e) => eprintln!("node: listing pods: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for (_, (name, h)) in running.drain() {
        remove_container(&container_name(&ctx.kubectl.namespace, &name));
        let _ = h.join();
    }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn run_pod(ctx: &Ctx, pod: &Value) {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let started = now();
    let outcome = run_container(ctx, pod, &name, &started);
    let status = match outcome {
        Ok(s) => s,
        Err(e) => {
            ctx.note(format!("pod {name}: the node could not run it: {e:#}"));
            terminated_status(pod, &started, 128, "ContainerCannotRun", &format!("{e:#}"))
        }
    };
    if let Err(e) = ctx.kubectl.patch_pod_status(&name, &status) {
        ctx.note(format!("pod {name}: final status not written: {e:#}"));
    }
}

fn terminated_status(pod: &Value, started: &str, code: i64, reason: &str, message: &str) -> Value {
    let cname = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("");
    let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("");
    json!({
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "startTime": started,
        "containerStatuses": [{
            "name": cname,
            "image": image,
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "started": false,
            "state": {"terminated": {
                "exitCode": code,
                "reason": reason,
                "message": message,
                "startedAt": started,
                "finishedAt": now(),
            }},
        }],
    })
}

/// Writes `files` the way the kubelet's atomic writer does: the files live in a timestamped
/// directory, `..data` points at it, and each visible name is a symlink through `..data`.
fn write_projected(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> anyhow::Result<()> {
    let ts = dir.join("..2026_01_01_00_00_00.000000001");
    for (path, (data, mode)) in files {
        let target = ts.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {parent:?}"))?;
        }
        fs::write(&target, data).with_context(|| format!("writing {target:?}"))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&target, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("chmod {target:?}"))?;
    }
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000001", dir.join("..data"))
        .context("..data symlink")?;
    let tops: BTreeMap<String, ()> = files
        .keys()
        .map(|p| (p.split('/').next().unwrap_or(p).to_string(), ()))
        .collect();
    for top in tops.keys() {
        std::os::unix::fs::symlink(format!("..data/{top}"), dir.join(top))
            .with_context(|| format!("symlink {top}"))?;
    }
    Ok(())
}

/// The files of a Secret or ConfigMap volume: every key, or only `items` (key → path).
fn projected_files(
    data: &BTreeMap<String, Vec<u8>>,
    source: &Value,
    what: &str,
) -> anyhow::Result<BTreeMap<String, (Vec<u8>, u32)>> {
    let default_mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let mut files = BTreeMap::new();
    match source["items"].as_array() {
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap_or("");
                let path = it["path"].as_str().unwrap_or(key);
                let mode = it["mode"]
                    .as_u64()
                    .map(|m| m as u32)
                    .unwrap_or(default_mode);
                let Some(v) = data.get(key) else {
                    bail!("{what} has no key {key:?}");
                };
                files.insert(path.to_string(), (v.clone(), mode));
            }
        }
        None => {
            for (k, v) in data {
                files.insert(k.clone(), (v.clone(), default_mode));
            }
        }
    }
    Ok(files)
}

fn decode_map(v: &Value, base64: bool) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            let s = val.as_str().unwrap_or("");
            let bytes = if base64 {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .with_context(|| format!("base64 of key {k}"))?
            } else {
                s.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
    }
    Ok(out)
}

/// Host path and read-only flag of each volume of the Pod.
fn resolve_volumes(
    ctx: &Ctx,
    pod: &Value,
    dir: &Path,
) -> anyhow::Result<HashMap<String, (PathBuf, bool)>> {
    let mut vols = HashMap::new();
    for v in pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let vname = v["name"].as_str().unwrap_or("").to_string();
        let host = dir.join("volumes").join(&vname);
        if let Some(src) = v.get("secret") {
            let sname = src["secretName"].as_str().unwrap_or("");
            let secret = ctx
                .kubectl
                .get("secret", Some(sname))?
                .with_context(|| format!("Secret {sname} not found (volume {vname})"))?;
            let data = decode_map(&secret["data"], true)?;
            fs::create_dir_all(&host)?;
            write_projected(
                &host,
                &projected_files(&data, src, &format!("Secret {sname}"))?,
            )?;
            vols.insert(vname, (host, true));
        } else if let Some(src) = v.get("configMap") {
            let cname = src["name"].as_str().unwrap_or("");
            let cm = ctx
                .kubectl
                .get("configmap", Some(cname))?
                .with_context(|| format!("ConfigMap {cname} not found (volume {vname})"))?;
            let mut data = decode_map(&cm["data"], false)?;
            data.extend(decode_map(&cm["binaryData"], true)?);
            fs::create_dir_all(&host)?;
            write_projected(
                &host,
                &projected_files(&data, src, &format!("ConfigMap {cname}"))?,
            )?;
            vols.insert(vname, (host, true));
        } else if let Some(src) = v.get("persistentVolumeClaim") {
            let claim = src["claimName"].as_str().unwrap_or("");
            let host = ctx.pvc_root.join(claim);
            fs::create_dir_all(&host)?;
            vols.insert(vname, (host, src["readOnly"].as_bool().unwrap_or(false)));
        } else if v.get("emptyDir").is_some() {
            fs::create_dir_all(&host)?;
            vols.insert(vname, (host, false));
        } else {
            bail!("volume {vname}: the node stand-in supports secret, configMap, persistentVolumeClaim and emptyDir only");
        }
    }
    Ok(vols)
}

fn run_container(ctx: &Ctx, pod: &Value, name: &str, started: &str) -> anyhow::Result<Value> {
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if containers.len() != 1 {
        bail!(
            "the node stand-in runs single-container Pods; {name} has {}",
            containers.len()
        );
    }
    let c = &containers[0];
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("x");
    let dir = ctx
        .work
        .join("pods")
        .join(format!("{name}-{}", &uid[..8.min(uid.len())]));
    fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
    let vols = resolve_volumes(ctx, pod, &dir)?;

    let image = c["image"].as_str().context("container has no image")?;
    let cname = container_name(&ctx.kubectl.namespace, name);
    let term_path = c["terminationMessagePath"]
        .as_str()
        .unwrap_or("/dev/termination-log");
    let term_file = dir.join("termination-log");
    fs::write(&term_file, b"").context("creating the termination-log file")?;
    let log_file = dir.join("output.log");

    let mut args: Vec<String> = PODMAN_GLOBAL.iter().map(|s| s.to_string()).collect();
    args.extend(["run", "--name", &cname, "--network", "host", "--pull=never"].map(str::to_string));
    args.push("-v".into());
    args.push(format!("{}:{term_path}", term_file.display()));
    for m in c["volumeMounts"].as_array().cloned().unwrap_or_default() {
        let vname = m["name"].as_str().unwrap_or("");
        let (host, vol_ro) = vols
            .get(vname)
            .with_context(|| format!("mount of unknown volume {vname}"))?;
        let mut host = host.clone();
        if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
            host = host.join(sub);
            fs::create_dir_all(&host)?;
        }
        let ro = *vol_ro || m["readOnly"].as_bool().unwrap_or(false);
        let path = m["mountPath"].as_str().unwrap_or("");
        args.push("-v".into());
        args.push(format!(
            "{}:{path}{}",
            host.display(),
            if ro { ":ro" } else { "" }
        ));
    }
    for e in c["env"].as_array().cloned().unwrap_or_default() {
        if e.get("valueFrom").is_some() {
            bail!(
                "env {}: valueFrom is not supported by the node stand-in",
                e["name"]
            );
        }
        args.push("--env".into());
        args.push(format!(
            "{}={}",
            e["name"].as_str().unwrap_or(""),
            e["value"].as_str().unwrap_or("")
        ));
    }
    if let Some(wd) = c["workingDir"].as_str() {
        args.push("--workdir".into());
        args.push(wd.into());
    }
    if let Some(cmd) = c["command"].as_array() {
        args.push("--entrypoint".into());
        args.push(serde_json::to_string(cmd)?);
    }
    args.push(image.into());
    for a in c["args"].as_array().cloned().unwrap_or_default() {
        args.push(a.as_str().unwrap_or("").to_string());
    }
    if !ctx.opts.extra_args.is_empty() {
        ctx.note(format!(
            "pod {name}: STAND-IN DEVIATION: appending {:?} to the container's args",
            ctx.opts.extra_args
        ));
        args.extend(ctx.opts.extra_args.iter().cloned());
    }

    // Pulled apart from the run, as a kubelet does, so the pull's progress never ends up in the
    // container's output (and so in a FallbackToLogsOnError message).
    let mut pull: Vec<&str> = PODMAN_GLOBAL.to_vec();
    pull.extend(["pull", "-q", "--tls-verify=false", image]);
    if let Err(e) = crate::tools::run("podman", &pull) {
        bail!("ErrImagePull: {e:#}");
    }
    remove_container(&cname);
    let log = fs::File::create(&log_file).context("creating the output log")?;
    let mut child = Command::new("podman")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot run podman")?;
    ctx.kubectl
        .patch_pod_status(
            name,
            &json!({
                "phase": "Running",
                "startTime": started,
                "containerStatuses": [{
                    "name": c["name"], "image": image, "imageID": "", "ready": true,
                    "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": started}},
                }],
            }),
        )
        .context("writing the Running status")?;

    let deadline = std::time::Instant::now() + ctx.opts.container_timeout;
    let code = loop {
        if let Some(st) = child.try_wait()? {
            break st.code().unwrap_or(137) as i64;
        }
        if std::time::Instant::now() > deadline {
            ctx.note(format!("pod {name}: timed out, killing it"));
            remove_container(&cname);
            let _ = child.kill();
            let _ = child.wait();
            break 137;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = fs::read_to_string(&log_file).unwrap_or_default();
    remove_container(&cname);

    let mut message = fs::read_to_string(&term_file).unwrap_or_default();
    if message.is_empty()
        && code != 0
        && c["terminationMessagePolicy"].as_str() == Some("FallbackToLogsOnError")
    {
        // The kubelet's fallback: the last 80 lines, at most 2048 bytes.
        let lines: Vec<&str> = output.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let cut = tail.len().saturating_sub(2048);
        let cut = (cut..=tail.len())
            .find(|i| tail.is_char_boundary(*i))
            .unwrap_or(0);
        message = tail[cut..].to_string();
    }
    if message.len() > 4096 {
        let cut = (0..=4096)
            .rev()
            .find(|i| message.is_char_boundary(*i))
            .unwrap_or(0);
        message.truncate(cut);
    }
    ctx.note(format!(
        "pod {name}: exited {code}; output tail:\n{}",
        output
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    ));
    let reason = if code == 0 { "Completed" } else { "Error" };
    Ok(terminated_status(pod, started, code, reason, &message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (".dockerconfigjson".to_string(), b"{}".to_vec()),
            ("other".to_string(), b"x".to_vec()),
        ])
    }

    #[test]
    fn items_select_keys_and_rename_them() {
        let src = json!({"items": [{"key": ".dockerconfigjson", "path": "config.json"}], "defaultMode": 0o440});
        let files = projected_files(&data(), &src, "Secret s").unwrap();
        assert_eq!(
            files,
            BTreeMap::from([("config.json".to_string(), (b"{}".to_vec(), 0o440))])
        );
    }

    #[test]
    fn without_items_every_key_is_a_file() {
        let files = projected_files(&data(), &json!({}), "ConfigMap c").unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files["other"].1, 0o644);
    }

    #[test]
    fn a_missing_item_key_is_an_error() {
        let src = json!({"items": [{"key": "nope", "path": "p"}]});
        let err = projected_files(&data(), &src, "Secret s").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn projected_files_use_the_kubelet_layout() {
        let dir = std::env::temp_dir().join(format!("kiln-e2e-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let files = BTreeMap::from([("sub/f".to_string(), (b"hi".to_vec(), 0o600))]);
        write_projected(&dir, &files).unwrap();
        assert!(fs::symlink_metadata(dir.join("..data"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_link(dir.join("sub")).unwrap(),
            PathBuf::from("..data/sub")
        );
        assert_eq!(fs::read(dir.join("sub/f")).unwrap(), b"hi");
        fs::remove_dir_all(&dir).unwrap();
    }
}

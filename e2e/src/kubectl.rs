//! `kubectl` as the user and the test see it: apply, get as JSON, delete.
//! Runs with the admin kubeconfig given in `KUBECONFIG`; it must never act outside the
//! namespace it is given.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

/// A `kubectl` bound to one kubeconfig and namespace.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubeconfig: String,
    pub namespace: String,
}

impl Kubectl {
    pub fn new(kubeconfig: &str, namespace: &str) -> Kubectl {
        Kubectl {
            kubeconfig: kubeconfig.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// Runs `kubectl -n NS ARGS`, feeding `stdin`; returns stdout, or fails with stderr.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl: is it installed?")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(input.as_bytes())
                .context("writing to kubectl")?;
        }
        let out = child.wait_with_output().context("waiting for kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of a manifest (YAML or JSON).
    pub fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        self.run(&["apply", "-f", "-"], Some(manifest)).map(|_| ())
    }

    /// `kubectl get KIND [NAME] -o json`; `None` when the named object does not exist.
    pub fn get(&self, kind: &str, name: Option<&str>) -> anyhow::Result<Option<Value>> {
        let mut args = vec!["get", kind];
        if let Some(n) = name {
            args.push(n);
        }
        args.extend(["-o", "json", "--ignore-not-found"]);
        let out = self.run(&args, None)?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_str(&out).with_context(|| format!("kubectl get {kind} output"))?,
        ))
    }

    /// The items of `kubectl get KIND -o json`.
    pub fn list(&self, kind: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .get(kind, None)?
            .and_then(|v| v.get("items").and_then(Value::as_array).cloned())
            .unwrap_or_default())
    }

    /// `kubectl delete KIND NAME --wait=false`.
    pub fn delete(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        self.run(
            &["delete", kind, name, "--wait=false", "--ignore-not-found"],
            None,
        )
        .map(|_| ())
    }
}

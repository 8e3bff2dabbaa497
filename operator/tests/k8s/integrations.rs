//! The ready-made integrations under deploy/ against the real CRDs of the projects they plug
//! into: the Tekton Task (deploy/tekton/kiln-task.yaml) against Tekton Pipelines' CRDs and the
//! Shipwright ClusterBuildStrategy (deploy/shipwright/kiln-buildstrategy.yaml) against
//! Shipwright Build's. The CRDs come from those projects' Go modules at the pinned versions,
//! downloaded through the Go module proxy at test time (never copied into the repository).
//! Both manifests must pass `kubectl apply --dry-run=server`, which validates them against the
//! CRDs' schemas (no webhook runs: the API server has none here, and the versions used are the
//! storage versions, so no conversion webhook is called). Running their steps as Pods needs a
//! kubelet and is not done here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::*;

/// Tekton Pipelines: the release whose `config/300-crds` defines `tasks.tekton.dev` (v1 stored).
const TEKTON: &str = "github.com/tektoncd/pipeline@v1.0.0";
/// Shipwright Build: the release whose `deploy/crds` defines the v1beta1 strategies.
const SHIPWRIGHT: &str = "github.com/shipwright-io/build@v0.15.0";

/// `go`, from PATH or where the machine image puts it; a failure under CI, a loud skip
/// elsewhere, when there is none.
fn go() -> Option<PathBuf> {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("go"))
        .chain(Some(PathBuf::from("/usr/local/go/bin/go")))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = "go is not installed: this test downloads the Tekton and Shipwright CRDs with \
                   `go mod download` (scripts/k8s/tools.sh needs it too)";
        if under_ci() {
            panic!("{msg} (CI=true: a test that cannot run is a failure)");
        }
        loud(&format!("SKIPPING the integrations dry run: {msg}"));
    }
    found
}

/// The source directory of `module@version`, downloaded through the Go module proxy into the
/// shared module cache.
fn module_dir(go: &Path, module: &str) -> PathBuf {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(go)
        .args(["mod", "download", "-json", module])
        .current_dir(tmp.path())
        .env(
            "GOMODCACHE",
            std::env::var("GOMODCACHE").unwrap_or_else(|_| "/var/cache/kiln/go/mod".into()),
        )
        .env(
            "GOCACHE",
            std::env::var("GOCACHE").unwrap_or_else(|_| "/var/cache/kiln/go/cache".into()),
        )
        .env("GOPATH", "/var/cache/kiln/go/path")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("run go mod download");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "go mod download {module}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && info.get("Error").is_none(),
        "go mod download {module} failed: {info}"
    );
    PathBuf::from(info["Dir"].as_str().expect("Dir in go mod download -json"))
}

/// The `*.yaml` files of `dir`, sorted; at least one.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CRDs in {}", dir.display());
    files
}

fn kubectl_output(env: &Env, args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(["--namespace", &env.ns])
        .args(args)
        .output()
        .expect("kubectl is installed (it is part of the test tools)")
}

fn apply_crds(env: &Env, files: &[PathBuf], names: &[&str]) {
    for f in files {
        let path = f.display().to_string();
        kubectl(
            env,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=kiln-integrations-check",
                "-f",
                &path,
            ],
        );
    }
    // Polled rather than `kubectl wait --for=condition=Established`, which fails at once
    // ("accessor error: <nil>") when it reads a CRD before the API server gave it any condition.
    // Read as JSON: a jsonpath filter fails the same way on a CRD without conditions yet.
    for name in names {
        let crd = name.trim_start_matches("crd/");
        let established = (0..120).any(|_| {
            let json: serde_json::Value =
                serde_json::from_str(&kubectl(env, &["get", "crd", crd, "-o", "json"]))
                    .expect("kubectl prints the CRD as JSON");
            let conditions = json["status"]["conditions"].as_array().cloned();
            let is_established = conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            is_established || {
                std::thread::sleep(std::time::Duration::from_millis(500));
                false
            }
        });
        assert!(established, "CRD {crd} was not Established within 60 s");
    }
}

/// A server-side dry run of `yaml` (a file's text): the API server's answer.
fn dry_run(env: &Env, yaml: &str, dir: &Path) -> Output {
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, yaml).expect("write manifest");
    kubectl_output(
        env,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=kiln-integrations-check",
            "-f",
            &file.display().to_string(),
        ],
    )
}

#[tokio::test]
async fn tekton_task_and_shipwright_strategy_pass_a_server_side_dry_run() {
    let Some(env) = env("integrations-dry-run").await else {
        return;
    };
    let Some(go) = go() else {
        return;
    };
    let tekton = module_dir(&go, TEKTON).join("config/300-crds");
    let shipwright = module_dir(&go, SHIPWRIGHT).join("deploy/crds");
    apply_crds(&env, &yaml_files(&tekton), &["crd/tasks.tekton.dev"]);
    apply_crds(
        &env,
        &yaml_files(&shipwright),
        &["crd/clusterbuildstrategies.shipwright.io"],
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir().expect("temp dir");
    for (file, kind) in [
        ("deploy/tekton/kiln-task.yaml", "task.tekton.dev/kiln"),
        (
            "deploy/shipwright/kiln-buildstrategy.yaml",
            "clusterbuildstrategy.shipwright.io/kiln",
        ),
    ] {
        let yaml = std::fs::read_to_string(root.join(file)).expect(file);
        let out = dry_run(&env, &yaml, work.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(kind) && stdout.contains("server dry run"),
            "the API server rejects {file}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The dry run checks the schema: a misspelt field and a wrong type are refused.
        for (what, bad) in [
            (
                "an undeclared field",
                yaml.replacen("  steps:", "  stepz:", 1),
            ),
            (
                "a user name for runAsUser",
                yaml.replacen("runAsUser: 0", "runAsUser: root", 1),
            ),
        ] {
            assert_ne!(bad, yaml, "{file}: the {what} case changed nothing");
            let out = dry_run(&env, &bad, work.path());
            assert!(
                !out.status.success(),
                "{file} with {what} passes the dry run: the CRD schema is not checked\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

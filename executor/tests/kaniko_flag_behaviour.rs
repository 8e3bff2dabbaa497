//! kaniko's flags and variables through the real `kiln-executor` binary, each checked by what it
//! does: to the image (layers, labels, platform, ignored paths), to the files it writes, and to
//! its pushes (a real registry behind the test kit's fault proxy, which answers as Artifact
//! Registry and ECR answer a push to an immutable tag). The classification of every kaniko flag
//! is README.md's table, checked by `tests/kaniko_flags.rs`. Builds `FROM scratch` run offline;
//! the others read the test registry's busybox image (`KILN_TEST_REGISTRY`). Runs as root (RUN
//! steps run in a chroot sandbox).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_testkit::{
    free_port, registry, require_root, rule, run_bounded, Fault, FaultProxy, Output,
};
use support::{image_steps, layout_config, layout_entry, layout_manifest, LayerKind};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Variables of kaniko's and Kiln's that would change a build, kept out of every run unless a
/// test sets them.
const CLEARED: &[&str] = &[
    "KANIKO_DIR",
    "KANIKO_NO_PUSH",
    "KANIKO_REGISTRY_MIRROR",
    "KANIKO_REGISTRY_MAP",
    "KILN_DIR",
    "BUILDER_OUTPUT",
];

/// A build context with a Dockerfile and files, in a temporary directory that also holds what
/// the builds write.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(dockerfile: &str, files: &[(&str, &str)]) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        for (name, content) in files {
            fs::write(ctx.join(name), content).unwrap();
        }
        Case { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Runs kiln-executor on the context with `args` and the environment `env`.
    fn kiln(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
        cmd.arg("--context")
            .arg(format!("dir://{}", self.path("ctx").display()))
            .args(args)
            .env("KILN_TERMINATION_LOG", self.path("termination"));
        for name in CLEARED {
            cmd.env_remove(name);
        }
        cmd.envs(env.iter().copied());
        run_bounded(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("kiln-executor: {e}"))
    }

    /// [`Case::kiln`] that must succeed.
    fn build(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.kiln(args, env);
        assert!(
            out.success(),
            "kiln-executor {args:?} failed ({:?}):\n{}",
            out.status,
            out.stderr
        );
        out
    }
}

fn busybox() -> String {
    format!("{}/kiln-test/busybox:latest", registry())
}

fn layer_kinds(layout: &Path) -> Vec<LayerKind> {
    image_steps(layout, "latest")
        .unwrap()
        .into_iter()
        .map(|s| s.layer)
        .collect()
}

#[test]
fn force_build_metadata_gives_every_step_a_layer() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let case = Case::new(
        "FROM scratch\nCOPY a /a\nENV X=1\nLABEL l=1\n",
        &[("a", "a\n")],
    );
    case.build(&["--no-push", "--oci-layout-path", &case.arg("plain")], &[]);
    let kinds = layer_kinds(&case.path("plain"));
    assert!(
        matches!(
            kinds[..],
            [LayerKind::Files(_), LayerKind::None, LayerKind::None]
        ),
        "{kinds:?}"
    );
    // kaniko's --kaniko-dir is the work directory.
    let out = case.build(
        &[
            "--no-push",
            "--force-build-metadata",
            "--kaniko-dir",
            &case.arg("kaniko-dir"),
            "--oci-layout-path",
            &case.arg("forced"),
        ],
        &[],
    );
    let kinds = layer_kinds(&case.path("forced"));
    assert!(
        matches!(
            kinds[..],
            [LayerKind::Files(_), LayerKind::Empty, LayerKind::Empty]
        ),
        "{kinds:?}\n{}",
        out.stderr
    );
    assert!(
        case.path("kaniko-dir/build").is_dir(),
        "--kaniko-dir unused"
    );
    // KANIKO_DIR when no flag names one.
    let kaniko_dir = case.arg("from-env");
    case.build(&["--no-push"], &[("KANIKO_DIR", &kaniko_dir)]);
    assert!(case.path("from-env/build").is_dir(), "KANIKO_DIR unused");
}

#[test]
fn single_snapshot_and_labels_shape_the_image() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let case = Case::new(
        "FROM scratch\nCOPY a /a\nCOPY b /b\nLABEL inside=yes\n",
        &[("a", "a\n"), ("b", "b\n")],
    );
    let layout = case.path("layout");
    let out = case.build(
        &[
            "--no-push",
            "--single-snapshot",
            "--label",
            "k=v",
            "--label=k2=v=2",
            "--tarPath",
            &case.arg("image.tar"),
            "--oci-layout-path",
            &case.arg("layout"),
        ],
        &[],
    );
    let manifest = layout_manifest(&layout).unwrap();
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        1,
        "{manifest}"
    );
    assert_eq!(layout_entry(&layout, "a").as_deref(), Some("a\n"));
    assert_eq!(layout_entry(&layout, "b").as_deref(), Some("b\n"));
    let config = layout_config(&layout).unwrap();
    let labels = &config["config"]["Labels"];
    assert_eq!(
        (&labels["inside"], &labels["k"], &labels["k2"]),
        (&"yes".into(), &"v".into(), &"v=2".into()),
        "{labels}"
    );
    assert!(fs::metadata(case.path("image.tar")).unwrap().len() > 0);
    assert!(
        out.stderr.contains("Flag --tarPath is deprecated"),
        "{}",
        out.stderr
    );
}

#[test]
fn custom_platform_is_the_image_platform() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let case = Case::new("FROM scratch\nCOPY a /a\n", &[("a", "a\n")]);
    let platform = |layout: &str| {
        let c = layout_config(&case.path(layout)).unwrap();
        format!(
            "{}/{}",
            c["os"].as_str().unwrap(),
            c["architecture"].as_str().unwrap()
        )
    };
    case.build(
        &[
            "--no-push",
            "--custom-platform=linux/arm64",
            "--oci-layout-path",
            &case.arg("new"),
        ],
        &[],
    );
    assert_eq!(platform("new"), "linux/arm64");
    // kaniko: a non-empty deprecated --customPlatform wins, with a warning.
    let out = case.build(
        &[
            "--no-push",
            "--customPlatform=linux/s390x",
            "--custom-platform=linux/arm64",
            "--oci-layout-path",
            &case.arg("old"),
        ],
        &[],
    );
    assert_eq!(platform("old"), "linux/s390x");
    assert!(
        out.stderr.contains("Flag --customPlatform is deprecated"),
        "{}",
        out.stderr
    );
}

#[test]
fn digest_files_name_every_destination() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let case = Case::new("FROM scratch\nCOPY a /a\n", &[("a", "a\n")]);
    let port = free_port();
    let (tagged, untagged) = (
        format!("127.0.0.1:{port}/a/b:v1"),
        format!("127.0.0.1:{port}/c"),
    );
    let out = case.build(
        &[
            "--no-push",
            "-d",
            &tagged,
            "--destination",
            &untagged,
            "--digest-file",
            &case.arg("digest"),
            "--image-name-with-digest-file",
            &case.arg("names"),
            "--image-name-tag-with-digest-file",
            &case.arg("tags"),
        ],
        &[],
    );
    let digest = out.stdout.trim().lines().last().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{}", out.stdout);
    let read = |name: &str| fs::read_to_string(case.path(name)).unwrap();
    assert_eq!(read("digest"), digest);
    assert_eq!(
        read("names"),
        format!("127.0.0.1:{port}/a/b@{digest}\n127.0.0.1:{port}/c@{digest}\n")
    );
    assert_eq!(
        read("tags"),
        format!("{tagged}@{digest}\n{untagged}:latest@{digest}\n")
    );
}

#[test]
fn kaniko_no_push_variable_decides_whether_to_push() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let case = Case::new("FROM scratch\nCOPY a /a\n", &[("a", "a\n")]);
    // Nothing listens there: a push fails at once.
    let dest = format!("127.0.0.1:{}/nowhere/x:1", free_port());
    let flags = ["-d", dest.as_str(), "--insecure"];
    assert!(!case.kiln(&flags, &[]).success(), "pushed to a closed port");
    case.build(&flags, &[("KANIKO_NO_PUSH", "true")]);
    case.build(&flags, &[("KANIKO_NO_PUSH", "1")]);
    // kaniko's precedence: the variable, when set, replaces --no-push either way.
    let with_flag = ["-d", dest.as_str(), "--insecure", "--no-push"];
    case.build(&with_flag, &[]);
    let out = case.kiln(&with_flag, &[("KANIKO_NO_PUSH", "false")]);
    assert!(!out.success(), "KANIKO_NO_PUSH=false did not push");
    assert!(
        out.stderr.contains("KANIKO_NO_PUSH=false overrides"),
        "{}",
        out.stderr
    );
    let out = case.kiln(&flags, &[("KANIKO_NO_PUSH", "maybe")]);
    assert_eq!(out.status, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid KANIKO_NO_PUSH") && out.stderr.contains("\"maybe\""),
        "{}",
        out.stderr
    );
}

/// Bodies Artifact Registry and ECR answer a manifest push to an immutable tag with.
const ECR_IMMUTABLE: &str = r#"{"errors":[{"code":"TAG_INVALID","message":"The image tag 'v1' already exists in the 'kaniko/immutable' repository and cannot be overwritten because the repository is immutable."}]}"#;
const AR_IMMUTABLE: &str = r#"{"errors":[{"code":"DENIED","message":"failed to push: The repository has enabled tag immutability."}]}"#;

#[test]
fn immutable_tag_errors_are_ignored_only_with_the_flag() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let reg = kiln_testkit::TestRegistry::start();
    let case = Case::new("FROM scratch\nCOPY a /a\n", &[("a", "a\n")]);
    for (status, body) in [(400, ECR_IMMUTABLE), (403, AR_IMMUTABLE)] {
        let proxy = FaultProxy::start(
            &reg.addr,
            vec![rule("PUT", "/manifests/", Fault::Status(status, body), 100)],
        );
        let dest = format!("{}/kaniko/immutable:v1", proxy.addr);
        let flags = [
            "-d",
            dest.as_str(),
            "--insecure-registry",
            proxy.addr.as_str(),
        ];
        let out = case.kiln(&flags, &[]);
        assert!(!out.success(), "{status}: the refused push succeeded");
        assert!(
            out.stderr.contains("immutable")
                && out.stderr.contains("--push-ignore-immutable-tag-errors"),
            "{status}: {}",
            out.stderr
        );
        let outputs = case.path(&format!("builder-output-{status}"));
        fs::create_dir_all(&outputs).unwrap();
        let out = case.build(
            &[&flags[..], &["--push-ignore-immutable-tag-errors"]].concat(),
            &[("BUILDER_OUTPUT", outputs.to_str().unwrap())],
        );
        assert!(
            out.stderr.contains("immutable tag error ignored"),
            "{status}: {}",
            out.stderr
        );
        let digest = out.stdout.trim().lines().last().unwrap().to_string();
        assert_eq!(
            fs::read_to_string(outputs.join("images")).unwrap(),
            format!("{{\"name\":\"{dest}\",\"digest\":\"{digest}\"}}\n")
        );
    }
    // Other refusals still fail with the flag.
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![rule(
            "PUT",
            "/manifests/",
            Fault::Status(400, "manifest invalid"),
            100,
        )],
    );
    let dest = format!("{}/kaniko/invalid:v1", proxy.addr);
    let out = case.kiln(
        &[
            "-d",
            &dest,
            "--insecure-registry",
            &proxy.addr,
            "--push-ignore-immutable-tag-errors",
        ],
        &[],
    );
    assert!(!out.success(), "an ordinary refusal was ignored");
}

#[test]
fn ignore_path_keeps_paths_out_of_layers() {
    if !require_root("RUN steps need root") {
        return;
    }
    let case = Case::new(
        &format!(
            "FROM {}\nRUN mkdir -p /skip /keep && echo s > /skip/f && echo k > /keep/f\n",
            busybox()
        ),
        &[],
    );
    let reg = registry();
    // --whitelist-var-run is accepted with kaniko's warning (what /var/run does in place is
    // `container::tests::ignore_list_has_kernel_and_own_paths`'s).
    let out = case.build(
        &[
            "--no-push",
            "--insecure-registry",
            &reg,
            "--ignore-path=/skip",
            "--whitelist-var-run=false",
            "--oci-layout-path",
            &case.arg("layout"),
        ],
        &[],
    );
    let layout = case.path("layout");
    assert_eq!(layout_entry(&layout, "keep/f").as_deref(), Some("k\n"));
    assert_eq!(layout_entry(&layout, "skip/f"), None);
    assert!(
        out.stderr
            .contains("--whitelist-var-run has been deprecated"),
        "{}",
        out.stderr
    );
}

#[test]
fn base_unpack_is_retried_as_asked() {
    if !require_root("RUN steps need root") {
        return;
    }
    // The base has far more than 5 entries: every unpack of it fails the same way.
    let case = Case::new(&format!("FROM {}\nRUN true\n", busybox()), &[]);
    let reg = registry();
    let flags = [
        "--no-push",
        "--insecure-registry",
        reg.as_str(),
        "--max-layer-entries=5",
    ];
    let out = case.kiln(&flags, &[]);
    assert!(!out.success());
    assert!(!out.stderr.contains("trying again"), "{}", out.stderr);
    let out = case.kiln(&[&flags[..], &["--image-fs-extract-retry=2"]].concat(), &[]);
    assert!(!out.success());
    for n in ["1 of 2", "2 of 2"] {
        assert!(
            out.stderr
                .contains(&format!("(--image-fs-extract-retry, {n})")),
            "{n}: {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("3 of 2"), "{}", out.stderr);
}

/// How many images an `oci:` cache repository holds.
fn cached_entries(dir: &Path) -> usize {
    fs::read(dir.join("index.json"))
        .map(|b| {
            let index: serde_json::Value = serde_json::from_slice(&b).unwrap();
            index["manifests"].as_array().map_or(0, Vec::len)
        })
        .unwrap_or(0)
}

#[test]
fn cache_flags_decide_what_is_stored() {
    if !require_root("RUN steps need root") {
        return;
    }
    let case = Case::new(&format!("FROM {}\nRUN echo a > /a\n", busybox()), &[]);
    let reg = registry();
    let build = |cache: &str, extra: &[&str]| {
        let repo = format!("oci:{}", case.arg(cache));
        let base = [
            "--no-push",
            "--insecure-registry",
            &reg,
            "--cache",
            "--cache-repo",
            &repo,
        ];
        case.build(&[&base[..], extra].concat(), &[]);
        cached_entries(&case.path(cache))
    };
    assert_eq!(build("stored", &[]), 1);
    assert_eq!(build("no-push-cache", &["--no-push-cache"]), 0);
    assert_eq!(build("no-run-layers", &["--cache-run-layers=false"]), 0);
}

#[test]
fn log_flags_shape_the_log() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let case = Case::new("FROM scratch\nCOPY a /a\n", &[("a", "a\n")]);
    let lines = |out: &Output| {
        out.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let out = case.build(&["--no-push", "--log-format=json"], &[]);
    for line in lines(&out) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    let starts_with_year = |l: &String| l.starts_with("20");
    let out = case.build(
        &["--no-push", "--log-format", "text", "--log-timestamp"],
        &[],
    );
    assert!(lines(&out).iter().all(starts_with_year), "{}", out.stderr);
    let out = case.build(&["--no-push", "--log-timestamp=false", "-v", "debug"], &[]);
    let plain = lines(&out);
    assert!(!plain.iter().any(starts_with_year), "{}", out.stderr);
    assert!(plain.iter().any(|l| l.contains("DEBUG")), "{}", out.stderr);
}

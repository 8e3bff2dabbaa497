//! Differential tests: every case of `testdata/corpus` is built by kiln and by buildah (the
//! reference), both images are pushed to the local test registry, pulled back with skopeo,
//! flattened with umoci, and compared path by path (type, mode, owner, size, content, link target,
//! hardlink groups; never timestamps) and config field by config field. A few images are also run
//! with podman. It must not judge kiln by kiln's own reading of an image: only independent tools
//! fetch and flatten.
//!
//! Run it through `bash scripts/test.sh` (which starts the registry and base images), or by hand:
//!   KILN_TEST_REGISTRY=127.0.0.1:5000 cargo test -p kiln-executor --test differential
//! `KILN_DIFF_CASES=a,b` runs a subset; `KILN_DIFF_SELFTEST=1` builds the "kiln" side with buildah
//! too, which shows the harness itself (fetch, flatten, compare) is sound.

mod support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    corpus_cases, diff_configs, diff_trees, fetch_rootfs, image_config, podman_check, registry,
    run_bounded, run_ok, scan_tree, Allowed, Case, BUILDAH_FLAGS,
};

/// Longest a single build may take before it is killed (the Debian apt case is the slowest).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Paths where buildah and kiln may legitimately differ. Keep this short: each entry hides a class
/// of bugs, so each must say why builders are entitled to differ there. It is empty on purpose:
/// two buildah builds of every case (KILN_DIFF_SELFTEST=1) flatten to identical trees, including
/// the Debian apt case (ldconfig and debconf caches compared equal). Candidates, should kiln differ
/// there for a defensible reason: `/var/cache/ldconfig/aux-cache` (records inode data of the build
/// host) and `/var/cache/debconf/*-old` (backups written in hash order).
const ALLOWED: &[Allowed] = &[];

/// Labels a builder adds on its own (none while buildah runs with `--identity-label=false`).
const IGNORED_LABEL_PREFIXES: &[&str] = &["io.buildah."];

/// Images that are also run with podman: (case, arguments, expected trimmed stdout). They check
/// that the config written actually works for a runtime: Entrypoint/Cmd, User, PATH from ENV.
const RUN_CHECKS: &[(&str, &[&str], &str)] = &[
    ("busybox-run", &[], "hello"),
    ("config-fields", &[], "config"),
    ("shell-and-entrypoint", &[], "from-entrypoint"),
    ("user-run", &["id", "-u"], "1000"),
    ("env-run-visibility", &["tool"], "custom-tool"),
    ("debian-apt", &[], "Hello, world!"),
];

/// Progress goes straight to the process's stderr: `eprintln!` would be captured by the test
/// harness until the end, and this test runs for minutes in CI.
fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn selftest() -> bool {
    std::env::var("KILN_DIFF_SELFTEST").is_ok_and(|v| v == "1")
}

/// Builds `case` with kiln and pushes it to `dest`; returns the digest kiln reported in
/// `--digest-file`. This is the one place the executor's command line is spelled out.
fn kiln_build(case: &Case, dest: &str, work: &Path) -> Result<String, String> {
    let digest_file = work.join("kiln.digest");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.arg("--context")
        .arg(format!("dir://{}", case.dir.display()))
        .arg("--dockerfile")
        .arg(case.dockerfile())
        .arg("--destination")
        .arg(dest)
        .arg("--insecure")
        .arg("--digest-file")
        .arg(&digest_file);
    for (k, v) in case.build_args_for("kiln") {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    if let Some(t) = &case.target {
        cmd.arg("--target").arg(t);
    }
    run_ok(&mut cmd, BUILD_TIMEOUT).map_err(|e| format!("kiln build failed: {e}"))?;
    let digest = fs::read_to_string(&digest_file)
        .map_err(|e| {
            format!(
                "kiln exited 0 but wrote no --digest-file {}: {e}",
                digest_file.display()
            )
        })?
        .trim()
        .to_string();
    Ok(digest)
}

/// Builds `case` with buildah (the reference) and pushes it to `dest`.
fn buildah_build(case: &Case, dest: &str, side: &str) -> Result<(), String> {
    let local = format!("localhost/kiln-diff/{}:ref", case.name);
    let mut cmd = Command::new("buildah");
    cmd.args(BUILDAH_FLAGS)
        .args([
            "bud",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--identity-label=false",
            // The OCI config format has no Healthcheck, Shell or OnBuild: buildah drops them
            // unless it writes Docker's format, which kiln's config must match field for field.
            "--format",
            "docker",
            "-f",
        ])
        .arg(case.reference_dockerfile())
        .args(["-t", &local]);
    for (k, v) in case.build_args_for(side) {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    if let Some(t) = &case.target {
        cmd.arg("--target").arg(t);
    }
    cmd.arg(&case.dir);
    // buildah 1.28's chroot isolation sometimes fails to set up a RUN under load ("Close_Fd
    // sealing memfd copy: Device or resource busy"); that is the reference tool's flake, not a
    // build result, so only that failure is retried, a bounded number of times.
    let mut attempt = 1;
    loop {
        match run_ok(&mut cmd, BUILD_TIMEOUT) {
            Ok(_) => break,
            Err(e) if attempt < 3 && e.to_string().contains("sealing memfd copy") => {
                eprintln!(
                    "  buildah hit its memfd flake on {} (attempt {attempt}); retrying",
                    case.name
                );
                attempt += 1;
            }
            Err(e) => return Err(format!("buildah build failed: {e}")),
        }
    }
    let pushed = run_ok(
        Command::new("buildah").args(BUILDAH_FLAGS).args([
            "push",
            "--quiet",
            "--tls-verify=false",
            &local,
            &format!("docker://{dest}"),
        ]),
        BUILD_TIMEOUT,
    )
    .map(|_| ())
    .map_err(|e| format!("buildah push failed: {e}"));
    // vfs keeps a full copy of the root per layer: drop the image now so disk use stays flat.
    let _ = run_bounded(
        Command::new("buildah")
            .args(BUILDAH_FLAGS)
            .args(["rmi", "-f", &local]),
        Duration::from_secs(120),
    );
    pushed
}

/// The manifest digest the registry serves for `image`.
fn registry_digest(image: &str) -> Result<String, String> {
    let out = run_ok(
        Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{image}"),
        ]),
        Duration::from_secs(60),
    )
    .map_err(|e| e.to_string())?;
    Ok(out.stdout.trim().to_string())
}

/// Builds one case both ways and returns every difference found (empty: the case passes).
fn check_case(case: &Case, reg: &str) -> Vec<String> {
    let reference = format!("{reg}/diff/{}:buildah", case.name);
    let candidate = format!("{reg}/diff/{}:kiln", case.name);
    let work = match tempfile::Builder::new()
        .prefix(&format!("kiln-diff-{}-", case.name))
        .tempdir()
    {
        Ok(w) => w,
        Err(e) => return vec![format!("cannot create a temporary directory: {e}")],
    };

    if let Err(e) = buildah_build(case, &reference, "buildah") {
        return vec![format!("reference build: {e}")];
    }
    let built = if selftest() {
        buildah_build(case, &candidate, "kiln").map(|()| None)
    } else {
        kiln_build(case, &candidate, work.path()).map(Some)
    };
    let kiln_digest = match built {
        Ok(d) => d,
        Err(e) => return vec![e],
    };

    let mut problems = Vec::new();
    if let Some(d) = kiln_digest {
        match registry_digest(&candidate) {
            Ok(served) if served == d => {}
            Ok(served) => problems.push(format!(
                "  --digest-file says {d:?} but the registry serves {served} for {candidate}"
            )),
            Err(e) => problems.push(format!("  cannot read the pushed digest: {e}")),
        }
    }

    let trees = fetch_rootfs(&reference, work.path(), "buildah").and_then(|r| {
        let c = fetch_rootfs(&candidate, work.path(), "kiln")?;
        Ok((r, c))
    });
    match trees {
        Ok((r, c)) => match (scan_tree(&r), scan_tree(&c)) {
            (Ok(rt), Ok(ct)) => {
                let d = diff_trees(&rt, &ct, ALLOWED);
                if !d.is_empty() {
                    problems.push("files (buildah != kiln):".to_string());
                    problems.extend(d);
                }
            }
            (Err(e), _) | (_, Err(e)) => problems.push(format!("cannot scan a rootfs: {e}")),
        },
        Err(e) => problems.push(format!("cannot fetch or flatten: {e}")),
    }

    match (image_config(&reference), image_config(&candidate)) {
        (Ok(rc), Ok(cc)) => {
            let d = diff_configs(&rc, &cc, IGNORED_LABEL_PREFIXES);
            if !d.is_empty() {
                problems.push("config (buildah != kiln):".to_string());
                problems.extend(d);
            }
        }
        (Err(e), _) | (_, Err(e)) => problems.push(format!("cannot read a config: {e}")),
    }

    if let Some((_, args, expected)) = RUN_CHECKS.iter().find(|(n, _, _)| *n == case.name) {
        if let Err(e) = podman_check(&candidate, args, expected) {
            problems.push(format!("  {e}"));
        }
    }
    problems
}

#[test]
fn corpus_matches_buildah() {
    let reg = registry();
    let cases = corpus_cases().unwrap_or_else(|e| panic!("{e}"));
    assert!(!cases.is_empty(), "testdata/corpus has no cases");
    let mode = if selftest() {
        "SELFTEST: both sides built by buildah"
    } else {
        "kiln vs buildah"
    };
    progress(&format!("differential: {} cases, {mode}", cases.len()));

    let mut failed = Vec::new();
    for case in &cases {
        let start = Instant::now();
        let problems = check_case(case, &reg);
        let secs = start.elapsed().as_secs_f32();
        if problems.is_empty() {
            progress(&format!("  ok    {} ({secs:.1}s)", case.name));
        } else {
            progress(&format!("  FAIL  {} ({secs:.1}s)", case.name));
            failed.push((case.name.clone(), problems));
        }
    }

    if !failed.is_empty() {
        let mut report = format!(
            "differential: {} of {} cases differ ({mode}):\n",
            failed.len(),
            cases.len()
        );
        for (name, problems) in &failed {
            report.push_str(&format!("\n=== {name}\n"));
            for p in problems {
                report.push_str(p);
                report.push('\n');
            }
        }
        report.push_str(&format!(
            "\nfailed cases: {}\nrerun some with KILN_DIFF_CASES={}\n",
            failed
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            failed
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ));
        panic!("{report}");
    }
}

/// The comparer must see every kind of difference it claims to check; these run without a
/// registry (root is needed for ownership, which tests run as).
mod comparer {
    use super::support::{diff_configs, diff_trees, scan_tree, Allowed};
    use std::fs;
    use std::os::unix::fs::{chown, symlink, PermissionsExt};
    use std::path::Path;

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/file"), "content").unwrap();
        fs::write(root.join("d/sub/exec"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("d/sub/exec"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::create_dir(root.join("sticky")).unwrap();
        fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("file", root.join("d/link")).unwrap();
        symlink("/nowhere", root.join("dangling")).unwrap();
        fs::write(root.join("h1"), "linked").unwrap();
        fs::hard_link(root.join("h1"), root.join("h2")).unwrap();
        chown(root.join("d/file"), Some(1000), Some(1000)).unwrap();
    }

    fn pair() -> (tempfile::TempDir, tempfile::TempDir) {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        sample(a.path());
        sample(b.path());
        (a, b)
    }

    fn diff(a: &Path, b: &Path) -> Vec<String> {
        diff_trees(&scan_tree(a).unwrap(), &scan_tree(b).unwrap(), &[])
    }

    #[test]
    fn identical_trees_have_no_difference() {
        let (a, b) = pair();
        assert_eq!(diff(a.path(), b.path()), Vec::<String>::new());
        let t = scan_tree(a.path()).unwrap();
        assert_eq!(t["/h2"].hardlink_group.as_deref(), Some("/h1"));
        assert_eq!(t["/d/sub/exec"].mode, 0o4755);
        assert_eq!(t["/d/file"].uid, 1000);
    }

    #[test]
    fn detects_mode_difference() {
        let (a, b) = pair();
        fs::set_permissions(b.path().join("sticky"), fs::Permissions::from_mode(0o0777)).unwrap();
        let d = diff(a.path(), b.path());
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("/sticky") && d[0].contains("mode 1777 != 0777"),
            "{d:?}"
        );
    }

    #[test]
    fn detects_owner_difference() {
        let (a, b) = pair();
        chown(b.path().join("d/file"), Some(1000), Some(0)).unwrap();
        let d = diff(a.path(), b.path());
        assert!(
            d.len() == 1 && d[0].contains("owner 1000:1000 != 1000:0"),
            "{d:?}"
        );
    }

    #[test]
    fn detects_content_difference_of_same_size() {
        let (a, b) = pair();
        fs::write(b.path().join("d/file"), "CONTENT").unwrap();
        chown(b.path().join("d/file"), Some(1000), Some(1000)).unwrap();
        let d = diff(a.path(), b.path());
        assert!(d.len() == 1 && d[0].contains("/d/file"), "{d:?}");
    }

    #[test]
    fn detects_symlink_target_and_type_differences() {
        let (a, b) = pair();
        fs::remove_file(b.path().join("d/link")).unwrap();
        symlink("/d/file", b.path().join("d/link")).unwrap();
        fs::remove_file(b.path().join("dangling")).unwrap();
        fs::write(b.path().join("dangling"), "").unwrap();
        let d = diff(a.path(), b.path());
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].contains("/d/link: symlink -> file != symlink -> /d/file"),
            "{d:?}"
        );
        assert!(
            d[1].contains("/dangling: symlink -> /nowhere != file"),
            "{d:?}"
        );
    }

    #[test]
    fn detects_missing_extra_and_broken_hardlinks() {
        let (a, b) = pair();
        fs::remove_file(b.path().join("h2")).unwrap();
        fs::write(b.path().join("h2"), "linked").unwrap();
        fs::remove_dir_all(b.path().join("d/sub")).unwrap();
        fs::write(b.path().join("extra"), "").unwrap();
        let d = diff(a.path(), b.path());
        let text = d.join("\n");
        assert!(text.contains("missing  /d/sub:"), "{text}");
        assert!(text.contains("missing  /d/sub/exec:"), "{text}");
        assert!(text.contains("extra    /extra:"), "{text}");
        assert!(text.contains("differs  /h1: hardlink group"), "{text}");
        assert!(text.contains("differs  /h2: hardlink group"), "{text}");
    }

    #[test]
    fn allowlist_hides_only_its_paths() {
        let (a, b) = pair();
        fs::write(b.path().join("d/sub/new"), "").unwrap();
        fs::write(b.path().join("other"), "").unwrap();
        let allow = [Allowed {
            path: "/d/sub/",
            why: "test",
        }];
        let d = diff_trees(
            &scan_tree(a.path()).unwrap(),
            &scan_tree(b.path()).unwrap(),
            &allow,
        );
        assert!(d.len() == 1 && d[0].contains("/other"), "{d:?}");
    }

    #[test]
    fn config_differences_are_reported_and_empty_equals_absent() {
        let a = serde_json::json!({"os": "linux", "architecture": "amd64", "config": {
            "Env": ["A=1"], "Cmd": ["sh"], "Labels": {"x": "1", "io.buildah.version": "1.28"},
            "ExposedPorts": {}, "User": "app"}});
        let b = serde_json::json!({"os": "linux", "architecture": "amd64", "config": {
            "Env": ["A=2"], "Cmd": ["sh"], "Labels": {"x": "1"}, "Volumes": null,
            "Entrypoint": ["/bin/sh"]}});
        let d = diff_configs(&a, &b, &["io.buildah."]);
        let text = d.join("\n");
        assert_eq!(d.len(), 3, "{text}");
        assert!(text.contains(r#"config.Env: ["A=1"] != ["A=2"]"#), "{text}");
        assert!(
            text.contains(r#"config.Entrypoint: (unset) != ["/bin/sh"]"#),
            "{text}"
        );
        assert!(text.contains(r#"config.User: "app" != (unset)"#), "{text}");
    }

    #[test]
    fn env_order_does_not_matter_but_values_do() {
        let a = serde_json::json!({"config": {"Env": ["PATH=/bin", "A=1"]}});
        let b = serde_json::json!({"config": {"Env": ["A=1", "PATH=/bin"]}});
        assert_eq!(diff_configs(&a, &b, &[]), Vec::<String>::new());
        let c = serde_json::json!({"config": {"Env": ["A=1", "PATH=/usr/bin"]}});
        assert_eq!(diff_configs(&a, &c, &[]).len(), 1);
    }
}

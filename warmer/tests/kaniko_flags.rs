//! Flag parity with kaniko v1.24's warmer, checked against kaniko's own source (read by
//! `scripts/kaniko-flags.sh` at test time): every kaniko warmer flag and shorthand parses with a
//! valid value and has a row in README.md's "kaniko flags and variables" table. See
//! `kiln_testkit::kaniko`.

use clap::Parser;
use kiln_warmer::Args;

#[test]
fn every_kaniko_warmer_flag_parses_and_is_classified() {
    kiln_testkit::kaniko::check_program("warmer", |args| {
        Args::try_parse_from(std::iter::once("kiln-warmer".to_string()).chain(args.iter().cloned()))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

/// kaniko warmer's `--registry-map` and `KANIKO_REGISTRY_MAP`: an image named on a registry that
/// cannot exist (`.invalid`) is pulled from the test registry it is mapped to.
#[test]
fn registry_map_flag_and_variable_remap_pulls() {
    let reg = kiln_testkit::registry();
    let image = "remapped.invalid/kiln-test/busybox:latest";
    let map = format!("remapped.invalid={reg}");
    let warm = |args: &[&str], env: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-warmer"));
        cmd.arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["--insecure-registry", &reg, "--image", image])
            .args(args)
            .env("KILN_TERMINATION_LOG", dir.path().join("termination"))
            .env_remove("KANIKO_REGISTRY_MAP");
        if let Some(value) = env {
            cmd.env("KANIKO_REGISTRY_MAP", value);
        }
        let out = kiln_testkit::run_bounded(&mut cmd, std::time::Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("kiln-warmer: {e}"));
        (out.success(), out.stderr)
    };
    let (ok, log) = warm(&["--registry-map", &map], None);
    assert!(ok, "--registry-map: {log}");
    let (ok, log) = warm(&[], Some(&map));
    assert!(ok, "KANIKO_REGISTRY_MAP: {log}");
    // kaniko's form: pairs separated by `;`.
    let pairs = format!("other.invalid=nowhere.invalid;{map}");
    let (ok, log) = warm(&[], Some(&pairs));
    assert!(ok, "KANIKO_REGISTRY_MAP pairs: {log}");
}

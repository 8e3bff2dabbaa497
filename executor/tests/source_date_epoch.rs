//! `SOURCE_DATE_EPOCH` as BuildKit applies it, with the real kiln-executor binary: from
//! `--build-arg` or the environment, the config's and new history entries' `created`, the same
//! digest from builds made at different times, and a clear refusal of a value that is not a
//! number. Talks only to the local test registry (for busybox).

mod support;

use std::fs;
use std::path::Path;

use kiln_testkit::require_root;
use support::{layout_config, layout_entry, run_executor};

const EPOCH: &str = "1704067200";

fn build(dir: &Path, out: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let ctx = format!("dir://{}", dir.join("ctx").display());
    let layout = dir.join(out).display().to_string();
    let digest = dir.join(format!("{out}.digest")).display().to_string();
    let mut all = vec![
        "--context",
        &ctx,
        "--no-push",
        "--oci-layout-path",
        &layout,
        "--digest-file",
        &digest,
    ];
    all.extend_from_slice(args);
    run_executor(&all, env, None)
}

#[test]
fn source_date_epoch_pins_created_times_and_the_digest() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY a /a\nENV X=1\n").unwrap();
    fs::write(ctx.join("a"), "a\n").unwrap();
    let arg = format!("SOURCE_DATE_EPOCH={EPOCH}");
    let (ok, log) = build(dir.path(), "one", &["--build-arg", &arg], &[]);
    assert!(ok, "{log}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The executor's environment, as docker buildx passes its client's on.
    let (ok, log) = build(dir.path(), "two", &[], &[("SOURCE_DATE_EPOCH", EPOCH)]);
    assert!(ok, "{log}");
    let digest = |out: &str| fs::read_to_string(dir.path().join(format!("{out}.digest"))).unwrap();
    assert_eq!(digest("one"), digest("two"));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("one/index.json")).unwrap()).unwrap();
    // BuildKit's OCI exporter: the index entry is dated, the manifest is not.
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.created"],
        "2024-01-01T00:00:00Z",
        "{index}"
    );
    let config = layout_config(&dir.path().join("one")).unwrap();
    assert_eq!(config["created"], "2024-01-01T00:00:00Z");
    for h in config["history"].as_array().unwrap() {
        assert_eq!(h["created"], "2024-01-01T00:00:00Z", "{h}");
    }
    // Without it, the time of the build.
    let (ok, log) = build(dir.path(), "now", &[], &[]);
    assert!(ok, "{log}");
    assert_ne!(digest("now"), digest("one"));

    let (ok, log) = build(
        dir.path(),
        "bad",
        &["--build-arg", "SOURCE_DATE_EPOCH=yesterday"],
        &[],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("invalid SOURCE_DATE_EPOCH"), "{log}");
}

/// A global `ARG SOURCE_DATE_EPOCH=…` default counts when nothing else sets it, and a RUN sees
/// the value after `ARG SOURCE_DATE_EPOCH`, as any build arg (BuildKit's test of the same).
#[test]
fn dockerfile_default_and_run_steps_see_source_date_epoch() {
    if !require_root("kiln-executor builds need root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "ARG SOURCE_DATE_EPOCH={EPOCH}\nFROM {}/kiln-test/busybox:latest\n\
             ARG SOURCE_DATE_EPOCH\nRUN echo -n \"$SOURCE_DATE_EPOCH\" > /epoch\n",
            kiln_testkit::registry()
        ),
    )
    .unwrap();
    let (ok, log) = build(dir.path(), "default", &[], &[]);
    assert!(ok, "{log}");
    let layout = dir.path().join("default");
    assert_eq!(
        layout_config(&layout).unwrap()["created"],
        "2024-01-01T00:00:00Z"
    );
    assert_eq!(layout_entry(&layout, "/epoch").as_deref(), Some(EPOCH));
    // The environment wins over the Dockerfile's default.
    let (ok, log) = build(dir.path(), "env", &[], &[("SOURCE_DATE_EPOCH", "0")]);
    assert!(ok, "{log}");
    let layout = dir.path().join("env");
    assert_eq!(
        layout_config(&layout).unwrap()["created"],
        "1970-01-01T00:00:00Z"
    );
    assert_eq!(layout_entry(&layout, "/epoch").as_deref(), Some("0"));
}

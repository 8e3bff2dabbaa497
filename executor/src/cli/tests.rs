//! Tests of the executor's command line: kaniko's spellings, values and defaults.

use super::*;

fn parse(args: &[&str]) -> Options {
    let mut full = vec!["kiln-executor"];
    full.extend_from_slice(args);
    Options::try_parse_from(full).expect("flags parse")
}

#[test]
fn kaniko_style_flags_parse() {
    let o = parse(&[
        "--context=dir:///ws",
        "-f",
        "sub/Dockerfile",
        "-d",
        "reg/a:1",
        "--destination=reg/a:2",
        "--build-arg",
        "A=1",
        "--no-push",
        "--ignore-var-run=false",
        "--insecure-registry",
        "r:5000",
        "--verbosity=debug",
        "--reproducible=true",
    ]);
    assert_eq!(o.context, "dir:///ws");
    assert_eq!(o.dockerfile, "sub/Dockerfile");
    assert_eq!(o.destinations, vec!["reg/a:1", "reg/a:2"]);
    assert!(o.no_push);
    assert!(!o.ignore_var_run);
    assert!(o.reproducible);
    assert_eq!(o.logging.verbosity, Verbosity::Debug);
    assert_eq!(o.registry.insecure_registries, vec!["r:5000"]);
}

#[test]
fn defaults_match_kaniko() {
    let o = parse(&[]);
    assert_eq!(o.context, "/workspace/");
    assert_eq!(o.dockerfile, "Dockerfile");
    assert!(o.ignore_var_run);
    assert!(!o.no_push);
    assert_eq!(o.snapshot_mode, None);
    assert!(!o.push_ignore_immutable_tag_errors && !o.force_build_metadata);
}

/// The environment `vars` as a lookup.
fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Parse and apply kaniko's rules with the environment `vars`.
fn resolved(args: &[&str], vars: &[(&str, &str)]) -> Result<Options, String> {
    let mut o = parse(args);
    o.apply_kaniko_rules(env(vars)).map(|()| o)
}

#[test]
fn snapshot_modes_are_accepted_and_noted_once() {
    for mode in ["full", "redo", "time"] {
        let o = resolved(&[&format!("--snapshot-mode={mode}")], &[]).unwrap();
        let notes: Vec<_> = o
            .compat_notes()
            .into_iter()
            .filter(|n| matches!(n, kaniko::Note::Info(m) if m.starts_with("--snapshot-mode")))
            .collect();
        assert_eq!(notes.len(), 1, "{mode}: {notes:?}");
    }
    assert!(Options::try_parse_from(["kiln-executor", "--snapshot-mode=fast"]).is_err());
    // The deprecated spelling wins, with kaniko's warning.
    let o = resolved(&["--snapshot-mode=full", "--snapshotMode=time"], &[]).unwrap();
    assert_eq!(o.snapshot_mode, Some(SnapshotMode::Time));
    assert!(o.notes.contains(&kaniko::Note::Warn(
        "Flag --snapshotMode is deprecated. Use: --snapshot-mode".into()
    )));
}

#[test]
fn deprecated_spellings_mean_the_new_flags() {
    let o = resolved(
        &[
            "--custom-platform=linux/amd64",
            "--customPlatform=linux/arm64",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(o.custom_platform.as_deref(), Some("linux/arm64"));
    // An empty --customPlatform is kaniko's "not given".
    let o = resolved(&["--custom-platform=linux/amd64", "--customPlatform="], &[]).unwrap();
    assert_eq!(o.custom_platform.as_deref(), Some("linux/amd64"));
    // --tarPath and --whitelist-var-run are the same variable as their new names in kaniko: the
    // last one given wins.
    assert_eq!(
        parse(&["--tarPath=/a.tar"]).tar_path.as_deref(),
        Some("/a.tar")
    );
    assert_eq!(
        parse(&["--tar-path=/a.tar", "--tarPath", "/b.tar"])
            .tar_path
            .as_deref(),
        Some("/b.tar")
    );
    assert!(!parse(&["--whitelist-var-run=false"]).ignore_var_run);
    assert!(parse(&["--whitelist-var-run=false", "--ignore-var-run"]).ignore_var_run);
    assert_eq!(parse(&["--kaniko-dir=/k"]).kiln_dir.as_deref(), Some("/k"));
    let args = [
        "kiln-executor",
        "--no-push",
        "--tarPath=/x.tar",
        "--whitelist-var-run=false",
    ];
    let o = Options::parse_kaniko(args.iter().map(Into::into).collect(), env(&[])).unwrap();
    let warnings: Vec<_> = o
        .compat_notes()
        .into_iter()
        .filter(|n| matches!(n, kaniko::Note::Warn(_)))
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn values_are_read_like_pflag() {
    // Go's boolean spellings, and the last value of a single-valued flag.
    assert!(parse(&["--no-push=1"]).no_push);
    assert!(parse(&["--reproducible=T"]).reproducible);
    assert!(!parse(&["--cache-run-layers=False"]).cache_run_layers);
    assert!(parse(&["--log-timestamp=TRUE"]).logging.log_timestamp);
    assert!(Options::try_parse_from(["kiln-executor", "--no-push=yes"]).is_err());
    assert_eq!(parse(&["-f", "a", "--dockerfile=b"]).dockerfile, "b");
    assert_eq!(
        parse(&["--target=a", "--target", "b"]).target.as_deref(),
        Some("b")
    );
}

#[test]
fn kaniko_no_push_overrides_the_flag() {
    // kaniko: KANIKO_NO_PUSH, when set, replaces --no-push either way (strconv.ParseBool).
    for (value, want) in [
        ("true", true),
        ("1", true),
        ("T", true),
        ("false", false),
        ("0", false),
    ] {
        let o = resolved(&["-d", "r/a"], &[("KANIKO_NO_PUSH", value)]).unwrap();
        assert_eq!(o.no_push, want, "{value}");
        let o = resolved(&["-d", "r/a", "--no-push"], &[("KANIKO_NO_PUSH", value)]).unwrap();
        assert_eq!(o.no_push, want, "--no-push with {value}");
    }
    assert!(resolved(&["--no-push"], &[]).unwrap().no_push);
    let err = resolved(&["-d", "r/a"], &[("KANIKO_NO_PUSH", "yes")]).unwrap_err();
    assert!(
        err.contains("KANIKO_NO_PUSH") && err.contains("\"yes\""),
        "{err}"
    );
}

#[test]
fn kaniko_registry_variables_add_to_the_flags() {
    let o = resolved(
        &["--registry-mirror=m1", "--registry-map=a.io=b.io"],
        &[
            ("KANIKO_REGISTRY_MIRROR", "m2;m3"),
            ("KANIKO_REGISTRY_MAP", "c.io=d.io;e.io=f.io"),
        ],
    )
    .unwrap();
    // A mirror is the whole value (kaniko's multiArg.Set); a map is parsed later like the flag.
    assert_eq!(o.registry.registry_mirrors, ["m1", "m2;m3"]);
    assert_eq!(o.registry_map, ["a.io=b.io", "c.io=d.io;e.io=f.io"]);
    let maps = kiln_oci::registry::parse_registry_maps(&o.registry_map).unwrap();
    assert_eq!(maps.len(), 3, "{maps:?}");
    let o = resolved(
        &[],
        &[("KANIKO_REGISTRY_MIRROR", ""), ("KANIKO_REGISTRY_MAP", "")],
    )
    .unwrap();
    assert!(o.registry.registry_mirrors.is_empty() && o.registry_map.is_empty());
}

#[test]
fn bucket_replaces_a_context_with_a_scheme_only() {
    // kaniko's resolveSourceContext: a plain --context path wins over --bucket.
    assert_eq!(parse(&["-b", "bk"]).effective_context(), "/workspace/");
    assert_eq!(
        parse(&["-c", "", "-b", "bk"]).effective_context(),
        "gs://bk"
    );
    assert_eq!(
        parse(&["-c", "dir:///w", "--bucket=s3://bk/c.tar.gz"]).effective_context(),
        "s3://bk/c.tar.gz"
    );
    assert_eq!(parse(&["-c", "dir:///w"]).effective_context(), "dir:///w");
}

#[test]
fn default_cache_dir_is_read_when_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut o = parse(&[]);
    o.resolve_default_cache_dir(d);
    assert_eq!(o.base_cache_dir().as_deref(), Some(d));
    let mut o = parse(&["--cache-dir=/given"]);
    o.resolve_default_cache_dir(d);
    assert_eq!(o.base_cache_dir().as_deref(), Some("/given"));
    let mut o = parse(&[]);
    o.resolve_default_cache_dir(&format!("{d}/missing"));
    assert_eq!(o.base_cache_dir(), None);
}

#[test]
fn differences_by_design_are_noted_once_each() {
    let o = resolved(
        &[
            "--use-new-run",
            "--compressed-caching=false",
            "--cleanup",
            "--skip-push-permission-check",
            "--skip-unused-stages=true",
        ],
        &[
            ("BENCHMARK_FILE", "/tmp/b"),
            ("SNAPSHOT_TIMEOUT_DURATION", "1h"),
        ],
    )
    .unwrap();
    let notes = o.compat_notes();
    for flag in [
        "--use-new-run",
        "--compressed-caching",
        "--cleanup",
        "--skip-push-permission-check",
        "BENCHMARK_FILE",
        "SNAPSHOT_TIMEOUT_DURATION",
    ] {
        let n = notes
            .iter()
            .filter(|n| matches!(n, kaniko::Note::Info(m) if m.starts_with(flag)))
            .count();
        assert_eq!(n, 1, "{flag}: {notes:?}");
    }
    // Nothing to say about kaniko's defaults, except the stages Kiln skips.
    let notes = resolved(&[], &[]).unwrap().compat_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(matches!(&notes[0], kaniko::Note::Info(m) if m.contains("--skip-unused-stages")));
}

#[test]
fn compression_flags_mean_what_they_mean_to_kaniko() {
    let c = |args: &[&str]| parse(args).layer_compression();
    assert_eq!(c(&[]), Ok(Compression::Gzip { level: 1 }));
    assert_eq!(
        c(&["--compression-level", "-1"]),
        Ok(Compression::Gzip { level: 1 })
    );
    assert_eq!(
        c(&["--compression=gzip", "--compression-level=9"]),
        Ok(Compression::Gzip { level: 9 })
    );
    assert_eq!(
        c(&["--compression", "zstd"]),
        Ok(Compression::Zstd { level: 1 })
    );
    assert_eq!(
        c(&["--compression=zstd", "--compression-level", "19"]),
        Ok(Compression::Zstd { level: 19 })
    );
    let err = c(&["--compression-level=10"]).unwrap_err();
    assert!(err.contains("gzip levels are 1"), "{err}");
    let err = c(&["--compression=zstd", "--compression-level=23"]).unwrap_err();
    assert!(err.contains("zstd levels"), "{err}");
    assert!(Options::try_parse_from(["kiln-executor", "--compression=bzip2"]).is_err());
    // kaniko's memory switch changes nothing here and is accepted both ways.
    for v in ["--compressed-caching=false", "--compressed-caching"] {
        assert!(Options::try_parse_from(["kiln-executor", v]).is_ok(), "{v}");
    }
}

#[test]
fn bounds_have_defaults_and_take_units() {
    let o = parse(&[]);
    assert_eq!(o.max_build_size, Limit::at(50 << 30));
    assert_eq!(o.max_layer_entries, Limit::at(1_000_000));
    assert_eq!(o.registry.max_layer_size, Limit::at(10 << 30));
    assert_eq!(o.registry.max_manifest_size, Limit::at(4 << 20));
    let o = parse(&[
        "--max-build-size=1GiB",
        "--max-layer-entries",
        "10",
        "--max-layer-size=1MiB",
        "--max-manifest-size",
        "65536",
    ]);
    assert_eq!(o.max_build_size, Limit::at(1 << 30));
    assert_eq!(o.max_layer_entries, Limit::at(10));
    assert_eq!(o.registry.max_layer_size, Limit::at(1 << 20));
    assert_eq!(o.registry.max_manifest_size, Limit::at(65536));
    let o = parse(&[
        "--max-build-size=unlimited",
        "--max-layer-entries=unlimited",
    ]);
    assert_eq!(o.max_build_size, Limit::UNLIMITED);
    assert_eq!(o.max_layer_entries, Limit::UNLIMITED);
    for bad in [
        "--max-layer-entries=10k",
        "--max-build-size=1GB",
        "--max-build-size=0",
    ] {
        assert!(
            Options::try_parse_from(["kiln-executor", bad]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn unknown_flags_are_errors() {
    assert!(Options::try_parse_from(["kiln-executor", "--no-such-flag"]).is_err());
}

#[test]
fn bare_build_arg_reads_environment() {
    std::env::set_var("KILN_TEST_BARE_ARG", "from-env");
    let o = parse(&[
        "--build-arg",
        "KILN_TEST_BARE_ARG",
        "--build-arg",
        "KILN_TEST_UNSET_ARG_X",
    ]);
    assert_eq!(
        o.build_arg_pairs(),
        vec![("KILN_TEST_BARE_ARG".to_string(), "from-env".to_string())]
    );
}

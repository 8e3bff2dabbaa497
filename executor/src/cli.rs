//! The kaniko-compatible command line of `kiln-executor`. Parses and validates flags only;
//! turning them into a build is [`crate::build`]'s job.
//!
//! Booleans accept `--flag`, `--flag=true` and `--flag=false` like Go's pflag, so kaniko
//! invocations work unchanged. Flags kaniko has that Kiln does not implement yet are accepted by
//! the parser and then rejected by [`Options::check_supported`] with a message naming them,
//! never silently ignored.

use clap::{ArgAction, Parser, ValueEnum};

use crate::snapshot::Compression;
use kiln_oci::flags::RegistryFlags;
use kiln_oci::limits::{self, Limit};
use kiln_oci::registry::{Platform, RegistryOptions};

pub use kiln_common::logging::{LogFlags, LogFormat, Verbosity};

/// Where RUN steps execute (Kiln's own flag; kaniko always builds in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum IsolationFlag {
    /// In-place inside a container, chroot elsewhere.
    #[default]
    Auto,
    /// Unpack into a private root directory and run each RUN chrooted in private namespaces.
    Chroot,
    /// Unpack over `/` and run directly: only inside a container (or with `--force`).
    InPlace,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kiln-executor",
    version,
    about = "Build an OCI image from a Dockerfile without a Docker daemon (kaniko-compatible flags)"
)]
pub struct Options {
    /// Build context: a directory (`dir://` or a plain path), a tarball (`tar://PATH`, `tar://stdin`,
    /// or an `https://` URL), or a git repository (`git://host/repo.git#ref`, `https://…/repo.git#ref`).
    #[arg(short = 'c', long, default_value = "/workspace/")]
    pub context: String,

    /// Sub-directory of the context to use as the context root.
    #[arg(long = "context-sub-path", default_value = "")]
    pub context_sub_path: String,

    /// Path to the Dockerfile (absolute, or relative to the context).
    #[arg(short = 'f', long, default_value = "Dockerfile")]
    pub dockerfile: String,

    /// Registry reference to push the image to; repeat for several.
    #[arg(short = 'd', long = "destination")]
    pub destinations: Vec<String>,

    /// Build argument `KEY=VALUE`; a bare `KEY` takes its value from the environment.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,

    /// Stage to build (name or index); the last stage by default.
    #[arg(long)]
    pub target: Option<String>,

    /// Label `KEY=VALUE` added to the image config.
    #[arg(long = "label")]
    pub labels: Vec<String>,

    /// Build but push nowhere.
    #[arg(long = "no-push", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub no_push: bool,

    /// The registry flags kiln-warmer takes too.
    #[command(flatten)]
    pub registry: RegistryFlags,

    /// Platform to build for, e.g. `linux/amd64` or `linux/arm64/v8`.
    #[arg(long = "custom-platform")]
    pub custom_platform: Option<String>,

    /// Strip timestamps so identical inputs give identical digests.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub reproducible: bool,

    /// Take one snapshot at the end instead of one per step.
    #[arg(long = "single-snapshot", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub single_snapshot: bool,

    /// Path (in the image) to leave out of snapshots; repeatable.
    #[arg(long = "ignore-path")]
    pub ignore_paths: Vec<String>,

    /// Leave /var/run out of snapshots (kaniko's default).
    #[arg(long = "ignore-var-run", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub ignore_var_run: bool,

    /// Build only the stages the target needs (Kiln's default; kaniko's is to build every stage up
    /// to the target). `--skip-unused-stages=false` builds them all, as kaniko does by default.
    #[arg(long = "skip-unused-stages", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub skip_unused_stages: Option<bool>,

    /// The logging flags kiln-warmer takes too.
    #[command(flatten)]
    pub logging: LogFlags,

    /// Write the image as an OCI image layout into this directory.
    #[arg(long = "oci-layout-path")]
    pub oci_layout_path: Option<String>,

    /// Write the image digest to this file.
    #[arg(long = "digest-file")]
    pub digest_file: Option<String>,

    /// Write `repository@digest` for every destination to this file.
    #[arg(long = "image-name-with-digest-file")]
    pub image_name_with_digest_file: Option<String>,

    /// Write the image as a docker-archive tarball (`docker load`/`podman load`) to this file.
    #[arg(long = "tar-path")]
    pub tar_path: Option<String>,

    /// Write `repository:tag@digest` for every destination to this file.
    #[arg(long = "image-name-tag-with-digest-file")]
    pub image_name_tag_with_digest_file: Option<String>,

    /// Build in place over `/` even where Kiln does not detect a container.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub force: bool,

    /// Where RUN steps execute (Kiln extension): auto, chroot or in-place.
    #[arg(long, value_enum, default_value = "auto")]
    pub isolation: IsolationFlag,

    /// Working directory for downloaded blobs, layers and stage roots (default: `$KILN_DIR`,
    /// `$KANIKO_DIR`, `/kiln` in a container, else a temporary directory).
    #[arg(long = "kiln-dir")]
    pub kiln_dir: Option<String>,

    /// Use the layer cache: before a RUN (and, with `--cache-copy-layers`, a COPY/ADD) look up the
    /// step's cache key in `--cache-repo` and apply the cached layer instead of executing it;
    /// layers of steps that miss are pushed there in the background.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub cache: bool,

    /// Repository holding cached layers, one single-layer image tagged with each step's key
    /// (default: `<first --destination repository>/cache`), or `oci:/path` for an OCI layout directory.
    #[arg(long = "cache-repo")]
    pub cache_repo: Option<String>,

    /// Base-image cache directory filled by `kiln-warmer`: base images (and `COPY --from=<image>`)
    /// found there are read from it, digests verified, instead of being pulled.
    #[arg(long = "cache-dir")]
    pub cache_dir: Option<String>,

    /// How long cached layers (by their creation time) and base images warmed by tag stay usable,
    /// e.g. `336h` (two weeks, the default), `30m`.
    #[arg(long = "cache-ttl")]
    pub cache_ttl: Option<String>,

    /// Cache COPY and ADD layers too (with `--cache`); off by default as in kaniko, because copying
    /// is usually as fast as fetching the cached layer.
    #[arg(long = "cache-copy-layers", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub cache_copy_layers: bool,

    /// Cache RUN layers (with `--cache`); on by default.
    #[arg(long = "cache-run-layers", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub cache_run_layers: bool,

    /// With `--cache`, look up cached layers but never push new ones (a read-only cache).
    #[arg(long = "no-push-cache", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub no_push_cache: bool,

    /// Pull images of a registry from others first: `ORIGINAL=REMAP1;REMAP2` (repeatable).
    #[arg(long = "registry-map")]
    pub registry_map: Vec<String>,

    /// Retry each push request this many times, with backoff (default 0).
    #[arg(long = "push-retry")]
    pub push_retry: Option<u32>,

    /// Retry each pull request this many times, with backoff (default 0).
    #[arg(long = "image-download-retry")]
    pub image_download_retry: Option<u32>,

    /// Git context options: `branch=NAME,single-branch=BOOL,recurse-submodules=BOOL,insecure-skip-tls=BOOL`.
    #[arg(long = "git")]
    pub git: Option<String>,

    // ---- bounds (Kiln's own; --max-manifest-size and --max-layer-size are registry flags) ----
    /// Largest total of decompressed layers one build unpacks, base images, `COPY --from`
    /// images and cache hits together (bytes, or KiB, MiB, GiB, TiB; `unlimited`).
    #[arg(long = "max-build-size", value_parser = limits::parse_size, default_value = "50GiB")]
    pub max_build_size: Limit,
    /// Most entries (files, directories, links, whiteouts) in one layer (`unlimited` for none).
    #[arg(long = "max-layer-entries", value_parser = limits::parse_count, default_value = "1000000")]
    pub max_layer_entries: Limit,

    // ---- kaniko flags accepted for compatibility: no-ops, or rejected by check_supported ----
    /// kaniko's alternative RUN implementation; Kiln has one way to run, so this changes nothing.
    #[arg(long = "use-new-run", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", hide = true)]
    pub use_new_run: bool,
    #[arg(long = "snapshot-mode", hide = true)]
    pub snapshot_mode: Option<String>,
    /// kaniko's switch for keeping compressed layers in memory to save re-compression; Kiln
    /// streams every layer to disk once, so either value builds the same image with flat memory.
    #[arg(long = "compressed-caching", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", hide = true)]
    pub compressed_caching: bool,
    #[arg(long = "cleanup", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", hide = true)]
    pub cleanup: bool,

    // ---- layer compression ----
    /// Compression of the layers Kiln writes: gzip (the default) or zstd (smaller and much faster
    /// to write and read; needs containerd >= 1.5, CRI-O or podman to run).
    #[arg(long = "compression", value_enum, default_value_t = CompressionFlag::Gzip)]
    pub compression: CompressionFlag,
    /// Compression level: gzip 1-9, zstd 1-22. Not set (or 0 or negative, as kaniko treats them):
    /// level 1, kaniko's default.
    #[arg(long = "compression-level", allow_negative_numbers = true)]
    pub compression_level: Option<i32>,
}

/// `--compression` values (kaniko's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum CompressionFlag {
    #[default]
    Gzip,
    Zstd,
}

impl Options {
    /// Reject flags that are parsed for kaniko compatibility but not implemented yet, naming each one.
    pub fn check_supported(&self) -> Result<(), String> {
        let mut unsupported: Vec<&str> = Vec::new();
        // Kiln always detects changes from file metadata (kaniko's `redo`/`time` modes are subsumed);
        // `full` re-hashing is not offered.
        if self.snapshot_mode.as_deref().is_some_and(|m| m == "full") {
            unsupported.push("--snapshot-mode=full");
        }
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "these kaniko flags are not supported by this version of kiln-executor yet: {}; remove them to build",
                unsupported.join(", ")
            ))
        }
    }

    /// The layer compression `--compression` and `--compression-level` ask for. Like kaniko, a
    /// level that is not set, 0 or negative means the default level 1 (go-containerregistry's
    /// `gzip.BestSpeed`, which kaniko writes with, and zstd's fastest standard level).
    pub fn layer_compression(&self) -> Result<Compression, String> {
        let level = self.compression_level.filter(|l| *l > 0);
        match self.compression {
            CompressionFlag::Gzip => match level {
                None => Ok(Compression::default()),
                Some(l @ 1..=9) => Ok(Compression::Gzip { level: l as u32 }),
                Some(l) => Err(format!(
                    "--compression-level={l}: gzip levels are 1 (fastest) to 9 (smallest)"
                )),
            },
            CompressionFlag::Zstd => match level {
                None => Ok(Compression::Zstd { level: 1 }),
                Some(l @ 1..=22) => Ok(Compression::Zstd { level: l }),
                Some(l) => Err(format!(
                    "--compression-level={l}: zstd levels are 1 (fastest) to 22 (smallest)"
                )),
            },
        }
    }

    /// `--cache-ttl` as a duration (kaniko's two weeks when not given).
    pub fn cache_ttl(&self) -> Result<std::time::Duration, String> {
        match &self.cache_ttl {
            None => Ok(std::time::Duration::from_secs(336 * 3600)),
            Some(text) => kiln_common::duration::parse_ns(text)
                .filter(|ns| *ns >= 0)
                .map(|ns| std::time::Duration::from_nanos(ns as u64))
                .ok_or_else(|| {
                    format!("--cache-ttl={text}: expected a duration such as 336h, 90m or 30s")
                }),
        }
    }

    /// `--build-arg` values as `(key, value)`; a bare `KEY` reads the environment (kaniko's rule) and
    /// is dropped when the variable is unset.
    pub fn build_arg_pairs(&self) -> Vec<(String, String)> {
        kiln_dockerfile::stages::build_args_from_flags(&self.build_args)
    }

    /// Registry options for `platform`: the shared registry flags, plus the executor's own
    /// `--registry-map`, `--push-retry` and `--image-download-retry`.
    pub fn registry_options(&self, platform: Platform) -> RegistryOptions {
        RegistryOptions {
            registry_maps: self.registry_map.clone(),
            push_retries: self.push_retry.unwrap_or(0),
            pull_retries: self.image_download_retry.unwrap_or(0),
            ..self.registry.options(platform)
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert!(o.check_supported().is_ok());
    }

    #[test]
    fn unimplemented_flags_are_named() {
        let o = parse(&[
            "--compressed-caching=false",
            "--snapshot-mode=full",
            "--cache=true",
            "--git",
            "branch=main",
        ]);
        let err = o.check_supported().unwrap_err();
        assert!(!err.contains("--compressed-caching"), "{err}");
        assert!(err.contains("--snapshot-mode=full"), "{err}");
        assert!(!err.contains("--cache"), "{err}");
        assert!(!err.contains("--git"), "{err}");
        assert!(parse(&["--tar-path", "/x.tar"]).check_supported().is_ok());
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
            assert!(parse(&[v]).check_supported().is_ok(), "{v}");
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
}

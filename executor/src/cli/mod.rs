//! The kaniko-compatible command line of `kiln-executor`. Parses and validates flags only;
//! turning them into a build is [`crate::build`]'s job.
//!
//! Every flag of kaniko v1.24's executor is accepted with kaniko's meaning, its deprecated
//! spellings included (`--snapshotMode`, `--customPlatform`, `--tarPath`, `--whitelist-var-run`),
//! and values are read as Go's pflag reads them: booleans take `--flag`, `--flag=VALUE` with Go's
//! spellings ([`kiln_common::goflag::parse_bool`]), and a single-valued flag given twice keeps the
//! last value. kaniko's environment variables are applied by [`kaniko`]. Where Kiln differs from
//! kaniko by design, [`Options::compat_notes`] says how, once per build; the README's "kaniko
//! flags and variables" table classifies each flag and variable (checked against kaniko's source
//! by `tests/kaniko_flags.rs`).

use clap::{ArgAction, Parser, ValueEnum};

use crate::snapshot::Compression;
use kiln_common::goflag::parse_bool as go_bool;
use kiln_oci::flags::RegistryFlags;
use kiln_oci::limits::{self, Limit};
use kiln_oci::registry::{Platform, RegistryOptions};

pub use kiln_common::logging::{LogFlags, LogFormat, Verbosity};

pub mod kaniko;
#[cfg(test)]
mod tests;

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
    about = "Build an OCI image from a Dockerfile without a Docker daemon (kaniko-compatible flags)",
    // pflag: a single-valued flag given twice keeps the last value.
    args_override_self = true
)]
pub struct Options {
    /// Build context: a directory (`dir://` or a plain path), a tarball (`tar://PATH`, `tar://stdin`,
    /// or an `https://` URL), or a git repository (`git://host/repo.git#ref`, `https://…/repo.git#ref`).
    #[arg(short = 'c', long, default_value = "/workspace/")]
    pub context: String,

    /// kaniko's hidden build-context bucket: `NAME` means `gs://NAME`, a value with a scheme is
    /// used as is. As in kaniko, it replaces `--context` only when `--context` is empty or has a
    /// scheme (`dir://`, `tar://`, …); see [`Options::effective_context`].
    #[arg(short = 'b', long, hide = true)]
    pub bucket: Option<String>,

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
    #[arg(long = "no-push", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub no_push: bool,

    /// The registry flags kiln-warmer takes too.
    #[command(flatten)]
    pub registry: RegistryFlags,

    /// Platform to build for, e.g. `linux/amd64` or `linux/arm64/v8`; several separated by
    /// commas build one image per platform, pushed as one image index (`--platform` is the same
    /// flag, as in docker buildx).
    #[arg(long = "custom-platform", visible_alias = "platform")]
    pub custom_platform: Option<String>,

    /// kaniko's deprecated spelling of `--custom-platform`; when not empty it wins over
    /// `--custom-platform`, as in kaniko.
    #[arg(long = "customPlatform", hide = true)]
    pub custom_platform_deprecated: Option<String>,

    /// Strip timestamps so identical inputs give identical digests.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub reproducible: bool,

    /// Name the final stage's base image in the manifest with the OCI annotations
    /// `org.opencontainers.image.base.name` and `.base.digest`, as buildah and podman do (Kiln
    /// extension; BuildKit and kaniko write neither, and the name makes the digest depend on how
    /// the base is spelled).
    #[arg(long = "base-image-annotations", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub base_image_annotations: bool,

    /// Take one snapshot at the end instead of one per step.
    #[arg(long = "single-snapshot", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub single_snapshot: bool,

    /// Path (in the image) to leave out of snapshots; repeatable.
    #[arg(long = "ignore-path")]
    pub ignore_paths: Vec<String>,

    /// Leave /var/run out of snapshots (kaniko's default). `--whitelist-var-run` is kaniko's
    /// deprecated spelling of the same flag.
    #[arg(long = "ignore-var-run", alias = "whitelist-var-run", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool)]
    pub ignore_var_run: bool,

    /// Build only the stages the target needs (Kiln's default; kaniko's is to build every stage up
    /// to the target). `--skip-unused-stages=false` builds them all, as kaniko does by default.
    #[arg(long = "skip-unused-stages", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
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
    /// `--tarPath` is kaniko's deprecated spelling of the same flag.
    #[arg(long = "tar-path", alias = "tarPath")]
    pub tar_path: Option<String>,

    /// Write `repository:tag@digest` for every destination to this file.
    #[arg(long = "image-name-tag-with-digest-file")]
    pub image_name_tag_with_digest_file: Option<String>,

    /// Build in place over `/` even where Kiln does not detect a container.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub force: bool,

    /// Where RUN steps execute (Kiln extension): auto, chroot or in-place.
    #[arg(long, value_enum, default_value = "auto")]
    pub isolation: IsolationFlag,

    /// Working directory for downloaded blobs, layers and stage roots (default: `$KILN_DIR`,
    /// `$KANIKO_DIR`, `/kiln` in a container, else a temporary directory). `--kaniko-dir` is
    /// kaniko's name for it; like kaniko's, the flag wins over `$KANIKO_DIR`.
    #[arg(long = "kiln-dir", alias = "kaniko-dir")]
    pub kiln_dir: Option<String>,

    /// Use the layer cache: before a RUN (and, with `--cache-copy-layers`, a COPY/ADD) look up the
    /// step's cache key in `--cache-repo` and apply the cached layer instead of executing it;
    /// layers of steps that miss are pushed there in the background.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub cache: bool,

    /// Repository holding cached layers, one single-layer image tagged with each step's key
    /// (default: `<first --destination repository>/cache`), or `oci:/path` for an OCI layout directory.
    #[arg(long = "cache-repo")]
    pub cache_repo: Option<String>,

    /// Base-image cache directory filled by `kiln-warmer`: base images (and `COPY --from=<image>`)
    /// found there are read from it, digests verified, instead of being pulled.
    #[arg(long = "cache-dir")]
    pub cache_dir: Option<String>,

    /// A secret for `RUN --mount=type=secret`, docker buildx's syntax: `id=ID,src=FILE`,
    /// `id=ID,env=VARIABLE`, or `id=ID` (the variable `ID` if set, else the file `ID`); repeatable.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,

    /// An ssh agent for `RUN --mount=type=ssh`, docker buildx's syntax: `default` (the agent at
    /// `$SSH_AUTH_SOCK`), `ID=SOCKET`, or `ID=KEYFILE[,KEYFILE...]` (unencrypted private keys,
    /// served by an agent of Kiln's own that only lists and signs); repeatable.
    #[arg(long = "ssh")]
    pub ssh: Vec<String>,

    /// Allow an entitlement, docker buildx's flag (repeatable, or a comma-separated list):
    /// `network.host` for `RUN --network=host`, `security.insecure` for `RUN --security=insecure`.
    #[arg(long = "allow")]
    pub allow: Vec<String>,

    /// Directory holding the credentials of a git context as a Kubernetes Secret mounts them
    /// (Kiln's own): `token`, or `username` and `password` (a `kubernetes.io/basic-auth`
    /// Secret). They take the place of `GIT_TOKEN`/`GIT_USERNAME`/`GIT_PASSWORD`.
    #[arg(long = "git-secret-dir")]
    pub git_secret_dir: Option<String>,

    /// Directory keeping `RUN --mount=type=cache` caches between builds (default:
    /// `<kiln dir>/mount-cache` when a kiln dir is set, else `$TMPDIR/kiln-mount-cache`).
    #[arg(long = "mount-cache-dir")]
    pub mount_cache_dir: Option<String>,

    /// How long cached layers (by their creation time) and base images warmed by tag stay usable,
    /// e.g. `336h` (two weeks, the default), `30m`.
    #[arg(long = "cache-ttl")]
    pub cache_ttl: Option<String>,

    /// Cache COPY and ADD layers too (with `--cache`); off by default as in kaniko, because copying
    /// is usually as fast as fetching the cached layer.
    #[arg(long = "cache-copy-layers", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub cache_copy_layers: bool,

    /// Cache RUN layers (with `--cache`); on by default.
    #[arg(long = "cache-run-layers", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool)]
    pub cache_run_layers: bool,

    /// With `--cache`, look up cached layers but never push new ones (a read-only cache).
    #[arg(long = "no-push-cache", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
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

    /// A push the registry refuses because the tag is immutable (kaniko's check: the error says
    /// "The repository has enabled tag immutability" (Artifact Registry) or "cannot be
    /// overwritten because the repository is immutable" (ECR)) counts as pushed.
    #[arg(long = "push-ignore-immutable-tag-errors", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub push_ignore_immutable_tag_errors: bool,

    /// Unpack a base image again this many times when unpacking it fails (default 0), one
    /// second apart and doubling, as kaniko retries its filesystem extraction.
    #[arg(long = "image-fs-extract-retry")]
    pub image_fs_extract_retry: Option<u32>,

    /// Give every step a layer, metadata-only steps (ENV, LABEL, …) and steps that changed
    /// nothing included (an empty layer), as kaniko does with this flag.
    #[arg(long = "force-build-metadata", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub force_build_metadata: bool,

    /// kaniko checks that it may push to the destinations before it builds, unless this is set;
    /// Kiln never checks first (a refused push fails the build at its end), so either value
    /// builds alike.
    #[arg(long = "skip-push-permission-check", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub skip_push_permission_check: Option<bool>,

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

    // ---- kaniko flags Kiln differs on by design (Options::compat_notes says how) ----
    /// kaniko's alternative RUN implementation; Kiln has one way to run, so this changes nothing.
    #[arg(long = "use-new-run", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool, hide = true)]
    pub use_new_run: bool,
    /// kaniko's change detection (`full`, `redo`, `time`); Kiln has one, see
    /// [`Options::compat_notes`].
    #[arg(long = "snapshot-mode", value_enum)]
    pub snapshot_mode: Option<SnapshotMode>,
    /// kaniko's deprecated spelling of `--snapshot-mode`; when given it wins, as in kaniko.
    #[arg(long = "snapshotMode", value_enum, hide = true)]
    pub snapshot_mode_deprecated: Option<SnapshotMode>,
    /// kaniko's switch for keeping compressed layers in memory to save re-compression; Kiln
    /// streams every layer to disk once, so either value builds the same image with flat memory.
    #[arg(long = "compressed-caching", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool, hide = true)]
    pub compressed_caching: bool,
    /// kaniko deletes the root filesystem after the build so the container can build again;
    /// Kiln clears it before each in-place build instead, see [`Options::compat_notes`].
    #[arg(long = "cleanup", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool, hide = true)]
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

    /// Media types of the image written (Kiln's own; buildah's `--format`, BuildKit's
    /// `oci-mediatypes`): `oci` (the default) or `docker` (Docker's schema 2 manifest and config,
    /// and a Docker manifest list for several platforms), for registries and tools that take
    /// only Docker's. zstd layers have no Docker media type.
    #[arg(long = "image-format", value_enum, default_value_t = ImageFormat::Oci)]
    pub image_format: ImageFormat,

    /// What [`kaniko`]'s rules noted while applying themselves (deprecated spellings, variables
    /// that changed a flag), logged once by [`kaniko::log_notes`].
    #[arg(skip)]
    pub notes: Vec<kaniko::Note>,
    /// kaniko's default `--cache-dir`, when it exists and no `--cache-dir` is given.
    #[arg(skip)]
    pub cache_dir_default: Option<String>,
}

/// `--snapshot-mode` values (kaniko's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotMode {
    Full,
    Redo,
    Time,
}

/// `--image-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ImageFormat {
    #[default]
    Oci,
    Docker,
}

/// `--compression` values (kaniko's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum CompressionFlag {
    #[default]
    Gzip,
    Zstd,
}

impl Options {
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

//! Layer-cache keys: the sha256 chain that names a build step's result. Computes keys from plain
//! values (base identity, previous key, expanded instruction, visible variables, config state,
//! the files a COPY/ADD reads); it never runs a step, looks anything up or hashes a stored layer.
//!
//! Every field is written with a label and a length prefix, so no two different inputs can
//! produce the same byte stream (`"ab" + "c"` and `"a" + "bc"` differ).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use kiln_oci::image::ImageConfig;

/// Bumped whenever the composition of keys changes, so old cache entries simply stop matching.
const KEY_VERSION: &str = "kiln-layer-cache-v1";

/// A sha256 over labelled, length-prefixed fields.
#[derive(Clone)]
pub struct KeyHasher(Sha256);

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyHasher {
    pub fn new() -> KeyHasher {
        let mut h = KeyHasher(Sha256::new());
        h.field("version", KEY_VERSION.as_bytes());
        h
    }

    pub fn field(&mut self, label: &str, value: &[u8]) -> &mut Self {
        self.0.update((label.len() as u64).to_le_bytes());
        self.0.update(label.as_bytes());
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    pub fn str(&mut self, label: &str, value: &str) -> &mut Self {
        self.field(label, value.as_bytes())
    }

    pub fn list(&mut self, label: &str, values: &[String]) -> &mut Self {
        self.field(label, &(values.len() as u64).to_le_bytes());
        for v in values {
            self.str(label, v);
        }
        self
    }

    /// The key as 64 lowercase hex digits (also the cache image's tag).
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// The key a `FROM scratch` stage starts its chain with.
pub fn scratch_key() -> String {
    let mut h = KeyHasher::new();
    h.str("base", "scratch");
    h.finish()
}

/// The first key of a stage's chain: its base's identity for its platform.
pub fn platform_key(base_identity: &str, platform: &str) -> String {
    let mut h = KeyHasher::new();
    h.str("base-identity", base_identity)
        .str("platform", platform);
    h.finish()
}

/// The identity of a base image: its layer digests and its config without timestamps
/// (`created` and `history`), so re-tagging or re-pushing the same content keeps every key.
pub fn base_image_key(config: &ImageConfig, layer_digests: &[String]) -> String {
    let mut stripped = config.clone();
    stripped.created = None;
    stripped.history.clear();
    let config_bytes = serde_json::to_vec(&stripped).unwrap_or_default();
    let mut h = KeyHasher::new();
    h.str("base", "image");
    h.field("config", &config_bytes);
    h.list("layers", layer_digests);
    h.finish()
}

/// Everything that determines what one step does, besides the root it runs on (which the
/// previous key stands for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepInput {
    /// The previous step's key, or the base identity for the first step.
    pub previous: String,
    /// The instruction after expansion (a stable serialisation of its arguments).
    pub instruction: String,
    /// Variables the step can see (for a RUN: the config's Env, then declared ARGs).
    pub visible_env: Vec<String>,
    pub user: String,
    pub workdir: String,
    pub shell: Vec<String>,
    /// For COPY/ADD: [`FileDigest::finish`] of the files it reads.
    pub files: Option<String>,
    /// For a RUN with `--mount=...,from=`: the digest of what those mounts read (an image's
    /// manifest digest, the files of a stage).
    pub mounts: Option<String>,
}

impl StepInput {
    pub fn key(&self) -> String {
        let mut h = KeyHasher::new();
        h.str("previous", &self.previous);
        h.str("instruction", &self.instruction);
        h.list("env", &self.visible_env);
        h.str("user", &self.user);
        h.str("workdir", &self.workdir);
        h.list("shell", &self.shell);
        if let Some(files) = &self.files {
            h.str("files", files);
        }
        if let Some(mounts) = &self.mounts {
            h.str("mounts", mounts);
        }
        h.finish()
    }
}

/// Errors reading the files a COPY/ADD would read.
#[derive(Debug, thiserror::Error)]
#[error("hashing {path} for the layer cache key: {source}; check that it is readable")]
pub struct FileHashError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Hashes the files a COPY/ADD reads: for each entry under each source (walked without following
/// symlinks, in name order), its path relative to the source's origin, type, mode, owner (when
/// the copy preserves it), size, content sha256 and symlink target. Times are left out, as in
/// Docker, so a fresh checkout of the same content hits.
pub struct FileDigest {
    hasher: KeyHasher,
    preserve_owner: bool,
}

impl FileDigest {
    pub fn new(preserve_owner: bool) -> FileDigest {
        FileDigest {
            hasher: KeyHasher::new(),
            preserve_owner,
        }
    }

    /// Add inline content (a heredoc source) under a name.
    pub fn add_inline(&mut self, name: &str, content: &str) {
        self.hasher.str("inline-name", name).str("inline", content);
    }

    /// Add `source` (a host path under `origin`) and, for a directory, everything below it that
    /// `excluded` does not reject. A top-level symlink is followed, as the copier does.
    pub fn add_source(
        &mut self,
        origin: &Path,
        source: &Path,
        excluded: &dyn Fn(&Path) -> bool,
    ) -> Result<(), FileHashError> {
        let rel = source
            .strip_prefix(origin)
            .unwrap_or(source)
            .to_string_lossy()
            .into_owned();
        self.hasher.str("source", &rel);
        let walker = walkdir::WalkDir::new(source)
            .follow_links(false)
            .follow_root_links(true)
            .sort_by_file_name();
        let mut it = walker.into_iter();
        while let Some(entry) = it.next() {
            let entry = entry.map_err(|e| FileHashError {
                path: e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| source.to_path_buf()),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("filesystem loop")),
            })?;
            let path = entry.path();
            if entry.depth() > 0 && excluded(path) {
                if entry.file_type().is_dir() {
                    it.skip_current_dir();
                }
                continue;
            }
            self.add_entry(source, path, entry.depth() == 0)?;
        }
        Ok(())
    }

    fn add_entry(&mut self, source: &Path, path: &Path, top: bool) -> Result<(), FileHashError> {
        let err = |source: io::Error| FileHashError {
            path: path.to_path_buf(),
            source,
        };
        let meta = if top {
            fs::metadata(path)
        } else {
            fs::symlink_metadata(path)
        }
        .map_err(err)?;
        let rel = path
            .strip_prefix(source)
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let h = &mut self.hasher;
        h.str("path", &rel)
            .str("kind", kind)
            .field("mode", &meta.permissions().mode().to_le_bytes());
        if self.preserve_owner {
            h.field("uid", &meta.uid().to_le_bytes())
                .field("gid", &meta.gid().to_le_bytes());
        }
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(err)?;
            h.str("target", &target.to_string_lossy());
        } else if ft.is_file() {
            h.field("size", &meta.len().to_le_bytes());
            let mut file = fs::File::open(path).map_err(err)?;
            let mut content = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                content.update(&buf[..n]);
            }
            h.field("sha256", &content.finalize());
        } else if !ft.is_dir() {
            h.field("rdev", &meta.rdev().to_le_bytes());
        }
        Ok(())
    }

    pub fn finish(self) -> String {
        self.hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn digest(dir: &Path, preserve: bool) -> String {
        let mut d = FileDigest::new(preserve);
        d.add_source(dir, &dir.join("src"), &|p: &Path| p.ends_with("ignored"))
            .unwrap();
        d.finish()
    }

    #[test]
    fn file_digest_follows_content_and_metadata_only() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/a"), "one").unwrap();
        symlink("sub/a", src.join("link")).unwrap();
        let first = digest(dir.path(), false);
        // Times do not count.
        filetime::set_file_mtime(src.join("sub/a"), filetime::FileTime::from_unix_time(1, 0))
            .unwrap();
        assert_eq!(digest(dir.path(), false), first);
        // An excluded file does not count.
        fs::write(src.join("ignored"), "x").unwrap();
        assert_eq!(digest(dir.path(), false), first);
        // Content, mode and symlink targets do.
        fs::write(src.join("sub/a"), "two").unwrap();
        let content = digest(dir.path(), false);
        assert_ne!(content, first);
        fs::set_permissions(src.join("sub/a"), fs::Permissions::from_mode(0o600)).unwrap();
        let mode = digest(dir.path(), false);
        assert_ne!(mode, content);
        fs::remove_file(src.join("link")).unwrap();
        symlink("sub/b", src.join("link")).unwrap();
        assert_ne!(digest(dir.path(), false), mode);
    }

    #[test]
    fn step_keys_chain_and_separate_fields() {
        let base = StepInput {
            previous: scratch_key(),
            instruction: "RUN a".into(),
            ..Default::default()
        };
        let k1 = base.key();
        assert_eq!(k1, base.clone().key());
        let mut other = base.clone();
        other.previous = "x".into();
        assert_ne!(other.key(), k1);
        let mut env = base.clone();
        env.visible_env = vec!["A=1".into()];
        assert_ne!(env.key(), k1);
        // What a mount reads counts, and is not taken for files a COPY reads.
        let mut mounts = base.clone();
        mounts.mounts = Some("m".into());
        assert_ne!(mounts.key(), k1);
        let mut files = base.clone();
        files.files = Some("m".into());
        assert_ne!(mounts.key(), files.key());
        // Length prefixes: moving a byte between fields changes the key.
        let mut a = base.clone();
        a.user = "ab".into();
        a.workdir = "c".into();
        let mut b = base.clone();
        b.user = "a".into();
        b.workdir = "bc".into();
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn the_platform_is_part_of_the_first_key() {
        let k = platform_key(&scratch_key(), "linux/amd64");
        assert_eq!(platform_key(&scratch_key(), "linux/amd64"), k);
        assert_ne!(platform_key(&scratch_key(), "linux/arm64"), k);
    }

    #[test]
    fn base_key_ignores_timestamps() {
        let mut config = ImageConfig::default();
        let k = base_image_key(&config, &["sha256:1".into()]);
        config.created = Some("2020-01-01T00:00:00Z".into());
        config.history.push(Default::default());
        assert_eq!(base_image_key(&config, &["sha256:1".into()]), k);
        assert_ne!(base_image_key(&config, &["sha256:2".into()]), k);
    }
}

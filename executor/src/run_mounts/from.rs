//! `RUN --mount=...,from=X`: what a bind or cache mount reads from an earlier stage or an image
//! (the builder resolves `from` and pulls images; this module only reads the roots it is given),
//! the identity of what it reads (for the step's cache key and a seeded cache's directory), and
//! the seeding of a new cache directory from it, as BuildKit's `getRefCacheDir` does. Never
//! writes into a root it reads, nor into a build root.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache::key::{FileDigest, FileHashError};

/// The root a `from=` names, as the builder resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromRoot {
    pub root: PathBuf,
    /// For an image, the digest of the manifest it was read as; `None` for a stage.
    pub image_digest: Option<String>,
}

impl FromRoot {
    /// `stage X` or `image X`, for messages.
    pub fn describe(&self, from: &str) -> String {
        match self.image_digest {
            Some(_) => format!("image {from}"),
            None => format!("stage {from}"),
        }
    }

    /// The host path of `source` inside the root; symlinks cannot lead out of it.
    pub fn resolve(&self, from: &str, source: &str) -> Result<PathBuf, String> {
        crate::fsutil::resolve_in_root(&self.root, Path::new(source), true)
            .map_err(|e| format!("mount source {source:?} in {}: {e}", self.describe(from)))
    }

    /// What a mount of `source` reads, as a stable string: for an image its manifest digest and
    /// the path (an image's content is its digest); for a stage the digest of the files under
    /// `source` (names, types, modes, owners, content, symlink targets; not times), as the layer
    /// cache hashes what a `COPY --from` of a stage reads. A source that cannot be read is its
    /// error, so the step reports it when it runs.
    pub fn identity(&self, from: &str, source: &str) -> Result<String, FileHashError> {
        let path = crate::fsutil::clean_abs(source);
        if let Some(digest) = &self.image_digest {
            return Ok(format!("image:{digest}:{path}"));
        }
        let host = match self.resolve(from, source) {
            Ok(host) if host.exists() => host,
            Ok(_) => return Ok(format!("stage:missing:{path}")),
            Err(e) => return Ok(format!("stage:unresolved:{e}")),
        };
        let mut digest = FileDigest::new(true);
        digest.add_source(&self.root, &host, &|_: &Path| false)?;
        Ok(format!("stage:{}", digest.finish()))
    }
}

/// `(from, source)` of every bind and cache mount in `mounts` (raw `--mount` values) that names a
/// `from` without a variable (BuildKit does not expand `from`), for planning which stages and
/// images a step reads. `source` is as written, `/` when absent.
pub fn mount_froms(mounts: &[String]) -> Vec<(String, String)> {
    mounts
        .iter()
        .filter_map(|raw| {
            let fields = kiln_dockerfile::mount_fields(raw).ok()?;
            let get = |keys: &[&str]| {
                fields
                    .iter()
                    .rev()
                    .find(|(k, _)| keys.contains(&k.as_str()))
                    .and_then(|(_, v)| v.clone())
            };
            let kind = get(&["type"]).unwrap_or_else(|| "bind".into());
            let from = get(&["from"]).filter(|f| !f.is_empty() && !f.contains('$'))?;
            (kind.eq_ignore_ascii_case("bind") || kind.eq_ignore_ascii_case("cache")).then(|| {
                let source = get(&["source", "src"]).filter(|s| !s.is_empty());
                (from, source.unwrap_or_else(|| "/".into()))
            })
        })
        .collect()
}

/// The name of cache `id`'s directory under the mount cache: from the id alone, or, for a cache
/// seeded `from=` something, from the id and the identity of what seeds it ([`FromRoot::identity`]),
/// so that another `from` (or a changed one) gets another directory, as in BuildKit.
pub fn cache_dir_name(id: &str, seed_identity: Option<&str>) -> String {
    let digest = match seed_identity {
        None => Sha256::digest(id.as_bytes()),
        Some(seed) => {
            let mut h = Sha256::new();
            h.update((id.len() as u64).to_le_bytes());
            h.update(id.as_bytes());
            h.update(b"from");
            h.update(seed.as_bytes());
            h.finalize()
        }
    };
    hex::encode(&digest[..16])
}

/// Make `dir` (which does not exist) a copy of the directory `from`, modes, owners and symlinks
/// kept. The copy is made beside `dir` and renamed into place without replacing anything, so a
/// concurrent step of another build sharing the cache either sees the whole seed or seeds it
/// itself; whichever rename comes second is discarded.
pub fn seed_cache(from: &Path, dir: &Path) -> std::io::Result<()> {
    if !std::fs::metadata(from)?.is_dir() {
        return Err(std::io::Error::other(
            "a cache is a directory: give from= a directory as source",
        ));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| std::io::Error::other("cache directory without a name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.with_file_name(format!(".{name}.seed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let copied = super::copy_tree(from, &tmp, &|_| false, true).and_then(|()| {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            dir,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(std::io::Error::from)
    });
    match copied {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir_all(&tmp)?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn stages_and_images_read_by_mounts() {
        let mounts: Vec<String> = [
            "from=build,source=/out,target=/in",
            "type=bind,from=0,target=/x",
            "type=cache,from=build,target=/c",
            "type=CACHE,from=reg.example/img:1,src=/seed,target=/d",
            "type=bind,from=$STAGE,target=/y",
            "type=tmpfs,target=/t",
            "target=/ctx",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            mount_froms(&mounts),
            [
                ("build".to_string(), "/out".to_string()),
                ("0".into(), "/".into()),
                ("build".into(), "/".into()),
                ("reg.example/img:1".into(), "/seed".into()),
            ]
        );
    }

    #[test]
    fn cache_dirs_are_keyed_by_id_and_what_seeds_them() {
        // Without from=, the name is the one caches always had.
        assert_eq!(
            cache_dir_name("/c", None),
            hex::encode(&Sha256::digest(b"/c")[..16])
        );
        let a = cache_dir_name("/c", Some("image:sha256:aa:/"));
        assert_ne!(a, cache_dir_name("/c", None));
        assert_ne!(a, cache_dir_name("/c", Some("image:sha256:bb:/")));
        assert_ne!(a, cache_dir_name("/d", Some("image:sha256:aa:/")));
        assert_eq!(a, cache_dir_name("/c", Some("image:sha256:aa:/")));
    }

    #[test]
    fn a_stage_is_identified_by_what_it_holds_at_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("out/sub")).unwrap();
        std::fs::write(root.join("out/sub/f"), "one").unwrap();
        std::fs::write(root.join("elsewhere"), "x").unwrap();
        let stage = FromRoot {
            root: root.to_path_buf(),
            image_digest: None,
        };
        let first = stage.identity("build", "/out").unwrap();
        assert_eq!(first, stage.identity("build", "out/").unwrap());
        // What is outside the source does not count; what is inside does.
        std::fs::write(root.join("elsewhere"), "y").unwrap();
        assert_eq!(first, stage.identity("build", "/out").unwrap());
        std::fs::write(root.join("out/sub/f"), "two").unwrap();
        assert_ne!(first, stage.identity("build", "/out").unwrap());
        assert_eq!(
            stage.identity("build", "/nope").unwrap(),
            "stage:missing:/nope"
        );
        // An image is its manifest digest and the path, whatever its root holds.
        let image = FromRoot {
            root: root.to_path_buf(),
            image_digest: Some("sha256:abc".into()),
        };
        assert_eq!(
            image.identity("img", "out/./sub/").unwrap(),
            "image:sha256:abc:/out/sub"
        );
        assert_eq!(image.describe("img"), "image img");
        assert_eq!(stage.describe("build"), "stage build");
    }

    #[test]
    fn seeding_copies_modes_owners_and_symlinks_once() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("sub/f"), "seed").unwrap();
        std::fs::set_permissions(from.join("sub/f"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o750)).unwrap();
        symlink("/etc/passwd", from.join("link")).unwrap();
        let owned = nix::unistd::geteuid().is_root();
        if owned {
            std::os::unix::fs::lchown(from.join("sub/f"), Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::lchown(from.join("link"), Some(42), Some(43)).unwrap();
        }
        let cache = dir.path().join("cache");
        seed_cache(&from, &cache).unwrap();
        let f = std::fs::metadata(cache.join("sub/f")).unwrap();
        assert_eq!(
            std::fs::read_to_string(cache.join("sub/f")).unwrap(),
            "seed"
        );
        assert_eq!(f.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::metadata(&cache).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        assert_eq!(
            std::fs::read_link(cache.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        if owned {
            assert_eq!((f.uid(), f.gid()), (1234, 5678));
            let link = std::fs::symlink_metadata(cache.join("link")).unwrap();
            assert_eq!((link.uid(), link.gid()), (42, 43));
        }
        // A directory that exists already is left as it is (another step seeded it first).
        std::fs::write(cache.join("added"), "by a step").unwrap();
        seed_cache(&from, &cache).unwrap();
        assert!(cache.join("added").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
        // A file cannot seed a cache.
        let err = seed_cache(&from.join("sub/f"), &dir.path().join("c2")).unwrap_err();
        assert!(err.to_string().contains("a cache is a directory"), "{err}");
    }
}

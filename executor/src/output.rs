//! Result files a pipeline or controller reads after a build: digest files in kaniko's formats,
//! the Kubernetes termination message, and docker-archive tarballs (`--tar-path`).
//! Writes only the files it is asked to; never touches the registry.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use kiln_common::termination::TERMINATION_LOG;
use kiln_common::termination::{to_json, BuildMessage};

/// The compact JSON a controller parses from the termination message.
pub fn termination_message(message: &BuildMessage) -> String {
    to_json(message)
}

/// Bytes an image takes in a registry, from its manifest: the config's and the layers' sizes
/// (`None` for anything that is not an image manifest with sizes).
pub fn image_size(manifest: &[u8]) -> Option<u64> {
    let m: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let config = m["config"]["size"].as_u64()?;
    m["layers"]
        .as_array()?
        .iter()
        .try_fold(config, |sum, l| Some(sum + l["size"].as_u64()?))
}

/// Write the termination message when the file exists (it does in a Kubernetes container);
/// elsewhere do nothing.
pub fn write_termination_log(path: &Path, message: &BuildMessage) -> std::io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(termination_message(message).as_bytes())?;
    Ok(true)
}

/// kaniko's `--image-name-with-digest-file`: one `repository@digest` line per destination, the
/// repository as kaniko names it ([`ggcr_name`]). (kaniko writes the tagged lines into this file
/// too when `--image-name-tag-with-digest-file` is also given; Kiln writes each file its own.)
pub fn names_with_digest(destinations: &[String], digest: &str) -> String {
    destinations
        .iter()
        .map(|d| format!("{}@{digest}\n", ggcr_name(d).0))
        .collect()
}

/// kaniko's `--image-name-tag-with-digest-file`: one `repository:tag@digest` line per
/// destination ([`ggcr_name`]; `latest` when the destination names no tag).
pub fn names_tag_with_digest(destinations: &[String], digest: &str) -> String {
    destinations
        .iter()
        .map(|d| {
            let (repo, tag) = ggcr_name(d);
            format!("{repo}:{tag}@{digest}\n")
        })
        .collect()
}

/// kaniko's `$BUILDER_OUTPUT/images`: one `{"name":…,"digest":…}` line per destination, the name
/// as kaniko prints go-containerregistry's tag (`repository:tag`, [`ggcr_name`]).
pub fn builder_output(destinations: &[String], digest: &str) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        name: String,
        digest: &'a str,
    }
    destinations
        .iter()
        .map(|d| {
            let (repo, tag) = ggcr_name(d);
            let name = format!("{repo}:{tag}");
            let line = serde_json::to_string(&Line { name, digest }).unwrap_or_default();
            format!("{line}\n")
        })
        .collect()
}

/// A destination as kaniko's output files name it, go-containerregistry's `name.NewTag` with
/// weak validation: (repository with its registry, tag). Docker Hub is `index.docker.io` (also
/// for `docker.io`), with `library/` before a one-component repository; the tag defaults to
/// `latest`. A digest reference keeps its name, tagged `latest`.
pub fn ggcr_name(reference: &str) -> (String, String) {
    let name = reference.split('@').next().unwrap_or(reference);
    let repo = strip_tag(name);
    let tag = name[repo.len()..].trim_start_matches(':');
    let tag = if tag.is_empty() { "latest" } else { tag };
    let (registry, path) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => ("", repo),
    };
    let registry = match registry {
        "" | "docker.io" => "index.docker.io",
        other => other,
    };
    let path = if registry == "index.docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    (format!("{registry}/{path}"), tag.to_string())
}

/// `registry:5000/a/b:tag` → `registry:5000/a/b` (the port's colon is not a tag separator).
pub fn strip_tag(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[slash..].find(':') {
        Some(colon) => &name[..slash + colon],
        None => name,
    }
}

/// A layer blob of an image written to a docker archive.
#[derive(Debug, Clone)]
pub struct ArchiveLayer {
    /// `sha256:…` of the blob as stored (compressed).
    pub digest: String,
    pub path: PathBuf,
}

/// One entry of a docker archive's `manifest.json`.
#[derive(Debug, Serialize)]
struct ArchiveManifest<'a> {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: &'a [String],
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// `RepoTags` for destinations: `name:tag` (`:latest` when untagged); digest references have no tag.
pub fn repo_tags(destinations: &[String]) -> Vec<String> {
    destinations
        .iter()
        .filter(|d| !d.contains('@'))
        .map(|d| {
            if strip_tag(d) == d.as_str() {
                format!("{d}:latest")
            } else {
                d.clone()
            }
        })
        .collect()
}

/// Write a docker-archive tarball (`docker save` format, what `docker load` and `podman load`
/// read): `manifest.json`, the config as `<hex>.json`, each layer blob as `<hex>.tar.gz` — kept
/// compressed, as go-containerregistry's `tarball.Write` (kaniko's `--tar-path`) does; loaders
/// decompress by content. Written to a temporary file beside `path`, then renamed.
pub fn write_docker_archive(
    path: &Path,
    config: &[u8],
    layers: &[ArchiveLayer],
    repo_tags: &[String],
) -> std::io::Result<()> {
    use sha2::Digest;
    let config_name = format!("{}.json", hex::encode(sha2::Sha256::digest(config)));
    let layer_names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}.tar.gz", hex_of(&l.digest)))
        .collect();
    let manifest = vec![ArchiveManifest {
        config: config_name.clone(),
        repo_tags,
        layers: layer_names.clone(),
    }];
    let manifest = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;

    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    append_bytes(&mut tar, &config_name, config)?;
    let mut written = std::collections::HashSet::new();
    for (layer, name) in layers.iter().zip(&layer_names) {
        // An image may list the same layer twice; the archive holds it once.
        if !written.insert(name.clone()) {
            continue;
        }
        let mut file = std::fs::File::open(&layer.path)?;
        let mut header = file_header(file.metadata()?.len());
        tar.append_data(&mut header, name, &mut file)?;
    }
    append_bytes(&mut tar, "manifest.json", &manifest)?;
    tar.into_inner()?.flush()?;
    tmp.as_file().sync_all()?;
    // NamedTempFile is private (0600); an output file is for the pipeline's next step to read.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Write the OCI image layout in `dir` as a tar at `path` (an OCI archive, as `skopeo copy
/// oci-archive:` and `podman load` read it): `oci-layout`, `index.json`, then every blob, in
/// name order, with fixed modes and times. Written to a temporary file beside `path`, then
/// renamed.
pub fn write_dir_tar(dir: &Path, path: &Path) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(parent)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    for name in ["oci-layout", "index.json"] {
        let mut file = std::fs::File::open(dir.join(name))?;
        let mut header = file_header(file.metadata()?.len());
        tar.append_data(&mut header, name, &mut file)?;
    }
    let blobs = dir.join("blobs/sha256");
    let mut names: Vec<String> = std::fs::read_dir(&blobs)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let mut file = std::fs::File::open(blobs.join(&name))?;
        let mut header = file_header(file.metadata()?.len());
        tar.append_data(&mut header, format!("blobs/sha256/{name}"), &mut file)?;
    }
    tar.into_inner()?.flush()?;
    tmp.as_file().sync_all()?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map(|(_, h)| h).unwrap_or(digest)
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = file_header(data.len() as u64);
    tar.append_data(&mut header, name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_files() {
        let dests = vec!["127.0.0.1:5000/a/b:v1".to_string(), "reg/c".to_string()];
        assert_eq!(
            names_with_digest(&dests, "sha256:x"),
            "127.0.0.1:5000/a/b@sha256:x\nindex.docker.io/reg/c@sha256:x\n"
        );
        assert_eq!(
            names_tag_with_digest(&dests, "sha256:x"),
            "127.0.0.1:5000/a/b:v1@sha256:x\nindex.docker.io/reg/c:latest@sha256:x\n"
        );
    }

    #[test]
    fn builder_output_is_kanikos() {
        let dests = vec![
            "127.0.0.1:5000/a/b:v1".to_string(),
            "reg:5000/c".to_string(),
        ];
        assert_eq!(
            builder_output(&dests, "sha256:x"),
            "{\"name\":\"127.0.0.1:5000/a/b:v1\",\"digest\":\"sha256:x\"}\n\
             {\"name\":\"reg:5000/c:latest\",\"digest\":\"sha256:x\"}\n"
        );
        // go-containerregistry's names.
        for (dest, want) in [
            ("ubuntu", ("index.docker.io/library/ubuntu", "latest")),
            ("docker.io/team/app:1", ("index.docker.io/team/app", "1")),
            ("localhost/a", ("localhost/a", "latest")),
            ("reg:5000/a/b:2@sha256:x", ("reg:5000/a/b", "2")),
        ] {
            let (repo, tag) = ggcr_name(dest);
            assert_eq!((repo.as_str(), tag.as_str()), want, "{dest}");
        }
    }

    #[test]
    fn termination_json_is_compact() {
        let msg = BuildMessage {
            digest: "sha256:x".into(),
            references: vec!["r/a:1@sha256:x".to_string()],
            ..Default::default()
        };
        assert_eq!(
            termination_message(&msg),
            r#"{"digest":"sha256:x","references":["r/a:1@sha256:x"]}"#
        );
    }

    #[test]
    fn image_size_sums_config_and_layers() {
        let m =
            br#"{"schemaVersion":2,"config":{"size":100},"layers":[{"size":1000},{"size":20}]}"#;
        assert_eq!(image_size(m), Some(1120));
        assert_eq!(image_size(br#"{"manifests":[]}"#), None);
        assert_eq!(image_size(br#"{"config":{"size":1},"layers":[{}]}"#), None);
    }

    #[test]
    fn termination_log_only_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        let msg = BuildMessage {
            digest: "sha256:x".into(),
            ..Default::default()
        };
        assert!(!write_termination_log(&missing, &msg).unwrap());
        assert!(!missing.exists());
        let present = dir.path().join("termination-log");
        std::fs::write(&present, "").unwrap();
        assert!(write_termination_log(&present, &msg).unwrap());
        assert_eq!(
            std::fs::read_to_string(&present).unwrap(),
            r#"{"digest":"sha256:x","references":[]}"#
        );
    }

    #[test]
    fn repo_tags_default_to_latest() {
        let dests = vec![
            "reg:5000/a/b".to_string(),
            "reg:5000/a/c:v2".to_string(),
            "reg/d@sha256:abc".to_string(),
        ];
        assert_eq!(
            repo_tags(&dests),
            vec!["reg:5000/a/b:latest", "reg:5000/a/c:v2"]
        );
    }

    #[test]
    fn docker_archive_layout() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, b"layer-bytes").unwrap();
        let layers = vec![ArchiveLayer {
            digest: "sha256:aa".into(),
            path: blob,
        }];
        let out = dir.path().join("image.tar");
        write_docker_archive(&out, b"{}", &layers, &["r/a:1".to_string()]).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut entries = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            entries.insert(entry.path().unwrap().display().to_string(), text);
        }
        let config_name = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a.json";
        assert_eq!(entries["aa.tar.gz"], "layer-bytes");
        assert_eq!(entries[config_name], "{}");
        assert_eq!(
            entries["manifest.json"],
            format!(
                r#"[{{"Config":"{config_name}","RepoTags":["r/a:1"],"Layers":["aa.tar.gz"]}}]"#
            )
        );
    }
}

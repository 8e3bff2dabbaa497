//! Result files a pipeline or controller reads after a build: digest files in kaniko's formats,
//! the Kubernetes termination message, and docker-archive tarballs (`--tar-path`).
//! Writes only the files it is asked to; never touches the registry.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

/// Where Kubernetes reads a container's termination message from by default.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The compact JSON a controller parses from the termination message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TerminationMessage<'a> {
    pub digest: &'a str,
    pub references: &'a [String],
}

pub fn termination_message(digest: &str, references: &[String]) -> String {
    serde_json::to_string(&TerminationMessage { digest, references }).unwrap_or_default()
}

/// Write the termination message when the file exists (it does in a Kubernetes container);
/// elsewhere do nothing.
pub fn write_termination_log(path: &Path, digest: &str, references: &[String]) -> std::io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(termination_message(digest, references).as_bytes())?;
    Ok(true)
}

/// kaniko's `--image-name-with-digest-file`: one `repo@digest` line per destination (tag dropped).
pub fn names_with_digest(destinations: &[String], digest: &str) -> String {
    destinations.iter().map(|d| format!("{}@{digest}\n", strip_tag(d))).collect()
}

/// kaniko's `--image-name-tag-with-digest-file`: one `repo:tag@digest` line per destination.
pub fn names_tag_with_digest(destinations: &[String], digest: &str) -> String {
    destinations.iter().map(|d| format!("{d}@{digest}\n")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_files() {
        let dests = vec!["127.0.0.1:5000/a/b:v1".to_string(), "reg/c".to_string()];
        assert_eq!(names_with_digest(&dests, "sha256:x"), "127.0.0.1:5000/a/b@sha256:x\nreg/c@sha256:x\n");
        assert_eq!(names_tag_with_digest(&dests, "sha256:x"), "127.0.0.1:5000/a/b:v1@sha256:x\nreg/c@sha256:x\n");
    }

    #[test]
    fn termination_json_is_compact() {
        let refs = vec!["r/a:1@sha256:x".to_string()];
        assert_eq!(termination_message("sha256:x", &refs), r#"{"digest":"sha256:x","references":["r/a:1@sha256:x"]}"#);
    }

    #[test]
    fn termination_log_only_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        assert!(!write_termination_log(&missing, "sha256:x", &[]).unwrap());
        assert!(!missing.exists());
        let present = dir.path().join("termination-log");
        std::fs::write(&present, "").unwrap();
        assert!(write_termination_log(&present, "sha256:x", &[]).unwrap());
        assert_eq!(std::fs::read_to_string(&present).unwrap(), r#"{"digest":"sha256:x","references":[]}"#);
    }
}

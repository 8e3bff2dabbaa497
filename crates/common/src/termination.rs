//! The Kubernetes termination message through which the executor and the warmer report their
//! result to the operator: where it is written, and the JSON shapes both sides agree on. Writes
//! only that one file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where Kubernetes reads a container's termination message from by default.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Overrides [`TERMINATION_LOG`] (tests, and runs outside Kubernetes that want the message).
pub const TERMINATION_LOG_ENV: &str = "KILN_TERMINATION_LOG";
/// Kubernetes keeps at most this many bytes of a termination message.
pub const TERMINATION_LIMIT: usize = 4096;

/// What the executor reports: the pushed image's digest and the references it was pushed to,
/// and, when known, the commit of a git context, the layer cache's hits and misses and the
/// image's size. Older operators ignore the fields they do not know.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BuildMessage {
    pub digest: String,
    #[serde(default)]
    pub references: Vec<String>,
    /// The commit a git context was checked out at (full hex id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Steps taken from the layer cache and steps run (with `--cache` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheCounts>,
    /// Bytes the image takes in a registry: its config and (compressed) layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Layer-cache lookups of one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
}

/// What the warmer reports: each image it holds and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmMessage {
    pub images: Vec<WarmedImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmedImage {
    pub reference: String,
    pub digest: String,
}

/// Compact JSON of a message (no spaces: the 4 KiB limit is tight).
pub fn to_json<T: Serialize>(message: &T) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

/// Writes `text` as the termination message: to `$KILN_TERMINATION_LOG` when set, else to
/// `/dev/termination-log` when it exists (inside a Kubernetes container); elsewhere nothing is
/// written. Returns the path written. A message over Kubernetes' limit is written whole, with a
/// warning, since the kubelet truncates it.
pub fn write(text: &str) -> std::io::Result<Option<PathBuf>> {
    let path = match std::env::var_os(TERMINATION_LOG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let p = PathBuf::from(TERMINATION_LOG);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    if text.len() > TERMINATION_LIMIT {
        tracing::warn!(
            bytes = text.len(),
            "the termination message exceeds Kubernetes' 4096-byte limit and will be truncated"
        );
    }
    std::fs::write(&path, text)?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_compact_json() {
        let build = BuildMessage {
            digest: "sha256:x".into(),
            references: vec!["r/a:1".into()],
            ..Default::default()
        };
        assert_eq!(
            to_json(&build),
            r#"{"digest":"sha256:x","references":["r/a:1"]}"#
        );
        let full = BuildMessage {
            commit: Some("c0ffee".into()),
            cache: Some(CacheCounts { hits: 2, misses: 1 }),
            size: Some(1234),
            ..build
        };
        let text = to_json(&full);
        assert_eq!(
            text,
            r#"{"digest":"sha256:x","references":["r/a:1"],"commit":"c0ffee","cache":{"hits":2,"misses":1},"size":1234}"#
        );
        assert_eq!(serde_json::from_str::<BuildMessage>(&text).unwrap(), full);
        let warm = WarmMessage {
            images: vec![WarmedImage {
                reference: "r/b:2".into(),
                digest: "sha256:y".into(),
            }],
        };
        assert_eq!(
            to_json(&warm),
            r#"{"images":[{"reference":"r/b:2","digest":"sha256:y"}]}"#
        );
    }
}

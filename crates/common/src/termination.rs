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

/// What the executor reports: the pushed image's digest and the references it was pushed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildMessage {
    pub digest: String,
    pub references: Vec<String>,
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
        };
        assert_eq!(
            to_json(&build),
            r#"{"digest":"sha256:x","references":["r/a:1"]}"#
        );
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

//! The HTTP side of remote contexts (https tarballs and object stores): one client setup, a
//! bounded streaming download to a file, and short error summaries from a server's answer. Never
//! logs or returns a request's headers, so credentials sent in them stay out of every message.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

/// The largest context download accepted, compressed: far above any sane build context, but a
/// server that streams forever (or a wrong object) cannot fill the disk.
pub(crate) const MAX_CONTEXT_BYTES: u64 = 16 << 30;

/// How much of an error answer is read to explain it.
const ERROR_BODY_BYTES: u64 = 8 << 10;

/// A blocking client for context downloads: bounded connect time, and a whole-request timeout
/// that is generous for a build context but keeps a stalled server from hanging the build.
pub(crate) fn client() -> Result<reqwest::blocking::Client, String> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(30 * 60))
        .user_agent(concat!("kiln-executor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("setting up the HTTP client: {e}"))
}

/// Stream the body of `response` into a new file at `dest`, refusing more than
/// [`MAX_CONTEXT_BYTES`] (announced or sent). Memory stays flat.
pub(crate) fn save_body(response: reqwest::blocking::Response, dest: &Path) -> Result<u64, String> {
    if let Some(len) = response.content_length() {
        if len > MAX_CONTEXT_BYTES {
            return Err(too_large());
        }
    }
    let mut file =
        fs::File::create(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut limited = response.take(MAX_CONTEXT_BYTES + 1);
    let copied = io::copy(&mut limited, &mut file)
        .map_err(|e| format!("reading the body into {}: {e}", dest.display()))?;
    if copied > MAX_CONTEXT_BYTES {
        drop(file);
        let _ = fs::remove_file(dest);
        return Err(too_large());
    }
    file.flush()
        .map_err(|e| format!("writing {}: {e}", dest.display()))?;
    Ok(copied)
}

fn too_large() -> String {
    format!(
        "the object is larger than {} GiB, the most a build context may be",
        MAX_CONTEXT_BYTES >> 30
    )
}

/// `HTTP <status>` plus what the server said, for an unsuccessful answer: the `<Code>` and
/// `<Message>` of an S3 or Azure XML error, the `error.message` of a Google JSON error (or an
/// OAuth `error_description`), else the start of a plain-text body. Only those fields are kept:
/// S3's signature errors echo the string that was signed, which is left out.
pub(crate) fn error_summary(response: reqwest::blocking::Response) -> String {
    let status = response.status();
    let mut body = String::new();
    let _ = response.take(ERROR_BODY_BYTES).read_to_string(&mut body);
    match summarize_body(&body) {
        Some(said) => format!("HTTP {status}: {said}"),
        None => format!("HTTP {status}"),
    }
}

fn summarize_body(body: &str) -> Option<String> {
    let body = body.trim();
    if body.starts_with('<') {
        let parts: Vec<String> = ["Code", "Message"]
            .iter()
            .filter_map(|tag| xml_text(body, tag))
            .map(|text| text.lines().next().unwrap_or_default().trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        return (!parts.is_empty()).then(|| parts.join(": "));
    }
    if body.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        let text = value
            .pointer("/error/message")
            .or_else(|| value.get("error_description"))
            .or_else(|| value.get("error"))
            .and_then(|v| v.as_str())?;
        return Some(text.to_string());
    }
    let first = body.lines().next()?.trim();
    (!first.is_empty()).then(|| first.chars().take(200).collect())
}

/// The text between `<tag>` and `</tag>`, if any.
fn xml_text<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(&body[start..end])
}

/// A reqwest error with its causes, on one line (reqwest's own message is often just
/// "error sending request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Percent-encode everything but RFC 3986's unreserved characters (and `/` when `keep_slash`),
/// the encoding S3's SigV4 and Google's object names expect.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_keep_only_what_explains() {
        let s3 = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><StringToSign>AWS4-HMAC-SHA256 secret-ish</StringToSign></Error>";
        let said = summarize_body(s3).unwrap();
        assert_eq!(
            said,
            "SignatureDoesNotMatch: The request signature we calculated does not match"
        );
        let gcs = r#"{"error":{"code":404,"message":"No such object: b/o"}}"#;
        assert_eq!(summarize_body(gcs).unwrap(), "No such object: b/o");
        let oauth = r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        assert_eq!(summarize_body(oauth).unwrap(), "Invalid JWT Signature.");
        assert_eq!(summarize_body("not found\nmore").unwrap(), "not found");
        assert_eq!(summarize_body(""), None);
    }

    #[test]
    fn uri_encoding_follows_rfc3986() {
        assert_eq!(uri_encode("a b/c~d+e", true), "a%20b/c~d%2Be");
        assert_eq!(uri_encode("dir/ctx.tar.gz", false), "dir%2Fctx.tar.gz");
    }
}

//! Looks for secret strings where a build must never put them: log text, and every blob of an
//! image (raw and, for gzip or zstd blobs, decompressed), found in an OCI layout or in a test
//! registry's storage. It only reads.

use std::io::Read;
use std::path::Path;

/// A secret to look for: a name for the report (never the value) and the value.
pub type Needle<'a> = (&'a str, &'a str);

/// `"<needle name> in <label>"` for every needle whose value occurs in `bytes`.
pub fn find_in(label: &str, bytes: &[u8], needles: &[Needle<'_>]) -> Vec<String> {
    needles
        .iter()
        .filter(|(_, value)| contains(bytes, value.as_bytes()))
        .map(|(name, _)| format!("{name} in {label}"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A blob's content: decompressed when it is gzip or zstd, else as it is.
pub fn decompressed(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format!("gunzip: {e}"))?;
        Ok(out)
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::decode_all(bytes).map_err(|e| format!("zstd: {e}"))
    } else {
        Ok(bytes.to_vec())
    }
}

/// Scan every regular file under `dir` (an OCI layout, a registry's storage), raw and
/// decompressed. Returns the findings and how many files were read.
pub fn scan_files(dir: &Path, needles: &[Needle<'_>]) -> (Vec<String>, usize) {
    let mut findings = Vec::new();
    let mut files = 0;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap_or_else(|e| panic!("walking {}: {e}", dir.display()));
        if !entry.file_type().is_file() {
            continue;
        }
        files += 1;
        let path = entry.path();
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let label = path.display().to_string();
        findings.extend(find_in(&label, &bytes, needles));
        let plain = decompressed(&bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
        if plain != bytes {
            findings.extend(find_in(&format!("{label} (decompressed)"), &plain, needles));
        }
    }
    (findings, files)
}

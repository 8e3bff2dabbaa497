//! Finding test cases on disk, for the golden and the BuildKit conformance tests.

use std::fs;
use std::path::{Path, PathBuf};

/// The case directories under `dir` (those holding a `Dockerfile`), by name.
pub fn case_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    out.sort();
    out
}

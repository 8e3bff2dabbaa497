//! `WORKDIR`: sets the working directory (relative paths join the previous one) and creates it
//! in the root when missing, as Docker does, so the change lands in a layer.

use std::path::Path;

use super::{CommandError, Outcome, StageState};
use crate::fsutil::resolve_in_root;

pub fn execute(raw: &str, state: &mut StageState) -> Result<Outcome, CommandError> {
    let path = state.expand(raw)?;
    if path.is_empty() {
        return Err(CommandError::Invalid("WORKDIR requires a path".into()));
    }
    let abs = state.in_image_path(&path);
    let abs = abs.trim_end_matches('/').to_string();
    let abs = if abs.is_empty() { "/".to_string() } else { abs };
    state.config.config.working_dir = Some(abs.clone());
    if ensure_dir(&state.root, &abs)? {
        Ok(Outcome::Filesystem)
    } else {
        Ok(Outcome::ConfigOnly)
    }
}

/// Create an in-image directory (and missing parents, mode 0755, owned by root) under `root`.
/// Returns whether anything was created.
pub fn ensure_dir(root: &Path, in_image: &str) -> Result<bool, CommandError> {
    let host = resolve_in_root(root, Path::new(in_image), true)
        .map_err(|e| CommandError::io(format!("resolving {in_image} in the image"), e))?;
    if host.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(&host).map_err(|e| CommandError::io(format!("creating directory {in_image}"), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::state;

    #[test]
    fn relative_workdirs_join_and_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        assert_eq!(execute("/app", &mut st).unwrap(), Outcome::Filesystem);
        assert_eq!(execute("sub/../src", &mut st).unwrap(), Outcome::Filesystem);
        assert_eq!(st.config.config.working_dir.as_deref(), Some("/app/src"));
        assert!(dir.path().join("app/src").is_dir());
        assert_eq!(execute("/app", &mut st).unwrap(), Outcome::ConfigOnly);
    }
}

//! `COPY --parents`: each source keeps its parent directories below the destination, as
//! BuildKit does. A `/./` in a source is the pivot: only what follows it is kept
//! (`COPY --parents ./a/./b/c /dst/` writes `/dst/b/c`); without one the path from the root of
//! the source (the context, or the `--from` root) is kept.

use crate::fsutil::clean_abs;

/// The pivot of raw source `raw`: the cleaned, root-relative directory before its first `/./`
/// (empty when there is none). Wildcards before the pivot are refused.
pub(super) fn pivot(raw: &str, name: &str) -> Result<String, String> {
    let Some(i) = raw.find("/./") else {
        return Ok(String::new());
    };
    let before = &raw[..i];
    if before.contains(['*', '?', '[']) {
        return Err(format!(
            "{name} --parents {raw}: wildcards before the /./ pivot are not supported"
        ));
    }
    Ok(relative(before))
}

/// Where a source at lexical, root-relative path `rel` (a directory when `is_dir`) is copied
/// to under in-image directory `dest`: `dest/<rel after the pivot>/` for a directory (its
/// contents are merged there), `dest/<parent of that>/` for anything else.
pub(super) fn target(
    dest: &str,
    pivot: &str,
    rel: &str,
    is_dir: bool,
    name: &str,
) -> Result<String, String> {
    let rel = relative(rel);
    let kept = if pivot.is_empty() {
        rel.as_str()
    } else if rel == pivot {
        ""
    } else {
        rel.strip_prefix(&format!("{pivot}/")).ok_or_else(|| {
            format!("{name} --parents: source {rel} is not below its pivot {pivot}")
        })?
    };
    let dir = if is_dir {
        kept
    } else {
        kept.rsplit_once('/').map_or("", |(parent, _)| parent)
    };
    Ok(format!(
        "{}/",
        clean_abs(&format!("{dest}/{dir}")).trim_end_matches('/')
    ))
}

/// `path` cleaned lexically and made relative to its root (`./a//b/` → `a/b`, `/` → ``).
fn relative(path: &str) -> String {
    clean_abs(path).trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_follow_buildkit() {
        let t = |raw: &str, rel: &str, is_dir: bool| {
            let p = pivot(raw, "COPY").unwrap();
            target("/dst", &p, rel, is_dir, "COPY").unwrap()
        };
        assert_eq!(t("./a/./b/c", "a/b/c", false), "/dst/b/");
        assert_eq!(t("./a/./b/c", "a/b/c", true), "/dst/b/c/");
        assert_eq!(t("x/a.txt", "x/a.txt", false), "/dst/x/");
        assert_eq!(t("a.txt", "a.txt", false), "/dst/");
        assert_eq!(t("/x/y/*.txt", "x/y/m.txt", false), "/dst/x/y/");
        assert_eq!(t(".", "", true), "/dst/");
        assert_eq!(t("a/./", "a", true), "/dst/");
        assert_eq!(target("/", "", "a/b", false, "COPY").unwrap(), "/a/");
        assert!(pivot("*/./b", "COPY").is_err());
    }
}

//! Submodules of a git context (`--git recurse-submodules=true`): read `.gitmodules` from the
//! checked-out tree, resolve each submodule's URL as git does (relative URLs against the
//! superproject's URL) and say what to fetch at the commit the superproject records. Fetches
//! nothing itself, and never lets a repository point a fetch at a local path.

use std::path::PathBuf;

use gix::bstr::{BStr, ByteSlice};

use super::GitSource;
use crate::context::GitOptions;

/// How deep submodules of submodules are followed, as go-git's `DefaultSubmoduleRecursionDepth`
/// (kaniko's); deeper ones stay empty directories.
const MAX_DEPTH: usize = 10;

/// A submodule entry (mode 160000) of a tree: where it is and the commit it records.
#[derive(Debug, Clone)]
pub(super) struct Gitlink {
    pub path: PathBuf,
    pub commit: gix::ObjectId,
}

/// What to fetch for one submodule.
pub(super) struct Fetch {
    pub source: GitSource,
    pub options: GitOptions,
}

/// The `.gitmodules` of one checked-out tree (empty when the tree has none).
pub(super) struct Modules {
    file: Option<gix::submodule::File>,
}

impl Modules {
    /// Parse `.gitmodules` at the root of `tree` (the tree checked out, not the remote's HEAD).
    pub fn read(repo: &gix::Repository, tree: gix::ObjectId) -> Result<Modules, String> {
        let tree = repo
            .find_tree(tree)
            .map_err(|e| format!("reading tree {tree}: {e}"))?;
        let Some(entry) = tree.find_entry(".gitmodules") else {
            return Ok(Modules { file: None });
        };
        let blob = repo
            .find_object(entry.oid())
            .map_err(|e| format!("reading .gitmodules: {e}"))?;
        let file = gix::submodule::File::from_bytes(&blob.data, None, &Default::default())
            .map_err(|e| format!(".gitmodules cannot be parsed: {e}"))?;
        Ok(Modules { file: Some(file) })
    }

    /// What to fetch for `link` of the repository `parent`, which is `depth` levels below the
    /// context's; `None` when git would leave it empty (`update = none`, too deep).
    pub fn resolve(
        &self,
        link: &Gitlink,
        parent: &GitSource,
        options: &GitOptions,
        depth: usize,
    ) -> Result<Option<Fetch>, String> {
        let path = link.path.to_string_lossy();
        if depth + 1 > MAX_DEPTH {
            tracing::warn!(
                "submodule {path} of {} is {MAX_DEPTH} levels deep; left empty",
                parent.url
            );
            return Ok(None);
        }
        let no_entry = || {
            format!(
                "the submodule at {path} has no entry in .gitmodules, so its URL is unknown (git fails the same way); fix .gitmodules or use recurse-submodules=false"
            )
        };
        let file = self.file.as_ref().ok_or_else(no_entry)?;
        let name = file
            .name_by_path(BStr::new(path.as_bytes()))
            .ok_or_else(no_entry)?;
        if let Ok(Some(gix::submodule::config::Update::None)) = file.update(name) {
            tracing::info!("submodule {path} has update = none; left empty");
            return Ok(None);
        }
        let raw = file
            .config()
            .string_by("submodule", Some(name), "url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("the submodule {name} ({path}) has no url in .gitmodules"))?;
        let raw = raw
            .to_str()
            .map_err(|_| format!("the url of submodule {name} ({path}) is not UTF-8"))?;
        let url = resolve_url(&parent.url, raw)
            .map_err(|why| format!("the url {raw:?} of submodule {name} ({path}) {why}"))?;
        if !["https://", "http://", "git://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(format!(
                "the submodule {name} ({path}) is at {url}; only https://, http:// and git:// submodules are fetched (git refuses local ones for submodules too)"
            ));
        }
        let mut sub_options = options.clone();
        // `--git branch=` names a branch of the context's repository, not of its submodules.
        sub_options.branch = None;
        // The GIT_* credentials go only to the server they were given for, and over the same
        // scheme: a submodule may not move them from https to plain http.
        if host_of(&url) != host_of(&parent.url) || scheme_of(&url) != scheme_of(&parent.url) {
            sub_options.credentials = None;
        }
        Ok(Some(Fetch {
            source: GitSource {
                url,
                reference: Some(link.commit.to_string()),
                commit: None,
            },
            options: sub_options,
        }))
    }
}

/// The scheme of a URL (`https`, `http`, `git`).
fn scheme_of(url: &str) -> Option<&str> {
    url.split_once("://").map(|(s, _)| s)
}

/// `host[:port]` of a URL, for comparing servers.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    Some(authority.rsplit('@').next().unwrap_or(authority))
}

/// A submodule URL resolved against the URL of its superproject, as git's `relative_url()`:
/// each leading `../` drops the last path component of `base`, `./` drops nothing; any other URL
/// is used as it is. A relative URL may not climb above the server.
fn resolve_url(base: &str, url: &str) -> Result<String, String> {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return Ok(url.to_string());
    }
    let mut base = base.trim_end_matches('/').to_string();
    // The path starts after `scheme://authority`; `../` may not cut into that.
    let path_start = match base.find("://") {
        Some(i) => base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j),
        None => 0,
    };
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            let cut = base
                .rfind('/')
                .filter(|&c| c >= path_start)
                .ok_or("climbs above the superproject's server")?;
            base.truncate(cut);
        } else if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else {
            break;
        }
    }
    Ok(format!("{base}/{}", rest.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_urls_resolve_like_git() {
        let base = "https://h/org/super.git";
        assert_eq!(
            resolve_url(base, "../sub.git").unwrap(),
            "https://h/org/sub.git"
        );
        assert_eq!(
            resolve_url(base, "./sub").unwrap(),
            "https://h/org/super.git/sub"
        );
        assert_eq!(resolve_url(base, "../../x/y/").unwrap(), "https://h/x/y");
        assert_eq!(
            resolve_url("git://h:9418/r.git/", "../s").unwrap(),
            "git://h:9418/s"
        );
        assert!(resolve_url(base, "../../../x").is_err());
        assert_eq!(
            resolve_url(base, "https://o/s.git").unwrap(),
            "https://o/s.git"
        );
        assert_eq!(host_of("https://u@h:1/x"), Some("h:1"));
        assert_eq!(host_of("git://h/x"), Some("h"));
        assert_eq!(scheme_of("https://h/x"), Some("https"));
        assert_ne!(scheme_of("http://h/x"), scheme_of("https://h/x"));
    }
}

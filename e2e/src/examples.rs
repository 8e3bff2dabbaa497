//! The files of `examples/` as the end-to-end tests apply them: adapted only in their registry
//! and source addresses, so what a user copies is what the tests ran.

use std::path::PathBuf;

use anyhow::Context;

/// The example's placeholder registry and repository, and what the test cluster uses instead.
pub struct Addresses {
    /// The registry as Pods reach it (`host:port`), for `registry.example.com`.
    pub registry: String,
    /// The served stand-in of the examples' git repository.
    pub git_url: String,
}

/// The examples' git repository URL.
pub const GIT_URL: &str = "https://github.com/kiln-build/examples.git";
/// The examples' registry host.
pub const REGISTRY: &str = "registry.example.com";

/// The repository's root directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// `examples/<name>` with its addresses replaced.
pub fn load(name: &str, to: &Addresses) -> anyhow::Result<String> {
    let path = root().join("examples").join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(adapt(&text, to))
}

fn adapt(text: &str, to: &Addresses) -> String {
    text.replace(GIT_URL, &to.git_url)
        .replace(&format!("{REGISTRY}/"), &format!("{}/", to.registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_change() {
        let to = Addresses {
            registry: "10.0.0.1:5000".into(),
            git_url: "http://10.0.0.1:8080/git/examples.git".into(),
        };
        let text = "url: https://github.com/kiln-build/examples.git\n\
            label: https://github.com/kiln-build/examples\n\
            - registry.example.com/team/app:1.0.0\n";
        assert_eq!(
            adapt(text, &to),
            "url: http://10.0.0.1:8080/git/examples.git\n\
            label: https://github.com/kiln-build/examples\n\
            - 10.0.0.1:5000/team/app:1.0.0\n"
        );
    }
}

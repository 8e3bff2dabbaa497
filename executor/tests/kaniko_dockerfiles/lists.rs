//! The checked-in lists of the kaniko Dockerfile test (`testdata/kaniko-dockerfiles/`) and the
//! rewrite of a kaniko Dockerfile onto the local base images. Pure text work: it must not build,
//! fetch or run anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use kiln_testkit::repo_root;

/// The lists, each keyed by Dockerfile name.
pub struct Lists {
    /// kaniko's base image repository (no tag or digest) to the local image under the registry.
    pub bases: BTreeMap<String, String>,
    /// Not built, with the reason.
    pub skip: BTreeMap<String, String>,
    /// Build args and `--target=` of a Dockerfile (kaniko's `argsMap` and target flags).
    pub args: BTreeMap<String, Vec<String>>,
    /// Built both ways, and judged by running Kiln's image (arguments, expected output, reason):
    /// buildah is not the reference there.
    pub differences: BTreeMap<String, RunCheck>,
    /// Built and compared, expected to fail (a Kiln defect), with the reason.
    pub known_failures: BTreeMap<String, String>,
}

/// A listed difference: run Kiln's image with `args` and expect `expected` on stdout.
pub struct RunCheck {
    pub args: Vec<String>,
    pub expected: String,
    pub why: String,
}

/// The lines of `testdata/kaniko-dockerfiles/<name>` without comments and blank lines.
fn lines(name: &str) -> Vec<String> {
    let path = repo_root().join("testdata/kaniko-dockerfiles").join(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// `name rest` pairs, every name once.
fn keyed(file: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for l in lines(file) {
        let (k, v) = l
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("{file}: `{l}` is not `NAME VALUE`"));
        let v = v.trim().to_string();
        assert!(!v.is_empty(), "{file}: `{l}` has no value");
        assert!(
            out.insert(k.to_string(), v).is_none(),
            "{file}: {k} is listed twice"
        );
    }
    out
}

impl Lists {
    pub fn read() -> Lists {
        let differences = keyed("differences")
            .into_iter()
            .map(|(k, v)| {
                let parts: Vec<&str> = v.split('|').map(str::trim).collect();
                let [args, expected, why] = parts[..] else {
                    panic!("differences: {k}: `{v}` is not `ARGS | EXPECTED | REASON`")
                };
                let check = RunCheck {
                    args: args.split_whitespace().map(str::to_string).collect(),
                    expected: expected.to_string(),
                    why: why.to_string(),
                };
                (k, check)
            })
            .collect();
        Lists {
            bases: keyed("bases"),
            skip: keyed("skip"),
            args: keyed("args")
                .into_iter()
                .map(|(k, v)| (k, v.split_whitespace().map(str::to_string).collect()))
                .collect(),
            differences,
            known_failures: keyed("known-failures"),
        }
    }

    /// Names that sit in more than one of skip, differences and known failures, or that name no
    /// Dockerfile of `present`: each list must stay current.
    pub fn stale(&self, present: &BTreeSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        let lists: [(&str, Vec<&String>); 4] = [
            ("skip", self.skip.keys().collect()),
            ("args", self.args.keys().collect()),
            ("differences", self.differences.keys().collect()),
            ("known-failures", self.known_failures.keys().collect()),
        ];
        for (list, names) in &lists {
            for n in names {
                if !present.contains(*n) {
                    out.push(format!(
                        "testdata/kaniko-dockerfiles/{list} names {n}, which kaniko's \
                         integration/dockerfiles does not have"
                    ));
                }
            }
        }
        for n in self.skip.keys() {
            if self.differences.contains_key(n) || self.known_failures.contains_key(n) {
                out.push(format!(
                    "{n} is skipped and also listed as a difference or known failure"
                ));
            }
        }
        out
    }

    /// The local image for a kaniko image reference, if the bases list maps its repository.
    fn local(&self, image: &str, registry: &str) -> Option<String> {
        let repo = repository(image);
        self.bases.get(repo).map(|l| format!("{registry}/{l}"))
    }

    /// `dockerfile` with every base image (FROM, an ARG default that a FROM uses whole, COPY
    /// --from=<image>) replaced by its local image; `Err` names an image the bases list does not
    /// map.
    pub fn rewrite(&self, dockerfile: &str, registry: &str) -> Result<String, String> {
        // ARGs whose value a FROM uses whole (`FROM $IMAGE`, `FROM ${IMAGE}`).
        let mut from_args = BTreeSet::new();
        for l in dockerfile.lines() {
            let words: Vec<&str> = l.split_whitespace().collect();
            if words
                .first()
                .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
            {
                if let Some(img) = words.iter().skip(1).find(|w| !w.starts_with("--")) {
                    let name = img.trim_start_matches('$');
                    let name = name
                        .strip_prefix('{')
                        .and_then(|n| n.strip_suffix('}'))
                        .unwrap_or(name);
                    if img.starts_with('$') && name.chars().all(|c| c.is_alphanumeric() || c == '_')
                    {
                        from_args.insert(name.to_string());
                    }
                }
            }
        }
        let mut stages: BTreeSet<String> = BTreeSet::new();
        let mut out = String::new();
        for l in dockerfile.lines() {
            let words: Vec<&str> = l.split_whitespace().collect();
            let first = words.first().map(|w| w.to_ascii_uppercase());
            let mut line = l.to_string();
            match first.as_deref() {
                Some("FROM") => {
                    let img = words.iter().skip(1).find(|w| !w.starts_with("--"));
                    if let Some(img) = img {
                        let lower = img.to_ascii_lowercase();
                        if !img.contains('$') && lower != "scratch" && !stages.contains(&lower) {
                            let local = self.local(img, registry).ok_or_else(|| {
                                format!("FROM {img}: not in testdata/kaniko-dockerfiles/bases")
                            })?;
                            line = l.replacen(img, &local, 1);
                        }
                    }
                    if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                        if let Some(stage) = words.get(i + 1) {
                            stages.insert(stage.to_ascii_lowercase());
                        }
                    }
                }
                Some("ARG") => {
                    if let Some((name, value)) = words.get(1).and_then(|a| a.split_once('=')) {
                        let bare = value.trim_matches(|c| c == '"' || c == '\'');
                        if from_args.contains(name) && !bare.is_empty() {
                            let local = self.local(bare, registry).ok_or_else(|| {
                                format!(
                                    "ARG {name}={value}: not in testdata/kaniko-dockerfiles/bases"
                                )
                            })?;
                            line = l.replacen(value, &local, 1);
                        }
                    }
                }
                Some("COPY") | Some("ADD") => {
                    for w in &words[1..] {
                        let Some(from) = w.strip_prefix("--from=") else {
                            continue;
                        };
                        let lower = from.to_ascii_lowercase();
                        if from.parse::<usize>().is_ok() || stages.contains(&lower) {
                            continue;
                        }
                        let local = self.local(from, registry).ok_or_else(|| {
                            format!("--from={from}: not a stage and not in the bases list")
                        })?;
                        line = line.replacen(w, &format!("--from={local}"), 1);
                    }
                }
                _ => {}
            }
            out.push_str(&line);
            out.push('\n');
        }
        Ok(out)
    }
}

/// The repository of an image reference: without `@digest` and without `:tag`.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> Lists {
        let mut bases = BTreeMap::new();
        bases.insert(
            "debian".to_string(),
            "kiln-test/debian:bookworm".to_string(),
        );
        bases.insert(
            "busybox".to_string(),
            "kiln-test/busybox:latest".to_string(),
        );
        bases.insert("alpine".to_string(), "kiln-test/busybox:latest".to_string());
        Lists {
            bases,
            skip: BTreeMap::new(),
            args: BTreeMap::new(),
            differences: BTreeMap::new(),
            known_failures: BTreeMap::new(),
        }
    }

    #[test]
    fn rewrites_from_args_and_copy_from() {
        let text = "ARG B=alpine:${A}\nARG F=x\nFROM debian:10.13 AS base\nFROM ${B}\n\
                    FROM base\nCOPY --from=debian:10.13 /a /b\nCOPY --from=base /a /b\n\
                    FROM busybox@sha256:00\n";
        let got = lists().rewrite(text, "R").unwrap();
        assert_eq!(
            got,
            "ARG B=R/kiln-test/busybox:latest\nARG F=x\nFROM R/kiln-test/debian:bookworm AS base\n\
             FROM ${B}\nFROM base\nCOPY --from=R/kiln-test/debian:bookworm /a /b\n\
             COPY --from=base /a /b\nFROM R/kiln-test/busybox:latest\n"
        );
    }

    #[test]
    fn an_unmapped_image_is_an_error() {
        let err = lists().rewrite("FROM fedora:40\n", "R").unwrap_err();
        assert!(err.contains("fedora:40"), "{err}");
        assert_eq!(repository("gcr.io/x/y:1@sha256:00"), "gcr.io/x/y");
        assert_eq!(repository("127.0.0.1:5000/x"), "127.0.0.1:5000/x");
    }
}

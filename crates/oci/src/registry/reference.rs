//! Image reference parsing and normalisation the way Docker does it (`busybox` is
//! `docker.io/library/busybox:latest`). Pure string handling: no I/O, no registry knowledge
//! beyond Docker Hub's names.

pub use oci_client::Reference;

use super::error::RegistryError;

/// The registry name Docker Hub images carry in normalised references.
pub const DOCKER_HUB: &str = "docker.io";

/// Parses an image reference and fills in Docker's defaults: the `docker.io` registry,
/// the `library/` namespace for official images and the `latest` tag when there is
/// neither tag nor digest.
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    let trimmed = reference.trim();
    let parsed = match parse_common(trimmed) {
        Some(parsed) => parsed,
        None => trimmed
            .parse::<Reference>()
            .map_err(|e| RegistryError::InvalidReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            })?,
    };
    // The parser lets an upper-case first path component through as a Docker Hub
    // namespace; Docker refuses it, and so does every registry.
    if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(RegistryError::InvalidReference {
            reference: reference.to_string(),
            reason: "repository name must be lowercase".to_string(),
        });
    }
    Ok(parsed)
}

/// Docker's reference grammar, by hand, for the references builds use (ASCII, sha256
/// digests); `None` for anything else, which oci-spec's parser then decides. That parser
/// compiles its reference regex on first use, about 40 ms of CPU (its tag class is
/// Unicode-aware and repeated 128 times), and every build paid it on its critical path before
/// its first registry request. Whatever this accepts, oci-spec parses to the same `Reference`
/// (a test compares both over thousands of inputs).
fn parse_common(s: &str) -> Option<Reference> {
    if !s.is_ascii() {
        return None;
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((name_tag, digest)) => {
            let hex = digest.strip_prefix("sha256:")?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            (name_tag, Some(digest))
        }
        None => (s, None),
    };
    // A `:` after the last `/` starts the tag; one before it belongs to a registry's port.
    let after_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[after_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..after_slash + i],
            Some(&name_tag[after_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if tag.is_some_and(|t| !valid_tag(t)) {
        return None;
    }
    // The first of several components is the registry when it looks like a host (Docker's
    // splitDomain); otherwise the whole name is a Docker Hub repository.
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            if !valid_domain(first) {
                return None;
            }
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    };
    if !repository.split('/').all(valid_path_component) {
        return None;
    }
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_string()
    };
    if repository.len() > 255 {
        return None;
    }
    let registry = registry.to_string();
    Some(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// `[\w][\w.-]{0,127}` over ASCII.
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes() {
        [first, rest @ ..] => {
            word(*first)
                && rest.len() <= 127
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    }
}

/// Host labels of letters, digits and inner `-`, joined by `.`, and an optional numeric port.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    bytes
        .split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&b| b == b'-'))
}

/// The fully qualified form of `reference`, e.g. `docker.io/library/busybox:latest`.
pub fn normalize_reference(reference: &str) -> Result<String, RegistryError> {
    Ok(parse_reference(reference)?.whole())
}

/// True when the reference names an image on Docker Hub, where registry mirrors apply.
pub fn is_docker_hub(reference: &Reference) -> bool {
    reference.registry() == DOCKER_HUB
}

/// The same image on another registry, e.g. a mirror: `mirror` is `host[:port][/path/prefix]`
/// (kaniko's `--registry-mirror` form); a path prefix is put before the repository.
pub fn with_registry(reference: &Reference, mirror: &str) -> Reference {
    let mirror = mirror
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let (host, prefix) = match mirror.split_once('/') {
        Some((host, prefix)) => (host, Some(prefix)),
        None => (mirror, None),
    };
    let repository = match prefix {
        Some(p) => format!("{p}/{}", reference.repository()),
        None => reference.repository().to_string(),
    };
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
            host.to_string(),
            repository,
            tag.to_string(),
            digest.to_string(),
        ),
        (None, Some(digest)) => {
            Reference::with_digest(host.to_string(), repository, digest.to_string())
        }
        (tag, None) => Reference::with_tag(
            host.to_string(),
            repository,
            tag.unwrap_or("latest").to_string(),
        ),
    }
}

/// The same repository and registry, addressed by `digest` only.
pub fn with_digest(reference: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        reference.registry().to_string(),
        reference.repository().to_string(),
        digest.to_string(),
    )
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex digits and returns the hex.
/// Kiln writes and verifies sha256 only, like every registry in practice.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_defaults() {
        assert_eq!(
            normalize_reference("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_reference("user/app:1.2").unwrap(),
            "docker.io/user/app:1.2"
        );
        assert_eq!(
            normalize_reference("index.docker.io/library/alpine:3").unwrap(),
            "docker.io/library/alpine:3"
        );
    }

    #[test]
    fn hosts_ports_and_digests() {
        let r = parse_reference("host:5000/a/b:tag").unwrap();
        assert_eq!(r.registry(), "host:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("tag"));
        let r = parse_reference(&format!("localhost/app@{D}")).unwrap();
        assert_eq!(r.registry(), "localhost");
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.tag(), None);
        assert_eq!(
            normalize_reference(&format!("busybox:1@{D}")).unwrap(),
            format!("docker.io/library/busybox:1@{D}")
        );
    }

    #[test]
    fn invalid_references_say_why() {
        for bad in ["", "UPPER/case", "a@sha256:abc", "a:b:c:d"] {
            let e = parse_reference(bad).unwrap_err();
            assert!(
                e.to_string().contains("invalid image reference"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn mirrors_keep_repository_and_add_prefix() {
        let r = parse_reference("busybox:1").unwrap();
        let m = with_registry(&r, "mirror.local:5000");
        assert_eq!(m.whole(), "mirror.local:5000/library/busybox:1");
        let m = with_registry(&r, "https://mirror.local/hub/");
        assert_eq!(m.whole(), "mirror.local/hub/library/busybox:1");
    }

    /// Every reference the hand-written grammar accepts parses to the same `Reference` with
    /// oci-spec, over combinations of registries, paths, tags and digests valid and not; and
    /// the references builds use take the fast path.
    #[test]
    fn common_references_parse_as_oci_spec_parses_them() {
        let hex = "0123456789abcdef".repeat(4);
        let registries = [
            "",
            "localhost/",
            "localhost:5000/",
            "127.0.0.1:5077/",
            "test.com/",
            "Test.COM/",
            "a-b.c/",
            "-a.com/",
            "a-.com/",
            "a_b.c/",
            "docker.io/",
            "index.docker.io/",
            "host:/",
            "host:x/",
            "host:1:2/",
            "a..b/",
            ".a.b/",
            "x/",
        ];
        let paths = [
            "busybox",
            "a/b",
            "a__b",
            "a___b",
            "a--b",
            "a.b",
            "a..b",
            "A",
            "a/B",
            "a_",
            "_a",
            "a-",
            "library/x",
            "a.b/c-d/e__f",
            "a/",
            "/a",
            "",
            "a//b",
            "a._b",
            "x/y/z",
        ];
        let long_tag = format!(":{}", "a".repeat(128));
        let too_long_tag = format!(":{}", "a".repeat(129));
        let tags = [
            "",
            ":latest",
            ":1.2",
            ":_x",
            ":.x",
            ":-x",
            ":x-y.z_",
            ":",
            ":a:b",
            ":v/1",
            long_tag.as_str(),
            too_long_tag.as_str(),
        ];
        let digests = [
            String::new(),
            format!("@sha256:{hex}"),
            format!("@sha256:{}", &hex[1..]),
            format!("@sha256:{}", hex.to_uppercase()),
            format!("@sha512:{hex}{hex}"),
            "@md5:00".to_string(),
            format!("@sha256:{hex}@x"),
        ];
        let mut fast = 0;
        let mut valid = 0;
        for r in registries {
            for p in paths {
                for t in tags {
                    for d in &digests {
                        let s = format!("{r}{p}{t}{d}");
                        let theirs = s.parse::<Reference>();
                        valid += usize::from(theirs.is_ok());
                        if let Some(ours) = parse_common(&s) {
                            fast += 1;
                            assert_eq!(Ok(ours), theirs, "{s:?}");
                        }
                    }
                }
            }
        }
        eprintln!("{fast} of {valid} valid references took the fast path");
        assert!(
            fast * 2 > valid,
            "only {fast} of {valid} took the fast path"
        );
        for common in [
            "busybox".to_string(),
            "127.0.0.1:5077/kiln-test/debian:bookworm".to_string(),
            format!("127.0.0.1:5077/cache/w4:{hex}"),
            format!("docker.io/library/alpine:3@sha256:{hex}"),
            "ghcr.io/org/team/app:v1.2.3-rc.1".to_string(),
        ] {
            assert!(parse_common(&common).is_some(), "{common}");
        }
        let long = format!("x/{}", "a".repeat(260));
        assert!(parse_common(&long).is_none());
        assert!(parse_reference(&long).is_err());
    }

    #[test]
    fn sha256_hex_checks_shape() {
        assert!(sha256_hex(D).is_some());
        assert!(sha256_hex("sha256:ABC").is_none());
        assert!(sha256_hex("sha512:00").is_none());
    }
}

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
    let parsed =
        reference
            .trim()
            .parse::<Reference>()
            .map_err(|e| RegistryError::InvalidReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            })?;
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

    #[test]
    fn sha256_hex_checks_shape() {
        assert!(sha256_hex(D).is_some());
        assert!(sha256_hex("sha256:ABC").is_none());
        assert!(sha256_hex("sha512:00").is_none());
    }
}

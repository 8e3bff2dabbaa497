//! Deterministic names for the Pods the operator creates, and the label values that point back
//! to their owner: the same owner, role, generation and attempt always give the same name, so a
//! restarted operator finds the Pod instead of creating a duplicate. Any valid object name (up to
//! 253 characters) gives a valid Pod name and label value. Pure; it knows nothing about who owns
//! a Pod that already has the name.

use sha2::{Digest, Sha256};

/// Longest name a Pod may have and still be usable as a label value and hostname.
pub const MAX_NAME: usize = 63;

/// Longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE: usize = 63;
/// Characters of the owner's name kept in a shortened label value.
const LABEL_HEAD: usize = 52;

/// Role of an executor Pod in its name.
pub const ROLE_BUILD: &str = "build";
/// Role of a warmer Pod in its name.
pub const ROLE_WARM: &str = "warm";

/// `<owner>-<role>-<generation>-<attempt>`. The role keeps an `ImageBuild` and a `CacheWarm` of
/// the same name apart. When longer than 63 characters the owner part is truncated and a short
/// hash of the full name is appended so distinct inputs stay distinct.
pub fn pod_name(owner: &str, role: &str, generation: i64, attempt: i32) -> String {
    let full = format!("{owner}-{role}-{generation}-{attempt}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(full.as_bytes())[..4]);
    let suffix = format!("-{hash}-{role}-{generation}-{attempt}");
    let keep = MAX_NAME.saturating_sub(suffix.len());
    let mut head: String = owner.chars().take(keep).collect();
    // A DNS label may not end in '-' or '.'.
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{suffix}")
}

/// Value of the label naming a Pod's owner (`kiln.dev/image-build`, `kiln.dev/cache-warm`).
///
/// The owner's name itself when it has at most 63 characters; a longer name (object names may
/// have 253) becomes its first 52 characters, `-`, and the first 10 hex digits of the SHA-256 of
/// the whole name: 63 characters, still starting and ending with an alphanumeric character as a
/// label value must. The label only narrows a list of Pods; which Pods an object owns is decided
/// by their controller owner reference, so two long names sharing a value cannot mix up Pods.
pub fn label_value(owner: &str) -> String {
    if owner.len() <= MAX_LABEL_VALUE {
        return owner.to_string();
    }
    let hash = hex::encode(&Sha256::digest(owner.as_bytes())[..5]);
    // Object names are ASCII (DNS subdomains), so a byte index is a character index.
    let head: String = owner.chars().take(LABEL_HEAD).collect();
    format!("{head}-{hash}")
}

/// Name of the executor Pod of one attempt of an `ImageBuild`.
pub fn build_pod_name(owner: &str, generation: i64, attempt: i32) -> String {
    pod_name(owner, ROLE_BUILD, generation, attempt)
}

/// Name of the warmer Pod of one run of a `CacheWarm`.
pub fn warm_pod_name(owner: &str, generation: i64, run: i32) -> String {
    pod_name(owner, ROLE_WARM, generation, run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_readable() {
        assert_eq!(build_pod_name("web", 3, 1), "web-build-3-1");
        assert_eq!(warm_pod_name("web", 3, 1), "web-warm-3-1");
    }

    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(build_pod_name("web", 3, 1), build_pod_name("web", 3, 1));
        assert_ne!(build_pod_name("web", 3, 1), build_pod_name("web", 3, 2));
        assert_ne!(build_pod_name("web", 3, 1), build_pod_name("web", 4, 1));
        assert_ne!(build_pod_name("web", 3, 1), warm_pod_name("web", 3, 1));
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = "a".repeat(70);
        let b = format!("{}b", "a".repeat(69));
        let na = build_pod_name(&a, 12, 3);
        let nb = build_pod_name(&b, 12, 3);
        let wa = warm_pod_name(&a, 12, 3);
        for n in [&na, &nb, &wa] {
            assert!(n.len() <= MAX_NAME, "{n}");
        }
        assert_ne!(na, nb);
        assert_ne!(na, wa);
        assert!(na.ends_with("-build-12-3"), "{na}");
        assert!(wa.ends_with("-warm-12-3"), "{wa}");
        assert_eq!(na, build_pod_name(&a, 12, 3));
        // The longest owner name Kubernetes allows (253) with large numbers still fits.
        let huge = build_pod_name(&"z".repeat(253), i64::MAX, i32::MAX);
        assert!(huge.len() <= MAX_NAME, "{huge}");
        let dashy = format!("{}-{}", "x".repeat(50), "y".repeat(30));
        let n = build_pod_name(&dashy, 1, 1);
        assert!(!n.contains("--"), "{n}");
    }

    #[test]
    fn label_values_fit_any_object_name() {
        assert_eq!(label_value("web"), "web");
        let max_kept = "a".repeat(63);
        assert_eq!(label_value(&max_kept), max_kept);
        let long = format!("{}.example-{}", "b".repeat(120), "c".repeat(124));
        assert_eq!(long.len(), 253);
        let v = label_value(&long);
        assert_eq!(v.len(), MAX_LABEL_VALUE, "{v}");
        assert_eq!(&v[..52], &long[..52]);
        assert_eq!(&v[52..53], "-");
        assert!(v[53..].chars().all(|c| c.is_ascii_hexdigit()), "{v}");
        // Deterministic, and distinct for names that share the kept head.
        assert_eq!(v, label_value(&long));
        assert_ne!(v, label_value(&format!("{}d", &long[..252])));
        // A head ending in '.' or '-' is still a valid label value (the hash ends it).
        let dotted = format!("{}.{}", "x".repeat(51), "y".repeat(100));
        let v = label_value(&dotted);
        assert!(
            v.starts_with(&"x".repeat(51)) && v.as_bytes()[51] == b'.',
            "{v}"
        );
        assert!(v.ends_with(|c: char| c.is_ascii_alphanumeric()), "{v}");
    }
}

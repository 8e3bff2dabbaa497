//! Deterministic names for the Pods the operator creates: the same owner, role, generation and
//! attempt always give the same name, so a restarted operator finds the Pod instead of
//! creating a duplicate. Pure; it knows nothing about who owns a Pod that already has the name.

use sha2::{Digest, Sha256};

/// Longest name a Pod may have and still be usable as a label value and hostname.
pub const MAX_NAME: usize = 63;

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
}

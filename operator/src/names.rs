//! Deterministic names for the Pods the operator creates: the same owner, generation and
//! attempt always give the same name, so a restarted operator finds the Pod instead of
//! creating a duplicate. Pure.

use sha2::{Digest, Sha256};

/// Longest name a Pod may have and still be usable as a label value and hostname.
pub const MAX_NAME: usize = 63;

/// `<owner>-<generation>-<attempt>`; when longer than 63 characters the owner part is
/// truncated and a short hash of the full name is appended so distinct inputs stay distinct.
pub fn pod_name(owner: &str, generation: i64, attempt: i32) -> String {
    let full = format!("{owner}-{generation}-{attempt}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(full.as_bytes())[..4]);
    let suffix = format!("-{hash}-{generation}-{attempt}");
    let keep = MAX_NAME.saturating_sub(suffix.len());
    let mut head: String = owner.chars().take(keep).collect();
    // A DNS label may not end in '-' or '.'.
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_readable() {
        assert_eq!(pod_name("web", 3, 1), "web-3-1");
    }

    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(pod_name("web", 3, 1), pod_name("web", 3, 1));
        assert_ne!(pod_name("web", 3, 1), pod_name("web", 3, 2));
        assert_ne!(pod_name("web", 3, 1), pod_name("web", 4, 1));
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = "a".repeat(70);
        let b = format!("{}b", "a".repeat(69));
        let na = pod_name(&a, 12, 3);
        let nb = pod_name(&b, 12, 3);
        assert!(na.len() <= MAX_NAME, "{na}");
        assert!(nb.len() <= MAX_NAME, "{nb}");
        assert_ne!(na, nb);
        assert!(na.ends_with("-12-3"));
        assert_eq!(na, pod_name(&a, 12, 3));
        let dashy = format!("{}-{}", "x".repeat(50), "y".repeat(30));
        let n = pod_name(&dashy, 1, 1);
        assert!(!n.contains("--"), "{n}");
    }
}

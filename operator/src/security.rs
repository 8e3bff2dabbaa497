//! The security settings of the Pods the operator creates, hardened by default as Shipwright's
//! kaniko strategy does: every capability dropped and only what a root build needs added back,
//! the runtime's default seccomp profile, no service-account token. Pure Pod-spec pieces; what a
//! build may add beyond them is decided by the operator's configuration (see
//! [`crate::config::OverridePolicy`]), never by the build alone.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

use crate::config::OperatorConfig;

/// What the executor needs as root to unpack images and run `RUN` steps in place: change
/// owners (CHOWN), read and write files whatever their mode (DAC_OVERRIDE), change modes and
/// times of files it does not own (FOWNER), keep setuid/setgid bits (FSETID), switch to the
/// `USER` of a step (SETUID, SETGID), keep file capabilities of a layer (SETFCAP) and end the
/// processes of a step (KILL). Docker's default set less MKNOD, NET_RAW, SETPCAP,
/// NET_BIND_SERVICE, SYS_CHROOT and AUDIT_WRITE.
pub const BUILD_CAPABILITIES: [&str; 8] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETFCAP",
    "SETGID",
    "SETUID",
];

fn runtime_default() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    })
}

/// The Pod-level settings of executor and warmer Pods: the runtime's default seccomp profile.
pub fn pod() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: runtime_default(),
        ..Default::default()
    }
}

/// The executor container: root (it unpacks images owned by any user over `/`), every
/// capability dropped and [`BUILD_CAPABILITIES`] plus `extra` (already permitted by the
/// operator's configuration) added back, no privileged mode, `allowPrivilegeEscalation` as
/// configured, the default seccomp profile. The root filesystem stays writable: the build
/// happens on it.
pub fn executor_container(cfg: &OperatorConfig, extra: &[String]) -> SecurityContext {
    let mut add: Vec<String> = BUILD_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for c in extra {
        if !add.contains(c) {
            add.push(c.clone());
        }
    }
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        run_as_non_root: Some(false),
        privileged: Some(false),
        allow_privilege_escalation: Some(cfg.executor_allow_privilege_escalation),
        read_only_root_filesystem: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(add),
        }),
        seccomp_profile: runtime_default(),
        ..Default::default()
    }
}

/// The warmer container: it only downloads blobs into its cache volume, so it keeps no
/// capability at all. It runs as root (uid 0) so that it can write the volume as earlier warms
/// left it, but without DAC_OVERRIDE that root can write only where the owner or the mode
/// allows; its root filesystem is read-only and it cannot gain privileges.
pub fn warmer_container() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        run_as_non_root: Some(false),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: runtime_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_drops_all_and_adds_the_build_set() {
        let cfg = OperatorConfig::default();
        let sc = executor_container(&cfg, &[]);
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(
            caps.add.clone().unwrap(),
            [
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "KILL",
                "SETFCAP",
                "SETGID",
                "SETUID"
            ]
        );
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(true));
        assert_eq!(
            sc.seccomp_profile.unwrap().type_,
            "RuntimeDefault".to_string()
        );
        let strict = OperatorConfig {
            executor_allow_privilege_escalation: false,
            ..Default::default()
        };
        let sc = executor_container(&strict, &["MKNOD".into(), "CHOWN".into()]);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let add = sc.capabilities.unwrap().add.unwrap();
        assert_eq!(add.len(), 9, "{add:?}");
        assert_eq!(add.last().map(String::as_str), Some("MKNOD"));
    }

    #[test]
    fn warmer_keeps_no_capability() {
        let sc = warmer_container();
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(caps.add, None);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod().seccomp_profile.unwrap().type_, "RuntimeDefault");
    }
}

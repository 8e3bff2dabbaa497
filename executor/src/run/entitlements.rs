//! `--allow ENTITLEMENT` (docker buildx's flag, BuildKit's entitlements) and what a step's
//! `RUN --network=` and `RUN --security=` become under them: `network.host` lets a step ask for
//! the executor's own network, `security.insecure` lets a step run without the sandbox's
//! capability and seccomp restrictions. Pure: reads strings, decides, never runs anything.

use super::{Network, Security};

/// BuildKit's entitlement names, as `--allow` takes them.
pub const NETWORK_HOST: &str = "network.host";
pub const SECURITY_INSECURE: &str = "security.insecure";

/// What the build was allowed with `--allow`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entitlements {
    pub network_host: bool,
    pub security_insecure: bool,
}

impl Entitlements {
    /// From the `--allow` values as given (each one entitlement or a comma-separated list, as
    /// buildx reads them); an unknown name is refused, naming it and the known ones.
    pub fn from_flags(values: &[String]) -> Result<Entitlements, String> {
        let mut out = Entitlements::default();
        for name in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
            match name {
                NETWORK_HOST => out.network_host = true,
                SECURITY_INSECURE => out.security_insecure = true,
                "" => {}
                other => {
                    return Err(format!(
                        "--allow {other}: unknown entitlement; use {NETWORK_HOST} or {SECURITY_INSECURE}"
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// The network and security of one step from its `RUN --network=` and `RUN --security=` values:
/// absent or `default` is the build's network (the executor's own, see the README), `none`
/// loopback only, `host` the executor's own network and needs `network.host`; absent or `sandbox`
/// is the sandbox, `insecure` needs `security.insecure`. The error names the option and the flag
/// that allows it, or the value that is not a mode.
pub fn step_modes(
    network: Option<&str>,
    security: Option<&str>,
    allowed: Entitlements,
) -> Result<(Network, Security), String> {
    let network = match network {
        None | Some("default") => Network::Host,
        Some("none") => Network::None,
        Some("host") if allowed.network_host => Network::Host,
        Some("host") => {
            return Err(format!(
                "RUN --network=host needs the {NETWORK_HOST} entitlement: give the executor \
                 --allow {NETWORK_HOST} to let this step use the executor's own network"
            ))
        }
        Some(other) => {
            return Err(format!(
                "RUN --network={other}: unknown network mode; use default, none or host"
            ))
        }
    };
    let security = match security {
        None | Some("sandbox") => Security::Sandbox,
        Some("insecure") if allowed.security_insecure => Security::Insecure,
        Some("insecure") => {
            return Err(format!(
                "RUN --security=insecure needs the {SECURITY_INSECURE} entitlement: give the \
                 executor --allow {SECURITY_INSECURE} to run this step with every capability \
                 and no seccomp filter"
            ))
        }
        Some(other) => {
            return Err(format!(
                "RUN --security={other}: unknown security mode; use sandbox or insecure"
            ))
        }
    };
    Ok((network, security))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_takes_lists_and_repeats_and_refuses_unknown_names() {
        let both = Entitlements::from_flags(&["network.host,security.insecure".into()]).unwrap();
        assert!(both.network_host && both.security_insecure);
        let one = Entitlements::from_flags(&["network.host".into()]).unwrap();
        assert_eq!(
            one,
            Entitlements {
                network_host: true,
                security_insecure: false
            }
        );
        let err = Entitlements::from_flags(&["device".into()]).unwrap_err();
        assert!(err.contains("--allow device"), "{err}");
    }

    #[test]
    fn modes_need_their_entitlement() {
        let none = Entitlements::default();
        assert_eq!(
            step_modes(None, None, none),
            Ok((Network::Host, Security::Sandbox))
        );
        assert_eq!(
            step_modes(Some("default"), Some("sandbox"), none),
            Ok((Network::Host, Security::Sandbox))
        );
        assert_eq!(
            step_modes(Some("none"), None, none).unwrap().0,
            Network::None
        );
        let host = step_modes(Some("host"), None, none).unwrap_err();
        assert!(host.contains("--network=host") && host.contains("--allow network.host"));
        let insecure = step_modes(None, Some("insecure"), none).unwrap_err();
        assert!(
            insecure.contains("--security=insecure")
                && insecure.contains("--allow security.insecure")
        );
        let all = Entitlements {
            network_host: true,
            security_insecure: true,
        };
        assert_eq!(
            step_modes(Some("host"), Some("insecure"), all),
            Ok((Network::Host, Security::Insecure))
        );
        assert!(step_modes(Some("bridge"), None, all)
            .unwrap_err()
            .contains("bridge"));
        assert!(step_modes(None, Some("privileged"), all)
            .unwrap_err()
            .contains("privileged"));
    }
}

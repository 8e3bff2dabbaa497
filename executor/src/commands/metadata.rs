//! Instructions that only change the image config and never the filesystem: CMD, ENTRYPOINT,
//! LABEL, MAINTAINER, EXPOSE, VOLUME, STOPSIGNAL, HEALTHCHECK, SHELL, ONBUILD.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{CommandError, Outcome, StageState};
use kiln_common::duration::parse_ns as parse_duration_ns;
use kiln_dockerfile::{Healthcheck, ShellOrExec};
use kiln_oci::image::HealthConfig;

fn command_line(cmd: &ShellOrExec, state: &StageState) -> Vec<String> {
    match cmd {
        ShellOrExec::Exec(argv) => argv.clone(),
        ShellOrExec::Shell(text) => {
            let mut argv = state.shell();
            argv.push(text.clone());
            argv
        }
    }
}

pub fn cmd(cmd: &ShellOrExec, state: &mut StageState) -> Result<Outcome, CommandError> {
    state.config.config.cmd = Some(command_line(cmd, state));
    state.cmd_set = true;
    Ok(Outcome::ConfigOnly)
}

pub fn entrypoint(ep: &ShellOrExec, state: &mut StageState) -> Result<Outcome, CommandError> {
    let argv = command_line(ep, state);
    // `ENTRYPOINT []` / `ENTRYPOINT ""` clears it; an ENTRYPOINT also drops a CMD inherited from
    // the base image unless this stage set one (Docker's rule).
    state.config.config.entrypoint = if matches!(ep, ShellOrExec::Exec(v) if v.is_empty()) {
        None
    } else {
        Some(argv)
    };
    if !state.cmd_set {
        state.config.config.cmd = None;
    }
    Ok(Outcome::ConfigOnly)
}

pub fn label(pairs: &[(String, String)], state: &mut StageState) -> Result<Outcome, CommandError> {
    for (k, v) in pairs {
        let key = state.expand(k)?;
        let value = state.expand(v)?;
        if key.is_empty() {
            return Err(CommandError::Invalid(
                "LABEL names must not be empty".into(),
            ));
        }
        state
            .config
            .config
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key, value);
    }
    Ok(Outcome::ConfigOnly)
}

pub fn maintainer(name: &str, state: &mut StageState) -> Result<Outcome, CommandError> {
    state.config.author = Some(state.expand(name)?);
    Ok(Outcome::ConfigOnly)
}

pub fn expose(raw_ports: &[String], state: &mut StageState) -> Result<Outcome, CommandError> {
    let mut words = Vec::new();
    for raw in raw_ports {
        words.extend(state.expand_all(raw)?);
    }
    for word in words {
        for port in expand_port_spec(&word)? {
            state
                .config
                .config
                .exposed_ports
                .get_or_insert_with(BTreeMap::new)
                .insert(port, Value::Object(Default::default()));
        }
    }
    Ok(Outcome::ConfigOnly)
}

/// `80` → `80/tcp`; `53/UDP` → `53/udp`; `8000-8002/tcp` → three ports.
fn expand_port_spec(word: &str) -> Result<Vec<String>, CommandError> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(CommandError::Invalid(format!(
            "EXPOSE {word}: unknown protocol {proto:?} (use tcp, udp or sctp)"
        )));
    }
    let bad = || CommandError::Invalid(format!("EXPOSE {word}: not a port number or range"));
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if end < start {
        return Err(bad());
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

pub fn volume(raw_paths: &[String], state: &mut StageState) -> Result<Outcome, CommandError> {
    for raw in raw_paths {
        let path = state.expand(raw)?;
        if path.trim().is_empty() {
            return Err(CommandError::Invalid(
                "VOLUME specified can not be an empty string".into(),
            ));
        }
        state
            .config
            .config
            .volumes
            .get_or_insert_with(BTreeMap::new)
            .insert(path, Value::Object(Default::default()));
    }
    Ok(Outcome::ConfigOnly)
}

pub fn stopsignal(raw: &str, state: &mut StageState) -> Result<Outcome, CommandError> {
    let sig = state.expand(raw)?;
    let valid = sig.parse::<u32>().is_ok_and(|n| n > 0 && n < 65)
        || sig
            .trim_start_matches("SIG")
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-')
            && !sig.trim_start_matches("SIG").is_empty();
    if !valid {
        return Err(CommandError::Invalid(format!(
            "STOPSIGNAL {sig}: not a signal name or number"
        )));
    }
    state.config.config.stop_signal = Some(sig);
    Ok(Outcome::ConfigOnly)
}

pub fn healthcheck(hc: &Healthcheck, state: &mut StageState) -> Result<Outcome, CommandError> {
    let config = match hc {
        Healthcheck::None => HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        },
        Healthcheck::Check {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test = match test {
                ShellOrExec::Exec(argv) => {
                    let mut t = vec!["CMD".to_string()];
                    t.extend(argv.iter().cloned());
                    t
                }
                ShellOrExec::Shell(text) => vec!["CMD-SHELL".to_string(), text.clone()],
            };
            let dur = |name: &str, v: &Option<String>| -> Result<i64, CommandError> {
                match v {
                    None => Ok(0),
                    Some(text) => parse_duration_ns(text).ok_or_else(|| {
                        CommandError::Invalid(format!(
                            "HEALTHCHECK --{name}={text}: not a duration (e.g. 30s, 1m30s)"
                        ))
                    }),
                }
            };
            HealthConfig {
                test,
                interval: dur("interval", interval)?,
                timeout: dur("timeout", timeout)?,
                start_period: dur("start-period", start_period)?,
                start_interval: dur("start-interval", start_interval)?,
                retries: retries.map(i64::from).unwrap_or(0),
            }
        }
    };
    state.config.config.healthcheck = Some(config);
    Ok(Outcome::ConfigOnly)
}

pub fn shell(shell: &[String], state: &mut StageState) -> Result<Outcome, CommandError> {
    if shell.is_empty() {
        return Err(CommandError::Invalid(
            "SHELL requires at least one argument".into(),
        ));
    }
    state.config.config.shell = Some(shell.to_vec());
    Ok(Outcome::ConfigOnly)
}

pub fn onbuild(trigger: &str, state: &mut StageState) -> Result<Outcome, CommandError> {
    state
        .config
        .config
        .on_build
        .get_or_insert_with(Vec::new)
        .push(trigger.to_string());
    Ok(Outcome::ConfigOnly)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::state;

    #[test]
    fn ports() {
        assert_eq!(expand_port_spec("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(expand_port_spec("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            expand_port_spec("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expand_port_spec("http").is_err());
        assert!(expand_port_spec("80/xyz").is_err());
    }

    #[test]
    fn entrypoint_clears_inherited_cmd_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        st.config.config.cmd = Some(vec!["inherited".into()]);
        entrypoint(&ShellOrExec::Exec(vec!["/app".into()]), &mut st).unwrap();
        assert_eq!(st.config.config.cmd, None);
        cmd(&ShellOrExec::Shell("run me".into()), &mut st).unwrap();
        entrypoint(&ShellOrExec::Shell("go".into()), &mut st).unwrap();
        assert_eq!(
            st.config.config.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "run me".into()])
        );
        assert_eq!(
            st.config.config.entrypoint,
            Some(vec!["/bin/sh".into(), "-c".into(), "go".into()])
        );
    }

    #[test]
    fn healthcheck_durations() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        let hc = Healthcheck::Check {
            test: ShellOrExec::Shell("true".into()),
            interval: Some("30s".into()),
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: Some(3),
        };
        healthcheck(&hc, &mut st).unwrap();
        let got = st.config.config.healthcheck.clone().unwrap();
        assert_eq!(got.test, vec!["CMD-SHELL", "true"]);
        assert_eq!(got.interval, 30_000_000_000);
        assert_eq!(got.retries, 3);
    }
}

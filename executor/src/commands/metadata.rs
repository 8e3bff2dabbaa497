//! Instructions that only change the image config and never the filesystem: CMD, ENTRYPOINT,
//! LABEL, MAINTAINER, EXPOSE, VOLUME, STOPSIGNAL, HEALTHCHECK, SHELL, ONBUILD. Each only
//! implements [`Command::configure`]; the trait's defaults say the rest (not cached, no files).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Cacheable, Command, CommandError, CopySource, InstructionError, Outcome, StageState};
use kiln_common::duration::parse_ns as parse_duration_ns;
use kiln_dockerfile::{Healthcheck as HealthcheckArgs, ShellOrExec};
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

pub struct Cmd<'a>(pub &'a ShellOrExec);

impl Command for Cmd<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let cmd = self.0;
        state.config.config.cmd = Some(command_line(cmd, state));
        state.cmd_set = true;
        Ok(())
    }
}

pub struct Entrypoint<'a>(pub &'a ShellOrExec);

impl Command for Entrypoint<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let ep = self.0;
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
        Ok(())
    }
}

pub struct Label<'a>(pub &'a [(String, String)]);

impl Command for Label<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let pairs = self.0;
        for (k, v) in pairs {
            let key = state.expand(k)?;
            let value = state.expand(v)?;
            if key.is_empty() {
                return Err(InstructionError::Invalid(
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
        Ok(())
    }
}

pub struct Maintainer<'a>(pub &'a str);

impl Command for Maintainer<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let name = self.0;
        state.config.author = Some(state.expand(name)?);
        Ok(())
    }
}

pub struct Expose<'a>(pub &'a [String]);

impl Command for Expose<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let raw_ports = self.0;
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
        Ok(())
    }
}

/// `80` → `80/tcp`; `53/UDP` → `53/udp`; `8000-8002/tcp` → three ports.
fn expand_port_spec(word: &str) -> Result<Vec<String>, InstructionError> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(InstructionError::Invalid(format!(
            "EXPOSE {word}: unknown protocol {proto:?} (use tcp, udp or sctp)"
        )));
    }
    let bad = || InstructionError::Invalid(format!("EXPOSE {word}: not a port number or range"));
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

pub struct Volume<'a>(pub &'a [String]);

impl Command for Volume<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let raw_paths = self.0;
        for raw in raw_paths {
            let path = state.expand(raw)?;
            if path.trim().is_empty() {
                return Err(InstructionError::Invalid(
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
        Ok(())
    }

    /// Besides the config entry, a missing volume directory is created (root-owned, like
    /// `mkdir -p`), as buildah and kaniko do, so that later steps and containers find it;
    /// BuildKit leaves the filesystem alone. Like buildah's, the step adds no layer: the
    /// directories land in the next step's layer. The differential corpus (`volume-dirs`)
    /// holds Kiln to buildah here.
    fn execute(
        &self,
        state: &mut StageState,
        _source: Option<CopySource<'_>>,
    ) -> Result<Outcome, CommandError> {
        self.configure(state)?;
        for raw in self.0 {
            let path = state.in_image_path(&state.expand(raw)?);
            super::workdir::ensure_dir(&state.root, &path)?;
        }
        Ok(Outcome::ConfigOnly)
    }

    fn writes_root(&self) -> bool {
        true
    }

    fn needs_root(&self, _cacheable: Cacheable) -> Option<&'static str> {
        Some("VOLUME creates its directories in the image")
    }
}

pub struct Stopsignal<'a>(pub &'a str);

impl Command for Stopsignal<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let raw = self.0;
        let sig = state.expand(raw)?;
        let valid = sig.parse::<u32>().is_ok_and(|n| n > 0 && n < 65)
            || sig
                .trim_start_matches("SIG")
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-')
                && !sig.trim_start_matches("SIG").is_empty();
        if !valid {
            return Err(InstructionError::Invalid(format!(
                "STOPSIGNAL {sig}: not a signal name or number"
            )));
        }
        state.config.config.stop_signal = Some(sig);
        Ok(())
    }
}

pub struct Healthcheck<'a>(pub &'a HealthcheckArgs);

impl Command for Healthcheck<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let hc = self.0;
        let config = match hc {
            HealthcheckArgs::None => HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            },
            HealthcheckArgs::Check {
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
                let dur = |name: &str, v: &Option<String>| -> Result<i64, InstructionError> {
                    match v {
                        None => Ok(0),
                        Some(text) => parse_duration_ns(text).ok_or_else(|| {
                            InstructionError::Invalid(format!(
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
        Ok(())
    }
}

pub struct Shell<'a>(pub &'a [String]);

impl Command for Shell<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let shell = self.0;
        if shell.is_empty() {
            return Err(InstructionError::Invalid(
                "SHELL requires at least one argument".into(),
            ));
        }
        state.config.config.shell = Some(shell.to_vec());
        Ok(())
    }
}

pub struct Onbuild<'a>(pub &'a str);

impl Command for Onbuild<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let trigger = self.0;
        state
            .config
            .config
            .on_build
            .get_or_insert_with(Vec::new)
            .push(trigger.to_string());
        Ok(())
    }
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
        Entrypoint(&ShellOrExec::Exec(vec!["/app".into()]))
            .configure(&mut st)
            .unwrap();
        assert_eq!(st.config.config.cmd, None);
        Cmd(&ShellOrExec::Shell("run me".into()))
            .configure(&mut st)
            .unwrap();
        Entrypoint(&ShellOrExec::Shell("go".into()))
            .configure(&mut st)
            .unwrap();
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
        let hc = HealthcheckArgs::Check {
            test: ShellOrExec::Shell("true".into()),
            interval: Some("30s".into()),
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: Some(3),
        };
        Healthcheck(&hc).configure(&mut st).unwrap();
        let got = st.config.config.healthcheck.clone().unwrap();
        assert_eq!(got.test, vec!["CMD-SHELL", "true"]);
        assert_eq!(got.interval, 30_000_000_000);
        assert_eq!(got.retries, 3);
    }
}

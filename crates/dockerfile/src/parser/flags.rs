//! `--flag[=value]` words of one instruction checked against the flags that instruction
//! accepts (string, boolean or repeatable list), with errors naming the flag and the line.

use std::collections::HashMap;

use super::{err, ParseError};
use crate::excerpt::excerpt;

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--flag=value`, at most once.
    Str,
    /// `--flag`, `--flag=true|false`.
    Bool,
    /// `--flag=value`, repeatable.
    List,
}

/// Parsed `--flag` values of one instruction.
#[derive(Default)]
pub(super) struct Flags {
    strings: HashMap<&'static str, String>,
    bools: HashMap<&'static str, bool>,
    lists: HashMap<&'static str, Vec<String>>,
}

impl Flags {
    pub(super) fn string(&mut self, name: &str) -> Option<String> {
        self.strings.remove(name)
    }
    pub(super) fn boolean(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }
    pub(super) fn list(&mut self, name: &str) -> Vec<String> {
        self.lists.remove(name).unwrap_or_default()
    }
}

pub(super) fn parse_flags(
    keyword: &str,
    flags: &[String],
    spec: &[(&'static str, FlagKind)],
    line: usize,
) -> Result<Flags, ParseError> {
    let mut out = Flags::default();
    for flag in flags {
        let body = flag.strip_prefix("--").unwrap_or(flag);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(&(name, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            let accepted = if spec.is_empty() {
                format!("{keyword} takes no flags")
            } else {
                let names: Vec<String> = spec.iter().map(|(n, _)| format!("--{n}")).collect();
                format!("{keyword} accepts {}", names.join(", "))
            };
            return err(
                line,
                format!("unknown flag --{} for {keyword}: {accepted}", excerpt(name)),
            );
        };
        match kind {
            FlagKind::Bool => {
                let v = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(_) => {
                        return err(
                            line,
                            format!(
                                "flag --{name} of {keyword} expects true or false, not `{}`",
                                excerpt(value.unwrap_or_default())
                            ),
                        )
                    }
                };
                if out.bools.insert(name, v).is_some() {
                    return err(line, format!("flag --{name} of {keyword} is given twice"));
                }
            }
            FlagKind::Str | FlagKind::List => {
                let Some(value) = value else {
                    return err(
                        line,
                        format!("flag --{name} of {keyword} needs a value: write --{name}=<value>"),
                    );
                };
                if kind == FlagKind::List {
                    out.lists.entry(name).or_default().push(value.to_string());
                } else if out.strings.insert(name, value.to_string()).is_some() {
                    return err(line, format!("flag --{name} of {keyword} is given twice"));
                }
            }
        }
    }
    Ok(out)
}

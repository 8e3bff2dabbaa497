//! Which cases of a suite run, chosen by name filters or an environment variable, and the rule
//! that a suite which counts its cases fails when the choice runs none. It must not run cases.

/// Fails when a run selected no case: a green run must have tested something. `selection`
/// says how the cases were chosen, so the message shows the filter that matched nothing.
#[track_caller]
pub fn require_cases(suite: &str, count: usize, selection: &str) {
    assert!(
        count > 0,
        "{suite}: {selection} selects none of its cases, so nothing would be tested \
         (a run that tests nothing fails rather than passes)"
    );
}

/// The libtest-like command line of a `harness = false` test binary: name filters (a case runs
/// when its name contains one, or equals one with `--exact`) and `--skip`. Other flags are
/// ignored, and so are the values of the flags that take one (`--test-threads 2` filters nothing).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CaseArgs {
    pub filters: Vec<String>,
    pub skip: Vec<String>,
    pub exact: bool,
}

/// libtest flags whose value is the next argument.
const VALUE_FLAGS: &[&str] = &[
    "--test-threads",
    "--color",
    "--format",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

impl CaseArgs {
    /// This process's arguments, as cargo passes them to a test binary.
    pub fn from_env() -> CaseArgs {
        CaseArgs::parse(std::env::args().skip(1))
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> CaseArgs {
        let mut out = CaseArgs::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--skip" => out.skip.extend(args.next()),
                "--exact" => out.exact = true,
                flag if VALUE_FLAGS.contains(&flag) => {
                    args.next();
                }
                flag if flag.starts_with('-') => {}
                _ => out.filters.push(arg),
            }
        }
        out
    }

    /// Whether the case `name` runs.
    pub fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skip.iter().any(|s| name.contains(s.as_str()))
    }

    /// The cases of `suite` that run, in order; fails, naming the filters, when none does.
    #[track_caller]
    pub fn select<'a, T>(&self, suite: &str, cases: &'a [(&'a str, T)]) -> Vec<&'a (&'a str, T)> {
        let chosen: Vec<_> = cases.iter().filter(|(n, _)| self.selects(n)).collect();
        require_cases(suite, chosen.len(), &self.describe());
        chosen
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.filters.is_empty() {
            parts.push(format!("the filter {:?}", self.filters));
        }
        if self.exact {
            parts.push("--exact".to_string());
        }
        if !self.skip.is_empty() {
            parts.push(format!("--skip {:?}", self.skip));
        }
        if parts.is_empty() {
            "the run (no filter)".to_string()
        } else {
            parts.join(" with ")
        }
    }
}

/// The names among `known` that the comma-separated list in the environment variable `var`
/// chooses, in `known`'s order; all of them when `var` is unset or blank. An unknown name fails
/// listing the known ones, and a list that names nothing (`,`) fails: a typo must not make a
/// run test nothing.
#[track_caller]
pub fn select_from_env(var: &str, known: &[&str]) -> Vec<String> {
    let value = std::env::var(var).ok();
    match select_listed(var, value.as_deref(), known) {
        Ok(chosen) => chosen,
        Err(e) => panic!("{e}"),
    }
}

fn select_listed(var: &str, value: Option<&str>, known: &[&str]) -> Result<Vec<String>, String> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(known.iter().map(|k| k.to_string()).collect());
    };
    let wanted: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(unknown) = wanted.iter().find(|w| !known.contains(w)) {
        return Err(format!(
            "{var} names `{unknown}`, which is not one of: {}",
            known.join(", ")
        ));
    }
    let chosen: Vec<String> = known
        .iter()
        .filter(|k| wanted.contains(k))
        .map(|k| k.to_string())
        .collect();
    if chosen.is_empty() {
        return Err(format!(
            "{var}={value:?} selects nothing, so nothing would be tested; name some of: {}",
            known.join(", ")
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> CaseArgs {
        CaseArgs::parse(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn filters_skip_exact_and_flag_values() {
        let a = args(&[
            "--nocapture",
            "--test-threads",
            "2",
            "user",
            "--skip",
            "uid",
        ]);
        assert_eq!(a.filters, ["user"]);
        assert!(a.selects("run_user_by_name") && !a.selects("run_user_by_uid"));
        assert!(!a.selects("run_env_and_workdir"));
        let exact = args(&["--exact", "run_env"]);
        assert!(!exact.selects("run_env_and_workdir") && exact.selects("run_env"));
        assert!(args(&[]).selects("anything"));
    }

    #[test]
    fn a_filter_matching_nothing_fails_and_names_the_filter() {
        let cases = [("run_a", 1), ("run_b", 2)];
        assert_eq!(args(&["run_b"]).select("suite", &cases).len(), 1);
        let err = std::panic::catch_unwind(|| {
            args(&["nothing-like-it"]).select("suite", &cases);
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("\"nothing-like-it\"") && msg.contains("suite"),
            "{msg}"
        );
    }

    #[test]
    fn env_lists_are_checked_against_the_known_names() {
        let known = ["build", "delete", "warm"];
        assert_eq!(select_listed("V", None, &known).unwrap(), known);
        assert_eq!(select_listed("V", Some("  "), &known).unwrap(), known);
        assert_eq!(
            select_listed("V", Some("warm, build"), &known).unwrap(),
            ["build", "warm"]
        );
        let err = select_listed("V", Some("build,typo"), &known).unwrap_err();
        assert!(
            err.contains("`typo`") && err.contains("build, delete, warm"),
            "{err}"
        );
        let err = select_listed("V", Some(","), &known).unwrap_err();
        assert!(err.contains("selects nothing"), "{err}");
    }
}

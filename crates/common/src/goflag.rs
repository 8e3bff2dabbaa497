//! How Go's pflag reads a flag value, for the kaniko command lines Kiln takes over: booleans
//! are Go's `strconv.ParseBool`. Parses values only; defines no flag.

/// Go's `strconv.ParseBool`, which pflag applies to `--flag=VALUE` of a boolean flag: `1`, `t`,
/// `T`, `TRUE`, `true`, `True` are true; `0`, `f`, `F`, `FALSE`, `false`, `False` are false;
/// anything else is an error naming the accepted spellings. Used as a clap `value_parser`.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "{value:?} is not a boolean: use true or false (or 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bool;

    #[test]
    fn go_spellings() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "yes", "on", "tRUE", " true", "2"] {
            assert!(parse_bool(bad).is_err(), "{bad:?}");
        }
    }
}

//! Go's duration syntax (`90s`, `1h30m`, `1.5h`, `500ms`), as kaniko's flags, Dockerfile
//! `HEALTHCHECK` options and the operator's resources write it. The one parser of it in Kiln.
//! Pure: parses strings only.

use std::time::Duration;

/// Why a text is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {value:?}: {why}; {hint}")]
pub struct DurationError {
    pub value: String,
    pub why: &'static str,
    pub hint: &'static str,
}

/// Which spellings of Go's duration syntax a caller accepts.
#[derive(Debug, Clone, Copy)]
pub struct Grammar {
    /// Unit spellings and their length in seconds, longest spelling first so `ms` wins over `m`.
    pub units: &'static [(&'static str, f64)],
    /// Whether a bare `0` and a leading `+` are accepted, as Go's `time.ParseDuration` does.
    pub bare_zero_and_sign: bool,
    /// The longest duration accepted, if any.
    pub max: Option<Duration>,
    /// How to write one, for the error message.
    pub hint: &'static str,
}

/// Go's `time.ParseDuration`, without negative values.
pub const GO: Grammar = Grammar {
    units: &[
        ("ns", 1e-9),
        ("us", 1e-6),
        ("\u{b5}s", 1e-6),
        ("\u{3bc}s", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ],
    bare_zero_and_sign: true,
    max: None,
    hint: "write it like 90s, 10m or 1h30m",
};

/// Parses a non-negative Go duration: `0`, or one or more number+unit groups (units `ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`; numbers may have a fraction; an optional leading `+`). Negative
/// durations are refused: nothing in Kiln waits a negative time.
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    parse_with(value, &GO)
}

/// Parses `value` in the given [`Grammar`]: one or more number+unit groups of its units.
pub fn parse_with(value: &str, grammar: &Grammar) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        value: value.to_string(),
        why,
        hint: grammar.hint,
    };
    let text = match value.strip_prefix('+') {
        Some(rest) if grammar.bare_zero_and_sign => rest,
        _ => value,
    };
    if text == "0" && grammar.bare_zero_and_sign {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(err("it is empty"));
    }
    if text.starts_with('-') {
        return Err(err("it is negative"));
    }
    let mut seconds = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err("a unit has no number before it"));
        }
        let number = &rest[..num_len];
        if number.starts_with('.') && number.len() == 1 || number.matches('.').count() > 1 {
            return Err(err("a number is malformed"));
        }
        let number: f64 = number.parse().map_err(|_| err("a number is malformed"))?;
        rest = &rest[num_len..];
        let (unit, scale) = grammar
            .units
            .iter()
            .find(|(u, _)| rest.starts_with(u))
            .ok_or_else(|| {
                if rest.is_empty() {
                    err("a number has no unit")
                } else {
                    err("a unit is unknown")
                }
            })?;
        rest = &rest[unit.len()..];
        seconds += number * scale;
    }
    let d = Duration::try_from_secs_f64(seconds).map_err(|_| err("it is too long"))?;
    match grammar.max {
        Some(max) if d > max => Err(err("it is too long")),
        _ => Ok(d),
    }
}

/// [`parse`] in whole nanoseconds, as Go stores a duration; `None` when it is not one.
pub fn parse_ns(value: &str) -> Option<i64> {
    parse(value.trim())
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("+2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("10\u{b5}s"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_ns("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_ns(" 30s "), Some(30_000_000_000));
        for bad in ["", "30", "s", "1x", "1..2s", "-1s", ".s", "5x", "1h-1m"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("30").unwrap_err().why, "a number has no unit");
    }

    #[test]
    fn a_narrower_grammar() {
        const SHORT: Grammar = Grammar {
            units: &[("s", 1.0), ("m", 60.0)],
            bare_zero_and_sign: false,
            max: Some(Duration::from_secs(3600)),
            hint: "units s and m",
        };
        assert_eq!(parse_with("1m30s", &SHORT), Ok(Duration::from_secs(90)));
        for bad in ["0", "+1s", "10ms", "2h", "61m"] {
            let e = parse_with(bad, &SHORT).unwrap_err();
            assert!(e.to_string().ends_with("units s and m"), "{bad}: {e}");
        }
    }
}

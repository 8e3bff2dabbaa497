//! Go-style durations (`90s`, `1h30m`, `500ms`) as used by `timeout`, `cache.ttl` and
//! `refreshInterval`. Pure parsing; the same grammar is enforced at admission by a schema pattern.

use std::time::Duration;

/// The schema pattern the API server applies to duration fields; [`parse`] accepts exactly
/// what it accepts (a sequence of number+unit, units `ms`, `s`, `m`, `h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {value:?}: {why}; write it like 90s, 10m or 1h30m (units ms, s, m, h)")]
pub struct DurationError {
    pub value: String,
    pub why: &'static str,
}

/// Parses a Go-style duration made of number+unit groups.
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        value: value.to_string(),
        why,
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total = 0f64;
    let mut rest = value;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("a number has no unit"))?;
        if num_len == 0 {
            return Err(err("a unit has no number before it"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| err("a number is malformed"))?;
        rest = &rest[num_len..];
        let (unit_secs, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(err("the unit is not one of ms, s, m, h"));
        };
        total += number * unit_secs;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(err("it is longer than ten years"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration in the same grammar, with whole seconds (for status messages).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h0m5s").unwrap(), Duration::from_secs(7205));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "10", "m", "10d", "1h-5m", "abc", "10 s"] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_secs(0)), "0s");
        assert_eq!(format(Duration::from_secs(61)), "1m1s");
    }
}

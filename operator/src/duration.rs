//! Go-style durations (`90s`, `1h30m`, `500ms`) as used by `timeout`, `cache.ttl` and
//! `refreshInterval`. Pure parsing; the same grammar is enforced at admission by a schema pattern.

use std::time::Duration;

use kiln_common::duration::{parse_with, Grammar};

/// The schema pattern the API server applies to duration fields; [`parse`] accepts exactly
/// what it accepts (a sequence of number+unit, units `ms`, `s`, `m`, `h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

pub use kiln_common::duration::DurationError;

/// The part of Go's duration syntax that [`DURATION_PATTERN`] admits, up to ten years.
const KUBE: Grammar = Grammar {
    units: &[("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)],
    bare_zero_and_sign: false,
    max: Some(Duration::from_secs(10 * 365 * 86400)),
    hint: "write it like 90s, 10m or 1h30m (units ms, s, m, h)",
};

/// Parses a Go-style duration made of number+unit groups, exactly as the schema pattern admits.
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    parse_with(value, &KUBE)
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

//! Validation of an `ImageBuild` spec beyond what admission already enforces (an object stored
//! before the CRD tightened, or a rule the schema cannot express). Pure: no client.

use std::time::Duration;

use crate::crd::ImageBuildSpec;
use crate::duration;

/// A spec that passed validation, with its parsed values.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    pub timeout: Option<Duration>,
    pub retries: i32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidSpec {
    #[error("spec.source must set exactly one of git, configMap, persistentVolumeClaim, url; it sets {0}")]
    SourceCount(usize),
    #[error("spec.destinations is empty: give at least one image reference to push to")]
    NoDestination,
    #[error("spec.destinations[{0}] is empty: give an image reference like registry/repo:tag")]
    EmptyDestination(usize),
    #[error("spec.{field}: {source}")]
    Duration {
        field: &'static str,
        source: duration::DurationError,
    },
    #[error("spec.timeout must be at least one second, not {0}")]
    TimeoutTooShort(String),
    #[error("spec.retries must be between 0 and 10, not {0}")]
    Retries(i32),
    #[error("spec.buildArgs has an invalid name {0:?}: names are non-empty and contain no '='")]
    BuildArgName(String),
}

/// Checks a spec and returns the parsed values the Pod builder needs.
pub fn validate(spec: &ImageBuildSpec) -> Result<ValidSpec, InvalidSpec> {
    let s = &spec.source;
    let count = [
        s.git.is_some(),
        s.config_map.is_some(),
        s.persistent_volume_claim.is_some(),
        s.url.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count != 1 {
        return Err(InvalidSpec::SourceCount(count));
    }
    if spec.destinations.is_empty() {
        return Err(InvalidSpec::NoDestination);
    }
    if let Some(i) = spec.destinations.iter().position(|d| d.trim().is_empty()) {
        return Err(InvalidSpec::EmptyDestination(i));
    }
    let timeout = match &spec.timeout {
        Some(t) => {
            let d = duration::parse(t).map_err(|source| InvalidSpec::Duration {
                field: "timeout",
                source,
            })?;
            if d < Duration::from_secs(1) {
                return Err(InvalidSpec::TimeoutTooShort(t.clone()));
            }
            Some(d)
        }
        None => None,
    };
    if let Some(ttl) = spec.cache.as_ref().and_then(|c| c.ttl.as_ref()) {
        duration::parse(ttl).map_err(|source| InvalidSpec::Duration {
            field: "cache.ttl",
            source,
        })?;
    }
    let retries = spec.retries.unwrap_or(0);
    if !(0..=10).contains(&retries) {
        return Err(InvalidSpec::Retries(retries));
    }
    if let Some(k) = spec
        .build_args
        .keys()
        .find(|k| k.is_empty() || k.contains('='))
    {
        return Err(InvalidSpec::BuildArgName(k.clone()));
    }
    Ok(ValidSpec { timeout, retries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BuildSource, CacheSpec, ConfigMapSource, GitSource};

    fn spec() -> ImageBuildSpec {
        ImageBuildSpec {
            source: BuildSource {
                git: Some(GitSource {
                    url: "https://example.com/app.git".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            destinations: vec!["reg.local/app:1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_minimal() {
        assert_eq!(
            validate(&spec()).unwrap(),
            ValidSpec {
                timeout: None,
                retries: 0
            }
        );
    }

    #[test]
    fn parses_timeout_and_retries() {
        let mut s = spec();
        s.timeout = Some("1h30m".into());
        s.retries = Some(3);
        let v = validate(&s).unwrap();
        assert_eq!(v.timeout, Some(Duration::from_secs(5400)));
        assert_eq!(v.retries, 3);
    }

    #[test]
    fn rejects_two_sources_and_none() {
        let mut s = spec();
        s.source.config_map = Some(ConfigMapSource { name: "ctx".into() });
        assert_eq!(validate(&s), Err(InvalidSpec::SourceCount(2)));
        s.source = BuildSource::default();
        assert_eq!(validate(&s), Err(InvalidSpec::SourceCount(0)));
    }

    #[test]
    fn rejects_no_destination() {
        let mut s = spec();
        s.destinations.clear();
        assert_eq!(validate(&s), Err(InvalidSpec::NoDestination));
        s.destinations = vec!["a".into(), " ".into()];
        assert_eq!(validate(&s), Err(InvalidSpec::EmptyDestination(1)));
    }

    #[test]
    fn rejects_bad_durations() {
        let mut s = spec();
        s.timeout = Some("ten minutes".into());
        let e = validate(&s).unwrap_err();
        assert!(
            e.to_string().starts_with("spec.timeout: invalid duration"),
            "{e}"
        );
        s.timeout = Some("10ms".into());
        assert!(matches!(validate(&s), Err(InvalidSpec::TimeoutTooShort(_))));
        s.timeout = None;
        s.cache = Some(CacheSpec {
            enabled: Some(true),
            ttl: Some("1w".into()),
            ..Default::default()
        });
        assert!(validate(&s)
            .unwrap_err()
            .to_string()
            .starts_with("spec.cache.ttl"));
    }

    #[test]
    fn rejects_bad_retries_and_args() {
        let mut s = spec();
        s.retries = Some(11);
        assert_eq!(validate(&s), Err(InvalidSpec::Retries(11)));
        s.retries = None;
        s.build_args.insert("A=B".into(), "x".into());
        assert!(matches!(validate(&s), Err(InvalidSpec::BuildArgName(_))));
    }
}

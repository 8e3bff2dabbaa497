//! Operator-wide settings that reconcilers read (default images, retry backoff). Plain data:
//! filled from flags by the binary and by tests directly.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Executor image used when an `ImageBuild` does not override it.
    pub executor_image: String,
    /// Warmer image used when a `CacheWarm` does not override it.
    pub warmer_image: String,
    /// Delay before the first retry of a failed attempt; doubled for each further retry.
    pub retry_backoff: Duration,
    /// Cap of the retry delay.
    pub max_retry_backoff: Duration,
    /// Refresh interval of a `CacheWarm` that does not set one.
    pub default_refresh_interval: Duration,
    /// Lines of executor output kept in `status.message` on failure.
    pub failure_lines: usize,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            executor_image: "ghcr.io/kiln-build/kiln-executor:latest".into(),
            warmer_image: "ghcr.io/kiln-build/kiln-warmer:latest".into(),
            retry_backoff: Duration::from_secs(10),
            max_retry_backoff: Duration::from_secs(300),
            default_refresh_interval: Duration::from_secs(24 * 3600),
            failure_lines: 20,
        }
    }
}

impl OperatorConfig {
    /// Delay before starting attempt `next_attempt` (2 = first retry).
    pub fn backoff(&self, next_attempt: i32) -> Duration {
        let exp = u32::try_from(next_attempt.saturating_sub(2))
            .unwrap_or(0)
            .min(20);
        self.retry_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_retry_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let c = OperatorConfig::default();
        assert_eq!(c.backoff(2), Duration::from_secs(10));
        assert_eq!(c.backoff(3), Duration::from_secs(20));
        assert_eq!(c.backoff(4), Duration::from_secs(40));
        assert_eq!(c.backoff(30), Duration::from_secs(300));
    }
}

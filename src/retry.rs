//! The one retry policy of every network client otaforge has (blob storage through the Azure
//! SDK, the Device Update REST client): which answers are worth another try, and how long to
//! wait before it.

use std::time::Duration;

/// How often and how patiently to retry a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry; it doubles each time.
    pub initial_delay: Duration,
    /// No single wait is longer than this (a longer `Retry-After` is cut to it).
    pub max_delay: Duration,
    /// Give up on a request after this long, retries included.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_total: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self { max_retries: 0, ..Self::default() }
    }

    /// Whether an HTTP status is worth another try: 408, 429 and 5xx but 501 and 505.
    pub fn retryable_status(status: u16) -> bool {
        matches!(status, 408 | 429) || (status >= 500 && !matches!(status, 501 | 505))
    }

    /// How long to wait before retry number `attempt` (1-based): the service's `Retry-After`
    /// when it sent one, else the exponential delay; never more than `max_delay`. None when no
    /// retry is left.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt == 0 || attempt > self.max_retries {
            return None;
        }
        let exp = self.initial_delay.saturating_mul(1u32 << (attempt - 1).min(16));
        Some(retry_after.unwrap_or(exp).min(self.max_delay))
    }
}

/// The `Retry-After` a response asks for: `x-ms-retry-after-ms`, `retry-after-ms`, or
/// `Retry-After` in seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) =
        get("x-ms-retry-after-ms").or_else(|| get("retry-after-ms")).and_then(|v| v.parse().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    get("retry-after").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_honour_retry_after_and_stop() {
        let p = RetryPolicy { max_retries: 3, ..RetryPolicy::default() };
        assert_eq!(p.delay(1, None), Some(Duration::from_millis(200)));
        assert_eq!(p.delay(3, None), Some(Duration::from_millis(800)));
        assert_eq!(p.delay(2, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        assert_eq!(p.delay(1, Some(Duration::from_secs(999))), Some(Duration::from_secs(30)));
        assert_eq!(p.delay(4, None), None);
        assert_eq!(RetryPolicy::none().delay(1, None), None);
        assert!(RetryPolicy::retryable_status(429) && RetryPolicy::retryable_status(503));
        assert!(!RetryPolicy::retryable_status(501) && !RetryPolicy::retryable_status(404));
    }
}

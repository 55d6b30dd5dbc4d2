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

/// The total deadline of one call of the Device Update and IoT Hub clients, retries included:
/// a service that accepts the connection and never answers fails the call after this long,
/// not after every try has waited out its own timeout.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(60);

/// What a call that ran out of its total deadline says: the host, and how long it had.
pub fn deadline_exceeded(host: &str, deadline: Duration) -> String {
    format!(
        "{host} did not answer within {} (the deadline of one call, retries included); check \
         that the endpoint is right and the service is up",
        humantime::format_duration(deadline)
    )
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self { max_retries: 0, ..Self::default() }
    }

    /// The time left of `max_total` for a call that started at `started`; none once it is
    /// spent.
    pub fn remaining(&self, started: std::time::Instant) -> Option<Duration> {
        self.max_total.checked_sub(started.elapsed()).filter(|d| !d.is_zero())
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

/// A callback told, in words, why a try failed and that it will be retried (a command line
/// prints it on stderr, so a slow failure is never silent).
#[derive(Clone)]
pub struct RetryNotice(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for RetryNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryNotice")
    }
}

/// Why a request did not reach the service, read from an error and its causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportCause {
    /// Nothing listens at the address.
    Refused,
    /// The host name does not resolve.
    Dns,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// No answer in time.
    Timeout,
    /// The connection was reset or closed mid-request.
    Reset,
    /// Something else.
    Other,
}

impl TransportCause {
    /// Reads the cause from `e` and every error behind it.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut text = String::new();
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Self::Refused,
                    std::io::ErrorKind::TimedOut => return Self::Timeout,
                    std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof => return Self::Reset,
                    _ => {}
                }
            }
            if let Some(r) = err.downcast_ref::<reqwest::Error>()
                && r.is_timeout()
            {
                return Self::Timeout;
            }
            text.push_str(&err.to_string().to_lowercase());
            text.push('\n');
            cur = err.source();
        }
        if text.contains("connection refused") {
            Self::Refused
        } else if text.contains("dns error") || text.contains("failed to lookup address") {
            Self::Dns
        } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake")
        {
            Self::Tls
        } else if text.contains("timed out") || text.contains("timeout") {
            Self::Timeout
        } else if text.contains("reset") || text.contains("closed") {
            Self::Reset
        } else {
            Self::Other
        }
    }

    /// Whether trying again soon cannot help: nothing listens, the name does not resolve, or
    /// TLS failed. Such errors are reported at once instead of after minutes of retries.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::Refused | Self::Dns | Self::Tls)
    }

    /// What to tell the user, naming the host.
    pub fn describe(self, host: &str) -> String {
        match self {
            Self::Refused => format!(
                "connection refused: nothing listens at {host}; check the endpoint and that the service runs"
            ),
            Self::Dns => format!(
                "the host name of {host} does not resolve; check the endpoint's spelling and DNS"
            ),
            Self::Tls => format!("the TLS handshake with {host} failed (certificate or protocol)"),
            Self::Timeout => format!("{host} did not answer in time"),
            Self::Reset => format!("{host} closed the connection mid-request"),
            Self::Other => format!("the request to {host} failed"),
        }
    }
}

/// `host:port` of a URL, for messages.
pub fn host_of(url: &url::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => url.to_string(),
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

//! Times and durations as users type them (`90d`, `30m`, `2027-01-31T00:00:00Z`), parsed once
//! with their range checked, so no later addition overflows and no formatting fails: every
//! command that takes a time or a duration goes through here.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Why a time or duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not RFC 3339.
    #[error("`{text}` is not an RFC 3339 time such as 2027-01-31T00:00:00Z ({reason})")]
    NotATime {
        /// The value as given.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// Before 1970 or after 9999.
    #[error("`{text}` is outside 1970-01-01..9999-12-31")]
    OutOfRange {
        /// The value as given.
        text: String,
    },
    /// Not a duration.
    #[error("`{text}` is not a duration such as 90s, 30m, 4h or 7d ({reason})")]
    NotADuration {
        /// The value as given.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// A duration longer than the option allows.
    #[error("`{text}` is longer than {max}, the most this option allows")]
    TooLong {
        /// The value as given.
        text: String,
        /// The limit, as a duration.
        max: String,
    },
    /// A duration or time that ends after 9999.
    #[error("`{text}` from now is past 9999-12-31; give a shorter duration")]
    PastYear9999 {
        /// The value as given.
        text: String,
    },
    /// The system clock is before 1970 or after 9999.
    #[error("the system clock is outside 1970..9999")]
    Clock,
}

/// Parses a duration (`90s`, `30m`, `4h`, `7d`, `1h 30m`) of at most `max`.
pub fn parse_duration(s: &str, max: Duration) -> Result<Duration, TimeError> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| TimeError::NotADuration { text: s.to_owned(), reason: e.to_string() })?;
    if d > max {
        return Err(TimeError::TooLong {
            text: s.to_owned(),
            max: humantime::format_duration(max).to_string(),
        });
    }
    Ok(d)
}

/// A duration from `now` (`90d`) or an RFC 3339 time.
pub fn parse_time_or_duration(s: &str, now: Timestamp) -> Result<Timestamp, TimeError> {
    if s.contains('T') || s.contains(':') {
        return Timestamp::parse(s);
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| TimeError::NotADuration { text: s.to_owned(), reason: e.to_string() })?;
    now.checked_add(d).ok_or_else(|| TimeError::PastYear9999 { text: s.to_owned() })
}

/// The last second an RFC 3339 time (four-digit year) can name: 9999-12-31T23:59:59Z.
const LAST_SECOND: u64 = 253_402_300_799;

/// A moment of release metadata (`created`, `expires`): whole seconds, UTC, between 1970 and the
/// end of year 9999, written as RFC 3339 (`2026-11-29T20:00:00Z`). A value outside that range
/// cannot be built, so formatting it never fails and adding to it never overflows unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// `t`, to the second; `None` before 1970 or after year 9999.
    pub fn new(t: SystemTime) -> Option<Self> {
        let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
        (secs <= LAST_SECOND).then_some(Self(secs))
    }

    /// `self + d`; `None` past year 9999.
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        self.0.checked_add(d.as_secs()).filter(|s| *s <= LAST_SECOND).map(Self)
    }

    /// Parses RFC 3339 in UTC (`2027-01-31T00:00:00Z`; fractions of a second are dropped).
    pub fn parse(s: &str) -> Result<Self, TimeError> {
        let t = humantime::parse_rfc3339_weak(s)
            .or_else(|_| humantime::parse_rfc3339(s))
            .map_err(|e| TimeError::NotATime { text: s.to_owned(), reason: e.to_string() })?;
        Self::new(t).ok_or_else(|| TimeError::OutOfRange { text: s.to_owned() })
    }

    /// Now, by the system clock.
    pub fn now() -> Result<Self, TimeError> {
        Self::new(SystemTime::now()).ok_or(TimeError::Clock)
    }

    /// The same moment as a `SystemTime`.
    pub fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_seconds(self.system_time()), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl crate::error::ErrorCode for TimeError {
    fn code(&self) -> String {
        "invalidValue".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_the_range_ends_at_9999() {
        let t = Timestamp::parse("2026-11-29T20:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-29T20:00:00Z");
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:59Z").unwrap().checked_add(Duration::from_secs(1)),
            None
        );
        assert!(matches!(parse_time_or_duration("8000y", t), Err(TimeError::PastYear9999 { .. })));
        assert!(matches!(
            parse_time_or_duration("10000000000000000000s", t),
            Err(TimeError::PastYear9999 { .. } | TimeError::NotADuration { .. })
        ));
        assert_eq!(parse_time_or_duration("1d", t).unwrap().to_string(), "2026-11-30T20:00:00Z");
        assert!(matches!(
            parse_duration("8d", Duration::from_secs(86_400)),
            Err(TimeError::TooLong { .. })
        ));
    }
}

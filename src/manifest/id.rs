//! Update identity: `provider/name/version`, as defined by the ADU manifest definitions schema
//! (`azure-deviceupdate-manifest-definitions-5.0.json#/definitions/updateId`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest value of one version part (ADU: "a number between 0 and 2147483647").
pub const VERSION_PART_MAX: u64 = 2_147_483_647;

/// Why an update id or one of its parts was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Provider or name is empty, too long or has a character outside `[a-zA-Z0-9.-]`.
    #[error("{what} '{value}' must be 1-64 characters of letters, digits, '.' and '-'")]
    BadPart {
        /// `provider` or `name`.
        what: &'static str,
        /// The offending text.
        value: String,
    },
    /// The version is not 2-4 dot-separated numbers each at most 2147483647.
    #[error("version '{value}' {reason}")]
    BadVersion {
        /// The offending text.
        value: String,
        /// What exactly is wrong.
        reason: String,
    },
    /// The text is not `provider/name/version`.
    #[error("'{value}' is not an update id of the form provider/name/version")]
    BadShape {
        /// The offending text.
        value: String,
    },
}

/// Checks an update provider or name (`^[a-zA-Z0-9.-]+$`, 1..64 characters).
pub fn check_id_part(what: &'static str, value: &str) -> Result<(), IdError> {
    let ok = (1..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok { Ok(()) } else { Err(IdError::BadPart { what, value: value.to_owned() }) }
}

/// An update version: two to four dot-separated numbers, each 0..=2147483647.
///
/// Keeps the text as written (it is part of the update's identity in the service) and compares
/// by numeric parts, so `1.10` sorts after `1.9`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    text: String,
    parts: Vec<u32>,
}

impl Version {
    /// The numeric parts, most significant first.
    pub fn parts(&self) -> &[u32] {
        &self.parts
    }

    /// The version exactly as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Version {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = |reason: &str| IdError::BadVersion { value: s.to_owned(), reason: reason.into() };
        let pieces: Vec<&str> = s.split('.').collect();
        if pieces.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(bad("must be dot-separated numbers such as 1.0 or 2024.11.3"));
        }
        if !(2..=4).contains(&pieces.len()) {
            return Err(bad(&format!("has {} parts; ADU accepts 2 to 4", pieces.len())));
        }
        let mut parts = Vec::with_capacity(pieces.len());
        for p in pieces {
            // Leading zeroes are allowed (the service drops them); only the value counts.
            let digits = p.trim_start_matches('0');
            let value = if digits.is_empty() {
                0
            } else if digits.len() > 10 {
                u64::MAX
            } else {
                digits.parse::<u64>().unwrap_or(u64::MAX)
            };
            if value > VERSION_PART_MAX {
                return Err(bad(&format!("has part {p} above the maximum {VERSION_PART_MAX}")));
            }
            parts.push(value as u32);
        }
        Ok(Self { text: s.to_owned(), parts })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Missing trailing parts count as zero: 1.0 == 1.0.0 in ordering terms.
        let n = self.parts.len().max(other.parts.len());
        let at = |v: &Version, i: usize| v.parts.get(i).copied().unwrap_or(0);
        (0..n)
            .map(|i| at(self, i).cmp(&at(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| self.text.cmp(&other.text))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The identity of an update: provider, name and version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct UpdateId {
    /// Who publishes the update, e.g. a company name.
    pub provider: String,
    /// The class of update, e.g. a device model.
    pub name: String,
    /// The version of this update.
    pub version: Version,
}

impl UpdateId {
    /// Builds an update id after checking every part.
    pub fn new(provider: &str, name: &str, version: &str) -> Result<Self, IdError> {
        check_id_part("provider", provider)?;
        check_id_part("name", name)?;
        Ok(Self { provider: provider.to_owned(), name: name.to_owned(), version: version.parse()? })
    }
}

impl<'de> Deserialize<'de> for UpdateId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            provider: String,
            name: String,
            version: String,
        }
        let raw = Raw::deserialize(d)?;
        UpdateId::new(&raw.provider, &raw.name, &raw.version).map_err(serde::de::Error::custom)
    }
}

impl FromStr for UpdateId {
    type Err = IdError;

    /// Parses `provider/name/version`.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut it = s.split('/');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(p), Some(n), Some(v), None) => Self::new(p, n, v),
            _ => Err(IdError::BadShape { value: s.to_owned() }),
        }
    }
}

impl fmt::Display for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.provider, self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_need_two_to_four_parts() {
        assert!("1".parse::<Version>().is_err());
        assert!("1.0".parse::<Version>().is_ok());
        assert!("1.2.3.4".parse::<Version>().is_ok());
        let err = "1.2.3.4.5".parse::<Version>().unwrap_err();
        assert!(err.to_string().contains("5 parts"), "{err}");
    }

    #[test]
    fn version_parts_are_bounded() {
        assert!("2147483647.0".parse::<Version>().is_ok());
        let err = "2147483648.0".parse::<Version>().unwrap_err();
        assert!(err.to_string().contains("above the maximum"), "{err}");
        assert!("99999999999999999999999.1".parse::<Version>().is_err());
        assert!("0001.02".parse::<Version>().is_ok());
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("1.10") > v("1.9"));
        assert!(v("2.0") > v("1.99.99"));
    }

    #[test]
    fn update_ids_parse_and_print() {
        let id: UpdateId = "contoso/toaster/1.2.3".parse().unwrap();
        assert_eq!(id.to_string(), "contoso/toaster/1.2.3");
        assert!("contoso/toaster".parse::<UpdateId>().is_err());
        assert!("con toso/toaster/1.0".parse::<UpdateId>().is_err());
    }
}

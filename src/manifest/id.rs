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
    /// Provider or name made only of dots: `.` and `..` collapse in a URL path, so such an update
    /// could be imported but never addressed again.
    #[error(
        "{what} '{value}' is only dots; it cannot be used in a URL path (add a letter or digit)"
    )]
    DotsOnly {
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
    let ok = (1..=crate::limits::ID_PART_CHARS).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !ok {
        return Err(IdError::BadPart { what, value: value.to_owned() });
    }
    if value.bytes().all(|b| b == b'.') {
        return Err(IdError::DotsOnly { what, value: value.to_owned() });
    }
    Ok(())
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

/// One thing wrong with a version text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionProblem {
    /// Not dot-separated numbers.
    Format,
    /// Not 2 to 4 parts (the count found).
    Parts(usize),
    /// A part above [`VERSION_PART_MAX`] (the part as written).
    Range(String),
}

impl VersionProblem {
    /// What is wrong, as a sentence fragment after the version.
    pub fn reason(&self) -> String {
        match self {
            VersionProblem::Format => {
                "must be dot-separated numbers such as 1.0 or 2024.11.3".into()
            }
            VersionProblem::Parts(n) => format!("has {n} parts; ADU accepts 2 to 4"),
            VersionProblem::Range(p) => {
                format!("has part {p} above the maximum {VERSION_PART_MAX}")
            }
        }
    }
}

impl Version {
    /// Every problem of a version text (empty when it is a valid version). The one
    /// implementation of ADU's version rule: parsing and the manifest validator both use it.
    pub fn problems(s: &str) -> Vec<VersionProblem> {
        let pieces: Vec<&str> = s.split('.').collect();
        if pieces.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return vec![VersionProblem::Format];
        }
        let mut out = Vec::new();
        if !(2..=4).contains(&pieces.len()) {
            out.push(VersionProblem::Parts(pieces.len()));
        }
        out.extend(
            pieces
                .iter()
                .filter(|p| part_value(p) > VERSION_PART_MAX)
                .map(|p| VersionProblem::Range((*p).to_owned())),
        );
        out
    }
}

/// A part's value; leading zeroes are allowed (the service drops them), and anything too long
/// to parse counts as too large.
fn part_value(p: &str) -> u64 {
    let digits = p.trim_start_matches('0');
    if digits.is_empty() {
        0
    } else if digits.len() > 10 {
        u64::MAX
    } else {
        digits.parse::<u64>().unwrap_or(u64::MAX)
    }
}

impl FromStr for Version {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if let Some(p) = Self::problems(s).into_iter().next() {
            return Err(IdError::BadVersion { value: s.to_owned(), reason: p.reason() });
        }
        // Every part is at most VERSION_PART_MAX, which fits u32.
        let parts =
            s.split('.').map(|p| u32::try_from(part_value(p)).unwrap_or(u32::MAX)).collect();
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
///
/// The fields are private: an `UpdateId` exists only after every part was checked, whether it
/// was built with [`UpdateId::new`], parsed from `provider/name/version` or read from JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct UpdateId {
    provider: String,
    name: String,
    version: Version,
}

impl UpdateId {
    /// Builds an update id after checking every part.
    pub fn new(provider: &str, name: &str, version: &str) -> Result<Self, IdError> {
        check_id_part("provider", provider)?;
        check_id_part("name", name)?;
        Ok(Self { provider: provider.to_owned(), name: name.to_owned(), version: version.parse()? })
    }

    /// Who publishes the update, e.g. a company name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The class of update, e.g. a device model.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version of this update.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// The same provider and name with another version.
    pub fn with_version(&self, version: Version) -> Self {
        Self { provider: self.provider.clone(), name: self.name.clone(), version }
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

//! File names as an update names its payload and related files.
//!
//! A file name crosses a trust boundary twice: the manifest comes from whoever built it, and
//! the import request from whoever sent it; both are then joined to a directory (the
//! manifest's folder, the service's store). [`FileName`] cannot hold anything that would leave
//! that directory: no path separator, no `.` or `..`, no NUL or other control character.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::FILE_NAME_BYTES;

/// Why a file name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file name '{}' {reason}", .value.escape_debug())]
pub struct FileNameError {
    /// The refused text.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A plain file name: 1..255 bytes, no `/`, `\`, NUL or control character, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct FileName(String);

impl FileName {
    /// Checks `value` and wraps it.
    pub fn new(value: &str) -> Result<Self, FileNameError> {
        let bad = |reason| Err(FileNameError { value: value.to_owned(), reason });
        if value.is_empty() {
            return bad("is empty");
        }
        if value.len() > FILE_NAME_BYTES {
            return bad("is longer than 255 bytes");
        }
        if value.contains(['/', '\\']) {
            return bad("contains a path separator; ADU file names are plain names");
        }
        if value == "." || value == ".." {
            return bad("is a directory reference, not a file name");
        }
        if value.chars().any(char::is_control) {
            return bad("contains a NUL or control character");
        }
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for FileName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for FileName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl std::ops::Deref for FileName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for FileName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for FileName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::str::FromStr for FileName {
    type Err = FileNameError;
    fn from_str(s: &str) -> Result<Self, FileNameError> {
        Self::new(s)
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FileName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "/etc/passwd", "a\0b", "x\ny"] {
            assert!(FileName::new(bad).is_err(), "{bad:?} was accepted");
        }
        for ok in ["firmware.bin", "..hidden", "a..b", "v1.2.3.swu", "ü.bin"] {
            assert_eq!(FileName::new(ok).unwrap().as_str(), ok);
        }
        assert!(serde_json::from_str::<FileName>("\"../x\"").is_err());
        assert!(FileName::new(&"x".repeat(256)).is_err());
    }
}

//! Update ids, versions, handler ids and compatibility sets.

use std::collections::HashMap;

use serde_json::Value;

use crate::finding::{Findings, JsonPath};
use crate::manifest::Version;
use crate::manifest::id::{UpdateId, VERSION_PART_MAX, VersionProblem};

/// `^\S+/\S+:\d{1,5}$` with length 5..32, the pattern of step handlers and download handlers.
pub fn is_handler_id(s: &str) -> bool {
    let n = s.chars().count();
    if !(5..=32).contains(&n) || s.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((prefix, digits)) = s.rsplit_once(':') else { return false };
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // The regex needs a '/' with at least one character on each side, and both `\S+` may
    // themselves contain '/' or ':'.
    let chars: Vec<char> = prefix.chars().collect();
    chars.len() >= 3 && chars[1..chars.len() - 1].contains(&'/')
}

pub(super) fn check_handler_id(f: &mut Findings, v: &Value, path: &JsonPath) -> Option<String> {
    let s = f.expect_string(v, path)?;
    if !is_handler_id(s) {
        f.error_hint(
            "handler-id",
            path,
            format!("'{s}' is not a handler id"),
            "use vendor/name:version with 5-32 characters and no spaces, e.g. microsoft/swupdate:2",
        );
    }
    Some(s.to_owned())
}

/// Checks an `updateId` object; returns it when it is entirely valid.
pub(super) fn check_update_id(f: &mut Findings, v: &Value, path: &JsonPath) -> Option<UpdateId> {
    let obj = f.expect_object(v, path)?;
    f.unknown_keys(obj, path, &["provider", "name", "version"], "an updateId");
    let before = f.error_count();
    for key in ["provider", "name"] {
        match obj.get(key) {
            None => {
                f.error("required", &path.key(key), format!("required property '{key}' is missing"))
            }
            Some(v) => {
                if let Some(s) = f.text(v, &path.key(key), 1, 64)
                    && !s.is_empty()
                    && !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                {
                    f.error_hint(
                        "id-characters",
                        &path.key(key),
                        format!("'{s}' has characters other than letters, digits, '.' and '-'"),
                        "ADU update ids allow only [a-zA-Z0-9.-]",
                    );
                } else if let Some(s) = v.as_str()
                    && !s.is_empty()
                    && s.bytes().all(|b| b == b'.')
                {
                    f.error_hint(
                        "id-dots-only",
                        &path.key(key),
                        format!("'{s}' is only dots; '.' and '..' collapse in a URL path"),
                        "such an update could be imported but never shown or deleted again; add a letter or digit",
                    );
                }
            }
        }
    }
    match obj.get("version") {
        None => f.error("required", &path.key("version"), "required property 'version' is missing"),
        Some(v) => {
            if let Some(s) = f.expect_string(v, &path.key("version")) {
                check_version(f, s, &path.key("version"));
            }
        }
    }
    if f.error_count() > before {
        return None;
    }
    serde_json::from_value(v.clone()).ok()
}

fn check_version(f: &mut Findings, s: &str, path: &JsonPath) {
    for p in Version::problems(s) {
        match p {
            VersionProblem::Format | VersionProblem::Parts(0 | 1) => f.error_hint(
                "version-format",
                path,
                format!("'{s}' is not a dot-separated numeric version"),
                "use two to four numbers separated by dots, e.g. 1.0 or 2024.11.3",
            ),
            VersionProblem::Parts(n) => f.error_hint(
                "version-parts",
                path,
                format!("'{s}' has {n} parts; ADU accepts 2 to 4"),
                "drop or merge parts, e.g. 1.2.3.4",
            ),
            VersionProblem::Range(part) => f.error(
                "version-range",
                path,
                format!("part {part} of '{s}' is above the maximum {VERSION_PART_MAX}"),
            ),
        }
    }
}

pub(super) fn check_compatibility(f: &mut Findings, v: &Value, path: &JsonPath) {
    let Some(items) = f.expect_array(v, path) else { return };
    f.count(items.len(), path, "compatibility entries", 1, 10);
    let mut seen: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let Some(obj) = f.expect_object(item, &p) else { continue };
        f.count(obj.len(), &p, "properties", 1, 5);
        for (k, val) in obj {
            let n = k.chars().count();
            if n == 0 || n > 32 {
                f.error(
                    "length",
                    &p.key(k),
                    format!("property name '{k}' must be 1-32 characters"),
                );
            }
            f.text(val, &p.key(k), 1, 64);
        }
        let mut key: Vec<(String, String)> =
            obj.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        key.sort();
        if let Some(first) = seen.insert(key, i) {
            f.warning(
                "compatibility-duplicate",
                &p,
                format!("same properties as compatibility[{first}]"),
                "remove the duplicate entry",
            );
        }
    }
}

//! Problems found in a document, each located by a JSON path and paired with a hint.
//!
//! Validators collect **every** problem instead of stopping at the first, so a user fixes a
//! manifest in one round trip rather than one error at a time.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

/// A location inside a JSON document, printed as `$.a.b[0]["odd key"]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl JsonPath {
    /// The document root, `$`.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by an object key.
    pub fn key(&self, key: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Key(key.to_owned()));
        Self(v)
    }

    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Index(i));
        Self(v)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for seg in &self.0 {
            match seg {
                Segment::Index(i) => write!(f, "[{i}]")?,
                Segment::Key(k)
                    if !k.is_empty()
                        && !k.starts_with(|c: char| c.is_ascii_digit())
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') =>
                {
                    write!(f, ".{k}")?
                }
                Segment::Key(k) => write!(f, "[{}]", serde_json::Value::String(k.clone()))?,
            }
        }
        Ok(())
    }
}

impl Serialize for JsonPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Likely a mistake, but the service and agent accept it; does not fail a check.
    Warning,
    /// The service or the agent will refuse or mishandle the document; fails a check.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Whether this fails the check.
    pub severity: Severity,
    /// Stable identifier of the rule that was broken, e.g. `version-parts`.
    pub rule: &'static str,
    /// Where in the document.
    pub path: JsonPath,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something more useful to say than the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {} [{}]", self.severity, self.path, self.message, self.rule)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// An ordered collection of findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Findings(Vec<Finding>);

impl Findings {
    /// No findings yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an error without a hint.
    pub fn error(&mut self, rule: &'static str, path: &JsonPath, message: impl Into<String>) {
        self.push(Severity::Error, rule, path, message.into(), None);
    }

    /// Records an error with a hint on how to fix it.
    pub fn error_hint(
        &mut self,
        rule: &'static str,
        path: &JsonPath,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Error, rule, path, message.into(), Some(hint.into()));
    }

    /// Records a warning with a hint.
    pub fn warning(
        &mut self,
        rule: &'static str,
        path: &JsonPath,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Warning, rule, path, message.into(), Some(hint.into()));
    }

    fn push(
        &mut self,
        severity: Severity,
        rule: &'static str,
        path: &JsonPath,
        message: String,
        hint: Option<String>,
    ) {
        self.0.push(Finding { severity, rule, path: path.clone(), message, hint });
    }

    /// True when at least one finding is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|f| f.severity == Severity::Error)
    }

    /// Number of errors (warnings not counted).
    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|f| f.severity == Severity::Error).count()
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of findings.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The findings in the order they were recorded.
    pub fn iter(&self) -> std::slice::Iter<'_, Finding> {
        self.0.iter()
    }

    /// Keeps only the findings `keep` says yes to.
    pub fn retain(&mut self, keep: impl FnMut(&Finding) -> bool) {
        self.0.retain(keep);
    }

    /// Moves all findings of `other` to the end of this collection.
    pub fn extend(&mut self, other: Findings) {
        self.0.extend(other.0);
    }
}

impl IntoIterator for Findings {
    type Item = Finding;
    type IntoIter = std::vec::IntoIter<Finding>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Findings {
    type Item = &'a Finding;
    type IntoIter = std::slice::Iter<'a, Finding>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Every object key that appears twice in the JSON text `bytes`, as a `duplicate-key` error at its
/// path. serde_json keeps the last value of a repeated key and other parsers the first, so a
/// document with one could mean one thing to otaforge and another to the service or the device.
/// Text that is not JSON gives no findings here (the parser reports it).
pub fn duplicate_keys(bytes: &[u8]) -> Findings {
    let mut found = Findings::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = serde::de::DeserializeSeed::deserialize(
        DuplicateWalk { path: JsonPath::root(), found: &mut found },
        &mut de,
    );
    found
}

struct DuplicateWalk<'a> {
    path: JsonPath,
    found: &'a mut Findings,
}

impl<'de> serde::de::DeserializeSeed<'de> for DuplicateWalk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DuplicateWalk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = self.path.key(&key);
            if !seen.insert(key.clone()) {
                self.found.error_hint(
                    "duplicate-key",
                    &path,
                    format!("'{key}' appears more than once in this object"),
                    "keep one: parsers disagree on which value a repeated key has",
                );
            }
            map.next_value_seed(DuplicateWalk { path, found: &mut *self.found })?;
        }
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(DuplicateWalk { path: self.path.index(i), found: &mut *self.found })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// What kind of JSON value `v` is, as a message names it ("a string", "an array", ...).
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks shared by the validators that walk raw JSON: each records a finding when the value is
/// not what the document format wants, and hands back the typed view when it is.
impl Findings {
    /// `v` as a string, or a `type` error.
    pub fn expect_string<'a>(&mut self, v: &'a Value, path: &JsonPath) -> Option<&'a str> {
        let s = v.as_str();
        if s.is_none() {
            self.error("type", path, format!("must be a string, not {}", json_kind(v)));
        }
        s
    }

    /// `v` as an object, or a `type` error.
    pub fn expect_object<'a>(
        &mut self,
        v: &'a Value,
        path: &JsonPath,
    ) -> Option<&'a Map<String, Value>> {
        let o = v.as_object();
        if o.is_none() {
            self.error("type", path, format!("must be an object, not {}", json_kind(v)));
        }
        o
    }

    /// `v` as an array, or a `type` error.
    pub fn expect_array<'a>(&mut self, v: &'a Value, path: &JsonPath) -> Option<&'a Vec<Value>> {
        let a = v.as_array();
        if a.is_none() {
            self.error("type", path, format!("must be an array, not {}", json_kind(v)));
        }
        a
    }

    /// A string of `min..=max` characters (JSON Schema counts characters, not bytes); the string
    /// is returned even when its length is wrong, so later rules can still look at it.
    pub fn text<'a>(
        &mut self,
        v: &'a Value,
        path: &JsonPath,
        min: usize,
        max: usize,
    ) -> Option<&'a str> {
        let s = self.expect_string(v, path)?;
        let n = s.chars().count();
        if n < min {
            let message = if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters")
            };
            self.error("length", path, message);
        } else if n > max {
            self.error(
                "length",
                path,
                format!("is {n} characters long; at most {max} are allowed"),
            );
        }
        Some(s)
    }

    /// A count of `what` between `min` and `max`.
    pub fn count(&mut self, len: usize, path: &JsonPath, what: &str, min: usize, max: usize) {
        if len < min {
            self.error("count", path, format!("needs at least {min} {what}, has {len}"));
        } else if len > max {
            self.error_hint(
                "count",
                path,
                format!("has {len} {what}; at most {max} are allowed"),
                format!("ADU accepts at most {max} {what} here"),
            );
        }
    }

    /// An `additional-property` error for every key of `obj` not in `allowed`.
    pub fn unknown_keys(
        &mut self,
        obj: &Map<String, Value>,
        path: &JsonPath,
        allowed: &[&str],
        what: &str,
    ) {
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                self.error_hint(
                    "additional-property",
                    &path.key(key),
                    format!("'{key}' is not allowed in {what}"),
                    format!("allowed: {}", allowed.join(", ")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_found_at_every_depth() {
        let doc = br#"{"a":1,"b":{"x":[{"k":1,"k":2}],"x":0},"a":[true,null,"s",1.5,-3]}"#;
        let found: Vec<String> = duplicate_keys(doc).iter().map(|f| f.path.to_string()).collect();
        assert_eq!(found, ["$.b.x[0].k", "$.b.x", "$.a"]);
        assert!(duplicate_keys(br#"{"a":{"a":{"a":1}}}"#).is_empty());
        assert!(duplicate_keys(b"{not json").is_empty());
    }

    #[test]
    fn paths_print_like_jsonpath() {
        let p = JsonPath::root().key("files").index(2).key("hashes").key("sha256");
        assert_eq!(p.to_string(), "$.files[2].hashes.sha256");
        let q = JsonPath::root().key("properties").key("microsoft.sourceFileHash");
        assert_eq!(q.to_string(), r#"$.properties["microsoft.sourceFileHash"]"#);
    }
}

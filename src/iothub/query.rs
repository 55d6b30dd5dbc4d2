//! The part of IoT Hub's query language otaforge evaluates (serve answers it on
//! `POST /devices/query`):
//! `SELECT * FROM devices [WHERE cond [AND cond]...]`, where a condition is `path = value` or
//! `path != value`, `path` is `deviceId` or a dotted path into the twin (`tags.ADUGroup`,
//! `properties.reported.deviceUpdate.agent.state`), and `value` is a single-quoted string, a
//! number, `true`, `false` or `null`. Anything else is refused with the position it stopped at,
//! never silently matched.

use serde_json::Value;

use crate::iothub::Twin;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    path: Vec<String>,
    equal: bool,
    value: Value,
}

impl Query {
    /// Parses the supported subset.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        let prefix = "select * from devices";
        if !lower.starts_with(prefix) {
            return Err(format!(
                "only `SELECT * FROM devices [WHERE ...]` is supported, not `{t}`"
            ));
        }
        let rest = t[prefix.len()..].trim();
        if rest.is_empty() {
            return Ok(Self { conditions: Vec::new() });
        }
        let Some(clause) = rest.strip_prefix("WHERE ").or_else(|| rest.strip_prefix("where "))
        else {
            return Err(format!("expected WHERE at `{rest}`"));
        };
        let mut conditions = Vec::new();
        for part in split_and(clause) {
            conditions.push(Condition::parse(part.trim())?);
        }
        Ok(Self { conditions })
    }

    /// Whether a twin matches every condition.
    pub fn matches(&self, twin: &Twin) -> bool {
        let doc = serde_json::to_value(twin).unwrap_or(Value::Null);
        self.conditions.iter().all(|c| {
            let found = c.path.iter().try_fold(&doc, |v, k| v.get(k));
            let same =
                found.is_some_and(|v| *v == c.value) || (found.is_none() && c.value.is_null());
            same == c.equal
        })
    }
}

/// Splits on ` AND ` outside quotes.
fn split_and(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted && s[i..].to_ascii_uppercase().starts_with(" AND ") {
            out.push(&s[start..i]);
            i += 5;
            start = i;
            continue;
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

impl Condition {
    fn parse(s: &str) -> Result<Self, String> {
        let (lhs, rhs, equal) = if let Some((l, r)) = s.split_once("!=") {
            (l, r, false)
        } else if let Some((l, r)) = s.split_once('=') {
            (l, r, true)
        } else {
            return Err(format!("expected `path = value` at `{s}`"));
        };
        let path: Vec<String> = lhs.trim().split('.').map(str::to_owned).collect();
        let path_ok = path.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        });
        if !path_ok {
            return Err(format!("`{}` is not a property path", lhs.trim()));
        }
        let rhs = rhs.trim();
        let value = if let Some(inner) = rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            Value::String(inner.to_owned())
        } else {
            match rhs {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                n => n.parse::<serde_json::Number>().map(Value::Number).map_err(|_| {
                    format!("`{n}` is not a quoted string, number, true, false or null")
                })?,
            }
        };
        Ok(Self { path, equal, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_match_tags_ids_and_reported_properties() {
        let twin: Twin = serde_json::from_value(serde_json::json!({
            "deviceId": "d1", "tags": {"ADUGroup": "prod", "floor": 3},
            "properties": {"desired": {}, "reported": {"deviceUpdate": {"agent": {"state": 0}}}},
        }))
        .unwrap();
        let q = |s: &str| Query::parse(s).unwrap().matches(&twin);
        assert!(q("SELECT * FROM devices"));
        assert!(q("SELECT * FROM devices WHERE tags.ADUGroup = 'prod'"));
        assert!(!q("SELECT * FROM devices WHERE tags.ADUGroup = 'dev'"));
        assert!(q("select * from devices where tags.ADUGroup = 'prod' and tags.floor = 3"));
        assert!(q("SELECT * FROM devices WHERE properties.reported.deviceUpdate.agent.state = 0"));
        assert!(q("SELECT * FROM devices WHERE deviceId = 'd1' AND tags.missing = null"));
        assert!(q("SELECT * FROM devices WHERE tags.ADUGroup != 'dev'"));
        assert!(!q("SELECT * FROM devices WHERE tags.ADUGroup = 'a AND b'"));
        for bad in [
            "SELECT deviceId FROM devices",
            "SELECT * FROM devices WHERE",
            "SELECT * FROM devices WHERE tags.x > 1",
            "SELECT * FROM devices WHERE tags.x = bare",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
    }
}

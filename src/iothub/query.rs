//! The IoT Hub twin queries otaforge evaluates (serve answers them on `POST /devices/query`):
//! `SELECT * FROM devices [WHERE condition]`, the condition in the full twin-query condition
//! language of target conditions (`iothub::condition`: paths with `[[ ]]`, comparisons,
//! `AND`/`OR`/`NOT`, `IN`/`NIN`, `IS_DEFINED`, `STARTSWITH`, …, strictly typed, undefined never
//! true); `SELECT * FROM devices.modules …` reads module twins. Projections other than `*` and
//! `GROUP BY` are refused with the reason, never silently answered.

use serde_json::Value;

use super::condition::Expr;
use crate::iothub::Twin;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    condition: Option<Expr>,
    modules: bool,
}

impl Query {
    /// Parses a query; errors name the position in the query text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let lead = text.len() - text.trim_start().len();
        let (prefix, modules) = if lower.trim_start().starts_with("select * from devices.modules") {
            ("select * from devices.modules", true)
        } else {
            ("select * from devices", false)
        };
        let Some(after) = lower.trim_start().strip_prefix(prefix) else {
            return Err(format!(
                "only `SELECT * FROM devices[.modules] [WHERE condition]` is answered here, not `{}`",
                text.trim()
            ));
        };
        let at = lead + prefix.len();
        if after.trim().is_empty() {
            return Ok(Self { condition: None, modules });
        }
        let rest_start = at + (after.len() - after.trim_start().len());
        let rest = &lower[rest_start..];
        let Some(cond) = rest.strip_prefix("where").filter(|r| r.starts_with(char::is_whitespace))
        else {
            return Err(format!(
                "position {}: expected WHERE after `{}`",
                text[..rest_start].chars().count() + 1,
                text[lead..at].trim()
            ));
        };
        let cond_start = rest_start + ("where".len()) + (cond.len() - cond.trim_start().len());
        let offset = text[..cond_start].chars().count();
        Expr::parse(&text[cond_start..])
            .map(|e| Self { condition: Some(e), modules })
            .map_err(|e| format!("position {}: {}", e.position + offset, e.message))
    }

    /// Whether it reads module twins (`FROM devices.modules`).
    pub fn modules(&self) -> bool {
        self.modules
    }

    /// Whether a twin matches.
    pub fn matches(&self, twin: &Twin) -> bool {
        match &self.condition {
            None => true,
            Some(e) => e.matches(&serde_json::to_value(twin).unwrap_or(Value::Null)),
        }
    }
}

/// The condition of a metric query `SELECT deviceId FROM devices[.modules] WHERE condition`,
/// and whether it reads module twins; errors name the position in the query.
pub fn metric_condition(query: &str) -> Result<(Expr, bool), String> {
    let lower = query.to_ascii_lowercase();
    let (at, modules) = if let Some(i) = lower.find(" from devices.modules where ") {
        (i + " from devices.modules where ".len(), true)
    } else if let Some(i) = lower.find(" from devices where ") {
        (i + " from devices where ".len(), false)
    } else {
        return Err(
            "a metric query is SELECT deviceId FROM devices[.modules] WHERE condition".into()
        );
    };
    if !lower.trim_start().starts_with("select ") {
        return Err("a metric query starts with SELECT".into());
    }
    let offset = query[..at].chars().count();
    Expr::parse(&query[at..])
        .map(|e| (e, modules))
        .map_err(|e| format!("position {}: {}", e.position + offset, e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_match_tags_ids_and_reported_properties() {
        let twin: Twin = serde_json::from_value(serde_json::json!({
            "deviceId": "d1", "tags": {"ADUGroup": "prod", "floor": 3},
            "properties": {"desired": {}, "reported": {"deviceUpdate": {"agent": {"state": 0}}}},
            "capabilities": {"iotEdge": true},
        }))
        .unwrap();
        let q = |s: &str| Query::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).matches(&twin);
        assert!(q("SELECT * FROM devices"));
        assert!(q("SELECT * FROM devices WHERE tags.ADUGroup = 'prod'"));
        assert!(!q("SELECT * FROM devices WHERE tags.ADUGroup = 'dev'"));
        assert!(q("select * from devices where tags.ADUGroup = 'prod' and tags.floor = 3"));
        assert!(q("SELECT * FROM devices WHERE properties.reported.deviceUpdate.agent.state = 0"));
        assert!(q("SELECT * FROM devices WHERE deviceId = 'd1' AND NOT IS_DEFINED(tags.missing)"));
        assert!(q("SELECT * FROM devices WHERE tags.ADUGroup != 'dev'"));
        assert!(!q("SELECT * FROM devices WHERE tags.ADUGroup = 'a AND b'"));
        assert!(q("SELECT * FROM devices WHERE tags.floor > 1 AND capabilities.iotEdge = true"));
        assert!(!q("SELECT * FROM devices WHERE tags.missing != 'x'"), "undefined is never true");
        for bad in [
            "SELECT deviceId FROM devices",
            "SELECT * FROM devices WHERE",
            "SELECT * FROM devices WHERE tags.x = ",
            "SELECT * FROM devices.modules WHERE",
            "SELECT * FROM devices tags.x = 1",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
        let (c, modules) =
            metric_condition("SELECT deviceId FROM devices WHERE tags.ADUGroup = 'prod'").unwrap();
        assert!(!modules && c.matches(&serde_json::to_value(&twin).unwrap()));
        let (_, modules) =
            metric_condition("SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent'")
                .unwrap();
        assert!(modules);
        let e = metric_condition("SELECT deviceId FROM devices WHERE tags.x = ").unwrap_err();
        assert!(e.starts_with("position 45:"), "{e}");
        let e = Query::parse("SELECT * FROM devices WHERE tags.x = 'a").unwrap_err();
        assert!(e.starts_with("position 38:"), "{e}");
    }
}

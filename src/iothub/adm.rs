//! Automatic device management (ADM): IoT Hub configurations whose `content.deviceContent`
//! sets device twins' desired properties, and which of them sets what on one twin (edge.md
//! §3; adu-coverage notes §6). The rule, one function ([`apply`]) for serve's pass and anyone
//! who wants to know in advance:
//!
//! - `deviceContent` maps twin paths (`properties.desired.a.b`) to values; the value is put at
//!   that place whole, and `null` removes the property there.
//! - A configuration targets a device twin (any device, IoT Edge or not) its target condition
//!   is true for (`*` every device, an empty condition none).
//! - Conflicts are per path: of the configurations that target a twin and set the same path,
//!   the one of highest priority wins; on equal priority the most recently created; on equal
//!   creation time the smaller id ([`super::config::precedence`], the rule Edge
//!   deployments follow too). A configuration that wins at least one path is `Applied` on the
//!   twin (the twin's `configurations.[[id]].status`, which `appliedCount` counts), one that
//!   targets it and wins none is `Targeted`.
//! - When a configuration no longer targets a twin (retargeted, deleted), the paths it set are
//!   removed and the next configuration in line for each path sets it; paths no configuration
//!   sets any more are removed from the desired properties. Only paths a configuration set are
//!   ever removed: what a user set directly elsewhere stays (serve's reading of "the settings
//!   from the configuration are removed"; IoT Hub does not say more).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::config::{Status, precedence};
use crate::iothub::condition::{ConditionError, Target};

/// The prefix every `deviceContent` path has.
pub const DESIRED_PREFIX: &str = "properties.desired.";

/// One ADM configuration, as far as applying it goes.
#[derive(Debug, Clone)]
pub struct DeviceConfiguration {
    /// Its id.
    pub id: String,
    /// Its target condition.
    pub target: Target,
    /// Higher wins.
    pub priority: i64,
    /// When it was created (RFC 3339 UTC, compared as text).
    pub created: String,
    /// Path (below `properties.desired`, split at dots) → value (`null`: remove).
    pub content: Vec<(Vec<String>, Value)>,
}

/// Why a configuration's device content cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmError {
    /// A path does not start with `properties.desired.` or has an empty part.
    #[error(
        "content.deviceContent path `{0}` must be `properties.desired.NAME[.NAME…]` (no empty part)"
    )]
    Path(String),
    /// `deviceContent` is not an object.
    #[error("content.deviceContent must be an object of twin paths")]
    NotObject,
    /// The target condition does not parse.
    #[error("targetCondition: {0}")]
    Condition(#[from] ConditionError),
}

/// The parts of a `deviceContent` path below `properties.desired`.
pub fn path(p: &str) -> Result<Vec<String>, AdmError> {
    let rest = p.strip_prefix(DESIRED_PREFIX).ok_or_else(|| AdmError::Path(p.to_owned()))?;
    let parts: Vec<String> = rest.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(AdmError::Path(p.to_owned()));
    }
    Ok(parts)
}

impl DeviceConfiguration {
    /// The ADM configuration of an IoT Hub configuration; `Ok(None)` for one with no
    /// `deviceContent` (an Edge deployment).
    pub fn from_configuration(c: &super::config::Configuration) -> Result<Option<Self>, AdmError> {
        let Some(dc) = c.content.get("deviceContent") else { return Ok(None) };
        let dc = dc.as_object().ok_or(AdmError::NotObject)?;
        let content = dc
            .iter()
            .map(|(k, v)| Ok((path(k)?, v.clone())))
            .collect::<Result<Vec<_>, AdmError>>()?;
        Ok(Some(Self {
            id: c.id.clone(),
            target: Target::parse(&c.target_condition)?,
            priority: c.priority,
            created: c.created_time_utc.clone().unwrap_or_default(),
            content,
        }))
    }
}

/// What the configurations set on one twin.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// Path (joined with dots, below `properties.desired`) → the winning value.
    pub paths: BTreeMap<String, Value>,
    /// Each configuration that targets the twin → `Applied` or `Targeted`.
    pub statuses: BTreeMap<String, String>,
}

/// What `configs` set on a twin (its JSON, as target conditions read it).
pub fn apply(configs: &[DeviceConfiguration], twin: &Value) -> Applied {
    let mut targeting: Vec<&DeviceConfiguration> =
        configs.iter().filter(|c| c.target.matches(twin)).collect();
    targeting.sort_by(|a, b| {
        precedence((a.priority, &a.created, &a.id), (b.priority, &b.created, &b.id))
    });
    let mut out = Applied::default();
    for c in targeting {
        let mut won = false;
        for (p, v) in &c.content {
            let key = p.join(".");
            if let std::collections::btree_map::Entry::Vacant(e) = out.paths.entry(key) {
                e.insert(v.clone());
                won = true;
            }
        }
        let status = if won { Status::Applied } else { Status::Targeted };
        out.statuses.insert(c.id.clone(), status.as_str().to_owned());
    }
    out
}

/// Puts `value` at `path` of `desired` (creating objects on the way; a non-object on the way
/// is replaced), or removes what is there (`None` or `null`). Returns whether anything changed.
pub fn write(desired: &mut Map<String, Value>, path: &[String], value: Option<&Value>) -> bool {
    let Some((last, ancestors)) = path.split_last() else { return false };
    let value = value.filter(|v| !v.is_null());
    let mut at = desired;
    for p in ancestors {
        if value.is_none() && !at.get(p).is_some_and(Value::is_object) {
            return false;
        }
        let entry = at.entry(p.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Some(next) = entry.as_object_mut() else { return false };
        at = next;
    }
    match value {
        Some(v) if at.get(last) == Some(v) => false,
        Some(v) => {
            at.insert(last.clone(), v.clone());
            true
        }
        None => at.remove(last).is_some(),
    }
}

/// Changes `desired` from what `before` set to what `now` sets: paths no longer set are
/// removed, the others written. Returns whether anything changed.
pub fn change(desired: &mut Map<String, Value>, before: &Applied, now: &Applied) -> bool {
    let mut changed = false;
    for gone in before.paths.keys().filter(|k| !now.paths.contains_key(*k)) {
        let parts: Vec<String> = gone.split('.').map(str::to_owned).collect();
        changed |= write(desired, &parts, None);
    }
    for (k, v) in &now.paths {
        let parts: Vec<String> = k.split('.').map(str::to_owned).collect();
        changed |= write(desired, &parts, Some(v));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(
        id: &str,
        prio: i64,
        created: &str,
        cond: &str,
        content: Value,
    ) -> DeviceConfiguration {
        let c: super::super::config::Configuration = serde_json::from_value(json!({
            "id": id, "priority": prio, "createdTimeUtc": created, "targetCondition": cond,
            "content": {"deviceContent": content}}))
        .unwrap();
        DeviceConfiguration::from_configuration(&c).unwrap().unwrap()
    }

    #[test]
    fn the_highest_priority_wins_each_path_and_ties_go_to_the_newest_then_the_smaller_id() {
        let twin = json!({"deviceId": "d1", "tags": {"env": "prod"}});
        let low = config(
            "low",
            1,
            "2026-01-01T00:00:00Z",
            "*",
            json!({"properties.desired.chiller": {"temp": 38}, "properties.desired.fan": 1}),
        );
        let high = config(
            "high",
            5,
            "2026-01-01T00:00:00Z",
            "tags.env = 'prod'",
            json!({"properties.desired.chiller": {"temp": 40}}),
        );
        let other = config(
            "other",
            9,
            "2026-01-01T00:00:00Z",
            "tags.env = 'dev'",
            json!({"properties.desired.fan": 3}),
        );
        let a = apply(&[low.clone(), high.clone(), other], &twin);
        assert_eq!(a.paths["chiller"], json!({"temp": 40}));
        assert_eq!(a.paths["fan"], 1, "low still sets the path high does not");
        assert_eq!(
            (a.statuses["high"].as_str(), a.statuses["low"].as_str()),
            ("Applied", "Applied")
        );
        assert!(!a.statuses.contains_key("other"), "it does not target the twin");
        // A tie on priority: the newer wins; on creation time too, the smaller id.
        let newer = config(
            "b-newer",
            5,
            "2026-02-01T00:00:00Z",
            "*",
            json!({"properties.desired.chiller": 1}),
        );
        let a = apply(&[high.clone(), newer], &twin);
        assert_eq!(
            (a.paths["chiller"].clone(), a.statuses["high"].as_str()),
            (json!(1), "Targeted")
        );
        let same = config(
            "a-same",
            5,
            "2026-01-01T00:00:00Z",
            "*",
            json!({"properties.desired.chiller": 2}),
        );
        assert_eq!(apply(&[high, same], &twin).paths["chiller"], 2);
    }

    #[test]
    fn paths_are_written_whole_removed_when_no_longer_set_and_others_stay() {
        let mut desired = serde_json::Map::new();
        desired.insert("mine".into(), json!("user"));
        desired.insert("chiller".into(), json!({"temp": 1, "mode": "eco"}));
        let before = Applied::default();
        let mut now = Applied::default();
        now.paths.insert("chiller.temp".into(), json!(40));
        now.paths.insert("a.b.c".into(), json!([1]));
        assert!(change(&mut desired, &before, &now));
        assert_eq!(
            Value::Object(desired.clone()),
            json!({"mine": "user", "chiller": {"temp": 40, "mode": "eco"}, "a": {"b": {"c": [1]}}})
        );
        assert!(!change(&mut desired, &now, &now), "nothing changes twice");
        let mut later = Applied::default();
        later.paths.insert("chiller.temp".into(), Value::Null);
        assert!(change(&mut desired, &now, &later));
        assert_eq!(
            Value::Object(desired),
            json!({"mine": "user", "chiller": {"mode": "eco"}, "a": {"b": {}}})
        );
        assert!(matches!(path("properties.reported.x"), Err(AdmError::Path(_))));
        assert!(matches!(path("properties.desired.a..b"), Err(AdmError::Path(_))));
    }
}

//! The documents of the IoT Edge runtime's `$edgeAgent` and `$edgeHub` module twins (edge.md
//! §1 and §5): what a deployment desires of the agent ([`AgentDesired`]: schema version,
//! runtime, system modules and modules) and what the agent reports back ([`AgentReported`]:
//! the last desired version it acted on, its status, and each module's runtime state).
//!
//! serve writes the desired side from deployments, the simulated edgeAgent reads it and writes
//! the reported side, and `otaforge edge` reads both; all through these types. They are the
//! runtime's documents: what this version does not know is kept (`extra`), and module settings
//! beyond the image stay as the deployment gave them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Fields this version does not know.
type Extra = Map<String, Value>;

/// A module as a deployment desires it (`systemModules.*`, `modules.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredModule {
    /// `docker`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `running` or `stopped` (system modules other than edgeHub have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `always`, `on-failure`, `on-unhealthy`, `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    /// The module's version label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image and how to create its container.
    #[serde(default)]
    pub settings: ModuleSettings,
    /// Fields this version does not know (`env`, `startupOrder`, `imagePullPolicy`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl DesiredModule {
    /// The status it should run in (`running` when the deployment does not say).
    pub fn desired_status(&self) -> &str {
        self.status.as_deref().unwrap_or("running")
    }
}

/// A module's `settings`: its image and container options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSettings {
    /// The image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The container's create options, serialized (the first 512-character piece).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_options: Option<String>,
    /// Fields this version does not know (`createOptions01` ... and the like).
    #[serde(flatten)]
    pub extra: Extra,
}

/// The desired properties of `$edgeAgent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDesired {
    /// The service's counter of changes (what `lastDesiredVersion` answers).
    #[serde(rename = "$version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The deployment's schema version (`1.0`, `1.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// Runtime settings (registry credentials and the like), as the deployment gave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Value>,
    /// `edgeAgent` and `edgeHub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_modules: Option<BTreeMap<String, DesiredModule>>,
    /// The user modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<BTreeMap<String, DesiredModule>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl AgentDesired {
    /// The desired properties of a module twin, read as `$edgeAgent`'s (a document that does
    /// not have their shape reads as no deployment).
    pub fn of(desired: &Map<String, Value>) -> Self {
        serde_json::from_value(Value::Object(desired.clone())).unwrap_or_default()
    }

    /// Whether it holds a deployment at all (system modules or modules).
    pub fn has_deployment(&self) -> bool {
        self.modules.is_some() || self.system_modules.is_some()
    }

    /// A system module (`edgeAgent`, `edgeHub`).
    pub fn system_module(&self, name: &str) -> Option<&DesiredModule> {
        self.system_modules.as_ref()?.get(name)
    }

    /// The user modules, by name.
    pub fn user_modules(&self) -> impl Iterator<Item = (&String, &DesiredModule)> {
        self.modules.iter().flatten()
    }
}

/// `lastDesiredStatus`: how the agent took the last desired properties (200, or 400/412 when
/// refused, 417 when empty, 500 when the deployment did not complete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredStatus {
    /// The code.
    pub code: i64,
    /// Why, when not 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A module as edgeAgent reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedModule {
    /// `running`, `stopped`, `backoff`, `unhealthy`, `failed`, `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_status: Option<String>,
    /// Why it is in that status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    /// The container's last exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// How many times it restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i64>,
    /// Its desired status, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Its restart policy, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    /// Its version label, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image it runs.
    #[serde(default)]
    pub settings: ModuleSettings,
    /// Fields this version does not know (`lastStartTimeUtc`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ReportedModule {
    /// The status it reports (`unknown` when it says none).
    pub fn runtime_status(&self) -> &str {
        self.runtime_status.as_deref().unwrap_or("unknown")
    }
}

/// The reported properties of `$edgeAgent`. In a report (a patch), a module set to `None` is
/// written as `null`: removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReported {
    /// The schema version of the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// The agent's own version (`{version, build, commit}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Value>,
    /// The desired `$version` it last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_desired_version: Option<i64>,
    /// How that went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_desired_status: Option<DesiredStatus>,
    /// The runtime (`type`, `platform`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Value>,
    /// `edgeAgent` and `edgeHub`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub system_modules: BTreeMap<String, Option<ReportedModule>>,
    /// The user modules (`None`: removed, in a report).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub modules: BTreeMap<String, Option<ReportedModule>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl AgentReported {
    /// The reported properties of a module twin, read as `$edgeAgent`'s (a document that does
    /// not have their shape reads as nothing reported).
    pub fn of(reported: &Map<String, Value>) -> Self {
        serde_json::from_value(Value::Object(reported.clone())).unwrap_or_default()
    }

    /// A user module as reported, when it is there.
    pub fn module(&self, name: &str) -> Option<&ReportedModule> {
        self.modules.get(name)?.as_ref()
    }

    /// A system module as reported, when it is there.
    pub fn system_module(&self, name: &str) -> Option<&ReportedModule> {
        self.system_modules.get(name)?.as_ref()
    }

    /// The report as a reported-properties patch.
    pub fn to_patch(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
}

/// What edgeHub reports of the desired properties it last took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubReported {
    /// The desired `$version` it last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_desired_version: Option<i64>,
    /// How that went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_desired_status: Option<DesiredStatus>,
    /// Fields this version does not know (`clients`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// The desired properties of `$edgeHub`: its routes (and settings this version keeps as given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubDesired {
    /// The schema version (`1.0` ... `1.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// Routes by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteSpec>,
    /// Fields this version does not know (`storeAndForwardConfiguration`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl HubDesired {
    /// The desired properties of a module twin, read as `$edgeHub`'s.
    pub fn of(desired: &Map<String, Value>) -> Self {
        serde_json::from_value(Value::Object(desired.clone())).unwrap_or_default()
    }
}

/// A route: its text (schema 1.0), or the text with a priority and time to live (1.1 on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RouteSpec {
    /// `FROM ... INTO ...`.
    Text(String),
    /// `{route, priority, timeToLiveSecs}`.
    Detailed {
        /// The route's text.
        route: String,
        /// Its priority (0 highest).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<u64>,
        /// How long messages wait for it.
        #[serde(rename = "timeToLiveSecs", default, skip_serializing_if = "Option::is_none")]
        time_to_live_secs: Option<u64>,
    },
}

impl RouteSpec {
    /// The route's text.
    pub fn text(&self) -> &str {
        match self {
            Self::Text(t) | Self::Detailed { route: t, .. } => t,
        }
    }
}

/// The `$version` counter of a module twin's properties section.
pub fn section_version(section: &Map<String, Value>) -> Option<i64> {
    section.get("$version").and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_runtime_documents_round_trip() {
        let desired = json!({"$version": 4, "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"registryCredentials": {}}},
            "systemModules": {"edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                "settings": {"image": "hub:1.5", "createOptions": "{}"}}},
            "modules": {"m": {"type": "docker", "status": "running", "restartPolicy": "always",
                "env": {"A": {"value": "1"}}, "settings": {"image": "m:1", "createOptions01": "x"}}}});
        let d = AgentDesired::of(desired.as_object().unwrap());
        assert_eq!(d.version, Some(4));
        assert_eq!(d.system_module("edgeHub").unwrap().settings.image.as_deref(), Some("hub:1.5"));
        assert_eq!(serde_json::to_value(&d).unwrap(), desired);
        let reported = json!({"lastDesiredVersion": 4, "lastDesiredStatus": {"code": 200},
            "modules": {"m": {"runtimeStatus": "running", "exitCode": 0, "settings": {"image": "m:1"}},
                        "gone": null}});
        let r: AgentReported = serde_json::from_value(reported.clone()).unwrap();
        assert!(r.module("gone").is_none() && r.module("m").is_some());
        assert_eq!(serde_json::to_value(&r).unwrap(), reported);
        assert!(!AgentDesired::of(&Map::new()).has_deployment());
    }
}

//! The Device Update agent's side of a device twin: the `deviceUpdate` component of the Plug
//! and Play model `dtmi:azure:iot:deviceUpdateModel;3` (adu.md §5.1–5.2, iothub-device.md).
//!
//! - Desired, written by the service: [`ServiceProperty`] (`workflow`, `updateManifest` — the
//!   [`UpdateManifest`] as a JSON string, exactly as signed — `updateManifestSignature`,
//!   `fileUrls`).
//! - Reported, written by the agent: [`AgentReport`] (`deviceProperties`,
//!   `compatPropertyNames`, `state`, `workflow`, `installedUpdateId`, `lastInstallResult`).
//!
//! serve writes the desired side and reads the reported one; the simulated fleet does the
//! reverse; both go through these types, so what one writes is what the other reads. These
//! documents are Microsoft's: fields this version does not know are kept (`extra`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::{Compatibility, Extra, Hashes};
use crate::manifest::UpdateId;

/// The twin component's name.
pub const COMPONENT: &str = "deviceUpdate";
/// The Plug and Play model id a Device Update agent connects with.
pub const MODEL_ID: &str = "dtmi:azure:iot:deviceUpdateModel;3";
/// The contract model the agent reports in its device properties.
pub const CONTRACT_MODEL_ID: &str = "dtmi:azure:iot:deviceUpdateContractModel;3";
/// A component's marker in a twin patch (`"__t": "c"`).
pub const COMPONENT_MARKER: &str = "c";

/// Workflow action: process the deployment.
pub const ACTION_PROCESS: u64 = 3;
/// Workflow action: cancel it.
pub const ACTION_CANCEL: u64 = 255;

/// Agent state: idle.
pub const STATE_IDLE: i64 = 0;
/// Agent state: a deployment is in progress.
pub const STATE_IN_PROGRESS: i64 = 6;
/// Agent state: the last deployment failed.
pub const STATE_FAILED: i64 = 255;

/// `workflow`: which deployment, what to do with it, and the retry it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    /// [`ACTION_PROCESS`], [`ACTION_CANCEL`], or what the agent echoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<u64>,
    /// The deployment id.
    #[serde(default)]
    pub id: String,
    /// Set after a retry; the agent echoes it with its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timestamp: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The desired `service` property the service writes for a deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceProperty {
    /// What to do.
    pub workflow: Workflow,
    /// The [`UpdateManifest`], as the JSON string its signature covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_manifest: Option<String>,
    /// ADU's RS256 JWS over the manifest's SHA-256 (`sign::adu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_manifest_signature: Option<String>,
    /// File id → a read URL (outside the signature: the agent checks each file's hash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub file_urls: BTreeMap<String, String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `deviceUpdate` component of a twin's desired properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredComponent {
    /// `"c"`: this is a component.
    #[serde(rename = "__t", default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// The deployment, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceProperty>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The Plug and Play component `name` in twin properties, when it is there and well formed.
pub(crate) fn component_of<T: serde::de::DeserializeOwned>(
    properties: &Map<String, Value>,
    name: &str,
) -> Option<T> {
    serde_json::from_value(properties.get(name)?.clone()).ok()
}

/// `component` as a properties patch: `{name: component}`.
pub(crate) fn component_patch<T: Serialize>(name: &str, component: &T) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(name.into(), serde_json::to_value(component).unwrap_or(Value::Null));
    m
}

impl DesiredComponent {
    /// The component holding `service`, marked as a component.
    pub fn new(service: ServiceProperty) -> Self {
        Self { marker: Some(COMPONENT_MARKER.into()), service: Some(service), extra: Extra::new() }
    }

    /// The component in a twin's desired properties, when it is there and well formed.
    pub fn of(desired: &Map<String, Value>) -> Option<Self> {
        component_of(desired, COMPONENT)
    }
}

/// The update manifest the service makes from an imported update: what the agent installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateManifest {
    /// `"4"` in the official schema (current agents' test data say `"5"`).
    pub manifest_version: String,
    /// The update.
    pub update_id: UpdateId,
    /// Which devices it is for.
    pub compatibility: Vec<Compatibility>,
    /// Its steps.
    pub instructions: ManifestInstructions,
    /// Its files by file id.
    pub files: BTreeMap<String, ManifestFile>,
    /// When the update was made.
    pub created_date_time: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl UpdateManifest {
    /// Parses the `updateManifest` string of a [`ServiceProperty`].
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// `instructions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestInstructions {
    /// The steps, in order.
    pub steps: Vec<ManifestStep>,
}

/// One step: a handler and the file ids it installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestStep {
    /// The step handler (`microsoft/swupdate:2`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// File ids.
    #[serde(default)]
    pub files: Vec<String>,
    /// The handler's settings (user content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_properties: Option<Map<String, Value>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    /// Its file name.
    #[serde(rename = "filename")]
    pub file_name: String,
    /// Its size.
    pub size_in_bytes: u64,
    /// Its digests.
    pub hashes: Hashes,
    /// Files the download handler may use instead (deltas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_files: Vec<ManifestRelatedFile>,
    /// The download handler for the related files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_handler: Option<super::model::DownloadHandler>,
    /// Its properties (user content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ManifestFile {
    /// The base64 SHA-256 the file must have.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get(&crate::hash::HashAlgorithm::Sha256).map(String::as_str)
    }
}

/// One related file (a delta), listed under its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRelatedFile {
    /// Its file name.
    #[serde(rename = "filename")]
    pub file_name: String,
    /// Its size.
    pub size_in_bytes: u64,
    /// Its digests.
    pub hashes: Hashes,
    /// Its properties: `microsoft.sourceFileHash` and `microsoft.sourceFileHashAlgorithm` name
    /// the file it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ManifestRelatedFile {
    /// The base64 SHA-256 the related file must have.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get(&crate::hash::HashAlgorithm::Sha256).map(String::as_str)
    }

    /// The base64 SHA-256 of the file it applies to (`microsoft.sourceFileHash`).
    pub fn source_sha256(&self) -> Option<&str> {
        self.properties.as_ref()?.get("microsoft.sourceFileHash")?.as_str()
    }
}

/// What the agent reports about itself (`agent`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// Its device properties: manufacturer, model, contract model, agent version, and any
    /// other compat property (user content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_properties: Option<Map<String, Value>>,
    /// The device properties its class is made of, comma separated (default
    /// `manufacturer,model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat_property_names: Option<String>,
    /// [`STATE_IDLE`], [`STATE_IN_PROGRESS`], [`STATE_FAILED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<i64>,
    /// The workflow it last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Workflow>,
    /// What it has installed: the update id as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_update_id: Option<String>,
    /// Its last install result, as the agent wrote it: agents before 1.1 write the REST API's
    /// shape (`extendedResultCode` a number, `stepResults` a list), later ones a string of hex
    /// codes and steps keyed `step_N`; [`AgentReport::last_install_result`] reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_install_result: Option<Value>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl AgentReport {
    /// The installed update, parsed from its JSON string.
    pub fn installed(&self) -> Option<UpdateId> {
        serde_json::from_str(self.installed_update_id.as_deref()?).ok()
    }

    /// Its last install result in the REST API's shape. An agent before 1.1 writes that shape;
    /// a later one writes `extendedResultCodes`, comma-separated `%08X` codes, and
    /// `stepResults` keyed `step_N`: those become `extendedResultCode` (the first code, as the
    /// API's signed int32) and a list in step order, and what the agent wrote stays beside them
    /// (`extendedResultCodes` as given, each step's `step` key). `None` when there is none or
    /// it is malformed.
    pub fn last_install_result(&self) -> Option<super::model::InstallResult> {
        let reported: ReportedResult =
            serde_json::from_value(self.last_install_result.clone()?).ok()?;
        reported.into_rest()
    }

    /// The contract model it reports, or the one an agent that does not say has.
    pub fn contract_model(&self) -> &str {
        self.device_properties
            .as_ref()
            .and_then(|p| p.get("contractModelId"))
            .and_then(Value::as_str)
            .unwrap_or(CONTRACT_MODEL_ID)
    }

    /// Its compat properties: the device properties `compatPropertyNames` names.
    pub fn compat(&self) -> Map<String, Value> {
        let Some(props) = &self.device_properties else { return Map::new() };
        self.compat_property_names
            .as_deref()
            .unwrap_or("manufacturer,model")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .filter_map(|n| props.get(n).map(|v| (n.to_owned(), v.clone())))
            .collect()
    }
}

/// `lastInstallResult` as Device Update agents 1.1 and later write it
/// (`reporting_utils.c`): `extendedResultCodes` a string of `%08X` codes, the root first,
/// comma-joined; `stepResults` keyed `step_N` (twin keys cannot hold `:` or `-`), present
/// only when the update has steps, `null` while a deployment is in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInstallResult {
    /// 700 applied, 600 installed, 500 downloaded, 400 in progress, 0 failed, -1 cancelled.
    pub result_code: i64,
    /// The extended result codes, `%08X` each, comma-joined.
    #[serde(default)]
    pub extended_result_codes: Option<String>,
    /// Details, when there are any.
    #[serde(default)]
    pub result_details: Option<String>,
    /// Each step's result, keyed `step_N`.
    #[serde(default)]
    pub step_results: Option<BTreeMap<String, AgentStepResult>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One step's result in an [`AgentInstallResult`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStepResult {
    /// Its result code.
    pub result_code: i64,
    /// Its extended result codes, as [`AgentInstallResult::extended_result_codes`].
    #[serde(default)]
    pub extended_result_codes: Option<String>,
    /// Details.
    #[serde(default)]
    pub result_details: Option<String>,
}

/// Extended result codes as the agent writes them (`%08X`, comma-joined), from the codes as
/// the REST API carries them (signed 32-bit numbers).
pub fn format_result_codes(codes: &[i64]) -> String {
    let hex: Vec<String> = codes.iter().map(|c| format!("{:08X}", *c as i32 as u32)).collect();
    hex.join(",")
}

/// The agent's acknowledgement of a desired `service` property, as the Plug and Play
/// convention writes it (`PnP_CreateReportedPropertyWithStatus`): the property's value with
/// `updateManifestSignature` and `fileUrls` left out ("to reduce twin size"), status `ac`
/// 200, no description, and `av` the desired `$version` it answers.
pub fn acknowledgement(service: &ServiceProperty, desired_version: i64) -> Value {
    let mut value = serde_json::to_value(service).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut value {
        m.insert("updateManifestSignature".into(), Value::Null);
        m.insert("fileUrls".into(), Value::Null);
    }
    serde_json::json!({"value": value, "ac": 200, "ad": "", "av": desired_version})
}

/// `lastInstallResult` (or one of its steps) as any agent writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportedResult {
    result_code: i64,
    /// Agents before 1.1: one signed integer.
    #[serde(default)]
    extended_result_code: Option<i64>,
    /// Agents from 1.1: `%08X` codes, comma separated.
    #[serde(default)]
    extended_result_codes: Option<String>,
    #[serde(default)]
    result_details: Option<String>,
    /// A list (before 1.1) or an object keyed `step_N` (from 1.1).
    #[serde(default)]
    step_results: Option<Value>,
    /// A step's update (reference steps).
    #[serde(default)]
    update_id: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

impl ReportedResult {
    /// The first code, as the REST API's signed int32.
    fn code(&self) -> Option<i64> {
        if let Some(c) = self.extended_result_code {
            return Some(c);
        }
        let text = Value::String(self.extended_result_codes.clone()?);
        let codes = super::result_code::parse_codes(&text).ok()?;
        Some(codes.first().map_or(0, |c| super::result_code::as_signed(*c)))
    }

    fn into_rest(self) -> Option<super::model::InstallResult> {
        let code = self.code().unwrap_or(0);
        let steps = match &self.step_results {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => {
                Some(list.iter().filter_map(|s| serde_json::from_value(s.clone()).ok()).collect())
            }
            Some(Value::Object(map)) => {
                let mut keyed: Vec<(u64, &String, &Value)> = map
                    .iter()
                    .map(|(k, v)| (k.trim_start_matches("step_").parse().unwrap_or(u64::MAX), k, v))
                    .collect();
                keyed.sort_by_key(|(n, _, _)| *n);
                Some(keyed.into_iter().filter_map(|(_, k, v)| step(k, v)).collect())
            }
            Some(_) => return None,
        };
        let mut extra = self.extra;
        if let Some(codes) = self.extended_result_codes {
            extra.insert("extendedResultCodes".into(), Value::String(codes));
        }
        Some(super::model::InstallResult {
            result_code: self.result_code,
            extended_result_code: code,
            result_details: self.result_details,
            step_results: steps,
            extra,
        })
    }
}

/// One step of a 1.1 agent's `stepResults` object as the REST API's `StepResult`.
fn step(key: &str, v: &Value) -> Option<super::model::StepResult> {
    let r: ReportedResult = serde_json::from_value(v.clone()).ok()?;
    let code = r.code().unwrap_or(0);
    let mut extra = r.extra;
    extra.insert("step".into(), Value::String(key.to_owned()));
    if let Some(codes) = r.extended_result_codes {
        extra.insert("extendedResultCodes".into(), Value::String(codes));
    }
    let update = r
        .update_id
        .and_then(|u| serde_json::from_value::<UpdateId>(u).ok())
        .map(super::model::UpdateInfo::new);
    Some(super::model::StepResult {
        update,
        description: None,
        result_code: r.result_code,
        extended_result_code: code,
        result_details: r.result_details,
        extra,
    })
}

/// The `deviceUpdate` component of a twin's reported properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportedComponent {
    /// `"c"`: this is a component.
    #[serde(rename = "__t", default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// The agent's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentReport>,
    /// Fields this version does not know (the acknowledgement of `service`, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ReportedComponent {
    /// The component holding `agent`, marked as a component.
    pub fn new(agent: AgentReport) -> Self {
        Self { marker: Some(COMPONENT_MARKER.into()), agent: Some(agent), extra: Extra::new() }
    }

    /// The component in a twin's reported properties, when it is there and well formed.
    pub fn of(reported: &Map<String, Value>) -> Option<Self> {
        component_of(reported, COMPONENT)
    }

    /// The component as a reported-properties patch (`{"deviceUpdate": …}`).
    pub fn to_patch(&self) -> Map<String, Value> {
        component_patch(COMPONENT, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_fleet_writes_as_agent_1_1_reads_back_and_the_service_is_acknowledged() {
        let step = |code, codes: &str| AgentStepResult {
            result_code: code,
            extended_result_codes: Some(codes.into()),
            result_details: None,
        };
        let written = AgentInstallResult {
            result_code: 0,
            extended_result_codes: Some(format_result_codes(&[0x80D0_2002_u32 as i32 as i64, 1])),
            result_details: Some("download failed".into()),
            step_results: Some(
                [
                    ("step_1".to_owned(), step(0, "80D02002")),
                    ("step_0".to_owned(), step(700, "00000000")),
                ]
                .into_iter()
                .collect(),
            ),
            extra: Extra::new(),
        };
        assert_eq!(written.extended_result_codes.as_deref(), Some("80D02002,00000001"));
        let report = AgentReport {
            last_install_result: Some(serde_json::to_value(&written).unwrap()),
            ..AgentReport::default()
        };
        let r = report.last_install_result().unwrap();
        assert_eq!(r.extended_result_code, 0x80D0_2002_u32 as i32 as i64);
        let steps = r.step_results.unwrap();
        assert_eq!((steps[0].result_code, steps[1].result_code), (700, 0));
        let ack = acknowledgement(
            &ServiceProperty { update_manifest: Some("{}".into()), ..Default::default() },
            7,
        );
        assert_eq!(ack["av"], 7);
        assert_eq!(ack["value"]["fileUrls"], Value::Null);
        assert_eq!(ack["value"]["updateManifest"], "{}");
    }

    #[test]
    fn the_components_round_trip_and_keep_what_they_do_not_know() {
        let desired = serde_json::json!({"deviceUpdate": {"__t": "c", "future": 1, "service": {
            "workflow": {"action": 3, "id": "d1", "retryTimestamp": "t"},
            "updateManifest": "{}", "updateManifestSignature": "jws",
            "fileUrls": {"f1": "http://x"}, "more": true}}});
        let d = DesiredComponent::of(desired.as_object().unwrap()).unwrap();
        let service = d.service.as_ref().unwrap();
        assert_eq!(service.workflow.action, Some(ACTION_PROCESS));
        assert_eq!(service.file_urls["f1"], "http://x");
        assert_eq!(serde_json::to_value(&d).unwrap(), desired["deviceUpdate"]);
        let reported = serde_json::json!({"deviceUpdate": {"__t": "c", "agent": {
            "deviceProperties": {"manufacturer": "contoso", "model": "m", "location": "lab"},
            "compatPropertyNames": "manufacturer, model", "state": 0,
            "installedUpdateId": "{\"provider\":\"contoso\",\"name\":\"m\",\"version\":\"1.0\"}"},
            "service": {"ac": 200, "av": 4}}});
        let r = ReportedComponent::of(reported.as_object().unwrap()).unwrap();
        let agent = r.agent.as_ref().unwrap();
        assert_eq!(agent.compat().len(), 2);
        assert_eq!(agent.installed().unwrap().to_string(), "contoso/m/1.0");
        assert_eq!(agent.contract_model(), CONTRACT_MODEL_ID);
        assert_eq!(serde_json::to_value(&r).unwrap(), reported["deviceUpdate"]);
    }

    #[test]
    fn install_results_of_every_agent_version_read_in_the_rest_shape() {
        let agent = |r: Value| AgentReport { last_install_result: Some(r), ..Default::default() };
        // Agent 1.0: the REST shape itself.
        let old = agent(serde_json::json!({"resultCode": 0, "extendedResultCode": -791666686,
            "resultDetails": "", "stepResults": [{"resultCode": 0, "extendedResultCode": 1048579}]}));
        let r = old.last_install_result().unwrap();
        assert_eq!((r.result_code, r.extended_result_code), (0, -791666686));
        assert_eq!(r.step_results.unwrap()[0].extended_result_code, 1048579);
        // Agent 1.1: hex codes and steps keyed step_N (step_10 after step_2).
        let new = agent(serde_json::json!({"resultCode": 700,
            "extendedResultCodes": "00000000,90A07530", "resultDetails": null,
            "stepResults": {"step_10": {"resultCode": 0, "extendedResultCodes": "30501001"},
                            "step_2": {"resultCode": 700, "extendedResultCodes": "00000000"}}}));
        let r = new.last_install_result().unwrap();
        assert_eq!((r.result_code, r.extended_result_code), (700, 0));
        assert_eq!(r.extra["extendedResultCodes"], "00000000,90A07530");
        let steps = r.step_results.unwrap();
        assert_eq!(
            steps.iter().map(|s| s.extra["step"].as_str().unwrap()).collect::<Vec<_>>(),
            ["step_2", "step_10"]
        );
        assert_eq!(steps[1].extended_result_code, 0x3050_1001);
        let fail = agent(serde_json::json!({"resultCode": 0, "extendedResultCodes": "D0D02002"}));
        assert_eq!(fail.last_install_result().unwrap().extended_result_code, -791666686);
        assert!(agent(serde_json::json!({"resultCode": "x"})).last_install_result().is_none());
    }
}

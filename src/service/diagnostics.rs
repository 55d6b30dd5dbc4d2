//! Device diagnostics in Device Update: the REST documents of log collections and device
//! health (`deviceupdate.json` 2022-10-01: `LogCollection`,
//! `LogCollectionOperationDetailedStatus`, `DeviceHealth`), of the device import operations
//! (`DeviceOperation`), and the twin component the agent's log upload is driven through,
//! `diagnosticInformation` (DTDL `dtmi:azure:iot:diagnosticInformation;1`; the agent's
//! `src/diagnostics_component`):
//!
//! - desired, written by the service: `service = {operationId, storageSasUrl}` — the log
//!   collection id and a *container* SAS URL the agent uploads to with Put Blob, each file as
//!   `<deviceId>[/<moduleId>]/<operationId>/<componentName>/<fileName>`;
//! - reported, written by the agent: `agent = {resultCode, extendedResultCode?, operationId}`,
//!   `resultCode` one of [`DiagnosticsResult`] (200 success; 0 and negatives failures).
//!
//! These documents are Microsoft's: fields this version does not know are kept (`extra`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::{ErrorBody, Extra, OperationStatus, string_enum};

/// The twin component of log collection.
pub const COMPONENT: &str = "diagnosticInformation";

/// The agent's `resultCode` for a log upload that succeeded.
pub const RESULT_SUCCESS: i64 = 200;

/// A Device Update agent: a device identity, or a module identity of one (`DeviceUpdateAgentId`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentId {
    /// Device id.
    pub device_id: String,
    /// Module id, when the agent runs as a module identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
}

impl AgentId {
    /// `device` or `device/module`: how the agent names itself in blob names.
    pub fn path(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{m}", self.device_id),
            None => self.device_id.clone(),
        }
    }
}

/// `LogCollection`: a request for the logs of some agents, and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogCollection {
    /// The log collection id (the path's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The agents to collect from.
    pub device_list: Vec<AgentId>,
    /// Description, at most 512 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was created (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<String>,
    /// When its status last changed (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_date_time: Option<String>,
    /// Its status (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OperationStatus>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `LogCollectionOperationDeviceStatus`: one agent's part of a log collection. The codes are
/// strings here, as the API has them (the agent reports integers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogCollectionDeviceStatus {
    /// Device id.
    pub device_id: String,
    /// Module id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Its upload's status.
    pub status: OperationStatus,
    /// The agent's result code, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_code: Option<String>,
    /// The agent's extended result code, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_result_code: Option<String>,
    /// Where its logs are (`/ACCOUNT/CONTAINER/DEVICE[/MODULE]/OPERATION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_location: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `LogCollectionOperationDetailedStatus`: a log collection with each agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogCollectionDetailedStatus {
    /// The log collection id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<String>,
    /// When its status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_date_time: Option<String>,
    /// Its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OperationStatus>,
    /// Each agent's status.
    #[serde(default)]
    pub device_status: Vec<LogCollectionDeviceStatus>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// `DeviceHealthState`.
    HealthState { Healthy = "healthy", Unhealthy = "unhealthy" }
}

string_enum! {
    /// `HealthCheckResult`.
    HealthCheckResult { Success = "success", UserError = "userError" }
}

/// `HealthCheck`: one check and its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<HealthCheckResult>,
}

/// `DeviceHealth`: an agent's health and the checks it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHealth {
    /// Device id.
    pub device_id: String,
    /// Module id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Healthy when every check succeeded.
    pub state: HealthState,
    /// The model id the device announced when it connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digital_twin_model_id: Option<String>,
    /// The checks.
    pub health_checks: Vec<HealthCheck>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// `ImportType`: what `devices:import` brings in.
    ImportType { Devices = "Devices", Modules = "Modules", All = "All" }
}

/// `DeviceOperation`: a device import (`devices:import`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceOperation {
    /// Operation id.
    pub operation_id: String,
    /// Status.
    pub status: OperationStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Give this to support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Last change.
    pub last_action_date_time: String,
    /// Creation.
    pub created_date_time: String,
    /// Entity tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The agent's `resultCode` of a log upload (`diagnostics_result.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticsResult {
    /// 200: every file uploaded.
    Success,
    /// 0: a failure without a more precise code.
    Failure,
    /// -1: no log file in any configured path.
    NoLogsFound,
    /// -2: an upload failed.
    UploadFailed,
    /// -3: the container could not be created.
    ContainerCreateFailed,
    /// -4: the SAS URL was refused.
    BadCredential,
    /// -5: the agent is configured with no log component.
    NoDiagnosticsComponents,
    /// -6: the request had no operation id.
    NoOperationId,
    /// -7: the request had no SAS URL.
    NoSasCredential,
}

impl DiagnosticsResult {
    /// Every result, with its code.
    const ALL: [(Self, i64, &'static str); 9] = [
        (Self::Success, 200, "Success"),
        (Self::Failure, 0, "Failure"),
        (Self::NoLogsFound, -1, "NoLogsFound"),
        (Self::UploadFailed, -2, "UploadFailed"),
        (Self::ContainerCreateFailed, -3, "ContainerCreateFailed"),
        (Self::BadCredential, -4, "BadCredential"),
        (Self::NoDiagnosticsComponents, -5, "NoDiagnosticsComponents"),
        (Self::NoOperationId, -6, "NoOperationId"),
        (Self::NoSasCredential, -7, "NoSasCredential"),
    ];

    /// The code the agent reports.
    pub fn code(self) -> i64 {
        Self::ALL.iter().find(|(r, _, _)| *r == self).map_or(0, |(_, c, _)| *c)
    }

    /// The result of a code, when it is one.
    pub fn of(code: i64) -> Option<Self> {
        Self::ALL.iter().find(|(_, c, _)| *c == code).map(|(r, _, _)| *r)
    }

    /// Its name in the agent's source (`Diagnostics_Result_NAME`).
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(r, _, _)| *r == self).map_or("Failure", |(_, _, n)| n)
    }
}

/// The desired `service` property: which log collection, and where to upload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticsRequest {
    /// The log collection id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_id: String,
    /// A container SAS URL that allows creating and writing blobs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub storage_sas_url: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The reported `agent` property: how the last upload ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticsReport {
    /// A [`DiagnosticsResult`] code.
    #[serde(default)]
    pub result_code: i64,
    /// In the model; the reference agent does not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_result_code: Option<i64>,
    /// The log collection it answers.
    #[serde(default)]
    pub operation_id: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `diagnosticInformation` component of a twin (desired or reported).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticsComponent {
    /// `"c"`: this is a component (the agent ignores a desired object without it).
    #[serde(rename = "__t", default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// Desired: the request. (Reported: the agent's acknowledgement, kept in `extra`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<DiagnosticsRequest>,
    /// Reported: how the upload ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<DiagnosticsReport>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl DiagnosticsComponent {
    /// The desired component asking for the logs of `operation_id`, uploaded to `sas_url`.
    pub fn request(operation_id: &str, sas_url: &str) -> Self {
        Self {
            marker: Some(super::agent::COMPONENT_MARKER.into()),
            service: Some(DiagnosticsRequest {
                operation_id: operation_id.to_owned(),
                storage_sas_url: sas_url.to_owned(),
                extra: Extra::new(),
            }),
            agent: None,
            extra: Extra::new(),
        }
    }

    /// The reported component with the agent's result for `operation_id`.
    pub fn report(operation_id: &str, result: DiagnosticsResult) -> Self {
        Self {
            marker: Some(super::agent::COMPONENT_MARKER.into()),
            service: None,
            agent: Some(DiagnosticsReport {
                result_code: result.code(),
                extended_result_code: None,
                operation_id: operation_id.to_owned(),
                extra: Extra::new(),
            }),
            extra: Extra::new(),
        }
    }

    /// The component in a twin's desired or reported properties, when there and well formed.
    pub fn of(properties: &Map<String, Value>) -> Option<Self> {
        super::agent::component_of(properties, COMPONENT)
    }

    /// The component as a properties patch (`{"diagnosticInformation": …}`).
    pub fn to_patch(&self) -> Map<String, Value> {
        super::agent::component_patch(COMPONENT, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_round_trips_as_the_agent_writes_it() {
        let desired = serde_json::json!({"diagnosticInformation": {"__t": "c", "service": {
            "operationId": "logs-1", "storageSasUrl": "http://h/blobs/c?sig=x"}}});
        let c = DiagnosticsComponent::of(desired.as_object().unwrap()).unwrap();
        assert_eq!(c, DiagnosticsComponent::request("logs-1", "http://h/blobs/c?sig=x"));
        assert_eq!(Value::Object(c.to_patch()), desired);
        let reported = serde_json::json!({"diagnosticInformation": {"__t": "c",
            "agent": {"resultCode": -2, "operationId": "logs-1"},
            "service": {"value": {}, "ac": 200, "av": 3}}});
        let r = DiagnosticsComponent::of(reported.as_object().unwrap()).unwrap();
        let agent = r.agent.as_ref().unwrap();
        assert_eq!(DiagnosticsResult::of(agent.result_code), Some(DiagnosticsResult::UploadFailed));
        assert_eq!(serde_json::to_value(&r).unwrap(), reported["diagnosticInformation"]);
        for code in [200, 0, -1, -2, -3, -4, -5, -6, -7] {
            assert_eq!(DiagnosticsResult::of(code).map(DiagnosticsResult::code), Some(code));
        }
    }
}

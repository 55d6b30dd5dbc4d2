//! The documents of the Device Update REST API (api-version 2022-10-01, camelCase as in the
//! specification `../shared/specs/deviceupdate-2022-10-01/deviceupdate.json`), shared by the
//! client ([`super::AduClient`]), the embedded service (`server`) and the command line.
//!
//! These documents are defined by Microsoft, so every object keeps the fields this version does
//! not know in `extra` and every string enumeration keeps values it does not know in `Other`:
//! a document read and written again is the same document. The tests round-trip every example
//! of the specification through these types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::hash::HashAlgorithm;
pub use crate::manifest::{FileName, UpdateId};

/// A `hashes` object: algorithm → base64 digest.
pub type Hashes = BTreeMap<HashAlgorithm, String>;
/// One compatibility set: device property → value.
pub type Compatibility = Map<String, Value>;
/// Fields of a document that this version does not know.
pub type Extra = Map<String, Value>;

/// A string enumeration of the API: the values the specification lists, and any other value
/// kept as sent.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* #[doc = concat!("`", $s, "`")] $v,)+
            /// A value this version does not know, kept as sent.
            Other(String),
        }

        impl $name {
            /// The value as the API writes it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$v => $s,)+
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($s => Self::$v,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(Self::from(String::deserialize(d)?.as_str()))
            }
        }
    };
}

pub(crate) use string_enum;

/// One page of a list (`value` + `nextLink`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items of this page.
    pub value: Vec<T>,
    /// Where the next page is, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Import

/// One update in an import request (`ImportUpdateInputItem`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportItem {
    /// Where the import manifest is, and its exact size and digest.
    pub import_manifest: ImportManifestMetadata,
    /// Optional display name, 1..512 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friendly_name: Option<String>,
    /// Every payload and related file the manifest names, with a URL to fetch it.
    #[serde(default)]
    pub files: Vec<FileImportMetadata>,
}

/// `ImportManifestMetadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportManifestMetadata {
    /// URL of the manifest (a read SAS URL for Azure).
    pub url: String,
    /// Size of the manifest file in bytes.
    pub size_in_bytes: u64,
    /// `{"sha256": base64}`.
    pub hashes: Hashes,
}

/// `FileImportMetadata`: a file name of the manifest and where to fetch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileImportMetadata {
    /// The file name as the manifest spells it (a plain name: no path).
    pub filename: FileName,
    /// Where to fetch it.
    pub url: String,
}

// ---------------------------------------------------------------------------------------------
// Updates and files

/// `UpdateInfo`: an update's id with its display fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateInfo {
    /// The update.
    pub update_id: UpdateId,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friendly_name: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl UpdateInfo {
    /// Just the id.
    pub fn new(update_id: UpdateId) -> Self {
        Self { update_id, description: None, friendly_name: None, extra: Extra::new() }
    }
}

/// An imported update (`Update`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// Its identity.
    pub update_id: UpdateId,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friendly_name: Option<String>,
    /// False for children that only a parent installs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_deployable: Option<bool>,
    /// Update type (manifest v4 and older).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_type: Option<String>,
    /// Installed criteria (manifest v4 and older).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_criteria: Option<String>,
    /// The device property sets it installs on.
    pub compatibility: Vec<Compatibility>,
    /// Its steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<Instructions>,
    /// Parents that reference it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referenced_by: Option<Vec<UpdateId>>,
    /// Malware scan result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_result: Option<String>,
    /// Schema version of its import manifest.
    pub manifest_version: String,
    /// When it was imported.
    pub imported_date_time: String,
    /// When its manifest was created.
    pub created_date_time: String,
    /// Entity tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Update {
    /// Whether it may be deployed on its own (the default is true).
    pub fn deployable(&self) -> bool {
        self.is_deployable.unwrap_or(true)
    }

    /// The child updates its reference steps name.
    pub fn references(&self) -> impl Iterator<Item = &UpdateId> {
        self.instructions
            .iter()
            .flat_map(|i| &i.steps)
            .filter(|s| s.is_reference())
            .filter_map(|s| s.update_id.as_ref())
    }
}

/// `Instructions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instructions {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// A step's `type`.
    StepType { Inline = "inline", Reference = "reference" }
}

/// One step as the service returns it (`Step`): inline (handler and files) or reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// `inline` (or absent) or `reference`; the service has been seen writing `Reference`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub step_type: Option<StepType>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Handler of an inline step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Handler properties of an inline step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_properties: Option<Map<String, Value>>,
    /// Files of an inline step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    /// The child update of a reference step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_id: Option<UpdateId>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Step {
    /// Whether this is a reference step (`type` compared without case).
    pub fn is_reference(&self) -> bool {
        self.step_type.as_ref().is_some_and(|t| t.as_str().eq_ignore_ascii_case("reference"))
    }
}

/// `UpdateFileDownloadHandler`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadHandler {
    /// Handler id.
    pub id: String,
}

/// A related file of an update file (`UpdateFileBase`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelatedFile {
    /// File name.
    pub file_name: String,
    /// Size in bytes.
    pub size_in_bytes: u64,
    /// Digests.
    pub hashes: Hashes,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Malware scan result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_result: Option<String>,
    /// Malware scan details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_details: Option<String>,
    /// Properties passed to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A file of an imported update (`UpdateFile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateFile {
    /// Opaque id.
    pub file_id: String,
    /// File name.
    pub file_name: String,
    /// Size in bytes.
    pub size_in_bytes: u64,
    /// Digests.
    pub hashes: Hashes,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Malware scan result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_result: Option<String>,
    /// Malware scan details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_details: Option<String>,
    /// Properties passed to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    /// Related files (deltas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_files: Vec<RelatedFile>,
    /// Handler of the related files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_handler: Option<DownloadHandler>,
    /// Entity tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl UpdateFile {
    /// The base64 SHA-256, when given.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get(&HashAlgorithm::Sha256).map(String::as_str)
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and errors

/// An operation's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationStatus {
    /// Accepted, not started.
    NotStarted,
    /// In progress.
    Running,
    /// Done.
    Succeeded,
    /// Ended with `error`.
    Failed,
}

impl OperationStatus {
    /// Succeeded or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, OperationStatus::Succeeded | OperationStatus::Failed)
    }

    /// The name as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::NotStarted => "NotStarted",
            OperationStatus::Running => "Running",
            OperationStatus::Succeeded => "Succeeded",
            OperationStatus::Failed => "Failed",
        }
    }
}

/// `UpdateOperation`: an import or delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateOperation {
    /// Operation id.
    pub operation_id: String,
    /// Status.
    pub status: OperationStatus,
    /// The update (once the manifest was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateInfo>,
    /// Location of the imported update on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_location: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Give this to support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_date_time: Option<String>,
    /// Creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<String>,
    /// Entity tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `ErrorResponse`: `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

/// The `Error` object: code, message, details, inner error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Server-defined error code, e.g. `UpdateAlreadyExists`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// What the error is about (a file name, a JSON path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Errors behind this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorBody>,
    /// More specific information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub innererror: Option<InnerError>,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_date_time: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `InnerError`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InnerError {
    /// Code.
    pub code: String,
    /// Message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    /// The error behind this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_error: Option<Box<InnerError>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ErrorBody {
    /// An error with a code and message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            target: None,
            details: Vec::new(),
            innererror: None,
            occurred_date_time: None,
            extra: Extra::new(),
        }
    }

    /// Sets the target.
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Adds details.
    pub fn with_details(mut self, details: Vec<ErrorBody>) -> Self {
        self.details = details;
        self
    }

    /// `message`, then each detail on its own line (for people).
    pub fn describe(&self) -> String {
        let mut s = format!("{}: {}", self.code, self.message);
        for d in &self.details {
            let target = d.target.as_ref().map(|t| format!(" [{t}]")).unwrap_or_default();
            s.push_str(&format!("\n  {}{target}: {}", d.code, d.message));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Device management: groups, device classes, devices, deployments (the types the deployment
// work builds on; the client calls for them come with it).

string_enum! {
    /// `GroupType`.
    GroupType { IoTHubTag = "IoTHubTag", DefaultNoTag = "DefaultNoTag" }
}

/// `Group`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// Group id (the `ADUGroup` tag value).
    pub group_id: String,
    /// How membership is defined.
    pub group_type: GroupType,
    /// Creation time.
    pub created_date_time: String,
    /// Devices in the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_count: Option<u64>,
    /// Subgroups with a newer update available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subgroups_with_new_updates_available_count: Option<u64>,
    /// Subgroups with an update in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subgroups_with_updates_in_progress_count: Option<u64>,
    /// Subgroups on their latest update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subgroups_with_on_latest_update_count: Option<u64>,
    /// Active deployment ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<String>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `ContractModel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractModel {
    /// Model id (`dtmi:azure:iot:deviceUpdateContractModel;2`).
    pub id: String,
    /// Model name.
    pub name: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DeviceClassProperties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceClassProperties {
    /// The agent's contract model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_model: Option<ContractModel>,
    /// The compat properties that define the class.
    pub compat_properties: Map<String, Value>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DeviceClass`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceClass {
    /// Class id.
    pub device_class_id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friendly_name: Option<String>,
    /// What defines the class.
    pub device_class_properties: DeviceClassProperties,
    /// The newest compatible update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_compatible_update: Option<UpdateInfo>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// `DeviceDeploymentState`.
    DeviceDeploymentState {
        Succeeded = "Succeeded", InProgress = "InProgress", Canceled = "Canceled", Failed = "Failed"
    }
}

/// `StepResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    /// The step's update, for reference steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateInfo>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Result code.
    pub result_code: i64,
    /// Extended result code.
    pub extended_result_code: i64,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_details: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `InstallResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallResult {
    /// Result code (700 = installed).
    pub result_code: i64,
    /// Extended result code.
    pub extended_result_code: i64,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_details: Option<String>,
    /// Per-step results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_results: Option<Vec<StepResult>>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `Device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Device id.
    pub device_id: String,
    /// Module id, when the agent is a module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Its class.
    pub device_class_id: String,
    /// Its group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The last update it tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_update: Option<UpdateInfo>,
    /// State of its current deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_status: Option<DeviceDeploymentState>,
    /// What it has installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_update: Option<UpdateInfo>,
    /// Whether it runs the best update of its class.
    pub on_latest_update: bool,
    /// Its last deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deployment_id: Option<String>,
    /// Its last install result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_install_result: Option<InstallResult>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `UpdateCompliance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateCompliance {
    /// All devices.
    pub total_device_count: u64,
    /// Devices on their latest update.
    pub on_latest_update_device_count: u64,
    /// Devices with a newer update available.
    pub new_updates_available_device_count: u64,
    /// Devices installing.
    pub updates_in_progress_device_count: u64,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DeviceClassSubgroup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceClassSubgroup {
    /// Class id.
    pub device_class_id: String,
    /// Group id.
    pub group_id: String,
    /// Creation time.
    pub created_date_time: String,
    /// Devices in the subgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_count: Option<u64>,
    /// Its active deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DeviceClassSubgroupUpdatableDevices`: the best update of a subgroup (a group's devices of
/// one class) and how many devices it is applicable to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubgroupBestUpdate {
    /// Group id.
    pub group_id: String,
    /// Class id.
    pub device_class_id: String,
    /// The update.
    pub update: UpdateInfo,
    /// Devices of the subgroup (the update fits their class).
    pub device_count: u64,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `CloudInitiatedRollbackPolicyFailure`: both thresholds are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackFailure {
    /// Failed share, percent.
    pub devices_failed_percentage: u32,
    /// Failed count.
    pub devices_failed_count: u64,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `CloudInitiatedRollbackPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackPolicy {
    /// The update to roll back to.
    pub update: UpdateInfo,
    /// When to roll back.
    pub failure: RollbackFailure,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An id of the device-management API that breaks its rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{id}` {why}")]
pub struct IdError {
    /// `deployment id`, `group id`.
    pub what: &'static str,
    /// The id as given.
    pub id: String,
    /// What is wrong, with the rule.
    pub why: String,
}

/// Characters a deployment id must not hold (adu.md §4.3).
const DEPLOYMENT_ID_FORBIDDEN: &[char] =
    &['&', '^', '[', ']', '{', '}', '|', '<', '>', '/', '\\', '"'];

/// A deployment id as Device Update takes it: 1-73 characters, none of `& ^ [ ] { } | < > / \ "`,
/// no white space or control characters (adu.md §4.3; adu.md says lower case too, but the
/// official specification's own example is `deploymentId`, so case is not checked). Made only
/// through [`DeploymentId::new`] and the constructors below, so every one is valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeploymentId(String);

impl DeploymentId {
    /// The longest id.
    pub const MAX_CHARS: usize = 73;

    /// Checks `id`.
    pub fn new(id: &str) -> Result<Self, IdError> {
        let n = id.chars().count();
        let bad = |why: String| IdError { what: "deployment id", id: id.to_owned(), why };
        if !(1..=Self::MAX_CHARS).contains(&n) {
            return Err(bad(format!("must have 1 to 73 characters, not {n}")));
        }
        if let Some(c) = id
            .chars()
            .find(|c| DEPLOYMENT_ID_FORBIDDEN.contains(c) || c.is_whitespace() || c.is_control())
        {
            return Err(bad(format!(
                "contains `{}`; & ^ [ ] {{ }} | < > / \\ \" and spaces are not allowed",
                c.escape_debug()
            )));
        }
        Ok(Self(id.to_owned()))
    }

    /// An id made from text that may hold anything: each character the rule refuses becomes
    /// `-`, and the text is cut to the longest id (an empty text gives `deployment`).
    pub fn sanitized(text: &str) -> Self {
        let mut id: String = text
            .chars()
            .map(|c| {
                if DEPLOYMENT_ID_FORBIDDEN.contains(&c) || c.is_whitespace() || c.is_control() {
                    '-'
                } else {
                    c
                }
            })
            .take(Self::MAX_CHARS)
            .collect();
        if id.is_empty() {
            id = "deployment".into();
        }
        Self(id)
    }

    /// A new deployment's id when none is given: `NAME-VERSION-SECONDS`, lower case.
    pub fn generated(update: &UpdateId, unix_seconds: u64) -> Self {
        Self::sanitized(
            &format!("{}-{}-{unix_seconds}", update.name(), update.version()).to_lowercase(),
        )
    }

    /// A release stage's deployment id: `VERSION-STAGE`, with anything but letters, digits and
    /// `-` as `-`.
    pub fn for_stage(update: &UpdateId, stage: &str) -> Self {
        let raw = format!("{}-{}", update.version().as_str().replace('.', "-"), stage);
        Self::sanitized(
            &raw.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
                .collect::<String>(),
        )
    }

    /// The id of the cloud-initiated rollback of this deployment: `ID-rollback`, or
    /// `rollback-` and 16 hex digits of its SHA-256 when that would be too long.
    pub fn rollback(&self) -> Self {
        let id = format!("{}-rollback", self.0);
        if id.chars().count() <= Self::MAX_CHARS {
            return Self(id);
        }
        Self(format!("rollback-{}", &crate::Sha256::digest(self.0.as_bytes()).to_hex()[..16]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DeploymentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl std::fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeploymentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl std::ops::Deref for DeploymentId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<String> for DeploymentId {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<DeploymentId> for String {
    fn eq(&self, other: &DeploymentId) -> bool {
        *self == other.0
    }
}

impl PartialEq<&str> for DeploymentId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<str> for DeploymentId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// A Device Update group id: the `ADUGroup` tag of its devices (1-200 letters, digits and
/// `. - _ ~`), or `$default` for the devices without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct GroupId(String);

impl GroupId {
    /// The group of devices without an `ADUGroup` tag.
    pub const DEFAULT: &str = "$default";

    /// Checks `id`.
    pub fn new(id: &str) -> Result<Self, IdError> {
        let ok = id == Self::DEFAULT
            || ((1..=200).contains(&id.chars().count())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~')));
        if !ok {
            return Err(IdError {
                what: "group id",
                id: id.to_owned(),
                why: "is not 1-200 letters, digits and . - _ ~ (or $default)".into(),
            });
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for GroupId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GroupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl std::ops::Deref for GroupId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<String> for GroupId {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<GroupId> for String {
    fn eq(&self, other: &GroupId) -> bool {
        *self == other.0
    }
}

impl PartialEq<&str> for GroupId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<str> for GroupId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// `Deployment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Deployment id.
    pub deployment_id: DeploymentId,
    /// When it starts.
    pub start_date_time: String,
    /// What it deploys.
    pub update: UpdateInfo,
    /// To which group.
    pub group_id: GroupId,
    /// The subgroups it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class_subgroups: Option<Vec<String>>,
    /// Canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_canceled: Option<bool>,
    /// Retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_retried: Option<bool>,
    /// Cloud-initiated rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_policy: Option<RollbackPolicy>,
    /// Whether this deployment is itself a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_cloud_initiated_rollback: Option<bool>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Deployment {
    /// A deployment of `update` to `group` under `id`, starting at `start`: the one way
    /// otaforge makes one (the CLI, a release stage, serve's cloud rollback).
    pub fn new(id: DeploymentId, group: GroupId, update: UpdateId, start: &str) -> Self {
        Self {
            deployment_id: id,
            start_date_time: start.to_owned(),
            update: UpdateInfo::new(update),
            group_id: group,
            device_class_subgroups: None,
            is_canceled: None,
            is_retried: None,
            rollback_policy: None,
            is_cloud_initiated_rollback: None,
            extra: Extra::new(),
        }
    }
}

string_enum! {
    /// `DeploymentState`.
    DeploymentState {
        Active = "Active",
        ActiveWithSubgroupFailures = "ActiveWithSubgroupFailures",
        Failed = "Failed",
        Inactive = "Inactive",
        Canceled = "Canceled",
    }
}

string_enum! {
    /// `DeviceClassSubgroupDeploymentState`.
    SubgroupDeploymentState {
        Active = "Active", Failed = "Failed", Inactive = "Inactive", Canceled = "Canceled"
    }
}

/// `DeviceClassSubgroupDeploymentStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubgroupDeploymentStatus {
    /// Group id.
    pub group_id: String,
    /// Class id.
    pub device_class_id: String,
    /// State.
    pub deployment_state: SubgroupDeploymentState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_devices: Option<u64>,
    /// Devices installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_in_progress_count: Option<u64>,
    /// Devices failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_completed_failed_count: Option<u64>,
    /// Devices succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_completed_succeeded_count: Option<u64>,
    /// Devices canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices_canceled_count: Option<u64>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DeploymentStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Group id.
    pub group_id: String,
    /// State.
    pub deployment_state: DeploymentState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Per subgroup.
    pub subgroup_status: Vec<SubgroupDeploymentStatus>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DeploymentDeviceState`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentDeviceState {
    /// Device id.
    pub device_id: String,
    /// Module id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Retries.
    pub retry_count: u64,
    /// Whether a newer deployment took over.
    pub moved_on_to_new_deployment: bool,
    /// State.
    pub device_state: DeviceDeploymentState,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_and_group_ids_follow_adus_rules() {
        for ok in ["deploymentId", "rollout-2026-11-29", "a", &"x".repeat(73)] {
            assert!(DeploymentId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "a{b", "quote\"d", "tab\t", &"x".repeat(74)] {
            let e = DeploymentId::new(bad).unwrap_err();
            assert!(e.to_string().starts_with("deployment id"), "{e}");
        }
        // What otaforge makes is valid by construction, whatever it is made from.
        let id: UpdateId = "contoso/Toaster Pro/1.2.3"
            .parse()
            .unwrap_or_else(|_| UpdateId::new("contoso", "toaster", "1.2.3").unwrap());
        for made in [
            DeploymentId::for_stage(&id, "canary ring/1"),
            DeploymentId::generated(&id, 1_700_000_000),
            DeploymentId::sanitized(&"a b/c".repeat(40)),
            DeploymentId::sanitized(""),
            DeploymentId::new(&"x".repeat(73)).unwrap().rollback(),
            DeploymentId::new("d1").unwrap().rollback(),
        ] {
            assert_eq!(DeploymentId::new(made.as_str()).as_ref(), Ok(&made), "{made}");
        }
        assert_eq!(DeploymentId::for_stage(&id, "canary").as_str(), "1-2-3-canary");
        assert_eq!(DeploymentId::new("d1").unwrap().rollback().as_str(), "d1-rollback");
        assert!(serde_json::from_str::<DeploymentId>("\"a b\"").is_err());
        for ok in ["prod", "$default", "a.b-c_d~e"] {
            assert!(GroupId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "$other", &"g".repeat(201)] {
            assert!(GroupId::new(bad).is_err(), "{bad}");
        }
    }
}

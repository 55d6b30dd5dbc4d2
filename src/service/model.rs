//! The JSON shapes of the Device Update API (camelCase, as in the specification). Documents the
//! service defines keep fields otaforge does not know, so they round-trip.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One update in an import request (`ImportUpdateInputItem`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportItem {
    /// Where the import manifest is, and its exact size and digest.
    pub import_manifest: ImportManifestMetadata,
    /// Optional display name, 1..512 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friendly_name: Option<String>,
    /// Every payload and related file the manifest names, with a URL to fetch it (1..10).
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
    pub hashes: BTreeMap<String, String>,
}

/// `FileImportMetadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileImportMetadata {
    /// The file name as the manifest spells it.
    pub filename: String,
    /// Where to fetch it.
    pub url: String,
}

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

/// `UpdateOperation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateOperation {
    /// Operation id.
    pub operation_id: String,
    /// Status.
    pub status: OperationStatus,
    /// The update (once the manifest was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Value>,
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
    pub extra: Map<String, Value>,
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
    pub innererror: Option<Value>,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_date_time: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
            extra: Map::new(),
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

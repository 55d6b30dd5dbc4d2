//! Typed import manifest v5, as the service reads it.
//!
//! Import manifests are defined by Microsoft, not by us, so every object keeps the fields it does
//! not know in an `extra` map: reading and writing a manifest round-trips it. Field order in the
//! structs is the order written out, which keeps generated manifests byte-for-byte reproducible.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::id::UpdateId;
use super::name::FileName;
use crate::hash::Sha256;

/// The only `manifestVersion` this module reads and writes.
pub const MANIFEST_VERSION: &str = "5.0";

/// An ADU import manifest, version 5.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportManifest {
    /// Optional JSON schema reference.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The update's identity.
    pub update_id: UpdateId,
    /// Human description, 1..512 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// False for child updates that may only be installed through a parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_deployable: Option<bool>,
    /// Device property sets this update installs on; one object per device class.
    pub compatibility: Vec<Map<String, Value>>,
    /// The steps the agent runs, in order.
    pub instructions: Instructions,
    /// Payload files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// Always "5.0".
    pub manifest_version: String,
    /// ISO 8601 creation time.
    pub created_date_time: String,
    /// Fields this version of otaforge does not know, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `instructions` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instructions {
    /// Steps, run in order.
    pub steps: Vec<Step>,
}

/// One installation step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Step {
    /// Installs another (child) update.
    Reference(ReferenceStep),
    /// Runs a handler on the device with some of this update's files.
    Inline(InlineStep),
}

/// Marker for `"type": "reference"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferenceType {
    /// The only value.
    #[serde(rename = "reference")]
    Reference,
}

/// Marker for `"type": "inline"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InlineType {
    /// The only value.
    #[serde(rename = "inline")]
    Inline,
}

/// A step that installs a child update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceStep {
    /// Always `reference`.
    #[serde(rename = "type")]
    pub kind: ReferenceType,
    /// Optional description, 1..64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The child update.
    pub update_id: UpdateId,
}

/// A step that runs a handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlineStep {
    /// `inline`, or absent (which means inline).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<InlineType>,
    /// Optional description, 1..64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Handler id such as `microsoft/swupdate:2`.
    pub handler: String,
    /// Names of the files (from the manifest's `files`) passed to the handler.
    pub files: Vec<String>,
    /// Arguments for the handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_properties: Option<Map<String, Value>>,
}

/// The hashes of a file; `sha256` is mandatory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hashes {
    /// Base64 SHA-256 of the file.
    pub sha256: Sha256,
    /// Other algorithms, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A payload file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct File {
    /// File name, unique within the update (a plain name: no path).
    pub filename: FileName,
    /// Size in bytes.
    pub size_in_bytes: u64,
    /// Digests of the contents.
    pub hashes: Hashes,
    /// Pass-through properties for the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    /// Files that help download this one, such as a delta from an older image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_files: Vec<RelatedFile>,
    /// The handler that uses the related files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_handler: Option<DownloadHandler>,
    /// Unknown fields, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A file related to a payload file (for example a delta that rebuilds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelatedFile {
    /// File name, unique within the update (a plain name: no path).
    pub filename: FileName,
    /// Size in bytes.
    pub size_in_bytes: u64,
    /// Digests of the contents.
    pub hashes: Hashes,
    /// Pass-through properties, e.g. `microsoft.sourceFileHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    /// Unknown fields, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `downloadHandler` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadHandler {
    /// Handler id such as `otaforge/delta:1`.
    pub id: String,
}

impl ImportManifest {
    /// Serializes as pretty JSON with a trailing newline; the same manifest gives the same bytes.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// The default file name ADU tools and the portal expect for this manifest.
    pub fn default_file_name(&self) -> String {
        let id = &self.update_id;
        format!("{}.{}.{}.importmanifest.json", id.provider(), id.name(), id.version())
    }

    /// The reference steps' child update ids.
    pub fn references(&self) -> impl Iterator<Item = &UpdateId> {
        self.instructions.steps.iter().filter_map(|s| match s {
            Step::Reference(r) => Some(&r.update_id),
            Step::Inline(_) => None,
        })
    }

    /// Every payload and related file name with its size, payload files first.
    pub fn all_files(&self) -> impl Iterator<Item = (&FileName, u64, &Sha256)> {
        self.files.iter().map(|f| (&f.filename, f.size_in_bytes, &f.hashes.sha256)).chain(
            self.files.iter().flat_map(|f| {
                f.related_files.iter().map(|r| (&r.filename, r.size_in_bytes, &r.hashes.sha256))
            }),
        )
    }

    /// Whether any step is a reference step (a parent update).
    pub fn is_parent(&self) -> bool {
        self.references().next().is_some()
    }
}

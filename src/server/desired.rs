//! What a deployment writes into a device's twin: the desired `deviceUpdate.service` property
//! that an ADU agent in goal-state mode reads (adu.md §5.1, §5.2), as the typed documents of
//! `service::agent`.
//!
//! `workflow` (`action` 3 = process the deployment, 255 = cancel; `id` = the deployment id;
//! `retryTimestamp` after a retry), `updateManifest` (the service-made [`UpdateManifest`], as a
//! JSON string that the official update manifest schema accepts: files keyed by file id, steps
//! naming file ids, related files listed under their file), `updateManifestSignature` (ADU's
//! RS256 JWS, `sign::adu`), and `fileUrls` (file id → a signed, expiring read URL of serve's
//! content store).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::iothub::related_file_id;
use crate::service::agent::{
    DesiredComponent, ManifestFile, ManifestInstructions, ManifestRelatedFile, ManifestStep,
    ServiceProperty, UpdateManifest, Workflow,
};
use crate::service::{Update, UpdateFile};

/// The update manifest of an update (files keyed by id, steps naming ids) and every file it
/// names, as `(file id, base64 SHA-256)`, payload and related files alike.
pub fn update_manifest(
    update: &Update,
    files: &[UpdateFile],
) -> (UpdateManifest, Vec<(String, String)>) {
    let mut id_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut content = Vec::new();
    let mut manifest_files = BTreeMap::new();
    for f in files {
        id_of.insert(&f.file_name, &f.file_id);
        // The official schema has related files as a list; their URLs are in `fileUrls` under
        // `related_file_id` of their SHA-256.
        let related_files = f
            .related_files
            .iter()
            .map(|r| {
                let sha =
                    r.hashes.get(&crate::hash::HashAlgorithm::Sha256).cloned().unwrap_or_default();
                content.push((related_file_id(&sha), sha));
                ManifestRelatedFile {
                    file_name: r.file_name.clone(),
                    size_in_bytes: r.size_in_bytes,
                    hashes: r.hashes.clone(),
                    properties: r.properties.clone(),
                    extra: Map::new(),
                }
            })
            .collect();
        content.push((f.file_id.clone(), f.sha256().unwrap_or_default().to_owned()));
        manifest_files.insert(
            f.file_id.clone(),
            ManifestFile {
                file_name: f.file_name.clone(),
                size_in_bytes: f.size_in_bytes,
                hashes: f.hashes.clone(),
                related_files,
                download_handler: f.download_handler.clone(),
                properties: f.properties.clone(),
                extra: Map::new(),
            },
        );
    }
    let steps = update
        .instructions
        .iter()
        .flat_map(|i| &i.steps)
        .filter(|s| !s.is_reference())
        .map(|s| ManifestStep {
            handler: s.handler.clone(),
            files: s
                .files
                .iter()
                .flatten()
                .filter_map(|name| id_of.get(name.as_str()).map(|id| (*id).to_owned()))
                .collect(),
            handler_properties: s.handler_properties.clone(),
            extra: Map::new(),
        })
        .collect();
    let manifest = UpdateManifest {
        // The official update manifest schema fixes "4"; current agents' test data say "5"
        // (adu.md §5.2). The schema is what the tests check.
        manifest_version: "4".into(),
        update_id: update.update_id.clone(),
        compatibility: update.compatibility.clone(),
        instructions: ManifestInstructions { steps },
        files: manifest_files,
        created_date_time: update.created_date_time.clone(),
        extra: Map::new(),
    };
    (manifest, content)
}

/// What a device needs to install an update: the update manifest string, its signature, and a
/// URL per file id.
#[derive(Debug, Clone)]
pub struct DesiredUpdate {
    /// The update manifest, exactly as signed.
    pub manifest: String,
    /// `updateManifestSignature`.
    pub signature: String,
    /// File id → read URL.
    pub file_urls: BTreeMap<String, String>,
}

/// The desired `deviceUpdate` component for a deployment, as a desired-properties patch whose
/// top-level property replaces the one before whole.
pub fn service_property(
    deployment_id: &str,
    action: u64,
    retry_timestamp: Option<&str>,
    update: Option<&DesiredUpdate>,
) -> Map<String, Value> {
    let mut service = ServiceProperty {
        workflow: Workflow {
            action: Some(action),
            id: deployment_id.to_owned(),
            retry_timestamp: retry_timestamp.map(str::to_owned),
            extra: Map::new(),
        },
        ..ServiceProperty::default()
    };
    if let Some(u) = update {
        service.update_manifest = Some(u.manifest.clone());
        service.update_manifest_signature = Some(u.signature.clone());
        service.file_urls = u.file_urls.clone();
    }
    let mut patch = Map::new();
    patch.insert(
        crate::service::agent::COMPONENT.into(),
        serde_json::to_value(DesiredComponent::new(service)).unwrap_or(Value::Null),
    );
    patch
}

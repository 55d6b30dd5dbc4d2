//! What a deployment writes into a device's twin: the desired `deviceUpdate.service` property
//! that an ADU agent in goal-state mode reads (adu.md §5.1, §5.2).
//!
//! `workflow` (`action` 3 = process the deployment, 255 = cancel; `id` = the deployment id;
//! `retryTimestamp` after a retry), `updateManifest` (the service-made update manifest, as a JSON
//! string that the official update manifest schema accepts: files keyed by file id, steps naming
//! file ids, related files listed under their file),
//! `updateManifestSignature` (ADU's RS256 JWS, `sign::adu`), and `fileUrls` (file id → a signed,
//! expiring read URL of serve's content store).

use serde_json::{Map, Value, json};

use crate::service::{Update, UpdateFile};

/// The agent's goal-state action for a deployment.
pub const ACTION_PROCESS: u64 = 3;
/// The agent's action for a canceled deployment.
pub const ACTION_CANCEL: u64 = 255;

use crate::iothub::related_file_id;

/// The update manifest of an update (files keyed by id, steps naming ids) and every file it
/// names, as `(file id, base64 SHA-256)`, payload and related files alike.
pub fn update_manifest(update: &Update, files: &[UpdateFile]) -> (String, Vec<(String, String)>) {
    let mut by_name: Map<String, Value> = Map::new();
    let mut content = Vec::new();
    let mut file_docs = Map::new();
    for f in files {
        by_name.insert(f.file_name.clone(), Value::String(f.file_id.clone()));
        let mut doc = json!({
            "filename": f.file_name,
            "sizeInBytes": f.size_in_bytes,
            "hashes": f.hashes,
        });
        if let Some(h) = &f.download_handler {
            doc["downloadHandler"] = json!({"id": h.id});
        }
        if let Some(p) = &f.properties {
            doc["properties"] = Value::Object(p.clone());
        }
        if !f.related_files.is_empty() {
            // The official schema has related files as a list; their URLs are in `fileUrls`
            // under `related_file_id` of their SHA-256.
            let mut related = Vec::new();
            for r in &f.related_files {
                let sha =
                    r.hashes.get(&crate::hash::HashAlgorithm::Sha256).cloned().unwrap_or_default();
                let mut rd = json!({"filename": r.file_name, "sizeInBytes": r.size_in_bytes, "hashes": r.hashes});
                if let Some(p) = &r.properties {
                    rd["properties"] = Value::Object(p.clone());
                }
                related.push(rd);
                content.push((related_file_id(&sha), sha));
            }
            doc["relatedFiles"] = Value::Array(related);
        }
        content.push((f.file_id.clone(), f.sha256().unwrap_or_default().to_owned()));
        file_docs.insert(f.file_id.clone(), doc);
    }
    let steps: Vec<Value> = update
        .instructions
        .iter()
        .flat_map(|i| &i.steps)
        .filter(|s| !s.is_reference())
        .map(|s| {
            let ids: Vec<Value> =
                s.files.iter().flatten().filter_map(|name| by_name.get(name).cloned()).collect();
            let mut step = json!({"handler": s.handler, "files": ids});
            if let Some(p) = &s.handler_properties {
                step["handlerProperties"] = Value::Object(p.clone());
            }
            step
        })
        .collect();
    let manifest = json!({
        // The official update manifest schema fixes "4"; current agents' test data say "5"
        // (adu.md §5.2). The schema is what the tests check.
        "manifestVersion": "4",
        "updateId": update.update_id,
        "compatibility": update.compatibility,
        "instructions": {"steps": steps},
        "files": file_docs,
        "createdDateTime": update.created_date_time,
    });
    (manifest.to_string(), content)
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
    pub file_urls: Map<String, Value>,
}

/// The desired `service` property for a deployment.
pub fn service_property(
    deployment_id: &str,
    action: u64,
    retry_timestamp: Option<&str>,
    update: Option<&DesiredUpdate>,
) -> Value {
    let mut workflow = json!({"action": action, "id": deployment_id});
    if let Some(r) = retry_timestamp {
        workflow["retryTimestamp"] = json!(r);
    }
    let mut service = json!({"workflow": workflow});
    if let Some(u) = update {
        service["updateManifest"] = json!(u.manifest);
        service["updateManifestSignature"] = json!(u.signature);
        service["fileUrls"] = Value::Object(u.file_urls.clone());
    }
    json!({"deviceUpdate": {"__t": "c", "service": service}})
}

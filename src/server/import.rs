//! What the embedded service does with an import request, as ADU does: fetch the manifest and
//! every file from the given URLs, check sizes and SHA-256 against the request and the
//! manifest, validate the manifest with the same rules as `manifest validate`, enforce the
//! service's limits and conflicts, and only then make the updates visible (one transaction).
//!
//! Error codes follow the ADU documentation where it names one (`UpdateAlreadyExists`,
//! `CannotDownload`, `CannotProcessImportManifest`, `CannotProcessUpdateFile`,
//! `ContentFileCannotDownload`); the limit errors, which the documentation gives only as
//! messages, use the codes listed in `docs/serve.md`. Details name the file or JSON path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::store::NewUpdate;
use crate::Sha256;
use crate::manifest::{self, ImportManifest};
use crate::service::{ErrorBody, ImportItem};

/// ADU's per-instance limits (Standard SKU; reference/adu.md §7.1).
pub mod limits {
    /// Updates per instance.
    pub const UPDATES: usize = 100;
    /// Providers per instance.
    pub const PROVIDERS: usize = 25;
    /// Names per provider.
    pub const NAMES_PER_PROVIDER: usize = 25;
    /// Versions per provider and name.
    pub const VERSIONS_PER_NAME: usize = 100;
    /// Largest manifest otaforge serve fetches.
    pub const MANIFEST_BYTES: u64 = 2 << 20;
    /// Largest file (2 GB).
    pub const FILE_BYTES: u64 = 2_000_000_000;
}

/// An import that failed with an ADU error.
pub type Failure = ErrorBody;

/// Fetches a URL into memory with a size cap.
async fn fetch(http: &reqwest::Client, url: &str, cap: u64) -> Result<Vec<u8>, String> {
    let resp = http.get(url).send().await.map_err(|e| redact_url(&e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("the URL answered {status}"));
    }
    if resp.content_length().is_some_and(|l| l > cap) {
        return Err(format!("it is larger than {cap} bytes"));
    }
    let bytes = resp.bytes().await.map_err(|e| redact_url(&e.to_string()))?;
    if bytes.len() as u64 > cap {
        return Err(format!("it is larger than {cap} bytes"));
    }
    Ok(bytes.to_vec())
}

/// Streams a URL into a temp file in `dir`, hashing as it goes; at most `cap` bytes. Nothing
/// is visible until the caller commits the returned file.
async fn fetch_to_file(
    http: &reqwest::Client,
    url: &str,
    cap: u64,
    dir: &std::path::Path,
) -> Result<(crate::fsutil::AtomicFile, u64, Sha256), String> {
    use std::io::Write as _;
    let mut resp = http.get(url).send().await.map_err(|e| redact_url(&e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("the URL answered {status}"));
    }
    let mut file =
        crate::fsutil::AtomicFile::new(&dir.join("incoming")).map_err(|e| e.to_string())?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| redact_url(&e.to_string()))? {
        total += chunk.len() as u64;
        if total > cap {
            // More than the manifest declares: stop reading; the caller reports the mismatch.
            break;
        }
        sha2::Digest::update(&mut hasher, &chunk);
        file.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    Ok((file, total, Sha256::from_bytes(sha2::Digest::finalize(hasher).into())))
}

fn redact_url(s: &str) -> String {
    crate::storage::sas::redact(s, &[])
}

/// What an import produced, ready to commit.
pub struct Prepared {
    /// The updates, parent first as requested.
    pub updates: Vec<NewUpdate>,
    /// Content to keep: `(sha256 hex, fetched file)`; committed before the store commit.
    pub content: Vec<(String, crate::fsutil::AtomicFile)>,
}

fn detail(code: &str, target: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message).with_target(target)
}

/// Runs every check and fetch of an import. `existing` is every update the instance holds.
pub async fn prepare(
    http: &reqwest::Client,
    items: &[ImportItem],
    existing: &[Value],
    now: &str,
    content_dir: &std::path::Path,
) -> Result<Prepared, Failure> {
    let mut manifests: Vec<(ImportManifest, PathBuf)> = Vec::new();
    // 1. Every manifest: fetched, matching the request, valid.
    for (i, item) in items.iter().enumerate() {
        let target = format!("[{i}].importManifest");
        let bytes =
            fetch(http, &item.import_manifest.url, limits::MANIFEST_BYTES).await.map_err(|e| {
                ErrorBody::new(
                    "CannotDownload",
                    format!("cannot download the import manifest of item {i}: {e}"),
                )
                .with_target(&target)
            })?;
        let declared = item.import_manifest.hashes.get("sha256").cloned().unwrap_or_default();
        let actual = Sha256::digest(&bytes);
        if bytes.len() as u64 != item.import_manifest.size_in_bytes
            || actual.to_base64() != declared
        {
            return Err(ErrorBody::new(
                "CannotProcessImportManifest",
                format!(
                    "the import manifest of item {i} is {} bytes with sha256 {actual}; the request says {} bytes with sha256 {declared}",
                    bytes.len(),
                    item.import_manifest.size_in_bytes
                ),
            )
            .with_target(&target)
            .with_details(vec![detail("HashMismatch", &target, "size or sha256 differs from importManifest")]));
        }
        let name = PathBuf::from(format!("item{i}.importmanifest.json"));
        let checked = manifest::check_bytes(&name, &bytes);
        let errors: Vec<ErrorBody> = checked
            .findings
            .iter()
            .filter(|f| f.severity == crate::Severity::Error)
            .map(|f| detail(f.rule, &f.path.to_string(), f.message.clone()))
            .collect();
        match checked.manifest {
            Some(m) if errors.is_empty() => manifests.push((m, name)),
            _ => {
                let code = if errors.iter().any(|e| e.code == "json-syntax") {
                    "CannotParse"
                } else {
                    "CannotProcessImportManifest"
                };
                return Err(ErrorBody::new(
                    code,
                    format!(
                        "the import manifest of item {i} is invalid ({} problems)",
                        errors.len()
                    ),
                )
                .with_target(&target)
                .with_details(errors));
            }
        }
    }
    // 2. Across the request: references, duplicate ids.
    let loaded: Vec<manifest::validate::Loaded<'_>> = manifests
        .iter()
        .map(|(m, p)| manifest::validate::Loaded { source: p, manifest: m })
        .collect();
    let set_errors: Vec<ErrorBody> = manifest::validate::validate_set(&loaded)
        .iter()
        .enumerate()
        .flat_map(|(i, fs)| {
            fs.iter()
                .filter(|f| f.severity == crate::Severity::Error)
                .map(move |f| {
                    detail(
                        f.rule,
                        &format!("[{i}]{}", f.path.to_string().trim_start_matches('$')),
                        f.message.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    // A reference to an update already in the instance is fine; validate_set only knows the
    // request, so its unresolved-reference findings are rechecked against the store.
    let existing_ids: BTreeSet<(String, String, String)> =
        existing.iter().filter_map(update_key).collect();
    let set_errors: Vec<ErrorBody> = set_errors
        .into_iter()
        .filter(|e| {
            if e.code != "reference-missing" {
                return true;
            }
            !existing_ids.iter().any(|(p, n, v)| e.message.contains(&format!("{p}/{n}/{v}")))
        })
        .collect();
    if !set_errors.is_empty() {
        return Err(ErrorBody::new(
            "CannotProcessImportManifest",
            "the updates of this request do not fit together",
        )
        .with_details(set_errors));
    }
    // 3. Conflicts and limits against the instance.
    let mut ids = existing_ids.clone();
    for (m, _) in &manifests {
        let key = (
            m.update_id.provider.clone(),
            m.update_id.name.clone(),
            m.update_id.version.to_string(),
        );
        if existing_ids.contains(&key) {
            return Err(ErrorBody::new(
                "UpdateAlreadyExists",
                format!("update {}/{}/{} is already imported", key.0, key.1, key.2),
            )
            .with_target(format!("{}/{}/{}", key.0, key.1, key.2)));
        }
        for set in &m.compatibility {
            for u in existing {
                let Some((p, n, _)) = update_key(u) else { continue };
                if (p.as_str(), n.as_str())
                    == (m.update_id.provider.as_str(), m.update_id.name.as_str())
                {
                    continue;
                }
                let same = u
                    .get("compatibility")
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.iter().any(|x| x.as_object() == Some(set)));
                if same {
                    return Err(ErrorBody::new(
                        "CompatibilityConflict",
                        format!(
                            "cannot import additional update provider/name {}/{} with the specified compatibility: {p}/{n} already uses {}",
                            m.update_id.provider,
                            m.update_id.name,
                            Value::Object(set.clone())
                        ),
                    )
                    .with_target("compatibility"));
                }
            }
        }
        ids.insert(key);
    }
    let providers: BTreeSet<&String> = ids.iter().map(|(p, _, _)| p).collect();
    let mut names: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    let mut versions: BTreeMap<(&String, &String), usize> = BTreeMap::new();
    for (p, n, _) in &ids {
        names.entry(p).or_default().insert(n);
        *versions.entry((p, n)).or_default() += 1;
    }
    if ids.len() > limits::UPDATES {
        return Err(ErrorBody::new(
            "ExceedsMaxUpdates",
            format!(
                "an instance holds at most {} updates; this import would make {}",
                limits::UPDATES,
                ids.len()
            ),
        ));
    }
    if providers.len() > limits::PROVIDERS {
        return Err(ErrorBody::new(
            "ExceedsMaxProviders",
            format!("cannot import additional update provider: at most {}", limits::PROVIDERS),
        ));
    }
    if let Some((p, ns)) = names.iter().find(|(_, ns)| ns.len() > limits::NAMES_PER_PROVIDER) {
        return Err(ErrorBody::new(
            "ExceedsMaxNames",
            format!(
                "cannot import additional update name for provider {p}: at most {} ({})",
                limits::NAMES_PER_PROVIDER,
                ns.len()
            ),
        ));
    }
    if let Some(((p, n), c)) = versions.iter().find(|(_, c)| **c > limits::VERSIONS_PER_NAME) {
        return Err(ErrorBody::new(
            "ExceedsMaxVersions",
            format!(
                "cannot import additional update version for {p}/{n}: at most {} ({c})",
                limits::VERSIONS_PER_NAME
            ),
        ));
    }
    // 4. Files: every manifest file provided, fetched and matching; nothing extra.
    let mut content = Vec::new();
    let mut updates = Vec::new();
    for (i, ((m, _), item)) in manifests.iter().zip(items).enumerate() {
        let mut urls: BTreeMap<&str, &str> = BTreeMap::new();
        for f in &item.files {
            if urls.insert(f.filename.as_str(), f.url.as_str()).is_some() {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!("item {i} lists {} twice", f.filename),
                )
                .with_target(&f.filename));
            }
        }
        let mut needed: Vec<(&str, u64, Sha256)> = Vec::new();
        for f in &m.files {
            needed.push((&f.filename, f.size_in_bytes, f.hashes.sha256));
            for r in &f.related_files {
                needed.push((&r.filename, r.size_in_bytes, r.hashes.sha256));
            }
        }
        for name in urls.keys() {
            if !needed.iter().any(|(n, _, _)| n == name) {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!("item {i} lists {name}, which its manifest does not name"),
                )
                .with_target(*name));
            }
        }
        let mut file_docs = Vec::new();
        for (name, size, sha) in &needed {
            let Some(url) = urls.get(name) else {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!(
                        "the manifest of item {i} names {name}, but the request gives no URL for it"
                    ),
                )
                .with_target(*name)
                .with_details(vec![detail(
                    "MissingFile",
                    name,
                    "add it to files[] with a URL",
                )]));
            };
            if *size > limits::FILE_BYTES {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!("{name} is larger than 2 GB"),
                )
                .with_target(*name));
            }
            let (file, got, actual) =
                fetch_to_file(http, url, *size, content_dir).await.map_err(|e| {
                    ErrorBody::new(
                        "ContentFileCannotDownload",
                        format!("cannot download {name}: {e}"),
                    )
                    .with_target(*name)
                })?;
            if got != *size || actual != *sha {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    if got > *size {
                        format!("{name} at its URL is larger than the {size} bytes the manifest declares")
                    } else {
                        format!("{name} is {got} bytes with sha256 {actual}; the manifest says {size} bytes with sha256 {sha}")
                    },
                )
                .with_target(*name)
                .with_details(vec![detail("HashMismatch", name, "the file at the URL is not the one the manifest describes")]));
            }
            content.push((actual.to_hex(), file));
        }
        // The service's documents.
        for f in &m.files {
            let file_id = file_id(&m.update_id.to_string(), &f.filename);
            let mut doc = Map::new();
            doc.insert("fileId".into(), json!(file_id));
            doc.insert("fileName".into(), json!(f.filename));
            doc.insert("sizeInBytes".into(), json!(f.size_in_bytes));
            doc.insert("hashes".into(), json!({"sha256": f.hashes.sha256.to_base64()}));
            if let Some(p) = &f.properties {
                doc.insert("properties".into(), Value::Object(p.clone()));
            }
            if !f.related_files.is_empty() {
                doc.insert(
                    "relatedFiles".into(),
                    serde_json::to_value(&f.related_files).unwrap_or_default(),
                );
            }
            if let Some(h) = &f.download_handler {
                doc.insert("downloadHandler".into(), serde_json::to_value(h).unwrap_or_default());
            }
            doc.insert(
                "etag".into(),
                json!(format!("\"{}\"", &Sha256::digest(file_id.as_bytes()).to_hex()[..32])),
            );
            file_docs.push((file_id, Value::Object(doc)));
        }
        let mut body = Map::new();
        body.insert("updateId".into(), json!({"provider": m.update_id.provider, "name": m.update_id.name, "version": m.update_id.version.to_string()}));
        if let Some(d) = &m.description {
            body.insert("description".into(), json!(d));
        }
        if let Some(n) = &item.friendly_name {
            body.insert("friendlyName".into(), json!(n));
        }
        body.insert("isDeployable".into(), json!(m.is_deployable.unwrap_or(true)));
        body.insert(
            "compatibility".into(),
            Value::Array(m.compatibility.iter().cloned().map(Value::Object).collect()),
        );
        body.insert(
            "instructions".into(),
            serde_json::to_value(&m.instructions).unwrap_or_default(),
        );
        body.insert("manifestVersion".into(), json!(m.manifest_version));
        body.insert("importedDateTime".into(), json!(now));
        body.insert("createdDateTime".into(), json!(m.created_date_time));
        body.insert(
            "etag".into(),
            json!(format!(
                "\"{}\"",
                &Sha256::digest(format!("{}{now}", m.update_id).as_bytes()).to_hex()[..32]
            )),
        );
        updates.push(NewUpdate {
            provider: m.update_id.provider.clone(),
            name: m.update_id.name.clone(),
            version: m.update_id.version.to_string(),
            body: Value::Object(body),
            files: file_docs,
        });
    }
    Ok(Prepared { updates, content })
}

/// A stable file id (ADU's are opaque strings).
fn file_id(update: &str, filename: &str) -> String {
    format!("f{}", &Sha256::digest(format!("{update}\n{filename}").as_bytes()).to_hex()[..20])
}

/// `(provider, name, version)` of an update document.
pub fn update_key(u: &Value) -> Option<(String, String, String)> {
    let id = u.get("updateId")?;
    Some((
        id.get("provider")?.as_str()?.to_owned(),
        id.get("name")?.as_str()?.to_owned(),
        id.get("version")?.as_str()?.to_owned(),
    ))
}

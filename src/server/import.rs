//! What the embedded service does with an import request, as ADU does, one function per stage:
//! [`fetch_manifests`] (fetch each manifest, check it against the request, validate it with the
//! rules of `manifest validate`), [`check_set`] (the updates of the request fit together),
//! [`check_instance`] (conflicts and limits against what the instance holds), [`fetch_files`]
//! (every file fetched, streamed to disk and checked against the manifest), and [`documents`]
//! (the service's `Update` and `UpdateFile` documents). [`prepare`] runs them in that order;
//! nothing becomes visible until the caller commits the result in one transaction.
//!
//! Error codes follow the ADU documentation where it names one (`UpdateAlreadyExists`,
//! `CannotDownload`, `CannotProcessImportManifest`, `CannotProcessUpdateFile`,
//! `ContentFileCannotDownload`); the limit errors, which the documentation gives only as
//! messages, use the codes listed in `docs/serve.md`. Details name the file or JSON path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime};

use super::store::NewUpdate;
use super::{Shared, now_string};
use crate::Sha256;
use crate::hash::HashAlgorithm;
use crate::limits;
use crate::manifest::{self, FileName, ImportManifest, UpdateId};
use crate::service::model::{DownloadHandler, Instructions, RelatedFile, Step};
use crate::service::{ErrorBody, ImportItem, Update, UpdateFile};
use crate::service::{OperationStatus, UpdateInfo, UpdateOperation};

/// An import that failed with an ADU error (boxed: it travels through every stage's `?`).
pub type Failure = Box<ErrorBody>;

/// Fetches a URL into memory with a size cap, read chunk by chunk: `Content-Length` is only a
/// claim, and a chunked body that never ends must stop at the cap, not fill the memory.
async fn fetch(http: &reqwest::Client, url: &str, cap: u64) -> Result<Vec<u8>, String> {
    let mut resp = http.get(url).send().await.map_err(|e| redact_url(&e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("the URL answered {status}"));
    }
    if resp.content_length().is_some_and(|l| l > cap) {
        return Err(format!("it is larger than {cap} bytes"));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| redact_url(&e.to_string()))? {
        if (bytes.len() + chunk.len()) as u64 > cap {
            return Err(format!("it is larger than {cap} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Streams a URL into a temp file in `dir`, hashing as it goes; at most `cap` bytes. Nothing
/// is visible until the caller commits the returned file.
async fn fetch_to_file(
    http: &reqwest::Client,
    url: &str,
    cap: u64,
    dir: &Path,
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
    /// What `manifest validate` warns about, for the operation to show.
    pub warnings: Vec<ErrorBody>,
}

fn detail(code: &str, target: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message).with_target(target)
}

/// A manifest fetched for an import item and valid on its own.
pub struct Fetched {
    /// The manifest.
    pub manifest: ImportManifest,
    /// The name findings refer to (`itemN.importmanifest.json`).
    pub source: PathBuf,
    /// Its warnings (`[i].importManifest` + JSON path as the target).
    pub warnings: Vec<ErrorBody>,
}

/// Stage 1: fetches each item's manifest, checks size and SHA-256 against the request, and
/// validates it with every single-document rule.
pub async fn fetch_manifests(
    http: &reqwest::Client,
    items: &[ImportItem],
) -> Result<Vec<Fetched>, Failure> {
    let mut out = Vec::new();
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
        let declared =
            item.import_manifest.hashes.get(&HashAlgorithm::Sha256).cloned().unwrap_or_default();
        let actual = Sha256::digest(&bytes);
        if bytes.len() as u64 != item.import_manifest.size_in_bytes
            || actual.to_base64() != declared
        {
            return Err(ErrorBody::new(
                "CannotProcessImportManifest",
                // What the URL returned is not echoed: the requester learns only that it is
                // not what they declared.
                format!(
                    "the import manifest of item {i} at its URL does not match the request's \
                     sizeInBytes {} and sha256 {declared}",
                    item.import_manifest.size_in_bytes
                ),
            )
            .with_target(&target)
            .with_details(vec![detail(
                "HashMismatch",
                &target,
                "size or sha256 differs from importManifest",
            )])
            .into());
        }
        let source = PathBuf::from(format!("item{i}.importmanifest.json"));
        let checked = manifest::check_bytes(&source, &bytes);
        let errors: Vec<ErrorBody> = checked
            .findings
            .iter()
            .filter(|f| f.severity == crate::Severity::Error)
            .map(|f| detail(f.rule, &f.path.to_string(), f.message.clone()))
            .collect();
        let warnings = checked
            .findings
            .iter()
            .filter(|f| f.severity == crate::Severity::Warning)
            .map(|f| {
                detail(f.rule, &format!("{target}{}", &f.path.to_string()[1..]), f.message.clone())
            })
            .collect();
        match checked.manifest {
            Some(manifest) if errors.is_empty() => out.push(Fetched { manifest, source, warnings }),
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
                .with_details(errors)
                .into());
            }
        }
    }
    Ok(out)
}

/// Stage 2: the updates of the request fit together (references, duplicate ids). A reference
/// to an update the instance already holds is fine.
pub fn check_set(fetched: &[Fetched], existing: &BTreeSet<UpdateId>) -> Result<(), Failure> {
    let loaded: Vec<manifest::validate::Loaded<'_>> = fetched
        .iter()
        .map(|f| manifest::validate::Loaded { source: &f.source, manifest: &f.manifest })
        .collect();
    let in_request: BTreeSet<&UpdateId> = fetched.iter().map(|f| &f.manifest.update_id).collect();
    let mut errors: Vec<ErrorBody> = Vec::new();
    for (i, fs) in manifest::validate::validate_set(&loaded).iter().enumerate() {
        for f in fs.iter().filter(|f| f.severity == crate::Severity::Error) {
            if f.rule == "reference-missing" {
                // validate_set knows only the request: recheck the reference against the store.
                let resolved = fetched[i]
                    .manifest
                    .references()
                    .filter(|r| !in_request.contains(r))
                    .all(|r| existing.contains(r));
                if resolved {
                    continue;
                }
            }
            errors.push(detail(
                f.rule,
                &format!("[{i}]{}", f.path.to_string().trim_start_matches('$')),
                f.message.clone(),
            ));
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(ErrorBody::new(
        "CannotProcessImportManifest",
        "the updates of this request do not fit together",
    )
    .with_details(errors)
    .into())
}

/// Stage 3: duplicates, compatibility conflicts and the instance's limits.
pub fn check_instance(fetched: &[Fetched], existing: &[Update]) -> Result<(), Failure> {
    let mut ids: BTreeSet<UpdateId> = existing.iter().map(|u| u.update_id.clone()).collect();
    for f in fetched {
        let m = &f.manifest;
        let id = &m.update_id;
        if existing.iter().any(|u| &u.update_id == id) {
            return Err(ErrorBody::new(
                "UpdateAlreadyExists",
                format!("update {id} is already imported"),
            )
            .with_target(id.to_string())
            .into());
        }
        for set in &m.compatibility {
            let other = existing.iter().find(|u| {
                (u.update_id.provider(), u.update_id.name()) != (id.provider(), id.name())
                    && u.compatibility.contains(set)
            });
            if let Some(u) = other {
                return Err(ErrorBody::new(
                    "CompatibilityConflict",
                    format!(
                        "cannot import additional update provider/name {}/{} with the specified compatibility: {}/{} already uses {}",
                        id.provider(),
                        id.name(),
                        u.update_id.provider(),
                        u.update_id.name(),
                        serde_json::Value::Object(set.clone())
                    ),
                )
                .with_target("compatibility").into());
            }
        }
        ids.insert(id.clone());
    }
    let providers: BTreeSet<&str> = ids.iter().map(UpdateId::provider).collect();
    let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut versions: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for id in &ids {
        names.entry(id.provider()).or_default().insert(id.name());
        *versions.entry((id.provider(), id.name())).or_default() += 1;
    }
    if ids.len() > limits::UPDATES_PER_INSTANCE {
        return Err(ErrorBody::new(
            "ExceedsMaxUpdates",
            format!(
                "an instance holds at most {} updates; this import would make {}",
                limits::UPDATES_PER_INSTANCE,
                ids.len()
            ),
        )
        .into());
    }
    if providers.len() > limits::PROVIDERS_PER_INSTANCE {
        return Err(ErrorBody::new(
            "ExceedsMaxProviders",
            format!(
                "cannot import additional update provider: at most {}",
                limits::PROVIDERS_PER_INSTANCE
            ),
        )
        .into());
    }
    if let Some((p, ns)) = names.iter().find(|(_, ns)| ns.len() > limits::NAMES_PER_PROVIDER) {
        return Err(ErrorBody::new(
            "ExceedsMaxNames",
            format!(
                "cannot import additional update name for provider {p}: at most {} ({})",
                limits::NAMES_PER_PROVIDER,
                ns.len()
            ),
        )
        .into());
    }
    if let Some(((p, n), c)) = versions.iter().find(|(_, c)| **c > limits::VERSIONS_PER_NAME) {
        return Err(ErrorBody::new(
            "ExceedsMaxVersions",
            format!(
                "cannot import additional update version for {p}/{n}: at most {} ({c})",
                limits::VERSIONS_PER_NAME
            ),
        )
        .into());
    }
    Ok(())
}

/// Stage 4: every file each manifest names, fetched from the request's URL and checked against
/// the manifest; nothing missing, nothing extra.
pub async fn fetch_files(
    http: &reqwest::Client,
    fetched: &[Fetched],
    items: &[ImportItem],
    content_dir: &Path,
) -> Result<Vec<(String, crate::fsutil::AtomicFile)>, Failure> {
    let mut content = Vec::new();
    for (i, (f, item)) in fetched.iter().zip(items).enumerate() {
        let mut urls: BTreeMap<&FileName, &str> = BTreeMap::new();
        for file in &item.files {
            if urls.insert(&file.filename, file.url.as_str()).is_some() {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!("item {i} lists {} twice", file.filename),
                )
                .with_target(file.filename.as_str())
                .into());
            }
        }
        let needed: Vec<(&FileName, u64, &Sha256)> = f.manifest.all_files().collect();
        if let Some(name) = urls.keys().find(|n| !needed.iter().any(|(m, _, _)| m == *n)) {
            return Err(ErrorBody::new(
                "CannotProcessUpdateFile",
                format!("item {i} lists {name}, which its manifest does not name"),
            )
            .with_target(name.as_str())
            .into());
        }
        for (name, size, sha) in needed {
            let Some(url) = urls.get(name) else {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!(
                        "the manifest of item {i} names {name}, but the request gives no URL for it"
                    ),
                )
                .with_target(name.as_str())
                .with_details(vec![detail("MissingFile", name, "add it to files[] with a URL")])
                .into());
            };
            if size > limits::MAX_FILE_BYTES {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!("{name} is larger than 2 GB"),
                )
                .with_target(name.as_str())
                .into());
            }
            let (file, got, actual) =
                fetch_to_file(http, url, size, content_dir).await.map_err(|e| {
                    ErrorBody::new(
                        "ContentFileCannotDownload",
                        format!("cannot download {name}: {e}"),
                    )
                    .with_target(name.as_str())
                })?;
            if got != size || actual != *sha {
                return Err(ErrorBody::new(
                    "CannotProcessUpdateFile",
                    format!(
                        "{name} at its URL does not match the manifest's sizeInBytes {size} and \
                         sha256 {sha}"
                    ),
                )
                .with_target(name.as_str())
                .with_details(vec![detail(
                    "HashMismatch",
                    name,
                    "the file at the URL is not the one the manifest describes",
                )])
                .into());
            }
            content.push((actual.to_hex(), file));
        }
    }
    Ok(content)
}

/// An entity tag derived from `seed` (the service's etags are opaque strings).
pub(super) fn etag(seed: &str) -> String {
    format!("\"{}\"", &Sha256::digest(seed.as_bytes()).to_hex()[..32])
}

fn sha256_map(sha: &Sha256) -> crate::service::model::Hashes {
    [(HashAlgorithm::Sha256, sha.to_base64())].into()
}

/// The service's documents of one imported manifest.
pub fn documents(m: &ImportManifest, friendly_name: Option<&str>, now: &str) -> NewUpdate {
    let id = &m.update_id;
    let files = m
        .files
        .iter()
        .map(|f| {
            let file_id = file_id(id, &f.filename);
            UpdateFile {
                etag: Some(etag(&file_id)),
                file_id,
                file_name: f.filename.to_string(),
                size_in_bytes: f.size_in_bytes,
                hashes: sha256_map(&f.hashes.sha256),
                mime_type: None,
                scan_result: None,
                scan_details: None,
                properties: f.properties.clone(),
                related_files: f
                    .related_files
                    .iter()
                    .map(|r| RelatedFile {
                        file_name: r.filename.to_string(),
                        size_in_bytes: r.size_in_bytes,
                        hashes: sha256_map(&r.hashes.sha256),
                        mime_type: None,
                        scan_result: None,
                        scan_details: None,
                        properties: r.properties.clone(),
                        extra: Default::default(),
                    })
                    .collect(),
                download_handler: f
                    .download_handler
                    .as_ref()
                    .map(|h| DownloadHandler { id: h.id.clone() }),
                extra: Default::default(),
            }
        })
        .collect();
    // The manifest's steps in the API's shape (same field names, so a JSON round trip).
    let steps: Vec<Step> = m
        .instructions
        .steps
        .iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    let update = Update {
        update_id: id.clone(),
        description: m.description.clone(),
        friendly_name: friendly_name.map(str::to_owned),
        is_deployable: Some(m.is_deployable.unwrap_or(true)),
        update_type: None,
        installed_criteria: None,
        compatibility: m.compatibility.clone(),
        instructions: Some(Instructions { steps, extra: Default::default() }),
        referenced_by: None,
        scan_result: None,
        manifest_version: m.manifest_version.clone(),
        imported_date_time: now.to_owned(),
        created_date_time: m.created_date_time.clone(),
        etag: Some(etag(&format!("{id}{now}"))),
        extra: Default::default(),
    };
    NewUpdate { update, files }
}

/// Runs every check and fetch of an import. `existing` is every update the instance holds.
pub async fn prepare(
    http: &reqwest::Client,
    items: &[ImportItem],
    existing: &[Update],
    now: &str,
    content_dir: &Path,
) -> Result<Prepared, Failure> {
    let fetched = fetch_manifests(http, items).await?;
    let existing_ids: BTreeSet<UpdateId> = existing.iter().map(|u| u.update_id.clone()).collect();
    check_set(&fetched, &existing_ids)?;
    check_instance(&fetched, existing)?;
    let content = fetch_files(http, &fetched, items, content_dir).await?;
    let updates = fetched
        .iter()
        .zip(items)
        .map(|(f, item)| documents(&f.manifest, item.friendly_name.as_deref(), now))
        .collect();
    let warnings = fetched.into_iter().flat_map(|f| f.warnings).collect();
    Ok(Prepared { updates, content, warnings })
}

/// A stable file id (ADU's are opaque strings).
fn file_id(update: &UpdateId, filename: &FileName) -> String {
    format!("f{}", &Sha256::digest(format!("{update}\n{filename}").as_bytes()).to_hex()[..20])
}

// ---- The operation an import runs as ----

/// Where an update is (an operation's `resourceLocation`).
pub(super) fn update_location(instance: &str, id: &UpdateId) -> String {
    format!(
        "/deviceUpdate/{instance}/updates/providers/{}/names/{}/versions/{}?api-version={}",
        id.provider(),
        id.name(),
        id.version(),
        crate::service::API_VERSION
    )
}

fn new_operation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new operation with a fresh id, created now.
pub(super) fn new_operation(
    status: OperationStatus,
    update: Option<UpdateInfo>,
) -> UpdateOperation {
    let id = new_operation_id();
    let now = now_string();
    UpdateOperation {
        operation_id: id.clone(),
        status,
        update,
        resource_location: None,
        error: None,
        trace_id: Some(id.replace('-', "")),
        last_action_date_time: Some(now.clone()),
        created_date_time: Some(now.clone()),
        etag: Some(etag(&format!("{id}{now}"))),
        extra: Default::default(),
    }
}

/// Finished operations last acted on before this time are dropped.
pub(super) fn retention_cutoff() -> String {
    let days = Duration::from_secs(crate::limits::OPERATION_DAYS * 86_400);
    let cutoff = SystemTime::now().checked_sub(days).unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(cutoff).to_string()
}

/// An error as it is stored and listed: its message and each detail's cut to
/// [`crate::limits::ERROR_MESSAGE_CHARS`], at most [`crate::limits::ERROR_DETAILS`] details
/// (the last says how many more there were), so no request can make operations grow without
/// bound.
fn bounded(mut e: ErrorBody) -> ErrorBody {
    use crate::limits::{ERROR_DETAILS, ERROR_MESSAGE_CHARS};
    fn cut(s: &mut String) {
        if let Some((i, _)) = s.char_indices().nth(ERROR_MESSAGE_CHARS) {
            s.truncate(i);
            s.push_str(" [cut]");
        }
    }
    cut(&mut e.message);
    let more = e.details.len().saturating_sub(ERROR_DETAILS);
    e.details.truncate(ERROR_DETAILS);
    for d in &mut e.details {
        cut(&mut d.message);
    }
    if more > 0 {
        e.details.push(ErrorBody::new("MoreDetails", format!("{more} more not shown")));
    }
    e
}

/// What the agents the registry holds would refuse of the imported updates: for each update,
/// the agent versions (`deviceProperties.aduVer`) of the devices one of its compatibility sets
/// fits, each checked with `manifest validate --agent-version`'s rules; an error there (every
/// such device would fail) is a warning here, naming how many devices run that agent (a
/// device builder may have registered the handler themselves, and devices change agents).
pub fn agent_warnings(
    updates: &[NewUpdate],
    twins: &[(crate::iothub::Twin, String)],
) -> Vec<ErrorBody> {
    use crate::manifest::validate::{AgentVersion, check_agent_support};
    use crate::service::agent::ReportedComponent;
    let agents: Vec<(AgentVersion, serde_json::Map<String, serde_json::Value>)> = twins
        .iter()
        .filter_map(|(t, _)| ReportedComponent::of(&t.properties.reported)?.agent)
        .filter_map(|a| {
            let version = a.device_properties.as_ref()?.get("aduVer")?.as_str()?.parse().ok()?;
            Some((version, a.compat()))
        })
        .collect();
    let mut out = Vec::new();
    for u in updates {
        let fits = |compat: &serde_json::Map<String, serde_json::Value>| {
            u.update
                .compatibility
                .iter()
                .any(|set| set.iter().all(|(k, v)| compat.get(k) == Some(v)))
        };
        let mut versions: BTreeMap<AgentVersion, usize> = BTreeMap::new();
        for (v, compat) in &agents {
            if fits(compat) {
                *versions.entry(*v).or_default() += 1;
            }
        }
        let doc = serde_json::to_value(import_shape(&u.update)).unwrap_or_default();
        for (v, n) in versions {
            for f in check_agent_support(&doc, Some(v)).iter() {
                if f.severity == crate::Severity::Error {
                    out.push(detail(
                        f.rule,
                        &format!("{}{}", u.update.update_id, &f.path.to_string()[1..]),
                        format!("{n} device(s) run agent {v}: {}", f.message),
                    ));
                }
            }
        }
    }
    out
}

/// The parts of an update the agent checks read, in the import manifest's shape.
fn import_shape(u: &Update) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = u
        .instructions
        .iter()
        .flat_map(|i| &i.steps)
        .map(|s| serde_json::json!({"handler": s.handler}))
        .collect();
    serde_json::json!({"instructions": {"steps": steps}})
}

/// Runs an accepted import to its end and records the result, as one operation.
pub(super) async fn run(s: Shared, mut op: UpdateOperation, items: Vec<ImportItem>) {
    op.status = OperationStatus::Running;
    op.last_action_date_time = Some(now_string());
    let running = op.clone();
    if s.db.call(move |st| st.put_operation(&running, None)).await.is_err() {
        return;
    }
    let existing = s.db.read(|st| st.updates()).await.unwrap_or_default();
    let now = now_string();
    let result = prepare(&s.http, &items, &existing, &now, &s.content_dir).await;
    op.last_action_date_time = Some(now_string());
    let fail = |mut op: UpdateOperation, error: ErrorBody| {
        op.status = OperationStatus::Failed;
        op.update = None;
        op.resource_location = None;
        op.error = Some(bounded(error));
        op
    };
    let prepared = match result {
        Ok(p) => p,
        Err(error) => {
            let op = fail(op, *error);
            let _ = s.db.call(move |st| st.put_operation(&op, None)).await;
            return;
        }
    };
    // Content first (content-addressed, invisible until the commit refers to it).
    let content_dir = s.content_dir.clone();
    let content = prepared.content;
    let stored = tokio::task::spawn_blocking(move || {
        content
            .into_iter()
            .try_for_each(|(hex, file)| file.commit_to(&content_dir.join(&hex), true))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r);
    if let Err(e) = stored {
        let op =
            fail(op, ErrorBody::new("InternalServerError", format!("cannot store content: {e}")));
        let _ = s.db.call(move |st| st.put_operation(&op, None)).await;
        return;
    }
    let updates = prepared.updates;
    let mut warnings = prepared.warnings;
    if let Ok(twins) = s.db.read(|st| st.twins_with_created()).await {
        warnings.extend(agent_warnings(&updates, &twins));
    }
    if !warnings.is_empty() {
        let list = warnings.into_iter().map(bounded).collect::<Vec<_>>();
        op.extra.insert("warnings".into(), serde_json::to_value(list).unwrap_or_default());
    }
    let first = &updates[0].update;
    op.status = OperationStatus::Succeeded;
    op.update = Some(UpdateInfo {
        update_id: first.update_id.clone(),
        description: first.description.clone(),
        friendly_name: first.friendly_name.clone(),
        extra: Default::default(),
    });
    op.resource_location = Some(update_location(&s.instance, &first.update_id));
    let _ =
        s.db.call(move |st| {
            // The store may have changed while fetching: re-check duplicates in the same lock.
            let mut dup = None;
            for u in &updates {
                if st.update(&u.update.update_id)?.is_some() {
                    dup = Some(u.update.update_id.clone());
                    break;
                }
            }
            if let Some(id) = dup {
                let op = fail(
                    op,
                    ErrorBody::new(
                        "UpdateAlreadyExists",
                        format!("update {id} is already imported"),
                    ),
                );
                return st.put_operation(&op, None);
            }
            if let Err(e) = st.commit_import(&updates, &op) {
                let op = fail(op, ErrorBody::new("InternalServerError", e.to_string()));
                return st.put_operation(&op, None);
            }
            Ok(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_are_bounded() {
        let mut e = ErrorBody::new("CannotProcessImportManifest", "x".repeat(10_000));
        e.details =
            (0..250).map(|i| ErrorBody::new("rule", format!("{i}{}", "y".repeat(5_000)))).collect();
        let b = bounded(e);
        assert!(b.message.chars().count() <= crate::limits::ERROR_MESSAGE_CHARS + 6);
        assert_eq!(b.details.len(), crate::limits::ERROR_DETAILS + 1);
        assert_eq!(b.details.last().unwrap().message, "150 more not shown");
        assert!(
            b.details
                .iter()
                .all(|d| d.message.chars().count() <= crate::limits::ERROR_MESSAGE_CHARS + 6)
        );
    }
}

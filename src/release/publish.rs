//! Step 3 of a release: the delta bases kept in the storage container read back, every stage's
//! group checked on the service, then upload and import through [`crate::pipeline`] (the
//! stages of `otaforge import`), never twice.

use std::time::Duration;

use super::config::Checked;
use super::{Built, ConfigError, Output, ReleaseError, STATE_FILE, State, io, service};
use crate::Sha256;
use crate::manifest::UpdateId;
use crate::reporter::Reporter;
use crate::service::AduClient;
use crate::storage::{AnyStore, ContainerName};

/// The release document inside a signed metadata file (its JWS payload).
fn release_of(text: &str) -> Option<crate::sign::meta::Release> {
    use base64::Engine as _;
    let doc: serde_json::Value = serde_json::from_str(text).ok()?;
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(doc["payload"].as_str()?).ok()?;
    serde_json::from_slice(&payload).ok()
}

/// Why an earlier release could not be read back from the storage container.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A file's name cannot be a blob name.
    #[error(transparent)]
    Name(#[from] crate::storage::NameError),
    /// The store gave no read URL.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The blob could not be read.
    #[error("{blob}: {source}")]
    Http {
        /// The blob.
        blob: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The store answered with an error.
    #[error("{blob}: {status}")]
    Status {
        /// The blob.
        blob: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
    },
    /// The import manifest does not parse.
    #[error("{name}: {source}")]
    Manifest {
        /// The manifest's blob name.
        name: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A file is not what the release's manifest says.
    #[error("{name} does not match the release's import manifest (size or SHA-256)")]
    Mismatch {
        /// The file.
        name: String,
    },
}

/// The container of `[storage]` (default `adu-imports`).
pub(super) fn container(c: &Checked) -> Result<ContainerName, ReleaseError> {
    let name = c.config.storage.container.as_ref().map_or("adu-imports", |x| x.value.as_str());
    name.parse().map_err(ReleaseError::Container)
}

/// Reads blob `name` of the release under `prefix` through a read URL of `store`.
async fn get_blob(
    http: &reqwest::Client,
    store: &impl crate::storage::BlobStore,
    container: &ContainerName,
    prefix: &str,
    name: &str,
) -> Result<Vec<u8>, FetchError> {
    let blob: crate::storage::BlobName = format!("{prefix}/{name}").parse()?;
    let url = store.read_url(container, &blob, Duration::from_secs(3600)).await?;
    let http_err = |source| FetchError::Http { blob: blob.to_string(), source };
    let resp = http.get(url).send().await.map_err(http_err)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status { blob: blob.to_string(), status: resp.status() });
    }
    Ok(resp.bytes().await.map_err(http_err)?.to_vec())
}

/// Delta bases named `storage:VERSION`: the earlier release's files read back from the
/// container it was uploaded to (its import manifest names them, with their sizes and hashes,
/// which are checked), into `OUTPUT/bases/VERSION` with a state file, once. Returns the
/// versions fetched now.
pub async fn fetch_bases(
    c: &Checked,
    store: &impl crate::storage::BlobStore,
) -> Result<Vec<String>, ReleaseError> {
    let mut fetched = Vec::new();
    let container = container(c)?;
    let http = reqwest::Client::new();
    for (version, dir) in &c.remote_bases {
        if dir.join(STATE_FILE).is_file() {
            continue;
        }
        let id = UpdateId::new(c.update_id.provider(), c.update_id.name(), version)?;
        let err = |source| ReleaseError::Fetch {
            path: dir.clone(),
            version: version.clone(),
            source: Box::new(source),
        };
        let artifacts = fetch_base(&http, store, &container, &id, dir).await?.map_err(err)?;
        let state = State { update_id: id.to_string(), artifacts, ..State::default() };
        state.write(dir)?;
        fetched.push(version.clone());
    }
    Ok(fetched)
}

/// Release `id`'s files from the storage container into `dir/files`, each checked against its
/// import manifest. The outer error is local (writing), the inner one the container's.
async fn fetch_base(
    http: &reqwest::Client,
    store: &impl crate::storage::BlobStore,
    container: &ContainerName,
    id: &UpdateId,
    dir: &std::path::Path,
) -> Result<Result<Vec<Output>, FetchError>, ReleaseError> {
    let prefix = format!("{}/{}/{}", id.provider(), id.name(), id.version());
    let name = format!("{}.{}.{}.importmanifest.json", id.provider(), id.name(), id.version());
    let bytes = match get_blob(http, store, container, &prefix, &name).await {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    let manifest: crate::manifest::ImportManifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(source) => return Ok(Err(FetchError::Manifest { name, source })),
    };
    let files_dir = dir.join("files");
    fs_err::create_dir_all(&files_dir).map_err(io(&files_dir))?;
    let mut artifacts = Vec::new();
    for f in &manifest.files {
        let name = f.filename.as_str().to_owned();
        let bytes = match get_blob(http, store, container, &prefix, &name).await {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if bytes.len() as u64 != f.size_in_bytes || Sha256::digest(&bytes) != f.hashes.sha256 {
            return Ok(Err(FetchError::Mismatch { name }));
        }
        let out = files_dir.join(&name);
        crate::fsutil::write_output(&out, &bytes, crate::fsutil::Privacy::Public)
            .map_err(io(&out))?;
        artifacts.push(Output::of(&out)?);
    }
    Ok(Ok(artifacts))
}

/// Step 3: upload and import (skipped when recorded, or when the service already holds the
/// update with this content).
pub async fn publish(
    c: &Checked,
    mut built: Built,
    client: &AduClient,
    store: &AnyStore,
    reporter: &dyn Reporter,
) -> Result<Built, ReleaseError> {
    if built.state.imported || built.state.artifacts.is_empty() {
        return Ok(built);
    }
    let manifest = built.manifest_path().ok_or(ReleaseError::NoManifest)?;
    wait_for_imports_under_way(c, client).await?;
    let jobs = crate::hash::default_jobs();
    let checked = match built.checked.take() {
        Some(c) => c,
        None => crate::pipeline::check(std::slice::from_ref(&manifest), jobs, reporter)?,
    };
    let planned = crate::pipeline::plan(checked, client).await?;
    if !planned.todo.is_empty() {
        let plan = crate::pipeline::UploadPlan {
            container: container(c)?,
            options: crate::storage::UploadOptions::default(),
            url_ttl: Duration::from_secs(4 * 3600),
        };
        let signed = crate::pipeline::Signed { planned, releases: signed_release(c, &built)? };
        let uploaded = crate::pipeline::upload(signed, store, &plan, reporter).await?;
        let started = crate::pipeline::start(uploaded, client).await?;
        let done = crate::pipeline::wait(started, client, c.import_timeout, &mut |_| {}).await?;
        // Another run imported the same content meanwhile: that is this release imported.
        let raced = !done.succeeded()
            && done.operation.error.as_ref().is_some_and(|e| e.code == "UpdateAlreadyExists")
            && {
                let checked = crate::pipeline::check(&[manifest], jobs, reporter)?;
                crate::pipeline::plan(checked, client).await?.todo.is_empty()
            };
        if !done.succeeded() && !raced {
            let why = done.operation.error.as_ref().map(|e| e.describe()).unwrap_or_default();
            return Err(ReleaseError::ImportFailed(why));
        }
    }
    built.state.imported = true;
    built.made.push("import".to_owned());
    built.state.write(&built.dir)?;
    Ok(built)
}

/// An import a killed run started may still be running: waits for it before looking, so it is
/// not started a second time.
async fn wait_for_imports_under_way(c: &Checked, client: &AduClient) -> Result<(), ReleaseError> {
    use crate::service::OperationStatus::{NotStarted, Running};
    let ops = client.list_operations().await.map_err(service("list import operations"))?;
    for op in ops.iter().filter(|o| matches!(o.status, NotStarted | Running)) {
        client
            .wait_operation(&op.operation_id, c.import_timeout, &mut |_| {})
            .await
            .map_err(service("wait for an import already under way"))?;
    }
    Ok(())
}

/// The signed release metadata, which goes beside the update's files.
fn signed_release(
    c: &Checked,
    built: &Built,
) -> Result<Vec<crate::pipeline::SignedRelease>, ReleaseError> {
    let Some(m) = &built.state.metadata else { return Ok(Vec::new()) };
    let path = built.dir.join(&m.name);
    let text = fs_err::read_to_string(&path).map_err(io(&path))?;
    let release =
        release_of(&text).ok_or_else(|| ReleaseError::NotMetadata { path: path.clone() })?;
    Ok(vec![crate::pipeline::SignedRelease { id: c.update_id.clone(), path, release }])
}

/// Every stage's group exists on the service (a group exists once a device is tagged into it
/// and has connected), up to the `until` stage: checked before anything is uploaded. `Ok(Err(..))` lists the stages
/// naming a missing group, with their lines.
pub async fn check_groups(
    c: &Checked,
    client: &AduClient,
    until: Option<&str>,
) -> Result<Result<(), Vec<ConfigError>>, ReleaseError> {
    let groups = client.list_groups().await.map_err(service("list groups"))?;
    // With `--until STAGE`, the later stages' groups need not exist yet.
    let last = until
        .and_then(|u| c.config.stages.iter().position(|s| s.name.value == u))
        .unwrap_or(usize::MAX);
    let missing: Vec<ConfigError> = c
        .config
        .stages
        .iter()
        .enumerate()
        .take(last.saturating_add(1))
        .filter_map(|(i, s)| Some((i, s.group.as_ref()?)))
        .filter(|(_, g)| !groups.iter().any(|x| x.group_id == g.value))
        .map(|(i, g)| ConfigError {
            file: c.file.clone(),
            line: c.group_lines.get(i).copied().unwrap_or(0),
            field: format!("stage[{i}].group"),
            message: format!(
                "group `{}` does not exist on the service (tag devices with ADUGroup={} first)",
                g.value, g.value
            ),
        })
        .collect();
    Ok(if missing.is_empty() { Ok(()) } else { Err(missing) })
}

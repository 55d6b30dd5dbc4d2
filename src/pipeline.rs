//! The import pipeline as typed stages, each result passed to the next:
//!
//! 1. [`check`]: every manifest read and validated alone, as a set (a parent and its children)
//!    and against its payloads in its own folder → [`Checked`], or every finding.
//! 2. [`plan`]: what the service already holds → [`Planned`] (identical updates are reported,
//!    not imported again; the same id with other content is a conflict).
//! 3. [`sign`] (optional): signed release metadata (`sign::meta`) over each update's manifest
//!    and files, written to an output folder → [`Signed`]. A [`Planned`] that is not signed
//!    becomes a [`Signed`] with no metadata (`Signed::from`).
//! 4. [`upload`]: each manifest and its files (and its signed metadata) into a [`BlobStore`]
//!    under `provider/name/version/`, with read URLs → [`Uploaded`] (the import request).
//! 5. [`start`] and [`wait`]: the import through a [`DeviceUpdate`] service → [`Started`] →
//!    [`Imported`].
//!
//! The command line (`otaforge import`) only parses arguments and shows these values; the
//! release pipeline adds its stages (deltas, signing, deployment) around the same types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::finding::Findings;
use crate::manifest::{self, FileName, ImportManifest, ManifestError, UpdateId};
use crate::reporter::Reporter;
use crate::service::{
    DeviceUpdate, FileImportMetadata, ImportItem, ImportManifestMetadata, OperationStatus,
    ServiceError, Update, UpdateFile, UpdateOperation,
};
use crate::sign::meta::{self, Release, Timestamp};
use crate::sign::{SignError, Signer};
use crate::storage::{BlobName, BlobStore, ContainerName, Source, StorageError, UploadOptions};

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Too many manifests for one request.
    #[error(
        "{0} manifests given; one import takes a parent and at most 10 children ({max})",
        max = crate::limits::MAX_IMPORT_ITEMS
    )]
    TooMany(usize),
    /// Some manifest breaks a rule; nothing was uploaded.
    #[error("{} of the manifests are invalid; nothing was uploaded or imported", .0.iter().filter(|r| r.findings.has_errors()).count())]
    Invalid(Vec<Report>),
    /// The update id is already imported with other content.
    #[error(
        "{}: update {id} is already imported with different content; give this release a new version",
        path.display()
    )]
    Conflict {
        /// The manifest.
        path: PathBuf,
        /// The update.
        id: UpdateId,
    },
    /// A file's name cannot be a blob name.
    #[error(transparent)]
    BlobName(#[from] crate::storage::NameError),
    /// Two files would land on the same blob.
    #[error("{} would be uploaded as {blob}, a blob name another file already takes", file.display())]
    BlobTaken {
        /// The second file.
        file: PathBuf,
        /// The blob both would take.
        blob: BlobName,
    },
    /// An output folder could not be created.
    #[error(transparent)]
    Output(std::io::Error),
    /// Release metadata could not be built, signed or written.
    #[error("signing {}: {source}", update)]
    Sign {
        /// The update being signed.
        update: UpdateId,
        /// What failed.
        source: Box<SignError>,
    },
    /// A manifest whose upload produced no blob (it has no files, not even itself).
    #[error("{}: nothing was uploaded", .0.display())]
    NothingUploaded(PathBuf),
    /// The blob store failed.
    #[error("uploading {file}: {source}")]
    Storage {
        /// The file being uploaded (or the container).
        file: String,
        /// What failed.
        source: StorageError,
    },
    /// The service failed.
    #[error("{what}: {source}")]
    Service {
        /// What the pipeline was doing.
        what: String,
        /// What failed.
        source: ServiceError,
    },
}

impl PipelineError {
    fn service(what: impl Into<String>) -> impl FnOnce(ServiceError) -> Self {
        move |source| PipelineError::Service { what: what.into(), source }
    }
}

/// The findings of one manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The manifest file.
    pub file: PathBuf,
    /// What the checks found.
    pub findings: Findings,
}

/// A manifest that passed every check, with where it was read.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// The manifest file.
    pub path: PathBuf,
    /// The manifest.
    pub manifest: ImportManifest,
}

impl LocalUpdate {
    /// The folder its payloads are in.
    pub fn dir(&self) -> PathBuf {
        manifest::manifest_dir(&self.path)
    }

    /// The manifest file, then every payload and related file, as paths in its folder.
    pub fn files(&self) -> Vec<PathBuf> {
        let dir = self.dir();
        let mut v = vec![self.path.clone()];
        v.extend(self.manifest.all_files().map(|(name, _, _)| dir.join(name)));
        v
    }
}

/// Stage 1: valid manifests, the parent first; warnings kept for display.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The updates, parent first.
    pub updates: Vec<LocalUpdate>,
    /// Every finding (warnings only, since the check passed).
    pub reports: Vec<Report>,
}

/// Reads and checks manifests as `otaforge import` does before anything leaves the machine.
pub fn check(
    paths: &[PathBuf],
    jobs: usize,
    reporter: &dyn Reporter,
) -> Result<Checked, PipelineError> {
    if paths.len() > crate::limits::MAX_IMPORT_ITEMS {
        return Err(PipelineError::TooMany(paths.len()));
    }
    let checked =
        manifest::check_files(paths, true, &|p| Some(manifest::manifest_dir(p)), jobs, reporter)?;
    let reports: Vec<Report> = checked
        .iter()
        .map(|c| Report { file: c.checked.path.clone(), findings: c.findings() })
        .collect();
    if checked.iter().any(manifest::CheckedWithPayloads::has_errors) {
        return Err(PipelineError::Invalid(reports));
    }
    let mut updates: Vec<LocalUpdate> = checked
        .into_iter()
        .filter_map(|c| {
            c.checked.manifest.map(|m| LocalUpdate { path: c.checked.path, manifest: m })
        })
        .collect();
    // The parent (the manifest with reference steps) goes first.
    updates.sort_by_key(|l| !l.manifest.is_parent());
    Ok(Checked { updates, reports })
}

/// Stage 2: what to import, and what the service already has.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Updates to import, parent first.
    pub todo: Vec<LocalUpdate>,
    /// Updates the service already holds with the same content.
    pub already: Vec<UpdateId>,
}

/// Whether an imported update is this manifest: same compatibility, same steps, and the same
/// files (name, size, SHA-256).
pub fn same_content(existing: &Update, files: &[UpdateFile], local: &ImportManifest) -> bool {
    let compat_same = existing.compatibility == local.compatibility;
    // The service's steps and the manifest's are different types with the same JSON shape.
    let steps_same = existing.instructions.as_ref().map(|i| serde_json::to_value(&i.steps).ok())
        == Some(serde_json::to_value(&local.instructions.steps).ok());
    if !compat_same || !steps_same {
        return false;
    }
    let mut remote: Vec<(String, u64, String)> = files
        .iter()
        .map(|f| (f.file_name.clone(), f.size_in_bytes, f.sha256().unwrap_or_default().to_owned()))
        .collect();
    let mut mine: Vec<(String, u64, String)> = local
        .files
        .iter()
        .map(|f| (f.filename.to_string(), f.size_in_bytes, f.hashes.sha256.to_base64()))
        .collect();
    remote.sort();
    mine.sort();
    remote == mine
}

/// Looks every update up in the service.
pub async fn plan(checked: Checked, service: &impl DeviceUpdate) -> Result<Planned, PipelineError> {
    let mut already = Vec::new();
    let mut todo = Vec::new();
    for l in checked.updates {
        let id = l.manifest.update_id.clone();
        match service
            .get_update(&id)
            .await
            .map_err(PipelineError::service(format!("look up {id}")))?
        {
            None => todo.push(l),
            Some(existing) => {
                let files = service
                    .update_files(&id)
                    .await
                    .map_err(PipelineError::service(format!("look up the files of {id}")))?;
                if same_content(&existing, &files, &l.manifest) {
                    already.push(id);
                } else {
                    return Err(PipelineError::Conflict { path: l.path, id });
                }
            }
        }
    }
    Ok(Planned { todo, already })
}

/// How to sign: who signs, the metadata's counter and lifetime, and where the files go.
pub struct SignPlan<'a> {
    /// Every key that signs (at least one).
    pub signers: Vec<&'a dyn Signer>,
    /// The release's security counter (devices refuse a lower one than they have seen).
    pub security_counter: u64,
    /// When the metadata is signed.
    pub created: Timestamp,
    /// From when devices refuse it.
    pub expires: Timestamp,
    /// Where `provider.name.version.release.json` files are written.
    pub out_dir: PathBuf,
}

/// Signed release metadata of one update.
#[derive(Debug, Clone)]
pub struct SignedRelease {
    /// The update it describes.
    pub id: UpdateId,
    /// The metadata file written.
    pub path: PathBuf,
    /// What it says (version = the update's version; artifacts = manifest and its files).
    pub release: Release,
}

/// Stage 3: the plan, with release metadata signed over every update to import.
#[derive(Debug, Clone)]
pub struct Signed {
    /// What to import.
    pub planned: Planned,
    /// One per update to import, in the same order; empty when nothing was signed.
    pub releases: Vec<SignedRelease>,
}

impl From<Planned> for Signed {
    /// An unsigned plan: uploaded and imported without release metadata.
    fn from(planned: Planned) -> Self {
        Self { planned, releases: Vec::new() }
    }
}

/// The metadata file name of an update.
pub fn release_file_name(id: &UpdateId) -> String {
    format!("{}.{}.{}.release.json", id.provider(), id.name(), id.version())
}

/// Signs release metadata for each update to import: its version is the update's, its artifacts
/// the manifest and every payload and related file (hashed again from disk, so what is signed
/// is what is uploaded next). Each file is written atomically under `plan.out_dir`.
pub fn sign(planned: Planned, plan: &SignPlan<'_>) -> Result<Signed, PipelineError> {
    fs_err::create_dir_all(&plan.out_dir).map_err(PipelineError::Output)?;
    let mut releases = Vec::with_capacity(planned.todo.len());
    for l in &planned.todo {
        let id = l.manifest.update_id.clone();
        let err = |source| PipelineError::Sign { update: id.clone(), source: Box::new(source) };
        let files = l.files();
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let release = meta::describe(
            &paths,
            id.version(),
            plan.security_counter,
            plan.created,
            plan.expires,
            &plan.signers,
        )
        .map_err(err)?;
        let text = meta::sign(&release, &plan.signers).map_err(err)?;
        let path = plan.out_dir.join(release_file_name(&id));
        crate::fsutil::write_atomic(&path, text.as_bytes(), false)
            .map_err(|e| err(SignError::Io(e)))?;
        releases.push(SignedRelease { id, path, release });
    }
    Ok(Signed { planned, releases })
}

/// One file as uploaded.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadedFile {
    /// The local file.
    pub file: PathBuf,
    /// The blob.
    pub blob: String,
    /// Size.
    pub size_in_bytes: u64,
    /// SHA-256 (base64).
    pub sha256: String,
    /// Read URL (with a SAS, which its `Display` hides; it serializes whole).
    pub url: crate::storage::sas::SasUrl,
    /// The blob already held these bytes.
    pub already_present: bool,
    /// Blocks sent.
    pub blocks_sent: u64,
    /// Blocks reused from an interrupted run.
    pub blocks_reused: u64,
}

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    /// The container.
    pub container: ContainerName,
    /// Block size, concurrency, checksum.
    pub options: UploadOptions,
    /// How long the read URLs stay valid.
    pub url_ttl: Duration,
}

/// Blob names for files under `prefix`, refusing two files that would land on the same blob.
pub fn blob_names(
    prefix: Option<&str>,
    files: &[PathBuf],
) -> Result<Vec<(PathBuf, BlobName)>, PipelineError> {
    let mut out: Vec<(PathBuf, BlobName)> = Vec::new();
    for f in files {
        let blob = BlobName::for_file(prefix, f)?;
        if out.iter().any(|(_, b)| *b == blob) {
            return Err(PipelineError::BlobTaken { file: f.clone(), blob });
        }
        out.push((f.clone(), blob));
    }
    Ok(out)
}

/// Uploads files (hashing each) and returns what happened with a read URL for each.
pub async fn upload_files(
    store: &impl BlobStore,
    plan: &UploadPlan,
    sources: &[(PathBuf, BlobName)],
    reporter: &dyn Reporter,
) -> Result<Vec<UploadedFile>, PipelineError> {
    let err = |file: &std::path::Path| {
        let file = file.display().to_string();
        move |source| PipelineError::Storage { file, source }
    };
    store
        .ensure_container(&plan.container)
        .await
        .map_err(|source| PipelineError::Storage { file: plan.container.to_string(), source })?;
    let mut out = Vec::new();
    for (file, blob) in sources {
        let source = Source::hash(file, &crate::NoReporter).map_err(err(file))?;
        let done = store
            .upload(&plan.container, blob, &source, &plan.options, reporter)
            .await
            .map_err(err(file))?;
        let url = store.read_url(&plan.container, blob, plan.url_ttl).await.map_err(err(file))?;
        out.push(UploadedFile {
            file: file.clone(),
            blob: blob.to_string(),
            size_in_bytes: done.size_in_bytes,
            sha256: done.sha256.to_base64(),
            url: url.into(),
            already_present: done.already_present,
            blocks_sent: done.blocks_sent,
            blocks_reused: done.blocks_reused,
        });
    }
    Ok(out)
}

/// Stage 3: the import request, ready to send.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// One item per update, parent first.
    pub items: Vec<ImportItem>,
    /// The updates of the request, in the same order.
    pub ids: Vec<UpdateId>,
    /// Updates the service already held.
    pub already: Vec<UpdateId>,
    /// Every file uploaded.
    pub files: Vec<UploadedFile>,
}

/// Uploads each manifest and its files under `provider/name/version/` and builds the request.
/// Signed release metadata goes to the same folder; it is not part of the import (ADU does not
/// know it), but a device or an auditor can fetch it beside the update.
pub async fn upload(
    stage: impl Into<Signed>,
    store: &impl BlobStore,
    plan: &UploadPlan,
    reporter: &dyn Reporter,
) -> Result<Uploaded, PipelineError> {
    let Signed { planned, releases } = stage.into();
    let mut items = Vec::new();
    let mut ids = Vec::new();
    let mut all = Vec::new();
    for l in &planned.todo {
        let id = &l.manifest.update_id;
        let prefix = format!("{}/{}/{}", id.provider(), id.name(), id.version());
        // The manifest, its files, then its release metadata: one name check for all, so the
        // metadata cannot take a payload's blob.
        let mut files = l.files();
        files.extend(releases.iter().filter(|r| r.id == *id).map(|r| r.path.clone()));
        let names = blob_names(Some(&prefix), &files)?;
        let entries = upload_files(store, plan, &names, reporter).await?;
        let (m, rest) =
            entries.split_first().ok_or_else(|| PipelineError::NothingUploaded(l.path.clone()))?;
        let names = l.manifest.all_files().map(|(name, _, _)| name.clone());
        items.push(ImportItem {
            import_manifest: ImportManifestMetadata {
                url: m.url.expose().to_owned(),
                size_in_bytes: m.size_in_bytes,
                hashes: [(crate::hash::HashAlgorithm::Sha256, m.sha256.clone())].into(),
            },
            friendly_name: None,
            files: names
                .zip(rest)
                .map(|(filename, e): (FileName, _)| FileImportMetadata {
                    filename,
                    url: e.url.expose().to_owned(),
                })
                .collect(),
        });
        ids.push(id.clone());
        all.extend(entries);
    }
    Ok(Uploaded { items, ids, already: planned.already, files: all })
}

/// Stage 4a: an import the service accepted.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its operation.
    pub operation_id: String,
    /// The updates of the request.
    pub ids: Vec<UpdateId>,
    /// Updates the service already held.
    pub already: Vec<UpdateId>,
}

/// Sends the import request.
pub async fn start(
    uploaded: Uploaded,
    service: &impl DeviceUpdate,
) -> Result<Started, PipelineError> {
    let operation_id =
        service.import(&uploaded.items).await.map_err(PipelineError::service("import"))?;
    Ok(Started { operation_id, ids: uploaded.ids, already: uploaded.already })
}

/// Stage 4b: how the import ended.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The finished operation (Succeeded or Failed, with the service's error).
    pub operation: UpdateOperation,
    /// The updates of the request.
    pub ids: Vec<UpdateId>,
    /// Updates the service already held.
    pub already: Vec<UpdateId>,
}

impl Imported {
    /// Whether the import succeeded.
    pub fn succeeded(&self) -> bool {
        self.operation.status == OperationStatus::Succeeded
    }
}

/// Waits for the import's operation to end (at most `timeout`); `progress` sees each status.
pub async fn wait(
    started: Started,
    service: &impl DeviceUpdate,
    timeout: Duration,
    progress: &mut (dyn FnMut(&UpdateOperation) + Send),
) -> Result<Imported, PipelineError> {
    let operation = service
        .wait_operation(&started.operation_id, timeout, progress)
        .await
        .map_err(PipelineError::service("wait for the import"))?;
    Ok(Imported { operation, ids: started.ids, already: started.already })
}

//! `otaforge release`: one `otaforge.toml` → the update's files (MCUboot images signed),
//! deltas from earlier releases, the import manifest, signed release metadata, upload, import,
//! and a staged rollout whose gates stop it. The pipeline as typed steps:
//!
//! 1. [`config::load`]: the file, checked → [`config::Checked`].
//! 2. [`build`]: files copied (or signed) into `OUTPUT/VERSION/files/`, one delta per base
//!    (kept when smaller than `max-share` of the file), the import manifest, the metadata →
//!    [`Built`]. Offline; `--dry-run` stops here and writes only inside the output folder.
//! 3. [`publish`]: upload and import through `pipeline` (an update already imported with the
//!    same content is not imported again).
//! 4. [`roll_out`]: each stage deploys to its group and waits on its gates.
//!
//! Every step records what it made in `OUTPUT/VERSION/release-state.json` (written through a
//! temp file and renamed) with the SHA-256 of each output; a re-run skips a step whose outputs
//! are there and verify, so a release killed at any moment finishes with the same outputs.
//! With `SOURCE_DATE_EPOCH` the manifest and deltas are byte-identical run to run; without it
//! the first run's time is recorded and reused.

pub mod build;
pub mod check;
pub mod config;
pub mod inputs;
pub mod publish;
pub mod report;
pub mod rollout;
pub mod version;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Sha256;

pub use build::build;
pub use config::{Checked, ConfigError};
pub use publish::{check_groups, fetch_bases, publish};
pub use report::{NoReleaseReporter, ReleaseReporter};
pub use rollout::{Rollout, Services, deployment_id, edge_deployment_id, roll_out};

/// The state file in each release's output folder.
pub const STATE_FILE: &str = "release-state.json";

/// Why a release stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// otaforge.toml is wrong.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A delta could not be made.
    #[error("delta of {artifact} from {base}: {source}")]
    Delta {
        /// The artifact.
        artifact: String,
        /// The base.
        base: String,
        /// Why.
        source: Box<crate::delta::DeltaError>,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(#[from] crate::sign::SignError),
    /// An MCUboot image could not be signed.
    #[error("signing {artifact} as an MCUboot image: {source}")]
    Mcuboot {
        /// The artifact.
        artifact: String,
        /// Why.
        source: crate::mcuboot::McubootError,
    },
    /// The update's version is no MCUboot image version.
    #[error("version {version} cannot be an MCUboot image version: {message}")]
    McubootVersion {
        /// The version's first three numbers.
        version: String,
        /// Why.
        message: String,
    },
    /// Signed release metadata needs a signer.
    #[error("signed release metadata needs [signing] key, or command and public-key")]
    NoSigner,
    /// The metadata's expiry is past what a timestamp holds.
    #[error("signing.expires-in takes the metadata's expiry out of range")]
    ExpiryOutOfRange,
    /// The release's time does not parse.
    #[error("the state file's created time: {0}")]
    Time(#[from] crate::time::TimeError),
    /// The import manifest could not be serialized.
    #[error("the import manifest: {0}")]
    ManifestJson(serde_json::Error),
    /// The manifest could not be built.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// Upload or import failed.
    #[error(transparent)]
    Pipeline(Box<crate::pipeline::PipelineError>),
    /// The service refused or failed.
    #[error("{what}: {source}")]
    Service {
        /// What was being done.
        what: String,
        /// Why.
        source: Box<crate::service::ServiceError>,
    },
    /// The IoT Hub refused or failed.
    #[error("{what}: {source}")]
    Hub {
        /// What was being done.
        what: String,
        /// Why.
        source: Box<crate::iothub::IotHubError>,
    },
    /// An Edge stage and no IoT Hub.
    #[error(
        "an Edge stage needs the IoT Hub (service.iothub-connection-file or IOTHUB_CONNECTION_STRING)"
    )]
    NoHub,
    /// A stage names neither a group nor an Edge target.
    #[error("stage {stage} has no target")]
    NoTarget {
        /// The stage.
        stage: String,
    },
    /// A stage's group does not exist on the service.
    #[error(
        "group {group} does not exist on the service (tag devices with ADUGroup={group} first)"
    )]
    MissingGroup {
        /// The group.
        group: String,
    },
    /// An Edge stage and no Edge manifest built.
    #[error("the build made no Edge manifest")]
    NoEdgeManifest,
    /// The built Edge manifest does not parse.
    #[error("{}: {source}", path.display())]
    EdgeManifest {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// An input changed while the release ran.
    #[error("{}: changed while the release ran; run it again", path.display())]
    InputChanged {
        /// The file.
        path: PathBuf,
    },
    /// The output folder does not match its import manifest.
    #[error(
        "{}: the output folder was changed after it was built ({problems}); delete it and run otaforge release again",
        dir.display()
    )]
    Tampered {
        /// `OUTPUT/VERSION`.
        dir: PathBuf,
        /// What does not match.
        problems: String,
    },
    /// An artifact holds a private key.
    #[error(
        "{}: holds {key}; a release never ships a private key: take it out of [[artifact]]",
        path.display()
    )]
    PrivateKey {
        /// The artifact's file.
        path: PathBuf,
        /// What was found.
        key: inputs::PrivateKey,
    },
    /// A stage's deployment id is taken by a deployment of something else.
    #[error(
        "deployment {id} already exists and deploys {holds}, not {update}; delete it or rename the stage"
    )]
    DeploymentConflict {
        /// The deployment id.
        id: String,
        /// What it deploys.
        holds: String,
        /// This release's update.
        update: String,
    },
    /// A delta base is not a release's output folder.
    #[error("{}: not a release state file", path.display())]
    NotAState {
        /// The state file.
        path: PathBuf,
    },
    /// A `storage:VERSION` base was not read back yet (a dry run cannot).
    #[error(
        "{}: delta base storage:{version} is not read yet: run otaforge release without --dry-run, which reads it from the storage container",
        path.display()
    )]
    BaseNotRead {
        /// Where it is kept.
        path: PathBuf,
        /// Its version.
        version: String,
    },
    /// An earlier release could not be read back from the storage container.
    #[error("{}: release {version} from the storage container: {source}", path.display())]
    Fetch {
        /// Where it was to be kept.
        path: PathBuf,
        /// Its version.
        version: String,
        /// Why.
        source: Box<publish::FetchError>,
    },
    /// The storage container's name is not one.
    #[error("storage.container: {0}")]
    Container(crate::storage::NameError),
    /// An update id could not be made (a base's or a rollback's version).
    #[error(transparent)]
    Id(#[from] crate::manifest::IdError),
    /// The build made no import manifest to publish.
    #[error("the build made no import manifest")]
    NoManifest,
    /// The signed release metadata file is not one.
    #[error("{}: not signed release metadata", path.display())]
    NotMetadata {
        /// The file.
        path: PathBuf,
    },
    /// The service failed the import.
    #[error("import failed: {0}")]
    ImportFailed(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io { path: path.to_owned(), source }
}

fn service(what: impl Into<String>) -> impl FnOnce(crate::service::ServiceError) -> ReleaseError {
    let what = what.into();
    move |source| ReleaseError::Service { what, source: Box::new(source) }
}

impl From<crate::pipeline::PipelineError> for ReleaseError {
    fn from(e: crate::pipeline::PipelineError) -> Self {
        Self::Pipeline(Box::new(e))
    }
}

/// A file the release made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Its name in `files/`.
    pub name: String,
    /// Size in bytes.
    pub size_in_bytes: u64,
    /// SHA-256, base64.
    pub sha256: String,
}

impl Output {
    fn of(path: &Path) -> Result<Self, ReleaseError> {
        let bytes = fs_err::read(path).map_err(io(path))?;
        Ok(Self {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            size_in_bytes: bytes.len() as u64,
            sha256: Sha256::digest(&bytes).to_base64(),
        })
    }

    /// The file is there with this content.
    fn verifies(&self, dir: &Path) -> bool {
        Self::of(&dir.join(&self.name)).is_ok_and(|o| o == *self)
    }
}

/// A delta the release made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaOutput {
    /// The artifact it rebuilds (its name in `files/`).
    pub artifact: String,
    /// The base release's version.
    pub base_version: String,
    /// The delta file.
    pub file: Output,
    /// The base file's SHA-256 (the device's installed image).
    pub source_sha256: String,
}

/// What happened in a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageOutput {
    /// The stage.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Its deployment.
    pub deployment_id: String,
    /// `passed`, or the failed gate: `failed`, `timeout`.
    pub result: String,
    /// Devices in the group.
    pub devices: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// What was done after a failed gate: `stopped`, `canceled`, `rolledBack to VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Why the gate failed, with the counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The state file: what each step made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The update.
    pub update_id: String,
    /// `createdDateTime` of the manifest (fixed by the first run).
    pub created: String,
    /// The input file behind each artifact (its SHA-256), to notice a rebuilt input.
    pub inputs: Vec<String>,
    /// The artifacts as shipped.
    pub artifacts: Vec<Output>,
    /// The deltas.
    pub deltas: Vec<DeltaOutput>,
    /// Deltas not kept (not smaller than the set share), as `artifact from base: why`.
    #[serde(default)]
    pub skipped_deltas: Vec<String>,
    /// The import manifest.
    pub manifest: Option<Output>,
    /// The signed release metadata.
    pub metadata: Option<Output>,
    /// The IoT Edge deployment manifest, as deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_manifest: Option<Output>,
    /// The import is done (or was already).
    pub imported: bool,
    /// The stages that ran.
    pub stages: Vec<StageOutput>,
}

impl State {
    fn read(dir: &Path) -> Option<Self> {
        let text = fs_err::read(dir.join(STATE_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write(&self, dir: &Path) -> Result<(), ReleaseError> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::fsutil::write_output(&path, &bytes, crate::fsutil::Privacy::Public)
            .map_err(io(&path))
    }
}

/// How a release runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `SOURCE_DATE_EPOCH`: the manifest's and metadata's time.
    pub source_date_epoch: Option<String>,
    /// Stop after this stage.
    pub until: Option<String>,
    /// Threads for hashing and deltas.
    pub jobs: usize,
    /// How often a stage's status is read.
    pub poll: Option<Duration>,
}

/// The output of [`build`].
#[derive(Debug, Clone)]
pub struct Built {
    /// `OUTPUT/VERSION`.
    pub dir: PathBuf,
    /// The state so far.
    pub state: State,
    /// What was made now (the rest was there and verified).
    pub made: Vec<String>,
    /// The import manifest checked against its files, as publishing checks it (none for an
    /// IoT Edge-only release).
    pub checked: Option<crate::pipeline::Checked>,
}

impl Built {
    /// `OUTPUT/VERSION/files`.
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    /// The manifest's path.
    pub fn manifest_path(&self) -> Option<PathBuf> {
        self.state.manifest.as_ref().map(|m| self.files_dir().join(&m.name))
    }
}

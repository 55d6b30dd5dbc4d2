//! `otaforge release`: one `otaforge.toml` → the update's files (MCUboot images signed),
//! deltas from earlier releases, the import manifest, signed release metadata, upload, import,
//! and a staged rollout whose gates stop it (`docs/release.md`). The pipeline as typed steps,
//! like `otaforge import`'s ([`crate::pipeline`]):
//!
//! 1. [`load`]: the file, checked section by section ([`check`]), its version found
//!    ([`version`]) → [`Checked`].
//! 2. [`Settings::resolve`]: what the caller decides ([`Overrides`]) and the [`Environment`],
//!    settled before anything runs: Device Update endpoint and authentication, storage
//!    backend, IoT Hub → [`Settings`].
//! 3. [`run`], step by step ([`Step`]), telling a [`ReleaseReporter`] as it goes, → [`Report`]:
//!    - [`fetch_bases`]: `storage:VERSION` delta bases read back from the storage container;
//!    - [`build()`]: files copied (or signed) into `OUTPUT/VERSION/files/` (never a private key,
//!      never a file from outside the repository unless allowed: [`inputs`]), one delta per
//!      base, the import manifest, the metadata, checked as publishing checks them →
//!      [`Built`]. Offline; a dry run stops here and writes only inside the output folder;
//!    - [`check_groups`], then [`publish()`]: upload and import through `pipeline` (an update
//!      already imported with the same content is not imported again);
//!    - [`roll_out`]: each stage deploys to its group and waits on its gates.
//!
//! Every step records what it made in `OUTPUT/VERSION/release-state.json` (written through a
//! temp file and renamed) with the SHA-256 of each output; a re-run skips a step whose outputs
//! are there and verify (and, for a stage, that the service confirms), so a release killed at
//! any moment finishes with the same outputs. With `SOURCE_DATE_EPOCH` the manifest and deltas
//! are byte-identical run to run; without it the first run's time is recorded and reused.

pub mod build;
pub mod check;
pub mod config;
pub mod inputs;
mod load;
pub mod publish;
pub mod report;
pub mod rollout;
pub mod settings;
pub mod version;

pub use load::load;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Sha256;

pub use build::build;
pub use config::{Checked, ConfigError};
pub use publish::{check_groups, fetch_bases, publish};
pub use report::{NoReleaseReporter, Outcome, ReleaseReporter, Report, Step};
pub use rollout::{Rollout, Services, deployment_id, edge_deployment_id, roll_out};
pub use settings::{Environment, Overrides, Settings};

/// The state file in each release's output folder.
pub const STATE_FILE: &str = "release-state.json";

/// Why a release stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A step of [`run`] failed (the error says why; [`ReleaseError::code`] gives the stable
    /// code of the failures a user can fix).
    #[error("{source}")]
    Stopped {
        /// The step.
        step: Step,
        /// What failed.
        source: Box<ReleaseError>,
    },
    /// `--resume` and nothing to resume.
    #[error("--resume: {} holds no release to resume", dir.display())]
    NothingToResume {
        /// `OUTPUT/VERSION`.
        dir: PathBuf,
    },
    /// `--until` names no stage.
    #[error("--until {name}: otaforge.toml has no stage of that name")]
    UnknownStage {
        /// The name given.
        name: String,
    },
    /// A deployment or group id that Device Update would refuse.
    #[error(transparent)]
    DeploymentId(#[from] crate::service::model::IdError),
    /// The blob store failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
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

impl ReleaseError {
    /// The stable code of a failure the user can act on (exit 1): `invalidConfig`,
    /// `baseFailed`, `buildFailed`, `publishFailed`, `deploymentConflict`. None for the
    /// unexpected (exit 2), whose code is [`ErrorCode::code`](crate::error::ErrorCode).
    pub fn failure_code(&self) -> Option<&'static str> {
        match self {
            Self::Config(_) => Some("invalidConfig"),
            Self::DeploymentConflict { .. } => Some("deploymentConflict"),
            Self::Stopped { step, source } => source.failure_code().or(match step {
                Step::Bases => Some("baseFailed"),
                Step::Build => Some("buildFailed"),
                Step::Publish => Some("publishFailed"),
                Step::Groups | Step::Rollout => None,
            }),
            _ => None,
        }
    }

    /// The same error, as stopping `step`.
    fn at(step: Step) -> impl FnOnce(Self) -> Self {
        move |e| Self::Stopped { step, source: Box::new(e) }
    }
}

impl crate::error::ErrorCode for ReleaseError {
    fn code(&self) -> String {
        if let Some(c) = self.failure_code() {
            return c.into();
        }
        match self {
            Self::Stopped { source, .. } => source.code(),
            Self::Io { source, .. } => source.code(),
            Self::Service { source, .. } => crate::error::ErrorCode::code(source.as_ref()),
            Self::Hub { source, .. } => source.code(),
            Self::Storage(e) => e.code(),
            Self::Sign(e) => e.code(),
            Self::Mcuboot { source, .. } => source.code(),
            Self::Time(e) => e.code(),
            Self::NothingToResume { .. } => "nothingToResume".into(),
            Self::UnknownStage { .. } => "unknownStage".into(),
            Self::DeploymentId(_) => "invalidId".into(),
            _ => "releaseFailed".into(),
        }
    }

    fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Stopped { source, .. } => source.io_kind(),
            Self::Io { source, .. } => Some(source.kind()),
            Self::Storage(e) => e.io_kind(),
            Self::Sign(e) => e.io_kind(),
            _ => None,
        }
    }
}

/// An IoT Hub error while doing `what`.
fn hub_error(what: String) -> impl FnOnce(crate::iothub::IotHubError) -> ReleaseError {
    move |source| ReleaseError::Hub { what, source: Box::new(source) }
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

/// The output of [`build()`].
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

/// Runs the release `settings` describe, step by step: the delta bases kept in the storage
/// container read back, the build (a dry run stops there), every stage's group checked, upload
/// and import, the stages. `reporter` hears of each as it happens, and of every request to
/// Device Update that is tried again. A failed gate is a report whose result is
/// [`Outcome::GateFailed`]; an error says which [`Step`] it stopped.
pub async fn run(
    settings: Settings,
    reporter: std::sync::Arc<dyn ReleaseReporter>,
) -> Result<Report, ReleaseError> {
    let Settings { checked: c, options, remote } = settings;
    reporter.plan(&c);
    let Some(remote) = remote else {
        let built = build_step(&c, &options, reporter.as_ref())?;
        return Ok(Report::new(&c, &built, None));
    };
    let notice = std::sync::Arc::clone(&reporter);
    let client = remote.client.with_retry_notice(crate::retry::RetryNotice(std::sync::Arc::new(
        move |m: &str| notice.retrying(m),
    )));
    let store = match remote.store {
        Some(s) => s,
        None => crate::storage::AnyStore::Embedded(
            crate::storage::embedded::EmbeddedStore::discover(&client).await?,
        ),
    };
    if !c.remote_bases.is_empty() {
        let fetched = fetch_bases(&c, &store).await.map_err(ReleaseError::at(Step::Bases))?;
        fetched.iter().for_each(|v| reporter.base_fetched(v));
    }
    let built = build_step(&c, &options, reporter.as_ref())?;
    let until = options.until.as_deref();
    if let Err(missing) = check_groups(&c, &client, until).await? {
        return Err(ReleaseError::at(Step::Groups)(ReleaseError::Config(missing)));
    }
    let mut built = {
        let progress = reporter.progress(Step::Publish);
        publish(&c, built, &client, &store, progress.as_ref())
            .await
            .map_err(ReleaseError::at(Step::Publish))?
    };
    if !built.state.artifacts.is_empty() {
        reporter.imported(&c.update_id, built.made.iter().any(|m| m == "import"));
    }
    let services = Services { client: &client, hub: remote.hub.as_ref() };
    let rollout = roll_out(&c, &mut built, &services, &options, reporter.as_ref())
        .await
        .map_err(ReleaseError::at(Step::Rollout))?;
    Ok(Report::new(&c, &built, Some(&rollout)))
}

/// The build, with its progress, and the deltas it did not keep told.
fn build_step(
    c: &Checked,
    options: &Options,
    reporter: &dyn ReleaseReporter,
) -> Result<Built, ReleaseError> {
    let built = {
        let progress = reporter.progress(Step::Build);
        build(c, options, progress.as_ref()).map_err(ReleaseError::at(Step::Build))?
    };
    built.state.skipped_deltas.iter().for_each(|s| reporter.delta_skipped(s));
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn the_step_decides_a_failures_code_and_the_rest_keep_their_causes() {
        let at = |step, e| ReleaseError::Stopped { step, source: Box::new(e) };
        let key = ReleaseError::PrivateKey {
            path: "k.pem".into(),
            key: inputs::PrivateKey::Pem("PRIVATE KEY".into()),
        };
        let missing = ReleaseError::Io {
            path: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let cases = [
            (at(Step::Build, key), Some("buildFailed"), "buildFailed"),
            (
                at(Step::Groups, ReleaseError::Config(Vec::new())),
                Some("invalidConfig"),
                "invalidConfig",
            ),
            (at(Step::Publish, ReleaseError::NoManifest), Some("publishFailed"), "publishFailed"),
            (at(Step::Rollout, missing), None, "notFound"),
            (ReleaseError::NothingToResume { dir: "out".into() }, None, "nothingToResume"),
        ];
        for (e, failure, code) in cases {
            assert_eq!(e.failure_code(), failure, "{e}");
            assert_eq!(e.code(), code, "{e}");
        }
    }
}

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

pub mod config;
pub mod inputs;
pub mod report;
pub mod rollout;
pub mod version;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Sha256;
use crate::manifest::{FileSpec, ManifestSpec, RelatedSpec, StepSpec, UpdateId};
use crate::reporter::Reporter;
use crate::service::AduClient;
use crate::storage::{AnyStore, ContainerName};

pub use config::{Checked, ConfigError};
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
    Sign(String),
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
    /// The service refused the import, or a stage cannot start.
    #[error("{0}")]
    Refused(String),
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
    /// A base's state file is unreadable.
    #[error("{path}: {message}")]
    Base {
        /// The state file.
        path: PathBuf,
        /// Why.
        message: String,
    },
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

fn signer(c: &Checked) -> Result<Option<Box<dyn crate::sign::Signer>>, ReleaseError> {
    let Some(s) = &c.config.signing else { return Ok(None) };
    let sign_err = |e: crate::sign::SignError| ReleaseError::Sign(e.to_string());
    if let (Some(command), Some(public)) = (&s.command, &s.public_key) {
        let public =
            crate::sign::PublicKey::from_file(&c.root.join(&public.value)).map_err(sign_err)?;
        return Ok(Some(Box::new(crate::sign::CommandSigner::new(command.value.clone(), public))));
    }
    let Some(key) = &s.key else { return Ok(None) };
    let signer = match key.value.strip_prefix("env:") {
        Some(var) => crate::sign::KeySigner::from_env(var),
        None => crate::sign::KeySigner::from_file(&c.root.join(&key.value)),
    }
    .map_err(sign_err)?;
    Ok(Some(Box::new(signer)))
}

/// The SHA-256 of each input (the artifacts' files, then the Edge manifest), each refused when
/// it holds a private key.
fn read_inputs(c: &Checked) -> Result<Vec<String>, ReleaseError> {
    c.files
        .iter()
        .chain(c.edge_manifest.iter())
        .map(|f| {
            let bytes = fs_err::read(f).map_err(io(f))?;
            if let Some(key) = inputs::private_key(&bytes) {
                return Err(ReleaseError::PrivateKey { path: f.clone(), key });
            }
            Ok(Sha256::digest(&bytes).to_base64())
        })
        .collect()
}

/// Step 2: the files, deltas, manifest and metadata, offline.
pub fn build(c: &Checked, opts: &Options, reporter: &dyn Reporter) -> Result<Built, ReleaseError> {
    let dir = c.output.join(c.update_id.version().as_str());
    let files = dir.join("files");
    // Read before anything is written: an input that is a private key stops the release here.
    let inputs = read_inputs(c)?;
    fs_err::create_dir_all(&files).map_err(io(&files))?;
    let mut state = State::read(&dir).unwrap_or_default();
    let mut made = Vec::new();
    let id = c.update_id.to_string();
    if state.update_id != id || state.inputs != inputs {
        // A new release, or its inputs were rebuilt: nothing recorded holds.
        let created = crate::manifest::created_date_time(None, opts.source_date_epoch.as_deref())?;
        state = State { update_id: id.clone(), created, inputs, ..State::default() };
    }
    for (version, base) in &c.remote_bases {
        if !base.join(STATE_FILE).is_file() {
            return Err(ReleaseError::Base {
                path: base.clone(),
                message: format!(
                    "delta base storage:{version} is not read yet: run otaforge release without --dry-run, which reads it from the storage container"
                ),
            });
        }
    }
    let signer = signer(c)?;
    // The artifacts, as shipped.
    if state.artifacts.len() != c.files.len() || !state.artifacts.iter().all(|a| a.verifies(&files))
    {
        state.artifacts.clear();
        for (a, input) in c.config.artifacts.iter().zip(&c.files) {
            let name =
                input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = fs_err::read(input).map_err(io(input))?;
            let bytes =
                match (a.kind, c.config.signing.as_ref().and_then(|s| s.mcuboot.as_ref()), &signer)
                {
                    (config::ArtifactKind::Mcuboot, Some(m), Some(signer)) => {
                        let parts = c.update_id.version().parts();
                        let version = format!(
                            "{}.{}.{}",
                            parts[0],
                            parts.get(1).unwrap_or(&0),
                            parts.get(2).unwrap_or(&0)
                        );
                        let opts = crate::mcuboot::SignOptions {
                            version: version.parse().map_err(ReleaseError::Sign)?,
                            header_size: m.header_size,
                            pad_header: true,
                            slot_size: m.slot_size,
                            align: m.align.value,
                            ..Default::default()
                        };
                        crate::mcuboot::sign(&bytes, &opts, signer.as_ref())
                            .map_err(|e| ReleaseError::Sign(format!("{name}: {e}")))?
                    }
                    _ => bytes,
                };
            let out = files.join(&name);
            crate::fsutil::write_output(&out, &bytes, crate::fsutil::Privacy::Public)
                .map_err(io(&out))?;
            state.artifacts.push(Output::of(&out)?);
        }
        state.deltas.clear();
        state.manifest = None;
        state.metadata = None;
        made.push("artifacts".to_owned());
        state.write(&dir)?;
    }
    // Deltas, one per artifact and base.
    let deltas_ok =
        !state.deltas.is_empty() || !state.skipped_deltas.is_empty() || c.bases.is_empty();
    if !deltas_ok || !state.deltas.iter().all(|d| d.file.verifies(&files)) {
        state.deltas.clear();
        state.skipped_deltas.clear();
        let (share, profile) = c
            .config
            .delta
            .as_ref()
            .map_or((0.8, config::DeltaProfile::Linux), |d| (d.max_share.value, d.profile));
        for base in &c.bases {
            let path = base.join(STATE_FILE);
            let b = State::read(base).ok_or_else(|| ReleaseError::Base {
                path: path.clone(),
                message: "not a release state file".into(),
            })?;
            let base_version = b.update_id.rsplit('/').next().unwrap_or_default().to_owned();
            for (i, (a, art)) in c.config.artifacts.iter().zip(state.artifacts.clone()).enumerate()
            {
                let Some(old) = b.artifacts.get(i).filter(|_| a.delta) else { continue };
                let old_path = base.join("files").join(&old.name);
                let old_bytes = fs_err::read(&old_path).map_err(io(&old_path))?;
                let new_path = files.join(&art.name);
                let new_bytes = fs_err::read(&new_path).map_err(io(&new_path))?;
                let delta_opts = crate::delta::CreateOptions {
                    profile: match profile {
                        config::DeltaProfile::Mcu => crate::delta::Profile::Mcu,
                        config::DeltaProfile::Linux => crate::delta::Profile::Linux,
                    },
                    threads: opts.jobs.max(1),
                    ..Default::default()
                };
                let created = crate::delta::create(&old_bytes, &new_bytes, &delta_opts, reporter)
                    .map_err(|source| ReleaseError::Delta {
                    artifact: art.name.clone(),
                    base: base_version.clone(),
                    source: Box::new(source),
                })?;
                let limit = (new_bytes.len() as f64 * share) as usize;
                if created.bytes.len() >= limit {
                    state.skipped_deltas.push(format!(
                        "{} from {base_version}: {} bytes is not below {:.0} % of {} bytes",
                        art.name,
                        created.bytes.len(),
                        share * 100.0,
                        new_bytes.len()
                    ));
                    continue;
                }
                let name = format!("{}.from-{base_version}.delta", art.name);
                let out = files.join(&name);
                crate::fsutil::write_output(&out, &created.bytes, crate::fsutil::Privacy::Public)
                    .map_err(io(&out))?;
                state.deltas.push(DeltaOutput {
                    artifact: art.name.clone(),
                    base_version: base_version.clone(),
                    file: Output::of(&out)?,
                    source_sha256: old.sha256.clone(),
                });
                // The base file goes beside the manifest for the source hash (not uploaded).
            }
        }
        state.manifest = None;
        state.metadata = None;
        made.push("deltas".to_owned());
        state.write(&dir)?;
    }
    // The IoT Edge deployment manifest, as the Edge stages deploy it.
    if let Some(m) = &c.edge_manifest
        && !state.edge_manifest.as_ref().is_some_and(|o| o.verifies(&files))
    {
        let bytes = fs_err::read(m).map_err(io(m))?;
        let out = files.join("deployment.edge.json");
        crate::fsutil::write_output(&out, &bytes, crate::fsutil::Privacy::Public)
            .map_err(io(&out))?;
        state.edge_manifest = Some(Output::of(&out)?);
        made.push("edge manifest".to_owned());
        state.write(&dir)?;
    }
    // An IoT Edge-only release has no update to import.
    if state.artifacts.is_empty() {
        return Ok(Built { dir, state, made });
    }
    // The import manifest.
    if !state.manifest.as_ref().is_some_and(|m| m.verifies(&files)) {
        let steps = c
            .config
            .artifacts
            .iter()
            .zip(&state.artifacts)
            .map(|(a, art)| {
                let handler = a
                    .handler
                    .as_ref()
                    .map(|h| h.value.clone())
                    .or(a.kind.default_handler().map(str::to_owned))
                    .unwrap_or_default();
                let mut props = serde_json::Map::new();
                let criteria = a
                    .installed_criteria
                    .clone()
                    .unwrap_or_else(|| c.update_id.version().as_str().to_owned());
                props.insert("installedCriteria".into(), serde_json::Value::String(criteria));
                if a.kind == config::ArtifactKind::Script {
                    props.insert(
                        "scriptFileName".into(),
                        serde_json::Value::String(art.name.clone()),
                    );
                }
                StepSpec::Inline {
                    handler,
                    files: vec![art.name.clone()],
                    properties: Some(props),
                    description: None,
                }
            })
            .collect();
        let file_specs = state
            .artifacts
            .iter()
            .map(|art| FileSpec {
                path: files.join(&art.name),
                download_handler: state
                    .deltas
                    .iter()
                    .any(|d| d.artifact == art.name)
                    .then(|| "microsoft/delta:1".to_owned()),
            })
            .collect();
        let mut related = Vec::new();
        for d in &state.deltas {
            let base = c.bases.iter().find(|b| {
                State::read(b)
                    .is_some_and(|s| s.update_id.ends_with(&format!("/{}", d.base_version)))
            });
            let source = base.and_then(|b| {
                let s = State::read(b)?;
                let old = s.artifacts.iter().find(|o| o.sha256 == d.source_sha256)?;
                Some(b.join("files").join(&old.name))
            });
            related.push(RelatedSpec {
                target: d.artifact.clone(),
                path: files.join(&d.file.name),
                properties: Vec::new(),
                source,
            });
        }
        let u = &c.config.update;
        let spec = ManifestSpec {
            update_id: c.update_id.clone(),
            description: u.description.clone(),
            deployable: true,
            compatibility: u
                .compatibility
                .value
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect()
                })
                .collect(),
            steps,
            files: file_specs,
            related,
            created: state.created.clone(),
            template: None,
            jobs: opts.jobs.max(1),
        };
        let built = crate::manifest::build(spec, reporter)?;
        let name = built.manifest.default_file_name();
        let bytes = built
            .manifest
            .to_json_bytes()
            .map_err(|e| ReleaseError::Refused(format!("the manifest: {e}")))?;
        let out = files.join(&name);
        crate::fsutil::write_output(&out, &bytes, crate::fsutil::Privacy::Public)
            .map_err(io(&out))?;
        state.manifest = Some(Output::of(&out)?);
        state.metadata = None;
        made.push("manifest".to_owned());
        state.write(&dir)?;
    }
    // Signed release metadata over the manifest and files.
    let wants_meta = c.config.signing.as_ref().is_some_and(|s| s.metadata);
    if wants_meta && !state.metadata.as_ref().is_some_and(|m| m.verifies(&dir)) {
        let Some(signer) = &signer else { return Err(ReleaseError::Sign("no key".into())) };
        let created = crate::time::Timestamp::parse(&state.created)
            .map_err(|e| ReleaseError::Sign(e.to_string()))?;
        let expires = created
            .checked_add(c.expires_in)
            .ok_or_else(|| ReleaseError::Sign("expiry out of range".into()))?;
        let mut paths: Vec<PathBuf> = state.artifacts.iter().map(|a| files.join(&a.name)).collect();
        paths.extend(state.deltas.iter().map(|d| files.join(&d.file.name)));
        let path_refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let counter = c.config.signing.as_ref().map_or(0, |s| s.security_counter);
        let release = crate::sign::meta::describe(
            &path_refs,
            c.update_id.version(),
            counter,
            created,
            expires,
            &[signer.as_ref()],
        )
        .map_err(|e| ReleaseError::Sign(e.to_string()))?;
        let text = crate::sign::meta::sign(&release, &[signer.as_ref()])
            .map_err(|e| ReleaseError::Sign(e.to_string()))?;
        let out = dir.join("release.meta.json");
        crate::fsutil::write_output(&out, text.as_bytes(), crate::fsutil::Privacy::Public)
            .map_err(io(&out))?;
        state.metadata = Some(Output::of(&out)?);
        made.push("metadata".to_owned());
        state.write(&dir)?;
    }
    Ok(Built { dir, state, made })
}

/// The release document inside a signed metadata file (its JWS payload).
fn release_of(text: &str) -> Option<crate::sign::meta::Release> {
    use base64::Engine as _;
    let doc: serde_json::Value = serde_json::from_str(text).ok()?;
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(doc["payload"].as_str()?).ok()?;
    serde_json::from_slice(&payload).ok()
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
    let container = c
        .config
        .storage
        .container
        .as_ref()
        .map_or_else(|| "adu-imports".to_owned(), |x| x.value.clone())
        .parse::<ContainerName>()
        .map_err(|e| ReleaseError::Refused(e.to_string()))?;
    let http = reqwest::Client::new();
    for (version, dir) in &c.remote_bases {
        if dir.join(STATE_FILE).is_file() {
            continue;
        }
        let id = UpdateId::new(c.update_id.provider(), c.update_id.name(), version)
            .map_err(|e| ReleaseError::Refused(e.to_string()))?;
        let prefix = format!("{}/{}/{}", id.provider(), id.name(), id.version());
        let base_err = |message: String| ReleaseError::Base { path: dir.clone(), message };
        let get = |name: String| {
            let http = http.clone();
            let container = container.clone();
            let prefix = prefix.clone();
            async move {
                let blob = format!("{prefix}/{name}")
                    .parse::<crate::storage::BlobName>()
                    .map_err(|e| e.to_string())?;
                let url = store
                    .read_url(&container, &blob, Duration::from_secs(3600))
                    .await
                    .map_err(|e| e.to_string())?;
                let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("{blob}: {}", resp.status()));
                }
                resp.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string())
            }
        };
        let manifest_name =
            format!("{}.{}.{}.importmanifest.json", id.provider(), id.name(), id.version());
        let bytes = get(manifest_name.clone())
            .await
            .map_err(|e| base_err(format!("release {version} from the storage container: {e}")))?;
        let manifest: crate::manifest::ImportManifest = serde_json::from_slice(&bytes)
            .map_err(|e| base_err(format!("{manifest_name}: {e}")))?;
        let files_dir = dir.join("files");
        fs_err::create_dir_all(&files_dir).map_err(io(&files_dir))?;
        let mut artifacts = Vec::new();
        for f in &manifest.files {
            let name = f.filename.as_str().to_owned();
            let bytes = get(name.clone()).await.map_err(base_err)?;
            if bytes.len() as u64 != f.size_in_bytes || Sha256::digest(&bytes) != f.hashes.sha256 {
                return Err(base_err(format!(
                    "{name} does not match release {version}'s manifest"
                )));
            }
            let out = files_dir.join(&name);
            crate::fsutil::write_output(&out, &bytes, crate::fsutil::Privacy::Public)
                .map_err(io(&out))?;
            artifacts.push(Output::of(&out)?);
        }
        let state = State { update_id: id.to_string(), artifacts, ..State::default() };
        state.write(dir)?;
        fetched.push(version.clone());
    }
    Ok(fetched)
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
    let manifest = built
        .manifest_path()
        .ok_or_else(|| ReleaseError::Refused("the build made no manifest".into()))?;
    // An import a killed run started may still be running: wait for it before looking, so it
    // is not started a second time.
    let ops = client.list_operations().await.map_err(service("list import operations"))?;
    for op in ops.iter().filter(|o| {
        matches!(
            o.status,
            crate::service::OperationStatus::NotStarted | crate::service::OperationStatus::Running
        )
    }) {
        client
            .wait_operation(&op.operation_id, c.import_timeout, &mut |_| {})
            .await
            .map_err(service("wait for an import already under way"))?;
    }
    let checked = crate::pipeline::check(
        std::slice::from_ref(&manifest),
        crate::hash::default_jobs(),
        reporter,
    )?;
    let planned = crate::pipeline::plan(checked, client).await?;
    if !planned.todo.is_empty() {
        let container = c
            .config
            .storage
            .container
            .as_ref()
            .map_or_else(|| "adu-imports".to_owned(), |x| x.value.clone());
        let plan = crate::pipeline::UploadPlan {
            container: container
                .parse::<ContainerName>()
                .map_err(|e| ReleaseError::Refused(e.to_string()))?,
            options: crate::storage::UploadOptions::default(),
            url_ttl: Duration::from_secs(4 * 3600),
        };
        // The signed release metadata goes beside the update's files.
        let mut releases = Vec::new();
        if let Some(m) = &built.state.metadata {
            let path = built.dir.join(&m.name);
            let text = fs_err::read_to_string(&path).map_err(io(&path))?;
            let release = release_of(&text).ok_or_else(|| ReleaseError::Base {
                path: path.clone(),
                message: "not signed release metadata".into(),
            })?;
            releases.push(crate::pipeline::SignedRelease {
                id: c.update_id.clone(),
                path,
                release,
            });
        }
        let signed = crate::pipeline::Signed { planned, releases };
        let uploaded = crate::pipeline::upload(signed, store, &plan, reporter).await?;
        let started = crate::pipeline::start(uploaded, client).await?;
        let done = crate::pipeline::wait(started, client, c.import_timeout, &mut |_| {}).await?;
        // Another run imported the same content meanwhile: that is this release imported.
        let raced = !done.succeeded()
            && done.operation.error.as_ref().is_some_and(|e| e.code == "UpdateAlreadyExists")
            && {
                let checked =
                    crate::pipeline::check(&[manifest], crate::hash::default_jobs(), reporter)?;
                crate::pipeline::plan(checked, client).await?.todo.is_empty()
            };
        if !done.succeeded() && !raced {
            let why = done.operation.error.as_ref().map(|e| e.describe()).unwrap_or_default();
            return Err(ReleaseError::Refused(format!("import failed: {why}")));
        }
    }
    built.state.imported = true;
    built.made.push("import".to_owned());
    built.state.write(&built.dir)?;
    Ok(built)
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

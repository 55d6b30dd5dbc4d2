//! `otaforge.toml`: what a release is, in the firmware repo, strictly typed. An unknown key,
//! a value of the wrong type and every rule below is an error naming the file, the line and the
//! field (`stage[2].group`), before anything is built or sent. `docs/release.md` documents it
//! field by field; [`schema`] gives its JSON Schema, generated from these types.

use std::borrow::Cow;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::manifest::UpdateId;

/// At most this many earlier releases a delta is made from (ADU takes 4 related files per
/// file).
pub const MAX_BASES: usize = 4;

/// How long a version command may run unless `version-command-timeout` says otherwise (`git
/// describe` takes milliseconds; a build-system query on a cold cache, seconds).
pub const DEFAULT_VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// A value with where it was written (byte range in the file), for error lines.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    /// The value.
    pub value: T,
    /// Where it is in the file.
    pub span: Range<usize>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = toml::Spanned::<T>::deserialize(d)?;
        Ok(Self { span: s.span(), value: s.into_inner() })
    }
}

impl<T: Serialize> Serialize for At<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: JsonSchema> JsonSchema for At<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "otaforge.toml", description = "An otaforge release (docs/release.md).")]
pub struct Config {
    /// The update: its identity and what it is compatible with.
    pub update: UpdateSection,
    /// The files the update installs, in step order (none for an IoT Edge-only release).
    #[serde(default, rename = "artifact")]
    pub artifacts: Vec<Artifact>,
    /// Deltas from earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaSection>,
    /// Signing: signed release metadata, MCUboot images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSection>,
    /// Where the files are uploaded.
    #[serde(default)]
    pub storage: StorageSection,
    /// The Device Update service.
    #[serde(default)]
    pub service: ServiceSection,
    /// An IoT Edge deployment manifest the release rolls out (Edge stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeSection>,
    /// The rollout, stage by stage, in order.
    #[serde(default, rename = "stage")]
    pub stages: Vec<Stage>,
    /// Where the release's outputs go (default `out/release`), relative to the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
}

/// `[update]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpdateSection {
    /// Update provider (ADU's rules: letters, digits, `.`, `-`, `_`).
    pub provider: At<String>,
    /// Update name.
    pub name: At<String>,
    /// The version (2 to 4 numbers), or give `version-file` or `version-command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<At<String>>,
    /// A file whose first line is the version (e.g. `VERSION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_file: Option<At<PathBuf>>,
    /// A command (run with `sh -c` in the file's folder) that prints the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_command: Option<At<String>>,
    /// How long `version-command` may run, e.g. `2m` (default `60s`); it may print at most
    /// 4 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_command_timeout: Option<At<String>>,
    /// What the update is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Compatibility sets: each a table of device properties (`manufacturer`, `model`, …).
    pub compatibility: At<Vec<std::collections::BTreeMap<String, String>>>,
}

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A raw image (the handler must be named).
    Raw,
    /// An MCUboot image; signed by otaforge when `[signing.mcuboot]` is given.
    Mcuboot,
    /// An SWUpdate `.swu` (`microsoft/swupdate:2`).
    Swupdate,
    /// An APT manifest (`microsoft/apt:1`).
    Apt,
    /// A script (`microsoft/script:1`).
    Script,
}

impl ArtifactKind {
    /// The ADU handler it takes when none is named.
    pub fn default_handler(self) -> Option<&'static str> {
        match self {
            Self::Swupdate => Some("microsoft/swupdate:2"),
            Self::Apt => Some("microsoft/apt:1"),
            Self::Script => Some("microsoft/script:1"),
            Self::Raw | Self::Mcuboot => None,
        }
    }
}

/// `[[artifact]]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Artifact {
    /// The file, relative to otaforge.toml; a glob must match exactly one file.
    pub path: At<String>,
    /// What it is.
    pub kind: ArtifactKind,
    /// The ADU step handler (default by kind; required for `raw` and `mcuboot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<At<String>>,
    /// `installedCriteria` the handler checks (default: the update version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_criteria: Option<String>,
    /// Make deltas of this file from the bases (default true).
    #[serde(default = "yes")]
    pub delta: bool,
    /// Allow the file to resolve outside the repository (the folder of otaforge.toml): a
    /// `../` path, an absolute path, or a symlink leading out (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outside_repository: bool,
}

fn yes() -> bool {
    true
}

/// Which target a delta is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaProfile {
    /// Linux images (large dictionaries).
    Linux,
    /// Microcontrollers (LZMA with a 4 KiB dictionary: about 10 KiB of RAM to apply, measured).
    Mcu,
}

/// `[delta]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeltaSection {
    /// Earlier releases' output folders (each holds its `release-state.json` and files), at
    /// most 4; each artifact gets one delta per base, paired by position.
    pub bases: At<Vec<PathBuf>>,
    /// Skip a delta that is not smaller than this share of the full file (0 to 1, default
    /// 0.8).
    #[serde(default = "default_share")]
    pub max_share: At<f64>,
    /// The target (default `linux`).
    #[serde(default = "default_profile")]
    pub profile: DeltaProfile,
}

fn default_share() -> At<f64> {
    At { value: 0.8, span: 0..0 }
}

fn default_profile() -> DeltaProfile {
    DeltaProfile::Linux
}

/// `[signing]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SigningSection {
    /// The Ed25519 private key: a PEM file relative to otaforge.toml, or `env:VAR`; or give
    /// `command` and `public-key` (an HSM or signing service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<At<String>>,
    /// An external signer: run with `sh -c`, the message on stdin, the signature (raw or
    /// base64) on stdout; checked against `public-key` before use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<At<String>>,
    /// With `command`: the signer's public key (PEM), relative to otaforge.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<At<PathBuf>>,
    /// Write signed release metadata (version, expiry, security counter) over the files
    /// (default true).
    #[serde(default = "yes")]
    pub metadata: bool,
    /// Security counter of the release metadata (default 0).
    #[serde(default)]
    pub security_counter: u64,
    /// How long the metadata stays valid, e.g. `365d` (default 365 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<At<String>>,
    /// Sign `mcuboot` artifacts as MCUboot images (input: the raw application binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcuboot: Option<McubootSection>,
}

/// `[signing.mcuboot]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct McubootSection {
    /// Header size (default 0x200), prepended as erased bytes.
    #[serde(default = "default_header")]
    pub header_size: u16,
    /// Slot size (0: unchecked).
    #[serde(default)]
    pub slot_size: u32,
    /// Flash write alignment: 1, 2, 4 or 8 (default 4).
    #[serde(default = "default_align")]
    pub align: At<u8>,
}

fn default_header() -> u16 {
    0x200
}

fn default_align() -> At<u8> {
    At { value: 4, span: 0..0 }
}

/// `[storage]`: with nothing set, the service's own store (`otaforge serve`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageSection {
    /// A local folder to store in instead (what `otaforge serve --blob-dir` or a web server
    /// publishes), relative to otaforge.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// With `dir`: the URL prefix read URLs start with (default
    /// `http://127.0.0.1:8080/blobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The blob container (default `adu-imports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<At<String>>,
    /// Azure Storage account name (authenticated from `AZURE_STORAGE_KEY`, a SAS in
    /// `AZURE_STORAGE_SAS_TOKEN`, or Entra ID, as `otaforge upload` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// `[edge]`: the IoT Edge deployment the Edge stages create (an IoT Hub configuration per
/// stage, `edge.md`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EdgeSection {
    /// The deployment manifest (`{"modulesContent": …}`, as `otaforge edge manifest build`
    /// writes it), relative to otaforge.toml; validated as `edge manifest validate` does.
    pub manifest: At<PathBuf>,
    /// The deployments' priority (default 10): above the previous release's, so that deleting
    /// a failed stage's deployment lets its devices fall back to it.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Allow the manifest to resolve outside the repository (the folder of otaforge.toml)
    /// (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outside_repository: bool,
}

fn default_priority() -> i64 {
    10
}

/// `[service]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceSection {
    /// The Device Update endpoint (default: the embedded `otaforge serve` at
    /// `http://127.0.0.1:8080`).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The instance (default `default`).
    #[serde(default = "default_instance")]
    pub instance: String,
    /// How long an import may take (default `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_timeout: Option<At<String>>,
    /// A file holding the IoT Hub service connection string, for Edge stages (default:
    /// `$IOTHUB_CONNECTION_STRING`); relative to otaforge.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iothub_connection_file: Option<PathBuf>,
}

impl Default for ServiceSection {
    fn default() -> Self {
        Self {
            endpoint: default_endpoint(),
            instance: default_instance(),
            import_timeout: None,
            iothub_connection_file: None,
        }
    }
}

fn default_endpoint() -> String {
    "http://127.0.0.1:8080".into()
}

fn default_instance() -> String {
    "default".into()
}

/// What a stage does when a gate fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Leave the deployment as it is and stop the release.
    Stop,
    /// Cancel the stage's deployment and stop.
    Cancel,
    /// Deploy the rollback update to the stage's group (`rollback-to`, or the newest earlier
    /// version of this update the service holds) and stop.
    Rollback,
}

/// `[[stage]]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Stage {
    /// The stage's name (unique; `--until NAME` stops after it).
    pub name: At<String>,
    /// The Device Update group it deploys to (or give `edge-target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<At<String>>,
    /// An IoT Edge stage: the target condition of its Edge deployment
    /// (`tags.environment='canary'`), for the manifest of `[edge]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_target: Option<At<String>>,
    /// The share of the group's devices that must succeed (0 to 1, default 1).
    #[serde(default = "one")]
    pub min_succeeded: At<f64>,
    /// At most this many devices may fail (default 0).
    #[serde(default)]
    pub max_failed: u64,
    /// At most this share of the devices may fail (0 to 1; default: no share limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_share: Option<At<f64>>,
    /// How long the stage may take to reach `min-succeeded` (default `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<At<String>>,
    /// How long to watch for failures after it passed, before the next stage (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<At<String>>,
    /// What to do when a gate fails (default `stop`).
    #[serde(default = "default_on_failure")]
    pub on_failure: OnFailure,
    /// With `on-failure = "rollback"`: the version to roll back to (default: the newest
    /// earlier version of this update on the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<At<String>>,
}

fn one() -> At<f64> {
    At { value: 1.0, span: 0..0 }
}

fn default_on_failure() -> OnFailure {
    OnFailure::Stop
}

/// A problem with the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {field}: {message}", file.display())]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the problem has no place, e.g. a missing table).
    pub line: usize,
    /// The field, as `stage[2].group`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A checked release description: the file's folder, the parsed file, and what was worked out
/// from it.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The folder paths are relative to.
    pub root: PathBuf,
    /// The file as written.
    pub config: Config,
    /// The update id, with its version found.
    pub update_id: UpdateId,
    /// Each artifact's file.
    pub files: Vec<PathBuf>,
    /// Where the outputs go.
    pub output: PathBuf,
    /// Earlier releases' output folders.
    pub bases: Vec<PathBuf>,
    /// The import's timeout.
    pub import_timeout: Duration,
    /// Each stage's timeout and soak.
    pub stage_times: Vec<(Duration, Duration)>,
    /// The metadata's validity.
    pub expires_in: Duration,
    /// The file.
    pub file: PathBuf,
    /// The line of each stage's `group` (or `edge-target`).
    pub group_lines: Vec<usize>,
    /// The IoT Edge deployment manifest, validated.
    pub edge_manifest: Option<PathBuf>,
    /// Bases named `storage:VERSION`: each version and the folder it is fetched into
    /// (`OUTPUT/bases/VERSION`), which is also in `bases`.
    pub remote_bases: Vec<(String, PathBuf)>,
}

/// The 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map_or(0, |t| t.bytes().filter(|b| *b == b'\n').count()) + 1
}

/// The JSON Schema of `otaforge.toml`.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

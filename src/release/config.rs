//! `otaforge.toml`: what a release is, in the firmware repo, strictly typed. An unknown key,
//! a value of the wrong type and every rule below is an error naming the file, the line and the
//! field (`stage[2].group`), before anything is built or sent. `docs/release.md` documents it
//! field by field; [`schema`] gives its JSON Schema, generated from these types.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::manifest::UpdateId;

/// At most this many earlier releases a delta is made from (ADU takes 4 related files per
/// file).
pub const MAX_BASES: usize = 4;

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
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map_or(0, |t| t.bytes().filter(|b| *b == b'\n').count()) + 1
}

/// A table header line's name and whether it is an array of tables (`[[x]]`).
fn header(line: &str) -> Option<(String, bool)> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("[[") {
        return Some((rest.split("]]").next()?.trim().to_owned(), true));
    }
    let rest = t.strip_prefix('[')?;
    Some((rest.split(']').next()?.trim().to_owned(), false))
}

/// The field path (`stage[1].on-failure`) of the key written on 1-based `line`.
fn path_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(this) = line.checked_sub(1).and_then(|i| lines.get(i)) else { return "(file)".into() };
    if this.trim().is_empty() || this.trim_start().starts_with('#') {
        return "(file)".into();
    }
    if let Some((name, _)) = header(this) {
        return name;
    }
    let key = this.split('=').next().unwrap_or_default().trim().to_owned();
    for i in (0..line - 1).rev() {
        if let Some((name, array)) = header(lines[i]) {
            if array {
                let index = lines[..i]
                    .iter()
                    .filter(|l| header(l).is_some_and(|(n, a)| a && n == name))
                    .count();
                return format!("{name}[{index}].{key}");
            }
            return format!("{name}.{key}");
        }
    }
    key
}

/// A parse or type error, with its line and field path.
fn parse_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut line = e.span().map_or(0, |s| line_of(text, s.start));
    let message = e.message().trim().to_owned();
    let mut field = path_at(text, line);
    // A missing field is reported at its table (a top-level one has no line).
    if let Some(missing) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next())
    {
        if field == "(file)" {
            field = missing.to_owned();
            line = 0;
        } else {
            field = format!("{field}.{missing}");
        }
    }
    ConfigError { file: file.to_owned(), line, field, message }
}

/// Every problem of a parsed file, each with its line.
struct Problems<'a> {
    file: &'a Path,
    text: &'a str,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn add(&mut self, span: &Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let line = if span.end == 0 { 0 } else { line_of(self.text, span.start) };
        self.list.push(ConfigError {
            file: self.file.to_owned(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Whether the artifact file `file` may be shipped: inside the repository (unless the artifact
/// allows otherwise) and not the signing key.
fn shippable(
    root: &Path,
    a: &Artifact,
    file: &Path,
    signing_key: Option<&Path>,
) -> Result<(), String> {
    let resolved = if a.outside_repository {
        fs_err::canonicalize(file).map_err(|e| e.to_string())?
    } else {
        super::inputs::inside(root, &a.path.value, file).map_err(|e| e.to_string())?
    };
    if Some(resolved.as_path()) == signing_key {
        return Err(format!(
            "`{}` is the signing key ([signing] key); a release never ships a private key",
            a.path.value
        ));
    }
    Ok(())
}

/// A duration like `30m`, `10s`, `365d`.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 30s, 10m, 2h or 365d ({e})"))
}

/// Reads and checks `path`: every problem at once.
pub fn load(path: &Path) -> Result<Checked, Vec<ConfigError>> {
    let one = |line, field: &str, message: String| {
        vec![ConfigError { file: path.to_owned(), line, field: field.into(), message }]
    };
    let text = fs_err::read_to_string(path).map_err(|e| one(0, "(file)", e.to_string()))?;
    let config: Config = toml::from_str(&text).map_err(|e| vec![parse_error(path, &text, &e)])?;
    let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    check(path, &text, root, config)
}

fn check(
    path: &Path,
    text: &str,
    root: &Path,
    config: Config,
) -> Result<Checked, Vec<ConfigError>> {
    let mut p = Problems { file: path, text, list: Vec::new() };
    let u = &config.update;
    // The version: written, from a file, or from a command.
    if let (Some(t), None) = (&u.version_command_timeout, &u.version_command) {
        p.add(&t.span, "update.version-command-timeout", "only with version-command");
    }
    let sources = [u.version.is_some(), u.version_file.is_some(), u.version_command.is_some()];
    let version = match (&u.version, &u.version_file, &u.version_command) {
        _ if sources.iter().filter(|s| **s).count() > 1 => {
            p.add(&u.name.span, "update", "give one of version, version-file and version-command");
            None
        }
        (Some(v), _, _) => Some((v.value.trim().to_owned(), v.span.clone(), "update.version")),
        (_, Some(f), _) => match fs_err::read_to_string(root.join(&f.value)) {
            Ok(t) => Some((
                t.lines().next().unwrap_or_default().trim().to_owned(),
                f.span.clone(),
                "update.version-file",
            )),
            Err(e) => {
                p.add(&f.span, "update.version-file", e.to_string());
                None
            }
        },
        (_, _, Some(c)) => {
            let timeout = match &u.version_command_timeout {
                Some(t) => duration(&t.value).unwrap_or_else(|m| {
                    p.add(&t.span, "update.version-command-timeout", m);
                    super::version::DEFAULT_TIMEOUT
                }),
                None => super::version::DEFAULT_TIMEOUT,
            };
            match super::version::run(&c.value, root, timeout) {
                Ok(v) => Some((v, c.span.clone(), "update.version-command")),
                Err(e) => {
                    p.add(&c.span, "update.version-command", e.to_string());
                    None
                }
            }
        }
        (None, None, None) => {
            p.add(
                &u.name.span,
                "update",
                "no version: give version, version-file or version-command",
            );
            None
        }
    };
    let mut update_id = None;
    if let Some((v, span, field)) = &version {
        match UpdateId::new(&u.provider.value, &u.name.value, v) {
            Ok(id) => update_id = Some(id),
            Err(e) => {
                let field: &str = match &e {
                    crate::manifest::IdError::BadVersion { .. } => field,
                    crate::manifest::IdError::BadPart { what: "name", .. }
                    | crate::manifest::IdError::DotsOnly { what: "name", .. } => "update.name",
                    _ => "update.provider",
                };
                let span = match field {
                    "update.provider" => &u.provider.span,
                    "update.name" => &u.name.span,
                    _ => span,
                };
                p.add(span, field, e.to_string());
            }
        }
    }
    if u.compatibility.value.is_empty() {
        p.add(
            &u.compatibility.span,
            "update.compatibility",
            "give at least one set, e.g. [{ manufacturer = \"contoso\", model = \"toaster\" }]",
        );
    }
    for (i, set) in u.compatibility.value.iter().enumerate() {
        if set.is_empty() {
            p.add(
                &u.compatibility.span,
                format!("update.compatibility[{i}]"),
                "an empty set matches no device",
            );
        }
    }
    // Artifacts.
    if config.artifacts.is_empty() && config.edge.is_none() {
        p.add(
            &(0..0),
            "artifact",
            "no [[artifact]]: a release needs at least one file (or an [edge] manifest)",
        );
    }
    // The IoT Edge manifest.
    let mut edge_manifest = None;
    if let Some(e) = &config.edge {
        let path = root.join(&e.manifest.value);
        let written = e.manifest.value.to_string_lossy();
        let outside = match super::inputs::inside(root, &written, &path) {
            Err(err @ super::inputs::InputError::Outside { .. }) if !e.outside_repository => {
                Some(err.to_string())
            }
            _ => None,
        };
        match outside.map_or_else(|| fs_err::read(&path).map_err(|e| e.to_string()), Err) {
            Err(err) => p.add(&e.manifest.span, "edge.manifest", err),
            Ok(bytes) => {
                match crate::edge::manifest::validate(&bytes, crate::edge::manifest::Kind::Base) {
                    Err(err) => p.add(&e.manifest.span, "edge.manifest", err.to_string()),
                    Ok(f) if f.has_errors() => {
                        for x in f
                            .iter()
                            .filter(|x| x.severity == crate::finding::Severity::Error)
                            .take(5)
                        {
                            p.add(
                                &e.manifest.span,
                                "edge.manifest",
                                format!("{}: {x}", path.display()),
                            );
                        }
                    }
                    Ok(_) => edge_manifest = Some(path),
                }
            }
        }
    }
    let mut files = Vec::new();
    let signing_key = config
        .signing
        .as_ref()
        .and_then(|s| s.key.as_ref())
        .filter(|k| !k.value.starts_with("env:"))
        .and_then(|k| fs_err::canonicalize(root.join(&k.value)).ok());
    for (i, a) in config.artifacts.iter().enumerate() {
        let field = format!("artifact[{i}].path");
        let matches = match super::inputs::expand(root, &a.path.value) {
            Ok(m) => m,
            Err(e) => {
                p.add(&a.path.span, &field, e.to_string());
                continue;
            }
        };
        match matches.as_slice() {
            [one] => match shippable(root, a, one, signing_key.as_deref()) {
                Ok(()) => files.push(one.clone()),
                Err(m) => p.add(&a.path.span, &field, m),
            },
            [] => p.add(
                &a.path.span,
                &field,
                format!(
                    "`{}` matches no file (relative to {}); build it first",
                    a.path.value,
                    root.display()
                ),
            ),
            many => p.add(
                &a.path.span,
                &field,
                format!("`{}` matches {} files; it must name one", a.path.value, many.len()),
            ),
        }
        if a.handler.is_none() && a.kind.default_handler().is_none() {
            p.add(&a.path.span, format!("artifact[{i}].handler"), format!("a {:?} artifact needs handler = \"vendor/name:1\" (the step handler on the device)", a.kind).to_lowercase());
        }
        if let Some(h) = &a.handler
            && !h.value.contains('/')
        {
            p.add(
                &h.span,
                format!("artifact[{i}].handler"),
                "a handler id is vendor/name:version, e.g. microsoft/swupdate:2",
            );
        }
        if a.kind == ArtifactKind::Mcuboot
            && config.signing.as_ref().is_some_and(|s| s.mcuboot.is_some())
            && config.signing.is_none()
        {
            p.add(
                &a.path.span,
                format!("artifact[{i}]"),
                "signing an MCUboot image needs [signing] key",
            );
        }
    }
    // Deltas.
    let mut bases = Vec::new();
    let mut remote_bases = Vec::new();
    if let Some(d) = &config.delta {
        if d.bases.value.len() > MAX_BASES {
            p.add(
                &d.bases.span,
                "delta.bases",
                format!(
                    "{} bases; ADU takes at most {MAX_BASES} related files per file",
                    d.bases.value.len()
                ),
            );
        }
        let out_root =
            root.join(config.output.clone().unwrap_or_else(|| PathBuf::from("out/release")));
        for (i, b) in d.bases.value.iter().enumerate() {
            // `storage:VERSION`: an earlier release read back from the storage container.
            if let Some(version) = b.to_str().and_then(|t| t.strip_prefix("storage:")) {
                if !crate::manifest::Version::problems(version).is_empty() {
                    p.add(
                        &d.bases.span,
                        format!("delta.bases[{i}]"),
                        format!("`{version}` is not a version of 2 to 4 numbers"),
                    );
                    continue;
                }
                let dir = out_root.join("bases").join(version);
                remote_bases.push((version.to_owned(), dir.clone()));
                bases.push(dir);
                continue;
            }
            let dir = root.join(b);
            if !dir.join(super::STATE_FILE).is_file() {
                p.add(
                    &d.bases.span,
                    format!("delta.bases[{i}]"),
                    format!(
                        "{} holds no {} (an earlier release's output folder)",
                        dir.display(),
                        super::STATE_FILE
                    ),
                );
            }
            bases.push(dir);
        }
        if !(0.0..=1.0).contains(&d.max_share.value) {
            p.add(&d.max_share.span, "delta.max-share", "a share from 0 to 1");
        }
    }
    // Signing.
    let mut expires_in = Duration::from_secs(365 * 86_400);
    if let Some(s) = &config.signing {
        if let Some(e) = &s.expires_in {
            match duration(&e.value) {
                Ok(d) => expires_in = d,
                Err(m) => p.add(&e.span, "signing.expires-in", m),
            }
        }
        match (&s.key, &s.command, &s.public_key) {
            (Some(k), None, None) => {
                if !k.value.starts_with("env:") && !root.join(&k.value).is_file() {
                    p.add(
                        &k.span,
                        "signing.key",
                        format!(
                            "{} does not exist (a PEM file, or env:VAR)",
                            root.join(&k.value).display()
                        ),
                    );
                }
            }
            (None, Some(_), Some(pk)) => {
                if let Err(e) = crate::sign::PublicKey::from_file(&root.join(&pk.value)) {
                    p.add(&pk.span, "signing.public-key", e.to_string());
                }
            }
            (None, Some(c), None) => {
                p.add(
                    &c.span,
                    "signing.public-key",
                    "an external signer needs public-key (its PEM), to check each signature",
                );
            }
            _ => p.add(
                &(0..0),
                "signing",
                "give key (a PEM file or env:VAR), or command and public-key",
            ),
        }
        if let Some(m) = &s.mcuboot
            && ![1, 2, 4, 8].contains(&m.align.value)
        {
            p.add(&m.align.span, "signing.mcuboot.align", "1, 2, 4 or 8");
        }
    }
    if let Some(container) = &config.storage.container
        && let Err(e) = container.value.parse::<crate::storage::ContainerName>()
    {
        p.add(&container.span, "storage.container", e.to_string());
    }
    let mut import_timeout = Duration::from_secs(30 * 60);
    if let Some(t) = &config.service.import_timeout {
        match duration(&t.value) {
            Ok(d) => import_timeout = d,
            Err(m) => p.add(&t.span, "service.import-timeout", m),
        }
    }
    // Stages.
    let mut names = std::collections::HashSet::new();
    let mut stage_times = Vec::new();
    for (i, s) in config.stages.iter().enumerate() {
        if !names.insert(s.name.value.clone()) {
            p.add(
                &s.name.span,
                format!("stage[{i}].name"),
                format!("`{}` names an earlier stage too", s.name.value),
            );
        }
        match (&s.group, &s.edge_target) {
            (Some(g), None) => {
                if let Err(e) = crate::iothub::check_group_id(&g.value) {
                    p.add(&g.span, format!("stage[{i}].group"), e.to_string());
                }
            }
            (None, Some(t)) => {
                if let Err(e) = crate::edge::condition::Target::parse(&t.value) {
                    p.add(
                        &t.span,
                        format!("stage[{i}].edge-target"),
                        format!("position {}: {}", e.position, e.message),
                    );
                }
                if config.edge.is_none() {
                    p.add(
                        &t.span,
                        format!("stage[{i}].edge-target"),
                        "an Edge stage needs [edge] manifest",
                    );
                }
                if let Some(r) = &s.rollback_to {
                    p.add(
                        &r.span,
                        format!("stage[{i}].rollback-to"),
                        "an Edge stage rolls back by deleting its deployment (devices fall back to their next one)",
                    );
                }
            }
            _ => p.add(
                &s.name.span,
                format!("stage[{i}]"),
                "give one of group (Device Update) and edge-target (IoT Edge)",
            ),
        }
        if s.group.is_some() && config.artifacts.is_empty() {
            p.add(
                &s.name.span,
                format!("stage[{i}].group"),
                "a Device Update stage needs an [[artifact]]",
            );
        }
        for (share, field) in [
            (Some(&s.min_succeeded), "min-succeeded"),
            (s.max_failed_share.as_ref(), "max-failed-share"),
        ] {
            if let Some(x) = share
                && !(0.0..=1.0).contains(&x.value)
            {
                p.add(&x.span, format!("stage[{i}].{field}"), "a share from 0 to 1");
            }
        }
        let mut time = |t: &Option<At<String>>, field: &str, default: Duration| match t {
            Some(t) => duration(&t.value).unwrap_or_else(|m| {
                p.add(&t.span, format!("stage[{i}].{field}"), m);
                default
            }),
            None => default,
        };
        let timeout = time(&s.timeout, "timeout", Duration::from_secs(30 * 60));
        let soak = time(&s.soak, "soak", Duration::ZERO);
        stage_times.push((timeout, soak));
        if let Some(r) = &s.rollback_to {
            if s.on_failure != OnFailure::Rollback {
                p.add(
                    &r.span,
                    format!("stage[{i}].rollback-to"),
                    "only with on-failure = \"rollback\"",
                );
            }
            if !crate::manifest::Version::problems(&r.value).is_empty() {
                p.add(
                    &r.span,
                    format!("stage[{i}].rollback-to"),
                    format!("`{}` is not a version of 2 to 4 numbers", r.value),
                );
            }
        }
    }
    if !p.list.is_empty() {
        return Err(p.list);
    }
    let Some(update_id) = update_id else { return Err(p.list) };
    let output = root.join(config.output.clone().unwrap_or_else(|| PathBuf::from("out/release")));
    let group_lines = config
        .stages
        .iter()
        .map(|s| {
            let span = s.group.as_ref().or(s.edge_target.as_ref()).map_or(0, |g| g.span.start);
            line_of(text, span)
        })
        .collect();
    Ok(Checked {
        remote_bases,
        edge_manifest,
        file: path.to_owned(),
        group_lines,
        root: root.to_owned(),
        config,
        update_id,
        files,
        output,
        bases,
        import_timeout,
        stage_times,
        expires_in,
    })
}

/// The JSON Schema of `otaforge.toml`.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

//! Building import manifests from a description of the update and its files.
//!
//! The builder hashes every payload, related and source file (in parallel), fills the defaults
//! the ADU handlers need, and validates the result with the same rules as `manifest validate`,
//! so it never writes a manifest the service or the agent would refuse.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::ManifestError;
use super::id::UpdateId;
use super::model::{
    DownloadHandler, File, Hashes, ImportManifest, InlineStep, Instructions, MANIFEST_VERSION,
    ReferenceStep, ReferenceType, RelatedFile, Step,
};
pub use super::template::StepSpec;
use super::template::Template;
use super::validate::{self, SOURCE_HASH, SOURCE_HASH_ALGORITHM};
use crate::apt::AptManifest;
use crate::hash::{FileDigest, hash_files};
use crate::reporter::Reporter;

/// A payload file to include.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    /// Where the file is; its base name becomes `filename`.
    pub path: PathBuf,
    /// Optional download handler id (needed when the file has related files).
    pub download_handler: Option<String>,
}

/// A related file to attach to a payload file.
#[derive(Debug, Clone, PartialEq)]
pub struct RelatedSpec {
    /// Base name of the payload file it belongs to.
    pub target: String,
    /// Where the related file is.
    pub path: PathBuf,
    /// Extra string properties.
    pub properties: Vec<(String, String)>,
    /// The old file a delta applies to: fills the `microsoft.sourceFileHash*` properties.
    pub source: Option<PathBuf>,
}

/// Everything needed to build one import manifest.
#[derive(Debug, Clone)]
pub struct ManifestSpec {
    /// The update's identity.
    pub update_id: UpdateId,
    /// Description.
    pub description: Option<String>,
    /// False for child updates.
    pub deployable: bool,
    /// Compatibility sets.
    pub compatibility: Vec<Map<String, Value>>,
    /// Steps from the command line, in order.
    pub steps: Vec<StepSpec>,
    /// Payload files, in order.
    pub files: Vec<FileSpec>,
    /// Related files, in order.
    pub related: Vec<RelatedSpec>,
    /// `createdDateTime`, already formatted (see [`created_date_time`]).
    pub created: String,
    /// A template and its name, whose steps come first (or around the slot).
    pub template: Option<(String, Template)>,
    /// Threads for hashing.
    pub jobs: usize,
}

/// A built manifest and what the user should be told about the defaults applied.
#[derive(Debug)]
pub struct Built {
    /// The manifest.
    pub manifest: ImportManifest,
    /// Notes about defaults and warnings from validation, for stderr.
    pub notices: Vec<String>,
}

/// Formats `createdDateTime`: from `explicit` (RFC 3339 or Unix seconds), else from
/// `SOURCE_DATE_EPOCH`, else now. Always UTC with whole seconds.
pub fn created_date_time(
    explicit: Option<&str>,
    source_date_epoch: Option<&str>,
) -> Result<String, ManifestError> {
    let parse = |value: &str| -> Result<SystemTime, ManifestError> {
        let v = value.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Ok(UNIX_EPOCH + Duration::from_secs(secs));
        }
        humantime::parse_rfc3339_weak(v.trim_end_matches('Z'))
            .or_else(|_| humantime::parse_rfc3339(v))
            .map_err(|_| ManifestError::Created { value: value.to_owned() })
    };
    let t = match (explicit, source_date_epoch) {
        (Some(v), _) => parse(v)?,
        (None, Some(v)) => parse(v)?,
        (None, None) => SystemTime::now(),
    };
    Ok(humantime::format_rfc3339_seconds(t).to_string())
}

fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Builds and validates an import manifest.
pub fn build(spec: ManifestSpec, reporter: &dyn Reporter) -> Result<Built, ManifestError> {
    let mut notices = Vec::new();
    let version = spec.update_id.version().to_string();
    let file_names: Vec<String> = spec.files.iter().map(|f| base_name(&f.path)).collect();

    let mut description = spec.description.clone();
    let steps = match &spec.template {
        Some((name, t)) => {
            if description.is_none() {
                description = t.description.clone();
            }
            t.render(name, &file_names, &version, spec.steps.clone())?
        }
        None => spec.steps.clone(),
    };
    check_file_use(&spec, &file_names, &steps)?;
    let digests = hash_all(&spec, reporter)?;
    let out_steps = manifest_steps(steps, &spec, &version, &mut notices)?;
    let files = manifest_files(&spec, &digests)?;

    let manifest = ImportManifest {
        schema: None,
        update_id: spec.update_id,
        description,
        is_deployable: (!spec.deployable).then_some(false),
        compatibility: spec.compatibility,
        instructions: Instructions { steps: out_steps },
        files,
        manifest_version: MANIFEST_VERSION.to_owned(),
        created_date_time: spec.created,
        extra: Map::new(),
    };

    let value = serde_json::to_value(&manifest).unwrap_or(Value::Null);
    let findings = validate::validate_value(&value);
    if findings.has_errors() {
        return Err(ManifestError::Invalid(findings));
    }
    notices.extend(findings.iter().map(|f| f.to_string()));
    Ok(Built { manifest, notices })
}

/// Checks how the steps use the files: names unique across payload and related files (the
/// import request maps each name to one URL), every step file given, every file in a step,
/// every related file's target a payload file.
fn check_file_use(
    spec: &ManifestSpec,
    file_names: &[String],
    steps: &[StepSpec],
) -> Result<(), ManifestError> {
    let mut all_names = BTreeSet::new();
    for name in file_names.iter().cloned().chain(spec.related.iter().map(|r| base_name(&r.path))) {
        if !all_names.insert(name.clone()) {
            return Err(ManifestError::DuplicateFile { name });
        }
    }
    let mut used = BTreeSet::new();
    for (i, step) in steps.iter().enumerate() {
        if let StepSpec::Inline { files, .. } = step {
            for name in files {
                if !file_names.contains(name) {
                    return Err(ManifestError::StepFileMissing { step: i + 1, name: name.clone() });
                }
                used.insert(name.clone());
            }
        }
    }
    if let Some(name) = file_names.iter().find(|n| !used.contains(*n)) {
        return Err(ManifestError::FileNotInStep { name: name.clone() });
    }
    for r in &spec.related {
        if !file_names.contains(&r.target) {
            return Err(ManifestError::RelatedTarget {
                target: r.target.clone(),
                path: r.path.clone(),
            });
        }
    }
    Ok(())
}

/// Hashes every distinct path the spec names (files, related files, delta sources) once, all
/// in parallel.
fn hash_all(
    spec: &ManifestSpec,
    reporter: &dyn Reporter,
) -> Result<HashMap<PathBuf, FileDigest>, ManifestError> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in spec
        .files
        .iter()
        .map(|f| &f.path)
        .chain(spec.related.iter().map(|r| &r.path))
        .chain(spec.related.iter().filter_map(|r| r.source.as_ref()))
    {
        if !paths.contains(p) {
            paths.push(p.clone());
        }
    }
    let mut digests: HashMap<PathBuf, FileDigest> = HashMap::new();
    for result in hash_files(&paths, spec.jobs, reporter) {
        let d = result?;
        digests.insert(d.path.clone(), d);
    }
    Ok(digests)
}

/// The manifest's steps, with the `installedCriteria` a handler needs filled in where the spec
/// left it out (each such default is a notice).
fn manifest_steps(
    steps: Vec<StepSpec>,
    spec: &ManifestSpec,
    version: &str,
    notices: &mut Vec<String>,
) -> Result<Vec<Step>, ManifestError> {
    let mut out_steps = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            StepSpec::Reference { update_id, description } => {
                out_steps.push(Step::Reference(ReferenceStep {
                    kind: ReferenceType::Reference,
                    description,
                    update_id,
                }));
            }
            StepSpec::Inline { handler, files, properties, description } => {
                let mut props = properties.unwrap_or_default();
                if !props.contains_key("installedCriteria") {
                    match handler.as_str() {
                        "microsoft/apt:1" => {
                            let criteria = apt_criteria(i + 1, &files, &spec.files)?;
                            notices.push(format!("step {}: installedCriteria set to '{criteria}' from the APT manifest", i + 1));
                            props.insert("installedCriteria".into(), Value::String(criteria));
                        }
                        "microsoft/swupdate:1" | "microsoft/swupdate:2" | "microsoft/script:1" => {
                            notices.push(format!(
                                "step {}: {handler} has no installedCriteria; using the update version '{version}' \
                                 (set properties={{\"installedCriteria\":\"...\"}} to choose)",
                                i + 1
                            ));
                            props.insert(
                                "installedCriteria".into(),
                                Value::String(version.to_owned()),
                            );
                        }
                        _ => {}
                    }
                }
                out_steps.push(Step::Inline(InlineStep {
                    kind: None,
                    description,
                    handler,
                    files,
                    handler_properties: (!props.is_empty()).then_some(props),
                }));
            }
        }
    }
    Ok(out_steps)
}

/// The manifest's files with their sizes, digests and related files (a delta's source named by
/// its hash).
fn manifest_files(
    spec: &ManifestSpec,
    digests: &HashMap<PathBuf, FileDigest>,
) -> Result<Vec<File>, ManifestError> {
    let digest = |p: &PathBuf| &digests[p];
    let mut files = Vec::new();
    for f in &spec.files {
        let d = digest(&f.path);
        let name = base_name(&f.path);
        let mut related = Vec::new();
        for r in spec.related.iter().filter(|r| r.target == name) {
            let rd = digest(&r.path);
            let mut props = Map::new();
            if let Some(src) = &r.source {
                props.insert(SOURCE_HASH_ALGORITHM.into(), Value::String("sha256".into()));
                props.insert(SOURCE_HASH.into(), Value::String(digest(src).sha256.to_base64()));
            }
            for (k, v) in &r.properties {
                props.insert(k.clone(), Value::String(v.clone()));
            }
            related.push(RelatedFile {
                filename: super::FileName::new(&base_name(&r.path))?,
                size_in_bytes: rd.size,
                hashes: Hashes { sha256: rd.sha256, extra: Map::new() },
                properties: (!props.is_empty()).then_some(props),
                extra: Map::new(),
            });
        }
        files.push(File {
            filename: super::FileName::new(&name)?,
            size_in_bytes: d.size,
            hashes: Hashes { sha256: d.sha256, extra: Map::new() },
            properties: None,
            related_files: related,
            download_handler: f.download_handler.clone().map(|id| DownloadHandler { id }),
            extra: Map::new(),
        });
    }
    Ok(files)
}

/// Reads the APT manifest among a step's files and returns `<name>-<version>`.
fn apt_criteria(
    step: usize,
    names: &[String],
    files: &[FileSpec],
) -> Result<String, ManifestError> {
    let err = |reason: String| ManifestError::AptCriteria { step, reason };
    let mut reasons = Vec::new();
    for name in names {
        let Some(f) = files.iter().find(|f| base_name(&f.path) == *name) else { continue };
        let text = fs_err::read(&f.path).map_err(|e| err(e.to_string()))?;
        match serde_json::from_slice::<AptManifest>(&text) {
            Ok(apt) => return Ok(apt.installed_criteria()),
            Err(e) => reasons.push(format!("{} is not an APT manifest ({e})", f.path.display())),
        }
    }
    if reasons.is_empty() {
        reasons.push("the step has no files".into());
    }
    Err(err(format!(
        "{}; give the APT manifest as a step file (otaforge apt init makes one) or set installedCriteria",
        reasons.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_accepts_rfc3339_and_epoch() {
        assert_eq!(created_date_time(Some("0"), None).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(created_date_time(None, Some("1700000000")).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(
            created_date_time(Some("2024-05-01T12:00:00Z"), Some("5")).unwrap(),
            "2024-05-01T12:00:00Z"
        );
        assert!(matches!(
            created_date_time(Some("yesterday"), None),
            Err(ManifestError::Created { .. })
        ));
    }
}

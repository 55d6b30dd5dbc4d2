//! ADU import manifests, version 5.0: the typed model, a deterministic builder, templates, and a
//! validator that reports every problem at once.
//!
//! Schema: <https://json.schemastore.org/azure-deviceupdate-import-manifest-5.0.json>;
//! concepts: <https://learn.microsoft.com/azure/iot-hub-device-update/import-concepts>.

mod build;
mod id;
mod model;
mod name;
mod template;
pub mod validate;

use std::path::{Path, PathBuf};

pub use build::{Built, FileSpec, ManifestSpec, RelatedSpec, StepSpec, build, created_date_time};
pub use id::{IdError, UpdateId, VERSION_PART_MAX, Version, VersionProblem, check_id_part};
pub use model::{
    DownloadHandler, File, Hashes, ImportManifest, InlineStep, InlineType, Instructions,
    MANIFEST_VERSION, ReferenceStep, ReferenceType, RelatedFile, Step,
};
pub use name::{FileName, FileNameError};
pub use template::{Template, TemplateStep, builtin_templates, find_template};

use crate::finding::Findings;
use crate::hash::HashError;

/// Errors from building or reading import manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A payload file could not be hashed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// An update id or version is malformed.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A file name is not a plain name.
    #[error(transparent)]
    FileName(#[from] FileNameError),
    /// Two payload or related files share a base name.
    #[error("two files are named '{name}'; ADU needs unique file names within an update")]
    DuplicateFile {
        /// The shared name.
        name: String,
    },
    /// A `--file` is not listed by any step.
    #[error(
        "file '{name}' is not used by any step; add it to a step's files= list \
         (e.g. --step handler=microsoft/script:1,files={name}) or drop the --file"
    )]
    FileNotInStep {
        /// The file's base name.
        name: String,
    },
    /// A step lists a file that was not given with `--file`.
    #[error("step {step} lists file '{name}', but no --file has that name; add --file PATH/{name}")]
    StepFileMissing {
        /// 1-based step number.
        step: usize,
        /// The missing name.
        name: String,
    },
    /// A related file names a payload file that does not exist.
    #[error(
        "related file {path} is attached to '{target}', which is not a --file; \
         the part before '=' must be the base name of a payload file"
    )]
    RelatedTarget {
        /// The target name given.
        target: String,
        /// The related file.
        path: PathBuf,
    },
    /// `installedCriteria` for an apt step could not be derived.
    #[error("step {step}: cannot derive installedCriteria for microsoft/apt:1: {reason}")]
    AptCriteria {
        /// 1-based step number.
        step: usize,
        /// Why.
        reason: String,
    },
    /// A template cannot be applied to the given files.
    #[error("template '{template}': {message}")]
    Template {
        /// Template name.
        template: String,
        /// What is wrong.
        message: String,
    },
    /// `--created` or `SOURCE_DATE_EPOCH` is not a time.
    #[error("'{value}' is not a time: use RFC 3339 (2024-05-01T12:00:00Z) or Unix seconds")]
    Created {
        /// The offending text.
        value: String,
    },
    /// The generated manifest breaks a rule.
    #[error("the manifest would be invalid:\n{}", format_findings(.0))]
    Invalid(Findings),
}

fn format_findings(f: &Findings) -> String {
    f.iter().map(|x| format!("  {x}")).collect::<Vec<_>>().join("\n")
}

/// A manifest file read from disk: its bytes, its JSON, and the typed manifest when every rule
/// passed.
#[derive(Debug)]
pub struct Checked {
    /// Where it was read from.
    pub path: PathBuf,
    /// Everything found, errors and warnings.
    pub findings: Findings,
    /// The typed manifest, present when there is no error.
    pub manifest: Option<ImportManifest>,
}

/// Reads and validates one manifest file (single-document rules only).
pub fn check_file(path: &Path) -> Result<Checked, ManifestError> {
    // The error variant names the path itself, so plain std::fs is fine here.
    #[allow(clippy::disallowed_methods)]
    let bytes = std::fs::read(path)
        .map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
    Ok(check_bytes(path, &bytes))
}

/// Validates manifest bytes (single-document rules only).
pub fn check_bytes(path: &Path, bytes: &[u8]) -> Checked {
    let (findings, manifest) = match validate::parse_json(bytes) {
        Err(findings) => (findings, None),
        Ok(value) => {
            let mut findings = crate::finding::duplicate_keys(bytes);
            findings.extend(validate::validate_value(&value));
            let manifest = if findings.has_errors() {
                None
            } else {
                match serde_json::from_value::<ImportManifest>(value) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        // The validator should catch everything serde refuses; if it did not,
                        // still report the problem rather than pass the document.
                        findings.error("model", &crate::finding::JsonPath::root(), e.to_string());
                        None
                    }
                }
            };
            (findings, manifest)
        }
    };
    Checked { path: path.to_owned(), findings, manifest }
}

/// One manifest of [`check_files`]: its own findings, and those of the checks across the set
/// and against its payloads.
#[derive(Debug)]
pub struct CheckedWithPayloads {
    /// The manifest and its single-document findings.
    pub checked: Checked,
    /// Findings of the set and payload checks.
    pub more: Findings,
}

impl CheckedWithPayloads {
    /// Every finding of this manifest.
    pub fn findings(&self) -> Findings {
        let mut f = self.checked.findings.clone();
        f.extend(self.more.clone());
        f
    }

    /// Whether any check found an error.
    pub fn has_errors(&self) -> bool {
        self.checked.findings.has_errors() || self.more.has_errors()
    }
}

/// What `manifest validate` and `import` check: each manifest alone; with `set`, the manifests
/// together as a parent and its children; and the payloads in the directory `payload_dir` names
/// for each manifest (hashed with `jobs` threads). Results are in input order.
pub fn check_files(
    files: &[PathBuf],
    set: bool,
    payload_dir: &dyn Fn(&Path) -> Option<PathBuf>,
    jobs: usize,
    reporter: &dyn crate::Reporter,
) -> Result<Vec<CheckedWithPayloads>, ManifestError> {
    let mut checked = Vec::new();
    for path in files {
        checked.push(check_file(path)?);
    }
    let mut extra: Vec<Findings> = checked.iter().map(|_| Findings::new()).collect();
    let loaded: Vec<(usize, validate::Loaded<'_>)> = checked
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            c.manifest.as_ref().map(|m| (i, validate::Loaded { source: &c.path, manifest: m }))
        })
        .collect();
    if set {
        let set: Vec<validate::Loaded<'_>> = loaded
            .iter()
            .map(|(_, l)| validate::Loaded { source: l.source, manifest: l.manifest })
            .collect();
        for ((i, _), f) in loaded.iter().zip(validate::validate_set(&set)) {
            extra[*i].extend(f);
        }
    }
    for (i, l) in &loaded {
        if let Some(dir) = payload_dir(l.source) {
            extra[*i].extend(validate::check_payloads(l.manifest, &dir, jobs, reporter));
        }
    }
    Ok(checked
        .into_iter()
        .zip(extra)
        .map(|(checked, more)| CheckedWithPayloads { checked, more })
        .collect())
}

/// The folder a manifest's payloads are in: the manifest's own.
pub fn manifest_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

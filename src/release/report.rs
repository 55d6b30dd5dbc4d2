//! What a release tells whoever runs it: while it runs, a typed [`ReleaseReporter`] (the
//! command line draws it on stderr; a test or an xtask ignores it); at the end, a serializable
//! [`Report`] (`otaforge release --format json` prints it as it is).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::rollout::Unconfirmed;
use super::{Built, Checked, DeltaOutput, Output, Rollout, StageOutput};
use crate::manifest::UpdateId;
use crate::reporter::{NoReporter, Reporter};

/// A step of a release, for progress and for where an error stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Delta bases read back from the storage container.
    Bases,
    /// Files, deltas, manifest and metadata, offline.
    Build,
    /// Every stage's group checked on the service.
    Groups,
    /// Upload and import.
    Publish,
    /// The stages.
    Rollout,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Bases => "bases",
            Step::Build => "build",
            Step::Groups => "groups",
            Step::Publish => "upload",
            Step::Rollout => "rollout",
        })
    }
}

/// Receives a release's progress as it happens. Every method has a default that ignores it.
pub trait ReleaseReporter: Send + Sync {
    /// The release about to run, as checked.
    fn plan(&self, checked: &Checked) {
        let _ = checked;
    }
    /// Byte progress of a step (hashing, deltas, upload), for as long as the value lives.
    fn progress(&self, step: Step) -> Box<dyn Reporter + '_> {
        let _ = step;
        Box::new(NoReporter)
    }
    /// A delta base named `storage:VERSION` was read back from the storage container.
    fn base_fetched(&self, version: &str) {
        let _ = version;
    }
    /// A delta was not kept: which, and why.
    fn delta_skipped(&self, why: &str) {
        let _ = why;
    }
    /// The update is on the service: imported now (`true`) or already before.
    fn imported(&self, id: &UpdateId, now: bool) {
        let _ = (id, now);
    }
    /// A stage's counts changed, or it ended (its `result` is then no longer `running`).
    fn stage(&self, stage: &StageOutput) {
        let _ = stage;
    }
    /// The state file holds `record` for a stage but the service does not confirm it
    /// (`why`); the stage runs again.
    fn record_not_confirmed(&self, record: &StageOutput, why: &Unconfirmed) {
        let _ = (record, why);
    }
    /// A request to Device Update failed and is tried again (`message` says why).
    fn retrying(&self, message: &str) {
        let _ = message;
    }
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReleaseReporter;

impl ReleaseReporter for NoReleaseReporter {}

/// How a release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// A dry run built everything.
    Built,
    /// Every stage passed (up to `--until`).
    Passed,
    /// A stage's gate failed (`failedStage`).
    GateFailed,
}

/// What a release made and did: the state file's record, with how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The update.
    pub update_id: String,
    /// `OUTPUT/VERSION`.
    #[serde(serialize_with = "lossy")]
    pub output: PathBuf,
    /// `OUTPUT/VERSION/files`.
    #[serde(serialize_with = "lossy")]
    pub files: PathBuf,
    /// The artifacts as shipped.
    pub artifacts: Vec<Output>,
    /// The deltas.
    pub deltas: Vec<DeltaOutput>,
    /// Deltas not kept, as `artifact from base: why`.
    pub skipped_deltas: Vec<String>,
    /// The import manifest.
    pub manifest: Option<Output>,
    /// The signed release metadata.
    pub metadata: Option<Output>,
    /// The IoT Edge deployment manifest, as deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_manifest: Option<Output>,
    /// The update is imported (or was already).
    pub imported: bool,
    /// The stages that ran, in order.
    pub stages: Vec<StageOutput>,
    /// How it ended.
    pub result: Outcome,
    /// The stage whose gate failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_stage: Option<String>,
}

/// A path as text, whatever its bytes (as it is shown).
fn lossy<S: serde::Serializer>(path: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&path.display())
}

impl Report {
    /// The report of `built`, after `rollout` (none for a dry run).
    pub fn new(checked: &Checked, built: &Built, rollout: Option<&Rollout>) -> Self {
        let s = &built.state;
        let (result, failed_stage) = match rollout {
            None => (Outcome::Built, None),
            Some(Rollout::Passed) => (Outcome::Passed, None),
            Some(Rollout::GateFailed(stage)) => (Outcome::GateFailed, Some(stage.clone())),
        };
        Self {
            update_id: checked.update_id.to_string(),
            output: built.dir.clone(),
            files: built.files_dir(),
            artifacts: s.artifacts.clone(),
            deltas: s.deltas.clone(),
            skipped_deltas: s.skipped_deltas.clone(),
            manifest: s.manifest.clone(),
            metadata: s.metadata.clone(),
            edge_manifest: s.edge_manifest.clone(),
            imported: s.imported,
            stages: s.stages.clone(),
            result,
            failed_stage,
        }
    }

    /// The failed stage's record, when a gate failed.
    pub fn failed(&self) -> Option<&StageOutput> {
        let name = self.failed_stage.as_deref()?;
        self.stages.iter().find(|s| s.name == name)
    }
}

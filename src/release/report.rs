//! What a release tells whoever runs it while it runs: a typed [`ReleaseReporter`], which the
//! command line implements with lines on stderr and a test or an xtask with nothing at all.

use super::StageOutput;

/// Receives a release's progress as it happens. Every method has a default that ignores it.
pub trait ReleaseReporter: Send + Sync {
    /// A stage's counts changed, or it ended (its `result` is then no longer `running`).
    fn stage(&self, stage: &StageOutput) {
        let _ = stage;
    }
    /// The state file records `result` for `stage` but the service does not confirm it
    /// (`why`); the stage runs again.
    fn record_not_confirmed(&self, stage: &str, result: &str, why: &str) {
        let _ = (stage, result, why);
    }
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReleaseReporter;

impl ReleaseReporter for NoReleaseReporter {}

//! Progress reporting from the library to whoever drives it.
//!
//! The library never draws progress bars itself; long operations call a [`Reporter`] and the
//! binary implements it with a terminal progress bar (or nothing at all in CI).

/// Receives progress of long-running work, such as hashing or uploading files.
///
/// Implementations must be cheap to call: `advance` is called once per buffer read.
pub trait Reporter: Sync {
    /// A unit of work named `label` starts; `total` is its size in bytes when known.
    fn start(&self, label: &str, total: Option<u64>) {
        let _ = (label, total);
    }
    /// `bytes` more bytes of the work named `label` are done.
    fn advance(&self, label: &str, bytes: u64) {
        let _ = (label, bytes);
    }
    /// The work named `label` is finished.
    fn finish(&self, label: &str) {
        let _ = label;
    }
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReporter;

impl Reporter for NoReporter {}

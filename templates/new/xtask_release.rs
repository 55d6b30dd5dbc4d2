//! `cargo xtask release` for a firmware workspace: the release of `otaforge.toml` through the
//! otaforge library, without a subprocess. Copy this file to `xtask/src/release.rs`, add to
//! xtask's Cargo.toml
//!
//! ```toml
//! otaforge = { git = "…", default-features = false }   # no clap, no server
//! tokio = { version = "1", features = ["rt", "time"] }
//! ```
//!
//! and call `release::run(Path::new("otaforge.toml"), None)` from your xtask's `main`. The tests
//! of otaforge compile this very file and run it against `otaforge serve`.

use std::path::Path;
use std::sync::Arc;

use otaforge::release::{self, Environment, NoReleaseReporter, Outcome, Overrides, Settings};

/// Builds, publishes and rolls out the release `config` describes, against `endpoint` (or the
/// file's); `Ok(true)` when every stage passed, `Ok(false)` when a gate failed.
pub fn run(config: &Path, endpoint: Option<&str>) -> Result<bool, String> {
    // Every problem of otaforge.toml at once, each with its line and field.
    let checked = release::load(config)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    // Authentication ($OTAFORGE_ADU_TOKEN), storage ([storage], else the service's own) and
    // SOURCE_DATE_EPOCH are resolved here, before anything runs.
    let overrides =
        Overrides { endpoint: endpoint.map(str::to_owned), jobs: Some(2), ..Overrides::default() };
    let settings = Settings::resolve(checked, overrides, &Environment::from_process())
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Progress could be shown by implementing `release::ReleaseReporter`; the report has it all.
    let report = rt
        .block_on(release::run(settings, Arc::new(NoReleaseReporter)))
        .map_err(|e| e.to_string())?;
    Ok(report.result == Outcome::Passed)
}

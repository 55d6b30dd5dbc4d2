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

use otaforge::release::{self, Options, Rollout};
use otaforge::reporter::NoReporter;
use otaforge::service::{AduClient, Auth};
use otaforge::storage::AnyStore;
use otaforge::storage::embedded::EmbeddedStore;

/// Builds, publishes and rolls out the release `config` describes, against `endpoint` (or the
/// file's); `Ok(true)` when every stage passed, `Ok(false)` when a gate failed.
pub fn run(config: &Path, endpoint: Option<&str>) -> Result<bool, String> {
    let checked = release::config::load(config)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    let opts = Options {
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        jobs: 2,
        ..Options::default()
    };
    let built = release::build(&checked, &opts, &NoReporter).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let endpoint = endpoint.unwrap_or(&checked.config.service.endpoint);
        let token = std::env::var("OTAFORGE_ADU_TOKEN").ok().filter(|t| !t.is_empty());
        let auth = token.map_or(Auth::None, Auth::Static);
        let client = AduClient::new(endpoint, &checked.config.service.instance, auth)
            .map_err(|e| e.to_string())?;
        if let Err(missing) =
            release::check_groups(&checked, &client, None).await.map_err(|e| e.to_string())?
        {
            return Err(missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
        }
        let store =
            AnyStore::Embedded(EmbeddedStore::discover(&client).await.map_err(|e| e.to_string())?);
        let mut built = release::publish(&checked, built, &client, &store, &NoReporter)
            .await
            .map_err(|e| e.to_string())?;
        let services = release::Services { client: &client, hub: None };
        let rollout =
            release::roll_out(&checked, &mut built, &services, &opts, &release::NoReleaseReporter)
                .await
                .map_err(|e| e.to_string())?;
        Ok(rollout == Rollout::Passed)
    })
}

//! `otaforge release`: arguments and display only; the work is `otaforge::release`.

use std::path::PathBuf;
use std::time::Duration;

use otaforge::release::{self, Options, Rollout, StageOutput};
use otaforge::service::{AduClient, Auth};
use otaforge::storage::AnyStore;
use serde_json::json;

use super::args::StorageArgs;
use super::{Failure, Outcome, Output};

/// `otaforge release`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReleaseArgs {
    /// The release description.
    #[arg(long, default_value = "otaforge.toml")]
    config: PathBuf,
    /// Build and check everything offline (files, deltas, manifest, metadata) and print the
    /// plan; no network call, nothing written outside the output folder.
    #[arg(long)]
    dry_run: bool,
    /// Continue a release that stopped (the default whenever its state file exists; with
    /// --resume, a missing state file is an error).
    #[arg(long)]
    resume: bool,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    until: Option<String>,
    /// The Device Update endpoint, instead of otaforge.toml's.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Authenticate to Device Update with Microsoft Entra ID (Azure); without it,
    /// $OTAFORGE_ADU_TOKEN or no token (serve on loopback).
    #[arg(long, value_enum, value_name = "SOURCE")]
    adu_entra: Option<super::args::EntraArg>,
    /// How often a stage's deployment status is read.
    #[arg(long, default_value = "2s", value_parser = super::wait_duration)]
    poll: Duration,
    /// Print otaforge.toml's JSON Schema and exit.
    #[arg(long, exclusive = true)]
    schema: bool,
    #[command(flatten)]
    storage: StorageArgs,
}

fn config_failure(
    out: &Output,
    errors: &[release::ConfigError],
    what: &str,
) -> anyhow::Result<Outcome> {
    for e in errors {
        out.notice(e.to_string());
    }
    let details: Vec<_> = errors
        .iter()
        .map(|e| json!({"file": e.file.display().to_string(), "line": e.line, "field": e.field, "message": e.message}))
        .collect();
    let message = format!("{} problem(s) in the release description; {what}", errors.len());
    out.failure(&Failure::new("invalidConfig", message).details(details))?;
    Ok(Outcome::CheckFailed)
}

/// The IoT Hub, when a stage is an Edge stage: `service.iothub-connection-file`, else
/// `$IOTHUB_CONNECTION_STRING`.
fn hub_client(c: &release::Checked) -> anyhow::Result<Option<otaforge::iothub::IotHubClient>> {
    if !c.config.stages.iter().any(|s| s.edge_target.is_some()) {
        return Ok(None);
    }
    let text = match &c.config.service.iothub_connection_file {
        Some(f) => fs_err::read_to_string(c.root.join(f))?,
        None => std::env::var(otaforge::env::IOTHUB_CONNECTION_STRING).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
            anyhow::anyhow!("Edge stages need the IoT Hub: set service.iothub-connection-file or IOTHUB_CONNECTION_STRING")
        })?,
    };
    Ok(Some(otaforge::iothub::IotHubClient::new(text.parse()?)?))
}

/// The release's progress as notices on stderr.
struct Progress<'a>(&'a Output);

impl release::ReleaseReporter for Progress<'_> {
    fn stage(&self, stage: &StageOutput) {
        self.0.notice(stage_line(stage));
    }
    fn record_not_confirmed(&self, stage: &str, result: &str, why: &str) {
        self.0.notice(format!(
            "stage {stage}: the state file says {result}, but {why}; running the stage"
        ));
    }
}

fn stage_line(s: &StageOutput) -> String {
    let mut line = format!(
        "stage {} ({}): {} — {} of {} succeeded, {} failed",
        s.name, s.group, s.result, s.succeeded, s.devices, s.failed
    );
    if let Some(r) = &s.reason {
        line.push_str(&format!("; {r}"));
    }
    if let Some(a) = &s.action {
        line.push_str(&format!("; {a}"));
    }
    line
}

fn report(
    c: &release::Checked,
    built: &release::Built,
    rollout: Option<&Rollout>,
) -> serde_json::Value {
    let files = built.files_dir();
    json!({
        "updateId": c.update_id.to_string(),
        "output": built.dir.display().to_string(),
        "files": files.display().to_string(),
        "artifacts": built.state.artifacts,
        "deltas": built.state.deltas,
        "skippedDeltas": built.state.skipped_deltas,
        "manifest": built.state.manifest,
        "metadata": built.state.metadata,
        "imported": built.state.imported,
        "stages": built.state.stages,
        "result": match rollout {
            None => "built",
            Some(Rollout::Passed) => "passed",
            Some(Rollout::GateFailed(_)) => "gateFailed",
        },
    })
}

fn print_plan(out: &Output, c: &release::Checked) {
    out.notice(format!(
        "release {} → {}",
        c.update_id,
        c.output.join(c.update_id.version().as_str()).display()
    ));
    for (a, f) in c.config.artifacts.iter().zip(&c.files) {
        out.notice(format!("  artifact {} ({:?})", f.display(), a.kind).to_lowercase());
    }
    for b in &c.bases {
        out.notice(format!("  delta base {}", b.display()));
    }
    for s in &c.config.stages {
        let target = match (&s.group, &s.edge_target) {
            (Some(g), _) => format!("group {}", g.value),
            (None, Some(t)) => format!("Edge devices where {}", t.value),
            (None, None) => String::new(),
        };
        out.notice(format!(
            "  stage {} → {target}: ≥ {:.0} % succeeded, ≤ {} failed, on failure {:?}",
            s.name.value,
            s.min_succeeded.value * 100.0,
            s.max_failed,
            s.on_failure
        ));
    }
}

pub(crate) fn run(
    a: ReleaseArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    if a.schema {
        out.line(serde_json::to_string_pretty(&release::config::schema())?)?;
        return Ok(Outcome::Ok);
    }
    let c = match release::config::load(&a.config) {
        Ok(c) => c,
        Err(errors) => return config_failure(out, &errors, "nothing was built or sent"),
    };
    let dir = c.output.join(c.update_id.version().as_str());
    if a.resume && !dir.join(release::STATE_FILE).is_file() {
        anyhow::bail!("--resume: {} holds no release to resume", dir.display());
    }
    if let Some(u) = &a.until
        && !c.config.stages.iter().any(|s| &s.name.value == u)
    {
        anyhow::bail!("--until {u}: otaforge.toml has no stage of that name");
    }
    print_plan(out, &c);
    let opts = Options {
        source_date_epoch: otaforge::env::source_date_epoch(),
        until: a.until.clone(),
        jobs: otaforge::hash::default_jobs(),
        poll: Some(a.poll),
    };
    // The service and the store; none for a dry run, which makes no network call.
    let service = if a.dry_run {
        None
    } else {
        let endpoint = a.endpoint.clone().unwrap_or_else(|| c.config.service.endpoint.clone());
        let token = std::env::var(otaforge::env::OTAFORGE_ADU_TOKEN).ok().filter(|t| !t.is_empty());
        let auth = match (a.adu_entra, token) {
            (Some(src), _) => Auth::Entra(otaforge::storage::azure::entra_credential(src.into())?),
            (None, Some(t)) => Auth::Static(t),
            (None, None) => Auth::None,
        };
        let client = AduClient::new(&endpoint, &c.config.service.instance, auth)?;
        let mut storage = a.storage;
        if let Some(account) = &c.config.storage.account {
            storage.default_account(account);
        }
        let store = match (&c.config.storage.dir, storage.is_configured()) {
            (Some(dir), false) => AnyStore::Dir(otaforge::storage::dir::DirStore::open(
                &c.root.join(dir),
                c.config.storage.base_url.as_deref().unwrap_or("http://127.0.0.1:8080/blobs"),
            )?),
            (_, true) => storage.open(out)?,
            (None, false) => AnyStore::Embedded(
                rt.block_on(otaforge::storage::embedded::EmbeddedStore::discover(&client))?,
            ),
        };
        Some((client, store))
    };
    // Delta bases kept in the storage container, read back once.
    if let Some((_, store)) = &service
        && !c.remote_bases.is_empty()
    {
        match rt.block_on(release::fetch_bases(&c, store)) {
            Ok(fetched) => {
                for v in fetched {
                    out.notice(format!("  delta base {v} read from the storage container"));
                }
            }
            Err(e) => {
                out.failure(&Failure::new("baseFailed", e.to_string()))?;
                return Ok(Outcome::CheckFailed);
            }
        }
    }
    let built = {
        let reporter = out.progress("build");
        release::build(&c, &opts, &reporter)
    };
    let mut built = match built {
        Ok(b) => b,
        Err(e) => {
            out.failure(&Failure::new("buildFailed", e.to_string()))?;
            return Ok(Outcome::CheckFailed);
        }
    };
    for s in &built.state.skipped_deltas {
        out.notice(format!("  delta skipped: {s}"));
    }
    if a.dry_run {
        if out.json() {
            out.json_value(&report(&c, &built, None))?;
        } else {
            out.line(format!(
                "built {} in {} (dry run: nothing sent)",
                c.update_id,
                built.dir.display()
            ))?;
        }
        return Ok(Outcome::Ok);
    }
    let Some((client, store)) = service else {
        anyhow::bail!("no service to release to");
    };
    rt.block_on(async {
        if let Err(missing) = release::check_groups(&c, &client, a.until.as_deref()).await? {
            return config_failure(out, &missing, "nothing was uploaded or imported");
        }
        let published = {
            let reporter = out.progress("upload");
            release::publish(&c, built, &client, &store, &reporter).await
        };
        built = match published {
            Ok(b) => b,
            Err(e) => {
                let refs: Vec<String> = store.secrets();
                let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
                let message = otaforge::storage::sas::redact(&e.to_string(), &refs);
                out.failure(&Failure::new("publishFailed", message))?;
                return Ok(Outcome::CheckFailed);
            }
        };
        if built.state.artifacts.is_empty() {
            // An IoT Edge-only release imports nothing.
        } else if built.made.iter().any(|m| m == "import") {
            out.notice(format!("imported {}", c.update_id));
        } else {
            out.notice(format!("{}: already imported", c.update_id));
        }
        let hub = hub_client(&c)?;
        let services = release::Services { client: &client, hub: hub.as_ref() };
        let rollout =
            match release::roll_out(&c, &mut built, &services, &opts, &Progress(out)).await {
                Ok(r) => r,
                Err(e @ release::ReleaseError::DeploymentConflict { .. }) => {
                    out.failure(&Failure::new("deploymentConflict", e.to_string()))?;
                    return Ok(Outcome::CheckFailed);
                }
                Err(e) => return Err(e.into()),
            };
        if out.json() {
            out.json_value(&report(&c, &built, Some(&rollout)))?;
        } else {
            for a in &built.state.artifacts {
                out.line(format!("{}  {} bytes  sha256 {}", a.name, a.size_in_bytes, a.sha256))?;
            }
            for d in &built.state.deltas {
                out.line(format!(
                    "{}  {} bytes  from {}",
                    d.file.name, d.file.size_in_bytes, d.base_version
                ))?;
            }
            for s in &built.state.stages {
                out.line(stage_line(s))?;
            }
        }
        Ok(match rollout {
            Rollout::Passed => Outcome::Ok,
            Rollout::GateFailed(stage) => {
                let s = built.state.stages.iter().find(|s| s.name == stage);
                let message = format!(
                    "stage {stage}: gate failed{}",
                    s.and_then(|s| s.reason.as_ref()).map(|r| format!(": {r}")).unwrap_or_default()
                );
                out.notice(message);
                Outcome::CheckFailed
            }
        })
    })
}

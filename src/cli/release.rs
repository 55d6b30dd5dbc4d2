//! `otaforge release`: arguments and display only; the work is `otaforge::release`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use otaforge::release::{self, Checked, Outcome as Ended, Report, StageOutput, Step};
use otaforge::service::Auth;
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

/// The release's progress on stderr: the plan, byte progress bars, notices.
struct Progress(Output);

impl release::ReleaseReporter for Progress {
    fn plan(&self, c: &Checked) {
        print_plan(&self.0, c);
    }
    fn progress(&self, step: Step) -> Box<dyn otaforge::Reporter + '_> {
        Box::new(self.0.progress(&step.to_string()))
    }
    fn base_fetched(&self, version: &str) {
        self.0.notice(format!("  delta base {version} read from the storage container"));
    }
    fn delta_skipped(&self, why: &str) {
        self.0.notice(format!("  delta skipped: {why}"));
    }
    fn imported(&self, id: &otaforge::manifest::UpdateId, now: bool) {
        self.0.notice(if now {
            format!("imported {id}")
        } else {
            format!("{id}: already imported")
        });
    }
    fn stage(&self, stage: &StageOutput) {
        self.0.notice(stage_line(stage));
    }
    fn record_not_confirmed(&self, record: &StageOutput, why: &release::rollout::Unconfirmed) {
        self.0.notice(format!(
            "stage {}: the state file says {}, but {why}; running the stage",
            record.name, record.result
        ));
    }
    fn retrying(&self, message: &str) {
        self.0.notice(format!("service: {message}"));
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

fn print_plan(out: &Output, c: &Checked) {
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

/// The report: as it is with `--format json`, else a line per file and stage.
fn show(out: &Output, report: &Report) -> anyhow::Result<Outcome> {
    if out.json() {
        out.json_value(report)?;
    } else if report.result == Ended::Built {
        let dir = report.output.display();
        out.line(format!("built {} in {dir} (dry run: nothing sent)", report.update_id))?;
    } else {
        for a in &report.artifacts {
            out.line(format!("{}  {} bytes  sha256 {}", a.name, a.size_in_bytes, a.sha256))?;
        }
        for d in &report.deltas {
            let f = &d.file;
            out.line(format!("{}  {} bytes  from {}", f.name, f.size_in_bytes, d.base_version))?;
        }
        for s in &report.stages {
            out.line(stage_line(s))?;
        }
    }
    let Some(stage) = &report.failed_stage else { return Ok(Outcome::Ok) };
    let why = report.failed().and_then(|s| s.reason.as_ref());
    out.notice(format!(
        "stage {stage}: gate failed{}",
        why.map(|r| format!(": {r}")).unwrap_or_default()
    ));
    Ok(Outcome::CheckFailed)
}

/// A release error: the ones a user can fix with their code (exit 1), the rest exit 2.
fn failure(out: &Output, e: release::ReleaseError, secrets: &[String]) -> anyhow::Result<Outcome> {
    let Some(code) = e.failure_code() else { return Err(e.into()) };
    let source = match e {
        release::ReleaseError::Stopped { step, source } => (step, *source),
        e => (Step::Build, e),
    };
    match source {
        (step, release::ReleaseError::Config(errors)) => {
            let what = if step == Step::Groups {
                "nothing was uploaded or imported"
            } else {
                "nothing was built or sent"
            };
            config_failure(out, &errors, what)
        }
        (_, e) => {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let message = otaforge::storage::sas::redact(&e.to_string(), &refs);
            out.failure(&Failure::new(code, message))?;
            Ok(Outcome::CheckFailed)
        }
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
    let checked = match release::load(&a.config) {
        Ok(c) => c,
        Err(errors) => return config_failure(out, &errors, "nothing was built or sent"),
    };
    let mut storage = a.storage;
    if let Some(account) = &checked.config.storage.account {
        storage.default_account(account);
    }
    let dry_run = a.dry_run;
    let overrides = release::Overrides {
        dry_run,
        resume: a.resume,
        until: a.until,
        poll: Some(a.poll),
        jobs: Some(otaforge::hash::default_jobs()),
        endpoint: a.endpoint,
        auth: match a.adu_entra {
            Some(src) if !dry_run => {
                Some(Auth::Entra(otaforge::storage::azure::entra_credential(src.into())?))
            }
            _ => None,
        },
        store: if storage.is_configured() && !dry_run { Some(storage.open(out)?) } else { None },
    };
    let settings =
        release::Settings::resolve(checked, overrides, &release::Environment::from_process())?;
    let secrets = settings.secrets();
    match rt.block_on(release::run(settings, Arc::new(Progress(out.clone())))) {
        Ok(report) => show(out, &report),
        Err(e) => failure(out, e, &secrets),
    }
}

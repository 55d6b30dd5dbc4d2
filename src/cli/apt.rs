//! `otaforge apt init|validate`: APT manifests for the microsoft/apt:1 handler.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use otaforge::Findings;
use otaforge::apt::{self, AptManifest};
use serde::Serialize;
use serde_json::Map;

use super::{Outcome, Output};

/// APT manifest commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AptCommand {
    /// Write an APT manifest from --package flags and/or a package list.
    Init(InitArgs),
    /// Check APT manifests: Debian names and versions, removals, duplicates.
    Validate(ValidateArgs),
}

/// Arguments of `otaforge apt init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// Name of the package set (installedCriteria becomes NAME-VERSION).
    #[arg(long)]
    name: String,
    /// Version of the package set.
    #[arg(long = "version")]
    set_version: String,
    /// Package: name, name=version, or name- to remove it.
    #[arg(long = "package", value_name = "NAME[=VERSION]")]
    packages: Vec<String>,
    /// Package list: name=version lines or `dpkg-query -W` output; '-' reads stdin.
    #[arg(long, value_name = "FILE")]
    packages_from: Option<PathBuf>,
    /// Ask the agent to restart after installing.
    #[arg(long)]
    agent_restart_required: bool,
    /// Write to FILE instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

/// Arguments of `otaforge apt validate`.
#[derive(Debug, clap::Args)]
pub(crate) struct ValidateArgs {
    /// APT manifests to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub(crate) fn run(cmd: AptCommand, out: &Output) -> anyhow::Result<Outcome> {
    match cmd {
        AptCommand::Init(args) => init(args, out),
        AptCommand::Validate(args) => validate(args, out),
    }
}

fn init(args: InitArgs, out: &Output) -> anyhow::Result<Outcome> {
    let mut packages: Vec<apt::AptPackage> =
        args.packages.iter().map(|p| apt::parse_package_spec(p)).collect();
    if let Some(list) = &args.packages_from {
        let text = if list.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the package list from stdin")?;
            s
        } else {
            fs_err::read_to_string(list)?
        };
        packages.extend(
            apt::parse_package_list(&text)
                .with_context(|| format!("package list {}", list.display()))?,
        );
    }
    let manifest = AptManifest {
        name: args.name,
        version: args.set_version,
        packages,
        agent_restart_required: args.agent_restart_required.then_some(true),
        extra: Map::new(),
    };
    let findings = apt::validate_value(&serde_json::to_value(&manifest)?);
    if findings.has_errors() {
        out.rejected("the APT manifest", &findings)?;
        return Ok(Outcome::CheckFailed);
    }
    for f in &findings {
        out.notice(format!("note: {f}"));
    }
    let bytes = manifest.to_json_bytes();
    match &args.output {
        Some(path) => {
            otaforge::fsutil::write_output(path, &bytes, otaforge::fsutil::Privacy::Public)?;
            let out = &out.for_payload(path);
            if out.json() {
                out.json_value(&serde_json::json!({
                    "file": path.display().to_string(),
                    "installedCriteria": manifest.installed_criteria(),
                    "packages": manifest.packages.len(),
                }))?;
            } else {
                out.notice(format!(
                    "wrote {} ({} packages, installedCriteria {})",
                    path.display(),
                    manifest.packages.len(),
                    manifest.installed_criteria()
                ));
            }
        }
        None => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(&bytes)?;
        }
    }
    Ok(Outcome::Ok)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    installed_criteria: Option<String>,
    findings: Findings,
}

fn validate(args: ValidateArgs, out: &Output) -> anyhow::Result<Outcome> {
    let mut reports = Vec::new();
    for path in &args.files {
        let bytes = fs_err::read(path)?;
        let (findings, criteria) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(e) => {
                let mut f = Findings::new();
                f.error("json-syntax", &otaforge::JsonPath::root(), format!("not valid JSON: {e}"));
                (f, None)
            }
            Ok(v) => {
                let mut f = otaforge::finding::duplicate_keys(&bytes);
                f.extend(apt::validate_value(&v));
                let criteria = if f.has_errors() {
                    None
                } else {
                    serde_json::from_value::<AptManifest>(v).ok().map(|m| m.installed_criteria())
                };
                (f, criteria)
            }
        };
        reports.push(Report {
            file: path.display().to_string(),
            valid: !findings.has_errors(),
            installed_criteria: criteria,
            findings,
        });
    }
    let failed = reports.iter().any(|r| !r.valid);
    if out.json() {
        out.json_value(&reports)?;
    } else {
        for r in &reports {
            let status = if r.valid { "ok" } else { "INVALID" };
            let crit = r
                .installed_criteria
                .as_deref()
                .map(|c| format!(" (installedCriteria {c})"))
                .unwrap_or_default();
            out.line(format!("{status}: {}{crit}", r.file))?;
            out.finding_lines(&r.findings)?;
        }
    }
    Ok(if failed { Outcome::CheckFailed } else { Outcome::Ok })
}

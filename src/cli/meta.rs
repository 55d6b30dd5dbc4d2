//! `otaforge meta sign|verify`: signed release metadata (artifacts, version, security counter,
//! expiry).

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use otaforge::manifest::Version;
use otaforge::sign::meta::{self, Policy};
use otaforge::time::{self, Timestamp};

use super::args::{SignerArgs, TrustArgs};
use super::key::refused;
use super::{Outcome, Output};

/// `otaforge meta` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum MetaCommand {
    /// Hash the artifacts and write signed release metadata (a JWS JSON document).
    Sign(SignArgs),
    /// Check signatures, expiry, rollback floors and every artifact; exit 1 on any refusal.
    Verify(VerifyArgs),
}

/// Arguments of `otaforge meta sign`.
#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// The release's files (listed by file name).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Release version: 2 to 4 numbers (as ADU update versions).
    #[arg(long = "release-version", value_name = "VERSION")]
    version: Version,
    /// Monotonic security counter; raise it to stop devices from accepting older releases.
    #[arg(long)]
    security_counter: u64,
    /// Expiry: a duration from now (90d, 12h) or an RFC 3339 time.
    #[arg(long, default_value = "90d")]
    expires: String,
    /// Where to write the metadata.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    signer: SignerArgs,
}

/// Arguments of `otaforge meta verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The metadata file.
    metadata: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// Directory holding the artifacts (default: the metadata's directory).
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Skip the artifact check (signatures, expiry and floors only).
    #[arg(long, conflicts_with = "artifacts")]
    no_artifacts: bool,
    /// Refuse a release version below this one (rollback).
    #[arg(long)]
    min_version: Option<Version>,
    /// Refuse a security counter below this one (rollback).
    #[arg(long)]
    min_security_counter: Option<u64>,
    /// Exit 1 when the metadata expires within this many days.
    #[arg(long, value_name = "DAYS")]
    warn_expiring: Option<u64>,
    /// Check as of this RFC 3339 time instead of now (audits, reproducible checks).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Signatures by distinct trusted keys required.
    #[arg(long, default_value_t = 1)]
    threshold: usize,
}

pub(crate) fn run(cmd: MetaCommand, out: &Output) -> anyhow::Result<Outcome> {
    match cmd {
        MetaCommand::Sign(a) => sign(a, out),
        MetaCommand::Verify(a) => verify(a, out),
    }
}

fn sign(a: SignArgs, out: &Output) -> anyhow::Result<Outcome> {
    // The real clock, even under SOURCE_DATE_EPOCH: expiry is about when devices see the
    // metadata, and a rebuild of an old commit must not produce metadata that expired long ago.
    let now = Timestamp::now()?;
    let expires = time::parse_time_or_duration(&a.expires, now).context("--expires")?;
    let signers = a.signer.signers(true)?;
    let refs: Vec<&dyn otaforge::sign::Signer> = signers.iter().map(|s| s.as_ref()).collect();
    let files: Vec<&std::path::Path> = a.files.iter().map(|p| p.as_path()).collect();
    let release = meta::describe(&files, &a.version, a.security_counter, now, expires, &refs)?;
    let text = meta::sign(&release, &refs)?;
    otaforge::fsutil::write_output(&a.output, text.as_bytes(), otaforge::fsutil::Privacy::Public)?;
    let out = &out.for_payload(&a.output);
    if out.json() {
        out.json_value(
            &serde_json::json!({"file": a.output.display().to_string(), "release": release}),
        )?;
    } else {
        out.line(format!(
            "{}: version {} counter {} expires {}, {} artifacts, signed by {}",
            a.output.display(),
            release.version,
            release.security_counter,
            release.expires,
            release.artifacts.len(),
            release.key_ids.join(", ")
        ))?;
    }
    Ok(Outcome::Ok)
}

fn verify(a: VerifyArgs, out: &Output) -> anyhow::Result<Outcome> {
    let keys = a.trust.keys()?;
    let now = match &a.at {
        Some(t) => Timestamp::parse(t).context("--at")?.system_time(),
        None => SystemTime::now(),
    };
    if a.threshold == 0 {
        bail!("--threshold must be at least 1");
    }
    let policy = Policy {
        min_version: a.min_version.clone(),
        min_security_counter: a.min_security_counter,
        warn_expiring_days: a.warn_expiring,
        threshold: a.threshold,
    };
    let subject = a.metadata.display().to_string();
    let text = fs_err::read_to_string(&a.metadata)?;
    let (release, signed_by) = match meta::verify(&text, &keys, &policy, now) {
        Ok(r) => r,
        Err(e) => return refused(out, &subject, e),
    };
    if !a.no_artifacts {
        let dir = a.artifacts.clone().unwrap_or_else(|| match a.metadata.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
        if let Err(e) = meta::verify_artifacts(&release, &dir) {
            return refused(out, &subject, e);
        }
    }
    if out.json() {
        out.json_value(&serde_json::json!({
            "file": subject,
            "valid": true,
            "signedBy": signed_by,
            "artifactsChecked": !a.no_artifacts,
            "release": release,
        }))?;
    } else {
        out.line(format!(
            "{subject}: valid; version {} counter {} expires {}; {} artifacts{}; signed by {}",
            release.version,
            release.security_counter,
            release.expires,
            release.artifacts.len(),
            if a.no_artifacts { " (not checked)" } else { " checked" },
            signed_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ))?;
    }
    Ok(Outcome::Ok)
}

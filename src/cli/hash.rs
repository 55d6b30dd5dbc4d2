//! `otaforge hash`: sizes and SHA-256 digests of files, streamed and in parallel.

use std::path::PathBuf;

use anyhow::Context as _;
use otaforge::hash::{default_jobs, hash_files};
use serde::Serialize;

use super::{Outcome, Output};

/// Arguments of `otaforge hash`.
#[derive(Debug, clap::Args)]
pub(crate) struct HashArgs {
    /// Files to hash.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Files hashed at once (default: available cores).
    #[arg(long, short)]
    jobs: Option<usize>,
}

/// One file in `--format json` output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    file: String,
    size_in_bytes: u64,
    sha256: String,
    sha256_hex: String,
}

pub(crate) fn run(args: HashArgs, out: &Output) -> anyhow::Result<Outcome> {
    let reporter = out.progress("hashing");
    let results = hash_files(&args.files, args.jobs.unwrap_or_else(default_jobs), &reporter);
    drop(reporter);
    let mut entries = Vec::new();
    for r in results {
        let d = r.context("hash failed")?;
        entries.push(Entry {
            file: d.path.display().to_string(),
            size_in_bytes: d.size,
            sha256: d.sha256.to_base64(),
            sha256_hex: d.sha256.to_hex(),
        });
    }
    if out.json() {
        out.json_value(&entries)?;
    } else {
        for e in &entries {
            out.line(format!("{}  {}  {}  {}", e.sha256, e.sha256_hex, e.size_in_bytes, e.file))?;
        }
    }
    Ok(Outcome::Ok)
}

//! `otaforge hash`: sizes and SHA-256 digests of files, streamed and in parallel.

use std::path::{Path, PathBuf};

use otaforge::hash::{FileDigest, HashError, default_jobs, hash_files, hash_reader};
use serde::Serialize;

use super::{Failure, Outcome, Output};

/// Arguments of `otaforge hash`.
#[derive(Debug, clap::Args)]
pub(crate) struct HashArgs {
    /// Files to hash; `-` reads stdin.
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
    let stdin = Path::new("-");
    if args.files.iter().filter(|f| f.as_path() == stdin).count() > 1 {
        anyhow::bail!("`-` (stdin) can be given once");
    }
    let files: Vec<PathBuf> = args.files.iter().filter(|f| f.as_path() != stdin).cloned().collect();
    let reporter = out.progress("hashing");
    let mut results =
        hash_files(&files, args.jobs.unwrap_or_else(default_jobs), &reporter).into_iter();
    // Results in the order the files were named, stdin where `-` was.
    let mut ordered = Vec::with_capacity(args.files.len());
    for f in &args.files {
        if f.as_path() == stdin {
            let r = hash_reader(std::io::stdin().lock(), "stdin", &reporter)
                .map(|(size, sha256)| FileDigest { path: stdin.to_owned(), size, sha256 })
                .map_err(|source| HashError::Read { path: stdin.to_owned(), source });
            ordered.push(r);
        } else if let Some(r) = results.next() {
            ordered.push(r);
        }
    }
    drop(reporter);
    // Every file that can be read is hashed and shown; each that cannot is an error of its own.
    let mut entries = Vec::new();
    let mut failed = Vec::new();
    for r in ordered {
        match r {
            Ok(d) => entries.push(Entry {
                file: d.path.display().to_string(),
                size_in_bytes: d.size,
                sha256: d.sha256.to_base64(),
                sha256_hex: d.sha256.to_hex(),
            }),
            Err(e) => failed.push(e),
        }
    }
    if out.json() && failed.is_empty() {
        out.json_value(&entries)?;
    } else if !out.json() {
        for e in &entries {
            out.line(format!("{}  {}  {}  {}", e.sha256, e.sha256_hex, e.size_in_bytes, e.file))?;
        }
    }
    if failed.is_empty() {
        return Ok(Outcome::Ok);
    }
    for e in &failed[1..] {
        out.error(e.to_string());
    }
    let message = match failed.len() {
        1 => failed[0].to_string(),
        n => format!("{} (and {} more files could not be read)", failed[0], n - 1),
    };
    let file = match &failed[0] {
        HashError::Read { path, .. } => Some(path.display().to_string()),
        _ => None,
    };
    let mut f = Failure::new("unreadable", message).details(&entries);
    if let Some(file) = file {
        f = f.file(file);
    }
    out.failure(&f)?;
    Ok(Outcome::CheckFailed)
}

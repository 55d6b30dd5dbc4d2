//! `otaforge upload`: put artifacts in Azure Blob Storage (or a local directory) and print
//! least-privilege read URLs for them.

use std::path::PathBuf;
use std::time::Duration;

use otaforge::pipeline;
use otaforge::storage::sas::redact;
use otaforge::storage::{BlobStore as _, ContainerName, parse_ttl};

use super::args::StorageArgs;
use super::{Outcome, Output};

/// Arguments of `otaforge upload`.
#[derive(Debug, clap::Args)]
pub(crate) struct UploadArgs {
    /// Files to upload; each becomes blob PREFIX/FILENAME.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Container (created when missing, if the credential may).
    #[arg(long)]
    container: ContainerName,
    /// Blob name prefix (a virtual directory such as `contoso/toaster/1.2`).
    #[arg(long)]
    prefix: Option<String>,
    /// How long the printed read URLs stay valid (at most 7d).
    #[arg(long, default_value = "4h", value_parser = parse_ttl)]
    sas_expiry: Duration,
    #[command(flatten)]
    storage: StorageArgs,
}

pub(crate) fn run(
    a: UploadArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let sources = pipeline::blob_names(a.prefix.as_deref(), &a.files)?;
    let store = a.storage.open(out)?;
    let opts = a.storage.options();
    let secrets = store.secrets();
    rt.block_on(async {
        let reporter = out.progress("upload");
        let plan = pipeline::UploadPlan {
            container: a.container.clone(),
            options: opts,
            url_ttl: a.sas_expiry,
        };
        let entries = pipeline::upload_files(&store, &plan, &sources, &reporter).await;
        drop(reporter);
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let entries = entries.map_err(|e| anyhow::anyhow!("{}", redact(&e.to_string(), &refs)))?;
        if out.json() {
            out.json_value(&entries)?;
        } else {
            for e in &entries {
                let how = if e.already_present {
                    "already present, not sent".to_owned()
                } else if e.blocks_reused > 0 {
                    format!(
                        "{} blocks sent, {} reused from an interrupted run",
                        e.blocks_sent, e.blocks_reused
                    )
                } else {
                    format!("{} blocks sent", e.blocks_sent)
                };
                out.line(format!(
                    "{} -> {}/{} ({} bytes, {how})",
                    e.file.display(),
                    a.container,
                    e.blob,
                    e.size_in_bytes
                ))?;
                // The URL's Display hides its signature; `--format json` prints it whole.
                out.line(format!("  {}", e.url))?;
            }
            out.notice(format!(
                "uploaded {} files to {}; read URLs valid for {} (full URLs: --format json)",
                entries.len(),
                store.describe(),
                humantime::format_duration(a.sas_expiry)
            ));
        }
        Ok(Outcome::Ok)
    })
}

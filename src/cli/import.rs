//! `otaforge import`: arguments and display only. The work (check → plan → upload → import →
//! wait) is `otaforge::pipeline`.

use std::path::PathBuf;
use std::time::Duration;

use otaforge::pipeline::{self, PipelineError, UploadPlan};
use otaforge::service::AduClient;
use otaforge::storage::{AnyStore, ContainerName, parse_ttl};
use serde_json::json;

use super::args::AduArgs;
use super::args::StorageArgs;
use super::update::service_failure;
use super::{Failure, Outcome, Output};

/// Arguments of `otaforge import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// Import manifests: one update, or a parent and its children (at most 11). Payload and
    /// related files are read from each manifest's directory.
    #[arg(required = true)]
    manifests: Vec<PathBuf>,
    #[command(flatten)]
    adu: AduArgs,
    /// Container for the manifests and files.
    #[arg(long, default_value = "adu-imports")]
    container: ContainerName,
    /// Wait for the import to finish (the default; kept for scripts that pass it).
    #[arg(long, conflicts_with = "no_wait")]
    wait: bool,
    /// Do not wait for the import to finish (print the operation id).
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this long (the import may still finish).
    #[arg(long, default_value = "30m", value_parser = super::wait_duration)]
    timeout: Duration,
    /// How long the read URLs given to the service stay valid.
    #[arg(long, default_value = "4h", value_parser = parse_ttl)]
    sas_expiry: Duration,
    #[command(flatten)]
    storage: StorageArgs,
}

/// Shows a pipeline failure: findings, conflicts and service errors are exit 1; the rest is
/// returned as an error (exit 2).
fn failure(out: &Output, e: PipelineError, secrets: &[String]) -> anyhow::Result<Outcome> {
    match e {
        PipelineError::Invalid(reports) => {
            let docs: Vec<_> = reports
                .iter()
                .map(|r| json!({"file": r.file.display().to_string(), "valid": !r.findings.has_errors(), "findings": r.findings}))
                .collect();
            let bad: Vec<_> = reports.iter().filter(|r| r.findings.has_errors()).collect();
            for r in &bad {
                out.notice(format!("{}: invalid", r.file.display()));
                for x in &r.findings {
                    out.notice(format!("  {x}"));
                }
            }
            let message = format!(
                "{} of {} manifests are invalid; nothing was uploaded or imported",
                bad.len(),
                reports.len()
            );
            out.failure(&Failure::new("invalidManifest", message).details(docs))?;
            Ok(Outcome::CheckFailed)
        }
        PipelineError::Conflict { ref id, ref path } => {
            let f = Failure::new("UpdateAlreadyExists", e.to_string())
                .file(path.display())
                .details(json!({"updateId": id.to_string()}));
            out.failure(&f)?;
            Ok(Outcome::CheckFailed)
        }
        PipelineError::Service { what, source } => service_failure(out, &what, source),
        PipelineError::Storage { file, source } => {
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            anyhow::bail!(
                "uploading {file}: {}",
                otaforge::storage::sas::redact(&source.to_string(), &refs)
            )
        }
        other => Err(other.into()),
    }
}

/// The store `import` uploads to: the one the storage options name, or, with none, the
/// service's own (`otaforge serve`).
async fn open_store(
    storage: &StorageArgs,
    client: &AduClient,
    out: &Output,
) -> anyhow::Result<AnyStore> {
    if storage.is_configured() {
        return storage.open(out);
    }
    Ok(AnyStore::Embedded(otaforge::storage::embedded::EmbeddedStore::discover(client).await?))
}

pub(crate) fn run(
    a: ImportArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let checked = {
        let reporter = out.progress("hashing");
        pipeline::check(&a.manifests, otaforge::hash::default_jobs(), &reporter)
    };
    let checked = match checked {
        Ok(c) => c,
        Err(e) => return failure(out, e, &[]),
    };
    let client = a.adu.client(out)?;
    rt.block_on(async {
        let planned = match pipeline::plan(checked, &client).await {
            Ok(p) => p,
            Err(e) => return failure(out, e, &[]),
        };
        let already: Vec<String> = planned.already.iter().map(ToString::to_string).collect();
        if planned.todo.is_empty() {
            if out.json() {
                out.json_value(&json!({"status": "AlreadyImported", "imported": [], "alreadyImported": already}))?;
            } else {
                for id in &already {
                    out.line(format!("{id}: already imported with this content; nothing to do"))?;
                }
            }
            return Ok(Outcome::Ok);
        }
        let store = open_store(&a.storage, &client, out).await?;
        let secrets = store.secrets();
        let plan = UploadPlan {
            container: a.container.clone(),
            options: a.storage.options(),
            url_ttl: a.sas_expiry,
        };
        let uploaded = {
            let reporter = out.progress("upload");
            pipeline::upload(planned, &store, &plan, &reporter).await
        };
        let uploaded = match uploaded {
            Ok(u) => u,
            Err(e) => return failure(out, e, &secrets),
        };
        let started = match pipeline::start(uploaded, &client).await {
            Ok(s) => s,
            Err(e) => return failure(out, e, &secrets),
        };
        let ids: Vec<String> = started.ids.iter().map(ToString::to_string).collect();
        if a.no_wait {
            let op = &started.operation_id;
            if out.json() {
                out.json_value(&json!({"operationId": op, "status": "NotStarted", "updates": ids, "alreadyImported": already}))?;
            } else {
                out.line(format!("import started: operation {op} (otaforge update operation {op})"))?;
            }
            return Ok(Outcome::Ok);
        }
        let mut last = None;
        let mut progress = |o: &otaforge::service::UpdateOperation| {
            if last != Some(o.status) {
                last = Some(o.status);
                out.notice(format!("operation {}: {:?}", o.operation_id, o.status));
            }
        };
        let done = match pipeline::wait(started, &client, a.timeout, &mut progress).await {
            Ok(d) => d,
            Err(e) => return failure(out, e, &secrets),
        };
        let op = &done.operation;
        if done.succeeded() {
            if out.json() {
                out.json_value(&json!({"operationId": op.operation_id, "status": op.status, "imported": ids, "alreadyImported": already, "traceId": op.trace_id}))?;
            } else {
                for id in &ids {
                    out.line(format!("imported {id}"))?;
                }
                for id in &already {
                    out.line(format!("{id}: already imported"))?;
                }
            }
            Ok(Outcome::Ok)
        } else {
            let e = op.error.as_ref().map(|e| e.describe()).unwrap_or_else(|| "no error given".into());
            let message = format!(
                "import failed (operation {}, trace id {}): {e}",
                op.operation_id,
                op.trace_id.clone().unwrap_or_default()
            );
            let code = op.error.as_ref().map_or("importFailed".to_owned(), |e| e.code.clone());
            let details = json!({"operationId": op.operation_id, "status": op.status, "alreadyImported": already, "serviceError": op.error, "traceId": op.trace_id});
            out.failure(&Failure::new(code, message).details(details))?;
            Ok(Outcome::CheckFailed)
        }
    })
}

//! `otaforge update list|show|delete|operation`: the updates of a Device Update instance.

use std::time::Duration;

use anyhow::Context as _;
use otaforge::manifest::UpdateId;
use otaforge::service::{OperationStatus, ServiceError};

use super::args::AduArgs;
use super::{Failure, Outcome, Output};

/// `otaforge update` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum UpdateCommand {
    /// List the updates of the instance.
    List(ListArgs),
    /// Show one update (and its files with --files).
    Show(ShowArgs),
    /// Delete an update and wait for the deletion to finish.
    Delete(DeleteArgs),
    /// Show an import or delete operation.
    Operation(OperationArgs),
}

/// Arguments of `update list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    adu: AduArgs,
}

/// Arguments of `update show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// provider/name/version.
    update: String,
    #[command(flatten)]
    adu: AduArgs,
    /// Include each file's document.
    #[arg(long)]
    files: bool,
}

/// Arguments of `update delete`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    /// provider/name/version.
    update: String,
    #[command(flatten)]
    adu: AduArgs,
    /// Give up waiting after this long.
    #[arg(long, default_value = "10m", value_parser = super::wait_duration)]
    timeout: Duration,
}

/// Arguments of `update operation`.
#[derive(Debug, clap::Args)]
pub(crate) struct OperationArgs {
    /// Operation id (omit to list operations).
    id: Option<String>,
    #[command(flatten)]
    adu: AduArgs,
}

/// Parses `provider/name/version`.
pub(crate) fn parse_update_id(s: &str) -> anyhow::Result<UpdateId> {
    let parts: Vec<&str> = s.split('/').collect();
    let [p, n, v] = parts.as_slice() else {
        anyhow::bail!("`{s}` is not provider/name/version");
    };
    Ok(UpdateId::new(p, n, v)?)
}

/// Prints a service error (JSON on stdout with --format json) and returns exit 1 for errors the
/// service reported, or the error itself for transport and setup problems.
pub(crate) fn service_failure(
    out: &Output,
    what: &str,
    e: ServiceError,
) -> anyhow::Result<Outcome> {
    match e {
        ServiceError::Api { status, error, trace_id } => {
            let message = format!(
                "{what}: {status} {}{}",
                error.describe(),
                trace_id.as_ref().map(|t| format!(" (trace id {t})")).unwrap_or_default()
            );
            let details =
                serde_json::json!({"status": status, "traceId": trace_id, "serviceError": error});
            out.failure(&Failure::new(error.code.clone(), message).details(details))?;
            Ok(Outcome::CheckFailed)
        }
        other => Err(anyhow::Error::new(other).context(what.to_owned())),
    }
}

pub(crate) fn run(
    cmd: UpdateCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    rt.block_on(async {
        match cmd {
            UpdateCommand::List(a) => {
                let c = a.adu.client(out)?;
                match c.list_updates().await {
                    Ok(list) => {
                        if out.json() {
                            out.json_value(&list)?;
                        } else {
                            for u in &list {
                                let tag = if u.deployable() { "" } else { " (not deployable)" };
                                out.line(format!("{}{tag}", u.update_id))?;
                            }
                            out.notice(format!(
                                "{} updates in instance {}",
                                list.len(),
                                c.instance()
                            ));
                        }
                        Ok(Outcome::Ok)
                    }
                    Err(e) => service_failure(out, "list updates", e),
                }
            }
            UpdateCommand::Show(a) => {
                let id = parse_update_id(&a.update)?;
                let c = a.adu.client(out)?;
                match c.get_update(&id).await {
                    Ok(Some(u)) => {
                        if a.files {
                            /// An update with its file documents, as `show --files` prints it.
                            #[derive(serde::Serialize)]
                            struct WithFiles {
                                #[serde(flatten)]
                                update: otaforge::service::Update,
                                files: Vec<otaforge::service::UpdateFile>,
                            }
                            let files = c.update_files(&id).await.context("list files")?;
                            out.json_value(&WithFiles { update: u, files })?;
                        } else {
                            out.json_value(&u)?;
                        }
                        Ok(Outcome::Ok)
                    }
                    Ok(None) => {
                        out.error(format!(
                            "update {id} does not exist in instance {}",
                            c.instance()
                        ));
                        Ok(Outcome::CheckFailed)
                    }
                    Err(e) => service_failure(out, "get update", e),
                }
            }
            UpdateCommand::Delete(a) => {
                let id = parse_update_id(&a.update)?;
                let c = a.adu.client(out)?;
                let op = match c.delete_update(&id).await {
                    Ok(op) => op,
                    Err(e) => return service_failure(out, "delete update", e),
                };
                let done = c.wait_operation(&op, a.timeout, &mut |_| {}).await?;
                if out.json() {
                    out.json_value(&done)?;
                }
                if done.status == OperationStatus::Succeeded {
                    if !out.json() {
                        out.line(format!("deleted {id}"))?;
                    }
                    Ok(Outcome::Ok)
                } else {
                    out.error(format!(
                        "delete {id} failed: {}",
                        done.error.map(|e| e.describe()).unwrap_or_default()
                    ));
                    Ok(Outcome::CheckFailed)
                }
            }
            UpdateCommand::Operation(a) => {
                let c = a.adu.client(out)?;
                match &a.id {
                    Some(id) => match c.get_operation(id).await {
                        Ok((op, _)) => {
                            out.json_value(&op)?;
                            Ok(Outcome::Ok)
                        }
                        Err(e) => service_failure(out, "get operation", e),
                    },
                    None => match c.list_operations().await {
                        Ok(ops) => {
                            out.json_value(&ops)?;
                            Ok(Outcome::Ok)
                        }
                        Err(e) => service_failure(out, "list operations", e),
                    },
                }
            }
        }
    })
}

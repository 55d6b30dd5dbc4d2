//! `otaforge import`: validate manifests, upload them and their files, import them into Device
//! Update in one request, and wait for the result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use otaforge::manifest::{self, ImportManifest};
use otaforge::service::{FileImportMetadata, ImportItem, ImportManifestMetadata, OperationStatus};
use otaforge::storage::{ContainerName, parse_ttl};
use serde_json::{Value, json};

use super::update::{AduArgs, service_failure};
use super::upload::{StorageArgs, upload_files};
use super::{Outcome, Output};

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
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How long the read URLs given to the service stay valid.
    #[arg(long, default_value = "4h", value_parser = parse_ttl)]
    sas_expiry: Duration,
    #[command(flatten)]
    storage: StorageArgs,
}

struct Local {
    path: PathBuf,
    manifest: ImportManifest,
}

impl Local {
    fn dir_of(path: &Path) -> PathBuf {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn dir(&self) -> PathBuf {
        Self::dir_of(&self.path)
    }

    fn file_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        for f in &self.manifest.files {
            v.push(f.filename.clone());
            v.extend(f.related_files.iter().map(|r| r.filename.clone()));
        }
        v
    }
}

/// Every check `manifest validate --payload-dir` makes, on every manifest, before anything is
/// uploaded. Returns None (after printing the findings) when something is wrong.
fn check_all(paths: &[PathBuf], out: &Output) -> anyhow::Result<Option<Vec<Local>>> {
    // Every manifest's payloads are in its own directory.
    let dir_of = |p: &Path| Some(Local::dir_of(p));
    let checked = super::manifest::check_manifests(paths, true, &dir_of, &otaforge::NoReporter)?;
    let mut locals = Vec::new();
    let mut report = Vec::new();
    for (c, more) in checked {
        let mut findings = c.findings;
        findings.extend(more);
        report.push((c.path.clone(), findings));
        if let Some(m) = c.manifest {
            locals.push(Local { path: c.path, manifest: m });
        }
    }
    if !report.iter().any(|(_, f)| f.has_errors()) {
        return Ok(Some(locals));
    }
    if out.json() {
        let docs: Vec<Value> = report.iter().map(|(p, f)| json!({"file": p.display().to_string(), "valid": !f.has_errors(), "findings": f})).collect();
        out.json_value(&json!({"error": "invalidManifest", "manifests": docs}))?;
    }
    for (p, f) in &report {
        if f.has_errors() {
            out.error(format!("{}: invalid; nothing was uploaded or imported", p.display()));
            for x in f {
                out.notice(format!("  {x}"));
            }
        }
    }
    Ok(None)
}

/// Whether an imported update is this manifest: same compatibility, same steps, and the same
/// files (name, size, SHA-256). Anything else under the same id is a conflict.
async fn same_content(
    client: &otaforge::service::AduClient,
    existing: &Value,
    local: &ImportManifest,
) -> Result<bool, otaforge::service::ServiceError> {
    let compat_same = existing.get("compatibility")
        == Some(&Value::Array(local.compatibility.iter().cloned().map(Value::Object).collect()));
    let steps_same = existing
        .get("instructions")
        .is_some_and(|i| Some(i) == serde_json::to_value(&local.instructions).ok().as_ref());
    if !compat_same || !steps_same {
        return Ok(false);
    }
    let id = &local.update_id;
    let mut remote: Vec<(String, u64, String)> = Vec::new();
    for file_id in client.list_files(id).await? {
        let f = client.get_file(id, &file_id).await?;
        remote.push((
            f["fileName"].as_str().unwrap_or_default().to_owned(),
            f["sizeInBytes"].as_u64().unwrap_or_default(),
            f["hashes"]["sha256"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let mut mine: Vec<(String, u64, String)> = local
        .files
        .iter()
        .map(|f| (f.filename.clone(), f.size_in_bytes, f.hashes.sha256.to_base64()))
        .collect();
    remote.sort();
    mine.sort();
    Ok(remote == mine)
}

pub(crate) fn run(
    a: ImportArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    if a.manifests.len() > otaforge::service::MAX_IMPORT_ITEMS {
        bail!(
            "{} manifests given; one import takes a parent and at most 10 children (11)",
            a.manifests.len()
        );
    }
    let Some(mut locals) = check_all(&a.manifests, out)? else { return Ok(Outcome::CheckFailed) };
    // The parent (the manifest with reference steps) goes first.
    locals.sort_by_key(|l| {
        !l.manifest.instructions.steps.iter().any(|s| matches!(s, manifest::Step::Reference(_)))
    });
    let client = a.adu.client()?;
    let store = a.storage.open()?;
    let opts = a.storage.options();
    let secrets = store.secrets();
    rt.block_on(async {
        // Already imported with the same content: reported, not re-imported.
        let mut already = Vec::new();
        let mut todo = Vec::new();
        for l in locals {
            let id = &l.manifest.update_id;
            let found = match client.get_update(id).await {
                Ok(Some(existing)) => match same_content(&client, &existing, &l.manifest).await {
                    Ok(same) => Some(same),
                    Err(e) => return service_failure(out, &format!("look up the files of {id}"), e),
                },
                Ok(None) => None,
                Err(e) => return service_failure(out, &format!("look up {id}"), e),
            };
            match found {
                Some(true) => already.push(id.to_string()),
                Some(false) => {
                    out.error(format!("{}: update {id} is already imported with different content; give this release a new version", l.path.display()));
                    if out.json() {
                        out.json_value(&json!({"error": "UpdateAlreadyExists", "updateId": id.to_string(), "message": "already imported with different content"}))?;
                    }
                    return Ok(Outcome::CheckFailed);
                }
                None => todo.push(l),
            }
        }
        if todo.is_empty() {
            if out.json() {
                out.json_value(&json!({"status": "AlreadyImported", "imported": [], "alreadyImported": already}))?;
            } else {
                for id in &already {
                    out.line(format!("{id}: already imported with this content; nothing to do"))?;
                }
            }
            return Ok(Outcome::Ok);
        }
        // Upload each manifest and its files under provider/name/version/.
        let reporter = out.progress("upload");
        let mut items = Vec::new();
        for l in &todo {
            let id = &l.manifest.update_id;
            let prefix = format!("{}/{}/{}", id.provider, id.name, id.version);
            let mut files: Vec<PathBuf> = vec![l.path.clone()];
            files.extend(l.file_names().iter().map(|n| l.dir().join(n)));
            let names = super::upload::blob_names(Some(&prefix), &files)?;
            let entries = upload_files(&store, &a.container, &names, &opts, a.sas_expiry, &secrets, &reporter).await?;
            let (m, rest) = entries.split_first().context("no manifest entry")?;
            items.push(ImportItem {
                import_manifest: ImportManifestMetadata {
                    url: m.url.clone(),
                    size_in_bytes: m.size_in_bytes,
                    hashes: [("sha256".to_owned(), m.sha256.clone())].into_iter().collect(),
                },
                friendly_name: None,
                files: rest
                    .iter()
                    .map(|e| FileImportMetadata { filename: file_name(&e.file), url: e.url.clone() })
                    .collect(),
            });
        }
        drop(reporter);
        let op = match client.import(&items).await {
            Ok(op) => op,
            Err(e) => return service_failure(out, "import", e),
        };
        let ids: Vec<String> = todo.iter().map(|l| l.manifest.update_id.to_string()).collect();
        if a.no_wait {
            if out.json() {
                out.json_value(&json!({"operationId": op, "status": "NotStarted", "updates": ids, "alreadyImported": already}))?;
            } else {
                out.line(format!("import started: operation {op} (otaforge update operation {op})"))?;
            }
            return Ok(Outcome::Ok);
        }
        let mut last = None;
        let done = client
            .wait_operation(&op, a.timeout, &mut |o| {
                if last != Some(o.status) {
                    last = Some(o.status);
                    out.notice(format!("operation {}: {:?}", o.operation_id, o.status));
                }
            })
            .await;
        let done = match done {
            Ok(d) => d,
            Err(e) => return service_failure(out, "wait for the import", e),
        };
        if out.json() {
            let imported: Vec<&String> = if done.status == OperationStatus::Succeeded { ids.iter().collect() } else { Vec::new() };
            out.json_value(&json!({"operationId": done.operation_id, "status": done.status, "imported": imported, "alreadyImported": already, "error": done.error, "traceId": done.trace_id}))?;
        }
        if done.status == OperationStatus::Succeeded {
            if !out.json() {
                for id in &ids {
                    out.line(format!("imported {id}"))?;
                }
                for id in &already {
                    out.line(format!("{id}: already imported"))?;
                }
            }
            Ok(Outcome::Ok)
        } else {
            let e = done.error.map(|e| e.describe()).unwrap_or_else(|| "no error given".into());
            out.error(format!("import failed (operation {}, trace id {}): {e}", done.operation_id, done.trace_id.unwrap_or_default()));
            Ok(Outcome::CheckFailed)
        }
    })
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

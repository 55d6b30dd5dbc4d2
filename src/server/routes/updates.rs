//! Device Update's update management on serve:
//! - `POST /deviceUpdate/{instance}/updates:import` → 202 + `Operation-Location`
//! - `GET /deviceUpdate/{instance}/updates[/providers[/{p}/names[/{n}/versions[/{v}[/files[/{id}]]]]]]`
//! - `DELETE /deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions/{v}` → 202
//! - `GET /deviceUpdate/{instance}/updates/operations[/{id}]` (`Retry-After: 1` while running)
//!
//! What an import does is `server::import`'s.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Q, page};
use crate::manifest::UpdateId;
use crate::server::error::ApiError;
use crate::server::fetch::FetchPolicy;
use crate::server::import::{new_operation, run};
use crate::server::{Shared, now_string};
use crate::service::{
    API_VERSION, ErrorBody, ImportItem, OperationStatus, UpdateInfo, UpdateOperation,
};

type UpdatePath = Path<(String, String, String, String)>;

pub(super) fn router() -> Router<Shared> {
    let versions = "/deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions";
    Router::new()
        .route("/deviceUpdate/{instance}/updates", get(list_updates))
        .route(
            "/deviceUpdate/{instance}/updates:import",
            axum::routing::post(import_updates).layer(axum::extract::DefaultBodyLimit::max(
                crate::limits::MAX_IMPORT_REQUEST_BYTES,
            )),
        )
        .route("/deviceUpdate/{instance}/updates/operations", get(list_operations))
        .route("/deviceUpdate/{instance}/updates/operations/{id}", get(get_operation))
        .route("/deviceUpdate/{instance}/updates/providers", get(list_providers))
        .route("/deviceUpdate/{instance}/updates/providers/{p}/names", get(list_names))
        .route(versions, get(list_versions))
        .route(&format!("{versions}/{{v}}"), get(get_update).delete(delete_update))
        .route(&format!("{versions}/{{v}}/files"), get(list_files))
        .route(&format!("{versions}/{{v}}/files/{{f}}"), get(get_file))
}

fn op_location(instance: &str, id: &str) -> String {
    format!("/deviceUpdate/{instance}/updates/operations/{id}?api-version={API_VERSION}")
}

/// 202 with the `Operation-Location` of operation `id`.
fn accepted(instance: &str, id: &str) -> Response {
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&op_location(instance, id)) {
        r.headers_mut().insert("Operation-Location", v);
    }
    r
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("InvalidImportRequest", message)
}

/// Parses an import request body, with ADU's shape limits and serve's fetch policy.
fn parse_import(body: &[u8], fetch: &FetchPolicy) -> Result<Vec<ImportItem>, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    if !value.is_array() {
        return Err(invalid("the body must be a JSON array of import items"));
    }
    if let Some(d) = crate::finding::duplicate_keys(body).iter().next() {
        return Err(invalid(format!("{}: {}", d.path, d.message)));
    }
    let items: Vec<ImportItem> = serde_json::from_value(value)
        .map_err(|e| invalid(format!("the body is not an array of import items: {e}")))?;
    let max = crate::limits::MAX_IMPORT_ITEMS;
    if items.is_empty() || items.len() > max {
        return Err(invalid(format!(
            "an import request holds 1 to {max} updates, this one has {}",
            items.len()
        )));
    }
    for (i, it) in items.iter().enumerate() {
        if it.files.len() > crate::limits::MAX_REQUEST_FILES {
            let n = it.files.len();
            return Err(invalid(format!("item {i} lists {n} files; an update has at most 10"))
                .with_target(format!("[{i}].files")));
        }
        if !it.import_manifest.hashes.contains_key(&crate::hash::HashAlgorithm::Sha256) {
            return Err(invalid(format!("item {i}: importManifest.hashes.sha256 is required"))
                .with_target(format!("[{i}].importManifest.hashes")));
        }
    }
    for (i, item) in items.iter().enumerate() {
        let urls =
            std::iter::once((format!("[{i}].importManifest.url"), &item.import_manifest.url))
                .chain(
                    item.files
                        .iter()
                        .enumerate()
                        .map(|(j, f)| (format!("[{i}].files[{j}].url"), &f.url)),
                );
        for (target, url) in urls {
            if url.chars().count() > crate::limits::MAX_URL_CHARS {
                return Err(invalid(format!(
                    "{target} is {} characters long; at most {} are accepted",
                    url.chars().count(),
                    crate::limits::MAX_URL_CHARS
                )));
            }
            if let Err(why) = fetch.check(url) {
                return Err(ApiError::bad_request("UrlNotAllowed", format!("{target}: {why}"))
                    .with_target(target));
            }
        }
    }
    Ok(items)
}

async fn import_updates(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let items = parse_import(&body, &s.fetch)?;
    let op = new_operation(OperationStatus::NotStarted, None);
    let id = op.operation_id.clone();
    // Kept for inspection, without the signatures of its read URLs (a blob SAS or this
    // service's own can be valid for days): what the service stores must not grant access.
    let request = crate::storage::sas::redact(&String::from_utf8_lossy(&body), &[]);
    let queued = op.clone();
    let admitted =
        s.db.call(move |st| {
            if st.running_count()? >= crate::limits::MAX_RUNNING_OPERATIONS {
                return Ok(false);
            }
            st.prune_operations(
                &crate::server::import::retention_cutoff(),
                crate::limits::KEPT_OPERATIONS,
            )?;
            st.put_operation(&queued, Some(&request))?;
            Ok(true)
        })
        .await?;
    if !admitted {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyOperations",
            "at most 10 import or delete operations run at once; retry later",
        ));
    }
    let st = s.clone();
    tokio::spawn(async move { run(st, op, items).await });
    Ok(accepted(&s.instance, &id))
}

async fn get_operation(
    State(s): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = id.clone();
    let op = s.db.read(move |st| st.operation(&key)).await?.ok_or_else(|| {
        ApiError::not_found("OperationNotFound", format!("operation {id} does not exist"))
    })?;
    if let (Some(inm), Some(tag)) = (headers.get(header::IF_NONE_MATCH), &op.etag)
        && inm.to_str().ok() == Some(tag.as_str())
        && op.status.is_terminal()
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let mut r = axum::Json(&op).into_response();
    if !op.status.is_terminal() {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(r)
}

async fn list_operations(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let ops = s.db.read(|st| st.operations()).await?;
    // ADU supports only `status eq 'NotStarted' or status eq 'Running'`-style filters.
    let wanted = |st: OperationStatus| {
        q.get("filter").is_none_or(|f| f.contains(&format!("'{}'", st.as_str())))
    };
    let top = q.get("top").and_then(|t| t.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let items: Vec<UpdateOperation> =
        ops.into_iter().filter(|o| wanted(o.status)).take(top).collect();
    Ok(page(items, &uri, &q))
}

async fn list_updates(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let updates = s.db.read(|st| st.updates()).await?;
    let search = q.get("search").map(|x| x.to_lowercase());
    let items: Vec<_> = updates
        .into_iter()
        .filter(|u| {
            search.as_ref().is_none_or(|t| {
                serde_json::to_string(u).unwrap_or_default().to_lowercase().contains(t)
            })
        })
        .collect();
    Ok(page(items, &uri, &q))
}

/// The distinct values `key` gives over the instance's update ids that `keep` accepts.
async fn distinct_ids(
    s: &Shared,
    keep: impl Fn(&UpdateId) -> bool,
    key: impl Fn(&UpdateId) -> String,
) -> Result<Vec<String>, ApiError> {
    let updates = s.db.read(|st| st.updates()).await?;
    let set: std::collections::BTreeSet<String> =
        updates.iter().map(|u| &u.update_id).filter(|id| keep(id)).map(key).collect();
    Ok(set.into_iter().collect())
}

async fn list_providers(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    Ok(page(distinct_ids(&s, |_| true, |id| id.provider().to_owned()).await?, &uri, &q))
}

async fn list_names(
    State(s): State<Shared>,
    Path((_, p)): Path<(String, String)>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let names = distinct_ids(&s, |id| id.provider() == p, |id| id.name().to_owned()).await?;
    Ok(page(names, &uri, &q))
}

async fn list_versions(
    State(s): State<Shared>,
    Path((_, p, n)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let keep = |id: &UpdateId| id.provider() == p && id.name() == n;
    Ok(page(distinct_ids(&s, keep, |id| id.version().to_string()).await?, &uri, &q))
}

fn not_found_update(p: &str, n: &str, v: &str) -> ApiError {
    ApiError::not_found("UpdateNotFound", format!("update {p}/{n}/{v} does not exist"))
}

/// The update id of a path; an id that breaks ADU's rules cannot exist.
fn path_id(p: &str, n: &str, v: &str) -> Result<UpdateId, ApiError> {
    UpdateId::new(p, n, v).map_err(|_| not_found_update(p, n, v))
}

async fn get_update(
    State(s): State<Shared>,
    Path((_, p, n, v)): UpdatePath,
) -> Result<Response, ApiError> {
    let id = path_id(&p, &n, &v)?;
    let update = s.db.read(move |st| st.update(&id)).await?;
    Ok(axum::Json(update.ok_or_else(|| not_found_update(&p, &n, &v))?).into_response())
}

async fn list_files(
    State(s): State<Shared>,
    Path((_, p, n, v)): UpdatePath,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let id = path_id(&p, &n, &v)?;
    let found =
        s.db.call(move |st| match st.update(&id)? {
            Some(_) => Ok(Some(st.file_ids(&id)?)),
            None => Ok(None),
        })
        .await?;
    Ok(page(found.ok_or_else(|| not_found_update(&p, &n, &v))?, &uri, &q))
}

async fn get_file(
    State(s): State<Shared>,
    Path((_, p, n, v, f)): Path<(String, String, String, String, String)>,
) -> Result<Response, ApiError> {
    let id = path_id(&p, &n, &v)?;
    let key = f.clone();
    let doc = s.db.read(move |st| st.file(&id, &key)).await?.ok_or_else(|| {
        ApiError::not_found("FileNotFound", format!("update {p}/{n}/{v} has no file {f}"))
    })?;
    Ok(axum::Json(doc).into_response())
}

async fn delete_update(
    State(s): State<Shared>,
    Path((_, p, n, v)): UpdatePath,
) -> Result<Response, ApiError> {
    let id = path_id(&p, &n, &v)?;
    let mut op = new_operation(OperationStatus::Running, Some(UpdateInfo::new(id.clone())));
    let op_id = op.operation_id.clone();
    let found =
        s.db.call(move |st| {
            if st.update(&id)?.is_none() {
                return Ok(false);
            }
            // A parent that references this update keeps it alive.
            let parents: Vec<String> = st
                .updates()?
                .iter()
                .filter(|u| u.references().any(|r| r == &id))
                .map(|u| u.update_id.to_string())
                .collect();
            st.put_operation(&op, None)?;
            op.last_action_date_time = Some(now_string());
            if parents.is_empty() {
                op.status = OperationStatus::Succeeded;
                st.commit_delete(&id, &op)?;
            } else {
                op.status = OperationStatus::Failed;
                op.error = Some(ErrorBody::new(
                    "UpdateReferenced",
                    format!(
                        "update {id} is referenced by {}; delete the parent first",
                        parents.join(", ")
                    ),
                ));
                st.put_operation(&op, None)?;
            }
            Ok(true)
        })
        .await?;
    if !found {
        return Err(not_found_update(&p, &n, &v));
    }
    Ok(accepted(&s.instance, &op_id))
}

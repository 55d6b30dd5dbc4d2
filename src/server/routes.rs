//! The HTTP surface of `otaforge serve`: paths, status codes, headers and the ADU error
//! envelope. Handlers parse, call the store or the import logic, and shape the answer; the
//! rules live in [`super::import`] and [`super::store`].
//!
//! Device Update API (every route needs `?api-version=2022-10-01` or `2026-06-01`):
//! - `POST /deviceUpdate/{instance}/updates:import` → 202 + `Operation-Location`
//! - `GET /deviceUpdate/{instance}/updates[/providers[/{p}/names[/{n}/versions[/{v}[/files[/{id}]]]]]]`
//! - `DELETE /deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions/{v}` → 202
//! - `GET /deviceUpdate/{instance}/updates/operations[/{id}]` (`Retry-After: 1` while running)
//!
//! otaforge's own (authenticated like the API; see `storage::embedded`):
//! - `GET /deviceUpdate/{instance}/otaforge/storage` → where uploads go
//! - `PUT /deviceUpdate/{instance}/otaforge/blobs/{container}/{blob}` (`x-otaforge-sha256`)
//! - `GET /deviceUpdate/{instance}/otaforge/urls/{container}/{blob}?ttl=SECONDS` → a read URL
//!
//! Blob read URLs: `GET /blobs/{container}/{blob}?se=...&sp=r&sig=...`.

// Errors here are the ADU error document or the HTTP answer itself: built once, on the failure
// path and handed straight to the client, so boxing them would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures::StreamExt as _;
use serde::Serialize;

use super::fetch::FetchPolicy;
use super::{Shared, new_operation, run_import};
use crate::manifest::UpdateId;
use crate::service::{
    API_VERSION, ErrorBody, ErrorResponse, ImportItem, OperationStatus, Page,
    SUPPORTED_API_VERSIONS, UpdateInfo, UpdateOperation,
};
use crate::storage::embedded::{BlobReceipt, ReadUrl, SHA256_HEADER, StorageInfo};
use crate::storage::{BlobName, BlobStore as _, ContainerName, NameError};

/// Items per page of every list.
const PAGE: usize = 20;

/// Every route of the service.
pub(super) fn router(state: Shared) -> Router {
    let api = Router::new()
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
        .route(
            "/deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions",
            get(list_versions),
        )
        .route(
            "/deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions/{v}",
            get(get_update).delete(delete_update),
        )
        .route(
            "/deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions/{v}/files",
            get(list_files),
        )
        .route(
            "/deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions/{v}/files/{f}",
            get(get_file),
        )
        .route("/deviceUpdate/{instance}/management/groups", get(list_groups))
        .route("/deviceUpdate/{instance}/management/groups/{g}", get(get_group).delete(delete_group))
        .route("/deviceUpdate/{instance}/management/groups/{g}/bestUpdates", get(group_best_updates))
        .route(
            "/deviceUpdate/{instance}/management/deviceClasses/{c}/installableUpdates",
            get(installable_updates),
        )
        .route(
            "/deviceUpdate/{instance}/management/groups/{g}/updateCompliance",
            get(group_compliance),
        )
        .route("/deviceUpdate/{instance}/management/groups/{g}/deployments", get(list_deployments))
        .route(
            "/deviceUpdate/{instance}/management/groups/{g}/deployments/{d}",
            get(get_deployment).put(put_deployment).delete(delete_deployment),
        )
        .route(
            "/deviceUpdate/{instance}/management/groups/{g}/deployments/{d}/status",
            get(deployment_status),
        )
        .route(
            "/deviceUpdate/{instance}/management/groups/{g}/deviceClassSubgroups/{c}/deployments/{d}/devicestates",
            get(device_states),
        )
        .route(
            "/deviceUpdate/{instance}/management/groups/{g}/deviceClassSubgroups/{c}/deployments/{d}",
            axum::routing::post(subgroup_action),
        )
        .route("/deviceUpdate/{instance}/management/devices", get(list_devices))
        .route("/deviceUpdate/{instance}/management/devices/{d}", get(get_device))
        .route("/deviceUpdate/{instance}/management/deviceClasses", get(list_classes))
        .route(
            "/deviceUpdate/{instance}/management/deviceClasses/{c}",
            get(get_class).patch(patch_class).delete(delete_class),
        )
        .route("/deviceUpdate/{instance}/management/updateCompliance", get(instance_compliance))
        .route("/deviceUpdate/{instance}/otaforge/storage", get(storage_info))
        .route("/deviceUpdate/{instance}/otaforge/blobs/{container}/{*blob}", put(put_blob))
        .route("/deviceUpdate/{instance}/otaforge/urls/{container}/{*blob}", get(blob_url))
        .layer(axum::middleware::from_fn_with_state(state.clone(), api_guard));
    Router::new()
        .merge(api)
        .merge(super::hub::router())
        .merge(super::configs::router())
        .merge(super::modules::router())
        .route("/blobs/{*path}", get(get_blob))
        .route("/files/content/{*path}", get(get_content))
        .fallback(|| async {
            api_error(StatusCode::NOT_FOUND, ErrorBody::new("NotFound", "no such route"))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), super::guard::browser_guard))
        .layer(axum::middleware::from_fn(envelope))
        .with_state(state)
}

/// Gives every error answer the ADU envelope and `x-ms-error-code`, including the ones the
/// HTTP layer makes itself (an unknown method, a body over the limit, a path that is not
/// UTF-8), so a client has one shape to read.
async fn envelope(req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error())
        || r.headers().contains_key("x-ms-error-code")
    {
        return r;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::BAD_REQUEST => "BadRequest",
        s if s.is_server_error() => "InternalServerError",
        _ => "RequestFailed",
    };
    let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("request failed").to_owned()
    } else {
        text.trim().to_owned()
    };
    api_error(status, ErrorBody::new(code, message))
}

// Device management: groups, devices and classes as Device Update sees the registry.

/// The Device Update view of the whole registry ([`view_of`]).
async fn device_view(s: &Shared) -> Result<Arc<super::devices::View>, Response> {
    view_of(s, None).await
}

/// Views kept by [`view_of`] beyond which stale, unused ones are dropped.
const KEPT_VIEWS: usize = 256;

/// The Device Update view of one group's devices, or of the whole registry. A view is kept
/// until the store is next written (its generation moves), so lists, status and device-state
/// queries at rest do not rebuild it. Each view has its own async lock: when many requests
/// need a view that must be rebuilt, one builds it and the others wait for that one, so the
/// work and the memory do not grow with the number of clients.
async fn view_of(s: &Shared, group: Option<&str>) -> Result<Arc<super::devices::View>, Response> {
    let wanted = s.db.generation();
    let slot = {
        let mut views = s.views.lock().unwrap_or_else(|p| p.into_inner());
        if views.len() > KEPT_VIEWS {
            views.retain(|_, v| Arc::strong_count(v) > 1);
        }
        views.entry(group.unwrap_or_default().to_owned()).or_default().clone()
    };
    let mut cached = slot.lock().await;
    if let Some((at, view)) = cached.as_ref()
        && *at >= wanted
    {
        return Ok(view.clone());
    }
    // Read after noting the generation: a write that lands meanwhile makes the next request
    // rebuild, never a stale view look current.
    let at = s.db.generation();
    let twins = match group {
        Some(g) => {
            let g = g.to_owned();
            s.db.read(move |st| st.group_twins(&g)).await.map_err(internal)?
        }
        None => s.db.read(|st| st.twins_with_created()).await.map_err(internal)?,
    };
    let updates = s.db.read(|st| st.updates()).await.map_err(internal)?;
    let names = s.db.read(|st| st.class_names()).await.map_err(internal)?;
    let mut view = super::devices::View::build(&twins, &updates);
    for (id, class) in &mut view.classes {
        class.friendly_name = names.get(id).cloned();
    }
    let view = Arc::new(view);
    *cached = Some((at, view.clone()));
    Ok(view)
}

fn not_found(what: &str, id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        ErrorBody::new("NotFound", format!("{what} `{id}` does not exist")),
    )
}

async fn list_groups(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    match device_view(&s).await {
        Ok(v) => page(v.groups(), &uri, &q),
        Err(r) => r,
    }
}

async fn get_group(State(s): State<Shared>, Path((_, g)): Path<(String, String)>) -> Response {
    match device_view(&s).await {
        Ok(v) => match v.groups().into_iter().find(|x| x.group_id == g) {
            Some(group) => axum::Json(group).into_response(),
            None => not_found("group", &g),
        },
        Err(r) => r,
    }
}

/// ADU's rules: a default group cannot be deleted, nor one with devices or a deployment that
/// is not superseded. (A group here is its devices' tags, so one that can be deleted has no
/// devices and is already gone: the answer is 404 unless a rule refuses first.)
async fn delete_group(State(s): State<Shared>, Path((_, g)): Path<(String, String)>) -> Response {
    if g == super::devices::DEFAULT_GROUP {
        return api_error(
            StatusCode::CONFLICT,
            ErrorBody::new("CannotDeleteDefaultGroup", "the default group cannot be deleted"),
        );
    }
    let view = match device_view(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(group) = view.groups().into_iter().find(|x| x.group_id == g) {
        return api_error(
            StatusCode::CONFLICT,
            ErrorBody::new(
                "GroupNotEmpty",
                format!(
                    "group `{g}` has {} devices; move them out (remove their ADUGroup tag) first",
                    group.device_count.unwrap_or(0)
                ),
            ),
        );
    }
    let key = g.clone();
    match s.db.read(move |st| st.deployments(&key)).await {
        Ok(list) if list.iter().any(|d| d.state != "Inactive") => api_error(
            StatusCode::CONFLICT,
            ErrorBody::new(
                "GroupHasDeployments",
                format!("group `{g}` has an active or canceled deployment; delete it first"),
            ),
        ),
        Ok(_) => not_found("group", &g),
        Err(e) => internal(e),
    }
}

/// The best update of each device class of a group (`bestUpdates`).
async fn group_best_updates(
    State(s): State<Shared>,
    Path((_, g)): Path<(String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    let view = match device_view(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !view.groups().iter().any(|x| x.group_id == g) {
        return not_found("group", &g);
    }
    let mut seen = Vec::new();
    let mut best = Vec::new();
    for d in view.devices.iter().filter(|d| d.device.group_id.as_deref() == Some(g.as_str())) {
        let class = &d.device.device_class_id;
        if seen.contains(class) {
            continue;
        }
        seen.push(class.clone());
        let count = view
            .devices
            .iter()
            .filter(|x| {
                x.device.group_id.as_deref() == Some(g.as_str())
                    && x.device.device_class_id == *class
            })
            .count();
        let update = view.classes.get(class).and_then(|c| c.best_compatible_update.clone());
        best.push(serde_json::json!({"groupId": g, "deviceClassId": class, "update": update, "deviceCount": count}));
    }
    page(best, &uri, &q)
}

/// `PATCH /deviceClasses/{id}`: only `friendlyName` (1-100 letters, digits, `.` and `-`).
async fn patch_class(
    State(s): State<Shared>,
    Path((_, c)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let view = match device_view(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !view.classes.contains_key(&c) {
        return not_found("device class", &c);
    }
    let patch: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request("InvalidDeviceClass", format!("the body is not JSON: {e}")),
    };
    let unknown: Vec<&String> = patch
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter(|k| *k != "friendlyName")
        .collect();
    if !unknown.is_empty() {
        return bad_request(
            "InvalidDeviceClass",
            format!("only friendlyName can be changed, not {unknown:?}"),
        );
    }
    let Some(name) = patch.get("friendlyName").and_then(|n| n.as_str()).map(str::to_owned) else {
        return bad_request("InvalidDeviceClass", "friendlyName must be a string");
    };
    let ok = (1..=100).contains(&name.chars().count())
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.' || ch == '-');
    if !ok {
        return bad_request(
            "InvalidDeviceClass",
            "friendlyName has 1-100 letters, digits, '.' and '-'",
        );
    }
    let key = c.clone();
    if let Err(e) = s.db.call(move |st| st.set_class_name(&key, Some(&name))).await {
        return internal(e);
    }
    match device_view(&s).await {
        Ok(v) => v
            .classes
            .get(&c)
            .map_or_else(|| not_found("device class", &c), |x| axum::Json(x).into_response()),
        Err(r) => r,
    }
}

/// `DELETE /deviceClasses/{id}`: refused while devices of the class exist; a class here is its
/// devices' reports, so one without devices is already gone (404), and its name is forgotten.
async fn delete_class(State(s): State<Shared>, Path((_, c)): Path<(String, String)>) -> Response {
    let view = match device_view(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let members = view.devices.iter().filter(|d| d.device.device_class_id == c).count();
    if members > 0 {
        return api_error(
            StatusCode::CONFLICT,
            ErrorBody::new(
                "DeviceClassNotEmpty",
                format!("device class `{c}` has {members} devices"),
            ),
        );
    }
    let key = c.clone();
    let _ = s.db.call(move |st| st.set_class_name(&key, None)).await;
    not_found("device class", &c)
}

/// The deployable updates a device class can install, newest first.
async fn installable_updates(
    State(s): State<Shared>,
    Path((_, c)): Path<(String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    let view = match device_view(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(class) = view.classes.get(&c) else { return not_found("device class", &c) };
    let updates = match s.db.read(|st| st.updates()).await {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let compat = &class.device_class_properties.compat_properties;
    let mut fits: Vec<&crate::service::Update> = updates
        .iter()
        .filter(|u| super::devices::best_update(std::slice::from_ref(*u), compat).is_some())
        .collect();
    fits.sort_by(|a, b| b.update_id.version().cmp(a.update_id.version()));
    let infos: Vec<UpdateInfo> =
        fits.into_iter().map(|u| UpdateInfo::new(u.update_id.clone())).collect();
    page(infos, &uri, &q)
}

async fn group_compliance(
    State(s): State<Shared>,
    Path((_, g)): Path<(String, String)>,
) -> Response {
    match device_view(&s).await {
        Ok(v) if v.groups().iter().any(|x| x.group_id == g) => {
            axum::Json(v.compliance(|d| d.group_id.as_deref() == Some(g.as_str()))).into_response()
        }
        Ok(_) => not_found("group", &g),
        Err(r) => r,
    }
}

async fn instance_compliance(State(s): State<Shared>) -> Response {
    match device_view(&s).await {
        Ok(v) => axum::Json(v.compliance(|_| true)).into_response(),
        Err(r) => r,
    }
}

/// The `filter` of the device list: `groupId eq 'G'` and/or `deviceClassId eq 'C'`, joined by
/// `and` (the spec's forms; names compared case-insensitively).
fn device_filter(filter: &str) -> Result<Vec<(String, String)>, Response> {
    let mut out = Vec::new();
    for part in filter.split(" and ") {
        let bad = || {
            bad_request(
                "InvalidFilter",
                format!("`{part}` is not `groupId eq '...'` or `deviceClassId eq '...'`"),
            )
        };
        let (name, value) = part.trim().split_once(" eq ").ok_or_else(bad)?;
        let value =
            value.trim().strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).ok_or_else(bad)?;
        let name = name.trim().to_ascii_lowercase();
        if name != "groupid" && name != "deviceclassid" {
            return Err(bad());
        }
        out.push((name, value.to_owned()));
    }
    Ok(out)
}

async fn list_devices(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    let filter = match q.get("filter").map(|f| device_filter(f)).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(r) => return r,
    };
    match device_view(&s).await {
        Ok(v) => {
            let devices: Vec<_> = v
                .devices
                .iter()
                .map(|d| &d.device)
                .filter(|d| {
                    filter.iter().all(|(name, value)| match name.as_str() {
                        "groupid" => d.group_id.as_deref() == Some(value.as_str()),
                        _ => d.device_class_id == *value,
                    })
                })
                .collect();
            page(devices, &uri, &q)
        }
        Err(r) => r,
    }
}

async fn get_device(State(s): State<Shared>, Path((_, d)): Path<(String, String)>) -> Response {
    match device_view(&s).await {
        Ok(v) => match v.devices.iter().find(|x| x.device.device_id == d) {
            Some(x) => axum::Json(&x.device).into_response(),
            None => not_found("device", &d),
        },
        Err(r) => r,
    }
}

async fn list_classes(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    match device_view(&s).await {
        Ok(v) => page(v.classes.values().collect(), &uri, &q),
        Err(r) => r,
    }
}

async fn get_class(State(s): State<Shared>, Path((_, c)): Path<(String, String)>) -> Response {
    match device_view(&s).await {
        Ok(v) => match v.classes.get(&c) {
            Some(class) => axum::Json(class).into_response(),
            None => not_found("device class", &c),
        },
        Err(r) => r,
    }
}

// Deployments.

type DeploymentPath = Path<(String, String, String)>;

async fn put_deployment(
    State(s): State<Shared>,
    Path((_, g, d)): DeploymentPath,
    body: axum::body::Bytes,
) -> Response {
    let deployment: crate::service::model::Deployment = match serde_json::from_slice(&body) {
        Ok(x) => x,
        Err(e) => {
            return bad_request("InvalidDeployment", format!("the body is not a deployment: {e}"));
        }
    };
    let view = match device_view(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let updates = match s.db.read(|st| st.updates()).await {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let deployment = match super::deploy::prepare(deployment, &g, &d, &view, &updates) {
        Ok(x) => x,
        Err((status, error)) => {
            return api_error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                error,
            );
        }
    };
    let stored = deployment.clone();
    match s.db.call(move |st| st.put_deployment(&stored, super::deploy::MAX_DEPLOYMENTS)).await {
        Ok(Ok(_)) => {
            // Devices hear of it now (the background loop would within seconds).
            let _ = super::reconcile(&s, &g).await;
            axum::Json(deployment).into_response()
        }
        Ok(Err(max)) => api_error(
            StatusCode::CONFLICT,
            ErrorBody::new(
                "ExceedsMaxDeployments",
                format!("the instance holds {max} deployments, the most it may; delete old ones"),
            ),
        ),
        Err(e) => internal(e),
    }
}

async fn get_deployment(State(s): State<Shared>, Path((_, g, d)): DeploymentPath) -> Response {
    let key = d.clone();
    match s.db.read(move |st| st.deployment(&g, &key)).await {
        Ok(Some(x)) => axum::Json(x.deployment).into_response(),
        Ok(None) => not_found("deployment", &d),
        Err(e) => internal(e),
    }
}

async fn list_deployments(
    State(s): State<Shared>,
    Path((_, g)): Path<(String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    match s.db.read(move |st| st.deployments(&g)).await {
        Ok(list) => page(list.into_iter().map(|x| x.deployment).collect(), &uri, &q),
        Err(e) => internal(e),
    }
}

async fn delete_deployment(State(s): State<Shared>, Path((_, g, d)): DeploymentPath) -> Response {
    let key = d.clone();
    match s.db.call(move |st| st.delete_deployment(&g, &key)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found("deployment", &d),
        Err(e) => internal(e),
    }
}

async fn deployment_status(State(s): State<Shared>, Path((_, g, d)): DeploymentPath) -> Response {
    let key = d.clone();
    let stored = match s.db.read(move |st| st.deployment(&g, &key)).await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found("deployment", &d),
        Err(e) => return internal(e),
    };
    match view_of(&s, Some(&stored.deployment.group_id)).await {
        Ok(v) => axum::Json(super::deploy::status(&stored, &v)).into_response(),
        Err(r) => r,
    }
}

/// `POST …/deviceClassSubgroups/{c}/deployments/{d}:cancel` and `…:retry` (the action is part
/// of the last path segment, as ADU spells it).
async fn subgroup_action(
    State(s): State<Shared>,
    Path((_, g, c, d)): Path<(String, String, String, String)>,
) -> Response {
    let (id, action) = match d.rsplit_once(':') {
        Some((id, a @ ("cancel" | "retry"))) => (id.to_owned(), a.to_owned()),
        _ => {
            return api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorBody::new(
                    "MethodNotAllowed",
                    "POST takes `:cancel` or `:retry` after the deployment id",
                ),
            );
        }
    };
    let (group, key, class) = (g.clone(), id.clone(), c.clone());
    let existing = match s.db.read(move |st| st.deployment(&group, &key)).await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found("deployment", &id),
        Err(e) => return internal(e),
    };
    if !existing.deployment.device_class_subgroups.iter().flatten().any(|x| *x == class) {
        return not_found("device class subgroup of the deployment", &c);
    }
    let already_canceled = existing.subgroups.get(&class).is_some_and(|a| a.canceled);
    if action == "retry" && (already_canceled || existing.state != "Active") {
        return api_error(
            StatusCode::CONFLICT,
            ErrorBody::new(
                "DeploymentNotActive",
                "only an active, not canceled deployment can be retried",
            ),
        );
    }
    let now = super::now_string();
    let result =
        s.db.call(move |st| {
            st.act_on_subgroup(&g, &id, &class, |a| {
                if action == "cancel" {
                    a.canceled = true;
                } else {
                    a.retry_count += 1;
                    a.retry_timestamp = Some(now);
                }
            })
        })
        .await;
    match result {
        Ok(Some(x)) => {
            let _ = super::reconcile(&s, &x.deployment.group_id).await;
            axum::Json(x.deployment).into_response()
        }
        Ok(None) => not_found("deployment", &d),
        Err(e) => internal(e),
    }
}

async fn device_states(
    State(s): State<Shared>,
    Path((_, g, c, d)): Path<(String, String, String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    let (group, key) = (g.clone(), d.clone());
    let stored = match s.db.read(move |st| st.deployment(&group, &key)).await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found("deployment", &d),
        Err(e) => return internal(e),
    };
    let view = match view_of(&s, Some(&g)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let states: Vec<crate::service::model::DeploymentDeviceState> = view
        .devices
        .iter()
        .filter(|x| {
            x.device.group_id.as_deref() == Some(g.as_str()) && x.device.device_class_id == c
        })
        .map(|x| crate::service::model::DeploymentDeviceState {
            device_id: x.device.device_id.clone(),
            module_id: x.device.module_id.clone(),
            moved_on_to_new_deployment: stored.state == "Inactive",
            retry_count: stored.subgroups.get(&c).map_or(0, |a| a.retry_count),
            device_state: super::deploy::device_state(x, &stored),
            extra: Default::default(),
        })
        .collect();
    page(states, &uri, &q)
}

/// The ADU error envelope, with `x-ms-error-code`.
pub(super) fn api_error(status: StatusCode, error: ErrorBody) -> Response {
    let code = HeaderValue::from_str(&error.code).unwrap_or(HeaderValue::from_static("Error"));
    let mut r = (status, axum::Json(ErrorResponse { error })).into_response();
    r.headers_mut().insert("x-ms-error-code", code);
    r
}

fn internal(e: impl std::fmt::Display) -> Response {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorBody::new("InternalServerError", e.to_string()),
    )
}

fn bad_request(code: &str, message: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, ErrorBody::new(code, message))
}

/// Bearer token, api-version and instance checks for every API route.
async fn api_guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim_start());
        let ok = given
            .is_some_and(|g| subtle::ConstantTimeEq::ct_eq(g.as_bytes(), token.as_bytes()).into());
        if !ok {
            let mut r = api_error(
                StatusCode::UNAUTHORIZED,
                ErrorBody::new("Unauthorized", "a valid bearer token is required"),
            );
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let query = req.uri().query().unwrap_or_default();
    let version = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.into_owned());
    match version.as_deref() {
        Some(v) if SUPPORTED_API_VERSIONS.contains(&v) => {}
        Some(other) => {
            return bad_request(
                "UnsupportedApiVersion",
                format!(
                    "api-version {other} is not supported; use one of {}",
                    SUPPORTED_API_VERSIONS.join(", ")
                ),
            );
        }
        None => {
            return bad_request(
                "MissingApiVersionParameter",
                format!("the api-version query parameter is required ({API_VERSION})"),
            );
        }
    }
    let instance = req.uri().path().split('/').nth(2).unwrap_or_default();
    if instance != s.instance {
        return api_error(
            StatusCode::NOT_FOUND,
            ErrorBody::new(
                "InstanceNotFound",
                format!(
                    "instance `{instance}` does not exist; this service hosts `{}`",
                    s.instance
                ),
            ),
        );
    }
    next.run(req).await
}

fn op_location(instance: &str, id: &str) -> String {
    format!("/deviceUpdate/{instance}/updates/operations/{id}?api-version={API_VERSION}")
}

/// Where an update is (an operation's `resourceLocation`).
pub(super) fn update_location(instance: &str, id: &UpdateId) -> String {
    format!(
        "/deviceUpdate/{instance}/updates/providers/{}/names/{}/versions/{}?api-version={API_VERSION}",
        id.provider(),
        id.name(),
        id.version()
    )
}

/// 202 with the `Operation-Location` of operation `id`.
fn accepted(instance: &str, id: &str) -> Response {
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&op_location(instance, id)) {
        r.headers_mut().insert("Operation-Location", v);
    }
    r
}

/// Parses an import request body, with ADU's shape limits and serve's fetch policy.
fn parse_import(body: &[u8], fetch: &FetchPolicy) -> Result<Vec<ImportItem>, Response> {
    let invalid = |m: String| bad_request("InvalidImportRequest", m);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    if !value.is_array() {
        return Err(invalid("the body must be a JSON array of import items".into()));
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
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "InvalidImportRequest",
                    format!("item {i} lists {} files; an update has at most 10", it.files.len()),
                )
                .with_target(format!("[{i}].files")),
            ));
        }
        if !it.import_manifest.hashes.contains_key(&crate::hash::HashAlgorithm::Sha256) {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "InvalidImportRequest",
                    format!("item {i}: importManifest.hashes.sha256 is required"),
                )
                .with_target(format!("[{i}].importManifest.hashes")),
            ));
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
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorBody::new("UrlNotAllowed", format!("{target}: {why}")).with_target(target),
                ));
            }
        }
    }
    Ok(items)
}

async fn import_updates(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let items = match parse_import(&body, &s.fetch) {
        Ok(items) => items,
        Err(r) => return r,
    };
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
            st.prune_operations(&super::retention_cutoff(), crate::limits::KEPT_OPERATIONS)?;
            st.put_operation(&queued, Some(&request))?;
            Ok(true)
        })
        .await;
    match admitted {
        Ok(true) => {}
        Ok(false) => {
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorBody::new(
                    "TooManyOperations",
                    "at most 10 import or delete operations run at once; retry later",
                ),
            );
        }
        Err(e) => return internal(e),
    }
    let st = s.clone();
    tokio::spawn(async move { run_import(st, op, items).await });
    accepted(&s.instance, &id)
}

fn with_retry_after(op: &UpdateOperation, mut r: Response) -> Response {
    if !op.status.is_terminal() {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn get_operation(
    State(s): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let key = id.clone();
    match s.db.read(move |st| st.operation(&key)).await {
        Ok(Some(op)) => {
            if let (Some(inm), Some(tag)) = (headers.get(header::IF_NONE_MATCH), &op.etag)
                && inm.to_str().ok() == Some(tag.as_str())
                && op.status.is_terminal()
            {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            let r = axum::Json(&op).into_response();
            with_retry_after(&op, r)
        }
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            ErrorBody::new("OperationNotFound", format!("operation {id} does not exist")),
        ),
        Err(e) => internal(e),
    }
}

type Q = Query<HashMap<String, String>>;

/// `value` + `nextLink` paging over `items`, [`PAGE`] per page, `skip` in the next link.
fn page<T: Serialize>(
    items: Vec<T>,
    uri: &axum::http::Uri,
    query: &HashMap<String, String>,
) -> Response {
    let skip = query.get("skip").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let total = items.len();
    let value: Vec<T> = items.into_iter().skip(skip).take(PAGE).collect();
    let mut next_link = None;
    if skip + PAGE < total {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "skip")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.sort();
        q.push(("skip".into(), (skip + PAGE).to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish();
        next_link = Some(format!("{}?{qs}", uri.path()));
    }
    axum::Json(Page { value, next_link }).into_response()
}

async fn list_operations(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    let ops = match s.db.read(|st| st.operations()).await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    // ADU supports only `status eq 'NotStarted' or status eq 'Running'`-style filters.
    let wanted = |st: OperationStatus| {
        q.get("filter").is_none_or(|f| f.contains(&format!("'{}'", st.as_str())))
    };
    let top = q.get("top").and_then(|t| t.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let items: Vec<UpdateOperation> =
        ops.into_iter().filter(|o| wanted(o.status)).take(top).collect();
    page(items, &uri, &q)
}

async fn list_updates(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    match s.db.read(|st| st.updates()).await {
        Ok(u) => {
            let search = q.get("search").map(|x| x.to_lowercase());
            let items: Vec<_> = u
                .into_iter()
                .filter(|u| {
                    search.as_ref().is_none_or(|t| {
                        serde_json::to_string(u).unwrap_or_default().to_lowercase().contains(t)
                    })
                })
                .collect();
            page(items, &uri, &q)
        }
        Err(e) => internal(e),
    }
}

/// The distinct values `key` gives over the instance's update ids that `keep` accepts.
async fn distinct_ids(
    s: &Shared,
    keep: impl Fn(&UpdateId) -> bool,
    key: impl Fn(&UpdateId) -> String,
) -> Result<Vec<String>, Response> {
    let updates = s.db.read(|st| st.updates()).await.map_err(internal)?;
    let set: std::collections::BTreeSet<String> =
        updates.iter().map(|u| &u.update_id).filter(|id| keep(id)).map(key).collect();
    Ok(set.into_iter().collect())
}

async fn list_providers(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    match distinct_ids(&s, |_| true, |id| id.provider().to_owned()).await {
        Ok(v) => page(v, &uri, &q),
        Err(r) => r,
    }
}

async fn list_names(
    State(s): State<Shared>,
    Path((_, p)): Path<(String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    match distinct_ids(&s, |id| id.provider() == p, |id| id.name().to_owned()).await {
        Ok(v) => page(v, &uri, &q),
        Err(r) => r,
    }
}

async fn list_versions(
    State(s): State<Shared>,
    Path((_, p, n)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    let keep = |id: &UpdateId| id.provider() == p && id.name() == n;
    match distinct_ids(&s, keep, |id| id.version().to_string()).await {
        Ok(v) => page(v, &uri, &q),
        Err(r) => r,
    }
}

fn not_found_update(p: &str, n: &str, v: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        ErrorBody::new("UpdateNotFound", format!("update {p}/{n}/{v} does not exist")),
    )
}

/// The update id of a path; an id that breaks ADU's rules cannot exist.
fn path_id(p: &str, n: &str, v: &str) -> Result<UpdateId, Response> {
    UpdateId::new(p, n, v).map_err(|_| not_found_update(p, n, v))
}

async fn get_update(
    State(s): State<Shared>,
    Path((_, p, n, v)): Path<(String, String, String, String)>,
) -> Response {
    let id = match path_id(&p, &n, &v) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match s.db.read(move |st| st.update(&id)).await {
        Ok(Some(u)) => axum::Json(u).into_response(),
        Ok(None) => not_found_update(&p, &n, &v),
        Err(e) => internal(e),
    }
}

async fn list_files(
    State(s): State<Shared>,
    Path((_, p, n, v)): Path<(String, String, String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    let id = match path_id(&p, &n, &v) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let found =
        s.db.call(move |st| match st.update(&id)? {
            Some(_) => Ok(Some(st.file_ids(&id)?)),
            None => Ok(None),
        })
        .await;
    match found {
        Ok(Some(ids)) => page(ids, &uri, &q),
        Ok(None) => not_found_update(&p, &n, &v),
        Err(e) => internal(e),
    }
}

async fn get_file(
    State(s): State<Shared>,
    Path((_, p, n, v, f)): Path<(String, String, String, String, String)>,
) -> Response {
    let id = match path_id(&p, &n, &v) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let key = f.clone();
    match s.db.read(move |st| st.file(&id, &key)).await {
        Ok(Some(doc)) => axum::Json(doc).into_response(),
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            ErrorBody::new("FileNotFound", format!("update {p}/{n}/{v} has no file {f}")),
        ),
        Err(e) => internal(e),
    }
}

async fn delete_update(
    State(s): State<Shared>,
    Path((_, p, n, v)): Path<(String, String, String, String)>,
) -> Response {
    let id = match path_id(&p, &n, &v) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut op = new_operation(OperationStatus::Running, Some(UpdateInfo::new(id.clone())));
    let op_id = op.operation_id.clone();
    let result =
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
            op.last_action_date_time = Some(super::now_string());
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
        .await;
    match result {
        Ok(true) => accepted(&s.instance, &op_id),
        Ok(false) => not_found_update(&p, &n, &v),
        Err(e) => internal(e),
    }
}

async fn get_blob(State(s): State<Shared>, uri: axum::http::Uri) -> Response {
    let path = uri.path().strip_prefix("/blobs").unwrap_or_default();
    serve_file(&s.blobs, path, uri.query().unwrap_or_default()).await
}

/// Imported content, by the signed URLs a deployment writes into device twins.
async fn get_content(State(s): State<Shared>, uri: axum::http::Uri) -> Response {
    let path = uri.path().strip_prefix("/files").unwrap_or_default();
    serve_file(&s.files, path, uri.query().unwrap_or_default()).await
}

/// Streams the file a signed read URL of `store` grants.
async fn serve_file(store: &crate::storage::dir::DirStore, path: &str, query: &str) -> Response {
    match store.resolve(path, query, SystemTime::now()) {
        Ok(file) => match tokio::fs::File::open(&file).await {
            Ok(f) => {
                let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 16);
                let mut r = Response::new(Body::from_stream(stream));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                r
            }
            Err(_) => api_error(
                StatusCode::NOT_FOUND,
                ErrorBody::new("BlobNotFound", "the blob does not exist"),
            ),
        },
        // Azure answers a bad or expired SAS with 403.
        Err(e) => {
            api_error(StatusCode::FORBIDDEN, ErrorBody::new("AuthenticationFailed", e.to_string()))
        }
    }
}

async fn storage_info(State(s): State<Shared>) -> Response {
    let base = format!("/deviceUpdate/{}/otaforge", s.instance);
    axum::Json(StorageInfo {
        upload_path: format!("{base}/blobs"),
        url_path: format!("{base}/urls"),
    })
    .into_response()
}

fn blob_address(container: &str, blob: &str) -> Result<(ContainerName, BlobName), Response> {
    let c: ContainerName =
        container.parse().map_err(|e: NameError| bad_request("InvalidBlobName", e.to_string()))?;
    let b: BlobName =
        blob.parse().map_err(|e: NameError| bad_request("InvalidBlobName", e.to_string()))?;
    Ok((c, b))
}

/// Receives a blob: streamed to a temp file while hashed, checked against `x-otaforge-sha256`,
/// then stored; a mismatch stores nothing.
async fn put_blob(
    State(s): State<Shared>,
    Path((_, container, blob)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use std::io::Write as _;
    let (c, b) = match blob_address(&container, &blob) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(declared) = headers
        .get(SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<crate::Sha256>().ok())
    else {
        return bad_request(
            "MissingContentHash",
            format!("{SHA256_HEADER} with the base64 SHA-256 of the body is required"),
        );
    };
    let mut tmp = match crate::fsutil::AtomicFile::new(&s.incoming_dir.join("upload")) {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut total = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return bad_request("IncompleteBody", format!("the upload broke off: {e}")),
        };
        total += chunk.len() as u64;
        if total > crate::limits::MAX_FILE_BYTES {
            return api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorBody::new("BlobTooLarge", "a blob is at most 2 GB"),
            );
        }
        sha2::Digest::update(&mut hasher, &chunk);
        if let Err(e) = tmp.write_all(&chunk) {
            return internal(e);
        }
    }
    let actual = crate::Sha256::from_bytes(sha2::Digest::finalize(hasher).into());
    if actual != declared {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorBody::new(
                "Md5Mismatch",
                format!(
                    "the body's sha256 is {actual}, {SHA256_HEADER} says {declared}; nothing was stored"
                ),
            ),
        );
    }
    let blobs = s.blobs.clone();
    let stored =
        tokio::task::spawn_blocking(move || blobs.put_received(&c, &b, tmp, total, actual)).await;
    match stored {
        Ok(Ok(already_present)) => {
            axum::Json(BlobReceipt { size_in_bytes: total, sha256: actual, already_present })
                .into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// A signed read URL for a blob of the store, valid `ttl` seconds (default 4 h, at most 7 d).
async fn blob_url(
    State(s): State<Shared>,
    Path((_, container, blob)): Path<(String, String, String)>,
    Query(q): Q,
) -> Response {
    let (c, b) = match blob_address(&container, &blob) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ttl = match q.get("ttl").map(|t| t.parse::<u64>()) {
        None => Duration::from_secs(4 * 3600),
        Some(Ok(secs)) if (1..=7 * 86_400).contains(&secs) => Duration::from_secs(secs),
        Some(_) => return bad_request("InvalidTtl", "ttl is 1 to 604800 seconds"),
    };
    if !s.blobs.blob_path(&c, &b).is_file() {
        return api_error(
            StatusCode::NOT_FOUND,
            ErrorBody::new("BlobNotFound", format!("{c}/{b} does not exist")),
        );
    }
    match s.blobs.read_url(&c, &b, ttl).await {
        Ok(url) => axum::Json(ReadUrl { url }).into_response(),
        Err(e) => internal(e),
    }
}

//! serve's module twins and IoT Hub's pass over Edge deployments.
//!
//! Routes: the service's `GET`/`PATCH /twins/{id}/modules/{mid}`, `GET /devices/{id}/modules`
//! and `POST /devices/{id}/applyConfigurationContent` (`set-modules`); and, for the device (what
//! edgeAgent does over MQTT), `GET /devices/{id}/modules/{mid}/twin[?after=V&wait=S]` (long-poll,
//! as for device twins) and `PATCH /devices/{id}/modules/{mid}/twin/reported`. A device's own
//! SAS token is accepted for its modules (serve does not issue module identities' keys).
//!
//! The pass ([`edge_pass`]) runs shortly after anything that can change which deployments
//! target an Edge device (a configuration created, changed or deleted; an Edge device created,
//! deleted, tagged or reporting) and writes what changed into the module twins
//! (`Store::reconcile_edge`).

// Errors here are HTTP answers built once on the failure path.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Map, Value, json};

use super::Shared;
use super::hub::{LongPoll, MAX_WAIT, device_auth, hub_error, refused, service_auth};
use super::store::ModulePatch;

/// How long the pass waits after a change, so that a burst of changes makes one pass.
const SETTLE: Duration = Duration::from_millis(100);

pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/twins/{id}/modules/{mid}", get(get_module).patch(patch_module))
        .route("/devices/{id}/modules", get(list_modules))
        .route("/devices/{id}/applyConfigurationContent", post(apply_content))
        .route("/devices/{id}/modules/{mid}/twin", get(device_read))
        .route("/devices/{id}/modules/{mid}/twin/reported", patch(device_report))
}

fn internal(e: impl std::fmt::Display) -> Response {
    hub_error(StatusCode::INTERNAL_SERVER_ERROR, "ServerError", e.to_string())
}

fn not_found(what: &str) -> Response {
    hub_error(StatusCode::NOT_FOUND, "ModuleNotFound", format!("no such {what}"))
}

fn bad(message: impl Into<String>) -> Response {
    hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", message)
}

fn with_etag(twin: crate::iothub::Twin) -> Response {
    let etag = twin.etag.clone().unwrap_or_default();
    let mut r = axum::Json(twin).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Runs the Edge deployment pass whenever `s.edge_changed` is signalled, forever.
pub(super) async fn edge_pass(s: Shared) {
    loop {
        s.edge_changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        match s.db.call(|st| st.reconcile_edge()).await {
            Ok(changed) => {
                for (key, version) in changed {
                    s.twin_watch.changed(&key, version);
                }
            }
            // The store is busy or failing: try again shortly (nothing was half-written: the
            // pass is one transaction).
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                s.edge_changed.notify_one();
            }
        }
    }
}

async fn get_module(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((id, mid)): Path<(String, String)>,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    match s.db.read(move |st| st.module_twin(&id, &mid)).await {
        Ok(Some(t)) => with_etag(t),
        Ok(None) => not_found("module twin"),
        Err(e) => internal(e),
    }
}

async fn patch_module(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((id, mid)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body is not JSON");
    };
    let desired = match body.get("properties").and_then(|p| p.get("desired")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return bad("properties.desired must be an object"),
    };
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let key = format!("{id}/{mid}");
    match s
        .db
        .call(move |st| st.patch_module_desired(&id, &mid, &desired, if_match.as_deref()))
        .await
    {
        Ok(ModulePatch::Applied(t)) => {
            s.twin_watch.changed(&key, t.version.unwrap_or_default());
            with_etag(*t)
        }
        Ok(ModulePatch::NotFound) => not_found("module identity"),
        Ok(ModulePatch::Stale) => hub_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "the module twin changed since it was read (If-Match names an older ETag)",
        ),
        Ok(ModulePatch::Refused(e)) => refused(&e),
        Err(e) => internal(e),
    }
}

async fn list_modules(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let device = id.clone();
    match s.db.read(move |st| Ok((st.device(&id)?, st.device_modules(&id)?))).await {
        Ok((None, _)) => hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device"),
        Ok((Some(_), modules)) => {
            let list: Vec<Value> = modules
                .iter()
                .map(|m| {
                    json!({
                        "deviceId": device, "moduleId": m.module_id, "etag": m.etag,
                        "connectionState": "Disconnected", "managedBy": "iotEdge",
                    })
                })
                .collect();
            axum::Json(list).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn apply_content(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body is not JSON");
    };
    let Some(content) = body.get("modulesContent").and_then(Value::as_object).cloned() else {
        return bad(
            "the body must be {\"modulesContent\": {...}} (device configurations are not supported)",
        );
    };
    // The whole-twin form only: a layered (dot-path) deployment is not a device's full state.
    let mc = Value::Object(content.clone());
    if let Some(why) = super::configs::invalid_content(&mc, crate::edge::manifest::Kind::Base) {
        return bad(format!("modulesContent: {why}"));
    }
    // Module identities of the runtime belong to IoT Edge devices only.
    let key = id.clone();
    match s.db.read(move |st| st.device(&key)).await {
        Ok(Some(row)) if row.twin.is_edge() => {}
        Ok(Some(_)) => {
            return bad(format!(
                "`{id}` is not an IoT Edge device; modules content applies to IoT Edge devices only"
            ));
        }
        Ok(None) => return hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device"),
        Err(e) => return internal(e),
    }
    match s.db.call(move |st| st.apply_modules_content(&id, &content)).await {
        Ok(Some(changed)) => {
            for t in changed {
                let key = format!("{}/{}", t.device_id, t.module_id.unwrap_or_default());
                s.twin_watch.changed(&key, t.version.unwrap_or_default());
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device"),
        Err(e) => internal(e),
    }
}

async fn device_read(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((id, mid)): Path<(String, String)>,
    Query(poll): Query<LongPoll>,
) -> Response {
    let key = format!("{id}/{mid}");
    // Subscribed before the read, so a change between the read and the wait is not missed.
    let mut waiter = poll.after.map(|_| s.twin_watch.subscribe(&key));
    if let Err(r) = device_auth(&s, &headers, &id).await {
        return r;
    }
    let read = |id: String, mid: String| s.db.read(move |st| st.module_twin(&id, &mid));
    let mut twin = match read(id.clone(), mid.clone()).await {
        Ok(Some(t)) => t,
        Ok(None) => return not_found("module twin"),
        Err(e) => return internal(e),
    };
    if let (Some(after), Some(w)) = (poll.after, waiter.as_mut())
        && twin.version.unwrap_or_default() <= after
    {
        drop(twin);
        let wait = Duration::from_secs(poll.wait.unwrap_or(30)).min(MAX_WAIT);
        w.past(after, wait).await;
        twin = match read(id, mid).await {
            Ok(Some(t)) => t,
            Ok(None) => return not_found("module twin"),
            Err(e) => return internal(e),
        };
    }
    drop(waiter);
    axum::Json(json!({
        "desired": twin.properties.desired,
        "reported": twin.properties.reported,
        "$version": twin.version,
    }))
    .into_response()
}

async fn device_report(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((id, mid)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = device_auth(&s, &headers, &id).await {
        return r;
    }
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(&body) else {
        return bad("reported properties must be a JSON object");
    };
    match s.db.call(move |st| st.patch_module_reported(&id, &mid, &patch)).await {
        Ok(ModulePatch::Applied(t)) => {
            axum::Json(json!({"reported": t.properties.reported})).into_response()
        }
        Ok(ModulePatch::Refused(e)) => refused(&e),
        Ok(_) => not_found("module identity"),
        Err(e) => internal(e),
    }
}

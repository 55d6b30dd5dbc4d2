//! serve's module twins: the service's `GET`/`PATCH /twins/{id}/modules/{mid}`, `GET
//! /devices/{id}/modules` and `POST /devices/{id}/applyConfigurationContent` (`set-modules`);
//! and, for the device (what edgeAgent does over MQTT), `GET
//! /devices/{id}/modules/{mid}/twin[?after=V&wait=S]` (long-poll, as for device twins) and
//! `PATCH /devices/{id}/modules/{mid}/twin/reported`. A device's own SAS token is accepted for
//! its modules (serve does not issue module identities' keys). A module twin exists only for an
//! identity the hub made (`store::modules`). IoT Hub's pass over Edge deployments that writes
//! them is `server::reconcile::edge_pass`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Map, Value, json};

use super::hub::{LongPoll, device_row, device_view, if_match, json_body, object, with_etag};
use crate::server::Shared;
use crate::server::auth::{DeviceAuth, ServiceAuth};
use crate::server::error::ApiError;
use crate::server::store::Refusal;

pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/twins/{id}/modules/{mid}", get(get_module).patch(patch_module))
        .route("/devices/{id}/modules", get(list_modules))
        .route("/devices/{id}/applyConfigurationContent", post(apply_content))
        .route("/devices/{id}/modules/{mid}/twin", get(device_read))
        .route("/devices/{id}/modules/{mid}/twin/reported", patch(device_report))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ArgumentInvalid", message)
}

/// A module twin, or 404 `ModuleNotFound`.
async fn module_twin(s: &Shared, id: &str, mid: &str) -> Result<crate::iothub::Twin, ApiError> {
    let (id, mid) = (id.to_owned(), mid.to_owned());
    s.db.read(move |st| st.module_twin(&id, &mid)).await?.ok_or_else(|| Refusal::NoModule.into())
}

async fn get_module(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(with_etag(module_twin(&s, &id, &mid).await?))
}

async fn patch_module(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let desired =
        object(body.get("properties").and_then(|p| p.get("desired")), "properties.desired")?
            .unwrap_or_default();
    let if_match = if_match(&headers);
    let key = format!("{id}/{mid}");
    let twin =
        s.db.call(move |st| st.patch_module_desired(&id, &mid, &desired, if_match.as_deref()))
            .await??;
    s.desired_changed(&key, twin.version.unwrap_or_default());
    Ok(with_etag(twin))
}

async fn list_modules(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    device_row(&s, &id).await?;
    let device = id.clone();
    let modules = s.db.read(move |st| st.device_modules(&id)).await?;
    let list: Vec<Value> = modules
        .iter()
        .map(|m| {
            json!({
                "deviceId": device, "moduleId": m.module_id, "etag": m.etag,
                "connectionState": "Disconnected", "managedBy": "iotEdge",
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

async fn apply_content(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let Some(content) = object(body.get("modulesContent"), "modulesContent")? else {
        return Err(bad(
            "the body must be {\"modulesContent\": {...}} (device configurations are not supported)",
        ));
    };
    // The whole-twin form only: a layered (dot-path) deployment is not a device's full state.
    let mc = Value::Object(content.clone());
    if let Some(why) = super::configs::invalid_content(&mc, crate::edge::manifest::Kind::Base) {
        return Err(bad(format!("modulesContent: {why}")));
    }
    // Module identities of the runtime belong to IoT Edge devices only.
    if !device_row(&s, &id).await?.twin.is_edge() {
        return Err(bad(format!(
            "`{id}` is not an IoT Edge device; modules content applies to IoT Edge devices only"
        )));
    }
    let changed =
        s.db.call(move |st| st.apply_modules_content(&id, &content))
            .await?
            .ok_or(Refusal::NoDevice)?;
    for t in changed {
        let key = format!("{}/{}", t.device_id, t.module_id.unwrap_or_default());
        s.desired_changed(&key, t.version.unwrap_or_default());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn device_read(
    device: DeviceAuth,
    State(s): State<Shared>,
    Path((_, mid)): Path<(String, String)>,
    Query(poll): Query<LongPoll>,
) -> Result<Response, ApiError> {
    let id = device.device_id;
    let key = format!("{id}/{mid}");
    // Subscribed before the read, so a change between the read and the wait is not missed.
    let mut waiter = poll.after.map(|_| s.twin_watch.subscribe(&key));
    let mut twin = module_twin(&s, &id, &mid).await?;
    if let (Some(after), Some(w)) = (poll.after, waiter.as_mut())
        && twin.version.unwrap_or_default() <= after
    {
        drop(twin);
        w.past(after, poll.wait()).await;
        twin = module_twin(&s, &id, &mid).await?;
    }
    drop(waiter);
    Ok(axum::Json(device_view(&twin)).into_response())
}

async fn device_report(
    device: DeviceAuth,
    State(s): State<Shared>,
    Path((_, mid)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = device.device_id;
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(&body) else {
        return Err(bad("reported properties must be a JSON object"));
    };
    let patch: Map<String, Value> = patch;
    let twin = s.db.call(move |st| st.patch_module_reported(&id, &mid, &patch)).await??;
    Ok(axum::Json(json!({"reported": twin.properties.reported})).into_response())
}

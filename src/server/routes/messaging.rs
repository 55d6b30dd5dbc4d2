//! The service side of what serve's MQTT endpoint carries (`server::mqtt`), and the module
//! identities devices connect as:
//!
//! - `POST /twins/{id}/methods` and `POST /twins/{id}/modules/{mid}/methods`: direct methods,
//!   as IoT Hub runs them (<https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-direct-methods>):
//!   `responseTimeoutInSeconds` 5–300 (default 30), `connectTimeoutInSeconds` 0–300 (default
//!   0), 404 `DeviceNotOnline` when the identity is not connected and subscribed to methods
//!   in time, 504 `GatewayTimeout` when it does not answer in time, else 200
//!   `{"status", "payload"}`;
//! - `PUT`/`GET`/`DELETE /devices/{id}/modules/{mid}`: module identities with their own keys
//!   (a key the caller gives is used, as IoT Hub does);
//! - otaforge's own, for what IoT Hub does over AMQP (which serve does not speak):
//!   `GET /otaforge/hub/events?after=SEQ&wait=S` (telemetry, long-poll; what `otaforge hub
//!   monitor` prints) and `POST /otaforge/devices/{id}/messages/devicebound` (a
//!   cloud-to-device message: the body, with the query's pairs as its properties).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::hub::{device_row, given_key, new_key};
use crate::iothub::identity::Identity;
use crate::iothub::limits::{
    MAX_C2D_BYTES, MAX_METHOD_PAYLOAD, METHOD_CONNECT_TIMEOUT_SECS, METHOD_RESPONSE_TIMEOUT_SECS,
};
use crate::server::Shared;
use crate::server::auth::ServiceAuth;
use crate::server::error::ApiError;
use crate::server::mqtt::{C2d, MethodError};
use crate::server::store::{Keys, Refusal};

/// The routes.
pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/twins/{id}/methods", post(device_method))
        .route("/twins/{id}/modules/{mid}/methods", post(module_method))
        .route("/devices/{id}/modules/{mid}", put(put_module).get(get_module).delete(delete_module))
        .route("/otaforge/hub/events", get(events))
        .route("/otaforge/devices/{id}/messages/devicebound", post(send_c2d))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ArgumentInvalid", message)
}

/// The body of a direct method call (`CloudToDeviceMethod`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodCall {
    method_name: String,
    #[serde(default)]
    payload: Value,
    response_timeout_in_seconds: Option<u64>,
    connect_timeout_in_seconds: Option<u64>,
}

async fn device_method(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    device_row(&s, &id).await?;
    invoke(&s, &id, &body).await
}

async fn module_method(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (d, m) = (id.clone(), mid.clone());
    s.db.read(move |st| st.module_twin(&d, &m)).await?.ok_or(Refusal::NoModule)?;
    invoke(&s, &format!("{id}/{mid}"), &body).await
}

/// Calls a method on `identity` within IoT Hub's timeouts.
async fn invoke(s: &Shared, identity: &str, body: &[u8]) -> Result<Response, ApiError> {
    let call: MethodCall = serde_json::from_slice(body).map_err(|e| {
        bad(format!("the body is not a method call ({{\"methodName\", \"payload\"}}): {e}"))
    })?;
    if call.method_name.is_empty() || call.method_name.len() > 128 {
        return Err(bad("methodName must be 1 to 128 characters"));
    }
    let (least, default, most) = METHOD_RESPONSE_TIMEOUT_SECS;
    let response = call.response_timeout_in_seconds.unwrap_or(default);
    if !(least..=most).contains(&response) {
        return Err(bad(format!("responseTimeoutInSeconds must be {least} to {most}")));
    }
    let (default, most) = METHOD_CONNECT_TIMEOUT_SECS;
    let connect = call.connect_timeout_in_seconds.unwrap_or(default);
    if connect > most {
        return Err(bad(format!("connectTimeoutInSeconds must be at most {most}")));
    }
    let payload = Bytes::from(call.payload.to_string());
    if payload.len() > MAX_METHOD_PAYLOAD {
        return Err(bad(format!("the payload is over {} KB", MAX_METHOD_PAYLOAD / 1024)));
    }
    let reply = s
        .live
        .invoke(
            identity,
            &call.method_name,
            payload,
            Duration::from_secs(connect),
            Duration::from_secs(response),
        )
        .await;
    match reply {
        Ok(r) => Ok(axum::Json(json!({"status": r.status, "payload": r.payload})).into_response()),
        Err(e @ MethodError::NotOnline) => {
            Err(ApiError::not_found("DeviceNotOnline", e.to_string()))
        }
        Err(e @ MethodError::Timeout(_)) => {
            Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "GatewayTimeout", e.to_string()))
        }
    }
}

/// A module identity as the registry answers it.
fn module_identity(device: &str, module: &str, keys: &Keys, connected: bool) -> Value {
    let mut id = Identity::with_keys(
        device,
        Some(module),
        Some(keys.primary.clone()),
        keys.secondary.clone(),
    );
    id.connection_state = Some(if connected { "Connected" } else { "Disconnected" }.into());
    serde_json::to_value(id).unwrap_or(Value::Null)
}

async fn put_module(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::iothub::limits::check_module_id(&mid).map_err(bad)?;
    let given: Identity = if body.is_empty() {
        Identity::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the body is not a module identity: {e}")))?
    };
    let keys = Keys {
        primary: match given_key(given.primary_key())? {
            Some(k) => k,
            None => new_key()?,
        },
        secondary: Some(match given_key(given.secondary_key())? {
            Some(k) => k,
            None => new_key()?,
        }),
    };
    let (d, m, k) = (id.clone(), mid.clone(), keys.clone());
    let made = s.db.call(move |st| st.create_module(&d, &m, &k)).await??;
    if made.is_none() {
        return Err(ApiError::conflict(
            "ModuleAlreadyExistsOnDevice",
            "a module with this id exists on the device",
        ));
    }
    Ok(axum::Json(module_identity(&id, &mid, &keys, false)).into_response())
}

async fn get_module(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (d, m) = (id.clone(), mid.clone());
    // The runtime's modules of an Edge device get their keys on first read, as IoT Hub
    // gives them keys of their own.
    let make = || -> Keys {
        let k =
            || crate::iothub::sas::SasKey::generate().map(|k| k.to_base64()).unwrap_or_default();
        Keys { primary: k(), secondary: Some(k()) }
    };
    let keys = s.db.call(move |st| st.module_keys(&d, &m, make)).await??;
    let connected = s.live.is_connected(&format!("{id}/{mid}"));
    Ok(axum::Json(module_identity(&id, &mid, &keys, connected)).into_response())
}

async fn delete_module(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (d, m) = (id.clone(), mid.clone());
    if !s.db.call(move |st| st.delete_module(&d, &m)).await? {
        return Err(Refusal::NoModule.into());
    }
    s.live.kick(&format!("{id}/{mid}"));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `?after=SEQ&wait=SECONDS&limit=N` of the events route.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait: u64,
    limit: Option<usize>,
}

async fn events(
    _: ServiceAuth,
    State(s): State<Shared>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_secs(q.wait.min(super::hub::MAX_WAIT.as_secs()));
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let found = s.live.events.after(q.after, limit, wait).await;
    let next = found.last().map_or(q.after, |e| e.sequence);
    let events: Vec<&crate::server::mqtt::events::Event> = found.iter().map(|e| &**e).collect();
    Ok(axum::Json(json!({"events": events, "next": next, "last": s.live.events.last()}))
        .into_response())
}

async fn send_c2d(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(props): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    device_row(&s, &id).await?;
    if body.len() > MAX_C2D_BYTES {
        return Err(bad(format!(
            "a cloud-to-device message holds at most {} KB",
            MAX_C2D_BYTES / 1024
        )));
    }
    let mut properties: Vec<(String, Option<String>)> =
        props.into_iter().map(|(k, v)| (k, Some(v))).collect();
    if !properties.iter().any(|(k, _)| k == "$.mid") {
        properties.push(("$.mid".into(), Some(uuid::Uuid::new_v4().to_string())));
    }
    properties.push(("$.to".into(), Some(format!("/devices/{id}/messages/devicebound"))));
    if !s.live.send_c2d(&id, C2d { properties, body }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "DeviceMaximumQueueDepthExceeded",
            "the device has 50 messages waiting, the most IoT Hub keeps",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

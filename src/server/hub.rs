//! The IoT Hub surface of `otaforge serve`: the service REST routes the `iothub` client uses
//! (device identities, twins, twin queries), and two device-facing routes that stand in for
//! what a device does over MQTT (read its twin, report properties). HTTP only; twins live in
//! the store.
//!
//! Authentication. Service routes take a SAS token signed with the hub's `iothubowner` key (the
//! connection string serve writes to `iothub.connection-string` in its data dir, mode 0600),
//! or, standing in for a Microsoft Entra ID token, `Bearer` and serve's `--token`; without
//! `--token` (loopback only) a request without `Authorization` is also accepted, as on the
//! Device Update routes. Device routes always need a SAS token signed with that device's
//! own key for `HOST/devices/ID`, so a device can read and report only its own twin.

// Errors here are HTTP answers built once on the failure path.
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Map, Value, json};

use super::Shared;
use super::store::TwinPatch;
use crate::iothub::sas::{Claims, SasKey};

/// Most twins one query page returns.
const MAX_PAGE: usize = 1000;

/// The IoT Hub routes.
pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/devices/query", post(query))
        .route("/devices/{id}", get(get_device).put(put_device).delete(delete_device))
        .route("/twins/{id}", get(get_twin).patch(patch_twin))
        .route("/devices/{id}/twin", get(device_read_twin))
        .route("/devices/{id}/twin/reported", patch(device_report))
}

/// IoT Hub's error shape, with `iothub-errorcode` (and `x-ms-error-code`, so the envelope
/// middleware leaves it alone).
pub(super) fn hub_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    let body =
        json!({"Message": format!("ErrorCode:{code};{message}"), "ExceptionMessage": message});
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("iothub-errorcode", v.clone());
        r.headers_mut().insert("x-ms-error-code", v);
    }
    r
}

fn internal(e: impl std::fmt::Display) -> Response {
    hub_error(StatusCode::INTERNAL_SERVER_ERROR, "ServerError", e.to_string())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `Host` the request was sent to, lower case: the resource SAS tokens are scoped to.
fn host(headers: &HeaderMap) -> String {
    headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase()
}

fn claims(headers: &HeaderMap) -> Option<Result<Claims, Response>> {
    let v = headers.get(header::AUTHORIZATION)?;
    let text = v.to_str().unwrap_or_default();
    Some(Claims::parse(text).map_err(|e| {
        hub_error(StatusCode::UNAUTHORIZED, "IotHubUnauthorizedAccess", e.to_string())
    }))
}

/// A service request: a hub-wide token signed with the owner key, or none when tokenless.
pub(super) fn service_auth(s: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let unauthorized = |m: &str| hub_error(StatusCode::UNAUTHORIZED, "IotHubUnauthorizedAccess", m);
    // A bearer token stands in for a Microsoft Entra ID token: serve's own `--token`.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim_start());
    if let Some(given) = bearer {
        return match &s.token {
            Some(t)
                if bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), t.as_bytes())) =>
            {
                Ok(())
            }
            _ => Err(unauthorized("the bearer token is not this serve's --token")),
        };
    }
    match claims(headers) {
        None if s.token.is_none() => Ok(()),
        None => {
            Err(unauthorized("a SAS token signed with the hub's shared access key is required"))
        }
        Some(c) => {
            let c = c?;
            c.verify(&s.hub_key, now_secs()).map_err(|e| unauthorized(&e.to_string()))?;
            if c.resource != host(headers) {
                return Err(unauthorized("the token is for another hub"));
            }
            Ok(())
        }
    }
}

/// A device request: a token for `HOST/devices/ID` signed with that device's key; gives the
/// device's row as read to check it.
pub(super) async fn device_auth(
    s: &Shared,
    headers: &HeaderMap,
    id: &str,
) -> Result<super::store::DeviceRow, Response> {
    let unauthorized = |m: &str| hub_error(StatusCode::UNAUTHORIZED, "IotHubUnauthorizedAccess", m);
    let c = claims(headers).ok_or_else(|| unauthorized("a device SAS token is required"))??;
    let resource = format!("{}/devices/{}", host(headers), id.to_lowercase());
    if c.resource != resource {
        return Err(unauthorized("the token is for another device"));
    }
    let key_id = id.to_owned();
    let row = s.db.read(move |st| st.device(&key_id)).await.map_err(internal)?;
    let row = row.ok_or_else(|| unauthorized("no such device"))?;
    let key = SasKey::from_base64(&row.device_key).map_err(internal)?;
    c.verify(&key, now_secs()).map_err(|e| unauthorized(&e.to_string()))?;
    Ok(row)
}

/// Device ids as IoT Hub has them (`iothub::limits::check_device_id`).
fn check_device_id(id: &str) -> Result<(), Response> {
    crate::iothub::limits::check_device_id(id)
        .map_err(|m| hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", m))
}

/// A twin patch that breaks one of IoT Hub's twin rules: nothing was stored.
pub(super) fn refused(e: &crate::iothub::limits::RuleError) -> Response {
    hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", e.to_string())
}

fn identity(row: &super::store::DeviceRow) -> Value {
    json!({
        "deviceId": row.device_id,
        "generationId": row.created,
        "etag": row.twin.etag,
        "status": "enabled",
        "connectionState": "Disconnected",
        "capabilities": row.twin.extra.get("capabilities").cloned().unwrap_or(json!({"iotEdge": false})),
        "authentication": {
            "type": "sas",
            "symmetricKey": {"primaryKey": row.device_key, "secondaryKey": Value::Null},
        },
    })
}

async fn get_device(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    match s.db.read(move |st| st.device(&id)).await {
        Ok(Some(row)) => axum::Json(identity(&row)).into_response(),
        Ok(None) => hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device"),
        Err(e) => internal(e),
    }
}

async fn put_device(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = service_auth(&s, &headers).and_then(|()| check_device_id(&id)) {
        return r;
    }
    // `capabilities.iotEdge` makes an IoT Edge device (Edge deployments target only those).
    let iot_edge = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("capabilities")?.get("iotEdge")?.as_bool())
        .unwrap_or(false);
    let key = match SasKey::generate() {
        Ok(k) => k.to_base64(),
        Err(e) => return internal(e),
    };
    let now = super::now_string();
    match s.db.call(move |st| st.create_device(&id, &key, &now, iot_edge)).await {
        Ok(Some(row)) => {
            if iot_edge {
                s.edge_changed.notify_one();
            }
            axum::Json(identity(&row)).into_response()
        }
        Ok(None) => {
            hub_error(StatusCode::CONFLICT, "DeviceAlreadyExists", "a device with this id exists")
        }
        Err(e) => internal(e),
    }
}

async fn delete_device(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let gone = id.clone();
    match s.db.call(move |st| st.delete_device(&id)).await {
        Ok(true) => {
            s.twin_watch.changed(&gone, i64::MAX);
            s.edge_changed.notify_one();
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device"),
        Err(e) => internal(e),
    }
}

fn with_etag(twin: crate::iothub::Twin) -> Response {
    let etag = twin.etag.clone().unwrap_or_default();
    let mut r = axum::Json(twin).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

async fn get_twin(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    match s.db.read(move |st| st.device(&id)).await {
        Ok(Some(row)) => with_etag(row.twin),
        Ok(None) => hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device"),
        Err(e) => internal(e),
    }
}

fn object(v: Option<&Value>, what: &str) -> Result<Option<Map<String, Value>>, Response> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(hub_error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            format!("{what} must be an object"),
        )),
    }
}

/// Tag values as ADU reads them: an `ADUGroup` that breaks ADU's group rules is refused here,
/// where the mistake is made, rather than ignored later.
fn check_tags(tags: &Map<String, Value>) -> Result<(), Response> {
    match tags.get(crate::iothub::GROUP_TAG) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(g)) => crate::iothub::check_group_id(g)
            .map_err(|e| hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", e.to_string())),
        Some(_) => {
            Err(hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", "ADUGroup must be a string"))
        }
    }
}

async fn patch_twin(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", "the body is not JSON");
    };
    let (tags, desired) = match (
        object(body.get("tags"), "tags"),
        object(body.get("properties").and_then(|p| p.get("desired")), "properties.desired"),
    ) {
        (Ok(t), Ok(d)) => (t, d),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if let Some(t) = &tags
        && let Err(r) = check_tags(t)
    {
        return r;
    }
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match s
        .db
        .call(move |st| st.patch_twin(&id, tags.as_ref(), desired.as_ref(), if_match.as_deref()))
        .await
    {
        Ok(TwinPatch::Applied(t)) => {
            s.twin_watch.changed(&t.device_id, t.version.unwrap_or_default());
            // Tags can move the device in or out of Edge deployments' target conditions.
            s.edge_changed.notify_one();
            with_etag(*t)
        }
        Ok(TwinPatch::NotFound) => {
            hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device")
        }
        Ok(TwinPatch::Stale) => hub_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "the twin changed since it was read (If-Match names an older ETag); read it again",
        ),
        Ok(TwinPatch::Refused(e)) => refused(&e),
        Err(e) => internal(e),
    }
}

async fn query(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let text = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("query").and_then(Value::as_str).map(str::to_owned));
    let Some(text) = text else {
        return hub_error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "the body must be {\"query\": \"SELECT ...\"}",
        );
    };
    let filter = match crate::iothub::query::Query::parse(&text) {
        Ok(q) => q,
        Err(e) => return hub_error(StatusCode::BAD_REQUEST, "SqlQueryInvalid", e),
    };
    let size = headers
        .get("x-ms-max-item-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, MAX_PAGE);
    let mut after: i64 = headers
        .get("x-ms-continuation")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Walk the registry in order until a page of matches is full; the continuation is the
    // registry position of the last twin returned, given only when another match follows.
    let mut out = Vec::new();
    let mut last_taken = after;
    let next = 'walk: loop {
        let modules = filter.modules();
        let page =
            s.db.read(move |st| {
                if modules {
                    st.modules_page(after, MAX_PAGE)
                } else {
                    st.twins_page(after, MAX_PAGE)
                }
            })
            .await;
        let (rows, more) = match page {
            Ok(p) => p,
            Err(e) => return internal(e),
        };
        for (seq, t) in rows {
            if filter.matches(&t) {
                if out.len() == size {
                    break 'walk Some(last_taken);
                }
                out.push(t);
                last_taken = seq;
            }
        }
        match more {
            Some(m) => after = m,
            None => break None,
        }
    };
    let mut r = axum::Json(out).into_response();
    if let Some(n) = next
        && let Ok(v) = HeaderValue::from_str(&n.to_string())
    {
        r.headers_mut().insert("x-ms-continuation", v);
    }
    r
}

/// `GET /devices/{id}/twin[?after=VERSION&wait=SECONDS]`: with `after`, the answer waits
/// (at most `wait` seconds, default 30, at most [`MAX_WAIT`]) until the twin's version is past
/// `after`, then gives the twin as it is (also when the wait ran out).
#[derive(Debug, serde::Deserialize)]
pub(super) struct LongPoll {
    pub(super) after: Option<i64>,
    pub(super) wait: Option<u64>,
}

/// The longest a device read may wait for a change.
pub(super) const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

async fn device_read_twin(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(poll): axum::extract::Query<LongPoll>,
) -> Response {
    // Subscribed before the read, so a change between the read and the wait is not missed.
    let mut waiter = poll.after.map(|_| s.twin_watch.subscribe(&id));
    let mut row = match device_auth(&s, &headers, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let (Some(after), Some(w)) = (poll.after, waiter.as_mut())
        && row.twin.version.unwrap_or_default() <= after
    {
        // Thousands of devices wait at once: none holds its twin while it waits.
        drop(row);
        let wait = std::time::Duration::from_secs(poll.wait.unwrap_or(30)).min(MAX_WAIT);
        w.past(after, wait).await;
        let id = id.clone();
        row = match s.db.read(move |st| st.device(&id)).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device");
            }
            Err(e) => return internal(e),
        };
    }
    drop(waiter);
    // A device sees its properties, never the back end's tags; `$version` is the twin's
    // version (it moves with every change of tags or desired properties).
    axum::Json(json!({
        "desired": row.twin.properties.desired,
        "reported": row.twin.properties.reported,
        "$version": row.twin.version,
    }))
    .into_response()
}

async fn device_report(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let row = match device_auth(&s, &headers, &id).await {
        Ok(row) => row,
        Err(r) => return r,
    };
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(&body) else {
        return hub_error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "reported properties must be a JSON object",
        );
    };
    // An Edge device's reported properties can be in deployments' target conditions.
    if row.twin.is_edge() {
        s.edge_changed.notify_one();
    }
    drop(row);
    let device = id.clone();
    let failed = patch
        .get("deviceUpdate")
        .and_then(|d| d.get("agent"))
        .and_then(|a| a.get("state"))
        .and_then(Value::as_u64)
        == Some(255);
    match s.db.call(move |st| st.patch_reported(&id, &patch)).await {
        Ok(TwinPatch::Applied(t)) => {
            // The device gets its deployment; a failure can complete a rollback threshold.
            if let Err(e) = super::after_report(&s, &device, failed).await {
                return internal(e);
            }
            axum::Json(json!({"reported": t.properties.reported})).into_response()
        }
        Ok(TwinPatch::Refused(e)) => refused(&e),
        Ok(_) => hub_error(StatusCode::NOT_FOUND, "DeviceNotFound", "no such device"),
        Err(e) => internal(e),
    }
}

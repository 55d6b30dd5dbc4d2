//! The IoT Hub surface of `otaforge serve`: the service REST routes the `iothub` client uses
//! (device identities, twins, twin queries), and two device-facing routes that stand in for
//! what a device does over MQTT (read its twin, report properties). Who may call which is
//! [`ServiceAuth`] and [`DeviceAuth`]; twins live in the store.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Map, Value, json};

use crate::server::Shared;
use crate::server::auth::{DeviceAuth, ServiceAuth};
use crate::server::error::ApiError;
use crate::server::store::Refusal;

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

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ArgumentInvalid", message)
}

/// The body as JSON, or 400.
pub(super) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))
}

/// The `If-Match` header, when given.
pub(super) fn if_match(headers: &HeaderMap) -> Option<String> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A device id as IoT Hub has it (`iothub::limits::check_device_id`).
fn check_device_id(id: &str) -> Result<(), ApiError> {
    crate::iothub::limits::check_device_id(id).map_err(bad)
}

/// A device identity as the registry answers it; `secondary`: its secondary key, when it has
/// one; `connected`: whether it is connected over MQTT now.
fn identity(
    row: &crate::server::store::DeviceRow,
    secondary: Option<String>,
    connected: bool,
) -> crate::iothub::DeviceIdentity {
    use crate::iothub::{Authentication, Capabilities, DeviceIdentity, SymmetricKey};
    DeviceIdentity {
        device_id: row.device_id.clone(),
        generation_id: Some(row.created.clone()),
        etag: row.twin.etag.clone(),
        status: Some("enabled".into()),
        connection_state: Some(if connected { "Connected" } else { "Disconnected" }.into()),
        capabilities: Capabilities { iot_edge: row.twin.is_edge() },
        authentication: Authentication {
            kind: Some("sas".into()),
            symmetric_key: Some(SymmetricKey {
                primary_key: Some(row.device_key.clone()),
                secondary_key: secondary,
            }),
            extra: Map::new(),
        },
        extra: Map::new(),
    }
}

/// A key a caller gave on create: used as it is (as IoT Hub does), once checked to be base64.
pub(super) fn given_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    match key.filter(|k| !k.is_empty()) {
        Some(k) => {
            crate::iothub::sas::SasKey::from_base64(k).map_err(|e| bad(e.to_string()))?;
            Ok(Some(k.to_owned()))
        }
        None => Ok(None),
    }
}

/// A new random key, base64.
pub(super) fn new_key() -> Result<String, ApiError> {
    Ok(crate::iothub::sas::SasKey::generate().map_err(ApiError::internal)?.to_base64())
}

/// A device's row, or 404 `DeviceNotFound`.
pub(super) async fn device_row(
    s: &Shared,
    id: &str,
) -> Result<crate::server::store::DeviceRow, ApiError> {
    let id = id.to_owned();
    s.db.read(move |st| st.device(&id)).await?.ok_or_else(|| Refusal::NoDevice.into())
}

async fn get_device(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = device_row(&s, &id).await?;
    let key_id = id.clone();
    let keys = s.db.read(move |st| st.identity_keys(&key_id, None)).await?;
    let connected = s.live.is_connected(&id);
    Ok(axum::Json(identity(&row, keys.and_then(|k| k.secondary), connected)).into_response())
}

async fn put_device(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_device_id(&id)?;
    // `capabilities.iotEdge` makes an IoT Edge device (Edge deployments target only those).
    let given: crate::iothub::DeviceIdentity = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the body is not a device identity: {e}")))?
    };
    let iot_edge = given.capabilities.iot_edge;
    let keys = given.authentication.symmetric_key.unwrap_or_default();
    let key = match given_key(keys.primary_key.as_deref())? {
        Some(k) => k,
        None => new_key()?,
    };
    let secondary = given_key(keys.secondary_key.as_deref())?;
    let now = crate::server::now_string();
    let second = secondary.clone();
    let created =
        s.db.call(move |st| {
            let row = st.create_device(&id, &key, &now, iot_edge)?;
            if let (Some(_), Some(k)) = (&row, &second) {
                st.set_secondary_key(&id, k)?;
            }
            Ok(row)
        })
        .await?;
    let Some(row) = created else {
        return Err(ApiError::conflict("DeviceAlreadyExists", "a device with this id exists"));
    };
    // A new device can be what an Edge deployment or an automatic configuration targets.
    s.edge_changed.notify_one();
    Ok(axum::Json(identity(&row, secondary, false)).into_response())
}

async fn delete_device(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let gone = id.clone();
    if !s.db.call(move |st| st.delete_device(&id)).await? {
        return Err(Refusal::NoDevice.into());
    }
    s.twin_watch.changed(&gone, i64::MAX);
    s.live.forget_device(&gone);
    s.edge_changed.notify_one();
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// A twin with its `ETag` header.
pub(super) fn with_etag(twin: crate::iothub::Twin) -> Response {
    let etag = twin.etag.clone().unwrap_or_default();
    let mut r = axum::Json(twin).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

async fn get_twin(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(with_etag(device_row(&s, &id).await?.twin))
}

/// An object member of a patch, or nothing; anything else is 400.
pub(super) fn object(
    v: Option<&Value>,
    what: &str,
) -> Result<Option<Map<String, Value>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(bad(format!("{what} must be an object"))),
    }
}

/// Tag values as ADU reads them: an `ADUGroup` that breaks ADU's group rules is refused here,
/// where the mistake is made, rather than ignored later.
fn check_tags(tags: &Map<String, Value>) -> Result<(), ApiError> {
    match tags.get(crate::iothub::GROUP_TAG) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(g)) => crate::iothub::check_group_id(g).map_err(|e| bad(e.to_string())),
        Some(_) => Err(bad("ADUGroup must be a string")),
    }
}

async fn patch_twin(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let tags = object(body.get("tags"), "tags")?;
    let desired =
        object(body.get("properties").and_then(|p| p.get("desired")), "properties.desired")?;
    if let Some(t) = &tags {
        check_tags(t)?;
    }
    let if_match = if_match(&headers);
    let desired_given = desired.is_some();
    let s = s.clone();
    let twin = crate::server::to_the_end(async move {
        let twin =
            s.db.call(move |st| {
                st.patch_twin(&id, tags.as_ref(), desired.as_ref(), if_match.as_deref())
            })
            .await??;
        if desired_given {
            s.desired_changed(&twin.device_id, twin.version.unwrap_or_default());
        } else {
            s.twin_watch.changed(&twin.device_id, twin.version.unwrap_or_default());
        }
        // Tags can move the device in or out of Edge deployments' target conditions.
        s.edge_changed.notify_one();
        Ok::<_, ApiError>(twin)
    })
    .await?;
    Ok(with_etag(twin))
}

async fn query(
    _: ServiceAuth,
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    struct QueryBody {
        query: String,
    }
    let text = serde_json::from_slice::<QueryBody>(&body)
        .map_err(|_| bad("the body must be {\"query\": \"SELECT ...\"}"))?
        .query;
    let filter = crate::iothub::query::Query::parse(&text)
        .map_err(|e| ApiError::bad_request("SqlQueryInvalid", e))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let size = header("x-ms-max-item-count").and_then(|v| v.parse::<usize>().ok());
    let size = size.unwrap_or(100).clamp(1, MAX_PAGE);
    let mut after = header("x-ms-continuation").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    // Walk the registry in order until a page of matches is full; the continuation is the
    // registry position of the last twin returned, given only when another match follows.
    let mut out = Vec::new();
    let mut last_taken = after;
    let modules = filter.modules();
    let next = 'walk: loop {
        let (rows, more) =
            s.db.read(move |st| {
                if modules {
                    st.modules_page(after, MAX_PAGE)
                } else {
                    st.twins_page(after, MAX_PAGE)
                }
            })
            .await?;
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
    if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n.to_string()).ok()) {
        r.headers_mut().insert("x-ms-continuation", v);
    }
    Ok(r)
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

impl LongPoll {
    /// How long to wait for a change.
    pub(super) fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.wait.unwrap_or(30)).min(MAX_WAIT)
    }
}

/// What a device sees of a twin: its properties, never the back end's tags; `$version` is the
/// twin's version (it moves with every change of tags or desired properties).
pub(super) fn device_view(twin: &crate::iothub::Twin) -> Value {
    json!({
        "desired": twin.properties.desired,
        "reported": twin.properties.reported,
        "$version": twin.version,
    })
}

async fn device_read_twin(
    device: DeviceAuth,
    State(s): State<Shared>,
    Query(poll): Query<LongPoll>,
) -> Result<Response, ApiError> {
    let id = device.device_id;
    // Subscribed before the read, so a change between the read and the wait is not missed.
    let mut waiter = poll.after.map(|_| s.twin_watch.subscribe(&id));
    let mut twin = device_row(&s, &id).await?.twin;
    if let (Some(after), Some(w)) = (poll.after, waiter.as_mut())
        && twin.version.unwrap_or_default() <= after
    {
        // Thousands of devices wait at once: none holds its twin while it waits.
        drop(twin);
        w.past(after, poll.wait()).await;
        twin = device_row(&s, &id).await?.twin;
    }
    drop(waiter);
    Ok(axum::Json(device_view(&twin)).into_response())
}

async fn device_report(
    device: DeviceAuth,
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = device.device_id;
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(&body) else {
        return Err(bad("reported properties must be a JSON object"));
    };
    let failed = crate::server::reconcile::reports_failure(&patch);
    let device = id.clone();
    let twin = s.db.call(move |st| st.patch_reported(&id, &patch)).await??;
    // An Edge device's reported properties can be in deployments' target conditions.
    if twin.is_edge() {
        s.edge_changed.notify_one();
    }
    // The device gets its deployment; a failure can complete a rollback threshold.
    crate::server::reconcile::after_report(&s, &device, failed).await?;
    Ok(axum::Json(json!({"reported": twin.properties.reported})).into_response())
}

//! Device diagnostics and device import on serve, under `/deviceUpdate/{instance}/management/`:
//! log collections (`deviceDiagnostics/logCollections`, asked of each agent through its twin's
//! `diagnosticInformation` component with a write grant to serve's blob store), agent health
//! (`deviceDiagnostics/deviceHealth`), and `devices:import` with its operations
//! (`operations`). The rules are `server::diagnostics`'.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Q, eq_filter, page};
use crate::iothub::Twin;
use crate::server::Shared;
use crate::server::diagnostics::{self as diag, KEPT_LOG_COLLECTIONS};
use crate::server::error::ApiError;
use crate::service::diagnostics::{
    AgentId, DeviceOperation, DiagnosticsComponent, ImportType, LogCollection,
    LogCollectionDetailedStatus,
};
use crate::service::model::OperationStatus;

pub(super) fn router() -> Router<Shared> {
    let m = "/deviceUpdate/{instance}/management";
    let logs = format!("{m}/deviceDiagnostics/logCollections");
    Router::new()
        .route(&logs, get(list_collections))
        .route(&format!("{logs}/{{id}}"), get(get_collection).put(start_collection))
        .route(&format!("{logs}/{{id}}/detailedStatus"), get(detailed_status))
        .route(&format!("{m}/deviceDiagnostics/deviceHealth"), get(device_health))
        .route(&format!("{m}/devices:import"), post(import_devices))
        .route(&format!("{m}/operations"), get(list_operations))
        .route(&format!("{m}/operations/{{id}}"), get(get_operation))
}

impl From<diag::Invalid> for ApiError {
    fn from(e: diag::Invalid) -> Self {
        ApiError::bad_request(e.code, e.message)
    }
}

/// The container of serve's blob store that agents upload their logs to: ADU uses the one
/// named as the instance; an instance name that is no container name uses `device-logs`.
fn logs_container(instance: &str) -> Result<crate::storage::ContainerName, ApiError> {
    instance
        .to_ascii_lowercase()
        .parse()
        .or_else(|_| "device-logs".parse())
        .map_err(ApiError::internal)
}

/// How long an agent may upload with the grant a log collection gives it.
const UPLOAD_GRANT: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The twin of an agent (its device's, or its module's), when it exists.
fn agent_twin(
    st: &crate::server::store::Store,
    a: &AgentId,
) -> Result<Option<Twin>, crate::server::store::StoreError> {
    match &a.module_id {
        Some(m) => st.module_twin(&a.device_id, m),
        None => Ok(st.device(&a.device_id)?.map(|r| r.twin)),
    }
}

async fn start_collection(
    State(s): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let c: LogCollection = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "InvalidLogCollection",
            format!("the body is not a log collection: {e}"),
        )
    })?;
    let c = diag::prepare(&id, c, &crate::server::now_string())?;
    let agents = c.device_list.clone();
    let missing =
        s.db.read(move |st| {
            for a in &agents {
                if agent_twin(st, a)?.is_none() {
                    return Ok(Some(a.path()));
                }
            }
            Ok(None)
        })
        .await?;
    if let Some(who) = missing {
        return Err(ApiError::not_found("DeviceNotFound", format!("no device or module `{who}`"))
            .with_target("deviceList"));
    }
    let stored = c.clone();
    if !s.db.call(move |st| st.create_log_collection(&stored, KEPT_LOG_COLLECTIONS)).await? {
        return Err(ApiError::conflict(
            "LogCollectionAlreadyExists",
            format!("log collection `{id}` exists; a new collection needs a new id"),
        ));
    }
    ask_agents(&s, &id, &c.device_list).await?;
    Ok((StatusCode::CREATED, axum::Json(c)).into_response())
}

/// Writes the desired `diagnosticInformation.service` of each agent: the collection's id and
/// a grant to write into the logs container.
async fn ask_agents(s: &Shared, id: &str, agents: &[AgentId]) -> Result<(), ApiError> {
    use crate::storage::BlobStore as _;
    let container = logs_container(&s.instance)?;
    s.blobs.ensure_container(&container).await.map_err(ApiError::internal)?;
    let patch =
        DiagnosticsComponent::request(id, &s.blobs.write_url(&container, UPLOAD_GRANT)).to_patch();
    let devices: Vec<(String, _)> = agents
        .iter()
        .filter(|a| a.module_id.is_none())
        .map(|a| (a.device_id.clone(), patch.clone()))
        .collect();
    let (s, agents) = (s.clone(), agents.to_vec());
    crate::server::to_the_end(async move {
        let written = s.db.call(move |st| st.patch_desired_many(&devices)).await?;
        for (device, version) in written {
            s.desired_changed(&device, version);
        }
        for a in agents {
            let Some(m) = a.module_id.clone() else { continue };
            let (d, p) = (a.device_id.clone(), patch.clone());
            let twin = s.db.call(move |st| st.patch_module_desired(&d, &m, &p, None)).await??;
            s.desired_changed(&a.path(), twin.version.unwrap_or_default());
        }
        Ok(())
    })
    .await
}

/// A collection with each agent's status read from its twin now; its stored status and time
/// move when the agents' say it changed.
async fn refreshed(s: &Shared, c: LogCollection) -> Result<LogCollectionDetailedStatus, ApiError> {
    let id = c.operation_id.clone().unwrap_or_default();
    let container = logs_container(&s.instance)?.to_string();
    let agents = c.device_list.clone();
    let (key, box_container) = (id.clone(), container.clone());
    let devices =
        s.db.read(move |st| {
            agents
                .iter()
                .map(|a| {
                    Ok(diag::device_status(a, agent_twin(st, a)?.as_ref(), &key, &box_container))
                })
                .collect::<Result<Vec<_>, crate::server::store::StoreError>>()
        })
        .await?;
    let status = diag::overall(&devices);
    let mut c = c;
    if c.status != Some(status) {
        c.status = Some(status);
        c.last_action_date_time = Some(crate::server::now_string());
        let stored = c.clone();
        s.db.call(move |st| st.update_log_collection(&stored)).await?;
    }
    Ok(LogCollectionDetailedStatus {
        operation_id: c.operation_id,
        created_date_time: c.created_date_time,
        last_action_date_time: c.last_action_date_time,
        status: c.status,
        device_status: devices,
        description: c.description,
        extra: Default::default(),
    })
}

/// A stored collection, or 404.
async fn collection(s: &Shared, id: &str) -> Result<LogCollection, ApiError> {
    let key = id.to_owned();
    s.db.read(move |st| st.log_collection(&key)).await?.ok_or_else(|| {
        ApiError::not_found("NotFound", format!("log collection `{id}` does not exist"))
    })
}

/// The collection document of a detailed status.
fn summary(mut c: LogCollection, d: &LogCollectionDetailedStatus) -> LogCollection {
    c.status = d.status;
    c.last_action_date_time.clone_from(&d.last_action_date_time);
    c
}

async fn get_collection(
    State(s): State<Shared>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let c = collection(&s, &id).await?;
    let d = refreshed(&s, c.clone()).await?;
    Ok(axum::Json(summary(c, &d)).into_response())
}

async fn detailed_status(
    State(s): State<Shared>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let c = collection(&s, &id).await?;
    Ok(axum::Json(refreshed(&s, c).await?).into_response())
}

/// Every collection, newest first; those not finished are read from their agents again.
async fn list_collections(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let all = s.db.read(|st| st.log_collections()).await?;
    let mut out = Vec::with_capacity(all.len());
    for c in all {
        if c.status.is_some_and(OperationStatus::is_terminal) {
            out.push(c);
        } else {
            let d = refreshed(&s, c.clone()).await?;
            out.push(summary(c, &d));
        }
    }
    Ok(page(out, &uri, &q))
}

/// `deviceHealth?filter=…` (required): `state eq 'healthy'|'unhealthy'`, `deviceId eq 'D'`,
/// `moduleId eq 'M'`, joined by `and`.
async fn device_health(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let accepts =
        "`state eq 'healthy'`, `state eq 'unhealthy'`, `deviceId eq '...'` or `moduleId eq '...'`";
    let Some(f) = q.get("filter") else {
        return Err(ApiError::bad_request(
            "InvalidFilter",
            format!("deviceHealth needs a filter: {accepts}"),
        ));
    };
    let filter = eq_filter(f, &["state", "deviceId", "moduleId"], accepts)?;
    let device = filter.iter().find(|(n, _)| *n == "deviceId").map(|(_, v)| v.clone());
    let (by_device, by_module) = (device.is_some(), filter.iter().any(|(n, _)| *n == "moduleId"));
    let twins =
        s.db.read(move |st| {
            let mut twins = match &device {
                Some(d) => st.device(d)?.map(|r| vec![r.twin]).unwrap_or_default(),
                None => st.full_twins()?,
            };
            twins.extend(st.module_agents()?.into_iter().map(|(t, _)| t));
            Ok(twins)
        })
        .await?;
    let health: Vec<_> = twins
        .iter()
        .filter_map(diag::health)
        .filter(|h| {
            filter.iter().all(|(name, value)| match *name {
                "state" => h.state.as_str().eq_ignore_ascii_case(value),
                "deviceId" => h.device_id == *value,
                _ => h.module_id.as_deref() == Some(value.as_str()),
            })
        })
        // `deviceId eq 'D'` alone is the device's own agent, not its modules'.
        .filter(|h| !by_device || by_module || h.module_id.is_none())
        .collect();
    Ok(page(health, &uri, &q))
}

/// How long finished device import operations are kept (ADU: 7 days).
const KEPT_OPERATIONS: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// `POST devices:import` with a JSON string body, `"Devices"`, `"Modules"` or `"All"`: 202 and
/// the `Operation-Location` of a device import operation. serve's Device Update view is the
/// registry itself, read when asked; an import reads it again (the next request rebuilds every
/// view) and counts the agents it found, by kind.
async fn import_devices(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let kind: ImportType = serde_json::from_slice::<String>(&body)
        .map(|t| ImportType::from(t.as_str()))
        .map_err(|e| {
            ApiError::bad_request(
                "InvalidImportType",
                format!("the body is not a JSON string: {e}"),
            )
        })?;
    if let ImportType::Other(t) = &kind {
        return Err(ApiError::bad_request(
            "InvalidImportType",
            format!("import type `{t}` is not Devices, Modules or All"),
        ));
    }
    let running = s.db.read(|st| st.device_operations()).await?;
    if running.iter().any(|o| !o.status.is_terminal()) {
        return Err(ApiError::conflict(
            "OperationAlreadyRunning",
            "a device import is running; only one may run at a time",
        ));
    }
    let now = crate::server::now_string();
    let id = uuid::Uuid::new_v4().to_string();
    let mut op = DeviceOperation {
        operation_id: id.clone(),
        status: OperationStatus::NotStarted,
        error: None,
        trace_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        last_action_date_time: now.clone(),
        created_date_time: now,
        etag: Some(format!("\"{}\"", uuid::Uuid::new_v4())),
        extra: Default::default(),
    };
    let cutoff = humantime::format_rfc3339_millis(std::time::SystemTime::now() - KEPT_OPERATIONS)
        .to_string();
    let first = op.clone();
    let c = cutoff.clone();
    s.db.call(move |st| st.put_device_operation(&first, &c)).await?;
    let (devices, modules) =
        s.db.read(|st| Ok((st.twins_with_created()?, st.module_agents()?))).await?;
    let count =
        |twins: &[(Twin, String)]| crate::server::devices::View::build(twins, &[]).devices.len();
    let mut found = serde_json::Map::new();
    if kind != ImportType::Modules {
        found.insert("devices".into(), count(&devices).into());
    }
    if kind != ImportType::Devices {
        found.insert("modules".into(), count(&modules).into());
    }
    op.status = OperationStatus::Succeeded;
    op.last_action_date_time = crate::server::now_string();
    op.etag = Some(format!("\"{}\"", uuid::Uuid::new_v4()));
    op.extra.insert("imported".into(), serde_json::Value::Object(found));
    // A write moves the store's generation: every cached view is read again.
    s.db.call(move |st| st.put_device_operation(&op, &cutoff)).await?;
    let mut r = StatusCode::ACCEPTED.into_response();
    let location = format!(
        "/deviceUpdate/{}/management/operations/{id}?api-version={}",
        s.instance,
        crate::service::API_VERSION
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert("Operation-Location", v);
    }
    Ok(r)
}

async fn get_operation(
    State(s): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = id.clone();
    let op = s.db.read(move |st| st.device_operation(&key)).await?.ok_or_else(|| {
        ApiError::not_found("OperationNotFound", format!("operation {id} does not exist"))
    })?;
    if let (Some(inm), Some(tag)) = (headers.get(header::IF_NONE_MATCH), &op.etag)
        && inm.to_str().ok() == Some(tag.as_str())
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let mut r = axum::Json(&op).into_response();
    if !op.status.is_terminal() {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(r)
}

/// `operations[?filter=status eq 'NotStarted' or status eq 'Running'][&top=N]` (the one filter
/// the spec allows, each `status eq` term joined by `or`).
async fn list_operations(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let mut wanted: Vec<String> = Vec::new();
    if let Some(f) = q.get("filter") {
        for term in f.split(" or ") {
            let accepts = "`status eq 'NotStarted' or status eq 'Running'`";
            wanted.extend(eq_filter(term, &["status"], accepts)?.into_iter().map(|(_, v)| v));
        }
    }
    let top = match q.get("top").map(|t| t.parse::<usize>()) {
        None => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Err(ApiError::bad_request("InvalidTop", "top is a non-negative integer"));
        }
    };
    let ops = s.db.read(|st| st.device_operations()).await?;
    let items: Vec<DeviceOperation> = ops
        .into_iter()
        .filter(|o| {
            wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(o.status.as_str()))
        })
        .take(top)
        .collect();
    Ok(page(items, &uri, &q))
}

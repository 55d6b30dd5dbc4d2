//! `otaforge serve`: an embedded Device Update service speaking the ADU data-plane REST API
//! (api-version 2022-10-01, update management) over HTTP, with a SQLite store and the `dir`
//! blob backend served from the same process through signed, expiring URLs.
//!
//! Routes (all ADU routes need `?api-version=2022-10-01`):
//! - `POST /deviceUpdate/{instance}/updates:import` → 202 + `Operation-Location`
//! - `GET /deviceUpdate/{instance}/updates[/providers[/{p}/names[/{n}/versions[/{v}[/files[/{id}]]]]]]`
//! - `DELETE /deviceUpdate/{instance}/updates/providers/{p}/names/{n}/versions/{v}` → 202
//! - `GET /deviceUpdate/{instance}/updates/operations[/{id}]` (`Retry-After: 1` while running)
//! - `GET /blobs/{container}/{blob}?se=...&sp=r&sig=...` (the dir store's read URLs)
//!
//! Authentication: `Authorization: Bearer TOKEN` when started with a token. Without one, the
//! listener must be a loopback address (anything else is refused at start), and requests need
//! no token. Blob URLs carry their own signature instead.
//!
//! This module depends on the library (manifest rules, service models, dir store); nothing in
//! the library depends on it.

pub mod import;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::service::{
    API_VERSION, ErrorBody, ImportItem, MAX_IMPORT_ITEMS, OperationStatus, UpdateOperation,
};
use crate::storage::dir::DirStore;
use store::Store;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file or socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A setting is unsafe or invalid.
    #[error("{0}")]
    Config(String),
    /// The blob store failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Database, blob store and imported content live here.
    pub data_dir: PathBuf,
    /// The Device Update instance name clients use.
    pub instance: String,
    /// Required bearer token; None is allowed only on loopback.
    pub token: Option<String>,
}

/// A running service.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The HTTP base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The blob store root (upload here with `--dir`).
    pub blob_dir: PathBuf,
    /// URL prefix of blob read URLs (`--base-url` for uploads).
    pub blob_url: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Waits until the server stops (it runs until the process ends).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

struct AppState {
    store: Mutex<Store>,
    instance: String,
    token: Option<String>,
    blobs: DirStore,
    content_dir: PathBuf,
    http: reqwest::Client,
}

type Shared = Arc<AppState>;

/// The current time as ADU writes it.
pub fn now_string() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Binds, recovers the store and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    if config.token.is_none() && !config.listen.ip().is_loopback() {
        return Err(ServerError::Config(format!(
            "refusing to listen on {} without --token: only loopback addresses may serve without authentication",
            config.listen
        )));
    }
    crate::manifest::check_id_part("instance", &config.instance)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    fs_err::create_dir_all(&config.data_dir)?;
    let store = Store::open(&config.data_dir.join("otaforge-serve.sqlite"), &now_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}");
    let blob_dir = config.data_dir.join("blobs");
    let blob_url = format!("{base_url}/blobs");
    let blobs = DirStore::open(&blob_dir, &blob_url)?;
    let content_dir = config.data_dir.join("content");
    fs_err::create_dir_all(&content_dir)?;
    // Downloads a killed process left half-done are temp files; nothing refers to them.
    for entry in fs_err::read_dir(&content_dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".otaforge-") {
            let _ = fs_err::remove_file(entry.path());
        }
    }
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let state: Shared = Arc::new(AppState {
        store: Mutex::new(store),
        instance: config.instance.clone(),
        token: config.token.clone(),
        blobs,
        content_dir,
        http,
    });
    let api = Router::new()
        .route("/deviceUpdate/{instance}/updates", get(list_updates))
        .route("/deviceUpdate/{instance}/updates:import", axum::routing::post(import_updates))
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
        .layer(axum::middleware::from_fn_with_state(state.clone(), api_guard));
    let app = Router::new()
        .merge(api)
        .route("/blobs/{*path}", get(get_blob))
        .fallback(|| async {
            api_error(StatusCode::NOT_FOUND, ErrorBody::new("NotFound", "no such route"))
        })
        .with_state(state);
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Running { addr, base_url, blob_dir, blob_url, task })
}

fn api_error(status: StatusCode, error: ErrorBody) -> Response {
    let mut r = (status, axum::Json(json!({ "error": error }))).into_response();
    r.headers_mut().insert(
        "x-ms-error-code",
        HeaderValue::from_str(&error.code).unwrap_or(HeaderValue::from_static("Error")),
    );
    r
}

fn internal(e: impl std::fmt::Display) -> Response {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorBody::new("InternalServerError", e.to_string()),
    )
}

/// Bearer token, api-version and instance checks for every API route.
async fn api_guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given
            .is_some_and(|g| crate::storage::sas::constant_time_eq(g.as_bytes(), token.as_bytes()));
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
        Some(API_VERSION) => {}
        Some(other) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "UnsupportedApiVersion",
                    format!("api-version {other} is not supported; use {API_VERSION}"),
                ),
            );
        }
        None => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "MissingApiVersionParameter",
                    format!("the api-version query parameter is required ({API_VERSION})"),
                ),
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

fn new_operation_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Time and a counter still give unique ids within this process.
        let n = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b.copy_from_slice(&n.to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn etag(seed: &str) -> String {
    format!("\"{}\"", &crate::Sha256::digest(seed.as_bytes()).to_hex()[..32])
}

async fn import_updates(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let items: Vec<ImportItem> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(a)) => match serde_json::from_value(Value::Array(a)) {
            Ok(items) => items,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorBody::new(
                        "InvalidImportRequest",
                        format!("the body is not an array of import items: {e}"),
                    ),
                );
            }
        },
        Ok(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "InvalidImportRequest",
                    "the body must be a JSON array of import items",
                ),
            );
        }
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new("InvalidImportRequest", format!("the body is not JSON: {e}")),
            );
        }
    };
    if items.is_empty() || items.len() > MAX_IMPORT_ITEMS {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorBody::new(
                "InvalidImportRequest",
                format!(
                    "an import request holds 1 to {MAX_IMPORT_ITEMS} updates, this one has {}",
                    items.len()
                ),
            ),
        );
    }
    for (i, it) in items.iter().enumerate() {
        if it.files.len() > 10 {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "InvalidImportRequest",
                    format!("item {i} lists {} files; an update has at most 10", it.files.len()),
                )
                .with_target(format!("[{i}].files")),
            );
        }
        if !it.import_manifest.hashes.contains_key("sha256") {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "InvalidImportRequest",
                    format!("item {i}: importManifest.hashes.sha256 is required"),
                )
                .with_target(format!("[{i}].importManifest.hashes")),
            );
        }
    }
    let op = new_operation(OperationStatus::NotStarted, None);
    let id = op.operation_id.clone();
    {
        let store = lock(&s);
        match store.running_count() {
            Ok(n) if n >= 10 => {
                return api_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorBody::new(
                        "TooManyOperations",
                        "at most 10 import or delete operations run at once; retry later",
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return internal(e),
        }
        if let Err(e) = store.put_operation(&op, Some(&String::from_utf8_lossy(&body))) {
            return internal(e);
        }
    }
    let st = s.clone();
    tokio::spawn(async move { run_import(st, op, items).await });
    accepted(&s.instance, &id)
}

/// 202 with the `Operation-Location` of operation `id`.
fn accepted(instance: &str, id: &str) -> Response {
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&op_location(instance, id)) {
        r.headers_mut().insert("Operation-Location", v);
    }
    r
}

/// A new operation with a fresh id, created now.
fn new_operation(status: OperationStatus, update: Option<Value>) -> UpdateOperation {
    let id = new_operation_id();
    let now = now_string();
    UpdateOperation {
        operation_id: id.clone(),
        status,
        update,
        resource_location: None,
        error: None,
        trace_id: Some(id.replace('-', "")),
        last_action_date_time: Some(now.clone()),
        created_date_time: Some(now.clone()),
        etag: Some(etag(&format!("{id}{now}"))),
        extra: Default::default(),
    }
}

fn lock(s: &AppState) -> std::sync::MutexGuard<'_, Store> {
    match s.store.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn run_import(s: Shared, mut op: UpdateOperation, items: Vec<ImportItem>) {
    op.status = OperationStatus::Running;
    op.last_action_date_time = Some(now_string());
    if lock(&s).put_operation(&op, None).is_err() {
        return;
    }
    let existing = lock(&s).updates().unwrap_or_default();
    let now = now_string();
    let result = import::prepare(&s.http, &items, &existing, &now, &s.content_dir).await;
    op.last_action_date_time = Some(now_string());
    match result {
        Ok(prepared) => {
            // Content first (content-addressed, invisible until the commit refers to it).
            let mut prepared = prepared;
            for (hex, file) in std::mem::take(&mut prepared.content) {
                if let Err(e) = file.commit_to(&s.content_dir.join(&hex), true) {
                    op.status = OperationStatus::Failed;
                    op.error = Some(ErrorBody::new(
                        "InternalServerError",
                        format!("cannot store content: {e}"),
                    ));
                    let _ = lock(&s).put_operation(&op, None);
                    return;
                }
            }
            let first = &prepared.updates[0];
            op.status = OperationStatus::Succeeded;
            op.update = Some(json!({
                "updateId": first.body["updateId"],
                "friendlyName": first.body.get("friendlyName"),
                "description": first.body.get("description"),
            }));
            op.resource_location = Some(format!(
                "/deviceUpdate/{}/updates/providers/{}/names/{}/versions/{}?api-version={API_VERSION}",
                s.instance, first.provider, first.name, first.version
            ));
            let mut store = lock(&s);
            // The store may have changed while fetching: re-check duplicates in the same lock.
            let dup = prepared
                .updates
                .iter()
                .find(|u| matches!(store.update(&u.provider, &u.name, &u.version), Ok(Some(_))));
            if let Some(u) = dup {
                op.status = OperationStatus::Failed;
                op.update = None;
                op.resource_location = None;
                op.error = Some(ErrorBody::new(
                    "UpdateAlreadyExists",
                    format!("update {}/{}/{} is already imported", u.provider, u.name, u.version),
                ));
                let _ = store.put_operation(&op, None);
                return;
            }
            if let Err(e) = store.commit_import(&prepared.updates, &op) {
                op.status = OperationStatus::Failed;
                op.update = None;
                op.resource_location = None;
                op.error = Some(ErrorBody::new("InternalServerError", e.to_string()));
                let _ = store.put_operation(&op, None);
            }
        }
        Err(error) => {
            op.status = OperationStatus::Failed;
            op.error = Some(error);
            let _ = lock(&s).put_operation(&op, None);
        }
    }
}

fn with_retry_after(op: &UpdateOperation, mut r: Response) -> Response {
    if matches!(op.status, OperationStatus::NotStarted | OperationStatus::Running) {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn get_operation(
    State(s): State<Shared>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match lock(&s).operation(&id) {
        Ok(Some(op)) => {
            if let (Some(inm), Some(tag)) = (headers.get(header::IF_NONE_MATCH), &op.etag)
                && inm.to_str().ok() == Some(tag.as_str())
                && matches!(op.status, OperationStatus::Succeeded | OperationStatus::Failed)
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

/// `value` + `nextLink` paging over `items`, 20 per page, `skip` in the next link.
fn page(
    items: Vec<Value>,
    uri: &axum::http::Uri,
    query: &std::collections::HashMap<String, String>,
) -> Response {
    const PAGE: usize = 20;
    let skip = query.get("skip").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(PAGE).collect();
    let mut body = json!({ "value": value });
    if skip + PAGE < total {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "skip")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.sort();
        q.push(("skip".into(), (skip + PAGE).to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish();
        body["nextLink"] = json!(format!("{}?{qs}", uri.path()));
    }
    axum::Json(body).into_response()
}

type Q = Query<std::collections::HashMap<String, String>>;

async fn list_operations(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    let ops = match lock(&s).operations() {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    // ADU supports only `status eq 'NotStarted' or status eq 'Running'`-style filters.
    let wanted: Vec<&str> = ["NotStarted", "Running", "Succeeded", "Failed"]
        .into_iter()
        .filter(|st| q.get("filter").is_none_or(|f| f.contains(&format!("'{st}'"))))
        .collect();
    let top = q.get("top").and_then(|t| t.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let items: Vec<Value> = ops
        .into_iter()
        .filter(|o| {
            wanted.contains(
                &serde_json::to_value(o.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
                    .as_str(),
            )
        })
        .take(top)
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect();
    page(items, &uri, &q)
}

async fn list_updates(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    match lock(&s).updates() {
        Ok(u) => {
            let search = q.get("search").map(|x| x.to_lowercase());
            let items = u
                .into_iter()
                .filter(|u| {
                    search.as_ref().is_none_or(|t| u.to_string().to_lowercase().contains(t))
                })
                .collect();
            page(items, &uri, &q)
        }
        Err(e) => internal(e),
    }
}

fn distinct(values: impl Iterator<Item = String>) -> Vec<Value> {
    let set: std::collections::BTreeSet<String> = values.collect();
    set.into_iter().map(Value::String).collect()
}

async fn list_providers(State(s): State<Shared>, uri: axum::http::Uri, Query(q): Q) -> Response {
    match lock(&s).updates() {
        Ok(u) => page(distinct(u.iter().filter_map(import::update_key).map(|k| k.0)), &uri, &q),
        Err(e) => internal(e),
    }
}

async fn list_names(
    State(s): State<Shared>,
    Path((_, p)): Path<(String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    match lock(&s).updates() {
        Ok(u) => page(
            distinct(u.iter().filter_map(import::update_key).filter(|k| k.0 == p).map(|k| k.1)),
            &uri,
            &q,
        ),
        Err(e) => internal(e),
    }
}

async fn list_versions(
    State(s): State<Shared>,
    Path((_, p, n)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    Query(q): Q,
) -> Response {
    match lock(&s).updates() {
        Ok(u) => page(
            distinct(
                u.iter()
                    .filter_map(import::update_key)
                    .filter(|k| k.0 == p && k.1 == n)
                    .map(|k| k.2),
            ),
            &uri,
            &q,
        ),
        Err(e) => internal(e),
    }
}

fn not_found_update(p: &str, n: &str, v: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        ErrorBody::new("UpdateNotFound", format!("update {p}/{n}/{v} does not exist")),
    )
}

async fn get_update(
    State(s): State<Shared>,
    Path((_, p, n, v)): Path<(String, String, String, String)>,
) -> Response {
    match lock(&s).update(&p, &n, &v) {
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
    let store = lock(&s);
    match store.update(&p, &n, &v) {
        Ok(Some(_)) => {}
        Ok(None) => return not_found_update(&p, &n, &v),
        Err(e) => return internal(e),
    }
    match store.file_ids(&p, &n, &v) {
        Ok(ids) => page(ids.into_iter().map(Value::String).collect(), &uri, &q),
        Err(e) => internal(e),
    }
}

async fn get_file(
    State(s): State<Shared>,
    Path((_, p, n, v, f)): Path<(String, String, String, String, String)>,
) -> Response {
    match lock(&s).file(&p, &n, &v, &f) {
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
    let mut op = new_operation(
        OperationStatus::Running,
        Some(json!({"updateId": {"provider": p, "name": n, "version": v}})),
    );
    let id = op.operation_id.clone();
    let mut store = lock(&s);
    match store.update(&p, &n, &v) {
        Ok(Some(_)) => {}
        Ok(None) => return not_found_update(&p, &n, &v),
        Err(e) => return internal(e),
    }
    // A parent that references this update keeps it alive.
    let key = json!({"provider": p, "name": n, "version": v});
    let parents: Vec<String> = store
        .updates()
        .unwrap_or_default()
        .iter()
        .filter(|u| {
            u["instructions"]["steps"]
                .as_array()
                .is_some_and(|steps| steps.iter().any(|st| st.get("updateId") == Some(&key)))
        })
        .filter_map(import::update_key)
        .map(|(a, b, c)| format!("{a}/{b}/{c}"))
        .collect();
    if let Err(e) = store.put_operation(&op, None) {
        return internal(e);
    }
    if parents.is_empty() {
        op.status = OperationStatus::Succeeded;
        op.last_action_date_time = Some(now_string());
        if let Err(e) = store.commit_delete(&p, &n, &v, &op) {
            return internal(e);
        }
    } else {
        op.status = OperationStatus::Failed;
        op.error = Some(ErrorBody::new(
            "UpdateReferenced",
            format!(
                "update {p}/{n}/{v} is referenced by {}; delete the parent first",
                parents.join(", ")
            ),
        ));
        if let Err(e) = store.put_operation(&op, None) {
            return internal(e);
        }
    }
    accepted(&s.instance, &id)
}

async fn get_blob(State(s): State<Shared>, uri: axum::http::Uri) -> Response {
    let path = uri.path().strip_prefix("/blobs").unwrap_or_default();
    match s.blobs.resolve(path, uri.query().unwrap_or_default(), SystemTime::now()) {
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

//! The rollout dashboard: the pages a release engineer watches during a rollout (fleet and
//! compliance, a group, a deployment with per-subgroup progress, its rollback policy and its
//! failing devices with their results decoded, a device, IoT Edge deployments, the audit
//! trail), served under `/ui/` with paths that mirror the REST API's.
//!
//! - The pages read through [`DashboardSource`]: serve implements it over its own store (the
//!   same domain functions its REST routes call), [`RemoteSource`] over the library's Device
//!   Update and IoT Hub clients (`otaforge dashboard`), so the browser never holds a
//!   credential.
//! - HTML is rendered on the server by askama templates (checked at compile time, every value
//!   escaped by the engine); charts are SVG made on the server ([`chart`]); the stylesheet and
//!   the one script are embedded in the binary. Everything works without JavaScript except
//!   live updates and actions.
//! - Live: `/ui/events` is a server-sent event stream that says "changed" whenever the source
//!   reports a change ([`DashboardSource::changed`]); `live.js` then re-reads the page and
//!   swaps its `<main>`.
//! - Every answer carries a strict `Content-Security-Policy` (`default-src 'self'`, no inline
//!   script or style).

mod chart;
mod pages;
mod remote;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::iothub::Twin;
use crate::iothub::config::Configuration;
use crate::service::UpdateInfo;
use crate::service::model::{
    Deployment, DeploymentStatus, Device, DeviceClass, Group, UpdateCompliance,
};

pub use remote::RemoteSource;

/// Why a page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The group, deployment, device or Edge deployment does not exist.
    #[error("{what} `{id}` does not exist")]
    NotFound {
        /// `group`, `deployment`, `device`, `Edge deployment`.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The source says it does not exist (its own words).
    #[error("{0}")]
    Missing(String),
    /// The Device Update service failed.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    /// The IoT Hub failed.
    #[error(transparent)]
    Hub(#[from] crate::iothub::IotHubError),
    /// The source has no IoT Hub (no connection string was given).
    #[error("no IoT Hub is configured: give --iothub-connection-file")]
    NoHub,
    /// Serve's store failed.
    #[error("the store failed: {0}")]
    Store(String),
    /// A page's template failed to render.
    #[error("the page could not be rendered: {0}")]
    Render(String),
    /// A release report could not be read.
    #[error("release report: {0}")]
    Release(String),
    /// An action was asked of a read-only dashboard.
    #[error(
        "this dashboard is read-only; start it with --allow-actions to cancel, retry or delete"
    )]
    ReadOnly,
}

/// What can be done to a deployment from its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Cancel one subgroup (device class).
    Cancel(String),
    /// Retry one subgroup's failed devices.
    Retry(String),
    /// Delete the deployment.
    Delete,
}

impl Action {
    /// `cancel`, `retry`, `delete`.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Cancel(_) => "cancel",
            Action::Retry(_) => "retry",
            Action::Delete => "delete",
        }
    }
}

/// One entry of the audit trail: who did what to which deployment, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (RFC 3339).
    pub at: String,
    /// Who: `token` (a bearer token), `loopback` (no token) or `dashboard`.
    pub actor: String,
    /// `create`, `cancel`, `retry`, `delete`, `rollback`.
    pub action: String,
    /// The group.
    pub group: String,
    /// The deployment.
    pub deployment: String,
    /// The device class, for subgroup actions.
    pub class: Option<String>,
    /// The update, for a create.
    pub update: Option<String>,
}

/// One of a device's results: what its agent reported each time its state, workflow,
/// installed update or last result changed (serve keeps these; Device Update's API has only
/// the latest).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultRecord {
    /// When it was received (RFC 3339, UTC).
    pub at: String,
    /// The agent's state (`Idle` 0, `DeploymentInProgress` 6, `Failed` 255).
    pub state: Option<i64>,
    /// The deployment it worked on (`workflow.id`).
    pub workflow_id: Option<String>,
    /// What it reported installed (`installedUpdateId`, as written).
    pub installed_update: Option<String>,
    /// Its last install result's code.
    pub result_code: Option<i64>,
    /// Its last install result's extended code.
    pub extended_result_code: Option<i64>,
    /// Its last install result's details.
    pub result_details: Option<String>,
}

/// A deployment's subgroup's counts at one time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProgressRecord {
    /// The group.
    pub group_id: String,
    /// The deployment.
    pub deployment_id: String,
    /// The subgroup's device class.
    pub class_id: String,
    /// When (RFC 3339).
    pub at: String,
    /// Devices in the subgroup.
    pub total: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// In progress.
    pub in_progress: u64,
    /// Canceled.
    pub canceled: u64,
}

impl ProgressRecord {
    /// A subgroup's counts as a deployment's status gives them, at `at`.
    pub fn of(
        group_id: &str,
        deployment_id: &str,
        at: &str,
        s: &crate::service::model::SubgroupDeploymentStatus,
    ) -> Self {
        let n = |v: Option<u64>| v.unwrap_or(0);
        Self {
            group_id: group_id.to_owned(),
            deployment_id: deployment_id.to_owned(),
            class_id: s.device_class_id.clone(),
            at: at.to_owned(),
            total: n(s.total_devices),
            succeeded: n(s.devices_completed_succeeded_count),
            failed: n(s.devices_completed_failed_count),
            in_progress: n(s.devices_in_progress_count),
            canceled: n(s.devices_canceled_count),
        }
    }

    /// Whether `other` counts the same as this one.
    pub fn same_counts(&self, other: &Self) -> bool {
        (self.total, self.succeeded, self.failed, self.in_progress, self.canceled)
            == (other.total, other.succeeded, other.failed, other.in_progress, other.canceled)
    }
}

/// Where the pages read from: serve's store in-process, or a Device Update instance and an IoT
/// Hub over their REST APIs. Every method returns what the REST API of the same name returns.
#[async_trait::async_trait]
pub trait DashboardSource: Send + Sync + 'static {
    /// Every group.
    async fn groups(&self) -> Result<Vec<Group>, DashboardError>;
    /// Every device class.
    async fn classes(&self) -> Result<Vec<DeviceClass>, DashboardError>;
    /// Compliance of the instance, or of one group.
    async fn compliance(&self, group: Option<&str>) -> Result<UpdateCompliance, DashboardError>;
    /// Compliance of each group, by group id (the default asks for each group's own).
    async fn compliance_by_group(
        &self,
        groups: &[Group],
    ) -> Result<std::collections::BTreeMap<String, UpdateCompliance>, DashboardError> {
        let mut by = std::collections::BTreeMap::new();
        for g in groups {
            by.insert(g.group_id.clone(), self.compliance(Some(&g.group_id)).await?);
        }
        Ok(by)
    }
    /// The updates imported.
    async fn updates(&self) -> Result<Vec<UpdateInfo>, DashboardError>;
    /// A group's deployments, newest first.
    async fn deployments(&self, group: &str) -> Result<Vec<Deployment>, DashboardError>;
    /// One deployment; `None` when it does not exist.
    async fn deployment(&self, group: &str, id: &str)
    -> Result<Option<Deployment>, DashboardError>;
    /// A deployment's status, per subgroup.
    async fn deployment_status(
        &self,
        group: &str,
        id: &str,
    ) -> Result<DeploymentStatus, DashboardError>;
    /// Up to `limit` devices that failed in a deployment, with their last install result.
    async fn failed_devices(
        &self,
        group: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<Device>, DashboardError>;
    /// One device as Device Update sees it; `None` when it does not know it.
    async fn device(&self, id: &str) -> Result<Option<Device>, DashboardError>;
    /// A device's twin; `None` when the hub does not know it.
    async fn twin(&self, id: &str) -> Result<Option<Twin>, DashboardError>;
    /// A module's twin (`$edgeAgent` of an IoT Edge device); `None` when there is none.
    async fn module_twin(&self, device: &str, module: &str)
    -> Result<Option<Twin>, DashboardError>;
    /// The IoT Edge deployments (configurations with `modulesContent`).
    async fn edge_deployments(&self) -> Result<Vec<Configuration>, DashboardError>;
    /// A deployment's progress per subgroup over time, oldest first (empty where nothing was
    /// recorded).
    async fn progress(&self, group: &str, id: &str) -> Result<Vec<ProgressRecord>, DashboardError>;
    /// A device's results, newest first, at most `limit`.
    async fn results(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<ResultRecord>, DashboardError>;
    /// The audit trail, newest first (empty where the service keeps none).
    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, DashboardError>;
    /// Does `action` to a deployment.
    async fn act(&self, group: &str, id: &str, action: &Action) -> Result<(), DashboardError>;
    /// Waits until something may have changed since `seen` (a token this method returned
    /// before; 0 at first) and returns the new token; returns at once on the first call.
    async fn changed(&self, seen: u64) -> u64;
}

/// How the pages are served.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Whether cancel, retry and delete are offered (POST, JSON, own origin).
    pub allow_actions: bool,
    /// The name shown in the header (the instance).
    pub title: String,
    /// Release reports and state files to show under `/ui/releases/`.
    pub releases: Vec<std::path::PathBuf>,
}

/// What the handlers share.
struct Ui {
    source: Arc<dyn DashboardSource>,
    options: Options,
}

type S = State<Arc<Ui>>;

/// The stylesheet, embedded.
const CSS: &str = include_str!("assets/dashboard.css");
/// The script of live updates and actions, embedded.
const JS: &str = include_str!("assets/live.js");

/// The Content-Security-Policy of every answer: only this origin's own stylesheet, script and
/// event stream, no inline script or style, no frames, forms only to itself.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' \
                       data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                       form-action 'self'";

/// The dashboard's routes, under `/ui/`.
pub fn router(source: Arc<dyn DashboardSource>, options: Options) -> Router {
    let ui = Arc::new(Ui { source, options });
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { axum::response::Redirect::permanent("/ui/") }))
        .route("/ui/", get(fleet))
        .route("/ui/groups/{g}", get(group))
        .route("/ui/groups/{g}/deployments/{d}", get(deployment))
        .route("/ui/groups/{g}/deployments/{d}/actions/{verb}", post(act))
        .route("/ui/devices/{d}", get(device))
        .route("/ui/edge/deployments", get(edge_list))
        .route("/ui/edge/deployments/{d}", get(edge_one))
        .route("/ui/releases/", get(releases))
        .route("/ui/releases/{n}", get(release))
        .route("/ui/audit", get(audit))
        .route("/ui/events", get(events))
        .route("/ui/static/dashboard.css", get(css))
        .route("/ui/static/live.js", get(js))
        .layer(from_fn(security_headers))
        .with_state(ui)
}

/// Adds the CSP and its companions to every answer, and `Server-Timing: render;dur=MS` (how
/// long the page took on the server: `cargo xtask bench ui` reads it).
async fn security_headers(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let mut r = next.run(req).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("render;dur={ms:.1}")) {
        h.insert("server-timing", v);
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// An error as a page.
struct PageError(DashboardError);

impl From<DashboardError> for PageError {
    fn from(e: DashboardError) -> Self {
        Self(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            DashboardError::NotFound { .. } | DashboardError::Missing(_) => StatusCode::NOT_FOUND,
            DashboardError::ReadOnly => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_GATEWAY,
        };
        (status, Html(pages::error_page(&self.0.to_string()))).into_response()
    }
}

type PageResult = Result<Html<String>, PageError>;

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS).into_response()
}

async fn fleet(State(ui): S) -> PageResult {
    Ok(Html(pages::fleet(&*ui.source, &ui.options).await?))
}

async fn group(State(ui): S, Path(g): Path<String>) -> PageResult {
    Ok(Html(pages::group(&*ui.source, &ui.options, &g).await?))
}

/// `?filter=TEXT`: failing devices whose id or decoded code contains it.
#[derive(Debug, serde::Deserialize)]
struct DeploymentQuery {
    #[serde(default)]
    filter: String,
}

async fn deployment(
    State(ui): S,
    Path((g, d)): Path<(String, String)>,
    Query(q): Query<DeploymentQuery>,
) -> PageResult {
    Ok(Html(pages::deployment(&*ui.source, &ui.options, &g, &d, &q.filter).await?))
}

/// `?class=ID` names the subgroup of a cancel or retry.
#[derive(Debug, serde::Deserialize)]
struct ActionQuery {
    #[serde(default)]
    class: Option<String>,
}

/// POST `…/actions/{cancel|retry|delete}`: only with [`Options::allow_actions`]; the route
/// layer (serve's or the dashboard's browser guard) has already required a JSON body from
/// this origin, which a cross-site form cannot send.
async fn act(
    State(ui): S,
    Path((g, d, verb)): Path<(String, String, String)>,
    Query(q): Query<ActionQuery>,
) -> Result<Response, PageError> {
    if !ui.options.allow_actions {
        return Err(DashboardError::ReadOnly.into());
    }
    let class = || q.class.clone().unwrap_or_default();
    let action = match verb.as_str() {
        "cancel" => Action::Cancel(class()),
        "retry" => Action::Retry(class()),
        "delete" => Action::Delete,
        _ => return Err(DashboardError::NotFound { what: "action", id: verb }.into()),
    };
    ui.source.act(&g, &d, &action).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn device(State(ui): S, Path(d): Path<String>) -> PageResult {
    Ok(Html(pages::device(&*ui.source, &ui.options, &d).await?))
}

async fn edge_list(State(ui): S) -> PageResult {
    Ok(Html(pages::edge_list(&*ui.source, &ui.options).await?))
}

async fn edge_one(State(ui): S, Path(d): Path<String>) -> PageResult {
    Ok(Html(pages::edge_one(&*ui.source, &ui.options, &d).await?))
}

async fn releases(State(ui): S) -> PageResult {
    Ok(Html(pages::releases(&ui.options)?))
}

async fn release(State(ui): S, Path(n): Path<usize>) -> PageResult {
    Ok(Html(pages::release(&ui.options, n)?))
}

async fn audit(State(ui): S) -> PageResult {
    Ok(Html(pages::audit(&*ui.source, &ui.options).await?))
}

/// `text/event-stream`: an event `changed` whenever the source reports a change, and a comment
/// every 15 s so proxies keep the connection.
async fn events(State(ui): S) -> Response {
    let stream = futures::stream::unfold((ui, 0u64, true), |(ui, seen, first)| async move {
        let next = if first {
            ui.source.changed(0).await
        } else {
            match tokio::time::timeout(KEEPALIVE, ui.source.changed(seen)).await {
                Ok(n) => n,
                Err(_) => {
                    let line = bytes::Bytes::from_static(b": keep-alive\n\n");
                    return Some((Ok::<_, std::convert::Infallible>(line), (ui, seen, false)));
                }
            }
        };
        let line = if first {
            // The first event only says the stream is open (the page is current).
            bytes::Bytes::from("retry: 1000\nevent: open\ndata: \n\n")
        } else {
            bytes::Bytes::from(format!("event: changed\ndata: {next}\n\n"))
        };
        Some((Ok(line), (ui, next, false)))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-store")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// A request guard: the refusal of a request (method, path, headers, whether a token guards
/// the service, the listening port), or `None`. The caller gives serve's browser guard
/// (`otaforge::server::browser_check`); the dashboard does not reach up into the service.
pub type Guard =
    fn(&axum::http::Method, &str, &axum::http::HeaderMap, bool, u16) -> Option<Response>;

/// Serves the pages on `listener` until the process ends (`otaforge dashboard`): loopback
/// only, behind `guard` (serve's browser guard: a loopback `Host`, this origin's `Origin`, and
/// a JSON body on every POST), so another site's page can neither read nor drive it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn DashboardSource>,
    options: Options,
    guard: Guard,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "refusing to serve the dashboard on {addr}: it holds the service's credentials and \
             has no login, so it listens on loopback only"
        )));
    }
    let port = addr.port();
    let app = router(source, options)
        .fallback(|| async { (StatusCode::NOT_FOUND, Html(pages::error_page("no such page"))) })
        .layer(from_fn(move |req: Request, next: Next| async move {
            let refused = guard(req.method(), req.uri().path(), req.headers(), false, port);
            match refused {
                Some(r) => r,
                None => next.run(req).await,
            }
        }));
    axum::serve(listener, app).await
}

/// How often an idle event stream says it is still there.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

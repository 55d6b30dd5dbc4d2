//! A typed client for the Azure Device Update data-plane REST API
//! (<https://learn.microsoft.com/rest/api/deviceupdate/>; the specification is
//! `deviceupdate.json` in `../shared/specs/deviceupdate-2022-10-01`). It speaks api-version
//! [`API_VERSION`]; [`SUPPORTED_API_VERSIONS`] are the versions whose documents these types
//! read (the official SDK's default, 2026-06-01, has the same routes and keeps the fields it
//! adds in `extra`).
//!
//! Covers update management — import (`POST .../updates:import` → 202 +
//! `Operation-Location`), operations (get, list, wait with `Retry-After` and an overall
//! timeout), updates (list with `nextLink` paging, get, delete as a long-running operation) and
//! files — and device management (groups, device classes, devices, compliance, deployments and
//! their status, cancel and retry). Errors keep the service's `error.code`, `message`,
//! `details`, `innererror` and the trace id, because those are what ADU support asks for.
//! [`agent`] has the other side of a deployment: what the service writes into a device's twin
//! and what the Device Update agent reports.
//!
//! Authentication: a Microsoft Entra ID bearer token for the scope [`SCOPE`] (Azure), a static
//! token (`otaforge serve --token`), or none (`otaforge serve` on loopback without a token).
//!
//! Every document is typed ([`model`]); [`DeviceUpdate`] is the small trait the import pipeline
//! (`crate::pipeline`) drives, implemented here by [`AduClient`].

pub mod agent;
pub mod diagnostics;
mod management;
pub mod model;
pub mod result_code;

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use model::{
    ErrorBody, ErrorResponse, FileImportMetadata, ImportItem, ImportManifestMetadata,
    OperationStatus, Page, Update, UpdateFile, UpdateInfo, UpdateOperation,
};

use crate::manifest::UpdateId;
use crate::retry::RetryPolicy;

/// The API version every request carries.
pub const API_VERSION: &str = "2022-10-01";
/// Every API version `otaforge serve` answers: the one otaforge sends, and the default of the
/// current official Python SDK (`azure-iot-deviceupdate` 1.1.0), whose update-management paths
/// and documents are the same.
pub const SUPPORTED_API_VERSIONS: [&str; 2] = [API_VERSION, "2026-06-01"];
/// The OAuth scope of the Device Update data plane.
pub const SCOPE: &str = "https://api.adu.microsoft.com/.default";
/// At most this many updates (a parent and its children) in one import request.
pub const MAX_IMPORT_ITEMS: usize = crate::limits::MAX_IMPORT_ITEMS;
/// The most pages a list follows before it suspects a `nextLink` loop.
const MAX_PAGES: usize = 10_000;
/// The longest one try of a request may take (a call's deadline may cut it shorter).
const PER_TRY_TIMEOUT: Duration = Duration::from_secs(120);

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Microsoft Entra ID.
    Entra(Arc<dyn TokenCredential>),
    /// A fixed bearer token (for `otaforge serve --token`).
    Static(String),
    /// No `Authorization` header (for `otaforge serve` on loopback without a token).
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Entra(_) => "Entra",
            Auth::Static(_) => "Static(redacted)",
            Auth::None => "None",
        })
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service answered with an error document.
    #[error("{status} {}: {}{}", .error.code, .error.message, trace(.trace_id))]
    Api {
        /// HTTP status.
        status: u16,
        /// The service's error (code, message, details, innererror).
        error: Box<ErrorBody>,
        /// The trace id to give ADU support, when the service sent one.
        trace_id: Option<String>,
    },
    /// The request did not reach the service or the answer was cut off.
    #[error("cannot reach {url}: {message}")]
    Transport {
        /// The URL (no secrets: ADU URLs carry none).
        url: String,
        /// What failed.
        message: String,
    },
    /// An answer that does not follow the API.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// No token could be obtained.
    #[error("cannot get an access token for {SCOPE}: {0}")]
    Auth(String),
    /// An operation did not finish in time.
    #[error(
        "operation {operation_id} is still {status:?} after {waited:?}; it may still finish (check with `otaforge update operation {operation_id}`)"
    )]
    Timeout {
        /// The operation.
        operation_id: String,
        /// Its last status.
        status: OperationStatus,
        /// How long otaforge waited.
        waited: Duration,
    },
}

fn trace(t: &Option<String>) -> String {
    t.as_ref().map(|t| format!(" (trace id {t})")).unwrap_or_default()
}

impl ServiceError {
    /// The service's error code, when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ServiceError::Api { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

/// What the import pipeline needs of a Device Update service: look up updates and their files,
/// start an import, and wait for it. [`AduClient`] implements it for Azure and `otaforge serve`.
pub trait DeviceUpdate: Send + Sync {
    /// One update, or None when it does not exist.
    fn get_update(
        &self,
        id: &UpdateId,
    ) -> impl Future<Output = Result<Option<Update>, ServiceError>> + Send;

    /// Every file document of an update.
    fn update_files(
        &self,
        id: &UpdateId,
    ) -> impl Future<Output = Result<Vec<UpdateFile>, ServiceError>> + Send;

    /// Starts an import; returns the operation id.
    fn import(
        &self,
        items: &[ImportItem],
    ) -> impl Future<Output = Result<String, ServiceError>> + Send;

    /// Waits for an operation to end, for at most `timeout`; `progress` sees every status.
    fn wait_operation(
        &self,
        id: &str,
        timeout: Duration,
        progress: &mut (dyn FnMut(&UpdateOperation) + Send),
    ) -> impl Future<Output = Result<UpdateOperation, ServiceError>> + Send;
}

/// A client for one Device Update instance.
#[derive(Debug, Clone)]
pub struct AduClient {
    base: url::Url,
    instance: String,
    auth: Auth,
    http: reqwest::Client,
    retry: RetryPolicy,
    notice: Option<crate::retry::RetryNotice>,
}

impl AduClient {
    /// This client, telling `notice` about each try it retries.
    pub fn with_retry_notice(mut self, notice: crate::retry::RetryNotice) -> Self {
        self.notice = Some(notice);
        self
    }

    fn announce(&self, what: &str, wait: Duration) {
        if let Some(n) = &self.notice {
            (n.0)(&format!("{what}; retrying in {wait:.1?}"));
        }
    }

    /// A client for `endpoint` (`https://ACCOUNT.api.adu.microsoft.com`, or a bare host name,
    /// which means https; `http://127.0.0.1:PORT` for `otaforge serve`) and `instance`.
    pub fn new(endpoint: &str, instance: &str, auth: Auth) -> Result<Self, ServiceError> {
        let with_scheme = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("https://{endpoint}")
        };
        let base = url::Url::parse(with_scheme.trim_end_matches('/')).map_err(|e| {
            ServiceError::Protocol { url: endpoint.to_owned(), message: format!("not a URL: {e}") }
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(PER_TRY_TIMEOUT)
            .build()
            .map_err(|e| ServiceError::Transport {
                url: endpoint.to_owned(),
                message: e.to_string(),
            })?;
        let retry = RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_secs(1),
            max_total: crate::retry::DEFAULT_CALL_DEADLINE,
            ..RetryPolicy::default()
        };
        Ok(Self { base, instance: instance.to_owned(), auth, http, retry, notice: None })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same client with another total deadline per call, retries included
    /// ([`crate::retry::DEFAULT_CALL_DEADLINE`] unless set).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.retry.max_total = deadline;
        self
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The endpoint (scheme, host and port).
    pub fn endpoint(&self) -> &url::Url {
        &self.base
    }

    /// The auth this client sends (for a store that talks to the same service).
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The HTTP client (shared with a store that talks to the same service).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The URL of an API path of this instance, `path` given as segments (each percent-encoded
    /// as one segment), with the api-version.
    pub fn url(&self, segments: &[&str]) -> url::Url {
        let mut u = self.base.clone();
        if let Ok(mut s) = u.path_segments_mut() {
            s.clear().push("deviceUpdate").push(&self.instance);
            for seg in segments {
                s.push(seg);
            }
        }
        u.query_pairs_mut().append_pair("api-version", API_VERSION);
        u
    }

    /// Adds the `Authorization` header this client's auth calls for.
    pub async fn authorize(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ServiceError> {
        Ok(match &self.auth {
            Auth::None => req,
            Auth::Static(t) => req.bearer_auth(t),
            Auth::Entra(c) => {
                let token = c
                    .get_token(&[SCOPE], None)
                    .await
                    .map_err(|e| ServiceError::Auth(e.to_string()))?;
                req.bearer_auth(token.token.secret())
            }
        })
    }

    /// Sends a request, retrying connection failures, 408, 429 and 5xx as the retry policy says
    /// (honouring `Retry-After`); returns status, headers and body, or the service's error.
    /// The whole call, every try and the body included, ends by the policy's `max_total`.
    async fn send(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>), ServiceError> {
        let mut attempt = 0u32;
        let started = Instant::now();
        let host = crate::retry::host_of(&url);
        let out_of_time = || ServiceError::Transport {
            url: url.to_string(),
            message: crate::retry::deadline_exceeded(&host, self.retry.max_total),
        };
        loop {
            attempt += 1;
            // Each try gets what is left of the call's deadline (at most a try's own timeout).
            let Some(left) = self.retry.remaining(started) else { return Err(out_of_time()) };
            let mut req =
                self.http.request(method.clone(), url.clone()).timeout(left.min(PER_TRY_TIMEOUT));
            match &body {
                Some(b) => {
                    // ADU's PATCH routes take JSON merge patch.
                    let media = if method == reqwest::Method::PATCH {
                        "application/merge-patch+json"
                    } else {
                        "application/json"
                    };
                    req = req.header(reqwest::header::CONTENT_TYPE, media).body(b.clone());
                }
                // An action without a body (`…:cancel`) says so, as the SDKs do.
                None if method == reqwest::Method::POST => req = req.body(Vec::<u8>::new()),
                None => {}
            }
            let req = self.authorize(req).await?;
            let transport = |e: reqwest::Error| {
                if e.is_timeout() && self.retry.remaining(started).is_none() {
                    return out_of_time();
                }
                let cause = crate::retry::TransportCause::of(&e);
                ServiceError::Transport {
                    url: url.to_string(),
                    message: match cause {
                        crate::retry::TransportCause::Other => {
                            format!("{}: {e}", cause.describe(&crate::retry::host_of(&url)))
                        }
                        _ => cause.describe(&crate::retry::host_of(&url)),
                    },
                }
            };
            let resp = match req.send().await {
                Ok(r) => r,
                // The requests used here are safe to repeat (an import is deduplicated by the
                // service).
                Err(e)
                    if (e.is_connect() || e.is_timeout())
                        && !crate::retry::TransportCause::of(&e).is_permanent() =>
                {
                    match self.retry.delay(attempt, None) {
                        Some(d) if started.elapsed() + d < self.retry.max_total => {
                            let cause = crate::retry::TransportCause::of(&e);
                            self.announce(&cause.describe(&crate::retry::host_of(&url)), d);
                            tokio::time::sleep(d).await;
                            continue;
                        }
                        _ => return Err(transport(e)),
                    }
                }
                Err(e) => return Err(transport(e)),
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(transport)?.to_vec();
            if RetryPolicy::retryable_status(status)
                && let Some(d) = self.retry.delay(attempt, crate::retry::retry_after(&headers))
                && started.elapsed() + d < self.retry.max_total
            {
                self.announce(&format!("{} answered {status}", crate::retry::host_of(&url)), d);
                tokio::time::sleep(d).await;
                continue;
            }
            if status >= 400 {
                let trace_id = headers
                    .get("x-ms-request-id")
                    .or_else(|| headers.get("traceparent"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let error = serde_json::from_slice::<ErrorResponse>(&bytes)
                    .map(|r| r.error)
                    .unwrap_or_else(|_| {
                        ErrorBody::new(
                            &format!("Http{status}"),
                            String::from_utf8_lossy(&bytes).chars().take(500).collect::<String>(),
                        )
                    });
                return Err(ServiceError::Api { status, error: Box::new(error), trace_id });
            }
            return Ok((status, headers, bytes));
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        url: url::Url,
    ) -> Result<(T, reqwest::header::HeaderMap), ServiceError> {
        let (_, headers, bytes) = self.send(reqwest::Method::GET, url.clone(), None).await?;
        let v = serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Protocol { url: url.to_string(), message: e.to_string() })?;
        Ok((v, headers))
    }

    fn body<T: Serialize + ?Sized>(url: &url::Url, v: &T) -> Result<Vec<u8>, ServiceError> {
        serde_json::to_vec(v)
            .map_err(|e| ServiceError::Protocol { url: url.to_string(), message: e.to_string() })
    }

    /// Starts an import of up to 11 updates (a parent and its children); returns the operation
    /// id from `Operation-Location`.
    pub async fn import(&self, items: &[ImportItem]) -> Result<String, ServiceError> {
        let url = self.url(&["updates:import"]);
        let body = Self::body(&url, items)?;
        let (status, headers, _) =
            self.send(reqwest::Method::POST, url.clone(), Some(body)).await?;
        if status != 202 {
            return Err(ServiceError::Protocol {
                url: url.to_string(),
                message: format!("import answered {status}, expected 202"),
            });
        }
        operation_id_from(&headers, &url)
    }

    /// One operation, and the `Retry-After` the service suggests.
    pub async fn get_operation(
        &self,
        id: &str,
    ) -> Result<(UpdateOperation, Option<Duration>), ServiceError> {
        let (op, headers) =
            self.get_json::<UpdateOperation>(self.url(&["updates", "operations", id])).await?;
        Ok((op, crate::retry::retry_after(&headers)))
    }

    /// Polls an operation until it succeeds or fails, honouring `Retry-After` (0.2 to 30 s),
    /// for at most `timeout`. `progress` sees every status.
    pub async fn wait_operation(
        &self,
        id: &str,
        timeout: Duration,
        progress: &mut (dyn FnMut(&UpdateOperation) + Send),
    ) -> Result<UpdateOperation, ServiceError> {
        let start = Instant::now();
        loop {
            let (op, after) = self.get_operation(id).await?;
            progress(&op);
            if op.status.is_terminal() {
                return Ok(op);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ServiceError::Timeout {
                    operation_id: id.to_owned(),
                    status: op.status,
                    waited,
                });
            }
            let pause = after
                .unwrap_or(Duration::from_secs(5))
                .clamp(Duration::from_millis(200), Duration::from_secs(30));
            tokio::time::sleep(pause.min(timeout - waited)).await;
        }
    }

    /// Every operation the service still lists (completed ones are kept 7 days).
    pub async fn list_operations(&self) -> Result<Vec<UpdateOperation>, ServiceError> {
        self.list_paged(self.url(&["updates", "operations"])).await
    }

    /// Every item of a paged list, following `nextLink` (relative or absolute).
    pub async fn list_paged<T: DeserializeOwned>(
        &self,
        first: url::Url,
    ) -> Result<Vec<T>, ServiceError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(ServiceError::Protocol {
                    url: url.to_string(),
                    message: format!("more than {MAX_PAGES} pages; is nextLink looping?"),
                });
            }
            let (page, _) = self.get_json::<Page<T>>(url.clone()).await?;
            out.extend(page.value);
            if let Some(link) = page.next_link {
                next = Some(self.base.join(&link).map_err(|e| ServiceError::Protocol {
                    url: url.to_string(),
                    message: format!("nextLink: {e}"),
                })?);
            }
        }
        Ok(out)
    }

    /// Every update.
    pub async fn list_updates(&self) -> Result<Vec<Update>, ServiceError> {
        self.list_paged(self.url(&["updates"])).await
    }

    fn update_url(&self, id: &UpdateId, rest: &[&str]) -> url::Url {
        let version = id.version().to_string();
        let mut segs =
            vec!["updates", "providers", id.provider(), "names", id.name(), "versions", &version];
        segs.extend_from_slice(rest);
        self.url(&segs)
    }

    /// One update, or None when it does not exist.
    pub async fn get_update(&self, id: &UpdateId) -> Result<Option<Update>, ServiceError> {
        match self.get_json::<Update>(self.update_url(id, &[])).await {
            Ok((v, _)) => Ok(Some(v)),
            Err(ServiceError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts deleting an update; returns the operation id.
    pub async fn delete_update(&self, id: &UpdateId) -> Result<String, ServiceError> {
        let url = self.update_url(id, &[]);
        let (_, headers, _) = self.send(reqwest::Method::DELETE, url.clone(), None).await?;
        operation_id_from(&headers, &url)
    }

    /// The file ids of an update.
    pub async fn list_files(&self, id: &UpdateId) -> Result<Vec<String>, ServiceError> {
        self.list_paged(self.update_url(id, &["files"])).await
    }

    /// One file of an update.
    pub async fn get_file(&self, id: &UpdateId, file_id: &str) -> Result<UpdateFile, ServiceError> {
        Ok(self.get_json(self.update_url(id, &["files", file_id])).await?.0)
    }

    /// Every file document of an update.
    pub async fn update_files(&self, id: &UpdateId) -> Result<Vec<UpdateFile>, ServiceError> {
        let mut files = Vec::new();
        for f in self.list_files(id).await? {
            files.push(self.get_file(id, &f).await?);
        }
        Ok(files)
    }

    // Device management (`/management/...`): groups, devices, device classes, compliance.

    fn management(&self, segments: &[&str]) -> url::Url {
        let mut all = vec!["management"];
        all.extend_from_slice(segments);
        self.url(&all)
    }

    async fn get_optional<T: DeserializeOwned>(
        &self,
        url: url::Url,
    ) -> Result<Option<T>, ServiceError> {
        match self.get_json::<T>(url).await {
            Ok((v, _)) => Ok(Some(v)),
            Err(ServiceError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every device group.
    pub async fn list_groups(&self) -> Result<Vec<model::Group>, ServiceError> {
        self.list_paged(self.management(&["groups"])).await
    }

    /// One group; `None` when it does not exist.
    pub async fn get_group(&self, group_id: &str) -> Result<Option<model::Group>, ServiceError> {
        self.get_optional(self.management(&["groups", group_id])).await
    }

    /// Devices, all or those a filter selects (`groupId eq 'G'`, `deviceClassId eq 'C'`).
    pub async fn list_devices(
        &self,
        filter: Option<&str>,
    ) -> Result<Vec<model::Device>, ServiceError> {
        let mut url = self.management(&["devices"]);
        if let Some(f) = filter {
            url.query_pairs_mut().append_pair("filter", f);
        }
        self.list_paged(url).await
    }

    /// One device; `None` when Device Update does not know it.
    pub async fn get_device(&self, device_id: &str) -> Result<Option<model::Device>, ServiceError> {
        self.get_optional(self.management(&["devices", device_id])).await
    }

    /// Every device class.
    pub async fn list_device_classes(&self) -> Result<Vec<model::DeviceClass>, ServiceError> {
        self.list_paged(self.management(&["deviceClasses"])).await
    }

    /// One device class; `None` when it does not exist.
    pub async fn get_device_class(
        &self,
        class_id: &str,
    ) -> Result<Option<model::DeviceClass>, ServiceError> {
        self.get_optional(self.management(&["deviceClasses", class_id])).await
    }

    /// Creates a deployment, or changes one (PUT create-or-update); returns it as the service
    /// keeps it (with the subgroups it fans out to).
    pub async fn create_or_update_deployment(
        &self,
        d: &model::Deployment,
    ) -> Result<model::Deployment, ServiceError> {
        let url = self.management(&["groups", &d.group_id, "deployments", &d.deployment_id]);
        let body = Self::body(&url, d)?;
        let (_, _, bytes) = self.send(reqwest::Method::PUT, url.clone(), Some(body)).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Protocol { url: url.to_string(), message: e.to_string() })
    }

    /// One deployment; `None` when it does not exist.
    pub async fn get_deployment(
        &self,
        group_id: &str,
        deployment_id: &str,
    ) -> Result<Option<model::Deployment>, ServiceError> {
        self.get_optional(self.management(&["groups", group_id, "deployments", deployment_id]))
            .await
    }

    /// The deployments of a group.
    pub async fn list_deployments(
        &self,
        group_id: &str,
    ) -> Result<Vec<model::Deployment>, ServiceError> {
        self.list_paged(self.management(&["groups", group_id, "deployments"])).await
    }

    /// Deletes a deployment.
    pub async fn delete_deployment(
        &self,
        group_id: &str,
        deployment_id: &str,
    ) -> Result<(), ServiceError> {
        let url = self.management(&["groups", group_id, "deployments", deployment_id]);
        self.send(reqwest::Method::DELETE, url, None).await.map(drop)
    }

    /// A deployment's status, per subgroup.
    pub async fn deployment_status(
        &self,
        group_id: &str,
        deployment_id: &str,
    ) -> Result<model::DeploymentStatus, ServiceError> {
        let url = self.management(&["groups", group_id, "deployments", deployment_id, "status"]);
        Ok(self.get_json(url).await?.0)
    }

    /// Cancels a deployment for one subgroup (device class); returns the deployment.
    pub async fn cancel_subgroup(
        &self,
        group_id: &str,
        class_id: &str,
        deployment_id: &str,
    ) -> Result<model::Deployment, ServiceError> {
        self.subgroup_action(group_id, class_id, deployment_id, "cancel").await
    }

    /// Retries a deployment's failed devices in one subgroup; returns the deployment.
    pub async fn retry_subgroup(
        &self,
        group_id: &str,
        class_id: &str,
        deployment_id: &str,
    ) -> Result<model::Deployment, ServiceError> {
        self.subgroup_action(group_id, class_id, deployment_id, "retry").await
    }

    async fn subgroup_action(
        &self,
        group_id: &str,
        class_id: &str,
        deployment_id: &str,
        action: &str,
    ) -> Result<model::Deployment, ServiceError> {
        let last = format!("{deployment_id}:{action}");
        let url = self.management(&[
            "groups",
            group_id,
            "deviceClassSubgroups",
            class_id,
            "deployments",
            &last,
        ]);
        let (_, _, bytes) = self.send(reqwest::Method::POST, url.clone(), None).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Protocol { url: url.to_string(), message: e.to_string() })
    }

    /// Each device's state in a deployment, for one subgroup (device class).
    pub async fn device_states(
        &self,
        group_id: &str,
        class_id: &str,
        deployment_id: &str,
    ) -> Result<Vec<model::DeploymentDeviceState>, ServiceError> {
        let url = self.management(&[
            "groups",
            group_id,
            "deviceClassSubgroups",
            class_id,
            "deployments",
            deployment_id,
            "devicestates",
        ]);
        self.list_paged(url).await
    }

    /// The devices of one subgroup that failed in a deployment (`devicestates` filtered by
    /// the service: `deviceState eq 'Failed'`).
    pub async fn failed_device_states(
        &self,
        group_id: &str,
        class_id: &str,
        deployment_id: &str,
    ) -> Result<Vec<model::DeploymentDeviceState>, ServiceError> {
        let mut url = self.management(&[
            "groups",
            group_id,
            "deviceClassSubgroups",
            class_id,
            "deployments",
            deployment_id,
            "devicestates",
        ]);
        url.query_pairs_mut().append_pair("filter", "deviceState eq 'Failed'");
        self.list_paged(url).await
    }

    /// Deletes a group (refused while it has devices or a deployment that is not superseded).
    pub async fn delete_group(&self, group_id: &str) -> Result<(), ServiceError> {
        self.send(reqwest::Method::DELETE, self.management(&["groups", group_id]), None)
            .await
            .map(drop)
    }

    /// The best update of each device-class subgroup of a group, with how many devices it has.
    pub async fn best_updates(
        &self,
        group_id: &str,
    ) -> Result<Vec<model::SubgroupBestUpdate>, ServiceError> {
        self.list_paged(self.management(&["groups", group_id, "bestUpdates"])).await
    }

    /// Gives a device class a friendly name (1-100 letters, digits, `.` and `-`).
    pub async fn name_device_class(
        &self,
        class_id: &str,
        friendly_name: &str,
    ) -> Result<model::DeviceClass, ServiceError> {
        let url = self.management(&["deviceClasses", class_id]);
        let body = Self::body(&url, &serde_json::json!({"friendlyName": friendly_name}))?;
        let (_, _, bytes) = self.send(reqwest::Method::PATCH, url.clone(), Some(body)).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Protocol { url: url.to_string(), message: e.to_string() })
    }

    /// Deletes a device class (refused while it has devices).
    pub async fn delete_device_class(&self, class_id: &str) -> Result<(), ServiceError> {
        self.send(reqwest::Method::DELETE, self.management(&["deviceClasses", class_id]), None)
            .await
            .map(drop)
    }

    /// The updates a device class can install, newest first.
    pub async fn installable_updates(
        &self,
        class_id: &str,
    ) -> Result<Vec<UpdateInfo>, ServiceError> {
        self.list_paged(self.management(&["deviceClasses", class_id, "installableUpdates"])).await
    }

    /// Update compliance of the instance, or of one group.
    pub async fn update_compliance(
        &self,
        group_id: Option<&str>,
    ) -> Result<model::UpdateCompliance, ServiceError> {
        let url = match group_id {
            Some(g) => self.management(&["groups", g, "updateCompliance"]),
            None => self.management(&["updateCompliance"]),
        };
        Ok(self.get_json(url).await?.0)
    }
}

impl DeviceUpdate for AduClient {
    async fn get_update(&self, id: &UpdateId) -> Result<Option<Update>, ServiceError> {
        AduClient::get_update(self, id).await
    }

    async fn update_files(&self, id: &UpdateId) -> Result<Vec<UpdateFile>, ServiceError> {
        AduClient::update_files(self, id).await
    }

    async fn import(&self, items: &[ImportItem]) -> Result<String, ServiceError> {
        AduClient::import(self, items).await
    }

    async fn wait_operation(
        &self,
        id: &str,
        timeout: Duration,
        progress: &mut (dyn FnMut(&UpdateOperation) + Send),
    ) -> Result<UpdateOperation, ServiceError> {
        AduClient::wait_operation(self, id, timeout, progress).await
    }
}

fn operation_id_from(
    h: &reqwest::header::HeaderMap,
    url: &url::Url,
) -> Result<String, ServiceError> {
    let loc = h.get("operation-location").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        ServiceError::Protocol {
            url: url.to_string(),
            message: "no Operation-Location header".into(),
        }
    })?;
    // Absolute or relative: the id is the last path segment.
    let path = loc.split('?').next().unwrap_or(loc);
    let id = path.rsplit('/').next().unwrap_or_default();
    if id.is_empty() {
        return Err(ServiceError::Protocol {
            url: url.to_string(),
            message: format!("Operation-Location `{loc}` names no operation"),
        });
    }
    Ok(id.to_owned())
}

impl crate::error::ErrorCode for ServiceError {
    fn code(&self) -> String {
        match self {
            ServiceError::Api { error, .. } => error.code.clone(),
            _ => "service".into(),
        }
    }
}

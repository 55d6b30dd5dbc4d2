//! IoT Hub's service REST API, as far as device updates need it: device twins (read, patch the
//! tags with an ETag, query with continuation) and device identities (create, read, delete).
//! `otaforge serve` answers the same routes, so the client is tested against a real server.
//!
//! Spec: ../shared/specs/iothub-service/iothubservice.json (api-version [`API_VERSION`]).
//! Authentication: a SAS token signed by otaforge from a connection string's shared access
//! policy key ([`sas`]), renewed before it expires; the key never leaves this process.

pub mod adm;
pub mod condition;
pub mod config;
pub mod identity;
pub mod limits;
pub mod mqtt;
pub mod query;
pub mod registry;
pub mod sas;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use sas::SasKey;

/// The IoT Hub service api-version these calls follow.
pub const API_VERSION: &str = "2021-04-12";

/// The twin tag that puts a device in a Device Update group.
pub const GROUP_TAG: &str = "ADUGroup";

/// How long the SAS tokens otaforge signs for its own requests are valid.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Why an IoT Hub call failed.
#[derive(Debug, thiserror::Error)]
pub enum IotHubError {
    /// A connection string or setting is malformed.
    #[error("{0}")]
    Config(String),
    /// The hub refused the credential, or a token is not valid.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The hub answered with an error.
    #[error("{operation}: {status} {code}: {message}")]
    Api {
        /// What otaforge was doing.
        operation: String,
        /// HTTP status.
        status: u16,
        /// The hub's error code (e.g. `DeviceNotFound`, `PreconditionFailed`).
        code: String,
        /// Its message.
        message: String,
    },
    /// The request did not reach the hub.
    #[error("{operation}: {message}")]
    Transport {
        /// What otaforge was doing.
        operation: String,
        /// The cause, in words.
        message: String,
    },
    /// An answer that is not what the API defines.
    #[error("{operation}: unexpected answer: {message}")]
    Protocol {
        /// What otaforge was doing.
        operation: String,
        /// What was wrong.
        message: String,
    },
}

/// A service connection string: `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`.
#[derive(Clone)]
pub struct ConnectionString {
    /// The hub's host name (`myhub.azure-devices.net`), or `host:port` of `otaforge serve`.
    pub host: String,
    /// The shared access policy (`iothubowner`, `registryReadWrite`, …).
    pub key_name: String,
    key: SasKey,
    /// `http` for `otaforge serve` on loopback (`UseHttp=true` in the string), else `https`.
    pub scheme: &'static str,
    /// Where devices connect when not to `host` (`GatewayHostName`: an IoT Edge gateway, or
    /// `otaforge serve`'s MQTT endpoint as `host[:port]`, the port only when not 8883).
    pub gateway: Option<String>,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConnectionString(HostName={};SharedAccessKeyName={};SharedAccessKey=redacted)",
            self.host, self.key_name
        )
    }
}

impl std::str::FromStr for ConnectionString {
    type Err = IotHubError;
    fn from_str(s: &str) -> Result<Self, IotHubError> {
        let mut host = None;
        let mut key_name = None;
        let mut key = None;
        let mut http = false;
        let mut gateway = None;
        for part in s.trim().split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                IotHubError::Config(format!(
                    "connection string part `{}` is not key=value",
                    part.split('=').next().unwrap_or_default()
                ))
            })?;
            match k {
                "HostName" => host = Some(v.to_owned()),
                "SharedAccessKeyName" => key_name = Some(v.to_owned()),
                // The key's own `=` padding stays in the value.
                "SharedAccessKey" => key = Some(SasKey::from_base64(v)?),
                "UseHttp" => http = v.eq_ignore_ascii_case("true"),
                "GatewayHostName" => gateway = Some(v.to_owned()),
                "DeviceId" => {
                    return Err(IotHubError::Config(
                        "this is a device connection string; the service API needs the hub's \
                         (HostName, SharedAccessKeyName, SharedAccessKey), from the hub's shared \
                         access policies"
                            .into(),
                    ));
                }
                _ => {}
            }
        }
        let missing =
            |what: &str| IotHubError::Config(format!("the connection string has no {what}"));
        Ok(Self {
            host: host.ok_or_else(|| missing("HostName"))?,
            key_name: key_name.ok_or_else(|| missing("SharedAccessKeyName"))?,
            key: key.ok_or_else(|| missing("SharedAccessKey"))?,
            scheme: if http { "http" } else { "https" },
            gateway,
        })
    }
}

impl ConnectionString {
    /// A connection string for `host` signed with `key` under policy `key_name`.
    pub fn new(host: &str, key_name: &str, key: SasKey, use_http: bool) -> Self {
        Self {
            host: host.to_owned(),
            key_name: key_name.to_owned(),
            key,
            scheme: if use_http { "http" } else { "https" },
            gateway: None,
        }
    }

    /// The same string naming `gateway` (`host[:port]`) as where devices connect.
    pub fn with_gateway(mut self, gateway: Option<String>) -> Self {
        self.gateway = gateway;
        self
    }

    /// The hub's shared access key (a secret: for signing, never for output).
    pub fn key(&self) -> &SasKey {
        &self.key
    }

    /// The string itself, key included: for a file only this user can read, never for output.
    pub fn to_secret_string(&self) -> String {
        let mut s = format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host,
            self.key_name,
            self.key.to_base64()
        );
        if let Some(g) = &self.gateway {
            s.push_str(";GatewayHostName=");
            s.push_str(g);
        }
        if self.scheme == "http" {
            s.push_str(";UseHttp=true");
        }
        s
    }

    /// A SAS token for the whole hub, valid for `ttl`.
    pub fn token(&self, ttl: Duration) -> String {
        let expiry = SystemTime::now().checked_add(ttl).unwrap_or(SystemTime::now());
        let se = expiry.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        sas::token(&self.host, &self.key, Some(&self.key_name), se)
    }
}

/// Merges `patch` into `target` as JSON merge patch does (RFC 7396): `null` removes a key.
/// How IoT Hub applies a twin patch, on the hub and on the device.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let entry =
                    target.entry(k.clone()).or_insert_with(|| Value::Object(Default::default()));
                if !entry.is_object() {
                    *entry = Value::Object(Default::default());
                }
                if let Some(t) = entry.as_object_mut() {
                    merge_patch(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// The merge patch (RFC 7396) that turns `old` into `new`: removed keys as `null`, changed
/// values whole, objects compared member by member; empty when they are equal. What IoT
/// Hub tells a device when its desired properties change.
pub fn merge_patch_diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.insert(k.clone(), Value::Null);
    }
    for (k, v) in new {
        match (old.get(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => {
                let inner = merge_patch_diff(a, b);
                if !inner.is_empty() {
                    out.insert(k.clone(), Value::Object(inner));
                }
            }
            (Some(before), now) if before == now => {}
            (_, now) => {
                out.insert(k.clone(), now.clone());
            }
        }
    }
    out
}

/// Whether an `If-Match` value matches any ETag: `*`, or `"*"` as the service SDKs send it
/// (azure-iot-hub quotes every ETag it is given, the wildcard included).
pub fn if_match_any(value: &str) -> bool {
    value == "*" || value == "\"*\""
}

/// A device twin: the back end's `tags`, and `desired`/`reported` properties. Defined by IoT
/// Hub, so unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// The device.
    pub device_id: String,
    /// The module, for a module twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// ETag of tags and desired properties; `If-Match` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Version of tags and desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Tags (only the back end sees them).
    #[serde(default)]
    pub tags: Map<String, Value>,
    /// Desired and reported properties.
    #[serde(default)]
    pub properties: TwinProperties,
    /// A device twin's `capabilities` (`iotEdge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// IoT Hub's record, on a twin, of each configuration that targets it and its status
    /// (`Targeted` or `Applied`), by configuration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configurations: Option<std::collections::BTreeMap<String, ConfigurationStatus>>,
    /// Everything else the hub sends (status, connection state, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `properties` of a twin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinProperties {
    /// What the back end wants.
    #[serde(default)]
    pub desired: Map<String, Value>,
    /// What the device says.
    #[serde(default)]
    pub reported: Map<String, Value>,
}

impl Twin {
    /// The Device Update group the twin's `ADUGroup` tag names.
    pub fn group(&self) -> Option<&str> {
        self.tags.get(GROUP_TAG).and_then(Value::as_str)
    }

    /// Whether the twin is an IoT Edge device's (`capabilities.iotEdge`).
    pub fn is_edge(&self) -> bool {
        self.capabilities.is_some_and(|c| c.iot_edge)
    }

    /// The status of configuration `id` on this twin, when it targets it.
    pub fn configuration_status(&self, id: &str) -> Option<&str> {
        Some(self.configurations.as_ref()?.get(id)?.status.as_str())
    }
}

/// One configuration's entry in a twin's `configurations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigurationStatus {
    /// `Targeted` or `Applied`.
    pub status: String,
}

/// A device identity of the registry (`PUT`/`GET /devices/{id}`): its id, generation, status,
/// capabilities and credentials. It holds the device's keys: handle it as a secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    /// The device.
    pub device_id: String,
    /// Which identity of that id (a deleted and re-created device has another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// Its ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `enabled` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `Connected` or `Disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// `iotEdge`.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// How it authenticates.
    #[serde(default)]
    pub authentication: Authentication,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DeviceIdentity {
    /// The primary symmetric key, when the identity has one.
    pub fn primary_key(&self) -> Option<&str> {
        self.authentication.symmetric_key.as_ref()?.primary_key.as_deref()
    }
}

/// A device's `capabilities`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// An IoT Edge device (Edge deployments target only those).
    #[serde(default)]
    pub iot_edge: bool,
}

/// An identity's `authentication`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// `sas`, `selfSigned`, `certificateAuthority`, `none`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The symmetric keys of a `sas` identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKey>,
    /// Fields this version does not know (`x509Thumbprint`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The two keys of a `sas` identity (base64).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// The primary key.
    pub primary_key: Option<String>,
    /// The secondary key.
    pub secondary_key: Option<String>,
}

/// Checks an `ADUGroup` value as ADU does: 1-200 characters of letters, digits and `. - _ ~`,
/// not `Uncategorized` or `$default` (reserved).
pub fn check_group_id(g: &str) -> Result<(), IotHubError> {
    let ok = (1..=200).contains(&g.chars().count())
        && g.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~'));
    if !ok {
        return Err(IotHubError::Config(format!(
            "group `{g}` is invalid: 1-200 characters of letters, digits and . - _ ~"
        )));
    }
    if g == "Uncategorized" || g == "$default" {
        return Err(IotHubError::Config(format!("group `{g}` is reserved by Device Update")));
    }
    Ok(())
}

/// The OAuth scope of IoT Hub's service APIs (Microsoft Entra ID, with an IoT Hub data
/// role such as "IoT Hub Registry Contributor" and "IoT Hub Twin Contributor").
pub const ENTRA_SCOPE: &str = "https://iothubs.azure.net/.default";

/// How the client authenticates.
#[derive(Clone)]
enum HubAuth {
    /// A SAS token signed by otaforge with the connection string's key.
    Sas(ConnectionString),
    /// A Microsoft Entra ID bearer token.
    Entra(std::sync::Arc<dyn azure_core::credentials::TokenCredential>),
}

/// The IoT Hub service client.
#[derive(Clone)]
pub struct IotHubClient {
    host: String,
    scheme: &'static str,
    auth: HubAuth,
    http: reqwest::Client,
    /// The total deadline of one call, the answer's body included.
    deadline: Duration,
}

impl std::fmt::Debug for IotHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            HubAuth::Sas(_) => "SAS",
            HubAuth::Entra(_) => "Entra",
        };
        write!(f, "IotHubClient({}://{}, {auth})", self.scheme, self.host)
    }
}

fn http_client() -> Result<reqwest::Client, IotHubError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| IotHubError::Config(format!("http client: {e}")))
}

impl IotHubClient {
    /// A client for the hub a connection string names (SAS tokens signed with its key).
    pub fn new(conn: ConnectionString) -> Result<Self, IotHubError> {
        Ok(Self {
            host: conn.host.clone(),
            scheme: conn.scheme,
            auth: HubAuth::Sas(conn),
            http: http_client()?,
            deadline: crate::retry::DEFAULT_CALL_DEADLINE,
        })
    }

    /// A client for `host` (`myhub.azure-devices.net`) authenticated with Microsoft Entra ID
    /// ([`ENTRA_SCOPE`]); HTTPS, except for `http://HOST:PORT` (`otaforge serve` on its
    /// loopback listener, which takes its `--token` as the bearer token).
    pub fn with_entra(
        host: &str,
        credential: std::sync::Arc<dyn azure_core::credentials::TokenCredential>,
    ) -> Result<Self, IotHubError> {
        let (scheme, rest) = match host.strip_prefix("http://") {
            Some(r) => ("http", r),
            None => ("https", host.trim_start_matches("https://")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(IotHubError::Config(format!(
                "`{host}` is not an IoT Hub host name (like myhub.azure-devices.net)"
            )));
        }
        Ok(Self {
            host: rest.to_owned(),
            scheme,
            auth: HubAuth::Entra(credential),
            http: http_client()?,
            deadline: crate::retry::DEFAULT_CALL_DEADLINE,
        })
    }

    /// The same client with another total deadline per call
    /// ([`crate::retry::DEFAULT_CALL_DEADLINE`] unless set).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// A request that did not get through: the deadline's message when the call ran out of
    /// time, else the cause, naming the host.
    fn transport(&self, operation: &str, e: &reqwest::Error) -> IotHubError {
        let message = if e.is_timeout() {
            crate::retry::deadline_exceeded(&self.host, self.deadline)
        } else {
            crate::retry::TransportCause::of(e).describe(&self.host)
        };
        IotHubError::Transport { operation: operation.to_owned(), message }
    }

    /// The `Authorization` header value of a request.
    async fn authorization(&self, operation: &str) -> Result<String, IotHubError> {
        match &self.auth {
            HubAuth::Sas(conn) => Ok(conn.token(TOKEN_TTL)),
            HubAuth::Entra(c) => {
                let t = c.get_token(&[ENTRA_SCOPE], None).await.map_err(|e| {
                    IotHubError::Unauthorized(format!("{operation}: Entra ID token: {e}"))
                })?;
                Ok(format!("Bearer {}", t.token.secret()))
            }
        }
    }

    fn url(&self, path: &str) -> Result<url::Url, IotHubError> {
        let mut u = url::Url::parse(&format!("{}://{}", self.scheme, self.host))
            .map_err(|e| IotHubError::Config(format!("host `{}`: {e}", self.host)))?;
        u.set_path(path);
        u.query_pairs_mut().append_pair("api-version", API_VERSION);
        Ok(u)
    }

    async fn send(
        &self,
        operation: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, IotHubError> {
        self.send_within(operation, req, self.deadline).await
    }

    /// [`IotHubClient::send`] with its own deadline (a call the hub holds on purpose, such
    /// as a direct method or a long-poll, may take longer than the usual deadline).
    async fn send_within(
        &self,
        operation: &str,
        req: reqwest::RequestBuilder,
        deadline: Duration,
    ) -> Result<reqwest::Response, IotHubError> {
        // One deadline for the whole call: connecting, the answer and its body (read in
        // `json`), so a hub that accepts the connection and never answers fails in time.
        let resp = req
            .header(reqwest::header::AUTHORIZATION, self.authorization(operation).await?)
            .timeout(deadline.max(self.deadline))
            .send()
            .await
            .map_err(|e| self.transport(operation, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let header_code =
            resp.headers().get("iothub-errorcode").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = resp.bytes().await.unwrap_or_default();
        /// The hub's errors are `{"Message": "ErrorCode:X;text", "ExceptionMessage": …}` (some
        /// answers spell it `message`); serve's are the same, plus `iothub-errorcode`.
        #[derive(Default, Deserialize)]
        struct HubErrorBody {
            #[serde(rename = "Message", alias = "message", default)]
            message: String,
        }
        let body: HubErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = body.message.as_str();
        let code = header_code
            .or_else(|| {
                message
                    .strip_prefix("ErrorCode:")
                    .and_then(|m| m.split(';').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("Http{status}"));
        let message = message.split_once(';').map_or(message, |(_, m)| m).to_owned();
        if status == 401 {
            return Err(IotHubError::Unauthorized(format!("{operation}: {message}")));
        }
        Err(IotHubError::Api { operation: operation.to_owned(), status, code, message })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        operation: &str,
        resp: reqwest::Response,
    ) -> Result<T, IotHubError> {
        let protocol =
            |message: String| IotHubError::Protocol { operation: operation.to_owned(), message };
        let bytes = resp.bytes().await.map_err(|e| {
            if e.is_timeout() { self.transport(operation, &e) } else { protocol(e.to_string()) }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| protocol(e.to_string()))
    }

    /// One device's twin.
    pub async fn get_twin(&self, device_id: &str) -> Result<Twin, IotHubError> {
        let op = format!("get the twin of {device_id}");
        let url = self.url(&format!("/twins/{}", encode(device_id)))?;
        let resp = self.send(&op, self.http.get(url)).await?;
        self.json(&op, resp).await
    }

    /// Merges `tags` into a twin's tags (a `null` value removes a tag). With `etag`, the hub
    /// refuses the patch if the twin changed since it was read (412 `PreconditionFailed`).
    pub async fn patch_tags(
        &self,
        device_id: &str,
        tags: Map<String, Value>,
        etag: Option<&str>,
    ) -> Result<Twin, IotHubError> {
        let op = format!("tag the twin of {device_id}");
        let url = self.url(&format!("/twins/{}", encode(device_id)))?;
        let mut req = json_body(self.http.patch(url), &serde_json::json!({ "tags": tags }));
        req = req.header(reqwest::header::IF_MATCH, etag.unwrap_or("*"));
        let resp = self.send(&op, req).await?;
        self.json(&op, resp).await
    }

    /// Merges `desired` into a twin's desired properties (a `null` value removes one); `etag`
    /// as for [`IotHubClient::patch_tags`].
    pub async fn patch_desired(
        &self,
        device_id: &str,
        desired: Map<String, Value>,
        etag: Option<&str>,
    ) -> Result<Twin, IotHubError> {
        let op = format!("set desired properties of {device_id}");
        let url = self.url(&format!("/twins/{}", encode(device_id)))?;
        let body = serde_json::json!({ "properties": { "desired": desired } });
        let req = json_body(self.http.patch(url), &body)
            .header(reqwest::header::IF_MATCH, etag.unwrap_or("*"));
        let resp = self.send(&op, req).await?;
        self.json(&op, resp).await
    }

    /// Every twin a query (`SELECT * FROM devices WHERE …`) returns, following
    /// `x-ms-continuation` through every page.
    pub async fn query_twins(&self, query: &str) -> Result<Vec<Twin>, IotHubError> {
        self.query_twins_by(query, 100).await
    }

    /// [`IotHubClient::query_twins`] asking for pages of `page_size` twins.
    pub async fn query_twins_by(
        &self,
        query: &str,
        page_size: usize,
    ) -> Result<Vec<Twin>, IotHubError> {
        let op = "query twins".to_owned();
        let mut out = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let url = self.url("/devices/query")?;
            let mut req = json_body(self.http.post(url), &serde_json::json!({ "query": query }));
            if let Some(c) = &continuation {
                req = req.header("x-ms-continuation", c);
            }
            req = req.header("x-ms-max-item-count", page_size.to_string());
            let resp = self.send(&op, req).await?;
            continuation = resp
                .headers()
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            let page: Vec<Twin> = self.json(&op, resp).await?;
            out.extend(page);
            if continuation.is_none() {
                return Ok(out);
            }
        }
    }

    /// A device identity (with its keys: handle as a secret).
    pub async fn get_device(&self, device_id: &str) -> Result<DeviceIdentity, IotHubError> {
        let op = format!("read device {device_id}");
        let url = self.url(&format!("/devices/{}", encode(device_id)))?;
        let resp = self.send(&op, self.http.get(url)).await?;
        self.json(&op, resp).await
    }

    /// Creates a device identity with generated symmetric keys (409 when it exists).
    pub async fn create_device(&self, device_id: &str) -> Result<DeviceIdentity, IotHubError> {
        self.create_device_as(device_id, false).await
    }

    /// [`IotHubClient::create_device`], as an IoT Edge device when `iot_edge`
    /// (`capabilities.iotEdge`: Edge deployments target only those).
    pub async fn create_device_as(
        &self,
        device_id: &str,
        iot_edge: bool,
    ) -> Result<DeviceIdentity, IotHubError> {
        let op = format!("create device {device_id}");
        let url = self.url(&format!("/devices/{}", encode(device_id)))?;
        let identity = DeviceIdentity {
            device_id: device_id.to_owned(),
            capabilities: Capabilities { iot_edge },
            authentication: Authentication {
                kind: Some("sas".into()),
                symmetric_key: Some(SymmetricKey::default()),
                extra: Map::new(),
            },
            ..DeviceIdentity::default()
        };
        let body =
            serde_json::to_value(&identity).map_err(|e| IotHubError::Config(e.to_string()))?;
        let resp = self.send(&op, json_body(self.http.put(url), &body)).await?;
        self.json(&op, resp).await
    }
}

/// A request with a JSON body.
fn json_body(req: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string())
}

/// The id under which a related file's URL is in a twin's `fileUrls`: `r` and 20 hex digits
/// of the SHA-256 of its base64 digest (serve's; ADU's own ids are opaque).
pub fn related_file_id(sha256_b64: &str) -> String {
    let digest = crate::Sha256::digest(sha256_b64.as_bytes());
    format!("r{}", &digest.to_hex()[..20])
}

/// A device id as one path segment.
fn encode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

impl crate::error::ErrorCode for IotHubError {
    fn code(&self) -> String {
        match self {
            IotHubError::Api { code, .. } => code.clone(),
            IotHubError::Unauthorized(_) => "unauthorized".into(),
            IotHubError::Config(_) => "invalidValue".into(),
            IotHubError::Transport { .. } | IotHubError::Protocol { .. } => "iothub".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Small twin sections: nested objects of numbers and strings (twins hold no nulls).
    fn section() -> impl Strategy<Value = Map<String, Value>> {
        let leaf =
            prop_oneof![any::<i8>().prop_map(Value::from), "[ab]{0,2}".prop_map(Value::from)];
        let value = leaf.prop_recursive(3, 16, 3, |inner| {
            prop::collection::btree_map("[abc]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        prop::collection::btree_map("[abcd]", value, 0..4).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// The diff applied to the old section gives the new one, whatever they hold.
        #[test]
        fn a_diff_applied_as_a_merge_patch_gives_the_new_section(old in section(), new in section()) {
            let mut patched = old.clone();
            merge_patch(&mut patched, &merge_patch_diff(&old, &new));
            prop_assert_eq!(patched, new);
        }
    }

    #[test]
    fn a_diff_removes_replaces_and_keeps() {
        let old = serde_json::json!({"a": 1, "b": {"x": 1, "y": 2}, "c": "same"});
        let new = serde_json::json!({"b": {"x": 1, "z": 3}, "c": "same", "d": [1]});
        let diff = merge_patch_diff(old.as_object().unwrap(), new.as_object().unwrap());
        assert_eq!(
            Value::Object(diff),
            serde_json::json!({"a": null, "b": {"y": null, "z": 3}, "d": [1]})
        );
        assert!(merge_patch_diff(new.as_object().unwrap(), new.as_object().unwrap()).is_empty());
    }
}

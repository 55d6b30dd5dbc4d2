//! IoT Hub configurations: IoT Edge deployments (`content.modulesContent`) and automatic device
//! management, with their target condition, priority, labels and metrics (edge.md §3.1). The
//! content is immutable once created; labels, metrics, priority and the target condition may
//! change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{IotHubClient, IotHubError, encode, json_body};

/// Custom metrics a configuration may have.
pub const MAX_CUSTOM_METRICS: usize = 5;

/// A configuration as the hub has it (fields otaforge does not know are kept).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// Its id (lower case, at most 128 characters; see [`check_id`]).
    pub id: String,
    /// `"2.0"` when az CLI creates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `{"modulesContent": …}` for an Edge deployment.
    #[serde(default)]
    pub content: Map<String, Value>,
    /// The target condition (`*`, empty, or a twin-query condition).
    #[serde(default)]
    pub target_condition: String,
    /// Higher wins.
    #[serde(default)]
    pub priority: i64,
    /// Set by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time_utc: Option<String>,
    /// Set by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time_utc: Option<String>,
    /// The hub's own metrics (targeted, applied, reported successful and failed).
    #[serde(default)]
    pub system_metrics: Metrics,
    /// Custom metrics.
    #[serde(default)]
    pub metrics: Metrics,
    /// Its ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Metric queries and their results (device counts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Name → query.
    #[serde(default)]
    pub queries: BTreeMap<String, String>,
    /// Name → count.
    #[serde(default)]
    pub results: BTreeMap<String, i64>,
}

impl Configuration {
    /// An Edge deployment (its content has `modulesContent`).
    pub fn is_edge(&self) -> bool {
        self.content.contains_key("modulesContent")
    }

    /// An Edge deployment's `modulesContent` (module id → its twin content; the user's).
    pub fn modules_content(&self) -> Option<&Map<String, Value>> {
        self.content.get("modulesContent")?.as_object()
    }

    /// The system metric queries IoT Hub generates for an Edge deployment, word for word
    /// (edge.md §3.7): `targetedCount` (empty for an empty target condition),
    /// `appliedCount`, `reportedSuccessfulCount` and `reportedFailedCount`.
    /// For an ADM configuration (`deviceContent`), the two IoT Hub generates for it:
    /// `targetedCount` over device twins and `appliedCount` by the twins' `configurations`.
    pub fn system_queries(&self) -> BTreeMap<String, String> {
        if !self.is_edge() {
            let targeted = match self.target_condition.trim() {
                "" => String::new(),
                "*" => "select deviceId from devices".to_owned(),
                t => format!("select deviceId from devices where {t}"),
            };
            let applied = format!(
                "select deviceId from devices where configurations.[[{}]].status = 'Applied'",
                self.id
            );
            return [("targetedCount".to_owned(), targeted), ("appliedCount".to_owned(), applied)]
                .into_iter()
                .collect();
        }
        let targeted = match self.target_condition.trim() {
            "" => String::new(),
            "*" => "select deviceId from devices where capabilities.iotEdge = true".to_owned(),
            t => format!("select deviceId from devices where capabilities.iotEdge = true and {t}"),
        };
        let applied = format!(
            "select deviceId from devices.modules where moduleId = '$edgeAgent' and configurations.[[{}]].status = 'Applied'",
            self.id
        );
        let reported = format!(
            "{applied} and properties.desired.$version = properties.reported.lastDesiredVersion and properties.reported.lastDesiredStatus.code"
        );
        [
            ("targetedCount", targeted),
            ("appliedCount", applied.clone()),
            ("reportedSuccessfulCount", format!("{reported} = 200")),
            ("reportedFailedCount", format!("{reported} != 200")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Which devices each metric of a configuration counts, by metric name: `targetedCount` (the
/// target condition, for an Edge deployment on IoT Edge devices only), the other system
/// metrics by the exact queries IoT Hub generates ([`Configuration::system_queries`], over
/// the module twins), and each custom metric by its query over device or module twins. serve
/// counts these for `GET /configurations`; `otaforge edge deploy status` lists them.
pub fn metric_devices(
    c: &Configuration,
    twins: &[super::Twin],
    modules: &[super::Twin],
) -> BTreeMap<String, Vec<String>> {
    let json = |ts: &[super::Twin]| -> Vec<(String, Value)> {
        ts.iter()
            .map(|t| (t.device_id.clone(), serde_json::to_value(t).unwrap_or(Value::Null)))
            .collect()
    };
    let (twin_docs, module_docs) = (json(twins), json(modules));
    let mut out = BTreeMap::new();
    if let Ok(target) = crate::iothub::condition::Target::parse(&c.target_condition) {
        let targeted = twins
            .iter()
            .zip(&twin_docs)
            .filter(|(t, (_, doc))| (!c.is_edge() || t.is_edge()) && target.matches(doc))
            .map(|(t, _)| t.device_id.clone())
            .collect();
        out.insert("targetedCount".to_owned(), targeted);
    }
    let system = c.system_queries();
    let queries = system
        .iter()
        .filter(|(name, _)| name.as_str() != "targetedCount")
        .chain(&c.metrics.queries);
    for (name, q) in queries {
        let Ok((cond, on_modules)) = super::query::metric_condition(q) else { continue };
        let rows = if on_modules { &module_docs } else { &twin_docs };
        let ids = rows.iter().filter(|(_, doc)| cond.matches(doc)).map(|(id, _)| id.clone());
        out.insert(name.clone(), ids.collect());
    }
    out
}

/// A configuration id as IoT Hub and az CLI take it: 1-128 of lower-case letters, digits and
/// `- : + % _ # * ? ! ( ) , = @ ; '` (edge.md §3.2; az CLI lower-cases silently, otaforge
/// refuses instead, so the id you write is the id you get).
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&id.chars().count())
        && id.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || "-:+%_#*?!(),=@;'".contains(c)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "configuration id `{id}` must be 1-128 lower-case letters, digits and - : + % _ # * ? ! ( ) , = @ ; '"
        ))
    }
}

impl IotHubClient {
    /// Creates a configuration, or replaces one (`etag`: only if it is still that version;
    /// none: create only).
    pub async fn put_configuration(
        &self,
        c: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration, IotHubError> {
        check_id(&c.id).map_err(IotHubError::Config)?;
        let op = format!("put configuration {}", c.id);
        let url = self.url(&format!("/configurations/{}", encode(&c.id)))?;
        let body = serde_json::to_value(c).map_err(|e| IotHubError::Config(e.to_string()))?;
        let mut req = json_body(self.http.put(url), &body);
        if let Some(e) = etag {
            req = req.header(reqwest::header::IF_MATCH, e);
        }
        let resp = self.send(&op, req).await?;
        self.json(&op, resp).await
    }

    /// One configuration, with its metrics.
    pub async fn get_configuration(&self, id: &str) -> Result<Configuration, IotHubError> {
        let op = format!("get configuration {id}");
        let url = self.url(&format!("/configurations/{}", encode(id)))?;
        let resp = self.send(&op, self.http.get(url)).await?;
        self.json(&op, resp).await
    }

    /// Up to `top` configurations (the hub does not page them).
    pub async fn list_configurations(&self, top: usize) -> Result<Vec<Configuration>, IotHubError> {
        let op = "list configurations".to_owned();
        let mut url = self.url("/configurations")?;
        url.query_pairs_mut().append_pair("top", &top.to_string());
        let resp = self.send(&op, self.http.get(url)).await?;
        self.json(&op, resp).await
    }

    /// `applyConfigurationContent` (`az iot edge set-modules`): the whole desired state of a
    /// device's modules, written at once (`content` is the `modulesContent` object). At-scale
    /// deployments replace it when the device's deployments change.
    pub async fn apply_configuration_content(
        &self,
        device_id: &str,
        modules_content: &serde_json::Value,
    ) -> Result<(), IotHubError> {
        let op = format!("set the modules of {device_id}");
        let url = self.url(&format!("/devices/{}/applyConfigurationContent", encode(device_id)))?;
        let body = serde_json::json!({ "modulesContent": modules_content });
        self.send(&op, json_body(self.http.post(url), &body)).await.map(drop)
    }

    /// One module twin (`$edgeAgent`, `$edgeHub` or a user module).
    pub async fn get_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<super::Twin, IotHubError> {
        let op = format!("get the {module_id} twin of {device_id}");
        let url =
            self.url(&format!("/twins/{}/modules/{}", encode(device_id), encode(module_id)))?;
        let resp = self.send(&op, self.http.get(url)).await?;
        self.json(&op, resp).await
    }

    /// Deletes a configuration (`etag`: only if it is still that version).
    pub async fn delete_configuration(
        &self,
        id: &str,
        etag: Option<&str>,
    ) -> Result<(), IotHubError> {
        let op = format!("delete configuration {id}");
        let url = self.url(&format!("/configurations/{}", encode(id)))?;
        let req = self.http.delete(url).header(reqwest::header::IF_MATCH, etag.unwrap_or("*"));
        self.send(&op, req).await.map(drop)
    }

    /// The hub's syntax check of a target condition and metric queries:
    /// `{targetConditionError, customMetricQueryErrors}`.
    pub async fn test_queries(
        &self,
        target_condition: &str,
        metrics: &BTreeMap<String, String>,
    ) -> Result<Value, IotHubError> {
        let op = "test queries".to_owned();
        let url = self.url("/configurations/testQueries")?;
        let body = serde_json::json!({
            "targetCondition": target_condition, "customMetricQueries": metrics,
        });
        let resp = self.send(&op, json_body(self.http.post(url), &body)).await?;
        self.json(&op, resp).await
    }
}

/// A deployment's status on one device, as IoT Hub writes it into the `$edgeAgent` module
/// twin's `configurations.[[id]].status` (and counts it in `appliedCount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// It applies: its content is (part of) the device's desired state.
    Applied,
    /// It targets the device but does not apply (a lower base, a layer without a base or not
    /// above it, or a layer that adds nothing).
    Targeted,
}

impl Status {
    /// As IoT Hub writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "Applied",
            Self::Targeted => "Targeted",
        }
    }
}

/// IoT Hub's order of configurations that compete for a device (Edge bases, and ADM
/// configurations for a path), the winner first: the higher priority; on equal priority the
/// more recently created; on equal creation time the smaller id (IoT Hub does not say;
/// otaforge's choice, so results are reproducible). Each is `(priority, created, id)`.
pub fn precedence(a: (i64, &str, &str), b: (i64, &str, &str)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1)).then_with(|| a.2.cmp(b.2))
}

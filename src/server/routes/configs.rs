//! serve's IoT Hub configurations (Edge deployments and automatic device management): the REST
//! routes of the IoT Hub service API (`/configurations/...`), stored in SQLite; which
//! deployment applies to which device is `edge::assign`'s, what an automatic configuration
//! sets on which twin `iothub::adm`'s, and metrics are counted over the twins when a
//! configuration is read.
//!
//! System metrics carry the exact queries IoT Hub generates (edge.md §3.7), and are counted
//! with them over the `$edgeAgent` module twins (which the Edge deployment pass of
//! `server::modules` writes, and devices report to); `targetedCount` is the target condition
//! on IoT Edge devices. Custom metrics (`SELECT deviceId FROM devices[.modules] WHERE …`) are
//! counted over device or module twins.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::hub::{if_match, json_body};
use crate::iothub::condition::Target;
use crate::iothub::config::{Configuration, MAX_CUSTOM_METRICS, check_id, metric_devices};
use crate::iothub::limits::{self, MAX_CONFIGURATIONS};
use crate::iothub::query::metric_condition;
use crate::server::Shared;
use crate::server::auth::ServiceAuth;
use crate::server::error::ApiError;
use crate::server::store::Refusal;

pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/configurations", get(list))
        .route("/configurations/testQueries", post(test_queries))
        .route("/configurations/{id}", get(get_one).put(put).delete(delete))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ArgumentInvalid", message)
}

/// A configuration with its `ETag` header.
fn with_etag(c: Configuration) -> Response {
    let etag = c.etag.clone();
    let mut r = axum::Json(c).into_response();
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Fills the metric results of `configs` from the twins ([`metric_devices`]): the system
/// metrics by IoT Hub's own queries over the `$edgeAgent` module twins the Edge pass wrote and
/// the devices reported to, and each custom metric by its query.
pub(super) async fn with_metrics(
    s: &Shared,
    mut configs: Vec<Configuration>,
) -> Result<Vec<Configuration>, ApiError> {
    let twins = s.db.read(|st| st.full_twins()).await?;
    let reads_modules = configs
        .iter()
        .any(|c| c.metrics.queries.values().any(|q| matches!(metric_condition(q), Ok((_, true)))));
    let modules = if reads_modules {
        s.db.read(|st| st.module_twins(None)).await?
    } else if configs.iter().any(Configuration::is_edge) {
        s.db.read(|st| st.module_twins(Some("$edgeAgent"))).await?
    } else {
        Vec::new()
    };
    for c in &mut configs {
        let counts = metric_devices(c, &twins, &modules);
        c.system_metrics.queries = c.system_queries();
        c.system_metrics.results.clear();
        c.metrics.results.clear();
        for (name, ids) in counts {
            let n = i64::try_from(ids.len()).unwrap_or(i64::MAX);
            if c.metrics.queries.contains_key(&name) {
                c.metrics.results.insert(name, n);
            } else {
                c.system_metrics.results.insert(name, n);
            }
        }
    }
    Ok(configs)
}

async fn get_one(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found =
        s.db.read(move |st| st.configuration(&id)).await?.ok_or(Refusal::NoConfiguration)?;
    let mut v = with_metrics(&s, vec![found]).await?;
    Ok(with_etag(v.remove(0)))
}

#[derive(serde::Deserialize)]
struct Top {
    top: Option<usize>,
}

async fn list(
    _: ServiceAuth,
    State(s): State<Shared>,
    Query(q): Query<Top>,
) -> Result<Response, ApiError> {
    let all = s.db.read(|st| st.configurations()).await?;
    let top = q.top.unwrap_or(MAX_CONFIGURATIONS).min(MAX_CONFIGURATIONS);
    let configs = with_metrics(&s, all.into_iter().take(top).collect()).await?;
    Ok(axum::Json(configs).into_response())
}

/// Why `modulesContent` is not a valid deployment of `kind` (its first five errors, with their
/// paths), or `None`.
pub(super) fn invalid_content(mc: &Value, kind: crate::edge::manifest::Kind) -> Option<String> {
    let doc = json!({"modulesContent": mc}).to_string();
    match crate::edge::manifest::validate(doc.as_bytes(), kind) {
        Err(e) => Some(e.to_string()),
        Ok(findings) if findings.has_errors() => {
            let first: Vec<String> = findings
                .iter()
                .filter(|f| f.severity == crate::finding::Severity::Error)
                .take(5)
                .map(ToString::to_string)
                .collect();
            Some(first.join("; "))
        }
        Ok(_) => None,
    }
}

/// What IoT Hub refuses in a configuration before storing it.
fn check(c: &Configuration, path_id: &str) -> Result<(), ApiError> {
    check_id(path_id).map_err(bad)?;
    if c.id != path_id {
        return Err(bad(format!("the body's id `{}` is not the path's `{path_id}`", c.id)));
    }
    Target::parse(&c.target_condition)
        .map_err(|e| bad(format!("targetCondition: position {}: {}", e.position, e.message)))?;
    if c.metrics.queries.len() > MAX_CUSTOM_METRICS {
        return Err(bad(format!(
            "{} custom metrics; a configuration has at most {MAX_CUSTOM_METRICS}",
            c.metrics.queries.len()
        )));
    }
    for (name, q) in &c.metrics.queries {
        metric_condition(q).map_err(|e| bad(format!("metric `{name}`: {e}")))?;
    }
    check_sizes(c).map_err(bad)?;
    if c.content.contains_key("modulesContent") && c.content.contains_key("deviceContent") {
        return Err(bad("a configuration has modulesContent or deviceContent, not both"));
    }
    if c.content.contains_key("moduleContent") {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "serve applies deviceContent (device twins) and modulesContent (IoT Edge), not moduleContent",
        ));
    }
    // Device content: paths below properties.desired (`iothub::adm`).
    crate::iothub::adm::DeviceConfiguration::from_configuration(c)
        .map_err(|e| bad(e.to_string()))?;
    if let Some(mc) = c.content.get("modulesContent") {
        let layered = mc
            .get("$edgeAgent")
            .and_then(Value::as_object)
            .is_some_and(|a| !a.contains_key("properties.desired"));
        let kind = if layered {
            crate::edge::manifest::Kind::Layered
        } else {
            crate::edge::manifest::Kind::Base
        };
        if let Some(why) = invalid_content(mc, kind) {
            return Err(bad(format!("content: {why}")));
        }
    }
    Ok(())
}

/// Labels and device content within IoT Hub's twin limits. Device content becomes desired
/// properties, so it keeps their rules and their 32 KB; IoT Hub documents no limit for labels,
/// so serve holds them to the rules and 8 KB of tags, which no real label set comes near.
fn check_sizes(c: &Configuration) -> Result<(), String> {
    let labels: serde_json::Map<String, Value> =
        c.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let labels_path = crate::finding::JsonPath::root().key("labels");
    if let Some(e) = limits::violations(&Value::Object(labels.clone()), &labels_path, 1).first() {
        return Err(e.to_string());
    }
    if limits::size(&labels) > limits::MAX_TAGS_BYTES {
        return Err(format!(
            "labels are {} bytes; serve keeps at most 8 KB of labels, as of tags",
            limits::size(&labels)
        ));
    }
    if let Some(dc) = c.content.get("deviceContent") {
        let path = crate::finding::JsonPath::root().key("content").key("deviceContent");
        let Some(dc) = dc.as_object() else {
            return Err("content.deviceContent must be an object".into());
        };
        for (k, v) in dc {
            if let Some(e) = limits::violations(v, &path.key(k), 2).first() {
                return Err(e.to_string());
            }
        }
        if limits::size(dc) > limits::MAX_PROPERTIES_BYTES {
            return Err(format!(
                "content.deviceContent is {} bytes; desired properties hold at most 32 KB",
                limits::size(dc)
            ));
        }
    }
    Ok(())
}

async fn put(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let c: Configuration = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("the body is not a configuration: {e}")))?;
    check(&c, &id)?;
    let if_match = if_match(&headers);
    let now = crate::server::now_string();
    let stored =
        s.db.call(move |st| st.put_configuration(c, if_match.as_deref(), &now, MAX_CONFIGURATIONS))
            .await??;
    s.edge_changed.notify_one();
    Ok(with_etag(stored))
}

async fn delete(
    _: ServiceAuth,
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let if_match = if_match(&headers);
    s.db.call(move |st| st.delete_configuration(&id, if_match.as_deref())).await??;
    s.edge_changed.notify_one();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /configurations/testQueries`: the hub's syntax check of a target condition and
/// metric queries.
async fn test_queries(
    _: ServiceAuth,
    State(_): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TestQueries {
        #[serde(default)]
        target_condition: String,
        #[serde(default)]
        custom_metric_queries: serde_json::Map<String, Value>,
    }
    let b: TestQueries = serde_json::from_value(json_body(&body)?).map_err(|e| {
        bad(format!("the body is not {{targetCondition, customMetricQueries}}: {e}"))
    })?;
    let target_error = Target::parse(&b.target_condition)
        .err()
        .map(|e| format!("position {}: {}", e.position, e.message))
        .unwrap_or_default();
    let mut metric_errors = serde_json::Map::new();
    for (name, q) in &b.custom_metric_queries {
        let err = match q.as_str() {
            Some(q) => metric_condition(q).err().unwrap_or_default(),
            None => "a metric query is a string".into(),
        };
        metric_errors.insert(name.clone(), Value::String(err));
    }
    Ok(axum::Json(
        json!({"targetConditionError": target_error, "customMetricQueryErrors": metric_errors}),
    )
    .into_response())
}

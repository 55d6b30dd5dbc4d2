//! serve's IoT Hub configurations (Edge deployments): the REST routes of the IoT Hub service API
//! (`/configurations/...`), stored in SQLite; which deployment applies to which device is
//! `edge::assign`'s, metrics are counted over the twins when a configuration is read.
//!
//! System metrics carry the exact queries IoT Hub generates (edge.md §3.7), and are counted
//! with them over the `$edgeAgent` module twins (which the Edge deployment pass of
//! `server::modules` writes, and devices report to); `targetedCount` is the target condition
//! on IoT Edge devices. Custom metrics (`SELECT deviceId FROM devices[.modules] WHERE …`) are
//! counted over device or module twins.

// Errors here are HTTP answers built once on the failure path.
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Shared;
use super::hub::{hub_error, service_auth};
use super::store::ConfigPut;
use crate::edge::condition::Target;
use crate::iothub::config::{Configuration, MAX_CUSTOM_METRICS, check_id};
use crate::iothub::limits::{self, MAX_CONFIGURATIONS};
use crate::iothub::query::metric_condition;

pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/configurations", get(list))
        .route("/configurations/testQueries", post(test_queries))
        .route("/configurations/{id}", get(get_one).put(put).delete(delete))
}

fn bad(message: impl Into<String>) -> Response {
    hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", message)
}

fn internal(e: impl std::fmt::Display) -> Response {
    hub_error(StatusCode::INTERNAL_SERVER_ERROR, "ServerError", e.to_string())
}

fn etag_header(r: &mut Response, etag: Option<&str>) {
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

/// Fills the metric results of `configs` from the twins: each system metric by its own
/// query (targeting is the target condition on IoT Edge devices; the others read the
/// `$edgeAgent` module twins the Edge deployment pass wrote and the devices reported to), and
/// each custom metric by its query over device or module twins.
async fn with_metrics(
    s: &Shared,
    mut configs: Vec<Configuration>,
) -> Result<Vec<Configuration>, Response> {
    let to_values = |twins: Vec<crate::iothub::Twin>| -> Vec<Value> {
        twins.iter().map(|t| serde_json::to_value(t).unwrap_or(Value::Null)).collect()
    };
    let twins = to_values(s.db.read(|st| st.full_twins()).await.map_err(internal)?);
    let reads_modules = configs
        .iter()
        .any(|c| c.metrics.queries.values().any(|q| matches!(metric_condition(q), Ok((_, true)))));
    let modules = if reads_modules {
        s.db.read(|st| st.module_twins(None)).await.map_err(internal)?
    } else if configs.iter().any(Configuration::is_edge) {
        s.db.read(|st| st.module_twins(Some("$edgeAgent"))).await.map_err(internal)?
    } else {
        Vec::new()
    };
    let modules = to_values(modules);
    let count = |query: &str| -> Option<i64> {
        let (cond, on_modules) = metric_condition(query).ok()?;
        let rows = if on_modules { &modules } else { &twins };
        Some(rows.iter().filter(|t| cond.matches(t)).count() as i64)
    };
    for c in &mut configs {
        c.system_metrics.queries = c.system_queries();
        c.system_metrics.results.clear();
        if let Ok(target) = Target::parse(&c.target_condition) {
            let edge = |t: &Value| t["capabilities"]["iotEdge"] == Value::Bool(true);
            let targeted = twins.iter().filter(|t| edge(t) && target.matches(t)).count();
            c.system_metrics.results.insert("targetedCount".into(), targeted as i64);
        }
        for name in ["appliedCount", "reportedSuccessfulCount", "reportedFailedCount"] {
            if let Some(n) = c.system_metrics.queries.get(name).and_then(|q| count(q)) {
                c.system_metrics.results.insert(name.into(), n);
            }
        }
        c.metrics.results.clear();
        for (name, q) in &c.metrics.queries {
            if let Some(n) = count(q) {
                c.metrics.results.insert(name.clone(), n);
            }
        }
    }
    Ok(configs)
}

async fn get_one(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let found = match s.db.read(move |st| st.configuration(&id)).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return hub_error(
                StatusCode::NOT_FOUND,
                "ConfigurationNotFound",
                "no such configuration",
            );
        }
        Err(e) => return internal(e),
    };
    match with_metrics(&s, vec![found]).await {
        Ok(mut v) => {
            let c = v.remove(0);
            let etag = c.etag.clone();
            let mut r = axum::Json(c).into_response();
            etag_header(&mut r, etag.as_deref());
            r
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct Top {
    top: Option<usize>,
}

async fn list(State(s): State<Shared>, headers: HeaderMap, Query(q): Query<Top>) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let all = match s.db.read(|st| st.configurations()).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let top = q.top.unwrap_or(MAX_CONFIGURATIONS).min(MAX_CONFIGURATIONS);
    match with_metrics(&s, all.into_iter().take(top).collect()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
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
fn check(c: &Configuration, path_id: &str) -> Result<(), Response> {
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
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let c: Configuration = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return bad(format!("the body is not a configuration: {e}")),
    };
    if let Err(r) = check(&c, &id) {
        return r;
    }
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let now = super::now_string();
    match s
        .db
        .call(move |st| st.put_configuration(c, if_match.as_deref(), &now, MAX_CONFIGURATIONS))
        .await
    {
        Ok(ConfigPut::Stored(c)) => {
            s.edge_changed.notify_one();
            let etag = c.etag.clone();
            let mut r = axum::Json(*c).into_response();
            etag_header(&mut r, etag.as_deref());
            r
        }
        Ok(ConfigPut::Stale) => hub_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "the configuration changed since it was read (If-Match names an older ETag)",
        ),
        Ok(ConfigPut::ContentChanged) => bad(
            "a configuration's content cannot change; create a new one (labels, metrics, priority and targetCondition may change)",
        ),
        Ok(ConfigPut::Full(n)) => hub_error(
            StatusCode::FORBIDDEN,
            "IotHubQuotaExceeded",
            format!("the hub holds {n} configurations, its most"),
        ),
        Err(e) => internal(e),
    }
}

async fn delete(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match s.db.call(move |st| st.delete_configuration(&id, if_match.as_deref())).await {
        Ok(Some(true)) => {
            s.edge_changed.notify_one();
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Some(false)) => hub_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "the configuration changed since it was read",
        ),
        Ok(None) => {
            hub_error(StatusCode::NOT_FOUND, "ConfigurationNotFound", "no such configuration")
        }
        Err(e) => internal(e),
    }
}

async fn test_queries(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = service_auth(&s, &headers) {
        return r;
    }
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body is not JSON");
    };
    let tc = b["targetCondition"].as_str().unwrap_or_default();
    let target_error = Target::parse(tc)
        .err()
        .map(|e| format!("position {}: {}", e.position, e.message))
        .unwrap_or_default();
    let mut metric_errors = serde_json::Map::new();
    for (name, q) in b["customMetricQueries"].as_object().into_iter().flatten() {
        let err = match q.as_str() {
            Some(q) => metric_condition(q).err().unwrap_or_default(),
            None => "a metric query is a string".into(),
        };
        metric_errors.insert(name.clone(), Value::String(err));
    }
    axum::Json(
        json!({"targetConditionError": target_error, "customMetricQueryErrors": metric_errors}),
    )
    .into_response()
}

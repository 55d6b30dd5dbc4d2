//! The HTTP surface of `otaforge serve`, one router per surface, merged here; each handler
//! extracts, calls the domain or the store, and returns `Result<_, ApiError>`, whose shape the
//! surface's `error::render` layer writes.
//!
//! - [`updates`]: Device Update's update management (import, updates, files, operations);
//! - [`management`]: Device Update's device management (groups, classes, devices, compliance,
//!   deployments); [`subgroups`]: device-class subgroups and their deployments;
//!   [`diagnostics`]: log collections, agent health, device import and its operations;
//! - [`blobs`]: otaforge's own upload and read-URL routes, and the signed blob and content
//!   URLs devices and imports read;
//! - [`hub`], [`configs`], [`modules`]: IoT Hub's twins, identities, queries, configurations
//!   and module twins;
//! - [`messaging`]: the service side of the device protocol (direct methods, telemetry,
//!   cloud-to-device messages) and module identities;
//! - [`dashboard`]: the rollout dashboard's pages (`/ui/`), `crate::dashboard` over serve's
//!   own state.
//!
//! Every Device Update route needs `?api-version=2022-10-01` or `2026-06-01` and, when serve
//! has a token, `Authorization: Bearer TOKEN` ([`api_guard`]). Every route passes the browser
//! guard (`server::guard`).

mod blobs;
mod configs;
mod dashboard;
mod diagnostics;
mod hub;
mod management;
mod messaging;
mod modules;
mod subgroups;
mod updates;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Shared;
use super::error::{ApiError, Surface, render};
use crate::service::{API_VERSION, Page, SUPPORTED_API_VERSIONS};

/// Items per page of every list.
const PAGE: usize = 20;

/// Every route of the service.
pub(super) fn router(state: Shared) -> Router {
    let adu = Router::new()
        .merge(updates::router())
        .merge(management::router())
        .merge(subgroups::router())
        .merge(diagnostics::router())
        .merge(blobs::storage_router())
        .layer(from_fn_with_state(state.clone(), api_guard));
    let hub = Router::new()
        .merge(hub::router())
        .merge(configs::router())
        .merge(modules::router())
        .merge(messaging::router())
        .layer(from_fn(|req, next| render(Surface::Hub, req, next)));
    Router::new()
        .merge(adu)
        .merge(hub)
        .merge(blobs::read_router())
        .merge(dashboard::router(state.clone()))
        .fallback(|| async { ApiError::not_found("NotFound", "no such route") })
        .layer(from_fn_with_state(state.clone(), super::guard::browser_guard))
        .layer(from_fn(|req, next| render(Surface::Adu, req, next)))
        .with_state(state)
}

/// A list's query parameters.
type Q = Query<HashMap<String, String>>;

/// `value` + `nextLink` paging over `items`, [`PAGE`] per page, `skip` in the next link.
fn page<T: Serialize>(
    items: Vec<T>,
    uri: &axum::http::Uri,
    query: &HashMap<String, String>,
) -> Response {
    json_answer(page_json(items, uri, query).into())
}

/// The JSON text of [`page`].
fn page_json<T: Serialize>(
    items: Vec<T>,
    uri: &axum::http::Uri,
    query: &HashMap<String, String>,
) -> Vec<u8> {
    let skip = query.get("skip").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let total = items.len();
    let value: Vec<T> = items.into_iter().skip(skip).take(PAGE).collect();
    let mut next_link = None;
    if skip + PAGE < total {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "skip")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.sort();
        q.push(("skip".into(), (skip + PAGE).to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish();
        next_link = Some(format!("{}?{qs}", uri.path()));
    }
    json_text(&Page { value, next_link })
}

/// `value` as JSON text.
fn json_text<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing our own model types to a Vec cannot fail (string keys, no custom errors).
    serde_json::to_vec(value).unwrap_or_default()
}

/// A 200 answer whose body is JSON text already rendered.
fn json_answer(body: axum::body::Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// The terms of an OData-like `filter` made of `NAME eq 'VALUE'` joined by `and`, as the
/// management lists take it; `names` says which names a list knows (compared without case;
/// returned as `known` spells them). Anything else is 400 `InvalidFilter`, whose message lists
/// what the list accepts.
fn eq_filter(
    filter: &str,
    known: &[&'static str],
    accepts: &str,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let mut out = Vec::new();
    for part in filter.split(" and ") {
        let bad = || {
            ApiError::bad_request("InvalidFilter", format!("`{}` is not {accepts}", part.trim()))
        };
        let (name, value) = part.trim().split_once(" eq ").ok_or_else(bad)?;
        let value =
            value.trim().strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).ok_or_else(bad)?;
        let name = name.trim();
        let known = known.iter().find(|k| {
            k.eq_ignore_ascii_case(name)
                || (k.ends_with('/')
                    && name.len() > k.len()
                    && name[..k.len()].eq_ignore_ascii_case(k))
        });
        let Some(k) = known else { return Err(bad()) };
        // A prefix (`compatProperties/`) keeps the rest of the name.
        let value = if k.ends_with('/') {
            format!("{}={value}", &name[k.len()..])
        } else {
            value.to_owned()
        };
        out.push((*k, value));
    }
    Ok(out)
}

/// `orderby` of the deployment lists: `startDateTime` (ADU: "you can order by start date"),
/// optionally `asc` or `desc` (`Some(true)` for ascending); without it `None` (the lists
/// are then newest first).
fn deployment_order(query: &HashMap<String, String>) -> Result<Option<bool>, ApiError> {
    let Some(o) = query.get("orderby").or_else(|| query.get("$orderby")) else {
        return Ok(None);
    };
    let mut words = o.split_whitespace();
    let field = words.next().unwrap_or_default();
    let dir = words.next().unwrap_or("asc");
    if !field.eq_ignore_ascii_case("startDateTime") || words.next().is_some() {
        return Err(ApiError::bad_request(
            "InvalidOrderBy",
            format!("`{o}`: deployments are ordered by `startDateTime [asc|desc]`"),
        ));
    }
    match dir.to_ascii_lowercase().as_str() {
        "asc" => Ok(Some(true)),
        "desc" => Ok(Some(false)),
        _ => Err(ApiError::bad_request("InvalidOrderBy", format!("`{o}`: asc or desc"))),
    }
}

/// Orders deployments by `startDateTime` (ascending or descending).
fn sort_by_start(list: &mut [crate::service::model::Deployment], ascending: bool) {
    let at = |d: &crate::service::model::Deployment| {
        crate::time::Timestamp::parse(&d.start_date_time).ok().map(|t| t.system_time())
    };
    list.sort_by(|a, b| {
        let o = at(a).cmp(&at(b));
        if ascending { o } else { o.reverse() }
    });
}

/// Bearer token, api-version and instance checks for every Device Update route.
async fn api_guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    match check_api(&s, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => unauthorized(e),
    }
}

/// An audit-trail entry for a change a request makes: who (the credential it passed and its
/// user agent) did `action` to a deployment, now.
fn audit(
    s: &Shared,
    headers: &axum::http::HeaderMap,
    action: &str,
    (group, deployment): (&str, &str),
    class: Option<&str>,
    update: Option<String>,
) -> crate::server::store::AuditRecord {
    let who = if s.token.is_some() { "bearer token" } else { "loopback (no token)" };
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    crate::server::store::AuditRecord {
        at: crate::server::now_string(),
        actor: match agent {
            Some(a) => format!("{who}, {}", a.chars().take(80).collect::<String>()),
            None => who.to_owned(),
        },
        action: action.to_owned(),
        group_id: group.to_owned(),
        deployment_id: deployment.to_owned(),
        class_id: class.map(str::to_owned),
        update_id: update,
    }
}

/// An error as an answer; a 401 says which scheme it wants.
fn unauthorized(e: ApiError) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        let mut r = e.into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    } else {
        e.into_response()
    }
}

fn check_api(s: &Shared, req: &Request) -> Result<(), ApiError> {
    check_token(s, req)?;
    check_version_and_instance(s, req)
}

/// The bearer token, when serve has one.
fn check_token(s: &Shared, req: &Request) -> Result<(), ApiError> {
    if let Some(token) = &s.token {
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim_start());
        let ok = given
            .is_some_and(|g| subtle::ConstantTimeEq::ct_eq(g.as_bytes(), token.as_bytes()).into());
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "a valid bearer token is required",
            ));
        }
    }
    Ok(())
}

/// `api-version` and the instance of a Device Update route.
fn check_version_and_instance(s: &Shared, req: &Request) -> Result<(), ApiError> {
    let query = req.uri().query().unwrap_or_default();
    let version = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.into_owned());
    match version.as_deref() {
        Some(v) if SUPPORTED_API_VERSIONS.contains(&v) => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "UnsupportedApiVersion",
                format!(
                    "api-version {other} is not supported; use one of {}",
                    SUPPORTED_API_VERSIONS.join(", ")
                ),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "MissingApiVersionParameter",
                format!("the api-version query parameter is required ({API_VERSION})"),
            ));
        }
    }
    let instance = req.uri().path().split('/').nth(2).unwrap_or_default();
    if instance != s.instance {
        return Err(ApiError::not_found(
            "InstanceNotFound",
            format!("instance `{instance}` does not exist; this service hosts `{}`", s.instance),
        ));
    }
    Ok(())
}

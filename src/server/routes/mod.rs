//! The HTTP surface of `otaforge serve`, one router per surface, merged here; each handler
//! extracts, calls the domain or the store, and returns `Result<_, ApiError>`, whose shape the
//! surface's `error::render` layer writes.
//!
//! - [`updates`]: Device Update's update management (import, updates, files, operations);
//! - [`management`]: Device Update's device management (groups, classes, devices, compliance,
//!   deployments);
//! - [`blobs`]: otaforge's own upload and read-URL routes, and the signed blob and content
//!   URLs devices and imports read;
//! - [`hub`], [`configs`], [`modules`]: IoT Hub's twins, identities, queries, configurations
//!   and module twins;
//! - [`messaging`]: the service side of the device protocol (direct methods, telemetry,
//!   cloud-to-device messages) and module identities.
//!
//! Every Device Update route needs `?api-version=2022-10-01` or `2026-06-01` and, when serve
//! has a token, `Authorization: Bearer TOKEN` ([`api_guard`]). Every route passes the browser
//! guard (`server::guard`).

mod blobs;
mod configs;
mod hub;
mod management;
mod messaging;
mod modules;
mod updates;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub(super) use updates::update_location;

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
    axum::Json(Page { value, next_link }).into_response()
}

/// Bearer token, api-version and instance checks for every Device Update route.
async fn api_guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    match check_api(&s, &req) {
        Ok(()) => next.run(req).await,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let mut r = e.into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Err(e) => e.into_response(),
    }
}

fn check_api(s: &Shared, req: &Request) -> Result<(), ApiError> {
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

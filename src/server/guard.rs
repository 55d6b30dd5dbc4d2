//! What keeps a web page from driving the local service: a page the developer visits can send
//! requests to `http://127.0.0.1:PORT` (cross-site requests) or to its own name resolved to
//! 127.0.0.1 (DNS rebinding). Browsers add `Origin` and keep the page's `Host`, and can send only
//! `text/plain`, form and multipart bodies without a preflight, which this service never grants.
//!
//! Rules, for every route:
//! - POST, PUT and PATCH carry `application/json` (blob uploads and cloud-to-device messages
//!   `application/octet-stream`); DELETE carries no body. Anything else is 415. A Put Blob
//!   under a signed write grant (`PUT /blobs/…?sig=…`, a device uploading its logs) may have
//!   any media type, as Azure's does: the signature is its defence.
//! - Without a token (loopback only): `Host` must be a loopback name (`localhost`, `*.localhost`,
//!   `127.0.0.0/8`, `[::1]`), and an `Origin`, when sent, must be this service's own
//!   (`http://` + a loopback name + its port). Anything else is 403.
//! - With a token, the token is the defence: a page cannot know it.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::Shared;
use super::error::ApiError;

/// A host name (without port) that always means this machine.
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&host);
    bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host[:port]` (IPv6 in brackets); `None` when malformed.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// Whether a `Host` header names this machine (any port: a proxy or a port forward may differ).
pub fn host_allowed(host: &str) -> bool {
    split_host_port(host).is_some_and(|(h, _)| is_loopback_name(h))
}

/// Whether an `Origin` header is this service's own: `http://` + a loopback name + `port`.
pub fn origin_allowed(origin: &str, port: u16) -> bool {
    let Some(rest) = origin.strip_prefix("http://") else { return false };
    match split_host_port(rest) {
        Some((h, Some(p))) => p == port && is_loopback_name(h),
        Some((h, None)) => port == 80 && is_loopback_name(h),
        None => false,
    }
}

/// The media types a body may have on `method` to `path` (empty: any).
fn body_types(method: &Method, path: &str) -> &'static [&'static str] {
    if *method == Method::PUT && path.starts_with("/blobs/") {
        &[]
    } else if *method == Method::PUT && path.contains("/otaforge/blobs/") {
        &["application/octet-stream"]
    } else if *method == Method::POST
        && path.starts_with("/otaforge/devices/")
        && path.ends_with("/messages/devicebound")
    {
        // A cloud-to-device message's body is the application's bytes.
        &["application/octet-stream", "application/json"]
    } else if *method == Method::PATCH {
        // ADU documents JSON merge patch for its PATCH routes.
        &["application/merge-patch+json", "application/json"]
    } else {
        &["application/json"]
    }
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    axum::response::IntoResponse::into_response(ApiError::new(status, code, message))
}

/// Checks media type, `Host` and `Origin` as the module says.
pub(super) async fn browser_guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(r) = check(req.method(), req.uri().path(), req.headers(), s.token.is_some(), s.port)
    {
        return r;
    }
    next.run(req).await
}

/// What [`browser_guard`] checks, for any router (the dashboard's own listener uses it too):
/// the refusal, or `None`.
pub fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    has_token: bool,
    port: u16,
) -> Option<Response> {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    // A body needs its media type; an action without one (`…:cancel`) does not. Without
    // Content-Length or Transfer-Encoding an HTTP/1.1 request has no body (RFC 9112 §6.3).
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|n| n.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::CONTENT_TYPE);
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) && has_body {
        let allowed = body_types(method, path);
        let given = text(header::CONTENT_TYPE).unwrap_or_default();
        let essence = given.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !allowed.is_empty() && !allowed.contains(&essence.as_str()) {
            return Some(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "{method} needs Content-Type {}, not `{}`",
                    allowed.join(" or "),
                    if given.is_empty() { "(none)" } else { given }
                ),
            ));
        }
    }
    if has_token {
        return None;
    }
    let host = text(header::HOST).unwrap_or_default();
    if !host_allowed(host) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "ForbiddenHost",
            format!(
                "Host `{host}` is not a loopback name; without a token this service answers only \
                 requests addressed to localhost or 127.0.0.1 (start it with --token to serve other names)"
            ),
        ));
    }
    if let Some(origin) = text(header::ORIGIN)
        && !origin_allowed(origin, port)
    {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "ForbiddenOrigin",
            format!(
                "requests from web pages (Origin `{origin}`) are refused; without a token only \
                 this service's own origin is accepted"
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_hosts_and_origins() {
        for ok in ["localhost", "LOCALHOST.", "api.localhost", "127.0.0.1", "127.8.9.10", "[::1]"] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in
            ["example.com", "localhost.example.com", "10.0.0.1", "0.0.0.0", "[::]", "1.1.1.1"]
        {
            assert!(!is_loopback_name(bad), "{bad}");
        }
        assert!(
            host_allowed("127.0.0.1:8080") && host_allowed("[::1]:9") && host_allowed("localhost")
        );
        assert!(
            !host_allowed("evil.example:8080") && !host_allowed("127.0.0.1:x") && !host_allowed("")
        );
        assert!(origin_allowed("http://127.0.0.1:8080", 8080));
        assert!(origin_allowed("http://localhost:8080", 8080));
        for bad in
            ["http://127.0.0.1:8081", "https://127.0.0.1:8080", "null", "http://evil.example:8080"]
        {
            assert!(!origin_allowed(bad, 8080), "{bad}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_cross_site_post_and_a_rebinding_host_are_refused() {
        let status = |m: Method, p: &str, h: &[(&'static str, &str)], token: bool| {
            check(&m, p, &headers(h), token, 8080).map(|r| r.status().as_u16())
        };
        let import = "/deviceUpdate/default/updates:import";
        let local = ("host", "127.0.0.1:8080");
        let body = ("content-length", "120");
        let json = ("content-type", "application/json; charset=utf-8");
        assert_eq!(status(Method::POST, import, &[local, json], false), None);
        assert_eq!(
            status(Method::POST, import, &[local, ("content-type", "text/plain")], false),
            Some(415)
        );
        assert_eq!(status(Method::POST, import, &[local, body], true), Some(415));
        // An action without a body needs no media type.
        assert_eq!(status(Method::POST, import, &[local], true), None);
        assert_eq!(
            status(Method::POST, import, &[("host", "rebind.example:8080"), json], false),
            Some(403)
        );
        assert_eq!(status(Method::GET, "/x", &[("host", "rebind.example:8080")], false), Some(403));
        assert_eq!(status(Method::GET, "/x", &[("host", "rebind.example:8080")], true), None);
        let evil = ("origin", "https://evil.example");
        assert_eq!(status(Method::POST, import, &[local, json, evil], false), Some(403));
        assert_eq!(status(Method::DELETE, "/x", &[local, evil], false), Some(403));
        assert_eq!(status(Method::DELETE, "/x", &[local], false), None);
        let own = ("origin", "http://localhost:8080");
        assert_eq!(status(Method::POST, import, &[local, json, own], false), None);
        let blob = "/deviceUpdate/default/otaforge/blobs/c/b";
        assert_eq!(
            status(
                Method::PUT,
                blob,
                &[local, ("content-type", "application/octet-stream")],
                false
            ),
            None
        );
        assert_eq!(status(Method::PUT, blob, &[local, json], false), Some(415));
        // A device's Put Blob under a signed grant may have any media type; a foreign page
        // still cannot reach a tokenless service.
        let granted = "/blobs/default/d1/logs-1/adu/aduc.log";
        let text = ("content-type", "text/plain");
        assert_eq!(status(Method::PUT, granted, &[local, text], false), None);
        let evil = ("origin", "https://evil.example");
        assert_eq!(status(Method::PUT, granted, &[local, text, evil], false), Some(403));
    }
}

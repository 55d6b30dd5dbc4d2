//! Every error serve answers, as one type: [`ApiError`] is a status and an ADU error document
//! (`code`, `message`, `target`, `details`). Handlers return `Result<_, ApiError>` and use `?`:
//! the store's and the domain's errors convert into it.
//!
//! The wire shape depends on the surface that answers, so it is chosen by the router, not by
//! the handler: an `ApiError` leaves the handler as a bare status carrying the error, and the
//! [`render`] layer of its surface writes the body — ADU's envelope (`{"error": {...}}` with
//! `x-ms-error-code`) on the Device Update routes and blob URLs, IoT Hub's
//! (`{"Message": "ErrorCode:CODE;text", "ExceptionMessage": text}` with `iothub-errorcode`) on
//! the IoT Hub routes. The same layer gives the errors the HTTP layer makes itself (an unknown
//! route or method, a body over the limit, a path that is not UTF-8) that surface's shape, so a
//! client has one shape to read.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::store::StoreError;
use crate::service::{ErrorBody, ErrorResponse};

/// An error answer: its status and ADU error document.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Code, message, target and details (boxed: an error travels through every `?`, and
    /// the common path should not carry its size).
    pub body: Box<ErrorBody>,
}

/// The code of an unexpected failure; IoT Hub spells it `ServerError`.
const INTERNAL: &str = "InternalServerError";

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: Box::new(ErrorBody::new(code, message)) }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 with `code`.
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 with `code`.
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500: something failed that no request can fix.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, e.to_string())
    }

    /// The same error about `target`.
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.body.target = Some(target.into());
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(e)
    }
}

impl From<crate::iothub::limits::RuleError> for ApiError {
    /// A twin or configuration that breaks one of IoT Hub's rules: nothing was stored.
    fn from(e: crate::iothub::limits::RuleError) -> Self {
        Self::bad_request("ArgumentInvalid", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body is the surface's to write ([`render`]); the error travels with the status.
        let mut r = self.status.into_response();
        r.extensions_mut().insert(self);
        r
    }
}

/// The shape errors take on one surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Device Update's envelope.
    Adu,
    /// IoT Hub's.
    Hub,
}

/// Writes every error answer of the routes below it in `surface`'s shape: an [`ApiError`] as
/// it is, and a bare error status the HTTP layer made with a code for its status and its text
/// as the message. An answer that already has its shape passes through.
pub async fn render(surface: Surface, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    if let Some(e) = r.extensions_mut().remove::<ApiError>() {
        let mut out = shaped(surface, &e);
        // Headers the handler set beside the error (`WWW-Authenticate`, `Retry-After`) stay.
        for (name, value) in r.headers() {
            if name != axum::http::header::CONTENT_TYPE
                && name != axum::http::header::CONTENT_LENGTH
            {
                out.headers_mut().insert(name.clone(), value.clone());
            }
        }
        return out;
    }
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error())
        || r.headers().contains_key("x-ms-error-code")
    {
        return r;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::BAD_REQUEST => "BadRequest",
        s if s.is_server_error() => INTERNAL,
        _ => "RequestFailed",
    };
    let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("request failed").to_owned()
    } else {
        text.trim().to_owned()
    };
    shaped(surface, &ApiError::new(status, code, message))
}

/// The response for `e` in `surface`'s shape.
fn shaped(surface: Surface, e: &ApiError) -> Response {
    let (mut r, code) = match surface {
        Surface::Adu => {
            let doc = ErrorResponse { error: (*e.body).clone() };
            ((e.status, axum::Json(doc)).into_response(), e.body.code.as_str())
        }
        Surface::Hub => {
            let code = if e.body.code == INTERNAL { "ServerError" } else { e.body.code.as_str() };
            let message = &e.body.message;
            let doc = serde_json::json!({
                "Message": format!("ErrorCode:{code};{message}"),
                "ExceptionMessage": message,
            });
            ((e.status, axum::Json(doc)).into_response(), code)
        }
    };
    let value = HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("Error"));
    if surface == Surface::Hub {
        r.headers_mut().insert("iothub-errorcode", value.clone());
    }
    r.headers_mut().insert("x-ms-error-code", value);
    r
}

impl From<super::store::Refusal> for ApiError {
    fn from(r: super::store::Refusal) -> Self {
        use super::store::Refusal as R;
        let (status, code) = match &r {
            R::NoDevice => (StatusCode::NOT_FOUND, "DeviceNotFound"),
            R::NoModule => (StatusCode::NOT_FOUND, "ModuleNotFound"),
            R::NoConfiguration => (StatusCode::NOT_FOUND, "ConfigurationNotFound"),
            R::Stale(_) => (StatusCode::PRECONDITION_FAILED, "PreconditionFailed"),
            R::Rules(_) | R::ContentChanged => (StatusCode::BAD_REQUEST, "ArgumentInvalid"),
            R::TooManyConfigurations(_) => (StatusCode::FORBIDDEN, "IotHubQuotaExceeded"),
            R::TooManyDeployments(_) => (StatusCode::CONFLICT, "ExceedsMaxDeployments"),
            R::TooManyModules(_) => (StatusCode::FORBIDDEN, "IotHubQuotaExceeded"),
        };
        Self::new(status, code, r.to_string())
    }
}

impl From<super::deploy::Refused> for ApiError {
    fn from(r: super::deploy::Refused) -> Self {
        let status = match r.problem {
            super::deploy::Problem::GroupNotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, r.problem.code(), r.message).with_target(r.target)
    }
}

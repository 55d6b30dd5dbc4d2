//! Who may call the IoT Hub routes, as extractors a handler names among its arguments:
//! [`ServiceAuth`] for the back end, [`DeviceAuth`] for a device acting on its own twin. A
//! request that fails either never reaches the handler (401 `IotHubUnauthorizedAccess`).
//!
//! - Service: a SAS token signed with the hub's `iothubowner` key for this hub's host (the
//!   connection string serve writes to `iothub.connection-string`, mode 0600), or `Bearer` with
//!   serve's `--token` standing in for a Microsoft Entra ID token; without `--token` (loopback
//!   only) a request without `Authorization` is accepted too, as on the Device Update routes.
//! - Device: always a SAS token for `HOST/devices/{id}` signed with that device's own key,
//!   where `{id}` is the device of the route, so a device can reach only its own twin and
//!   modules.
//!
//! The Device Update routes are guarded by one layer of their router (`routes::api_guard`):
//! their token is serve's `--token`, checked with the api-version and the instance.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};

use super::Shared;
use super::error::ApiError;
use crate::iothub::sas::{Claims, SasKey};

/// The back end's credential was checked.
#[derive(Debug, Clone, Copy)]
pub struct ServiceAuth;

/// A device's own credential was checked for the device of the route (`{id}`).
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    /// The device.
    pub device_id: String,
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "IotHubUnauthorizedAccess", message)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `Host` the request was sent to, lower case: the resource SAS tokens are scoped to.
fn host(headers: &HeaderMap) -> String {
    headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase()
}

/// The SAS token of `Authorization`, when there is one.
fn claims(headers: &HeaderMap) -> Option<Result<Claims, ApiError>> {
    let text = headers.get(header::AUTHORIZATION)?.to_str().unwrap_or_default();
    Some(Claims::parse(text).map_err(|e| unauthorized(e.to_string())))
}

impl FromRequestParts<Shared> for ServiceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim_start());
        if let Some(given) = bearer {
            return match &s.token {
                Some(t)
                    if bool::from(subtle::ConstantTimeEq::ct_eq(
                        given.as_bytes(),
                        t.as_bytes(),
                    )) =>
                {
                    Ok(Self)
                }
                _ => Err(unauthorized("the bearer token is not this serve's --token")),
            };
        }
        match claims(headers) {
            None if s.token.is_none() => Ok(Self),
            None => {
                Err(unauthorized("a SAS token signed with the hub's shared access key is required"))
            }
            Some(c) => {
                let c = c?;
                c.verify(&s.hub_key, now_secs()).map_err(|e| unauthorized(e.to_string()))?;
                if c.resource != host(headers) {
                    return Err(unauthorized("the token is for another hub"));
                }
                Ok(Self)
            }
        }
    }
}

impl FromRequestParts<Shared> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, s)
            .await
            .map_err(|e| ApiError::bad_request("ArgumentInvalid", e.to_string()))?;
        let Some(id) = params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_owned()) else {
            return Err(ApiError::internal("a device route without a device id"));
        };
        let c = claims(&parts.headers)
            .ok_or_else(|| unauthorized("a device SAS token is required"))??;
        let resource = format!("{}/devices/{}", host(&parts.headers), id.to_lowercase());
        if c.resource != resource {
            return Err(unauthorized("the token is for another device"));
        }
        let key_id = id.clone();
        let row = s.db.read(move |st| st.device(&key_id)).await?;
        let row = row.ok_or_else(|| unauthorized("no such device"))?;
        let key = SasKey::from_base64(&row.device_key).map_err(ApiError::internal)?;
        c.verify(&key, now_secs()).map_err(|e| unauthorized(e.to_string()))?;
        Ok(Self { device_id: id })
    }
}

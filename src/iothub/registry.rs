//! The identity registry and the service side of the device protocol, on [`IotHubClient`]:
//! device and module identities with their keys, direct methods
//! (<https://learn.microsoft.com/rest/api/iothub/service/devices/invoke-method>), and — from
//! `otaforge serve` only, which has no Event Hubs or AMQP — its telemetry and
//! cloud-to-device routes. Each works against Azure and serve alike unless said otherwise.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::identity::Identity;
use super::{IotHubClient, IotHubError, encode, json_body};

/// A direct method call (`CloudToDeviceMethod`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodCall {
    /// The method.
    pub method_name: String,
    /// Its payload.
    pub payload: Value,
    /// How long the hub waits for the answer (5–300 s; default 30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_timeout_in_seconds: Option<u64>,
    /// How long the hub waits for the device to be online (0–300 s; default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_in_seconds: Option<u64>,
}

/// What a device answered (`CloudToDeviceMethodResult`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodResult {
    /// Its status.
    pub status: i64,
    /// Its payload.
    #[serde(default)]
    pub payload: Value,
}

/// One page of serve's telemetry (`GET /otaforge/hub/events`).
#[derive(Debug, Clone, Deserialize)]
pub struct EventsPage {
    /// The messages, oldest first.
    pub events: Vec<Event>,
    /// The sequence number to continue after.
    pub next: u64,
    /// The newest message's sequence number (to start from now on).
    pub last: u64,
}

/// One device-to-cloud message as `otaforge hub monitor` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The device that sent it.
    pub device_id: String,
    /// The module, when a module sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Everything else (sequence, enqueuedTime, properties, payload).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

fn path(device: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("/devices/{}/modules/{}", encode(device), encode(m)),
        None => format!("/devices/{}", encode(device)),
    }
}

impl IotHubClient {
    /// Creates a device or module identity (`identity.module_id`); keys it gives are used,
    /// missing ones the hub makes. Returns the identity with its keys.
    pub async fn create_identity(&self, identity: &Identity) -> Result<Identity, IotHubError> {
        let who = path(&identity.device_id, identity.module_id.as_deref());
        let op = format!("create {}", who.trim_start_matches('/'));
        let url = self.url(&who)?;
        let body =
            serde_json::to_value(identity).map_err(|e| IotHubError::Config(e.to_string()))?;
        let resp = self.send(&op, json_body(self.http.put(url), &body)).await?;
        self.json(&op, resp).await
    }

    /// A device or module identity, with its keys (handle as a secret).
    pub async fn identity(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> Result<Identity, IotHubError> {
        let who = path(device, module);
        let op = format!("read {}", who.trim_start_matches('/'));
        let resp = self.send(&op, self.http.get(self.url(&who)?)).await?;
        self.json(&op, resp).await
    }

    /// Deletes a device (with its modules) or module identity.
    pub async fn delete_identity(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> Result<(), IotHubError> {
        let who = path(device, module);
        let op = format!("delete {}", who.trim_start_matches('/'));
        let req = self.http.delete(self.url(&who)?).header(reqwest::header::IF_MATCH, "*");
        self.send(&op, req).await?;
        Ok(())
    }

    /// Calls a direct method on a device or module and waits for its answer.
    pub async fn invoke_method(
        &self,
        device: &str,
        module: Option<&str>,
        call: &MethodCall,
    ) -> Result<MethodResult, IotHubError> {
        let twin = match module {
            Some(m) => format!("/twins/{}/modules/{}/methods", encode(device), encode(m)),
            None => format!("/twins/{}/methods", encode(device)),
        };
        let op = format!("call {} on {}", call.method_name, device);
        let body = serde_json::to_value(call).map_err(|e| IotHubError::Config(e.to_string()))?;
        // The hub holds the call up to both timeouts: the request may take that long.
        let wait = call.response_timeout_in_seconds.unwrap_or(30)
            + call.connect_timeout_in_seconds.unwrap_or(0)
            + 10;
        let req = json_body(self.http.post(self.url(&twin)?), &body)
            .timeout(std::time::Duration::from_secs(wait));
        let resp = self.send_within(&op, req, std::time::Duration::from_secs(wait)).await?;
        self.json(&op, resp).await
    }

    /// serve's telemetry after sequence `after`, waiting up to `wait_secs` for some (serve
    /// only: IoT Hub delivers telemetry to Event Hubs over AMQP).
    pub async fn events(&self, after: u64, wait_secs: u64) -> Result<EventsPage, IotHubError> {
        let op = "read telemetry".to_owned();
        let mut url = self.url("/otaforge/hub/events")?;
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("wait", &wait_secs.to_string());
        let within = std::time::Duration::from_secs(wait_secs + 10);
        let resp = self.send_within(&op, self.http.get(url), within).await?;
        self.json(&op, resp).await
    }

    /// Sends a cloud-to-device message through serve (serve only: IoT Hub takes them over
    /// AMQP); `properties` become its application properties.
    pub async fn send_c2d(
        &self,
        device: &str,
        body: Vec<u8>,
        properties: &[(String, String)],
    ) -> Result<(), IotHubError> {
        let op = format!("send a message to {device}");
        let mut url =
            self.url(&format!("/otaforge/devices/{}/messages/devicebound", encode(device)))?;
        url.query_pairs_mut().extend_pairs(properties);
        self.send(&op, self.http.post(url).body(body)).await?;
        Ok(())
    }
}

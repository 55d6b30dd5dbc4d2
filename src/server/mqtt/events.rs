//! Device-to-cloud messages (telemetry) as serve keeps them: a bounded ring per hub, newest
//! last, each with a sequence number, that `GET /otaforge/hub/events?after=SEQ` long-polls and
//! `otaforge hub monitor` prints as `az iot hub monitor-events` does. IoT Hub forwards them
//! to Event Hubs (AMQP), which serve does not emulate
//! (<https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-messages-d2c>).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

/// Most messages kept.
pub const MAX_EVENTS: usize = 10_000;
/// Most payload bytes kept, all messages together.
pub const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// One message as the monitor shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Its place in the ring (the first message is 1).
    pub sequence: u64,
    /// The device that sent it.
    pub device_id: String,
    /// The module, when a module sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// When serve took it.
    pub enqueued_time: String,
    /// System properties (`$.ct` → `content-type`, …) and application properties.
    pub properties: Properties,
    /// The body: JSON when it is JSON, else text when it is UTF-8, else base64.
    pub payload: Value,
}

/// A message's properties.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Properties {
    /// The system properties, named as the monitor names them.
    pub system: Map<String, Value>,
    /// The application's own.
    pub application: Map<String, Value>,
}

/// The name a system property `$.x` has in the monitor's output.
fn system_name(key: &str) -> Option<&'static str> {
    Some(match key {
        "$.mid" => "message-id",
        "$.cid" => "correlation-id",
        "$.uid" => "user-id",
        "$.ct" => "content-type",
        "$.ce" => "content-encoding",
        "$.ifid" => "iothub-interface-id",
        "$.exp" => "absolute-expiry-time",
        "$.on" => "iothub-outputname",
        "$.to" => "to",
        _ => return None,
    })
}

/// A message's body as the monitor shows it.
fn payload_value(body: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => {
            use base64::Engine as _;
            serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(body)})
        }
    }
}

impl Event {
    /// A message from `device` (`module`) with the properties of its topic and `body`.
    pub fn new(
        device: &str,
        module: Option<&str>,
        properties: &[(String, Option<String>)],
        body: &[u8],
    ) -> Self {
        let mut p = Properties::default();
        for (k, v) in properties {
            let v = v.clone().map(Value::String).unwrap_or(Value::Null);
            match system_name(k) {
                Some(name) => p.system.insert(name.into(), v),
                None => p.application.insert(k.clone(), v),
            };
        }
        Self {
            sequence: 0,
            device_id: device.to_owned(),
            module_id: module.map(str::to_owned),
            enqueued_time: crate::server::now_string(),
            properties: p,
            payload: payload_value(body),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    items: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
}

/// The ring, and the readers waiting for its next message.
#[derive(Debug, Default)]
pub struct Ring {
    inner: Mutex<Inner>,
    added: tokio::sync::Notify,
}

impl Ring {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a message (`size`: its body's bytes), dropping the oldest beyond the bounds;
    /// returns its sequence number.
    pub fn push(&self, mut event: Event, size: usize) -> u64 {
        let seq = {
            let mut i = self.inner();
            i.next += 1;
            event.sequence = i.next;
            i.bytes += size;
            i.items.push_back((Arc::new(event), size));
            while i.items.len() > MAX_EVENTS || i.bytes > MAX_EVENT_BYTES {
                let Some((_, n)) = i.items.pop_front() else { break };
                i.bytes -= n;
            }
            i.next
        };
        self.added.notify_waiters();
        seq
    }

    /// Messages after `after`, at most `limit`; waits up to `wait` for one when there is none.
    pub async fn after(&self, after: u64, limit: usize, wait: Duration) -> Vec<Arc<Event>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the look, so a message added in between wakes this reader.
            let added = self.added.notified();
            let found: Vec<Arc<Event>> = self
                .inner()
                .items
                .iter()
                .filter(|(e, _)| e.sequence > after)
                .take(limit)
                .map(|(e, _)| e.clone())
                .collect();
            if !found.is_empty() {
                return found;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// The sequence number of the newest message (0: none yet).
    pub fn last(&self) -> u64 {
        self.inner().next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ring_keeps_the_newest_and_wakes_a_waiting_reader() {
        let ring = Arc::new(Ring::default());
        for i in 0..(MAX_EVENTS + 5) {
            ring.push(Event::new("d", None, &[], format!("{i}").as_bytes()), 1);
        }
        let first = ring.after(0, 1, Duration::ZERO).await;
        assert_eq!(first[0].sequence, 6, "the five oldest went");
        let last = ring.last();
        let r = ring.clone();
        let reader = tokio::spawn(async move { r.after(last, 10, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let props =
            [("$.ct".to_owned(), Some("application/json".to_owned())), ("k".to_owned(), None)];
        ring.push(Event::new("d", Some("m"), &props, br#"{"t":1}"#), 7);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), 1);
        let v = serde_json::to_value(&*got[0]).unwrap();
        assert_eq!(v["properties"]["system"]["content-type"], "application/json");
        assert_eq!(v["properties"]["application"]["k"], Value::Null);
        assert_eq!(v["payload"]["t"], 1);
        assert_eq!(v["moduleId"], "m");
    }
}

//! IoT Hub's device protocol over MQTT 3.1.1: who a connection is (client id and user name),
//! the topics a device publishes to and the filters it subscribes to, and the property bags
//! carried at the end of telemetry and cloud-to-device topics
//! (<https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub>).
//!
//! Pure parsing and formatting, shared by `otaforge serve`'s MQTT endpoint and the simulated
//! fleet's device client ([`client`]). Every parser takes untrusted text and returns a typed
//! value or a [`TopicError`]; nothing here allocates more than its input.

pub mod client;

use crate::iothub::limits::{check_device_id, check_module_id};

/// Why a client id, user name, topic or filter is not one IoT Hub accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The client id is not `{deviceId}` or `{deviceId}/{moduleId}` with valid ids.
    #[error("client id: {0}")]
    ClientId(String),
    /// The user name is not `{hub}/{deviceId}[/{moduleId}]/?api-version=…`.
    #[error("user name: {0}")]
    Username(String),
    /// A topic a device may not publish to, or one that is malformed.
    #[error("topic `{topic}`: {why}")]
    Topic {
        /// The topic (shortened).
        topic: String,
        /// What is wrong.
        why: &'static str,
    },
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

fn bad_topic(topic: &str, why: &'static str) -> TopicError {
    TopicError::Topic { topic: short(topic), why }
}

/// A device or module identity: the MQTT client id `{deviceId}` or `{deviceId}/{moduleId}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The device.
    pub device: String,
    /// The module, for a module identity.
    pub module: Option<String>,
}

impl Identity {
    /// A device identity.
    pub fn device(device: &str) -> Self {
        Self { device: device.to_owned(), module: None }
    }

    /// Reads a client id; both ids follow IoT Hub's id rules.
    pub fn parse(client_id: &str) -> Result<Self, TopicError> {
        let (device, module) = match client_id.split_once('/') {
            Some((d, m)) => (d, Some(m)),
            None => (client_id, None),
        };
        check_device_id(device).map_err(TopicError::ClientId)?;
        if let Some(m) = module {
            check_module_id(m).map_err(TopicError::ClientId)?;
        }
        Ok(Self { device: device.to_owned(), module: module.map(str::to_owned) })
    }

    /// The client id (and the key serve files connections and sessions under).
    pub fn key(&self) -> String {
        match &self.module {
            Some(m) => format!("{}/{m}", self.device),
            None => self.device.clone(),
        }
    }

    /// The SAS resource of this identity on `hub`: `{hub}/devices/{d}[/modules/{m}]`.
    pub fn resource(&self, hub: &str) -> String {
        match &self.module {
            Some(m) => format!("{hub}/devices/{}/modules/{m}", self.device),
            None => format!("{hub}/devices/{}", self.device),
        }
    }

    /// The topic prefix of its telemetry: `devices/{d}[/modules/{m}]/messages/events/`.
    pub fn events_prefix(&self) -> String {
        match &self.module {
            Some(m) => format!("devices/{}/modules/{m}/messages/events/", self.device),
            None => format!("devices/{}/messages/events/", self.device),
        }
    }

    /// The topic prefix of messages to the device: `devices/{d}/messages/devicebound/`.
    pub fn devicebound_prefix(&self) -> String {
        format!("devices/{}/messages/devicebound/", self.device)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// The MQTT user name: `{hub}/{deviceId}[/{moduleId}]/?api-version=…[&model-id=…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    /// The hub's host name as the device has it (its connection string's `HostName`).
    pub hub: String,
    /// Who the device says it is.
    pub identity: Identity,
    /// `api-version`, when given.
    pub api_version: Option<String>,
    /// The IoT Plug and Play model id (`model-id`), when given.
    pub model_id: Option<String>,
}

impl Username {
    /// Reads a user name; the ids must be valid, the query's values are percent-decoded.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        let bad = |why: &str| TopicError::Username(format!("`{}`: {why}", short(text)));
        let (path, query) = text.split_once("/?").unwrap_or((text.trim_end_matches('/'), ""));
        let mut parts = path.splitn(3, '/');
        let hub = parts.next().filter(|h| !h.is_empty()).ok_or_else(|| bad("no hub name"))?;
        let device = parts.next().ok_or_else(|| bad("no device id"))?;
        let client_id = match parts.next() {
            Some(m) => format!("{device}/{m}"),
            None => device.to_owned(),
        };
        let identity = Identity::parse(&client_id).map_err(|e| bad(&e.to_string()))?;
        let mut out = Self { hub: hub.to_owned(), identity, api_version: None, model_id: None };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "api-version" => out.api_version = Some(v.into_owned()),
                "model-id" => out.model_id = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The user name a device sends (`api-version` 2021-04-12, and the model id when given).
    pub fn format(hub: &str, identity: &Identity, model_id: Option<&str>) -> String {
        let mut s = format!("{hub}/{}/?api-version={API_VERSION}", identity.key());
        if let Some(m) = model_id {
            s.push_str("&model-id=");
            s.push_str(&encode(m));
        }
        s
    }
}

/// The api-version the fleet's devices name in their user name.
pub const API_VERSION: &str = "2021-04-12";

/// What a device publishes, read from its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `$iothub/twin/GET/?$rid=…`: read the twin.
    TwinGet {
        /// The request id, as sent (echoed in the answer).
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid=…`: report properties.
    TwinReport {
        /// The request id, as sent.
        rid: String,
    },
    /// `$iothub/methods/res/{status}/?$rid=…`: a direct method's answer.
    MethodResponse {
        /// The status the device answered with.
        status: i32,
        /// The request id of the call.
        rid: String,
    },
    /// `devices/{d}[/modules/{m}]/messages/events/{bag}`: telemetry.
    Telemetry {
        /// Its properties (system ones start with `$.`), decoded.
        properties: Vec<(String, Option<String>)>,
    },
}

/// The `$rid` of a request topic's query (`…/?$rid=X[&…]`), as sent.
fn rid_of<'a>(topic: &str, query: &'a str) -> Result<&'a str, TopicError> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix("$rid="))
        .filter(|r| !r.is_empty() && r.len() <= MAX_RID)
        .ok_or_else(|| bad_topic(topic, "no $rid (1 to 128 characters)"))
}

/// The longest request id serve echoes.
pub const MAX_RID: usize = 128;

impl Inbound {
    /// Reads a topic `who` publishes to; another identity's topics, wildcards and anything
    /// IoT Hub does not define are refused.
    pub fn parse(topic: &str, who: &Identity) -> Result<Self, TopicError> {
        if topic.contains(['#', '+', '\0']) {
            return Err(bad_topic(topic, "wildcards and NUL are not allowed in a topic name"));
        }
        if let Some(rest) = topic.strip_prefix("$iothub/") {
            let (path, query) = rest.split_once("/?").unwrap_or((rest, ""));
            return match path.split('/').collect::<Vec<_>>().as_slice() {
                ["twin", "GET"] => Ok(Self::TwinGet { rid: rid_of(topic, query)?.to_owned() }),
                ["twin", "PATCH", "properties", "reported"] => {
                    Ok(Self::TwinReport { rid: rid_of(topic, query)?.to_owned() })
                }
                ["methods", "res", status] => Ok(Self::MethodResponse {
                    status: status
                        .parse()
                        .map_err(|_| bad_topic(topic, "the status is not a number"))?,
                    rid: rid_of(topic, query)?.to_owned(),
                }),
                _ => Err(bad_topic(topic, "not a topic a device may publish to")),
            };
        }
        let prefix = who.events_prefix();
        let Some(bag) = topic
            .strip_prefix(&prefix)
            .or_else(|| topic.strip_prefix(&prefix[..prefix.len() - 1]).filter(|r| r.is_empty()))
        else {
            return Err(bad_topic(topic, "not this identity's telemetry topic"));
        };
        let properties = parse_bag(bag).map_err(|why| bad_topic(topic, why))?;
        Ok(Self::Telemetry { properties })
    }
}

/// A topic filter IoT Hub lets a device subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `$iothub/twin/res/#`: answers to twin requests.
    TwinResponses,
    /// `$iothub/twin/PATCH/properties/desired/#`: desired property changes.
    DesiredPatches,
    /// `$iothub/methods/POST/#`: direct method calls.
    Methods,
    /// `devices/{d}/messages/devicebound/#`: cloud-to-device messages (devices only).
    Devicebound,
    /// `devices/{d}/modules/{m}/inputs/#`: a module's inputs (accepted, never delivered).
    ModuleInputs,
}

impl Filter {
    /// Every filter, in bit order.
    pub const ALL: [Filter; 5] = [
        Self::TwinResponses,
        Self::DesiredPatches,
        Self::Methods,
        Self::Devicebound,
        Self::ModuleInputs,
    ];

    /// Reads a filter `who` subscribes to; `None` for anything else (another identity's
    /// topics, `#`, `+`, topics IoT Hub does not define).
    pub fn parse(filter: &str, who: &Identity) -> Option<Self> {
        match filter {
            "$iothub/twin/res/#" => Some(Self::TwinResponses),
            "$iothub/twin/PATCH/properties/desired/#" => Some(Self::DesiredPatches),
            "$iothub/methods/POST/#" => Some(Self::Methods),
            f if who.module.is_none() && f == format!("{}#", who.devicebound_prefix()) => {
                Some(Self::Devicebound)
            }
            f if who
                .module
                .as_ref()
                .is_some_and(|m| f == format!("devices/{}/modules/{m}/inputs/#", who.device)) =>
            {
                Some(Self::ModuleInputs)
            }
            _ => None,
        }
    }

    /// The filter text for `who`.
    pub fn text(self, who: &Identity) -> String {
        match self {
            Self::TwinResponses => "$iothub/twin/res/#".into(),
            Self::DesiredPatches => "$iothub/twin/PATCH/properties/desired/#".into(),
            Self::Methods => "$iothub/methods/POST/#".into(),
            Self::Devicebound => format!("{}#", who.devicebound_prefix()),
            Self::ModuleInputs => format!(
                "devices/{}/modules/{}/inputs/#",
                who.device,
                who.module.as_deref().unwrap_or_default()
            ),
        }
    }

    /// Its bit in a subscription set.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of filters an identity is subscribed to, as bits ([`Filter::bit`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subscriptions(pub u8);

impl Subscriptions {
    /// Whether `f` is in the set.
    pub fn has(self, f: Filter) -> bool {
        self.0 & f.bit() != 0
    }

    /// How many filters are in the set.
    pub fn len(self) -> usize {
        (self.0 & 0x1f).count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// Whether `quote(…, safe="")` (Python's, which the Azure IoT SDKs use) keeps `b` as it is:
/// ASCII letters, digits and `_.-~`.
fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~')
}

/// Percent-encodes `s` as the SDKs' `quote(s, safe="")` does.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if kept(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decodes `s` (`+` stays a plus, as IoT Hub reads it); `None` when the result is not
/// UTF-8 or an escape is cut short.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Most properties in one bag.
pub const MAX_PROPERTIES: usize = 64;

/// Reads a property bag `k=v&k2&k3=` (keys and values percent-encoded; a key without `=` has
/// no value).
pub fn parse_bag(bag: &str) -> Result<Vec<(String, Option<String>)>, &'static str> {
    let mut out = Vec::new();
    for part in bag.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PROPERTIES {
            return Err("more than 64 properties");
        }
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        let k = decode(k).filter(|k| !k.is_empty()).ok_or("a property key is not valid")?;
        let v = match v {
            Some(v) => Some(decode(v).ok_or("a property value is not valid")?),
            None => None,
        };
        out.push((k, v));
    }
    Ok(out)
}

/// Writes a property bag, each key and value encoded as the SDKs do.
pub fn format_bag(properties: &[(String, Option<String>)]) -> String {
    let parts: Vec<String> = properties
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{}={}", encode(k), encode(v)),
            None => encode(k),
        })
        .collect();
    parts.join("&")
}

/// The topic of a twin answer: `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
pub fn twin_response(status: u16, rid: &str, version: Option<i64>) -> String {
    match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// The topic of a desired-property change: `$iothub/twin/PATCH/properties/desired/?$version=…`.
pub fn desired_patch(version: i64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// The topic of a direct method call: `$iothub/methods/POST/{name}/?$rid={rid}`.
pub fn method_request(name: &str, rid: &str) -> String {
    format!("$iothub/methods/POST/{}/?$rid={rid}", encode(name))
}

/// What the hub sends a device, read from its topic (the fleet's side of [`Inbound`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// `$iothub/twin/res/{status}/?$rid=…[&$version=…]`.
    TwinResponse {
        /// The status.
        status: u16,
        /// The request id.
        rid: String,
        /// `$version`, when given.
        version: Option<i64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version=…`.
    DesiredPatch {
        /// `$version`, when given.
        version: Option<i64>,
    },
    /// `$iothub/methods/POST/{name}/?$rid=…`.
    MethodRequest {
        /// The method.
        name: String,
        /// The request id to answer with.
        rid: String,
    },
    /// `devices/{d}/messages/devicebound/{bag}`.
    Devicebound {
        /// Its properties.
        properties: Vec<(String, Option<String>)>,
    },
}

impl Outbound {
    /// Reads a topic the hub published to; `None` for anything else.
    pub fn parse(topic: &str) -> Option<Self> {
        let query_value = |query: &str, key: &str| {
            query.split('&').find_map(|p| p.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned)
        };
        if let Some(rest) = topic.strip_prefix("$iothub/") {
            let (path, query) = rest.split_once("/?").unwrap_or((rest.trim_end_matches('/'), ""));
            let version = query_value(query, "$version").and_then(|v| v.parse().ok());
            return match path.split('/').collect::<Vec<_>>().as_slice() {
                ["twin", "res", status] => Some(Self::TwinResponse {
                    status: status.parse().ok()?,
                    rid: query_value(query, "$rid")?,
                    version,
                }),
                ["twin", "PATCH", "properties", "desired"] => Some(Self::DesiredPatch { version }),
                ["methods", "POST", name] => Some(Self::MethodRequest {
                    name: decode(name)?,
                    rid: query_value(query, "$rid")?,
                }),
                _ => None,
            };
        }
        let rest = topic.strip_prefix("devices/")?;
        let (_, bag) = rest.split_once("/messages/devicebound/")?;
        Some(Self::Devicebound { properties: parse_bag(bag).ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_sdks_connect_and_topics_read_as_iot_hub_reads_them() {
        let u = Username::parse(
            "Hub.Local/Dev-1/m1/?api-version=2020-09-30&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0&model-id=dtmi%3Aazure%3Aiot%3AdeviceUpdateModel%3B3",
        )
        .unwrap();
        assert_eq!(u.hub, "Hub.Local");
        assert_eq!(u.identity, Identity::parse("Dev-1/m1").unwrap());
        assert_eq!(u.model_id.as_deref(), Some("dtmi:azure:iot:deviceUpdateModel;3"));
        assert!(matches!(Identity::parse(""), Err(TopicError::ClientId(_))));
        assert!(matches!(Identity::parse("a b"), Err(TopicError::ClientId(_))));
        let me = Identity::device("Dev-1");
        assert_eq!(
            Inbound::parse("$iothub/twin/GET/?$rid=9f1", &me).unwrap(),
            Inbound::TwinGet { rid: "9f1".into() }
        );
        assert_eq!(
            Inbound::parse("$iothub/methods/res/200/?$rid=9", &me).unwrap(),
            Inbound::MethodResponse { status: 200, rid: "9".into() }
        );
        let t = Inbound::parse(
            "devices/Dev-1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&k=v%20w&flag",
            &me,
        )
        .unwrap();
        assert_eq!(
            t,
            Inbound::Telemetry {
                properties: vec![
                    ("$.ct".into(), Some("application/json".into())),
                    ("$.ce".into(), Some("utf-8".into())),
                    ("k".into(), Some("v w".into())),
                    ("flag".into(), None),
                ]
            }
        );
        for other in [
            "devices/Dev-2/messages/events/",
            "devices/Dev-1/messages/devicebound/",
            "$iothub/twin/PATCH/properties/desired/?$rid=1",
            "$iothub/twin/GET/",
            "devices/+/messages/events/",
            "#",
        ] {
            let e = Inbound::parse(other, &me).unwrap_err();
            assert!(matches!(e, TopicError::Topic { .. }), "{other}: {e}");
        }
        assert_eq!(
            Filter::parse("devices/Dev-1/messages/devicebound/#", &me),
            Some(Filter::Devicebound)
        );
        for f in [
            "#",
            "$iothub/#",
            "devices/+/messages/devicebound/#",
            "devices/Dev-2/messages/devicebound/#",
        ] {
            assert_eq!(Filter::parse(f, &me), None, "{f}");
        }
        for f in Filter::ALL {
            let who = if f == Filter::ModuleInputs {
                Identity::parse("d/m").unwrap()
            } else {
                me.clone()
            };
            assert_eq!(Filter::parse(&f.text(&who), &who), Some(f));
        }
        assert_eq!(
            Outbound::parse("$iothub/twin/res/204/?$rid=ab&$version=7"),
            Some(Outbound::TwinResponse { status: 204, rid: "ab".into(), version: Some(7) })
        );
        assert_eq!(
            Outbound::parse(&method_request("re boot", "1f")),
            Some(Outbound::MethodRequest { name: "re boot".into(), rid: "1f".into() })
        );
        let bag = vec![("$.mid".to_owned(), Some("a&b=c".to_owned())), ("x".to_owned(), None)];
        assert_eq!(parse_bag(&format_bag(&bag)).unwrap(), bag);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%e2%82"), None);
    }
}

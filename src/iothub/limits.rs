//! IoT Hub's limits and naming rules, in one place: serve enforces them on every twin, identity
//! and configuration it stores, and the Edge manifest validator reports them before a
//! deployment is made.
//!
//! Sources: IoT Hub's device- and module-twin guides, "Tags and properties format" and "Device
//! twin size" (`iot-hub-devguide-device-twins.md`, `iot-hub-devguide-module-twins.md`), the
//! quotas page (`iot-hub-devguide-quotas-throttling.md`), the identity registry guide, and the
//! service REST specification (`../shared/specs/iothub-service`); notes in
//! `../shared/reference/edge.md` §1.5 and §3.6 and `iothub-device.md`.

use serde_json::{Map, Value};

use crate::finding::JsonPath;

/// Tags of one twin, by IoT Hub's size count ([`size`]).
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
/// Desired properties of one twin, and reported properties, each by [`size`].
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;
/// Nesting of objects in tags and properties (the section itself is level 1).
pub const MAX_DEPTH: usize = 10;
/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest string value, in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Longest device or module id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Most module identities of one device.
pub const MAX_MODULES_PER_DEVICE: usize = 50;
/// Configurations (ADM and Edge deployments, layered ones included) of a paid-tier hub.
pub const MAX_CONFIGURATIONS: usize = 100;
/// Longest lifetime serve accepts for a device's SAS token. IoT Hub documents no maximum for
/// device tokens but refuses expiries it cannot represent; the SDKs renew theirs hourly and
/// the longest any tool writes is a year, so ten years leaves every real token room while an
/// `se` near `2^64` (a token that never expires) is refused.
pub const MAX_SAS_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// The largest MQTT packet serve reads (its remaining length): a device-to-cloud message of
/// 256 KB (the quotas page) and its topic with properties.
pub const MAX_MQTT_PACKET: usize = 256 * 1024 + 2 * 1024;
/// Most topic filters one device or module subscribes to at once ("A device can only
/// subscribe to five topics at a time", iot-mqtt-connect-to-iot-hub.md).
pub const MAX_SUBSCRIPTIONS: usize = 5;
/// The longest the hub waits for the next packet: 1.5 × the client's keep-alive, at most
/// 1,767 s (iot-mqtt-connect-to-iot-hub.md, "Default keep-alive timeout").
pub const MAX_KEEPALIVE_WAIT_SECS: u64 = 1767;
/// A direct method's payload, either way (iot-hub-devguide-direct-methods.md).
pub const MAX_METHOD_PAYLOAD: usize = 128 * 1024;
/// `responseTimeoutInSeconds` of a direct method: at least, default and at most (the service
/// SDKs' `CloudToDeviceMethod`).
pub const METHOD_RESPONSE_TIMEOUT_SECS: (u64, u64, u64) = (5, 30, 300);
/// `connectTimeoutInSeconds` of a direct method: default and at most.
pub const METHOD_CONNECT_TIMEOUT_SECS: (u64, u64) = (0, 300);
/// A cloud-to-device message's body, and the most messages waiting for one device
/// (the quotas page).
pub const MAX_C2D_BYTES: usize = 64 * 1024;
/// See [`MAX_C2D_BYTES`].
pub const MAX_C2D_PENDING: usize = 50;

/// Characters an id may hold besides ASCII letters and digits (device and module ids alike).
const ID_SYMBOLS: &[u8] = b"-:.+%_#*?!(),=@;$'";

/// Which part of a twin a document is, for its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `tags`.
    Tags,
    /// `properties.desired`.
    Desired,
    /// `properties.reported`.
    Reported,
}

impl Section {
    /// The section's name as the twin spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tags => "tags",
            Self::Desired => "properties.desired",
            Self::Reported => "properties.reported",
        }
    }

    /// Its size limit.
    pub fn max_bytes(self) -> usize {
        match self {
            Self::Tags => MAX_TAGS_BYTES,
            Self::Desired | Self::Reported => MAX_PROPERTIES_BYTES,
        }
    }
}

/// A document IoT Hub would refuse, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RuleError {
    /// Where, from the section's root.
    pub path: JsonPath,
    /// Which rule: `twin-key`, `twin-value`, `twin-depth`, `twin-size`.
    pub rule: &'static str,
    /// What is wrong, with the limit.
    pub message: String,
}

/// The size IoT Hub counts for a twin section: for every property the UTF-8 length of its key
/// plus its value's size, where a string counts its UTF-8 bytes without control characters, a
/// number 8, a boolean 4, and an object or array the sum of what it holds. `$`-keys of the
/// section itself (`$version`, `$metadata`) are read-only and not counted.
pub fn size(section: &Map<String, Value>) -> usize {
    section
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "$version" | "$metadata"))
        .map(|(k, v)| k.len() + value_size(v))
        .sum()
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().filter(|c| !c.is_control()).map(char::len_utf8).sum(),
        Value::Number(_) => 8,
        Value::Bool(_) | Value::Null => 4,
        Value::Array(a) => a.iter().map(value_size).sum(),
        Value::Object(o) => o.iter().map(|(k, x)| k.len() + value_size(x)).sum(),
    }
}

/// Every violation of the key, string and depth rules in `v` (at `path`, nested `depth` deep:
/// a section's own members are at depth 1), in document order.
pub fn violations(v: &Value, path: &JsonPath, depth: usize) -> Vec<RuleError> {
    let mut out = Vec::new();
    walk(v, path, depth, &mut out);
    out
}

fn walk(v: &Value, path: &JsonPath, depth: usize, out: &mut Vec<RuleError>) {
    if depth > MAX_DEPTH {
        out.push(RuleError {
            path: path.clone(),
            rule: "twin-depth",
            message: format!("nests deeper than {MAX_DEPTH} levels, which IoT Hub refuses"),
        });
        return;
    }
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let kp = path.key(k);
                if let Err(message) = check_key(k) {
                    out.push(RuleError { path: kp.clone(), rule: "twin-key", message });
                }
                walk(x, &kp, depth + 1, out);
            }
        }
        Value::String(s) if s.len() > MAX_STRING_BYTES => out.push(RuleError {
            path: path.clone(),
            rule: "twin-value",
            message: format!("is {} bytes; a twin string holds at most 4 KB", s.len()),
        }),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, &path.index(i), depth + 1, out);
            }
        }
        _ => {}
    }
}

/// A twin key: 1 to 1,024 UTF-8 bytes without `.`, `$`, spaces or control characters.
pub fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > MAX_KEY_BYTES {
        return Err(format!("twin key `{}` is empty or over 1 KB", short(k)));
    }
    if k.chars().any(|c| c.is_control() || matches!(c, '.' | '$' | ' ')) {
        return Err(format!(
            "twin key `{}` holds `.`, `$`, a space or a control character, which IoT Hub refuses",
            short(k).escape_debug()
        ));
    }
    Ok(())
}

/// The first 64 characters of a key, for messages.
fn short(k: &str) -> String {
    match k.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &k[..i]),
        None => k.to_owned(),
    }
}

/// Checks what a client writes into a twin section: `patch` must keep the key, string and depth
/// rules, and `merged` (the section with the patch applied) its size limit. The first
/// violation is the error.
pub fn check_patch(
    section: Section,
    patch: &Map<String, Value>,
    merged: &Map<String, Value>,
) -> Result<(), RuleError> {
    let root = JsonPath::root().key(section.name());
    for (k, v) in patch {
        let kp = root.key(k);
        check_key(k).map_err(|message| RuleError {
            path: kp.clone(),
            rule: "twin-key",
            message,
        })?;
        if let Some(e) = violations(v, &kp, 2).into_iter().next() {
            return Err(e);
        }
    }
    let n = size(merged);
    if n > section.max_bytes() {
        return Err(RuleError {
            path: root,
            rule: "twin-size",
            message: format!(
                "would be {n} bytes; IoT Hub keeps at most {} KB of {}",
                section.max_bytes() / 1024,
                section.name()
            ),
        });
    }
    Ok(())
}

/// A device id as IoT Hub has them: 1 to 128 ASCII letters, digits and
/// `- : . + % _ # * ? ! ( ) , = @ ; $ '`.
pub fn check_device_id(id: &str) -> Result<(), String> {
    check_id("device", id)
}

/// A module id: the same characters and length as a device id.
pub fn check_module_id(id: &str) -> Result<(), String> {
    check_id("module", id)
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = (1..=MAX_ID_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || ID_SYMBOLS.contains(&b));
    if ok {
        return Ok(());
    }
    Err(format!(
        "{what} id `{}` is not 1-128 letters, digits and - : . + % _ # * ? ! ( ) , = @ ; $ '",
        short(id).escape_debug()
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn size_counts_keys_and_values_as_iot_hub_does() {
        let m = map(json!({"ab": "xyz", "n": 1.5, "b": true, "o": {"k": "\u{7}v"}, "$version": 9}));
        // ab+xyz = 5, n+8 = 9, b+4 = 5, o + (k + v) = 3 (the bell is not counted).
        assert_eq!(size(&m), 5 + 9 + 5 + 3);
        assert_eq!(size(&map(json!({"é": "ü"}))), 4);
    }

    #[test]
    fn patches_are_checked_for_keys_strings_depth_and_the_merged_size() {
        let ok = map(json!({"a": {"b": "c"}}));
        assert_eq!(check_patch(Section::Tags, &ok, &ok), Ok(()));
        for (bad, rule, path) in [
            (json!({"a.b": 1}), "twin-key", "$.tags[\"a.b\"]"),
            (json!({"x": {"$y": 1}}), "twin-key", "$.tags.x.$y"),
            (json!({"x": {"a b": 1}}), "twin-key", "$.tags.x[\"a b\"]"),
            (json!({"x": "s".repeat(4097)}), "twin-value", "$.tags.x"),
        ] {
            let e = check_patch(Section::Tags, &map(bad.clone()), &map(bad)).unwrap_err();
            assert_eq!((e.rule, e.path.to_string().as_str()), (rule, path), "{e}");
        }
        let mut deep = json!(1);
        for _ in 0..10 {
            deep = json!({"d": deep});
        }
        let deep = map(deep);
        let e = check_patch(Section::Desired, &deep, &deep).unwrap_err();
        assert_eq!(e.rule, "twin-depth", "{e}");
        let big = map(json!({"x": "s".repeat(4000), "y": "s".repeat(4000), "z": "s".repeat(200)}));
        let e = check_patch(Section::Tags, &map(json!({"z": "s"})), &big).unwrap_err();
        assert_eq!(e.rule, "twin-size");
        assert!(e.message.contains("at most 8 KB of tags"), "{e}");
        assert_eq!(check_patch(Section::Reported, &map(json!({"z": "s"})), &big), Ok(()));
    }

    #[test]
    fn ids_follow_iot_hubs_rule() {
        for ok in ["d1", "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q$r's", &"x".repeat(128)] {
            assert_eq!(check_device_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a/b", "..x/", "a b", "a\0", "a\nb", "é", &"x".repeat(129)] {
            assert!(check_module_id(bad).is_err(), "{bad:?}");
        }
    }
}

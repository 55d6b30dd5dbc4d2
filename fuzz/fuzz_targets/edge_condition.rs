//! Target conditions from arbitrary text: each parses or is refused with a position inside the
//! text (or just past its end), never a panic; what parses evaluates against a twin without
//! panicking, and parsing is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::edge::condition::Target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Target::parse(&text) {
        Ok(t) => {
            assert_eq!(Target::parse(&text).ok(), Some(t.clone()), "parse is deterministic");
            let twin = serde_json::json!({
                "deviceId": "d1", "tags": {"a": 1, "b": "x", "c": {"d": [1, null]}},
                "properties": {"reported": {"v": 2.5}, "desired": {"$version": 3}},
                "capabilities": {"iotEdge": true},
            });
            let _ = t.matches(&twin);
        }
        Err(e) => {
            let len = text.chars().count();
            assert!(e.position >= 1 && e.position <= len + 1, "position {} of {len}", e.position);
        }
    }
});

//! APT manifest validation and package-list parsing on arbitrary bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = otaforge::apt::parse_package_list(&text);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = otaforge::apt::validate_value(&v);
    }
});

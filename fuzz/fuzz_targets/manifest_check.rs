//! Import-manifest validation on arbitrary bytes: findings, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = otaforge::manifest::check_bytes(std::path::Path::new("fuzz.json"), data);
});

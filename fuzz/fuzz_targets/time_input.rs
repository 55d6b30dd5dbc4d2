//! Every time and duration a command line takes (`--expires`, `--at`, `--timeout`,
//! `--io-timeout`, `--sas-expiry`, serve's `?ttl=`), on arbitrary text split into argument-like
//! pieces: a value is accepted or refused, never a panic, and what is accepted prints and parses
//! back to itself.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use otaforge::time::{Timestamp, parse_duration, parse_time_or_duration};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let now = Timestamp::parse("2026-11-29T00:00:00Z").expect("fixed time");
    for arg in text.split('\0') {
        if let Ok(t) = Timestamp::parse(arg) {
            assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        }
        if let Ok(t) = parse_time_or_duration(arg, now) {
            let _ = t.to_string();
        }
        let _ = parse_duration(arg, Duration::from_secs(7 * 86_400));
        let _ = otaforge::storage::parse_ttl(arg);
    }
});

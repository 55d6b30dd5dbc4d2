//! What reaches serve's IoT Hub surface from the network: SAS tokens in `Authorization`,
//! twin queries, JSON bodies (repeated keys) and connection strings, on arbitrary text. A value is accepted or refused, never a panic; a token parsed from random
//! text never verifies with a key it was not made with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::iothub::ConnectionString;
use otaforge::iothub::query::Query;
use otaforge::iothub::sas::{Claims, SasKey};

fuzz_target!(|data: &[u8]| {
    let _ = otaforge::finding::duplicate_keys(data);
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Claims::parse(&text) {
        let key = SasKey::from_base64("a2V5LWZvci10aGUtZnV6ei10YXJnZXQ=").expect("fixed key");
        assert!(c.verify(&key, 0).is_err(), "a random token verified");
        let _ = c.covers(&text);
    }
    if let Ok(q) = Query::parse(&text) {
        let _ = q.matches(&otaforge::iothub::Twin::default());
    }
    let _ = text.parse::<ConnectionString>();
});

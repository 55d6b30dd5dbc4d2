//! Any text as a detached JWS or as release metadata, and any signed delta trailer: the checks
//! never panic and never accept what the trusted key did not sign.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::sign::{PrivateKey, TrustedKeys, jws, meta};

fuzz_target!(|data: &[u8]| {
    let mut keys = TrustedKeys::new();
    keys.add(PrivateKey::from_seed(&[9; 32]).public_key());
    let text = String::from_utf8_lossy(data);
    assert!(jws::verify_detached(&text, b"payload", &keys, "fuzz").is_err());
    let policy = meta::Policy { threshold: 1, ..meta::Policy::default() };
    assert!(meta::verify(&text, &keys, &policy, std::time::SystemTime::UNIX_EPOCH).is_err());
});

//! Untrusted input of the embedded service: import request bodies and signed blob URLs. Parsing
//! never panics, and no fuzzed URL is accepted by a store whose key it was not signed with.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use otaforge::storage::dir::DirStore;

fn store() -> &'static DirStore {
    static S: OnceLock<DirStore> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("otaforge-fuzz-{}", std::process::id()));
        DirStore::open(&dir, "http://127.0.0.1:1/blobs").expect("store")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Vec<otaforge::service::ImportItem>>(data);
    let _ = serde_json::from_slice::<otaforge::service::UpdateOperation>(data);
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    assert!(store().resolve(path, query, SystemTime::now()).is_err(), "a forged URL was accepted");
});

//! Any bytes as an MCUboot image: `parse` and `verify` never panic, and nothing random verifies.
//! The input also gets a valid header magic so the fuzzer reaches the TLV parser at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::mcuboot;
use otaforge::sign::{PrivateKey, TrustedKeys};

fuzz_target!(|data: &[u8]| {
    let mut keys = TrustedKeys::new();
    keys.add(PrivateKey::from_seed(&[7; 32]).public_key());
    let mut with_magic = mcuboot::IMAGE_MAGIC.to_le_bytes().to_vec();
    with_magic.extend_from_slice(data);
    for img in [data, &with_magic[..]] {
        let _ = mcuboot::parse(img);
        assert!(mcuboot::verify(img, &keys).is_err(), "random bytes verified");
    }
});

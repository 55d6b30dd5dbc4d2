//! Any bytes restored as a saved patcher state (a device reads it back from flash after a power
//! cut): refused, or a patcher that then takes any op-stream bytes without a panic, a read
//! outside old or a write past the declared size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::delta::Patcher;
use otaforge::delta::ops::CHECKPOINT_LEN;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 + CHECKPOINT_LEN {
        return;
    }
    let old: Vec<u8> = (0..usize::from(data[0]) * 8).map(|i| i as u8).collect();
    let new_len = u64::from(data[1]) * 16;
    let (saved, stream) = data[2..].split_at(CHECKPOINT_LEN);
    // As written, and with the lengths and digest made right, so the fuzzer reaches the checks
    // behind the digest.
    let mut fixed = Patcher::new(old.len() as u64, new_len).checkpoint();
    fixed[20..85].copy_from_slice(&saved[20..85]);
    let digest = otaforge::Sha256::digest(&fixed[..85]);
    fixed[85..].copy_from_slice(&digest.as_bytes()[..8]);
    for s in [saved, &fixed[..]] {
        let Ok(mut p) = Patcher::restore(s, old.len() as u64, new_len) else { continue };
        let before = p.produced();
        let mut written = 0u64;
        let mut scratch = [0u8; 5];
        let _ = p.feed(stream, &mut &old[..], &mut scratch, &mut |b| {
            written += b.len() as u64;
            Ok(())
        });
        assert!(before + written <= new_len);
        assert_eq!(before + written, p.produced());
    }
});

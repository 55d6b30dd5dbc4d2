//! The low-RAM patcher fed arbitrary op-stream bytes in arbitrary pieces: no panic, no read
//! outside old, no write past the declared size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::delta::Patcher;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let old: Vec<u8> = (0..usize::from(data[0]) * 8).map(|i| i as u8).collect();
    let new_len = u64::from(data[1]) * 16;
    let piece = usize::from(data[2]).max(1);
    let mut p = Patcher::new(old.len() as u64, new_len);
    let mut scratch = [0u8; 7];
    let mut written = 0u64;
    for chunk in data[3..].chunks(piece) {
        if p.feed(chunk, &mut &old[..], &mut scratch, &mut |b| {
            written += b.len() as u64;
            Ok(())
        })
        .is_err()
        {
            break;
        }
    }
    assert!(written <= new_len);
    assert_eq!(written, p.produced());
    let _ = p.finish();
});

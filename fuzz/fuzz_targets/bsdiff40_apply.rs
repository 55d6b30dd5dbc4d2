//! Any bytes after a BSDIFF40 magic: no panic, never more output than the header declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::delta::bsdiff40;

fuzz_target!(|data: &[u8]| {
    let old: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let mut patch = bsdiff40::MAGIC.to_vec();
    patch.extend_from_slice(data);
    let mut written = 0u64;
    let declared = bsdiff40::layout(&patch).map(|l| l.new_size);
    let result = bsdiff40::apply(&patch, old.len() as u64, &mut &old[..], &mut |b| {
        written += b.len() as u64;
        Ok(())
    });
    if let Ok(n) = declared {
        assert!(written <= n);
        if result.is_ok() {
            assert_eq!(written, n);
        }
    }
});

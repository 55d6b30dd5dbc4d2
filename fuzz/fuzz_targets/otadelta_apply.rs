//! Any bytes given to `delta::apply` as an otadelta: no panic, and success only with the
//! declared result. The fuzzer's input is split into an old image and a delta; the first
//! input byte chooses the split, so it can reach digests that match.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::delta;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let at = (usize::from(split) * 16).min(rest.len());
    let (old, patch) = rest.split_at(at);
    let mut with_magic = delta::format::MAGIC.to_vec();
    with_magic.extend_from_slice(patch);
    for d in [patch, &with_magic[..]] {
        let mut out = Vec::new();
        if let Ok(applied) = delta::apply(old, d, None, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        }) {
            assert_eq!(applied.new_size, out.len() as u64);
            assert_eq!(applied.new_sha256, otaforge::Sha256::digest(&out));
        }
        let _ = delta::info(d);
    }
});

//! Method 3 (the op stream in five parts) from hostile bytes: five stored parts cut from the
//! input, the corrections run-length coded or not, with or without a filter (the reader then derives the displacement table from the
//! controls), in a header whose digest is right, so every check behind the digest is reached.
//! `delta::apply` must not panic, and succeeds only with the declared result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::Sha256;
use otaforge::delta::{self, Compression, Header, Isa, Method};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let filter = [None, Some(Isa::Thumb2), Some(Isa::X86_64)][usize::from(data[0] % 3)];
    let new_len = u64::from(data[1]) * 8;
    let extra = u64::from(data[2]); // the derived table's length, guessed
    let old_len = (usize::from(data[3]) * 4).min(data.len() - 12);
    let cuts: Vec<usize> = data[4..9].iter().map(|&c| usize::from(c)).collect();
    let declared_new = Sha256::digest(&data[9..12]);
    let (old, mut rest) = data[12..].split_at(old_len);
    let mut parts: Vec<&[u8]> = Vec::new();
    for (i, &c) in cuts.iter().enumerate() {
        let n = if i == 4 { rest.len() } else { c.min(rest.len()) };
        let (p, r) = rest.split_at(n);
        parts.push(p);
        rest = r;
    }
    let mut payload = Vec::new();
    for p in &parts {
        payload.extend_from_slice(&(p.len() as u64).to_le_bytes());
        payload.extend_from_slice(&(p.len() as u64).to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
    }
    // The flags byte: part 3 run-length coded or not.
    payload.push(data[0] >> 7);
    let raw: u64 = parts.iter().map(|p| p.len() as u64).sum();
    for p in &parts {
        payload.extend_from_slice(p);
    }
    for new_sha in [declared_new, Sha256::digest(b"")] {
        let mut h = Header {
            method: Method::Split,
            compression: Compression::None,
            window: 0,
            lzma_props: 0,
            old_size: old.len() as u64,
            old_sha256: Sha256::digest(old),
            new_size: new_len,
            new_sha256: new_sha,
            stream_len: raw + if filter.is_some() { extra } else { 0 },
            payload_len: payload.len() as u64,
            digest: Sha256::digest(b""),
            signed: false,
            filter,
            abs_pointers: false,
            // x86-64's extended references (Jcc, RIP-relative) when the input says so.
            refs: filter == Some(Isa::X86_64) && data[0] & 0x40 != 0,
            in_place: None,
        };
        h.digest = delta::format::digest(&h.encode(), &payload);
        let mut d = h.encode().to_vec();
        d.extend_from_slice(&payload);
        let mut out = Vec::new();
        if let Ok(a) = delta::apply(old, &d, None, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        }) {
            assert_eq!(a.new_sha256, Sha256::digest(&out));
            assert_eq!(a.new_size, new_len);
        }
        let _ = delta::info(&d);
    }
});

//! The device-sized LZMA decoder (`delta::lzma`) against liblzma: any bytes decode without a
//! panic, and when ours reaches the end marker liblzma decodes the same bytes to the same
//! output; and any data liblzma compresses (with the fuzzer's lc/lp/pb) decodes back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::delta::lzma::{LzmaDecoder, probs_len};

fn filters(props: u8, dict: u32, preset: u32) -> liblzma::stream::Filters {
    let p = u32::from(props);
    let mut o = liblzma::stream::LzmaOptions::new_preset(preset).unwrap();
    o.dict_size(dict)
        .literal_context_bits(p % 9)
        .literal_position_bits(p / 9 % 5)
        .position_bits(p / 45);
    let mut f = liblzma::stream::Filters::new();
    f.lzma1(&o);
    f
}

fn ours(props: u8, dict: u32, input: &[u8]) -> Option<Vec<u8>> {
    let mut d = vec![0u8; dict as usize];
    let mut probs = vec![0u16; probs_len(props)?];
    let mut dec = LzmaDecoder::new(props, &mut d, &mut probs).ok()?;
    let mut it = input.iter();
    let mut src = || it.next().copied().ok_or(otaforge::delta::IoError { code: -1 });
    let mut out = Vec::new();
    let mut buf = [0u8; 97];
    loop {
        match dec.read(&mut src, &mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
        if out.len() > 1 << 20 {
            return None;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    // lc + lp ≤ 4 as liblzma requires; pb ≤ 4.
    let (lc, lp, pb) = (u32::from(sel % 5), u32::from(sel / 5 % 5), u32::from(sel / 25 % 5));
    let (lc, lp) = if lc + lp > 4 { (lc, 4 - lc) } else { (lc, lp) };
    let props = ((pb * 5 + lp) * 9 + lc) as u8;
    let dict = 4096;
    // Any bytes as a stream.
    if let Some(out) = ours(props, dict, rest) {
        let mut s = liblzma::stream::Stream::new_raw_decoder(&filters(props, dict, 6)).unwrap();
        let mut theirs = Vec::with_capacity(out.len() + 64);
        let status = s.process_vec(rest, &mut theirs, liblzma::stream::Action::Finish);
        assert!(status.is_ok(), "liblzma refuses a stream ours decoded");
        assert!(theirs == out, "the two decoders disagree");
    }
    // The fuzzer's bytes as data, compressed by liblzma.
    let mut s = liblzma::stream::Stream::new_raw_encoder(&filters(props, dict, 1)).unwrap();
    let mut packed = Vec::with_capacity(rest.len() * 2 + 64);
    s.process_vec(rest, &mut packed, liblzma::stream::Action::Finish).unwrap();
    assert_eq!(ours(props, dict, &packed).as_deref(), Some(rest), "round trip");
});

//! The raw LZMA1 decoder a device uses (`otaforge_applier::lzma`): no allocation, tables
//! sized from the stream. The host's own apply keeps liblzma, which is faster; the tests here
//! hold the device's decoder to liblzma's encoder.

pub use otaforge_applier::LzmaError;
pub use otaforge_applier::lzma::{LzmaDecoder, Source, probs_len};

#[cfg(test)]
mod tests {
    use super::super::codec::{Encoder, LzmaParams};
    use super::*;
    use otaforge_applier::IoError;

    fn decode(payload: &[u8], props: u8, dict: u32, piece: usize) -> Result<Vec<u8>, LzmaError> {
        let mut d = vec![0u8; dict as usize];
        let mut probs = vec![0u16; probs_len(props).unwrap()];
        let mut dec = LzmaDecoder::new(props, &mut d, &mut probs)?;
        let mut it = payload.iter();
        let mut src = || it.next().copied().ok_or(IoError { code: -1 });
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = dec.read(&mut src, &mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn decodes_what_liblzma_encodes() {
        let mut x = 0x1234_5678u32;
        let mut data: Vec<u8> = (0..60_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 < 3 { (x % 5) as u8 } else { (x >> 9) as u8 }
            })
            .collect();
        // Long and repeated matches, far and near.
        let copy = data[1000..9000].to_vec();
        data.extend_from_slice(&copy);
        data.extend(std::iter::repeat_n(7u8, 3000));
        data.extend_from_slice(&copy[..100]);
        for (lc, lp, pb, dict) in
            [(0, 0, 0, 4096), (3, 0, 2, 1 << 16), (1, 2, 1, 8192), (4, 0, 4, 4096)]
        {
            let params = LzmaParams { dict, lc, lp, pb };
            let enc = Encoder::Lzma { preset: 6, params };
            let payload = enc
                .compress(&mut |w| {
                    w.write_all(&data)?;
                    Ok(data.len() as u64)
                })
                .unwrap();
            for piece in [1, 7, 4096] {
                let got = decode(&payload, params.props(), dict, piece).unwrap();
                assert!(got == data, "lc {lc} lp {lp} pb {pb} dict {dict} pieces {piece}");
            }
            // Truncated or damaged: an error, never a panic or a wrong success.
            assert!(decode(&payload[..payload.len() / 2], params.props(), dict, 64).is_err());
            let mut bad = payload.clone();
            bad[payload.len() / 3] ^= 0x40;
            assert!(!matches!(decode(&bad, params.props(), dict, 64), Ok(v) if v == data));
        }
        assert_eq!(probs_len(0), Some(1847 + 0x300));
        assert_eq!(probs_len(225), None);
    }
}

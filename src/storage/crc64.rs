//! The CRC-64 Azure Storage checks in `x-ms-content-crc64`: polynomial 0x9A6C9329AC4BC9B5,
//! bit-reflected, initial value and final XOR all ones, sent as 8 little-endian bytes. (The
//! parameters were confirmed against the value Azurite computes; the polynomial is the one the
//! Azure SDKs name.) Slicing-by-8 tables, built at compile time, make it several times cheaper
//! than MD5, the other transactional checksum the service accepts.

const POLY: u64 = 0x9A6C_9329_AC4B_C9B5;

const fn tables() -> [[u64; 256]; 8] {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

static TABLES: [[u64; 256]; 8] = tables();

/// Streaming CRC-64 state.
#[derive(Debug, Clone, Copy)]
pub struct Crc64(u64);

impl Default for Crc64 {
    fn default() -> Self {
        Self(!0)
    }
}

impl Crc64 {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        let t = &TABLES;
        let mut c = self.0;
        let mut chunks = data.chunks_exact(8);
        for b in &mut chunks {
            let x = c ^ u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            c = t[7][(x & 0xff) as usize]
                ^ t[6][((x >> 8) & 0xff) as usize]
                ^ t[5][((x >> 16) & 0xff) as usize]
                ^ t[4][((x >> 24) & 0xff) as usize]
                ^ t[3][((x >> 32) & 0xff) as usize]
                ^ t[2][((x >> 40) & 0xff) as usize]
                ^ t[1][((x >> 48) & 0xff) as usize]
                ^ t[0][(x >> 56) as usize];
        }
        for &b in chunks.remainder() {
            c = t[0][((c ^ u64::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    /// The checksum as the header carries it (8 bytes, little endian).
    pub fn finish(&self) -> [u8; 8] {
        (!self.0).to_le_bytes()
    }

    /// One-shot checksum.
    pub fn of(data: &[u8]) -> [u8; 8] {
        let mut c = Self::default();
        c.update(data);
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn matches_the_value_azurite_computes() {
        // Azurite's Crc64Mismatch response for the body "hello\n" names this value.
        let b64 = base64::engine::general_purpose::STANDARD.encode(Crc64::of(b"hello\n"));
        assert_eq!(b64, "B1ZarUv7Q2o=");
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let data: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 256) as u8).collect();
        let mut c = Crc64::default();
        for part in data.chunks(13) {
            c.update(part);
        }
        assert_eq!(c.finish(), Crc64::of(&data));
        // Bit-at-a-time reference.
        let mut r = !0u64;
        for &b in &data {
            r ^= u64::from(b);
            for _ in 0..8 {
                r = if r & 1 == 1 { (r >> 1) ^ POLY } else { r >> 1 };
            }
        }
        assert_eq!(Crc64::of(&data), (!r).to_le_bytes());
    }
}

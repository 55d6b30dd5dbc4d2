//! The otadelta header (152 bytes, little endian). `docs/delta-format.md` is the specification.

use crate::Sha256;

/// First eight bytes of every otadelta file.
pub const MAGIC: &[u8; 8] = b"OTADELTA";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 152;
/// The header bytes covered by [`Header::digest`] (everything before the digest itself).
pub const DIGESTED_LEN: usize = 120;
/// Header `flags` bit: a signature block follows the payload.
pub const FLAG_SIGNED: u8 = 1;
/// Header `flags` bit: the delta is applied inside the old image's own flash slot
/// ([`InPlace`]); bytes 18..23 hold its segment size and shift.
pub const FLAG_IN_PLACE: u8 = 2;
/// Size of the signature block of a signed delta: key id (32) and Ed25519 signature (64).
pub const SIGNATURE_LEN: usize = 96;
/// What a delta signature signs: this context string, then the 32-byte digest. The context keeps
/// a delta signature from being valid as any other otaforge signature (JWS signing input starts
/// with base64url text, never with this).
pub const SIGNATURE_CONTEXT: &[u8; 22] = b"otadelta signature v1\0";

/// The digest of a delta: SHA-256 of `header[..DIGESTED_LEN]` followed by `payload`.
pub fn digest(header_prefix: &[u8], payload: &[u8]) -> Sha256 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(&header_prefix[..DIGESTED_LEN]);
    h.update(payload);
    Sha256::from_bytes(h.finalize().into())
}

/// How the payload rebuilds new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The op stream (suffix-array matching with corrections and literals).
    Bsdiff,
    /// A zstd frame of new that references old as its prefix (patch-from).
    Zstd,
    /// The op stream in five separately compressed parts ([`super::split`]).
    #[serde(rename = "bsdiff-split")]
    Split,
}

impl Method {
    fn code(self) -> u8 {
        match self {
            Method::Bsdiff => 1,
            Method::Zstd => 2,
            Method::Split => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Method::Bsdiff),
            2 => Some(Method::Zstd),
            3 => Some(Method::Split),
            _ => None,
        }
    }
}

/// How the op stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    None,
    /// One zstd frame.
    Zstd,
    /// Raw LZMA1 with an end marker; properties in the header.
    Lzma,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Lzma => 2,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Lzma),
            _ => None,
        }
    }
}

/// Everything the header declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// How the payload rebuilds new.
    pub method: Method,
    /// How the op stream is compressed (always `Zstd` for the zstd method).
    pub compression: Compression,
    /// Decoder window in bytes: the zstd window, or the LZMA dictionary size; 0 when stored.
    pub window: u32,
    /// LZMA properties byte `(pb * 5 + lp) * 9 + lc`; 0 otherwise.
    pub lzma_props: u8,
    /// Old file size.
    pub old_size: u64,
    /// Old file digest.
    pub old_sha256: Sha256,
    /// New file size.
    pub new_size: u64,
    /// New file digest.
    pub new_sha256: Sha256,
    /// Length of the decompressed payload (the op stream, or new for the zstd method).
    pub stream_len: u64,
    /// Length of the compressed payload that follows the header.
    pub payload_len: u64,
    /// SHA-256 over the header's first 120 bytes followed by the payload: any change to the
    /// header or the payload shows. This is the digest a signature covers.
    pub digest: Sha256,
    /// A signature block (key id, signature) follows the payload.
    pub signed: bool,
    /// The executable transform the op stream's corrections are relative to (`filter`).
    pub filter: Option<super::exec::Isa>,
    /// Segment size and shift of a delta applied in place (`flags` bit 1).
    pub in_place: Option<InPlace>,
}

/// How an in-place delta uses the flash slot (docs/delta-format.md, "In place").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InPlace {
    /// log2 of the segment size: new is written one segment at a time, and a segment is the
    /// unit of erase and of progress saved.
    pub segment_log2: u8,
    /// How many segments old is first moved up the slot, to leave room for new to grow
    /// without overwriting old bytes it still needs.
    pub shift_segments: u32,
}

impl InPlace {
    /// The smallest and largest segment sizes (64 B and 16 MiB, as log2).
    pub const SEGMENT_LOG2: std::ops::RangeInclusive<u8> = 6..=24;

    /// Segment size in bytes.
    pub fn segment(&self) -> u64 {
        1 << self.segment_log2
    }

    /// Shift in bytes.
    pub fn shift(&self) -> u64 {
        u64::from(self.shift_segments) << self.segment_log2
    }
}

/// Why a header is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Not an otadelta file at all.
    #[error("not an otadelta file (magic is not OTADELTA)")]
    Magic,
    /// Shorter than the header.
    #[error("truncated: {0} bytes, the header alone is {HEADER_LEN}")]
    Short(usize),
    /// A version this build does not read.
    #[error("otadelta format version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    /// A field holds a value no writer produces.
    #[error("header field {field} has the invalid value {value}")]
    Field {
        /// Field name as in docs/delta-format.md.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8] = VERSION;
        h[9] = self.method.code();
        h[10] = self.compression.code();
        h[11] = self.filter.map_or(0, |f| f.code());
        h[12..16].copy_from_slice(&self.window.to_le_bytes());
        h[16] = self.lzma_props;
        h[17] = if self.signed { FLAG_SIGNED } else { 0 };
        if let Some(ip) = self.in_place {
            h[17] |= FLAG_IN_PLACE;
            h[18] = ip.segment_log2;
            h[19..23].copy_from_slice(&ip.shift_segments.to_le_bytes());
        }
        // 23 reserved, zero
        h[24..32].copy_from_slice(&self.old_size.to_le_bytes());
        h[32..64].copy_from_slice(self.old_sha256.as_bytes());
        h[64..72].copy_from_slice(&self.new_size.to_le_bytes());
        h[72..104].copy_from_slice(self.new_sha256.as_bytes());
        h[104..112].copy_from_slice(&self.stream_len.to_le_bytes());
        h[112..120].copy_from_slice(&self.payload_len.to_le_bytes());
        h[120..152].copy_from_slice(self.digest.as_bytes());
        h
    }

    /// Decodes and checks a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(HeaderError::Short(bytes.len()));
        }
        let h = &bytes[..HEADER_LEN];
        if h[8] != VERSION {
            return Err(HeaderError::Version(h[8]));
        }
        let field = |field, value: u8| HeaderError::Field { field, value: value.into() };
        let method = Method::from_code(h[9]).ok_or(field("method", h[9]))?;
        let compression = Compression::from_code(h[10]).ok_or(field("compression", h[10]))?;
        let filter = match h[11] {
            0 => None,
            c => Some(super::exec::Isa::from_code(c).ok_or(field("filter", c))?),
        };
        if h[17] & !(FLAG_SIGNED | FLAG_IN_PLACE) != 0 {
            return Err(field("flags", h[17]));
        }
        let in_place = if h[17] & FLAG_IN_PLACE != 0 {
            if !InPlace::SEGMENT_LOG2.contains(&h[18]) {
                return Err(field("segment_log2", h[18]));
            }
            let shift_segments = u32::from_le_bytes(h[19..23].try_into().unwrap_or_default());
            Some(InPlace { segment_log2: h[18], shift_segments })
        } else {
            if let Some(&b) = h[18..23].iter().find(|b| **b != 0) {
                return Err(field("reserved", b));
            }
            None
        };
        if h[23] != 0 {
            return Err(field("reserved", h[23]));
        }
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or_default());
        let sha_at = |o: usize| Sha256::from_bytes(h[o..o + 32].try_into().unwrap_or_default());
        let window = u32::from_le_bytes(h[12..16].try_into().unwrap_or_default());
        let lzma_props = h[16];
        match compression {
            Compression::Lzma if lzma_props >= 9 * 5 * 5 => {
                return Err(field("lzma_props", lzma_props));
            }
            Compression::Lzma if window < 4096 => {
                return Err(HeaderError::Field { field: "window", value: window.into() });
            }
            Compression::Zstd | Compression::None if lzma_props != 0 => {
                return Err(field("lzma_props", lzma_props));
            }
            _ => {}
        }
        if method == Method::Zstd && compression != Compression::Zstd {
            return Err(field("compression", h[10]));
        }
        if method == Method::Zstd && (filter.is_some() || in_place.is_some()) {
            return Err(field("method", h[9]));
        }
        let header = Header {
            method,
            compression,
            window,
            lzma_props,
            old_size: u64_at(24),
            old_sha256: sha_at(32),
            new_size: u64_at(64),
            new_sha256: sha_at(72),
            stream_len: u64_at(104),
            payload_len: u64_at(112),
            digest: sha_at(120),
            signed: h[17] & FLAG_SIGNED != 0,
            filter,
            in_place,
        };
        if method == Method::Zstd && header.stream_len != header.new_size {
            return Err(HeaderError::Field { field: "stream_len", value: header.stream_len });
        }
        if compression == Compression::None
            && method != Method::Split
            && header.stream_len != header.payload_len
        {
            return Err(HeaderError::Field { field: "stream_len", value: header.stream_len });
        }
        Ok(header)
    }

    /// Total file length the header declares: header, payload, and the signature block when
    /// signed.
    pub fn file_len(&self) -> u64 {
        let sig = if self.signed { SIGNATURE_LEN as u64 } else { 0 };
        (HEADER_LEN as u64).saturating_add(self.payload_len).saturating_add(sig)
    }

    /// Bytes of RAM a device needs to decompress the payload besides the patcher's own few
    /// bytes: the LZMA probability tables plus dictionary, or the zstd window plus its
    /// decoder context; zero when stored.
    pub fn decoder_ram(&self) -> u64 {
        match self.compression {
            Compression::None => 0,
            Compression::Lzma => lzma_decoder_ram(self.lzma_props, self.window),
            // ZSTD_estimateDCtxSize is about 95 KiB plus the window for zstd 1.5.
            Compression::Zstd => 95 * 1024 + u64::from(self.window),
        }
    }
}

/// RAM a table-sizing LZMA decoder ([`super::lzma`]) needs: 2-byte probabilities (1,847 fixed
/// plus 0x300 per literal coder, `1 << (lc + lp)` coders) plus the dictionary.
pub fn lzma_decoder_ram(props: u8, dict: u32) -> u64 {
    let probs = super::lzma::probs_len(props).unwrap_or(0) as u64;
    probs * 2 + u64::from(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            method: Method::Bsdiff,
            compression: Compression::Lzma,
            window: 4096,
            lzma_props: 0,
            old_size: 10,
            old_sha256: Sha256::digest(b"old"),
            new_size: 11,
            new_sha256: Sha256::digest(b"new"),
            stream_len: 30,
            payload_len: 20,
            digest: Sha256::digest(b"payload"),
            signed: false,
            filter: None,
            in_place: None,
        }
    }

    #[test]
    fn header_round_trips_and_refuses_garbage() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        assert_eq!(Header::decode(b"BSDIFF40"), Err(HeaderError::Magic));
        assert_eq!(Header::decode(&bytes[..100]), Err(HeaderError::Short(100)));
        let mut b = bytes;
        b[8] = 2;
        assert_eq!(Header::decode(&b), Err(HeaderError::Version(2)));
        let mut b = bytes;
        b[9] = 7;
        assert!(matches!(Header::decode(&b), Err(HeaderError::Field { field: "method", .. })));
        let mut b = bytes;
        b[20] = 1;
        assert!(matches!(Header::decode(&b), Err(HeaderError::Field { field: "reserved", .. })));
        assert_eq!(lzma_decoder_ram(0, 4096), (1847 + 768) * 2 + 4096);
        let mut b = bytes;
        b[11] = 9;
        assert!(matches!(Header::decode(&b), Err(HeaderError::Field { field: "filter", .. })));
        let mut b = bytes;
        b[23] = 1;
        assert!(matches!(Header::decode(&b), Err(HeaderError::Field { field: "reserved", .. })));
        // In place: the flag bit, segment size and shift round-trip; a segment size out of
        // range is refused.
        let mut ip = sample();
        ip.in_place = Some(InPlace { segment_log2: 12, shift_segments: 3 });
        ip.filter = Some(super::super::exec::Isa::Thumb2);
        let b = ip.encode();
        assert_eq!(b[17], FLAG_IN_PLACE);
        assert_eq!(Header::decode(&b).unwrap(), ip);
        let mut bad = b;
        bad[18] = 40;
        assert!(matches!(
            Header::decode(&bad),
            Err(HeaderError::Field { field: "segment_log2", .. })
        ));
    }
}

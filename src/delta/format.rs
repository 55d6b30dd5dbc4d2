//! The otadelta header (152 bytes, little endian). `docs/delta-format.md` is the specification.

use crate::Sha256;

pub use otaforge_applier::HeaderError;
pub use otaforge_applier::header::{
    DIGESTED_LEN, FLAG_IN_PLACE, FLAG_SIGNED, HEADER_LEN, InPlace, MAGIC, SIGNATURE_CONTEXT,
    SIGNATURE_LEN, VERSION,
};

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
    /// New compressed with old as its window's first bytes (patch-from): a zstd frame with
    /// old as its prefix, or LZMA primed with old.
    #[serde(rename = "patch-from")]
    PatchFrom,
    /// The op stream in five separately compressed parts ([`super::split`]).
    #[serde(rename = "bsdiff-split")]
    Split,
}

impl From<otaforge_applier::Method> for Method {
    fn from(m: otaforge_applier::Method) -> Self {
        match m {
            otaforge_applier::Method::Bsdiff => Method::Bsdiff,
            otaforge_applier::Method::PatchFrom => Method::PatchFrom,
            otaforge_applier::Method::Split => Method::Split,
        }
    }
}

impl From<Method> for otaforge_applier::Method {
    fn from(m: Method) -> Self {
        match m {
            Method::Bsdiff => otaforge_applier::Method::Bsdiff,
            Method::PatchFrom => otaforge_applier::Method::PatchFrom,
            Method::Split => otaforge_applier::Method::Split,
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

impl From<otaforge_applier::Compression> for Compression {
    fn from(c: otaforge_applier::Compression) -> Self {
        match c {
            otaforge_applier::Compression::None => Compression::None,
            otaforge_applier::Compression::Zstd => Compression::Zstd,
            otaforge_applier::Compression::Lzma => Compression::Lzma,
        }
    }
}

impl From<Compression> for otaforge_applier::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => otaforge_applier::Compression::None,
            Compression::Zstd => otaforge_applier::Compression::Zstd,
            Compression::Lzma => otaforge_applier::Compression::Lzma,
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
    /// 32-bit absolute pointers into old are predicted too (`flags` bit 2; the op stream
    /// starts with old's base address).
    pub abs_pointers: bool,
    /// Extended references (`flags` bit 3): AArch64 address pairs (ADRP, then the ADD, load
    /// or store completing it) as one reference, x86-64 Jcc and RIP-relative operands.
    pub refs: bool,
    /// Segment size and shift of a delta applied in place (`flags` bit 1).
    pub in_place: Option<InPlace>,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8] = VERSION;
        h[9] = otaforge_applier::Method::from(self.method).code();
        h[10] = otaforge_applier::Compression::from(self.compression).code();
        h[11] = self.filter.map_or(0, |f| f.code());
        h[12..16].copy_from_slice(&self.window.to_le_bytes());
        h[16] = self.lzma_props;
        h[17] = if self.signed { FLAG_SIGNED } else { 0 };
        if self.abs_pointers {
            h[17] |= otaforge_applier::header::FLAG_ABS_POINTERS;
        }
        if self.refs {
            h[17] |= otaforge_applier::header::FLAG_REFS;
        }
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

    /// Decodes and checks a header from the start of `bytes` (by the device's reader,
    /// `otaforge_applier::header`).
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        Ok(otaforge_applier::Header::decode(bytes)?.into())
    }

    /// The header as the device's applier reads it.
    pub fn to_applier(&self) -> otaforge_applier::Header {
        otaforge_applier::Header {
            method: self.method.into(),
            compression: self.compression.into(),
            window: self.window,
            lzma_props: self.lzma_props,
            old_size: self.old_size,
            old_sha256: *self.old_sha256.as_bytes(),
            new_size: self.new_size,
            new_sha256: *self.new_sha256.as_bytes(),
            stream_len: self.stream_len,
            payload_len: self.payload_len,
            digest: *self.digest.as_bytes(),
            signed: self.signed,
            filter: self.filter,
            abs_pointers: self.abs_pointers,
            refs: self.refs,
            in_place: self.in_place,
        }
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
            // Method 2 on a device reads its window back from flash but for a short tail.
            Compression::Lzma if self.method == Method::PatchFrom => {
                lzma_decoder_ram(self.lzma_props, otaforge_applier::device::PATCH_FROM_TAIL as u32)
            }
            Compression::Lzma => lzma_decoder_ram(self.lzma_props, self.window),
            // ZSTD_estimateDCtxSize is about 95 KiB plus the window for zstd 1.5.
            Compression::Zstd => 95 * 1024 + u64::from(self.window),
        }
    }
}

impl From<otaforge_applier::Header> for Header {
    fn from(h: otaforge_applier::Header) -> Self {
        Self {
            method: h.method.into(),
            compression: h.compression.into(),
            window: h.window,
            lzma_props: h.lzma_props,
            old_size: h.old_size,
            old_sha256: Sha256::from_bytes(h.old_sha256),
            new_size: h.new_size,
            new_sha256: Sha256::from_bytes(h.new_sha256),
            stream_len: h.stream_len,
            payload_len: h.payload_len,
            digest: Sha256::from_bytes(h.digest),
            signed: h.signed,
            filter: h.filter,
            abs_pointers: h.abs_pointers,
            refs: h.refs,
            in_place: h.in_place,
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
pub(crate) mod tests {
    use super::*;

    /// A valid header for tests (method 1, LZMA, no filter).
    pub(crate) fn sample() -> Header {
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
            abs_pointers: false,
            refs: false,
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
        // Absolute pointers: flags bit 2 round-trips with a filter that has pointers, and is
        // refused without one (x86-64, or no filter).
        let mut abs = sample();
        abs.filter = Some(super::super::exec::Isa::Aarch64);
        abs.abs_pointers = true;
        let e = abs.encode();
        assert_eq!(e[17], otaforge_applier::header::FLAG_ABS_POINTERS);
        assert_eq!(Header::decode(&e).unwrap(), abs);
        for filter in [None, Some(super::super::exec::Isa::X86_64)] {
            let h = Header { filter, ..abs.clone() };
            assert!(matches!(
                Header::decode(&h.encode()),
                Err(HeaderError::Field { field: "flags", .. })
            ));
        }
        // Extended references: flags bit 3 round-trips with the AArch64 and x86-64 filters
        // only.
        let refs = Header { refs: true, ..abs.clone() };
        let e = refs.encode();
        assert_eq!(
            e[17],
            otaforge_applier::header::FLAG_ABS_POINTERS | otaforge_applier::header::FLAG_REFS
        );
        assert_eq!(Header::decode(&e).unwrap(), refs);
        let x86 = Header {
            filter: Some(super::super::exec::Isa::X86_64),
            abs_pointers: false,
            ..refs.clone()
        };
        assert_eq!(Header::decode(&x86.encode()).unwrap(), x86);
        for filter in [None, Some(super::super::exec::Isa::Thumb2)] {
            let h = Header { filter, abs_pointers: false, ..refs.clone() };
            assert!(matches!(
                Header::decode(&h.encode()),
                Err(HeaderError::Field { field: "flags", .. })
            ));
        }
        let mut bad = b;
        bad[18] = 40;
        assert!(matches!(
            Header::decode(&bad),
            Err(HeaderError::Field { field: "segment_log2", .. })
        ));
    }
}

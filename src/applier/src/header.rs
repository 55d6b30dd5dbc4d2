//! Reading the otadelta header (152 bytes, little endian): the one reader of its rules, which
//! the host's `otaforge::delta::format` uses too. `docs/delta-format.md` is the specification.

use core::fmt;

/// First eight bytes of every otadelta file.
pub const MAGIC: &[u8; 8] = b"OTADELTA";
/// The format version this code reads.
pub const VERSION: u8 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 152;
/// The header bytes covered by the digest (everything before the digest itself).
pub const DIGESTED_LEN: usize = 120;
/// Header `flags` bit: a signature block follows the payload.
pub const FLAG_SIGNED: u8 = 1;
/// Header `flags` bit: the delta is applied inside the old image's own flash slot
/// ([`InPlace`]); bytes 18..23 hold its segment size and shift.
pub const FLAG_IN_PLACE: u8 = 2;
/// Header `flags` bit: absolute-pointer prediction (with filter Thumb-2 or A32, method 1): the
/// op stream starts with the old image's base address, then the displacement table.
pub const FLAG_ABS_POINTERS: u8 = 4;
/// Header `flags` bit: extended references (with filter AArch64 or x86-64): AArch64 address
/// pairs (an ADRP and the ADD, load or store completing it, as one reference), x86-64 Jcc
/// rel32 and RIP-relative operands.
pub const FLAG_REFS: u8 = 8;
/// Size of the signature block of a signed delta: key id (32) and Ed25519 signature (64).
pub const SIGNATURE_LEN: usize = 96;
/// What a delta signature signs: this context string, then the 32-byte digest.
pub const SIGNATURE_CONTEXT: &[u8; 22] = b"otadelta signature v1\0";

/// The instruction sets with a transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// ARM Thumb-2 (Cortex-M): 32-bit BL, `imm` in halfwords, relative to the address + 4.
    Thumb2,
    /// AArch64: BL (imm26 words) and ADRP (imm21 pages).
    Aarch64,
    /// x86-64: CALL rel32 (E8) and JMP rel32 (E9).
    X86_64,
    /// ARM state (A32: ARM7, ARM9, ARM11, Cortex-A in ARM mode): BL (imm24 words, any
    /// condition) and BLX immediate (to Thumb, imm24 words plus a halfword bit), relative to
    /// the address + 8.
    A32,
}

impl Isa {
    /// The header's `filter` code.
    pub fn code(self) -> u8 {
        match self {
            Isa::Thumb2 => 1,
            Isa::Aarch64 => 2,
            Isa::X86_64 => 3,
            Isa::A32 => 4,
        }
    }

    /// The instruction set of a `filter` code.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Isa::Thumb2),
            2 => Some(Isa::Aarch64),
            3 => Some(Isa::X86_64),
            4 => Some(Isa::A32),
            _ => None,
        }
    }

    /// The name `--exec` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Thumb2 => "thumb2",
            Isa::Aarch64 => "aarch64",
            Isa::X86_64 => "x86-64",
            Isa::A32 => "a32",
        }
    }
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Not an otadelta file at all.
    Magic,
    /// Shorter than the header.
    Short(usize),
    /// A version this build does not read.
    Version(u8),
    /// A field holds a value no writer produces.
    Field {
        /// Field name as in docs/delta-format.md.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HeaderError::Magic => f.write_str("not an otadelta file (magic is not OTADELTA)"),
            HeaderError::Short(n) => {
                write!(f, "truncated: {n} bytes, the header alone is {}", HEADER_LEN)
            }
            HeaderError::Version(v) => write!(
                f,
                "otadelta format version {v} is not supported (this build reads version {})",
                VERSION
            ),
            HeaderError::Field { field, value } => {
                write!(f, "header field {field} has the invalid value {value}")
            }
        }
    }
}

/// How the payload rebuilds new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The op stream (1).
    Bsdiff,
    /// New compressed with old as its window's first bytes (2): a zstd frame with old as
    /// its prefix, or LZMA primed with old.
    PatchFrom,
    /// The op stream in five separately compressed parts (3).
    Split,
}

impl Method {
    /// The header's code.
    pub fn code(self) -> u8 {
        match self {
            Method::Bsdiff => 1,
            Method::PatchFrom => 2,
            Method::Split => 3,
        }
    }

    /// The method of a header code.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Method::Bsdiff),
            2 => Some(Method::PatchFrom),
            3 => Some(Method::Split),
            _ => None,
        }
    }
}

/// How the payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is (0).
    None,
    /// One zstd frame (1).
    Zstd,
    /// Raw LZMA1 with an end marker; properties in the header (2).
    Lzma,
}

impl Compression {
    /// The header's code.
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Lzma => 2,
        }
    }

    /// The compression of a header code.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Lzma),
            _ => None,
        }
    }
}

/// How an in-place delta uses the flash slot (docs/delta-format.md, "In place").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlace {
    /// log2 of the segment size: new is written one segment at a time, and a segment is the
    /// unit of erase and of progress saved.
    pub segment_log2: u8,
    /// How many segments old is first moved up the slot.
    pub shift_segments: u32,
}

impl InPlace {
    /// The smallest and largest segment sizes (64 B and 16 MiB, as log2).
    pub const SEGMENT_LOG2: core::ops::RangeInclusive<u8> = 6..=24;

    /// Segment size in bytes.
    pub fn segment(&self) -> u64 {
        1 << self.segment_log2
    }

    /// Shift in bytes.
    pub fn shift(&self) -> u64 {
        u64::from(self.shift_segments) << self.segment_log2
    }
}

/// Everything the header declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// How the payload rebuilds new.
    pub method: Method,
    /// How the payload is compressed.
    pub compression: Compression,
    /// Decoder window in bytes: the zstd window or the LZMA dictionary size; 0 when stored.
    pub window: u32,
    /// LZMA properties byte `(pb * 5 + lp) * 9 + lc`; 0 otherwise.
    pub lzma_props: u8,
    /// Old image size.
    pub old_size: u64,
    /// Old image SHA-256.
    pub old_sha256: [u8; 32],
    /// New image size.
    pub new_size: u64,
    /// New image SHA-256.
    pub new_sha256: [u8; 32],
    /// Length of the decompressed payload.
    pub stream_len: u64,
    /// Length of the payload that follows the header.
    pub payload_len: u64,
    /// SHA-256 over the header's first 120 bytes followed by the payload.
    pub digest: [u8; 32],
    /// A signature block follows the payload.
    pub signed: bool,
    /// The executable transform the corrections are relative to.
    pub filter: Option<Isa>,
    /// 32-bit absolute pointers into old are predicted too (`flags` bit 2).
    pub abs_pointers: bool,
    /// Extended references: AArch64 address pairs, x86-64 Jcc and RIP-relative operands
    /// (`flags` bit 3).
    pub refs: bool,
    /// Segment size and shift of a delta applied in place.
    pub in_place: Option<InPlace>,
}

fn u64_at(h: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[o..o + 8]);
    u64::from_le_bytes(b)
}

fn sha_at(h: &[u8], o: usize) -> [u8; 32] {
    let mut b = [0u8; 32];
    b.copy_from_slice(&h[o..o + 32]);
    b
}

impl Header {
    /// Decodes and checks a header from the start of `bytes` (rule 1 of the format).
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
        let method = Method::from_code(h[9]).ok_or_else(|| field("method", h[9]))?;
        let compression =
            Compression::from_code(h[10]).ok_or_else(|| field("compression", h[10]))?;
        let filter = match h[11] {
            0 => None,
            c => Some(Isa::from_code(c).ok_or_else(|| field("filter", c))?),
        };
        let in_place = Self::decode_flags(h)?;
        let window = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
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
        if method == Method::PatchFrom && compression == Compression::None {
            return Err(field("compression", h[10]));
        }
        if method == Method::PatchFrom && (filter.is_some() || in_place.is_some()) {
            return Err(field("method", h[9]));
        }
        let header = Header {
            method,
            compression,
            window,
            lzma_props,
            old_size: u64_at(h, 24),
            old_sha256: sha_at(h, 32),
            new_size: u64_at(h, 64),
            new_sha256: sha_at(h, 72),
            stream_len: u64_at(h, 104),
            payload_len: u64_at(h, 112),
            digest: sha_at(h, 120),
            signed: h[17] & FLAG_SIGNED != 0,
            filter,
            abs_pointers: h[17] & FLAG_ABS_POINTERS != 0,
            refs: h[17] & FLAG_REFS != 0,
            in_place,
        };
        // Absolute pointers: filters that have them, in the op stream (method 1, or 3 where
        // the base leads part 0).
        let abs_ok = filter.and_then(Isa::pointer_width).is_some();
        if header.abs_pointers && !abs_ok
            || header.refs && !matches!(filter, Some(Isa::Aarch64 | Isa::X86_64))
        {
            return Err(field("flags", h[17]));
        }
        let stored_mismatch = compression == Compression::None
            && method != Method::Split
            && header.stream_len != header.payload_len;
        if method == Method::PatchFrom && header.stream_len != header.new_size || stored_mismatch {
            return Err(HeaderError::Field { field: "stream_len", value: header.stream_len });
        }
        // LZMA primed with old reaches back at most over old and new: a larger window would
        // only make a host decoder allocate it.
        let reach = header.old_size.saturating_add(header.new_size).max(4096);
        if method == Method::PatchFrom
            && compression == Compression::Lzma
            && u64::from(window) > reach
        {
            return Err(HeaderError::Field { field: "window", value: window.into() });
        }
        Ok(header)
    }

    /// The flags byte, the in-place layout and the reserved bytes.
    fn decode_flags(h: &[u8]) -> Result<Option<InPlace>, HeaderError> {
        let field = |field, value: u8| HeaderError::Field { field, value: value.into() };
        if h[17] & !(FLAG_SIGNED | FLAG_IN_PLACE | FLAG_ABS_POINTERS | FLAG_REFS) != 0 {
            return Err(field("flags", h[17]));
        }
        let in_place = if h[17] & FLAG_IN_PLACE != 0 {
            if !InPlace::SEGMENT_LOG2.contains(&h[18]) {
                return Err(field("segment_log2", h[18]));
            }
            let shift_segments = u32::from_le_bytes([h[19], h[20], h[21], h[22]]);
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
        Ok(in_place)
    }

    /// Total file length the header declares: header, payload, and the signature block when
    /// signed.
    pub fn file_len(&self) -> u64 {
        let sig = if self.signed { SIGNATURE_LEN as u64 } else { 0 };
        (HEADER_LEN as u64).saturating_add(self.payload_len).saturating_add(sig)
    }

    /// The smallest slot an in-place delta needs: old after the shift, and new, each rounded
    /// up to whole segments (0 for a delta not made in place).
    pub fn slot_needed(&self) -> u64 {
        match self.in_place {
            Some(ip) => {
                let seg = ip.segment();
                let whole = |n: u64| n.saturating_add(seg - 1) / seg * seg;
                ip.shift().saturating_add(whole(self.old_size)).max(whole(self.new_size))
            }
            None => 0,
        }
    }
}

//! Binary deltas: create, apply and describe patches that rebuild a new image from an old one.
//!
//! Two formats:
//! - **otadelta** (ours, `docs/delta-format.md`): a 152-byte header binding the patch to the exact
//!   old and new images (sizes and SHA-256) and a digest of header and payload, then one sequential
//!   payload that a device reads front to back with one decompressor. Methods: the bsdiff-style op
//!   stream ([`ops`]) or a zstd patch-from frame. Compression: zstd or raw LZMA with a dictionary
//!   as small as 4 KiB, so the MCU path fits in a few KiB of RAM.
//! - **BSDIFF40** ([`bsdiff40`]), byte-compatible with Colin Percival's bsdiff 4.x.
//!
//! Every delta [`create`] returns has been applied once in memory and checked against new.
//! [`apply`] checks the old image and the payload digest before producing a byte, bounds-checks
//! every control value, and checks new's digest at the end; [`apply_file`] writes to a temp file
//! renamed into place only on success.
//!
//! An otadelta can carry an Ed25519 signature over its digest ([`sign`]); [`apply`] given trusted
//! keys refuses an unsigned, unknown-key or badly signed delta before producing a byte, and
//! without keys refuses a signed delta, so a signature is never silently ignored.

pub mod bsdiff40;
mod codec;
mod create;
mod diff;
pub mod exec;
pub mod format;
pub mod inplace;
pub mod lzma;
pub mod ops;
mod primed;
pub mod split;
mod wire;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::Sha256;
use crate::sign::{KeyId, Message, SignError, Signer, TrustedKeys};
pub use create::create;
pub use exec::Isa;
pub use format::{Compression, Header, InPlace, Method};
pub use ops::{OldImage, PatchError, Patcher, StreamPatcher, stream_patcher};
pub use otaforge_applier::IoError;

/// The two file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaFormat {
    /// Ours: verified header, one sequential payload.
    Otadelta,
    /// Colin Percival's bsdiff 4.x format.
    Bsdiff40,
}

/// Which method `create` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MethodChoice {
    /// Try what is promising and keep the smallest.
    #[default]
    Auto,
    /// Suffix-array matching (the op stream, interleaved or in parts, whichever is smaller).
    Bsdiff,
    /// The op stream in five separately compressed parts only (method 3; Linux, LZMA).
    Split,
    /// zstd patch-from (Linux).
    Zstd,
    /// New compressed with old as the start of its window (method 2): zstd for Linux, LZMA
    /// for the MCU profile (a device reads old and new back from flash; A/B only).
    PatchFrom,
}

/// Who applies the delta; decides the compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Linux gateways: zstd or LZMA with large windows, whichever is smaller.
    #[default]
    Linux,
    /// Microcontrollers: LZMA with a 4 KiB dictionary and no literal context (about 9.5 KiB of
    /// decoder RAM); the op stream only.
    Mcu,
}

/// Whether `create` predicts branches of machine code ([`exec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecChoice {
    /// Detect the instruction set from new (ELF header, Cortex-M vector table); when found,
    /// try with and without the transform and keep the smaller.
    #[default]
    Auto,
    /// No transform.
    None,
    /// This instruction set, always.
    Isa(Isa),
}

/// Whether `create` predicts absolute pointers (with the Thumb-2 and A32 filters), and where
/// old lies in the address space for that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AbsChoice {
    /// Guess old's base address from its own calls; when one stands out, try with and without
    /// the prediction and keep the smaller.
    #[default]
    Auto,
    /// No absolute pointers.
    None,
    /// Old's first byte is at this address; always predict.
    Base(u64),
}

/// The flash layout of an in-place delta (`--in-place`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlaceOptions {
    /// Segment size: a power of two, a multiple of the flash's erase unit.
    pub segment_size: u64,
    /// The slot's size: old is moved up by as many whole segments as fit beside it.
    pub memory_size: u64,
}

/// Options of [`create`].
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions {
    /// File format.
    pub format: DeltaFormat,
    /// Method (otadelta only; BSDIFF40 is always the op method).
    pub method: MethodChoice,
    /// Target device class.
    pub profile: Profile,
    /// Effort 1..=9 (9 = smallest, the default).
    pub level: u32,
    /// Threads for matching and for trying compressors side by side.
    pub threads: usize,
    /// Forces the op stream's compression instead of the profile's choice.
    pub compression: Option<Compression>,
    /// Executable-aware prediction.
    pub exec: ExecChoice,
    /// Make a delta that applies inside the old image's slot.
    pub in_place: Option<InPlaceOptions>,
    /// Predicting old's 32-bit absolute pointers (Thumb-2 and A32 filters).
    pub abs: AbsChoice,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            format: DeltaFormat::Otadelta,
            method: MethodChoice::Auto,
            profile: Profile::Linux,
            level: 9,
            threads: crate::hash::default_jobs(),
            compression: None,
            exec: ExecChoice::Auto,
            in_place: None,
            abs: AbsChoice::Auto,
        }
    }
}

/// What a delta file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaInfo {
    /// File format.
    pub format: DeltaFormat,
    /// Method (BSDIFF40 is always `bsdiff`).
    pub method: Method,
    /// Payload compression (`bzip2` for BSDIFF40).
    pub compression: String,
    /// Decoder window in bytes (0 when not applicable).
    pub window: u32,
    /// RAM a device needs for decompression, besides the patcher (about 100 bytes plus its
    /// scratch buffer).
    pub decoder_ram: u64,
    /// Old size (otadelta only).
    pub old_size: Option<u64>,
    /// Old digest (otadelta only).
    pub old_sha256: Option<Sha256>,
    /// New size.
    pub new_size: u64,
    /// New digest (otadelta only).
    pub new_sha256: Option<Sha256>,
    /// The whole delta file's size.
    pub delta_size: u64,
    /// A signature block follows the payload (otadelta only).
    pub signed: bool,
    /// The key id the signature block names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    /// The executable transform (otadelta only).
    #[serde(serialize_with = "exec::serialize_isa")]
    pub exec: Option<Isa>,
    /// Absolute pointers are predicted too (otadelta only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub abs_pointers: bool,
    /// Extended references: AArch64 address pairs (ADRP with the ADD, load or store
    /// completing it), x86-64 Jcc and RIP-relative operands (otadelta only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub extended_refs: bool,
    /// The in-place layout (otadelta made with `--in-place` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceInfo>,
}

/// The in-place layout of a delta, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceInfo {
    /// Segment size.
    pub segment: u64,
    /// How far old moves up the slot first.
    pub shift: u64,
    /// The smallest slot the delta applies in.
    pub slot_needed: u64,
}

/// A created delta.
#[derive(Debug, Clone)]
pub struct Created {
    /// The delta file's bytes.
    pub bytes: Vec<u8>,
    /// Its description.
    pub info: DeltaInfo,
    /// Every candidate tried, smallest first: `(method, compression, filter, size)`.
    pub candidates: Vec<(Method, Compression, Option<Isa>, u64)>,
}

/// Everything that can go wrong creating or applying a delta.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file starts with neither OTADELTA nor BSDIFF40.
    #[error("not a delta: the file starts with neither OTADELTA nor BSDIFF40")]
    UnknownFormat,
    /// The otadelta header is refused.
    #[error("bad otadelta header: {0}")]
    Header(#[from] format::HeaderError),
    /// The BSDIFF40 header is refused.
    #[error("bad BSDIFF40 patch: {0}")]
    Bsdiff40(#[from] bsdiff40::Bsdiff40Error),
    /// The file is longer or shorter than the header says.
    #[error(
        "the delta is {actual} bytes but its header declares {expected}; it is truncated or has trailing data"
    )]
    Length {
        /// Header plus declared payload.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// The header or payload does not hash to the header's digest.
    #[error("the delta is corrupt: its digest is {actual}, the header says {expected}")]
    Digest {
        /// Declared.
        expected: Sha256,
        /// Computed.
        actual: Sha256,
    },
    /// The old file is not the one the delta was made from.
    #[error(
        "wrong old file: it is {actual_size} bytes with sha256 {actual}, the delta was made from {expected_size} bytes with sha256 {expected}"
    )]
    WrongOld {
        /// Declared size.
        expected_size: u64,
        /// Declared digest.
        expected: Sha256,
        /// Actual size.
        actual_size: u64,
        /// Actual digest.
        actual: Sha256,
    },
    /// The payload does not decompress.
    #[error("the delta payload does not decompress: {0}")]
    Decompress(String),
    /// A control value is out of bounds.
    #[error("corrupt patch: {0}")]
    Patch(#[from] PatchError),
    /// A BSDIFF40 stream is corrupt.
    #[error("corrupt BSDIFF40 patch: {0}")]
    Bsdiff40Apply(String),
    /// The rebuilt file is not the declared new file.
    #[error("the rebuilt file has sha256 {actual}, expected {expected}")]
    WrongNew {
        /// Declared.
        expected: Sha256,
        /// Computed.
        actual: Sha256,
    },
    /// The decompressed stream length differs from the header.
    #[error("the payload decompresses to {actual} bytes, the header declares {expected}")]
    StreamLength {
        /// Declared.
        expected: u64,
        /// Actual.
        actual: u64,
    },
    /// The suffix-array method cannot handle the old file.
    #[error("{0}")]
    Index(String),
    /// A compressor failed.
    #[error("compression failed: {0}")]
    Compress(io::Error),
    /// A created delta did not rebuild new (a bug; nothing is written).
    #[error("internal error: the created delta does not rebuild the new file ({0})")]
    SelfCheck(String),
    /// The signature check refused the delta, or signing failed.
    #[error(transparent)]
    Signature(#[from] SignError),
    /// The options ask for something this format or profile cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The in-place options or layout are refused, or applying in place failed.
    #[error("in place: {0}")]
    InPlace(String),
    /// Writing the new image failed.
    #[error("writing the new image: {0}")]
    Write(io::Error),
    /// The device's flash (or journal) failed while applying in place.
    #[error("flash: {0}")]
    Flash(IoError),
    /// Only otadelta files can carry a signature.
    #[error(
        "BSDIFF40 patches have no room for a signature; use --delta-format otadelta, or sign the file with `otaforge sign`"
    )]
    UnsignableFormat,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io { path: path.to_path_buf(), source }
}

/// Describes a delta from its bytes (the header suffices for otadelta).
pub fn info(delta: &[u8]) -> Result<DeltaInfo, DeltaError> {
    if delta.starts_with(format::MAGIC) {
        let h = Header::decode(delta)?;
        Ok(DeltaInfo {
            format: DeltaFormat::Otadelta,
            method: h.method,
            compression: serde_json::to_value(h.compression)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            window: h.window,
            decoder_ram: match h.method {
                // One decoder per part, each with its own dictionary.
                Method::Split => {
                    let payload = delta.get(format::HEADER_LEN..).unwrap_or_default();
                    let payload = &payload[..payload.len().min(h.payload_len as usize)];
                    split::parts(&h, payload).map_or(h.decoder_ram(), |layout| {
                        layout
                            .parts
                            .iter()
                            .map(|p| {
                                Header { window: p.dict, lzma_props: p.props, ..h.clone() }
                                    .decoder_ram()
                            })
                            .sum()
                    })
                }
                _ => h.decoder_ram(),
            },
            old_size: Some(h.old_size),
            old_sha256: Some(h.old_sha256),
            new_size: h.new_size,
            new_sha256: Some(h.new_sha256),
            delta_size: delta.len() as u64,
            signed: h.signed,
            key_id: (h.signed && delta.len() as u64 == h.file_len()).then(|| {
                let at = delta.len() - format::SIGNATURE_LEN;
                KeyId::from_bytes(delta[at..at + 32].try_into().unwrap_or_default())
            }),
            exec: h.filter,
            abs_pointers: h.abs_pointers,
            extended_refs: h.refs,
            in_place: h.in_place.map(|ip| InPlaceInfo {
                segment: ip.segment(),
                shift: ip.shift(),
                slot_needed: inplace::slot_needed(&h),
            }),
        })
    } else if delta.starts_with(bsdiff40::MAGIC) {
        let l = bsdiff40::layout(delta)?;
        Ok(DeltaInfo {
            format: DeltaFormat::Bsdiff40,
            method: Method::Bsdiff,
            compression: "bzip2".into(),
            window: 900_000,
            // Three bzip2 decoders at the default 900k block size, 3.7 MB each.
            decoder_ram: 3 * 3_700_000,
            old_size: None,
            old_sha256: None,
            new_size: l.new_size,
            new_sha256: None,
            delta_size: delta.len() as u64,
            signed: false,
            key_id: None,
            exec: None,
            abs_pointers: false,
            extended_refs: false,
            in_place: None,
        })
    } else {
        Err(DeltaError::UnknownFormat)
    }
}

/// The result of [`apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The delta's format.
    pub format: DeltaFormat,
    /// Bytes written.
    pub new_size: u64,
    /// Digest of what was written.
    pub new_sha256: Sha256,
    /// The trusted key that signed the delta, when keys were given.
    pub signed_by: Option<KeyId>,
}

/// Applies `delta` to `old`, handing new out in order through `out`.
///
/// For otadelta, nothing reaches `out` unless old matches the header and the payload matches its
/// digest; `out` may have received data when a later check fails, so callers writing files must
/// write to a temporary file (as [`apply_file`] does) and discard it on error.
pub fn apply(
    old: &[u8],
    delta: &[u8],
    keys: Option<&TrustedKeys>,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<Applied, DeltaError> {
    let mut hasher = sha2::Sha256::new();
    let mut written = 0u64;
    // The patcher's sink reports a code; the output's own error is kept here for the caller.
    let mut failed: Option<io::Error> = None;
    let mut tee = |b: &[u8]| {
        hasher.update(b);
        written += b.len() as u64;
        out(b).map_err(|e| {
            failed = Some(e);
            IoError { code: -1 }
        })
    };
    let result = if delta.starts_with(bsdiff40::MAGIC) {
        apply_bsdiff40(old, delta, keys, &mut tee).map(|()| (DeltaFormat::Bsdiff40, None, None))
    } else {
        apply_otadelta(old, delta, keys, &mut tee).map(|(h, k)| (DeltaFormat::Otadelta, Some(h), k))
    };
    if let Some(e) = failed {
        return Err(DeltaError::Write(e));
    }
    let (format, h, signed_by) = result?;
    let actual = Sha256::from_bytes(hasher.finalize().into());
    if let Some(h) = h
        && (written != h.new_size || actual != h.new_sha256)
    {
        return Err(DeltaError::WrongNew { expected: h.new_sha256, actual });
    }
    Ok(Applied { format, new_size: written, new_sha256: actual, signed_by })
}

fn apply_bsdiff40(
    old: &[u8],
    delta: &[u8],
    keys: Option<&TrustedKeys>,
    out: &mut ops::Sink<'_>,
) -> Result<(), DeltaError> {
    if keys.is_some() {
        return Err(SignError::SignatureMissing {
            what: "the delta is BSDIFF40, which cannot carry a signature".into(),
        }
        .into());
    }
    let mut old_img = old;
    bsdiff40::apply(delta, old.len() as u64, &mut old_img, out).map_err(|e| match e {
        bsdiff40::ApplyError::Header(h) => DeltaError::Bsdiff40(h),
        bsdiff40::ApplyError::Patch(p) => DeltaError::Patch(p),
        other => DeltaError::Bsdiff40Apply(other.to_string()),
    })
}

/// Checks an otadelta (length, digest, signature, old) and streams new through `out`; the
/// caller checks new's digest.
fn apply_otadelta(
    old: &[u8],
    delta: &[u8],
    keys: Option<&TrustedKeys>,
    out: &mut ops::Sink<'_>,
) -> Result<(Header, Option<KeyId>), DeltaError> {
    if !delta.starts_with(format::MAGIC) {
        return Err(DeltaError::UnknownFormat);
    }
    let h = Header::decode(delta)?;
    let expected = h.file_len();
    if expected != delta.len() as u64 {
        return Err(DeltaError::Length { expected, actual: delta.len() as u64 });
    }
    let payload_end = format::HEADER_LEN + h.payload_len as usize;
    let payload = &delta[format::HEADER_LEN..payload_end];
    let (old_sha, digest) = std::thread::scope(|s| {
        let p = s.spawn(|| format::digest(delta, payload));
        let o = Sha256::digest(old);
        (o, p.join().unwrap_or_else(|_| format::digest(delta, payload)))
    });
    // The delta's own integrity and authenticity come first: a changed header must be reported
    // as a corrupt or forged delta, not as the wrong old file.
    if digest != h.digest {
        return Err(DeltaError::Digest { expected: h.digest, actual: digest });
    }
    let signed_by = check_signature(&h, &delta[payload_end..], keys)?;
    if old.len() as u64 != h.old_size || old_sha != h.old_sha256 {
        return Err(DeltaError::WrongOld {
            expected_size: h.old_size,
            expected: h.old_sha256,
            actual_size: old.len() as u64,
            actual: old_sha,
        });
    }
    let decompress = |e: io::Error| DeltaError::Decompress(e.to_string());
    let mut buf = vec![0u8; 1 << 16];
    // Patch-from (method 2) decodes straight to new; the op methods feed the patcher. The header
    // guarantees `stream_len == new_size` for method 2, so one limit serves both.
    let reader: Box<dyn Read + '_> = match h.method {
        Method::PatchFrom if h.compression == Compression::Lzma => {
            let params = codec::LzmaParams::from_props(h.lzma_props, h.window);
            Box::new(primed::decoder(payload, old, params).map_err(decompress)?)
        }
        Method::PatchFrom => {
            Box::new(codec::zstd_ref_decoder(old, h.window, payload).map_err(decompress)?)
        }
        Method::Bsdiff | Method::Split => op_stream(&h, payload, old).map_err(decompress)?,
    };
    let mut stream = Bounded::new(reader, &h);
    let mut patcher = (h.method != Method::PatchFrom).then(|| {
        stream_patcher(Patcher::new(h.old_size, h.new_size), h.filter)
            .with_abs_pointers(h.abs_pointers)
            .with_refs(h.refs)
    });
    let mut scratch = [0u8; 4096];
    let mut old_img = old;
    loop {
        let n = stream.next(&mut buf)?;
        if n == 0 {
            break;
        }
        match &mut patcher {
            Some(p) => {
                p.feed_until(&buf[..n], &mut old_img, &mut scratch, out, u64::MAX)?;
            }
            None => out(&buf[..n]).map_err(|e| DeltaError::Patch(PatchError::Io(e)))?,
        }
    }
    if let Some(p) = &patcher {
        p.finish()?;
    }
    stream.finish()?;
    Ok((h, signed_by))
}

/// A decompressed payload read in pieces and held to the header's `stream_len`: a longer one is
/// refused as soon as it shows, a shorter one by [`Bounded::finish`].
pub(crate) struct Bounded<'a> {
    reader: Box<dyn Read + 'a>,
    expected: u64,
    total: u64,
}

impl<'a> Bounded<'a> {
    fn new(reader: Box<dyn Read + 'a>, h: &Header) -> Self {
        Self { reader, expected: h.stream_len, total: 0 }
    }

    /// The next piece into `buf`; 0 at the end.
    fn next(&mut self, buf: &mut [u8]) -> Result<usize, DeltaError> {
        let n =
            read_some(&mut self.reader, buf).map_err(|e| DeltaError::Decompress(e.to_string()))?;
        self.total += n as u64;
        if self.total > self.expected {
            return Err(DeltaError::StreamLength { expected: self.expected, actual: self.total });
        }
        Ok(n)
    }

    /// Checks that the payload decompressed to exactly `stream_len` bytes.
    fn finish(&self) -> Result<(), DeltaError> {
        if self.total != self.expected {
            return Err(DeltaError::StreamLength { expected: self.expected, actual: self.total });
        }
        Ok(())
    }
}

/// The decompressed op stream of an op-method delta's `payload` (method 1 as stored, method 3
/// re-interleaved from its parts); `old` is the image it applies to (empty in place, where
/// method 3's literals are never primed with it).
pub(crate) fn op_stream<'a>(
    h: &Header,
    payload: &'a [u8],
    old: &[u8],
) -> io::Result<Box<dyn Read + 'a>> {
    match h.method {
        Method::Split => Ok(Box::new(split::SplitReader::new(h, payload, old)?)),
        _ => codec::decoder(h.compression, h.window, h.lzma_props, payload),
    }
}

/// The message a delta signature signs.
fn signed_message(digest: &Sha256) -> [u8; 54] {
    let mut m = [0u8; 54];
    m[..22].copy_from_slice(format::SIGNATURE_CONTEXT);
    m[22..].copy_from_slice(digest.as_bytes());
    m
}

/// Applies the signature policy to a delta whose digest has been checked: with keys, it must be
/// signed by one of them; without keys, it must not be signed.
fn check_signature(
    h: &Header,
    block: &[u8],
    keys: Option<&TrustedKeys>,
) -> Result<Option<KeyId>, DeltaError> {
    let what = "the delta";
    match (h.signed, keys) {
        (false, None) => Ok(None),
        (false, Some(_)) => {
            Err(SignError::SignatureMissing { what: format!("{what} is not signed") }.into())
        }
        (true, None) => Err(SignError::NoKeyConfigured { what: what.into() }.into()),
        (true, Some(keys)) => {
            let kid_hex = Sha256::from_bytes(block[..32].try_into().unwrap_or_default()).to_hex();
            let key = keys.require(&kid_hex)?;
            let raw: [u8; 64] = block[32..96].try_into().unwrap_or([0; 64]);
            let sig = crate::sign::Signature::from_bytes(&raw);
            let msg = signed_message(&h.digest);
            if !key.verify(&Message::raw(&msg), &sig) {
                return Err(SignError::BadSignature { what: what.into(), kid: key.id() }.into());
            }
            Ok(Some(key.id()))
        }
    }
}

/// Signs an otadelta: sets the header's signed flag, recomputes the digest and appends the
/// signature block (key id and Ed25519 signature over the digest). A signed delta is signed
/// anew (its old signature block is replaced).
pub fn sign(delta: &[u8], signer: &dyn Signer) -> Result<Vec<u8>, DeltaError> {
    if delta.starts_with(bsdiff40::MAGIC) {
        return Err(DeltaError::UnsignableFormat);
    }
    if !delta.starts_with(format::MAGIC) {
        return Err(DeltaError::UnknownFormat);
    }
    let mut h = Header::decode(delta)?;
    if h.file_len() != delta.len() as u64 {
        return Err(DeltaError::Length { expected: h.file_len(), actual: delta.len() as u64 });
    }
    let payload = &delta[format::HEADER_LEN..format::HEADER_LEN + h.payload_len as usize];
    if format::digest(delta, payload) != h.digest {
        return Err(DeltaError::Digest {
            expected: h.digest,
            actual: format::digest(delta, payload),
        });
    }
    h.signed = true;
    let mut header = h.encode();
    let digest = format::digest(&header, payload);
    header[format::DIGESTED_LEN..].copy_from_slice(digest.as_bytes());
    let msg = signed_message(&digest);
    let sig = signer.sign(&Message::raw(&msg))?;
    let mut out = Vec::with_capacity(header.len() + payload.len() + format::SIGNATURE_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.extend_from_slice(signer.public_key().id().as_bytes());
    out.extend_from_slice(&sig.to_bytes());
    // Check the result the way a device will before handing it out.
    let mut keys = TrustedKeys::new();
    keys.add(signer.public_key().clone());
    let h2 = Header::decode(&out)?;
    check_signature(&h2, &out[format::HEADER_LEN + payload.len()..], Some(&keys))?;
    Ok(out)
}

pub(crate) fn read_some(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Applies the delta file at `delta_path` to the old file at `old_path` and writes new to
/// `out_path` through [`crate::fsutil::OutputFile`]: a file is replaced only when every check
/// passed; `-`, a device or a FIFO receive the bytes as they are made (the error still says when
/// a check failed). `expect_new` adds a digest check (the only one BSDIFF40 can have).
pub fn apply_file(
    old_path: &Path,
    delta_path: &Path,
    out_path: &Path,
    expect_new: Option<Sha256>,
    keys: Option<&TrustedKeys>,
) -> Result<Applied, DeltaError> {
    let old = crate::fsutil::map_file(old_path).map_err(io_err(old_path))?;
    let delta = crate::fsutil::map_file(delta_path).map_err(io_err(delta_path))?;
    let mut tmp = crate::fsutil::OutputFile::create(out_path, crate::fsutil::Privacy::Public)
        .map_err(io_err(out_path))?;
    let applied = {
        let mut w = io::BufWriter::with_capacity(1 << 20, &mut tmp);
        let applied = apply(&old, &delta, keys, &mut |b| w.write_all(b))?;
        w.flush().map_err(io_err(out_path))?;
        applied
    };
    if let Some(expected) = expect_new
        && expected != applied.new_sha256
    {
        return Err(DeltaError::WrongNew { expected, actual: applied.new_sha256 });
    }
    tmp.commit().map_err(io_err(out_path))?;
    Ok(applied)
}

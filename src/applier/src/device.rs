//! A whole delta applied on a device: the delta's bytes read at random (a download partition),
//! every check of the format made ([`check`]), the payload decompressed with [`LzmaDecoder`]
//! into work memory the firmware lends ([`Work`]), and new written through the journaled loop
//! of [`crate::inplace`], in place or into another slot. This is what the C API calls.
//!
//! A device applies what `--profile mcu` writes: method 1 (the op stream) stored or
//! LZMA-compressed, and method 2 with LZMA (new primed with old, A/B only), whose decoder
//! reads old and the new bytes already written back through the flash. Method 3 needs five
//! decoders and method 2 with zstd the whole old image in RAM (Linux only).

use crate::error::{ApplyError, IoError, LzmaError};
use crate::exec::{FixedCovers, MCU_COVERS};
use crate::header::{Compression, Header, Method, DIGESTED_LEN, HEADER_LEN, SIGNATURE_CONTEXT};
use crate::image::OldImage;
use crate::inplace::{Flash, Journal, NewSource, OpSource};
use crate::lzma::{probs_len, Far, LzmaDecoder};
use crate::sha256::Sha256;

/// The code [`PayloadSource`] reports when the payload ends inside the LZMA stream.
pub const PAYLOAD_ENDED: i32 = i32::MIN;

/// The dictionary a method 2 delta needs: only the last bytes decoded, the rest is read back
/// from flash (at least the 128 bytes the segment loop takes at a time).
pub const PATCH_FROM_TAIL: usize = 256;

/// The memory a device lends the applier for one delta ([`needs`] says how much).
#[derive(Debug)]
pub struct Work<'m> {
    /// LZMA probabilities ([`probs_len`] of the header's properties).
    pub probs: &'m mut [u16],
    /// The LZMA dictionary (the header's window; [`PATCH_FROM_TAIL`] for method 2).
    pub dict: &'m mut [u8],
    /// The displacement table's entries (with an executable filter).
    pub covers: &'m mut [[u32; 3]],
}

/// What a delta needs of [`Work`]: probabilities, dictionary bytes and covers (the most the
/// MCU profile writes; a larger table is refused when it does not fit).
pub fn needs(h: &Header) -> (usize, usize, usize) {
    let lzma = h.compression == Compression::Lzma;
    let probs = if lzma { probs_len(h.lzma_props).unwrap_or(0) } else { 0 };
    let dict = match (lzma, h.method) {
        (false, _) => 0,
        (true, Method::PatchFrom) => PATCH_FROM_TAIL,
        (true, _) => h.window as usize,
    };
    (probs, dict, if h.filter.is_some() { MCU_COVERS } else { 0 })
}

/// A signature check the firmware supplies: key id, signature and the 54-byte message signed
/// (context and digest); true when the signature verifies with a key the device trusts.
pub type Verify<'v> = dyn FnMut(&[u8; 32], &[u8; 64], &[u8; 54]) -> bool + 'v;

/// Reads and checks a delta of `len` bytes before anything is written: the header, the file
/// length, the digest over header and payload, the signature policy (with `verify`, a signed
/// delta whose signature it accepts; without, an unsigned delta), and that this applier
/// handles the method and compression.
#[inline(never)]
pub fn check<R: OldImage + ?Sized>(
    delta: &mut R,
    len: u64,
    verify: Option<&mut Verify<'_>>,
) -> Result<Header, ApplyError> {
    let mut head = [0u8; HEADER_LEN];
    let have = len.min(HEADER_LEN as u64) as usize;
    delta.read_at(0, &mut head[..have]).map_err(ApplyError::Source)?;
    let h = Header::decode(&head[..have])?;
    if h.file_len() != len {
        return Err(ApplyError::Header(crate::error::HeaderError::Field {
            field: "payload_len",
            value: h.payload_len,
        }));
    }
    let mut hasher = Sha256::new();
    hasher.update(&head[..DIGESTED_LEN]);
    let mut buf = [0u8; 128];
    let mut at = 0;
    while at < h.payload_len {
        let n = (h.payload_len - at).min(buf.len() as u64) as usize;
        delta.read_at(HEADER_LEN as u64 + at, &mut buf[..n]).map_err(ApplyError::Source)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    if hasher.finalize() != h.digest {
        return Err(ApplyError::Digest);
    }
    check_signature(delta, &h, verify)?;
    let applies = match h.method {
        Method::Bsdiff => h.compression != Compression::Zstd,
        Method::PatchFrom => h.compression == Compression::Lzma,
        Method::Split => false,
    };
    if !applies {
        return Err(ApplyError::Unsupported(
            "a device applies method 1, stored or LZMA, and method 2 with LZMA (--profile mcu)",
        ));
    }
    Ok(h)
}

fn check_signature<R: OldImage + ?Sized>(
    delta: &mut R,
    h: &Header,
    verify: Option<&mut Verify<'_>>,
) -> Result<(), ApplyError> {
    match (h.signed, verify) {
        (false, None) => Ok(()),
        (false, Some(_)) => Err(ApplyError::Signature("the delta is not signed")),
        (true, None) => Err(ApplyError::Signature("the delta is signed and no key is configured")),
        (true, Some(verify)) => {
            let mut block = [0u8; 96];
            let at = HEADER_LEN as u64 + h.payload_len;
            delta.read_at(at, &mut block).map_err(ApplyError::Source)?;
            let (mut kid, mut sig, mut msg) = ([0u8; 32], [0u8; 64], [0u8; 54]);
            kid.copy_from_slice(&block[..32]);
            sig.copy_from_slice(&block[32..]);
            msg[..22].copy_from_slice(SIGNATURE_CONTEXT);
            msg[22..].copy_from_slice(&h.digest);
            if verify(&kid, &sig, &msg) {
                Ok(())
            } else {
                Err(ApplyError::Signature("the signature does not verify with a trusted key"))
            }
        }
    }
}

/// The delta's bytes through a small buffer.
struct Input<R> {
    delta: R,
    start: u64,
    len: u64,
    at: u64,
    buf: [u8; 64],
    filled: usize,
    used: usize,
}

impl<R: OldImage> Input<R> {
    fn byte(&mut self) -> Result<u8, IoError> {
        if self.used == self.filled {
            if self.at >= self.len {
                return Err(IoError { code: PAYLOAD_ENDED });
            }
            let n = (self.len - self.at).min(self.buf.len() as u64) as usize;
            self.delta.read_at(self.start + self.at, &mut self.buf[..n])?;
            self.at += n as u64;
            (self.filled, self.used) = (n, 0);
        }
        self.used += 1;
        Ok(self.buf[self.used - 1])
    }
}

/// The op stream of a checked delta, decompressed as it is read: an [`OpSource`].
pub struct PayloadSource<'m, R> {
    input: Input<R>,
    decoder: Option<LzmaDecoder<'m>>,
}

impl<R> core::fmt::Debug for PayloadSource<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PayloadSource").field("at", &self.input.at).finish_non_exhaustive()
    }
}

impl<'m, R: OldImage> PayloadSource<'m, R> {
    /// The source for the delta `delta` whose header is `h`, decoding with `probs` and `dict`.
    pub fn new(
        delta: R,
        h: &Header,
        probs: &'m mut [u16],
        dict: &'m mut [u8],
    ) -> Result<Self, ApplyError> {
        let decoder = match h.compression {
            Compression::Lzma => {
                let (n, d, _) = needs(h);
                let work =
                    |buffer, needed: usize| ApplyError::Work { buffer, needed: needed as u64 };
                let probs = probs.get_mut(..n).ok_or_else(|| work("probability table", n * 2))?;
                let dict = dict.get_mut(..d).ok_or_else(|| work("dictionary", d))?;
                let dec = if h.method == Method::PatchFrom {
                    let window = (h.old_size, u64::from(h.window));
                    LzmaDecoder::primed(h.lzma_props, dict, probs, window)
                } else {
                    LzmaDecoder::new(h.lzma_props, dict, probs)
                };
                Some(dec.map_err(ApplyError::Decompress)?)
            }
            _ => None,
        };
        let input = Input {
            delta,
            start: HEADER_LEN as u64,
            len: h.payload_len,
            at: 0,
            buf: [0; 64],
            filled: 0,
            used: 0,
        };
        Ok(Self { input, decoder })
    }
}

impl<R: OldImage> PayloadSource<'_, R> {
    fn start_again(&mut self) {
        self.input.at = 0;
        (self.input.filled, self.input.used) = (0, 0);
        if let Some(d) = &mut self.decoder {
            d.reset();
        }
    }

    /// The next decompressed bytes; a primed decoder reads back through `far`.
    fn next(&mut self, far: Option<&mut dyn Far>, buf: &mut [u8]) -> Result<usize, ApplyError> {
        let input = &mut self.input;
        match &mut self.decoder {
            Some(d) => {
                let mut src = || input.byte();
                let n = match far {
                    Some(far) => d.read_far(&mut src, far, buf),
                    None => d.read(&mut src, buf),
                };
                let n = n.map_err(|e| match e {
                    LzmaError::Source(io) if io.code != PAYLOAD_ENDED => ApplyError::Source(io),
                    // Old or new in flash.
                    LzmaError::Window(io) => ApplyError::Flash(io),
                    other => ApplyError::Decompress(other),
                })?;
                // The payload must end with the LZMA stream.
                if n == 0 && (input.at < input.len || input.used < input.filled) {
                    return Err(ApplyError::Decompress(LzmaError::Corrupt(
                        "data follows the end marker",
                    )));
                }
                Ok(n)
            }
            None => {
                let n = (input.len - input.at).min(buf.len() as u64) as usize;
                input
                    .delta
                    .read_at(input.start + input.at, &mut buf[..n])
                    .map_err(ApplyError::Source)?;
                input.at += n as u64;
                Ok(n)
            }
        }
    }
}

impl<R: OldImage> OpSource for PayloadSource<'_, R> {
    fn restart(&mut self) -> Result<(), ApplyError> {
        self.start_again();
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ApplyError> {
        self.next(None, buf)
    }
}

impl<R: OldImage> NewSource for PayloadSource<'_, R> {
    fn restart(&mut self) -> Result<(), ApplyError> {
        self.start_again();
        Ok(())
    }

    fn read(&mut self, far: &mut dyn Far, buf: &mut [u8]) -> Result<usize, ApplyError> {
        self.next(Some(far), buf)
    }
}

/// Applies (or resumes) a checked delta ([`check`]) into another slot: old read through `old`,
/// new written to `new` (`slot_len` bytes, `segment` bytes per erase and journal save).
pub fn apply_ab<R: OldImage, O: OldImage + ?Sized, F: Flash + ?Sized, J: Journal + ?Sized>(
    delta: R,
    h: &Header,
    old: &mut O,
    (new, slot_len, segment): (&mut F, u64, u64),
    journal: &mut J,
    work: Work<'_>,
) -> Result<(), ApplyError> {
    let mut source = PayloadSource::new(delta, h, work.probs, work.dict)?;
    if h.method == Method::PatchFrom {
        return crate::inplace::ab_patch_from(
            h,
            &mut source,
            old,
            (new, slot_len, segment),
            journal,
        );
    }
    let covers = FixedCovers::new(work.covers);
    crate::inplace::ab(h, &mut source, old, (new, slot_len, segment), journal, covers)
}

/// Applies (or resumes) a checked in-place delta ([`check`]) inside the slot `flash` of
/// `slot_len` bytes that holds old.
pub fn apply_in_place<R: OldImage, F: Flash + ?Sized, J: Journal + ?Sized>(
    delta: R,
    h: &Header,
    flash: &mut F,
    slot_len: u64,
    journal: &mut J,
    work: Work<'_>,
) -> Result<(), ApplyError> {
    let mut source = PayloadSource::new(delta, h, work.probs, work.dict)?;
    let covers = FixedCovers::new(work.covers);
    crate::inplace::in_place(h, &mut source, flash, slot_len, journal, covers)
}

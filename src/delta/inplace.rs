//! Applying a delta inside the old image's own flash slot, one segment at a time, so that a
//! power cut at any moment resumes to the same result (docs/delta-format.md, "In place").
//!
//! The loop, the journal and the flash traits are the device's own
//! (`otaforge_applier::inplace`, re-exported here); [`apply`] adds what a host checks first
//! (the digest and an Ed25519 signature) and feeds the loop with the host's decompressors, so
//! every method and compression of an op-stream delta applies in place.

use std::io::{self, Read};

use super::format::{self, Header};
use super::{Applied, DeltaError, DeltaFormat, Method};
use crate::sign::TrustedKeys;
pub use otaforge_applier::inplace::{
    FRAME_LEN, Flash, FlashJournal, Journal, OpSource, Progress, RECORD_LEN,
};
use otaforge_applier::{ApplyError, IoError};

/// The smallest slot an in-place delta needs: old after the shift, and new, each rounded up to
/// whole segments.
pub fn slot_needed(h: &Header) -> u64 {
    h.to_applier().slot_needed()
}

/// The op stream of a delta on a host: read again from the start on each restart; the
/// decompressor's own error is kept for the message.
struct HostSource<'a> {
    h: &'a Header,
    payload: &'a [u8],
    reader: Option<Box<dyn Read + 'a>>,
    error: Option<io::Error>,
}

impl HostSource<'_> {
    fn fail(&mut self, e: io::Error) -> ApplyError {
        self.error = Some(e);
        ApplyError::Source(IoError { code: -1 })
    }
}

impl OpSource for HostSource<'_> {
    fn restart(&mut self) -> Result<(), ApplyError> {
        match super::op_stream(self.h, self.payload, &[]) {
            Ok(r) => {
                self.reader = Some(r);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ApplyError> {
        let Some(r) = &mut self.reader else { return Ok(0) };
        match super::read_some(r.as_mut(), buf) {
            Ok(n) => Ok(n),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// What an applier error means for a host caller (`source` holds the decompressor's error).
fn host_error(e: ApplyError, h: &Header, source: Option<io::Error>) -> DeltaError {
    match e {
        ApplyError::Header(e) => DeltaError::Header(e),
        ApplyError::WrongOld(a) => DeltaError::WrongOld {
            expected_size: h.old_size,
            expected: h.old_sha256,
            actual_size: h.old_size,
            actual: crate::Sha256::from_bytes(a),
        },
        ApplyError::WrongNew(a) => {
            DeltaError::WrongNew { expected: h.new_sha256, actual: crate::Sha256::from_bytes(a) }
        }
        ApplyError::Patch(p) => DeltaError::Patch(p),
        ApplyError::Decompress(e) => DeltaError::Decompress(e.to_string()),
        ApplyError::Source(e) => {
            DeltaError::Decompress(source.map_or_else(|| e.to_string(), |s| s.to_string()))
        }
        ApplyError::StreamLength { expected, actual } => {
            DeltaError::StreamLength { expected, actual }
        }
        ApplyError::Flash(e) | ApplyError::Journal(e) => DeltaError::Flash(e),
        ApplyError::SlotTooSmall { slot, needed } => {
            let ip = h.in_place.unwrap_or(format::InPlace { segment_log2: 12, shift_segments: 0 });
            DeltaError::InPlace(format!(
                "the slot is {slot} bytes; this delta needs {needed} (old shifted by {} plus new, in {}-byte segments)",
                ip.shift(),
                ip.segment()
            ))
        }
        other => DeltaError::InPlace(other.to_string()),
    }
}

/// Applies (or resumes applying) the in-place delta `delta` to the slot `flash` of `slot_len`
/// bytes, saving progress in `journal` after every segment. Call it again after a power cut
/// (or any flash error): it carries on from the journal. On success new occupies the slot's
/// first `new_size` bytes and the journal says done; the caller clears the journal before the
/// next update. Every check of [`super::apply`] is made first (digest, signature, old), and
/// the whole update is rehearsed without writing before the first erase, so a delta that
/// would not rebuild new in place is refused with the slot untouched.
pub fn apply<F: Flash, J: Journal>(
    delta: &[u8],
    flash: &mut F,
    slot_len: u64,
    journal: &mut J,
    keys: Option<&TrustedKeys>,
) -> Result<Applied, DeltaError> {
    let h = Header::decode(delta)?;
    if h.in_place.is_none() {
        return Err(DeltaError::InPlace(
            "the delta was not made with --in-place; apply it to another slot".into(),
        ));
    }
    if h.file_len() != delta.len() as u64 {
        return Err(DeltaError::Length { expected: h.file_len(), actual: delta.len() as u64 });
    }
    let payload_end = format::HEADER_LEN + h.payload_len as usize;
    let payload = &delta[format::HEADER_LEN..payload_end];
    let digest = format::digest(delta, payload);
    if digest != h.digest {
        return Err(DeltaError::Digest { expected: h.digest, actual: digest });
    }
    let signed_by = super::check_signature(&h, &delta[payload_end..], keys)?;
    if h.method == Method::PatchFrom {
        return Err(DeltaError::InPlace("only the op methods apply in place".into()));
    }
    let mut source = HostSource { h: &h, payload, reader: None, error: None };
    let covers: Vec<otaforge_applier::Cover> = Vec::new();
    let applier = h.to_applier();
    otaforge_applier::inplace::in_place(&applier, &mut source, flash, slot_len, journal, covers)
        .map_err(|e| host_error(e, &h, source.error.take()))?;
    Ok(Applied {
        format: DeltaFormat::Otadelta,
        new_size: h.new_size,
        new_sha256: h.new_sha256,
        signed_by,
    })
}

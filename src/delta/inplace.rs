//! Applying a delta inside the old image's own flash slot, one segment at a time, so that a
//! power cut at any moment resumes to the same result (docs/delta-format.md, "In place").
//!
//! The slot holds old at address 0. An in-place delta (`--in-place`) declares a segment size
//! `S` (a multiple of the flash's erase unit) and a shift. Applying runs in two phases:
//!
//! 1. **Shift**: old is moved up the slot by `shift` bytes, segment by segment from the top,
//!    so that new can grow at the bottom without overwriting old bytes it still needs.
//! 2. **Patch**: new is written from address 0, segment `k` after segment `k - 1`: erase it,
//!    then write the bytes the patcher produces. The delta only ever reads old at slot
//!    addresses at or above `(k + 1) * S`, which are still intact ([`super::Patcher::in_place`]
//!    refuses anything else).
//!
//! After each segment (moved or written) the progress goes to a [`Journal`]: the phase, the
//! segment, and the patcher's checkpoint at the segment's end. After a power cut, [`apply`]
//! reads the journal, redoes the interrupted segment from its start (the bytes it reads are
//! still intact), and goes on. The decompressor keeps no state: it starts again from the front
//! of the payload and the op bytes before the checkpoint are skipped.

use std::cell::RefCell;
use std::io;

use super::format::{self, Header, InPlace};
use super::ops::{CHECKPOINT_LEN, OldImage, Patcher, StreamPatcher};
use super::{Applied, Bounded, DeltaError, DeltaFormat, Method};
use crate::Sha256;
use crate::sign::TrustedKeys;

/// A flash slot, as a device driver sees it.
pub trait Flash {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Erases `[addr, addr + len)` (whole erase units).
    fn erase(&mut self, addr: u64, len: u64) -> io::Result<()>;
    /// Programs erased bytes at `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> io::Result<()>;
}

/// Where the progress record lives between power cuts.
pub trait Journal {
    /// The last record saved completely, if any.
    fn load(&mut self) -> io::Result<Option<[u8; RECORD_LEN]>>;
    /// Saves a record; a save torn by a power cut must leave the previous record loadable.
    fn save(&mut self, record: &[u8; RECORD_LEN]) -> io::Result<()>;
}

/// Size of a progress record.
pub const RECORD_LEN: usize = 4 + 8 + 1 + 8 + CHECKPOINT_LEN + 8;

const RECORD_MAGIC: &[u8; 4] = b"OIP1";

/// Where an in-place update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Moving old up: this many of its segments (from the top) are moved.
    Shift {
        /// Segments moved.
        moved: u64,
    },
    /// Writing new: segments below `segment` are written; the patcher's state is at its start.
    Patch {
        /// The next segment to write.
        segment: u64,
        /// The patcher's checkpoint at that segment's start.
        checkpoint: [u8; CHECKPOINT_LEN],
    },
    /// New is complete and checked.
    Done,
}

impl Progress {
    /// The record for a delta with digest `delta`.
    pub fn encode(&self, delta: &Sha256) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[..4].copy_from_slice(RECORD_MAGIC);
        r[4..12].copy_from_slice(&delta.as_bytes()[..8]);
        let (tag, n) = match self {
            Progress::Shift { moved } => (0, *moved),
            Progress::Patch { segment, checkpoint } => {
                r[21..21 + CHECKPOINT_LEN].copy_from_slice(checkpoint);
                (1, *segment)
            }
            Progress::Done => (2, 0),
        };
        r[12] = tag;
        r[13..21].copy_from_slice(&n.to_le_bytes());
        let d = Sha256::digest(&r[..RECORD_LEN - 8]);
        r[RECORD_LEN - 8..].copy_from_slice(&d.as_bytes()[..8]);
        r
    }

    /// Reads a record, refusing a damaged one (`None`) and one for another delta (an error).
    pub fn decode(r: &[u8; RECORD_LEN], delta: &Sha256) -> Result<Option<Self>, DeltaError> {
        if &r[..4] != RECORD_MAGIC
            || Sha256::digest(&r[..RECORD_LEN - 8]).as_bytes()[..8] != r[RECORD_LEN - 8..]
        {
            return Ok(None);
        }
        if r[4..12] != delta.as_bytes()[..8] {
            return Err(DeltaError::InPlace(
                "the slot holds a half-done in-place update from another delta; finish that one first"
                    .into(),
            ));
        }
        let n = u64::from_le_bytes(r[13..21].try_into().unwrap_or_default());
        Ok(match r[12] {
            0 => Some(Progress::Shift { moved: n }),
            1 => {
                let mut checkpoint = [0u8; CHECKPOINT_LEN];
                checkpoint.copy_from_slice(&r[21..21 + CHECKPOINT_LEN]);
                Some(Progress::Patch { segment: n, checkpoint })
            }
            2 => Some(Progress::Done),
            _ => None,
        })
    }
}

/// A [`Journal`] in two erase units of flash, written alternately: each save erases the unit
/// not holding the newest record and writes a sequence number, the record and a digest, so
/// a torn save leaves the other unit's record in force.
#[derive(Debug)]
pub struct FlashJournal<F> {
    /// The flash holding the journal.
    pub flash: F,
    /// Address of the first unit.
    pub addr: u64,
    /// Erase unit size (at least 8 + [`RECORD_LEN`] + 8 bytes).
    pub unit: u64,
}

/// The bytes one journal save writes: sequence number, record, digest.
const FRAME_LEN: usize = 8 + RECORD_LEN + 8;

impl<F: Flash> FlashJournal<F> {
    fn check_unit(&self) -> io::Result<()> {
        if self.unit < FRAME_LEN as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a journal unit of {} bytes cannot hold a {FRAME_LEN}-byte record",
                    self.unit
                ),
            ));
        }
        Ok(())
    }

    fn read_unit(&mut self, i: u64) -> io::Result<Option<(u64, [u8; RECORD_LEN])>> {
        self.check_unit()?;
        let mut b = [0u8; FRAME_LEN];
        self.flash.read(self.addr + i * self.unit, &mut b)?;
        let body = &b[..8 + RECORD_LEN];
        if Sha256::digest(body).as_bytes()[..8] != b[8 + RECORD_LEN..] {
            return Ok(None);
        }
        let seq = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let mut r = [0u8; RECORD_LEN];
        r.copy_from_slice(&b[8..8 + RECORD_LEN]);
        Ok(Some((seq, r)))
    }

    fn newest(&mut self) -> io::Result<Option<(u64, u64, [u8; RECORD_LEN])>> {
        let a = self.read_unit(0)?.map(|(s, r)| (s, 0, r));
        let b = self.read_unit(1)?.map(|(s, r)| (s, 1, r));
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    /// Forgets every record (after an update, before the next one).
    pub fn clear(&mut self) -> io::Result<()> {
        self.flash.erase(self.addr, 2 * self.unit)
    }
}

impl<F: Flash> Journal for FlashJournal<F> {
    fn load(&mut self) -> io::Result<Option<[u8; RECORD_LEN]>> {
        Ok(self.newest()?.map(|(_, _, r)| r))
    }

    fn save(&mut self, record: &[u8; RECORD_LEN]) -> io::Result<()> {
        let (seq, unit) = match self.newest()? {
            Some((seq, unit, _)) => (seq + 1, 1 - unit),
            None => (1, 0),
        };
        let mut b = [0u8; FRAME_LEN];
        b[..8].copy_from_slice(&seq.to_le_bytes());
        b[8..8 + RECORD_LEN].copy_from_slice(record);
        let d = Sha256::digest(&b[..8 + RECORD_LEN]);
        b[8 + RECORD_LEN..].copy_from_slice(&d.as_bytes()[..8]);
        self.flash.erase(self.addr + unit * self.unit, self.unit)?;
        self.flash.write(self.addr + unit * self.unit, &b)
    }
}

/// Old bytes in the slot after the shift.
struct SlotOld<'a, F> {
    flash: &'a RefCell<&'a mut F>,
    shift: u64,
}

impl<F: Flash> OldImage for SlotOld<'_, F> {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.flash.borrow_mut().read(self.shift + pos, buf)
    }
}

/// The smallest slot an in-place delta needs: old after the shift, and new, each rounded up to
/// whole segments.
pub fn slot_needed(h: &Header, ip: &InPlace) -> u64 {
    let seg = ip.segment();
    (ip.shift() + h.old_size.div_ceil(seg) * seg).max(h.new_size.div_ceil(seg) * seg)
}

fn hash_flash<F: Flash>(flash: &mut F, len: u64) -> io::Result<Sha256> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = [0u8; 256];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        flash.read(at, &mut buf[..n])?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(Sha256::from_bytes(h.finalize().into()))
}

/// Runs the whole op stream against old where it lies now (unshifted), writing nothing: the
/// in-place rule holds for every op and the result is new. Called before the first erase.
fn rehearse<F: Flash>(
    h: &Header,
    ip: InPlace,
    payload: &[u8],
    flash: &mut F,
) -> Result<(), DeltaError> {
    use sha2::Digest as _;
    let decompress = |e: io::Error| DeltaError::Decompress(e.to_string());
    let mut sp = StreamPatcher::new(Patcher::new(h.old_size, h.new_size).in_place(ip), h.filter);
    let mut stream = Bounded::new(super::op_stream(h, payload).map_err(decompress)?, h);
    let cell = RefCell::new(flash);
    let mut old = SlotOld { flash: &cell, shift: 0 };
    let mut hasher = sha2::Sha256::new();
    let (mut buf, mut scratch) = ([0u8; 512], [0u8; 64]);
    loop {
        let n = stream.next(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut sink = |b: &[u8]| {
            hasher.update(b);
            Ok(())
        };
        sp.feed_until(&buf[..n], &mut old, &mut scratch, &mut sink, u64::MAX)?;
    }
    sp.finish()?;
    stream.finish()?;
    let actual = Sha256::from_bytes(hasher.finalize().into());
    if actual != h.new_sha256 {
        return Err(DeltaError::WrongNew { expected: h.new_sha256, actual });
    }
    Ok(())
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
    let ioe = |e: io::Error| DeltaError::InPlace(format!("flash: {e}"));
    let h = Header::decode(delta)?;
    let Some(ip) = h.in_place else {
        return Err(DeltaError::InPlace(
            "the delta was not made with --in-place; apply it to another slot".into(),
        ));
    };
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
    if h.method == Method::Zstd {
        return Err(DeltaError::InPlace("only the op methods apply in place".into()));
    }
    let needed = slot_needed(&h, &ip);
    if slot_len < needed {
        return Err(DeltaError::InPlace(format!(
            "the slot is {slot_len} bytes; this delta needs {needed} (old shifted by {} plus new, in {}-byte segments)",
            ip.shift(),
            ip.segment()
        )));
    }
    let (seg, shift) = (ip.segment(), ip.shift());
    let done = Applied {
        format: DeltaFormat::Otadelta,
        new_size: h.new_size,
        new_sha256: h.new_sha256,
        signed_by,
    };
    let saved = match journal.load().map_err(ioe)? {
        Some(r) => Progress::decode(&r, &h.digest)?,
        None => None,
    };
    let mut progress = match saved {
        Some(p) => p,
        None => {
            let actual = hash_flash(flash, h.old_size).map_err(ioe)?;
            if actual != h.old_sha256 {
                return Err(DeltaError::WrongOld {
                    expected_size: h.old_size,
                    expected: h.old_sha256,
                    actual_size: h.old_size,
                    actual,
                });
            }
            // Nothing is erased before the whole update has been rehearsed: every op checked
            // against the in-place rule and new's digest computed, reading old where it is.
            rehearse(&h, ip, payload, flash)?;
            Progress::Shift { moved: 0 }
        }
    };
    let save = |journal: &mut J, p: &Progress| journal.save(&p.encode(&h.digest)).map_err(ioe);

    // Phase 1 (when there is a shift): move old up by `shift`, top segment first. Source and destination of one
    // segment never overlap (the shift is whole segments), and a destination only covers
    // sources already moved, so an interrupted move is simply redone.
    let old_segments = if shift > 0 { h.old_size.div_ceil(seg) } else { 0 };
    if let Progress::Shift { moved } = progress {
        let mut buf = [0u8; 256];
        for j in (0..old_segments.saturating_sub(moved)).rev() {
            let (src, len) = (j * seg, seg.min(h.old_size - j * seg));
            flash.erase(src + shift, seg).map_err(ioe)?;
            let mut at = 0;
            while at < len {
                let n = (len - at).min(buf.len() as u64) as usize;
                flash.read(src + at, &mut buf[..n]).map_err(ioe)?;
                flash.write(src + shift + at, &buf[..n]).map_err(ioe)?;
                at += n as u64;
            }
            save(journal, &Progress::Shift { moved: old_segments - j })?;
        }
        progress = Progress::Patch {
            segment: 0,
            checkpoint: Patcher::new(h.old_size, h.new_size).checkpoint(),
        };
        save(journal, &progress)?;
    }

    // Phase 2: write new segment by segment.
    if let Progress::Patch { segment, checkpoint } = progress {
        let patcher = Patcher::restore(&checkpoint, h.old_size, h.new_size)?.in_place(ip);
        if patcher.produced() != (segment * seg).min(h.new_size) {
            return Err(DeltaError::InPlace("the journal's record is inconsistent".into()));
        }
        let mut sp = StreamPatcher::new(patcher, h.filter);
        let reader =
            super::op_stream(&h, payload).map_err(|e| DeltaError::Decompress(e.to_string()))?;
        let mut stream = Bounded::new(reader, &h);
        let cell = RefCell::new(&mut *flash);
        let mut old = SlotOld { flash: &cell, shift };
        let mut k = segment;
        let segments = h.new_size.div_ceil(seg);
        if k < segments {
            cell.borrow_mut().erase(k * seg, seg).map_err(ioe)?;
        }
        let (mut buf, mut scratch) = ([0u8; 512], [0u8; 64]);
        loop {
            let n = stream.next(&mut buf)?;
            if n == 0 {
                break;
            }
            let mut piece = &buf[..n];
            while !piece.is_empty() {
                // Past the last segment, the patcher itself refuses trailing bytes.
                let stop = if k < segments { ((k + 1) * seg).min(h.new_size) } else { u64::MAX };
                let mut pos = sp.patcher().produced();
                let used = sp.feed_until(
                    piece,
                    &mut old,
                    &mut scratch,
                    &mut |b: &[u8]| {
                        cell.borrow_mut().write(pos, b)?;
                        pos += b.len() as u64;
                        Ok(())
                    },
                    stop,
                )?;
                piece = &piece[used..];
                if sp.patcher().produced() == stop && k < segments {
                    k += 1;
                    let p = Progress::Patch { segment: k, checkpoint: sp.patcher().checkpoint() };
                    save(journal, &p)?;
                    if k < segments {
                        cell.borrow_mut().erase(k * seg, seg).map_err(ioe)?;
                    }
                }
            }
        }
        sp.finish()?;
        stream.finish()?;
    }
    // New is complete (now, or before this call): check what the slot holds.
    let actual = hash_flash(flash, h.new_size).map_err(ioe)?;
    if actual != h.new_sha256 {
        return Err(DeltaError::WrongNew { expected: h.new_sha256, actual });
    }
    if progress != Progress::Done {
        save(journal, &Progress::Done)?;
    }
    Ok(done)
}

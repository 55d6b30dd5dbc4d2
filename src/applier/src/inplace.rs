//! Applying an op-stream delta segment by segment with progress in a journal, so that a power
//! cut at any moment resumes to the same result (docs/delta-format.md, "In place"): inside the
//! old image's own flash slot ([`in_place`]), or into another slot ([`ab`]). A method 2 delta
//! (LZMA primed with old) goes into another slot through [`ab_patch_from`], the same segments
//! and journal without a patcher.
//!
//! In place, the slot holds old at address 0 and the delta declares a segment size `S` and a
//! shift. Applying runs in two phases:
//!
//! 1. **Shift**: old is moved up the slot by `shift` bytes, segment by segment from the top.
//! 2. **Patch**: new is written from address 0, segment `k` after segment `k - 1`: erase it,
//!    then write the bytes the patcher produces. The delta only reads old at slot addresses at
//!    or above `(k + 1) * S`, which are still intact ([`Patcher::in_place`] refuses the rest).
//!
//! After each segment (moved or written) the progress goes to a [`Journal`]: the phase, the
//! segment, and the patcher's checkpoint. After a power cut the same call reads the journal,
//! redoes the interrupted segment from its start, and goes on. The op stream is read again
//! from its front ([`OpSource::restart`]) and the op bytes before the checkpoint are skipped.
//!
//! Before the first erase, old's SHA-256 is checked and the whole update is rehearsed without
//! writing (every op checked against the in-place rule, new's SHA-256 computed), so a delta
//! that would not rebuild new leaves the slot as it was.

use core::cell::RefCell;

use crate::error::{ApplyError, IoError};
use crate::exec::CoverStore;
use crate::header::{Header, InPlace, Method};
use crate::image::OldImage;
use crate::lzma::Far;
use crate::patcher::{Patcher, StreamPatcher, CHECKPOINT_LEN};
use crate::sha256::Sha256;

/// A flash region, as a device driver sees it.
pub trait Flash {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Erases `[addr, addr + len)` (whole erase units).
    fn erase(&mut self, addr: u64, len: u64) -> Result<(), IoError>;
    /// Programs erased bytes at `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), IoError>;
}

impl<F: Flash + ?Sized> Flash for &mut F {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), IoError> {
        (**self).read(addr, buf)
    }
    fn erase(&mut self, addr: u64, len: u64) -> Result<(), IoError> {
        (**self).erase(addr, len)
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), IoError> {
        (**self).write(addr, data)
    }
}

/// Where the progress record lives between power cuts.
pub trait Journal {
    /// The last record saved completely, if any.
    fn load(&mut self) -> Result<Option<[u8; RECORD_LEN]>, ApplyError>;
    /// Saves a record; a save torn by a power cut must leave the previous record loadable.
    fn save(&mut self, record: &[u8; RECORD_LEN]) -> Result<(), ApplyError>;
}

/// The decompressed op stream of the delta being applied, which can be read again from its
/// first byte (the decompressor keeps no state worth saving).
pub trait OpSource {
    /// Starts again from the stream's first byte.
    fn restart(&mut self) -> Result<(), ApplyError>;
    /// The next bytes into `buf`; 0 at the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ApplyError>;
}

/// New itself, decompressed as it is read (method 2, LZMA primed with old), which can be read
/// again from its first byte. A match may reach back into old or into the new bytes already
/// handed out, which the decoder reads through `far`.
pub trait NewSource {
    /// Starts again from the stream's first byte.
    fn restart(&mut self) -> Result<(), ApplyError>;
    /// The next bytes of new into `buf`; 0 at the end of the stream.
    fn read(&mut self, far: &mut dyn Far, buf: &mut [u8]) -> Result<usize, ApplyError>;
}

/// Size of a progress record.
pub const RECORD_LEN: usize = 4 + 8 + 1 + 8 + CHECKPOINT_LEN + 8;

const RECORD_MAGIC: &[u8; 4] = b"OIP1";

/// Where an update is.
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
    pub fn encode(&self, delta: &[u8; 32]) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[..4].copy_from_slice(RECORD_MAGIC);
        r[4..12].copy_from_slice(&delta[..8]);
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
        r[RECORD_LEN - 8..].copy_from_slice(&d[..8]);
        r
    }

    /// Reads a record, refusing a damaged one (`None`) and one for another delta (an error).
    pub fn decode(r: &[u8; RECORD_LEN], delta: &[u8; 32]) -> Result<Option<Self>, ApplyError> {
        if &r[..4] != RECORD_MAGIC
            || Sha256::digest(&r[..RECORD_LEN - 8])[..8] != r[RECORD_LEN - 8..]
        {
            return Ok(None);
        }
        if r[4..12] != delta[..8] {
            return Err(ApplyError::ForeignRecord);
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&r[13..21]);
        let n = u64::from_le_bytes(n);
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
    /// Erase unit size (at least [`FRAME_LEN`] bytes).
    pub unit: u64,
}

/// The bytes one journal save writes: sequence number, record, digest.
pub const FRAME_LEN: usize = 8 + RECORD_LEN + 8;

impl<F: Flash> FlashJournal<F> {
    /// The sequence number of unit `i`'s record (`None` when it holds no intact one),
    /// copying the record into `out` when given.
    #[inline(never)]
    fn read_unit(
        &mut self,
        i: u64,
        out: Option<&mut [u8; RECORD_LEN]>,
    ) -> Result<Option<u64>, ApplyError> {
        if self.unit < FRAME_LEN as u64 {
            return Err(ApplyError::Unsupported("a journal unit is smaller than one record"));
        }
        let mut b = [0u8; FRAME_LEN];
        self.flash.read(self.addr + i * self.unit, &mut b).map_err(ApplyError::Journal)?;
        if Sha256::digest(&b[..8 + RECORD_LEN])[..8] != b[8 + RECORD_LEN..] {
            return Ok(None);
        }
        if let Some(out) = out {
            out.copy_from_slice(&b[8..8 + RECORD_LEN]);
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[..8]);
        Ok(Some(u64::from_le_bytes(seq)))
    }

    /// The unit holding the newest record, and its sequence number.
    fn newest(&mut self) -> Result<Option<(u64, u64)>, ApplyError> {
        let a = self.read_unit(0, None)?.map(|s| (s, 0));
        let b = self.read_unit(1, None)?.map(|s| (s, 1));
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    /// Forgets every record (after an update, before the next one).
    pub fn clear(&mut self) -> Result<(), ApplyError> {
        self.flash.erase(self.addr, 2 * self.unit).map_err(ApplyError::Journal)
    }
}

impl<F: Flash> Journal for FlashJournal<F> {
    fn load(&mut self) -> Result<Option<[u8; RECORD_LEN]>, ApplyError> {
        let unit = match self.newest()? {
            Some((_, unit)) => unit,
            None => return Ok(None),
        };
        let mut r = [0u8; RECORD_LEN];
        Ok(self.read_unit(unit, Some(&mut r))?.map(|_| r))
    }

    #[inline(never)]
    fn save(&mut self, record: &[u8; RECORD_LEN]) -> Result<(), ApplyError> {
        let (seq, unit) = match self.newest()? {
            Some((seq, unit)) => (seq + 1, 1 - unit),
            None => (1, 0),
        };
        let mut b = [0u8; FRAME_LEN];
        b[..8].copy_from_slice(&seq.to_le_bytes());
        b[8..8 + RECORD_LEN].copy_from_slice(record);
        let d = Sha256::digest(&b[..8 + RECORD_LEN]);
        b[8 + RECORD_LEN..].copy_from_slice(&d[..8]);
        let at = self.addr + unit * self.unit;
        self.flash.erase(at, self.unit).map_err(ApplyError::Journal)?;
        self.flash.write(at, &b).map_err(ApplyError::Journal)
    }
}

/// Old bytes in a flash region, `shift` bytes up.
struct FlashOld<'a, F> {
    flash: &'a RefCell<F>,
    shift: u64,
}

impl<F: Flash> OldImage for FlashOld<'_, F> {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.flash.borrow_mut().read(self.shift + pos, buf)
    }
}

/// SHA-256 of the first `len` bytes of `old`.
#[inline(never)]
fn hash_image<O: OldImage + ?Sized>(old: &mut O, len: u64) -> Result<[u8; 32], IoError> {
    let mut h = Sha256::new();
    let mut buf = [0u8; 128];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        old.read_at(at, &mut buf[..n])?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize())
}

/// One update's inputs: the header, its op stream, the journal and the table's store.
struct Job<'a, P: ?Sized, J: ?Sized, S> {
    h: &'a Header,
    source: &'a mut P,
    journal: &'a mut J,
    covers: S,
}

impl<P: OpSource + ?Sized, J: Journal + ?Sized, S: CoverStore> Job<'_, P, J, S> {
    fn save(&mut self, p: &Progress) -> Result<(), ApplyError> {
        self.journal.save(&p.encode(&self.h.digest))
    }

    fn ended(&self, total: u64) -> Result<(), ApplyError> {
        if total != self.h.stream_len {
            return Err(ApplyError::StreamLength { expected: self.h.stream_len, actual: total });
        }
        Ok(())
    }

    /// Runs the whole op stream against `old`, writing nothing: every op passes the patcher's
    /// checks (and `rule`) and the result is new.
    #[inline(never)]
    fn rehearse<O: OldImage>(
        &mut self,
        old: &mut O,
        rule: Option<InPlace>,
    ) -> Result<(), ApplyError> {
        let h = self.h;
        let mut patcher = Patcher::new(h.old_size, h.new_size);
        if let Some(ip) = rule {
            patcher = patcher.in_place(ip);
        }
        let mut sp = StreamPatcher::new(patcher, h.filter, &mut self.covers)
            .with_abs_pointers(h.abs_pointers)
            .with_refs(h.refs);
        self.source.restart()?;
        let mut hasher = Sha256::new();
        let (mut buf, mut scratch, mut total) = ([0u8; 128], [0u8; 64], 0);
        loop {
            let n = {
                let s = &mut *self.source;
                let n = s.read(&mut buf)?;
                total += n as u64;
                if total > h.stream_len {
                    return Err(ApplyError::StreamLength { expected: h.stream_len, actual: total });
                }
                n
            };
            if n == 0 {
                break;
            }
            let mut sink = |b: &[u8]| {
                hasher.update(b);
                Ok(())
            };
            sp.feed_until(&buf[..n], old, &mut scratch, &mut sink, u64::MAX)?;
        }
        sp.finish()?;
        self.ended(total)?;
        let actual = hasher.finalize();
        if actual != h.new_sha256 {
            return Err(ApplyError::WrongNew(actual));
        }
        Ok(())
    }

    /// Writes new into `new` from segment `segment` on (its patcher state is `checkpoint`),
    /// erasing each segment of `seg` bytes before writing it and saving progress after it.
    #[inline(never)]
    fn write_segments<O: OldImage, F: Flash>(
        &mut self,
        old: &mut O,
        new: &RefCell<F>,
        (seg, rule): (u64, Option<InPlace>),
        (segment, checkpoint): (u64, &[u8; CHECKPOINT_LEN]),
    ) -> Result<(), ApplyError> {
        let h = self.h;
        let mut patcher = Patcher::restore(checkpoint, h.old_size, h.new_size)?;
        if let Some(ip) = rule {
            patcher = patcher.in_place(ip);
        }
        if patcher.produced() != segment.saturating_mul(seg).min(h.new_size) {
            return Err(ApplyError::Inconsistent);
        }
        let mut sp = StreamPatcher::new(patcher, h.filter, &mut self.covers)
            .with_abs_pointers(h.abs_pointers)
            .with_refs(h.refs);
        self.source.restart()?;
        let segments = h.new_size / seg + u64::from(h.new_size % seg != 0);
        let mut k = segment;
        if k < segments {
            new.borrow_mut().erase(k * seg, seg).map_err(ApplyError::Flash)?;
        }
        let (mut buf, mut scratch, mut total) = ([0u8; 128], [0u8; 64], 0);
        loop {
            let n = {
                let s = &mut *self.source;
                let n = s.read(&mut buf)?;
                total += n as u64;
                if total > h.stream_len {
                    return Err(ApplyError::StreamLength { expected: h.stream_len, actual: total });
                }
                n
            };
            if n == 0 {
                break;
            }
            let mut piece = &buf[..n];
            while !piece.is_empty() {
                // Past the last segment, the patcher itself refuses trailing bytes.
                let stop = if k < segments { ((k + 1) * seg).min(h.new_size) } else { u64::MAX };
                let mut pos = sp.patcher().produced();
                let mut sink = |b: &[u8]| {
                    new.borrow_mut().write(pos, b)?;
                    pos += b.len() as u64;
                    Ok(())
                };
                let used = sp.feed_until(piece, old, &mut scratch, &mut sink, stop)?;
                piece = &piece[used..];
                if sp.patcher().produced() == stop && k < segments {
                    k += 1;
                    let p = Progress::Patch { segment: k, checkpoint: sp.patcher().checkpoint() };
                    self.journal.save(&p.encode(&h.digest))?;
                    if k < segments {
                        new.borrow_mut().erase(k * seg, seg).map_err(ApplyError::Flash)?;
                    }
                }
            }
        }
        sp.finish()?;
        self.ended(total)
    }
}

fn flash_err(e: crate::error::PatchError) -> ApplyError {
    // A failed read or write of flash is the flash's failure (a power cut, typically), not a
    // corrupt patch.
    match e {
        crate::error::PatchError::Io(io) => ApplyError::Flash(io),
        other => ApplyError::Patch(other),
    }
}

fn op_method(h: &Header) -> Result<(), ApplyError> {
    if h.method == Method::PatchFrom {
        return Err(ApplyError::Unsupported("a zstd patch-from delta has no op stream"));
    }
    Ok(())
}

/// Applies (or resumes applying) the in-place delta whose header is `h` and op stream
/// `source` to the slot `flash` of `slot_len` bytes, saving progress in `journal` after every
/// segment; the displacement table goes to `covers`. Call it again after a power cut (or any
/// flash error): it carries on from the journal. On success new occupies the slot's first
/// `new_size` bytes and the journal says done. The caller has checked the delta's digest and
/// signature; old's digest is checked here, and the whole update rehearsed, before the first
/// erase.
pub fn in_place<P, F, J, S>(
    h: &Header,
    source: &mut P,
    flash: &mut F,
    slot_len: u64,
    journal: &mut J,
    covers: S,
) -> Result<(), ApplyError>
where
    P: OpSource + ?Sized,
    F: Flash + ?Sized,
    J: Journal + ?Sized,
    S: CoverStore,
{
    let ip = h.in_place.ok_or(ApplyError::Unsupported(
        "the delta was not made with --in-place; apply it to another slot",
    ))?;
    op_method(h)?;
    let needed = h.slot_needed();
    if slot_len < needed {
        return Err(ApplyError::SlotTooSmall { slot: slot_len, needed });
    }
    let mut job = Job { h, source, journal, covers };
    let (seg, shift) = (ip.segment(), ip.shift());
    let flash = RefCell::new(flash);
    let saved = match job.journal.load()? {
        Some(r) => Progress::decode(&r, &h.digest)?,
        None => None,
    };
    let mut progress = match saved {
        Some(p) => p,
        None => {
            let mut old = FlashOld { flash: &flash, shift: 0 };
            let actual = hash_image(&mut old, h.old_size).map_err(ApplyError::Flash)?;
            if actual != h.old_sha256 {
                return Err(ApplyError::WrongOld(actual));
            }
            // Nothing is erased before the whole update has been rehearsed, reading old
            // where it is.
            job.rehearse(&mut old, Some(ip)).map_err(flash_err_apply)?;
            Progress::Shift { moved: 0 }
        }
    };
    if let Progress::Shift { moved } = progress {
        shift_old(&mut job, &flash, (seg, shift), moved)?;
        progress = Progress::Patch {
            segment: 0,
            checkpoint: Patcher::new(h.old_size, h.new_size).checkpoint(),
        };
        job.save(&progress)?;
    }
    if let Progress::Patch { segment, checkpoint } = progress {
        let mut old = FlashOld { flash: &flash, shift };
        job.write_segments(&mut old, &flash, (seg, Some(ip)), (segment, &checkpoint))
            .map_err(flash_err_apply)?;
    }
    let done = finish(h, job.journal, &mut *flash.borrow_mut(), progress);
    done
}

fn flash_err_apply(e: ApplyError) -> ApplyError {
    match e {
        ApplyError::Patch(p) => flash_err(p),
        other => other,
    }
}

/// Phase 1: moves old up by `shift`, top segment first. Source and destination of one segment
/// never overlap (the shift is whole segments), and a destination only covers sources already
/// moved, so an interrupted move is simply redone.
#[inline(never)]
fn shift_old<P, J, S, F>(
    job: &mut Job<'_, P, J, S>,
    flash: &RefCell<F>,
    (seg, shift): (u64, u64),
    moved: u64,
) -> Result<(), ApplyError>
where
    P: OpSource + ?Sized,
    J: Journal + ?Sized,
    S: CoverStore,
    F: Flash,
{
    let old_size = job.h.old_size;
    let old_segments = if shift > 0 { old_size / seg + u64::from(old_size % seg != 0) } else { 0 };
    let mut buf = [0u8; 256];
    let mut f = flash.borrow_mut();
    for j in (0..old_segments.saturating_sub(moved)).rev() {
        let (src, len) = (j * seg, seg.min(old_size - j * seg));
        f.erase(src + shift, seg).map_err(ApplyError::Flash)?;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            f.read(src + at, &mut buf[..n]).map_err(ApplyError::Flash)?;
            f.write(src + shift + at, &buf[..n]).map_err(ApplyError::Flash)?;
            at += n as u64;
        }
        job.save(&Progress::Shift { moved: old_segments - j })?;
    }
    Ok(())
}

/// New is complete (now, or before this call): checks what the flash holds and records done.
#[inline(never)]
fn finish<J: Journal + ?Sized, F: Flash + ?Sized>(
    h: &Header,
    journal: &mut J,
    new: &mut F,
    progress: Progress,
) -> Result<(), ApplyError> {
    let cell = RefCell::new(new);
    let mut image = FlashOld { flash: &cell, shift: 0 };
    let actual = hash_image(&mut image, h.new_size).map_err(ApplyError::Flash)?;
    if actual != h.new_sha256 {
        return Err(ApplyError::WrongNew(actual));
    }
    if progress != Progress::Done {
        journal.save(&Progress::Done.encode(&h.digest))?;
    }
    Ok(())
}

/// A/B: a non-zero segment, and a slot holding new in whole segments.
fn ab_slot(h: &Header, slot_len: u64, segment: u64) -> Result<(), ApplyError> {
    if segment == 0 {
        return Err(ApplyError::Unsupported("the segment size is zero"));
    }
    let needed = (h.new_size / segment + u64::from(h.new_size % segment != 0)) * segment;
    if slot_len < needed {
        return Err(ApplyError::SlotTooSmall { slot: slot_len, needed });
    }
    Ok(())
}

/// Applies (or resumes applying) the delta whose header is `h` and op stream `source` from
/// `old` into another slot, `new`, of `slot_len` bytes, erased and written `segment` bytes at a
/// time (a multiple of its erase unit), saving progress in `journal` after each. Call it
/// again after a power cut: it carries on from the journal. The caller has checked the delta's
/// digest and signature; old's digest is checked here before the first erase.
pub fn ab<P, O, F, J, S>(
    h: &Header,
    source: &mut P,
    old: &mut O,
    (new, slot_len, segment): (&mut F, u64, u64),
    journal: &mut J,
    covers: S,
) -> Result<(), ApplyError>
where
    P: OpSource + ?Sized,
    O: OldImage + ?Sized,
    F: Flash + ?Sized,
    J: Journal + ?Sized,
    S: CoverStore,
{
    op_method(h)?;
    ab_slot(h, slot_len, segment)?;
    let mut job = Job { h, source, journal, covers };
    let saved = match job.journal.load()? {
        Some(r) => Progress::decode(&r, &h.digest)?,
        None => None,
    };
    let progress = match saved {
        Some(Progress::Shift { .. }) => return Err(ApplyError::Inconsistent),
        Some(p) => p,
        None => {
            let actual = hash_image(&mut *old, h.old_size).map_err(ApplyError::Flash)?;
            if actual != h.old_sha256 {
                return Err(ApplyError::WrongOld(actual));
            }
            Progress::Patch {
                segment: 0,
                checkpoint: Patcher::new(h.old_size, h.new_size).checkpoint(),
            }
        }
    };
    let cell = RefCell::new(new);
    if let Progress::Patch { segment: k, checkpoint } = progress {
        let mut old = OldRef(old);
        job.write_segments(&mut old, &cell, (segment, None), (k, &checkpoint))
            .map_err(flash_err_apply)?;
    }
    let done = finish(h, job.journal, &mut *cell.borrow_mut(), progress);
    done
}

/// The window of method 2 on a device: old below `old_size`, then new as written to its slot.
struct OldThenNew<'a, O: ?Sized, F> {
    old: &'a mut O,
    old_size: u64,
    new: &'a RefCell<F>,
}

impl<O: OldImage + ?Sized, F: Flash> Far for OldThenNew<'_, O, F> {
    fn read_far(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let in_old = self.old_size.saturating_sub(pos).min(buf.len() as u64) as usize;
        let (a, b) = buf.split_at_mut(in_old);
        if !a.is_empty() {
            self.old.read_at(pos, a)?;
        }
        if !b.is_empty() {
            self.new.borrow_mut().read(pos + in_old as u64 - self.old_size, b)?;
        }
        Ok(())
    }
}

/// Applies (or resumes applying) a method 2 delta (LZMA primed with old) whose header is `h`
/// and decompressed new `source`, from `old` into another slot, as [`ab`] does: `new` of
/// `slot_len` bytes, erased and written `segment` bytes at a time, progress saved in
/// `journal` after each. The decoder reads old and the new bytes already written back through
/// the flash, so it needs no dictionary in RAM. After a power cut the stream is decompressed
/// again from its start; what precedes the interrupted segment is not written again.
pub fn ab_patch_from<P, O, F, J>(
    h: &Header,
    source: &mut P,
    old: &mut O,
    (new, slot_len, segment): (&mut F, u64, u64),
    journal: &mut J,
) -> Result<(), ApplyError>
where
    P: NewSource + ?Sized,
    O: OldImage + ?Sized,
    F: Flash + ?Sized,
    J: Journal + ?Sized,
{
    if h.method != Method::PatchFrom {
        return Err(ApplyError::Unsupported("not a patch-from delta (method 2)"));
    }
    ab_slot(h, slot_len, segment)?;
    let saved = match journal.load()? {
        Some(r) => Progress::decode(&r, &h.digest)?,
        None => None,
    };
    let first = match saved {
        Some(Progress::Shift { .. }) => return Err(ApplyError::Inconsistent),
        Some(Progress::Patch { segment: k, .. }) => Some(k),
        Some(Progress::Done) => None,
        None => {
            let actual = hash_image(&mut *old, h.old_size).map_err(ApplyError::Flash)?;
            if actual != h.old_sha256 {
                return Err(ApplyError::WrongOld(actual));
            }
            Some(0)
        }
    };
    let cell = RefCell::new(new);
    if let Some(first) = first {
        let segments = h.new_size / segment + u64::from(h.new_size % segment != 0);
        if first > segments {
            return Err(ApplyError::Inconsistent);
        }
        let mut far = OldThenNew { old, old_size: h.old_size, new: &cell };
        write_new(h, source, &mut far, (segment, segments, first), journal)?;
    }
    let progress = if first.is_some() {
        Progress::Patch { segment: 0, checkpoint: [0; CHECKPOINT_LEN] }
    } else {
        Progress::Done
    };
    let done = finish(h, journal, &mut *cell.borrow_mut(), progress);
    done
}

/// Method 2's segment loop: decompresses new from its start, skips what lies before segment
/// `first` (written before a power cut), and writes the rest a segment at a time.
#[inline(never)]
fn write_new<P, O, F, J>(
    h: &Header,
    source: &mut P,
    far: &mut OldThenNew<'_, O, F>,
    (seg, segments, first): (u64, u64, u64),
    journal: &mut J,
) -> Result<(), ApplyError>
where
    P: NewSource + ?Sized,
    O: OldImage + ?Sized,
    F: Flash,
    J: Journal + ?Sized,
{
    let new = far.new;
    let mut k = first;
    if k < segments {
        new.borrow_mut().erase(k * seg, seg).map_err(ApplyError::Flash)?;
    }
    source.restart()?;
    let (mut buf, mut at) = ([0u8; 128], 0u64);
    loop {
        let n = source.read(&mut *far, &mut buf)?;
        if n == 0 {
            break;
        }
        if at + n as u64 > h.new_size {
            return Err(ApplyError::StreamLength { expected: h.stream_len, actual: at + n as u64 });
        }
        let mut piece = &buf[..n];
        while !piece.is_empty() {
            if at < k * seg {
                // Written before the power cut.
                let skip = (k * seg - at).min(piece.len() as u64) as usize;
                piece = &piece[skip..];
                at += skip as u64;
                continue;
            }
            let stop = ((k + 1) * seg).min(h.new_size);
            let take = (stop - at).min(piece.len() as u64) as usize;
            new.borrow_mut().write(at, &piece[..take]).map_err(ApplyError::Flash)?;
            piece = &piece[take..];
            at += take as u64;
            if at == stop {
                k += 1;
                let p = Progress::Patch { segment: k, checkpoint: [0; CHECKPOINT_LEN] };
                journal.save(&p.encode(&h.digest))?;
                if k < segments {
                    new.borrow_mut().erase(k * seg, seg).map_err(ApplyError::Flash)?;
                }
            }
        }
    }
    if at != h.new_size {
        return Err(ApplyError::StreamLength { expected: h.stream_len, actual: at });
    }
    Ok(())
}

/// `&mut O` for an unsized `O` as a sized [`OldImage`].
struct OldRef<'a, O: ?Sized>(&'a mut O);

impl<O: OldImage + ?Sized> OldImage for OldRef<'_, O> {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read_at(pos, buf)
    }
}

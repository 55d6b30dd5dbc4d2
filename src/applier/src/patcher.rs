//! The op stream's patcher: push-style, fixed memory (docs/delta-format.md, "Method 1" and "The
//! low-RAM apply API").
//!
//! Stream layout (after decompression), repeated until the new image is complete:
//!
//! ```text
//! seek  zigzag LEB128   move the old cursor by this many bytes (may be negative)
//! add   LEB128          bytes produced as old[cursor + i] + correction[i] (mod 256)
//! copy  LEB128          literal bytes
//! add   bytes           the corrections
//! copy  bytes           the literals
//! ```
//!
//! [`Patcher`] keeps 96 bytes of state, uses a scratch buffer the caller provides (any size
//! ≥ 1), reads old through [`OldImage::read_at`] at arbitrary offsets and hands new out
//! strictly in order. Patch bytes can be fed in pieces of any size. [`StreamPatcher`] reads the
//! displacement table first when the delta has an executable filter.

use crate::error::{IoError, PatchError};
use crate::exec::{Abs, CoverStore, Exec, TableReader};
use crate::header::Isa;
use crate::sha256::Sha256;
use crate::wire::unzigzag;

pub use crate::image::OldImage;

/// Where new bytes go, in order.
pub type Sink<'s> = dyn FnMut(&[u8]) -> Result<(), IoError> + 's;

/// The size of a saved patcher state ([`Patcher::checkpoint`]).
pub const CHECKPOINT_LEN: usize = 4 + 8 * 8 + 1 + 8 + 8 + 8;

const CHECKPOINT_MAGIC: &[u8; 4] = b"OPC1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading control number `field` (0 seek, 1 add, 2 copy).
    Control {
        field: u8,
        value: u64,
        shift: u32,
    },
    Add {
        left: u64,
    },
    Copy {
        left: u64,
    },
}

const NEXT_OP: State = State::Control { field: 0, value: 0, shift: 0 };

/// Applies an op stream with fixed memory. See the module docs.
#[derive(Debug, Clone)]
pub struct Patcher {
    old_len: u64,
    new_len: u64,
    old_pos: u64,
    new_pos: u64,
    stream_pos: u64,
    fields: [u64; 3],
    state: State,
    /// In place: log2 of the segment size (0 when not in place) and the shift (old bytes
    /// live at slot address `shift + pos`).
    segment_log2: u8,
    shift: u64,
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

impl Patcher {
    /// A patcher for an old image of `old_len` bytes producing `new_len` bytes.
    pub fn new(old_len: u64, new_len: u64) -> Self {
        Self {
            old_len,
            new_len,
            old_pos: 0,
            new_pos: 0,
            stream_pos: 0,
            fields: [0; 3],
            state: NEXT_OP,
            segment_log2: 0,
            shift: 0,
        }
    }

    /// Applies the in-place rule of a delta made with `--in-place`: while new segment `k` is
    /// written, slot addresses below `(k + 1) * segment` are erased, so every add must read old
    /// at `pos + shift` at or above that. A restored patcher needs this again (a checkpoint
    /// does not carry it).
    pub fn in_place(mut self, layout: crate::header::InPlace) -> Self {
        self.segment_log2 = layout.segment_log2.clamp(1, 62);
        self.shift = layout.shift();
        self
    }

    /// New bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.new_pos
    }

    /// Bytes of the (decompressed) patch stream consumed so far.
    pub fn consumed(&self) -> u64 {
        self.stream_pos
    }

    /// The declared new size.
    pub fn new_len(&self) -> u64 {
        self.new_len
    }

    /// The patcher's whole state in [`CHECKPOINT_LEN`] bytes (little endian, with a digest),
    /// for a device to keep in flash beside the new image's first [`Patcher::produced`] bytes.
    /// After a power cut, [`Patcher::restore`] brings it back; the device then feeds the patch
    /// stream from byte [`Patcher::consumed`] on.
    pub fn checkpoint(&self) -> [u8; CHECKPOINT_LEN] {
        let mut b = [0u8; CHECKPOINT_LEN];
        b[..4].copy_from_slice(CHECKPOINT_MAGIC);
        let (tag, x, y) = match self.state {
            State::Control { field, value, shift } => (field, value, u64::from(shift)),
            State::Add { left } => (3, left, 0),
            State::Copy { left } => (4, left, 0),
        };
        let words = [
            self.old_len,
            self.new_len,
            self.old_pos,
            self.new_pos,
            self.stream_pos,
            self.fields[0],
            self.fields[1],
            self.fields[2],
        ];
        for (i, w) in words.iter().enumerate() {
            b[4 + 8 * i..12 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        b[68] = tag;
        b[69..77].copy_from_slice(&x.to_le_bytes());
        b[77..85].copy_from_slice(&y.to_le_bytes());
        let digest = Sha256::digest(&b[..85]);
        b[85..].copy_from_slice(&digest[..8]);
        b
    }

    /// A patcher from a [`Patcher::checkpoint`], refused when the bytes are damaged (a write
    /// torn by the power cut), belong to a patch between images of other sizes, or describe
    /// an impossible state.
    pub fn restore(saved: &[u8], old_len: u64, new_len: u64) -> Result<Self, PatchError> {
        let bad = PatchError::BadCheckpoint;
        if saved.len() != CHECKPOINT_LEN || &saved[..4] != CHECKPOINT_MAGIC {
            return Err(bad("not a patcher state"));
        }
        if Sha256::digest(&saved[..85])[..8] != saved[85..] {
            return Err(bad("its digest does not match (a torn write?)"));
        }
        let word = |i: usize| le64(&saved[4 + 8 * i..]);
        if (word(0), word(1)) != (old_len, new_len) {
            return Err(bad("it is for images of other sizes"));
        }
        let (old_pos, new_pos, stream_pos) = (word(2), word(3), word(4));
        let (x, y) = (le64(&saved[69..]), le64(&saved[77..]));
        let state = match saved[68] {
            field @ 0..=2 if y <= 63 && y % 7 == 0 => {
                State::Control { field, value: x, shift: y as u32 }
            }
            3 if y == 0 => State::Add { left: x },
            4 if y == 0 => State::Copy { left: x },
            _ => return Err(bad("its state is not one a patcher has")),
        };
        let fits = |a: u64, b: u64, limit: u64| a.checked_add(b).map_or(false, |e| e <= limit);
        // A stream this long does not exist; the bound keeps every later sum in range.
        let in_range = old_pos <= old_len
            && new_pos <= new_len
            && stream_pos >= new_pos
            && stream_pos <= 1 << 62
            && match state {
                // An add is followed by the op's copy (`fields[2]`): both must fit, as
                // `begin_op` checked when the op started.
                State::Add { left } => {
                    fits(old_pos, left, old_len)
                        && new_pos.checked_add(left).map_or(false, |e| fits(e, word(7), new_len))
                }
                State::Copy { left } => fits(new_pos, left, new_len),
                State::Control { .. } => true,
            };
        if !in_range {
            return Err(bad("its positions are out of range"));
        }
        Ok(Self {
            old_len,
            new_len,
            old_pos,
            new_pos,
            stream_pos,
            fields: [word(5), word(6), word(7)],
            state,
            segment_log2: 0,
            shift: 0,
        })
    }

    /// Feeds the next piece of the decompressed patch stream. New bytes go to `out` in order;
    /// `scratch` (any non-empty buffer) holds old bytes while corrections are added.
    pub fn feed<O: OldImage + ?Sized>(
        &mut self,
        input: &[u8],
        old: &mut O,
        scratch: &mut [u8],
        out: &mut Sink<'_>,
    ) -> Result<(), PatchError> {
        self.feed_until(input, old, scratch, out, None, u64::MAX).map(|_| ())
    }

    /// Feeds `input` until new reaches `stop` bytes (or the input ends) and returns how many
    /// input bytes it took: a device stops at each segment's end to save its state.
    pub fn feed_until<O: OldImage + ?Sized>(
        &mut self,
        mut input: &[u8],
        old: &mut O,
        scratch: &mut [u8],
        out: &mut Sink<'_>,
        exec: Option<Exec<'_>>,
        stop: u64,
    ) -> Result<usize, PatchError> {
        let given = input.len();
        while !input.is_empty() && self.new_pos < stop {
            let n = match self.state {
                State::Control { field, value, shift } => {
                    self.control(input[0], field, value, shift)?;
                    1
                }
                State::Add { left } => {
                    let n = (left.min(input.len() as u64).min(stop - self.new_pos) as usize)
                        .min(scratch.len());
                    self.add(&input[..n], left, old, &mut scratch[..n], out, exec)?;
                    n
                }
                State::Copy { left } => {
                    let n = left.min(input.len() as u64).min(stop - self.new_pos) as usize;
                    out(&input[..n]).map_err(PatchError::Io)?;
                    self.advance(n as u64, false);
                    self.state = self.after(left - n as u64, false);
                    n
                }
            };
            input = &input[n..];
        }
        Ok(given - input.len())
    }

    /// One byte of control number `field`.
    fn control(
        &mut self,
        b: u8,
        field: u8,
        mut value: u64,
        mut shift: u32,
    ) -> Result<(), PatchError> {
        if field == 0 && self.new_pos == self.new_len {
            return Err(PatchError::TrailingData);
        }
        self.stream_pos += 1;
        if shift == 63 && b > 1 || shift > 63 {
            return Err(PatchError::BadVarint { offset: self.stream_pos - 1 });
        }
        value |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 != 0 {
            self.state = State::Control { field, value, shift };
            return Ok(());
        }
        self.fields[usize::from(field)] = value;
        if field < 2 {
            self.state = State::Control { field: field + 1, value: 0, shift: 0 };
            return Ok(());
        }
        self.begin_op()
    }

    /// `corrections.len()` bytes of the current add, `left` of which remain.
    fn add<O: OldImage + ?Sized>(
        &mut self,
        corrections: &[u8],
        left: u64,
        old: &mut O,
        buf: &mut [u8],
        out: &mut Sink<'_>,
        exec: Option<Exec<'_>>,
    ) -> Result<(), PatchError> {
        old.read_at(self.old_pos, buf).map_err(PatchError::Io)?;
        if let Some(exec) = exec {
            let start = self.old_pos - (self.fields[1] - left);
            let disp = self.new_pos as i64 - self.old_pos as i64;
            exec.predict(old, (start, start + self.fields[1]), disp, self.old_pos, buf)
                .map_err(PatchError::Io)?;
        }
        for (o, d) in buf.iter_mut().zip(corrections) {
            *o = o.wrapping_add(*d);
        }
        out(buf).map_err(PatchError::Io)?;
        let n = corrections.len() as u64;
        self.advance(n, true);
        self.state = self.after(left - n, true);
        Ok(())
    }

    /// Checks that the stream ended exactly at the end of the new file.
    pub fn finish(&self) -> Result<(), PatchError> {
        let at_boundary = matches!(self.state, State::Control { field: 0, shift: 0, .. });
        if self.new_pos == self.new_len && at_boundary {
            Ok(())
        } else {
            Err(PatchError::Truncated { produced: self.new_pos, expected: self.new_len })
        }
    }

    fn advance(&mut self, n: u64, add: bool) {
        self.stream_pos += n;
        self.new_pos += n;
        if add {
            self.old_pos += n;
        }
    }

    fn after(&self, left: u64, add: bool) -> State {
        match (left, add) {
            (0, true) if self.fields[2] > 0 => State::Copy { left: self.fields[2] },
            (0, _) => NEXT_OP,
            (l, true) => State::Add { left: l },
            (l, false) => State::Copy { left: l },
        }
    }

    /// Validates a complete control triple before any of its output exists.
    fn begin_op(&mut self) -> Result<(), PatchError> {
        let [seek, add, copy] = self.fields;
        let seek = unzigzag(seek);
        let total = add.checked_add(copy);
        if total.map_or(true, |t| t > self.new_len - self.new_pos) {
            return Err(PatchError::WritePastNew {
                new_pos: self.new_pos,
                len: total.unwrap_or(u64::MAX),
                new_len: self.new_len,
            });
        }
        let start = i128::from(self.old_pos) + i128::from(seek);
        let end = start + i128::from(add);
        if start < 0 || end > i128::from(self.old_len) {
            return Err(PatchError::ReadOutsideOld {
                new_pos: self.new_pos,
                start,
                end,
                old_len: self.old_len,
            });
        }
        if self.segment_log2 > 0 && add > 0 {
            let (segment, shift) = (1u64 << self.segment_log2, self.shift);
            // The segment of the add's last byte; everything below the next one is erased.
            let last = (self.new_pos + add - 1) / segment;
            let floor = (last + 1).saturating_mul(segment).saturating_sub(shift);
            if (start as u64) < floor {
                return Err(PatchError::ReadsOverwritten {
                    new_pos: self.new_pos,
                    start: start as u64,
                    floor,
                });
            }
        }
        self.old_pos = start as u64;
        self.state = if add > 0 {
            State::Add { left: add }
        } else if copy > 0 {
            State::Copy { left: copy }
        } else {
            NEXT_OP
        };
        Ok(())
    }
}

/// The consumer of a whole decompressed op stream: the displacement table first when the
/// delta has an executable filter (into the [`CoverStore`] given), then the [`Patcher`].
/// After a restore it skips the op bytes the saved patcher had consumed.
#[derive(Debug, Clone)]
pub struct StreamPatcher<S> {
    isa: Option<Isa>,
    abs: Option<Abs>,
    refs: bool,
    reader: Option<TableReader>,
    covers: S,
    skip: u64,
    patcher: Patcher,
}

impl<S: CoverStore> StreamPatcher<S> {
    /// Wraps `patcher` (new, or restored from a checkpoint) for a stream with filter `isa`,
    /// the table going to `covers`. The stream is fed from its first byte; a restored
    /// patcher's consumed bytes are skipped after the table.
    pub fn new(patcher: Patcher, isa: Option<Isa>, covers: S) -> Self {
        Self {
            isa,
            abs: None,
            refs: false,
            reader: isa.map(|_| TableReader::new(patcher.old_len)),
            covers,
            skip: patcher.consumed(),
            patcher,
        }
    }

    /// The same for a delta whose header says `abs_pointers` when `abs_pointers` is true: the stream starts
    /// with the image base, and absolute pointers are predicted too.
    pub fn with_abs_pointers(mut self, abs_pointers: bool) -> Self {
        if let (true, Some(isa)) = (abs_pointers, self.isa) {
            self.reader = Some(TableReader::with_base(self.patcher.old_len, isa));
        }
        self
    }

    /// The same for a delta whose header says `refs` (extended references, AArch64 and
    /// x86-64) when `refs` is true.
    pub fn with_refs(mut self, refs: bool) -> Self {
        self.refs = refs && matches!(self.isa, Some(Isa::Aarch64 | Isa::X86_64));
        self
    }

    /// The patcher (for its checkpoint and counters; its `consumed` counts op bytes after the
    /// table).
    pub fn patcher(&self) -> &Patcher {
        &self.patcher
    }

    /// Gives back the cover store.
    pub fn into_covers(self) -> S {
        self.covers
    }

    /// Feeds stream bytes until new reaches `stop` bytes; returns how many it took.
    pub fn feed_until<O: OldImage + ?Sized>(
        &mut self,
        input: &[u8],
        old: &mut O,
        scratch: &mut [u8],
        out: &mut Sink<'_>,
        stop: u64,
    ) -> Result<usize, PatchError> {
        let mut used = 0;
        if let Some(r) = &mut self.reader {
            used = r.feed(input, &mut self.covers)?;
            if !r.done() {
                return Ok(used);
            }
            self.abs = r.abs();
            self.reader = None;
        }
        let skipped = self.skip.min((input.len() - used) as u64) as usize;
        self.skip -= skipped as u64;
        used += skipped;
        if self.skip > 0 {
            return Ok(used);
        }
        let covers = &self.covers;
        let exec = self.isa.map(|isa| Exec { isa, table: covers, abs: self.abs, refs: self.refs });
        Ok(used + self.patcher.feed_until(&input[used..], old, scratch, out, exec, stop)?)
    }

    /// Checks that the stream ended exactly at the end of the new file.
    pub fn finish(&self) -> Result<(), PatchError> {
        if self.reader.is_some() || self.skip > 0 {
            return Err(PatchError::Truncated { produced: 0, expected: self.patcher.new_len });
        }
        self.patcher.finish()
    }
}

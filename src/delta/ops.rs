//! The otadelta op stream: writing it, and a push-style patcher with fixed memory that applies it.
//!
//! Stream layout (after decompression), repeated until the new file is complete:
//!
//! ```text
//! seek  zigzag LEB128   move the old cursor by this many bytes (may be negative)
//! add   LEB128          bytes produced as old[cursor + i] + correction[i] (mod 256)
//! copy  LEB128          literal bytes
//! add   bytes           the corrections
//! copy  bytes           the literals
//! ```
//!
//! The [`Patcher`] is the low-RAM apply API: it keeps 96 bytes of state, uses a scratch
//! buffer the caller provides (any size ≥ 1; 256 bytes is plenty on an MCU), reads old through
//! [`OldImage::read_at`] at arbitrary offsets and hands new out strictly sequentially. Patch bytes
//! can be fed in pieces of any size, as they arrive from a decompressor.

use super::diff::Op;

/// Random read access to the old image (flash, a file, a memory map).
pub trait OldImage {
    /// Fills `buf` with the old image's bytes at `pos..pos + buf.len()` (always in range).
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl OldImage for &[u8] {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(pos).map_err(std::io::Error::other)?;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// What is wrong with a patch stream. Every check happens before the op it guards produces a
/// single byte of output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// A control number has more than 10 LEB128 bytes or overflows 64 bits.
    #[error("malformed control number at patch stream offset {offset}")]
    BadVarint {
        /// Offset in the decompressed stream.
        offset: u64,
    },
    /// An op would write beyond the declared new size.
    #[error("op at new offset {new_pos} writes {len} bytes, past the declared new size {new_len}")]
    WritePastNew {
        /// Where the op starts in new.
        new_pos: u64,
        /// Bytes it would write.
        len: u64,
        /// The declared new size.
        new_len: u64,
    },
    /// An op would read old outside `[0, old size)`.
    #[error(
        "op at new offset {new_pos} reads old bytes {start}..{end}, outside the old file's {old_len} bytes"
    )]
    ReadOutsideOld {
        /// Where the op starts in new.
        new_pos: u64,
        /// First old byte read (may be negative).
        start: i128,
        /// One past the last old byte read.
        end: i128,
        /// The old file's size.
        old_len: u64,
    },
    /// A control value is negative where only lengths are allowed (BSDIFF40 controls are signed).
    #[error("op at new offset {new_pos} has the negative length {value}")]
    NegativeLength {
        /// Where the op starts in new.
        new_pos: u64,
        /// The value found.
        value: i64,
    },
    /// Patch bytes remain after the new file is complete.
    #[error("the patch stream continues after the new file is complete")]
    TrailingData,
    /// The stream ended before the new file was complete.
    #[error("the patch stream ends after {produced} of {expected} new bytes")]
    Truncated {
        /// Bytes produced.
        produced: u64,
        /// The declared new size.
        expected: u64,
    },
    /// Reading old or writing new failed.
    #[error("{0}")]
    Io(String),
    /// A saved patcher state is damaged or belongs to another patch.
    #[error("the saved patcher state is unusable: {0}")]
    BadCheckpoint(&'static str),
    /// The displacement table of an executable filter is malformed.
    #[error("bad displacement table: {0}")]
    BadTable(&'static str),
    /// In place: an op reads old bytes whose flash segment has already been overwritten.
    #[error(
        "op at new offset {new_pos} reads old byte {start}, which in place is already overwritten (old bytes below {floor} are gone by then)"
    )]
    ReadsOverwritten {
        /// Where the op starts in new.
        new_pos: u64,
        /// First old byte it reads.
        start: u64,
        /// The lowest old byte still intact when the op's last add byte is written.
        floor: u64,
    },
}

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
            state: State::Control { field: 0, value: 0, shift: 0 },
            segment_log2: 0,
            shift: 0,
        }
    }

    /// Applies the in-place rule of a delta made with `--in-place` (docs/delta-format.md, "In
    /// place"): while new segment `k` is written, slot addresses below `(k + 1) * segment`
    /// are erased, so every add must read old at `pos + shift` at or above that. A restored
    /// patcher needs this again (a checkpoint does not carry it).
    pub fn in_place(mut self, layout: super::InPlace) -> Self {
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

    /// The patcher's whole state in [`CHECKPOINT_LEN`] bytes (little endian, with a digest),
    /// for a device to keep in flash beside the new image's first [`Patcher::produced`] bytes.
    /// After a power cut, [`Patcher::restore`] brings it back; the device then feeds the patch
    /// stream from byte [`Patcher::consumed`] on (it decompresses the delta again from the
    /// start and drops what comes before: the decompressor keeps no state to save).
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
        let digest = crate::Sha256::digest(&b[..85]);
        b[85..].copy_from_slice(&digest.as_bytes()[..8]);
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
        if crate::Sha256::digest(&saved[..85]).as_bytes()[..8] != saved[85..] {
            return Err(bad("its digest does not match (a torn write?)"));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&saved[4 + 8 * i..12 + 8 * i]);
            u64::from_le_bytes(w)
        };
        let le = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&saved[r]);
            u64::from_le_bytes(w)
        };
        if (word(0), word(1)) != (old_len, new_len) {
            return Err(bad("it is for images of other sizes"));
        }
        let (old_pos, new_pos, stream_pos) = (word(2), word(3), word(4));
        let (x, y) = (le(69..77), le(77..85));
        let state = match saved[68] {
            field @ 0..=2 if y <= 63 && y % 7 == 0 => {
                State::Control { field, value: x, shift: y as u32 }
            }
            3 if y == 0 => State::Add { left: x },
            4 if y == 0 => State::Copy { left: x },
            _ => return Err(bad("its state is not one a patcher has")),
        };
        // A stream this long does not exist; the bound keeps every later sum in range.
        let in_range = old_pos <= old_len
            && new_pos <= new_len
            && stream_pos >= new_pos
            && stream_pos <= 1 << 62
            && match state {
                // An add is followed by the op's copy (`fields[2]`): both must fit, as
                // `begin_op` checked when the op started.
                State::Add { left } => {
                    old_pos.checked_add(left).is_some_and(|e| e <= old_len)
                        && new_pos
                            .checked_add(left)
                            .and_then(|e| e.checked_add(word(7)))
                            .is_some_and(|e| e <= new_len)
                }
                State::Copy { left } => new_pos.checked_add(left).is_some_and(|e| e <= new_len),
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
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), PatchError> {
        self.feed_until(input, old, scratch, out, None, u64::MAX).map(|_| ())
    }

    /// Feeds `input` until new reaches `stop` bytes (or the input ends) and returns how many
    /// input bytes it took: an in-place device stops at each segment's end to save its state.
    pub fn feed_until<O: OldImage + ?Sized>(
        &mut self,
        mut input: &[u8],
        old: &mut O,
        scratch: &mut [u8],
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
        exec: Option<super::exec::Exec<'_>>,
        stop: u64,
    ) -> Result<usize, PatchError> {
        let io = |e: std::io::Error| PatchError::Io(e.to_string());
        let given = input.len();
        while !input.is_empty() && self.new_pos < stop {
            match self.state {
                State::Control { field, mut value, mut shift } => {
                    if field == 0 && self.new_pos == self.new_len {
                        return Err(PatchError::TrailingData);
                    }
                    let b = input[0];
                    input = &input[1..];
                    self.stream_pos += 1;
                    if shift == 63 && b > 1 || shift > 63 {
                        return Err(PatchError::BadVarint { offset: self.stream_pos - 1 });
                    }
                    value |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 != 0 {
                        self.state = State::Control { field, value, shift };
                        continue;
                    }
                    self.fields[usize::from(field)] = value;
                    if field < 2 {
                        self.state = State::Control { field: field + 1, value: 0, shift: 0 };
                        continue;
                    }
                    self.begin_op()?;
                }
                State::Add { left } => {
                    let n = (left.min(input.len() as u64).min(stop - self.new_pos) as usize)
                        .min(scratch.len());
                    let buf = &mut scratch[..n];
                    old.read_at(self.old_pos, buf).map_err(io)?;
                    if let Some(exec) = exec {
                        let start = self.old_pos - (self.fields[1] - left);
                        let disp = self.new_pos as i64 - self.old_pos as i64;
                        exec.predict(old, (start, start + self.fields[1]), disp, self.old_pos, buf)
                            .map_err(io)?;
                    }
                    for (o, d) in buf.iter_mut().zip(&input[..n]) {
                        *o = o.wrapping_add(*d);
                    }
                    out(buf).map_err(io)?;
                    self.advance(n as u64, true);
                    input = &input[n..];
                    self.state = self.after(left - n as u64, true);
                }
                State::Copy { left } => {
                    let n = left.min(input.len() as u64).min(stop - self.new_pos) as usize;
                    out(&input[..n]).map_err(io)?;
                    self.advance(n as u64, false);
                    input = &input[n..];
                    self.state = self.after(left - n as u64, false);
                }
            }
        }
        Ok(given - input.len())
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
            (0, _) => State::Control { field: 0, value: 0, shift: 0 },
            (l, true) => State::Add { left: l },
            (l, false) => State::Copy { left: l },
        }
    }

    /// Validates a complete control triple before any of its output exists.
    fn begin_op(&mut self) -> Result<(), PatchError> {
        let [seek, add, copy] = self.fields;
        let seek = unzigzag(seek);
        let total = add.checked_add(copy);
        if total.is_none_or(|t| t > self.new_len - self.new_pos) {
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
            State::Control { field: 0, value: 0, shift: 0 }
        };
        Ok(())
    }
}

/// The consumer of a whole decompressed op stream: the displacement table first when the
/// delta has an executable filter, then the [`Patcher`]. After a restore it skips the op bytes
/// the saved patcher had consumed.
#[derive(Debug, Clone)]
pub struct StreamPatcher {
    isa: Option<super::exec::Isa>,
    reader: Option<super::exec::TableReader>,
    table: super::exec::Table,
    skip: u64,
    patcher: Patcher,
}

impl StreamPatcher {
    /// Wraps `patcher` (new, or restored from a checkpoint) for a stream with filter `isa`.
    /// The stream is fed from its first byte; a restored patcher's consumed bytes are skipped
    /// after the table.
    pub fn new(patcher: Patcher, isa: Option<super::exec::Isa>) -> Self {
        Self {
            isa,
            reader: isa.map(|_| super::exec::TableReader::new(patcher.old_len)),
            table: Default::default(),
            skip: patcher.consumed(),
            patcher,
        }
    }

    /// The patcher (for its checkpoint and counters; its `consumed` counts op bytes after the
    /// table).
    pub fn patcher(&self) -> &Patcher {
        &self.patcher
    }

    /// Feeds stream bytes until new reaches `stop` bytes; returns how many it took.
    pub fn feed_until<O: OldImage + ?Sized>(
        &mut self,
        input: &[u8],
        old: &mut O,
        scratch: &mut [u8],
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
        stop: u64,
    ) -> Result<usize, PatchError> {
        let mut used = 0;
        if let Some(r) = &mut self.reader {
            used = r.feed(input)?;
            if !r.done() {
                return Ok(used);
            }
            self.table = std::mem::replace(r, super::exec::TableReader::new(0)).into_table();
            self.reader = None;
        }
        let skipped = self.skip.min((input.len() - used) as u64) as usize;
        self.skip -= skipped as u64;
        used += skipped;
        if self.skip > 0 {
            return Ok(used);
        }
        let exec = self.isa.map(|isa| super::exec::Exec { isa, table: &self.table });
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

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The old bytes `at..at + len` of `op`'s add as the corrections are taken against them: as
/// they are, or rewritten by `exec`'s prediction (into `buf`).
pub(crate) fn add_source<'b>(
    old: &'b [u8],
    op: &Op,
    exec: Option<super::exec::Exec<'_>>,
    (at, len): (usize, usize),
    buf: &'b mut Vec<u8>,
) -> std::io::Result<&'b [u8]> {
    let raw = &old[at..at + len];
    let Some(exec) = exec else { return Ok(raw) };
    buf.clear();
    buf.extend_from_slice(raw);
    let s = op.old_pos as u64;
    let disp = op.new_pos as i64 - op.old_pos as i64;
    exec.predict(&mut &old[..], (s, s + op.add as u64), disp, at as u64, buf)?;
    Ok(buf)
}

/// How many correction bytes of `ops` are not zero, with or without `exec`'s prediction: a
/// cheap stand-in for the compressed size when choosing whether to predict.
pub(crate) fn nonzero_corrections(
    old: &[u8],
    new: &[u8],
    ops: &[Op],
    exec: Option<super::exec::Exec<'_>>,
) -> u64 {
    let mut buf = Vec::new();
    let mut n = 0u64;
    for op in ops.iter().filter(|o| o.add > 0) {
        let w = &new[op.new_pos..][..op.add];
        // Reads stay inside `old`, so they cannot fail.
        let Ok(o) = add_source(old, op, exec, (op.old_pos, op.add), &mut buf) else { continue };
        n += o.iter().zip(w).filter(|(a, b)| a != b).count() as u64;
    }
    n
}

/// Writes the op stream for `ops` through `sink` in pieces of at most about 1 MiB.
/// Returns the stream's length.
pub(crate) fn write_stream(
    old: &[u8],
    new: &[u8],
    ops: &[Op],
    exec: Option<super::exec::Exec<'_>>,
    sink: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    const PIECE: usize = 1 << 20;
    let mut buf = Vec::with_capacity(PIECE + 64);
    if let Some(exec) = exec {
        exec.table.encode(&mut buf);
    }
    let mut total = 0u64;
    let mut cursor = 0i64;
    let mut predicted = Vec::new();
    for op in ops {
        put_varint(&mut buf, zigzag(op.old_pos as i64 - cursor));
        put_varint(&mut buf, op.add as u64);
        put_varint(&mut buf, op.copy as u64);
        let mut done = 0;
        while done < op.add {
            let n = (op.add - done).min(PIECE);
            let w = &new[op.new_pos + done..][..n];
            let o = add_source(old, op, exec, (op.old_pos + done, n), &mut predicted)?;
            buf.extend(o.iter().zip(w).map(|(o, n)| n.wrapping_sub(*o)));
            done += n;
            if buf.len() >= PIECE {
                total += buf.len() as u64;
                sink.write_all(&buf)?;
                buf.clear();
            }
        }
        buf.extend_from_slice(op.extra(new));
        cursor = (op.old_pos + op.add) as i64;
        if buf.len() >= PIECE {
            total += buf.len() as u64;
            sink.write_all(&buf)?;
            buf.clear();
        }
    }
    total += buf.len() as u64;
    sink.write_all(&buf)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(old: &[u8], new_len: u64, stream: &[u8], piece: usize) -> Result<Vec<u8>, PatchError> {
        let mut p = Patcher::new(old.len() as u64, new_len);
        let mut out = Vec::new();
        let mut scratch = [0u8; 3];
        for chunk in stream.chunks(piece.max(1)) {
            p.feed(chunk, &mut &old[..], &mut scratch, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
        }
        p.finish()?;
        Ok(out)
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut b = Vec::new();
        put_varint(&mut b, u64::MAX);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn stream_applies_in_any_piece_size() {
        let old = b"0123456789abcdef".to_vec();
        let new = b"0123XX6789abcdefNEW".to_vec();
        let ops = [Op { new_pos: 0, old_pos: 0, add: 16, copy: 3 }];
        let mut s = Vec::new();
        write_stream(&old, &new, &ops, None, &mut s).unwrap();
        for piece in [1, 2, 5, 100] {
            assert_eq!(run(&old, new.len() as u64, &s, piece).unwrap(), new);
        }
    }

    /// A power cut at every byte of the stream: the state saved there, restored, and fed the
    /// rest of the stream from `consumed()` rebuilds new exactly; damaged or foreign states are
    /// refused.
    #[test]
    fn a_patcher_resumes_from_its_checkpoint_at_every_byte() {
        let old: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[40..60].iter_mut().for_each(|b| *b ^= 0x5a);
        new.extend_from_slice(b"tail bytes");
        let ops = [
            Op { new_pos: 0, old_pos: 0, add: 200, copy: 5 },
            Op { new_pos: 205, old_pos: 210, add: 90, copy: 15 },
        ];
        let mut stream = Vec::new();
        write_stream(&old, &new, &ops, None, &mut stream).unwrap();
        let (ol, nl) = (old.len() as u64, new.len() as u64);
        for cut in 0..=stream.len() {
            let mut out = Vec::new();
            let mut scratch = [0u8; 16];
            let mut sink = |b: &[u8]| {
                out.extend_from_slice(b);
                Ok(())
            };
            let mut p = Patcher::new(ol, nl);
            p.feed(&stream[..cut], &mut &old[..], &mut scratch, &mut sink).unwrap();
            let saved = p.checkpoint();
            // What was written before the cut is kept up to `produced`; the rest is redone.
            let mut q = Patcher::restore(&saved, ol, nl).unwrap();
            assert_eq!(q.consumed(), cut as u64);
            let mut rest = Vec::new();
            let mut sink2 = |b: &[u8]| {
                rest.extend_from_slice(b);
                Ok(())
            };
            q.feed(&stream[q.consumed() as usize..], &mut &old[..], &mut scratch, &mut sink2)
                .unwrap();
            q.finish().unwrap();
            out.truncate(Patcher::restore(&saved, ol, nl).unwrap().produced() as usize);
            out.extend_from_slice(&rest);
            assert_eq!(out, new, "cut at stream byte {cut}");
        }
        let saved = Patcher::new(ol, nl).checkpoint();
        let mut torn = saved;
        torn[30] ^= 1;
        assert!(matches!(Patcher::restore(&torn, ol, nl), Err(PatchError::BadCheckpoint(_))));
        assert!(matches!(Patcher::restore(&saved, ol + 1, nl), Err(PatchError::BadCheckpoint(_))));
        assert!(matches!(
            Patcher::restore(&saved[..40], ol, nl),
            Err(PatchError::BadCheckpoint(_))
        ));
        // Found by the fuzzer: a stream position near the end of u64 (digest made right) is
        // refused, not restored to overflow on the next byte.
        let mut far = saved;
        far[36..44].copy_from_slice(&u64::MAX.to_le_bytes());
        let digest = crate::Sha256::digest(&far[..85]);
        far[85..].copy_from_slice(&digest.as_bytes()[..8]);
        assert!(matches!(Patcher::restore(&far, ol, nl), Err(PatchError::BadCheckpoint(_))));
        // Also found by the fuzzer: mid-add, the op's pending copy must still fit in new.
        let mut p = Patcher::new(ol, nl);
        p.feed(&stream[..5], &mut &old[..], &mut [0u8; 4], &mut |_| Ok(())).unwrap();
        let mut long_copy = p.checkpoint();
        long_copy[60..68].copy_from_slice(&nl.to_le_bytes());
        let digest = crate::Sha256::digest(&long_copy[..85]);
        long_copy[85..].copy_from_slice(&digest.as_bytes()[..8]);
        assert!(Patcher::restore(&p.checkpoint(), ol, nl).is_ok());
        assert!(matches!(Patcher::restore(&long_copy, ol, nl), Err(PatchError::BadCheckpoint(_))));
    }

    #[test]
    fn bad_controls_are_refused() {
        let old = [1u8; 10];
        // seek -1 from 0
        assert!(matches!(run(&old, 1, &[1, 1, 0, 0], 9), Err(PatchError::ReadOutsideOld { .. })));
        // add 11 > old
        assert!(matches!(run(&old, 20, &[0, 11, 0], 9), Err(PatchError::ReadOutsideOld { .. })));
        // copy past new
        assert!(matches!(
            run(&old, 2, &[0, 0, 3, 9, 9, 9], 9),
            Err(PatchError::WritePastNew { .. })
        ));
        // trailing
        assert_eq!(run(&old, 1, &[0, 0, 1, 7, 0], 9), Err(PatchError::TrailingData));
        // truncated
        assert!(matches!(run(&old, 2, &[0, 0, 2, 7], 9), Err(PatchError::Truncated { .. })));
        // overlong varint
        assert!(matches!(run(&old, 2, &[0xff; 11], 9), Err(PatchError::BadVarint { .. })));
    }
}

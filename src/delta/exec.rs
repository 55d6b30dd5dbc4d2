//! Executable-aware prediction (the header's `filter`): relative branches in machine code are
//! predicted to reach the same target in new, wherever that target moved.
//!
//! Between two builds, code moves: a function that grew pushes everything after it. Inside a
//! moved block bsdiff's corrections are zero, but every call from one block into another block
//! that moved by a different amount changes its relative offset, and costs correction bytes.
//! The op stream therefore starts, when a filter is set, with a **displacement table**: for
//! ranges of old, how far they moved in new (the big covers of the match). While applying an
//! add, each branch instruction in the old bytes read is rewritten to point at its old
//! target's new place, `target + table displacement`, and the correction is taken against that
//! prediction. A target the table does not cover is assumed to have moved with the branch
//! itself (plain bsdiff's prediction).
//!
//! The rewrite is computed per read, from old bytes inside the op's add range only, and does
//! not depend on how reads are split: a device still reads old at random in pieces of any size
//! and writes new in order. An instruction counts only when all its bytes lie in the add range
//! and no instruction pattern starts fewer than its width before it (in the same range), so
//! overlapping patterns are decided the same way whatever the read boundaries.

use super::diff::Op;
use super::ops::{OldImage, PatchError, put_varint, zigzag};

/// The instruction sets with a transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isa {
    /// ARM Thumb-2 (Cortex-M): 32-bit BL, `imm` in halfwords, relative to the address + 4.
    Thumb2,
    /// AArch64: BL (imm26 words) and ADRP (imm21 pages).
    Aarch64,
    /// x86-64: CALL rel32 (E8) and JMP rel32 (E9).
    X86_64,
}

impl Isa {
    /// The header's `filter` code.
    pub(crate) fn code(self) -> u8 {
        match self {
            Isa::Thumb2 => 1,
            Isa::Aarch64 => 2,
            Isa::X86_64 => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Isa::Thumb2),
            2 => Some(Isa::Aarch64),
            3 => Some(Isa::X86_64),
            _ => None,
        }
    }

    /// The name `--exec` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Thumb2 => "thumb2",
            Isa::Aarch64 => "aarch64",
            Isa::X86_64 => "x86-64",
        }
    }

    /// Guesses the instruction set of an image: an ELF file's `e_machine`, or a Cortex-M
    /// vector table (an initial stack pointer in SRAM at 0x2000_0000 and an odd, Thumb,
    /// reset handler address).
    pub fn detect(image: &[u8]) -> Option<Isa> {
        let u32_at = |o: usize| {
            image.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        if image.starts_with(b"\x7fELF") && image.len() >= 20 && image[5] == 1 {
            return match u16::from_le_bytes([image[18], image[19]]) {
                40 => Some(Isa::Thumb2),
                183 => Some(Isa::Aarch64),
                62 => Some(Isa::X86_64),
                _ => None,
            };
        }
        let (sp, reset) = (u32_at(0)?, u32_at(4)?);
        (sp & 0xff00_0000 == 0x2000_0000 && sp & 3 == 0 && reset & 1 == 1).then_some(Isa::Thumb2)
    }

    /// Instruction width in bytes.
    fn width(self) -> u64 {
        match self {
            Isa::Thumb2 | Isa::Aarch64 => 4,
            Isa::X86_64 => 5,
        }
    }

    /// Instruction alignment in the image.
    fn align(self) -> u64 {
        match self {
            Isa::Thumb2 => 2,
            Isa::Aarch64 => 4,
            Isa::X86_64 => 1,
        }
    }

    /// Whether `w` (the instruction's bytes) is a branch this transform rewrites.
    fn is_branch(self, w: &[u8]) -> bool {
        match self {
            Isa::Thumb2 => {
                let (h1, h2) = (u16::from_le_bytes([w[0], w[1]]), u16::from_le_bytes([w[2], w[3]]));
                h1 & 0xf800 == 0xf000 && h2 & 0xd000 == 0xd000
            }
            Isa::Aarch64 => {
                let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                i & 0xfc00_0000 == 0x9400_0000 || i & 0x9f00_0000 == 0x9000_0000
            }
            Isa::X86_64 => matches!(w[0], 0xe8 | 0xe9) && matches!(w[4], 0x00 | 0xff),
        }
    }

    /// The instruction at old position `p` (bytes `w`) rewritten for new position `new_p`,
    /// its target mapped through `map`; `None` when the result does not encode.
    fn rewrite(self, w: &[u8], p: i64, new_p: i64, map: impl Fn(i64) -> i64) -> Option<[u8; 5]> {
        let mut out = [0u8; 5];
        out[..w.len()].copy_from_slice(w);
        match self {
            Isa::Thumb2 => {
                let (h1, h2) = (u16::from_le_bytes([w[0], w[1]]), u16::from_le_bytes([w[2], w[3]]));
                let s = u32::from(h1 >> 10 & 1);
                let (j1, j2) = (u32::from(h2 >> 13 & 1), u32::from(h2 >> 11 & 1));
                let (i1, i2) = (1 ^ j1 ^ s, 1 ^ j2 ^ s);
                let raw = s << 24
                    | i1 << 23
                    | i2 << 22
                    | u32::from(h1 & 0x3ff) << 12
                    | u32::from(h2 & 0x7ff) << 1;
                let off = i64::from((raw << 7) as i32 >> 7);
                let new_off = map(p + 4 + off) - (new_p + 4);
                if new_off & 1 != 0 || !(-(1 << 24)..1 << 24).contains(&new_off) {
                    return None;
                }
                let v = new_off as u32;
                let s = v >> 24 & 1;
                let (j1, j2) = (1 ^ (v >> 23 & 1) ^ s, 1 ^ (v >> 22 & 1) ^ s);
                let h1 = (h1 & 0xf800) | (s << 10 | (v >> 12 & 0x3ff)) as u16;
                let h2 = (h2 & 0xd000) | (j1 << 13 | j2 << 11 | (v >> 1 & 0x7ff)) as u16;
                out[..2].copy_from_slice(&h1.to_le_bytes());
                out[2..4].copy_from_slice(&h2.to_le_bytes());
            }
            Isa::Aarch64 => {
                let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                let new = if i & 0xfc00_0000 == 0x9400_0000 {
                    let off = i64::from(((i & 0x03ff_ffff) << 6) as i32 >> 4);
                    let new_off = map(p + off) - new_p;
                    if new_off & 3 != 0 || !(-(1 << 27)..1 << 27).contains(&new_off) {
                        return None;
                    }
                    0x9400_0000 | ((new_off >> 2) as u32 & 0x03ff_ffff)
                } else {
                    let imm = (i >> 3 & 0x1f_fffc) | (i >> 29 & 3);
                    let pages = i64::from((imm << 11) as i32 >> 11);
                    let target = (p & !0xfff) + (pages << 12);
                    // The page that holds the target's new place, to the nearest page.
                    let new_page = (map(target) + 0x800) & !0xfff;
                    let new_pages = (new_page - (new_p & !0xfff)) >> 12;
                    if !(-(1 << 20)..1 << 20).contains(&new_pages) {
                        return None;
                    }
                    let v = new_pages as u32;
                    (i & 0x9f00_001f) | (v & 3) << 29 | (v >> 2 & 0x7_ffff) << 5
                };
                out[..4].copy_from_slice(&new.to_le_bytes());
            }
            Isa::X86_64 => {
                let rel = i64::from(i32::from_le_bytes([w[1], w[2], w[3], w[4]]));
                let new_rel = i32::try_from(map(p + 5 + rel) - (new_p + 5)).ok()?;
                out[1..5].copy_from_slice(&new_rel.to_le_bytes());
            }
        }
        Some(out)
    }
}

/// Where a range of old went in new: old `[old_start, old_start + len)` is at `+ disp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cover {
    /// First old byte.
    pub old_start: u64,
    /// Bytes.
    pub len: u64,
    /// New position minus old position.
    pub disp: i64,
}

/// The displacement table: covers sorted by `old_start`, not overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    covers: Vec<Cover>,
}

/// The most covers a table may hold, so that a hostile delta cannot make a device allocate
/// without bound. The MCU profile writes at most [`MCU_COVERS`].
pub const MAX_COVERS: u64 = 1 << 20;

/// Covers the MCU profile keeps (12 bytes each on a device: 3 KiB).
pub const MCU_COVERS: usize = 256;

impl Table {
    /// The table for `ops`: the `max` longest add ranges (at least 16 bytes), with ranges of
    /// old used twice given to the longest, and neighbours with the same displacement merged.
    pub(crate) fn from_ops(ops: &[Op], max: usize) -> Self {
        let mut adds: Vec<Cover> = ops
            .iter()
            .filter(|o| o.add >= 16)
            .map(|o| Cover {
                old_start: o.old_pos as u64,
                len: o.add as u64,
                disp: o.new_pos as i64 - o.old_pos as i64,
            })
            .collect();
        adds.sort_by(|a, b| b.len.cmp(&a.len).then(a.old_start.cmp(&b.old_start)));
        let mut taken: std::collections::BTreeMap<u64, Cover> = Default::default();
        for c in adds {
            if taken.len() >= max {
                break;
            }
            let end = c.old_start + c.len;
            let before = taken.range(..end).next_back().map(|(_, b)| *b);
            if before.is_some_and(|b| b.old_start + b.len > c.old_start) {
                continue;
            }
            taken.insert(c.old_start, c);
        }
        let mut covers: Vec<Cover> = Vec::with_capacity(taken.len());
        for c in taken.into_values() {
            match covers.last_mut() {
                Some(l) if l.old_start + l.len == c.old_start && l.disp == c.disp => l.len += c.len,
                _ => covers.push(c),
            }
        }
        Self { covers }
    }

    /// The covers.
    pub fn covers(&self) -> &[Cover] {
        &self.covers
    }

    /// Appends the table's encoding: the count, then per cover the gap after the previous
    /// cover's end, the length and the change of displacement from the previous cover's
    /// (zigzag), each LEB128.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.covers.len() as u64);
        let (mut end, mut disp) = (0, 0i64);
        for c in &self.covers {
            put_varint(out, c.old_start - end);
            put_varint(out, c.len);
            put_varint(out, zigzag(c.disp.wrapping_sub(disp)));
            end = c.old_start + c.len;
            disp = c.disp;
        }
    }

    /// Where old position `target` is in new: by its cover, or by `default` when none holds it.
    fn map(&self, target: i64, default: i64) -> i64 {
        if target >= 0 {
            let i = self.covers.partition_point(|c| c.old_start as i64 <= target);
            if let Some(c) = i.checked_sub(1).map(|i| self.covers[i])
                && target < (c.old_start + c.len) as i64
            {
                return target + c.disp;
            }
        }
        target + default
    }
}

/// Reads a [`Table`] from the front of a decompressed op stream, in pieces of any size.
#[derive(Debug, Clone)]
pub struct TableReader {
    old_len: u64,
    left: Option<u64>,
    field: u8,
    value: u64,
    shift: u32,
    parts: [u64; 3],
    end: u64,
    consumed: u64,
    table: Table,
}

impl TableReader {
    /// A reader for a delta whose old image is `old_len` bytes.
    pub fn new(old_len: u64) -> Self {
        Self {
            old_len,
            left: None,
            field: 0,
            value: 0,
            shift: 0,
            parts: [0; 3],
            end: 0,
            consumed: 0,
            table: Table::default(),
        }
    }

    /// Takes table bytes from the front of `input` and returns how many it took; the rest of
    /// `input` is op stream once [`TableReader::done`] says so.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, PatchError> {
        let bad = |offset| PatchError::BadVarint { offset };
        let mut used = 0;
        for &b in input {
            if self.done() {
                break;
            }
            used += 1;
            self.consumed += 1;
            if self.shift == 63 && b > 1 || self.shift > 63 {
                return Err(bad(self.consumed - 1));
            }
            self.value |= u64::from(b & 0x7f) << self.shift;
            self.shift += 7;
            if b & 0x80 != 0 {
                continue;
            }
            let v = std::mem::take(&mut self.value);
            self.shift = 0;
            let Some(left) = self.left else {
                if v > MAX_COVERS {
                    return Err(PatchError::BadTable("more covers than any writer makes"));
                }
                self.left = Some(v);
                self.table.covers.reserve(v.min(MCU_COVERS as u64) as usize);
                continue;
            };
            self.parts[usize::from(self.field)] = v;
            self.field += 1;
            if self.field < 3 {
                continue;
            }
            self.field = 0;
            let [gap, len, disp] = self.parts;
            let start = self.end.checked_add(gap);
            let end = start.and_then(|s| s.checked_add(len));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(PatchError::BadTable("a cover overflows"));
            };
            if end > self.old_len || len == 0 {
                return Err(PatchError::BadTable("a cover lies outside old or is empty"));
            }
            let change = ((disp >> 1) as i64) ^ -((disp & 1) as i64);
            let disp = self.table.covers.last().map_or(0, |c| c.disp).wrapping_add(change);
            self.table.covers.push(Cover { old_start: start, len, disp });
            self.end = end;
            self.left = Some(left - 1);
        }
        Ok(used)
    }

    /// Whether the whole table has been read.
    pub fn done(&self) -> bool {
        self.left == Some(0)
    }

    /// Bytes of the stream the table took.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The table read (complete once [`TableReader::done`]).
    pub fn into_table(self) -> Table {
        self.table
    }
}

/// A filter in use while applying: the instruction set and the delta's table.
#[derive(Debug, Clone, Copy)]
pub struct Exec<'t> {
    /// Instruction set.
    pub isa: Isa,
    /// The displacement table read from the stream's front.
    pub table: &'t Table,
}

impl Exec<'_> {
    /// Rewrites the branches in `buf`, which holds old bytes `at..at + buf.len()` inside the add
    /// range `[s, e)` of an op writing new at old position + `disp`, into their predicted new
    /// form. Other bytes of old in `[s, e)` may be read through `old`; nothing outside.
    pub(crate) fn predict<O: OldImage + ?Sized>(
        &self,
        old: &mut O,
        (s, e): (u64, u64),
        disp: i64,
        at: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        let (w, a) = (self.isa.width(), self.isa.align());
        let end = at + buf.len() as u64;
        // Old bytes just before and after `buf` that the pattern checks can look at.
        let lo_start = s.max(at.saturating_sub(2 * w));
        let hi_end = e.min(end + w);
        let (mut lo, mut hi) = ([0u8; 10], [0u8; 5]);
        old.read_at(lo_start, &mut lo[..(at - lo_start) as usize])?;
        old.read_at(end, &mut hi[..(hi_end - end) as usize])?;
        let lo = &lo[..(at - lo_start) as usize];
        let hi = &hi[..(hi_end - end) as usize];
        // The `w` old bytes at `p`, from `lo`, `buf` or `hi`.
        let get = |p: u64, buf: &[u8]| -> [u8; 5] {
            let mut bytes = [0u8; 5];
            for (i, q) in (p..p + w).enumerate() {
                bytes[i] = if q < at {
                    lo[(q - lo_start) as usize]
                } else if q < end {
                    buf[(q - at) as usize]
                } else {
                    hi[(q - end) as usize]
                };
            }
            bytes
        };
        let first = at.saturating_sub(w - 1).max(s).next_multiple_of(a);
        if e < w || buf.is_empty() {
            return Ok(());
        }
        let last = (e - w).min(end - 1);
        if first > last {
            return Ok(());
        }
        let wl = w as usize;
        // The one byte that rules most positions out, and its offset in the instruction.
        let (k, quick): (u64, fn(u8) -> bool) = match self.isa {
            Isa::Thumb2 => (1, |b| b & 0xf8 == 0xf0),
            Isa::Aarch64 => (3, |b| b & 0xfc == 0x94 || b & 0x9f == 0x90),
            Isa::X86_64 => (0, |b| b == 0xe8 || b == 0xe9),
        };
        let byte = |q: u64, buf: &[u8]| -> u8 {
            if q < at {
                lo[(q - lo_start) as usize]
            } else if q < end {
                buf[(q - at) as usize]
            } else {
                hi[(q - end) as usize]
            }
        };
        let is_branch = |p: u64, buf: &[u8]| -> bool {
            quick(byte(p + k, buf)) && self.isa.is_branch(&get(p, buf)[..wl])
        };
        // From the top down, so that a rewritten instruction is never read by a later check:
        // the checks for `p` read only `[p - w + 1, p + w)`, and a branch that counts has no
        // pattern in the `w - 1` positions below it, so the scan goes on from `p - w`.
        let mut p = last - last % a;
        while p >= first {
            let counts = is_branch(p, buf)
                && !(1..w).filter(|k| k % a == 0 && p >= s + k).any(|k| is_branch(p - k, buf));
            if counts {
                let here = get(p, buf);
                let pi = p as i64;
                if let Some(new) =
                    self.isa.rewrite(&here[..wl], pi, pi + disp, |t| self.table.map(t, disp))
                {
                    for (i, q) in (p..p + w).enumerate() {
                        if (at..end).contains(&q) {
                            buf[(q - at) as usize] = new[i];
                        }
                    }
                }
                let Some(next) = p.checked_sub(w) else { break };
                p = next;
            } else {
                let Some(next) = p.checked_sub(a) else { break };
                p = next;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Thumb-2 BL at `from` to `to`, encoded through `rewrite` (a BL pointed elsewhere).
    fn thumb_bl(from: i64, to: i64) -> [u8; 4] {
        let zero = [0x00, 0xf0, 0x00, 0xf8];
        let out = Isa::Thumb2.rewrite(&zero, from, from, |_| to).unwrap();
        out[..4].try_into().unwrap()
    }

    #[test]
    fn branches_decode_and_encode_for_every_isa() {
        // Thumb-2: forward and backward, near the ±16 MiB limits.
        for (from, to) in [(0x100, 0x2000), (0x8000, 0x40), (0, (1 << 24) - 2), (1 << 24, 6)] {
            let bl = thumb_bl(from, to);
            assert!(Isa::Thumb2.is_branch(&bl));
            let back = Isa::Thumb2.rewrite(&bl, from, from, |t| {
                assert_eq!(t, to, "decoded target");
                t
            });
            assert_eq!(back.unwrap()[..4], bl);
        }
        // AArch64 BL and ADRP.
        let bl = 0x9400_0010u32.to_le_bytes(); // BL +64
        Isa::Aarch64.rewrite(&bl, 0x1000, 0x1000, |t| {
            assert_eq!(t, 0x1040);
            t
        });
        let adrp = (0x9000_0000u32 | 1 << 29).to_le_bytes(); // ADRP x0, +1 page
        let moved = Isa::Aarch64.rewrite(&adrp, 0x1000, 0x1000, |t| {
            assert_eq!(t, 0x2000);
            t + 0x3000
        });
        let v = u32::from_le_bytes(moved.unwrap()[..4].try_into().unwrap());
        assert_eq!((v >> 29 & 3) | (v >> 5 & 0x7ffff) << 2, 4);
        // x86-64 CALL rel32.
        let call = [0xe8, 0x10, 0, 0, 0];
        assert!(Isa::X86_64.is_branch(&call));
        let out = Isa::X86_64.rewrite(&call, 100, 100, |t| {
            assert_eq!(t, 121);
            t - 21
        });
        assert_eq!(out.unwrap(), [0xe8, 0xfb, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn tables_round_trip_and_refuse_garbage() {
        let ops = [
            Op { new_pos: 0, old_pos: 0, add: 100, copy: 4 },
            Op { new_pos: 104, old_pos: 100, add: 50, copy: 0 },
            Op { new_pos: 154, old_pos: 150, add: 60, copy: 0 },
            Op { new_pos: 214, old_pos: 10, add: 20, copy: 0 },
        ];
        let t = Table::from_ops(&ops, 100);
        // The overlapping re-use of old [10, 30) loses to the longer first op; 100.. and 150..
        // merge (same displacement).
        assert_eq!(
            t.covers(),
            [
                Cover { old_start: 0, len: 100, disp: 0 },
                Cover { old_start: 100, len: 110, disp: 4 }
            ]
        );
        assert_eq!(t.map(120, 9), 124);
        assert_eq!(t.map(500, 9), 509);
        let mut b = Vec::new();
        t.encode(&mut b);
        b.extend_from_slice(b"rest");
        for piece in [1, 2, 100] {
            let mut r = TableReader::new(210);
            let mut used = 0;
            for c in b.chunks(piece) {
                used += r.feed(c).unwrap();
            }
            assert!(r.done());
            assert_eq!(used as u64, r.consumed());
            assert_eq!(&b[used..], b"rest");
            assert_eq!(r.into_table(), t);
        }
        // A cover past old's end is refused.
        assert!(matches!(TableReader::new(209).feed(&b), Err(PatchError::BadTable(_))));
    }

    /// The prediction does not depend on how reads are split.
    #[test]
    fn prediction_is_the_same_for_any_read_split() {
        let mut old: Vec<u8> =
            (0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        for p in (0..3990).step_by(38) {
            old[p..p + 4].copy_from_slice(&thumb_bl(p as i64, ((p as i64 * 7) % 4000) & !1));
            old[p + 17] = 0xe8; // x86-64 CALL, a little way back
            old[p + 18..p + 22].copy_from_slice(&(-(p as i32 % 300) - 1).to_le_bytes());
            if p % 4 == 0 {
                // An AArch64 BL at p + 24, a little way forward.
                let bl = 0x9400_0000u32 | (p as u32 % 400);
                old[p + 24..p + 28].copy_from_slice(&bl.to_le_bytes());
            }
        }
        let table = Table::from_ops(
            &[
                Op { new_pos: 0, old_pos: 0, add: 2000, copy: 0 },
                Op { new_pos: 2100, old_pos: 2000, add: 2000, copy: 0 },
            ],
            10,
        );
        for isa in [Isa::Thumb2, Isa::Aarch64, Isa::X86_64] {
            let ex = Exec { isa, table: &table };
            let (s, e) = (3u64, 3990u64);
            let mut whole = old[s as usize..e as usize].to_vec();
            ex.predict(&mut &old[..], (s, e), 100, s, &mut whole).unwrap();
            assert!(whole != old[s as usize..e as usize], "{isa:?} changed nothing");
            for piece in [1usize, 3, 7, 64] {
                let mut got = Vec::new();
                let mut at = s;
                while at < e {
                    let n = (piece as u64).min(e - at) as usize;
                    let mut b = old[at as usize..at as usize + n].to_vec();
                    ex.predict(&mut &old[..], (s, e), 100, at, &mut b).unwrap();
                    got.extend_from_slice(&b);
                    at += n as u64;
                }
                assert!(got == whole, "{isa:?} in pieces of {piece}");
            }
        }
    }
}

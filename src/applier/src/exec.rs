//! Executable-aware prediction (the header's `filter`): relative branches in machine code are
//! predicted to reach the same target in new, wherever that target moved
//! (docs/delta-format.md, "Executable-aware prediction").
//!
//! Between two builds, code moves: every call from one moved block into another block that
//! moved by a different amount changes its relative offset, and costs correction bytes. With a
//! filter, the op stream starts with a **displacement table**: for ranges of old, how far they
//! moved in new. While applying an add, each branch in the old bytes read is rewritten to
//! point at its old target's new place, and the correction is taken against that prediction.
//!
//! The rewrite uses only old bytes inside the op's add range and does not depend on how reads
//! are split: a device reads old at random in pieces of any size and writes new in order. An
//! instruction counts only when all its bytes lie in the add range and no instruction pattern
//! starts fewer than its width before it (in the same range).
//!
//! The table lives in a [`CoverStore`] the caller provides: a fixed array of 12-byte entries
//! on a device ([`FixedCovers`]), a `Vec` on a host (feature `alloc`).

use crate::error::{IoError, PatchError};
pub use crate::header::Isa;
use crate::image::OldImage;
use crate::wire::{unzigzag, Varint};

impl Isa {
    /// Guesses the instruction set of an image: an ELF file's `e_machine`, a Cortex-M vector
    /// table (an initial stack pointer in SRAM at 0x2000_0000 and an odd, Thumb, reset handler
    /// address), or an ARM-state exception vector table (eight branches or `ldr pc, [pc, #n]`).
    pub fn detect(image: &[u8]) -> Option<Isa> {
        let u32_at =
            |o: usize| image.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if image.starts_with(b"\x7fELF") && image.len() >= 20 && image[5] == 1 {
            return match u16::from_le_bytes([image[18], image[19]]) {
                40 => Some(Isa::Thumb2),
                183 => Some(Isa::Aarch64),
                62 => Some(Isa::X86_64),
                _ => None,
            };
        }
        let (sp, reset) = (u32_at(0)?, u32_at(4)?);
        if sp & 0xff00_0000 == 0x2000_0000 && sp & 3 == 0 && reset & 1 == 1 {
            return Some(Isa::Thumb2);
        }
        // B (always) or LDR PC, [PC, #imm] in each of the eight vectors.
        let vector = |w: u32| w & 0xff00_0000 == 0xea00_0000 || w & 0xffff_f000 == 0xe59f_f000;
        let all = (0..8).all(|i| u32_at(4 * i).map_or(false, vector));
        all.then_some(Isa::A32)
    }

    /// Instruction width in bytes.
    fn width(self) -> u64 {
        match self {
            Isa::Thumb2 | Isa::Aarch64 | Isa::A32 => 4,
            Isa::X86_64 => 5,
        }
    }

    /// Width of the absolute pointers the filter predicts with flags bit 2 (4 or 8 bytes;
    /// they lie at multiples of it), `None` where it has none.
    pub fn pointer_width(self) -> Option<u64> {
        match self {
            Isa::Thumb2 | Isa::A32 => Some(4),
            Isa::Aarch64 => Some(8),
            Isa::X86_64 => None,
        }
    }

    /// Instruction alignment in the image.
    fn align(self) -> u64 {
        match self {
            Isa::Thumb2 => 2,
            Isa::Aarch64 | Isa::A32 => 4,
            Isa::X86_64 => 1,
        }
    }

    /// Whether `w` (the instruction's bytes) is a branch this transform rewrites.
    pub fn is_branch(self, w: &[u8]) -> bool {
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
            // BL with a condition (not 0b1111), or BLX immediate (0b1111101H).
            Isa::A32 => w[3] & 0x0f == 0x0b || w[3] & 0xfe == 0xfa,
        }
    }

    /// The instruction at old position `p` (bytes `w`) rewritten for new position `new_p`,
    /// its target mapped through `map`; `None` when the result does not encode.
    pub fn rewrite(
        self,
        w: &[u8],
        p: i64,
        new_p: i64,
        map: impl Fn(i64) -> i64,
    ) -> Option<[u8; 5]> {
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
                    let target = adrp_page(i, p);
                    // The page that holds the target's new place, to the nearest page.
                    let new_page = (map(target) + 0x800) & !0xfff;
                    adrp_to(i, new_page, new_p)?
                };
                out[..4].copy_from_slice(&new.to_le_bytes());
            }
            Isa::X86_64 => {
                let rel = i64::from(i32::from_le_bytes([w[1], w[2], w[3], w[4]]));
                let new_rel = i32::try_from(map(p + 5 + rel) - (new_p + 5)).ok()?;
                out[1..5].copy_from_slice(&new_rel.to_le_bytes());
            }
            Isa::A32 => {
                let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                let blx = i >> 25 == 0b111_1101;
                // imm24 words, and for BLX the H bit (bit 24) as the halfword.
                let half = if blx { i64::from(i >> 24 & 1) << 1 } else { 0 };
                let off = (i64::from(((i & 0x00ff_ffff) << 8) as i32) >> 6) + half;
                let new_off = map(p + 8 + off) - (new_p + 8);
                let align = if blx { 1 } else { 3 };
                if new_off & align != 0 || !(-(1 << 25)..1 << 25).contains(&new_off) {
                    return None;
                }
                let v = new_off as u32;
                let h = if blx { (v >> 1 & 1) << 24 } else { 0 };
                let top = if blx { 0xfa00_0000 } else { i & 0xff00_0000 };
                out[..4].copy_from_slice(&(top | h | (v >> 2 & 0x00ff_ffff)).to_le_bytes());
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

/// The most covers a table may hold, so that a hostile delta cannot make a host allocate
/// without bound. The MCU profile writes at most [`MCU_COVERS`].
pub const MAX_COVERS: u64 = 1 << 20;

/// Covers the MCU profile keeps (12 bytes each in [`FixedCovers`]: 3 KiB).
pub const MCU_COVERS: usize = 256;

/// A displacement table: covers sorted by `old_start`, not overlapping. (`Sync` so that a host
/// can predict on several threads.)
pub trait Covers: Sync {
    /// How many covers.
    fn count(&self) -> usize;
    /// Cover `i` (`i < count()`).
    fn cover(&self, i: usize) -> Cover;

    /// Where old position `target` is in new: by its cover, or by `default` when none holds it.
    fn map(&self, target: i64, default: i64) -> i64 {
        if target >= 0 {
            // The last cover starting at or before `target`.
            let (mut lo, mut hi) = (0, self.count());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.cover(mid).old_start as i64 <= target {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if lo > 0 {
                let c = self.cover(lo - 1);
                if target < (c.old_start + c.len) as i64 {
                    return target + c.disp;
                }
            }
        }
        target + default
    }
}

impl Covers for [Cover] {
    fn count(&self) -> usize {
        self.len()
    }
    fn cover(&self, i: usize) -> Cover {
        self[i]
    }
}

/// Somewhere to put a table read from a stream.
pub trait CoverStore: Covers {
    /// Forgets every cover and makes room for `n`; refuses a table it cannot hold.
    fn start(&mut self, n: u64) -> Result<(), PatchError>;
    /// Appends a cover (at most the `n` of [`CoverStore::start`]).
    fn push(&mut self, c: Cover) -> Result<(), PatchError>;
}

impl<S: Covers + ?Sized> Covers for &mut S {
    fn count(&self) -> usize {
        (**self).count()
    }
    fn cover(&self, i: usize) -> Cover {
        (**self).cover(i)
    }
}

impl<S: CoverStore + ?Sized> CoverStore for &mut S {
    fn start(&mut self, n: u64) -> Result<(), PatchError> {
        (**self).start(n)
    }
    fn push(&mut self, c: Cover) -> Result<(), PatchError> {
        (**self).push(c)
    }
}

/// A table in a fixed array of 12-byte entries (old start, length, displacement as 32-bit
/// numbers): what a device gives the applier.
#[derive(Debug)]
pub struct FixedCovers<'a> {
    slots: &'a mut [[u32; 3]],
    len: usize,
}

impl<'a> FixedCovers<'a> {
    /// A store holding at most `slots.len()` covers.
    pub fn new(slots: &'a mut [[u32; 3]]) -> Self {
        Self { slots, len: 0 }
    }
}

impl Covers for FixedCovers<'_> {
    fn count(&self) -> usize {
        self.len
    }
    fn cover(&self, i: usize) -> Cover {
        let [s, l, d] = self.slots[i];
        Cover { old_start: u64::from(s), len: u64::from(l), disp: i64::from(d as i32) }
    }
}

impl CoverStore for FixedCovers<'_> {
    fn start(&mut self, n: u64) -> Result<(), PatchError> {
        self.len = 0;
        if n > self.slots.len() as u64 {
            return Err(PatchError::BadTable("more covers than the device's table holds"));
        }
        Ok(())
    }
    fn push(&mut self, c: Cover) -> Result<(), PatchError> {
        let too_big = PatchError::BadTable("a cover does not fit a 32-bit device");
        let s = u32::try_from(c.old_start).map_err(|_| too_big)?;
        let l = u32::try_from(c.len).map_err(|_| too_big)?;
        let d = i32::try_from(c.disp).map_err(|_| too_big)?;
        let slot = self.slots.get_mut(self.len).ok_or(PatchError::BadTable("too many covers"))?;
        *slot = [s, l, d as u32];
        self.len += 1;
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl Covers for alloc::vec::Vec<Cover> {
    fn count(&self) -> usize {
        self.len()
    }
    fn cover(&self, i: usize) -> Cover {
        self[i]
    }
}

#[cfg(feature = "alloc")]
impl CoverStore for alloc::vec::Vec<Cover> {
    fn start(&mut self, n: u64) -> Result<(), PatchError> {
        self.clear();
        if n > MAX_COVERS {
            return Err(PatchError::BadTable("more covers than any writer makes"));
        }
        // Room for what a small table needs; a large one grows as it proves real.
        self.reserve(n.min(MCU_COVERS as u64) as usize);
        Ok(())
    }
    fn push(&mut self, c: Cover) -> Result<(), PatchError> {
        alloc::vec::Vec::push(self, c);
        Ok(())
    }
}

/// Reads a table from the front of a decompressed op stream, in pieces of any size, into a
/// [`CoverStore`].
#[derive(Debug, Clone)]
pub struct TableReader {
    old_len: u64,
    /// With absolute pointers: how many of their two numbers (base, span) are still to read,
    /// and those read.
    has_abs: bool,
    abs_left: u8,
    abs: [u64; 2],
    /// The pointers are 64-bit.
    wide: bool,
    left: Option<u64>,
    field: u8,
    number: Varint,
    parts: [u64; 3],
    end: u64,
    disp: i64,
    consumed: u64,
}

impl TableReader {
    /// A reader for a delta whose old image is `old_len` bytes.
    pub fn new(old_len: u64) -> Self {
        Self {
            old_len,
            has_abs: false,
            abs_left: 0,
            abs: [0; 2],
            wide: false,
            left: None,
            field: 0,
            number: Varint::default(),
            parts: [0; 3],
            end: 0,
            disp: 0,
            consumed: 0,
        }
    }

    /// A reader for a delta with absolute-pointer prediction (header flags bit 2) for `isa`:
    /// the image base and the span of old that pointers reach come first, then the table.
    pub fn with_base(old_len: u64, isa: Isa) -> Self {
        let wide = isa.pointer_width() == Some(8);
        Self { has_abs: true, abs_left: 2, wide, ..Self::new(old_len) }
    }

    /// Where old lies for absolute pointers, once read (absolute-pointer prediction only).
    pub fn abs(&self) -> Option<Abs> {
        let [base, len] = self.abs;
        (self.has_abs && self.abs_left == 0).then_some(Abs { base, len })
    }

    /// Takes table bytes from the front of `input` into `store` and returns how many it took;
    /// the rest of `input` is op stream once [`TableReader::done`] says so.
    pub fn feed<S: CoverStore + ?Sized>(
        &mut self,
        input: &[u8],
        store: &mut S,
    ) -> Result<usize, PatchError> {
        let mut used = 0;
        for &b in input {
            if self.done() {
                break;
            }
            used += 1;
            self.consumed += 1;
            let v = match self.number.push(b) {
                Err(_) => return Err(PatchError::BadVarint { offset: self.consumed - 1 }),
                Ok(None) => continue,
                Ok(Some(v)) => v,
            };
            if self.abs_left > 0 {
                self.abs[usize::from(2 - self.abs_left)] = v;
                self.abs_left -= 1;
                let [base, span] = self.abs;
                // The span lies in old, and at `base` inside the pointers' address space.
                let end = base.checked_add(span);
                if self.abs_left == 0
                    && (span > self.old_len || end.map_or(true, |e| !self.wide && e > 1 << 32))
                {
                    return Err(PatchError::BadTable("the pointer span leaves old or 32 bits"));
                }
                continue;
            }
            match self.left {
                None => {
                    if v > MAX_COVERS {
                        return Err(PatchError::BadTable("more covers than any writer makes"));
                    }
                    store.start(v)?;
                    self.left = Some(v);
                }
                Some(left) => {
                    self.parts[usize::from(self.field)] = v;
                    self.field += 1;
                    if self.field == 3 {
                        self.field = 0;
                        self.cover(store)?;
                        self.left = Some(left - 1);
                    }
                }
            }
        }
        Ok(used)
    }

    /// Checks and stores the cover whose three numbers are complete.
    fn cover<S: CoverStore + ?Sized>(&mut self, store: &mut S) -> Result<(), PatchError> {
        let [gap, len, disp] = self.parts;
        let start = self.end.checked_add(gap);
        let (start, end) = match (start, start.and_then(|s| s.checked_add(len))) {
            (Some(s), Some(e)) => (s, e),
            _ => return Err(PatchError::BadTable("a cover overflows")),
        };
        if end > self.old_len || len == 0 {
            return Err(PatchError::BadTable("a cover lies outside old or is empty"));
        }
        self.disp = self.disp.wrapping_add(unzigzag(disp));
        store.push(Cover { old_start: start, len, disp: self.disp })?;
        self.end = end;
        Ok(())
    }

    /// Whether the whole table has been read.
    pub fn done(&self) -> bool {
        self.left == Some(0)
    }

    /// Bytes of the stream the table took.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }
}

/// A filter in use while applying: the instruction set and the delta's table.
#[derive(Clone, Copy)]
pub struct Exec<'t> {
    /// Instruction set.
    pub isa: Isa,
    /// The displacement table.
    pub table: &'t dyn Covers,
    /// Absolute-pointer prediction (Thumb-2 and A32 only): the old image's 32-bit words that
    /// point into it are predicted too.
    pub abs: Option<Abs>,
    /// Extended references (header flags bit 3): with AArch64, an ADRP and the ADD, load or
    /// store right after it that completes its address are predicted as one reference; with
    /// x86-64, Jcc rel32 and RIP-relative operands too, beside CALL and JMP.
    pub refs: bool,
}

/// Where the old image lies in the address space, for absolute-pointer prediction: an aligned
/// 32-bit (64-bit on AArch64) word `v` of old with `base <= v < base + len` points at old
/// `v - base` (`len`, the span, is at most old's length: an ELF's first bytes lie at their
/// addresses, its writable segment elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abs {
    /// Address of old's first byte.
    pub base: u64,
    /// Bytes of old, from its start, that pointers reach.
    pub len: u64,
}

impl Abs {
    /// The word `w` (4 or 8 bytes, little endian) pointed at its old target's new place, when
    /// it points into old and the new place fits the word.
    pub fn rewrite(&self, w: &[u8], table: &dyn Covers) -> Option<[u8; 8]> {
        let v = word(w);
        let t = v.checked_sub(self.base).filter(|t| *t < self.len)?;
        // A target no cover holds stays where it was (the plain prediction: the same word).
        let new = u64::try_from(table.map(t as i64, 0)).ok()?.checked_add(self.base)?;
        if w.len() < 8 && new >> 32 != 0 {
            return None;
        }
        Some(new.to_le_bytes())
    }
}

/// One-byte x86 opcodes whose ModRM may name a RIP-relative operand and that end with it (no
/// immediate follows): ALU ops with a register, TEST, XCHG, MOV, MOVSXD, LEA, and the
/// `FF` group (INC, DEC, CALL, JMP, PUSH).
const X86_RIP_OPS: [u8; 27] = [
    0x01, 0x03, 0x09, 0x0b, 0x11, 0x13, 0x19, 0x1b, 0x21, 0x23, 0x29, 0x2b, 0x31, 0x33, 0x39, 0x3b,
    0x63, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8d, 0xff,
];

/// The same after `0F`: SSE moves and arithmetic, IMUL, MOVZX and MOVSX.
const X86_RIP_OPS_0F: [u8; 38] = [
    0x10, 0x11, 0x12, 0x13, 0x16, 0x17, 0x28, 0x29, 0x2a, 0x2c, 0x2d, 0x2e, 0x2f, 0x51, 0x54, 0x55,
    0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f, 0x6e, 0x6f, 0x7e, 0x7f, 0xaf, 0xb6,
    0xb7, 0xbe, 0xbf, 0xd6, 0xe7, 0xef,
];

/// With x86-64 references (header flags bit 3): whether a 5-byte unit at old position `p`
/// (inside the add range from `s`) ends an instruction with a rel32 whose top byte is `00`
/// or `FF`: CALL or JMP (`E8`, `E9`), a Jcc (`0F 8x`: the unit starts at `8x`), or a
/// RIP-relative operand (ModRM `mod = 00, rm = 101` after an opcode of [`X86_RIP_OPS`] or
/// `0F` and one of [`X86_RIP_OPS_0F`]: the unit starts at the ModRM). Its target is `p + 5 +
/// rel32` in every case. It reads old bytes `[p - 2, p + 5)`.
fn x86_rel32(win: &Window<'_>, s: u64, p: u64, buf: &[u8]) -> bool {
    let at = |q: u64| win.byte(q, buf);
    if !matches!(at(p + 4), 0x00 | 0xff) {
        return false;
    }
    let b = at(p);
    let before = |n: u64| p.checked_sub(n).filter(|q| *q >= s).map(at);
    match b {
        0xe8 | 0xe9 => true,
        0x80..=0x8f => before(1) == Some(0x0f),
        _ if b & 0xc7 == 0x05 => match before(1) {
            Some(op) if X86_RIP_OPS.contains(&op) => true,
            Some(op) => before(2) == Some(0x0f) && X86_RIP_OPS_0F.contains(&op),
            None => false,
        },
        _ => false,
    }
}

/// The page an AArch64 ADRP (`i`) at position `p` reaches.
fn adrp_page(i: u32, p: i64) -> i64 {
    let imm = (i >> 3 & 0x1f_fffc) | (i >> 29 & 3);
    (p & !0xfff) + (i64::from((imm << 11) as i32 >> 11) << 12)
}

/// The ADRP `i` set to reach `page` (a multiple of 4096) from position `p`; `None` out of
/// its range.
fn adrp_to(i: u32, page: i64, p: i64) -> Option<u32> {
    let pages = (page - (p & !0xfff)) >> 12;
    if !(-(1 << 20)..1 << 20).contains(&pages) {
        return None;
    }
    let v = pages as u32;
    Some((i & 0x9f00_001f) | (v & 3) << 29 | (v >> 2 & 0x7_ffff) << 5)
}

/// How an AArch64 ADRP (`adrp`) and the next instruction form an address pair: the next is
/// ADD (64-bit, immediate, unshifted), or a load or store of a general register with an
/// unsigned offset, whose base register is the ADRP's destination. The offset's scale in
/// bytes (1 for ADD, the access size for a load or store).
fn pair_scale(adrp: u32, next: u32) -> Option<u32> {
    if adrp & 0x9f00_0000 != 0x9000_0000 || adrp & 0x1f != next >> 5 & 0x1f {
        return None;
    }
    if next & 0xffc0_0000 == 0x9100_0000 {
        Some(1)
    } else if next & 0x3b00_0000 == 0x3900_0000 {
        Some(1 << (next >> 30))
    } else {
        None
    }
}

/// An AArch64 address pair at old position `p` (ADRP, then ADD/load/store: [`pair_scale`])
/// rewritten for new position `new_p`: its target, the ADRP's page plus the scaled offset, is
/// mapped through `map`, and both instructions are set to reach the new place exactly. `None`
/// when the result does not encode (the page out of range, the place not a multiple of the
/// access size).
pub fn adrp_pair(
    adrp: u32,
    next: u32,
    p: i64,
    new_p: i64,
    map: impl Fn(i64) -> i64,
) -> Option<(u32, u32)> {
    let scale = i64::from(pair_scale(adrp, next)?);
    let target = adrp_page(adrp, p) + i64::from(next >> 10 & 0xfff) * scale;
    let new = map(target);
    if new % scale != 0 {
        return None;
    }
    let adrp = adrp_to(adrp, new & !0xfff, new_p)?;
    let next = (next & !(0xfff << 10)) | (((new & 0xfff) / scale) as u32) << 10;
    Some((adrp, next))
}

/// A little-endian word of up to 8 bytes.
fn word(w: &[u8]) -> u64 {
    w.iter().rev().fold(0, |v, b| v << 8 | u64::from(*b))
}

impl core::fmt::Debug for Exec<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Exec")
            .field("isa", &self.isa)
            .field("covers", &self.table.count())
            .field("abs", &self.abs)
            .field("refs", &self.refs)
            .finish()
    }
}

/// Old bytes around a buffer being predicted: `lo` just before it, the buffer, `hi` after.
struct Window<'w> {
    lo: &'w [u8],
    lo_start: u64,
    at: u64,
    end: u64,
    hi: &'w [u8],
}

impl Window<'_> {
    fn byte(&self, q: u64, buf: &[u8]) -> u8 {
        if q < self.at {
            self.lo[(q - self.lo_start) as usize]
        } else if q < self.end {
            buf[(q - self.at) as usize]
        } else {
            self.hi[(q - self.end) as usize]
        }
    }

    /// Writes the bytes of `new` at `p..` that fall in `buf`.
    fn put(&self, p: u64, new: &[u8], buf: &mut [u8]) {
        for (i, q) in (p..p + new.len() as u64).enumerate() {
            if (self.at..self.end).contains(&q) {
                buf[(q - self.at) as usize] = new[i];
            }
        }
    }

    fn get(&self, p: u64, w: u64, buf: &[u8]) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        for (i, q) in (p..p + w).enumerate() {
            bytes[i] = self.byte(q, buf);
        }
        bytes
    }
}

impl Exec<'_> {
    /// Rewrites the branches in `buf`, which holds old bytes `at..at + buf.len()` inside the add
    /// range `[s, e)` of an op writing new at old position + `disp`, into their predicted new
    /// form. Other bytes of old in `[s, e)` may be read through `old`; nothing outside.
    pub fn predict<O: OldImage + ?Sized>(
        &self,
        old: &mut O,
        (s, e): (u64, u64),
        disp: i64,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), IoError> {
        let (w, a) = (self.isa.width(), self.isa.align());
        // The widest thing that may overlap `buf` from below: an instruction or a pointer.
        let pw = self.abs.and(self.isa.pointer_width()).unwrap_or(w);
        let end = at + buf.len() as u64;
        // Old bytes just before and after `buf` that the checks can look at (after: whether a
        // branch straddling the end of `buf` counts decides a pointer below it).
        let lo_start = s.max(at.saturating_sub(16));
        let hi_end = e.min(end + 16);
        let (mut lo, mut hi) = ([0u8; 16], [0u8; 16]);
        old.read_at(lo_start, &mut lo[..(at - lo_start) as usize])?;
        old.read_at(end, &mut hi[..(hi_end - end) as usize])?;
        let win = Window {
            lo: &lo[..(at - lo_start) as usize],
            lo_start,
            at,
            end,
            hi: &hi[..(hi_end - end) as usize],
        };
        let first = at.saturating_sub(w.max(pw) - 1).max(s);
        let first = (first + a - 1) / a * a;
        if e < w || buf.is_empty() {
            return Ok(());
        }
        let last = (e - w).min(end - 1);
        if first > last {
            return Ok(());
        }
        self.rewrite_range(&win, (s, e), (first, last), disp, buf);
        Ok(())
    }

    /// The scan of [`Exec::predict`] over aligned positions `first..=last`.
    fn rewrite_range(
        &self,
        win: &Window<'_>,
        (s, e): (u64, u64),
        (first, last): (u64, u64),
        disp: i64,
        buf: &mut [u8],
    ) {
        let (w, a) = (self.isa.width(), self.isa.align());
        let wl = w as usize;
        // The one byte that rules most positions out, and its offset in the instruction.
        let x86_refs = self.refs && self.isa == Isa::X86_64;
        let (k, quick): (u64, fn(u8) -> bool) = match self.isa {
            Isa::Thumb2 => (1, |b| b & 0xf8 == 0xf0),
            Isa::Aarch64 => (3, |b| b & 0xfc == 0x94 || b & 0x9f == 0x90),
            Isa::X86_64 if x86_refs => {
                (0, |b| b == 0xe8 || b == 0xe9 || b & 0xf0 == 0x80 || b & 0xc7 == 0x05)
            }
            Isa::X86_64 => (0, |b| b == 0xe8 || b == 0xe9),
            Isa::A32 => (3, |b| b & 0x0f == 0x0b || b & 0xfe == 0xfa),
        };
        let is_branch = |p: u64, buf: &[u8]| -> bool {
            quick(win.byte(p + k, buf))
                && if x86_refs {
                    x86_rel32(win, s, p, buf)
                } else {
                    self.isa.is_branch(&win.get(p, w, buf)[..wl])
                }
        };
        // Whether the branch pattern at `p` counts: no pattern in the `w - 1` positions below.
        let counts = |p: u64, buf: &[u8]| -> bool {
            is_branch(p, buf)
                && !(1..w).filter(|k| k % a == 0 && p >= s + k).any(|k| is_branch(p - k, buf))
        };
        // From the top down, so that a rewritten instruction is never read by a later check:
        // the checks for `p` read only `[p - w + 1, p + w)` (a pointer's, `[p - w + 1, p +
        // its width)`), and a branch that counts has no pattern in the `w - 1` positions below
        // it (nor a pointer, checked), so the scan goes on from `p - w`.
        let mut p = last - last % a;
        // The lowest position where a branch counted so far.
        let mut low = u64::MAX;
        while p >= first {
            let step = if let Some(at) = self.pair_at(win, (s, e), p, buf) {
                // An address pair, as one reference: from its second instruction (the next
                // position is below the ADRP) or, when the scan started at the ADRP, from it.
                low = at;
                let here = win.get(at, 8, buf);
                let (adrp, next) = (word(&here[..4]) as u32, word(&here[4..8]) as u32);
                let ai = at as i64;
                let map = |t| self.table.map(t, disp);
                if let Some((adrp, next)) = adrp_pair(adrp, next, ai, ai + disp, map) {
                    let mut new = [0u8; 8];
                    new[..4].copy_from_slice(&adrp.to_le_bytes());
                    new[4..].copy_from_slice(&next.to_le_bytes());
                    win.put(at, &new, buf);
                }
                p - at + w
            } else if counts(p, buf) {
                low = p;
                let here = win.get(p, w, buf);
                let pi = p as i64;
                if let Some(new) =
                    self.isa.rewrite(&here[..wl], pi, pi + disp, |t| self.table.map(t, disp))
                {
                    win.put(p, &new[..wl], buf);
                }
                w
            } else if let Some(pw) = self.is_pointer(win, (s, e), (p, low, last), buf, &counts) {
                let here = win.get(p, pw, buf);
                let pl = pw as usize;
                if let Some(new) = self.abs.and_then(|abs| abs.rewrite(&here[..pl], self.table)) {
                    win.put(p, &new[..pl], buf);
                }
                w
            } else {
                a
            };
            match p.checked_sub(step) {
                Some(next) => p = next,
                None => break,
            }
        }
    }

    /// Where the AArch64 address pair that `p` belongs to starts, with extended references: `p` is
    /// the ADD, load or store completing the ADRP at `p - 4`, or the ADRP whose completion is
    /// at `p + 4` (the scan meets the ADRP first only when it started there); both inside the
    /// add range. The checks read old bytes `[p - 4, p + 8)` that no rewrite has touched: a
    /// pair is rewritten when the scan reaches its top, then passed over.
    fn pair_at(&self, win: &Window<'_>, (s, e): (u64, u64), p: u64, buf: &[u8]) -> Option<u64> {
        if !self.refs || self.isa != Isa::Aarch64 {
            return None;
        }
        let is_pair = |at: u64| {
            at >= s && at + 8 <= e && {
                let here = win.get(at, 8, buf);
                pair_scale(word(&here[..4]) as u32, word(&here[4..8]) as u32).is_some()
            }
        };
        // The top byte rules most positions out: an ADD, load or store, or an ADRP.
        let top = win.byte(p + 3, buf);
        if top & 0x3b == 0x39 || top == 0x91 {
            p.checked_sub(4).filter(|&at| is_pair(at))
        } else if top & 0x9f == 0x90 {
            Some(p).filter(|&at| is_pair(at))
        } else {
            None
        }
    }

    /// Whether the aligned word at `p` (not a branch that counts) is an absolute pointer to
    /// predict, and its width: it lies in the add range, points into old, and no branch that
    /// counts overlaps it. Branches above `p` that count are at `low` or higher, except those
    /// beyond `last` (the scan's first position), checked here; below, with Thumb-2, `p - 2`.
    fn is_pointer(
        &self,
        win: &Window<'_>,
        (s, e): (u64, u64),
        (p, low, last): (u64, u64, u64),
        buf: &[u8],
        counts: &dyn Fn(u64, &[u8]) -> bool,
    ) -> Option<u64> {
        let abs = self.abs?;
        let pw = self.isa.pointer_width()?;
        if p % pw != 0 || p < s || p + pw > e || low < p + pw {
            return None;
        }
        // The top byte first: most words are ruled out by it.
        let shift = 8 * (pw - 1);
        let top = u64::from(win.byte(p + pw - 1, buf));
        let last_address = abs.base.saturating_add(abs.len).checked_sub(1)?;
        if abs.len == 0 || top < abs.base >> shift || top > last_address >> shift {
            return None;
        }
        let v = word(&win.get(p, pw, buf)[..pw as usize]);
        if v < abs.base || v - abs.base >= abs.len {
            return None;
        }
        let (w, a) = (self.isa.width(), self.isa.align());
        let below = (1..w).filter(|k| k % a == 0 && p >= s + k).any(|k| counts(p - k, buf));
        let above = (1..pw)
            .filter(|k| k % a == 0)
            .map(|k| p + k)
            .filter(|&q| q > last && q + w <= e)
            .any(|q| counts(q, buf));
        if below || above {
            return None;
        }
        Some(pw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Thumb-2 BL at `from` to `to`, encoded through `rewrite` (a BL pointed elsewhere).
    fn thumb_bl(from: i64, to: i64) -> [u8; 4] {
        let zero = [0x00, 0xf0, 0x00, 0xf8];
        let out = Isa::Thumb2.rewrite(&zero, from, from, |_| to).unwrap();
        [out[0], out[1], out[2], out[3]]
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
        let m = moved.unwrap();
        let v = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        assert_eq!((v >> 29 & 3) | (v >> 5 & 0x7ffff) << 2, 4);
        // x86-64 CALL rel32.
        let call = [0xe8, 0x10, 0, 0, 0];
        assert!(Isa::X86_64.is_branch(&call));
        let out = Isa::X86_64.rewrite(&call, 100, 100, |t| {
            assert_eq!(t, 121);
            t - 21
        });
        assert_eq!(out.unwrap(), [0xe8, 0xfb, 0xff, 0xff, 0xff]);
        // A32 BL (conditional too) and BLX, forward and back.
        for (word, from, to) in [
            (0xeb00_0010u32, 0x100i64, 0x100 + 8 + 64),
            (0x0bff_fffeu32, 0x100, 0x100),
            (0xfb00_0001u32, 0x200, 0x200 + 8 + 4 + 2),
            (0xfaff_fff0u32, 0x400, 0x400 + 8 - 64),
        ] {
            let w = word.to_le_bytes();
            assert!(Isa::A32.is_branch(&w), "{word:#x}");
            let back = Isa::A32.rewrite(&w, from, from, |t| {
                assert_eq!(t, to, "{word:#x} decoded");
                t
            });
            assert_eq!(back.unwrap()[..4], w, "{word:#x} re-encoded");
            // Moved by 6 bytes: a BL cannot reach it (not word aligned); a BLX can.
            let moved = Isa::A32.rewrite(&w, from, from, |t| t + 6);
            assert_eq!(moved.is_some(), word >> 25 == 0x7d, "{word:#x}");
        }
        assert!(!Isa::A32.is_branch(&0xea00_0010u32.to_le_bytes()), "B is not a call");
    }

    #[test]
    fn a_fixed_store_holds_what_fits_and_refuses_the_rest() {
        let mut slots = [[0u32; 3]; 2];
        let mut store = FixedCovers::new(&mut slots);
        assert!(store.start(3).is_err());
        store.start(2).unwrap();
        store.push(Cover { old_start: 10, len: 5, disp: -4 }).unwrap();
        assert_eq!(store.cover(0), Cover { old_start: 10, len: 5, disp: -4 });
        assert!(store.push(Cover { old_start: 1 << 33, len: 1, disp: 0 }).is_err());
        assert_eq!(store.map(12, 100), 8);
        assert_eq!(store.map(15, 100), 115);
    }
}

//! Executable-aware prediction, the creating side: which ranges of old moved where (the
//! displacement table written at the front of the op stream). Applying it, the prediction
//! itself, is the device's code (`otaforge_applier::exec`), used here as it is;
//! docs/delta-format.md, "Executable-aware prediction", is the specification.

use super::diff::Op;
use super::wire::{put_varint, zigzag};
#[cfg(test)]
use otaforge_applier::PatchError;
pub use otaforge_applier::exec::{
    Abs, Cover, Covers, Exec, Isa, MAX_COVERS, MCU_COVERS, TableReader,
};

/// `Option<Isa>` as its `--exec` name (for `DeltaInfo`'s JSON).
pub(crate) fn serialize_isa<S: serde::Serializer>(
    isa: &Option<Isa>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match isa {
        Some(i) => s.serialize_some(i.name()),
        None => s.serialize_none(),
    }
}

/// The displacement table a writer makes: covers sorted by `old_start`, not overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    covers: Vec<Cover>,
}

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

    /// The prediction with this table for `isa`.
    pub fn exec(&self, isa: Isa) -> Exec<'_> {
        Exec { isa, table: &self.covers, abs: None, refs: false }
    }

    /// The prediction `create` writes with this table for `isa`: absolute pointers into old at
    /// `abs` too, and with AArch64 and x86-64 the extended references (header flags bit 3).
    pub fn exec_abs(&self, isa: Isa, abs: Option<Abs>) -> Exec<'_> {
        Exec { isa, table: &self.covers, abs, refs: matches!(isa, Isa::Aarch64 | Isa::X86_64) }
    }

    /// Appends the table's encoding: the count, then per cover the gap after the previous
    /// cover's end, the length and the change of displacement from the previous cover's
    /// (zigzag), each LEB128.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        encode(&self.covers, out);
    }
}

/// Appends the encoding of `covers` (see [`Table::encode`]).
pub(crate) fn encode(covers: &dyn Covers, out: &mut Vec<u8>) {
    put_varint(out, covers.count() as u64);
    let (mut end, mut disp) = (0, 0i64);
    for c in (0..covers.count()).map(|i| covers.cover(i)) {
        put_varint(out, c.old_start - end);
        put_varint(out, c.len);
        put_varint(out, zigzag(c.disp.wrapping_sub(disp)));
        end = c.old_start + c.len;
        disp = c.disp;
    }
}

/// Where `old` lies in the address space, for absolute-pointer prediction (Thumb-2 and A32):
/// the base address at which the most 32-bit words of old point at the targets of its own
/// calls (functions, with the Thumb bit on Thumb-2). `None` when no base stands out.
///
/// Words that could point at code (odd for Thumb-2, multiples of 4 for A32) are grouped by
/// 64 KiB region of the address space; in each of the four busiest regions (and old's length
/// around it), every pair of such a word `v` and a call target `t` (an offset in old) votes for
/// base `v - t` when that is a multiple of 256 (a vector table's alignment). Pointers to
/// functions all vote for the true base, other pairs spread over many: the base kept is the
/// one furthest ahead of its runner-up (at least 16 votes and 1.3 times as many).
pub fn guess_base(old: &[u8], isa: Isa) -> Option<u64> {
    let (align, thumb) = match isa {
        Isa::Thumb2 => (2usize, 1u32),
        Isa::A32 => (4, 0),
        _ => return None,
    };
    if old.len() < 64 || old.len() as u64 >= 1 << 32 {
        return None;
    }
    let mut targets = Vec::new();
    let mut p = 0;
    while p + 4 <= old.len() {
        let w = &old[p..p + 4];
        if isa.is_branch(w) {
            let t = std::cell::Cell::new(-1);
            let _ = isa.rewrite(w, p as i64, p as i64, |x| {
                t.set(x);
                x
            });
            let t = t.get();
            if (0..old.len() as i64).contains(&t) {
                targets.push(t as u64);
            }
            p += 4;
        } else {
            p += align;
        }
    }
    targets.sort_unstable();
    targets.dedup();
    let (mask, thumb) = if thumb == 1 { (1, 1) } else { (3, 0) };
    let words: Vec<u64> = old
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .filter(|v| v & mask == thumb && *v >= 0x100)
        .map(|v| u64::from(v - thumb))
        .collect();
    if targets.len() < 16 || words.len() < 16 {
        return None;
    }
    // Pointers into old share their high bits: the busiest 64 KiB regions of the address
    // space (among instruction words that look alike) are where old may lie.
    let mut regions: std::collections::HashMap<u64, u32> = Default::default();
    for v in &words {
        *regions.entry(v >> 16).or_default() += 1;
    }
    let mut busiest: Vec<(u32, u64)> = regions.into_iter().map(|(r, n)| (n, r)).collect();
    busiest.sort_unstable_by(|a, b| b.cmp(a));
    // A Cortex-M vector table's reset handler lies in old.
    let reset = (isa == Isa::Thumb2 && Isa::detect(old) == Some(Isa::Thumb2))
        .then(|| u64::from(u32::from_le_bytes([old[4], old[5], old[6], old[7]]) & !1));
    let len = old.len() as u64;
    let mut best: Option<(f64, u64)> = None;
    for &(_, region) in busiest.iter().take(4) {
        let (lo, hi) = ((region << 16).saturating_sub(len), (region << 16) + 0x1_0000 + len);
        let near: Vec<u64> = words.iter().copied().filter(|v| (lo..hi).contains(v)).collect();
        // At most about 4 million refs: every k-th target.
        let stride = (near.len() * targets.len() / (4 << 20)).max(1);
        let mut votes: Vec<u64> = Vec::new();
        for &v in &near {
            for &t in targets.iter().step_by(stride) {
                if let Some(b) = v.checked_sub(t).filter(|b| b & 0xff == 0)
                    && reset.is_none_or(|r| (b..b + len).contains(&r))
                {
                    votes.push(b);
                }
            }
        }
        votes.sort_unstable();
        let mut counts: Vec<(usize, u64)> =
            votes.chunk_by(|a, b| a == b).map(|run| (run.len(), run[0])).collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let (Some(&(first, base)), second) = (counts.first(), counts.get(1).map_or(1, |c| c.0))
        else {
            continue;
        };
        let ratio = first as f64 / second.max(1) as f64;
        if first >= 16 && ratio >= 1.3 && best.is_none_or(|b| ratio > b.0) {
            best = Some((ratio, base));
        }
    }
    best.map(|b| b.1)
}

/// How much of old, from its start, pointers at `base` reach: in a 64-bit little-endian ELF
/// file, up to the first loadable segment that does not lie at `base` plus its file offset
/// (a PIE's writable segment); all of old otherwise.
pub(crate) fn pointer_span(old: &[u8], base: u64) -> u64 {
    let len = old.len() as u64;
    let at = |o: usize, n: usize| -> u64 {
        old.get(o..o + n).map_or(0, |b| b.iter().rev().fold(0, |v, x| v << 8 | u64::from(*x)))
    };
    if !old.starts_with(b"\x7fELF") || old.len() < 64 || old[4] != 2 || old[5] != 1 {
        return len;
    }
    let (phoff, entsize, count) = (at(32, 8) as usize, at(54, 2) as usize, at(56, 2) as usize);
    let mut span = len;
    for i in 0..count.min(256) {
        let o = phoff.saturating_add(i * entsize);
        // PT_LOAD: p_offset at 8, p_vaddr at 16.
        if old.len() >= o.saturating_add(40) && at(o, 4) == 1 {
            let (off, vaddr) = (at(o + 8, 8), at(o + 16, 8));
            if vaddr != base.wrapping_add(off) {
                span = span.min(off);
            }
        }
    }
    span
}

/// Where `old` lies in the address space, from what the ops change: an aligned pointer-wide
/// word (`isa`'s) of an add that differs in new by `d` is, when it points into old, a pointer
/// to a place that moved by `d`; each cover of `table` that moved by `d` gives the interval of
/// bases for which the word points into it. The base in the most intervals (at least 8) is
/// kept, on a multiple of 256 where it can be. `None` when no base stands out.
pub(crate) fn base_from_ops(
    old: &[u8],
    new: &[u8],
    ops: &[Op],
    table: &Table,
    isa: Isa,
) -> Option<u64> {
    let pw = isa.pointer_width()? as usize;
    let mut by_disp: std::collections::HashMap<i64, Vec<Cover>> = Default::default();
    for c in table.covers() {
        by_disp.entry(c.disp).or_default().push(*c);
    }
    let word = |b: &[u8], at: usize| {
        i128::from(b[at..at + pw].iter().rev().fold(0u64, |v, x| v << 8 | u64::from(*x)))
    };
    // Words that changed, each with its candidate covers; at most about a million intervals.
    let mut changed: Vec<(i128, &[Cover])> = Vec::new();
    for op in ops.iter().filter(|o| o.add >= pw) {
        let first = op.old_pos.next_multiple_of(pw);
        for p in (first..=op.old_pos + op.add - pw).step_by(pw) {
            let q = p - op.old_pos + op.new_pos;
            let (v, n) = (word(old, p), word(new, q));
            // Displacements shared by many covers say little: at most 16.
            let d = i64::try_from(n - v).ok();
            match d.and_then(|d| by_disp.get(&d)).filter(|c| n != v && c.len() <= 16) {
                Some(covers) => changed.push((v, covers)),
                None => continue,
            }
        }
    }
    let total: usize = changed.iter().map(|c| c.1.len()).sum();
    let stride = (total / (1 << 20)).max(1);
    // (base, +1 where an interval starts or -1 past its end)
    let mut events: Vec<(i128, i32)> = Vec::new();
    for &(v, covers) in changed.iter().step_by(stride) {
        for c in covers {
            let (lo, hi) =
                (v - i128::from(c.old_start + c.len) + 1, v - i128::from(c.old_start) + 1);
            if hi > 0 {
                events.push((lo.max(0), 1));
                events.push((hi, -1));
            }
        }
    }
    events.sort_unstable();
    let (mut depth, mut best, mut at) = (0i32, 0i32, None);
    for (i, &(x, e)) in events.iter().enumerate() {
        depth += e;
        let next = events.get(i + 1).map_or(x, |n| n.0);
        if depth > best && next > x {
            best = depth;
            at = Some((x, next));
        }
    }
    let (lo, hi) = at.filter(|_| best >= 8)?;
    let aligned = (lo + 0xff) & !0xff;
    u64::try_from(if aligned < hi { aligned } else { lo }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use otaforge_applier::exec::CoverStore;

    /// A Thumb-2 BL at `from` to `to`, encoded through `rewrite` (a BL pointed elsewhere).
    fn thumb_bl(from: i64, to: i64) -> [u8; 4] {
        let zero = [0x00, 0xf0, 0x00, 0xf8];
        let out = Isa::Thumb2.rewrite(&zero, from, from, |_| to).unwrap();
        out[..4].try_into().unwrap()
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
        assert_eq!(t.covers.map(120, 9), 124);
        assert_eq!(t.covers.map(500, 9), 509);
        let mut b = Vec::new();
        t.encode(&mut b);
        b.extend_from_slice(b"rest");
        for piece in [1, 2, 100] {
            let mut r = TableReader::new(210);
            let mut store: Vec<Cover> = Vec::new();
            let mut used = 0;
            for c in b.chunks(piece) {
                used += r.feed(c, &mut store).unwrap();
            }
            assert!(r.done());
            assert_eq!(used as u64, r.consumed());
            assert_eq!(&b[used..], b"rest");
            assert_eq!(store, t.covers);
        }
        // A cover past old's end is refused.
        let mut store: Vec<Cover> = Vec::new();
        assert!(matches!(TableReader::new(209).feed(&b, &mut store), Err(PatchError::BadTable(_))));
        // A device's fixed store refuses a table larger than it holds.
        let mut slots = [[0u32; 3]; 1];
        let mut fixed = otaforge_applier::FixedCovers::new(&mut slots);
        assert!(fixed.start(2).is_err());
    }

    /// What `ex` predicts for old `[s, e)` (an add at displacement `disp`), read in pieces of
    /// `piece` bytes, as a device reads it.
    fn predicted_in_pieces(
        ex: &Exec<'_>,
        old: &[u8],
        (s, e): (u64, u64),
        disp: i64,
        piece: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let mut at = s;
        while at < e {
            let n = (piece as u64).min(e - at) as usize;
            let mut b = old[at as usize..at as usize + n].to_vec();
            ex.predict(&mut &old[..], (s, e), disp, at, &mut b).unwrap();
            got.extend_from_slice(&b);
            at += n as u64;
        }
        got
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
            let ex = Exec { isa, table: &table.covers, abs: None, refs: false };
            let (s, e) = (3u64, 3990u64);
            let mut whole = old[s as usize..e as usize].to_vec();
            ex.predict(&mut &old[..], (s, e), 100, s, &mut whole).unwrap();
            assert!(whole != old[s as usize..e as usize], "{isa:?} changed nothing");
            for piece in [1usize, 3, 7, 64] {
                let got = predicted_in_pieces(&ex, &old, (s, e), 100, piece);
                assert!(got == whole, "{isa:?} in pieces of {piece}");
            }
        }
    }

    /// A Thumb-2-like image at `base`: calls to a few functions and literal pools holding
    /// their addresses (with the Thumb bit) and addresses of data.
    fn thumb_image(base: u32, len: usize) -> Vec<u8> {
        let mut old: Vec<u8> =
            (0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x7f).collect();
        let funcs: Vec<usize> = (0..40).map(|k| (64 + k * (len - 128) / 40) & !3).collect();
        for (k, p) in (32..len - 64).step_by(36).enumerate() {
            let f = funcs[(k * 7) % funcs.len()];
            old[p..p + 4].copy_from_slice(&thumb_bl(p as i64, f as i64));
            // A pool after it: a function pointer and a data pointer.
            let q = (p + 8) & !3;
            old[q..q + 4].copy_from_slice(&(base + f as u32 + 1).to_le_bytes());
            old[q + 4..q + 8].copy_from_slice(&(base + (p as u32 * 3) % len as u32).to_le_bytes());
        }
        old
    }

    #[test]
    fn the_base_is_found_from_calls_and_pools() {
        let old = thumb_image(0x0800_8000, 20_000);
        assert_eq!(guess_base(&old, Isa::Thumb2), Some(0x0800_8000));
        assert_eq!(guess_base(&old, Isa::X86_64), None);
        // From what the ops change: 100 bytes inserted at 4000, the pointers after it moved.
        let base = 0x0800_8000u32;
        let mut new = old.clone();
        new.splice(4000..4000, [0u8; 100]);
        for w in new.chunks_exact_mut(4) {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if (base + 4000..base + 20_000).contains(&v) {
                w.copy_from_slice(&(v + 100).to_le_bytes());
            }
        }
        let ops = [
            Op { new_pos: 0, old_pos: 0, add: 4000, copy: 100 },
            Op { new_pos: 4100, old_pos: 4000, add: 16_000, copy: 0 },
        ];
        let table = Table::from_ops(&ops, MCU_COVERS);
        assert_eq!(base_from_ops(&old, &new, &ops, &table, Isa::Thumb2), Some(u64::from(base)));
        assert_eq!(base_from_ops(&old, &old, &ops[..1], &table, Isa::Thumb2), None);
        let noise: Vec<u8> =
            (0..20_000u32).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
        assert_eq!(guess_base(&noise, Isa::Thumb2), None);
    }

    /// Absolute pointers: predicted through the table, and the same for any read split;
    /// a word overlapping a branch that counts is left to the branch.
    #[test]
    fn pointers_are_predicted_the_same_for_any_read_split() {
        let base = 0x0800_8000u32;
        let old = thumb_image(base, 8_000);
        let ops = [
            Op { new_pos: 0, old_pos: 0, add: 4_000, copy: 0 },
            Op { new_pos: 4_100, old_pos: 4_000, add: 4_000, copy: 0 },
        ];
        let table = Table::from_ops(&ops, 10);
        let abs = Some(Abs { base: u64::from(base), len: old.len() as u64 });
        // A pointer to old 5000 (+ Thumb bit) at 1000 is predicted to 5100.
        let mut one = old.clone();
        one[1000..1004].copy_from_slice(&(base + 5001).to_le_bytes());
        one[996..1000].copy_from_slice(&[0; 4]);
        one[1004..1008].copy_from_slice(&[0; 4]);
        let ex = table.exec_abs(Isa::Thumb2, abs);
        let mut b = one[1000..1004].to_vec();
        ex.predict(&mut &one[..], (0, 4000), 0, 1000, &mut b).unwrap();
        assert_eq!(b, (base + 5101).to_le_bytes());
        // Without the flag, it stays.
        let mut b = one[1000..1004].to_vec();
        table.exec(Isa::Thumb2).predict(&mut &one[..], (0, 4000), 0, 1000, &mut b).unwrap();
        assert_eq!(b, (base + 5001).to_le_bytes());
        // A pointer-like word that a counting BL overlaps is the BL's.
        let mut bl = one.clone();
        bl[998..1002].copy_from_slice(&thumb_bl(998, 5000));
        let mut b = bl[996..1008].to_vec();
        ex.predict(&mut &bl[..], (0, 4000), 0, 996, &mut b).unwrap();
        let mut only_bl = bl[996..1008].to_vec();
        table.exec(Isa::Thumb2).predict(&mut &bl[..], (0, 4000), 0, 996, &mut only_bl).unwrap();
        assert_eq!(b, only_bl);
        for isa in [Isa::Thumb2, Isa::A32] {
            let ex = table.exec_abs(isa, abs);
            let (s, e) = (3u64, 7990u64);
            let mut whole = old[s as usize..e as usize].to_vec();
            ex.predict(&mut &old[..], (s, e), 100, s, &mut whole).unwrap();
            let mut plain = old[s as usize..e as usize].to_vec();
            table.exec(isa).predict(&mut &old[..], (s, e), 100, s, &mut plain).unwrap();
            assert!(whole != plain, "{isa:?}: no pointer predicted");
            for piece in [1usize, 2, 3, 5, 7, 64] {
                let got = predicted_in_pieces(&ex, &old, (s, e), 100, piece);
                assert!(got == whole, "{isa:?} in pieces of {piece}");
            }
        }
    }

    /// AArch64: 64-bit pointers at multiples of 8, beside BLs, the same for any read split.
    #[test]
    fn wide_pointers_are_predicted_the_same_for_any_read_split() {
        let base = 0x40_0000u64;
        let mut old: Vec<u8> =
            (0..8000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for p in (0..7984).step_by(20) {
            let q = p & !7;
            let t = (p as u64 * 7) % 8000;
            old[q..q + 8].copy_from_slice(&(base + t).to_le_bytes());
            if p % 40 == 0 {
                let bl = 0x9400_0000u32 | (p as u32 % 400);
                old[q + 8..q + 12].copy_from_slice(&bl.to_le_bytes());
            }
        }
        let ops = [
            Op { new_pos: 0, old_pos: 0, add: 4_000, copy: 0 },
            Op { new_pos: 4_096, old_pos: 4_000, add: 4_000, copy: 0 },
        ];
        let table = Table::from_ops(&ops, 10);
        let ex = table.exec_abs(Isa::Aarch64, Some(Abs { base, len: 8000 }));
        // A pointer to old 5000 at 800 becomes one to 5096.
        let mut one = old.clone();
        one[800..808].copy_from_slice(&(base + 5000).to_le_bytes());
        one[808..812].copy_from_slice(&[0; 4]);
        let mut b = one[800..808].to_vec();
        ex.predict(&mut &one[..], (0, 4000), 0, 800, &mut b).unwrap();
        assert_eq!(b, (base + 5096).to_le_bytes());
        let (s, e) = (3u64, 7990u64);
        let mut whole = old[s as usize..e as usize].to_vec();
        ex.predict(&mut &old[..], (s, e), 96, s, &mut whole).unwrap();
        let mut plain = old[s as usize..e as usize].to_vec();
        table.exec(Isa::Aarch64).predict(&mut &old[..], (s, e), 96, s, &mut plain).unwrap();
        assert!(whole != plain, "no pointer predicted");
        for piece in [1usize, 3, 4, 5, 7, 9, 64] {
            let got = predicted_in_pieces(&ex, &old, (s, e), 96, piece);
            assert!(got == whole, "in pieces of {piece}");
        }
    }

    /// AArch64 ADRP at `p` to the page of `target` into register `rd`.
    fn adrp(rd: u32, p: u64, target: u64) -> u32 {
        let pages = ((target >> 12) as i64 - (p >> 12) as i64) as u32;
        0x9000_0000 | (pages & 3) << 29 | (pages >> 2 & 0x7_ffff) << 5 | rd
    }

    /// An ADRP and the ADD (`ldr: false`) or 64-bit LDR completing it, at `p`, to `target`.
    fn pair(rd: u32, p: u64, target: u64, ldr: bool) -> [u8; 8] {
        let (top, scale) = if ldr { (0xf940_0000u32, 8) } else { (0x9100_0000, 1) };
        let next = top | (((target & 0xfff) / scale) as u32) << 10 | rd << 5 | ((rd + 1) % 31);
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&adrp(rd, p, target).to_le_bytes());
        b[4..].copy_from_slice(&next.to_le_bytes());
        b
    }

    /// AArch64 address pairs reach their target's new place exactly (page and offset, ADD or
    /// scaled load), beside pointers and BLs, the same for any read split.
    #[test]
    fn extended_refs_reach_their_target_for_any_read_split() {
        let mut old: Vec<u8> =
            (0..8000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for p in (0..7976u64).step_by(24) {
            let t = ((p * 7 + 8) % 8000) & !7;
            let q = p as usize;
            match p % 72 {
                0 => old[q..q + 8].copy_from_slice(&pair(p as u32 % 29, p, t, p % 144 == 0)),
                24 => old[q..q + 8].copy_from_slice(&t.to_le_bytes()),
                _ => old[q..q + 4]
                    .copy_from_slice(&(0x9400_0000u32 | (p as u32 % 400)).to_le_bytes()),
            }
        }
        let ops = [
            Op { new_pos: 0, old_pos: 0, add: 4_000, copy: 0 },
            Op { new_pos: 4_096, old_pos: 4_000, add: 4_000, copy: 0 },
        ];
        let table = Table::from_ops(&ops, 10);
        let ex = table.exec_abs(Isa::Aarch64, Some(Abs { base: 0, len: 8000 }));
        assert!(ex.refs);
        // At 800 (not moving): old 5000 moved to 5096 (ADD), 6000 to 6096 (LDR, scaled by 8),
        // and 4090 to 4186, on the next page.
        for (target, ldr, moved) in [(5000, false, 5096), (6000, true, 6096), (4090, false, 4186)] {
            let mut one = old.clone();
            one[800..808].copy_from_slice(&pair(3, 800, target, ldr));
            let mut b = one[800..808].to_vec();
            ex.predict(&mut &one[..], (0, 4000), 0, 800, &mut b).unwrap();
            assert_eq!(b, pair(3, 800, moved, ldr), "pair to {target}");
            // Not a pair: the register differs (the ADRP alone rounds to the nearest page).
            one[804] ^= 1 << 5;
            let mut b = one[800..808].to_vec();
            ex.predict(&mut &one[..], (0, 4000), 0, 800, &mut b).unwrap();
            assert_eq!(b[4..], one[804..808]);
        }
        let (s, e) = (3u64, 7990u64);
        let mut whole = old[s as usize..e as usize].to_vec();
        ex.predict(&mut &old[..], (s, e), 96, s, &mut whole).unwrap();
        let no_pairs = Exec { refs: false, ..ex };
        let mut without = old[s as usize..e as usize].to_vec();
        no_pairs.predict(&mut &old[..], (s, e), 96, s, &mut without).unwrap();
        assert!(whole != without, "no pair predicted");
        for piece in [1usize, 2, 3, 4, 5, 7, 8, 9, 12, 64] {
            let got = predicted_in_pieces(&ex, &old, (s, e), 96, piece);
            assert!(got == whole, "in pieces of {piece}");
        }
    }

    /// x86-64 with extended references: a RIP-relative operand (after its opcode, with or
    /// without `0F`) and a Jcc rel32 reach their target's new place like CALL; a ModRM of the
    /// same form after an opcode with an immediate (`C7`) does not count. The same for any
    /// read split.
    #[test]
    fn x86_references_reach_their_target_for_any_read_split() {
        // `code` at `p`, then rel32 to `target` measured from the end of the 4 bytes.
        let put = |old: &mut Vec<u8>, p: usize, code: &[u8], target: i64| {
            old[p..p + code.len()].copy_from_slice(code);
            let end = (p + code.len() + 4) as i64;
            old[p + code.len()..][..4].copy_from_slice(&((target - end) as i32).to_le_bytes());
        };
        let mut old: Vec<u8> =
            (0..8000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x7f).collect();
        let forms: [&[u8]; 5] =
            [&[0x48, 0x8d, 0x05], &[0x0f, 0x84], &[0xe8], &[0xf2, 0x0f, 0x10, 0x0d], &[0x8b, 0x15]];
        for (n, p) in (0..7980usize).step_by(13).enumerate() {
            put(&mut old, p, forms[n % 5], ((p * 7) % 8000) as i64);
        }
        let ops = [
            Op { new_pos: 0, old_pos: 0, add: 4_000, copy: 0 },
            Op { new_pos: 4_096, old_pos: 4_000, add: 4_000, copy: 0 },
        ];
        let table = Table::from_ops(&ops, 10);
        let ex = table.exec_abs(Isa::X86_64, None);
        assert!(ex.refs);
        for code in forms {
            let mut one = old.clone();
            one[790..830].fill(0x90);
            put(&mut one, 800, code, 5000);
            let mut b = one[800..812].to_vec();
            ex.predict(&mut &one[..], (0, 4000), 0, 800, &mut b).unwrap();
            let mut want = one.clone();
            put(&mut want, 800, code, 5096);
            assert_eq!(b, want[800..812], "{code:02x?}");
        }
        let mut imm = old.clone();
        imm[790..830].fill(0x90);
        put(&mut imm, 800, &[0xc7, 0x05], 5000);
        let mut b = imm[800..812].to_vec();
        ex.predict(&mut &imm[..], (0, 4000), 0, 800, &mut b).unwrap();
        assert_eq!(b, imm[800..812]);
        let (s, e) = (3u64, 7990u64);
        let mut whole = old[s as usize..e as usize].to_vec();
        ex.predict(&mut &old[..], (s, e), 96, s, &mut whole).unwrap();
        let mut calls_only = old[s as usize..e as usize].to_vec();
        table.exec(Isa::X86_64).predict(&mut &old[..], (s, e), 96, s, &mut calls_only).unwrap();
        assert!(whole != calls_only, "no reference predicted");
        for piece in [1usize, 2, 3, 4, 5, 6, 7, 9, 13, 64] {
            let got = predicted_in_pieces(&ex, &old, (s, e), 96, piece);
            assert!(got == whole, "in pieces of {piece}");
        }
    }

    /// An ELF's pointer span ends at its first segment not at base + offset.
    #[test]
    fn an_elf_span_ends_at_its_writable_segment() {
        let mut elf = vec![0u8; 4096];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        for (i, (off, vaddr)) in [(0u64, 0u64), (3000, 3000 + 0x1_0000)].into_iter().enumerate() {
            let h = 64 + 56 * i;
            elf[h..h + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            elf[h + 8..h + 16].copy_from_slice(&off.to_le_bytes());
            elf[h + 16..h + 24].copy_from_slice(&vaddr.to_le_bytes());
        }
        assert_eq!(pointer_span(&elf, 0), 3000);
        assert_eq!(pointer_span(&elf, 0x1_0000), 0);
        assert_eq!(pointer_span(&elf[..63], 0), 63);
        assert_eq!(pointer_span(&[1u8; 100], 0x0800_0000), 100);
    }

    /// The base is read before the table; one that leaves 32 bits is refused.
    #[test]
    fn the_base_precedes_the_table() {
        let mut b = Vec::new();
        put_varint(&mut b, 0x0800_0000);
        put_varint(&mut b, 100);
        Table::from_ops(&[Op { new_pos: 4, old_pos: 0, add: 100, copy: 0 }], 10).encode(&mut b);
        for piece in [1, 3, 100] {
            let mut r = TableReader::with_base(100, Isa::Thumb2);
            let mut store: Vec<Cover> = Vec::new();
            for c in b.chunks(piece) {
                r.feed(c, &mut store).unwrap();
            }
            assert!(r.done());
            assert_eq!(r.abs(), Some(Abs { base: 0x0800_0000, len: 100 }));
            assert_eq!(store, [Cover { old_start: 0, len: 100, disp: 4 }]);
        }
        let mut high = Vec::new();
        put_varint(&mut high, (1 << 32) - 50);
        put_varint(&mut high, 100);
        let mut store: Vec<Cover> = Vec::new();
        assert!(TableReader::with_base(100, Isa::Thumb2).feed(&high, &mut store).is_err());
        // A span longer than old is refused.
        let mut long = Vec::new();
        put_varint(&mut long, 0);
        put_varint(&mut long, 101);
        assert!(TableReader::with_base(100, Isa::Thumb2).feed(&long, &mut store).is_err());
        // 64-bit pointers (AArch64): any base that leaves old inside 64 bits.
        let mut store: Vec<Cover> = Vec::new();
        let mut r = TableReader::with_base(100, Isa::Aarch64);
        high.push(0); // an empty table
        r.feed(&high, &mut store).unwrap();
        assert_eq!(r.abs(), Some(Abs { base: (1 << 32) - 50, len: 100 }));
    }
}

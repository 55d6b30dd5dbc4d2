//! Executable-aware prediction, the creating side: which ranges of old moved where (the
//! displacement table written at the front of the op stream). Applying it, the prediction
//! itself, is the device's code (`otaforge_applier::exec`), used here as it is;
//! docs/delta-format.md, "Executable-aware prediction", is the specification.

use super::diff::Op;
use super::wire::{put_varint, zigzag};
#[cfg(test)]
use otaforge_applier::PatchError;
pub use otaforge_applier::exec::{Cover, Covers, Exec, Isa, MAX_COVERS, MCU_COVERS, TableReader};

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
        Exec { isa, table: &self.covers }
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
            let ex = Exec { isa, table: &table.covers };
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

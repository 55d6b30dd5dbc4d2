//! Method 3: the op stream in five separately compressed parts (docs/delta-format.md, "Method
//! 3"). The op stream mixes four kinds of bytes with different statistics: control numbers,
//! corrections (mostly zero), literals (new code and data) and, with a filter, the displacement
//! table. Compressed apart, each gets a model of its own: on the ruff ELF pair the parts come to
//! 12.5 % less than the interleaved stream.
//!
//! Parts: 0 the seeks (after the displacement table, when there is one), 1 the add lengths,
//! 2 the copy lengths, 3 the corrections, 4 the literals. The payload starts with a table of
//! [`PART_ENTRY`]-byte entries (compressed length, decompressed length, dictionary), then the
//! parts. Applying re-interleaves them into exactly the op stream of method 1
//! ([`SplitReader`]), so every check of the patcher applies unchanged. A device needs one
//! decompressor per part, and reads the stored delta at five places: Linux only.

use std::io::{self, BufRead, BufReader, Read};

use super::codec::{self, Encoder, LzmaParams};
use super::diff::Op;
use super::format::{Compression, Header};
use super::wire::{put_varint, zigzag};

/// Number of parts.
pub const PARTS: usize = 5;
/// Bytes per entry of the part table: compressed length, decompressed length (u64 LE each) and
/// dictionary size (u32 LE).
pub const PART_ENTRY: usize = 20;
/// The part table's size: the entries, then a flags byte.
pub const TABLE_LEN: usize = PARTS * PART_ENTRY + 1;
/// Part-table flag: part 3 (the corrections) is run-length coded.
pub const FLAG_RLE: u8 = 1;
/// Part-table flag (LZMA only): each part has LZMA properties of its own, in
/// [`PARTS`] bytes after the flags byte.
pub const FLAG_PROPS: u8 = 2;
/// Part-table flag (LZMA only, not in place): part 4 (the literals) was compressed with old as
/// LZMA's preset dictionary (its window starts holding old's last `dict` bytes).
pub const FLAG_PRIMED: u8 = 4;

/// Parts up to this size (decompressed) are compressed with each of [`PROPS_TRIED`] and the
/// smallest is kept; larger ones take their kind's choice ([`props_for`]). A part primed with
/// more than [`PROPS_TRY_UP_TO_PRIMED`] of old is not tried three times either.
const PROPS_TRY_UP_TO: usize = 64 << 10;
const PROPS_TRY_UP_TO_PRIMED: usize = 1 << 20;

/// LZMA (lc, lp, pb) tried beside the header's on small parts: a wider literal context (the
/// byte before a correction or a literal says much about it in machine code), and with it
/// position bits for 2-byte alignment.
const PROPS_TRIED: [(u32, u32, u32); 2] = [(4, 0, 0), (4, 0, 1)];

/// One part as the table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Compressed bytes.
    pub packed: u64,
    /// Decompressed bytes.
    pub raw: u64,
    /// Decoder dictionary (LZMA) or window (zstd); 0 when stored.
    pub dict: u32,
    /// LZMA properties (the header's unless the table has [`FLAG_PROPS`]).
    pub props: u8,
}

/// The part table as read: the parts, whether part 3 is run-length coded, and where the
/// first part starts in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The parts, in order.
    pub parts: [Part; PARTS],
    /// Part 3 is run-length coded.
    pub run_length: bool,
    /// Part 4 is primed with old ([`FLAG_PRIMED`]).
    pub primed: bool,
    /// Bytes of the part table (where part 0 starts).
    pub table_len: usize,
}

/// Reads and checks the part table against the header.
pub fn parts(h: &Header, payload: &[u8]) -> io::Result<Layout> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    if payload.len() < TABLE_LEN {
        return Err(bad("the part table is truncated"));
    }
    let flags = payload[TABLE_LEN - 1];
    let lzma_only = FLAG_PROPS | FLAG_PRIMED;
    if flags & !(FLAG_RLE | lzma_only) != 0
        || flags & lzma_only != 0 && h.compression != Compression::Lzma
        || flags & FLAG_PRIMED != 0 && h.in_place.is_some()
    {
        return Err(bad("unknown part-table flags"));
    }
    let table_len = if flags & FLAG_PROPS != 0 { TABLE_LEN + PARTS } else { TABLE_LEN };
    let props =
        payload.get(TABLE_LEN..table_len).ok_or_else(|| bad("the part table is truncated"))?;
    if props.iter().any(|p| *p >= 9 * 5 * 5) {
        return Err(bad("a part's LZMA properties are out of range"));
    }
    let mut parts = [Part { packed: 0, raw: 0, dict: 0, props: h.lzma_props }; PARTS];
    let (mut packed, mut raw) = (table_len as u64, 0u64);
    for (i, p) in parts.iter_mut().enumerate() {
        let e = &payload[i * PART_ENTRY..(i + 1) * PART_ENTRY];
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(e[r].try_into().unwrap_or_default());
        let dict = u32::from_le_bytes(e[16..20].try_into().unwrap_or_default());
        let props = props.get(i).copied().unwrap_or(h.lzma_props);
        *p = Part { packed: u(0..8), raw: u(8..16), dict, props };
        packed = packed.checked_add(p.packed).ok_or_else(|| bad("part lengths overflow"))?;
        raw = raw.checked_add(p.raw).ok_or_else(|| bad("part lengths overflow"))?;
        let dict_ok = match h.compression {
            Compression::None => p.dict == 0 && p.packed == p.raw,
            Compression::Lzma => (4096..=h.window).contains(&p.dict),
            Compression::Zstd => (1..=h.window).contains(&p.dict),
        };
        if !dict_ok {
            return Err(bad("a part's dictionary or length does not fit the header"));
        }
    }
    // The decompressed parts are not the stream's bytes one for one (the corrections are
    // run-length coded, the table is derived), so only the packed lengths are checked here;
    // the re-interleaved stream's length is checked against `stream_len` as it is read.
    let _ = raw;
    if packed != payload.len() as u64 {
        return Err(bad("the part table does not add up to the payload and stream lengths"));
    }
    let (run_length, primed) = (flags & FLAG_RLE != 0, flags & FLAG_PRIMED != 0);
    Ok(Layout { parts, run_length, primed, table_len })
}

/// The LZMA settings for part `i` when it is too large to try several: the
/// corrections (3) with a wide literal context, the literals (4) with 2-byte position bits
/// too (the smallest on the AArch64 and x86-64 ELF pairs of docs/benchmarks.md), the control
/// numbers as the header says.
fn props_for(i: usize, props: LzmaParams) -> LzmaParams {
    match i {
        3 => LzmaParams { lc: 4, lp: 0, pb: 0, ..props },
        4 => LzmaParams { lc: 4, lp: 0, pb: 1, ..props },
        _ => props,
    }
}

/// The literals part (part 4) for `ops`: each op's literal bytes, in order.
pub(crate) fn literal_part(new: &[u8], ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.iter().map(|o| o.copy).sum());
    for op in ops {
        out.extend_from_slice(op.extra(new));
    }
    out
}

/// Raw parts 0 to 3 for `ops` (the literals: [`literal_part`]). With a filter, `exec`'s table
/// must be the one [`super::exec::Table::from_ops`] makes from `ops` with no limit: the reader
/// derives it.
pub(crate) fn write_parts(
    old: &[u8],
    new: &[u8],
    ops: &[Op],
    exec: Option<otaforge_applier::Exec<'_>>,
    run_length: bool,
) -> io::Result<[Vec<u8>; 4]> {
    let mut p: [Vec<u8>; 4] = Default::default();
    let mut cursor = 0i64;
    let mut predicted = Vec::new();
    let mut rle = Rle::default();
    if let Some(abs) = exec.and_then(|e| e.abs) {
        // The image base and span lead part 0 (and the re-interleaved stream).
        put_varint(&mut p[0], abs.base);
        put_varint(&mut p[0], abs.len);
    }
    for op in ops {
        put_varint(&mut p[0], zigzag(op.old_pos as i64 - cursor));
        put_varint(&mut p[1], op.add as u64);
        put_varint(&mut p[2], op.copy as u64);
        let w = &new[op.new_pos..][..op.add];
        let o = super::ops::add_source(old, op, exec, (op.old_pos, op.add), &mut predicted)?;
        if run_length {
            for (o, n) in o.iter().zip(w) {
                rle.push(n.wrapping_sub(*o));
            }
        } else {
            p[3].extend(o.iter().zip(w).map(|(o, n)| n.wrapping_sub(*o)));
        }
        cursor = (op.old_pos + op.add) as i64;
    }
    if run_length {
        p[3] = rle.finish();
    }
    Ok(p)
}

/// Run-length coding of the corrections (part 3), which are mostly zero: LZMA's longest match
/// is 273 bytes, so a 150 MB run of zeros alone would cost it over half a megabyte. Runs of
/// `(zeros LEB128, n LEB128, n bytes)`; a literal run ends where two zeros start.
#[derive(Default)]
struct Rle {
    out: Vec<u8>,
    zeros: u64,
    lit: Vec<u8>,
    /// Zeros seen since the literal run's last non-zero byte (fewer than two).
    tail: usize,
}

impl Rle {
    fn push(&mut self, b: u8) {
        if self.lit.is_empty() {
            if b == 0 {
                self.zeros += 1;
            } else {
                self.lit.push(b);
            }
        } else if b == 0 {
            self.tail += 1;
            if self.tail == 2 {
                self.emit();
                self.zeros = 2;
                self.tail = 0;
            }
        } else {
            self.lit.extend(std::iter::repeat_n(0, self.tail));
            self.tail = 0;
            self.lit.push(b);
        }
    }

    fn emit(&mut self) {
        put_varint(&mut self.out, self.zeros);
        put_varint(&mut self.out, self.lit.len() as u64);
        self.out.extend_from_slice(&self.lit);
        self.lit.clear();
        self.zeros = 0;
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.lit.is_empty() {
            self.emit();
            self.zeros = self.tail as u64;
        }
        if self.zeros > 0 {
            self.emit();
        }
        self.out
    }
}

/// One part compressed ([`pack`]): what the part table records of it, and its body.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    body: Vec<u8>,
    raw: u64,
    params: LzmaParams,
    /// Compressed after old ([`FLAG_PRIMED`]; the literals only).
    primed: bool,
}

/// Compresses part `i` with LZMA, its dictionary sized to it and its properties chosen for it
/// (`props`' where nothing is smaller). With `prime` (old, when the delta is not applied in
/// place), the literals (part 4) are compressed after it ([`FLAG_PRIMED`]) when old and the
/// literals fit the literals' dictionary together: new code and data often repeat pieces of
/// old too short for an op.
pub(crate) fn pack(
    i: usize,
    raw: &[u8],
    preset: u32,
    props: LzmaParams,
    prime: &[u8],
) -> io::Result<Packed> {
    let primed = i == 4
        && !prime.is_empty()
        && !raw.is_empty()
        && (prime.len() + raw.len()) as u64 <= u64::from(props.dict);
    let cap = if i == 4 { props.dict } else { props.dict.min(1 << 20) };
    let prefix: &[u8] = if primed { prime } else { &[] };
    let need = (raw.len() + prefix.len()) as u64;
    let dict = need.next_power_of_two().clamp(4096, u64::from(cap)) as u32;
    let base = LzmaParams { dict, ..props };
    let tried: Vec<LzmaParams> =
        if raw.len() <= PROPS_TRY_UP_TO && prefix.len() <= PROPS_TRY_UP_TO_PRIMED {
            let wide = PROPS_TRIED.iter().map(|&(lc, lp, pb)| LzmaParams { lc, lp, pb, ..base });
            std::iter::once(base).chain(wide).collect()
        } else {
            vec![props_for(i, base)]
        };
    let mut best: Option<Packed> = None;
    for params in tried {
        let body = if prefix.is_empty() {
            Encoder::Lzma { preset, params }.compress(&mut |w| {
                w.write_all(raw)?;
                Ok(raw.len() as u64)
            })?
        } else {
            super::primed::compress(raw, prefix, params, preset)?
        };
        if best.as_ref().is_none_or(|b| body.len() < b.body.len()) {
            best = Some(Packed { body, raw: raw.len() as u64, params, primed });
        }
    }
    best.ok_or_else(|| io::Error::other("no LZMA settings tried"))
}

/// The payload from the packed parts, in part order: the part table, then the parts; and the
/// largest dictionary. `props` are the header's: a part table whose parts all use them
/// carries no per-part bytes (older readers read such a table).
pub(crate) fn assemble(
    packed: &[Packed; PARTS],
    run_length: bool,
    props: LzmaParams,
) -> (Vec<u8>, u32) {
    let mut out =
        Vec::with_capacity(TABLE_LEN + PARTS + packed.iter().map(|p| p.body.len()).sum::<usize>());
    let mut window = 4096;
    for p in packed {
        out.extend_from_slice(&(p.body.len() as u64).to_le_bytes());
        out.extend_from_slice(&p.raw.to_le_bytes());
        out.extend_from_slice(&p.params.dict.to_le_bytes());
        window = window.max(p.params.dict);
    }
    let own = packed.iter().any(|p| p.params.props() != props.props());
    let flag = |on: bool, f: u8| if on { f } else { 0 };
    out.push(
        flag(run_length, FLAG_RLE) | flag(own, FLAG_PROPS) | flag(packed[4].primed, FLAG_PRIMED),
    );
    if own {
        out.extend(packed.iter().map(|p| p.params.props()));
    }
    for p in packed {
        out.extend_from_slice(&p.body);
    }
    (out, window)
}

/// A method 3 payload made by [`compress`].
#[derive(Debug)]
pub(crate) struct Payload {
    /// The part table, then the parts.
    pub bytes: Vec<u8>,
    /// The largest dictionary.
    pub window: u32,
    /// Raw bytes of the control parts (0 to 2).
    pub controls: u64,
}

/// The literals part as [`compress`] takes it.
#[derive(Clone, Copy)]
pub(crate) enum Literals<'a> {
    /// To compress.
    Raw(&'a [u8]),
    /// Being compressed elsewhere already (with the same settings): the bytes, and a wait for
    /// the result.
    Early(&'a [u8], &'a (dyn Fn() -> io::Result<Packed> + Sync)),
}

impl Literals<'_> {
    /// Raw bytes.
    pub fn len(self) -> u64 {
        match self {
            Literals::Raw(b) | Literals::Early(b, _) => b.len() as u64,
        }
    }
}

/// Compresses the parts ([`pack`]) into a payload for each coding of the corrections in
/// `codings` (run-length coded or not), `parts(coding)` writing parts 0 to 3. The literals,
/// the same for every coding and usually the largest part, are compressed once: elsewhere
/// already ([`Literals::Early`]), or here on a thread of their own from the start, while the
/// other parts are written and compressed on the remaining `threads - 1`.
pub(crate) fn compress(
    literals: Literals<'_>,
    codings: &[bool],
    parts: &(dyn Fn(bool) -> io::Result<[Vec<u8>; 4]> + Sync),
    (preset, props): (u32, LzmaParams),
    (threads, prime): (usize, &[u8]),
) -> io::Result<Vec<Payload>> {
    let pack_literals = || match literals {
        Literals::Raw(raw) => pack(4, raw, preset, props, prime),
        Literals::Early(_, wait) => wait(),
    };
    let own_thread = threads > 1 && matches!(literals, Literals::Raw(_));
    std::thread::scope(|s| {
        let early = own_thread.then(|| s.spawn(pack_literals));
        let mut done = Vec::with_capacity(codings.len());
        for &run_length in codings {
            let raw = parts(run_length)?;
            let order = [3, 0, 1, 2];
            let packed = super::diff::run_limited(threads.max(2) - 1, &order, |&i| {
                pack(i, &raw[i], preset, props, prime)
            });
            let mut by_part: Vec<(usize, io::Result<Packed>)> =
                order.into_iter().zip(packed).collect();
            by_part.sort_by_key(|(i, _)| *i);
            let packed = by_part.into_iter().map(|(_, p)| p).collect::<io::Result<Vec<_>>>()?;
            let controls = raw[..3].iter().map(|p| p.len() as u64).sum();
            done.push((run_length, controls, packed));
        }
        let literals = match early {
            Some(job) => job.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?,
            None => pack_literals()?,
        };
        done.into_iter()
            .map(|(run_length, controls, mut packed)| {
                packed.push(literals.clone());
                let packed: [Packed; PARTS] =
                    packed.try_into().map_err(|_| io::Error::other("a part was not packed"))?;
                let (bytes, window) = assemble(&packed, run_length, props);
                Ok(Payload { bytes, window, controls })
            })
            .collect()
    })
}

/// The ops the three control parts describe, checked as the patcher will check them (bounds of
/// old and new), so that a hostile delta cannot make the table derivation misbehave.
fn ops_from_controls(c: &[Vec<u8>; 3], old_len: u64, new_len: u64) -> io::Result<Vec<Op>> {
    let bad = || {
        io::Error::new(io::ErrorKind::InvalidData, "the control parts describe an impossible op")
    };
    let mut at = [0usize; 3];
    let mut num = |i: usize| -> io::Result<Option<u64>> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let Some(&b) = c[i].get(at[i]) else {
                return if shift == 0 { Ok(None) } else { Err(bad()) };
            };
            at[i] += 1;
            if shift > 63 || (shift == 63 && b > 1) {
                return Err(bad());
            }
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(Some(v));
            }
        }
    };
    let (mut ops, mut new_pos, mut cursor) = (Vec::new(), 0u64, 0i128);
    while let Some(seek) = num(0)? {
        let (Some(add), Some(copy)) = (num(1)?, num(2)?) else { return Err(bad()) };
        let seek = i128::from(((seek >> 1) as i64) ^ -((seek & 1) as i64));
        let old_pos = cursor + seek;
        let end = new_pos.checked_add(add).and_then(|e| e.checked_add(copy));
        if old_pos < 0
            || old_pos + i128::from(add) > i128::from(old_len)
            || end.is_none_or(|e| e > new_len)
        {
            return Err(bad());
        }
        ops.push(Op {
            new_pos: new_pos as usize,
            old_pos: old_pos as usize,
            add: add as usize,
            copy: copy as usize,
        });
        cursor = old_pos + i128::from(add);
        new_pos = end.unwrap_or(new_len);
    }
    Ok(ops)
}

/// Where the re-interleaving is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Copying control number `field` (0 seek, 1 add, 2 copy) from its part.
    Control(usize),
    /// Copying `left` bytes from part 3 (corrections), then the op's copy from part 4.
    Add(u64),
    /// Copying `left` bytes from part 4.
    Copy(u64),
}

/// The op stream of method 1, re-interleaved from the five parts as it is read.
pub struct SplitReader<'a> {
    parts: Vec<BufReader<Box<dyn Read + 'a>>>,
    /// The encoded displacement table, emitted first (with a filter), and how much is out.
    prefix: Vec<u8>,
    prefix_at: usize,
    raw: [u64; PARTS],
    read: [u64; PARTS],
    phase: Phase,
    /// The current op's add and copy lengths, as read.
    lens: [u64; 2],
    /// Part 3's run-length decoding (when `run_length`): zeros, then literal bytes, left in
    /// the current run.
    run_length: bool,
    run: [u64; 2],
    /// A control number's bytes, copied whole.
    number: [u8; 10],
    number_len: usize,
    number_at: usize,
}

impl<'a> SplitReader<'a> {
    /// A reader over the parts of `payload` (header already checked) of a delta from `old`
    /// (what primed literals need; a delta applied in place has none). With a filter, the
    /// control parts are read whole first to derive the displacement table from the ops.
    pub fn new(h: &Header, payload: &'a [u8], old: &[u8]) -> io::Result<Self> {
        let Layout { parts: table, run_length, primed, table_len } = parts(h, payload)?;
        let mut at = table_len;
        let mut readers: Vec<Box<dyn Read + 'a>> = Vec::with_capacity(PARTS);
        for (i, p) in table.iter().enumerate() {
            let body = &payload[at..at + p.packed as usize];
            at += p.packed as usize;
            let window = if h.compression == Compression::None { 0 } else { p.dict };
            if i == 4 && primed {
                let params = LzmaParams::from_props(p.props, p.dict);
                readers.push(Box::new(super::primed::decoder(body, old, params)?));
            } else {
                readers.push(codec::decoder(h.compression, window, p.props, body)?);
            }
        }
        let mut prefix = Vec::new();
        let mut read = [0; PARTS];
        if h.filter.is_some() {
            let mut controls: [Vec<u8>; 3] = Default::default();
            for (i, c) in controls.iter_mut().enumerate() {
                // No more than the part table says (it is checked again at the end).
                readers[i].by_ref().take(table[i].raw).read_to_end(c)?;
            }
            if h.abs_pointers {
                // The image base and span lead part 0, and the stream: two LEB128 numbers.
                let ends: Vec<usize> = controls[0]
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| *b & 0x80 == 0)
                    .map(|(i, _)| i + 1)
                    .take(2)
                    .collect();
                let n = match ends[..] {
                    [a, b] if a <= 10 && b - a <= 10 => b,
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "part 0 does not start with the image base and span",
                        ));
                    }
                };
                prefix.extend(controls[0].drain(..n));
                read[0] = n as u64;
            }
            let ops = ops_from_controls(&controls, h.old_size, h.new_size)?;
            super::exec::Table::from_ops(&ops, usize::MAX).encode(&mut prefix);
            for (i, c) in controls.into_iter().enumerate() {
                readers[i] = Box::new(io::Cursor::new(c));
            }
        }
        Ok(Self {
            parts: readers.into_iter().map(|r| BufReader::with_capacity(4096, r)).collect(),
            prefix,
            prefix_at: 0,
            raw: table.map(|p| p.raw),
            run_length,
            read,
            phase: Phase::Control(0),
            lens: [0; 2],
            run: [0; 2],
            number: [0; 10],
            number_len: 0,
            number_at: 0,
        })
    }

    /// Reads one LEB128 number's bytes from `part` into `number`; `false` at the part's end.
    fn load_number(&mut self, part: usize) -> io::Result<Option<u64>> {
        let (mut v, mut shift, mut len) = (0u64, 0u32, 0usize);
        loop {
            let buf = self.parts[part].fill_buf()?;
            let Some(&b) = buf.first() else {
                if len == 0 {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a part ends inside a number",
                ));
            };
            self.parts[part].consume(1);
            self.read[part] += 1;
            self.number[len] = b;
            len += 1;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 || len == self.number.len() {
                self.number_len = len;
                self.number_at = 0;
                return Ok(Some(v));
            }
        }
    }

    /// Copies up to `out.len()` (and at most `left`) bytes from `part`.
    fn copy_from(&mut self, part: usize, out: &mut [u8], left: u64) -> io::Result<usize> {
        let want = (out.len() as u64).min(left) as usize;
        let n = self.parts[part].read(&mut out[..want])?;
        if n == 0 && want > 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a part ends early"));
        }
        self.read[part] += n as u64;
        Ok(n)
    }

    /// Up to `out.len()` (at most `left`) correction bytes, expanded from part 3's runs.
    fn corrections(&mut self, out: &mut [u8], left: u64) -> io::Result<usize> {
        let want = (out.len() as u64).min(left);
        if !self.run_length {
            return self.copy_from(3, out, want);
        }
        loop {
            if self.run[0] > 0 {
                let k = self.run[0].min(want) as usize;
                out[..k].fill(0);
                self.run[0] -= k as u64;
                return Ok(k);
            }
            if self.run[1] > 0 {
                let k = self.copy_from(3, out, self.run[1].min(want))?;
                self.run[1] -= k as u64;
                return Ok(k);
            }
            let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "the corrections end early");
            let zeros = self.load_number(3)?.ok_or_else(eof)?;
            let lits = self.load_number(3)?.ok_or_else(eof)?;
            // The run headers are not stream bytes: drop them from the number buffer.
            self.number_len = 0;
            if zeros == 0 && lits == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "an empty correction run"));
            }
            self.run = [zeros, lits];
        }
    }

    fn check_ends(&mut self) -> io::Result<()> {
        if self.run != [0, 0] {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the corrections run on"));
        }
        for i in 0..PARTS {
            if self.read[i] != self.raw[i] || !self.parts[i].fill_buf()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("part {i} does not end where the part table says"),
                ));
            }
        }
        Ok(())
    }
}

impl Read for SplitReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        if self.prefix_at < self.prefix.len() {
            let k = (self.prefix.len() - self.prefix_at).min(out.len());
            out[..k].copy_from_slice(&self.prefix[self.prefix_at..self.prefix_at + k]);
            self.prefix_at += k;
            n = k;
        }
        while n < out.len() {
            // A number's bytes first, when one is loaded.
            if self.number_at < self.number_len {
                let k = (self.number_len - self.number_at).min(out.len() - n);
                out[n..n + k].copy_from_slice(&self.number[self.number_at..self.number_at + k]);
                self.number_at += k;
                n += k;
                continue;
            }
            match self.phase {
                Phase::Control(field) => {
                    let Some(v) = self.load_number(field)? else {
                        if field == 0 {
                            // The end of the ops: every part must be used up exactly.
                            self.check_ends()?;
                            return Ok(n);
                        }
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "an op is cut short",
                        ));
                    };
                    self.phase = match field {
                        0 => Phase::Control(1),
                        1 => {
                            self.lens[0] = v;
                            Phase::Control(2)
                        }
                        _ => {
                            self.lens[1] = v;
                            Phase::Add(self.lens[0])
                        }
                    };
                }
                Phase::Add(0) => self.phase = Phase::Copy(self.lens[1]),
                Phase::Add(left) => {
                    let k = self.corrections(&mut out[n..], left)?;
                    n += k;
                    self.phase = Phase::Add(left - k as u64);
                }
                Phase::Copy(0) => self.phase = Phase::Control(0),
                Phase::Copy(left) => {
                    let k = self.copy_from(4, &mut out[n..], left)?;
                    n += k;
                    self.phase = Phase::Copy(left - k as u64);
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::InPlace;
    use super::*;

    fn header(compression: Compression, window: u32, payload: &[u8]) -> Header {
        Header {
            method: super::super::Method::Split,
            compression,
            window,
            lzma_props: LzmaParams { dict: 0, lc: 1, lp: 0, pb: 0 }.props(),
            payload_len: payload.len() as u64,
            ..super::super::format::tests::sample()
        }
    }

    /// Literals that repeat old cost less primed with it; the table says so, the flag is
    /// refused in place or without LZMA, and nothing is primed when old and the literals do
    /// not fit the literals' dictionary together.
    #[test]
    fn literals_are_primed_with_old_when_they_fit() {
        let mut x = 9u32;
        let old: Vec<u8> = (0..60_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let literals = old[5_000..25_000].to_vec();
        let raw: [Vec<u8>; PARTS] = [vec![1], vec![2], vec![3], vec![], literals.clone()];
        let props = LzmaParams { dict: 1 << 20, lc: 1, lp: 0, pb: 0 };
        let (primed, window) = packed(&raw, false, props, &old);
        let (plain, _) = packed(&raw, false, props, &[]);
        assert!(primed.len() * 10 < plain.len(), "{} vs {}", primed.len(), plain.len());
        let h = header(Compression::Lzma, window, &primed);
        let layout = parts(&h, &primed).unwrap();
        assert!(layout.primed && !parts(&h, &plain).unwrap().primed);
        assert!(layout.parts[4].dict as usize >= old.len() + literals.len());
        let in_place =
            Header { in_place: Some(InPlace { segment_log2: 12, shift_segments: 0 }), ..h };
        assert!(parts(&in_place, &primed).is_err());
        // Too large for the dictionary together: not primed.
        let small = LzmaParams { dict: 64 << 10, ..props };
        let (p, _) = packed(&raw, false, small, &old);
        assert_eq!(p[TABLE_LEN - 1] & FLAG_PRIMED, 0);
    }

    /// The two codings of the corrections share the literals: compressed once (on a thread of
    /// their own) they are the same bytes at the end of both payloads, and each payload is
    /// what the coding alone gives on one thread.
    #[test]
    fn the_literals_are_compressed_once_for_both_codings() {
        let props = LzmaParams { dict: 1 << 20, lc: 1, lp: 0, pb: 0 };
        let lit: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let raw: [Vec<u8>; PARTS] = [vec![1], vec![2], vec![3], vec![0; 100], lit.clone()];
        let both = compress(
            Literals::Raw(&lit),
            &[true, false],
            &|_| Ok(first_four(&raw)),
            (6, props),
            (2, &[]),
        )
        .unwrap();
        let [a, b] = &both[..] else { panic!("{} payloads", both.len()) };
        let h = header(Compression::Lzma, a.window, &a.bytes);
        let layout = parts(&h, &a.bytes).unwrap();
        let body = &a.bytes[a.bytes.len() - layout.parts[4].packed as usize..];
        assert!(b.bytes.ends_with(body) && a.bytes != b.bytes);
        assert!(layout.run_length && !parts(&h, &b.bytes).unwrap().run_length);
        assert_eq!(a.bytes, packed(&raw, true, props, &[]).0);
        assert_eq!(b.bytes, packed(&raw, false, props, &[]).0);
        assert_eq!(a.controls, 3);
    }

    /// Parts 0 to 3 of `raw`.
    fn first_four(raw: &[Vec<u8>; PARTS]) -> [Vec<u8>; 4] {
        [raw[0].clone(), raw[1].clone(), raw[2].clone(), raw[3].clone()]
    }

    /// The payload and window [`compress`] makes of `raw` with one coding, on one thread.
    fn packed(
        raw: &[Vec<u8>; PARTS],
        run_length: bool,
        props: LzmaParams,
        prime: &[u8],
    ) -> (Vec<u8>, u32) {
        let mut out = compress(
            Literals::Raw(&raw[4]),
            &[run_length],
            &|_| Ok(first_four(raw)),
            (6, props),
            (1, prime),
        )
        .unwrap();
        let p = out.remove(0);
        (p.bytes, p.window)
    }

    /// Each part keeps the LZMA properties that made it smallest; the table says which (a
    /// byte per part after the flags), and a table whose parts all use the header's has none.
    #[test]
    fn parts_carry_their_own_lzma_properties() {
        let props = LzmaParams { dict: 1 << 20, lc: 1, lp: 0, pb: 0 };
        // Bytes that depend on the high half of the one before (which a wider literal
        // context sees), and nothing at all.
        let (mut x, mut prev) = (1u32, 0u8);
        let text: Vec<u8> = (0..40_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                prev = (u32::from(prev >> 4) * 73 + (x >> 16) % 64) as u8;
                prev
            })
            .collect();
        let raw: [Vec<u8>; PARTS] = [vec![], vec![], vec![], vec![], text.clone()];
        let (payload, window) = packed(&raw, false, props, &[]);
        let h = header(Compression::Lzma, window, &payload);
        let layout = parts(&h, &payload).unwrap();
        let wide = layout.parts[4].props;
        assert_ne!(wide, h.lzma_props, "the wider context did not win on text");
        assert_eq!(payload[TABLE_LEN - 1], FLAG_PROPS);
        assert_eq!(layout.table_len, TABLE_LEN + PARTS);
        let p = h.lzma_props;
        assert_eq!(&payload[TABLE_LEN..TABLE_LEN + PARTS], &[p, p, p, p, wide][..]);
        // Decoded with its own properties, part 4 is the text again.
        let before: usize = layout.parts[..4].iter().map(|p| p.packed as usize).sum();
        let body = &payload[layout.table_len + before..];
        let mut out = Vec::new();
        codec::decoder(Compression::Lzma, layout.parts[4].dict, wide, body)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == text);
        // Properties out of range, the flag without LZMA, or a table cut short: refused.
        let mut bad = payload.clone();
        bad[TABLE_LEN + 4] = 225;
        assert!(parts(&h, &bad).is_err());
        assert!(parts(&header(Compression::None, 0, &payload), &payload).is_err());
        assert!(parts(&h, &payload[..TABLE_LEN + 2]).is_err());
        // All parts empty: every candidate ties, the header's are kept, no per-part bytes.
        let (plain, _) = packed(&Default::default(), true, props, &[]);
        assert_eq!(plain[TABLE_LEN - 1], FLAG_RLE);
        let layout = parts(&header(Compression::Lzma, 4096, &plain), &plain).unwrap();
        assert_eq!(layout.table_len, TABLE_LEN);
    }

    #[test]
    fn runs_round_trip() {
        let mut x = 7u32;
        for len in [0usize, 1, 2, 3, 10, 1000, 70_000] {
            let data: Vec<u8> = (0..len)
                .map(|i| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    if i % 97 < 90 || x.is_multiple_of(3) { 0 } else { (x >> 16) as u8 }
                })
                .collect();
            let mut rle = Rle::default();
            data.iter().for_each(|&b| rle.push(b));
            let coded = rle.finish();
            // Decode the runs by the format's rule.
            let (mut out, mut at) = (Vec::new(), 0usize);
            let num = |at: &mut usize| {
                let (mut v, mut s) = (0u64, 0);
                loop {
                    let b = coded[*at];
                    *at += 1;
                    v |= u64::from(b & 0x7f) << s;
                    s += 7;
                    if b & 0x80 == 0 {
                        return v;
                    }
                }
            };
            while at < coded.len() {
                let (z, n) = (num(&mut at), num(&mut at));
                assert!(z > 0 || n > 0, "an empty run");
                out.extend(std::iter::repeat_n(0u8, z as usize));
                out.extend_from_slice(&coded[at..at + n as usize]);
                at += n as usize;
            }
            assert!(out == data, "length {len}");
            if len == 70_000 {
                assert!(coded.len() < len / 5, "{} bytes for {len}", coded.len());
            }
        }
    }
}

//! Finding the operations that rebuild `new` from `old`: suffix-array matching with
//! approximate extension, in the manner of bsdiff (see `docs/delta-format.md`, "Generation").
//!
//! The result is a list of [`Op`]s. Each op says: take `add` bytes of old starting at `old_pos`
//! and add a correction byte to each (the correction is mostly zero), then copy `copy` literal
//! bytes. Ops tile `new` exactly, in order, so the patch stream can be written front to back.

use std::thread;

/// One step of a patch. Ops tile the new file: `ops[i + 1].new_pos == ops[i].new_pos +
/// ops[i].add + ops[i].copy`, starting at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    /// Where this op's output starts in new.
    pub new_pos: usize,
    /// Where the add part reads old.
    pub old_pos: usize,
    /// Bytes produced as `old[old_pos + i] + correction[i]`.
    pub add: usize,
    /// Literal bytes following the add part.
    pub copy: usize,
}

impl Op {
    /// The literal part of this op.
    pub fn extra<'n>(&self, new: &'n [u8]) -> &'n [u8] {
        let start = self.new_pos + self.add;
        &new[start..start + self.copy]
    }
}

/// A suffix array of the old file with a two-byte prefix index that narrows every search to the
/// suffixes sharing the needle's first two bytes.
pub(crate) struct SuffixIndex<'o> {
    old: &'o [u8],
    sa: PackedSa,
    /// For each two-byte prefix `b0 << 8 | b1`: the suffix-array slots `[start, end)` holding it.
    /// (The one suffix of length one sits just before its first byte's buckets, in none.)
    bucket: Vec<(u32, u32)>,
    /// A bit per hash of every 8-byte window of old: a clear bit proves that no match of 8
    /// bytes or more starts with those bytes, so the suffix-array search can be skipped.
    present: Vec<u64>,
    present_shift: u32,
}

/// A suffix array packed to the bits old's positions need (25 for a 24 MB old, not 32): a
/// fifth less memory, where the suffix array is most of what creating a delta holds.
struct PackedSa {
    /// The entries, `width` bits each, little-endian across the words; then the last partial
    /// word and a zero word, so that every entry reads from two whole words.
    words: Vec<i32>,
    width: u32,
}

impl PackedSa {
    /// Packs libsais' suffix array in place and gives the rest of its memory back. Entry `i`
    /// lands in words `i` or below, and word `i` is read before: unread entries are never
    /// overwritten.
    fn pack(mut words: Vec<i32>) -> Self {
        let n = words.len();
        let width = usize::BITS - n.saturating_sub(1).max(1).leading_zeros();
        let (mut acc, mut bits, mut out) = (0u64, 0u32, 0usize);
        for i in 0..n {
            acc |= u64::from(words[i] as u32) << bits;
            bits += width;
            if bits >= 32 {
                words[out] = acc as u32 as i32;
                out += 1;
                acc >>= 32;
                bits -= 32;
            }
        }
        words.truncate(out);
        words.push(acc as u32 as i32);
        words.push(0);
        words.shrink_to_fit();
        Self { words, width }
    }

    /// Entry `i`.
    #[inline]
    fn get(&self, i: usize) -> usize {
        let bit = i * self.width as usize;
        let w = bit / 32;
        let pair = u64::from(self.words[w] as u32) | u64::from(self.words[w + 1] as u32) << 32;
        ((pair >> (bit % 32)) & ((1u64 << self.width) - 1)) as usize
    }
}

/// The presence hash of 8 bytes (little endian), to `64 - shift` bits.
#[inline]
fn window_hash(w: u64, shift: u32) -> usize {
    (w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// Errors building the index.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("the old file is {0} bytes; the suffix-array method handles up to 2 GiB - 1")]
    TooLarge(usize),
    #[error("suffix array construction failed: {0}")]
    Sais(String),
}

impl<'o> SuffixIndex<'o> {
    /// Builds the index; libsais sorts on `threads` threads (OpenMP). Memory: 4 bytes per old
    /// byte while sorting, then the packed suffix array (`log2(old)` bits per old byte), up to
    /// half a byte per old byte (at most 8 MiB) of presence bits, and 512 KiB of buckets.
    pub fn build(old: &'o [u8], threads: usize) -> Result<Self, IndexError> {
        if old.len() >= i32::MAX as usize {
            return Err(IndexError::TooLarge(old.len()));
        }
        // The suffix array on this thread and the prefix buckets beside it; the presence bits
        // once the suffix array is packed, so that they are never in memory beside its
        // unpacked form (the peak of creating a delta).
        let (sa, bucket) = std::thread::scope(|s| {
            let side = s.spawn(|| prefix_buckets(old));
            let sa = suffix_array(old, threads);
            (sa, side.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        });
        let sa = sa?;
        debug_assert_eq!(bucket.last().map_or(0, |b| b.1 as usize), sa.len());
        let sa = PackedSa::pack(sa);
        let (present, present_shift) = presence(old);
        Ok(Self { old, sa, bucket, present, present_shift })
    }

    /// Whether a match of at least 8 bytes can start with `needle`'s first 8 bytes (false
    /// means certainly not; needles shorter than 8 bytes always may).
    #[inline]
    pub fn may_match_8(&self, needle: &[u8]) -> bool {
        let Some(w) = needle.get(..8) else { return true };
        let h =
            window_hash(u64::from_le_bytes(w.try_into().unwrap_or_default()), self.present_shift);
        self.present[h / 64] & (1 << (h % 64)) != 0
    }

    /// The longest prefix of `needle` that occurs in old: `(length, old position)`.
    /// Needles shorter than two bytes, or whose first two bytes never occur, give length 0.
    pub fn longest_match(&self, needle: &[u8]) -> (usize, usize) {
        if needle.len() < 2 {
            return (0, 0);
        }
        let k = usize::from(needle[0]) << 8 | usize::from(needle[1]);
        let (lo, hi_end) = self.bucket[k];
        let (mut lo, hi_end) = (lo as usize, hi_end as usize);
        if lo >= hi_end {
            return (0, 0);
        }
        let mut hi = hi_end - 1;
        let old = self.old;
        // Every suffix in [lo, hi] shares the first two bytes; lcp_lo/lcp_hi are the common
        // prefix lengths of the needle with sa[lo] and sa[hi]; the minimum is shared by all
        // suffixes between them.
        let sa = |i: usize| self.sa.get(i);
        let mut lcp_lo = common_prefix(&old[sa(lo)..], needle);
        let mut lcp_hi = common_prefix(&old[sa(hi)..], needle);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let skip = lcp_lo.min(lcp_hi);
            // The next probe is the middle of one half or the other: both are loaded now
            // (slot and text), so that their cache misses overlap this probe's instead of
            // following it. The searches are nearly all cache misses; this takes a third off
            // the match phase on the ELF pairs, the result unchanged.
            let (a, b) = (lo + (mid - lo) / 2, mid + (hi - mid) / 2);
            let (pa, pb) = (sa(a) + skip, sa(b) + skip);
            std::hint::black_box((old.get(pa).copied(), old.get(pb).copied()));
            let suf = &old[sa(mid)..];
            let l = skip + common_prefix(&suf[skip.min(suf.len())..], &needle[skip..]);
            if l == needle.len() {
                return (l, sa(mid));
            }
            // suffix < needle when it is a proper prefix or its first differing byte is smaller.
            if l == suf.len() || suf[l] < needle[l] {
                lo = mid;
                lcp_lo = l;
            } else {
                hi = mid;
                lcp_hi = l;
            }
        }
        if lcp_lo >= lcp_hi { (lcp_lo, sa(lo)) } else { (lcp_hi, sa(hi)) }
    }
}

/// The suffix array of `old` (libsais, on `threads` threads).
fn suffix_array(old: &[u8], threads: usize) -> Result<Vec<i32>, IndexError> {
    if old.is_empty() {
        return Ok(Vec::new());
    }
    let threads = libsais::ThreadCount::fixed(threads.clamp(1, 64) as u16);
    Ok(libsais::SuffixArrayConstruction::for_text(old)
        .in_owned_buffer32()
        .multi_threaded(threads)
        .run()
        .map_err(|e| IndexError::Sais(e.to_string()))?
        .into_vec())
}

/// For each two-byte prefix, its slots `[start, end)` in the suffix array of `old`.
fn prefix_buckets(old: &[u8]) -> Vec<(u32, u32)> {
    let mut count = vec![0u32; 65536];
    for w in old.windows(2) {
        count[usize::from(w[0]) << 8 | usize::from(w[1])] += 1;
    }
    let mut bucket = vec![(0u32, 0u32); 65536];
    let mut at = 0u32;
    let last = old.last().copied();
    for b0 in 0..256usize {
        if last == Some(b0 as u8) {
            at += 1; // the one-byte suffix sorts before every longer suffix starting with b0
        }
        for b1 in 0..256usize {
            let k = b0 << 8 | b1;
            bucket[k] = (at, at + count[k]);
            at += count[k];
        }
    }
    bucket
}

/// The presence bits of every 8-byte window of `old`, and their hash's shift.
fn presence(old: &[u8]) -> (Vec<u64>, u32) {
    // Two to four bits per old byte (a power of two, at most 8 MiB): at most two fifths set.
    let bits = (old.len().max(1) as u64 * 2).next_power_of_two().clamp(1 << 16, 1 << 26);
    let shift = 64 - bits.trailing_zeros();
    let mut present = vec![0u64; (bits / 64) as usize];
    for w in old.windows(8) {
        let h = window_hash(u64::from_le_bytes(w.try_into().unwrap_or_default()), shift);
        present[h / 64] |= 1 << (h % 64);
    }
    (present, shift)
}

/// Length of the common prefix of `a` and `b`, eight bytes at a time.
#[inline]
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let d = x ^ y;
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Tuning of the scan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanParams {
    /// A new exact match replaces the current alignment only when it is longer than what the
    /// current alignment already matches over the same span by this many bytes, plus the
    /// seek's cost ([`switch_gain`]).
    pub min_gain: usize,
    /// Target chunk of new per thread; chunks are scanned independently and concatenated.
    pub chunk: usize,
    /// Worker threads.
    pub threads: usize,
}

impl Default for ScanParams {
    fn default() -> Self {
        Self { min_gain: 1, chunk: 4 << 20, threads: crate::hash::default_jobs() }
    }
}

/// The cover-selection cost model: what a new alignment at `seek` bytes from where the current
/// one is in old must gain over it, in matched bytes, before the scan switches. A switch costs
/// an op: its control numbers (`min_gain`) and its seek, whose cost grows with the distance's
/// bits (¾ byte a bit). bsdiff's fixed 8 switched too eagerly to far places (seeks were 14 % of
/// the ruff delta) and too lazily near by; the weights are the smallest-delta ones of a grid
/// over the corpus pairs (docs/benchmarks.md).
fn switch_gain(min_gain: usize, seek: isize) -> isize {
    let bits = (usize::BITS - seek.unsigned_abs().leading_zeros()) as isize;
    min_gain as isize + 3 * bits / 4
}

/// Gives back memory of new that the scan is done with ([`crate::fsutil::Pages::release`]).
pub(crate) type Release<'a> = dyn Fn(std::ops::Range<usize>) + Sync + 'a;

/// The scan gives back new behind it in steps of this many bytes.
const RELEASE_STEP: usize = 1 << 20;

/// Computes the ops rebuilding `new` from `old`, giving back each stretch of new it is done
/// with to `release`.
pub(crate) fn diff(
    index: &SuffixIndex<'_>,
    new: &[u8],
    params: ScanParams,
    release: &Release<'_>,
) -> Vec<Op> {
    if new.is_empty() {
        return Vec::new();
    }
    let chunk = params.chunk.max(64 << 10);
    let n_chunks = new.len().div_ceil(chunk);
    let threads = params.threads.clamp(1, n_chunks);
    if threads == 1 {
        return scan(index, new, (0, new.len()), params.min_gain, release);
    }
    let ranges: Vec<(usize, usize)> =
        (0..n_chunks).map(|c| (c * chunk, ((c + 1) * chunk).min(new.len()))).collect();
    run_limited(threads, &ranges, |&range| scan(index, new, range, params.min_gain, release))
        .concat()
}

/// Computes ops for a delta applied in place: new is written in segments of `segment` bytes,
/// and while segment `k` is written only old bytes at or above `(k + 1) * segment - shift`
/// are intact. Each segment is matched against old from such a floor up: segments are
/// grouped so that a group shares one index, built over old from the floor of the group's last
/// segment (the earlier segments of the group give up at most `old / 32` bytes of old they
/// could still read). Ops never cross a segment boundary.
pub(crate) fn diff_in_place(
    old: &[u8],
    new: &[u8],
    segment: usize,
    shift: usize,
    params: ScanParams,
) -> Result<Vec<Op>, IndexError> {
    let segments = new.len().div_ceil(segment);
    let floor = |k: usize| ((k + 1) * segment).saturating_sub(shift).min(old.len());
    let budget = segment.max(old.len() / 32);
    let mut groups: Vec<(usize, usize)> = Vec::new(); // (first segment, end segment)
    let mut k = 0;
    while k < segments {
        let mut end = k + 1;
        while end < segments && floor(end) - floor(k) <= budget {
            end += 1;
        }
        groups.push((k, end));
        k = end;
    }
    let results = run_limited(params.threads.max(1), &groups, |&(first, end)| {
        let base = floor(end - 1);
        // The groups run side by side: one thread each.
        let index = SuffixIndex::build(&old[base..], 1)?;
        let mut ops = Vec::new();
        for k in first..end {
            let (start, stop) = (k * segment, ((k + 1) * segment).min(new.len()));
            let ops_k = scan(&index, new, (start, stop), params.min_gain, &|_| {});
            ops.extend(ops_k.into_iter().map(|mut o| {
                o.old_pos += base;
                o
            }));
        }
        Ok(ops)
    });
    Ok(results.into_iter().collect::<Result<Vec<_>, _>>()?.concat())
}

/// Runs `f` over `items` on up to `threads` threads, results in item order.
pub(crate) fn run_limited<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(items.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Scans `new[start..end]` and returns ops tiling exactly that range. Nothing before the last
/// op's end is read again: the scan gives it back to `release` every [`RELEASE_STEP`] bytes,
/// and the whole range at the end.
fn scan(
    index: &SuffixIndex<'_>,
    new_all: &[u8],
    (start, end): (usize, usize),
    min_gain: usize,
    release: &Release<'_>,
) -> Vec<Op> {
    let old = index.old;
    let new = &new_all[..end];
    let (olen, nlen) = (old.len() as isize, end as isize);
    let at_old = |p: isize| -> Option<u8> { (p >= 0 && p < olen).then(|| old[p as usize]) };

    let mut ops = Vec::new();
    let mut released = start;
    let (mut scan, mut len) = (start as isize, 0isize);
    let (mut last_scan, mut last_pos, mut last_offset) = (start as isize, 0isize, 0isize);
    let mut pos = 0isize;
    while scan < nlen {
        let mut old_score = 0isize;
        scan += len;
        let mut scsc = scan;
        while scan < nlen {
            // Where no 8-byte match can start, the search is skipped: a shorter match could
            // only ever replace the alignment when it equals its score, a case this gives up.
            let needle = &new[scan as usize..];
            let (l, p) =
                if index.may_match_8(needle) { index.longest_match(needle) } else { (0, 0) };
            len = l as isize;
            pos = p as isize;
            while scsc < scan + len {
                if at_old(scsc + last_offset) == Some(new[scsc as usize]) {
                    old_score += 1;
                }
                scsc += 1;
            }
            let gain = switch_gain(min_gain, pos - (scan + last_offset));
            if (len == old_score && len != 0) || len > old_score + gain {
                break;
            }
            if at_old(scan + last_offset) == Some(new[scan as usize]) {
                old_score -= 1;
            }
            scan += 1;
        }
        if len == old_score && scan != nlen {
            continue;
        }
        // Extend the previous alignment forwards while at least half of the bytes agree.
        let (mut s, mut best, mut len_f) = (0isize, 0isize, 0isize);
        let mut i = 0isize;
        while last_scan + i < scan && last_pos + i < olen {
            if old[(last_pos + i) as usize] == new[(last_scan + i) as usize] {
                s += 1;
            }
            i += 1;
            if s * 2 - i > best * 2 - len_f {
                best = s;
                len_f = i;
            }
        }
        // Extend the new match backwards the same way.
        let mut len_b = 0isize;
        if scan < nlen {
            let (mut s, mut best) = (0isize, 0isize);
            let mut i = 1isize;
            while scan >= last_scan + i && pos >= i {
                if old[(pos - i) as usize] == new[(scan - i) as usize] {
                    s += 1;
                }
                if s * 2 - i > best * 2 - len_b {
                    best = s;
                    len_b = i;
                }
                i += 1;
            }
        }
        // Where the two extensions overlap, split at the point that keeps the most agreement.
        if last_scan + len_f > scan - len_b {
            let overlap = (last_scan + len_f) - (scan - len_b);
            let (mut s, mut best, mut len_s) = (0isize, 0isize, 0isize);
            for i in 0..overlap {
                if new[(last_scan + len_f - overlap + i) as usize]
                    == old[(last_pos + len_f - overlap + i) as usize]
                {
                    s += 1;
                }
                if new[(scan - len_b + i) as usize] == old[(pos - len_b + i) as usize] {
                    s -= 1;
                }
                if s > best {
                    best = s;
                    len_s = i + 1;
                }
            }
            len_f += len_s - overlap;
            len_b -= len_s;
        }
        ops.push(Op {
            new_pos: last_scan as usize,
            old_pos: last_pos as usize,
            add: len_f as usize,
            copy: ((scan - len_b) - (last_scan + len_f)) as usize,
        });
        last_scan = scan - len_b;
        last_pos = pos - len_b;
        last_offset = pos - scan;
        if last_scan as usize >= released + RELEASE_STEP {
            release(released..last_scan as usize);
            released = last_scan as usize;
        }
    }
    release(released..end);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rebuild(old: &[u8], new_len: usize, ops: &[Op], new: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(new_len);
        for op in ops {
            assert_eq!(op.new_pos, out.len());
            for i in 0..op.add {
                out.push(
                    old[op.old_pos + i]
                        .wrapping_add(new[op.new_pos + i].wrapping_sub(old[op.old_pos + i])),
                );
            }
            out.extend_from_slice(op.extra(new));
        }
        out
    }

    #[test]
    fn longest_match_finds_the_longest() {
        let old = b"the quick brown fox jumps over the lazy dog; the quick red fox";
        let idx = SuffixIndex::build(old, 2).unwrap();
        let (l, p) = idx.longest_match(b"the quick red cat");
        assert_eq!(l, 14);
        assert_eq!(&old[p..p + l], b"the quick red ");
        assert_eq!(idx.longest_match(b"zz"), (0, 0));
        let (l, p) = idx.longest_match(b"g;");
        assert_eq!((l, &old[p..p + 2]), (2, &b"g;"[..]));
    }

    /// Packed in place, every entry reads back, whatever the width the length gives.
    #[test]
    fn the_packed_suffix_array_reads_back() {
        for n in [0usize, 1, 2, 3, 5, 31, 32, 33, 1000, (1 << 16) + 1] {
            let mut x = n as u64 + 1;
            let values: Vec<i32> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((x >> 33) as usize % n) as i32
                })
                .collect();
            let packed = PackedSa::pack(values.clone());
            assert!(values.iter().enumerate().all(|(i, &v)| packed.get(i) == v as usize), "{n}");
            let width = usize::BITS - n.saturating_sub(1).max(1).leading_zeros();
            assert_eq!(packed.width, width);
            assert_eq!(packed.words.len(), (n * width as usize) / 32 + 2);
        }
    }

    #[test]
    fn ops_tile_new_and_reuse_old() {
        let old: Vec<u8> =
            (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut new = old.clone();
        new.splice(5000..5000, b"inserted bytes".iter().copied());
        new.drain(90_000..91_000);
        for b in new.iter_mut().skip(120_000).step_by(97).take(100) {
            *b = b.wrapping_add(3);
        }
        let idx = SuffixIndex::build(&old, 1).unwrap();
        for threads in [1, 2] {
            let released = std::sync::Mutex::new(Vec::new());
            let params = ScanParams { min_gain: 8, chunk: 64 << 10, threads };
            let ops = diff(&idx, &new, params, &|r| released.lock().unwrap().push(r));
            // New is given back once, all of it (in a piece per 64 KiB chunk on two threads).
            let mut released = released.into_inner().unwrap();
            released.sort_by_key(|r| r.start);
            assert!(released.len() >= if threads == 1 { 1 } else { new.len() >> 16 });
            assert_eq!(released.first().map(|r| r.start), Some(0));
            assert!(released.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(released.last().map(|r| r.end), Some(new.len()));
            assert_eq!(rebuild(&old, new.len(), &ops, &new), new);
            let literal: usize = ops.iter().map(|o| o.copy).sum();
            assert!(literal < 2_000, "{literal} literal bytes");
        }
    }
}

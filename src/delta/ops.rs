//! The otadelta op stream: writing it (this module), and applying it with the device's
//! patcher, `otaforge_applier::patcher`, which the host uses as it is.
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
use super::wire::{put_varint, zigzag};
pub use otaforge_applier::patcher::{CHECKPOINT_LEN, OldImage, Patcher, Sink};
pub use otaforge_applier::{IoError, PatchError};

/// The consumer of a whole decompressed op stream on a host: the device's, with the
/// displacement table in a `Vec`.
pub type StreamPatcher = otaforge_applier::StreamPatcher<Vec<otaforge_applier::Cover>>;

/// A [`StreamPatcher`] for a delta with filter `isa`, from `patcher` (new, or restored).
pub fn stream_patcher(patcher: Patcher, isa: Option<super::Isa>) -> StreamPatcher {
    StreamPatcher::new(patcher, isa, Vec::new())
}

/// The old bytes `at..at + len` of `op`'s add as the corrections are taken against them: as
/// they are, or rewritten by `exec`'s prediction (into `buf`).
pub(crate) fn add_source<'b>(
    old: &'b [u8],
    op: &Op,
    exec: Option<otaforge_applier::Exec<'_>>,
    (at, len): (usize, usize),
    buf: &'b mut Vec<u8>,
) -> std::io::Result<&'b [u8]> {
    let raw = &old[at..at + len];
    let Some(exec) = exec else { return Ok(raw) };
    buf.clear();
    buf.extend_from_slice(raw);
    let s = op.old_pos as u64;
    let disp = op.new_pos as i64 - op.old_pos as i64;
    exec.predict(&mut &old[..], (s, s + op.add as u64), disp, at as u64, buf)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(buf)
}

/// How many correction bytes of `ops` are not zero, with or without `exec`'s prediction: a
/// cheap stand-in for the compressed size when choosing whether to predict.
pub(crate) fn nonzero_corrections(
    old: &[u8],
    new: &[u8],
    ops: &[Op],
    exec: Option<otaforge_applier::Exec<'_>>,
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
    exec: Option<otaforge_applier::Exec<'_>>,
    sink: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    const PIECE: usize = 1 << 20;
    let mut buf = Vec::with_capacity(PIECE + 64);
    if let Some(exec) = exec {
        if let Some(abs) = exec.abs {
            put_varint(&mut buf, abs.base);
            put_varint(&mut buf, abs.len);
        }
        super::exec::encode(exec.table, &mut buf);
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

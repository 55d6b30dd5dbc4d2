//! Colin Percival's BSDIFF40 format: a 32-byte header and three bzip2 streams (controls,
//! corrections, literals). Written so Debian `bspatch` and PyPI `bsdiff4` apply our patches, and
//! read by translating it into the otadelta op stream, so one bounds-checked [`Patcher`] applies
//! both formats.

use std::io::{self, Read, Write};

use super::diff::Op;
use super::ops::{OldImage, PatchError, Patcher, Sink};
use super::wire::{put_varint, zigzag};

/// The magic at offset 0.
pub const MAGIC: &[u8; 8] = b"BSDIFF40";
const HEADER: usize = 32;

/// Why a BSDIFF40 file is refused before patching starts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Bsdiff40Error {
    /// Shorter than the header.
    #[error("truncated BSDIFF40 header ({0} bytes, need 32)")]
    Short(usize),
    /// A header length is negative or points past the end of the file.
    #[error("BSDIFF40 header field {field} is {value}, impossible for a {file_len}-byte patch")]
    Field {
        /// `ctrl_len`, `diff_len` or `new_size`.
        field: &'static str,
        /// The decoded value.
        value: i64,
        /// The patch file's length.
        file_len: usize,
    },
}

/// Encodes `v` the way bsdiff does: 63-bit magnitude little endian, sign in the top bit.
pub fn offt_out(v: i64) -> [u8; 8] {
    let mut b = v.unsigned_abs().to_le_bytes();
    if v < 0 {
        b[7] |= 0x80;
    }
    b
}

/// Decodes a bsdiff integer. `-0` reads as 0.
pub fn offt_in(b: [u8; 8]) -> i64 {
    let neg = b[7] & 0x80 != 0;
    let mut m = b;
    m[7] &= 0x7f;
    let v = i64::from_le_bytes(m);
    if neg { -v } else { v }
}

/// Writes a BSDIFF40 patch for `ops` (which tile `new`).
pub(crate) fn write(old: &[u8], new: &[u8], ops: &[Op]) -> io::Result<Vec<u8>> {
    let level = bzip2::Compression::best();
    let mut ctrl = bzip2::write::BzEncoder::new(Vec::new(), level);
    let mut diff = bzip2::write::BzEncoder::new(Vec::new(), level);
    let mut extra = bzip2::write::BzEncoder::new(Vec::new(), level);
    let mut cursor = 0i64;
    if let Some(first) = ops.first().filter(|o| o.old_pos != 0) {
        // bspatch starts reading old at 0; a leading no-op triple moves the cursor.
        ctrl.write_all(&[offt_out(0), offt_out(0), offt_out(first.old_pos as i64)].concat())?;
        cursor = first.old_pos as i64;
    }
    let mut buf = Vec::with_capacity(1 << 16);
    for (i, op) in ops.iter().enumerate() {
        debug_assert_eq!(cursor, op.old_pos as i64);
        let after = (op.old_pos + op.add) as i64;
        let seek = ops.get(i + 1).map_or(0, |n| n.old_pos as i64 - after);
        ctrl.write_all(
            &[offt_out(op.add as i64), offt_out(op.copy as i64), offt_out(seek)].concat(),
        )?;
        for (o, n) in old[op.old_pos..op.old_pos + op.add]
            .chunks(1 << 16)
            .zip(new[op.new_pos..op.new_pos + op.add].chunks(1 << 16))
        {
            buf.clear();
            buf.extend(o.iter().zip(n).map(|(o, n)| n.wrapping_sub(*o)));
            diff.write_all(&buf)?;
        }
        extra.write_all(op.extra(new))?;
        cursor = after + seek;
    }
    let (ctrl, diff, extra) = (ctrl.finish()?, diff.finish()?, extra.finish()?);
    let mut out = Vec::with_capacity(HEADER + ctrl.len() + diff.len() + extra.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&offt_out(ctrl.len() as i64));
    out.extend_from_slice(&offt_out(diff.len() as i64));
    out.extend_from_slice(&offt_out(new.len() as i64));
    out.extend_from_slice(&ctrl);
    out.extend_from_slice(&diff);
    out.extend_from_slice(&extra);
    Ok(out)
}

/// The parsed header: where the three streams are and how big new is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Compressed control stream length.
    pub ctrl_len: u64,
    /// Compressed correction stream length.
    pub diff_len: u64,
    /// Compressed literal stream length (the rest of the file).
    pub extra_len: u64,
    /// The new file's size.
    pub new_size: u64,
}

/// Parses and checks the header of `patch`.
pub fn layout(patch: &[u8]) -> Result<Layout, Bsdiff40Error> {
    if patch.len() < HEADER {
        return Err(Bsdiff40Error::Short(patch.len()));
    }
    let field = |i: usize| offt_in(patch[8 * i..8 * i + 8].try_into().unwrap_or_default());
    let (ctrl, diff, new) = (field(1), field(2), field(3));
    let bad = |field, value| Bsdiff40Error::Field { field, value, file_len: patch.len() };
    let room = (patch.len() - HEADER) as i64;
    if ctrl < 0 || ctrl > room {
        return Err(bad("ctrl_len", ctrl));
    }
    if diff < 0 || diff > room - ctrl {
        return Err(bad("diff_len", diff));
    }
    if new < 0 {
        return Err(bad("new_size", new));
    }
    Ok(Layout {
        ctrl_len: ctrl as u64,
        diff_len: diff as u64,
        extra_len: (room - ctrl - diff) as u64,
        new_size: new as u64,
    })
}

/// Failure while applying a BSDIFF40 patch.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The header is wrong.
    #[error(transparent)]
    Header(#[from] Bsdiff40Error),
    /// A bzip2 stream is corrupt or ends early.
    #[error("{stream} stream: {message}")]
    Stream {
        /// `control`, `diff` or `extra`.
        stream: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A control value is out of bounds.
    #[error(transparent)]
    Patch(#[from] PatchError),
}

/// Applies a BSDIFF40 patch, handing new out in order through `out`.
pub fn apply<O: OldImage + ?Sized>(
    patch: &[u8],
    old_len: u64,
    old: &mut O,
    out: &mut Sink<'_>,
) -> Result<(), ApplyError> {
    let l = layout(patch)?;
    let body = &patch[HEADER..];
    let (ctrl, rest) = body.split_at(l.ctrl_len as usize);
    let (diff, extra) = rest.split_at(l.diff_len as usize);
    let mut ctrl = bzip2::read::BzDecoder::new(ctrl);
    let mut diff = bzip2::read::BzDecoder::new(diff);
    let mut extra = bzip2::read::BzDecoder::new(extra);
    let mut patcher = Patcher::new(old_len, l.new_size);
    let mut scratch = [0u8; 4096];
    let mut buf = vec![0u8; 1 << 16];
    let mut control = Vec::with_capacity(32);
    let mut pending_seek = 0i64;
    let stream_err = |stream: &'static str| {
        move |e: io::Error| ApplyError::Stream { stream, message: e.to_string() }
    };
    while patcher.produced() < l.new_size {
        let mut triple = [0u8; 24];
        ctrl.read_exact(&mut triple).map_err(stream_err("control"))?;
        let v = |i: usize| offt_in(triple[8 * i..8 * i + 8].try_into().unwrap_or_default());
        let (add, copy, seek) = (v(0), v(1), v(2));
        if add < 0 || copy < 0 {
            let value = add.min(copy);
            return Err(PatchError::NegativeLength { new_pos: patcher.produced(), value }.into());
        }
        control.clear();
        let here = if add > 0 { std::mem::take(&mut pending_seek) } else { 0 };
        put_varint(&mut control, zigzag(here));
        put_varint(&mut control, add as u64);
        put_varint(&mut control, copy as u64);
        patcher.feed(&control, old, &mut scratch, out)?;
        for (reader, len, name) in [
            (&mut diff as &mut dyn Read, add as u64, "diff"),
            (&mut extra as &mut dyn Read, copy as u64, "extra"),
        ] {
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                reader.read_exact(&mut buf[..n]).map_err(stream_err(name))?;
                patcher.feed(&buf[..n], old, &mut scratch, out)?;
                left -= n as u64;
            }
        }
        pending_seek = pending_seek.saturating_add(seek);
    }
    patcher.finish()?;
    // Each stream must end exactly here, with its bzip2 trailer intact: a truncated patch can
    // otherwise yield every needed byte before the decoder notices the missing end.
    for (reader, name) in [
        (&mut ctrl as &mut dyn Read, "control"),
        (&mut diff as &mut dyn Read, "diff"),
        (&mut extra as &mut dyn Read, "extra"),
    ] {
        let mut probe = [0u8; 1];
        match reader.read(&mut probe) {
            Ok(0) => {}
            Ok(_) => {
                return Err(ApplyError::Stream {
                    stream: name,
                    message: "data after the end of the patch".into(),
                });
            }
            Err(e) => return Err(stream_err(name)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offt_is_sign_magnitude() {
        assert_eq!(offt_out(-1), [1, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(offt_in(offt_out(-1)), -1);
        assert_eq!(offt_in([0, 0, 0, 0, 0, 0, 0, 0x80]), 0);
        for v in [0, 5, -5, i64::MAX, -i64::MAX, 1 << 40] {
            assert_eq!(offt_in(offt_out(v)), v);
        }
    }

    #[test]
    fn header_lengths_are_checked() {
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&offt_out(100));
        p.extend_from_slice(&offt_out(0));
        p.extend_from_slice(&offt_out(1));
        assert!(matches!(layout(&p), Err(Bsdiff40Error::Field { field: "ctrl_len", .. })));
        assert_eq!(layout(&p[..10]), Err(Bsdiff40Error::Short(10)));
    }
}

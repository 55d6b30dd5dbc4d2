//! The applier's errors. They carry numbers and static text only (nothing to allocate), and
//! implement `Display`; with the `std` feature also `std::error::Error`. (Hand-written rather
//! than `thiserror`: its `no_std` support needs `core::error::Error`, Rust 1.81, and this crate
//! builds with Debian's 1.63.)

use core::fmt;

pub use crate::header::HeaderError;

/// A failure the device's own I/O reported (flash, the delta's bytes, the output): the code
/// its callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoError {
    /// The callback's code (never 0).
    pub code: i32,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "I/O failed with code {}", self.code)
    }
}

/// What is wrong with a patch stream. Every check happens before the op it guards produces a
/// single byte of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchError {
    /// A control number has more than 10 LEB128 bytes or overflows 64 bits.
    BadVarint {
        /// Offset in the decompressed stream.
        offset: u64,
    },
    /// An op would write beyond the declared new size.
    WritePastNew {
        /// Where the op starts in new.
        new_pos: u64,
        /// Bytes it would write.
        len: u64,
        /// The declared new size.
        new_len: u64,
    },
    /// An op would read old outside `[0, old size)`.
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
    NegativeLength {
        /// Where the op starts in new.
        new_pos: u64,
        /// The value found.
        value: i64,
    },
    /// Patch bytes remain after the new file is complete.
    TrailingData,
    /// The stream ended before the new file was complete.
    Truncated {
        /// Bytes produced.
        produced: u64,
        /// The declared new size.
        expected: u64,
    },
    /// Reading old or writing new failed.
    Io(IoError),
    /// A saved patcher state is damaged or belongs to another patch.
    BadCheckpoint(&'static str),
    /// The displacement table of an executable filter is malformed, or does not fit.
    BadTable(&'static str),
    /// In place: an op reads old bytes whose flash segment has already been overwritten.
    ReadsOverwritten {
        /// Where the op starts in new.
        new_pos: u64,
        /// First old byte it reads.
        start: u64,
        /// The lowest old byte still intact when the op's last add byte is written.
        floor: u64,
    },
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PatchError::BadVarint { offset } => {
                write!(f, "malformed control number at patch stream offset {offset}")
            }
            PatchError::WritePastNew { new_pos, len, new_len } => write!(
                f,
                "op at new offset {new_pos} writes {len} bytes, past the declared new size {new_len}"
            ),
            PatchError::ReadOutsideOld { new_pos, start, end, old_len } => write!(
                f,
                "op at new offset {new_pos} reads old bytes {start}..{end}, outside the old file's {old_len} bytes"
            ),
            PatchError::NegativeLength { new_pos, value } => {
                write!(f, "op at new offset {new_pos} has the negative length {value}")
            }
            PatchError::TrailingData => {
                f.write_str("the patch stream continues after the new file is complete")
            }
            PatchError::Truncated { produced, expected } => {
                write!(f, "the patch stream ends after {produced} of {expected} new bytes")
            }
            PatchError::Io(e) => write!(f, "reading old or writing new: {e}"),
            PatchError::BadCheckpoint(why) => {
                write!(f, "the saved patcher state is unusable: {why}")
            }
            PatchError::BadTable(why) => write!(f, "bad displacement table: {why}"),
            PatchError::ReadsOverwritten { new_pos, start, floor } => write!(
                f,
                "op at new offset {new_pos} reads old byte {start}, which in place is already overwritten (old bytes below {floor} are gone by then)"
            ),
        }
    }
}

/// Why an LZMA stream does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LzmaError {
    /// The properties byte is out of range, or the buffers do not fit it.
    Setup(&'static str),
    /// The stream is corrupt.
    Corrupt(&'static str),
    /// The byte source failed or ended early.
    Source(IoError),
    /// Reading what a primed decoder's window holds before its buffer (old, or new already
    /// written) failed.
    Window(IoError),
}

impl fmt::Display for LzmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LzmaError::Setup(why) => write!(f, "LZMA setup: {why}"),
            LzmaError::Corrupt(why) => write!(f, "corrupt LZMA stream: {why}"),
            LzmaError::Source(e) => write!(f, "reading the LZMA stream: {e}"),
            LzmaError::Window(e) => write!(f, "reading the LZMA window (old or new): {e}"),
        }
    }
}

/// Why applying a delta on a device stopped. The caller may call again after any of these
/// (a power cut shows as [`ApplyError::Flash`]): the journal says where to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyError {
    /// The header is refused.
    Header(HeaderError),
    /// The delta's bytes do not hash to its digest.
    Digest,
    /// The signature policy refused the delta: signed with no verifier, unsigned with one, or
    /// a signature the verifier rejected.
    Signature(&'static str),
    /// The old image is not the one the delta was made from (its SHA-256 is given).
    WrongOld([u8; 32]),
    /// What was written is not the declared new image (its SHA-256 is given).
    WrongNew([u8; 32]),
    /// The op stream is refused.
    Patch(PatchError),
    /// The payload does not decompress.
    Decompress(LzmaError),
    /// Reading the delta's bytes failed.
    Source(IoError),
    /// The payload decompressed to more or fewer bytes than the header's `stream_len`.
    StreamLength {
        /// Declared.
        expected: u64,
        /// Decompressed (so far, when too long).
        actual: u64,
    },
    /// The flash holding new (and, in place, old) failed.
    Flash(IoError),
    /// Loading or saving the journal failed.
    Journal(IoError),
    /// The journal holds a half-done update of another delta.
    ForeignRecord,
    /// The journal's record does not fit this delta's layout.
    Inconsistent,
    /// The slot is smaller than the delta's in-place layout needs.
    SlotTooSmall {
        /// The slot's size.
        slot: u64,
        /// What the layout needs.
        needed: u64,
    },
    /// The delta or its settings are not ones this applier handles (the message says which).
    Unsupported(&'static str),
    /// The work memory given is too small (this many bytes of the named buffer are needed).
    Work {
        /// Which buffer.
        buffer: &'static str,
        /// Bytes (or entries, for covers) it needs.
        needed: u64,
    },
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ApplyError::Header(e) => write!(f, "bad otadelta header: {e}"),
            ApplyError::Digest => f.write_str("the delta is corrupt: its digest does not match"),
            ApplyError::Signature(why) => write!(f, "signature: {why}"),
            ApplyError::WrongOld(_) => {
                f.write_str("wrong old image: it is not the one the delta was made from")
            }
            ApplyError::WrongNew(_) => {
                f.write_str("the rebuilt image does not match the delta's new digest")
            }
            ApplyError::Patch(e) => write!(f, "corrupt patch: {e}"),
            ApplyError::Decompress(e) => write!(f, "the delta payload does not decompress: {e}"),
            ApplyError::Source(e) => write!(f, "reading the delta: {e}"),
            ApplyError::StreamLength { expected, actual } => write!(
                f,
                "the payload decompresses to {actual} bytes, the header declares {expected}"
            ),
            ApplyError::Flash(e) => write!(f, "flash: {e}"),
            ApplyError::Journal(e) => write!(f, "journal: {e}"),
            ApplyError::ForeignRecord => f.write_str(
                "the slot holds a half-done in-place update from another delta; finish that one first",
            ),
            ApplyError::Inconsistent => f.write_str("the journal's record is inconsistent"),
            ApplyError::SlotTooSmall { slot, needed } => {
                write!(f, "the slot is {slot} bytes; this delta needs {needed}")
            }
            ApplyError::Unsupported(why) => write!(f, "unsupported: {why}"),
            ApplyError::Work { buffer, needed } => {
                write!(f, "the work memory is too small: the {buffer} needs {needed}")
            }
        }
    }
}

impl From<PatchError> for ApplyError {
    fn from(e: PatchError) -> Self {
        ApplyError::Patch(e)
    }
}

impl From<HeaderError> for ApplyError {
    fn from(e: HeaderError) -> Self {
        ApplyError::Header(e)
    }
}

#[cfg(feature = "std")]
mod std_impls {
    impl std::error::Error for super::IoError {}
    impl std::error::Error for super::PatchError {}
    impl std::error::Error for super::LzmaError {}
    impl std::error::Error for super::HeaderError {}
    impl std::error::Error for super::ApplyError {}
}

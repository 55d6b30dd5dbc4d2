//! The `extern "C"` functions and `#[repr(C)]` types. Every `unsafe` block here dereferences a
//! pointer the caller passed or calls one of its callbacks; the safety contract each relies on
//! is the one stated in the function's documentation (and in the header).

#![allow(unsafe_code)]

use core::ffi::c_void;

use otaforge_applier::device::{self, Work};
use otaforge_applier::inplace::{Flash, FlashJournal};
use otaforge_applier::{ApplyError, Header, IoError, OldImage};

/// C's `char` (`core::ffi::c_char` is Rust 1.64; cbindgen writes `char` for this name).
#[allow(non_camel_case_types)]
#[cfg(any(target_arch = "arm", target_arch = "aarch64"))]
type c_char = u8;
#[allow(non_camel_case_types)]
#[cfg(not(any(target_arch = "arm", target_arch = "aarch64")))]
type c_char = i8;

/// Success.
pub const OTADELTA_OK: i32 = 0;
/// The header is refused (not an otadelta, another version, a bad field, a wrong length).
pub const OTADELTA_ERR_HEADER: i32 = -1;
/// The delta's bytes do not match its digest (corrupt or truncated download).
pub const OTADELTA_ERR_DIGEST: i32 = -2;
/// The signature policy refused the delta.
pub const OTADELTA_ERR_SIGNATURE: i32 = -3;
/// The old image is not the one the delta was made from.
pub const OTADELTA_ERR_WRONG_OLD: i32 = -4;
/// What was written is not the delta's new image.
pub const OTADELTA_ERR_WRONG_NEW: i32 = -5;
/// The op stream is refused (a control value out of bounds, a bad table).
pub const OTADELTA_ERR_CORRUPT: i32 = -6;
/// The payload does not decompress, or to the wrong length.
pub const OTADELTA_ERR_DECOMPRESS: i32 = -7;
/// Reading the delta's bytes failed (its callback returned non-zero).
pub const OTADELTA_ERR_READ_DELTA: i32 = -8;
/// A flash callback (or the old image's read) returned non-zero: a power cut, typically.
pub const OTADELTA_ERR_FLASH: i32 = -9;
/// The journal's flash failed, or its unit is smaller than one record.
pub const OTADELTA_ERR_JOURNAL: i32 = -10;
/// The journal holds a half-done update of another delta: finish that one first.
pub const OTADELTA_ERR_FOREIGN_JOURNAL: i32 = -11;
/// The journal's record does not fit this delta.
pub const OTADELTA_ERR_INCONSISTENT: i32 = -12;
/// The slot is smaller than the delta needs.
pub const OTADELTA_ERR_SLOT_TOO_SMALL: i32 = -13;
/// A delta this applier does not handle (not method 1 stored or LZMA nor method 2 with LZMA,
/// not in place, ...).
pub const OTADELTA_ERR_UNSUPPORTED: i32 = -14;
/// The work memory is smaller than `otadelta_inspect` says.
pub const OTADELTA_ERR_WORK: i32 = -15;
/// A null pointer or a missing callback.
pub const OTADELTA_ERR_ARGUMENT: i32 = -16;

/// Reads `len` bytes at `addr` into `buf`; returns 0, or non-zero on failure.
pub type OtadeltaReadFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, addr: u64, buf: *mut u8, len: usize) -> i32>;
/// Programs `len` erased bytes at `addr` from `data`; returns 0, or non-zero on failure.
pub type OtadeltaWriteFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, addr: u64, data: *const u8, len: usize) -> i32>;
/// Erases `[addr, addr + len)` (whole erase units); returns 0, or non-zero on failure.
pub type OtadeltaEraseFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, addr: u64, len: u64) -> i32>;
/// Checks an Ed25519 signature (64 bytes) by the key `key_id` (32 bytes) over `message`
/// (`message_len` bytes); returns 0 when it verifies with a key the device trusts.
pub type OtadeltaVerifyFn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        key_id: *const u8,
        signature: *const u8,
        message: *const u8,
        message_len: usize,
    ) -> i32,
>;

/// Bytes read at any offset: the delta (in a download partition), or the old image.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OtadeltaReader {
    /// Passed to `read`.
    pub ctx: *mut c_void,
    /// The read callback.
    pub read: OtadeltaReadFn,
    /// The size in bytes.
    pub len: u64,
}

/// A flash region: addresses start at 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OtadeltaFlash {
    /// Passed to the callbacks.
    pub ctx: *mut c_void,
    /// Reads.
    pub read: OtadeltaReadFn,
    /// Erases whole units.
    pub erase: OtadeltaEraseFn,
    /// Programs erased bytes.
    pub write: OtadeltaWriteFn,
}

/// The progress journal: two erase units of `unit` bytes at `addr` of `flash`, written
/// alternately (`unit` at least `OTADELTA_JOURNAL_FRAME` bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OtadeltaJournal {
    /// The flash holding the journal.
    pub flash: OtadeltaFlash,
    /// Address of the first unit.
    pub addr: u64,
    /// Erase unit size.
    pub unit: u64,
}

/// Bytes one journal save writes (a unit must hold them).
pub const OTADELTA_JOURNAL_FRAME: usize = 138;
/// Covers the MCU profile's displacement table holds at most.
pub const OTADELTA_MCU_COVERS: usize = 256;

// The header carries the numbers as literals (cbindgen reads no paths): held to the applier's.
const _: () = assert!(OTADELTA_JOURNAL_FRAME == otaforge_applier::inplace::FRAME_LEN);
const _: () = assert!(OTADELTA_MCU_COVERS == otaforge_applier::exec::MCU_COVERS);

/// Memory lent to the applier for one call: sizes from `otadelta_inspect`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OtadeltaWork {
    /// LZMA probabilities.
    pub probs: *mut u16,
    /// How many (at least `OtadeltaInfo.probs_len`).
    pub probs_len: usize,
    /// The LZMA dictionary (for method 2, the tail of what was decoded).
    pub dict: *mut u8,
    /// Its bytes (at least `OtadeltaInfo.dict_len`).
    pub dict_len: usize,
    /// The displacement table: three `uint32_t` per cover.
    pub covers: *mut u32,
    /// How many covers fit (the MCU profile writes at most `OTADELTA_MCU_COVERS`).
    pub covers_len: usize,
}

/// What a delta's header says, and the work memory it needs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct OtadeltaInfo {
    /// Old image size.
    pub old_size: u64,
    /// New image size.
    pub new_size: u64,
    /// 1 the op stream, 2 patch-from (a device applies it with LZMA, A/B), 3 split.
    pub method: u8,
    /// 0 stored, 1 zstd, 2 LZMA.
    pub compression: u8,
    /// Executable filter: 0 none, 1 Thumb-2, 2 AArch64, 3 x86-64, 4 A32.
    pub filter: u8,
    /// 1 when a signature block follows the payload.
    pub is_signed: u8,
    /// 1 when the delta applies in place.
    pub in_place: u8,
    /// In place: segment size in bytes.
    pub segment: u64,
    /// In place: how far old moves up the slot.
    pub shift: u64,
    /// In place: the smallest slot the delta applies in.
    pub slot_needed: u64,
    /// LZMA probabilities to lend (`uint16_t`s).
    pub probs_len: usize,
    /// Dictionary bytes to lend.
    pub dict_len: usize,
    /// Covers to lend (0 without a filter).
    pub covers_len: usize,
    /// 1 when absolute pointers into old are predicted too (header flags bit 2; the work
    /// memory to lend is the same).
    pub abs_pointers: u8,
}

/// A signature verifier; `verify` null means none (then only unsigned deltas are accepted).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OtadeltaVerifier {
    /// Passed to `verify`.
    pub ctx: *mut c_void,
    /// The check.
    pub verify: OtadeltaVerifyFn,
}

fn code(e: ApplyError) -> i32 {
    match e {
        ApplyError::Header(_) => OTADELTA_ERR_HEADER,
        ApplyError::Digest => OTADELTA_ERR_DIGEST,
        ApplyError::Signature(_) => OTADELTA_ERR_SIGNATURE,
        ApplyError::WrongOld(_) => OTADELTA_ERR_WRONG_OLD,
        ApplyError::WrongNew(_) => OTADELTA_ERR_WRONG_NEW,
        ApplyError::Patch(_) => OTADELTA_ERR_CORRUPT,
        ApplyError::Decompress(_) | ApplyError::StreamLength { .. } => OTADELTA_ERR_DECOMPRESS,
        ApplyError::Source(_) => OTADELTA_ERR_READ_DELTA,
        ApplyError::Flash(_) => OTADELTA_ERR_FLASH,
        ApplyError::Journal(_) => OTADELTA_ERR_JOURNAL,
        ApplyError::ForeignRecord => OTADELTA_ERR_FOREIGN_JOURNAL,
        ApplyError::Inconsistent => OTADELTA_ERR_INCONSISTENT,
        ApplyError::SlotTooSmall { .. } => OTADELTA_ERR_SLOT_TOO_SMALL,
        ApplyError::Unsupported(_) => OTADELTA_ERR_UNSUPPORTED,
        ApplyError::Work { .. } => OTADELTA_ERR_WORK,
    }
}

fn status(r: Result<(), ApplyError>) -> i32 {
    r.map_or_else(code, |()| OTADELTA_OK)
}

fn io(rc: i32) -> Result<(), IoError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(IoError { code: rc })
    }
}

/// An [`OtadeltaReader`] with its callback checked.
#[derive(Clone, Copy)]
struct Reader {
    ctx: *mut c_void,
    read: unsafe extern "C" fn(*mut c_void, u64, *mut u8, usize) -> i32,
    len: u64,
}

impl Reader {
    /// # Safety
    /// `r` is null or points to a valid `OtadeltaReader` whose callback honours its contract.
    unsafe fn new(r: *const OtadeltaReader) -> Option<Self> {
        // SAFETY: the caller's contract.
        let r = unsafe { r.as_ref() }?;
        Some(Self { ctx: r.ctx, read: r.read?, len: r.len })
    }
}

impl OldImage for Reader {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if pos.checked_add(buf.len() as u64).map_or(true, |e| e > self.len) {
            return Err(IoError { code: OTADELTA_ERR_ARGUMENT });
        }
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes; the callback's contract
        // (stated in the header) is to write at most that many.
        io(unsafe { (self.read)(self.ctx, pos, buf.as_mut_ptr(), buf.len()) })
    }
}

/// An [`OtadeltaFlash`] with its callbacks checked.
#[derive(Clone, Copy)]
struct CFlash {
    ctx: *mut c_void,
    read: unsafe extern "C" fn(*mut c_void, u64, *mut u8, usize) -> i32,
    erase: unsafe extern "C" fn(*mut c_void, u64, u64) -> i32,
    write: unsafe extern "C" fn(*mut c_void, u64, *const u8, usize) -> i32,
}

impl CFlash {
    fn new(f: &OtadeltaFlash) -> Option<Self> {
        Some(Self { ctx: f.ctx, read: f.read?, erase: f.erase?, write: f.write? })
    }
}

impl Flash for CFlash {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), IoError> {
        // SAFETY: as in `Reader::read_at`.
        io(unsafe { (self.read)(self.ctx, addr, buf.as_mut_ptr(), buf.len()) })
    }
    fn erase(&mut self, addr: u64, len: u64) -> Result<(), IoError> {
        // SAFETY: the callback receives only numbers.
        io(unsafe { (self.erase)(self.ctx, addr, len) })
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), IoError> {
        // SAFETY: `data` is valid for `data.len()` bytes of reads for the call.
        io(unsafe { (self.write)(self.ctx, addr, data.as_ptr(), data.len()) })
    }
}

/// # Safety
/// `j` is null or points to a valid `OtadeltaJournal`.
unsafe fn journal_of(j: *const OtadeltaJournal) -> Option<FlashJournal<CFlash>> {
    // SAFETY: the caller's contract.
    let j = unsafe { j.as_ref() }?;
    Some(FlashJournal { flash: CFlash::new(&j.flash)?, addr: j.addr, unit: j.unit })
}

/// Borrows `len` elements at `ptr` (an empty slice for a null pointer or zero length).
///
/// # Safety
/// A non-null `ptr` is valid for reads and writes of `len` elements, aligned, and not used
/// elsewhere for `'a`.
unsafe fn slice<'a, T>(ptr: *mut T, len: usize) -> &'a mut [T] {
    if ptr.is_null() || len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's contract.
    unsafe { core::slice::from_raw_parts_mut(ptr, len) }
}

/// # Safety
/// `w` is null or points to a valid `OtadeltaWork` whose buffers hold what it says.
unsafe fn work_of<'a>(w: *const OtadeltaWork) -> Option<Work<'a>> {
    // SAFETY: the caller's contract.
    let w = unsafe { w.as_ref() }?;
    // SAFETY: the caller's contract covers each buffer; `[u32; 3]` has `u32`'s alignment and
    // `covers_len` covers are `3 * covers_len` u32s.
    unsafe {
        Some(Work {
            probs: slice(w.probs, w.probs_len),
            dict: slice(w.dict, w.dict_len),
            covers: slice(w.covers.cast::<[u32; 3]>(), w.covers_len),
        })
    }
}

/// Checks the delta (header, length, digest, signature policy) and returns its header.
///
/// # Safety
/// `verifier` is null or valid; its callback honours its contract.
unsafe fn check(
    delta: &mut Reader,
    verifier: *const OtadeltaVerifier,
) -> Result<Header, ApplyError> {
    // SAFETY: the caller's contract.
    let v = unsafe { verifier.as_ref() }.and_then(|v| v.verify.map(|f| (v.ctx, f)));
    let len = delta.len;
    match v {
        None => device::check(delta, len, None),
        Some((ctx, f)) => {
            let mut verify = |kid: &[u8; 32], sig: &[u8; 64], msg: &[u8; 54]| {
                // SAFETY: the three buffers are valid for reads of their lengths for the call.
                unsafe { f(ctx, kid.as_ptr(), sig.as_ptr(), msg.as_ptr(), msg.len()) == 0 }
            };
            device::check(delta, len, Some(&mut verify))
        }
    }
}

/// Reads the delta's header (no digest check) into `info`, with the work memory it needs.
///
/// # Safety
/// `delta` and `info` point to valid objects; `delta`'s callback reads at most `len` bytes
/// into its buffer.
#[no_mangle]
pub unsafe extern "C" fn otadelta_inspect(
    delta: *const OtadeltaReader,
    info: *mut OtadeltaInfo,
) -> i32 {
    // SAFETY: the caller's contract.
    let (mut r, info) = match (unsafe { Reader::new(delta) }, unsafe { info.as_mut() }) {
        (Some(r), Some(info)) => (r, info),
        _ => return OTADELTA_ERR_ARGUMENT,
    };
    let mut head = [0u8; otaforge_applier::header::HEADER_LEN];
    let n = r.len.min(head.len() as u64) as usize;
    if let Err(e) = r.read_at(0, &mut head[..n]) {
        return code(ApplyError::Source(e));
    }
    let h = match Header::decode(&head[..n]) {
        Ok(h) => h,
        Err(e) => return code(e.into()),
    };
    let (probs_len, dict_len, covers_len) = device::needs(&h);
    *info = OtadeltaInfo {
        old_size: h.old_size,
        new_size: h.new_size,
        method: h.method.code(),
        compression: h.compression.code(),
        filter: h.filter.map_or(0, |f| f.code()),
        is_signed: u8::from(h.signed),
        in_place: u8::from(h.in_place.is_some()),
        segment: h.in_place.map_or(0, |ip| ip.segment()),
        shift: h.in_place.map_or(0, |ip| ip.shift()),
        slot_needed: h.slot_needed(),
        probs_len,
        dict_len,
        covers_len,
        abs_pointers: u8::from(h.abs_pointers),
    };
    OTADELTA_OK
}

/// Applies (or resumes) an A/B delta: old read through `old`, new written to `new_slot`
/// (`slot_len` bytes), erased and journaled `segment` bytes at a time (a multiple of its erase
/// unit). Call again after any error: it carries on from `journal`. Clear the journal
/// (`otadelta_journal_clear`) before the next update.
///
/// # Safety
/// Every pointer is valid (`verifier` may be null); the callbacks honour their contracts;
/// `work`'s buffers are valid, aligned and not used elsewhere during the call.
#[no_mangle]
pub unsafe extern "C" fn otadelta_apply_ab(
    delta: *const OtadeltaReader,
    verifier: *const OtadeltaVerifier,
    old: *const OtadeltaReader,
    new_slot: *const OtadeltaFlash,
    slot_len: u64,
    segment: u64,
    journal: *const OtadeltaJournal,
    work: *const OtadeltaWork,
) -> i32 {
    // SAFETY: the caller's contract, for each pointer.
    let parts = unsafe {
        (
            Reader::new(delta),
            Reader::new(old),
            new_slot.as_ref().and_then(CFlash::new),
            journal_of(journal),
            work_of(work),
        )
    };
    let (mut d, mut o, mut new, mut j, w) = match parts {
        (Some(d), Some(o), Some(new), Some(j), Some(w)) => (d, o, new, j, w),
        _ => return OTADELTA_ERR_ARGUMENT,
    };
    // SAFETY: the caller's contract.
    let h = match unsafe { check(&mut d, verifier) } {
        Ok(h) => h,
        Err(e) => return code(e),
    };
    status(device::apply_ab(d, &h, &mut o, (&mut new, slot_len, segment), &mut j, w))
}

/// Applies (or resumes) an in-place delta inside `slot` (`slot_len` bytes), which holds old
/// at address 0. Call again after any error: it carries on from `journal`. Clear the journal
/// (`otadelta_journal_clear`) before the next update.
///
/// # Safety
/// As for `otadelta_apply_ab`.
#[no_mangle]
pub unsafe extern "C" fn otadelta_apply_in_place(
    delta: *const OtadeltaReader,
    verifier: *const OtadeltaVerifier,
    slot: *const OtadeltaFlash,
    slot_len: u64,
    journal: *const OtadeltaJournal,
    work: *const OtadeltaWork,
) -> i32 {
    // SAFETY: the caller's contract, for each pointer.
    let parts = unsafe {
        (
            Reader::new(delta),
            slot.as_ref().and_then(CFlash::new),
            journal_of(journal),
            work_of(work),
        )
    };
    let (mut d, mut flash, mut j, w) = match parts {
        (Some(d), Some(flash), Some(j), Some(w)) => (d, flash, j, w),
        _ => return OTADELTA_ERR_ARGUMENT,
    };
    // SAFETY: the caller's contract.
    let h = match unsafe { check(&mut d, verifier) } {
        Ok(h) => h,
        Err(e) => return code(e),
    };
    status(device::apply_in_place(d, &h, &mut flash, slot_len, &mut j, w))
}

/// Forgets the journal's records (erases both units): after an update, before the next.
///
/// # Safety
/// `journal` points to a valid `OtadeltaJournal` whose callbacks honour their contracts.
#[no_mangle]
pub unsafe extern "C" fn otadelta_journal_clear(journal: *const OtadeltaJournal) -> i32 {
    // SAFETY: the caller's contract.
    match unsafe { journal_of(journal) } {
        Some(mut j) => status(j.clear()),
        None => OTADELTA_ERR_ARGUMENT,
    }
}

/// A short English description of a return code (a static, NUL-terminated string).
#[no_mangle]
pub extern "C" fn otadelta_error_message(code: i32) -> *const c_char {
    let s: &'static [u8] = match code {
        OTADELTA_OK => b"ok\0",
        OTADELTA_ERR_HEADER => b"bad otadelta header\0",
        OTADELTA_ERR_DIGEST => b"the delta is corrupt (digest mismatch)\0",
        OTADELTA_ERR_SIGNATURE => b"the signature policy refused the delta\0",
        OTADELTA_ERR_WRONG_OLD => b"the old image is not the one the delta was made from\0",
        OTADELTA_ERR_WRONG_NEW => b"the rebuilt image does not match the delta\0",
        OTADELTA_ERR_CORRUPT => b"corrupt op stream\0",
        OTADELTA_ERR_DECOMPRESS => b"the payload does not decompress\0",
        OTADELTA_ERR_READ_DELTA => b"reading the delta failed\0",
        OTADELTA_ERR_FLASH => b"a flash operation failed\0",
        OTADELTA_ERR_JOURNAL => b"the journal failed\0",
        OTADELTA_ERR_FOREIGN_JOURNAL => b"the journal holds another delta's update\0",
        OTADELTA_ERR_INCONSISTENT => b"the journal's record is inconsistent\0",
        OTADELTA_ERR_SLOT_TOO_SMALL => b"the slot is too small for this delta\0",
        OTADELTA_ERR_UNSUPPORTED => b"this applier does not handle the delta\0",
        OTADELTA_ERR_WORK => b"the work memory is too small\0",
        OTADELTA_ERR_ARGUMENT => b"a null pointer or missing callback\0",
        _ => b"unknown code\0",
    };
    s.as_ptr().cast()
}

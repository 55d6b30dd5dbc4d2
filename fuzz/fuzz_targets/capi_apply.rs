//! The C API (`libotadelta`, `src/applier/capi`), called as firmware calls it, with callbacks
//! over simulated NOR flash: arbitrary delta bytes, and arbitrary op streams wrapped in valid
//! headers (A/B or in place, any filter, stored). It never panics, never reads or writes
//! outside the regions it was given, never programs a byte that is not erased, and when it
//! succeeds the new slot holds what the host's `delta::apply` makes of the same delta; cut by a
//! power failure at the fuzzer's moment and called again, it ends the same way.
#![no_main]

use std::ffi::c_void;

use libfuzzer_sys::fuzz_target;
use otadelta::{
    OTADELTA_OK, OtadeltaFlash, OtadeltaJournal, OtadeltaReader, OtadeltaWork, otadelta_apply_ab,
    otadelta_apply_in_place,
};
use otaforge::Sha256;
use otaforge::delta::{self, Compression, Header, InPlace, Isa, Method};

struct Nor {
    mem: Vec<u8>,
    unit: u64,
    budget: Option<u64>,
}

unsafe extern "C" fn bytes_read(ctx: *mut c_void, addr: u64, buf: *mut u8, len: usize) -> i32 {
    // SAFETY: ctx is the `Vec<u8>` the target passed; buf holds `len` bytes.
    let (b, out) = unsafe { (&*(ctx as *const Vec<u8>), std::slice::from_raw_parts_mut(buf, len)) };
    let end = addr as usize + len;
    assert!(end <= b.len(), "read past the bytes given");
    out.copy_from_slice(&b[addr as usize..end]);
    0
}

unsafe extern "C" fn nor_read(ctx: *mut c_void, addr: u64, buf: *mut u8, len: usize) -> i32 {
    // SAFETY: ctx is the target's `Nor`; buf holds `len` bytes.
    let (f, out) = unsafe { (&*(ctx as *const Nor), std::slice::from_raw_parts_mut(buf, len)) };
    let end = addr as usize + len;
    assert!(end <= f.mem.len(), "read past the flash");
    out.copy_from_slice(&f.mem[addr as usize..end]);
    0
}

unsafe extern "C" fn nor_erase(ctx: *mut c_void, addr: u64, len: u64) -> i32 {
    // SAFETY: ctx is the target's `Nor`.
    let f = unsafe { &mut *(ctx as *mut Nor) };
    assert!(addr % f.unit == 0 && len % f.unit == 0 && addr + len <= f.mem.len() as u64);
    if let Some(b) = &mut f.budget {
        if *b == 0 {
            return -77;
        }
        *b -= 1;
    }
    f.mem[addr as usize..(addr + len) as usize].fill(0xff);
    0
}

unsafe extern "C" fn nor_write(ctx: *mut c_void, addr: u64, data: *const u8, len: usize) -> i32 {
    // SAFETY: ctx is the target's `Nor`; data holds `len` bytes.
    let (f, data) = unsafe { (&mut *(ctx as *mut Nor), std::slice::from_raw_parts(data, len)) };
    assert!(addr as usize + len <= f.mem.len(), "write past the flash");
    for (i, &b) in data.iter().enumerate() {
        if let Some(left) = &mut f.budget {
            if *left == 0 {
                return -77;
            }
            *left -= 1;
        }
        let at = addr as usize + i;
        assert_eq!(f.mem[at], 0xff, "programming a byte that is not erased");
        f.mem[at] = b;
    }
    0
}

/// Applies `delta` through the C API on a fresh device: in place in a slot holding `old`, or
/// A/B into an empty slot. Cut after `budget` steps and called again when given. Returns the
/// result code and the slot.
fn device(
    delta: &[u8],
    old: &[u8],
    slot_len: u64,
    in_place: bool,
    budget: Option<u64>,
) -> (i32, Vec<u8>) {
    let unit = 64u64;
    let journal_at = slot_len.next_multiple_of(256);
    let mut nor = Nor { mem: vec![0xff; (journal_at + 512) as usize], unit, budget };
    if in_place {
        nor.mem[..old.len()].copy_from_slice(old);
    }
    let (delta_v, old_v) = (delta.to_vec(), old.to_vec());
    let mut probs = vec![0u16; 2615];
    let mut dict = vec![0u8; 4096];
    let mut covers = vec![0u32; 3 * 64];
    let nor_ptr = &mut nor as *mut Nor as *mut c_void;
    let flash = OtadeltaFlash {
        ctx: nor_ptr,
        read: Some(nor_read),
        erase: Some(nor_erase),
        write: Some(nor_write),
    };
    let journal = OtadeltaJournal { flash, addr: journal_at, unit: 256 };
    let reader = |v: &Vec<u8>| OtadeltaReader {
        ctx: v as *const Vec<u8> as *mut c_void,
        read: Some(bytes_read),
        len: v.len() as u64,
    };
    let (d, o) = (reader(&delta_v), reader(&old_v));
    let work = OtadeltaWork {
        probs: probs.as_mut_ptr(),
        probs_len: probs.len(),
        dict: dict.as_mut_ptr(),
        dict_len: dict.len(),
        covers: covers.as_mut_ptr(),
        covers_len: covers.len() / 3,
    };
    let call = || {
        // SAFETY: every pointer is to a live local above, the buffers are the sizes given.
        unsafe {
            if in_place {
                otadelta_apply_in_place(&d, std::ptr::null(), &flash, slot_len, &journal, &work)
            } else {
                otadelta_apply_ab(&d, std::ptr::null(), &o, &flash, slot_len, 128, &journal, &work)
            }
        }
    };
    let mut rc = call();
    if budget.is_some() && rc != OTADELTA_OK {
        // SAFETY: no call is running; the pointer is to the local `nor`.
        unsafe { (*(nor_ptr as *mut Nor)).budget = None };
        rc = call();
    }
    (rc, nor.mem)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    if data[0] & 1 == 0 {
        // Any bytes as a delta: refused or applied, never a panic or a stray access.
        let (old, delta) = data[9..].split_at(usize::from(data[1]).min(data.len() - 9));
        let _ = device(delta, old, 4096, data[0] & 2 == 0, None);
        return;
    }
    let in_place = data[0] & 2 != 0;
    let layout = InPlace { segment_log2: 6 + data[1] % 3, shift_segments: u32::from(data[2] % 4) };
    let filter = [None, Some(Isa::Thumb2), Some(Isa::Aarch64), Some(Isa::X86_64), Some(Isa::A32)]
        [usize::from(data[3] % 5)];
    // Absolute pointers too (the stream then starts with the image base).
    let abs_pointers =
        data[3] & 0x80 != 0 && matches!(filter, Some(Isa::Thumb2 | Isa::A32 | Isa::Aarch64));
    let new_len = u64::from(data[4]) * 4;
    let budget = u64::from(u16::from_le_bytes([data[5], data[6]]));
    let old_len = (usize::from(data[7]) * 4).min(data.len() - 9);
    let (old, stream) = data[9..].split_at(old_len);

    // The host's apply of the same stream, as the reference (and for new's digest).
    let mut sp = delta::stream_patcher(delta::Patcher::new(old_len as u64, new_len), filter)
        .with_abs_pointers(abs_pointers);
    let mut out = Vec::new();
    let ok = sp
        .feed_until(
            stream,
            &mut &old[..],
            &mut [0u8; 7],
            &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            },
            u64::MAX,
        )
        .is_ok()
        && sp.finish().is_ok();
    let mut h = Header {
        method: Method::Bsdiff,
        compression: Compression::None,
        window: 0,
        lzma_props: 0,
        old_size: old_len as u64,
        old_sha256: Sha256::digest(old),
        new_size: new_len,
        new_sha256: Sha256::digest(&out),
        stream_len: stream.len() as u64,
        payload_len: stream.len() as u64,
        digest: Sha256::digest(b""),
        signed: false,
        filter,
        abs_pointers,
        refs: false,
        in_place: in_place.then_some(layout),
    };
    h.digest = delta::format::digest(&h.encode(), stream);
    let mut d = h.encode().to_vec();
    d.extend_from_slice(stream);
    let slot_len = if in_place {
        delta::inplace::slot_needed(&h)
    } else {
        new_len.next_multiple_of(128).max(128)
    };
    let (rc, slot) = device(&d, old, slot_len, in_place, None);
    if rc == OTADELTA_OK {
        assert!(ok, "the C API succeeded where the host's patcher failed");
        assert!(slot[..out.len()] == out[..], "the C API's slot differs from the host's output");
    }
    let (rc_cut, slot_cut) = device(&d, old, slot_len, in_place, Some(budget));
    assert_eq!(
        rc_cut == OTADELTA_OK,
        rc == OTADELTA_OK,
        "a power cut after {budget} steps changed the outcome"
    );
    if rc_cut == OTADELTA_OK {
        assert!(slot_cut[..out.len()] == out[..], "a power cut changed the result");
    }
});

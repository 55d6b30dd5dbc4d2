//! The in-place reader: any op stream (with any filter) wrapped in a valid in-place header is
//! applied inside a simulated NOR flash slot. It never panics, never programs a byte that is not
//! erased and never touches flash outside the slot and journal; when it succeeds the slot holds
//! exactly what the same stream gives out of place; and cut by a power failure at the fuzzer's
//! moment, then resumed, it ends the same way as uncut.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use otaforge::Sha256;
use otaforge::delta::inplace::{self, Flash, FlashJournal};
use otaforge::delta::{
    self, Compression, DeltaError, Header, InPlace, IoError, Isa, Method, Patcher,
};

struct Nor {
    mem: Vec<u8>,
    unit: u64,
    budget: Option<u64>,
}

#[derive(Clone)]
struct H(Rc<RefCell<Nor>>);

fn cut() -> IoError {
    IoError { code: -77 }
}

impl Flash for H {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let f = self.0.borrow();
        let end = addr as usize + buf.len();
        assert!(end <= f.mem.len(), "read past the flash");
        buf.copy_from_slice(&f.mem[addr as usize..end]);
        Ok(())
    }
    fn erase(&mut self, addr: u64, len: u64) -> Result<(), IoError> {
        let mut f = self.0.borrow_mut();
        assert!(addr % f.unit == 0 && len % f.unit == 0 && addr + len <= f.mem.len() as u64);
        if let Some(b) = &mut f.budget {
            if *b == 0 {
                return Err(cut());
            }
            *b -= 1;
        }
        f.mem[addr as usize..(addr + len) as usize].fill(0xff);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), IoError> {
        let mut f = self.0.borrow_mut();
        assert!(addr as usize + data.len() <= f.mem.len(), "write past the flash");
        for (i, &b) in data.iter().enumerate() {
            if let Some(left) = &mut f.budget {
                if *left == 0 {
                    return Err(cut());
                }
                *left -= 1;
            }
            let at = addr as usize + i;
            assert_eq!(f.mem[at], 0xff, "programming a byte that is not erased");
            f.mem[at] = b;
        }
        Ok(())
    }
}

/// Runs the update on a fresh slot holding `old`: cut after `budget` steps (then resumed), or
/// uncut. Returns whether it succeeded, and the slot.
fn run(delta: &[u8], old: &[u8], slot_len: u64, unit: u64, budget: Option<u64>) -> (bool, Vec<u8>) {
    // The journal: two 256-byte units after the slot (a record takes 138 bytes).
    let journal_at = slot_len.next_multiple_of(256);
    let mut mem = vec![0xffu8; (journal_at + 512) as usize];
    mem[..old.len()].copy_from_slice(old);
    let nor = Rc::new(RefCell::new(Nor { mem, unit, budget }));
    let mut slot = H(nor.clone());
    let mut journal = FlashJournal { flash: slot.clone(), addr: journal_at, unit: 256 };
    let mut r = inplace::apply(delta, &mut slot, slot_len, &mut journal, None);
    if budget.is_some() && matches!(r, Err(DeltaError::Flash(c)) if c == cut()) {
        nor.borrow_mut().budget = None;
        r = inplace::apply(delta, &mut slot, slot_len, &mut journal, None);
    }
    let mem = nor.borrow().mem.clone();
    (r.is_ok(), mem)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let layout = InPlace { segment_log2: 6 + data[0] % 3, shift_segments: u32::from(data[1] % 4) };
    let filter = [None, Some(Isa::Thumb2), Some(Isa::Aarch64), Some(Isa::X86_64), Some(Isa::A32)]
        [usize::from(data[2] % 5)];
    // Absolute pointers too (the stream then starts with the image base).
    let abs_pointers =
        data[2] & 0x80 != 0 && matches!(filter, Some(Isa::Thumb2 | Isa::A32 | Isa::Aarch64));
    let new_len = u64::from(data[3]) * 4;
    let budget = u64::from(u16::from_le_bytes([data[4], data[5]]));
    let old_len = (usize::from(data[6]) * 4).min(data.len() - 7);
    let (old, stream) = data[7..].split_at(old_len);

    // Out of place, the same stream: the reference result.
    let mut sp = delta::stream_patcher(Patcher::new(old_len as u64, new_len), filter)
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
        in_place: Some(layout),
    };
    h.digest = delta::format::digest(&h.encode(), stream);
    let mut d = h.encode().to_vec();
    d.extend_from_slice(stream);

    let unit = layout.segment() / 2;
    let slot_len = inplace::slot_needed(&h);
    let (ok_in_place, slot) = run(&d, old, slot_len, unit, None);
    if ok_in_place {
        assert!(ok, "in place succeeded where out of place failed");
        assert!(slot[..out.len()] == out[..], "in place differs from out of place");
    }
    let (ok_cut, slot_cut) = run(&d, old, slot_len, unit, Some(budget));
    assert_eq!(ok_cut, ok_in_place, "a power cut after {budget} steps changed the outcome");
    if ok_cut {
        assert!(slot_cut[..out.len()] == out[..], "a power cut changed the result");
    }
});

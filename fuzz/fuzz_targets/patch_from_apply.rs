//! Method 2 with LZMA (new primed with old) as a device applies it: the applier's decoder keeps
//! a short tail and reads the rest of its window back from old and from the new slot. Any
//! payload, window, properties and sizes: never a panic or a stray flash access. Whenever
//! liblzma (the host's `delta::apply`) decodes the payload to the declared new, the device
//! writes exactly those bytes, also when the power is cut at the fuzzer's moment and it
//! resumes. And the fuzzer's bytes, as old and new, make a delta the device applies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::Sha256;
use otaforge::delta::inplace::{Flash, FlashJournal};
use otaforge::delta::{
    self, Compression, CreateOptions, DeltaError, Header, IoError, Method, MethodChoice, Profile,
};
use otaforge_applier::{ApplyError, device};

const CUT: IoError = IoError { code: -77 };

struct Nor {
    mem: Vec<u8>,
    budget: Option<u64>,
}

impl Nor {
    fn step(&mut self) -> Result<(), IoError> {
        match &mut self.budget {
            Some(0) => Err(CUT),
            Some(b) => {
                *b -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Flash for Nor {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let end = addr as usize + buf.len();
        assert!(end <= self.mem.len(), "read past the flash");
        buf.copy_from_slice(&self.mem[addr as usize..end]);
        Ok(())
    }
    fn erase(&mut self, addr: u64, len: u64) -> Result<(), IoError> {
        assert!(addr % 64 == 0 && len % 64 == 0 && addr + len <= self.mem.len() as u64);
        self.step()?;
        self.mem[addr as usize..(addr + len) as usize].fill(0xff);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), IoError> {
        assert!(addr as usize + data.len() <= self.mem.len(), "write past the flash");
        for (i, &b) in data.iter().enumerate() {
            self.step()?;
            let at = addr as usize + i;
            assert_eq!(self.mem[at], 0xff, "programming a byte that is not erased");
            self.mem[at] = b;
        }
        Ok(())
    }
}

/// Applies `d` A/B on a fresh device, cut after `budget` steps and called again when given.
fn device(d: &[u8], old: &[u8], budget: Option<u64>) -> (Result<(), ApplyError>, Vec<u8>) {
    let mut slot = Nor { mem: Vec::new(), budget };
    let h = match device::check(&mut &d[..], d.len() as u64, None) {
        Ok(h) => h,
        Err(e) => return (Err(e), slot.mem),
    };
    let slot_len = h.new_size.next_multiple_of(64).max(64);
    slot.mem = vec![0xff; slot_len as usize];
    let mut journal =
        FlashJournal { flash: Nor { mem: vec![0xff; 512], budget: None }, addr: 0, unit: 256 };
    let (p, t, c) = device::needs(&h);
    let (mut probs, mut tail, mut covers) = (vec![0u16; p], vec![0u8; t], vec![[0u32; 3]; c]);
    let mut call = |slot: &mut Nor| {
        let work = device::Work { probs: &mut probs, dict: &mut tail, covers: &mut covers };
        device::apply_ab(&d[..], &h, &mut &old[..], (slot, slot_len, 64), &mut journal, work)
    };
    let mut r = call(&mut slot);
    if budget.is_some() && r.is_err() {
        slot.budget = None;
        r = call(&mut slot);
    }
    (r, slot.mem)
}

fn host(old: &[u8], d: &[u8]) -> (Result<delta::Applied, DeltaError>, Vec<u8>) {
    let mut out = Vec::new();
    let r = delta::apply(old, d, None, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    });
    (r, out)
}

fn wrap(h: &mut Header, payload: &[u8]) -> Vec<u8> {
    h.digest = delta::format::digest(&h.encode(), payload);
    let mut d = h.encode().to_vec();
    d.extend_from_slice(payload);
    d
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let budget = Some(u64::from(u16::from_le_bytes([data[2], data[3]])));
    if data[0] & 1 == 1 {
        // The fuzzer's bytes as old and new, made into a delta and applied on the device.
        let rest = &data[8..];
        let (old, new) = rest.split_at(usize::from(data[1]).min(rest.len()));
        let opts = CreateOptions {
            profile: Profile::Mcu,
            method: MethodChoice::PatchFrom,
            level: 1 + u32::from(data[4] % 9),
            threads: 1,
            ..CreateOptions::default()
        };
        let d = delta::create(old, new, &opts, &otaforge::NoReporter).expect("create").bytes;
        for b in [None, budget] {
            let (r, slot) = device(&d, old, b);
            assert!(r.is_ok(), "the device refused a delta made here: {r:?}");
            assert!(&slot[..new.len()] == new, "the device did not rebuild new");
        }
        return;
    }
    // Any payload in a header a device accepts.
    let (lc, lp, pb) = (u32::from(data[1] % 5), u32::from(data[1] / 5 % 5), u32::from(data[4] % 5));
    let (lc, lp) = if lc + lp > 4 { (lc, 4 - lc) } else { (lc, lp) };
    let props = ((pb * 5 + lp) * 9 + lc) as u8;
    let old_len = (usize::from(data[5]) * 8).min(data.len() - 8);
    let (old, payload) = data[8..].split_at(old_len);
    let new_size = u64::from(data[6]) * 16 + u64::from(data[7] % 16);
    let reach = (old_len as u64 + new_size).max(4096);
    // A window up to old and new together, in whole 16 bytes as liblzma allocates it.
    let window = (4096 + u64::from(data[4]) * 64).min(reach) / 16 * 16;
    let mut h = Header {
        method: Method::PatchFrom,
        compression: Compression::Lzma,
        window: window.max(4096) as u32,
        lzma_props: props,
        old_size: old_len as u64,
        old_sha256: Sha256::digest(old),
        new_size,
        new_sha256: Sha256::digest(b"not yet known"),
        stream_len: new_size,
        payload_len: payload.len() as u64,
        digest: Sha256::digest(b""),
        signed: false,
        filter: None,
        abs_pointers: false,
        refs: false,
        in_place: None,
    };
    let d = wrap(&mut h, payload);
    let (r, _) = host(old, &d);
    let Err(DeltaError::WrongNew { actual, .. }) = r else {
        // liblzma refused the stream or its length: the device must not succeed.
        assert!(device(&d, old, None).0.is_err(), "the device took what liblzma refused");
        return;
    };
    // liblzma decoded it to `new_size` bytes: declare those as new.
    h.new_sha256 = actual;
    let d = wrap(&mut h, payload);
    let (r, out) = host(old, &d);
    assert!(r.is_ok(), "liblzma's second decode failed: {r:?}");
    for b in [None, budget] {
        let (r, slot) = device(&d, old, b);
        assert!(r.is_ok(), "the device refused what liblzma decodes: {r:?}");
        assert!(slot[..out.len()] == out[..], "the device wrote other bytes than liblzma decoded");
    }
});

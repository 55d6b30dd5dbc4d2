//! In-place MCU updates on simulated NOR flash: the delta is applied inside the old image's own
//! slot, segment by segment, and the power is cut at every segment boundary, around every
//! journal save, and at a few hundred random moments (several times in one update). After each
//! cut the device "reboots" and calls `inplace::apply` again; the slot must end bit-identical
//! to new, every time.

use std::cell::RefCell;
use std::rc::Rc;

use otaforge::delta::inplace::{self, Flash, FlashJournal, Journal};
use otaforge::delta::{self, CreateOptions, DeltaError, InPlaceOptions, IoError, Profile};

use crate::delta::firmware;

/// NOR flash: erased bytes read 0xff, a write may only program erased bytes, erases are whole
/// units. Every byte programmed and every unit erased is one step; when the power budget runs
/// out, the operation in progress is torn (a byte half-programmed, a unit half-erased) and
/// every later operation fails until the next boot.
struct Nor {
    mem: Vec<u8>,
    unit: u64,
    /// Steps left before the power cut; `None` is a steady supply.
    budget: Option<u64>,
    /// Steps taken since boot.
    steps: u64,
    /// The step at which each journal save began (recorded when asked).
    saves: Vec<u64>,
    journal_at: u64,
    seed: u64,
}

/// The code the simulated flash returns once the power is gone.
const CUT: IoError = IoError { code: -77 };

impl Nor {
    fn step(&mut self) -> Result<(), IoError> {
        if let Some(b) = &mut self.budget {
            if *b == 0 {
                return Err(CUT);
            }
            *b -= 1;
        }
        self.steps += 1;
        Ok(())
    }

    fn noise(&mut self) -> u8 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed as u8
    }
}

#[derive(Clone)]
struct Handle(Rc<RefCell<Nor>>);

impl Flash for Handle {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let f = self.0.borrow();
        if f.budget == Some(0) {
            return Err(CUT);
        }
        buf.copy_from_slice(&f.mem[addr as usize..addr as usize + buf.len()]);
        Ok(())
    }

    fn erase(&mut self, addr: u64, len: u64) -> Result<(), IoError> {
        let mut f = self.0.borrow_mut();
        assert!(
            addr.is_multiple_of(f.unit) && len.is_multiple_of(f.unit),
            "erase {addr}+{len} is not whole units"
        );
        assert!(addr + len <= f.mem.len() as u64, "erase {addr}+{len} is outside the flash");
        let (start, end, unit) = (addr as usize, (addr + len) as usize, f.unit as usize);
        for u in (start..end).step_by(unit) {
            if let Err(e) = f.step() {
                // Torn erase: some bytes of the unit erased, the others left as they were
                // or garbled.
                for i in u..u + unit {
                    let n = f.noise();
                    if n & 1 == 0 {
                        f.mem[i] = 0xff;
                    } else if n & 2 == 0 {
                        f.mem[i] &= n;
                    }
                }
                return Err(e);
            }
            f.mem[u..u + unit].fill(0xff);
        }
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), IoError> {
        let mut f = self.0.borrow_mut();
        if addr >= f.journal_at {
            let s = f.steps;
            f.saves.push(s);
        }
        for (i, &b) in data.iter().enumerate() {
            let at = addr as usize + i;
            assert_eq!(f.mem[at], 0xff, "programming byte {at}, which is not erased");
            if let Err(e) = f.step() {
                let n = f.noise();
                f.mem[at] = b | n; // half-programmed: some of the bits cleared
                return Err(e);
            }
            f.mem[at] = b;
        }
        Ok(())
    }
}

struct Device {
    nor: Rc<RefCell<Nor>>,
    slot: Handle,
    journal: FlashJournal<Handle>,
    slot_len: u64,
}

impl Device {
    fn new(old: &[u8], slot_len: u64, unit: u64, seed: u64) -> Self {
        let mut mem = vec![0xffu8; (slot_len + 2 * unit) as usize];
        mem[..old.len()].copy_from_slice(old);
        let nor = Rc::new(RefCell::new(Nor {
            mem,
            unit,
            budget: None,
            steps: 0,
            saves: Vec::new(),
            journal_at: slot_len,
            seed: seed | 1,
        }));
        let slot = Handle(nor.clone());
        let journal = FlashJournal { flash: slot.clone(), addr: slot_len, unit };
        Self { nor, slot, journal, slot_len }
    }

    /// Boots with `budget` steps of power and runs the update once.
    fn run(&mut self, delta: &[u8], budget: Option<u64>) -> Result<delta::Applied, DeltaError> {
        {
            let mut n = self.nor.borrow_mut();
            n.budget = budget;
            n.steps = 0;
        }
        inplace::apply(delta, &mut self.slot, self.slot_len, &mut self.journal, None)
    }

    fn slot(&self, len: usize) -> Vec<u8> {
        self.nor.borrow().mem[..len].to_vec()
    }
}

fn is_cut(e: &DeltaError) -> bool {
    matches!(e, DeltaError::Flash(c) if *c == CUT)
}

/// A firmware update: code inserted early (everything after it moves up), a block deleted,
/// words relocated, a tail appended. New is larger than old, so the delta needs the shift.
fn images() -> (Vec<u8>, Vec<u8>) {
    let old = firmware(42, 24_000);
    let mut new = old.clone();
    new.splice(2_000..2_000, firmware(7, 1_500));
    new.drain(9_000..9_400);
    for w in new[15_000..15_400].chunks_exact_mut(4) {
        let v = u32::from_le_bytes(w.try_into().unwrap()).wrapping_add(0x60);
        w.copy_from_slice(&v.to_le_bytes());
    }
    new.extend_from_slice(&firmware(9, 2_000));
    (old, new)
}

fn in_place(old: &[u8], new: &[u8], segment: u64, memory: u64) -> Vec<u8> {
    let opts = CreateOptions {
        profile: Profile::Mcu,
        threads: 2,
        in_place: Some(InPlaceOptions { segment_size: segment, memory_size: memory }),
        ..CreateOptions::default()
    };
    delta::create(old, new, &opts, &otaforge::NoReporter).expect("create").bytes
}

/// When to cut the power, in flash steps from boot: once at each segment boundary (just before,
/// at, and inside each journal save of an uninterrupted run, which started at `saves` and took
/// `total` steps), then `randoms` plans of up to four cuts in one update at random moments.
fn power_cut_plans(saves: &[u64], total: u64, randoms: usize, seed: u64) -> Vec<Vec<u64>> {
    let mut plans: Vec<Vec<u64>> =
        saves.iter().flat_map(|&s| [s.saturating_sub(1), s, s + 7]).map(|c| vec![c]).collect();
    let mut x = seed;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    for _ in 0..randoms {
        let k = 1 + rand(4);
        plans.push((0..k).map(|_| rand(total)).collect());
    }
    plans
}

#[test]
fn an_in_place_update_survives_power_cuts_anywhere() {
    let (old, new) = images();
    let (unit, segment, slot_len) = (512u64, 1024u64, 32 * 1024u64);
    let delta = in_place(&old, &new, segment, slot_len);
    let info = delta::info(&delta).unwrap();
    let ip = info.in_place.expect("in-place layout");
    assert_eq!((ip.segment, ip.slot_needed <= slot_len), (segment, true));
    assert!(ip.shift >= 4 * segment, "old should move up by the free room: {ip:?}");

    // Uninterrupted: the reference run, and the moments of every journal save.
    let mut dev = Device::new(&old, slot_len, unit, 1);
    let applied = dev.run(&delta, None).expect("uninterrupted apply");
    assert_eq!(applied.new_size, new.len() as u64);
    assert!(dev.slot(new.len()) == new, "uninterrupted apply differs from new");
    let total = dev.nor.borrow().steps;
    let saves = dev.nor.borrow().saves.clone();
    let segments = new.len().div_ceil(segment as usize) + old.len().div_ceil(segment as usize);
    assert!(saves.len() > segments, "{} saves for {segments} segments", saves.len());

    let cuts = power_cut_plans(&saves, total, 300, 0x9e37_79b9_7f4a_7c15);
    let mut resumed = 0;
    for (i, plan) in cuts.iter().enumerate() {
        let mut dev = Device::new(&old, slot_len, unit, i as u64 + 2);
        for &budget in plan {
            match dev.run(&delta, Some(budget)) {
                Err(e) if is_cut(&e) => resumed += 1,
                Err(e) => panic!("plan {plan:?}: not a power cut: {e}"),
                Ok(_) => break,
            }
        }
        let done = dev.run(&delta, None).unwrap_or_else(|e| panic!("plan {plan:?}: {e}"));
        assert_eq!(done.new_sha256, applied.new_sha256);
        assert!(dev.slot(new.len()) == new, "plan {plan:?}: the slot differs from new");
        // Done is remembered: another boot checks and changes nothing.
        dev.run(&delta, None).unwrap();
    }
    assert!(resumed > 300, "only {resumed} runs were cut");
}

#[test]
fn in_place_deltas_refuse_what_would_brick_the_slot() {
    let (old, new) = images();
    let delta = in_place(&old, &new, 1024, 32 * 1024);
    // A slot smaller than the layout needs.
    let mut dev = Device::new(&old, 26 * 1024, 512, 1);
    let e = dev.run(&delta, None).unwrap_err();
    assert!(e.to_string().contains("needs"), "{e}");
    // The wrong old image: refused before anything is erased.
    let mut other = old.clone();
    other[100] ^= 1;
    let mut dev = Device::new(&other, 32 * 1024, 512, 1);
    assert!(matches!(dev.run(&delta, None), Err(DeltaError::WrongOld { .. })));
    assert!(dev.slot(other.len()) == other, "the slot was changed");
    // A journal left by another delta's half-done update.
    let mut dev = Device::new(&old, 32 * 1024, 512, 1);
    let _ = dev.run(&delta, Some(20_000));
    let second = in_place(&old, &firmware(3, 20_000), 1024, 32 * 1024);
    let e = dev.run(&second, None).unwrap_err();
    assert!(e.to_string().contains("another delta"), "{e}");
    // A delta whose ops read old bytes that would be overwritten by then (here: made for a
    // shift, relabelled as having none): refused by the rehearsal, before anything is erased.
    let mut h = delta::Header::decode(&delta).unwrap();
    let mut layout = h.in_place.unwrap();
    layout.shift_segments = 0;
    h.in_place = Some(layout);
    let payload = &delta[delta::format::HEADER_LEN..];
    h.digest = delta::format::digest(&h.encode(), payload);
    let mut relabelled = h.encode().to_vec();
    relabelled.extend_from_slice(payload);
    let mut dev = Device::new(&old, 32 * 1024, 512, 1);
    let e = dev.run(&relabelled, None).unwrap_err();
    assert!(e.to_string().contains("overwritten"), "{e}");
    assert!(dev.slot(32 * 1024)[..old.len()] == old[..], "the slot was changed");
    assert_eq!(dev.nor.borrow().saves.len(), 0, "progress was saved");
    // A plain delta is not applied in place.
    let plain =
        delta::create(&old, &new, &CreateOptions::default(), &otaforge::NoReporter).unwrap().bytes;
    let mut dev = Device::new(&old, 32 * 1024, 512, 1);
    assert!(matches!(dev.run(&plain, None), Err(DeltaError::InPlace(_))));
    // Creation refuses a slot too small for new, and segment sizes that are not powers of two.
    let opts = |segment_size, memory_size| CreateOptions {
        in_place: Some(InPlaceOptions { segment_size, memory_size }),
        ..CreateOptions::default()
    };
    for (s, m) in [(1024, 20 * 1024), (1000, 64 * 1024), (16, 64 * 1024)] {
        let e = delta::create(&old, &new, &opts(s, m), &otaforge::NoReporter).unwrap_err();
        assert!(matches!(e, DeltaError::InPlace(_)), "{s} {m}: {e}");
    }
    // Clearing the journal (before the next update) forgets every record.
    let mut j = FlashJournal { flash: dev.slot.clone(), addr: 32 * 1024, unit: 512 };
    j.clear().unwrap();
    assert_eq!(j.load().unwrap(), None);
}

/// With little room to shift, an in-place delta still applies: it just cannot use old bytes
/// that new has already overwritten, so it is larger.
#[test]
fn little_shift_room_costs_size_not_correctness() {
    let (old, new) = images();
    let roomy = in_place(&old, &new, 1024, 40 * 1024);
    // The smallest slot: new's segments. Old moves up by the difference only.
    let tight = in_place(&old, &new, 1024, new.len().div_ceil(1024) as u64 * 1024);
    let shift = |d: &[u8]| delta::info(d).unwrap().in_place.unwrap().shift;
    assert!(shift(&tight) < shift(&roomy), "{} {}", shift(&tight), shift(&roomy));
    let plain = delta::create(
        &old,
        &new,
        &super::delta::opts(
            delta::DeltaFormat::Otadelta,
            delta::MethodChoice::Bsdiff,
            Profile::Mcu,
        ),
        &otaforge::NoReporter,
    )
    .unwrap()
    .bytes;
    assert!(tight.len() > roomy.len(), "tight {} roomy {}", tight.len(), roomy.len());
    // Segmenting costs a little even with room (ops end at every segment boundary): 1,835
    // bytes plain, 2,448 roomy, 3,357 tight when this was written.
    assert!(roomy.len() * 2 < plain.len() * 3, "roomy {} plain {}", roomy.len(), plain.len());
    for d in [&roomy, &tight] {
        let slot = delta::info(d).unwrap().in_place.unwrap().slot_needed;
        let mut dev = Device::new(&old, slot, 512, 5);
        dev.run(d, None).unwrap();
        assert!(dev.slot(new.len()) == new);
        // And out of place, the same delta rebuilds new.
        let mut out = Vec::new();
        delta::apply(&old, d, None, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(out == new);
    }
}

/// Method 3 in place (a Linux gateway updating its own partition): the literals are not
/// primed with old, which the update overwrites as it goes, and the delta applies in the slot.
#[test]
fn a_delta_in_five_parts_applies_in_place_without_priming() {
    let (old, new) = images();
    let opts = CreateOptions {
        profile: Profile::Linux,
        method: delta::MethodChoice::Split,
        threads: 2,
        in_place: Some(InPlaceOptions { segment_size: 1024, memory_size: 32 * 1024 }),
        ..CreateOptions::default()
    };
    let d = delta::create(&old, &new, &opts, &otaforge::NoReporter).expect("create").bytes;
    let h = delta::Header::decode(&d).unwrap();
    assert_eq!(h.method, delta::Method::Split);
    let payload = &d[delta::format::HEADER_LEN..][..h.payload_len as usize];
    assert!(!delta::split::parts(&h, payload).unwrap().primed);
    // Out of place, the same options without in place prime the literals.
    let ab = CreateOptions { in_place: None, ..opts };
    let d2 = delta::create(&old, &new, &ab, &otaforge::NoReporter).expect("create").bytes;
    let h2 = delta::Header::decode(&d2).unwrap();
    let payload2 = &d2[delta::format::HEADER_LEN..][..h2.payload_len as usize];
    assert!(delta::split::parts(&h2, payload2).unwrap().primed);
    let mut dev = Device::new(&old, 32 * 1024, 512, 1);
    dev.run(&d, None).expect("in-place apply");
    assert!(dev.slot(new.len()) == new, "the slot differs from new");
}

/// Method 2 with LZMA, the MCU profile's patch-from, into another slot: the device's decoder
/// keeps only a 256-byte tail and reads the rest of its window back from old and from the new
/// bytes already written. Power cuts anywhere, several in one update, resume to new.
#[test]
fn a_patch_from_update_into_another_slot_survives_power_cuts() {
    use otaforge::delta::MethodChoice;
    use otaforge_applier::{ApplyError, device};

    let (old, new) = images();
    let opts = CreateOptions {
        profile: Profile::Mcu,
        method: MethodChoice::PatchFrom,
        threads: 2,
        ..CreateOptions::default()
    };
    let d = delta::create(&old, &new, &opts, &otaforge::NoReporter).expect("create").bytes;
    let info = delta::info(&d).unwrap();
    assert_eq!((info.method, info.compression.as_str()), (delta::Method::PatchFrom, "lzma"));
    assert!(info.window as usize >= old.len() + new.len(), "window {}", info.window);
    let h = device::check(&mut &d[..], d.len() as u64, None).expect("a device takes it");
    let (probs, tail, covers) = device::needs(&h);
    assert_eq!((tail, covers), (device::PATCH_FROM_TAIL, 0));
    assert!(probs * 2 + tail <= 10_240, "decoder memory {} B", probs * 2 + tail);
    assert_eq!(info.decoder_ram, (probs * 2 + tail) as u64);

    let (unit, segment) = (512u64, 1024u64);
    let slot_len = (new.len() as u64).div_ceil(segment) * segment;
    let run = |dev: &mut Device, budget: Option<u64>| -> Result<(), ApplyError> {
        {
            let mut n = dev.nor.borrow_mut();
            n.budget = budget;
            n.steps = 0;
        }
        let (mut p, mut t) = (vec![0u16; probs], vec![0u8; tail]);
        let work = device::Work { probs: &mut p, dict: &mut t, covers: &mut [] };
        let slot = (&mut dev.slot, slot_len, segment);
        device::apply_ab(&d[..], &h, &mut &old[..], slot, &mut dev.journal, work)
    };
    let cut =
        |e: &ApplyError| matches!(e, ApplyError::Flash(c) | ApplyError::Journal(c) if *c == CUT);

    // The slot starts out holding other bytes (here old's): every segment is erased first.
    let mut dev = Device::new(&old, slot_len, unit, 1);
    run(&mut dev, None).expect("uninterrupted apply");
    assert!(dev.slot(new.len()) == new, "uninterrupted apply differs from new");
    let total = dev.nor.borrow().steps;
    let saves = dev.nor.borrow().saves.clone();
    let segments = new.len().div_ceil(segment as usize);
    assert!(saves.len() > segments, "{} saves for {segments} segments", saves.len());

    let plans = power_cut_plans(&saves, total, 150, 0x2545_f491_4f6c_dd1d);
    let mut resumed = 0;
    for (i, plan) in plans.iter().enumerate() {
        let mut dev = Device::new(&old, slot_len, unit, i as u64 + 2);
        for &budget in plan {
            match run(&mut dev, Some(budget)) {
                Err(e) if cut(&e) => resumed += 1,
                Err(e) => panic!("plan {plan:?}: not a power cut: {e}"),
                Ok(()) => break,
            }
        }
        run(&mut dev, None).unwrap_or_else(|e| panic!("plan {plan:?}: {e}"));
        assert!(dev.slot(new.len()) == new, "plan {plan:?}: the slot differs from new");
        // Done is remembered: another boot checks and changes nothing.
        let before = dev.nor.borrow().mem.clone();
        run(&mut dev, None).unwrap();
        assert!(dev.nor.borrow().mem == before, "plan {plan:?}: a finished update wrote again");
    }
    assert!(resumed > 150, "only {resumed} runs were cut");

    // A wrong old image is refused before anything is erased.
    let mut other = old.clone();
    other[100] ^= 1;
    let mut dev = Device::new(&old, slot_len, unit, 9);
    let (mut p, mut t) = (vec![0u16; probs], vec![0u8; tail]);
    let work = device::Work { probs: &mut p, dict: &mut t, covers: &mut [] };
    let slot = (&mut dev.slot, slot_len, segment);
    let r = device::apply_ab(&d[..], &h, &mut &other[..], slot, &mut dev.journal, work);
    assert!(matches!(r, Err(ApplyError::WrongOld(_))), "{r:?}");
    assert_eq!(dev.nor.borrow().steps, 0, "a wrong old image changed the flash");
    // Too little work memory is refused, not overrun.
    let (mut p, mut t) = (vec![0u16; probs], vec![0u8; tail - 1]);
    let work = device::Work { probs: &mut p, dict: &mut t, covers: &mut [] };
    let slot = (&mut dev.slot, slot_len, segment);
    let r = device::apply_ab(&d[..], &h, &mut &old[..], slot, &mut dev.journal, work);
    assert!(matches!(r, Err(ApplyError::Work { .. })), "{r:?}");
}

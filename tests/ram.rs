//! The RAM an MCU-profile delta takes to apply, measured rather than computed: the apply loop a
//! device runs (raw LZMA1 decoder fed 64-byte pieces of the delta, 256-byte output buffer,
//! `delta::Patcher` with a 64-byte scratch buffer, old read at random, new handed out in order)
//! under a counting global allocator for Rust's heap and glibc's `mallinfo2` for the C heap
//! (liblzma allocates through malloc). Its own test binary, so the counting allocator sees
//! nothing else. The numbers are recorded in docs/delta-format.md.

#![allow(unsafe_code)] // a global allocator and one libc call, both below

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use otaforge::delta::{self, Header, Patcher, StreamPatcher, lzma};

/// System's allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System::alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes malloc has handed out and not taken back (every arena, and mmapped chunks).
fn malloc_in_use() -> usize {
    // SAFETY: mallinfo2 takes no arguments and only reads glibc's counters.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

/// Two firmware-like images: `new` is `old` with a few regions changed and a block inserted.
fn images() -> (Vec<u8>, Vec<u8>) {
    let mut x: u32 = 0x2545_f491;
    let old: Vec<u8> = (0..96 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 97) as u8
        })
        .collect();
    let mut new = old.clone();
    for b in &mut new[5_000..5_400] {
        *b = b.wrapping_add(3);
    }
    new.splice(40_000..40_000, (0..700u32).map(|i| (i * 31) as u8));
    (old, new)
}

/// What one apply took.
struct Measured {
    /// Rust heap, peak above the start.
    rust_peak: usize,
    /// C heap (liblzma), peak above the start.
    c_peak: usize,
    /// Covers in the displacement table (0 without a filter).
    covers: usize,
}

/// Which LZMA decoder the device loop runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// liblzma's raw LZMA1 decoder (the host's).
    Liblzma,
    /// `delta::lzma`, with its tables sized from the stream and both buffers on the heap.
    Ours,
}

/// Creates an MCU-profile delta with `exec` and applies it the way a device does, counting.
fn measure(exec: delta::ExecChoice, decoder: Decoder) -> Measured {
    let (old, new) = images();
    // The op stream's loop (method 1), what this measures.
    let method = delta::MethodChoice::Bsdiff;
    let opts =
        delta::CreateOptions { profile: delta::Profile::Mcu, exec, method, ..Default::default() };
    let created = delta::create(&old, &new, &opts, &otaforge::reporter::NoReporter).unwrap();
    let bytes = created.bytes;
    let h = Header::decode(&bytes).unwrap();
    assert_eq!((h.method, h.compression), (delta::Method::Bsdiff, delta::Compression::Lzma));
    assert!(h.window == 4096, "the MCU profile's dictionary is 4 KiB, not {}", h.window);
    let payload = &bytes[delta::format::HEADER_LEN..][..h.payload_len as usize];

    // What the device holds: its buffers on the stack, fixed before it starts.
    let mut input_at = 0usize;
    let mut output = [0u8; 256];
    let mut scratch = [0u8; 64];
    let mut written = 0usize;
    let mut same = true;

    let rust_before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(rust_before, Ordering::Relaxed);
    let c_before = malloc_in_use();
    let mut c_peak = 0usize;

    let mut patcher = delta::stream_patcher(Patcher::new(h.old_size, h.new_size), h.filter)
        .with_abs_pointers(h.abs_pointers)
        .with_refs(h.refs);
    let mut sink = |b: &[u8]| {
        same &= new.get(written..written + b.len()) == Some(b);
        written += b.len();
        Ok(())
    };
    match decoder {
        Decoder::Liblzma => {
            let (lc, lp, pb) = (h.lzma_props % 9, h.lzma_props / 9 % 5, h.lzma_props / 45);
            let mut o = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
            o.dict_size(h.window)
                .literal_context_bits(u32::from(lc))
                .literal_position_bits(u32::from(lp))
                .position_bits(u32::from(pb));
            let mut filters = liblzma::stream::Filters::new();
            filters.lzma1(&o);
            let mut stream = liblzma::stream::Stream::new_raw_decoder(&filters).unwrap();
            while patcher.patcher().produced() < h.new_size {
                let end = (input_at + 64).min(payload.len());
                let before_in = stream.total_in();
                let before_out = stream.total_out();
                stream
                    .process(&payload[input_at..end], &mut output, liblzma::stream::Action::Run)
                    .unwrap();
                input_at += (stream.total_in() - before_in) as usize;
                let n = (stream.total_out() - before_out) as usize;
                c_peak = c_peak.max(malloc_in_use().saturating_sub(c_before));
                patcher
                    .feed_until(&output[..n], &mut &old[..], &mut scratch, &mut sink, u64::MAX)
                    .unwrap();
                assert!(n > 0 || input_at < payload.len(), "the decoder stalled");
            }
        }
        Decoder::Ours => {
            let mut dict = vec![0u8; h.window as usize];
            let mut probs = vec![0u16; lzma::probs_len(h.lzma_props).unwrap()];
            let mut dec = lzma::LzmaDecoder::new(h.lzma_props, &mut dict, &mut probs).unwrap();
            let mut src = || {
                let b = payload.get(input_at).copied();
                input_at += 1;
                b.ok_or(delta::IoError { code: -1 })
            };
            loop {
                let n = dec.read(&mut src, &mut output).unwrap();
                if n == 0 {
                    break;
                }
                patcher
                    .feed_until(&output[..n], &mut &old[..], &mut scratch, &mut sink, u64::MAX)
                    .unwrap();
            }
            c_peak = malloc_in_use().saturating_sub(c_before);
        }
    }
    patcher.finish().unwrap();
    let rust_peak = PEAK.load(Ordering::Relaxed) - rust_before;
    assert!(same && written == new.len(), "the rebuilt image is new");
    let covers = if h.filter.is_some() { table_len(&bytes) } else { 0 };
    Measured { rust_peak, c_peak, covers }
}

/// The number of covers an exec delta's table holds (its first LEB128 number).
fn table_len(delta_bytes: &[u8]) -> usize {
    let h = Header::decode(delta_bytes).unwrap();
    let payload = &delta_bytes[delta::format::HEADER_LEN..][..h.payload_len as usize];
    let mut o = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
    o.dict_size(h.window).literal_context_bits(0).literal_position_bits(0).position_bits(0);
    let mut filters = liblzma::stream::Filters::new();
    filters.lzma1(&o);
    let mut stream = liblzma::stream::Stream::new_raw_decoder(&filters).unwrap();
    let mut first = [0u8; 16];
    stream.process(payload, &mut first, liblzma::stream::Action::Run).unwrap();
    // With absolute pointers the image base and span come first.
    let mut bytes = first.iter();
    let mut v = 0usize;
    for _ in 0..=2 * usize::from(h.abs_pointers) {
        let (mut n, mut shift) = (0usize, 0);
        for b in bytes.by_ref() {
            n |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        v = n;
    }
    v
}

#[test]
#[allow(clippy::print_stdout)] // the measured numbers, for docs/delta-format.md (--nocapture)
fn an_mcu_delta_applies_within_the_measured_ram() {
    // liblzma, as the host runs it.
    let plain = measure(delta::ExecChoice::None, Decoder::Liblzma);
    // The patcher allocates nothing; Rust's heap grows only by liblzma's wrapper objects.
    assert!(plain.rust_peak <= 256, "Rust heap during apply: {} bytes", plain.rust_peak);
    // liblzma's raw LZMA1 decoder with a 4 KiB dictionary, on the host: its state and window
    // (measured 37,360 bytes: liblzma sizes its literal tables for lc + lp up to 4, 24 KiB,
    // whatever the stream's lc/lp).
    assert!(
        (4096..=48 * 1024).contains(&plain.c_peak),
        "liblzma's heap while applying: {} bytes",
        plain.c_peak
    );
    let patcher_size = std::mem::size_of::<Patcher>();
    assert!(patcher_size <= 96, "Patcher is {patcher_size} bytes");
    let stream_size = std::mem::size_of::<StreamPatcher>();

    // Our decoder, tables sized from the stream: everything on the Rust heap, nothing in C.
    let ours = measure(delta::ExecChoice::None, Decoder::Ours);
    let decoder_size = std::mem::size_of::<lzma::LzmaDecoder<'static>>();
    let buffers = 256 + 64;
    let total = ours.rust_peak + decoder_size + stream_size + buffers;
    // Rust's allocator is malloc, so the C heap counts the same buffers (plus malloc's headers):
    // nothing else is allocated.
    assert!(ours.c_peak <= ours.rust_peak + 256, "C heap {} B", ours.c_peak);
    assert!(total <= 16 * 1024, "the whole apply loop took {total} bytes");

    // With the Thumb-2 transform: the displacement table is the only addition, at most
    // MCU_COVERS covers (24 bytes each here; 12 in a device's u32/u32/i32 layout).
    let exec = measure(delta::ExecChoice::Isa(delta::Isa::Thumb2), Decoder::Ours);
    assert!((1..=delta::exec::MCU_COVERS).contains(&exec.covers), "{} covers", exec.covers);
    let table_heap = exec.rust_peak.saturating_sub(ours.rust_peak);
    assert!(
        table_heap <= exec.covers.next_power_of_two() * 24 + 64,
        "the table took {table_heap} bytes for {} covers",
        exec.covers
    );
    // The most the MCU profile's table can take in this layout still fits.
    let worst = total + delta::exec::MCU_COVERS * 24;
    assert!(worst <= 16 * 1024 + 2048, "{worst}");
    println!(
        "patcher {patcher_size} B, stream patcher {stream_size} B, decoder {decoder_size} B; \
         liblzma: Rust heap {} B, C heap {} B; ours: heap {} B (probabilities and dictionary), \
         loop total {total} B; thumb2: {} covers, +{table_heap} B",
        plain.rust_peak, plain.c_peak, ours.rust_peak, exec.covers
    );
}

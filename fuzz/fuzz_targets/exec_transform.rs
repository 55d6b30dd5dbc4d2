//! The executable transforms: any old and new images, with each instruction set's prediction
//! forced on, make a delta that rebuilds new; applied again through `StreamPatcher` with the
//! fuzzer's piece and scratch sizes (as a device reads), it rebuilds the same bytes, so the
//! prediction does not depend on how reads are split. With Thumb-2, A32 and AArch64, absolute pointers
//! are predicted too when the fuzzer says so (image base 0, where small words point into old,
//! or 0x0800_0000); with AArch64 and x86-64 the extended references (address pairs, Jcc and
//! RIP-relative operands).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::delta::{self, Compression, CreateOptions, ExecChoice, Isa, Patcher};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let isa = [Isa::Thumb2, Isa::Aarch64, Isa::X86_64, Isa::A32][usize::from(data[0] % 4)];
    let (piece, scratch_len) = (usize::from(data[1]).max(1), usize::from(data[2] % 16) + 1);
    let abs = match data[2] >> 6 {
        0 => delta::AbsChoice::None,
        1 => delta::AbsChoice::Auto,
        2 => delta::AbsChoice::Base(0),
        _ => delta::AbsChoice::Base(0x0800_0000),
    };
    let rest = &data[3..];
    let at = (rest.len() / 2 + usize::from(data[0] >> 2)).min(rest.len());
    let (old, new) = rest.split_at(at);
    let opts = CreateOptions {
        exec: ExecChoice::Isa(isa),
        abs,
        compression: Some(Compression::None),
        level: 1,
        threads: 1,
        ..CreateOptions::default()
    };
    // Method 3 with the same prediction: the reader derives the table from the controls.
    let split = CreateOptions {
        exec: ExecChoice::Isa(isa),
        method: delta::MethodChoice::Split,
        level: 1,
        threads: 1,
        ..CreateOptions::default()
    };
    match delta::create(old, new, &split, &otaforge::NoReporter) {
        Ok(c) => {
            let mut out = Vec::new();
            delta::apply(old, &c.bytes, None, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert!(out == new, "split round trip");
        }
        Err(delta::DeltaError::Index(_)) => {}
        Err(e) => panic!("split create failed: {e}"),
    }
    let created = match delta::create(old, new, &opts, &otaforge::NoReporter) {
        Ok(c) => c,
        Err(delta::DeltaError::Index(_)) => return,
        Err(e) => panic!("create failed: {e}"),
    };
    let h = delta::Header::decode(&created.bytes).unwrap();
    assert_eq!(h.filter, Some(isa));
    // Extended references: always with the AArch64 and x86-64 filters.
    assert_eq!(h.refs, matches!(isa, Isa::Aarch64 | Isa::X86_64));
    if let delta::AbsChoice::Base(_) = abs {
        // Asked for: used whenever the filter has pointers and old has bytes to point at.
        let has = matches!(isa, Isa::Thumb2 | Isa::A32 | Isa::Aarch64) && !old.is_empty();
        assert_eq!(h.abs_pointers, has);
    }
    // Stored: the payload is the op stream itself.
    let stream = &created.bytes[delta::format::HEADER_LEN..][..h.payload_len as usize];
    let mut p = delta::stream_patcher(Patcher::new(h.old_size, h.new_size), h.filter)
        .with_abs_pointers(h.abs_pointers)
        .with_refs(h.refs);
    let mut out = Vec::new();
    let mut scratch = vec![0u8; scratch_len];
    for chunk in stream.chunks(piece) {
        let mut at = 0;
        while at < chunk.len() {
            at += p
                .feed_until(
                    &chunk[at..],
                    &mut &old[..],
                    &mut scratch,
                    &mut |b| {
                        out.extend_from_slice(b);
                        Ok(())
                    },
                    u64::MAX,
                )
                .unwrap();
        }
    }
    p.finish().unwrap();
    assert!(out == new, "pieces of {piece}, scratch {scratch_len}");
});

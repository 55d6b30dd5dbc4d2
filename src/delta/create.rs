//! Creating a delta ([`create`]), as a sequence of named steps: the in-place layout, the
//! ops (suffix-array matching), the executable prediction's plan, the candidate encoders, the
//! candidates compressed side by side, and the smallest assembled into a file and checked by
//! applying it. `docs/delta-format.md`, "Generation", describes the method.

use super::{
    AbsChoice, CreateOptions, Created, DeltaError, DeltaFormat, ExecChoice, InPlaceOptions,
    MethodChoice, Profile, apply, bsdiff40, codec, diff, exec, format, info, ops, primed, split,
};
use super::{Compression, Header, InPlace, Isa, Method};
use crate::fsutil::Pages;
use crate::{Reporter, Sha256};

/// Creates a delta rebuilding `new` from `old`. Memory: `new` is given back ([`Pages::release`])
/// once hashed and again behind the match, so that a mapped new is not resident beside the
/// suffix array (about 4 bytes per old byte) but for the stretch being matched.
pub fn create(
    old: &[u8],
    new_pages: &(impl Pages + ?Sized),
    opts: &CreateOptions,
    reporter: &dyn Reporter,
) -> Result<Created, DeltaError> {
    let new = new_pages.bytes();
    let in_place = opts.in_place.map(|ip| in_place_layout(old, new, opts, ip)).transpose()?;
    let use_ops = opts.format == DeltaFormat::Bsdiff40
        || matches!(opts.method, MethodChoice::Auto | MethodChoice::Bsdiff | MethodChoice::Split)
        || (opts.profile == Profile::Mcu && opts.method != MethodChoice::PatchFrom)
        || in_place.is_some();
    let digests = std::thread::scope(|s| {
        let h = s.spawn(|| Sha256::digest(old));
        (h.join().unwrap_or_else(|_| Sha256::digest(old)), Sha256::digest(new))
    });
    let ops = if use_ops {
        new_pages.release(0..new.len());
        find_ops(old, (new, &|r| new_pages.release(r)), opts, in_place, reporter)?
    } else {
        Vec::new()
    };
    if opts.format == DeltaFormat::Bsdiff40 {
        let plan = ExecPlan::choose(old, new, &ops, opts, use_ops, reporter);
        return create_bsdiff40(old, new, &ops, digests.1, (in_place, &plan), reporter);
    }
    // Method 3's literals are the same whatever the filter: they compress once, from here on,
    // beside the executable plan and the other parts and candidates.
    // (With one job, they compress in turn, in the candidate.)
    let split_enc = if use_ops && opts.threads > 1 { split_encoder(&ops, opts) } else { None };
    let literals = split_enc.map(|_| split::literal_part(new, &ops)).unwrap_or_default();
    let packed = std::sync::OnceLock::new();
    std::thread::scope(|s| {
        let early = split_enc.map(|(preset, params)| {
            let prime = literal_prime(old, opts);
            let (literals, packed) = (&literals, &packed);
            s.spawn(move || {
                // Set whatever happens: the candidates wait for it.
                let pack = || split::pack(4, literals, preset, params, prime);
                let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(pack))
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::other("compressing the literals failed"))
                    });
                packed.set(done)
            });
            EarlyLiterals { literals, params: (preset, params), packed }
        });
        let plan = ExecPlan::choose(old, new, &ops, opts, use_ops, reporter);
        let encoders = encoders(old, &ops, opts, (use_ops, in_place.is_some()), &plan, new.len())?;
        let candidates =
            compress_all(old, new, &ops, (&encoders, early.as_ref()), &plan, opts, reporter)?;
        assemble(old, new, digests, in_place, candidates, reporter)
    })
}

/// Method 3's literals, compressing on a thread of their own since the ops were found.
struct EarlyLiterals<'a> {
    literals: &'a [u8],
    /// The preset and settings they compress with.
    params: (u32, codec::LzmaParams),
    /// Set when done.
    packed: &'a std::sync::OnceLock<std::io::Result<split::Packed>>,
}

impl EarlyLiterals<'_> {
    /// The compressed literals, once done (an error is passed on as one of the same kind).
    fn wait(&self) -> std::io::Result<split::Packed> {
        match self.packed.wait() {
            Ok(p) => Ok(p.clone()),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// What method 3's literals are primed with: old, unless the delta overwrites old as it applies.
fn literal_prime<'o>(old: &'o [u8], opts: &CreateOptions) -> &'o [u8] {
    if opts.in_place.is_none() { old } else { &[] }
}

/// The preset and settings of the method 3 candidate the options make, if they make one.
fn split_encoder(ops: &[diff::Op], opts: &CreateOptions) -> Option<(u32, codec::LzmaParams)> {
    let mut jobs = Vec::new();
    let level = opts.level.clamp(1, 9);
    op_stream_encoders(&mut jobs, ops_stream_hint(ops), opts.compression, opts.profile, level);
    jobs.into_iter().find_map(|(m, e)| match (m, e) {
        (Method::Split, codec::Encoder::Lzma { preset, params }) => Some((preset, params)),
        _ => None,
    })
}

/// The ops rebuilding new: matched against the whole of old, or per segment for in place.
fn find_ops(
    old: &[u8],
    (new, release): (&[u8], &diff::Release<'_>),
    opts: &CreateOptions,
    in_place: Option<InPlace>,
    reporter: &dyn Reporter,
) -> Result<Vec<diff::Op>, DeltaError> {
    let index_err = |e: diff::IndexError| DeltaError::Index(e.to_string());
    let params = diff::ScanParams { threads: opts.threads.max(1), ..Default::default() };
    if let Some(ip) = in_place {
        reporter.start("match", Some(new.len() as u64));
        let (seg, shift) = (ip.segment() as usize, ip.shift() as usize);
        let ops = diff::diff_in_place(old, new, seg, shift, params).map_err(index_err)?;
        reporter.finish("match");
        return Ok(ops);
    }
    reporter.start("index", Some(old.len() as u64));
    let index = diff::SuffixIndex::build(old, params.threads).map_err(index_err)?;
    reporter.finish("index");
    reporter.start("match", Some(new.len() as u64));
    let ops = diff::diff(&index, new, params, release);
    reporter.finish("match");
    Ok(ops)
}

/// A filter a candidate is made with: the instruction set, and where old lies when absolute
/// pointers are predicted too.
type Filter = Option<(Isa, Option<exec::Abs>)>;

/// The executable transform: which instruction set, whether plain is tried as well, its
/// table, where old lies for absolute pointers, and the filters each op-stream encoder is
/// tried with.
struct ExecPlan {
    isa: Option<Isa>,
    plain_too: bool,
    table: exec::Table,
    filters: Vec<Filter>,
}

impl ExecPlan {
    fn choose(
        old: &[u8],
        new: &[u8],
        ops: &[diff::Op],
        opts: &CreateOptions,
        use_ops: bool,
        reporter: &dyn Reporter,
    ) -> Self {
        let (isa, plain_too) = match opts.exec {
            ExecChoice::None => (None, true),
            ExecChoice::Isa(i) => (Some(i), false),
            ExecChoice::Auto => (Isa::detect(new), true),
        };
        let covers = if opts.profile == Profile::Mcu { exec::MCU_COVERS } else { usize::MAX };
        let table = match isa {
            Some(_) if use_ops => exec::Table::from_ops(ops, covers),
            _ => exec::Table::default(),
        };
        // Absolute pointers: where old lies, as asked, or guessed from the words the ops change
        // and from old's own calls.
        let abs_ok = isa.and_then(Isa::pointer_width).is_some() && use_ops;
        let mut bases = match (opts.abs, isa) {
            (AbsChoice::Base(base), _) if abs_ok => vec![base],
            (AbsChoice::Auto, Some(i)) if abs_ok => {
                let mut b: Vec<u64> = [exec::base_from_ops(old, new, ops, &table, i)]
                    .into_iter()
                    .chain([exec::guess_base(old, i)])
                    .flatten()
                    .collect();
                b.dedup();
                b
            }
            _ => Vec::new(),
        };
        let wide = isa.and_then(Isa::pointer_width) == Some(8);
        bases.retain(|b| b.checked_add(old.len() as u64).is_some_and(|e| wide || e <= 1 << 32));
        let abs: Vec<exec::Abs> = bases
            .into_iter()
            .map(|base| exec::Abs { base, len: exec::pointer_span(old, base) })
            .filter(|a| a.len > 0)
            .collect();
        let mut filters: Vec<Filter> = match isa {
            // Large streams: compressing twice would double the compressors' memory and time,
            // so the prediction (and the pointers) are kept when they leave the fewest
            // non-zero corrections.
            Some(i) if plain_too && use_ops && ops_stream_hint(ops) > 4 << 20 => {
                reporter.start("exec", None);
                let mut options: Vec<Filter> = vec![None, Some((i, None))];
                if matches!(opts.abs, AbsChoice::Base(_)) && !abs.is_empty() {
                    // Asked for: always.
                    options.clear();
                }
                options.extend(abs.iter().map(|&a| Some((i, Some(a)))));
                let table = &table;
                let counts: Vec<u64> = std::thread::scope(|s| {
                    let runs: Vec<_> = options
                        .iter()
                        .map(|&f| {
                            let exec = f.map(|(i, a)| table.exec_abs(i, a));
                            s.spawn(move || ops::nonzero_corrections(old, new, ops, exec))
                        })
                        .collect();
                    runs.into_iter().map(|h| h.join().unwrap_or(u64::MAX)).collect()
                });
                reporter.finish("exec");
                let best = (0..options.len()).min_by_key(|&k| counts[k]).unwrap_or(0);
                return Self { isa, plain_too, table: table.clone(), filters: vec![options[best]] };
            }
            Some(i) if plain_too => vec![None, Some((i, None))],
            Some(i) => vec![Some((i, None))],
            None => vec![None],
        };
        if let Some(i) = isa {
            if matches!(opts.abs, AbsChoice::Base(_)) && !abs.is_empty() {
                // Asked for: always.
                filters.retain(|f| *f != Some((i, None)));
            }
            filters.extend(abs.iter().map(|&a| Some((i, Some(a)))));
        }
        Self { isa, plain_too, table, filters }
    }
}

/// A BSDIFF40 file of `ops`, checked by applying it.
fn create_bsdiff40(
    old: &[u8],
    new: &[u8],
    ops: &[diff::Op],
    new_sha: Sha256,
    (in_place, plan): (Option<InPlace>, &ExecPlan),
    reporter: &dyn Reporter,
) -> Result<Created, DeltaError> {
    if in_place.is_some() || plan.isa.is_some() && !plan.plain_too {
        return Err(DeltaError::InPlace(
            "BSDIFF40 has no room for --in-place or --exec; use --delta-format otadelta".into(),
        ));
    }
    reporter.start("compress", None);
    let bytes = bsdiff40::write(old, new, ops).map_err(DeltaError::Compress)?;
    reporter.finish("compress");
    let applied = apply(old, &bytes, None, &mut |_| Ok(()))
        .map_err(|e| DeltaError::SelfCheck(e.to_string()))?;
    if applied.new_sha256 != new_sha {
        return Err(DeltaError::SelfCheck("BSDIFF40 output differs".into()));
    }
    let info = info(&bytes)?;
    let size = bytes.len() as u64;
    Ok(Created { bytes, info, candidates: vec![(Method::Bsdiff, Compression::None, None, size)] })
}

/// The candidate (method, encoder) pairs for the options and the profile.
fn encoders(
    old: &[u8],
    ops: &[diff::Op],
    opts: &CreateOptions,
    (use_ops, in_place): (bool, bool),
    plan: &ExecPlan,
    new_len: usize,
) -> Result<Vec<(Method, codec::Encoder)>, DeltaError> {
    let level = opts.level.clamp(1, 9);
    let mut jobs: Vec<(Method, codec::Encoder)> = Vec::new();
    if use_ops {
        op_stream_encoders(&mut jobs, ops_stream_hint(ops), opts.compression, opts.profile, level);
    }
    let want_zstd = opts.profile == Profile::Linux
        && !in_place
        && (plan.isa.is_none() || plan.plain_too)
        && matches!(opts.compression, None | Some(Compression::Zstd))
        && (matches!(opts.method, MethodChoice::Zstd | MethodChoice::PatchFrom)
            // patch-from at level 19 runs at about 1 MB/s; auto tries it on MCU-sized images,
            // where it sometimes wins.
            || (opts.method == MethodChoice::Auto && old.len() + new_len <= 8 << 20));
    if want_zstd {
        jobs.push((Method::PatchFrom, codec::Encoder::Zstd { level: 0, window_log: 0 }));
    }
    // A device applies LZMA primed with old reading old and new back from flash: no
    // dictionary in RAM, so its window spans both images. It has no executable prediction.
    let reach = old.len() + new_len;
    // (For Linux only when asked: zstd patch-from is its default.)
    let primed_asked =
        opts.method == MethodChoice::PatchFrom && opts.compression == Some(Compression::Lzma);
    let want_primed = (opts.profile == Profile::Mcu || primed_asked)
        && !in_place
        && matches!(opts.compression, None | Some(Compression::Lzma))
        && (opts.method == MethodChoice::PatchFrom
            || (opts.method == MethodChoice::Auto
                && (plan.isa.is_none() || plan.plain_too)
                && reach <= PRIMED_MAX));
    if want_primed {
        let dict =
            u32::try_from(reach.max(4096)).ok().filter(|&d| d <= 1536 << 20).ok_or_else(|| {
                DeltaError::Unsupported(
                    "old and new together exceed 1.5 GiB, the largest LZMA window".into(),
                )
            })?;
        for (lc, lp, pb) in PRIMED_PROPS {
            let params = codec::LzmaParams { dict, lc, lp, pb };
            jobs.push((Method::PatchFrom, codec::Encoder::Lzma { preset: level, params }));
        }
    }
    if opts.method == MethodChoice::PatchFrom {
        jobs.retain(|(m, _)| *m == Method::PatchFrom);
        if jobs.is_empty() {
            return Err(DeltaError::Unsupported(
                "--method patch-from applies to another slot only (not --in-place), compressed with zstd or LZMA".into(),
            ));
        }
    }
    if opts.method == MethodChoice::Split {
        jobs.retain(|(m, _)| *m == Method::Split);
        if jobs.is_empty() {
            return Err(DeltaError::Unsupported(
                "--method split needs --profile linux and LZMA compression".into(),
            ));
        }
    }
    Ok(jobs)
}

/// Method 2 with LZMA is tried (with the MCU profile) when old and new together are at most
/// this large: its encoder holds both in its window, about 11 bytes of memory per byte.
const PRIMED_MAX: usize = 16 << 20;

/// The LZMA properties method 2 is tried with on a device, `(lc, lp, pb)`: a device's decoder
/// needs `1,847 + 768 << (lc + lp)` probabilities, at most 9,838 bytes here. Two-byte
/// positions suit Thumb-2 code (about 3 % smaller than none on the Pybricks hub images);
/// four-byte ones are there for A32 code and data in words (not measured).
const PRIMED_PROPS: [(u32, u32, u32); 4] = [(0, 0, 0), (0, 1, 1), (1, 1, 1), (0, 2, 2)];

/// The op stream's encoders: the MCU profile's small LZMA; for Linux, LZMA interleaved and in
/// parts, and zstd where it is cheap.
fn op_stream_encoders(
    jobs: &mut Vec<(Method, codec::Encoder)>,
    stream_len_hint: u64,
    compression: Option<Compression>,
    profile: Profile,
    level: u32,
) {
    let mcu_lzma = codec::Encoder::Lzma {
        preset: level,
        params: codec::LzmaParams { dict: 4096, lc: 0, lp: 0, pb: 0 },
    };
    match (compression, profile) {
        (Some(Compression::None), _) => jobs.push((Method::Bsdiff, codec::Encoder::None)),
        (Some(Compression::Lzma), Profile::Mcu) | (None, Profile::Mcu) => {
            jobs.push((Method::Bsdiff, mcu_lzma));
        }
        (Some(Compression::Zstd), Profile::Mcu) => {
            jobs.push((Method::Bsdiff, codec::Encoder::Zstd { level: 19, window_log: 10 }));
        }
        (forced, Profile::Linux) => {
            let dict = stream_len_hint.next_power_of_two().clamp(4096, 8 << 20) as u32;
            if forced != Some(Compression::Zstd) {
                let lzma = codec::Encoder::Lzma {
                    preset: level,
                    params: codec::LzmaParams { dict, lc: 1, lp: 0, pb: 0 },
                };
                // The split method won on every corpus pair; for large streams the
                // interleaved one is not tried beside it (its compressor alone is ~100 MiB).
                if stream_len_hint <= 4 << 20 {
                    jobs.push((Method::Bsdiff, lzma));
                }
                // The same, in five parts (each part's dictionary sized to it: up to 8 MiB
                // for the literals, 1 MiB for the others, which compressed as well or
                // better than 8 MiB on the corpus and take less memory on both sides).
                let split_params = codec::LzmaParams { dict: 8 << 20, lc: 1, lp: 0, pb: 0 };
                jobs.push((
                    Method::Split,
                    codec::Encoder::Lzma { preset: level, params: split_params },
                ));
            }
            // zstd on the op stream lost to LZMA on every corpus pair; auto tries it only
            // where it is cheap (streams up to 8 MiB).
            if forced == Some(Compression::Zstd) || (forced.is_none() && stream_len_hint <= 8 << 20)
            {
                let window_log = codec::window_log_for(stream_len_hint.min(1 << 27) as u32);
                let zlevel = [1, 3, 6, 9, 12, 15, 17, 19, 19][level as usize - 1];
                jobs.push((Method::Bsdiff, codec::Encoder::Zstd { level: zlevel, window_log }));
            }
        }
    }
}

/// Every op-stream encoder with every filter, patch-from once, compressed side by side;
/// smallest first.
fn compress_all(
    old: &[u8],
    new: &[u8],
    ops: &[diff::Op],
    (encoders, early): (&[(Method, codec::Encoder)], Option<&EarlyLiterals<'_>>),
    plan: &ExecPlan,
    opts: &CreateOptions,
    reporter: &dyn Reporter,
) -> Result<Vec<Candidate>, DeltaError> {
    let jobs: Vec<(Method, codec::Encoder, Filter)> = encoders
        .iter()
        .flat_map(|&(m, e)| match m {
            Method::Bsdiff | Method::Split => {
                plan.filters.iter().map(|&f| (m, e, f)).collect::<Vec<_>>()
            }
            Method::PatchFrom => vec![(m, e, None)],
        })
        .collect();
    reporter.start("compress", None);
    let results: Vec<Result<Candidate, DeltaError>> =
        diff::run_limited(opts.threads.max(1), &jobs, |&(method, enc, filter)| {
            let exec = filter.map(|(isa, abs)| plan.table.exec_abs(isa, abs));
            compress_payload(old, new, ops, (method, enc, exec), early, opts)
        });
    reporter.finish("compress");
    let mut done = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    done.sort_by_key(|c| c.payload.len());
    Ok(done)
}

/// The smallest candidate as a delta file (header with its digest, then the payload),
/// checked by applying it.
fn assemble(
    old: &[u8],
    new: &[u8],
    (old_sha, new_sha): (Sha256, Sha256),
    in_place: Option<InPlace>,
    done: Vec<Candidate>,
    reporter: &dyn Reporter,
) -> Result<Created, DeltaError> {
    let candidates = done
        .iter()
        .map(|c| {
            let size = (c.payload.len() + format::HEADER_LEN) as u64;
            (c.method, c.enc.compression(), c.filter.map(|f| f.0), size)
        })
        .collect();
    let Some(Candidate { method, enc, filter, stream_len, payload }) = done.into_iter().next()
    else {
        return Err(DeltaError::SelfCheck("no candidate method".into()));
    };
    let header = Header {
        method,
        compression: enc.compression(),
        window: enc.window(),
        lzma_props: enc.lzma_props(),
        old_size: old.len() as u64,
        old_sha256: old_sha,
        new_size: new.len() as u64,
        new_sha256: new_sha,
        stream_len,
        payload_len: payload.len() as u64,
        digest: Sha256::from_bytes([0; 32]),
        signed: false,
        filter: filter.map(|f| f.0),
        abs_pointers: filter.is_some_and(|f| f.1.is_some()),
        refs: filter.is_some_and(|f| matches!(f.0, Isa::Aarch64 | Isa::X86_64)),
        in_place,
    };
    let mut encoded = header.encode();
    let digest = format::digest(&encoded, &payload);
    encoded[format::DIGESTED_LEN..].copy_from_slice(digest.as_bytes());
    let mut bytes = Vec::with_capacity(format::HEADER_LEN + payload.len());
    bytes.extend_from_slice(&encoded);
    bytes.extend_from_slice(&payload);
    drop(payload);
    reporter.start("verify", Some(new.len() as u64));
    // `apply` checks new's size and digest against the header.
    apply(old, &bytes, None, &mut |_| Ok(())).map_err(|e| DeltaError::SelfCheck(e.to_string()))?;
    reporter.finish("verify");
    let info = info(&bytes)?;
    Ok(Created { bytes, info, candidates })
}

/// About how long the op stream for `ops` is.
fn ops_stream_hint(ops: &[diff::Op]) -> u64 {
    ops.iter().map(|o| (o.add + o.copy) as u64 + 6).sum()
}

/// A compressed payload.
struct Candidate {
    method: Method,
    enc: codec::Encoder,
    filter: Filter,
    /// Decompressed length.
    stream_len: u64,
    payload: Vec<u8>,
}

/// The in-place layout for `ip`: the segment size, and the largest shift of whole segments
/// that leaves old inside the slot.
fn in_place_layout(
    old: &[u8],
    new: &[u8],
    opts: &CreateOptions,
    ip: InPlaceOptions,
) -> Result<InPlace, DeltaError> {
    let bad = |m: String| Err(DeltaError::InPlace(m));
    if opts.format != DeltaFormat::Otadelta {
        return bad("BSDIFF40 cannot be applied in place; use --delta-format otadelta".into());
    }
    let seg = ip.segment_size;
    let log2 = seg.trailing_zeros();
    if !seg.is_power_of_two() || !InPlace::SEGMENT_LOG2.contains(&(log2 as u8)) {
        return bad(format!(
            "--segment-size {seg} must be a power of two from 64 B to 16 MiB (a multiple of the flash's erase unit)"
        ));
    }
    let whole = |n: usize| (n as u64).div_ceil(seg) * seg;
    let (old_room, new_room) = (whole(old.len()), whole(new.len()));
    if ip.memory_size < old_room || ip.memory_size < new_room {
        return bad(format!(
            "--memory-size {} is smaller than old ({old_room} bytes) or new ({new_room} bytes) in whole {seg}-byte segments",
            ip.memory_size
        ));
    }
    let shift_segments = u32::try_from((ip.memory_size - old_room) / seg)
        .map_err(|_| DeltaError::InPlace("the slot is more than 2^32 segments".into()))?;
    Ok(InPlace { segment_log2: log2 as u8, shift_segments })
}

fn compress_payload(
    old: &[u8],
    new: &[u8],
    ops: &[diff::Op],
    (method, enc, exec): (Method, codec::Encoder, Option<exec::Exec<'_>>),
    early: Option<&EarlyLiterals<'_>>,
    opts: &CreateOptions,
) -> Result<Candidate, DeltaError> {
    let (level, threads) = (opts.level.clamp(1, 9), opts.threads.max(1));
    let filter = exec.map(|e| (e.isa, e.abs));
    match method {
        Method::Bsdiff => {
            let mut stream_len = 0;
            let payload = enc
                .compress(&mut |w| {
                    stream_len = ops::write_stream(old, new, ops, exec, w)?;
                    Ok(stream_len)
                })
                .map_err(DeltaError::Compress)?;
            Ok(Candidate { method, enc, filter, stream_len, payload })
        }
        Method::Split => {
            let codec::Encoder::Lzma { preset, params } = enc else {
                return Err(DeltaError::SelfCheck("the split method compresses with LZMA".into()));
            };
            // The reader derives the displacement table from the ops: all covers, not sent.
            let full = exec.map(|_| exec::Table::from_ops(ops, usize::MAX));
            let exec = exec.zip(full.as_ref()).map(|(e, t)| t.exec_abs(e.isa, e.abs));
            let mut table_len = Vec::new();
            if let Some(t) = &full {
                t.encode(&mut table_len);
            }
            // Run-length coding the corrections wins on large streams (LZMA's longest match
            // is 273 bytes) and loses a little on small ones: small ones try both.
            let adds: u64 = ops.iter().map(|o| o.add as u64).sum();
            let variants: &[bool] = if adds <= 4 << 20 { &[true, false] } else { &[true] };
            let prime = literal_prime(old, opts);
            let early = early.filter(|e| e.params == (preset, params));
            let own;
            let literals = match early {
                Some(e) => split::Literals::Early(e.literals, &|| e.wait()),
                None => {
                    own = split::literal_part(new, ops);
                    split::Literals::Raw(&own)
                }
            };
            let payloads = split::compress(
                literals,
                variants,
                &|run_length| split::write_parts(old, new, ops, exec, run_length),
                (preset, params),
                (threads, prime),
            )
            .map_err(DeltaError::Compress)?;
            // The re-interleaved stream: table, controls, corrections (counted from the ops, as
            // part 3 may be run-length coded), literals.
            let best = payloads.into_iter().min_by_key(|p| p.bytes.len()).map(|p| {
                let stream_len = table_len.len() as u64 + p.controls + adds + literals.len();
                (p.bytes, p.window, stream_len)
            });
            let Some((payload, window, stream_len)) = best else {
                return Err(DeltaError::SelfCheck("no split payload".into()));
            };
            let params = codec::LzmaParams { dict: window, ..params };
            let enc = codec::Encoder::Lzma { preset, params };
            Ok(Candidate { method, enc, filter, stream_len, payload })
        }
        Method::PatchFrom => {
            if let codec::Encoder::Lzma { preset, params } = enc {
                let payload =
                    primed::compress(new, old, params, preset).map_err(DeltaError::Compress)?;
                let stream_len = new.len() as u64;
                return Ok(Candidate { method, enc, filter: None, stream_len, payload });
            }
            let total = (old.len() + new.len()).max(1) as u64;
            let window_log = codec::window_log_for(total.min(1 << 31) as u32);
            let zlevel = [3, 6, 9, 12, 15, 17, 19, 19, 19][level as usize - 1];
            let payload = codec::zstd_ref_compress(old, new, zlevel, window_log)
                .map_err(DeltaError::Compress)?;
            Ok(Candidate {
                method,
                enc: codec::Encoder::Zstd { level: zlevel, window_log },
                filter: None,
                stream_len: new.len() as u64,
                payload,
            })
        }
    }
}

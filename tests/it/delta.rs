//! Deltas: round trips over structured and random inputs, BSDIFF40 interop with Debian's
//! bsdiff/bspatch and PyPI bsdiff4, and refusal of every kind of corrupt or mismatched patch
//! without leaving an output file.

use std::path::{Path, PathBuf};
use std::process::Command;

use otaforge::delta::{
    self, Compression, CreateOptions, DeltaError, DeltaFormat, MethodChoice, Profile,
};
use proptest::prelude::*;

use crate::{otaforge, stdout_json};

/// Deterministic bytes that look like firmware: 32-bit instruction words, some repeated
/// sequences, a table of absolute pointers.
pub(crate) fn firmware(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match next() % 8 {
            0 => {
                // pointer table
                let base = 0x0800_0000u32 + (next() as u32 & 0xffff);
                for i in 0..16u32 {
                    out.extend_from_slice(&(base + i * 64).to_le_bytes());
                }
            }
            1 if out.len() > 64 => {
                // repeat an earlier run
                let start = (next() as usize) % (out.len() - 32);
                let run = out[start..start + 32].to_vec();
                out.extend_from_slice(&run);
            }
            _ => out.extend_from_slice(&((next() as u32) & 0xf0ff_ffff).to_le_bytes()),
        }
    }
    out.truncate(len);
    out
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Move(usize, usize, usize),
    Relocate(usize, u32),
    Flip(usize),
}

fn edit(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len();
        match e {
            Edit::Insert(at, bytes) => {
                let at = at % (n + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(at, len) if n > 0 => {
                let at = at % n;
                let end = (at + len).min(n);
                v.drain(at..end);
            }
            Edit::Move(from, len, to) if n > 0 => {
                let from = from % n;
                let end = (from + len).min(n);
                let block: Vec<u8> = v.drain(from..end).collect();
                let to = to % (v.len() + 1);
                v.splice(to..to, block);
            }
            Edit::Relocate(at, by) if n >= 4 => {
                // add a constant to a run of little-endian words, like a linker moving a section
                let mut i = (at % n) & !3;
                while i + 4 <= n && i < (at % n) + 256 {
                    let w = u32::from_le_bytes(v[i..i + 4].try_into().unwrap()).wrapping_add(*by);
                    v[i..i + 4].copy_from_slice(&w.to_le_bytes());
                    i += 4;
                }
            }
            Edit::Flip(at) if n > 0 => v[at % n] ^= 0x5a,
            _ => {}
        }
    }
    v
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 0usize..2000).prop_map(|(a, l)| Edit::Delete(a, l)),
        (any::<usize>(), 0usize..4000, any::<usize>()).prop_map(|(a, l, t)| Edit::Move(a, l, t)),
        (any::<usize>(), 1u32..0x1000).prop_map(|(a, b)| Edit::Relocate(a, b)),
        any::<usize>().prop_map(Edit::Flip),
    ]
}

pub(crate) fn opts(format: DeltaFormat, method: MethodChoice, profile: Profile) -> CreateOptions {
    CreateOptions { format, method, profile, level: 6, threads: 2, ..CreateOptions::default() }
}

fn with_exec(isa: delta::Isa, profile: Profile) -> CreateOptions {
    let o = opts(DeltaFormat::Otadelta, MethodChoice::Bsdiff, profile);
    CreateOptions { exec: delta::ExecChoice::Isa(isa), ..o }
}

fn round_trip(old: &[u8], new: &[u8], o: &CreateOptions) -> Vec<u8> {
    let created = delta::create(old, new, o, &otaforge::NoReporter).expect("create");
    let mut out = Vec::new();
    let applied = delta::apply(old, &created.bytes, None, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .expect("apply");
    assert_eq!(applied.new_size, new.len() as u64);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn structured_edits_round_trip(
        seed in any::<u64>(),
        len in 0usize..40_000,
        edits in proptest::collection::vec(edit_strategy(), 0..6),
        which in 0u8..16,
    ) {
        let old = firmware(seed, len);
        let new = edit(old.clone(), &edits);
        let o = match which {
            0 => opts(DeltaFormat::Otadelta, MethodChoice::Auto, Profile::Linux),
            1 => opts(DeltaFormat::Otadelta, MethodChoice::Bsdiff, Profile::Mcu),
            2 => opts(DeltaFormat::Bsdiff40, MethodChoice::Bsdiff, Profile::Linux),
            3 => CreateOptions { compression: Some(Compression::None), ..opts(DeltaFormat::Otadelta, MethodChoice::Bsdiff, Profile::Linux) },
            4 => opts(DeltaFormat::Otadelta, MethodChoice::Zstd, Profile::Linux),
            // The executable transforms, forced on (firmware-like words hold many patterns).
            5 => with_exec(delta::Isa::Thumb2, Profile::Mcu),
            6 => with_exec(delta::Isa::Aarch64, Profile::Linux),
            7 => with_exec(delta::Isa::X86_64, Profile::Linux),
            11 => with_exec(delta::Isa::A32, Profile::Mcu),
            // Absolute pointers too (the pointer tables of `firmware` are at 0x0800_xxxx).
            12 => CreateOptions { abs: delta::AbsChoice::Base(0x0800_0000), ..with_exec(delta::Isa::Thumb2, Profile::Mcu) },
            13 => CreateOptions { abs: delta::AbsChoice::Base(0x0800_1000), ..with_exec(delta::Isa::A32, Profile::Linux) },
            // The op stream in five parts, plain and with a derived displacement table.
            9 => opts(DeltaFormat::Otadelta, MethodChoice::Split, Profile::Linux),
            10 => CreateOptions {
                exec: delta::ExecChoice::Isa(delta::Isa::X86_64),
                ..opts(DeltaFormat::Otadelta, MethodChoice::Split, Profile::Linux)
            },
            // Method 3 with pointers: the base leads part 0.
            14 => CreateOptions {
                exec: delta::ExecChoice::Isa(delta::Isa::Thumb2),
                abs: delta::AbsChoice::Base(0x0800_0000),
                ..opts(DeltaFormat::Otadelta, MethodChoice::Split, Profile::Linux)
            },
            15 => CreateOptions { abs: delta::AbsChoice::Base(0), ..with_exec(delta::Isa::Aarch64, Profile::Linux) },
            // In place, applied out of place: the same op stream (with absolute pointers).
            _ => CreateOptions {
                in_place: Some(delta::InPlaceOptions { segment_size: 1024, memory_size: 64 << 10 }),
                abs: delta::AbsChoice::Base(0x0800_0000),
                ..with_exec(delta::Isa::Thumb2, Profile::Mcu)
            },
        };
        prop_assert_eq!(round_trip(&old, &new, &o), new);
    }

    #[test]
    fn random_pairs_round_trip(
        old in proptest::collection::vec(any::<u8>(), 0..3000),
        new in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        for o in [
            opts(DeltaFormat::Otadelta, MethodChoice::Auto, Profile::Mcu),
            opts(DeltaFormat::Bsdiff40, MethodChoice::Bsdiff, Profile::Linux),
        ] {
            prop_assert_eq!(round_trip(&old, &new, &o), new.clone());
        }
    }
}

#[test]
fn edge_cases_round_trip_in_every_mode() {
    let fw = firmware(7, 100_000);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("both empty", vec![], vec![]),
        ("empty old", vec![], fw[..5000].to_vec()),
        ("empty new", fw[..5000].to_vec(), vec![]),
        ("identical", fw.clone(), fw.clone()),
        ("old larger", fw.clone(), fw[20_000..60_000].to_vec()),
        ("old smaller", fw[..10_000].to_vec(), fw.clone()),
        ("one byte", vec![1], vec![2]),
    ];
    for (name, old, new) in cases {
        for o in [
            opts(DeltaFormat::Otadelta, MethodChoice::Auto, Profile::Linux),
            opts(DeltaFormat::Otadelta, MethodChoice::Bsdiff, Profile::Mcu),
            opts(DeltaFormat::Otadelta, MethodChoice::Zstd, Profile::Linux),
            opts(DeltaFormat::Bsdiff40, MethodChoice::Bsdiff, Profile::Linux),
            opts(DeltaFormat::Otadelta, MethodChoice::Split, Profile::Linux),
            with_exec(delta::Isa::Thumb2, Profile::Mcu),
            CreateOptions {
                abs: delta::AbsChoice::Base(0x0800_0000),
                ..with_exec(delta::Isa::A32, Profile::Mcu)
            },
            CreateOptions {
                exec: delta::ExecChoice::Isa(delta::Isa::Aarch64),
                ..opts(DeltaFormat::Otadelta, MethodChoice::Split, Profile::Linux)
            },
            CreateOptions {
                exec: delta::ExecChoice::Isa(delta::Isa::Aarch64),
                abs: delta::AbsChoice::Base(0x10_0000),
                ..opts(DeltaFormat::Otadelta, MethodChoice::Split, Profile::Linux)
            },
        ] {
            assert_eq!(round_trip(&old, &new, &o), new, "{name} {o:?}");
        }
    }
}

#[test]
fn small_changes_give_small_deltas_and_mcu_needs_little_ram() {
    let old = firmware(11, 300_000);
    let new = edit(
        old.clone(),
        &[
            Edit::Insert(1000, b"new function".repeat(20)),
            Edit::Relocate(50_000, 0x40),
            Edit::Delete(200_000, 500),
        ],
    );
    let created = delta::create(
        &old,
        &new,
        &opts(DeltaFormat::Otadelta, MethodChoice::Auto, Profile::Mcu),
        &otaforge::NoReporter,
    )
    .unwrap();
    assert!(created.bytes.len() < 3_000, "{} bytes", created.bytes.len());
    assert_eq!(created.info.compression, "lzma");
    assert!(
        created.info.decoder_ram <= 16 * 1024,
        "{} bytes of decoder RAM",
        created.info.decoder_ram
    );
}

/// The low-RAM API: fixed scratch of 64 bytes, old read through `OldImage`, output handed out.
#[test]
fn patcher_with_tiny_buffers_matches_apply() {
    let old = firmware(3, 50_000);
    let new = edit(old.clone(), &[Edit::Move(1000, 3000, 40_000), Edit::Insert(7, vec![9; 100])]);
    let created = delta::create(
        &old,
        &new,
        &CreateOptions {
            compression: Some(Compression::None),
            ..opts(DeltaFormat::Otadelta, MethodChoice::Bsdiff, Profile::Linux)
        },
        &otaforge::NoReporter,
    )
    .unwrap();
    let header = delta::Header::decode(&created.bytes).unwrap();
    let stream = &created.bytes[delta::format::HEADER_LEN..];
    let mut p = delta::Patcher::new(header.old_size, header.new_size);
    let mut scratch = [0u8; 64];
    let mut out = Vec::new();
    for piece in stream.chunks(37) {
        p.feed(piece, &mut &old[..], &mut scratch, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
    }
    p.finish().unwrap();
    assert_eq!(out, new);
}

// ---- corrupt and mismatched patches ---------------------------------------------------------

pub(crate) struct Case {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) old: PathBuf,
    pub(crate) delta: PathBuf,
    out: PathBuf,
}

/// An old firmware image, a new one (`new.bin` in the same folder) and a delta in `format`.
pub(crate) fn case(format: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let old_bytes = firmware(5, 60_000);
    let new_bytes =
        edit(old_bytes.clone(), &[Edit::Insert(100, vec![1; 500]), Edit::Relocate(30_000, 8)]);
    let old = dir.path().join("old.bin");
    let new = dir.path().join("new.bin");
    fs_err::write(&old, &old_bytes).unwrap();
    fs_err::write(&new, &new_bytes).unwrap();
    let delta = dir.path().join("d.delta");
    otaforge()
        .args(["delta", "create"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(&delta)
        .args(["--delta-format", format])
        .assert()
        .success();
    let out = dir.path().join("rebuilt.bin");
    Case { dir, old, delta, out }
}

fn apply_json(c: &Case, delta: &Path) -> (i32, serde_json::Value) {
    let out = otaforge()
        .args(["--format", "json", "delta", "apply"])
        .arg(&c.old)
        .arg(delta)
        .arg("-o")
        .arg(&c.out)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    (code, stdout_json(&out))
}

fn no_output_left(c: &Case) {
    assert!(!c.out.exists(), "an output file was left behind");
    let leftovers: Vec<_> = fs_err::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".otaforge-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn every_flipped_bit_region_of_an_otadelta_is_refused() {
    let c = case("otadelta");
    let good = fs_err::read(&c.delta).unwrap();
    // One flip in every header field and several across the payload.
    let mut offsets: Vec<usize> =
        vec![0, 8, 9, 10, 11, 12, 16, 20, 24, 40, 64, 80, 104, 112, 120, 151];
    offsets.extend((152..good.len()).step_by((good.len() - 152) / 9 + 1));
    offsets.push(good.len() - 1);
    for at in offsets {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let path = c.dir.path().join("bad.delta");
        fs_err::write(&path, &bad).unwrap();
        let (code, json) = apply_json(&c, &path);
        assert_eq!(code, 1, "flip at {at}: {json}");
        let kind = json["error"].as_str().unwrap().to_owned();
        let expected: &[&str] = match at {
            0..=7 => &["unknownFormat"],
            8..=11 | 17..=23 => &["badHeader"],
            12..=16 => &["badHeader", "corruptDelta"],
            // The digest is checked before old, so a changed old-image field reads as a
            // corrupt delta, not as the wrong old file.
            112..=119 => &["badLength"],
            _ => &["corruptDelta"],
        };
        assert!(expected.contains(&kind.as_str()), "flip at {at}: {kind} not in {expected:?}");
        no_output_left(&c);
    }
}

#[test]
fn truncated_and_extended_deltas_are_refused() {
    for format in ["otadelta", "bsdiff40"] {
        let c = case(format);
        let good = fs_err::read(&c.delta).unwrap();
        for len in [0, 7, 20, 40, 151, 152, good.len() / 2, good.len() - 1] {
            let path = c.dir.path().join("cut.delta");
            fs_err::write(&path, &good[..len]).unwrap();
            let (code, json) = apply_json(&c, &path);
            assert_eq!(code, 1, "{format} cut to {len}: {json}");
            no_output_left(&c);
        }
        if format == "otadelta" {
            let mut long = good.clone();
            long.push(0);
            let path = c.dir.path().join("long.delta");
            fs_err::write(&path, &long).unwrap();
            let (code, json) = apply_json(&c, &path);
            assert_eq!((code, json["error"].as_str()), (1, Some("badLength")));
            no_output_left(&c);
        }
    }
}

#[test]
fn wrong_old_file_is_refused_before_writing() {
    let c = case("otadelta");
    let mut old = fs_err::read(&c.old).unwrap();
    old[12_345] ^= 1;
    fs_err::write(&c.old, &old).unwrap();
    let (code, json) = apply_json(&c, &c.delta);
    assert_eq!((code, json["error"].as_str()), (1, Some("wrongOld")));
    assert!(json["message"].as_str().unwrap().contains("wrong old file"));
    no_output_left(&c);
}

#[test]
fn bsdiff40_result_check_with_expected_digest() {
    let c = case("bsdiff40");
    let out = otaforge()
        .args(["--format", "json", "delta", "apply"])
        .arg(&c.old)
        .arg(&c.delta)
        .arg("-o")
        .arg(&c.out)
        .args(["--expect-sha256", &"0".repeat(64)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"], "wrongNew");
    no_output_left(&c);
    // and a corrupted control stream is refused, not applied
    let mut bad = fs_err::read(&c.delta).unwrap();
    bad[40] ^= 0xff;
    let path = c.dir.path().join("bad.patch");
    fs_err::write(&path, &bad).unwrap();
    let (code, _) = apply_json(&c, &path);
    assert_eq!(code, 1);
    no_output_left(&c);
}

#[test]
fn info_describes_both_formats() {
    let c = case("otadelta");
    let out =
        otaforge().args(["--format", "json", "delta", "info"]).arg(&c.delta).output().unwrap();
    assert!(out.status.success());
    let j = stdout_json(&out);
    assert_eq!(j["format"], "otadelta");
    assert_eq!(j["oldSize"], 60_000);
    let old_sha = otaforge::Sha256::digest(&fs_err::read(&c.old).unwrap());
    assert_eq!(j["oldSha256"], old_sha.to_base64());
    let c = case("bsdiff40");
    let out =
        otaforge().args(["--format", "json", "delta", "info"]).arg(&c.delta).output().unwrap();
    let j = stdout_json(&out);
    assert_eq!(
        (j["format"].as_str(), j["compression"].as_str()),
        (Some("bsdiff40"), Some("bzip2"))
    );
    assert!(j["oldSha256"].is_null());
    let out = otaforge().args(["delta", "info"]).arg(&c.old).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither OTADELTA nor BSDIFF40"));
}

#[test]
fn library_errors_are_specific() {
    let old = firmware(1, 20_000);
    let new = edit(old.clone(), &[Edit::Insert(5, vec![3; 64])]);
    let d =
        delta::create(&old, &new, &CreateOptions::default(), &otaforge::NoReporter).unwrap().bytes;
    let sink = &mut |_: &[u8]| Ok(());
    assert!(matches!(delta::apply(&new, &d, None, sink), Err(DeltaError::WrongOld { .. })));
    let mut bad = d.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(delta::apply(&old, &bad, None, sink), Err(DeltaError::Digest { .. })));
    assert!(matches!(delta::apply(&old, b"hello", None, sink), Err(DeltaError::UnknownFormat)));
}

// ---- interop with tools nobody here wrote ---------------------------------------------------

fn require(tool: &str, hint: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success());
    assert!(
        found.unwrap_or(false),
        "{tool} is required for interop tests: {hint} (.ci/run installs it)"
    );
}

fn interop_pair(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let old_bytes = firmware(21, 150_000);
    let new_bytes = edit(
        old_bytes.clone(),
        &[
            Edit::Insert(10_000, b"patched".repeat(30)),
            Edit::Relocate(60_000, 12),
            Edit::Move(90_000, 5000, 2000),
        ],
    );
    let (old, new) = (dir.join("old"), dir.join("new"));
    fs_err::write(&old, &old_bytes).unwrap();
    fs_err::write(&new, &new_bytes).unwrap();
    (old, new, new_bytes)
}

fn create_bsdiff40(old: &Path, new: &Path, out: &Path) {
    otaforge()
        .args(["delta", "create"])
        .arg(old)
        .arg(new)
        .arg("-o")
        .arg(out)
        .args(["--delta-format", "bsdiff40"])
        .assert()
        .success();
}

#[test]
#[ignore = "needs Debian bsdiff/bspatch"]
fn debian_bspatch_applies_our_bsdiff40_and_we_apply_debian_bsdiff() {
    require("bspatch", "apt-get install bsdiff");
    let dir = tempfile::tempdir().unwrap();
    let (old, new, new_bytes) = interop_pair(dir.path());
    let ours = dir.path().join("ours.patch");
    create_bsdiff40(&old, &new, &ours);
    let rebuilt = dir.path().join("by-bspatch");
    let st = Command::new("bspatch").arg(&old).arg(&rebuilt).arg(&ours).status().unwrap();
    assert!(st.success());
    assert_eq!(fs_err::read(&rebuilt).unwrap(), new_bytes);

    let theirs = dir.path().join("theirs.patch");
    assert!(Command::new("bsdiff").arg(&old).arg(&new).arg(&theirs).status().unwrap().success());
    let out = dir.path().join("by-otaforge");
    otaforge()
        .args(["delta", "apply"])
        .arg(&old)
        .arg(&theirs)
        .arg("-o")
        .arg(&out)
        .args(["--expect-sha256", &otaforge::Sha256::digest(&new_bytes).to_hex()])
        .assert()
        .success();
    assert_eq!(fs_err::read(&out).unwrap(), new_bytes);
}

#[test]
#[ignore = "needs PyPI bsdiff4"]
fn pypi_bsdiff4_applies_our_bsdiff40_and_we_apply_its_patches() {
    let probe = Command::new("python3").args(["-c", "import bsdiff4"]).output();
    assert!(
        probe.map(|o| o.status.success()).unwrap_or(false),
        "PyPI bsdiff4 is required: python3 -m pip install bsdiff4 (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (old, new, new_bytes) = interop_pair(dir.path());
    let ours = dir.path().join("ours.patch");
    create_bsdiff40(&old, &new, &ours);
    let theirs = dir.path().join("theirs.patch");
    let by_python = dir.path().join("by-python");
    let script = "import bsdiff4,sys\n\
        o,n,ours,theirs,out=sys.argv[1:]\n\
        bsdiff4.file_patch(o,out,ours)\n\
        bsdiff4.file_diff(o,n,theirs)\n";
    let st = Command::new("python3")
        .args(["-c", script])
        .arg(&old)
        .arg(&new)
        .arg(&ours)
        .arg(&theirs)
        .arg(&by_python)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs_err::read(&by_python).unwrap(), new_bytes);
    let out = dir.path().join("by-otaforge");
    otaforge()
        .args(["delta", "apply"])
        .arg(&old)
        .arg(&theirs)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(fs_err::read(&out).unwrap(), new_bytes);
}

#[test]
fn testdata_delta_is_real_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let sw = |f: &str| crate::testdata(&format!("swupdate/{f}"));
    let out = dir.path().join("rebuilt.swu");
    otaforge()
        .args(["delta", "apply"])
        .arg(sw("image-1.1.swu"))
        .arg(sw("image-1.1-to-1.2.delta"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(fs_err::read(&out).unwrap(), fs_err::read(sw("image-1.2.swu")).unwrap());
    let again = dir.path().join("again.delta");
    otaforge()
        .args(["delta", "create"])
        .arg(sw("image-1.1.swu"))
        .arg(sw("image-1.2.swu"))
        .arg("-o")
        .arg(&again)
        .assert()
        .success();
    assert_eq!(fs_err::read(&again).unwrap(), fs_err::read(sw("image-1.1-to-1.2.delta")).unwrap());
}

/// `--method patch-from` from the command line: LZMA primed with old for the MCU profile (a
/// device's decoder then needs its probabilities and a 256-byte tail), zstd for Linux, refused
/// in place with the reason, and applied by `delta apply`.
#[test]
fn patch_from_through_the_cli() {
    let c = case("otadelta");
    let new = c.dir.path().join("new.bin");
    let make = |profile: &str, extra: &[&str]| {
        let delta = c.dir.path().join(format!("pf-{profile}-{}.delta", extra.len()));
        let out = otaforge()
            .args(["delta", "create"])
            .arg(&c.old)
            .arg(&new)
            .arg("-o")
            .arg(&delta)
            .args(["--method", "patch-from", "--profile", profile])
            .args(extra)
            .output()
            .unwrap();
        (out, delta)
    };
    for (profile, compression) in [("mcu", "lzma"), ("linux", "zstd")] {
        let (out, delta) = make(profile, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let info = otaforge().args(["--format", "json", "delta", "info"]).arg(&delta).output();
        let info = stdout_json(&info.unwrap());
        assert_eq!(
            (info["method"].as_str(), info["compression"].as_str()),
            (Some("patch-from"), Some(compression))
        );
        if profile == "mcu" {
            let ram = info["decoderRam"].as_u64().unwrap();
            assert!(ram <= 10_240, "{ram} bytes of decoder RAM");
        }
        let (code, applied) = apply_json(&c, &delta);
        assert_eq!(code, 0, "{applied}");
        assert!(fs_err::read(&c.out).unwrap() == fs_err::read(&new).unwrap());
        fs_err::remove_file(&c.out).unwrap();
    }
    let in_place = ["--in-place", "--segment-size", "4096", "--memory-size", "256K"];
    let (out, delta) = make("mcu", &in_place);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("patch-from") && err.contains("--in-place"), "{err}");
    assert!(!delta.exists(), "a refused delta was written");
}

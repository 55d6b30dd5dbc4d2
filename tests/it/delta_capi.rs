//! The applier's C API from C: `src/applier/capi/c/harness.c`, compiled with the host's gcc
//! against `include/otadelta.h` and linked with `libotadelta.a`, applies an A/B and an
//! in-place MCU delta made here (and a patch-from one, method 2) on simulated NOR flash, with the power-cut plans of
//! `delta_inplace.rs`, and checks the refusals. And the committed header is the one cbindgen
//! generates from the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use otaforge::delta::{self, AbsChoice, CreateOptions, ExecChoice, InPlaceOptions, Isa, Profile};

use crate::delta::firmware;

fn capi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/applier/capi")
}

/// Builds `libotadelta.a` (release, in a target directory of its own: the outer `cargo test`
/// holds the lock of the usual one) and returns its path.
fn static_lib() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "otaforge-applier-capi"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the static library failed");
    target.join("release/libotadelta.a")
}

/// An MCU-profile delta with the Thumb-2 prediction (so the C side reads a displacement table),
/// and absolute pointers as `abs` says.
fn mcu_delta(old: &[u8], new: &[u8], in_place: Option<InPlaceOptions>, abs: AbsChoice) -> Vec<u8> {
    let exec = ExecChoice::Isa(Isa::Thumb2);
    let opts = CreateOptions {
        profile: Profile::Mcu,
        threads: 2,
        in_place,
        exec,
        abs,
        ..Default::default()
    };
    delta::create(old, new, &opts, &otaforge::NoReporter).expect("create").bytes
}

#[test]
fn c_firmware_applies_ab_and_in_place_deltas_through_power_cuts() {
    // The images of delta_inplace.rs: code inserted early, a block deleted, words relocated, a
    // tail appended.
    let old = firmware(42, 24_000);
    let mut new = old.clone();
    new.splice(2_000..2_000, firmware(7, 1_500));
    new.drain(9_000..9_400);
    for w in new[15_000..15_400].chunks_exact_mut(4) {
        let v = u32::from_le_bytes(w.try_into().unwrap()).wrapping_add(0x60);
        w.copy_from_slice(&v.to_le_bytes());
    }
    new.extend_from_slice(&firmware(9, 2_000));
    let ab = mcu_delta(&old, &new, None, AbsChoice::None);
    let ip = InPlaceOptions { segment_size: 1024, memory_size: 32 * 1024 };
    // The in-place one predicts absolute pointers too (old at a Cortex-M flash address).
    let in_place = mcu_delta(&old, &new, Some(ip), AbsChoice::Base(0x0800_0000));
    for d in [&ab, &in_place] {
        assert_eq!(delta::info(d).unwrap().exec, Some(Isa::Thumb2));
    }
    assert!(
        !delta::info(&ab).unwrap().abs_pointers && delta::info(&in_place).unwrap().abs_pointers
    );

    // Method 2: LZMA whose window the C side reads back from old and from the new slot.
    let opts = CreateOptions {
        profile: Profile::Mcu,
        threads: 2,
        method: delta::MethodChoice::PatchFrom,
        ..Default::default()
    };
    let pf = delta::create(&old, &new, &opts, &otaforge::NoReporter).expect("create").bytes;
    assert_eq!(delta::info(&pf).unwrap().method, delta::Method::PatchFrom);

    let dir = tempfile::tempdir().unwrap();
    let files = [("old", &old), ("new", &new), ("ab.delta", &ab), ("ip.delta", &in_place)];
    for (name, bytes) in files {
        fs_err::write(dir.path().join(name), bytes).unwrap();
    }
    let lib = static_lib();
    let exe = dir.path().join("harness");
    let cc = Command::new("gcc")
        .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(capi_dir().join("include"))
        .arg(capi_dir().join("c/harness.c"))
        .arg(&lib)
        // What Rust's std needs on Linux (the host build of the library links std).
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .status()
        .expect("run gcc");
    assert!(cc.success(), "gcc failed");
    fs_err::write(dir.path().join("pf.delta"), &pf).unwrap();
    let run = Command::new(&exe)
        .args(files.map(|(n, _)| dir.path().join(n)))
        .arg("0")
        .arg(dir.path().join("pf.delta"))
        .output()
        .expect("run the harness");
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the C harness failed ({}):\n{out}{err}", run.status);
    for line in
        ["A/B: ", "in place: ", "refused: ", "every check passed", "pointers: A/B 0, in place 1"]
            .into_iter()
            .chain(["patch-from: work memory", "A/B patch-from: "])
    {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let cuts = |what: &str| -> u32 {
        let l = out.lines().find(|l| l.starts_with(what)).unwrap();
        l.split(", ").nth(1).and_then(|p| p.split(' ').next()).unwrap().parse().unwrap()
    };
    assert!(cuts("A/B: ") > 300 && cuts("in place: ") > 300, "{out}");
    assert!(cuts("A/B patch-from: ") > 300, "{out}");
}

#[test]
#[ignore = "needs cbindgen: cargo xtask ci provisions it"]
fn the_committed_header_is_what_cbindgen_generates() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("otadelta.h");
    let status = Command::new("cbindgen")
        .args(["--config", "cbindgen.toml", "--crate", "otaforge-applier-capi", "--quiet"])
        .arg("--output")
        .arg(&fresh)
        .arg(".")
        .current_dir(capi_dir())
        .status()
        .expect("run cbindgen");
    assert!(status.success(), "cbindgen failed");
    let committed = fs_err::read_to_string(capi_dir().join("include/otadelta.h")).unwrap();
    assert!(
        fs_err::read_to_string(&fresh).unwrap() == committed,
        "include/otadelta.h is stale: regenerate it with `cbindgen --config cbindgen.toml --crate otaforge-applier-capi --output include/otadelta.h .` in src/applier/capi"
    );
}

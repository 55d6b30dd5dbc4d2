//! `applier-mcu`: the device applier on a real Cortex-M4 instruction set. Builds `core` and the
//! applier for `thumbv7em-none-eabihf` with Debian's rustc 1.63 and its `rust-src` (the rustup
//! toolchain here has no ARM target and cannot download one), links the C harness
//! (`src/applier/capi/c/harness.c`) with `arm-none-eabi-gcc` and newlib's semihosting, runs it
//! on QEMU's `mps2-an386` board, and reports the applier's code size, its static RAM and the
//! stack high-water mark of one apply, the numbers recorded in docs/benchmarks.md.
//!
//! `core` is compiled straight from `rust-src` with `rustc` (`-Zforce-unstable-if-unmarked`,
//! through `RUSTC_BOOTSTRAP`, as `-Zbuild-std` does); Debian's `rust-src` has no `Cargo.lock`,
//! which `-Zbuild-std` requires. `compiler_builtins`, which rustc links into every `no_std`
//! crate, is an empty crate here: libgcc and newlib provide the intrinsics at link time.
//!
//! The deltas are made from an MCU image pair of the benchmark corpus (default: `mcu-cityhub`,
//! fetched by `../shared/bench/fetch-corpus.sh`) with the release `otaforge`: one A/B and one
//! in place, both `--profile mcu`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

const TARGET: &str = "thumbv7em-none-eabihf";
const RUSTC: &str = "/usr/bin/rustc";
const CORE_SRC: &str = "/usr/lib/rustlib/src/rust/library/core/src/lib.rs";
/// Code and data flags of the device build: size-optimised, one unit, abort on panic.
const RUST_FLAGS: &[&str] = &[
    "--edition",
    "2021",
    "-C",
    "opt-level=s",
    "-C",
    "panic=abort",
    "-C",
    "debuginfo=1",
    // rustc 1.63 calls an `unsafe` block inside an `unsafe fn` unnecessary; current Rust
    // asks for it (`unsafe_op_in_unsafe_fn`).
    "-A",
    "unused-unsafe",
];
const GCC_FLAGS: &[&str] = &[
    "-mcpu=cortex-m4",
    "-mthumb",
    "-mfloat-abi=hard",
    "-mfpu=fpv4-sp-d16",
    "-O2",
    "-std=c11",
    "-ffunction-sections",
    "-fdata-sections",
    "--specs=rdimon.specs",
    "-Wl,--gc-sections",
    "-Wl,--no-warn-rwx-segments",
];

const COMPILER_BUILTINS: &str = "\
//! compiler_builtins, empty: libgcc and newlib provide the intrinsics at link time.
#![feature(compiler_builtins)]
#![compiler_builtins]
#![no_std]
";

/// The Debian packages, each with a file that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    (RUSTC, "rustc"),
    (CORE_SRC, "rust-src"),
    ("/usr/bin/arm-none-eabi-gcc", "gcc-arm-none-eabi"),
    ("/usr/lib/arm-none-eabi/newlib/rdimon.specs", "libnewlib-arm-none-eabi"),
    ("/usr/bin/qemu-system-arm", "qemu-system-arm"),
];

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let mut pair = None;
    let mut plans = "60".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--pair" => pair = Some(PathBuf::from(it.next().context("--pair DIR")?)),
            "--plans" => plans = it.next().context("--plans N")?.to_string(),
            other => bail!("unknown option {other}; usage: applier-mcu [--pair DIR] [--plans N]"),
        }
    }
    let missing = PACKAGES.iter().filter(|(f, _)| !Path::new(f).exists()).map(|(_, p)| *p);
    crate::tools::apt_install(missing.collect())?;
    let work = crate::target_dir().join("applier-mcu");
    std::fs::create_dir_all(&work)?;
    let lib = build_library(&work)?;
    let pair = match pair {
        Some(p) => p,
        None => {
            let corpus = crate::target_dir().join("delta-corpus");
            let mut fetch = Command::new("bash");
            fetch.arg(crate::shared()?.join("bench/fetch-corpus.sh")).arg(&corpus);
            crate::run(fetch).context("fetching the corpus")?;
            corpus.join("mcu-cityhub")
        }
    };
    let files = make_deltas(&work, &pair)?;
    let elf = link_harness(&work, &lib)?;
    let out = run_qemu(&work, &elf, &files, &plans)?;
    let sizes = applier_sizes(&work.join("harness.map"))?;
    println!(
        "applier on {TARGET} (rustc 1.63, opt-level s, LTO): .text {} B, .rodata {} B, static RAM (.data + .bss) {} B",
        sizes.text,
        sizes.rodata,
        sizes.data + sizes.bss
    );
    let shown = |l: &&str| l.contains("work memory") || l.contains("plans");
    for line in out.lines().filter(shown) {
        println!("{line}");
    }
    Ok(())
}

fn rustc() -> Command {
    let mut c = Command::new(RUSTC);
    c.env("RUSTC_BOOTSTRAP", "1").args(["--target", TARGET]);
    c
}

/// Builds `core`, the empty `compiler_builtins`, the applier and `libotadelta.a`.
fn build_library(work: &Path) -> anyhow::Result<PathBuf> {
    let sysroot = work.join("sysroot");
    let libdir = sysroot.join("lib/rustlib").join(TARGET).join("lib");
    std::fs::create_dir_all(&libdir)?;
    if !libdir.join("libcore.rlib").exists() {
        let mut core = rustc();
        core.args(RUST_FLAGS)
            .args([
                "--crate-type",
                "lib",
                "--crate-name",
                "core",
                "-Z",
                "force-unstable-if-unmarked",
            ])
            .arg(CORE_SRC)
            .arg("--out-dir")
            .arg(&libdir);
        crate::run(core).context("building core for the Cortex-M4 with Debian's rustc")?;
    }
    let cb = work.join("compiler_builtins.rs");
    std::fs::write(&cb, COMPILER_BUILTINS)?;
    let mut builtins = rustc();
    builtins
        .args(RUST_FLAGS)
        .args(["--crate-type", "lib", "--crate-name", "compiler_builtins"])
        .args(["-Z", "force-unstable-if-unmarked", "--sysroot"])
        .arg(&sysroot)
        .arg(&cb)
        .arg("--out-dir")
        .arg(&libdir);
    crate::run(builtins)?;
    let out = work.join("lib");
    let src = crate::root().join("src/applier");
    let mut applier = rustc();
    applier
        .args(RUST_FLAGS)
        .args(["--crate-type", "rlib", "--crate-name", "otaforge_applier", "--sysroot"])
        .arg(&sysroot)
        .arg(src.join("src/lib.rs"))
        .arg("--out-dir")
        .arg(&out);
    crate::run(applier).context("building the applier with Debian's rustc 1.63")?;
    let mut capi = rustc();
    capi.args(RUST_FLAGS)
        .args(["-C", "lto=fat", "-C", "codegen-units=1"])
        .args(["--crate-type", "staticlib", "--crate-name", "otadelta", "--sysroot"])
        .arg(&sysroot)
        .arg("--extern")
        .arg(format!("otaforge_applier={}", out.join("libotaforge_applier.rlib").display()))
        .arg(src.join("capi/src/lib.rs"))
        .arg("--out-dir")
        .arg(&out);
    crate::run(capi).context("building libotadelta.a")?;
    Ok(out.join("libotadelta.a"))
}

/// The harness's five files: old, new, an A/B and an in-place MCU delta of the pair, and a
/// patch-from one (method 2, A/B).
fn make_deltas(work: &Path, pair: &Path) -> anyhow::Result<[PathBuf; 5]> {
    let bin = crate::bench::release_binary()?;
    let (old, new) = (pair.join("old"), pair.join("new"));
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len());
    let memory = size(&old)?.max(size(&new)?).next_multiple_of(4096) + (64 << 10);
    let (ab, ip, pf) = (work.join("ab.delta"), work.join("ip.delta"), work.join("pf.delta"));
    let method = |m: &str| vec!["--method".to_owned(), m.to_owned()];
    for (out, extra) in [
        (&ab, method("bsdiff")),
        (&pf, method("patch-from")),
        (
            &ip,
            vec!["--in-place", "--segment-size", "4096", "--memory-size", &memory.to_string()]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
    ] {
        let mut c = Command::new(&bin);
        c.args(["delta", "create"])
            .arg(&old)
            .arg(&new)
            .arg("-o")
            .arg(out)
            .args(["-q", "--profile", "mcu"])
            .args(extra);
        crate::run(c)?;
    }
    Ok([old, new, ab, ip, pf])
}

fn link_harness(work: &Path, lib: &Path) -> anyhow::Result<PathBuf> {
    let c = crate::root().join("src/applier/capi/c");
    let elf = work.join("harness.elf");
    let mut gcc = Command::new("arm-none-eabi-gcc");
    gcc.args(GCC_FLAGS)
        .arg("-T")
        .arg(c.join("cortex-m/mps2-an386.ld"))
        .arg("-I")
        .arg(crate::root().join("src/applier/capi/include"))
        .arg(c.join("cortex-m/startup.c"))
        .arg(c.join("harness.c"))
        .arg(lib)
        .arg(format!("-Wl,-Map={}", work.join("harness.map").display()))
        .arg("-o")
        .arg(&elf);
    crate::run(gcc).context("linking the harness for the Cortex-M4")?;
    Ok(elf)
}

fn run_qemu(work: &Path, elf: &Path, files: &[PathBuf; 5], plans: &str) -> anyhow::Result<String> {
    let mut semihosting = "enable=on,target=native,arg=harness".to_owned();
    let [old, new, ab, ip, pf] = files;
    for f in [old, new, ab, ip] {
        semihosting.push_str(&format!(",arg={}", f.display()));
    }
    semihosting.push_str(&format!(",arg={plans},arg={}", pf.display()));
    let mut q = Command::new("qemu-system-arm");
    q.args(["-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none"])
        .arg("-semihosting-config")
        .arg(&semihosting)
        .arg("-kernel")
        .arg(elf)
        .current_dir(work);
    eprintln!("$ {q:?}");
    let out = q.output().context("running qemu-system-arm")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() || !text.contains("every check passed") {
        bail!("the harness failed on the emulated Cortex-M4 ({})", out.status);
    }
    Ok(text)
}

#[derive(Default)]
struct Sizes {
    text: u64,
    rodata: u64,
    data: u64,
    bss: u64,
}

/// Adds up the input sections the linker kept from `libotadelta.a`, by kind, from its map.
fn applier_sizes(map: &Path) -> anyhow::Result<Sizes> {
    let text = std::fs::read_to_string(map).with_context(|| format!("{}", map.display()))?;
    let kept = text.split("Memory Configuration").nth(1).context("a linker map")?;
    let mut sizes = Sizes::default();
    let mut section = String::new();
    for line in kept.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(" .") && fields.len() == 1 {
            section = fields[0].to_owned();
            continue;
        }
        let (name, rest) = match fields.as_slice() {
            [n, rest @ ..] if line.starts_with(" .") => (n.to_string(), rest.to_vec()),
            rest if line.starts_with("  ") => (std::mem::take(&mut section), rest.to_vec()),
            _ => continue,
        };
        let [_addr, size, file, ..] = rest.as_slice() else { continue };
        if !file.contains("libotadelta.a") {
            continue;
        }
        let size = u64::from_str_radix(size.trim_start_matches("0x"), 16).unwrap_or(0);
        let kind = name.split('.').nth(1).unwrap_or_default();
        match kind {
            "text" => sizes.text += size,
            "rodata" => sizes.rodata += size,
            "data" => sizes.data += size,
            "bss" => sizes.bss += size,
            _ => {}
        }
    }
    Ok(sizes)
}

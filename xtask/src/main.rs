//! Project automation, run as `cargo xtask <task>`.
//!
//! Tasks:
//! - `ci`: everything CI checks: provisions the outside tools (Debian packages, a Python virtual
//!   environment under `target/pyenv`, Azurite), then format, clippy, every test including the
//!   ones `#[ignore]`d for needing a tool, the official-schema check of every manifest the tests
//!   produced, and hash interop with openssl and sha256sum.
//! - `demo`: the README's run command, a walkthrough on the payloads in `testdata/`.
//! - `result-codes [--check] [--header FILE]`: the Device Update agent's extended result codes
//!   table (`src/service/result_codes/adu.tsv`) from the agent's `result.h`; `ci` runs `--check`.
//! - `tidy`: house rules read from the source (environment names, the help's environment
//!   list, `Result<_, String>` in the library, function length, `#[ignore]` reasons); `ci`
//!   runs it after clippy.
//! - `schema [DIR...]`: checks import manifests against the official JSON schemas in
//!   `../shared/schemas` (or `$OTAFORGE_SHARED/schemas`).
//! - `bench hash`: otaforge hash vs openssl and sha256sum, side by side.
//! - `bench fleet`: a rollout to 10 000 simulated devices and query latency with 100 000.
//! - `bench edge`: target-condition evaluation in twins per second.
//! - `bench lists`: the device-management lists with 100 clients at 10 000 devices.
//! - `bench ui`: every dashboard page's server-side time at 100 000 devices.
//! - `azurite [PORT]`: installs and runs Azurite for the storage tests.
//! - `applier-mcu`: the device applier built for a Cortex-M4 and its C harness run on QEMU.

// xtask is a developer tool: it prints freely and adds its own context to std::fs errors.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

mod applier_mcu;
mod azurite;
mod bench;
mod bench_delta;
mod bench_edge;
mod bench_fleet;
mod bench_lists;
mod bench_ui;
mod bench_upload;
mod demo;
mod deny;
mod result_codes;
mod schema;
mod tidy;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci(),
        ["tidy"] => tidy::run(),
        ["result-codes", rest @ ..] => result_codes::run(rest),
        ["azurite", rest @ ..] => azurite::serve(rest),
        ["applier-mcu", rest @ ..] => applier_mcu::run(rest),
        ["demo"] => demo::run(false),
        ["demo", "--keep"] => demo::run(true),
        ["deny"] => tools::provision().and_then(|()| deny::run()).map(drop),
        ["schema", dirs @ ..] => schema::run(&dirs.iter().map(PathBuf::from).collect::<Vec<_>>()),
        ["bench", "hash", rest @ ..] => bench::hash(rest),
        ["bench", "delta", rest @ ..] => bench_delta::run(rest),
        ["bench", "upload", rest @ ..] => bench_upload::run(rest),
        ["bench", "fleet", rest @ ..] => bench_fleet::run(rest),
        ["bench", "edge", rest @ ..] => bench_edge::run(rest),
        ["bench", "lists", rest @ ..] => bench_lists::run(rest),
        ["bench", "ui", rest @ ..] => bench_ui::run(rest),
        ["fuzz"] => fuzz(30),
        ["fuzz", secs] => fuzz(secs.parse().context("fuzz SECONDS")?),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  ci                 format, clippy, tests, official-schema and interop checks\n  \
                 tidy               house rules: env names, help, error types, function length, #[ignore]\n  \
                 deny               cargo deny: licences, duplicate versions, sources, advisories\n  \
                 result-codes [--check] [--header FILE]\n                     the agent's result codes table from its result.h\n  \
                 demo [--keep]      build and validate sample updates from testdata (no cloud);\n                     --keep leaves serve and its rollout dashboard running\n  \
                 azurite [PORT]     install (npm, pinned) and run Azurite for the storage tests\n  \
                 schema [DIR...]    check manifests against ../shared/schemas\n  \
                 bench hash [--runs N] [--size-mib N]\n                     otaforge hash vs openssl dgst and sha256sum\n  \
                 bench upload [--size-mib N] [--runs N]\n                     otaforge upload vs the Python SDK and curl on Azurite\n  \
                 bench fleet [--devices N] [--registered N] [--runs N]\n                     a rollout to N simulated devices; query latency at scale\n  \
                 bench edge [--twins N] [--runs N]\n                     target-condition evaluation, twins per second\n  \
                 bench lists [--devices N] [--clients N] [--seconds S]\n                     device-management lists under concurrent load\n  \
                 bench ui [--devices N] [--runs N]\n                     dashboard pages' server-side time at 100,000 devices\n  \
                 fuzz [SECONDS]     every cargo-fuzz target for SECONDS each (default 30)\n  \
                 applier-mcu [--pair DIR] [--plans N]\n                     the device applier on an emulated Cortex-M4: size, RAM, stack\n  \
                 bench delta [--corpus DIR] [--pairs a,b] [--skip TOOL,...]\n                     otaforge delta vs bsdiff, xdelta3, zstd, HDiffPatch"
            );
            bail!("unknown task {:?}", args)
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

/// The shared folder beside the checkout, or `$OTAFORGE_SHARED`.
pub(crate) fn shared() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("OTAFORGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("..").join("shared"));
    if !dir.join("schemas").is_dir() {
        bail!(
            "{} has no schemas/ folder; put the shared folder beside the checkout or set OTAFORGE_SHARED",
            dir.display()
        );
    }
    Ok(dir)
}

/// `cargo`, as the one that runs this task.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command, echoing it, and fails when it fails.
pub(crate) fn run(mut cmd: Command) -> anyhow::Result<()> {
    {
        eprintln!("$ {cmd:?}");
    }
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ci() -> anyhow::Result<()> {
    let shared = shared()?;
    // Every outside tool first: the run below includes the tests marked #[ignore] for needing one.
    tools::provision()?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt)?;

    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]);
    run(clippy)?;
    tidy::run()?;
    let advisories = deny::run()?;

    // The tests write every manifest they produce here, so the schema step sees real output.
    let out = target_dir().join("ci-manifests");
    if out.exists() {
        fs_remove(&out)?;
    }
    // The storage tests run against a real Azurite: the one named by the environment, or one
    // started here for the duration of the tests.
    let _azurite;
    let azurite_url = match std::env::var(azurite::ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let az = azurite::start(0)?;
            let url = az.url.clone();
            _azurite = az;
            url
        }
    };
    eprintln!("storage tests use Azurite at {azurite_url}");
    let mut test = cargo();
    test.args(["test", "--workspace", "--", "--include-ignored"])
        .env("PATH", tools::path_with_venv())
        .env("OTAFORGE_MANIFEST_OUT", &out)
        .env("INSTA_UPDATE", "no")
        .env("CI", "true")
        .env(azurite::ENV, &azurite_url)
        .env(tools::AXE_ENV, tools::axe_js());
    let (passed, failed) = run_tests(test)?;

    schema::check(&shared, &[out, root().join("testdata")])?;
    let result_codes = result_codes::check_in_ci()?;
    bench::interop()?;
    eprintln!("xtask ci: all checks passed");
    // One plain closing line with the totals of every test binary, for whoever reads the log.
    println!("ci: {passed} passed, {failed} failed");
    match advisories {
        deny::Advisories::Fetched => println!("ci: advisories checked (RustSec, fetched)"),
        deny::Advisories::Local(date) => {
            println!("ci: advisories checked against a local RustSec copy of {date}")
        }
        deny::Advisories::NotRun => println!("ci: ADVISORIES NOT CHECKED (no RustSec database)"),
    }
    match result_codes {
        result_codes::Checked::Yes => println!("ci: result codes table checked against result.h"),
        result_codes::Checked::NotRun(why) => {
            println!("ci: RESULT CODES TABLE NOT CHECKED (result.h unavailable: {why})")
        }
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up the `test result:` lines.
fn run_tests(mut cmd: Command) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead as _;
    eprintln!("$ {cmd:?}");
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        let part =
                            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ");
                        part.strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({passed} passed, {failed} failed)");
    }
    Ok((passed, failed))
}

fn fs_remove(dir: &Path) -> anyhow::Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// Runs every cargo-fuzz target in `fuzz/` for `secs` seconds (stable Rust via RUSTC_BOOTSTRAP).
fn fuzz(secs: u32) -> anyhow::Result<()> {
    let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml"))?;
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
        .filter(|n| *n != "otaforge-fuzz")
        .collect();
    for t in &targets {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root())
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", t, "--"])
            .arg(format!("-max_total_time={secs}"))
            .arg("-rss_limit_mb=4096");
        run(cmd).with_context(|| {
            format!("fuzz target {t} failed (a crash input is under fuzz/artifacts/{t})")
        })?;
    }
    println!("fuzz: {} targets, {secs} s each, no crashes", targets.len());
    Ok(())
}

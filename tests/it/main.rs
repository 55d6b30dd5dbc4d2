//! The one integration-test binary: runs the real `otaforge` binary and the library against the
//! scenarios in `testdata/`.
//!
//! When `OTAFORGE_MANIFEST_OUT` is set, every import manifest a test produces is copied there, so
//! `cargo xtask ci` can check them against the official JSON schemas.

mod adm;
mod apt;
mod cli;
mod dashboard;
mod delta;
mod delta_capi;
mod delta_inplace;
mod edge;
mod fleet;
mod hardening;
mod hash;
mod iothub;
mod management;
mod management_sdk;
mod manifest;
mod mqtt;
mod pipeline;
mod release;
mod service;
mod sign;
mod storage;

use std::path::{Path, PathBuf};

/// The `otaforge` binary with a clean, deterministic environment: a config directory of its
/// own (see [`config_home`]) and no context named by the environment.
pub fn otaforge() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("otaforge").expect("otaforge binary");
    cmd.env("CI", "1").env_remove("SOURCE_DATE_EPOCH").env_remove("NO_COLOR");
    cmd.env("XDG_CONFIG_HOME", config_home()).env_remove("OTAFORGE_CONTEXT");
    cmd
}

/// A config directory for one `otaforge` process (`XDG_CONFIG_HOME`): a fresh path under the
/// test target's temp dir, created only if the process writes a context (`serve` does). Tests
/// never touch the user's own contexts, and a serve started by one test never becomes the
/// current context of a command in another.
pub fn config_home() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("config-homes")
        .join(format!("{}-{n}", std::process::id()))
}

/// Runs `tests/python/SCRIPT` with `args` (an official SDK driving serve), fails the test with
/// its output unless it succeeds, and returns the JSON object it printed.
pub fn python_json(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = std::process::Command::new("python3").arg(&path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{script} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// A path under `testdata/`.
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)
}

/// Copies a manifest the tests produced to `$OTAFORGE_MANIFEST_OUT`, if set.
pub fn export_manifest(path: &Path, tag: &str) {
    let Some(dir) = std::env::var_os("OTAFORGE_MANIFEST_OUT") else { return };
    let dir = PathBuf::from(dir);
    fs_err::create_dir_all(&dir).expect("create manifest export dir");
    let name = path.file_name().expect("file name").to_string_lossy();
    let name = if name.ends_with(".importmanifest.json") {
        format!("{tag}.{name}")
    } else {
        format!("{tag}.{name}.importmanifest.json")
    };
    fs_err::copy(path, dir.join(name)).expect("export manifest");
}

/// The IoT Hub service connection string `otaforge serve` wrote into its data dir.
pub fn hub_connection(data: &Path) -> otaforge::iothub::ConnectionString {
    fs_err::read_to_string(data.join("iothub.connection-string")).unwrap().parse().unwrap()
}

/// Parses stdout of a finished command as JSON.
pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Reads one HTTP request's head from a test server's connection; returns its path.
pub fn read_request_path(conn: &mut std::net::TcpStream) -> String {
    use std::io::Read as _;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req);
    head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/").to_owned()
}

/// An expiry for device SAS tokens in tests: an hour from now (serve refuses tokens that
/// expire further ahead than IoT Hub's limits allow).
pub fn token_expiry() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600
}

//! Azurite, Microsoft's Azure Storage emulator, for the storage tests and benchmarks: installed
//! from npm (pinned) under `target/azurite`, started in memory on a free loopback port, and
//! stopped when the handle is dropped.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The pinned npm version (it runs on the machine's Node 20 despite declaring Node 22; see
/// ../shared/reference/storage.md §0).
pub(crate) const VERSION: &str = "3.37.0";

/// The environment variable the tests read the blob endpoint from.
pub(crate) const ENV: &str = "OTAFORGE_TEST_AZURITE";

fn dir() -> PathBuf {
    crate::target_dir().join("azurite")
}

fn main_js() -> PathBuf {
    dir().join("node_modules/azurite/dist/src/blob/main.js")
}

/// Installs Azurite from npm unless the pinned version is already there.
pub(crate) fn install() -> anyhow::Result<PathBuf> {
    let pkg = dir().join("node_modules/azurite/package.json");
    let installed = std::fs::read_to_string(&pkg)
        .ok()
        .is_some_and(|t| t.contains(&format!("\"version\": \"{VERSION}\"")));
    if !installed {
        std::fs::create_dir_all(dir())?;
        if !dir().join("package.json").exists() {
            std::fs::write(
                dir().join("package.json"),
                "{\"name\":\"otaforge-azurite\",\"private\":true}\n",
            )?;
        }
        let mut npm = Command::new("npm");
        npm.current_dir(dir())
            .args(["install", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel", "error"])
            .arg(format!("azurite@{VERSION}"));
        crate::run(npm).context("installing Azurite with npm (needs node and npm)")?;
    }
    Ok(main_js())
}

/// A running Azurite blob service.
pub(crate) struct Azurite {
    child: Child,
    /// The blob endpoint, e.g. `http://127.0.0.1:41234/devstoreaccount1`.
    pub(crate) url: String,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Answers 403 to an unauthenticated list: the sign that Azurite is up.
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET /devstoreaccount1?comp=list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[..12] == b"HTTP/1.1 403")
}

/// Installs (if needed) and starts Azurite on `port` (0: a free one), in memory.
pub(crate) fn start(port: u16) -> anyhow::Result<Azurite> {
    let js = install()?;
    let port = if port == 0 { free_port()? } else { port };
    let child = Command::new("node")
        .arg(&js)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args([
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--silent",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting Azurite with node")?;
    let mut az = Azurite { child, url: format!("http://127.0.0.1:{port}/devstoreaccount1") };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(port) {
        if let Some(status) = az.child.try_wait()? {
            bail!("Azurite exited with {status} before answering");
        }
        if Instant::now() > deadline {
            bail!("Azurite did not answer on port {port} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(az)
}

/// `cargo xtask azurite [PORT]`: runs Azurite in the foreground for manual test runs.
pub(crate) fn serve(args: &[&str]) -> anyhow::Result<()> {
    let port = match args {
        [] => 10000,
        [p] => p.parse().context("PORT")?,
        _ => bail!("usage: cargo xtask azurite [PORT]"),
    };
    let az = start(port)?;
    println!(
        "Azurite {VERSION} is listening; in another shell:\n  export {ENV}={}\n  cargo test\nCtrl-C stops it.",
        az.url
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

//! Benchmarks against peer tools, run side by side on the same files, and interop checks.
//!
//! `bench hash`: `otaforge hash` vs `openssl dgst -sha256` and `sha256sum` on one large file and
//! on two half-size files. Files are read once first so every tool reads from the page cache.
//! Reports the median wall time of several runs and CPU time (user + sys) of the median run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Builds the release binary and returns its path.
pub(crate) fn release_binary() -> anyhow::Result<PathBuf> {
    let mut build = crate::cargo();
    build.args(["build", "--release", "--quiet", "--bin", "otaforge"]);
    crate::run(build)?;
    Ok(crate::target_dir().join("release/otaforge"))
}

/// Writes `size` pseudo-random bytes (xorshift, so incompressible and fast to make).
pub(crate) fn make_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// CPU seconds (user + sys) used by waited-for children so far.
#[allow(unsafe_code)]
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass, which is fully owned here.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn time(cmd: &[&str], files: &[PathBuf]) -> anyhow::Result<Sample> {
    let cpu0 = children_cpu();
    let start = Instant::now();
    let status = Command::new(cmd[0])
        .args(&cmd[1..])
        .args(files)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", cmd[0]))?;
    let wall = start.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed");
    }
    Ok(Sample { wall, cpu: children_cpu() - cpu0 })
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by_key(|s| s.wall);
    v.swap_remove(v.len() / 2)
}

pub(crate) fn hash(args: &[&str]) -> anyhow::Result<()> {
    let mut runs = 5;
    let mut size_mib: u64 = 1024;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            "--size-mib" => size_mib = it.next().context("--size-mib N")?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    let bin = release_binary()?;
    let dir = crate::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let size = size_mib << 20;
    let one = dir.join(format!("one-{size_mib}m.bin"));
    let a = dir.join(format!("half-a-{size_mib}m.bin"));
    let b = dir.join(format!("half-b-{size_mib}m.bin"));
    make_file(&one, size, 1)?;
    make_file(&a, size / 2, 2)?;
    make_file(&b, size / 2, 3)?;

    let bin_s = bin.display().to_string();
    let tools: [(&str, Vec<&str>); 3] = [
        ("otaforge hash", vec![bin_s.as_str(), "hash"]),
        ("openssl dgst -sha256", vec!["openssl", "dgst", "-sha256"]),
        ("sha256sum", vec!["sha256sum"]),
    ];
    let cases = [
        (format!("1 file of {size_mib} MiB"), vec![one.clone()]),
        (format!("2 files of {} MiB", size_mib / 2), vec![a.clone(), b.clone()]),
    ];
    let mut table = String::new();
    table.push_str("| case | tool | median wall (s) | MB/s | CPU s (user+sys) | CPU/wall | vs openssl |\n|---|---|---|---|---|---|---|\n");
    for (label, files) in &cases {
        // Warm the page cache so every tool reads from memory.
        time(&["cat"], files)?;
        let mut results = Vec::new();
        for (name, cmd) in &tools {
            let mut samples = Vec::new();
            for _ in 0..runs {
                samples.push(time(cmd, files)?);
            }
            results.push((*name, median(samples)));
        }
        let openssl = results[1].1.wall.as_secs_f64();
        for (name, s) in &results {
            let secs = s.wall.as_secs_f64();
            table.push_str(&format!(
                "| {label} | {name} | {secs:.3} | {:.0} | {:.2} | {:.2} | {:.2}x |\n",
                size as f64 / 1e6 / secs,
                s.cpu.as_secs_f64(),
                s.cpu.as_secs_f64() / secs,
                openssl / secs,
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "bench hash: median of {runs} runs, files in page cache, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    )?;
    writeln!(out, "(\"vs openssl\" is openssl's time / the tool's time: above 1 is faster)\n")?;
    write!(out, "{table}")?;
    Ok(())
}

/// Hashes a few files with otaforge, openssl and sha256sum and requires the same digests.
pub(crate) fn interop() -> anyhow::Result<()> {
    let bin = crate::target_dir().join("debug/otaforge");
    let mut build = crate::cargo();
    build.args(["build", "--quiet", "--bin", "otaforge"]);
    crate::run(build)?;
    let dir = crate::target_dir().join("interop");
    std::fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    for (i, size) in [1u64, 1000, 262_144, 262_145, 3_000_001].iter().enumerate() {
        let p = dir.join(format!("f{i}.bin"));
        make_file(&p, *size, i as u64 + 7)?;
        files.push(p);
    }
    let output = Command::new(&bin).args(["hash", "--format", "json"]).args(&files).output()?;
    if !output.status.success() {
        bail!("otaforge hash failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let ours: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    for (i, f) in files.iter().enumerate() {
        let ssl = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl dgst -sha256 -binary '{}' | base64", f.display()))
            .output()?;
        let ssl = String::from_utf8(ssl.stdout)?.trim().to_owned();
        let sum = Command::new("sha256sum").arg(f).output()?;
        let sum =
            String::from_utf8(sum.stdout)?.split_whitespace().next().unwrap_or_default().to_owned();
        let (b64, hex) =
            (ours[i]["sha256"].as_str().unwrap_or(""), ours[i]["sha256Hex"].as_str().unwrap_or(""));
        if b64 != ssl || hex != sum || ssl.is_empty() || sum.is_empty() {
            bail!("{}: otaforge {b64} / {hex}, openssl {ssl}, sha256sum {sum}", f.display());
        }
    }
    eprintln!(
        "interop: otaforge hash agrees with openssl dgst | base64 and sha256sum on {} files",
        files.len()
    );
    Ok(())
}

/// Registers `devices` devices in ten groups `group-0`..`group-9` (devices `gG-NNNN`, classes
/// m0-m2), each group by a `fleet run` that registers and exits (`bench lists`, `bench ui`).
pub(crate) fn register_groups(
    bin: &Path,
    serve: &crate::demo::Serve,
    devices: usize,
) -> anyhow::Result<()> {
    let hub = serve.data.join("iothub.connection-string");
    let root = serve.data.join("update-root.jwk.json");
    let per_group = devices.div_ceil(10);
    for g in 0..10 {
        let n = per_group.min(devices.saturating_sub(g * per_group));
        if n == 0 {
            break;
        }
        let status = Command::new(bin)
            .args(["--format", "json", "--quiet", "fleet", "run"])
            .arg("--iothub-connection-file")
            .arg(&hub)
            .arg("--root-key")
            .arg(&root)
            .args(["--class", &format!("manufacturer=contoso,model=m{}", g % 3)])
            .args(["--devices", &n.to_string(), "--prefix", &format!("g{g}")])
            .args(["--group", &format!("group-{g}"), "--for", "0s"])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("fleet run for group-{g} exited with {status}");
        }
    }
    Ok(())
}

/// A process's peak resident memory (`VmHWM`) in MiB.
pub(crate) fn vm_hwm_mib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:").map(|k| k / 1024)
}

/// A line of `/proc/PID/status` in KiB (`VmHWM:`, `VmRSS:`).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

//! `bench delta`: otaforge against bsdiff 4.3, xdelta3, zstd patch-from and HDiffPatch (PyPI
//! `hdiffpatch`) on the corpus fetched by `../shared/bench/fetch-corpus.sh`, side by side.
//!
//! Per pair and tool: delta size (bytes and % of new), create wall time and peak RSS, apply wall
//! time; every delta is applied and compared with new. Then otaforge / best peer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub(crate) struct Run {
    pub(crate) wall: Duration,
    pub(crate) max_rss_kib: u64,
    /// User plus system CPU time of the child.
    pub(crate) cpu: Duration,
}

/// Runs `cmd`, waiting with wait4 to read this child's own peak RSS and CPU time.
fn run_measured(cmd: &[String]) -> anyhow::Result<Run> {
    run_measured_env(cmd, &[])
}

/// [`run_measured`] with extra environment variables.
#[allow(unsafe_code)]
pub(crate) fn run_measured_env(cmd: &[String], env: &[(&str, &str)]) -> anyhow::Result<Run> {
    let start = Instant::now();
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", cmd[0]))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI calls with out-pointers to locals we own; the child is ours and is
    // reaped exactly once here (std's Child is never waited on).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{} failed (status {status})", cmd.join(" "));
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok(Run { wall, max_rss_kib: ru.ru_maxrss as u64, cpu: tv(ru.ru_utime) + tv(ru.ru_stime) })
}

/// Builds a command line from (old, new or delta, output).
type CommandLine = Box<dyn Fn(&Path, &Path, &Path) -> Vec<String>>;

struct Tool {
    name: &'static str,
    create: CommandLine,
    apply: CommandLine,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `otaforge delta create` (with `extra` arguments) and `otaforge delta apply`.
fn otaforge_tool(name: &'static str, bin: &Path, extra: &'static [&'static str]) -> Tool {
    let (c, a) = (bin.to_path_buf(), bin.to_path_buf());
    let cmd = |bin: &Path, verb: &str, x: &Path, y: &Path, out: &Path| -> Vec<String> {
        vec![s(bin), "delta".into(), verb.into(), s(x), s(y), "-o".into(), s(out), "-q".into()]
    };
    Tool {
        name,
        create: Box::new(move |o, n, d| {
            let mut v = cmd(&c, "create", o, n, d);
            v.extend(extra.iter().map(|e| e.to_string()));
            v
        }),
        apply: Box::new(move |o, d, n| cmd(&a, "apply", o, d, n)),
    }
}

fn tools(otaforge: PathBuf, hdp_script: PathBuf) -> Vec<Tool> {
    let hdp = hdp_script.clone();
    let hdp2 = hdp_script;
    vec![
        otaforge_tool("otaforge", &otaforge, &[]),
        otaforge_tool("otaforge --profile mcu", &otaforge, &["--profile", "mcu"]),
        Tool {
            name: "bsdiff 4.3",
            create: Box::new(|o, n, d| vec!["bsdiff".into(), s(o), s(n), s(d)]),
            apply: Box::new(|o, d, n| vec!["bspatch".into(), s(o), s(n), s(d)]),
        },
        Tool {
            name: "xdelta3 -9 -S lzma",
            create: Box::new(|o, n, d| {
                let b = source_window(o);
                vec![
                    "xdelta3".into(),
                    "-e".into(),
                    "-9".into(),
                    "-S".into(),
                    "lzma".into(),
                    "-B".into(),
                    b,
                    "-f".into(),
                    "-s".into(),
                    s(o),
                    s(n),
                    s(d),
                ]
            }),
            apply: Box::new(|o, d, n| {
                let b = source_window(o);
                vec![
                    "xdelta3".into(),
                    "-d".into(),
                    "-B".into(),
                    b,
                    "-f".into(),
                    "-s".into(),
                    s(o),
                    s(d),
                    s(n),
                ]
            }),
        },
        Tool {
            name: "zstd -19 --long=31 --patch-from",
            create: Box::new(|o, n, d| {
                vec![
                    "zstd".into(),
                    "-q".into(),
                    "-f".into(),
                    "-19".into(),
                    "--long=31".into(),
                    format!("--patch-from={}", s(o)),
                    s(n),
                    "-o".into(),
                    s(d),
                ]
            }),
            apply: Box::new(|o, d, n| {
                vec![
                    "zstd".into(),
                    "-q".into(),
                    "-d".into(),
                    "-f".into(),
                    "--long=31".into(),
                    format!("--patch-from={}", s(o)),
                    s(d),
                    "-o".into(),
                    s(n),
                ]
            }),
        },
        Tool {
            name: "HDiffPatch lzma2 (PyPI hdiffpatch)",
            create: Box::new(move |o, n, d| {
                vec!["python3".into(), s(&hdp), "diff".into(), s(o), s(n), s(d)]
            }),
            apply: Box::new(move |o, d, n| {
                vec!["python3".into(), s(&hdp2), "apply".into(), s(o), s(d), s(n)]
            }),
        },
    ]
}

/// xdelta3's source window: the old size rounded up to a power of two (at least 64 MiB, the
/// default), so matches anywhere in old are found.
fn source_window(old: &Path) -> String {
    let len = std::fs::metadata(old).map(|m| m.len()).unwrap_or(0);
    len.next_power_of_two().max(64 << 20).to_string()
}

const HDP: &str = "\
import sys, hdiffpatch
mode, a, b, out = sys.argv[1:]
A = open(a, 'rb').read(); B = open(b, 'rb').read()
if mode == 'diff':
    d = hdiffpatch.diff(A, B, hdiffpatch.Lzma2Config(level=9, window=23), validate=False)
else:
    d = hdiffpatch.apply(A, B)
open(out, 'wb').write(d)
";

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let mut corpus = crate::target_dir().join("delta-corpus");
    let mut only: Option<Vec<String>> = None;
    let mut skip_tools: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--corpus" => corpus = PathBuf::from(it.next().context("--corpus DIR")?),
            "--pairs" => {
                only =
                    Some(it.next().context("--pairs a,b")?.split(',').map(str::to_owned).collect())
            }
            "--skip" => {
                skip_tools =
                    it.next().context("--skip TOOL,TOOL")?.split(',').map(str::to_owned).collect()
            }
            other => bail!(
                "unknown option {other}; usage: bench delta [--corpus DIR] [--pairs a,b] [--skip bsdiff,zstd,...]"
            ),
        }
    }
    let fetch = crate::shared()?.join("bench/fetch-corpus.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&fetch).arg(&corpus);
    crate::run(cmd).context("fetching the corpus")?;
    let bin = crate::bench::release_binary()?;
    let work = crate::target_dir().join("bench-delta");
    std::fs::create_dir_all(&work)?;
    let hdp = work.join("hdp.py");
    std::fs::write(&hdp, HDP)?;
    let mut pairs: Vec<PathBuf> = std::fs::read_dir(&corpus)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("old").is_file() && p.join("new").is_file())
        .collect();
    pairs.sort();
    println!("| pair | tool | delta bytes | % of new | create s | create peak RSS MiB | apply s |");
    println!("|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for pair in pairs {
        let name = pair.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if only.as_ref().is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        let (old, new) = (pair.join("old"), pair.join("new"));
        let new_bytes = std::fs::read(&new)?;
        let old_len = std::fs::metadata(&old)?.len();
        let mut results: Vec<(&'static str, u64, f64)> = Vec::new();
        for tool in tools(bin.clone(), hdp.clone()) {
            if tool.name.contains("mcu") && !name.starts_with("mcu-") {
                continue;
            }
            if skip_tools.iter().any(|s| tool.name.starts_with(s.as_str())) {
                continue;
            }
            let delta = work.join(format!("{name}.delta"));
            let rebuilt = work.join(format!("{name}.rebuilt"));
            let _ = std::fs::remove_file(&delta);
            let _ = std::fs::remove_file(&rebuilt);
            let c = match run_measured(&(tool.create)(&old, &new, &delta)) {
                Ok(c) => c,
                Err(e) => {
                    println!("| {name} | {} | failed: {e} | | | | |", tool.name);
                    continue;
                }
            };
            let size = std::fs::metadata(&delta)?.len();
            let a = run_measured(&(tool.apply)(&old, &delta, &rebuilt))?;
            if std::fs::read(&rebuilt)? != new_bytes {
                bail!("{} on {name}: the applied delta does not rebuild new", tool.name);
            }
            let pct = 100.0 * size as f64 / new_bytes.len().max(1) as f64;
            println!(
                "| {name} | {} | {size} | {pct:.2} | {:.2} | {:.0} | {:.2} |",
                tool.name,
                c.wall.as_secs_f64(),
                c.max_rss_kib as f64 / 1024.0,
                a.wall.as_secs_f64()
            );
            results.push((tool.name, size, c.wall.as_secs_f64()));
            let _ = old_len;
        }
        let ours = results.iter().filter(|r| r.0.starts_with("otaforge")).map(|r| r.1).min();
        let best_peer = results.iter().filter(|r| !r.0.starts_with("otaforge")).min_by_key(|r| r.1);
        if let (Some(ours), Some(peer)) = (ours, best_peer) {
            summary.push(format!(
                "{name}: otaforge / best peer ({}) = {:.3}",
                peer.0,
                ours as f64 / peer.1 as f64
            ));
        }
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

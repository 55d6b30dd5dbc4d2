//! `bench delta`: otaforge against bsdiff 4.3, xdelta3, zstd patch-from, HDiffPatch (PyPI
//! `hdiffpatch`) and detools (PyPI; its sequential LZMA patch, and on the Cortex-M images its
//! `arm-cortex-m4` data format) on the corpus fetched by `../shared/bench/fetch-corpus.sh`, side
//! by side. The peers are provisioned first (Debian packages, a pinned virtual environment).
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

/// Whether two files hold the same bytes, read in 1 MiB pieces.
fn same_file(a: &Path, b: &Path) -> anyhow::Result<bool> {
    use std::io::Read as _;
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
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

/// `otaforge --profile mcu --in-place` with 4 KiB segments in a slot 64 KiB larger than the
/// larger image (rounded to segments): the room old shifts up by.
fn in_place_tool(bin: &Path) -> Tool {
    let mut tool = otaforge_tool("otaforge --profile mcu --in-place", bin, &[]);
    let create = tool.create;
    tool.create = Box::new(move |o, n, d| {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let memory = len(o).max(len(n)).next_multiple_of(4096) + (64 << 10);
        let mut v = create(o, n, d);
        v.extend(
            ["--profile", "mcu", "--in-place", "--segment-size", "4096", "--memory-size"]
                .map(String::from),
        );
        v.push(memory.to_string());
        v
    });
    tool
}

/// A peer run by a Python script: `python3 SCRIPT diff|apply A B OUT [EXTRA…]`.
fn python_tool(
    name: &'static str,
    python: &Path,
    script: &Path,
    extra: &'static [&'static str],
) -> Tool {
    let (p1, s1) = (python.to_path_buf(), script.to_path_buf());
    let (p2, s2) = (python.to_path_buf(), script.to_path_buf());
    Tool {
        name,
        create: Box::new(move |o, n, d| {
            let mut v = vec![s(&p1), s(&s1), "diff".into(), s(o), s(n), s(d)];
            v.extend(extra.iter().map(|e| e.to_string()));
            v
        }),
        apply: Box::new(move |o, d, n| vec![s(&p2), s(&s2), "apply".into(), s(o), s(d), s(n)]),
    }
}

fn tools(otaforge: PathBuf, python: &Path, hdp_script: PathBuf, dt_script: PathBuf) -> Vec<Tool> {
    vec![
        otaforge_tool("otaforge", &otaforge, &[]),
        otaforge_tool("otaforge --exec none", &otaforge, &["--exec", "none"]),
        otaforge_tool("otaforge --profile mcu", &otaforge, &["--profile", "mcu"]),
        otaforge_tool(
            "otaforge --profile mcu --exec none",
            &otaforge,
            &["--profile", "mcu", "--exec", "none"],
        ),
        in_place_tool(&otaforge),
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
        python_tool("HDiffPatch lzma2 (PyPI hdiffpatch)", python, &hdp_script, &[]),
        python_tool("detools sequential lzma", python, &dt_script, &[]),
        python_tool("detools arm-cortex-m4 lzma", python, &dt_script, &["arm-cortex-m4"]),
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

/// detools 0.53: `create_patch` (sequential, LZMA) and `apply_patch`; with `arm-cortex-m4`
/// its data format, the whole image taken as code (raw images carry no section table).
const DT: &str = "\
import sys, os, detools
mode, a, b, out = sys.argv[1:5]
if mode == 'diff':
    kw = {}
    if len(sys.argv) > 5:
        kw = dict(data_format=sys.argv[5], from_code_begin=0, from_code_end=os.path.getsize(a),
                  to_code_begin=0, to_code_end=os.path.getsize(b))
    with open(a, 'rb') as fa, open(b, 'rb') as fb, open(out, 'wb') as fo:
        detools.create_patch(fa, fb, fo, compression='lzma', patch_type='sequential', **kw)
else:
    with open(a, 'rb') as fa, open(b, 'rb') as fp, open(out, 'wb') as fo:
        detools.apply_patch(fa, fp, fo)
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
    let dt = work.join("dt.py");
    std::fs::write(&dt, DT)?;
    let python = crate::tools::provision_bench()?;
    let mut pairs: Vec<PathBuf> = std::fs::read_dir(&corpus)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("old").is_file() && p.join("new").is_file())
        .collect();
    pairs.sort();
    println!(
        "| pair | tool | delta bytes | % of new | create s | create peak RSS MiB | apply s | apply peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for pair in pairs {
        let name = pair.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if only.as_ref().is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        let (old, new) = (pair.join("old"), pair.join("new"));
        // Never the whole file in memory: a measured child's peak RSS starts from this
        // process's own (Linux counts the parent's pages a spawned child shared until exec).
        let new_len = std::fs::metadata(&new)?.len();
        let old_len = std::fs::metadata(&old)?.len();
        // (tool, delta bytes, create s, create peak RSS KiB, apply s)
        let mut results: Vec<(&'static str, u64, f64, u64, f64)> = Vec::new();
        for tool in tools(bin.clone(), &python, hdp.clone(), dt.clone()) {
            let mcu_only = tool.name.contains("mcu") || tool.name.contains("cortex");
            if mcu_only && !name.starts_with("mcu-") {
                continue;
            }
            // Without the executable transform: only where there is machine code to predict.
            let code = name.starts_with("mcu-") || name.starts_with("elf-");
            if tool.name.contains("--exec none") && !code {
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
                    println!("| {name} | {} | failed: {e} | | | | | |", tool.name);
                    continue;
                }
            };
            let size = std::fs::metadata(&delta)?.len();
            let a = run_measured(&(tool.apply)(&old, &delta, &rebuilt))?;
            if !same_file(&rebuilt, &new)? {
                bail!("{} on {name}: the applied delta does not rebuild new", tool.name);
            }
            let pct = 100.0 * size as f64 / new_len.max(1) as f64;
            println!(
                "| {name} | {} | {size} | {pct:.2} | {:.2} | {:.0} | {:.2} | {:.0} |",
                tool.name,
                c.wall.as_secs_f64(),
                c.max_rss_kib as f64 / 1024.0,
                a.wall.as_secs_f64(),
                a.max_rss_kib as f64 / 1024.0
            );
            results.push((
                tool.name,
                size,
                c.wall.as_secs_f64(),
                c.max_rss_kib,
                a.wall.as_secs_f64(),
            ));
        }
        let ours = results.iter().filter(|r| r.0.starts_with("otaforge")).min_by_key(|r| r.1);
        let best_peer = results.iter().filter(|r| !r.0.starts_with("otaforge")).min_by_key(|r| r.1);
        let peer = |prefix: &str| results.iter().find(|r| r.0.starts_with(prefix));
        if let (Some(ours), Some(best)) = (ours, best_peer) {
            // The goals of the delta issue, as ratios: size ≤ 0.9 × the best peer; create ≥ 5×
            // faster than bsdiff and no slower than HDiffPatch; create RSS ≤ 6 × old; apply
            // ≥ 200 MB/s.
            let mut line = format!(
                "{name} ({}): size / best peer ({}) = {:.3} (goal ≤ 0.9)",
                ours.0,
                best.0,
                ours.1 as f64 / best.1 as f64
            );
            if let Some(b) = peer("bsdiff") {
                line.push_str(&format!(
                    "; bsdiff create time / ours = {:.2} (goal ≥ 5)",
                    b.2 / ours.2
                ));
            }
            if let Some(h) = peer("HDiffPatch") {
                line.push_str(&format!(
                    "; ours / HDiffPatch create time = {:.2} (goal ≤ 1)",
                    ours.2 / h.2
                ));
            }
            let rss_ratio = ours.3 as f64 * 1024.0 / old_len.max(1) as f64;
            line.push_str(&format!("; create RSS / old = {rss_ratio:.1} (goal ≤ 6)"));
            let mbs = new_len as f64 / 1e6 / ours.4.max(1e-9);
            line.push_str(&format!("; apply {mbs:.0} MB/s (goal ≥ 200)"));
            summary.push(line);
        }
        // What the executable transform gave: with --exec auto (the default) against none.
        for (with, without) in [
            ("otaforge", "otaforge --exec none"),
            ("otaforge --profile mcu", "otaforge --profile mcu --exec none"),
        ] {
            let find = |n: &str| results.iter().find(|r| r.0 == n);
            if let (Some(a), Some(b)) = (find(with), find(without)) {
                summary.push(format!(
                    "{name} ({with}): exec auto / none = {:.4} ({} vs {} bytes)",
                    a.1 as f64 / b.1 as f64,
                    a.1,
                    b.1
                ));
            }
        }
        let find = |n: &str| results.iter().find(|r| r.0 == n);
        if let (Some(a), Some(b)) =
            (find("otaforge --profile mcu --in-place"), find("otaforge --profile mcu"))
        {
            summary.push(format!(
                "{name}: in place / A/B (mcu) = {:.4} ({} vs {} bytes)",
                a.1 as f64 / b.1 as f64,
                a.1,
                b.1
            ));
        }
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

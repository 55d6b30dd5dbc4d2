//! `bench delta`: otaforge against bsdiff 4.3, xdelta3, zstd patch-from, HDiffPatch (PyPI
//! `hdiffpatch`) and detools (PyPI; its sequential LZMA patch, and its data formats where it has
//! one: `arm-cortex-m4` on the Thumb-2 images, `aarch64` on the AArch64 ELF) on the corpus
//! fetched by `../shared/bench/fetch-corpus.sh` plus the pairs [`EXTRA`] fetches (adjacent
//! Pybricks releases: two Thumb-2 hubs and the EV3's ARM926 image, A32; ruff's AArch64 ELF), side
//! by side. The peers are provisioned first (Debian packages, a pinned virtual environment).
//!
//! Per pair and tool: delta size (bytes and % of new), create wall time and peak RSS, apply wall
//! time; every delta is applied and compared with new. Then, per pair, otaforge / best peer for
//! the default profile and, on device images, for the MCU profile, against the goals.

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

/// Pairs beyond the shared corpus, fetched from npm and PyPI (which keep every version):
/// adjacent Pybricks releases 7.27.0 → 7.28.0 of two Thumb-2 hubs (`mcu-*-next`) and of the
/// EV3 (an ARM926 image, A32: `a32-ev3`), and ruff 0.17.3 → 0.17.4 for Linux on AArch64
/// (`elf-ruff-aarch64`). Pairs already present are skipped.
const EXTRA: &str = r#"
set -euo pipefail
dir=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
have() { [ -s "$dir/$1/old" ] && [ -s "$dir/$1/new" ]; }
pybricks() { # version -> unpacks the npm package under $work/pb-$1
  [ -d "$work/pb-$1" ] && return 0
  mkdir -p "$work/pb-$1" && (cd "$work/pb-$1" && npm pack --silent "@pybricks/firmware@$1" >/dev/null 2>&1 && tar xzf ./*.tgz)
}
for pair in mcu-primehub-next:primehub mcu-movehub-next:movehub a32-ev3:ev3; do
  name=${pair%%:*}; hub=${pair##*:}
  have "$name" && continue
  pybricks 7.27.0; pybricks 7.28.0
  mkdir -p "$dir/$name"
  unzip -p "$work/pb-7.27.0/package/build/$hub.zip" firmware-base.bin > "$dir/$name/old"
  unzip -p "$work/pb-7.28.0/package/build/$hub.zip" firmware-base.bin > "$dir/$name/new"
done
if ! have elf-ruff-aarch64; then
  mkdir -p "$dir/elf-ruff-aarch64"
  for v in 0.17.3:old 0.17.4:new; do
    d="$work/ruff-${v%%:*}"; mkdir -p "$d"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_aarch64 \
      --python-version 3.11 -d "$d" "ruff==${v%%:*}" >/dev/null
    unzip -p "$d"/*.whl "ruff-${v%%:*}.data/scripts/ruff" > "$dir/elf-ruff-aarch64/${v##*:}"
  done
fi
"#;

/// What a pair holds, which decides the rows run on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Cortex-M firmware (Thumb-2).
    Thumb2,
    /// ARM-state firmware (A32).
    A32,
    /// An ELF executable (x86-64 or AArch64).
    Elf,
    /// Anything else (tar images).
    Other,
}

impl Kind {
    fn of(pair: &str) -> Self {
        if pair.starts_with("mcu-") {
            Kind::Thumb2
        } else if pair.starts_with("a32-") {
            Kind::A32
        } else if pair.starts_with("elf-") {
            Kind::Elf
        } else {
            Kind::Other
        }
    }

    /// Device firmware: the MCU profile's rows apply.
    fn device(self) -> bool {
        matches!(self, Kind::Thumb2 | Kind::A32)
    }
}

/// Whether `tool` runs on pair `name`.
fn runs_on(tool: &str, name: &str) -> bool {
    let kind = Kind::of(name);
    if (tool.contains("--profile mcu") || tool.contains("--in-place")) && !kind.device() {
        return false;
    }
    if tool.contains("--exec none") && kind == Kind::Other {
        return false;
    }
    if tool.contains("arm-cortex-m4") {
        return kind == Kind::Thumb2;
    }
    if tool.contains("detools aarch64") {
        return name.contains("aarch64");
    }
    true
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
        python_tool("detools aarch64 lzma", python, &dt_script, &["aarch64"]),
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

/// One tool's measurements on a pair: (tool, delta bytes, create s, create peak RSS KiB,
/// apply s).
type Measured = (&'static str, u64, f64, u64, f64);

/// The pair's ratios against the goals of the delta issues: size ≤ 0.9 × the best peer (the
/// default profile's smallest otaforge delta, and on device images the MCU profile's A/B
/// delta); create ≥ 5 × faster than bsdiff and no slower than HDiffPatch; create RSS ≤ 6 × old;
/// apply ≥ 200 MB/s; and what detools' data format gave over its sequential patch.
fn goal_lines(name: &str, results: &[Measured], old_len: u64, new_len: u64) -> Vec<String> {
    let mut lines = Vec::new();
    let best_peer = results.iter().filter(|r| !r.0.starts_with("otaforge")).min_by_key(|r| r.1);
    let peer = |prefix: &str| results.iter().find(|r| r.0.starts_with(prefix));
    let default = results
        .iter()
        .filter(|r| r.0.starts_with("otaforge") && !r.0.contains("--profile mcu"))
        .min_by_key(|r| r.1);
    let mcu = results.iter().find(|r| r.0 == "otaforge --profile mcu");
    let Some(best) = best_peer else { return lines };
    if let Some(ours) = default {
        let mut line = format!(
            "{name} (default profile, {}): size / best peer ({}) = {:.3} (goal ≤ 0.9)",
            ours.0,
            best.0,
            ours.1 as f64 / best.1 as f64
        );
        if let Some(b) = peer("bsdiff") {
            line.push_str(&format!("; bsdiff create time / ours = {:.2} (goal ≥ 5)", b.2 / ours.2));
        }
        if let Some(h) = peer("HDiffPatch") {
            let r = ours.2 / h.2;
            line.push_str(&format!("; ours / HDiffPatch create time = {r:.2} (goal ≤ 1)"));
        }
        let rss_ratio = ours.3 as f64 * 1024.0 / old_len.max(1) as f64;
        line.push_str(&format!("; create RSS / old = {rss_ratio:.1} (goal ≤ 6)"));
        let mbs = new_len as f64 / 1e6 / ours.4.max(1e-9);
        line.push_str(&format!("; apply {mbs:.0} MB/s (goal ≥ 200)"));
        lines.push(line);
    }
    if let Some(m) = mcu {
        lines.push(format!(
            "{name} (MCU profile): size / best peer ({}) = {:.3} (goal ≤ 0.9)",
            best.0,
            m.1 as f64 / best.1 as f64
        ));
    }
    let seq = results.iter().find(|r| r.0 == "detools sequential lzma");
    for df in
        results.iter().filter(|r| r.0.starts_with("detools") && r.0 != "detools sequential lzma")
    {
        if let Some(seq) = seq {
            lines.push(format!(
                "{name}: {} / detools sequential = {:.3} ({} vs {} bytes)",
                df.0,
                df.1 as f64 / seq.1 as f64,
                df.1,
                seq.1
            ));
        }
    }
    lines
}

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
    let mut extra = Command::new("bash");
    extra.args(["-c", EXTRA, "extra"]).arg(&corpus);
    crate::run(extra).context("fetching the extra pairs")?;
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
        let tools: Vec<Tool> = tools(bin.clone(), &python, hdp.clone(), dt.clone())
            .into_iter()
            .filter(|t| runs_on(t.name, &name))
            .filter(|t| !skip_tools.iter().any(|s| t.name.starts_with(s.as_str())))
            .collect();
        summary.extend(bench_pair(&pair, &name, &tools, &work)?);
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

/// Runs every tool on one pair, printing a table row each; returns the pair's summary lines.
fn bench_pair(pair: &Path, name: &str, tools: &[Tool], work: &Path) -> anyhow::Result<Vec<String>> {
    let (old, new) = (pair.join("old"), pair.join("new"));
    // Never the whole file in memory: a measured child's peak RSS starts from this
    // process's own (Linux counts the parent's pages a spawned child shared until exec).
    let new_len = std::fs::metadata(&new)?.len();
    let old_len = std::fs::metadata(&old)?.len();
    let mut results: Vec<Measured> = Vec::new();
    for tool in tools {
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
        results.push((tool.name, size, c.wall.as_secs_f64(), c.max_rss_kib, a.wall.as_secs_f64()));
    }
    let mut summary = goal_lines(name, &results, old_len, new_len);
    let find = |n: &str| results.iter().find(|r| r.0 == n);
    // What the executable transform gave (auto against none), and in place against A/B.
    for (with, without, what) in [
        ("otaforge", "otaforge --exec none", "exec auto / none"),
        ("otaforge --profile mcu", "otaforge --profile mcu --exec none", "exec auto / none"),
        ("otaforge --profile mcu --in-place", "otaforge --profile mcu", "in place / A/B"),
    ] {
        if let (Some(a), Some(b)) = (find(with), find(without)) {
            summary.push(format!(
                "{name} ({with}): {what} = {:.4} ({} vs {} bytes)",
                a.1 as f64 / b.1 as f64,
                a.1,
                b.1
            ));
        }
    }
    Ok(summary)
}

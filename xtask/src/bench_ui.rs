//! `bench ui`: how long each dashboard page takes on the server with a large fleet, on the
//! release build. serve runs on a fresh data dir; `otaforge fleet run` registers N devices
//! (every one reports its agent) in ten groups and exits; an update is imported and deployed
//! to `group-0`. Then every page is read with curl: once right after the writes (its views are
//! rebuilt), then `--runs` times at rest; the time is serve's own, from the page's
//! `Server-Timing: render;dur=MS` header.
//!
//! Goal (issue 27, item 5): every page in ≤ 200 ms server-side at 100,000 devices.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::demo::Serve;

/// serve's render time of `url` in ms, from its `Server-Timing` header.
fn render_ms(url: &str) -> anyhow::Result<f64> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "120", url])
        .output()
        .context("running curl")?;
    let head = String::from_utf8_lossy(&out.stdout);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {url}: {}", head.lines().next().unwrap_or("no answer"));
    }
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("server-timing: render;dur=").map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("GET {url}: no Server-Timing"))
}

/// Runs `bin` with `args`; fails with its stderr unless it succeeds.
fn otaforge(bin: &Path, args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin).args(args).current_dir(dir).output()?;
    if !out.status.success() {
        bail!("otaforge {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let (mut devices, mut runs) = (100_000usize, 20usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> anyhow::Result<usize> {
            Ok(it.next().with_context(|| format!("{what} N"))?.parse()?)
        };
        match *a {
            "--devices" => devices = num("--devices")?,
            "--runs" => runs = num("--runs")?.max(1),
            other => bail!("unknown option {other}; usage: bench ui [--devices N] [--runs N]"),
        }
    }
    let bin = crate::bench::release_binary()?;
    let work = crate::target_dir().join("bench-ui");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let upd = work.join("update");
    std::fs::create_dir_all(&upd)?;
    let serve = Serve::start(&bin, &work.join("data"))?;
    println!("# registering {devices} devices in 10 groups");
    let started = std::time::Instant::now();
    crate::bench::register_groups(&bin, &serve, devices)?;
    println!("# registered in {:.1} s", started.elapsed().as_secs_f64());
    std::fs::write(upd.join("install.sh"), "#!/bin/sh\n")?;
    let ep = ["--endpoint", serve.endpoint.as_str(), "--instance", "default"];
    otaforge(
        &bin,
        &["manifest", "init", "--provider", "contoso", "--name", "bench", "--version", "1.0"]
            .into_iter()
            .chain(["--compat", "manufacturer=contoso,model=m0", "--template", "script"])
            .chain(["--file", "install.sh", "--out-dir", "."])
            .collect::<Vec<_>>(),
        &upd,
    )?;
    let mut import = vec!["--quiet", "import", "contoso.bench.1.0.importmanifest.json"];
    import.extend(ep);
    otaforge(&bin, &import, &upd)?;
    let mut deploy = vec!["--quiet", "deploy", "create", "group-0", "contoso/bench/1.0"];
    deploy.extend(["--id", "bench-1"]);
    deploy.extend(ep);
    otaforge(&bin, &deploy, &upd)?;
    let ui = format!("{}/ui", serve.endpoint);
    let pages = [
        ("fleet", format!("{ui}/")),
        ("group", format!("{ui}/groups/group-0")),
        ("deployment", format!("{ui}/groups/group-0/deployments/bench-1")),
        ("device", format!("{ui}/devices/g0-0000")),
        ("edge", format!("{ui}/edge/deployments")),
        ("audit", format!("{ui}/audit")),
    ];
    println!("\n## bench ui (release build, {} cores)", std::thread::available_parallelism()?);
    println!(
        "{devices} devices in 10 groups; a deployment to group-0 ({} devices)",
        devices.div_ceil(10)
    );
    println!("| page | first read after the writes, ms | at rest: median ms | at rest: max ms |");
    println!("|---|---|---|---|");
    let mut worst = 0f64;
    for (name, url) in &pages {
        let first = render_ms(url)?;
        let mut rest = (0..runs).map(|_| render_ms(url)).collect::<anyhow::Result<Vec<f64>>>()?;
        rest.sort_by(f64::total_cmp);
        let (median, max) = (rest[rest.len() / 2], rest[rest.len() - 1]);
        worst = worst.max(first).max(max);
        println!("| {name} | {first:.1} | {median:.1} | {max:.1} |");
    }
    println!(
        "worst {worst:.1} ms (goal ≤ 200 ms: {})",
        if worst <= 200.0 { "met" } else { "NOT met" }
    );
    drop(serve);
    Ok(())
}

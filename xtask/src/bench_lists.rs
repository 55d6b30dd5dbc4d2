//! `bench lists`: the device-management lists under concurrent load, on the release build.
//! serve runs on a fresh data dir; `otaforge fleet run` registers N devices (every one reports
//! its Device Update agent, so all are Device Update devices) in ten groups and exits. Then
//! Debian's `wrk` (provisioned here) holds C kept-alive connections on each list in turn — the
//! group list, the first page of the device list, the instance's compliance — for S seconds
//! and reports requests per second and latency percentiles. serve's peak RSS (VmHWM) is read
//! from /proc before and after the load: what the lists cost in memory must not grow with the
//! clients.
//!
//! Goal (issue 28, item 8): ≤ 50 ms p99 with 100 clients at 10 000 devices, memory
//! independent of concurrency. (Before: 7 requests/s, p99 18.5 s, serve at 5.2 GB.)

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::demo::Serve;

/// The lists under load, each on its own run.
const LISTS: &[&str] = &["groups", "devices", "updateCompliance"];

/// One list's figures from wrk: requests per second and the latency percentiles, in ms.
struct Load {
    rps: f64,
    p50: f64,
    p99: f64,
    max: f64,
    errors: u64,
}

/// A wrk duration (`812.00us`, `3.41ms`, `1.02s`) in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Runs wrk (2 threads, `clients` connections, `secs` seconds) against `url`.
fn wrk(url: &str, clients: usize, secs: u64) -> anyhow::Result<Load> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{clients}"),
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "30s",
            url,
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str, nth: usize| -> Option<String> {
        let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
        line.split_whitespace().nth(nth).map(str::to_owned)
    };
    let pct = |p: &str| field(p, 1).and_then(|v| millis(&v));
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()))
        .sum();
    Ok(Load {
        rps: field("Requests/sec:", 1).and_then(|v| v.parse().ok()).context("no Requests/sec")?,
        p50: pct("50%").context("no 50%")?,
        p99: pct("99%").context("no 99%")?,
        max: field("Latency", 3).and_then(|v| millis(&v)).unwrap_or(f64::NAN),
        errors,
    })
}

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let (mut devices, mut clients, mut secs) = (10_000usize, 100usize, 10u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> anyhow::Result<usize> {
            Ok(it.next().with_context(|| format!("{what} N"))?.parse()?)
        };
        match *a {
            "--devices" => devices = num("--devices")?,
            "--clients" => clients = num("--clients")?,
            "--seconds" => secs = num("--seconds")? as u64,
            other => bail!(
                "unknown option {other}; usage: bench lists [--devices N] [--clients N] [--seconds S]"
            ),
        }
    }
    crate::tools::provision_load()?;
    let bin = crate::bench::release_binary()?;
    let work = crate::target_dir().join("bench-lists");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let serve = Serve::start(&bin, &work.join("data"))?;
    println!("# registering {devices} devices in 10 groups");
    crate::bench::register_groups(&bin, &serve, devices)?;
    let base = format!("{}/deviceUpdate/default/management", serve.endpoint);
    let url = |list: &str| format!("{base}/{list}?api-version=2022-10-01");
    // One request each first: the view is built once, then shared until the store changes.
    for list in LISTS {
        let status = Command::new("curl").args(["-sf", "-o", "/dev/null", &url(list)]).status()?;
        if !status.success() {
            bail!("GET {list} failed");
        }
    }
    let before = crate::bench::vm_hwm_mib(serve.child.id());
    println!("# {clients} clients, {secs} s per list (wrk)");
    let mut loads = Vec::new();
    for list in LISTS {
        loads.push((list, wrk(&url(list), clients, secs)?));
    }
    let after = crate::bench::vm_hwm_mib(serve.child.id());
    drop(serve);
    println!("\n## bench lists (release build, {} cores)", std::thread::available_parallelism()?);
    println!("{devices} devices in 10 groups, {clients} connections (wrk -t2), {secs} s per list");
    let mut worst = 0f64;
    let mut errors = 0;
    for (list, l) in &loads {
        worst = worst.max(l.p99);
        errors += l.errors;
        println!(
            "GET management/{list:<18} {:8.0} requests/s  p50 {:6.1} ms  p99 {:6.1} ms  max {:6.1} ms",
            l.rps, l.p50, l.p99, l.max
        );
    }
    println!(
        "worst p99 {worst:.1} ms (goal ≤ 50 ms: {})",
        if worst <= 50.0 { "met" } else { "NOT met" }
    );
    println!(
        "serve peak RSS: {} MiB before the load, {} MiB after",
        before.map_or("?".into(), |m| m.to_string()),
        after.map_or("?".into(), |m| m.to_string())
    );
    if errors > 0 {
        bail!("{errors} requests failed or answered other than 2xx");
    }
    Ok(())
}

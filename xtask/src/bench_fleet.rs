//! `bench fleet`: the deployment engine at fleet scale, on the release build. serve runs on a
//! fresh data dir; 1.0 and 1.1 of a 1 MiB image are imported, 1.1 with an otadelta from 1.0.
//! Two `otaforge fleet run` processes register N devices in one group, half running 1.0 (they
//! install through the delta), half with nothing (full download), each device connected over
//! MQTT/TLS (serve's RSS before and after gives the bytes a connection costs); once every
//! device is registered and waiting on its connection, `deploy create --watch` is timed from the deployment's
//! creation to every device having reported. Then the registry grows to the `--registered`
//! total (devices in other groups) and the deployment status and device-state queries are timed
//! from Python over one kept-alive connection (p50/p99/max). serve's peak RSS (VmHWM) is read
//! from /proc at the end.
//!
//! Goals (issues 13, 24): N = 10 000 over MQTT/TLS in ≤ 60 s with serve ≤ 1.5 GiB; both
//! queries ≤ 50 ms p99 with 100 000 devices.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::demo::{Serve, otaforge};

const LATENCY: &str = r#"
import http.client, json, sys, time, urllib.parse
endpoint, group, dep, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
u = urllib.parse.urlparse(endpoint)
c = http.client.HTTPConnection(u.hostname, u.port)
base = f"/deviceUpdate/default/management/groups/{group}"
q = "?api-version=2022-10-01"
def get(path):
    t = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"GET {path}: {r.status} {body[:200]!r}")
    return time.perf_counter() - t, json.loads(body)
_, status = get(f"{base}/deployments/{dep}/status{q}")
cls = status["subgroupStatus"][0]["deviceClassId"]
paths = {
    "deployment status": f"{base}/deployments/{dep}/status{q}",
    "device states (first page)": f"{base}/deviceClassSubgroups/{cls}/deployments/{dep}/devicestates{q}",
}
def report(name, ts):
    ts = sorted(t * 1000 for t in ts)
    p = lambda x: ts[min(len(ts) - 1, int(len(ts) * x))]
    print(f"{name:<40} p50 {p(0.5):7.1f} ms  p99 {p(0.99):7.1f} ms  max {ts[-1]:7.1f} ms  ({len(ts)} requests)")
for name, path in paths.items():
    for _ in range(10):
        get(path)
    report(name, [get(path)[0] for _ in range(runs)])
# After any write the group's view is rebuilt from the store: what a query costs while the
# fleet is reporting. A tag on an idle device is the write.
def touch(i):
    body = json.dumps({"tags": {"touched": i}})
    c.request("PATCH", "/twins/idle-0000", body=body, headers={"content-type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"PATCH twin: {r.status}")
for name, path in paths.items():
    ts = []
    for i in range(runs):
        touch(i)
        ts.append(get(path)[0])
    report(name + ", after a write", ts)
"#;

/// A `fleet run` child and its stderr, read until it says its devices are registered.
struct FleetChild {
    child: std::process::Child,
    name: String,
}

fn fleet(bin: &Path, serve: &Serve, root: &str, args: &[&str]) -> anyhow::Result<FleetChild> {
    let hub = serve.data.join("iothub.connection-string");
    let mut child = Command::new(bin)
        .args(["--format", "json", "fleet", "run"])
        .arg("--iothub-connection-file")
        .arg(&hub)
        .args(["--root-key", root, "--class", "manufacturer=contoso,model=bench"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting otaforge fleet run")?;
    let name = args.join(" ");
    let err = child.stderr.take().context("no stderr")?;
    let mut lines = std::io::BufReader::new(err).lines();
    let mut said = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("devices registered") => break,
            Some(Ok(l)) => said.push(l),
            _ => {
                let status = child.wait()?;
                bail!(
                    "fleet run {name} ended ({status}) before its devices were registered:\n{}",
                    said.join("\n")
                )
            }
        }
    }
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(FleetChild { child, name })
}

impl FleetChild {
    fn finish(self) -> anyhow::Result<serde_json::Value> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!("fleet run {} exited with {}", self.name, out.status);
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("fleet run {} printed no JSON", self.name))
    }
}

/// Idle devices one `fleet run` registers at most while the registry grows (each needs an
/// open file while it registers; this machine's limit is 20,000).
const IDLE_BATCH: usize = 9_000;

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let (mut devices, mut registered, mut runs) = (10_000usize, 100_000usize, 300usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> anyhow::Result<usize> {
            Ok(it.next().with_context(|| format!("{what} N"))?.parse()?)
        };
        match *a {
            "--devices" => devices = num("--devices")?,
            "--registered" => registered = num("--registered")?,
            "--runs" => runs = num("--runs")?,
            other => bail!(
                "unknown option {other}; usage: bench fleet [--devices N] [--registered N] [--runs N]"
            ),
        }
    }
    let bin = crate::bench::release_binary()?;
    let work = crate::target_dir().join("bench-fleet");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let w = |f: &str| work.join(f).display().to_string();
    // 1.0: 1 MiB; 1.1: a few patched runs and 16 KiB more (what a firmware fix looks like).
    crate::bench::make_file(&work.join("bench-1.0.swu"), 1 << 20, 0xf1ee7)?;
    let old = std::fs::read(work.join("bench-1.0.swu"))?;
    let mut new = old.clone();
    for at in [4096usize, 200_000, 500_000, 900_000] {
        new[at..at + 512].iter_mut().for_each(|b| *b = b.wrapping_add(1));
    }
    new.extend(old[..16 << 10].iter().map(|b| b ^ 0x5a));
    std::fs::write(work.join("bench-1.1.swu"), &new)?;
    std::fs::write(work.join("install.sh"), "#!/bin/sh\nexec swupdate -i \"$1\"\n")?;
    let script = w("install.sh");
    otaforge(
        &bin,
        &["delta", "create", &w("bench-1.0.swu"), &w("bench-1.1.swu"), "-o", &w("new.delta")],
        0,
    )?;
    for (version, file, extra) in [
        ("1.0", "bench-1.0.swu", vec![]),
        (
            "1.1",
            "bench-1.1.swu,downloadHandler=otaforge/delta:1",
            vec![
                "--related-file".to_owned(),
                format!("bench-1.1.swu={},source={}", w("new.delta"), w("bench-1.0.swu")),
            ],
        ),
    ] {
        let file = format!("{}/{file}", work.display());
        let mut a = vec![
            "manifest",
            "init",
            "--provider",
            "contoso",
            "--name",
            "bench",
            "--version",
            version,
            "--compat",
            "manufacturer=contoso,model=bench",
            "--template",
            "swupdate",
            "--file",
            &file,
            "--file",
            &script,
            "--out-dir",
        ];
        let out = work.display().to_string();
        a.push(&out);
        a.extend(extra.iter().map(String::as_str));
        otaforge(&bin, &a, 0)?;
    }
    let serve = Serve::start(&bin, &work.join("data"))?;
    let adu = ["--endpoint", serve.endpoint.as_str(), "--instance", "default"];
    for v in ["1.0", "1.1"] {
        let m = w(&format!("contoso.bench.{v}.importmanifest.json"));
        let mut a = vec!["import", m.as_str()];
        a.extend(adu);
        otaforge(&bin, &a, 0)?;
    }
    let root = serve.data.join("update-root.jwk.json").display().to_string();
    let half = (devices / 2).to_string();
    let rest = (devices - devices / 2).to_string();
    let rss_idle = crate::bench::proc_status_kib(serve.child.id(), "VmRSS:");
    let started = Instant::now();
    println!(
        "\n# registering {devices} devices in group `bench` (half on 1.0), each connected over MQTT/TLS"
    );
    let common = |n: &str| -> Vec<String> {
        ["--devices", n, "--group", "bench", "--for", "600s", "--until", n]
            .map(str::to_owned)
            .to_vec()
    };
    let mut a = common(&half);
    a.extend(
        ["--prefix", "delta", "--installed", "contoso/bench/1.0", "--image"].map(str::to_owned),
    );
    a.push(w("bench-1.0.swu"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let on_old = fleet(&bin, &serve, &root, &a)?;
    let mut b = common(&rest);
    b.extend(["--prefix", "full"].map(str::to_owned));
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let fresh = fleet(&bin, &serve, &root, &b)?;
    let registration = started.elapsed();
    // Every device is connected now (a fleet reports "registered" once its devices are).
    let rss_connected = crate::bench::proc_status_kib(serve.child.id(), "VmRSS:");
    println!("registered and connected in {:.1} s", registration.as_secs_f64());

    let t0 = Instant::now();
    let mut create = vec![
        "deploy",
        "create",
        "bench",
        "contoso/bench/1.1",
        "--id",
        "bench-1-1",
        "--watch",
        "--timeout",
        "600s",
    ];
    create.extend(adu);
    let status = Command::new(&bin)
        .args(["--format", "json"])
        .args(&create)
        .stdout(Stdio::null())
        .status()?;
    let rollout = t0.elapsed();
    if !status.success() {
        bail!("deploy create --watch exited with {status}");
    }
    let (x, y) = (on_old.finish()?, fresh.finish()?);
    let installed = x["installed"].as_u64().unwrap_or(0) + y["installed"].as_u64().unwrap_or(0);
    let delta = x["throughDelta"].as_u64().unwrap_or(0) + y["throughDelta"].as_u64().unwrap_or(0);
    let failed = x["failed"].as_u64().unwrap_or(0) + y["failed"].as_u64().unwrap_or(0);
    let rss_rollout = crate::bench::vm_hwm_mib(serve.child.id());
    println!(
        "rolled out in {:.1} s: {installed} installed ({delta} through the delta), {failed} failed",
        rollout.as_secs_f64()
    );

    let extra = registered.saturating_sub(devices);
    let mut registry = Duration::ZERO;
    if extra > 0 {
        println!("\n# growing the registry to {registered} devices");
        let t = Instant::now();
        // A fleet holds a connection (a file) per device while it registers them: grow the
        // registry a batch at a time, each batch its own fleet, under the open-file limit.
        let (mut left, mut batch) = (extra, 0usize);
        while left > 0 {
            let n = left.min(IDLE_BATCH);
            let prefix = if batch == 0 { "idle".to_owned() } else { format!("idle{batch}") };
            let count = n.to_string();
            let idle = fleet(
                &bin,
                &serve,
                &root,
                &["--devices", &count, "--prefix", &prefix, "--group", "idle", "--for", "0s"],
            )?;
            idle.finish()?;
            left -= n;
            batch += 1;
        }
        registry = t.elapsed();
    }
    println!("\n# query latency with {registered} registered devices");
    let latency = Command::new("python3")
        .args(["-c", LATENCY, &serve.endpoint, "bench", "bench-1-1", &runs.to_string()])
        .output()?;
    if !latency.status.success() {
        bail!("latency probe failed: {}", String::from_utf8_lossy(&latency.stderr));
    }
    let rss_end = crate::bench::vm_hwm_mib(serve.child.id());
    let goal = |mib: Option<u64>| match mib {
        Some(m) if m <= 1536 => "met",
        Some(_) => "NOT met",
        None => "?",
    };
    drop(serve);

    println!("\n## bench fleet (release build, {} cores)", std::thread::available_parallelism()?);
    println!(
        "update: 1 MiB image; 1.1 = 1.0 + 4 patched runs + 16 KiB; delta {} bytes",
        std::fs::metadata(work.join("new.delta"))?.len()
    );
    println!(
        "registration of {devices} devices, each connected over MQTT/TLS (2 fleet processes): {:.1} s",
        registration.as_secs_f64()
    );
    if let (Some(idle), Some(connected)) = (rss_idle, rss_connected) {
        println!(
            "serve RSS {} MiB idle, {} MiB with {devices} connections: {} bytes per connection",
            idle / 1024,
            connected / 1024,
            connected.saturating_sub(idle) * 1024 / devices.max(1) as u64
        );
    }
    println!(
        "rollout to {devices} devices (deploy create → all reported): {:.1} s  (goal ≤ 60 s: {})",
        rollout.as_secs_f64(),
        if rollout <= Duration::from_secs(60) { "met" } else { "NOT met" }
    );
    println!("  installed {installed} ({delta} through the delta), failed {failed}");
    if extra > 0 {
        println!("registry grown by {extra} devices in {:.1} s", registry.as_secs_f64());
    }
    print!("{}", String::from_utf8_lossy(&latency.stdout));
    println!(
        "serve peak RSS: {} MiB after the rollout (goal ≤ 1.5 GiB: {}), {} MiB at the end",
        rss_rollout.map_or("?".into(), |m| m.to_string()),
        goal(rss_rollout),
        rss_end.map_or("?".into(), |m| m.to_string())
    );
    if installed != devices as u64 {
        bail!("{installed} of {devices} devices installed");
    }
    Ok(())
}

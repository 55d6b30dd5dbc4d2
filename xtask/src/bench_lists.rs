//! `bench lists`: the device-management lists under concurrent load, on the release build.
//! serve runs on a fresh data dir; `otaforge fleet run` registers N devices (every one reports
//! its Device Update agent, so all are Device Update devices) in ten groups and exits. Then C
//! clients, each on its own kept-alive connection, ask for the group list, the first page of
//! the device list and the instance's compliance as fast as serve answers, and each request's
//! latency is kept (p50/p99/max per list). serve's peak RSS (VmHWM) is read from /proc before
//! and after the load: what the lists cost in memory must not grow with the clients.
//!
//! Goal (issue 28, item 8): ≤ 50 ms p99 with 100 clients at 10 000 devices, memory
//! independent of concurrency. (Before: 7 requests/s, p99 18.5 s, serve at 5.2 GB.)

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::demo::Serve;

const LOAD: &str = r#"
import http.client, json, sys, threading, time, urllib.parse
endpoint, clients, per_client = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlparse(endpoint)
q = "?api-version=2022-10-01"
base = "/deviceUpdate/default/management"
paths = {"groups": f"{base}/groups{q}", "devices": f"{base}/devices{q}",
         "updateCompliance": f"{base}/updateCompliance{q}"}
times = {k: [] for k in paths}
errors = []
lock = threading.Lock()
start = threading.Barrier(clients)
def client(i):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    names = list(paths)
    mine = {k: [] for k in paths}
    start.wait()
    for n in range(per_client):
        name = names[(i + n) % len(names)]
        t = time.perf_counter()
        try:
            c.request("GET", paths[name])
            r = c.getresponse()
            body = r.read()
        except Exception as e:
            with lock:
                errors.append(f"{name}: {e}")
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            continue
        mine[name].append(time.perf_counter() - t)
        if r.status != 200:
            with lock:
                errors.append(f"{name}: {r.status} {body[:120]!r}")
    with lock:
        for k, v in mine.items():
            times[k].extend(v)
t0 = time.perf_counter()
threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.perf_counter() - t0
total = sum(len(v) for v in times.values())
out = {"wall": wall, "requests": total, "errors": errors[:5], "errorCount": len(errors), "lists": {}}
for k, ts in times.items():
    ts = sorted(x * 1000 for x in ts)
    p = lambda x: ts[min(len(ts) - 1, int(len(ts) * x))] if ts else float("nan")
    out["lists"][k] = {"p50": p(0.5), "p99": p(0.99), "max": ts[-1] if ts else float("nan"), "n": len(ts)}
print(json.dumps(out))
"#;

fn vm_hwm_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let (mut devices, mut clients, mut requests) = (10_000usize, 100usize, 50usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> anyhow::Result<usize> {
            Ok(it.next().with_context(|| format!("{what} N"))?.parse()?)
        };
        match *a {
            "--devices" => devices = num("--devices")?,
            "--clients" => clients = num("--clients")?,
            "--requests" => requests = num("--requests")?,
            other => bail!(
                "unknown option {other}; usage: bench lists [--devices N] [--clients N] [--requests N per client]"
            ),
        }
    }
    let bin = crate::bench::release_binary()?;
    let work = crate::target_dir().join("bench-lists");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let serve = Serve::start(&bin, &work.join("data"))?;
    let hub = serve.data.join("iothub.connection-string");
    let root = serve.data.join("update-root.jwk.json");
    println!("# registering {devices} devices in 10 groups");
    let per_group = devices.div_ceil(10);
    for g in 0..10 {
        let n = per_group.min(devices.saturating_sub(g * per_group));
        if n == 0 {
            break;
        }
        let status = Command::new(&bin)
            .args(["--format", "json", "--quiet", "fleet", "run", "--endpoint", &serve.endpoint])
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
    let before = vm_hwm_mib(serve.child.id());
    println!("# {clients} clients, {requests} requests each");
    let out = Command::new("python3")
        .args(["-c", LOAD, &serve.endpoint, &clients.to_string(), &requests.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("load failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let after = vm_hwm_mib(serve.child.id());
    drop(serve);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).context("load output")?;
    println!("\n## bench lists (release build, {} cores)", std::thread::available_parallelism()?);
    println!("{devices} devices in 10 groups, {clients} clients on kept-alive connections");
    let wall = r["wall"].as_f64().unwrap_or(f64::NAN);
    let total = r["requests"].as_u64().unwrap_or(0);
    println!("{total} requests in {wall:.1} s: {:.0} requests/s", total as f64 / wall);
    let mut worst = 0f64;
    for name in ["groups", "devices", "updateCompliance"] {
        let l = &r["lists"][name];
        let p99 = l["p99"].as_f64().unwrap_or(f64::NAN);
        worst = worst.max(p99);
        println!(
            "GET management/{name:<18} p50 {:7.1} ms  p99 {p99:7.1} ms  max {:7.1} ms  ({} requests)",
            l["p50"].as_f64().unwrap_or(f64::NAN),
            l["max"].as_f64().unwrap_or(f64::NAN),
            l["n"]
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
    let errors = r["errorCount"].as_u64().unwrap_or(0);
    if errors > 0 {
        bail!("{errors} requests failed, e.g. {}", r["errors"]);
    }
    Ok(())
}

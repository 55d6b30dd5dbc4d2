//! `bench edge`: target-condition evaluation on the release build. 100 000 twins (tags,
//! reported properties, capabilities, as an Edge fleet has them) are written once; each typical
//! condition is evaluated over all of them by `otaforge edge condition --twin`, which times the
//! evaluation alone (one thread, parsing of the twins file excluded). Reports twins per second,
//! median of the runs. Goal (issue 14): ≥ 1 000 000 twins/s on one core. Then what-if on the
//! same twins and 100 deployments (goal ≤ 1 s).

use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

const CONDITIONS: &[&str] = &[
    "tags.environment = 'prod'",
    "tags.environment = 'prod' AND tags.location = 'westus'",
    "tags.environment = 'prod' AND properties.reported.devicemodel = '4000x' AND NOT deviceId = 'edge-00042'",
    "tags.ring IN [1, 2] AND capabilities.iotEdge = true",
    "STARTSWITH(deviceId, 'edge-001') OR IS_DEFINED(tags.canary)",
    "properties.reported.fw >= 3 AND tags.[[site-id]] = 'plant-7'",
];

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let (mut twins, mut runs) = (100_000usize, 5usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--twins" => twins = it.next().context("--twins N")?.parse()?,
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            other => bail!("unknown option {other}; usage: bench edge [--twins N] [--runs N]"),
        }
    }
    let bin = crate::bench::release_binary()?;
    let work = crate::target_dir().join("bench-edge");
    std::fs::create_dir_all(&work)?;
    let file = work.join(format!("twins-{twins}.json"));
    let sites = ["plant-7", "plant-9", "lab"];
    let envs = ["prod", "test", "dev"];
    let locs = ["westus", "eastus", "northeurope"];
    let list: Vec<Value> = (0..twins)
        .map(|i| {
            let mut tags = json!({
                "environment": envs[i % 3], "location": locs[i / 3 % 3], "ring": i % 4,
                "site-id": sites[i / 7 % 3],
            });
            if i % 50 == 1 {
                tags["canary"] = json!(true);
            }
            json!({
                "deviceId": format!("edge-{i:05}"),
                "tags": tags,
                "properties": {
                    "desired": {"$version": 3},
                    "reported": {"devicemodel": if i % 2 == 0 { "4000x" } else { "3000x" }, "fw": i % 5,
                                 "lastDesiredStatus": {"code": 200}},
                },
                "capabilities": {"iotEdge": i % 10 != 0},
                "status": "enabled",
            })
        })
        .collect();
    std::fs::write(&file, serde_json::to_vec(&list)?)?;
    println!("\n## bench edge (release build; evaluation on one thread, {twins} twins)");
    let mut worst = f64::INFINITY;
    for cond in CONDITIONS {
        let mut rates = Vec::new();
        let mut targeted = 0;
        for _ in 0..runs {
            let out = Command::new(&bin)
                .args(["--format", "json", "edge", "condition", cond, "--twin"])
                .arg(&file)
                .output()?;
            if !out.status.success() {
                bail!("otaforge edge condition {cond:?}: {}", String::from_utf8_lossy(&out.stdout));
            }
            let v: Value = serde_json::from_slice(&out.stdout)?;
            let secs = v["evaluationSeconds"].as_f64().context("no evaluationSeconds")?;
            targeted = v["targeted"].as_array().map_or(0, Vec::len);
            rates.push(twins as f64 / secs);
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        worst = worst.min(median);
        println!("{:>6.2} M twins/s  {targeted:>6} targeted  {cond}", median / 1e6);
    }
    println!(
        "slowest: {:.2} M twins/s (goal ≥ 1 M/s: {})",
        worst / 1e6,
        if worst >= 1e6 { "met" } else { "NOT met" }
    );
    what_if(&bin, &work, &file, twins, runs)
}

/// 100 deployments as a fleet of sites has them: 30 bases per site (by ring), two fallbacks
/// (every Edge device; prod devices), and 8 layers; what-if of deleting one site's base, retargeting a
/// fallback and creating a new layer, each timed by the command (assignment alone, both
/// cores; reading the files excluded). Goal: ≤ 1 s.
fn what_if(
    bin: &std::path::Path,
    work: &std::path::Path,
    twins_file: &std::path::Path,
    twins: usize,
    runs: usize,
) -> anyhow::Result<()> {
    let content = |layered: bool| {
        if layered {
            json!({"modulesContent": {"$edgeAgent": {"properties.desired.modules.logger": {}}}})
        } else {
            json!({"modulesContent": {"$edgeAgent": {"properties.desired": {}}, "$edgeHub": {"properties.desired": {}}}})
        }
    };
    let mut configs = Vec::new();
    // `lab` devices have no site base (plant-11 has no device yet): they run on the fallbacks.
    let sites = ["plant-7", "plant-9", "plant-11"];
    for (i, site) in sites.iter().enumerate() {
        for ring in 0..30 {
            configs.push(json!({
                "id": format!("base-{site}-{ring}"),
                "targetCondition": format!("tags.[[site-id]] = '{site}' AND tags.ring = {}", ring % 4),
                "priority": 10 + ring, "createdTimeUtc": format!("2026-0{}-01T00:00:{ring:02}Z", i + 1),
                "content": content(false),
            }));
        }
    }
    configs.push(json!({"id": "fallback", "targetCondition": "*", "priority": 1, "createdTimeUtc": "2026-01-01T00:00:00Z", "content": content(false)}));
    configs.push(json!({"id": "fallback-prod", "targetCondition": "tags.environment = 'prod'", "priority": 2, "createdTimeUtc": "2026-01-01T00:00:00Z", "content": content(false)}));
    for l in 0..8 {
        configs.push(json!({
            "id": format!("layer-{l}"),
            "targetCondition": format!("tags.ring = {} AND properties.reported.fw >= {}", l % 4, l % 5),
            "priority": 100 + l, "createdTimeUtc": "2026-06-01T00:00:00Z", "content": content(true),
        }));
    }
    let cfile = work.join("configurations-100.json");
    std::fs::write(&cfile, serde_json::to_vec(&configs)?)?;
    let layer = work.join("new-layer.json");
    std::fs::write(
        &layer,
        serde_json::to_vec(&json!({
            "id": "layer-new", "targetCondition": "tags.environment = 'prod' AND tags.canary = true",
            "priority": 200, "content": content(true),
        }))?,
    )?;
    let layer_arg = layer.display().to_string();
    let changes: [(&str, Vec<&str>); 3] = [
        // The highest base of plant-9's ring-1 devices: they fall back to the next one.
        ("delete a site's base", vec!["--delete", "base-plant-9-29"]),
        (
            "retarget the prod fallback",
            vec!["--update", "fallback-prod", "--target-condition", "tags.environment = 'test'"],
        ),
        ("create a layer", vec!["--create", &layer_arg]),
    ];
    println!("\n## what-if ({twins} twins, {} deployments, both cores)", configs.len());
    let mut slowest: f64 = 0.0;
    for (what, args) in &changes {
        let mut times = Vec::new();
        let mut changed = 0;
        for _ in 0..runs {
            let out = Command::new(bin)
                .args(["--format", "json", "edge", "what-if", "--twins"])
                .arg(twins_file)
                .arg("--configurations")
                .arg(&cfile)
                .args(args)
                .output()?;
            if !out.status.success() {
                bail!("what-if {what}: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: Value = serde_json::from_slice(&out.stdout)?;
            times.push(v["seconds"].as_f64().context("no seconds")?);
            changed = v["changed"].as_u64().unwrap_or(0);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        slowest = slowest.max(median);
        println!("{:>7.3} s  {changed:>6} devices would change  {what}", median);
    }
    println!(
        "slowest: {slowest:.3} s (goal ≤ 1 s: {})",
        if slowest <= 1.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

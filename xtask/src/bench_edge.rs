//! `bench edge`: target-condition evaluation on the release build. 100 000 twins (tags,
//! reported properties, capabilities, as an Edge fleet has them) are written once; each typical
//! condition is evaluated over all of them by `otaforge edge condition --twin`, which times the
//! evaluation alone (one thread, parsing of the twins file excluded). Reports twins per second,
//! median of the runs. Goal (issue 14): ≥ 1 000 000 twins/s on one core.

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
            if i % 50 == 0 {
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
    Ok(())
}

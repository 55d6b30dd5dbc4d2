//! `otaforge edge deploy status ID [--watch]`: the devices behind each metric of an Edge
//! deployment, and where each device it applies to is (edge.md §5.3: pending, succeeded,
//! failed, invalid, a module failed), with the modules that are not as desired. The system
//! metrics are evaluated with the hub's own queries over the twins and `$edgeAgent` module
//! twins the hub returns, so the lists agree with the hub's counts.

use std::collections::BTreeMap;

use otaforge::edge::state::{DeviceState, of_twin};
use otaforge::iothub::IotHubClient;
use otaforge::iothub::condition::Target;
use otaforge::iothub::config::{Configuration, metric_devices};
use otaforge::iothub::query::metric_condition;
use serde_json::{Value, json};

use super::super::args::HubArgs;
use super::super::output::Failure;
use super::super::{Outcome, Output};

/// `otaforge edge deploy status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The deployment id.
    id: String,
    /// Follow it: a line per change, until every device it applies to has reported on it;
    /// exit 0 when all succeeded, 1 when one failed (or at --timeout).
    #[arg(long)]
    watch: bool,
    /// With --watch: give up after this long (exit 1).
    #[arg(long, default_value = "10m", value_parser = super::super::wait_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    hub: HubArgs,
}

/// A deployment's status at one moment.
struct Snapshot {
    config: Configuration,
    /// Metric → the devices it counts.
    devices: BTreeMap<String, Vec<String>>,
    /// Device → its state and the modules not as desired, for devices the deployment applies
    /// to.
    states: BTreeMap<String, (DeviceState, otaforge::edge::state::Problems)>,
    /// Targeted devices whose `$edgeAgent` twin does not mention the deployment yet (the
    /// hub has not made its pass over them).
    unprocessed: Vec<String>,
}

impl Snapshot {
    fn count(&self, state: DeviceState) -> usize {
        self.states.values().filter(|(s, _)| *s == state).count()
    }

    fn summary(&self) -> String {
        let n = |m: &str| self.devices.get(m).map_or(0, Vec::len);
        format!(
            "targeted {}, applied {}: {} succeeded, {} failed, {} module failed, {} invalid, {} pending",
            n("targetedCount"),
            n("appliedCount"),
            self.count(DeviceState::Succeeded),
            self.count(DeviceState::Failed),
            self.count(DeviceState::ModuleFailed),
            self.count(DeviceState::Invalid),
            self.count(DeviceState::Pending),
        )
    }

    /// Every device it applies to has reported on it (and it applies to some, or targets none).
    fn settled(&self) -> bool {
        let targeted = self.devices.get("targetedCount").map_or(0, Vec::len);
        (targeted == 0 || !self.states.is_empty())
            && self.unprocessed.is_empty()
            && self.count(DeviceState::Pending) == 0
    }

    fn all_succeeded(&self) -> bool {
        self.states.values().all(|(s, _)| *s == DeviceState::Succeeded)
    }

    fn json(&self) -> Value {
        let mut by_state: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut problems = serde_json::Map::new();
        for (device, (state, why)) in &self.states {
            by_state.entry(state.name()).or_default().push(device);
            if !why.is_empty() {
                let list: Vec<Value> =
                    why.iter().map(|(m, w)| json!({"module": m, "why": w})).collect();
                problems.insert(device.clone(), Value::from(list));
            }
        }
        json!({
            "id": self.config.id,
            "devices": self.devices,
            "states": by_state,
            "problems": problems,
            "notYetProcessed": self.unprocessed,
            "settled": self.settled(),
            "hubResults": {"system": self.config.system_metrics.results, "custom": self.config.metrics.results},
        })
    }
}

async fn snapshot(hub: &IotHubClient, id: &str) -> anyhow::Result<Snapshot> {
    let config = hub.get_configuration(id).await?;
    let twins = hub.query_twins("SELECT * FROM devices").await?;
    let reads_modules =
        config.metrics.queries.values().any(|q| matches!(metric_condition(q), Ok((_, true))));
    let modules = if reads_modules {
        hub.query_twins("SELECT * FROM devices.modules").await?
    } else {
        hub.query_twins("SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent'").await?
    };
    Target::parse(&config.target_condition)
        .map_err(|e| anyhow::anyhow!("deployment {}: target condition: {e}", config.id))?;
    let devices = metric_devices(&config, &twins, &modules);
    let agents = || modules.iter().filter(|t| t.module_id.as_deref() == Some("$edgeAgent"));
    let states = agents()
        .filter(|t| t.configuration_status(&config.id) == Some("Applied"))
        .map(|t| (t.device_id.clone(), of_twin(t)))
        .collect();
    let mentioned: std::collections::HashSet<&str> = agents()
        .filter(|t| t.configuration_status(&config.id).is_some())
        .map(|t| t.device_id.as_str())
        .collect();
    let unprocessed = devices
        .get("targetedCount")
        .into_iter()
        .flatten()
        .filter(|d| !mentioned.contains(d.as_str()))
        .cloned()
        .collect();
    Ok(Snapshot { config, devices, states, unprocessed })
}

fn print(out: &Output, s: &Snapshot) -> anyhow::Result<()> {
    let c = &s.config;
    out.line(format!("{}  priority {}  target: {}", c.id, c.priority, c.target_condition))?;
    for (name, list) in &s.devices {
        let shown = if list.len() > 20 {
            format!("{}, … ({} more)", list[..20].join(", "), list.len() - 20)
        } else {
            list.join(", ")
        };
        out.line(format!("  {name:<24} {:>6}  {shown}", list.len()))?;
    }
    out.line(format!("  {}", s.summary()))?;
    for (device, (state, why)) in
        s.states.iter().filter(|(_, (st, _))| *st != DeviceState::Succeeded)
    {
        let why: Vec<String> = why.iter().map(|(m, w)| format!("{m}: {w}")).collect();
        out.line(format!("  {device:<16} {:<13} {}", state.name(), why.join("; ")))?;
    }
    Ok(())
}

pub(super) fn run(
    a: StatusArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let hub = a.hub.client(out)?;
    if !a.watch {
        let s = rt.block_on(snapshot(&hub, &a.id))?;
        if out.json() {
            out.json_value(&s.json())?;
        } else {
            print(out, &s)?;
        }
        return Ok(Outcome::Ok);
    }
    let deadline = std::time::Instant::now() + a.timeout;
    let mut last = String::new();
    loop {
        let s = rt.block_on(snapshot(&hub, &a.id))?;
        let line = s.summary();
        if line != last {
            if out.json() {
                out.line(serde_json::to_string(&s.json())?)?;
            } else {
                out.line(&line)?;
            }
            last = line;
        }
        if s.settled() {
            if s.all_succeeded() {
                return Ok(Outcome::Ok);
            }
            if !out.json() {
                print(out, &s)?;
            }
            return Ok(Outcome::CheckFailed);
        }
        if std::time::Instant::now() >= deadline {
            out.failure(&Failure::new(
                "timeout",
                format!("{}: devices were still pending after {:?}", a.id, a.timeout),
            ))?;
            return Ok(Outcome::CheckFailed);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

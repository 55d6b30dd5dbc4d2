//! `otaforge hub config create|list|show|delete`: IoT Hub automatic device management (ADM)
//! configurations — `content.deviceContent` set into the desired properties of the device
//! twins a target condition selects, the highest priority winning each path — against a real
//! hub or `otaforge serve` (which applies them). Edge deployments are `otaforge edge deploy`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use otaforge::iothub::IotHubError;
use otaforge::iothub::config::{Configuration, Metrics, check_id};
use serde_json::Value;

use super::super::args::HubArgs;
use super::super::{Failure, Outcome, Output};

/// `otaforge hub config ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Create a configuration: its device content set into the desired properties of the
    /// twins it targets and wins.
    Create(CreateArgs),
    /// The hub's automatic device configurations with their metrics (Edge deployments are
    /// left out).
    List(HubOnly),
    /// One configuration: content, target condition, priority, metrics (targeted, applied).
    Show(IdArgs),
    /// Delete a configuration: the paths it set leave its twins, or go to the next in line.
    Delete(IdArgs),
}

/// Only the hub.
#[derive(Debug, clap::Args)]
pub(crate) struct HubOnly {
    #[command(flatten)]
    hub: HubArgs,
}

/// A configuration id and the hub.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    /// The configuration id.
    id: String,
    #[command(flatten)]
    hub: HubArgs,
}

/// `otaforge hub config create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The id (1-128 lower-case letters, digits and - : + % _ # * ? ! ( ) , = @ ; ').
    id: String,
    /// The content: `{"deviceContent": {"properties.desired.PATH": VALUE, …}}` (also accepted:
    /// the whole `{"content": …}` of az CLI's file, or the bare path map). A `null` value
    /// removes the property.
    #[arg(long, value_name = "FILE")]
    content: PathBuf,
    /// Which devices: a target condition (`tags.env='prod'`), `*` for every device.
    #[arg(long)]
    target_condition: String,
    /// Higher wins each path it shares with another configuration.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// A custom metric: NAME=SELECT deviceId FROM devices WHERE … (at most 5).
    #[arg(long, value_name = "NAME=QUERY")]
    metric: Vec<String>,
    /// A label: KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    label: Vec<String>,
    #[command(flatten)]
    hub: HubArgs,
}

fn pairs(list: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    list.iter()
        .map(|p| {
            let (k, v) =
                p.split_once('=').with_context(|| format!("--{what} `{p}` is not NAME=VALUE"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The device content of a `--content` file, in any of the shapes it may have.
fn device_content(path: &std::path::Path) -> anyhow::Result<serde_json::Map<String, Value>> {
    let doc: Value = serde_json::from_slice(&fs_err::read(path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let Value::Object(mut doc) = doc else {
        anyhow::bail!("{} is not a JSON object", path.display());
    };
    if let Some(Value::Object(content)) = doc.remove("content") {
        doc = content;
    }
    let content = match doc.remove("deviceContent") {
        Some(Value::Object(dc)) => dc,
        Some(_) => anyhow::bail!("deviceContent in {} is not an object", path.display()),
        None => doc,
    };
    for k in content.keys() {
        otaforge::iothub::adm::path(k)?;
    }
    Ok(content)
}

fn show(out: &Output, c: &Configuration) -> anyhow::Result<()> {
    if out.json() {
        return out.json_value(c);
    }
    out.line(format!(
        "{}  priority {}  target: {}",
        c.id,
        c.priority,
        if c.target_condition.is_empty() { "(none)" } else { &c.target_condition }
    ))?;
    for (k, v) in c.content.get("deviceContent").and_then(Value::as_object).into_iter().flatten() {
        out.line(format!("  {k} = {v}"))?;
    }
    for (k, v) in &c.system_metrics.results {
        out.line(format!("  {k:<24} {v}"))?;
    }
    for (k, v) in &c.metrics.results {
        out.line(format!("  {k:<24} {v}  (custom)"))?;
    }
    Ok(())
}

pub(crate) fn run(
    cmd: ConfigCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let done = match cmd {
        ConfigCommand::Create(a) => {
            check_id(&a.id).map_err(anyhow::Error::msg)?;
            otaforge::iothub::condition::Target::parse(&a.target_condition)
                .map_err(|e| anyhow::anyhow!("--target-condition: {e}"))?;
            let metrics = pairs(&a.metric, "metric")?;
            let mut content = serde_json::Map::new();
            content.insert("deviceContent".into(), Value::Object(device_content(&a.content)?));
            let c = Configuration {
                id: a.id.clone(),
                schema_version: Some("1.0".into()),
                labels: pairs(&a.label, "label")?,
                content,
                target_condition: a.target_condition.clone(),
                priority: a.priority,
                metrics: Metrics { queries: metrics, results: BTreeMap::new() },
                ..Default::default()
            };
            let hub = a.hub.client(out)?;
            rt.block_on(hub.put_configuration(&c, None)).map(|made| show(out, &made))
        }
        ConfigCommand::List(a) => {
            let hub = a.hub.client(out)?;
            rt.block_on(hub.list_configurations(100)).map(|all| {
                let adm: Vec<Configuration> = all.into_iter().filter(|c| !c.is_edge()).collect();
                if out.json() {
                    return out.json_value(&adm);
                }
                adm.iter().try_for_each(|c| show(out, c))
            })
        }
        ConfigCommand::Show(a) => {
            let hub = a.hub.client(out)?;
            rt.block_on(hub.get_configuration(&a.id)).map(|c| show(out, &c))
        }
        ConfigCommand::Delete(a) => {
            let hub = a.hub.client(out)?;
            rt.block_on(hub.delete_configuration(&a.id, None)).map(|()| {
                if out.json() {
                    return out.json_value(&serde_json::json!({"deleted": a.id}));
                }
                out.line(format!("deleted {}", a.id))
            })
        }
    };
    match done {
        Ok(shown) => shown.map(|()| Outcome::Ok),
        // What the hub refused (no such configuration, a bad condition) is a failed check.
        Err(IotHubError::Api { code, message, .. }) => {
            out.failure(&Failure::new(code, message))?;
            Ok(Outcome::CheckFailed)
        }
        Err(e) => Err(e.into()),
    }
}

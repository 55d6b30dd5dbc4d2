//! `otaforge fleet run`: simulated devices against `otaforge serve` (see `otaforge::fleet`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use otaforge::fleet::{Failures, Fleet, FleetSpec};
use serde_json::{Map, Value};

use super::args::HubArgs;
use super::update::parse_update_id;
use super::{Outcome, Output};

/// `otaforge fleet ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum FleetCommand {
    /// Register N simulated devices and run them: each reads its twin, installs deployments
    /// (through a delta when its image is the delta's source) and reports like an ADU agent.
    Run(RunArgs),
}

/// `otaforge fleet run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The CA certificate the devices trust for their MQTT/TLS connection (serve's
    /// `mqtt-ca.pem` in its data dir; default: the context's, else the `mqtt-ca.pem` beside
    /// --iothub-connection-file, as serve writes them; none: the platform's roots, as for
    /// Azure IoT Hub). Devices connect to the hub connection string's GatewayHostName
    /// (serve writes its MQTT endpoint there), else its HostName on port 8883.
    #[arg(long, value_name = "FILE")]
    mqtt_ca: Option<PathBuf>,
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Device ids are PREFIX-0000, PREFIX-0001, ….
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Their compat properties: manufacturer=M,model=X[,k=v...].
    #[arg(long, value_parser = parse_class, required_unless_present = "edge")]
    class: Option<Map<String, Value>>,
    /// IoT Edge devices (capabilities.iotEdge): each an edgeAgent that deploys what its
    /// $edgeAgent module twin asks for and reports module status, instead of an ADU agent.
    #[arg(long)]
    edge: bool,
    /// Their group (ADUGroup tag); none: the default group.
    #[arg(long)]
    group: Option<String>,
    /// What they run at the start (provider/name/version) ...
    #[arg(long, requires = "image")]
    installed: Option<String>,
    /// ... and its image file (devices that run it share its bytes).
    #[arg(long, requires = "installed")]
    image: Option<PathBuf>,
    /// Injected failures: download=SHARE,install=SHARE (ADU devices), pull=SHARE,crash=SHARE
    /// (Edge devices: an image fails to pull, a module crash-loops); shares 0 to 1.
    #[arg(long, value_parser = parse_failures, default_value = "download=0,install=0")]
    fail: Failures,
    /// Seed of the injected failures (the same seed fails the same devices).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Public key a signed delta must verify against (without it, a signed delta is refused
    /// and the full file downloaded).
    #[arg(long, value_name = "FILE")]
    verify_key: Option<PathBuf>,
    /// Root key(s) the update manifest signature must chain to: a JWK or a list of JWKs
    /// (`otaforge serve` writes its root's to `update-root.jwk.json` in its data dir; default:
    /// the context's). Without one, signatures are not checked.
    #[arg(long, value_name = "FILE")]
    root_key: Option<PathBuf>,
    /// Devices that install at once (the others wait their turn; each holds its image and
    /// download in memory).
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Stop once this many installs have finished (installed or failed), or after --for.
    #[arg(long, value_name = "N")]
    until: Option<u64>,
    /// Stop after this long.
    #[arg(long = "for", default_value = "60s", value_parser = super::wait_duration)]
    run_for: Duration,
    #[command(flatten)]
    hub: HubArgs,
}

pub(crate) fn parse_class(s: &str) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("`{part}` is not name=value"))?;
        m.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
    }
    if m.is_empty() {
        return Err("give at least manufacturer=M,model=X".into());
    }
    Ok(m)
}

pub(crate) fn parse_failures(s: &str) -> Result<Failures, String> {
    let mut f = Failures::default();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("`{part}` is not stage=share"))?;
        let share: f64 = v.parse().map_err(|_| format!("`{v}` is not a number"))?;
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("`{v}` is not between 0 and 1"));
        }
        match k {
            "download" => f.download = share,
            "install" => f.install = share,
            "pull" => f.pull = share,
            "crash" => f.crash = share,
            other => return Err(format!("`{other}` is not download, install, pull or crash")),
        }
    }
    Ok(f)
}

pub(crate) fn run(
    cmd: FleetCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let FleetCommand::Run(a) = cmd;
    let installed = match (&a.installed, &a.image) {
        (Some(id), Some(image)) => {
            Some((parse_update_id(id)?, Arc::new(fs_err::read(image).context("--image")?)))
        }
        _ => None,
    };
    // The hub, its CA and the root key: the flags, or the context's (see `super::args`).
    let named = a.hub.iothub_connection_file.is_some();
    let chosen = super::context::choose(out, named)?;
    let ctx = chosen.as_ref().map(|c| &c.context);
    let root_key = a.root_key.clone().or_else(|| ctx?.root_key.clone());
    let beside = a
        .hub
        .iothub_connection_file
        .as_ref()
        .and_then(|f| Some(f.parent()?.join(otaforge::server::MQTT_CA_FILE)))
        .filter(|f| f.is_file());
    let mqtt_ca = a.mqtt_ca.clone().or(beside).or_else(|| ctx?.mqtt_ca.clone());
    let spec = FleetSpec {
        hub: a.hub.connection(out, named)?,
        ca: match &mqtt_ca {
            Some(p) => Some(Arc::new(fs_err::read(p).context("--mqtt-ca")?)),
            None => None,
        },
        prefix: a.prefix.clone(),
        devices: a.devices,
        class: a.class.clone().unwrap_or_default(),
        group: a.group.clone(),
        edge: a.edge,
        installed,
        failures: a.fail,
        seed: a.seed,
        poll: Duration::from_secs(20),
        parallel: a.parallel,
        roots: match &root_key {
            Some(p) => {
                let v: Value = serde_json::from_slice(&fs_err::read(p)?)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
                Some(Arc::new(match v {
                    Value::Array(list) => list,
                    one => vec![one],
                }))
            }
            None => None,
        },
        trusted: match &a.verify_key {
            Some(p) => {
                let mut keys = otaforge::sign::TrustedKeys::new();
                keys.add_file(p)?;
                Some(Arc::new(keys))
            }
            None => None,
        },
    };
    let tally = rt.block_on(async {
        let fleet = Fleet::register(spec).await?;
        out.notice(format!("{} devices registered; running for {:?}", a.devices, a.run_for));
        let until = a.until;
        fleet.run(a.run_for, &move |t| until.is_some_and(|n| t.installed + t.failed >= n)).await
    })?;
    if out.json() {
        out.json_value(&serde_json::json!({
            "devices": a.devices,
            "installed": tally.installed,
            "throughDelta": tally.through_delta,
            "failed": tally.failed,
        }))?;
    } else {
        out.line(format!(
            "{} devices: {} installs ({} through a delta), {} failed",
            a.devices, tally.installed, tally.through_delta, tally.failed
        ))?;
    }
    Ok(Outcome::Ok)
}

//! `otaforge hub`: IoT Hub identities (devices and modules, with their keys and connection
//! strings), direct methods and telemetry, against Azure IoT Hub or `otaforge serve` alike
//! (telemetry from serve only: Azure sends it to Event Hubs, read it with `az iot hub
//! monitor-events`); automatic device management configurations are [`config`].

mod config;

use std::time::Duration;

use otaforge::iothub::IotHubError;
use otaforge::iothub::identity::{Capabilities, Identity};
use otaforge::iothub::registry::MethodCall;

use super::args::HubArgs;
use super::{Failure, Outcome, Output};

/// `otaforge hub ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum HubCommand {
    /// Device identities: create, show, delete, and a device's connection string.
    #[command(subcommand)]
    Device(IdentityCommand),
    /// Module identities of a device (`DEVICE/MODULE`): create, show, delete, connection string.
    #[command(subcommand)]
    Module(IdentityCommand),
    /// Print telemetry devices send, as it arrives (serve only).
    Monitor(MonitorArgs),
    /// Call a direct method on a device (or `DEVICE/MODULE`) and print its answer (exit 1
    /// when the device answers with a status of 300 or more).
    InvokeMethod(InvokeArgs),
    /// Automatic device management configurations (device twins' desired properties).
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// What `hub device` and `hub module` do.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum IdentityCommand {
    /// Create an identity (keys made by the hub unless given).
    Create(CreateArgs),
    /// Show an identity (keys left out).
    Show(IdArgs),
    /// Delete an identity (a device with its modules).
    Delete(IdArgs),
    /// Print the identity's connection string, key included (a secret).
    ConnectionString(IdArgs),
}

/// `hub device|module create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The device id (for a module: DEVICE/MODULE).
    id: String,
    /// An IoT Edge device (devices only).
    #[arg(long)]
    edge: bool,
    /// Use this primary key (base64) instead of one the hub makes.
    #[arg(long, value_name = "BASE64")]
    primary_key: Option<String>,
    /// Use this secondary key (base64).
    #[arg(long, value_name = "BASE64")]
    secondary_key: Option<String>,
    #[command(flatten)]
    hub: HubArgs,
}

/// An identity to act on.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    /// The device id (for a module: DEVICE/MODULE).
    id: String,
    #[command(flatten)]
    hub: HubArgs,
}

/// `hub monitor`.
#[derive(Debug, clap::Args)]
pub(crate) struct MonitorArgs {
    /// Only messages of this device.
    #[arg(long)]
    device: Option<String>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_parser = super::wait_duration)]
    timeout: Option<Duration>,
    /// Also print the messages kept from before the monitor started.
    #[arg(long)]
    from_start: bool,
    #[command(flatten)]
    hub: HubArgs,
}

/// `hub invoke-method`.
#[derive(Debug, clap::Args)]
pub(crate) struct InvokeArgs {
    /// The device (or DEVICE/MODULE).
    device: String,
    /// The method's name.
    method: String,
    /// Its payload (JSON).
    #[arg(long, default_value = "null", value_parser = parse_json)]
    payload: serde_json::Value,
    /// How long the hub waits for the answer, in seconds (5 to 300).
    #[arg(long, default_value_t = 30)]
    response_timeout: u64,
    /// How long the hub waits for the device to come online, in seconds (0 to 300).
    #[arg(long, default_value_t = 0)]
    connect_timeout: u64,
    #[command(flatten)]
    hub: HubArgs,
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

/// `DEVICE` or `DEVICE/MODULE`, as the command wants it.
fn split(id: &str, module: bool) -> anyhow::Result<(String, Option<String>)> {
    match (id.split_once('/'), module) {
        (Some((d, m)), true) => Ok((d.to_owned(), Some(m.to_owned()))),
        (None, false) => Ok((id.to_owned(), None)),
        (None, true) => anyhow::bail!("`{id}`: a module is named DEVICE/MODULE"),
        (Some(_), false) => anyhow::bail!("`{id}`: a device id has no `/` (modules: `hub module`)"),
    }
}

/// Prints what the hub refused (exit 1); transport and setup problems are errors.
fn hub_failure(out: &Output, what: &str, e: IotHubError) -> anyhow::Result<Outcome> {
    match e {
        IotHubError::Api { status, code, message, .. } => {
            let f = Failure::new(code, format!("{what}: {status} {message}"))
                .details(serde_json::json!({"status": status}));
            out.failure(&f)?;
            Ok(Outcome::CheckFailed)
        }
        other => Err(anyhow::Error::new(other).context(what.to_owned())),
    }
}

pub(crate) fn run(
    cmd: HubCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    match cmd {
        HubCommand::Device(c) => identity(c, false, rt, out),
        HubCommand::Module(c) => identity(c, true, rt, out),
        HubCommand::Monitor(a) => rt.block_on(monitor(a, out)),
        HubCommand::InvokeMethod(a) => rt.block_on(invoke(a, out)),
        HubCommand::Config(c) => config::run(c, rt, out),
    }
}

/// An identity without its keys, for showing.
fn redacted(mut id: Identity) -> Identity {
    if let Some(a) = id.authentication.as_mut() {
        a.symmetric_key = None;
    }
    id
}

fn identity(
    cmd: IdentityCommand,
    module: bool,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    rt.block_on(async {
        match cmd {
            IdentityCommand::Create(a) => {
                let (d, m) = split(&a.id, module)?;
                if a.edge && module {
                    anyhow::bail!("--edge is for devices");
                }
                let mut want =
                    Identity::with_keys(&d, m.as_deref(), a.primary_key, a.secondary_key);
                if !module {
                    want.capabilities = Some(Capabilities { iot_edge: a.edge });
                }
                let client = a.hub.client(out)?;
                match client.create_identity(&want).await {
                    Ok(made) => show_identity(out, &redacted(made)),
                    Err(e) => hub_failure(out, &format!("create {}", a.id), e),
                }
            }
            IdentityCommand::Show(a) => {
                let (d, m) = split(&a.id, module)?;
                match a.hub.client(out)?.identity(&d, m.as_deref()).await {
                    Ok(found) => show_identity(out, &redacted(found)),
                    Err(e) => hub_failure(out, &format!("show {}", a.id), e),
                }
            }
            IdentityCommand::Delete(a) => {
                let (d, m) = split(&a.id, module)?;
                match a.hub.client(out)?.delete_identity(&d, m.as_deref()).await {
                    Ok(()) if out.json() => {
                        out.json_value(&serde_json::json!({"deleted": a.id}))?;
                        Ok(Outcome::Ok)
                    }
                    Ok(()) => {
                        out.line(format!("deleted {}", a.id))?;
                        Ok(Outcome::Ok)
                    }
                    Err(e) => hub_failure(out, &format!("delete {}", a.id), e),
                }
            }
            IdentityCommand::ConnectionString(a) => connection_string(a, module, out).await,
        }
    })
}

fn show_identity(out: &Output, id: &Identity) -> anyhow::Result<Outcome> {
    if out.json() {
        out.json_value(id)?;
    } else {
        let who = match &id.module_id {
            Some(m) => format!("{}/{m}", id.device_id),
            None => id.device_id.clone(),
        };
        out.line(format!("identity   {who}"))?;
        if id.module_id.is_none() {
            out.line(format!("iot edge   {}", id.is_edge()))?;
        }
        out.line(format!("connection {}", id.connection_state.as_deref().unwrap_or("unknown")))?;
    }
    Ok(Outcome::Ok)
}

async fn connection_string(a: IdArgs, module: bool, out: &Output) -> anyhow::Result<Outcome> {
    let (d, m) = split(&a.id, module)?;
    let hub = a.hub.connection(out, false)?;
    let client = otaforge::iothub::IotHubClient::new(hub.clone())?
        .with_deadline(out.globals().request_timeout);
    let found = match client.identity(&d, m.as_deref()).await {
        Ok(f) => f,
        Err(e) => return hub_failure(out, &format!("read {}", a.id), e),
    };
    // Devices dial the gateway's host; the official SDKs always dial port 8883.
    let (gateway, port) =
        match hub.gateway.as_deref().map(|g| g.rsplit_once(':').unwrap_or((g, "8883"))) {
            Some((h, p)) => (Some(h.to_owned()), p.to_owned()),
            None => (None, "8883".to_owned()),
        };
    if port != "8883" {
        out.notice(format!(
            "  note: the MQTT endpoint is on port {port}; the official device SDKs dial 8883 \
             (start serve with --mqtt-listen ADDR:8883 for them)"
        ));
    }
    let Some(text) = found.connection_string(&hub.host, gateway.as_deref()) else {
        out.failure(&Failure::new("NoKey", format!("{} has no symmetric key", a.id)))?;
        return Ok(Outcome::CheckFailed);
    };
    if out.json() {
        out.json_value(&serde_json::json!({"connectionString": text, "port": port}))?;
    } else {
        out.line(text)?;
    }
    Ok(Outcome::Ok)
}

async fn monitor(a: MonitorArgs, out: &Output) -> anyhow::Result<Outcome> {
    let client = a.hub.client(out)?;
    let until = a.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut after = if a.from_start {
        0
    } else {
        match client.events(u64::MAX, 0).await {
            Ok(p) => p.last,
            Err(e) => return hub_failure(out, "read telemetry", e),
        }
    };
    let mut shown = 0usize;
    loop {
        let left = until.map(|u| u.saturating_duration_since(tokio::time::Instant::now()));
        if left.is_some_and(|l| l.is_zero()) || a.count.is_some_and(|c| shown >= c) {
            return Ok(Outcome::Ok);
        }
        let wait = left.map_or(20, |l| l.as_secs().clamp(1, 20));
        let page = match client.events(after, wait).await {
            Ok(p) => p,
            Err(e) => return hub_failure(out, "read telemetry", e),
        };
        after = page.next;
        for e in page.events {
            if a.device.as_deref().is_some_and(|d| d != e.device_id) {
                continue;
            }
            // One JSON object a line (the shape `az iot hub monitor-events` prints).
            out.line(serde_json::to_string(&e)?)?;
            shown += 1;
            if a.count.is_some_and(|c| shown >= c) {
                return Ok(Outcome::Ok);
            }
        }
    }
}

async fn invoke(a: InvokeArgs, out: &Output) -> anyhow::Result<Outcome> {
    let (d, m) = match a.device.split_once('/') {
        Some((d, m)) => (d.to_owned(), Some(m.to_owned())),
        None => (a.device.clone(), None),
    };
    let call = MethodCall {
        method_name: a.method.clone(),
        payload: a.payload,
        response_timeout_in_seconds: Some(a.response_timeout),
        connect_timeout_in_seconds: Some(a.connect_timeout),
    };
    let client = a.hub.client(out)?;
    let result = match client.invoke_method(&d, m.as_deref(), &call).await {
        Ok(r) => r,
        Err(e) => return hub_failure(out, &format!("call {} on {}", a.method, a.device), e),
    };
    if out.json() {
        out.json_value(&result)?;
    } else {
        out.line(format!("status  {}", result.status))?;
        out.line(format!("payload {}", result.payload))?;
    }
    Ok(if result.status >= 300 { Outcome::CheckFailed } else { Outcome::Ok })
}

//! `otaforge serve`: the embedded Device Update service.

use std::net::SocketAddr;
use std::path::PathBuf;

use otaforge::server::{Config, Running, start};

use super::context::{self, Context};
use super::{Outcome, Output};

/// Arguments of `otaforge serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Database, blob store and imported content.
    #[arg(long, default_value = "otaforge-data")]
    data_dir: PathBuf,
    /// The Device Update instance name clients use.
    #[arg(long, default_value = "default")]
    instance: String,
    /// A release report (`otaforge release --format json`), state file, or folder of releases
    /// (`OUTPUT` of `otaforge.toml`: each VERSION/release-state.json) that the dashboard shows
    /// under /ui/releases/. Repeatable.
    #[arg(long = "release", value_name = "PATH")]
    releases: Vec<std::path::PathBuf>,
    /// Require this bearer token on every API request (default: $OTAFORGE_ADU_TOKEN). Without
    /// one, only a loopback address may be used.
    #[arg(long)]
    token: Option<String>,
    /// Imports may also fetch from this host: HOST (the scheme's default port), HOST:PORT or
    /// HOST:*. Repeatable. Without it, only serve's own blob store is fetched from.
    #[arg(long = "allow-fetch", value_name = "HOST[:PORT]")]
    allow_fetch: Vec<otaforge::server::fetch::AllowedHost>,
    /// The base URL clients and devices use, when not the listen address (e.g.
    /// http://ota-lab.local:8080 when listening on 0.0.0.0); blob read URLs start with it.
    #[arg(long, value_name = "URL")]
    public_url: Option<url::Url>,
    /// A fetch that makes no progress for this long fails (at most 9 minutes).
    #[arg(long, default_value = "30s", value_parser = super::stall_duration)]
    stall_timeout: std::time::Duration,
    /// A connection that sends no complete request head for this long (or stays idle between
    /// requests this long) is closed.
    #[arg(long, default_value = "10s", value_parser = super::header_duration)]
    header_timeout: std::time::Duration,
    /// The most connections open at once (also kept 1024 below the open-file limit).
    #[arg(long, default_value_t = 65_536, value_name = "N")]
    max_connections: usize,
    /// Where devices connect over MQTT/TLS, IoT Hub's device protocol (default
    /// 127.0.0.1:8883, the port the official device SDKs dial; any free port of --listen's
    /// address when --listen's port is 0; `off`: no MQTT endpoint).
    #[arg(long, value_name = "ADDR|off", value_parser = parse_mqtt_listen)]
    mqtt_listen: Option<MqttListen>,
    /// Also run N simulated devices against this serve, in the same process, until it stops
    /// (as `otaforge fleet run` does; they trust this serve's root key).
    #[arg(long, value_name = "N", help_heading = "Simulated fleet")]
    fleet: Option<usize>,
    /// Their compat properties: manufacturer=M,model=X[,k=v...] (needed unless --fleet-edge).
    #[arg(
        long,
        value_parser = super::fleet::parse_class,
        requires = "fleet",
        help_heading = "Simulated fleet"
    )]
    fleet_class: Option<serde_json::Map<String, serde_json::Value>>,
    /// Their group (ADUGroup tag); none: the default group.
    #[arg(long, value_name = "GROUP", help_heading = "Simulated fleet")]
    fleet_group: Option<String>,
    /// Device ids are PREFIX-0000, PREFIX-0001, ….
    #[arg(long, default_value = "sim", help_heading = "Simulated fleet")]
    fleet_prefix: String,
    /// What they run at the start (provider/name/version) ...
    #[arg(long, requires = "fleet_image", value_name = "P/N/V", help_heading = "Simulated fleet")]
    fleet_installed: Option<String>,
    /// ... and its image file.
    #[arg(
        long,
        requires = "fleet_installed",
        value_name = "FILE",
        help_heading = "Simulated fleet"
    )]
    fleet_image: Option<PathBuf>,
    /// Injected failures: download=SHARE,install=SHARE; for Edge devices pull=SHARE,crash=SHARE
    /// (0 to 1).
    #[arg(long, value_parser = super::fleet::parse_failures, default_value = "download=0,install=0", help_heading = "Simulated fleet")]
    fleet_fail: otaforge::fleet::Failures,
    /// Seed of the injected failures.
    #[arg(long, default_value_t = 1, help_heading = "Simulated fleet")]
    fleet_seed: u64,
    /// The fleet's devices are IoT Edge devices (edgeAgents; --fleet-class not needed).
    #[arg(long, help_heading = "Simulated fleet")]
    fleet_edge: bool,
}

/// `--mqtt-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MqttListen {
    /// Listen here.
    At(SocketAddr),
    /// No MQTT endpoint.
    Off,
}

fn parse_mqtt_listen(s: &str) -> Result<MqttListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MqttListen::Off);
    }
    s.parse()
        .map(MqttListen::At)
        .map_err(|e| format!("`{s}`: {e} (an address like 127.0.0.1:8883, or off)"))
}

/// Where the MQTT endpoint listens: as given, else 127.0.0.1:8883, else (with --listen on
/// port 0, as tests start serve) any free port of --listen's address.
fn mqtt_listen(a: &ServeArgs) -> Option<SocketAddr> {
    match a.mqtt_listen {
        Some(MqttListen::At(at)) => Some(at),
        Some(MqttListen::Off) => None,
        None if a.listen.port() == 0 => Some(SocketAddr::new(a.listen.ip(), 0)),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8883))),
    }
}

/// The fleet `--fleet` asks for, against the serve that just started.
fn fleet_spec(
    a: &ServeArgs,
    n: usize,
    running: &otaforge::server::Running,
) -> anyhow::Result<otaforge::fleet::FleetSpec> {
    use anyhow::Context as _;
    let hub: otaforge::iothub::ConnectionString =
        fs_err::read_to_string(&running.iothub_connection_file)?.trim().parse()?;
    let root: serde_json::Value =
        serde_json::from_slice(&fs_err::read(a.data_dir.join("update-root.jwk.json"))?)?;
    let installed = match (&a.fleet_installed, &a.fleet_image) {
        (Some(id), Some(image)) => Some((
            super::update::parse_update_id(id)?,
            std::sync::Arc::new(fs_err::read(image).context("--fleet-image")?),
        )),
        _ => None,
    };
    let ca = running
        .mqtt_ca_file
        .as_ref()
        .context("--fleet needs the MQTT endpoint (not --mqtt-listen off)")?;
    Ok(otaforge::fleet::FleetSpec {
        hub,
        ca: Some(std::sync::Arc::new(fs_err::read(ca)?)),
        prefix: a.fleet_prefix.clone(),
        devices: n,
        class: a.fleet_class.clone().unwrap_or_default(),
        group: a.fleet_group.clone(),
        installed,
        failures: a.fleet_fail,
        seed: a.fleet_seed,
        poll: std::time::Duration::from_secs(20),
        parallel: 32,
        trusted: None,
        roots: Some(std::sync::Arc::new(vec![root])),
        edge: a.fleet_edge,
    })
}

/// Records this serve as a context (`--context NAME`, default `local`) and makes it current,
/// so the commands that follow need no `--endpoint`, `--instance`, `--iothub-connection-file`
/// or `--root-key`; returns its name. A config directory that cannot be written costs a
/// notice, not the service.
fn record_context(
    a: &ServeArgs,
    running: &Running,
    token: Option<&str>,
    out: &Output,
) -> Option<String> {
    let name = out.globals().context.clone().unwrap_or_else(|| context::SERVE_DEFAULT.into());
    let root = a.data_dir.join("update-root.jwk.json");
    let recorded = (|| {
        let c = Context {
            endpoint: Some(running.base_url.clone()),
            instance: Some(a.instance.clone()),
            adu_token: token.map(str::to_owned),
            iothub_connection_file: Some(context::absolute(&running.iothub_connection_file)?),
            root_key: if root.is_file() { Some(context::absolute(&root)?) } else { None },
            mqtt_ca: match &running.mqtt_ca_file {
                Some(f) => Some(context::absolute(f)?),
                None => None,
            },
            ..Context::default()
        };
        context::record(&name, c)
    })();
    match recorded {
        Ok(_) => Some(name),
        Err(e) => {
            out.notice(format!("  no context recorded: {e:#}"));
            None
        }
    }
}

pub(crate) fn run(
    a: ServeArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    if a.fleet.is_some() && a.fleet_class.is_none() && !a.fleet_edge {
        anyhow::bail!("--fleet needs --fleet-class manufacturer=M,model=X (or --fleet-edge)");
    }
    let token = a.token.clone().or_else(|| {
        std::env::var(otaforge::env::OTAFORGE_ADU_TOKEN).ok().filter(|t| !t.is_empty())
    });
    rt.block_on(async {
        let running = start(Config {
            listen: a.listen,
            data_dir: a.data_dir.clone(),
            instance: a.instance.clone(),
            token: token.clone(),
            allow_fetch: a.allow_fetch.clone(),
            stall_timeout: a.stall_timeout,
            public_url: a.public_url.clone(),
            header_timeout: a.header_timeout,
            max_connections: a.max_connections,
            mqtt_listen: mqtt_listen(&a),
            releases: a.releases.clone(),
            log: otaforge::server::LogSink(std::sync::Arc::new(|line| {
                // serve's log: stderr, one line each (stdout carries the start JSON).
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "{line}");
            })),
        })
        .await?;
        let recorded = record_context(&a, &running, token.as_deref(), out);
        let info = serde_json::json!({
            "context": recorded,
            "endpoint": running.base_url,
            "instance": a.instance,
            "blobDir": running.blob_dir.display().to_string(),
            "blobUrl": running.blob_url,
            "auth": if token.is_some() { "bearer token" } else { "none (loopback)" },
            "listen": running.addr.to_string(),
            "iothubConnectionStringFile": running.iothub_connection_file.display().to_string(),
            "mqttListen": running.mqtt_addr.map(|a| a.to_string()),
            "mqttCaFile": running.mqtt_ca_file.as_ref().map(|f| f.display().to_string()),
            "gatewayHostName": running.gateway,
            "dashboard": format!("{}/ui/", running.base_url),
        });
        if out.json() {
            // One line, so a script can read it and go on.
            out.line(serde_json::to_string(&info)?)?;
        } else {
            describe(out, &a, &running, token.is_some(), recorded.as_deref())?;
        }
        if let Some(n) = a.fleet {
            let spec = fleet_spec(&a, n, &running)?;
            let group = a.fleet_group.clone().unwrap_or_else(|| "$default".into());
            let fleet = otaforge::fleet::Fleet::register(spec).await?;
            out.notice(format!(
                "  {n} simulated devices registered in group {group}; they run until serve stops"
            ));
            tokio::spawn(async move {
                // Ten years: until the process ends.
                let _ =
                    fleet.run(std::time::Duration::from_secs(10 * 365 * 86_400), &|_| false).await;
            });
        }
        tokio::select! {
            r = running.wait() => r?,
            _ = tokio::signal::ctrl_c() => out.notice("stopping"),
        }
        Ok(Outcome::Ok)
    })
}

/// serve's start, in words.
fn describe(
    out: &Output,
    a: &ServeArgs,
    running: &otaforge::server::Running,
    has_token: bool,
    recorded: Option<&str>,
) -> anyhow::Result<()> {
    let all_interfaces = a.listen.ip().is_unspecified();
    out.line(format!(
        "otaforge serve: Device Update API at {} instance {}",
        running.base_url, a.instance
    ))?;
    out.line(format!(
        "  rollout dashboard at {}/ui/{}",
        running.base_url,
        if has_token { " (needs the token; or run `otaforge dashboard`)" } else { "" }
    ))?;
    out.line(format!(
        "  blob store {} served at {}",
        running.blob_dir.display(),
        running.blob_url
    ))?;
    out.line(format!(
        "  IoT Hub API (twins, device identities) at the same address; its connection \
         string is in {} (keep it secret)",
        running.iothub_connection_file.display()
    ))?;
    if let (Some(at), Some(ca)) = (running.mqtt_addr, &running.mqtt_ca_file) {
        out.line(format!(
            "  devices connect over MQTT/TLS (IoT Hub's device protocol) at {at}; they trust \
             the CA {} (`otaforge hub device connection-string ID` gives a device its \
             connection string)",
            ca.display()
        ))?;
    }
    if all_interfaces {
        out.line(format!(
            "  listening on all interfaces ({}); other machines use this host's name or \
             address and port {}{}",
            running.addr,
            running.addr.port(),
            if a.public_url.is_none() {
                " (give --public-url so blob URLs name it too)"
            } else {
                ""
            }
        ))?;
    }
    let token_hint = if has_token {
        format!("{}=<the token> ", otaforge::env::OTAFORGE_ADU_TOKEN)
    } else {
        String::new()
    };
    out.line(format!(
        "  import with: {token_hint}otaforge import MANIFEST --endpoint {} --instance {}",
        running.base_url, a.instance
    ))?;
    if let Some(name) = &recorded {
        out.line(format!(
            "  context {name} recorded and current: on this machine, commands need no \
             --endpoint, --instance, --iothub-connection-file or --root-key"
        ))?;
    }
    Ok(())
}

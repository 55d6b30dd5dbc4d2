//! `otaforge device list|show` and `otaforge compliance`: what Device Update knows of devices.

use otaforge::service::model::Device;

use super::args::AduArgs;
use super::results;
use super::update::service_failure;
use super::{Failure, Outcome, Output};

/// `otaforge device ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeviceCommand {
    /// List Device Update devices (all, or of a group or class).
    List(ListArgs),
    /// Show one device: class, group, installed update, last install result with its
    /// extended result codes decoded.
    Show(ShowArgs),
}

/// `otaforge device list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Only devices of this group.
    #[arg(long)]
    group: Option<String>,
    /// Only devices of this device class.
    #[arg(long)]
    class: Option<String>,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge device show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// Device id.
    device: String,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge compliance`.
#[derive(Debug, clap::Args)]
pub(crate) struct ComplianceArgs {
    /// Of one group (default: the whole instance).
    #[arg(long)]
    group: Option<String>,
    #[command(flatten)]
    adu: AduArgs,
}

fn installed(d: &Device) -> String {
    d.installed_update
        .as_ref()
        .map_or_else(|| "nothing reported".to_owned(), |u| u.update_id.to_string())
}

pub(crate) fn run(
    cmd: DeviceCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    match cmd {
        DeviceCommand::List(a) => {
            let client = a.adu.client(out)?;
            let mut filter: Vec<String> = Vec::new();
            if let Some(g) = &a.group {
                filter.push(format!("groupId eq '{g}'"));
            }
            if let Some(c) = &a.class {
                filter.push(format!("deviceClassId eq '{c}'"));
            }
            let filter = (!filter.is_empty()).then(|| filter.join(" and "));
            let devices = match rt.block_on(client.list_devices(filter.as_deref())) {
                Ok(d) => d,
                Err(e) => return service_failure(out, "list devices", e),
            };
            if out.json() {
                let devices: Vec<Device> = devices.into_iter().map(results::annotate).collect();
                out.json_value(&devices)?;
            } else {
                for d in &devices {
                    let failure = d
                        .last_install_result
                        .as_ref()
                        .filter(|r| results::failed(r))
                        .map(|r| format!("  last install failed: {}", results::short(r)))
                        .unwrap_or_default();
                    let id = match &d.module_id {
                        Some(m) => format!("{}/{m}", d.device_id),
                        None => d.device_id.clone(),
                    };
                    out.line(format!(
                        "{id}  group {}  {}{}{failure}",
                        d.group_id.as_deref().unwrap_or("-"),
                        installed(d),
                        if d.on_latest_update { "" } else { "  (newer update available)" }
                    ))?;
                }
            }
            Ok(Outcome::Ok)
        }
        DeviceCommand::Show(a) => {
            let client = a.adu.client(out)?;
            let d = match rt.block_on(client.get_device(&a.device)) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    let f = Failure::new(
                        "NotFound",
                        format!(
                            "Device Update does not know device `{}` (has its agent reported?)",
                            a.device
                        ),
                    );
                    out.failure(&f)?;
                    return Ok(Outcome::CheckFailed);
                }
                Err(e) => return service_failure(out, "show the device", e),
            };
            if out.json() {
                out.json_value(&results::annotate(d))?;
            } else {
                out.line(format!("device      {}", d.device_id))?;
                out.line(format!("class       {}", d.device_class_id))?;
                out.line(format!("group       {}", d.group_id.as_deref().unwrap_or("-")))?;
                out.line(format!("installed   {}", installed(&d)))?;
                out.line(format!("on latest   {}", if d.on_latest_update { "yes" } else { "no" }))?;
                if let Some(r) = &d.last_install_result {
                    for line in results::lines(r) {
                        out.line(line)?;
                    }
                }
            }
            Ok(Outcome::Ok)
        }
    }
}

pub(crate) fn compliance(
    a: ComplianceArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let client = a.adu.client(out)?;
    let c = match rt.block_on(client.update_compliance(a.group.as_deref())) {
        Ok(c) => c,
        Err(e) => return service_failure(out, "read compliance", e),
    };
    if out.json() {
        out.json_value(&c)?;
    } else {
        out.line(format!("devices               {}", c.total_device_count))?;
        out.line(format!("on latest update      {}", c.on_latest_update_device_count))?;
        out.line(format!("newer update exists   {}", c.new_updates_available_device_count))?;
        out.line(format!("update in progress    {}", c.updates_in_progress_device_count))?;
    }
    Ok(Outcome::Ok)
}

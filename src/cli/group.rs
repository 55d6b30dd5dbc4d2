//! `otaforge group`: Device Update groups through IoT Hub twin tags (`ADUGroup`).

use otaforge::iothub::{GROUP_TAG, IotHubError, check_group_id};
use serde_json::{Map, Value};

use super::args::{AduArgs, HubArgs};
use super::update::service_failure;
use super::{Failure, Outcome, Output};

fn list(a: &ListArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    let client = a.adu.client(out)?;
    let groups = match rt.block_on(client.list_groups()) {
        Ok(g) => g,
        Err(e) => return service_failure(out, "list groups", e),
    };
    if out.json() {
        out.json_value(&groups)?;
    } else {
        for g in &groups {
            out.line(format!(
                "{}  {} devices  ({}, since {})",
                g.group_id,
                g.device_count.unwrap_or(0),
                g.group_type.as_str(),
                g.created_date_time
            ))?;
        }
    }
    Ok(Outcome::Ok)
}

fn show(a: &ShowArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    let client = a.adu.client(out)?;
    let found = rt.block_on(async {
        let Some(group) = client.get_group(&a.group).await? else { return Ok(None) };
        let compliance = client.update_compliance(Some(&a.group)).await?;
        Ok::<_, otaforge::service::ServiceError>(Some((group, compliance)))
    });
    let (group, compliance) = match found {
        Ok(Some(x)) => x,
        Ok(None) => {
            out.failure(&Failure::new("NotFound", format!("group `{}` does not exist", a.group)))?;
            return Ok(Outcome::CheckFailed);
        }
        Err(e) => return service_failure(out, "show the group", e),
    };
    if out.json() {
        out.json_value(&serde_json::json!({"group": group, "compliance": compliance}))?;
    } else {
        out.line(format!("group        {} ({})", group.group_id, group.group_type.as_str()))?;
        out.line(format!("devices      {}", group.device_count.unwrap_or(0)))?;
        out.line(format!("on latest    {}", compliance.on_latest_update_device_count))?;
        out.line(format!("newer exists {}", compliance.new_updates_available_device_count))?;
        out.line(format!("in progress  {}", compliance.updates_in_progress_device_count))?;
    }
    Ok(Outcome::Ok)
}

/// One subgroup as `group subgroups` shows it: the service's document, its class's compat
/// properties and its best update.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SubgroupView {
    #[serde(flatten)]
    subgroup: otaforge::service::model::DeviceClassSubgroup,
    #[serde(skip_serializing_if = "Option::is_none")]
    compat_properties: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    best_update: Option<otaforge::service::UpdateInfo>,
}

fn subgroups(a: &ShowArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    let client = a.adu.client(out)?;
    let found = rt.block_on(async {
        let list = client.list_subgroups(&a.group).await?;
        let classes = client.list_device_classes().await?;
        let mut views = Vec::new();
        for sg in list {
            let class = classes.iter().find(|c| c.device_class_id == sg.device_class_id);
            let best = client.subgroup_best_update(&a.group, &sg.device_class_id).await?;
            views.push(SubgroupView {
                compat_properties: class
                    .map(|c| c.device_class_properties.compat_properties.clone()),
                best_update: best.map(|b| b.update),
                subgroup: sg,
            });
        }
        Ok::<_, otaforge::service::ServiceError>(views)
    });
    let views = match found {
        Ok(v) => v,
        Err(otaforge::service::ServiceError::Api { status: 404, .. }) => {
            out.failure(&Failure::new("NotFound", format!("group `{}` does not exist", a.group)))?;
            return Ok(Outcome::CheckFailed);
        }
        Err(e) => return service_failure(out, "list the subgroups", e),
    };
    if out.json() {
        out.json_value(&views)?;
        return Ok(Outcome::Ok);
    }
    for v in &views {
        let compat: Vec<String> = v
            .compat_properties
            .iter()
            .flatten()
            .map(|(k, val)| {
                format!("{k}={}", val.as_str().map_or_else(|| val.to_string(), str::to_owned))
            })
            .collect();
        out.line(format!(
            "{}  {} devices  {}  deployment {}  best {}",
            v.subgroup.device_class_id,
            v.subgroup.device_count.unwrap_or(0),
            compat.join(","),
            v.subgroup.deployment_id.as_deref().unwrap_or("-"),
            v.best_update.as_ref().map_or_else(|| "-".to_owned(), |u| u.update_id.to_string())
        ))?;
    }
    Ok(Outcome::Ok)
}

/// `otaforge group ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GroupCommand {
    /// Put devices in a group: set their twins' `ADUGroup` tag (read, then patched with the
    /// twin's ETag, so a concurrent change is not overwritten).
    Tag(TagArgs),
    /// Take devices out of their group (remove the tag; they fall back to the default group).
    Untag(UntagArgs),
    /// List the groups of a Device Update instance.
    List(ListArgs),
    /// Show one group with its compliance.
    Show(ShowArgs),
    /// The device-class subgroups of a group: devices, compat properties, active deployment
    /// and best update of each.
    Subgroups(ShowArgs),
}

/// `otaforge group list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge group show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// The group id (`$default` for devices without a tag).
    group: String,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge group tag`.
#[derive(Debug, clap::Args)]
pub(crate) struct TagArgs {
    /// Device ids.
    #[arg(required = true)]
    devices: Vec<String>,
    /// The group (1-200 letters, digits and . - _ ~; not `Uncategorized` or `$default`).
    #[arg(long)]
    group: String,
    #[command(flatten)]
    hub: HubArgs,
}

/// `otaforge group untag`.
#[derive(Debug, clap::Args)]
pub(crate) struct UntagArgs {
    /// Device ids.
    #[arg(required = true)]
    devices: Vec<String>,
    #[command(flatten)]
    hub: HubArgs,
}

pub(crate) fn run(
    cmd: GroupCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let (devices, group, hub) = match &cmd {
        GroupCommand::Tag(a) => {
            check_group_id(&a.group)?;
            (&a.devices, Some(a.group.as_str()), &a.hub)
        }
        GroupCommand::Untag(a) => (&a.devices, None, &a.hub),
        GroupCommand::List(a) => return list(a, rt, out),
        GroupCommand::Show(a) => return show(a, rt, out),
        GroupCommand::Subgroups(a) => return subgroups(a, rt, out),
    };
    let client = hub.client(out)?;
    let mut tags = Map::new();
    tags.insert(GROUP_TAG.into(), group.map_or(Value::Null, |g| Value::String(g.to_owned())));
    rt.block_on(async {
        let mut done = Vec::new();
        for d in devices {
            let tagged = async {
                let twin = client.get_twin(d).await?;
                client.patch_tags(d, tags.clone(), twin.etag.as_deref()).await?;
                Ok::<_, IotHubError>(twin.group().map(str::to_owned))
            };
            let before = match tagged.await {
                Ok(b) => b,
                // What the hub refused (no such device, a stale ETag) is a failed check.
                Err(IotHubError::Api { code, message, .. }) => {
                    let f = Failure::new(code, format!("{d}: {message}"))
                        .details(serde_json::json!({"deviceId": d, "done": done}));
                    out.failure(&f)?;
                    return Ok(Outcome::CheckFailed);
                }
                Err(e) => return Err(e.into()),
            };
            if !out.json() {
                out.line(match (group, &before) {
                    (Some(g), Some(b)) if b == g => format!("{d}: already in {g}"),
                    (Some(g), Some(b)) => format!("{d}: {b} -> {g}"),
                    (Some(g), None) => format!("{d}: -> {g}"),
                    (None, Some(b)) => format!("{d}: removed from {b}"),
                    (None, None) => format!("{d}: in no group"),
                })?;
            }
            done.push(serde_json::json!({"deviceId": d, "previousGroup": before, "group": group}));
        }
        if out.json() {
            out.json_value(&done)?;
        }
        Ok(Outcome::Ok)
    })
}

//! `otaforge deploy create|status|list|delete`: deployments of an update to a device group.

use otaforge::service::UpdateInfo;
use otaforge::service::model::{Deployment, RollbackFailure, RollbackPolicy};

use super::args::AduArgs;
use super::results;
use super::update::{parse_update_id, service_failure};
use super::{Failure, Outcome, Output};

/// `otaforge deploy ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeployCommand {
    /// Deploy an imported update to a group (superseding the group's active deployment).
    Create(CreateArgs),
    /// A deployment's state, per device-class subgroup (or of one, `--class`), and each
    /// failed device's last install result with its result codes decoded.
    Status(StatusArgs),
    /// The deployments of a group, newest first.
    List(ListArgs),
    /// Delete a deployment.
    Delete(StatusArgs),
    /// Cancel a deployment in every subgroup, or in one (`--class`).
    Cancel(ActionArgs),
    /// Retry the failed devices of a deployment in every subgroup, or in one (`--class`).
    Retry(ActionArgs),
}

/// `otaforge deploy cancel` and `retry`.
#[derive(Debug, clap::Args)]
pub(crate) struct ActionArgs {
    /// The group.
    group: String,
    /// The deployment id.
    deployment: String,
    /// Only this device-class subgroup.
    #[arg(long)]
    class: Option<String>,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge deploy create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The group.
    group: otaforge::service::model::GroupId,
    /// provider/name/version of an imported update.
    update: String,
    /// Deployment id (default: `UPDATENAME-VERSION-UNIXTIME`).
    #[arg(long)]
    id: Option<otaforge::service::model::DeploymentId>,
    /// When it starts (RFC 3339; default now).
    #[arg(long)]
    start: Option<String>,
    /// Cloud rollback: the update to roll back to (provider/name/version).
    #[arg(long, requires_all = ["rollback_failed_percent", "rollback_failed_count"])]
    rollback_to: Option<String>,
    /// Cloud rollback: share of devices failed, percent.
    #[arg(long, requires = "rollback_to", value_parser = clap::value_parser!(u32).range(0..=100))]
    rollback_failed_percent: Option<u32>,
    /// Cloud rollback: number of devices failed.
    #[arg(long, requires = "rollback_to")]
    rollback_failed_count: Option<u64>,
    /// Then follow it as `deploy status --watch` does.
    #[arg(long)]
    watch: bool,
    /// With --watch: give up after this long (exit 1).
    #[arg(long, default_value = "30m", value_parser = super::wait_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge deploy status` and `delete`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The group.
    group: String,
    /// The deployment id.
    deployment: String,
    /// Only this device-class subgroup (`status`: its status; `delete`: take it out of the
    /// deployment, its devices told to stop).
    #[arg(long)]
    class: Option<String>,
    /// Follow it: a line per change (one JSON object per line with --format json); exit 0 when
    /// every device succeeded, 1 when it failed, was canceled or rolled back.
    #[arg(long)]
    watch: bool,
    /// With --watch: give up after this long (exit 1).
    #[arg(long, default_value = "30m", value_parser = super::wait_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge deploy list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// The group.
    group: String,
    #[command(flatten)]
    adu: AduArgs,
}

pub(crate) fn run(
    cmd: DeployCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    match cmd {
        DeployCommand::Create(a) => create(a, rt, out),
        DeployCommand::Cancel(a) => act(a, true, rt, out),
        DeployCommand::Retry(a) => act(a, false, rt, out),
        DeployCommand::Status(a) if a.watch => {
            let client = a.adu.client(out)?;
            let target = Target { group: &a.group, id: &a.deployment, class: a.class.as_deref() };
            watch(&client, &target, a.timeout, rt, out)
        }
        DeployCommand::Status(a) => status(&a, rt, out),
        DeployCommand::List(a) => {
            let client = a.adu.client(out)?;
            let list = match rt.block_on(client.list_deployments(&a.group)) {
                Ok(l) => l,
                Err(e) => return service_failure(out, "list deployments", e),
            };
            if out.json() {
                out.json_value(&list)?;
            } else {
                for d in &list {
                    out.line(format!(
                        "{}  {}  from {}",
                        d.deployment_id, d.update.update_id, d.start_date_time
                    ))?;
                }
            }
            Ok(Outcome::Ok)
        }
        DeployCommand::Delete(a) => {
            let client = a.adu.client(out)?;
            let deleted = match &a.class {
                Some(c) => {
                    rt.block_on(client.delete_subgroup_deployment(&a.group, c, &a.deployment))
                }
                None => rt.block_on(client.delete_deployment(&a.group, &a.deployment)),
            };
            if let Err(e) = deleted {
                return service_failure(out, "delete the deployment", e);
            }
            if out.json() {
                out.json_value(&serde_json::json!({
                    "deleted": a.deployment, "groupId": a.group, "deviceClassId": a.class,
                }))?;
            } else {
                let of = a.class.as_ref().map(|c| format!(" (subgroup {c})")).unwrap_or_default();
                out.line(format!("deleted {} of {}{of}", a.deployment, a.group))?;
            }
            Ok(Outcome::Ok)
        }
    }
}

/// How a watched deployment ended.
fn verdict(s: &otaforge::service::model::DeploymentStatus, rolled_back: bool) -> Option<Outcome> {
    use otaforge::service::model::DeploymentState as D;
    let busy: u64 = s.subgroup_status.iter().filter_map(|g| g.devices_in_progress_count).sum();
    let failed: u64 =
        s.subgroup_status.iter().filter_map(|g| g.devices_completed_failed_count).sum();
    match s.deployment_state {
        D::Canceled => Some(Outcome::CheckFailed),
        D::Inactive if rolled_back => Some(Outcome::CheckFailed),
        D::Inactive => Some(Outcome::Ok),
        _ if busy == 0 && failed == 0 => Some(Outcome::Ok),
        _ if busy == 0 => Some(Outcome::CheckFailed),
        _ => None,
    }
}

/// Which deployment a status is of: a group's deployment, or one subgroup of it.
struct Target<'a> {
    group: &'a str,
    id: &'a str,
    class: Option<&'a str>,
}

/// A device that failed a deployment, with its last install result decoded.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedDevice {
    device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    module_id: Option<String>,
    device_class_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_install_result: Option<otaforge::service::model::InstallResult>,
}

/// A status with the devices that failed (`failedDevices`).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WithFailures<S> {
    #[serde(flatten)]
    status: S,
    failed_devices: Vec<FailedDevice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_back: Option<bool>,
}

/// The devices that failed in the subgroups with failures.
async fn failures(
    client: &otaforge::service::AduClient,
    t: &Target<'_>,
    subgroups: &[otaforge::service::model::SubgroupDeploymentStatus],
) -> Result<Vec<FailedDevice>, otaforge::service::ServiceError> {
    use otaforge::service::model::DeviceDeploymentState;
    let mut out = Vec::new();
    for sg in subgroups.iter().filter(|g| g.devices_completed_failed_count.unwrap_or(0) > 0) {
        let class = &sg.device_class_id;
        let states = client.device_states(t.group, class, t.id).await?;
        let failed: Vec<&str> = states
            .iter()
            .filter(|s| s.device_state == DeviceDeploymentState::Failed)
            .map(|s| s.device_id.as_str())
            .collect();
        let filter = format!("groupId eq '{}' and deviceClassId eq '{class}'", t.group);
        for d in client.list_devices(Some(&filter)).await? {
            if d.module_id.is_none() && failed.contains(&d.device_id.as_str()) {
                let d = results::annotate(d);
                out.push(FailedDevice {
                    device_id: d.device_id,
                    module_id: d.module_id,
                    device_class_id: d.device_class_id,
                    last_install_result: d.last_install_result,
                });
            }
        }
    }
    Ok(out)
}

/// The text lines of failed devices.
fn failure_lines(failed: &[FailedDevice]) -> Vec<String> {
    failed
        .iter()
        .map(|f| {
            let why = f.last_install_result.as_ref().map_or_else(
                || "failed (no install result reported)".to_owned(),
                |r| format!("failed: {}", results::short(r)),
            );
            format!("    {} {why}", f.device_id)
        })
        .collect()
}

/// The text line of one subgroup's status.
fn subgroup_line(g: &otaforge::service::model::SubgroupDeploymentStatus) -> String {
    format!(
        "  {}  {}  {} devices: {} succeeded, {} failed, {} in progress",
        g.device_class_id,
        g.deployment_state.as_str(),
        g.total_devices.unwrap_or(0),
        g.devices_completed_succeeded_count.unwrap_or(0),
        g.devices_completed_failed_count.unwrap_or(0),
        g.devices_in_progress_count.unwrap_or(0)
    )
}

/// `deploy status`: the deployment's status (or one subgroup's, `--class`) and each failed
/// device's last install result, decoded.
fn status(a: &StatusArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    let client = a.adu.client(out)?;
    let t = Target { group: &a.group, id: &a.deployment, class: a.class.as_deref() };
    let got = rt.block_on(async {
        match t.class {
            Some(c) => {
                let s = client.subgroup_deployment_status(t.group, c, t.id).await?;
                let failed = failures(&client, &t, std::slice::from_ref(&s)).await?;
                Ok::<_, otaforge::service::ServiceError>((None, Some(s), failed))
            }
            None => {
                let s = client.deployment_status(t.group, t.id).await?;
                let failed = failures(&client, &t, &s.subgroup_status).await?;
                Ok((Some(s), None, failed))
            }
        }
    });
    let (whole, one, failed) = match got {
        Ok(x) => x,
        Err(e) => return service_failure(out, "read the deployment's status", e),
    };
    if out.json() {
        match (whole, one) {
            (Some(s), _) => out.json_value(&WithFailures {
                status: s,
                failed_devices: failed,
                rolled_back: None,
            })?,
            (_, Some(s)) => out.json_value(&WithFailures {
                status: s,
                failed_devices: failed,
                rolled_back: None,
            })?,
            _ => {}
        }
        return Ok(Outcome::Ok);
    }
    if let Some(s) = &whole {
        out.line(format!("{} in {}: {}", a.deployment, s.group_id, s.deployment_state.as_str()))?;
    }
    let subgroups = whole.map(|s| s.subgroup_status).or(one.map(|s| vec![s])).unwrap_or_default();
    for g in &subgroups {
        out.line(subgroup_line(g))?;
        for f in failed.iter().filter(|f| f.device_class_id == g.device_class_id) {
            for line in failure_lines(std::slice::from_ref(f)) {
                out.line(line)?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Follows a deployment (or one subgroup of it) until it ends; a line per change, with the
/// devices that failed.
fn watch(
    client: &otaforge::service::AduClient,
    t: &Target<'_>,
    timeout: std::time::Duration,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let step = rt.block_on(async {
            let mut s = client.deployment_status(t.group, t.id).await?;
            if let Some(c) = t.class {
                s.subgroup_status.retain(|g| g.device_class_id == c);
            }
            let list = client.list_deployments(t.group).await?;
            let rolled_back = list.iter().any(|d| {
                d.is_cloud_initiated_rollback == Some(true) && d.deployment_id.starts_with(t.id)
            });
            let failed = failures(client, t, &s.subgroup_status).await?;
            Ok::<_, otaforge::service::ServiceError>((s, rolled_back, failed))
        });
        let (s, rolled_back, failed) = match step {
            Ok(x) => x,
            Err(e) => return service_failure(out, "follow the deployment", e),
        };
        let counts: Vec<String> = s
            .subgroup_status
            .iter()
            .map(|g| {
                format!(
                    "{}: {} ok, {} failed, {} in progress",
                    &g.device_class_id[..g.device_class_id.len().min(8)],
                    g.devices_completed_succeeded_count.unwrap_or(0),
                    g.devices_completed_failed_count.unwrap_or(0),
                    g.devices_in_progress_count.unwrap_or(0)
                )
            })
            .collect();
        let line = format!(
            "{} {}{}",
            s.deployment_state.as_str(),
            counts.join("; "),
            if rolled_back { " (rolled back)" } else { "" }
        );
        let outcome = verdict(&s, rolled_back);
        if line != last {
            if out.json() {
                let v = WithFailures {
                    status: s,
                    failed_devices: failed,
                    rolled_back: Some(rolled_back),
                };
                out.line(serde_json::to_string(&v)?)?;
            } else {
                out.line(&line)?;
                for l in failure_lines(&failed) {
                    out.line(l)?;
                }
            }
            last = line;
        }
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
        if std::time::Instant::now() >= deadline {
            out.failure(&Failure::new(
                "timeout",
                format!("{} had not finished after {timeout:?}", t.id),
            ))?;
            return Ok(Outcome::CheckFailed);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn act(
    a: ActionArgs,
    cancel: bool,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let client = a.adu.client(out)?;
    let verb = if cancel { "cancel" } else { "retry" };
    let result = rt.block_on(async {
        let Some(d) = client.get_deployment(&a.group, &a.deployment).await? else {
            return Ok(None);
        };
        let classes: Vec<String> = match &a.class {
            Some(c) => vec![c.clone()],
            None => d.device_class_subgroups.clone().unwrap_or_default(),
        };
        let mut last = d;
        for c in &classes {
            last = if cancel {
                client.cancel_subgroup(&a.group, c, &a.deployment).await?
            } else {
                client.retry_subgroup(&a.group, c, &a.deployment).await?
            };
        }
        Ok::<_, otaforge::service::ServiceError>(Some((last, classes)))
    });
    let (d, classes) = match result {
        Ok(Some(x)) => x,
        Ok(None) => {
            out.failure(&Failure::new(
                "NotFound",
                format!("deployment `{}` of group `{}` does not exist", a.deployment, a.group),
            ))?;
            return Ok(Outcome::CheckFailed);
        }
        Err(e) => return service_failure(out, &format!("{verb} the deployment"), e),
    };
    if out.json() {
        out.json_value(&serde_json::json!({"deployment": d, "subgroups": classes}))?;
    } else {
        out.line(format!(
            "{verb}: {} in {} subgroup(s) of {}",
            d.deployment_id,
            classes.len(),
            d.group_id
        ))?;
    }
    Ok(Outcome::Ok)
}

fn create(a: CreateArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    let update = parse_update_id(&a.update)?;
    let now = otaforge::time::Timestamp::now()?;
    let start = match &a.start {
        Some(s) => otaforge::time::Timestamp::parse(s)?,
        None => now,
    };
    let id = a.id.clone().unwrap_or_else(|| {
        let secs = now
            .system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        otaforge::service::model::DeploymentId::generated(&update, secs)
    });
    let rollback_policy = match (&a.rollback_to, a.rollback_failed_percent, a.rollback_failed_count)
    {
        (Some(to), Some(pct), Some(count)) => Some(RollbackPolicy {
            update: UpdateInfo::new(parse_update_id(to)?),
            failure: RollbackFailure {
                devices_failed_percentage: pct,
                devices_failed_count: count,
                extra: Default::default(),
            },
            extra: Default::default(),
        }),
        _ => None,
    };
    let mut d = Deployment::new(id, a.group.clone(), update, &start.to_string());
    d.rollback_policy = rollback_policy;
    let client = a.adu.client(out)?;
    let created = match rt.block_on(client.create_or_update_deployment(&d)) {
        Ok(c) => c,
        Err(e) => return service_failure(out, "create the deployment", e),
    };
    if a.watch {
        if !out.json() {
            out.line(format!(
                "deployment {} of {} to {}",
                created.deployment_id, created.update.update_id, created.group_id
            ))?;
        }
        let t = Target { group: &a.group, id: &created.deployment_id, class: None };
        return watch(&client, &t, a.timeout, rt, out);
    }
    if out.json() {
        out.json_value(&created)?;
    } else {
        let subgroups = created.device_class_subgroups.as_deref().unwrap_or_default();
        if subgroups.is_empty() {
            out.failure(&Failure::new(
                "NoCompatibleSubgroup",
                "the deployment reaches no device class",
            ))?;
            return Ok(Outcome::CheckFailed);
        }
        out.line(format!(
            "deployment {} of {} to {} ({} subgroups), from {}",
            created.deployment_id,
            created.update.update_id,
            created.group_id,
            subgroups.len(),
            created.start_date_time
        ))?;
    }
    Ok(Outcome::Ok)
}

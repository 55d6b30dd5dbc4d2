//! Step 4 of a release: the stages, in order. Each deploys the update to its Device Update
//! group (deployment `VERSION-STAGE`) or, for an IoT Edge stage, creates the IoT Hub
//! configuration `NAME-VERSION-STAGE`, then reads the status every `poll` and applies its gate
//! (`docs/release.md`, Steps and resume). A failed gate stops, cancels or rolls back, as the
//! stage says.
//!
//! What the state file records about a stage is believed only once the service confirms it:
//! the deployment exists, deploys this update, and its counts now give the same verdict (a
//! pass passes the gate, a failure does not). Otherwise the record is dropped and the stage
//! runs, so a hand-edited `release-state.json` cannot skip a stage.

use std::time::Duration;

use super::config::{self, Checked, OnFailure};
use super::{Built, Options, ReleaseError, ReleaseReporter, StageOutput, hub_error, io, service};
use crate::iothub::IotHubClient;
use crate::manifest::UpdateId;
use crate::service::AduClient;
use crate::service::model::{Deployment, DeploymentId, GroupId};

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every stage passed (or the last one asked for with `--until`).
    Passed,
    /// A gate failed; the stage's record says which and what was done.
    GateFailed(String),
}

/// The deployment id of a stage: `VERSION-STAGE`, dots as dashes.
pub fn deployment_id(id: &UpdateId, stage: &str) -> String {
    DeploymentId::for_stage(id, stage).to_string()
}

/// The IoT Hub configuration id of an Edge stage: `NAME-VERSION-STAGE`, lower case, with
/// characters IoT Hub does not take as `-` (edge.md §3.2).
pub fn edge_deployment_id(id: &UpdateId, stage: &str) -> String {
    let raw = format!("{}-{}-{}", id.name(), id.version().as_str(), stage).to_lowercase();
    let id: String = raw
        .chars()
        .map(
            |ch| if ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' { ch } else { '-' },
        )
        .collect();
    id.chars().take(128).collect()
}

/// Where a stage deploys.
enum Target<'a> {
    /// A Device Update group.
    Group(&'a str),
    /// An IoT Edge target condition.
    Edge(&'a str),
}

impl<'a> Target<'a> {
    fn of(stage: &'a config::Stage) -> Result<Self, ReleaseError> {
        match (&stage.group, &stage.edge_target) {
            (Some(g), _) => Ok(Target::Group(&g.value)),
            (None, Some(t)) => Ok(Target::Edge(&t.value)),
            (None, None) => Err(ReleaseError::NoTarget { stage: stage.name.value.clone() }),
        }
    }

    /// How the report names it.
    fn shown(&self) -> String {
        match self {
            Target::Group(g) => (*g).to_owned(),
            Target::Edge(t) => format!("edge: {t}"),
        }
    }

    /// The stage's deployment id.
    fn deployment_id(&self, c: &Checked, stage: &str) -> String {
        match self {
            Target::Group(_) => deployment_id(&c.update_id, stage),
            Target::Edge(_) => edge_deployment_id(&c.update_id, stage),
        }
    }
}

/// The service side of a rollout: Device Update, and the IoT Hub for Edge stages.
pub struct Services<'a> {
    /// Device Update.
    pub client: &'a AduClient,
    /// The IoT Hub, when a stage is an Edge stage.
    pub hub: Option<&'a IotHubClient>,
}

impl Services<'_> {
    fn hub(&self) -> Result<&IotHubClient, ReleaseError> {
        self.hub.ok_or(ReleaseError::NoHub)
    }
}

/// A stage's counts: devices, succeeded, failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    devices: u64,
    succeeded: u64,
    failed: u64,
}

/// What a stage's gate says about its counts.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// More failed than allowed: why, with the counts.
    Failed(String),
    /// Enough succeeded (the soak starts, or goes on).
    Met,
    /// Not yet.
    Short,
}

/// The gate of `stage` applied to `n`.
fn judge(stage: &config::Stage, n: Counts) -> Verdict {
    let share_failed = stage
        .max_failed_share
        .as_ref()
        .is_some_and(|m| n.devices > 0 && n.failed as f64 / n.devices as f64 > m.value);
    if n.failed > stage.max_failed || share_failed {
        return Verdict::Failed(format!(
            "{} of {} devices failed (at most {} allowed{})",
            n.failed,
            n.devices,
            stage.max_failed,
            stage
                .max_failed_share
                .as_ref()
                .map(|m| format!(", or {:.0} %", m.value * 100.0))
                .unwrap_or_default()
        ));
    }
    let met = n.devices > 0 && n.succeeded as f64 / n.devices as f64 >= stage.min_succeeded.value;
    if met { Verdict::Met } else { Verdict::Short }
}

/// An ADU deployment of `update` to `group`, starting now.
fn adu_deployment(id: &str, update: &UpdateId, group: &str) -> Result<Deployment, ReleaseError> {
    let start = crate::manifest::created_date_time(None, None)?;
    Ok(Deployment::new(DeploymentId::new(id)?, GroupId::new(group)?, update.clone(), &start))
}

/// What the service holds under a stage's deployment id.
enum Existing {
    /// Nothing.
    None,
    /// A deployment of this update (for an Edge stage: labelled with this release).
    Ours,
    /// Something else: what it deploys.
    Other(String),
}

/// Looks a stage's deployment up.
async fn existing(
    c: &Checked,
    target: &Target<'_>,
    id: &str,
    s: &Services<'_>,
) -> Result<Existing, ReleaseError> {
    match target {
        Target::Group(group) => {
            let d = s
                .client
                .get_deployment(group, id)
                .await
                .map_err(service(format!("read deployment {id}")))?;
            Ok(match d {
                None => Existing::None,
                Some(d) if d.update.update_id == c.update_id => Existing::Ours,
                Some(d) => Existing::Other(d.update.update_id.to_string()),
            })
        }
        Target::Edge(_) => match s.hub()?.get_configuration(id).await {
            Ok(cfg) => {
                let version = c.update_id.version().as_str();
                Ok(match cfg.labels.get("release") {
                    Some(r) if r == version => Existing::Ours,
                    r => Existing::Other(format!("release {}", r.map_or("(none)", String::as_str))),
                })
            }
            Err(crate::iothub::IotHubError::Api { status: 404, .. }) => Ok(Existing::None),
            Err(e) => Err(hub_error(format!("read Edge deployment {id}"))(e)),
        },
    }
}

/// Creates a stage's deployment unless this update's already exists; one of the same id that
/// deploys something else is refused.
async fn deploy_stage(
    c: &Checked,
    built: &Built,
    target: &Target<'_>,
    id: &str,
    s: &Services<'_>,
) -> Result<(), ReleaseError> {
    if let Target::Group(group) = target
        && s.client
            .get_group(group)
            .await
            .map_err(service(format!("read group {group}")))?
            .is_none()
    {
        return Err(ReleaseError::MissingGroup { group: (*group).to_owned() });
    }
    match existing(c, target, id, s).await? {
        Existing::Ours => return Ok(()),
        Existing::Other(what) => {
            return Err(ReleaseError::DeploymentConflict {
                id: id.to_owned(),
                holds: what,
                update: c.update_id.to_string(),
            });
        }
        Existing::None => {}
    }
    match target {
        Target::Group(group) => {
            let d = adu_deployment(id, &c.update_id, group)?;
            s.client
                .create_or_update_deployment(&d)
                .await
                .map_err(service(format!("deploy to {group}")))?;
        }
        Target::Edge(condition) => create_edge_deployment(c, built, condition, id, s).await?,
    }
    Ok(())
}

/// Creates an Edge stage's IoT Hub configuration from the built Edge manifest.
async fn create_edge_deployment(
    c: &Checked,
    built: &Built,
    condition: &str,
    id: &str,
    s: &Services<'_>,
) -> Result<(), ReleaseError> {
    let m = built.state.edge_manifest.as_ref().ok_or(ReleaseError::NoEdgeManifest)?;
    let path = built.files_dir().join(&m.name);
    let doc: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&path).map_err(io(&path))?)
            .map_err(|source| ReleaseError::EdgeManifest { path: path.clone(), source })?;
    let content = doc.get("content").cloned().unwrap_or(doc);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("release".to_owned(), c.update_id.version().as_str().to_owned());
    let config = crate::iothub::config::Configuration {
        id: id.to_owned(),
        schema_version: Some("1.0".into()),
        labels,
        content: content.as_object().cloned().unwrap_or_default(),
        target_condition: condition.to_owned(),
        priority: c.config.edge.as_ref().map_or(10, |e| e.priority),
        ..Default::default()
    };
    s.hub()?
        .put_configuration(&config, None)
        .await
        .map_err(hub_error(format!("create Edge deployment {id}")))?;
    Ok(())
}

/// A stage's counts now.
async fn stage_counts(
    target: &Target<'_>,
    id: &str,
    s: &Services<'_>,
) -> Result<Counts, ReleaseError> {
    match target {
        Target::Group(group) => {
            let st = s
                .client
                .deployment_status(group, id)
                .await
                .map_err(service("read the deployment's status"))?;
            let sum = |f: fn(&crate::service::model::SubgroupDeploymentStatus) -> Option<u64>| {
                st.subgroup_status.iter().map(|g| f(g).unwrap_or(0)).sum::<u64>()
            };
            Ok(Counts {
                devices: sum(|g| g.total_devices),
                succeeded: sum(|g| g.devices_completed_succeeded_count),
                failed: sum(|g| g.devices_completed_failed_count),
            })
        }
        Target::Edge(_) => edge_counts(id, s.hub()?).await,
    }
}

/// An Edge stage's counts. Devices: the hub's targeted count. Each device the deployment
/// applies to is judged from its `$edgeAgent` twin (edge.md §5.3), so a crash-looping module is
/// a failure even though IoT Hub's reportedSuccessfulCount counts it.
async fn edge_counts(id: &str, hub: &IotHubClient) -> Result<Counts, ReleaseError> {
    use crate::edge::state::{DeviceState, of_twin};
    let refused = |what: &str| hub_error(format!("{what} of Edge deployment {id}"));
    let config = hub.get_configuration(id).await.map_err(refused("read"))?;
    let devices = config.system_metrics.results.get("targetedCount").copied().unwrap_or(0);
    let query = format!(
        "SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' AND configurations.[[{id}]].status = 'Applied'"
    );
    let agents = hub.query_twins(&query).await.map_err(refused("query the devices"))?;
    let (mut succeeded, mut failed) = (0, 0);
    for a in &agents {
        match of_twin(a).0 {
            DeviceState::Succeeded => succeeded += 1,
            DeviceState::Pending => {}
            DeviceState::Failed | DeviceState::ModuleFailed | DeviceState::Invalid => failed += 1,
        }
    }
    Ok(Counts { devices: u64::try_from(devices).unwrap_or(0), succeeded, failed })
}

/// Why the service does not confirm a stage's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unconfirmed {
    /// The stage's deployment does not exist.
    NoDeployment {
        /// Its id.
        id: String,
    },
    /// A deployment of that id deploys something else.
    OtherUpdate {
        /// Its id.
        id: String,
        /// What it deploys.
        holds: String,
        /// This release's update.
        update: String,
    },
    /// Its counts now give another verdict.
    Counts {
        /// Its id.
        id: String,
        /// Devices in the stage.
        devices: u64,
        /// Succeeded.
        succeeded: u64,
        /// Failed.
        failed: u64,
    },
}

impl std::fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoDeployment { id } => write!(f, "the service has no deployment {id}"),
            Self::OtherUpdate { id, holds, update } => {
                write!(f, "deployment {id} deploys {holds}, not {update}")
            }
            Self::Counts { id, devices, succeeded, failed } => write!(
                f,
                "deployment {id} has {succeeded} of {devices} devices succeeded and {failed} failed"
            ),
        }
    }
}

/// Whether the service confirms a recorded stage result: None when it does, else why not.
async fn confirm(
    c: &Checked,
    stage: &config::Stage,
    target: &Target<'_>,
    record: &StageOutput,
    s: &Services<'_>,
) -> Result<Option<Unconfirmed>, ReleaseError> {
    let id = target.deployment_id(c, &stage.name.value);
    let passed = record.result == "passed";
    match existing(c, target, &id, s).await? {
        Existing::Ours => {}
        // Deleting the Edge deployment is what its failed gate did.
        Existing::None
            if !passed
                && matches!(target, Target::Edge(_))
                && record.action.as_deref().is_some_and(|a| a.starts_with("deleted")) =>
        {
            return Ok(None);
        }
        Existing::None => return Ok(Some(Unconfirmed::NoDeployment { id })),
        Existing::Other(holds) => {
            return Ok(Some(Unconfirmed::OtherUpdate {
                id,
                holds,
                update: c.update_id.to_string(),
            }));
        }
    }
    let n = stage_counts(target, &id, s).await?;
    if passed == (judge(stage, n) == Verdict::Met) {
        return Ok(None);
    }
    Ok(Some(Unconfirmed::Counts {
        id,
        devices: n.devices,
        succeeded: n.succeeded,
        failed: n.failed,
    }))
}

/// Step 4: the stages, in order; each deploys to its group (or its Edge devices) and waits on
/// its gates. A stage recorded in the state file is skipped only when the service confirms the
/// record.
pub async fn roll_out(
    c: &Checked,
    built: &mut Built,
    services: &Services<'_>,
    opts: &Options,
    reporter: &dyn ReleaseReporter,
) -> Result<Rollout, ReleaseError> {
    for (i, stage) in c.config.stages.iter().enumerate() {
        let name = stage.name.value.as_str();
        let target = Target::of(stage)?;
        let recorded = built.state.stages.iter().position(|s| s.name == name);
        let result = match recorded {
            Some(at) => {
                let record = built.state.stages[at].clone();
                match confirm(c, stage, &target, &record, services).await? {
                    None => Some(record.result),
                    Some(why) => {
                        reporter.record_not_confirmed(&record, &why);
                        built.state.stages.remove(at);
                        built.state.write(&built.dir)?;
                        None
                    }
                }
            }
            None => None,
        };
        let result = match result {
            Some(r) => r,
            None => {
                let out = run_stage(c, built, i, &target, services, opts, reporter).await?;
                let result = out.result.clone();
                record(c, &mut built.state.stages, out);
                built.state.write(&built.dir)?;
                result
            }
        };
        if result != "passed" {
            return Ok(Rollout::GateFailed(name.to_owned()));
        }
        if opts.until.as_deref() == Some(name) {
            break;
        }
    }
    Ok(Rollout::Passed)
}

/// Adds a stage's record in the order of the stages.
fn record(c: &Checked, stages: &mut Vec<StageOutput>, out: StageOutput) {
    let order = |name: &str| {
        c.config.stages.iter().position(|s| s.name.value == name).unwrap_or(usize::MAX)
    };
    let at = stages.iter().position(|s| order(&s.name) > order(&out.name)).unwrap_or(stages.len());
    stages.insert(at, out);
}

/// Runs stage `i`: deploys, then reads its counts every `poll` until the gate passes (after
/// the soak), fails or times out; a failed gate does what the stage says.
async fn run_stage(
    c: &Checked,
    built: &Built,
    i: usize,
    target: &Target<'_>,
    s: &Services<'_>,
    opts: &Options,
    reporter: &dyn ReleaseReporter,
) -> Result<StageOutput, ReleaseError> {
    let stage = &c.config.stages[i];
    let poll = opts.poll.unwrap_or(Duration::from_secs(2));
    let id = target.deployment_id(c, &stage.name.value);
    deploy_stage(c, built, target, &id, s).await?;
    let (timeout, soak) = c.stage_times[i];
    let started = tokio::time::Instant::now();
    let mut passed_at: Option<tokio::time::Instant> = None;
    let mut out = loop {
        let n = stage_counts(target, &id, s).await?;
        let mut o = StageOutput {
            name: stage.name.value.clone(),
            group: target.shown(),
            deployment_id: id.clone(),
            result: "running".into(),
            devices: n.devices,
            succeeded: n.succeeded,
            failed: n.failed,
            action: None,
            reason: None,
        };
        let verdict = judge(stage, n);
        if let Verdict::Failed(why) = verdict {
            o.result = "failed".into();
            o.reason = Some(why);
            break o;
        }
        if verdict == Verdict::Met && passed_at.is_none() {
            passed_at = Some(tokio::time::Instant::now());
        }
        if passed_at.is_some_and(|t| t.elapsed() >= soak) {
            o.result = "passed".into();
            break o;
        }
        if passed_at.is_none() && started.elapsed() >= timeout {
            o.result = "timeout".into();
            o.reason = Some(format!(
                "{} of {} devices succeeded after {timeout:?}; {:.0} % needed",
                n.succeeded,
                n.devices,
                stage.min_succeeded.value * 100.0
            ));
            break o;
        }
        reporter.stage(&o);
        tokio::time::sleep(poll).await;
    };
    if out.result != "passed" {
        out.action = Some(on_failure(c, stage, target, &id, s).await?);
    }
    reporter.stage(&out);
    Ok(out)
}

/// The newest earlier version of the update the service holds.
async fn previous(client: &AduClient, id: &UpdateId) -> Result<Option<UpdateId>, ReleaseError> {
    let all = client.list_updates().await.map_err(service("list updates"))?;
    Ok(all
        .into_iter()
        .map(|u| u.update_id)
        .filter(|u| u.provider() == id.provider() && u.name() == id.name())
        .filter(|u| u.version().parts() < id.version().parts())
        .max_by(|a, b| a.version().parts().cmp(b.version().parts())))
}

/// What a failed gate does; returns what was done, for the report.
async fn on_failure(
    c: &Checked,
    stage: &config::Stage,
    target: &Target<'_>,
    id: &str,
    s: &Services<'_>,
) -> Result<String, ReleaseError> {
    match (stage.on_failure, target) {
        (OnFailure::Stop, _) => Ok("stopped".to_owned()),
        (OnFailure::Cancel | OnFailure::Rollback, Target::Edge(_)) => {
            // Edge: deleting the deployment makes its devices fall back to their next one
            // (edge.md §3.5); with none, they keep their modules.
            s.hub()?
                .delete_configuration(id, None)
                .await
                .map_err(hub_error(format!("delete Edge deployment {id}")))?;
            Ok("deleted (its devices fall back to their next deployment)".to_owned())
        }
        (OnFailure::Cancel, Target::Group(group)) => {
            let st = s
                .client
                .deployment_status(group, id)
                .await
                .map_err(service("read the deployment's status"))?;
            for g in &st.subgroup_status {
                s.client
                    .cancel_subgroup(group, &g.device_class_id, id)
                    .await
                    .map_err(service("cancel"))?;
            }
            Ok("canceled".to_owned())
        }
        (OnFailure::Rollback, Target::Group(group)) => {
            let to = match &stage.rollback_to {
                Some(v) => {
                    Some(UpdateId::new(c.update_id.provider(), c.update_id.name(), &v.value)?)
                }
                None => previous(s.client, &c.update_id).await?,
            };
            let Some(to) = to else {
                return Ok("stopped (no earlier version to roll back to)".to_owned());
            };
            let d = adu_deployment(&format!("{id}-rollback"), &to, group)?;
            s.client
                .create_or_update_deployment(&d)
                .await
                .map_err(service("deploy the rollback"))?;
            Ok(format!("rolledBack to {}", to.version().as_str()))
        }
    }
}

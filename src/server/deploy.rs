//! Deployments as Device Update has them (adu.md §4.3, §7): checked when created, one active per
//! group (a new one supersedes it), fanned out to the group's device-class subgroups whose
//! class the update fits, and a status computed from what each device's agent reports.
//!
//! A device's state in a deployment: `Succeeded` when it runs the deployed update (its agent
//! reported it installed, whatever deployment did it), `Failed` when its agent reported `Failed`
//! (255) for this deployment, else `InProgress`. A subgroup is `Failed` when every device
//! finished and one failed, else `Active`; the deployment is `ActiveWithSubgroupFailures` when a
//! subgroup failed, `Inactive` once superseded, and `Canceled` when canceled.

use crate::service::Update;
use crate::service::model::{
    Deployment, DeploymentId, DeploymentState, DeploymentStatus, DeviceDeploymentState, GroupId,
    SubgroupDeploymentState, SubgroupDeploymentStatus,
};

use super::devices::{AduDevice, View, best_update};
use super::store::StoredDeployment;

/// Deployments an instance holds at most (active, inactive and canceled; adu.md §7.1).
pub const MAX_DEPLOYMENTS: usize = 100;

/// What is wrong with a deployment to create: ADU's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A field is wrong or disagrees with the path.
    InvalidDeployment,
    /// No device is in the group.
    GroupNotFound,
    /// The update (or the rollback's) is not imported.
    UpdateNotFound,
    /// The update is a child only its parent installs.
    UpdateNotDeployable,
    /// No device class of the group can install the update.
    NoCompatibleSubgroup,
}

impl Problem {
    /// ADU's error code.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidDeployment => "InvalidDeployment",
            Self::GroupNotFound => "GroupNotFound",
            Self::UpdateNotFound => "UpdateNotFound",
            Self::UpdateNotDeployable => "UpdateNotDeployable",
            Self::NoCompatibleSubgroup => "NoCompatibleSubgroup",
        }
    }
}

/// A deployment ADU would refuse: the problem, the message and the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// What is wrong.
    pub problem: Problem,
    /// Why, for people.
    pub message: String,
    /// The field (`deploymentId`, `groupId`, `update`, `rollbackPolicy.failure`, ...).
    pub target: &'static str,
}

fn refused(problem: Problem, message: String, target: &'static str) -> Refused {
    Refused { problem, message, target }
}

/// Checks a deployment to create against the path it was sent to, the devices and the updates;
/// returns it with the subgroups it fans out to filled in.
pub fn prepare(
    mut d: Deployment,
    group_id: &GroupId,
    deployment_id: &DeploymentId,
    view: &View,
    updates: &[Update],
) -> Result<Deployment, Refused> {
    use Problem::*;
    let bad = refused;
    if d.deployment_id != *deployment_id {
        return Err(bad(
            InvalidDeployment,
            format!(
                "the body's deploymentId `{}` differs from the path's `{deployment_id}`",
                d.deployment_id
            ),
            "deploymentId",
        ));
    }
    if d.group_id != *group_id {
        return Err(bad(
            InvalidDeployment,
            format!("the body's groupId `{}` differs from the path's `{group_id}`", d.group_id),
            "groupId",
        ));
    }
    if humantime::parse_rfc3339_weak(d.start_date_time.trim_end_matches('Z')).is_err()
        && humantime::parse_rfc3339(&d.start_date_time).is_err()
        && !d.start_date_time.contains('+')
    {
        return Err(bad(
            InvalidDeployment,
            format!("startDateTime `{}` is not an ISO 8601 time", d.start_date_time),
            "startDateTime",
        ));
    }
    if !view.groups().iter().any(|g| g.group_id == group_id.as_str()) {
        return Err(bad(
            GroupNotFound,
            format!("group `{group_id}` does not exist (no device is in it)"),
            "groupId",
        ));
    }
    let Some(update) = updates.iter().find(|u| u.update_id == d.update.update_id) else {
        return Err(bad(
            UpdateNotFound,
            format!("update {} is not imported", d.update.update_id),
            "update",
        ));
    };
    if !update.deployable() {
        return Err(bad(
            UpdateNotDeployable,
            format!("update {} is a child that only its parent installs", update.update_id),
            "update",
        ));
    }
    if let Some(r) = &d.rollback_policy {
        if !updates.iter().any(|u| u.update_id == r.update.update_id) {
            return Err(bad(
                UpdateNotFound,
                format!("rollback update {} is not imported", r.update.update_id),
                "rollbackPolicy.update",
            ));
        }
        if r.failure.devices_failed_percentage > 100 {
            return Err(bad(
                InvalidDeployment,
                "devicesFailedPercentage is at most 100".to_owned(),
                "rollbackPolicy.failure",
            ));
        }
    }
    // Fan out to every subgroup (device class present in the group) the update fits.
    let mut subgroups: Vec<String> = Vec::new();
    for dev in view.devices.iter().filter(|x| x.device.group_id.as_deref() == Some(group_id)) {
        let class = &dev.device.device_class_id;
        let fits = view.classes.get(class).is_some_and(|c| {
            best_update(std::slice::from_ref(update), &c.device_class_properties.compat_properties)
                .is_some()
        });
        if fits && !subgroups.contains(class) {
            subgroups.push(class.clone());
        }
    }
    if subgroups.is_empty() {
        return Err(bad(
            NoCompatibleSubgroup,
            format!(
                "no device class in group `{group_id}` is compatible with {}",
                update.update_id
            ),
            "update",
        ));
    }
    d.device_class_subgroups = Some(subgroups);
    d.is_canceled.get_or_insert(false);
    d.is_retried.get_or_insert(false);
    Ok(d)
}

/// A device's state in a deployment: `Succeeded` once it runs the update; `Canceled` when its
/// subgroup was canceled; `Failed` when its agent reported failure for this deployment (and,
/// after a retry, for that retry); else `InProgress`.
pub fn device_state(dev: &AduDevice, stored: &StoredDeployment) -> DeviceDeploymentState {
    let d = &stored.deployment;
    let actions = stored.subgroups.get(&dev.device.device_class_id).cloned().unwrap_or_default();
    let installed = dev.device.installed_update.as_ref().map(|u| &u.update_id);
    let failed_here = dev.workflow_id.as_deref() == Some(d.deployment_id.as_str())
        && dev.agent_state == Some(255)
        && (actions.retry_timestamp.is_none() || dev.retry_timestamp == actions.retry_timestamp);
    if installed == Some(&d.update.update_id) {
        DeviceDeploymentState::Succeeded
    } else if actions.canceled {
        DeviceDeploymentState::Canceled
    } else if failed_here {
        DeviceDeploymentState::Failed
    } else {
        DeviceDeploymentState::InProgress
    }
}

/// Whether a deployment's cloud rollback is due: the failed devices across its subgroups reach
/// both `devicesFailedCount` and `devicesFailedPercentage` of its devices. The API requires both
/// fields and the documents disagree on whether one or both must be met (adu.md §7); serve
/// rolls back only when both are, so a single failure in a large group cannot trigger it.
pub fn rollback_due(stored: &StoredDeployment, view: &View) -> bool {
    let Some(policy) = &stored.deployment.rollback_policy else { return false };
    if stored.state != DeploymentState::Active {
        return false;
    }
    let s = status(stored, view);
    let failed: u64 =
        s.subgroup_status.iter().filter_map(|g| g.devices_completed_failed_count).sum();
    let total: u64 = s.subgroup_status.iter().filter_map(|g| g.total_devices).sum();
    total > 0
        && failed >= policy.failure.devices_failed_count
        && failed * 100 >= u64::from(policy.failure.devices_failed_percentage) * total
}

/// The deployment that rolls a group back to its policy's update, superseding `stored`.
pub fn rollback_of(stored: &StoredDeployment, now: &str) -> Option<Deployment> {
    let d = &stored.deployment;
    let policy = d.rollback_policy.as_ref()?;
    let mut rollback = Deployment::new(
        d.deployment_id.rollback(),
        d.group_id.clone(),
        policy.update.update_id.clone(),
        now,
    );
    rollback.is_cloud_initiated_rollback = Some(true);
    Some(rollback)
}

/// The status of a deployment.
pub fn status(stored: &StoredDeployment, view: &View) -> DeploymentStatus {
    let d = &stored.deployment;
    let mut subgroup_status = Vec::new();
    for class in d.device_class_subgroups.iter().flatten() {
        let members: Vec<&AduDevice> = view
            .devices
            .iter()
            .filter(|x| {
                x.device.group_id.as_deref() == Some(d.group_id.as_str())
                    && x.device.device_class_id == *class
            })
            .map(|x| &**x)
            .collect();
        let states: Vec<DeviceDeploymentState> =
            members.iter().map(|m| device_state(m, stored)).collect();
        let count = |s: DeviceDeploymentState| states.iter().filter(|x| **x == s).count() as u64;
        let (ok, failed, busy) = (
            count(DeviceDeploymentState::Succeeded),
            count(DeviceDeploymentState::Failed),
            count(DeviceDeploymentState::InProgress),
        );
        let canceled = stored.subgroups.get(class).is_some_and(|a| a.canceled);
        let state = match stored.state {
            _ if canceled => SubgroupDeploymentState::Canceled,
            DeploymentState::Canceled => SubgroupDeploymentState::Canceled,
            DeploymentState::Inactive => SubgroupDeploymentState::Inactive,
            _ if failed > 0 && busy == 0 => SubgroupDeploymentState::Failed,
            _ => SubgroupDeploymentState::Active,
        };
        subgroup_status.push(SubgroupDeploymentStatus {
            group_id: d.group_id.to_string(),
            device_class_id: class.clone(),
            deployment_state: state,
            error: None,
            total_devices: Some(members.len() as u64),
            devices_in_progress_count: Some(busy),
            devices_completed_failed_count: Some(failed),
            devices_completed_succeeded_count: Some(ok),
            devices_canceled_count: Some(count(DeviceDeploymentState::Canceled)),
            extra: Default::default(),
        });
    }
    let deployment_state = match stored.state {
        DeploymentState::Canceled => DeploymentState::Canceled,
        DeploymentState::Inactive => DeploymentState::Inactive,
        _ if subgroup_status
            .iter()
            .any(|s| s.deployment_state == SubgroupDeploymentState::Failed) =>
        {
            DeploymentState::ActiveWithSubgroupFailures
        }
        _ => DeploymentState::Active,
    };
    DeploymentStatus {
        group_id: d.group_id.to_string(),
        deployment_state,
        error: None,
        subgroup_status,
        extra: Default::default(),
    }
}

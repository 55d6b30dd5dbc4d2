//! What serve does on its own, beside answering requests: writing each group's deployment into
//! its devices' twins ([`reconcile`], after every change and every [`RECONCILE_EVERY`]),
//! rolling a deployment back when its failures reach its policy ([`after_report`]), and IoT
//! Hub's passes over Edge deployments and automatic device management ([`edge_pass`]). Each
//! runs from the store, so a restart or a missed event only delays it.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::store::StoreError;
use super::{Shared, deploy, desired, devices, now_string};
use crate::service::agent::{
    ACTION_CANCEL, ACTION_PROCESS, DesiredComponent, ReportedComponent, STATE_FAILED,
};
use crate::service::model::DeploymentState;

/// Why a pass could not finish (it runs again).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A read URL could not be made.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The update manifest could not be signed.
    #[error("cannot sign the update manifest: {0}")]
    Sign(#[from] crate::sign::SignError),
    /// The deployment's update was deleted meanwhile.
    #[error("update {0} is gone")]
    UpdateGone(crate::manifest::UpdateId),
}

impl From<ReconcileError> for super::error::ApiError {
    fn from(e: ReconcileError) -> Self {
        Self::internal(e)
    }
}

/// Starts the background passes: deployments into twins every [`RECONCILE_EVERY`], and the
/// Edge pass whenever something that changes Edge assignments happens (once at once, to
/// catch up with what changed while serve was down).
pub(super) fn spawn(s: &Shared) {
    s.edge_changed.notify_one();
    tokio::spawn(edge_pass(s.clone()));
    let s = s.clone();
    tokio::spawn(async move {
        loop {
            let _ = reconcile_all(&s).await;
            tokio::time::sleep(RECONCILE_EVERY).await;
        }
    });
}

/// Whether a device's report says its agent failed (`deviceUpdate.agent.state` 255).
pub(super) fn reports_failure(patch: &Map<String, Value>) -> bool {
    ReportedComponent::of(patch).and_then(|c| c.agent).and_then(|a| a.state) == Some(STATE_FAILED)
}

/// How long the Edge pass waits after a change, so that a burst of changes makes one pass.
const SETTLE: Duration = Duration::from_millis(100);

/// How often IoT Hub's configuration passes run without a change that signals them (a
/// reported property a target condition reads changes no configuration; IoT Hub itself
/// reruns automatic configurations every five minutes).
const CONFIGURATIONS_EVERY: Duration = Duration::from_secs(60);

/// Runs IoT Hub's configuration passes — Edge deployments into module twins, automatic device
/// management into device twins — whenever `s.edge_changed` is signalled, and every
/// [`CONFIGURATIONS_EVERY`], forever.
async fn edge_pass(s: Shared) {
    loop {
        let _ = tokio::time::timeout(CONFIGURATIONS_EVERY, s.edge_changed.notified()).await;
        tokio::time::sleep(SETTLE).await;
        let passes =
            s.db.call(|st| {
                let mut changed = st.reconcile_edge()?;
                changed.extend(st.reconcile_adm()?);
                Ok(changed)
            })
            .await;
        match passes {
            Ok(changed) => {
                for (key, version) in changed {
                    s.desired_changed(&key, version);
                }
            }
            // The store is busy or failing: try again shortly (nothing was half-written: the
            // pass is one transaction).
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                s.edge_changed.notify_one();
            }
        }
    }
}

/// How often every group's deployment is written to its devices again.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// How long a file URL written into a device's twin is valid.
const FILE_URL_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Reconciles every group that has a deployment.
async fn reconcile_all(s: &Shared) -> Result<(), ReconcileError> {
    let groups = s.db.read(|st| st.deployment_groups()).await?;
    for g in groups {
        reconcile(s, &g).await?;
    }
    Ok(())
}

/// Writes a group's current deployment into its devices' desired properties where they do not
/// already say it: the update manifest and file URLs for devices of a subgroup the deployment
/// covers (once its start time has come), `Cancel` for a canceled subgroup, and the retry's
/// timestamp after a retry.
pub(super) async fn reconcile(s: &Shared, group: &str) -> Result<(), ReconcileError> {
    reconcile_devices(s, group, None).await
}

/// [`reconcile`] for every device of the group, or only for `only`.
async fn reconcile_devices(
    s: &Shared,
    group: &str,
    only: Option<&str>,
) -> Result<(), ReconcileError> {
    let g = group.to_owned();
    let current =
        s.db.read(move |st| st.deployments(&g))
            .await?
            .into_iter()
            .find(|d| d.state != DeploymentState::Inactive);
    let Some(current) = current else { return Ok(()) };
    let d = &current.deployment;
    let started = humantime::parse_rfc3339_weak(d.start_date_time.trim_end_matches('Z'))
        .map(|t| t <= SystemTime::now())
        .unwrap_or(true);
    if !started {
        return Ok(());
    }
    let twins = match only {
        Some(id) => {
            let id = id.to_owned();
            let row = s.db.read(move |st| st.device(&id)).await?;
            row.map(|r| vec![(r.twin, r.created)]).unwrap_or_default()
        }
        None => {
            let g = group.to_owned();
            s.db.read(move |st| st.group_twins(&g)).await?
        }
    };
    let updates = s.db.read(|st| st.updates()).await?;
    let view = devices::View::build(&twins, &updates);
    let by_id: std::collections::HashMap<&str, &crate::iothub::Twin> =
        twins.iter().map(|(t, _)| (t.device_id.as_str(), t)).collect();
    let mut manifest: Option<desired::DesiredUpdate> = None;
    let mut patches = Vec::new();
    for dev in view.devices.iter().filter(|x| x.device.group_id.as_deref() == Some(group)) {
        let class = &dev.device.device_class_id;
        let actions = current.subgroups.get(class).cloned().unwrap_or_default();
        // A deleted subgroup is no longer the deployment's, but its devices are still told
        // to stop.
        if !actions.deleted && !d.device_class_subgroups.iter().flatten().any(|c| c == class) {
            continue;
        }
        let stop = actions.canceled || actions.deleted;
        let action = if stop || current.state == DeploymentState::Canceled {
            ACTION_CANCEL
        } else {
            ACTION_PROCESS
        };
        let twin = by_id.get(dev.device.device_id.as_str());
        let written = twin
            .and_then(|t| DesiredComponent::of(&t.properties.desired))
            .and_then(|c| c.service)
            .map(|s| s.workflow);
        let same = written.is_some_and(|w| {
            w.action == Some(action)
                && w.id == d.deployment_id
                && w.retry_timestamp == actions.retry_timestamp
        });
        if same {
            continue;
        }
        if action == ACTION_PROCESS && manifest.is_none() {
            manifest = Some(cached_manifest(s, &d.update.update_id).await?);
        }
        let patch = desired::service_property(
            &d.deployment_id,
            action,
            actions.retry_timestamp.as_deref(),
            manifest.as_ref().filter(|_| action == ACTION_PROCESS),
        );
        patches.push((dev.device.device_id.clone(), patch));
    }
    if patches.is_empty() {
        return Ok(());
    }
    let s = s.clone();
    super::to_the_end(async move {
        let patched = s.db.call(move |st| st.patch_desired_many(&patches)).await?;
        for (id, version) in patched {
            s.desired_changed(&id, version);
        }
        Ok(())
    })
    .await
}

/// [`manifest_and_urls`], kept for a day per update (its URLs are valid for seven), so a
/// rollout does not rebuild and re-sign it for every device.
async fn cached_manifest(
    s: &Shared,
    id: &crate::manifest::UpdateId,
) -> Result<desired::DesiredUpdate, ReconcileError> {
    let key = id.to_string();
    let fresh = |at: &std::time::Instant| at.elapsed() < Duration::from_secs(86_400);
    if let Some((at, m)) = s.manifests.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
        && fresh(at)
    {
        return Ok(m.clone());
    }
    let m = manifest_and_urls(s, id).await?;
    s.manifests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, (std::time::Instant::now(), m.clone()));
    Ok(m)
}

/// The update manifest of an update and a signed URL for each file it names.
async fn manifest_and_urls(
    s: &Shared,
    id: &crate::manifest::UpdateId,
) -> Result<desired::DesiredUpdate, ReconcileError> {
    use crate::storage::BlobStore as _;
    let key = id.clone();
    let (update, files) =
        s.db.read(move |st| {
            let update = st.update(&key)?;
            let mut files = Vec::new();
            for f in st.file_ids(&key)? {
                files.extend(st.file(&key, &f)?);
            }
            Ok((update, files))
        })
        .await?;
    let Some(update) = update else {
        return Err(ReconcileError::UpdateGone(id.clone()));
    };
    let (manifest, content) = desired::update_manifest(&update, &files);
    let manifest = serde_json::to_string(&manifest).map_err(StoreError::from)?;
    let container: crate::storage::ContainerName =
        "content".parse().map_err(crate::storage::StorageError::from)?;
    let mut urls = std::collections::BTreeMap::new();
    for (file_id, sha) in content {
        let hex = sha.parse::<crate::Sha256>().map(|h| h.to_hex()).unwrap_or_default();
        let blob: crate::storage::BlobName =
            hex.parse().map_err(crate::storage::StorageError::from)?;
        let url = s.files.read_url(&container, &blob, FILE_URL_TTL).await?;
        urls.insert(file_id, url);
    }
    let signature =
        crate::sign::adu::sign_update_manifest(&manifest, &s.update_key, &s.update_sjwk)?;
    Ok(desired::DesiredUpdate { manifest, signature, file_urls: urls })
}

/// After a device reported: it gets its group's deployment if it has not (a device that joins
/// or comes online later); and when it reported a failure, its group's active deployment is
/// checked against its cloud rollback policy, and the rollback deployment created, superseding
/// it (once: the rollback has no policy of its own). Only a failure can complete a failure
/// threshold, so a successful report costs one device, not the whole group.
pub(super) async fn after_report(
    s: &Shared,
    device_id: &str,
    failed: bool,
) -> Result<(), ReconcileError> {
    let id = device_id.to_owned();
    let Some(row) = s.db.read(move |st| st.device(&id)).await? else { return Ok(()) };
    let group = row.twin.group().unwrap_or(devices::DEFAULT_GROUP).to_owned();
    reconcile_devices(s, &group, Some(device_id)).await?;
    if !failed {
        return Ok(());
    }
    let g = group.clone();
    let twins = s.db.read(move |st| st.group_twins(&g)).await?;
    let updates = s.db.read(|st| st.updates()).await?;
    let view = devices::View::build(&twins, &updates);
    let g = group.clone();
    let active =
        s.db.read(move |st| st.deployments(&g))
            .await?
            .into_iter()
            .find(|d| d.state == DeploymentState::Active);
    let Some(active) = active else { return Ok(()) };
    if !deploy::rollback_due(&active, &view) {
        return Ok(());
    }
    let Some(rollback) = deploy::rollback_of(&active, &now_string()) else { return Ok(()) };
    let (id, group_id) = (rollback.deployment_id.clone(), rollback.group_id.clone());
    let rollback = match deploy::prepare(rollback, &group_id, &id, &view, &updates) {
        Ok(r) => r,
        // The rollback update fits no subgroup any more: nothing to roll back to.
        Err(_) => return Ok(()),
    };
    let record = super::store::AuditRecord {
        at: now_string(),
        actor: "serve (cloud-initiated rollback)".into(),
        action: "rollback".into(),
        group_id: group_id.to_string(),
        deployment_id: id.to_string(),
        class_id: None,
        update_id: Some(rollback.update.update_id.to_string()),
    };
    s.db.call(move |st| {
        if st.put_deployment(&rollback, deploy::MAX_DEPLOYMENTS)?.is_ok() {
            st.record_audit(&record)?;
        }
        Ok(())
    })
    .await?;
    s.deployment_created.notify_one();
    reconcile(s, &group).await
}

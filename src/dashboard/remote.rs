//! The dashboard's source over the REST APIs: a Device Update instance through
//! [`AduClient`] and, when given, an IoT Hub through [`IotHubClient`] (Azure or serve alike).
//! The credentials stay in this process; the browser only ever sees pages. Live updates are
//! polled: at most one look per [`RemoteSource::poll`] per open page, at a fingerprint of the
//! fleet (compliance and each group's deployments).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use super::{Action, AuditEntry, DashboardError, DashboardSource, ProgressRecord, ResultRecord};
use crate::iothub::config::Configuration;
use crate::iothub::{IotHubClient, IotHubError, Twin};
use crate::service::model::{
    Deployment, DeploymentStatus, Device, DeviceClass, DeviceDeploymentState, Group,
    UpdateCompliance,
};
use crate::service::{AduClient, UpdateInfo};

/// Edge deployments read, at most (IoT Hub allows 100 configurations... per hub tier).
const EDGE_LISTED: usize = 100;

/// The shortest interval between two polls of one page's live stream.
pub const MIN_POLL: Duration = Duration::from_secs(2);

/// Deployments and devices whose history is kept in memory, at most.
const WATCHED: usize = 100;

/// Samples kept per deployment or device, at most (the oldest go first).
const SAMPLES: usize = 1_000;

/// A Device Update instance and an IoT Hub, through their clients.
pub struct RemoteSource {
    adu: AduClient,
    hub: Option<IotHubClient>,
    poll: Duration,
    seen: std::sync::Mutex<Seen>,
}

/// What this process saw change while it watched, since Device Update's API keeps only the
/// latest status of a deployment and the latest result of a device.
#[derive(Debug, Default)]
struct Seen {
    progress: HashMap<(String, String), Vec<ProgressRecord>>,
    results: HashMap<String, Vec<ResultRecord>>,
}

/// Appends `sample` to `key`'s series unless it equals the last (`same`), within the bounds.
fn keep<K: Eq + Hash + Clone, T>(
    map: &mut HashMap<K, Vec<T>>,
    key: &K,
    sample: T,
    same: impl Fn(&T, &T) -> bool,
) {
    if !map.contains_key(key) && map.len() >= WATCHED {
        // Forget the series that saw nothing for the longest (the one with the fewest samples
        // is a fair stand-in without a clock per series).
        if let Some(k) = map.iter().min_by_key(|(_, v)| v.len()).map(|(k, _)| k.clone()) {
            map.remove(&k);
        }
    }
    let series = map.entry(key.clone()).or_default();
    if series.last().is_some_and(|l| same(l, &sample)) {
        return;
    }
    if series.len() >= SAMPLES {
        series.remove(0);
    }
    series.push(sample);
}

impl RemoteSource {
    /// Reads `adu` and, when given, `hub`, polling for changes every `poll` (at least
    /// [`MIN_POLL`]).
    pub fn new(adu: AduClient, hub: Option<IotHubClient>, poll: Duration) -> Self {
        Self { adu, hub, poll: poll.max(MIN_POLL), seen: Default::default() }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a deployment's status and keeps its counts if they moved.
    async fn status(&self, group: &str, id: &str) -> Result<DeploymentStatus, DashboardError> {
        let status = self.adu.deployment_status(group, id).await?;
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut seen = self.seen();
        for s in &status.subgroup_status {
            let sample = ProgressRecord::of(group, id, &at, s);
            // One series per deployment holds every subgroup: compare with the subgroup's last.
            let key = (group.to_owned(), id.to_owned());
            let last = seen
                .progress
                .get(&key)
                .and_then(|v| v.iter().rev().find(|p| p.class_id == sample.class_id))
                .cloned();
            if last.is_none_or(|l| !l.same_counts(&sample)) {
                keep(&mut seen.progress, &key, sample, |_, _| false);
            }
        }
        Ok(status)
    }

    fn hub(&self) -> Result<&IotHubClient, DashboardError> {
        self.hub.as_ref().ok_or(DashboardError::NoHub)
    }

    /// A fingerprint of what the fleet pages show (0 when the service cannot be read).
    async fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if let Ok(c) = self.adu.update_compliance(None).await {
            serde_json::to_string(&c).unwrap_or_default().hash(&mut h);
        }
        if let Ok(groups) = self.adu.list_groups().await {
            for g in groups {
                serde_json::to_string(&g).unwrap_or_default().hash(&mut h);
                for d in g.deployments.iter().flatten() {
                    if let Ok(s) = self.status(&g.group_id, d).await {
                        serde_json::to_string(&s).unwrap_or_default().hash(&mut h);
                    }
                }
            }
        }
        h.finish().max(1)
    }
}

#[async_trait::async_trait]
impl DashboardSource for RemoteSource {
    async fn groups(&self) -> Result<Vec<Group>, DashboardError> {
        Ok(self.adu.list_groups().await?)
    }

    async fn classes(&self) -> Result<Vec<DeviceClass>, DashboardError> {
        Ok(self.adu.list_device_classes().await?)
    }

    async fn compliance(&self, group: Option<&str>) -> Result<UpdateCompliance, DashboardError> {
        Ok(self.adu.update_compliance(group).await?)
    }

    async fn updates(&self) -> Result<Vec<UpdateInfo>, DashboardError> {
        let list = self.adu.list_updates().await?;
        Ok(list.into_iter().map(|u| UpdateInfo::new(u.update_id)).collect())
    }

    async fn deployments(&self, group: &str) -> Result<Vec<Deployment>, DashboardError> {
        Ok(self.adu.list_deployments(group).await?)
    }

    async fn deployment(
        &self,
        group: &str,
        id: &str,
    ) -> Result<Option<Deployment>, DashboardError> {
        Ok(self.adu.get_deployment(group, id).await?)
    }

    async fn deployment_status(
        &self,
        group: &str,
        id: &str,
    ) -> Result<DeploymentStatus, DashboardError> {
        self.status(group, id).await
    }

    async fn failed_devices(
        &self,
        group: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<Device>, DashboardError> {
        let status = self.adu.deployment_status(group, id).await?;
        let mut out = Vec::new();
        for s in status.subgroup_status {
            if s.devices_completed_failed_count.unwrap_or(0) == 0 {
                continue;
            }
            // The service filters: a subgroup of 100,000 devices is not read page by page.
            let states = self.adu.failed_device_states(group, &s.device_class_id, id).await?;
            for st in states.into_iter().filter(|x| x.device_state == DeviceDeploymentState::Failed)
            {
                if out.len() >= limit {
                    return Ok(out);
                }
                if let Some(d) = self.adu.get_device(&st.device_id).await? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, DashboardError> {
        let device = self.adu.get_device(id).await?;
        if let Some(d) = &device {
            let result = d.last_install_result.as_ref();
            let sample = ResultRecord {
                at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                state: None,
                workflow_id: d.last_deployment_id.clone(),
                installed_update: d.installed_update.as_ref().map(|u| u.update_id.to_string()),
                result_code: result.map(|r| r.result_code),
                extended_result_code: result.map(|r| r.extended_result_code),
                result_details: result.and_then(|r| r.result_details.clone()),
            };
            keep(&mut self.seen().results, &id.to_owned(), sample, |a, b| {
                ResultRecord { at: String::new(), ..a.clone() }
                    == ResultRecord { at: String::new(), ..b.clone() }
            });
        }
        Ok(device)
    }

    async fn progress(&self, group: &str, id: &str) -> Result<Vec<ProgressRecord>, DashboardError> {
        // What this process saw since it started watching (Device Update keeps no history).
        Ok(self
            .seen()
            .progress
            .get(&(group.to_owned(), id.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    async fn results(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<ResultRecord>, DashboardError> {
        let seen = self.seen();
        Ok(seen
            .results
            .get(device)
            .map_or_else(Vec::new, |v| v.iter().rev().take(limit).cloned().collect()))
    }

    async fn twin(&self, id: &str) -> Result<Option<Twin>, DashboardError> {
        match self.hub()?.get_twin(id).await {
            Ok(t) => Ok(Some(t)),
            Err(IotHubError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn module_twin(
        &self,
        device: &str,
        module: &str,
    ) -> Result<Option<Twin>, DashboardError> {
        match self.hub()?.get_module_twin(device, module).await {
            Ok(t) => Ok(Some(t)),
            Err(IotHubError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn edge_deployments(&self) -> Result<Vec<Configuration>, DashboardError> {
        let all = self.hub()?.list_configurations(EDGE_LISTED).await?;
        Ok(all.into_iter().filter(Configuration::is_edge).collect())
    }

    async fn audit(&self, _limit: usize) -> Result<Vec<AuditEntry>, DashboardError> {
        // Device Update keeps its activity log in Azure Monitor, not in the data-plane API.
        Ok(Vec::new())
    }

    async fn act(&self, group: &str, id: &str, action: &Action) -> Result<(), DashboardError> {
        match action {
            Action::Cancel(class) => self.adu.cancel_subgroup(group, class, id).await.map(drop)?,
            Action::Retry(class) => self.adu.retry_subgroup(group, class, id).await.map(drop)?,
            Action::Delete => self.adu.delete_deployment(group, id).await?,
        }
        Ok(())
    }

    async fn changed(&self, seen: u64) -> u64 {
        if seen == 0 {
            return self.fingerprint().await;
        }
        loop {
            tokio::time::sleep(self.poll).await;
            let now = self.fingerprint().await;
            if now != seen {
                return now;
            }
        }
    }
}

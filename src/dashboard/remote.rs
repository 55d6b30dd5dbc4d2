//! The dashboard's source over the REST APIs: a Device Update instance through
//! [`AduClient`] and, when given, an IoT Hub through [`IotHubClient`] (Azure or serve alike).
//! The credentials stay in this process; the browser only ever sees pages. Live updates are
//! polled: at most one look per [`RemoteSource::poll`] per open page, at a fingerprint of the
//! fleet (compliance and each group's deployments).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use super::{Action, AuditEntry, DashboardError, DashboardSource};
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

/// A Device Update instance and an IoT Hub, through their clients.
pub struct RemoteSource {
    adu: AduClient,
    hub: Option<IotHubClient>,
    poll: Duration,
}

impl RemoteSource {
    /// Reads `adu` and, when given, `hub`, polling for changes every `poll` (at least
    /// [`MIN_POLL`]).
    pub fn new(adu: AduClient, hub: Option<IotHubClient>, poll: Duration) -> Self {
        Self { adu, hub, poll: poll.max(MIN_POLL) }
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
                    if let Ok(s) = self.adu.deployment_status(&g.group_id, d).await {
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
        Ok(self.adu.deployment_status(group, id).await?)
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
        Ok(self.adu.get_device(id).await?)
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

//! The client's calls for the rest of Device Update's device management: device-class
//! subgroups and their deployments, log collections, agent health, and device import
//! (`/management/...` of the 2022-10-01 specification).

use super::diagnostics::{
    DeviceHealth, DeviceOperation, ImportType, LogCollection, LogCollectionDetailedStatus,
};
use super::model::{
    Deployment, DeviceClassSubgroup, SubgroupBestUpdate, SubgroupDeploymentStatus, UpdateCompliance,
};
use super::{AduClient, ServiceError};

impl AduClient {
    fn subgroup(&self, group_id: &str, class_id: &str, rest: &[&str]) -> url::Url {
        let mut segs = vec!["groups", group_id, "deviceClassSubgroups", class_id];
        segs.extend_from_slice(rest);
        self.management(&segs)
    }

    /// The device-class subgroups of a group.
    pub async fn list_subgroups(
        &self,
        group_id: &str,
    ) -> Result<Vec<DeviceClassSubgroup>, ServiceError> {
        self.list_paged(self.management(&["groups", group_id, "deviceClassSubgroups"])).await
    }

    /// One subgroup; `None` when it does not exist.
    pub async fn get_subgroup(
        &self,
        group_id: &str,
        class_id: &str,
    ) -> Result<Option<DeviceClassSubgroup>, ServiceError> {
        self.get_optional(self.subgroup(group_id, class_id, &[])).await
    }

    /// Deletes a subgroup's history (refused while it has devices).
    pub async fn delete_subgroup(
        &self,
        group_id: &str,
        class_id: &str,
    ) -> Result<(), ServiceError> {
        let url = self.subgroup(group_id, class_id, &[]);
        self.send(reqwest::Method::DELETE, url, None).await.map(drop)
    }

    /// A subgroup's update compliance.
    pub async fn subgroup_compliance(
        &self,
        group_id: &str,
        class_id: &str,
    ) -> Result<UpdateCompliance, ServiceError> {
        Ok(self.get_json(self.subgroup(group_id, class_id, &["updateCompliance"])).await?.0)
    }

    /// A subgroup's best update; `None` when no update fits it.
    pub async fn subgroup_best_update(
        &self,
        group_id: &str,
        class_id: &str,
    ) -> Result<Option<SubgroupBestUpdate>, ServiceError> {
        self.get_optional(self.subgroup(group_id, class_id, &["bestUpdates"])).await
    }

    /// The group's deployments that cover a subgroup.
    pub async fn subgroup_deployments(
        &self,
        group_id: &str,
        class_id: &str,
    ) -> Result<Vec<Deployment>, ServiceError> {
        self.list_paged(self.subgroup(group_id, class_id, &["deployments"])).await
    }

    /// A deployment's status in one subgroup.
    pub async fn subgroup_deployment_status(
        &self,
        group_id: &str,
        class_id: &str,
        deployment_id: &str,
    ) -> Result<SubgroupDeploymentStatus, ServiceError> {
        let url = self.subgroup(group_id, class_id, &["deployments", deployment_id, "status"]);
        Ok(self.get_json(url).await?.0)
    }

    /// Takes a subgroup out of a deployment (its devices are told to stop).
    pub async fn delete_subgroup_deployment(
        &self,
        group_id: &str,
        class_id: &str,
        deployment_id: &str,
    ) -> Result<(), ServiceError> {
        let url = self.subgroup(group_id, class_id, &["deployments", deployment_id]);
        self.send(reqwest::Method::DELETE, url, None).await.map(drop)
    }

    fn log_collection_url(&self, id: &str, rest: &[&str]) -> url::Url {
        let mut segs = vec!["deviceDiagnostics", "logCollections", id];
        segs.extend_from_slice(rest);
        self.management(&segs)
    }

    /// Asks the agents of `c.device_list` for their logs; returns the collection as created.
    pub async fn start_log_collection(
        &self,
        id: &str,
        c: &LogCollection,
    ) -> Result<LogCollection, ServiceError> {
        let url = self.log_collection_url(id, &[]);
        let body = Self::body(&url, c)?;
        let (_, _, bytes) = self.send(reqwest::Method::PUT, url.clone(), Some(body)).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Protocol { url: url.to_string(), message: e.to_string() })
    }

    /// One log collection; `None` when it does not exist.
    pub async fn log_collection(&self, id: &str) -> Result<Option<LogCollection>, ServiceError> {
        self.get_optional(self.log_collection_url(id, &[])).await
    }

    /// A log collection with each agent's status.
    pub async fn log_collection_status(
        &self,
        id: &str,
    ) -> Result<LogCollectionDetailedStatus, ServiceError> {
        Ok(self.get_json(self.log_collection_url(id, &["detailedStatus"])).await?.0)
    }

    /// Every log collection.
    pub async fn list_log_collections(&self) -> Result<Vec<LogCollection>, ServiceError> {
        self.list_paged(self.management(&["deviceDiagnostics", "logCollections"])).await
    }

    /// The agents' health, as `filter` selects (`state eq 'unhealthy'`, `deviceId eq 'D'`).
    pub async fn device_health(&self, filter: &str) -> Result<Vec<DeviceHealth>, ServiceError> {
        let mut url = self.management(&["deviceDiagnostics", "deviceHealth"]);
        url.query_pairs_mut().append_pair("filter", filter);
        self.list_paged(url).await
    }

    /// Starts a device import (`devices:import`); returns the operation id.
    pub async fn import_devices(&self, kind: &ImportType) -> Result<String, ServiceError> {
        let url = self.management(&["devices:import"]);
        let body = Self::body(&url, kind.as_str())?;
        let (_, headers, _) = self.send(reqwest::Method::POST, url.clone(), Some(body)).await?;
        super::operation_id_from(&headers, &url)
    }

    /// One device import operation; `None` when it does not exist.
    pub async fn device_operation(
        &self,
        id: &str,
    ) -> Result<Option<DeviceOperation>, ServiceError> {
        self.get_optional(self.management(&["operations", id])).await
    }
}

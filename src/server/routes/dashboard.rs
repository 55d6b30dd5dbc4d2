//! The dashboard surface of serve (`/ui/`): `crate::dashboard`'s pages over serve's own
//! state. [`ServeSource`] reads through the same functions the management, configuration and
//! hub routes call (the kept Device Update view, `deploy::status`, the store), so the pages
//! show what the REST API answers; live updates follow the store's generation, which every
//! write moves.
//!
//! serve's pages are read-only: actions belong to `otaforge dashboard --allow-actions`,
//! which sends them through serve's API. When serve has a token, the pages need it too
//! (`Authorization: Bearer`), like every Device Update route.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;

use super::management::{device_view, stored, view_of};
use crate::dashboard::{
    Action, AuditEntry, DashboardError, DashboardSource, Options, ProgressRecord, ResultRecord,
};
use crate::iothub::Twin;
use crate::iothub::config::Configuration;
use crate::server::Shared;
use crate::server::error::ApiError;
use crate::service::UpdateInfo;
use crate::service::model::{
    Deployment, DeploymentStatus, Device, DeviceClass, DeviceDeploymentState, Group,
    UpdateCompliance,
};

/// The shortest time between two `changed` events of one page: a rollout writes the store
/// many times a second, and one refresh covers them all.
const MIN_EVENT_GAP: std::time::Duration = std::time::Duration::from_millis(250);

/// The dashboard's routes over `state`.
pub(super) fn router(state: Shared) -> Router<Shared> {
    let options = Options {
        allow_actions: false,
        title: state.instance.clone(),
        releases: state.releases.clone(),
    };
    let source = Arc::new(ServeSource(state.clone()));
    crate::dashboard::router(source, options)
        .layer(from_fn_with_state(state, token_guard))
        .with_state(())
}

/// With a token, the pages need it as the API does (a page of the fleet is no less private).
async fn token_guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if s.token.is_some()
        && let Err(e) = super::check_token(&s, &req)
    {
        return super::unauthorized(e);
    }
    next.run(req).await
}

/// serve's state as a dashboard source.
pub(super) struct ServeSource(pub(super) Shared);

fn err(e: ApiError) -> DashboardError {
    if e.status == axum::http::StatusCode::NOT_FOUND {
        return DashboardError::Missing(e.body.message.clone());
    }
    DashboardError::Store(e.body.message.clone())
}

fn store(e: crate::server::store::StoreError) -> DashboardError {
    DashboardError::Store(e.to_string())
}

#[async_trait::async_trait]
impl DashboardSource for ServeSource {
    async fn groups(&self) -> Result<Vec<Group>, DashboardError> {
        Ok(device_view(&self.0).await.map_err(err)?.groups().to_vec())
    }

    async fn classes(&self) -> Result<Vec<DeviceClass>, DashboardError> {
        Ok(device_view(&self.0).await.map_err(err)?.classes.values().cloned().collect())
    }

    async fn compliance(&self, group: Option<&str>) -> Result<UpdateCompliance, DashboardError> {
        let v = device_view(&self.0).await.map_err(err)?;
        Ok(match group {
            None => v.compliance_of_all().clone(),
            Some(g) => v.compliance(|d| d.group_id.as_deref() == Some(g)),
        })
    }

    async fn compliance_by_group(
        &self,
        _groups: &[Group],
    ) -> Result<std::collections::BTreeMap<String, UpdateCompliance>, DashboardError> {
        // One pass over the registry, kept with the view (not one pass per group).
        Ok(device_view(&self.0).await.map_err(err)?.compliance_by_group().clone())
    }

    async fn updates(&self) -> Result<Vec<UpdateInfo>, DashboardError> {
        let list = self.0.db.read(|st| st.updates()).await.map_err(store)?;
        Ok(list.into_iter().map(|u| UpdateInfo::new(u.update_id)).collect())
    }

    async fn deployments(&self, group: &str) -> Result<Vec<Deployment>, DashboardError> {
        let g = group.to_owned();
        let list = self.0.db.read(move |st| st.deployments(&g)).await.map_err(store)?;
        Ok(list.into_iter().map(|x| x.deployment).collect())
    }

    async fn deployment(
        &self,
        group: &str,
        id: &str,
    ) -> Result<Option<Deployment>, DashboardError> {
        let (g, d) = (group.to_owned(), id.to_owned());
        let found = self.0.db.read(move |st| st.deployment(&g, &d)).await.map_err(store)?;
        Ok(found.map(|x| x.deployment))
    }

    async fn deployment_status(
        &self,
        group: &str,
        id: &str,
    ) -> Result<DeploymentStatus, DashboardError> {
        let found = stored(&self.0, group, id).await.map_err(err)?;
        let view = view_of(&self.0, Some(&found.deployment.group_id)).await.map_err(err)?;
        Ok(crate::server::deploy::status(&found, &view))
    }

    async fn failed_devices(
        &self,
        group: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<Device>, DashboardError> {
        let found = stored(&self.0, group, id).await.map_err(err)?;
        let view = view_of(&self.0, Some(group)).await.map_err(err)?;
        Ok(view
            .devices
            .iter()
            .filter(|x| x.device.group_id.as_deref() == Some(group))
            .filter(|x| {
                crate::server::deploy::device_state(x, &found) == DeviceDeploymentState::Failed
            })
            .take(limit)
            .map(|x| x.device.clone())
            .collect())
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, DashboardError> {
        let v = device_view(&self.0).await.map_err(err)?;
        Ok(v.devices
            .iter()
            .chain(&v.modules)
            .find(|x| x.device.device_id == id)
            .map(|x| x.device.clone()))
    }

    async fn twin(&self, id: &str) -> Result<Option<Twin>, DashboardError> {
        let key = id.to_owned();
        let row = self.0.db.read(move |st| st.device(&key)).await.map_err(store)?;
        Ok(row.map(|r| r.twin))
    }

    async fn module_twin(
        &self,
        device: &str,
        module: &str,
    ) -> Result<Option<Twin>, DashboardError> {
        let (d, m) = (device.to_owned(), module.to_owned());
        self.0.db.read(move |st| st.module_twin(&d, &m)).await.map_err(store)
    }

    async fn edge_deployments(&self) -> Result<Vec<Configuration>, DashboardError> {
        let all = self.0.db.read(|st| st.configurations()).await.map_err(store)?;
        let edge: Vec<Configuration> = all.into_iter().filter(Configuration::is_edge).collect();
        if edge.is_empty() {
            // The metrics read every twin: not for nothing.
            return Ok(edge);
        }
        super::configs::with_metrics(&self.0, edge).await.map_err(err)
    }

    async fn progress(&self, group: &str, id: &str) -> Result<Vec<ProgressRecord>, DashboardError> {
        let (g, d) = (group.to_owned(), id.to_owned());
        self.0.db.read(move |st| st.progress(&g, &d)).await.map_err(store)
    }

    async fn results(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<ResultRecord>, DashboardError> {
        let d = device.to_owned();
        self.0.db.read(move |st| st.device_results(&d, limit)).await.map_err(store)
    }

    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, DashboardError> {
        let list = self.0.db.read(move |st| st.audit(limit)).await.map_err(store)?;
        Ok(list
            .into_iter()
            .map(|r| AuditEntry {
                at: r.at,
                actor: r.actor,
                action: r.action,
                group: r.group_id,
                deployment: r.deployment_id,
                class: r.class_id,
                update: r.update_id,
            })
            .collect())
    }

    async fn act(&self, _: &str, _: &str, _: &Action) -> Result<(), DashboardError> {
        Err(DashboardError::ReadOnly)
    }

    async fn changed(&self, seen: u64) -> u64 {
        // The token is the generation plus one, so that 0 means "never seen".
        let mut changes = self.0.db.generations();
        let now = *changes.borrow_and_update() + 1;
        if seen == 0 {
            return now;
        }
        // Changes made while sleeping are seen at once by `wait_for`.
        tokio::time::sleep(MIN_EVENT_GAP).await;
        let next = changes.wait_for(|g| *g + 1 != seen).await.map(|g| *g + 1);
        match next {
            Ok(n) => n,
            // The store is gone (serve is stopping): nothing will change again.
            Err(_) => std::future::pending().await,
        }
    }
}

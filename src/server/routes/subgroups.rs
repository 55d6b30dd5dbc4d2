//! Device-class subgroups on serve, under `/deviceUpdate/{instance}/management/groups/{g}/
//! deviceClassSubgroups/`: a subgroup is a group's devices of one device class (the spec's
//! `DeviceClassSubgroup`), made as devices report; with its compliance, its best update, and
//! the group's deployments as they apply to it (list, get, delete, status, device states,
//! cancel, retry).
//!
//! A subgroup exists while it has devices, or while a deployment of its group still names it
//! (its history). Deleting one forgets that history (ADU: "delete a subgroup if they do not
//! need to retain any of the history"); one with devices is refused as ADU refuses a group
//! with devices. Deleting a subgroup's deployment takes the subgroup out of the deployment and
//! tells its devices to stop, as a cancel does; the group's deployment goes on for the others.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::management::{not_found, stored, view_of};
use super::{Q, deployment_order, eq_filter, page};
use crate::server::Shared;
use crate::server::devices::View;
use crate::server::error::ApiError;
use crate::server::store::StoredDeployment;
use crate::service::model::{DeploymentDeviceState, DeploymentState, DeviceClassSubgroup};

type GroupPath = Path<(String, String)>;
type ClassPath = Path<(String, String, String)>;
type DeploymentPath = Path<(String, String, String, String)>;

pub(super) fn router() -> Router<Shared> {
    let sub = "/deviceUpdate/{instance}/management/groups/{g}/deviceClassSubgroups";
    let deployment = format!("{sub}/{{c}}/deployments/{{d}}");
    Router::new()
        .route(sub, get(list))
        .route(&format!("{sub}/{{c}}"), get(get_one).delete(delete))
        .route(&format!("{sub}/{{c}}/updateCompliance"), get(compliance))
        .route(&format!("{sub}/{{c}}/bestUpdates"), get(best_update))
        .route(&format!("{sub}/{{c}}/deployments"), get(list_deployments))
        .route(&deployment, get(get_deployment).delete(delete_deployment).post(action))
        .route(&format!("{deployment}/status"), get(status))
        .route(&format!("{deployment}/devicestates"), get(device_states))
}

/// The group's deployments, newest first.
async fn deployments(s: &Shared, g: &str) -> Result<Vec<StoredDeployment>, ApiError> {
    let g = g.to_owned();
    Ok(s.db.read(move |st| st.deployments(&g)).await?)
}

/// Whether a deployment covers class `c` (and its subgroup deployment was not deleted).
fn covers(d: &StoredDeployment, c: &str) -> bool {
    d.deployment.device_class_subgroups.iter().flatten().any(|x| x == c)
}

/// The group's subgroups: those with devices, then those only its deployments name.
fn subgroups(g: &str, view: &View, history: &[StoredDeployment]) -> Vec<DeviceClassSubgroup> {
    let active = |c: &str| {
        history
            .iter()
            .find(|d| d.state != DeploymentState::Inactive && covers(d, c))
            .map(|d| d.deployment.deployment_id.as_str().to_owned())
    };
    let mut out: Vec<DeviceClassSubgroup> = view
        .subgroups(g)
        .into_iter()
        .map(|s| DeviceClassSubgroup {
            deployment_id: active(&s.device_class_id),
            device_class_id: s.device_class_id,
            group_id: g.to_owned(),
            created_date_time: s.created,
            device_count: Some(s.device_count),
            extra: Default::default(),
        })
        .collect();
    // Oldest deployment first, so a history-only subgroup dates from its first deployment.
    for d in history.iter().rev() {
        for c in d.deployment.device_class_subgroups.iter().flatten() {
            if !out.iter().any(|x| x.device_class_id == *c) {
                out.push(DeviceClassSubgroup {
                    device_class_id: c.clone(),
                    group_id: g.to_owned(),
                    created_date_time: d.deployment.start_date_time.clone(),
                    device_count: Some(0),
                    deployment_id: active(c),
                    extra: Default::default(),
                });
            }
        }
    }
    out
}

/// The group's view and deployments, or 404 when the group has neither devices nor
/// deployments.
async fn group(
    s: &Shared,
    g: &str,
) -> Result<(std::sync::Arc<View>, Vec<StoredDeployment>), ApiError> {
    let view = view_of(s, Some(g)).await?;
    let history = deployments(s, g).await?;
    if view.devices.is_empty() && history.is_empty() {
        return Err(not_found("group", g));
    }
    Ok((view, history))
}

/// One subgroup, or 404.
async fn subgroup(s: &Shared, g: &str, c: &str) -> Result<DeviceClassSubgroup, ApiError> {
    let (view, history) = group(s, g).await?;
    subgroups(g, &view, &history)
        .into_iter()
        .find(|x| x.device_class_id == c)
        .ok_or_else(|| not_found("device class subgroup", c))
}

async fn list(
    State(s): State<Shared>,
    Path((_, g)): GroupPath,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let (view, history) = group(&s, &g).await?;
    let filter = match q.get("filter") {
        Some(f) => eq_filter(f, &["compatProperties/"], "`compatProperties/NAME eq 'VALUE'`")?,
        None => Vec::new(),
    };
    let list: Vec<DeviceClassSubgroup> = subgroups(&g, &view, &history)
        .into_iter()
        .filter(|sg| {
            filter.iter().all(|(_, term)| {
                let (name, value) = term.split_once('=').unwrap_or_default();
                let compat = view
                    .classes
                    .get(&sg.device_class_id)
                    .map(|c| &c.device_class_properties.compat_properties);
                compat.and_then(|p| p.get(name)).and_then(|v| v.as_str()) == Some(value)
            })
        })
        .collect();
    Ok(page(list, &uri, &q))
}

async fn get_one(
    State(s): State<Shared>,
    Path((_, g, c)): ClassPath,
) -> Result<Response, ApiError> {
    Ok(axum::Json(subgroup(&s, &g, &c).await?).into_response())
}

async fn delete(State(s): State<Shared>, Path((_, g, c)): ClassPath) -> Result<Response, ApiError> {
    let sg = subgroup(&s, &g, &c).await?;
    if sg.device_count.unwrap_or(0) > 0 {
        return Err(ApiError::bad_request(
            "NotEmptySubgroupCannotBeDeleted",
            format!(
                "subgroup `{c}` of group `{g}` has {} devices; move them out first",
                sg.device_count.unwrap_or(0)
            ),
        ));
    }
    s.db.call(move |st| st.forget_subgroup(&g, &c)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn compliance(
    State(s): State<Shared>,
    Path((_, g, c)): ClassPath,
) -> Result<Response, ApiError> {
    subgroup(&s, &g, &c).await?;
    let view = view_of(&s, Some(&g)).await?;
    let of = |d: &crate::service::model::Device| {
        d.group_id.as_deref() == Some(g.as_str()) && d.device_class_id == c
    };
    Ok(axum::Json(view.compliance(of)).into_response())
}

async fn best_update(
    State(s): State<Shared>,
    Path((_, g, c)): ClassPath,
) -> Result<Response, ApiError> {
    subgroup(&s, &g, &c).await?;
    let view = super::management::device_view(&s).await?;
    let best = view.subgroup_best_update(&g, &c).ok_or_else(|| {
        ApiError::not_found("NotFound", format!("no imported update fits subgroup `{c}` of `{g}`"))
    })?;
    Ok(axum::Json(best).into_response())
}

/// The group's deployments that cover the subgroup, newest first or as `orderby` says.
async fn list_deployments(
    State(s): State<Shared>,
    Path((_, g, c)): ClassPath,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let order = deployment_order(&q)?;
    subgroup(&s, &g, &c).await?;
    let mut list: Vec<_> = deployments(&s, &g)
        .await?
        .into_iter()
        .filter(|d| covers(d, &c))
        .map(|d| d.deployment)
        .collect();
    if let Some(ascending) = order {
        super::sort_by_start(&mut list, ascending);
    }
    Ok(page(list, &uri, &q))
}

/// A deployment of the group that covers the subgroup, or 404.
async fn of_subgroup(s: &Shared, g: &str, c: &str, d: &str) -> Result<StoredDeployment, ApiError> {
    let found = stored(s, g, d).await?;
    if !covers(&found, c) {
        return Err(not_found("deployment of the device class subgroup", d));
    }
    Ok(found)
}

async fn get_deployment(
    State(s): State<Shared>,
    Path((_, g, c, d)): DeploymentPath,
) -> Result<Response, ApiError> {
    Ok(axum::Json(of_subgroup(&s, &g, &c, &d).await?.deployment).into_response())
}

/// Takes the subgroup out of the deployment; its devices are told to stop (as on cancel).
async fn delete_deployment(
    State(s): State<Shared>,
    Path((_, g, c, d)): DeploymentPath,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    of_subgroup(&s, &g, &c, &d).await?;
    let group = g.clone();
    let record = super::audit(&s, &headers, "delete", (&g, &d), Some(&c), None);
    s.db.call(move |st| {
        let acted = st.act_on_subgroup(&g, &d, &c, |a| {
            a.canceled = true;
            a.deleted = true;
        })?;
        if acted.is_some() {
            st.record_audit(&record)?;
        }
        Ok(acted)
    })
    .await?;
    let _ = crate::server::reconcile::reconcile(&s, &group).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn status(
    State(s): State<Shared>,
    Path((_, g, c, d)): DeploymentPath,
) -> Result<Response, ApiError> {
    let found = of_subgroup(&s, &g, &c, &d).await?;
    let view = view_of(&s, Some(&g)).await?;
    let status = crate::server::deploy::status(&found, &view);
    let mine = status
        .subgroup_status
        .into_iter()
        .find(|x| x.device_class_id == c)
        .ok_or_else(|| not_found("device class subgroup of the deployment", &c))?;
    Ok(axum::Json(mine).into_response())
}

/// `POST …/deployments/{d}:cancel` and `…:retry` (the action is part of the last path
/// segment, as ADU spells it).
async fn action(
    State(s): State<Shared>,
    Path((_, g, c, d)): DeploymentPath,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let Some((id, action @ ("cancel" | "retry"))) = d.rsplit_once(':') else {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "POST takes `:cancel` or `:retry` after the deployment id",
        ));
    };
    let (id, cancel) = (id.to_owned(), action == "cancel");
    let existing = of_subgroup(&s, &g, &c, &id).await?;
    let already_canceled = existing.subgroups.get(&c).is_some_and(|a| a.canceled);
    if !cancel && (already_canceled || existing.state != DeploymentState::Active) {
        return Err(ApiError::conflict(
            "DeploymentNotActive",
            "only an active, not canceled deployment can be retried",
        ));
    }
    let now = crate::server::now_string();
    let record = super::audit(&s, &headers, action, (&g, &id), Some(&c), None);
    let acted =
        s.db.call(move |st| {
            let acted = st.act_on_subgroup(&g, &id, &c, |a| {
                if cancel {
                    a.canceled = true;
                } else {
                    a.retry_count += 1;
                    a.retry_timestamp = Some(now);
                }
            })?;
            if acted.is_some() {
                st.record_audit(&record)?;
            }
            Ok(acted)
        })
        .await?
        .ok_or_else(|| not_found("deployment", &d))?;
    let _ = crate::server::reconcile::reconcile(&s, &acted.deployment.group_id).await;
    Ok(axum::Json(acted.deployment).into_response())
}

async fn device_states(
    State(s): State<Shared>,
    Path((_, g, c, d)): DeploymentPath,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let found = of_subgroup(&s, &g, &c, &d).await?;
    let view = view_of(&s, Some(&g)).await?;
    let filter = match q.get("filter") {
        Some(f) => eq_filter(
            f,
            &["deviceId", "moduleId", "deviceState"],
            "`deviceId eq '...'`, `moduleId eq '...'` or `deviceState eq '...'`",
        )?,
        None => Vec::new(),
    };
    let states: Vec<DeploymentDeviceState> = view
        .devices
        .iter()
        .filter(|x| {
            x.device.group_id.as_deref() == Some(g.as_str()) && x.device.device_class_id == c
        })
        .map(|x| DeploymentDeviceState {
            device_id: x.device.device_id.clone(),
            module_id: x.device.module_id.clone(),
            moved_on_to_new_deployment: found.state == DeploymentState::Inactive,
            retry_count: found.subgroups.get(&c).map_or(0, |a| a.retry_count),
            device_state: crate::server::deploy::device_state(x, &found),
            extra: Default::default(),
        })
        .filter(|st| {
            filter.iter().all(|(name, value)| match *name {
                "deviceId" => st.device_id == *value,
                "moduleId" => st.module_id.as_deref() == Some(value.as_str()),
                _ => st.device_state.as_str().eq_ignore_ascii_case(value),
            })
        })
        .collect();
    Ok(page(states, &uri, &q))
}

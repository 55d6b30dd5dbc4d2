//! Device Update's device management on serve, under `/deviceUpdate/{instance}/management/`:
//! groups, device classes, devices, compliance, deployments and their status, device states,
//! and cancel and retry of a subgroup. What a view holds is `server::devices`'; the rules of a
//! deployment are `server::deploy`'s.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Q, page};
use crate::server::Shared;
use crate::server::devices::{DEFAULT_GROUP, View};
use crate::server::error::ApiError;
use crate::service::UpdateInfo;
use crate::service::model::{DeploymentId, DeploymentState, GroupId};

type GroupPath = Path<(String, String)>;
type DeploymentPath = Path<(String, String, String)>;

pub(super) fn router() -> Router<Shared> {
    let m = "/deviceUpdate/{instance}/management";
    let deployment = format!("{m}/groups/{{g}}/deployments/{{d}}");
    Router::new()
        .route(&format!("{m}/groups"), get(list_groups))
        .route(&format!("{m}/groups/{{g}}"), get(get_group).delete(delete_group))
        .route(&format!("{m}/groups/{{g}}/bestUpdates"), get(group_best_updates))
        .route(&format!("{m}/groups/{{g}}/updateCompliance"), get(group_compliance))
        .route(&format!("{m}/groups/{{g}}/deployments"), get(list_deployments))
        .route(&deployment, get(get_deployment).put(put_deployment).delete(delete_deployment))
        .route(&format!("{deployment}/status"), get(deployment_status))
        .route(&format!("{m}/devices"), get(list_devices))
        .route(&format!("{m}/devices/{{d}}"), get(get_device))
        .route(&format!("{m}/devices/{{d}}/modules/{{mid}}"), get(get_module))
        .route(&format!("{m}/deviceClasses"), get(list_classes))
        .route(
            &format!("{m}/deviceClasses/{{c}}"),
            get(get_class).patch(patch_class).delete(delete_class),
        )
        .route(&format!("{m}/deviceClasses/{{c}}/installableUpdates"), get(installable_updates))
        .route(&format!("{m}/updateCompliance"), get(instance_compliance))
}

/// The Device Update view of the whole registry ([`view_of`]).
pub(super) async fn device_view(s: &Shared) -> Result<Arc<View>, ApiError> {
    view_of(s, None).await
}

/// The Device Update view of one group's devices, or of the whole registry
/// ([`crate::server::views::view_of`]).
pub(super) async fn view_of(s: &Shared, group: Option<&str>) -> Result<Arc<View>, ApiError> {
    Ok(crate::server::views::view_of(s, group).await?)
}

pub(super) fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found("NotFound", format!("{what} `{id}` does not exist"))
}

async fn list_groups(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let v = device_view(&s).await?;
    let body = v.answers.get_or_render(&uri.to_string(), || {
        super::page_json(v.groups().iter().collect(), &uri, &q)
    });
    Ok(super::json_answer(body))
}

async fn get_group(State(s): State<Shared>, Path((_, g)): GroupPath) -> Result<Response, ApiError> {
    let view = device_view(&s).await?;
    let group = view.groups().iter().find(|x| x.group_id == g);
    Ok(axum::Json(group.ok_or_else(|| not_found("group", &g))?).into_response())
}

/// ADU's rules: a default group cannot be deleted, nor one with devices (400
/// `NotEmptyGroupCannotBeDeleted`, as ADU answers: Azure/iot-hub-device-update#261) or a
/// deployment that is not superseded. (A group here is its devices' tags, so one that can be deleted has no
/// devices and is already gone: the answer is 404 unless a rule refuses first.)
async fn delete_group(
    State(s): State<Shared>,
    Path((_, g)): GroupPath,
) -> Result<Response, ApiError> {
    if g == DEFAULT_GROUP {
        return Err(ApiError::conflict(
            "CannotDeleteDefaultGroup",
            "the default group cannot be deleted",
        ));
    }
    let view = device_view(&s).await?;
    if let Some(group) = view.groups().iter().find(|x| x.group_id == g) {
        return Err(ApiError::bad_request(
            "NotEmptyGroupCannotBeDeleted",
            format!(
                "group `{g}` has {} devices; move them out (remove their ADUGroup tag) first",
                group.device_count.unwrap_or(0)
            ),
        ));
    }
    let key = g.clone();
    let list = s.db.read(move |st| st.deployments(&key)).await?;
    if list.iter().any(|d| d.state != DeploymentState::Inactive) {
        return Err(ApiError::conflict(
            "GroupHasDeployments",
            format!("group `{g}` has an active or canceled deployment; delete it first"),
        ));
    }
    Err(not_found("group", &g))
}

/// The best update of each device-class subgroup of a group that an update fits (`bestUpdates`;
/// a subgroup no update fits is not listed: the document's `update` is required).
async fn group_best_updates(
    State(s): State<Shared>,
    Path((_, g)): GroupPath,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let view = device_view(&s).await?;
    if !view.groups().iter().any(|x| x.group_id == g) {
        return Err(not_found("group", &g));
    }
    let best: Vec<_> = view
        .subgroups(&g)
        .iter()
        .filter_map(|sg| view.subgroup_best_update(&g, &sg.device_class_id))
        .collect();
    Ok(page(best, &uri, &q))
}

/// `PATCH /deviceClasses/{id}`: only `friendlyName` (1-100 letters, digits, `.` and `-`).
async fn patch_class(
    State(s): State<Shared>,
    Path((_, c)): GroupPath,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let invalid = |m: String| ApiError::bad_request("InvalidDeviceClass", m);
    if !device_view(&s).await?.classes.contains_key(&c) {
        return Err(not_found("device class", &c));
    }
    let patch: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the body is not a JSON object: {e}")))?;
    let unknown: Vec<&String> = patch.keys().filter(|k| *k != "friendlyName").collect();
    if !unknown.is_empty() {
        return Err(invalid(format!("only friendlyName can be changed, not {unknown:?}")));
    }
    let Some(name) = patch.get("friendlyName").and_then(|n| n.as_str()).map(str::to_owned) else {
        return Err(invalid("friendlyName must be a string".into()));
    };
    let ok = (1..=100).contains(&name.chars().count())
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.' || ch == '-');
    if !ok {
        return Err(invalid("friendlyName has 1-100 letters, digits, '.' and '-'".into()));
    }
    let key = c.clone();
    s.db.call(move |st| st.set_class_name(&key, Some(&name))).await?;
    let view = device_view(&s).await?;
    let class = view.classes.get(&c).ok_or_else(|| not_found("device class", &c))?;
    Ok(axum::Json(class).into_response())
}

/// `DELETE /deviceClasses/{id}`: refused while devices of the class exist; a class here is its
/// devices' reports, so one without devices is already gone (404), and its name is forgotten.
async fn delete_class(
    State(s): State<Shared>,
    Path((_, c)): GroupPath,
) -> Result<Response, ApiError> {
    let view = device_view(&s).await?;
    let members = view.devices.iter().filter(|d| d.device.device_class_id == c).count();
    if members > 0 {
        return Err(ApiError::conflict(
            "DeviceClassNotEmpty",
            format!("device class `{c}` has {members} devices"),
        ));
    }
    let key = c.clone();
    s.db.call(move |st| st.set_class_name(&key, None)).await?;
    Err(not_found("device class", &c))
}

/// The deployable updates a device class can install, newest first.
async fn installable_updates(
    State(s): State<Shared>,
    Path((_, c)): GroupPath,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let view = device_view(&s).await?;
    let class = view.classes.get(&c).ok_or_else(|| not_found("device class", &c))?;
    let updates = s.db.read(|st| st.updates()).await?;
    let compat = &class.device_class_properties.compat_properties;
    let mut fits: Vec<&crate::service::Update> = updates
        .iter()
        .filter(|u| crate::server::devices::best_update(std::slice::from_ref(*u), compat).is_some())
        .collect();
    fits.sort_by(|a, b| b.update_id.version().cmp(a.update_id.version()));
    let infos: Vec<UpdateInfo> =
        fits.into_iter().map(|u| UpdateInfo::new(u.update_id.clone())).collect();
    Ok(page(infos, &uri, &q))
}

async fn group_compliance(
    State(s): State<Shared>,
    Path((_, g)): GroupPath,
) -> Result<Response, ApiError> {
    let v = device_view(&s).await?;
    if !v.groups().iter().any(|x| x.group_id == g) {
        return Err(not_found("group", &g));
    }
    Ok(axum::Json(v.compliance(|d| d.group_id.as_deref() == Some(g.as_str()))).into_response())
}

async fn instance_compliance(
    State(s): State<Shared>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let v = device_view(&s).await?;
    let body =
        v.answers.get_or_render(&uri.to_string(), || super::json_text(v.compliance_of_all()));
    Ok(super::json_answer(body))
}

async fn list_devices(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let filter = match q.get("filter") {
        Some(f) => super::eq_filter(
            f,
            &["groupId", "deviceClassId"],
            "`groupId eq '...'` or `deviceClassId eq '...'`",
        )?,
        None => Vec::new(),
    };
    let v = device_view(&s).await?;
    let body = v.answers.get_or_render(&uri.to_string(), || {
        let devices: Vec<_> = v
            .devices
            .iter()
            .chain(&v.modules)
            .map(|d| &d.device)
            .filter(|d| {
                filter.iter().all(|(name, value)| match *name {
                    "groupId" => d.group_id.as_deref() == Some(value.as_str()),
                    _ => d.device_class_id == *value,
                })
            })
            .collect();
        super::page_json(devices, &uri, &q)
    });
    Ok(super::json_answer(body))
}

async fn get_device(
    State(s): State<Shared>,
    Path((_, d)): GroupPath,
) -> Result<Response, ApiError> {
    let v = device_view(&s).await?;
    let x = v
        .devices
        .iter()
        .find(|x| x.device.device_id == d)
        .ok_or_else(|| not_found("device", &d))?;
    Ok(axum::Json(&x.device).into_response())
}

/// An agent that runs as a module identity of a device.
async fn get_module(
    State(s): State<Shared>,
    Path((_, d, m)): DeploymentPath,
) -> Result<Response, ApiError> {
    let v = device_view(&s).await?;
    let x = v
        .modules
        .iter()
        .find(|x| x.device.device_id == d && x.device.module_id.as_deref() == Some(m.as_str()))
        .ok_or_else(|| not_found("module", &format!("{d}/{m}")))?;
    Ok(axum::Json(&x.device).into_response())
}

async fn list_classes(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let v = device_view(&s).await?;
    let body = v.answers.get_or_render(&uri.to_string(), || {
        super::page_json(v.classes.values().collect(), &uri, &q)
    });
    Ok(super::json_answer(body))
}

async fn get_class(State(s): State<Shared>, Path((_, c)): GroupPath) -> Result<Response, ApiError> {
    let v = device_view(&s).await?;
    Ok(axum::Json(v.classes.get(&c).ok_or_else(|| not_found("device class", &c))?).into_response())
}

async fn put_deployment(
    State(s): State<Shared>,
    Path((_, g, d)): DeploymentPath,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = DeploymentId::new(&d).map_err(|e| {
        ApiError::bad_request("InvalidDeploymentId", e.to_string()).with_target("deploymentId")
    })?;
    let group = GroupId::new(&g).map_err(|_| not_found("group", &g))?;
    let deployment: crate::service::model::Deployment =
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("InvalidDeployment", format!("the body is not a deployment: {e}"))
        })?;
    let view = device_view(&s).await?;
    let updates = s.db.read(|st| st.updates()).await?;
    let deployment = crate::server::deploy::prepare(deployment, &group, &id, &view, &updates)?;
    let stored = deployment.clone();
    let max = crate::server::deploy::MAX_DEPLOYMENTS;
    let update = Some(deployment.update.update_id.to_string());
    let record = super::audit(&s, &headers, "create", (&g, &d), None, update);
    s.db.call(move |st| {
        let put = st.put_deployment(&stored, max)?;
        if put.is_ok() {
            st.record_audit(&record)?;
        }
        Ok(put)
    })
    .await??;
    s.deployment_created.notify_one();
    // Devices hear of it now (the background loop would within seconds).
    let _ = crate::server::reconcile::reconcile(&s, &g).await;
    Ok(axum::Json(deployment).into_response())
}

/// A stored deployment, or 404.
pub(super) async fn stored(
    s: &Shared,
    g: &str,
    d: &str,
) -> Result<crate::server::store::StoredDeployment, ApiError> {
    let (group, key) = (g.to_owned(), d.to_owned());
    s.db.read(move |st| st.deployment(&group, &key))
        .await?
        .ok_or_else(|| not_found("deployment", d))
}

async fn get_deployment(
    State(s): State<Shared>,
    Path((_, g, d)): DeploymentPath,
) -> Result<Response, ApiError> {
    Ok(axum::Json(stored(&s, &g, &d).await?.deployment).into_response())
}

async fn list_deployments(
    State(s): State<Shared>,
    Path((_, g)): GroupPath,
    uri: axum::http::Uri,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let order = super::deployment_order(&q)?;
    let list = s.db.read(move |st| st.deployments(&g)).await?;
    let mut list: Vec<_> = list.into_iter().map(|x| x.deployment).collect();
    if let Some(ascending) = order {
        super::sort_by_start(&mut list, ascending);
    }
    Ok(page(list, &uri, &q))
}

async fn delete_deployment(
    State(s): State<Shared>,
    Path((_, g, d)): DeploymentPath,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let key = d.clone();
    let record = super::audit(&s, &headers, "delete", (&g, &d), None, None);
    let deleted = s.db.call(move |st| {
        let deleted = st.delete_deployment(&g, &key)?;
        if deleted {
            st.record_audit(&record)?;
        }
        Ok(deleted)
    });
    if !deleted.await? {
        return Err(not_found("deployment", &d));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn deployment_status(
    State(s): State<Shared>,
    Path((_, g, d)): DeploymentPath,
) -> Result<Response, ApiError> {
    let stored = stored(&s, &g, &d).await?;
    let view = view_of(&s, Some(&stored.deployment.group_id)).await?;
    Ok(axum::Json(crate::server::deploy::status(&stored, &view)).into_response())
}

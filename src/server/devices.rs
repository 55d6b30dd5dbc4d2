//! Device Update's view of the devices registered in serve: which twins are Device Update
//! devices, their device classes, groups and compliance, computed from the twins and the
//! imported updates (no HTTP here; the management routes call it).
//!
//! - A twin is a Device Update device once its agent has reported
//!   `properties.reported.deviceUpdate.agent.deviceProperties` (adu.md §5.1).
//! - Its compat properties are the `deviceProperties` named by `agent.compatPropertyNames`
//!   (comma separated; default `manufacturer,model`).
//! - Its device class id is the first 40 hex digits of SHA-256 over the contract model id, a
//!   newline, and `name=value` lines of the compat properties sorted by name, each ending in a
//!   newline. ADU documents its ids only as "derived from the contract model and compat
//!   properties"; this derivation is serve's own, stable across restarts and versions.
//! - Its group is its `ADUGroup` tag, or `$default` (type `DefaultNoTag`) without one.
//! - The best update of a class is the highest-version deployable update one of whose
//!   compatibility sets the class's compat properties all match; a device is on its latest
//!   update when its `installedUpdateId` is that update (or when no update fits it).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::iothub::Twin;
use crate::server::store::Registered;
use crate::service::agent::ReportedComponent;
use crate::service::model::{
    ContractModel, Device, DeviceClass, DeviceClassProperties, Group, GroupType,
    SubgroupBestUpdate, UpdateCompliance,
};
use crate::service::{Update, UpdateInfo};

/// The group of devices without an `ADUGroup` tag.
pub const DEFAULT_GROUP: &str = "$default";

/// One Device Update device, as the management API shows it.
#[derive(Debug, Clone)]
pub struct AduDevice {
    /// The `Device` document.
    pub device: Device,
    /// When its identity was created (a group's creation time is its first member's).
    pub created: String,
    /// The deployment its agent last worked on (`agent.workflow.id`).
    pub workflow_id: Option<String>,
    /// The agent's state (`Idle` 0, `DeploymentInProgress` 6, `Failed` 255).
    pub agent_state: Option<i64>,
    /// The retry the agent last worked on (`agent.workflow.retryTimestamp`).
    pub retry_timestamp: Option<String>,
    /// Its position in the registry (the view's order).
    pub seq: i64,
}

/// A device-class subgroup as the view sees it: the devices of one group and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subgroup {
    /// The class.
    pub device_class_id: String,
    /// Its devices in the group.
    pub device_count: u64,
    /// When its first device's identity was created.
    pub created: String,
}

/// Every Device Update device, class and group of the registry.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Devices in registry order (shared between a view and the next, which a write made
    /// from it: see [`View::with_changes`]).
    pub devices: Vec<Arc<AduDevice>>,
    /// Agents that run as module identities, in creation order (only in the view of the whole
    /// registry; serve lists and reads them, and deploys to device identities only).
    pub modules: Vec<Arc<AduDevice>>,
    /// Classes by id.
    pub classes: BTreeMap<String, DeviceClass>,
    /// The groups, counted once when first asked for (a view is shared by every request
    /// until the store changes, and lists are asked for far more often than they change).
    groups: std::sync::OnceLock<Vec<Group>>,
    /// The compliance of every device, likewise.
    compliance: std::sync::OnceLock<UpdateCompliance>,
    /// Answers rendered from this view, by request.
    pub answers: Answers,
    /// The compliance of each group, likewise.
    group_compliance: std::sync::OnceLock<BTreeMap<String, UpdateCompliance>>,
}

/// Answers at most kept per view; past it, answers are rendered per request and not kept, so
/// requests with ever new query strings cannot grow memory.
const KEPT_ANSWERS: usize = 256;

/// JSON answers rendered from one view, by request (path and query). A view lives until the
/// store is next written, and at rest the same pages are asked for again and again: they are
/// then served without filtering, paging or serializing again. A clone starts empty.
#[derive(Debug, Default)]
pub struct Answers(std::sync::Mutex<std::collections::HashMap<String, axum::body::Bytes>>);

impl Clone for Answers {
    fn clone(&self) -> Self {
        Answers::default()
    }
}

impl Answers {
    /// The answer to `request`, rendered by `render` unless it was already.
    pub fn get_or_render(
        &self,
        request: &str,
        render: impl FnOnce() -> Vec<u8>,
    ) -> axum::body::Bytes {
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = lock().get(request) {
            return found.clone();
        }
        // Rendered outside the lock: two first requests may both render; both answers are equal.
        let answer = axum::body::Bytes::from(render());
        let mut kept = lock();
        if kept.len() < KEPT_ANSWERS {
            kept.insert(request.to_owned(), answer.clone());
        }
        answer
    }
}

/// A twin's Device Update device and its class, when its agent has reported its device
/// properties.
fn entry(
    seq: i64,
    twin: &Twin,
    created: &str,
    updates: &[Update],
) -> Option<(AduDevice, DeviceClass)> {
    let agent = ReportedComponent::of(&twin.properties.reported).and_then(|c| c.agent)?;
    agent.device_properties.as_ref()?;
    let contract = agent.contract_model();
    let compat = agent.compat();
    let id = class_id(contract, &compat);
    let best = best_update(updates, &compat);
    let class = DeviceClass {
        device_class_id: id.clone(),
        friendly_name: None,
        device_class_properties: DeviceClassProperties {
            contract_model: Some(ContractModel {
                id: contract.to_owned(),
                name: "Device Update Model".to_owned(),
                extra: Default::default(),
            }),
            compat_properties: compat.clone(),
            extra: Default::default(),
        },
        best_compatible_update: best.map(|u| UpdateInfo::new(u.update_id.clone())),
        extra: Default::default(),
    };
    let installed = agent.installed();
    let on_latest = match best {
        None => true,
        Some(b) => installed.as_ref() == Some(&b.update_id),
    };
    let workflow = agent.workflow.as_ref();
    let device = AduDevice {
        device: Device {
            device_id: twin.device_id.clone(),
            module_id: twin.module_id.clone(),
            device_class_id: id,
            group_id: Some(twin.group().unwrap_or(DEFAULT_GROUP).to_owned()),
            last_attempted_update: None,
            deployment_status: None,
            installed_update: installed.map(UpdateInfo::new),
            on_latest_update: on_latest,
            // The agent works on a deployment under its id (`workflow.id`).
            last_deployment_id: workflow.map(|w| w.id.clone()),
            last_install_result: agent.last_install_result(),
            extra: Default::default(),
        },
        created: created.to_owned(),
        workflow_id: workflow.map(|w| w.id.clone()),
        agent_state: agent.state,
        retry_timestamp: workflow.and_then(|w| w.retry_timestamp.clone()),
        seq,
    };
    Some((device, class))
}

/// The device class id of a contract model and compat properties.
pub fn class_id(contract: &str, compat: &Map<String, Value>) -> String {
    let mut text = format!("{contract}\n");
    let mut props: Vec<(&String, String)> = compat
        .iter()
        .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    props.sort();
    for (k, v) in props {
        text.push_str(&format!("{k}={v}\n"));
    }
    crate::Sha256::digest(text.as_bytes()).to_hex()[..40].to_owned()
}

fn matches(update: &Update, compat: &Map<String, Value>) -> bool {
    update.compatibility.iter().any(|set| set.iter().all(|(k, v)| compat.get(k) == Some(v)))
}

/// The best update for a class's compat properties.
pub fn best_update<'a>(updates: &'a [Update], compat: &Map<String, Value>) -> Option<&'a Update> {
    updates
        .iter()
        .filter(|u| u.deployable() && matches(u, compat))
        .max_by(|a, b| a.update_id.version().cmp(b.update_id.version()))
}

impl View {
    /// Builds the view from `(twin, created)` pairs in registry order and the imported updates.
    pub fn build(twins: &[(Twin, String)], updates: &[Update]) -> Self {
        Self::of_entries(
            twins.iter().enumerate().map(|(i, (t, c))| (i as i64, t, c.as_str())),
            updates,
        )
    }

    /// Builds the view from the registry's slim twins (in registry order).
    pub fn build_registered(twins: &[Registered], updates: &[Update]) -> Self {
        Self::of_entries(twins.iter().map(|r| (r.seq, &r.twin, r.created.as_str())), updates)
    }

    fn of_entries<'a>(
        twins: impl Iterator<Item = (i64, &'a Twin, &'a str)>,
        updates: &[Update],
    ) -> Self {
        let mut view = View::default();
        for (seq, twin, created) in twins {
            if let Some((device, class)) = entry(seq, twin, created, updates) {
                view.classes.entry(device.device.device_class_id.clone()).or_insert(class);
                view.devices.push(Arc::new(device));
            }
        }
        view
    }

    /// This view after the devices named in `changed` were written: each is now as given
    /// (`None`: gone, or no longer in this view), computed against the same `updates` this
    /// view was built from. Devices keep registry order; modules and friendly names are
    /// carried over. Costs the view's length in pointer copies, not a rebuild.
    pub fn with_changes(
        &self,
        changed: &[(String, Option<Registered>)],
        updates: &[Update],
    ) -> Self {
        let mut now: std::collections::HashMap<&str, Option<(AduDevice, DeviceClass)>> = changed
            .iter()
            .map(|(id, r)| {
                let e = r.as_ref().and_then(|r| entry(r.seq, &r.twin, &r.created, updates));
                (id.as_str(), e)
            })
            .collect();
        let mut view = View {
            modules: self.modules.clone(),
            classes: self.classes.clone(),
            ..View::default()
        };
        view.devices.reserve(self.devices.len() + now.len());
        let mut left_class = false;
        for d in &self.devices {
            match now.remove(d.device.device_id.as_str()) {
                None => view.devices.push(d.clone()),
                Some(e) => {
                    let class_kept = e
                        .as_ref()
                        .is_some_and(|(n, _)| n.device.device_class_id == d.device.device_class_id);
                    left_class |= !class_kept;
                    if let Some((device, class)) = e {
                        view.classes.entry(device.device.device_class_id.clone()).or_insert(class);
                        view.devices.push(Arc::new(device));
                    }
                }
            }
        }
        // Devices new to this view go to their registry positions.
        let mut fresh: Vec<(AduDevice, DeviceClass)> = now.into_values().flatten().collect();
        if !fresh.is_empty() {
            fresh.sort_by_key(|(d, _)| d.seq);
            let appended = view.devices.last().is_none_or(|l| l.seq < fresh[0].0.seq);
            for (device, class) in fresh {
                view.classes.entry(device.device.device_class_id.clone()).or_insert(class);
                view.devices.push(Arc::new(device));
            }
            if !appended {
                view.devices.sort_by_key(|d| d.seq);
            }
        }
        if left_class {
            let used: std::collections::HashSet<&str> =
                view.devices.iter().map(|d| d.device.device_class_id.as_str()).collect();
            view.classes.retain(|id, _| used.contains(id.as_str()));
        }
        view
    }

    /// This view after the imported updates became `updates` (an import, a deletion): each
    /// class's best update and each device's `onLatestUpdate` computed again, which is all an
    /// import changes (the rest of a device comes from its twin). Devices whose standing did
    /// not change are shared with this view, not copied; no twin is read.
    pub fn with_updates(&self, updates: &[Update]) -> Self {
        let mut view = View {
            modules: self.modules.clone(),
            classes: self.classes.clone(),
            ..View::default()
        };
        let mut moved: std::collections::HashMap<&str, Option<&crate::manifest::UpdateId>> =
            std::collections::HashMap::new();
        for (id, class) in &mut view.classes {
            let best = best_update(updates, &class.device_class_properties.compat_properties);
            let before = class.best_compatible_update.as_ref().map(|u| &u.update_id);
            if before != best.map(|u| &u.update_id) {
                class.best_compatible_update = best.map(|u| UpdateInfo::new(u.update_id.clone()));
                moved.insert(id.as_str(), best.map(|u| &u.update_id));
            }
        }
        view.devices = self
            .devices
            .iter()
            .map(|d| {
                let Some(best) = moved.get(d.device.device_class_id.as_str()) else {
                    return d.clone();
                };
                let installed = d.device.installed_update.as_ref().map(|u| &u.update_id);
                let on_latest = best.is_none() || installed == *best;
                if on_latest == d.device.on_latest_update {
                    return d.clone();
                }
                let mut device = (**d).clone();
                device.device.on_latest_update = on_latest;
                Arc::new(device)
            })
            .collect();
        view
    }

    /// The groups, in order of creation, with their device counts.
    pub fn groups(&self) -> &[Group] {
        self.groups.get_or_init(|| self.count_groups())
    }

    /// The compliance of every device.
    pub fn compliance_of_all(&self) -> &UpdateCompliance {
        self.compliance.get_or_init(|| self.compliance(|_| true))
    }

    fn count_groups(&self) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for d in &self.devices {
            let id = d.device.group_id.clone().unwrap_or_else(|| DEFAULT_GROUP.to_owned());
            match groups.iter_mut().find(|g| g.group_id == id) {
                Some(g) => *g.device_count.get_or_insert(0) += 1,
                None => groups.push(Group {
                    group_type: if id == DEFAULT_GROUP {
                        GroupType::DefaultNoTag
                    } else {
                        GroupType::IoTHubTag
                    },
                    group_id: id,
                    created_date_time: d.created.clone(),
                    device_count: Some(1),
                    subgroups_with_new_updates_available_count: None,
                    subgroups_with_updates_in_progress_count: None,
                    subgroups_with_on_latest_update_count: None,
                    deployments: Some(Vec::new()),
                    extra: Default::default(),
                }),
            }
        }
        groups
    }

    /// The device-class subgroups of `group` that have devices, in order of their first device.
    pub fn subgroups(&self, group: &str) -> Vec<Subgroup> {
        let mut out: Vec<Subgroup> = Vec::new();
        for d in self.devices.iter().filter(|d| d.device.group_id.as_deref() == Some(group)) {
            let class = &d.device.device_class_id;
            match out.iter_mut().find(|s| s.device_class_id == *class) {
                Some(s) => {
                    s.device_count += 1;
                    if d.created < s.created {
                        s.created = d.created.clone();
                    }
                }
                None => out.push(Subgroup {
                    device_class_id: class.clone(),
                    device_count: 1,
                    created: d.created.clone(),
                }),
            }
        }
        out
    }

    /// The best update of a subgroup (a group's devices of one class) with its device count;
    /// `None` when the subgroup has no devices or no update fits its class. The one rule of
    /// both `bestUpdates` routes.
    pub fn subgroup_best_update(&self, group: &str, class: &str) -> Option<SubgroupBestUpdate> {
        let update = self.classes.get(class)?.best_compatible_update.clone()?;
        let count = self
            .devices
            .iter()
            .filter(|d| {
                d.device.group_id.as_deref() == Some(group) && d.device.device_class_id == class
            })
            .count() as u64;
        (count > 0).then(|| SubgroupBestUpdate {
            group_id: group.to_owned(),
            device_class_id: class.to_owned(),
            update,
            device_count: count,
            extra: Default::default(),
        })
    }

    /// The compliance of each group's devices ([`View::compliance`] of each group), counted in
    /// one pass when first asked for and kept with the view.
    pub fn compliance_by_group(&self) -> &BTreeMap<String, UpdateCompliance> {
        self.group_compliance.get_or_init(|| {
            let mut by: BTreeMap<String, UpdateCompliance> = BTreeMap::new();
            for d in self.devices.iter().map(|d| &d.device) {
                let Some(g) = d.group_id.as_deref() else { continue };
                let c = by.entry(g.to_owned()).or_insert_with(|| UpdateCompliance {
                    total_device_count: 0,
                    on_latest_update_device_count: 0,
                    new_updates_available_device_count: 0,
                    updates_in_progress_device_count: 0,
                    extra: Default::default(),
                });
                c.total_device_count += 1;
                if d.on_latest_update {
                    c.on_latest_update_device_count += 1;
                } else {
                    c.new_updates_available_device_count += 1;
                }
            }
            by
        })
    }

    /// Compliance of the devices `keep` selects.
    pub fn compliance(&self, keep: impl Fn(&Device) -> bool) -> UpdateCompliance {
        let devices: Vec<&Device> =
            self.devices.iter().map(|d| &d.device).filter(|d| keep(d)).collect();
        let on_latest = devices.iter().filter(|d| d.on_latest_update).count() as u64;
        UpdateCompliance {
            total_device_count: devices.len() as u64,
            on_latest_update_device_count: on_latest,
            new_updates_available_device_count: devices.len() as u64 - on_latest,
            updates_in_progress_device_count: 0,
            extra: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A device's slim twin as the store keeps it: `group` its tag (`None`: untagged),
    /// `model` its compat property (`None`: no agent yet).
    fn registered(seq: i64, group: Option<&str>, model: Option<u8>) -> Registered {
        let mut twin = serde_json::json!({"deviceId": format!("d{seq}")});
        if let Some(g) = group {
            twin["tags"] = serde_json::json!({"ADUGroup": g});
        }
        if let Some(m) = model {
            twin["properties"] = serde_json::json!({"reported": {"deviceUpdate": {"__t": "c",
                "agent": {"deviceProperties": {"manufacturer": "contoso", "model": format!("m{m}"),
                    "contractModelId": "dtmi:azure:iot:deviceUpdateContractModel;3"},
                  "compatPropertyNames": "manufacturer,model",
                  "installedUpdateId": "{\"provider\":\"contoso\",\"name\":\"fw\",\"version\":\"1.0\"}"}}}});
        }
        Registered {
            seq,
            twin: serde_json::from_value(twin).unwrap(),
            created: format!("2026-12-06T00:00:{:02}Z", seq % 60),
        }
    }

    /// What a view shows, to compare two views.
    fn shown(v: &View) -> (Vec<String>, Vec<String>, Vec<String>) {
        let devices = v
            .devices
            .iter()
            .map(|d| {
                format!("{} {} {}", d.seq, serde_json::to_string(&d.device).unwrap(), d.created)
            })
            .collect();
        let classes = v.classes.values().map(|c| serde_json::to_string(c).unwrap()).collect();
        let groups = v.groups().iter().map(|g| serde_json::to_string(g).unwrap()).collect();
        (devices, classes, groups)
    }

    /// Imported updates: `fw` at version `1.v` for model `m{model}`, for each `(model, v)`.
    fn updates(which: &[(u8, u8)]) -> Vec<Update> {
        which
            .iter()
            .map(|(m, v)| {
                serde_json::from_value(serde_json::json!({
                    "updateId": {"provider": "contoso", "name": "fw", "version": format!("1.{v}")},
                    "compatibility": [{"manufacturer": "contoso", "model": format!("m{m}")}],
                    "manifestVersion": "5.0",
                    "importedDateTime": "2026-12-06T00:00:00Z",
                    "createdDateTime": "2026-12-06T00:00:00Z",
                }))
                .unwrap()
            })
            .collect()
    }

    proptest! {
        /// A view brought up to date by the imports and the devices written shows what a view
        /// built afresh from the registry after the writes shows.
        #[test]
        fn a_view_with_changes_is_the_view_rebuilt(
            before in proptest::collection::vec((0..3u8, proptest::option::of(0..3u8)), 0..24),
            writes in proptest::collection::vec(
                (0..30usize, proptest::option::of((0..3u8, proptest::option::of(0..3u8)))),
                0..16,
            ),
            imported in proptest::collection::vec((0..3u8, 0..3u8), 0..4),
            imported_after in proptest::collection::vec((0..3u8, 0..3u8), 0..4),
        ) {
            let (imported, imported_after) = (updates(&imported), updates(&imported_after));
            let group = |g: u8| (g > 0).then(|| format!("g{g}"));
            let mut registry: BTreeMap<i64, Registered> = before
                .iter()
                .enumerate()
                .map(|(i, (g, m))| (i as i64, registered(i as i64, group(*g).as_deref(), *m)))
                .collect();
            let old = View::build_registered(
                &registry.values().cloned().collect::<Vec<_>>(),
                &imported,
            );
            let mut next = registry.len() as i64;
            let mut changed: BTreeMap<String, ()> = BTreeMap::new();
            for (pick, write) in writes {
                let seq = registry.keys().nth(pick % (registry.len() + 1)).copied();
                match (seq, write) {
                    (Some(seq), Some((g, m))) => {
                        registry.insert(seq, registered(seq, group(g).as_deref(), m));
                        changed.insert(format!("d{seq}"), ());
                    }
                    (Some(seq), None) => {
                        registry.remove(&seq);
                        changed.insert(format!("d{seq}"), ());
                    }
                    (None, Some((g, m))) => {
                        registry.insert(next, registered(next, group(g).as_deref(), m));
                        changed.insert(format!("d{next}"), ());
                        next += 1;
                    }
                    (None, None) => {}
                }
            }
            let rows: Vec<(String, Option<Registered>)> = changed
                .into_keys()
                .map(|id| {
                    let seq: i64 = id[1..].parse().unwrap();
                    let row = registry.get(&seq).cloned();
                    (id, row)
                })
                .collect();
            let updated =
                old.with_updates(&imported_after).with_changes(&rows, &imported_after);
            let rebuilt = View::build_registered(
                &registry.values().cloned().collect::<Vec<_>>(),
                &imported_after,
            );
            prop_assert_eq!(shown(&updated), shown(&rebuilt));
        }
    }

    #[test]
    fn answers_are_rendered_once_and_kept_within_bounds() {
        let answers = Answers::default();
        let mut renders = 0;
        for _ in 0..3 {
            let got = answers.get_or_render("/a?x=1", || {
                renders += 1;
                b"one".to_vec()
            });
            assert_eq!(&got[..], b"one");
        }
        assert_eq!(renders, 1);
        for i in 0..KEPT_ANSWERS * 2 {
            answers.get_or_render(&format!("/b?{i}"), Vec::new);
        }
        assert_eq!(answers.0.lock().unwrap().len(), KEPT_ANSWERS);
        // Past the bound an answer is still given, rendered each time.
        let mut late = 0;
        for _ in 0..2 {
            let got = answers.get_or_render("/late", || {
                late += 1;
                b"late".to_vec()
            });
            assert_eq!(&got[..], b"late");
        }
        assert_eq!(late, 2);
        assert!(answers.clone().0.lock().unwrap().is_empty(), "a clone starts empty");
    }

    #[test]
    fn class_ids_depend_on_the_model_and_every_compat_value_only() {
        let compat = |m: &str| {
            let mut c = Map::new();
            c.insert("manufacturer".into(), Value::String("contoso".into()));
            c.insert("model".into(), Value::String(m.into()));
            c
        };
        let contract = crate::service::agent::CONTRACT_MODEL_ID;
        let a = class_id(contract, &compat("toaster"));
        assert_eq!(a.len(), 40);
        assert_eq!(a, class_id(contract, &compat("toaster")));
        assert_ne!(a, class_id(contract, &compat("kettle")));
        assert_ne!(a, class_id("dtmi:azure:iot:deviceUpdateContractModel;2", &compat("toaster")));
    }
}

//! Module twins (`$edgeAgent`, `$edgeHub` and each user module of an IoT Edge device), and
//! IoT Hub's side of Edge deployments: which deployments a device was last given, and writing
//! their merged content into its module twins (edge.md §3.3–3.5, §5.3).
//!
//! A module twin's `properties.desired.$version` counts changes of its desired properties
//! (what edgeAgent compares `lastDesiredVersion` with); `properties.reported.$version` counts
//! reports; the twin's `version` counts every change of desired properties or of the
//! `configurations` section, and is what a device's long-poll waits on.

use rusqlite::{OptionalExtension as _, params};
use serde_json::{Map, Value, json};

use super::{Outcome, Refusal, Store, StoreError, TwinsPage, merge_patch};
use crate::edge::assign::{Deployment, Plan, merged, statuses};
use crate::iothub::Twin;
use crate::iothub::limits::MAX_MODULES_PER_DEVICE;

pub(super) fn migrate_8(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS modules (
            device_id TEXT NOT NULL, module_id TEXT NOT NULL, seq INTEGER NOT NULL,
            version INTEGER NOT NULL, twin TEXT NOT NULL, PRIMARY KEY (device_id, module_id));
         CREATE UNIQUE INDEX IF NOT EXISTS modules_seq ON modules(seq);
         CREATE INDEX IF NOT EXISTS modules_module ON modules(module_id, seq);
         CREATE TABLE IF NOT EXISTS edge_assignments (
            device_id TEXT PRIMARY KEY, assignment TEXT NOT NULL);",
    )?;
    Ok(())
}

/// A module twin with its ids, version and ETag filled in.
pub(super) fn module_doc(
    device: &str,
    module: &str,
    version: i64,
    text: &str,
) -> Result<Twin, StoreError> {
    let mut twin: Twin = serde_json::from_str(text)?;
    twin.device_id = device.to_owned();
    twin.module_id = Some(module.to_owned());
    twin.version = Some(version);
    twin.etag = Some(super::twin_etag(&format!("{device}/{module}"), version));
    Ok(twin)
}

/// A module twin's version and text, inside a transaction.
fn module_row(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    module: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT version, twin FROM modules WHERE device_id = ?1 AND module_id = ?2",
            params![device, module],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// How many module identities of a device are not the runtime's own.
fn user_modules(tx: &rusqlite::Transaction<'_>, device: &str) -> Result<usize, StoreError> {
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM modules WHERE device_id = ?1 AND module_id NOT LIKE '$%'",
        [device],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn device_exists(tx: &rusqlite::Transaction<'_>, device: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_row("SELECT 1 FROM devices WHERE device_id = ?1", [device], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Desired properties without the service's `$version`/`$metadata`, for comparing contents.
fn content_of(desired: &Map<String, Value>) -> Map<String, Value> {
    desired
        .iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The counter `$version` inside a twin section.
fn counter(section: &Map<String, Value>) -> i64 {
    section.get("$version").and_then(Value::as_i64).unwrap_or(0)
}

/// Changes one module twin inside a transaction, creating it (empty) when the device has
/// none yet: `change` edits the twin and says whether its desired properties changed, which
/// bumps `properties.desired.$version`; the twin's version moves when anything changed.
/// Returns the new twin, or `None` when nothing changed.
fn change_module(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    module: &str,
    change: impl FnOnce(&mut Twin) -> bool,
) -> Result<Option<Twin>, StoreError> {
    let (version, mut twin) = match module_row(tx, device, module)? {
        Some((v, text)) => (v, serde_json::from_str::<Twin>(&text)?),
        // IoT Hub's cap on module identities (the runtime's two aside); deployments are
        // validated within it, so this only guards against what validation let through.
        None if !module.starts_with('$') && user_modules(tx, device)? >= MAX_MODULES_PER_DEVICE => {
            return Ok(None);
        }
        None => {
            let mut t = Twin::default();
            t.properties.desired.insert("$version".into(), json!(1));
            t.properties.reported.insert("$version".into(), json!(1));
            tx.execute(
                "INSERT INTO modules (device_id, module_id, seq, version, twin)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM modules), 1, ?3)",
                params![device, module, serde_json::to_string(&t)?],
            )?;
            (1, t)
        }
    };
    let before = twin.clone();
    let desired_changed = change(&mut twin);
    if desired_changed {
        let n = counter(&before.properties.desired) + 1;
        twin.properties.desired.insert("$version".into(), json!(n));
    }
    if twin == before {
        return Ok(None);
    }
    let version = version + 1;
    let text = serde_json::to_string(&twin)?;
    tx.execute(
        "UPDATE modules SET version = ?3, twin = ?4 WHERE device_id = ?1 AND module_id = ?2",
        params![device, module, version, text],
    )?;
    Ok(Some(module_doc(device, module, version, &text)?))
}

/// The `$edgeAgent` and `$edgeHub` twins of a new IoT Edge device, empty.
pub(super) fn create_runtime_modules(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
) -> Result<(), StoreError> {
    for module in ["$edgeAgent", "$edgeHub"] {
        change_module(tx, device, module, |_| false)?;
    }
    Ok(())
}

/// Replaces a module twin's desired properties with `content` when they differ.
fn set_desired(twin: &mut Twin, content: &Map<String, Value>) -> bool {
    if content_of(&twin.properties.desired) == *content {
        return false;
    }
    let version = twin.properties.desired.get("$version").cloned();
    twin.properties.desired = content.clone();
    if let Some(v) = version {
        twin.properties.desired.insert("$version".into(), v);
    }
    true
}

/// What one Edge device was given, as stored: each deployment that targets it with its
/// creation time (a deployment deleted and created again under the same id is another) and
/// whether it applies.
type Given = Vec<(String, String, &'static str)>;

impl Store {
    /// One module twin.
    pub fn module_twin(&self, device: &str, module: &str) -> Result<Option<Twin>, StoreError> {
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT version, twin FROM modules WHERE device_id = ?1 AND module_id = ?2",
                params![device, module],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(v, t)| module_doc(device, module, v, &t)).transpose()
    }

    /// A device's module twins, in the order they were created.
    pub fn device_modules(&self, device: &str) -> Result<Vec<Twin>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT module_id, version, twin FROM modules WHERE device_id = ?1 ORDER BY seq",
        )?;
        let rows: Vec<(String, i64, String)> = stmt
            .query_map([device], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.iter().map(|(m, v, t)| module_doc(device, m, *v, t)).collect()
    }

    /// Every module twin named `module` (every module twin when `None`), in creation order.
    pub fn module_twins(&self, module: Option<&str>) -> Result<Vec<Twin>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device_id, module_id, version, twin FROM modules
             WHERE ?1 IS NULL OR module_id = ?1 ORDER BY seq",
        )?;
        let rows: Vec<(String, String, i64, String)> = stmt
            .query_map([module], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        rows.iter().map(|(d, m, v, t)| module_doc(d, m, *v, t)).collect()
    }

    /// Up to `limit` module twins after position `after`, as [`Store::twins_page`].
    pub fn modules_page(&self, after: i64, limit: usize) -> Result<TwinsPage, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, device_id, module_id, version, twin FROM modules
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows: Vec<(i64, String, String, i64, String)> = stmt
            .query_map(params![after, i64::try_from(limit + 1).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > limit;
        let mut twins = Vec::new();
        let mut last = after;
        for (seq, d, m, v, t) in rows.into_iter().take(limit) {
            twins.push((seq, module_doc(&d, &m, v, &t)?));
            last = seq;
        }
        Ok((twins, more.then_some(last)))
    }

    /// The back end's patch of a module twin's desired properties (merged; `null` removes) of a
    /// module identity the device has; with `if_match` other than `*`, only when the twin's
    /// ETag is that one; refused when the result would break IoT Hub's twin rules.
    pub fn patch_module_desired(
        &mut self,
        device: &str,
        module: &str,
        patch: &Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<Outcome<Twin>, StoreError> {
        let tx = self.conn.transaction()?;
        // Only identities the hub made have twins: a patch does not create one.
        let Some((current, text)) = module_row(&tx, device, module)? else {
            return Ok(Err(Refusal::NoModule));
        };
        if let Some(m) = if_match.filter(|m| !crate::iothub::if_match_any(m))
            && m != super::twin_etag(&format!("{device}/{module}"), current)
        {
            return Ok(Err(Refusal::Stale("module twin")));
        }
        let patch: Map<String, Value> = content_of(patch);
        let mut desired = serde_json::from_str::<Twin>(&text)?.properties.desired;
        merge_patch(&mut desired, &patch);
        let section = crate::iothub::limits::Section::Desired;
        if let Err(e) = crate::iothub::limits::check_patch(section, &patch, &desired) {
            return Ok(Err(e.into()));
        }
        let changed = change_module(&tx, device, module, |t| {
            let before = content_of(&t.properties.desired);
            merge_patch(&mut t.properties.desired, &patch);
            content_of(&t.properties.desired) != before
        })?;
        let twin = match changed {
            Some(t) => t,
            None => match module_row(&tx, device, module)? {
                Some((v, text)) => module_doc(device, module, v, &text)?,
                None => return Ok(Err(Refusal::NoModule)),
            },
        };
        tx.commit()?;
        Ok(Ok(twin))
    }

    /// `applyConfigurationContent`: each module twin `content` names gets that whole desired
    /// state, in one transaction; returns the twins that changed, or `None` when there is no
    /// such device. At-scale deployments overwrite it when the device's deployments change.
    pub fn apply_modules_content(
        &mut self,
        device: &str,
        content: &Map<String, Value>,
    ) -> Result<Option<Vec<Twin>>, StoreError> {
        let tx = self.conn.transaction()?;
        if !device_exists(&tx, device)? {
            return Ok(None);
        }
        let mut changed = Vec::new();
        for (module, desired) in crate::edge::assign::merged(&[&Value::Object(content.clone())]) {
            let desired = content_of(desired.as_object().unwrap_or(&Map::new()));
            if let Some(t) = change_module(&tx, device, &module, |t| set_desired(t, &desired))? {
                changed.push(t);
            }
        }
        tx.commit()?;
        Ok(Some(changed))
    }

    /// A device's report for one of its module identities (merged; `null` removes), which bumps
    /// `properties.reported.$version`; the twin's version does not move. A module the hub has
    /// no identity for is `NotFound` (a report creates nothing), and a report that would break
    /// IoT Hub's twin rules is refused.
    pub fn patch_module_reported(
        &mut self,
        device: &str,
        module: &str,
        patch: &Map<String, Value>,
    ) -> Result<Outcome<Twin>, StoreError> {
        let tx = self.conn.transaction()?;
        let patched = module_reported_in(&tx, device, module, patch)?;
        if patched.is_ok() {
            tx.commit()?;
        }
        Ok(patched)
    }

    /// IoT Hub's pass over Edge deployments: for every IoT Edge device whose set of targeting
    /// deployments (or which of them apply) changed since the last pass, writes the
    /// `configurations` section of its `$edgeAgent` twin (`Applied` or `Targeted` per
    /// deployment) and, when a deployment applies, the merged content of its base and layers
    /// into each module twin's desired properties. A device no deployment applies to keeps
    /// its desired properties (its modules keep running). Returns each changed module twin
    /// as `device/module` with its new version, for the devices waiting on them.
    pub fn reconcile_edge(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        let configs: Vec<_> = self.configurations()?.into_iter().filter(|c| c.is_edge()).collect();
        let given: std::collections::HashMap<String, String> = self
            .conn
            .prepare_cached("SELECT device_id, assignment FROM edge_assignments")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if configs.is_empty() && given.is_empty() {
            return Ok(Vec::new());
        }
        let deployments: Vec<Deployment> =
            configs.iter().filter_map(|c| Deployment::from_configuration(c).ok()).collect();
        let plan = Plan::new(&deployments);
        let contents: Vec<(&str, Value)> = configs
            .iter()
            .filter_map(|c| Some((c.id.as_str(), Value::Object(c.modules_content()?.clone()))))
            .collect();
        let content = |id: &str| contents.iter().find(|(c, _)| *c == id).map(|(_, mc)| mc);
        let twins: Vec<(String, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT device_id, version, twin FROM devices
                 WHERE json_extract(twin, '$.capabilities.iotEdge') = 1 ORDER BY seq",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let tx = self.conn.transaction()?;
        let mut changed = Vec::new();
        for (device, version, text) in twins {
            let twin = serde_json::to_value(super::twin_doc(&device, version, &text)?)?;
            let a = plan.assign(&twin);
            let mut now: Given = Vec::new();
            let mut sections = std::collections::BTreeMap::new();
            for (d, status) in statuses(&deployments, &a, &twin) {
                now.push((d.id.clone(), d.created.clone(), status.as_str()));
                let status = crate::iothub::ConfigurationStatus { status: status.as_str().into() };
                sections.insert(d.id.clone(), status);
            }
            now.sort();
            let key = serde_json::to_string(&now)?;
            if given.get(&device) == Some(&key) {
                continue;
            }
            tx.execute(
                "INSERT INTO edge_assignments (device_id, assignment) VALUES (?1, ?2)
                 ON CONFLICT(device_id) DO UPDATE SET assignment = excluded.assignment",
                params![device, key],
            )?;
            let mut desired = Map::new();
            if !a.unmanaged() {
                let order: Vec<&Value> =
                    a.base.iter().chain(a.layers.iter()).filter_map(|id| content(id)).collect();
                desired = merged(&order);
            }
            let agent = desired.remove("$edgeAgent");
            let agent_twin = change_module(&tx, &device, "$edgeAgent", |t| {
                t.configurations = Some(sections);
                agent.is_some_and(|d| {
                    set_desired(t, &content_of(d.as_object().unwrap_or(&Map::new())))
                })
            })?;
            if let Some(t) = agent_twin {
                changed.push((format!("{device}/$edgeAgent"), t.version.unwrap_or_default()));
            }
            for (module, d) in desired {
                let d = content_of(d.as_object().unwrap_or(&Map::new()));
                if let Some(t) = change_module(&tx, &device, &module, |t| set_desired(t, &d))? {
                    changed.push((format!("{device}/{module}"), t.version.unwrap_or_default()));
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }
}

/// [`Store::patch_module_reported`] inside a transaction the caller commits (nothing is
/// written when it is refused).
pub(super) fn module_reported_in(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    module: &str,
    patch: &Map<String, Value>,
) -> Result<Outcome<Twin>, StoreError> {
    let Some((version, text)) = module_row(tx, device, module)? else {
        return Ok(Err(Refusal::NoModule));
    };
    let mut twin: Twin = serde_json::from_str(&text)?;
    let n = counter(&twin.properties.reported) + 1;
    let patch = content_of(patch);
    merge_patch(&mut twin.properties.reported, &patch);
    let section = crate::iothub::limits::Section::Reported;
    if let Err(e) = crate::iothub::limits::check_patch(section, &patch, &twin.properties.reported) {
        return Ok(Err(e.into()));
    }
    twin.properties.reported.insert("$version".into(), json!(n));
    let text = serde_json::to_string(&twin)?;
    tx.execute(
        "UPDATE modules SET twin = ?3 WHERE device_id = ?1 AND module_id = ?2",
        params![device, module, text],
    )?;
    Ok(Ok(module_doc(device, module, version, &text)?))
}

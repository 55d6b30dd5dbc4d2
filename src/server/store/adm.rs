//! IoT Hub's pass over automatic device management (ADM) configurations: each device twin
//! gets the desired properties the configurations that target it set, by IoT Hub's rules
//! (`iothub::adm`), and its `configurations` section says which applied. What serve last
//! wrote into each twin is kept (`adm_assignments`), so a pass writes only the twins whose
//! outcome changed, and removes only the paths a configuration had set.

use std::collections::HashMap;

use rusqlite::params;

use super::{Store, StoreError, derived, twin_doc};
use crate::iothub::adm::{self, Applied, DeviceConfiguration};

pub(super) fn migrate_10(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS adm_assignments (
            device_id TEXT PRIMARY KEY, applied TEXT NOT NULL);",
    )?;
    Ok(())
}

impl Store {
    /// The ADM pass: for every device twin whose outcome changed since the last pass, writes
    /// the winning value of each path into its desired properties, removes the paths no
    /// configuration sets any more, and records each targeting configuration's status in the
    /// twin's `configurations` section; one transaction. Returns each changed twin with its
    /// new version, for the devices waiting on it. A configuration whose content or condition
    /// does not parse (the routes refuse those) is skipped.
    pub fn reconcile_adm(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        let configs: Vec<DeviceConfiguration> = self
            .configurations()?
            .iter()
            .filter_map(|c| DeviceConfiguration::from_configuration(c).ok().flatten())
            .collect();
        let given: HashMap<String, String> = self
            .conn
            .prepare_cached("SELECT device_id, applied FROM adm_assignments")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if configs.is_empty() && given.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, i64, String)> = self
            .conn
            .prepare_cached("SELECT device_id, version, twin FROM devices ORDER BY seq")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let tx = self.conn.transaction()?;
        let mut changed = Vec::new();
        for (device, version, text) in rows {
            let doc = twin_doc(&device, version, &text)?;
            let now = adm::apply(&configs, &serde_json::to_value(&doc)?);
            let key = serde_json::to_string(&now)?;
            let before: Applied = match given.get(&device) {
                Some(k) if *k == key => continue,
                Some(k) => serde_json::from_str(k)?,
                None if now == Applied::default() => continue,
                None => Applied::default(),
            };
            tx.execute(
                "INSERT INTO adm_assignments (device_id, applied) VALUES (?1, ?2)
                 ON CONFLICT(device_id) DO UPDATE SET applied = excluded.applied",
                params![device, key],
            )?;
            let mut twin: crate::iothub::Twin = serde_json::from_str(&text)?;
            let desired_changed = adm::change(&mut twin.properties.desired, &before, &now);
            let sections_changed = set_statuses(&mut twin, &before, &now);
            if !desired_changed && !sections_changed {
                continue;
            }
            let version = version + 1;
            let text = serde_json::to_string(&twin)?;
            let (group, slim) = derived(&twin)?;
            tx.execute(
                "UPDATE devices SET version = ?2, twin = ?3, group_id = ?4, slim = ?5
                 WHERE device_id = ?1",
                params![device, version, text, group, slim],
            )?;
            changed.push((device, version));
        }
        tx.commit()?;
        Ok(changed)
    }
}

/// Writes each configuration's status into the twin's `configurations` (keeping the entries
/// of configurations this pass does not manage); returns whether it changed.
fn set_statuses(twin: &mut crate::iothub::Twin, before: &Applied, now: &Applied) -> bool {
    use crate::iothub::ConfigurationStatus;
    let old = twin.configurations.clone();
    let mut map = old.clone().unwrap_or_default();
    for id in before.statuses.keys() {
        map.remove(id);
    }
    for (id, status) in &now.statuses {
        map.insert(id.clone(), ConfigurationStatus { status: status.clone() });
    }
    twin.configurations = (!map.is_empty()).then_some(map);
    twin.configurations != old
}

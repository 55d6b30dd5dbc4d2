//! What Device Update's device management keeps beside the twins: device import operations
//! (`devices:import`, `DeviceOperation`), log collections (`LogCollection`, with the agents
//! each asked), and forgetting a device-class subgroup's history.

use rusqlite::{OptionalExtension as _, params};

use super::{Store, StoreError, stored};
use crate::service::diagnostics::{DeviceOperation, LogCollection};

pub(super) fn migrate_9(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS device_operations (
            id TEXT PRIMARY KEY, seq INTEGER NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS log_collections (
            id TEXT PRIMARY KEY, seq INTEGER NOT NULL, body TEXT NOT NULL);",
    )?;
    Ok(())
}

impl Store {
    /// Inserts or replaces a device import operation; finished ones older than `cutoff` (an
    /// RFC 3339 time) go (ADU keeps them 7 days).
    pub fn put_device_operation(
        &self,
        op: &DeviceOperation,
        cutoff: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM device_operations WHERE status IN ('Succeeded', 'Failed')
               AND json_extract(body, '$.lastActionDateTime') < ?1",
            [cutoff],
        )?;
        self.conn.execute(
            "INSERT INTO device_operations (id, seq, status, body)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM device_operations), ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, body = excluded.body",
            params![op.operation_id, op.status.as_str(), serde_json::to_string(op)?],
        )?;
        Ok(())
    }

    /// One device import operation.
    pub fn device_operation(&self, id: &str) -> Result<Option<DeviceOperation>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM device_operations WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(StoreError::from)).transpose()
    }

    /// Device import operations, newest first.
    pub fn device_operations(&self) -> Result<Vec<DeviceOperation>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT body FROM device_operations ORDER BY seq DESC")?;
        let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        rows.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
    }

    /// Stores a new log collection, keeping at most `keep` (the oldest go); false when one
    /// with its id exists.
    pub fn create_log_collection(
        &mut self,
        c: &LogCollection,
        keep: usize,
    ) -> Result<bool, StoreError> {
        let id = c.operation_id.clone().unwrap_or_default();
        let tx = self.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO log_collections (id, seq, body)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM log_collections), ?2)",
            params![id, serde_json::to_string(c)?],
        )? > 0;
        tx.execute(
            "DELETE FROM log_collections WHERE seq NOT IN
               (SELECT seq FROM log_collections ORDER BY seq DESC LIMIT ?1)",
            [i64::try_from(keep).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(inserted)
    }

    /// Replaces a log collection's document (its status moved).
    pub fn update_log_collection(&self, c: &LogCollection) -> Result<(), StoreError> {
        let id = c.operation_id.clone().unwrap_or_default();
        self.conn.execute(
            "UPDATE log_collections SET body = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(c)?],
        )?;
        Ok(())
    }

    /// One log collection.
    pub fn log_collection(&self, id: &str) -> Result<Option<LogCollection>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM log_collections WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(StoreError::from)).transpose()
    }

    /// Every log collection, newest first.
    pub fn log_collections(&self) -> Result<Vec<LogCollection>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT body FROM log_collections ORDER BY seq DESC")?;
        let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        rows.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
    }

    /// The module twins whose module reports a Device Update agent (an agent that runs as a
    /// module identity), each with its device identity's creation time, in creation order. The
    /// runtime's own modules (`$edgeAgent`, `$edgeHub`) are skipped by an index range, and
    /// only twins that mention the agent's component are parsed.
    pub fn module_agents(&self) -> Result<Vec<(crate::iothub::Twin, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.device_id, m.module_id, m.version, m.twin, d.created
             FROM modules m JOIN devices d ON d.device_id = m.device_id
             WHERE (m.module_id < '$' OR m.module_id >= '%')
               AND instr(m.twin, '\"deviceUpdate\"') > 0
             ORDER BY m.seq",
        )?;
        let rows: Vec<(String, String, i64, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<Result<_, _>>()?;
        rows.iter()
            .map(|(d, m, v, t, c)| Ok((super::modules::module_doc(d, m, *v, t)?, c.clone())))
            .collect()
    }

    /// Forgets a device-class subgroup's history: it leaves every deployment of the group
    /// (its cancel and retry records too), in one transaction. Returns whether any deployment
    /// named it.
    pub fn forget_subgroup(&mut self, group: &str, class: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let rows: Vec<(String, String, String, String)> = tx
            .prepare(
                "SELECT deployment_id, state, body, subgroups FROM deployments WHERE group_id = ?1",
            )?
            .query_map([group], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut named = false;
        for (id, state, body, subgroups) in rows {
            let mut d = stored((state, body, subgroups))?;
            let listed = d.deployment.device_class_subgroups.iter().flatten().any(|c| c == class);
            let had = d.subgroups.remove(class).is_some();
            if !listed && !had {
                continue;
            }
            named = true;
            if let Some(list) = &mut d.deployment.device_class_subgroups {
                list.retain(|c| c != class);
            }
            tx.execute(
                "UPDATE deployments SET body = ?3, subgroups = ?4
                 WHERE group_id = ?1 AND deployment_id = ?2",
                params![
                    group,
                    id,
                    serde_json::to_string(&d.deployment)?,
                    serde_json::to_string(&d.subgroups)?
                ],
            )?;
        }
        tx.commit()?;
        Ok(named)
    }
}

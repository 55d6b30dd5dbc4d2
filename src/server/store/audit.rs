//! The audit trail of deployments: who created, canceled, retried, deleted or (serve itself)
//! rolled back which deployment, and when. Each entry is written in the same call as the change
//! it records, so the trail and the deployments cannot disagree.

use rusqlite::params;

use super::{Store, StoreError};

pub(super) fn migrate_12(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            group_id TEXT NOT NULL, deployment_id TEXT NOT NULL,
            class_id TEXT, update_id TEXT);",
    )?;
    Ok(())
}

/// One entry of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When (RFC 3339).
    pub at: String,
    /// Who: `bearer token`, `loopback (no token)`, `serve (cloud rollback)`.
    pub actor: String,
    /// `create`, `cancel`, `retry`, `delete`, `rollback`.
    pub action: String,
    /// The group.
    pub group_id: String,
    /// The deployment.
    pub deployment_id: String,
    /// The device class, for a subgroup's action.
    pub class_id: Option<String>,
    /// The update, for a create or a rollback.
    pub update_id: Option<String>,
}

/// Entries kept; older ones go as new ones come.
pub const KEPT_AUDIT: i64 = 10_000;

impl Store {
    /// Appends `e` to the trail (and forgets what is beyond [`KEPT_AUDIT`]).
    pub fn record_audit(&self, e: &AuditRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit (at, actor, action, group_id, deployment_id, class_id, update_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                e.at,
                e.actor,
                e.action,
                e.group_id,
                e.deployment_id,
                e.class_id,
                e.update_id
            ])?;
        self.conn
            .prepare_cached("DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?1")?
            .execute(params![KEPT_AUDIT])?;
        Ok(())
    }

    /// The newest `limit` entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn
            .prepare_cached(
                "SELECT at, actor, action, group_id, deployment_id, class_id, update_id
                 FROM audit ORDER BY seq DESC LIMIT ?1",
            )?
            .query_map(params![limit], |r| {
                Ok(AuditRecord {
                    at: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    group_id: r.get(3)?,
                    deployment_id: r.get(4)?,
                    class_id: r.get(5)?,
                    update_id: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

//! What serve remembers of the past, for the dashboard: each device's results (what its agent
//! reported, each time its state, workflow, installed update or last result changed) and each
//! deployment's progress per subgroup over time (its status whenever the counts moved).
//! Device Update's REST API keeps neither: a device's `lastInstallResult` and a deployment's
//! status are only ever the latest.
//!
//! Results are written in the same transaction as the report they come from; progress is
//! written by serve's recorder (`server::progress`). Both are bounded: [`KEPT_RESULTS`] per
//! device and [`KEPT_PROGRESS`] rows in all.

use rusqlite::params;
use serde_json::{Map, Value};

use super::{Store, StoreError};
pub use crate::dashboard::{ProgressRecord, ResultRecord};
use crate::service::agent::ReportedComponent;

pub(super) fn migrate_13(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS device_results (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL, at TEXT NOT NULL,
            state INTEGER, workflow_id TEXT, installed_update TEXT,
            result_code INTEGER, extended_result_code INTEGER, result_details TEXT);
         CREATE INDEX IF NOT EXISTS device_results_by_device ON device_results (device_id, seq);
         CREATE TABLE IF NOT EXISTS deployment_progress (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            group_id TEXT NOT NULL, deployment_id TEXT NOT NULL, class_id TEXT NOT NULL,
            at TEXT NOT NULL, total INTEGER NOT NULL, succeeded INTEGER NOT NULL,
            failed INTEGER NOT NULL, in_progress INTEGER NOT NULL, canceled INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS deployment_progress_by_deployment
            ON deployment_progress (group_id, deployment_id, seq);",
    )?;
    Ok(())
}

/// Results kept per device; older ones go as new ones come.
pub const KEPT_RESULTS: i64 = 32;

/// Progress rows kept in all (about 1,000 points of 100 subgroups).
pub const KEPT_PROGRESS: i64 = 100_000;

impl ResultRecord {
    /// The record a twin's reported properties make (without a time); `None` without an agent.
    pub(super) fn of(reported: &Map<String, Value>) -> Option<Self> {
        let agent = ReportedComponent::of(reported)?.agent?;
        let result = agent.last_install_result();
        Some(Self {
            at: String::new(),
            state: agent.state,
            workflow_id: agent.workflow.as_ref().map(|w| w.id.clone()),
            installed_update: agent.installed_update_id.clone(),
            result_code: result.as_ref().map(|r| r.result_code),
            extended_result_code: result.as_ref().map(|r| r.extended_result_code),
            result_details: result.and_then(|r| r.result_details),
        })
    }
}

/// Appends a device's result when what its agent reported changed, inside the report's
/// transaction.
pub(super) fn note_result(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    before: Option<&ResultRecord>,
    after: Option<ResultRecord>,
) -> Result<(), StoreError> {
    let Some(r) = after else { return Ok(()) };
    if before == Some(&r) {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO device_results (device_id, at, state, workflow_id, installed_update,
             result_code, extended_result_code, result_details)
         VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        device_id,
        r.state,
        r.workflow_id,
        r.installed_update,
        r.result_code,
        r.extended_result_code,
        r.result_details
    ])?;
    tx.prepare_cached(
        "DELETE FROM device_results WHERE device_id = ?1 AND seq <=
             (SELECT seq FROM device_results WHERE device_id = ?1
              ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![device_id, KEPT_RESULTS])?;
    Ok(())
}

/// A progress row: group, deployment, class, at, then the five counts.
fn progress_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProgressRecord> {
    let count =
        |i: usize| -> rusqlite::Result<u64> { Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0)) };
    Ok(ProgressRecord {
        group_id: r.get(0)?,
        deployment_id: r.get(1)?,
        class_id: r.get(2)?,
        at: r.get(3)?,
        total: count(4)?,
        succeeded: count(5)?,
        failed: count(6)?,
        in_progress: count(7)?,
        canceled: count(8)?,
    })
}

impl Store {
    /// A device's results, newest first, at most `limit`.
    pub fn device_results(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<ResultRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn
            .prepare_cached(
                "SELECT at, state, workflow_id, installed_update, result_code,
                        extended_result_code, result_details
                 FROM device_results WHERE device_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?
            .query_map(params![device_id, limit], |r| {
                Ok(ResultRecord {
                    at: r.get(0)?,
                    state: r.get(1)?,
                    workflow_id: r.get(2)?,
                    installed_update: r.get(3)?,
                    result_code: r.get(4)?,
                    extended_result_code: r.get(5)?,
                    result_details: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Appends progress rows (and forgets what is beyond [`KEPT_PROGRESS`]).
    pub fn record_progress(&mut self, rows: &[ProgressRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for p in rows {
            tx.prepare_cached(
                "INSERT INTO deployment_progress (group_id, deployment_id, class_id, at, total,
                     succeeded, failed, in_progress, canceled)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                p.group_id,
                p.deployment_id,
                p.class_id,
                p.at,
                i64::try_from(p.total).unwrap_or(i64::MAX),
                i64::try_from(p.succeeded).unwrap_or(i64::MAX),
                i64::try_from(p.failed).unwrap_or(i64::MAX),
                i64::try_from(p.in_progress).unwrap_or(i64::MAX),
                i64::try_from(p.canceled).unwrap_or(i64::MAX),
            ])?;
        }
        tx.prepare_cached(
            "DELETE FROM deployment_progress
             WHERE seq <= (SELECT MAX(seq) FROM deployment_progress) - ?1",
        )?
        .execute(params![KEPT_PROGRESS])?;
        tx.commit()?;
        Ok(())
    }

    /// A deployment's progress rows, oldest first.
    pub fn progress(
        &self,
        group_id: &str,
        deployment_id: &str,
    ) -> Result<Vec<ProgressRecord>, StoreError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT group_id, deployment_id, class_id, at, total, succeeded, failed,
                        in_progress, canceled
                 FROM deployment_progress WHERE group_id = ?1 AND deployment_id = ?2
                 ORDER BY seq",
            )?
            .query_map(params![group_id, deployment_id], progress_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The last progress row of every subgroup of every deployment (what the recorder compares
    /// with when serve starts).
    pub fn last_progress(&self) -> Result<Vec<ProgressRecord>, StoreError> {
        let rows = self
            .conn
            .prepare(
                "SELECT p.group_id, p.deployment_id, p.class_id, p.at, p.total, p.succeeded,
                        p.failed, p.in_progress, p.canceled
                 FROM deployment_progress p JOIN (SELECT MAX(seq) AS seq FROM deployment_progress
                     GROUP BY group_id, deployment_id, class_id) last ON p.seq = last.seq",
            )?
            .query_map([], progress_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    fn report(state: i64, workflow: &str, code: i64) -> Map<String, Value> {
        serde_json::json!({"deviceUpdate": {"__t": "c", "agent": {
            "state": state,
            "workflow": {"action": 3, "id": workflow},
            "installedUpdateId": "{\"provider\":\"contoso\",\"name\":\"fw\",\"version\":\"1.0\"}",
            "lastInstallResult": {"resultCode": code, "extendedResultCode": 0},
        }}})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn a_device_result_is_kept_when_the_agent_reports_something_new_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.sqlite"), "now").unwrap();
        store.create_device("d1", "k", "2026-12-06T00:00:00Z", false).unwrap().unwrap();
        store.patch_reported("d1", &report(6, "dep1", 0)).unwrap().unwrap();
        // The same again (a heartbeat, another property) adds nothing.
        store.patch_reported("d1", &report(6, "dep1", 0)).unwrap().unwrap();
        let other = serde_json::json!({"battery": 80}).as_object().unwrap().clone();
        store.patch_reported("d1", &other).unwrap().unwrap();
        store.patch_reported("d1", &report(255, "dep1", 0)).unwrap().unwrap();
        let got = store.device_results("d1", 10).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].state, got[0].workflow_id.as_deref()), (Some(255), Some("dep1")));
        assert_eq!(got[1].state, Some(6));
        assert!(got[0].at.ends_with('Z') && got[0].at >= got[1].at);
        for i in 0..KEPT_RESULTS + 5 {
            store.patch_reported("d1", &report(0, &format!("w{i}"), 700)).unwrap().unwrap();
        }
        let got = store.device_results("d1", 1_000).unwrap();
        assert_eq!(got.len() as i64, KEPT_RESULTS);
        assert_eq!(got[0].workflow_id.as_deref(), Some(&*format!("w{}", KEPT_RESULTS + 4)));
        assert_eq!(got[0].result_code, Some(700));
        assert!(store.device_results("d2", 10).unwrap().is_empty());
    }

    #[test]
    fn progress_is_read_back_per_deployment_and_the_last_of_each_subgroup() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.sqlite"), "now").unwrap();
        let row = |d: &str, c: &str, at: &str, succeeded: u64| ProgressRecord {
            group_id: "g".into(),
            deployment_id: d.into(),
            class_id: c.into(),
            at: at.into(),
            total: 10,
            succeeded,
            failed: 1,
            in_progress: 9 - succeeded,
            canceled: 0,
        };
        store.record_progress(&[row("a", "c1", "t1", 0), row("a", "c2", "t1", 0)]).unwrap();
        store.record_progress(&[row("a", "c1", "t2", 5), row("b", "c1", "t3", 1)]).unwrap();
        let a = store.progress("g", "a").unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!((a[2].class_id.as_str(), a[2].at.as_str(), a[2].succeeded), ("c1", "t2", 5));
        let mut last = store.last_progress().unwrap();
        last.sort_by(|x, y| (&x.deployment_id, &x.class_id).cmp(&(&y.deployment_id, &y.class_id)));
        let seen: Vec<(&str, &str, u64)> = last
            .iter()
            .map(|p| (p.deployment_id.as_str(), p.class_id.as_str(), p.succeeded))
            .collect();
        assert_eq!(seen, [("a", "c1", 5), ("a", "c2", 0), ("b", "c1", 1)]);
    }
}

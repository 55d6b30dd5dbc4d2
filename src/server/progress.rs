//! serve's recorder of deployments' progress over time: after the store changes (at most once
//! per [`RECORD_EVERY`], and at once when a deployment is created), each active deployment's status is computed from the kept views, as
//! the status route computes it, and a subgroup's counts are written when they moved since the
//! last row. A deployment that stopped being active (superseded, canceled) gets one last look,
//! so its final counts are kept. The dashboard draws these rows; Device Update's API has no
//! history of its own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::store::{ProgressRecord, StoreError, StoredDeployment};
use super::{Shared, deploy, now_string, views};

/// The shortest interval between two passes.
pub const RECORD_EVERY: Duration = Duration::from_secs(1);

/// A subgroup of a deployment: group, deployment, class.
type Key = (String, String, String);

/// What the recorder remembers between passes.
#[derive(Debug, Default)]
struct Recorder {
    /// The last row written of each subgroup.
    last: HashMap<Key, ProgressRecord>,
    /// Deployments active at the last pass (group, deployment).
    active: HashSet<(String, String)>,
}

fn key(p: &ProgressRecord) -> Key {
    (p.group_id.clone(), p.deployment_id.clone(), p.class_id.clone())
}

/// Starts the recorder.
pub(super) fn spawn(s: &Shared) {
    let s = s.clone();
    tokio::spawn(async move {
        let mut recorder = Recorder::default();
        if let Ok(rows) = s.db.read(|st| st.last_progress()).await {
            recorder.last = rows.into_iter().map(|r| (key(&r), r)).collect();
        }
        let mut generations = s.db.generations();
        loop {
            // A pass that fails (the store is busy or gone) is tried again after the next write.
            let _ = recorder.pass(&s).await;
            let next = tokio::time::Instant::now() + RECORD_EVERY;
            if generations.changed().await.is_err() {
                return;
            }
            // At most one pass per interval, but a deployment's start is recorded at once: a
            // small fleet can finish within the interval.
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = s.deployment_created.notified() => {}
            }
        }
    });
}

impl Recorder {
    async fn pass(&mut self, s: &Shared) -> Result<(), StoreError> {
        let mut look: Vec<StoredDeployment> = s.db.read(|st| st.active_deployments()).await?;
        let now_active: HashSet<(String, String)> = look
            .iter()
            .map(|d| (d.deployment.group_id.to_string(), d.deployment.deployment_id.to_string()))
            .collect();
        for (g, id) in self.active.difference(&now_active) {
            let (g, id) = (g.clone(), id.clone());
            if let Some(d) = s.db.read(move |st| st.deployment(&g, &id)).await? {
                look.push(d);
            }
        }
        let at = now_string();
        let mut rows = Vec::new();
        for stored in &look {
            let view = views::view_of(s, Some(stored.deployment.group_id.as_str())).await?;
            rows.extend(moved(&self.last, stored, &view, &at));
        }
        if !rows.is_empty() {
            let written = rows.clone();
            s.db.call(move |st| st.record_progress(&written)).await?;
            for r in rows {
                self.last.insert(key(&r), r);
            }
        }
        self.active = now_active;
        Ok(())
    }
}

/// The rows of `stored`'s subgroups whose counts moved since `last`.
fn moved(
    last: &HashMap<Key, ProgressRecord>,
    stored: &StoredDeployment,
    view: &super::devices::View,
    at: &str,
) -> Vec<ProgressRecord> {
    let status = deploy::status(stored, view);
    let d = &stored.deployment;
    status
        .subgroup_status
        .iter()
        .map(|g| ProgressRecord::of(d.group_id.as_str(), d.deployment_id.as_str(), at, g))
        .filter(|p| last.get(&key(p)).is_none_or(|l| !l.same_counts(p)))
        .collect()
}

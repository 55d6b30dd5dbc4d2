//! The embedded service's SQLite store (WAL, `synchronous=FULL`), typed: it keeps the service's
//! documents ([`Update`], [`UpdateFile`], [`UpdateOperation`]) keyed by [`UpdateId`].
//!
//! An import becomes visible in one transaction that inserts every update and file of the
//! request and marks the operation `Succeeded`; until then nothing of it can be read. At start,
//! operations left `NotStarted` or `Running` by a killed process are marked `Failed`, so a crash
//! at any moment leaves a consistent store.
//!
//! The schema is versioned (`PRAGMA user_version`) and brought up to date by [`MIGRATIONS`] at
//! open, each in its own transaction, so a store written by an older otaforge opens with a newer
//! one. SQLite calls block: the routes reach the store through [`Db`], which runs them on
//! tokio's blocking pool, never on the async workers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use crate::manifest::UpdateId;
use crate::service::model::DeploymentState;
use crate::service::{ErrorBody, OperationStatus, Update, UpdateFile, UpdateOperation};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored document does not parse.
    #[error("store: corrupt document: {0}")]
    Json(#[from] serde_json::Error),
    /// The store was written by a newer otaforge.
    #[error(
        "store: schema version {found} is newer than this otaforge knows ({known}); upgrade otaforge"
    )]
    TooNew {
        /// The store's version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A blocking call could not run.
    #[error("store: {0}")]
    Task(String),
}

/// One migration: a version and what brings the schema from the version before to it.
pub struct Migration {
    /// The schema version after it ran.
    pub version: i64,
    /// What it does (for messages).
    pub what: &'static str,
    /// The change, run inside a transaction.
    pub apply: fn(&rusqlite::Transaction<'_>) -> Result<(), StoreError>,
}

/// Every migration, oldest first. Version 1 is the schema of the first release of `serve`
/// (whose stores have `user_version` 0 and already hold these tables).
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, what: "updates, files and operations", apply: migrate_1 },
    Migration {
        version: 2,
        what: "related files as the API spells them; index operations by status",
        apply: migrate_2,
    },
    Migration { version: 3, what: "device identities and their twins", apply: migrate_3 },
    Migration { version: 4, what: "deployments", apply: migrate_4 },
    Migration { version: 5, what: "device class friendly names", apply: migrate_5 },
    Migration {
        version: 6,
        what: "each twin's group (indexed) and the slim twin the management views read",
        apply: migrate_6,
    },
    Migration { version: 7, what: "IoT Hub configurations (Edge deployments)", apply: migrate_7 },
    Migration {
        version: 8,
        what: "module twins, and the Edge deployments each device was last given",
        apply: modules::migrate_8,
    },
    Migration {
        version: 9,
        what: "device import operations and log collections",
        apply: management::migrate_9,
    },
    Migration {
        version: 10,
        what: "what automatic device management configurations last set on each twin",
        apply: adm::migrate_10,
    },
    Migration {
        version: 11,
        what: "identities' own keys (module keys, secondary keys) and MQTT sessions",
        apply: identities::migrate_11,
    },
    Migration { version: 12, what: "the audit trail of deployments", apply: audit::migrate_12 },
    Migration {
        version: 13,
        what: "devices' results and deployments' progress over time",
        apply: history::migrate_13,
    },
];

fn migrate_7(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS configurations (
            id TEXT PRIMARY KEY, seq INTEGER NOT NULL, body TEXT NOT NULL);",
    )?;
    Ok(())
}

/// Why the store refused a write: nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No such device.
    #[error("no such device")]
    NoDevice,
    /// No module identity of that name on the device.
    #[error("no such module identity")]
    NoModule,
    /// No such configuration.
    #[error("no such configuration")]
    NoConfiguration,
    /// `If-Match` named another ETag than the document's now.
    #[error("the {0} changed since it was read (If-Match names an older ETag); read it again")]
    Stale(&'static str),
    /// The write breaks one of IoT Hub's twin rules.
    #[error(transparent)]
    Rules(#[from] crate::iothub::limits::RuleError),
    /// A replacement changed a configuration's content, which is immutable.
    #[error(
        "a configuration's content cannot change; create a new one (labels, metrics, priority and targetCondition may change)"
    )]
    ContentChanged,
    /// The hub already holds the most configurations it may.
    #[error("the hub holds {0} configurations, its most")]
    TooManyConfigurations(usize),
    /// The instance already holds the most deployments it may.
    #[error("the instance holds {0} deployments, the most it may; delete old ones")]
    TooManyDeployments(usize),
    /// The device already has the most module identities it may.
    #[error("the device has {0} module identities, the most IoT Hub allows")]
    TooManyModules(usize),
}

/// What a write came to: done (with what it gives), or refused.
pub type Outcome<T> = Result<T, Refusal>;

/// Adds `group_id` (indexed) and `slim` to every device, filled from its twin.
fn migrate_6(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "ALTER TABLE devices ADD COLUMN group_id TEXT;
         ALTER TABLE devices ADD COLUMN slim TEXT NOT NULL DEFAULT '{}';
         CREATE INDEX IF NOT EXISTS devices_group ON devices(group_id, seq);",
    )?;
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT device_id, twin FROM devices")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, text) in rows {
        let twin: crate::iothub::Twin = serde_json::from_str(&text)?;
        let (group, slim) = derived(&twin)?;
        tx.execute(
            "UPDATE devices SET group_id = ?2, slim = ?3 WHERE device_id = ?1",
            params![id, group, slim],
        )?;
    }
    Ok(())
}

/// What is kept beside a twin for the management views: its group, and the slim twin (the
/// `ADUGroup` tag, the agent's reported properties and the desired workflow: all that device
/// classes, groups, compliance, deployment status and reconciliation read). A group's status
/// then parses a few hundred bytes per device, not its whole twin with the update manifest.
fn derived(twin: &crate::iothub::Twin) -> Result<(Option<String>, String), StoreError> {
    let group = twin.group().map(str::to_owned);
    let mut slim = crate::iothub::Twin { module_id: twin.module_id.clone(), ..Default::default() };
    if let Some(g) = &group {
        slim.tags.insert(crate::iothub::GROUP_TAG.into(), Value::String(g.clone()));
    }
    use crate::service::agent::{DesiredComponent, ReportedComponent, ServiceProperty};
    if let Some(agent) = ReportedComponent::of(&twin.properties.reported).and_then(|c| c.agent) {
        slim.properties.reported = ReportedComponent::new(agent).to_patch();
    }
    let workflow = DesiredComponent::of(&twin.properties.desired).and_then(|c| c.service);
    if let Some(service) = workflow {
        let only = ServiceProperty { workflow: service.workflow, ..ServiceProperty::default() };
        let component = serde_json::to_value(DesiredComponent::new(only))?;
        slim.properties.desired.insert(crate::service::agent::COMPONENT.into(), component);
    }
    Ok((group, serde_json::to_string(&slim)?))
}

fn migrate_5(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS device_classes (
            device_class_id TEXT PRIMARY KEY, friendly_name TEXT NOT NULL);",
    )?;
    Ok(())
}

fn migrate_4(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS deployments (
            group_id TEXT NOT NULL, deployment_id TEXT NOT NULL, seq INTEGER NOT NULL,
            state TEXT NOT NULL, body TEXT NOT NULL, subgroups TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (group_id, deployment_id));",
    )?;
    Ok(())
}

/// A deployment as serve keeps it: the document and whether it is the group's active one.
#[derive(Debug, Clone)]
pub struct StoredDeployment {
    /// The `Deployment` document.
    pub deployment: crate::service::model::Deployment,
    /// `Active`, `Inactive` (superseded) or `Canceled`.
    pub state: DeploymentState,
    /// What was done to each subgroup: canceled, and when failed devices were last retried.
    pub subgroups: BTreeMap<String, SubgroupActions>,
}

/// Cancel and retry of one device-class subgroup of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubgroupActions {
    /// Canceled: its devices are told to stop, and it cannot be reactivated.
    #[serde(default)]
    pub canceled: bool,
    /// The last retry: failed devices of the subgroup try again; a failure counts only when
    /// reported for this retry (the agent echoes it as `workflow.retryTimestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timestamp: Option<String>,
    /// How many times it was retried.
    #[serde(default)]
    pub retry_count: u64,
    /// Deleted (`DELETE …/deviceClassSubgroups/{c}/deployments/{d}`): gone from the
    /// deployment's subgroups, and its devices told to stop, as when canceled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

fn migrate_3(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS devices (
            device_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, device_key TEXT NOT NULL,
            created TEXT NOT NULL, version INTEGER NOT NULL, twin TEXT NOT NULL);
         CREATE UNIQUE INDEX IF NOT EXISTS devices_seq ON devices(seq);",
    )?;
    Ok(())
}

/// A device identity as serve keeps it.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// The device id.
    pub device_id: String,
    /// Its symmetric key, base64 (a secret: the data dir is private).
    pub device_key: String,
    /// When it was created.
    pub created: String,
    /// The twin: tags, desired and reported properties.
    pub twin: crate::iothub::Twin,
}

/// A device's slim twin with its registry position and its identity's creation time.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its position in the registry (registry order).
    pub seq: i64,
    /// The slim twin.
    pub twin: crate::iothub::Twin,
    /// When its identity was created.
    pub created: String,
}

/// Twins with their registry positions, and where to continue when there are more.
pub type TwinsPage = (Vec<(i64, crate::iothub::Twin)>, Option<i64>);

pub use crate::iothub::merge_patch;

/// The ETag of a twin version (tags and desired properties).
fn twin_etag(device_id: &str, version: i64) -> String {
    let digest = crate::Sha256::digest(format!("{device_id}\n{version}").as_bytes());
    format!("\"{}\"", &digest.to_hex()[..16])
}

fn migrate_1(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS updates (
            provider TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
            body TEXT NOT NULL, seq INTEGER NOT NULL,
            PRIMARY KEY (provider, name, version));
         CREATE TABLE IF NOT EXISTS files (
            provider TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
            file_id TEXT NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY (provider, name, version, file_id));
         CREATE TABLE IF NOT EXISTS operations (
            id TEXT PRIMARY KEY, seq INTEGER NOT NULL, status TEXT NOT NULL,
            body TEXT NOT NULL, request TEXT);",
    )?;
    Ok(())
}

/// Stores of the first release wrote related files with the import manifest's `filename`; the
/// API's `UpdateFileBase` spells it `fileName`.
fn migrate_2(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let rows: Vec<(String, String, String, String, String)> = {
        let mut stmt = tx.prepare("SELECT provider, name, version, file_id, body FROM files")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<Result<_, _>>()?
    };
    for (p, n, v, id, body) in rows {
        let mut doc: Value = serde_json::from_str(&body)?;
        let mut changed = false;
        if let Some(related) = doc.get_mut("relatedFiles").and_then(Value::as_array_mut) {
            for r in related.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(name) = r.remove("filename") {
                    r.insert("fileName".into(), name);
                    changed = true;
                }
            }
        }
        if changed {
            tx.execute(
                "UPDATE files SET body = ?5 WHERE provider = ?1 AND name = ?2 AND version = ?3 AND file_id = ?4",
                params![p, n, v, id, serde_json::to_string(&doc)?],
            )?;
        }
    }
    tx.execute_batch("CREATE INDEX IF NOT EXISTS operations_status ON operations(status);")?;
    Ok(())
}

fn stored(
    (state, body, subgroups): (String, String, String),
) -> Result<StoredDeployment, StoreError> {
    Ok(StoredDeployment {
        deployment: serde_json::from_str(&body)?,
        state: DeploymentState::from(state.as_str()),
        subgroups: serde_json::from_str(&subgroups)?,
    })
}

/// A twin's version and stored text, read inside a transaction.
fn twin_row(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    Ok(tx
        .query_row("SELECT version, twin FROM devices WHERE device_id = ?1", [device_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

/// Who writes a twin, which decides how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// A client of the service API: its patch is merged (RFC 7396) and must keep IoT Hub's
    /// twin rules.
    Client,
    /// serve itself, writing a deployment: each top-level desired property it gives replaces
    /// the one before whole, so nothing of an earlier deployment (its file URLs, each a live
    /// read grant) stays behind.
    Serve,
}

/// [`Store::patch_twin`] inside a transaction the caller commits, as `by` writes.
fn patch_twin_in(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    tags: Option<&serde_json::Map<String, Value>>,
    desired: Option<&serde_json::Map<String, Value>>,
    if_match: Option<&str>,
    by: Writer,
) -> Result<Outcome<crate::iothub::Twin>, StoreError> {
    use crate::iothub::limits::{Section, check_patch};
    let Some((version, text)) = twin_row(tx, device_id)? else {
        return Ok(Err(Refusal::NoDevice));
    };
    if let Some(m) = if_match.filter(|m| !crate::iothub::if_match_any(m))
        && m != twin_etag(device_id, version)
    {
        return Ok(Err(Refusal::Stale("twin")));
    }
    let mut twin: crate::iothub::Twin = serde_json::from_str(&text)?;
    if let Some(t) = tags {
        merge_patch(&mut twin.tags, t);
        if let Err(e) = check_patch(Section::Tags, t, &twin.tags) {
            return Ok(Err(e.into()));
        }
    }
    match (desired, by) {
        (Some(d), Writer::Client) => {
            merge_patch(&mut twin.properties.desired, d);
            if let Err(e) = check_patch(Section::Desired, d, &twin.properties.desired) {
                return Ok(Err(e.into()));
            }
        }
        (Some(d), Writer::Serve) => {
            for (k, v) in d {
                twin.properties.desired.insert(k.clone(), v.clone());
            }
        }
        (None, _) => {}
    }
    let version = version + 1;
    let text = serde_json::to_string(&twin)?;
    let (group, slim) = derived(&twin)?;
    tx.execute(
        "UPDATE devices SET version = ?2, twin = ?3, group_id = ?4, slim = ?5 WHERE device_id = ?1",
        params![device_id, version, text, group, slim],
    )?;
    Ok(Ok(twin_doc(device_id, version, &text)?))
}

/// A stored twin with its id, version and ETag filled in.
fn twin_doc(device_id: &str, version: i64, text: &str) -> Result<crate::iothub::Twin, StoreError> {
    let mut twin: crate::iothub::Twin = serde_json::from_str(text)?;
    twin.device_id = device_id.to_owned();
    twin.version = Some(version);
    twin.etag = Some(twin_etag(device_id, version));
    Ok(twin)
}

/// Records an operation's final state inside a transaction.
fn finish_operation(
    tx: &rusqlite::Transaction<'_>,
    op: &UpdateOperation,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE operations SET status = ?2, body = ?3 WHERE id = ?1",
        params![op.operation_id, op.status.as_str(), serde_json::to_string(op)?],
    )?;
    Ok(())
}

/// One update to make visible: its document and its files' documents.
#[derive(Debug, Clone)]
pub struct NewUpdate {
    /// The `Update` document.
    pub update: Update,
    /// Its `UpdateFile` documents.
    pub files: Vec<UpdateFile>,
}

fn id_params(id: &UpdateId) -> (String, String, String) {
    (id.provider().to_owned(), id.name().to_owned(), id.version().to_string())
}

/// [`Store::patch_reported`] inside a transaction the caller commits (nothing is written
/// when it is refused).
fn patch_reported_in(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    reported: &serde_json::Map<String, Value>,
) -> Result<Outcome<crate::iothub::Twin>, StoreError> {
    let Some((version, text)) = twin_row(tx, device_id)? else {
        return Ok(Err(Refusal::NoDevice));
    };
    let mut twin: crate::iothub::Twin = serde_json::from_str(&text)?;
    let reported_version =
        twin.properties.reported.get("$version").and_then(Value::as_i64).unwrap_or(1);
    let result_before = history::ResultRecord::of(&twin.properties.reported);
    merge_patch(&mut twin.properties.reported, reported);
    let section = crate::iothub::limits::Section::Reported;
    if let Err(e) = crate::iothub::limits::check_patch(section, reported, &twin.properties.reported)
    {
        return Ok(Err(e.into()));
    }
    twin.properties.reported.insert("$version".into(), (reported_version + 1).into());
    let text = serde_json::to_string(&twin)?;
    let (_, slim) = derived(&twin)?;
    tx.execute(
        "UPDATE devices SET twin = ?2, slim = ?3 WHERE device_id = ?1",
        params![device_id, text, slim],
    )?;
    let result_after = history::ResultRecord::of(&twin.properties.reported);
    history::note_result(tx, device_id, result_before.as_ref(), result_after)?;
    Ok(Ok(twin_doc(device_id, version, &text)?))
}

mod adm;
mod audit;
pub mod changes;
mod history;
mod identities;
mod management;
mod modules;

pub use audit::{AuditRecord, KEPT_AUDIT};
pub use history::{KEPT_PROGRESS, KEPT_RESULTS, ProgressRecord, ResultRecord};
pub use identities::{Keys, Report};

/// The store.
pub struct Store {
    conn: Connection,
    /// What this connection's writes changed (empty for readers).
    changes: changes::Changes,
}

impl Store {
    /// Opens (creating) the database at `path`, migrates it, and fails interrupted operations.
    pub fn open(path: &Path, now: &str) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every transaction takes the write lock when it begins. A deferred one that reads
        // first and then writes must upgrade its read lock, and SQLite answers a busy upgrade at
        // once with SQLITE_BUSY, without the busy timeout (waiting could deadlock in general).
        // The write lock is not only the writer's: a reader repairing a torn wal-index header,
        // or closing, holds it for a moment. That was the rare 500 "database is locked" on a
        // twin PATCH (it reads the row first) with 100,000 devices and busy readers.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        let mut store = Self { conn, changes: changes::Changes::default() };
        store.migrate()?;
        store.fail_interrupted(now)?;
        changes::watch(&store.conn, &store.changes)?;
        Ok(store)
    }

    /// A read-only connection to the same database, for [`Db::read`]: in WAL mode readers see
    /// the last committed state and never wait for the writer.
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn, changes: changes::Changes::default() })
    }

    /// Drops finished operations older than `days_ago` (an RFC 3339 time) and all but the
    /// newest `keep` finished ones; operations still running are never dropped. Returns how
    /// many went.
    pub fn prune_operations(&self, days_ago: &str, keep: usize) -> Result<usize, StoreError> {
        let old = self.conn.execute(
            "DELETE FROM operations WHERE status IN ('Succeeded', 'Failed')
               AND json_extract(body, '$.lastActionDateTime') < ?1",
            [days_ago],
        )?;
        let extra = self.conn.execute(
            "DELETE FROM operations WHERE status IN ('Succeeded', 'Failed') AND seq NOT IN
               (SELECT seq FROM operations WHERE status IN ('Succeeded', 'Failed')
                ORDER BY seq DESC LIMIT ?1)",
            [i64::try_from(keep).unwrap_or(i64::MAX)],
        )?;
        Ok(old + extra)
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.last().map(|m| m.version).unwrap_or(0);
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > found) {
            let tx = self.conn.transaction()?;
            (m.apply)(&tx)?;
            tx.pragma_update(None, "user_version", m.version)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn fail_interrupted(&self, now: &str) -> Result<usize, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM operations WHERE status IN ('NotStarted', 'Running')")?;
        let ops: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        drop(stmt);
        let n = ops.len();
        for body in ops {
            let mut op: UpdateOperation = serde_json::from_str(&body)?;
            op.status = OperationStatus::Failed;
            op.error = Some(ErrorBody::new(
                "OperationInterrupted",
                "the service stopped while this operation ran; nothing of it was imported; run the import again",
            ));
            op.last_action_date_time = Some(now.to_owned());
            self.put_operation(&op, None)?;
        }
        Ok(n)
    }

    /// Inserts or replaces an operation (and, when given, its request).
    pub fn put_operation(
        &self,
        op: &UpdateOperation,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(op)?;
        self.conn.execute(
            "INSERT INTO operations (id, seq, status, body, request)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM operations), ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, body = excluded.body,
                request = COALESCE(excluded.request, operations.request)",
            params![op.operation_id, op.status.as_str(), body, request],
        )?;
        Ok(())
    }

    /// One operation.
    pub fn operation(&self, id: &str) -> Result<Option<UpdateOperation>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM operations WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(match body {
            Some(b) => Some(serde_json::from_str(&b)?),
            None => None,
        })
    }

    /// Operations, newest first.
    pub fn operations(&self) -> Result<Vec<UpdateOperation>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT body FROM operations ORDER BY seq DESC")?;
        let bodies: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        bodies.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
    }

    /// Operations not yet finished.
    pub fn running_count(&self) -> Result<usize, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM operations WHERE status IN ('NotStarted', 'Running')",
            [],
            |r| r.get(0),
        )?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Every update, in import order.
    pub fn updates(&self) -> Result<Vec<Update>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT body FROM updates ORDER BY seq")?;
        let bodies: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        bodies.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
    }

    /// One update.
    pub fn update(&self, id: &UpdateId) -> Result<Option<Update>, StoreError> {
        let (p, n, v) = id_params(id);
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT body FROM updates WHERE provider = ?1 AND name = ?2 AND version = ?3",
                params![p, n, v],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match body {
            Some(b) => Some(serde_json::from_str(&b)?),
            None => None,
        })
    }

    /// File ids of an update.
    pub fn file_ids(&self, id: &UpdateId) -> Result<Vec<String>, StoreError> {
        let (p, n, v) = id_params(id);
        let mut stmt = self.conn.prepare("SELECT file_id FROM files WHERE provider = ?1 AND name = ?2 AND version = ?3 ORDER BY file_id")?;
        let ids = stmt.query_map(params![p, n, v], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// One file document.
    pub fn file(&self, id: &UpdateId, file_id: &str) -> Result<Option<UpdateFile>, StoreError> {
        let (p, n, v) = id_params(id);
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM files WHERE provider = ?1 AND name = ?2 AND version = ?3 AND file_id = ?4", params![p, n, v, file_id], |r| r.get(0))
            .optional()?;
        Ok(match body {
            Some(b) => Some(serde_json::from_str(&b)?),
            None => None,
        })
    }

    /// Makes an import visible: every update and file, and the operation's final state, in one
    /// transaction.
    pub fn commit_import(
        &mut self,
        updates: &[NewUpdate],
        op: &UpdateOperation,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for u in updates {
            let (p, n, v) = id_params(&u.update.update_id);
            tx.execute(
                "INSERT INTO updates (provider, name, version, body, seq)
                 VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM updates))",
                params![p, n, v, serde_json::to_string(&u.update)?],
            )?;
            for f in &u.files {
                tx.execute(
                    "INSERT INTO files (provider, name, version, file_id, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![p, n, v, f.file_id, serde_json::to_string(f)?],
                )?;
            }
        }
        finish_operation(&tx, op)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes an update and its files, and records the operation's end, in one transaction.
    pub fn commit_delete(&mut self, id: &UpdateId, op: &UpdateOperation) -> Result<(), StoreError> {
        let (p, n, v) = id_params(id);
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM files WHERE provider = ?1 AND name = ?2 AND version = ?3",
            params![p, n, v],
        )?;
        tx.execute(
            "DELETE FROM updates WHERE provider = ?1 AND name = ?2 AND version = ?3",
            params![p, n, v],
        )?;
        finish_operation(&tx, op)?;
        tx.commit()?;
        Ok(())
    }

    /// Creates a device identity with `device_key`; `None` when it exists already.
    pub fn create_device(
        &mut self,
        device_id: &str,
        device_key: &str,
        now: &str,
        iot_edge: bool,
    ) -> Result<Option<DeviceRow>, StoreError> {
        let mut twin = crate::iothub::Twin {
            device_id: device_id.to_owned(),
            version: Some(1),
            ..Default::default()
        };
        twin.capabilities = Some(crate::iothub::Capabilities { iot_edge });
        let (group, slim) = derived(&twin)?;
        let tx = self.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO devices
                 (device_id, seq, device_key, created, version, twin, group_id, slim)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM devices), ?2, ?3, 1, ?4, ?5, ?6)",
            params![device_id, device_key, now, serde_json::to_string(&twin)?, group, slim],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        if iot_edge {
            // IoT Hub creates the runtime's two module identities with an Edge device.
            modules::create_runtime_modules(&tx, device_id)?;
        }
        tx.commit()?;
        self.device(device_id)
    }

    /// One device identity with its twin.
    pub fn device(&self, device_id: &str) -> Result<Option<DeviceRow>, StoreError> {
        let row: Option<(String, String, i64, String)> = self
            .conn
            .query_row(
                "SELECT device_key, created, version, twin FROM devices WHERE device_id = ?1",
                [device_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((device_key, created, version, twin)) = row else { return Ok(None) };
        Ok(Some(DeviceRow {
            device_id: device_id.to_owned(),
            device_key,
            created,
            twin: twin_doc(device_id, version, &twin)?,
        }))
    }

    /// Deletes a device identity, its twin and its module twins; false when there was none.
    pub fn delete_device(&mut self, device_id: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let gone = tx.execute("DELETE FROM devices WHERE device_id = ?1", [device_id])? > 0;
        tx.execute("DELETE FROM modules WHERE device_id = ?1", [device_id])?;
        tx.execute("DELETE FROM edge_assignments WHERE device_id = ?1", [device_id])?;
        tx.execute("DELETE FROM device_results WHERE device_id = ?1", [device_id])?;
        tx.commit()?;
        self.forget_identities(device_id)?;
        Ok(gone)
    }

    /// Merges `tags` and `desired` into a twin (the back end's patch); with `if_match` other
    /// than `*`, only when the twin's ETag is that one; refused when the result would break
    /// IoT Hub's twin rules. Bumps the twin's version.
    pub fn patch_twin(
        &mut self,
        device_id: &str,
        tags: Option<&serde_json::Map<String, Value>>,
        desired: Option<&serde_json::Map<String, Value>>,
        if_match: Option<&str>,
    ) -> Result<Outcome<crate::iothub::Twin>, StoreError> {
        let tx = self.conn.transaction()?;
        let patched = patch_twin_in(&tx, device_id, tags, desired, if_match, Writer::Client)?;
        if patched.is_ok() {
            tx.commit()?;
        }
        Ok(patched)
    }

    /// Writes each device's desired properties as serve does for a deployment (each top-level
    /// property given replaces the one before whole), all in one transaction (a rollout writes
    /// a group's twins at once, not one commit per device); returns each written device with
    /// its twin's new version (devices gone meanwhile are left out).
    pub fn patch_desired_many(
        &mut self,
        patches: &[(String, serde_json::Map<String, Value>)],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut done = Vec::with_capacity(patches.len());
        for (id, patch) in patches {
            let written = patch_twin_in(&tx, id, None, Some(patch), None, Writer::Serve)?;
            if let Ok(t) = written {
                done.push((id.clone(), t.version.unwrap_or_default()));
            }
        }
        tx.commit()?;
        Ok(done)
    }

    /// Merges a device's own report into its reported properties (the version of tags and
    /// desired properties, and so the ETag, does not change) and bumps
    /// `properties.reported.$version` (what the MQTT answer to a report names); refused when
    /// the result would break IoT Hub's twin rules.
    pub fn patch_reported(
        &mut self,
        device_id: &str,
        reported: &serde_json::Map<String, Value>,
    ) -> Result<Outcome<crate::iothub::Twin>, StoreError> {
        let tx = self.conn.transaction()?;
        let patched = patch_reported_in(&tx, device_id, reported)?;
        if patched.is_ok() {
            tx.commit()?;
        }
        Ok(patched)
    }

    /// Creates or replaces a deployment. A new one becomes its group's active deployment and
    /// makes the one before inactive (superseded), in one transaction. Returns whether it was
    /// new; `Err(limit)` when the instance already holds `max_total` deployments.
    pub fn put_deployment(
        &mut self,
        d: &crate::service::model::Deployment,
        max_total: usize,
    ) -> Result<Outcome<bool>, StoreError> {
        let tx = self.conn.transaction()?;
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM deployments WHERE group_id = ?1 AND deployment_id = ?2",
                params![d.group_id.as_str(), d.deployment_id.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let body = serde_json::to_string(d)?;
        if exists {
            tx.execute(
                "UPDATE deployments SET body = ?3 WHERE group_id = ?1 AND deployment_id = ?2",
                params![d.group_id.as_str(), d.deployment_id.as_str(), body],
            )?;
        } else {
            let total: i64 = tx.query_row("SELECT COUNT(*) FROM deployments", [], |r| r.get(0))?;
            if usize::try_from(total).unwrap_or(usize::MAX) >= max_total {
                return Ok(Err(Refusal::TooManyDeployments(max_total)));
            }
            tx.execute(
                "UPDATE deployments SET state = 'Inactive' WHERE group_id = ?1 AND state = 'Active'",
                [d.group_id.as_str()],
            )?;
            tx.execute(
                "INSERT INTO deployments (group_id, deployment_id, seq, state, body)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments), 'Active', ?3)",
                params![d.group_id.as_str(), d.deployment_id.as_str(), body],
            )?;
        }
        tx.commit()?;
        Ok(Ok(!exists))
    }

    /// One deployment of a group.
    pub fn deployment(
        &self,
        group_id: &str,
        deployment_id: &str,
    ) -> Result<Option<StoredDeployment>, StoreError> {
        let row: Option<(String, String, String)> = self
            .conn
            .query_row(
                "SELECT state, body, subgroups FROM deployments WHERE group_id = ?1 AND deployment_id = ?2",
                params![group_id, deployment_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(stored).transpose()
    }

    /// Every group's active deployment.
    pub fn active_deployments(&self) -> Result<Vec<StoredDeployment>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT state, body, subgroups FROM deployments WHERE state = 'Active' ORDER BY seq",
        )?;
        let rows: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(stored).collect()
    }

    /// The deployments of a group, newest first.
    pub fn deployments(&self, group_id: &str) -> Result<Vec<StoredDeployment>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT state, body, subgroups FROM deployments WHERE group_id = ?1 ORDER BY seq DESC",
        )?;
        let rows: Vec<(String, String, String)> = stmt
            .query_map([group_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(stored).collect()
    }

    /// Applies `act` to one subgroup of a deployment; the whole deployment is `Canceled` once
    /// every subgroup is. Returns the deployment after, or `None` when there is none.
    pub fn act_on_subgroup(
        &mut self,
        group_id: &str,
        deployment_id: &str,
        class_id: &str,
        act: impl FnOnce(&mut SubgroupActions),
    ) -> Result<Option<StoredDeployment>, StoreError> {
        let tx = self.conn.transaction()?;
        let row: Option<(String, String, String)> = tx
            .query_row(
                "SELECT state, body, subgroups FROM deployments WHERE group_id = ?1 AND deployment_id = ?2",
                params![group_id, deployment_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        let mut d = stored(row)?;
        act(d.subgroups.entry(class_id.to_owned()).or_default());
        let gone = |c: &String| d.subgroups.get(c).is_some_and(|s| s.deleted);
        let kept: Vec<String> = d
            .deployment
            .device_class_subgroups
            .iter()
            .flatten()
            .filter(|c| !gone(c))
            .cloned()
            .collect();
        d.deployment.device_class_subgroups = Some(kept);
        let classes: Vec<&String> = d.deployment.device_class_subgroups.iter().flatten().collect();
        if classes.iter().all(|c| d.subgroups.get(*c).is_some_and(|s| s.canceled)) {
            d.state = DeploymentState::Canceled;
            d.deployment.is_canceled = Some(true);
        }
        if d.subgroups.values().any(|s| s.retry_count > 0) {
            d.deployment.is_retried = Some(true);
        }
        tx.execute(
            "UPDATE deployments SET state = ?3, body = ?4, subgroups = ?5 WHERE group_id = ?1 AND deployment_id = ?2",
            params![
                group_id,
                deployment_id,
                d.state.as_str(),
                serde_json::to_string(&d.deployment)?,
                serde_json::to_string(&d.subgroups)?
            ],
        )?;
        tx.commit()?;
        Ok(Some(d))
    }

    /// Device class friendly names, by class id.
    pub fn class_names(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT device_class_id, friendly_name FROM device_classes")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Sets (or, with `None`, removes) a device class's friendly name.
    pub fn set_class_name(&self, class_id: &str, name: Option<&str>) -> Result<(), StoreError> {
        match name {
            Some(n) => self.conn.execute(
                "INSERT INTO device_classes (device_class_id, friendly_name) VALUES (?1, ?2)
                 ON CONFLICT(device_class_id) DO UPDATE SET friendly_name = excluded.friendly_name",
                params![class_id, n],
            )?,
            None => self
                .conn
                .execute("DELETE FROM device_classes WHERE device_class_id = ?1", [class_id])?,
        };
        Ok(())
    }

    /// The groups that have deployments.
    pub fn deployment_groups(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT DISTINCT group_id FROM deployments ORDER BY group_id")?;
        let rows = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Deletes a deployment; false when there was none.
    pub fn delete_deployment(
        &self,
        group_id: &str,
        deployment_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM deployments WHERE group_id = ?1 AND deployment_id = ?2",
            params![group_id, deployment_id],
        )? > 0)
    }

    /// Creates or replaces a configuration: a new one gets its creation time and ETag; a
    /// replacement must name the current ETag (or `*`) and keep the content, and may change
    /// labels, metric queries, priority and target condition.
    pub fn put_configuration(
        &mut self,
        mut c: crate::iothub::config::Configuration,
        if_match: Option<&str>,
        now: &str,
        max: usize,
    ) -> Result<Outcome<crate::iothub::config::Configuration>, StoreError> {
        use crate::iothub::config::Configuration;
        let tx = self.conn.transaction()?;
        let old: Option<String> = tx
            .query_row("SELECT body FROM configurations WHERE id = ?1", [&c.id], |r| r.get(0))
            .optional()?;
        let etag = format!("\"{}\"", uuid::Uuid::new_v4().simple());
        match old {
            Some(text) => {
                let old: Configuration = serde_json::from_str(&text)?;
                if if_match.is_some_and(|m| {
                    !crate::iothub::if_match_any(m) && Some(m) != old.etag.as_deref()
                }) {
                    return Ok(Err(Refusal::Stale("configuration")));
                }
                if !c.content.is_empty() && c.content != old.content {
                    return Ok(Err(Refusal::ContentChanged));
                }
                c.content = old.content;
                c.created_time_utc = old.created_time_utc;
                c.schema_version = c.schema_version.or(old.schema_version);
            }
            None => {
                let n: i64 =
                    tx.query_row("SELECT COUNT(*) FROM configurations", [], |r| r.get(0))?;
                if n as usize >= max {
                    return Ok(Err(Refusal::TooManyConfigurations(max)));
                }
                c.created_time_utc = Some(now.to_owned());
            }
        }
        c.last_updated_time_utc = Some(now.to_owned());
        c.etag = Some(etag);
        c.system_metrics.results.clear();
        c.metrics.results.clear();
        let body = serde_json::to_string(&c)?;
        tx.execute(
            "INSERT INTO configurations (id, seq, body)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM configurations), ?2)
             ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            params![c.id, body],
        )?;
        tx.commit()?;
        Ok(Ok(c))
    }

    /// One configuration.
    pub fn configuration(
        &self,
        id: &str,
    ) -> Result<Option<crate::iothub::config::Configuration>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT body FROM configurations WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(match text {
            Some(t) => Some(serde_json::from_str(&t)?),
            None => None,
        })
    }

    /// Every configuration, oldest first.
    pub fn configurations(&self) -> Result<Vec<crate::iothub::config::Configuration>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT body FROM configurations ORDER BY seq")?;
        let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        rows.iter().map(|t| Ok(serde_json::from_str(t)?)).collect()
    }

    /// Deletes a configuration; `Ok(None)` when there is none, `Ok(Some(false))` when
    /// `if_match` names another version.
    pub fn delete_configuration(
        &mut self,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<Outcome<()>, StoreError> {
        let Some(c) = self.configuration(id)? else { return Ok(Err(Refusal::NoConfiguration)) };
        if if_match.is_some_and(|m| !crate::iothub::if_match_any(m) && Some(m) != c.etag.as_deref())
        {
            return Ok(Err(Refusal::Stale("configuration")));
        }
        self.conn.execute("DELETE FROM configurations WHERE id = ?1", [id])?;
        Ok(Ok(()))
    }

    /// Every twin, whole, in registry order (for target conditions and metric queries).
    pub fn full_twins(&self) -> Result<Vec<crate::iothub::Twin>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT device_id, version, twin FROM devices ORDER BY seq")?;
        let rows: Vec<(String, i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(|(id, v, t)| twin_doc(&id, v, &t)).collect()
    }

    /// Every device's slim twin (see [`derived`]: group tag, agent, desired workflow) with its
    /// identity's creation time, in registry order.
    pub fn twins_with_created(&self) -> Result<Vec<(crate::iothub::Twin, String)>, StoreError> {
        Ok(self.registry_twins(None)?.into_iter().map(|r| (r.twin, r.created)).collect())
    }

    /// The slim twins (see [`derived`]) of one group (`$default`: those without an `ADUGroup`
    /// tag), with their identities' creation times, in registry order; an index selects them,
    /// so a group's status costs its own devices, not the registry's.
    pub fn group_twins(
        &self,
        group: &str,
    ) -> Result<Vec<(crate::iothub::Twin, String)>, StoreError> {
        Ok(self.registry_twins(Some(group))?.into_iter().map(|r| (r.twin, r.created)).collect())
    }

    /// The slim twins (see [`derived`]) of every device, or of one group's, with their
    /// registry positions and creation times, in registry order.
    pub fn registry_twins(&self, group: Option<&str>) -> Result<Vec<Registered>, StoreError> {
        let sql = match group {
            None => "SELECT seq, device_id, version, slim, created FROM devices ORDER BY seq",
            Some("$default") => {
                "SELECT seq, device_id, version, slim, created FROM devices
                 WHERE group_id IS NULL ORDER BY seq"
            }
            Some(_) => {
                "SELECT seq, device_id, version, slim, created FROM devices
                 WHERE group_id = ?1 ORDER BY seq"
            }
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let map =
            |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
        let rows: Vec<(i64, String, i64, String, String)> = match group {
            Some(g) if g != "$default" => stmt.query_map([g], map)?.collect::<Result<_, _>>()?,
            _ => stmt.query_map([], map)?.collect::<Result<_, _>>()?,
        };
        rows.into_iter()
            .map(|(seq, id, v, t, created)| {
                Ok(Registered { seq, twin: twin_doc(&id, v, &t)?, created })
            })
            .collect()
    }

    /// The slim twins (see [`derived`]) of the devices named, as [`Store::registry_twins`]
    /// gives them; `None` for a device that does not exist.
    pub fn registered(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, Option<Registered>)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, version, slim, created FROM devices WHERE device_id = ?1",
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<(i64, i64, String, String)> = stmt
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            let found = match row {
                Some((seq, v, t, created)) => {
                    Some(Registered { seq, twin: twin_doc(id, v, &t)?, created })
                }
                None => None,
            };
            out.push((id.clone(), found));
        }
        Ok(out)
    }

    /// Up to `limit` twins after registry position `after`, in registry order, each with its
    /// position, and the position to continue from when there are more.
    pub fn twins_page(&self, after: i64, limit: usize) -> Result<TwinsPage, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, device_id, version, twin FROM devices WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows: Vec<(i64, String, i64, String)> = stmt
            .query_map(params![after, i64::try_from(limit + 1).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > limit;
        let mut twins = Vec::new();
        let mut last = after;
        for (seq, id, version, text) in rows.into_iter().take(limit) {
            twins.push((seq, twin_doc(&id, version, &text)?));
            last = seq;
        }
        Ok((twins, more.then_some(last)))
    }

    /// Checks the store's integrity (for tests and the soak run): every file belongs to an
    /// update, and no operation is half-finished when none runs.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let orphans: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM files f WHERE NOT EXISTS (SELECT 1 FROM updates u WHERE u.provider = f.provider AND u.name = f.name AND u.version = f.version)",
            [],
            |r| r.get(0),
        )?;
        if orphans > 0 {
            problems.push(format!("{orphans} files belong to no update"));
        }
        let ok: String = self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            problems.push(format!("sqlite integrity_check: {ok}"));
        }
        Ok(problems)
    }
}

/// The store as the async routes use it: every call runs on tokio's blocking pool. Writes go
/// through the one writer connection, one at a time; reads take a read-only connection of a
/// small pool, so a GET never waits behind an import's commit.
#[derive(Clone)]
pub struct Db {
    store: Arc<Mutex<Store>>,
    path: Arc<std::path::PathBuf>,
    readers: Arc<Mutex<Vec<Store>>>,
    /// Reads under way at once (each holds a connection and a blocking thread).
    reading: Arc<tokio::sync::Semaphore>,
    /// Writes wait their turn here, not as blocked threads on the store's lock.
    writing: Arc<tokio::sync::Semaphore>,
    /// Write calls finished so far: what was computed from a read made after generation N
    /// is current while the generation is still N.
    writes: Arc<std::sync::atomic::AtomicU64>,
    /// What the writes changed, published after each write call, before the generation moves.
    changes: changes::Changes,
    /// The generation, announced after every write (the dashboard's live updates wait on it).
    announce: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Read connections: at most this many reads run at once (the rest wait their turn, so
/// thousands of devices waiting on their twins cost a few connections, not one each).
const READERS: usize = 8;

impl Db {
    /// Wraps an open store; readers open `path`, the same database.
    pub fn new(store: Store, path: &Path) -> Self {
        Self {
            changes: store.changes.clone(),
            store: Arc::new(Mutex::new(store)),
            path: Arc::new(path.to_owned()),
            readers: Arc::new(Mutex::new(Vec::new())),
            reading: Arc::new(tokio::sync::Semaphore::new(READERS)),
            writing: Arc::new(tokio::sync::Semaphore::new(1)),
            writes: Arc::default(),
            announce: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// How many write calls have finished; read it before a read whose result is cached.
    pub fn generation(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The change log's mark ([`changes::ChangeLog::mark`]): read it, with the generation,
    /// before reading what a kept view is made of.
    pub fn change_mark(&self) -> u64 {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).mark()
    }

    /// What changed after `mark` ([`changes::ChangeLog::since`]).
    pub fn changes_since(&self, mark: u64) -> Option<changes::Since> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).since(mark)
    }

    /// The generation as it moves: a receiver that wakes after each write.
    pub fn generations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.announce.subscribe()
    }

    /// Runs `f` on a read-only connection, on the blocking pool.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (readers, path) = (self.readers.clone(), self.path.clone());
        let turn = self.reading.clone().acquire_owned().await;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let idle = readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let reader = match idle {
                Some(r) => r,
                None => Store::open_reader(&path)?,
            };
            let result = f(&reader);
            readers.lock().unwrap_or_else(|p| p.into_inner()).push(reader);
            result
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (store, writes) = (self.store.clone(), self.writes.clone());
        let announce = self.announce.clone();
        let turn = self.writing.clone().acquire_owned().await;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut guard = match store.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let result = f(&mut guard);
            guard.changes.lock().unwrap_or_else(|p| p.into_inner()).publish();
            let now = writes.fetch_add(1, std::sync::atomic::Ordering::Release) + 1;
            announce.send_replace(now);
            result
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, status: OperationStatus, at: &str) -> UpdateOperation {
        serde_json::from_value(serde_json::json!({
            "operationId": id, "status": status.as_str(), "lastActionDateTime": at,
        }))
        .unwrap()
    }

    #[test]
    fn finished_operations_are_dropped_by_age_and_count_running_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(&dir.path().join("s.sqlite"), "2026-11-29T00:00:00.000Z").unwrap();
        st.put_operation(&op("old", OperationStatus::Succeeded, "2026-11-01T00:00:00.000Z"), None)
            .unwrap();
        st.put_operation(
            &op("old-running", OperationStatus::Running, "2026-11-01T00:00:00.000Z"),
            None,
        )
        .unwrap();
        for i in 0..5 {
            st.put_operation(
                &op(&format!("new{i}"), OperationStatus::Failed, "2026-11-28T00:00:00.000Z"),
                None,
            )
            .unwrap();
        }
        assert_eq!(st.prune_operations("2026-11-22T00:00:00.000Z", 3).unwrap(), 3);
        let left: Vec<String> =
            st.operations().unwrap().into_iter().map(|o| o.operation_id).collect();
        assert_eq!(left, ["new4", "new3", "new2", "old-running"]);
    }

    #[test]
    fn a_deployment_replaces_the_file_urls_of_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("s.sqlite"), "2026-12-01T00:00:00.000Z").unwrap();
        st.create_device("d", "a2V5", "2026-12-01T00:00:00.000Z", false).unwrap();
        let service = |urls: Value| {
            let v =
                serde_json::json!({"deviceUpdate": {"__t": "c", "service": {"fileUrls": urls}}});
            v.as_object().unwrap().clone()
        };
        let first =
            service(serde_json::json!({"f1": "http://x/1?sig=a", "f2": "http://x/2?sig=b"}));
        st.patch_desired_many(&[("d".into(), first)]).unwrap();
        st.patch_desired_many(&[("d".into(), service(serde_json::json!({"f3": "http://x/3"})))])
            .unwrap();
        let twin = st.device("d").unwrap().unwrap().twin;
        let urls = &twin.properties.desired["deviceUpdate"]["service"]["fileUrls"];
        // Each URL is a live read grant: the earlier deployment's must not stay.
        assert_eq!(urls, &serde_json::json!({"f3": "http://x/3"}));
        // A client's patch still merges, and keeps IoT Hub's twin rules.
        let patch = serde_json::json!({"other": 1}).as_object().unwrap().clone();
        assert!(st.patch_twin("d", None, Some(&patch), None).unwrap().is_ok());
        let bad = serde_json::json!({"a.b": 1}).as_object().unwrap().clone();
        assert!(matches!(
            st.patch_twin("d", None, Some(&bad), None).unwrap(),
            Err(Refusal::Rules(_))
        ));
        let twin = st.device("d").unwrap().unwrap().twin;
        assert_eq!(twin.properties.desired["other"], 1);
        assert!(twin.properties.desired["deviceUpdate"]["service"]["fileUrls"].get("f3").is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_do_not_wait_behind_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let st = Store::open(&path, "2026-11-29T00:00:00.000Z").unwrap();
        st.put_operation(&op("a", OperationStatus::Succeeded, "2026-11-28T00:00:00.000Z"), None)
            .unwrap();
        let db = Db::new(st, &path);
        // A write that holds the writer until told to finish.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, is_started) = std::sync::mpsc::channel::<()>();
        let writer = db.clone();
        let write = tokio::spawn(async move {
            writer
                .call(move |st| {
                    started.send(()).unwrap();
                    held.recv().unwrap();
                    st.put_operation(
                        &op("b", OperationStatus::Running, "2026-11-29T00:00:00.000Z"),
                        None,
                    )
                })
                .await
        });
        is_started.recv().unwrap();
        // The read completes while the writer is still held (it would deadlock otherwise).
        let seen = db.read(|st| st.operations()).await.unwrap();
        assert_eq!(seen.len(), 1);
        release.send(()).unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(db.read(|st| st.operations()).await.unwrap().len(), 2);
    }

    /// A store as the first release of `serve` wrote it: today's tables, `user_version` 0, and a
    /// file document whose related file uses the manifest's `filename`.
    #[test]
    fn a_store_from_the_first_release_opens_and_reads_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE updates (provider TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, body TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (provider, name, version));
                 CREATE TABLE files (provider TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, file_id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (provider, name, version, file_id));
                 CREATE TABLE operations (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL, request TEXT);",
            )
            .unwrap();
            let update = r#"{"updateId":{"provider":"contoso","name":"cam","version":"1.0"},"isDeployable":true,"compatibility":[{"model":"cam"}],"instructions":{"steps":[{"handler":"microsoft/script:1","files":["a.sh"]}]},"manifestVersion":"5.0","importedDateTime":"2026-01-01T00:00:00.000Z","createdDateTime":"2026-01-01T00:00:00Z","etag":"\"x\""}"#;
            let file = r#"{"fileId":"f1","fileName":"a.sh","sizeInBytes":3,"hashes":{"sha256":"AAAA"},"relatedFiles":[{"filename":"d.bin","sizeInBytes":1,"hashes":{"sha256":"BBBB"}}],"downloadHandler":{"id":"otaforge/delta:1"}}"#;
            c.execute("INSERT INTO updates VALUES ('contoso','cam','1.0',?1,1)", [update]).unwrap();
            c.execute("INSERT INTO files VALUES ('contoso','cam','1.0','f1',?1)", [file]).unwrap();
            c.execute(
                "INSERT INTO operations VALUES ('op1',1,'Running',?1,NULL)",
                [r#"{"operationId":"op1","status":"Running"}"#],
            )
            .unwrap();
        }
        let store = Store::open(&path, "2026-02-02T00:00:00.000Z").unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.last().unwrap().version);
        let id: UpdateId = "contoso/cam/1.0".parse().unwrap();
        let u = store.update(&id).unwrap().unwrap();
        assert_eq!(u.update_id, id);
        let f = store.file(&id, "f1").unwrap().unwrap();
        assert_eq!(f.related_files[0].file_name, "d.bin");
        let op = store.operation("op1").unwrap().unwrap();
        assert_eq!(op.status, OperationStatus::Failed);
        assert_eq!(op.error.unwrap().code, "OperationInterrupted");
        drop(store);
        // Opening again changes nothing.
        let store = Store::open(&path, "2026-02-03T00:00:00.000Z").unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.last().unwrap().version);
        assert!(store.check().unwrap().is_empty());
    }

    #[test]
    fn a_write_that_reads_first_waits_for_a_moment_of_another_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sqlite");
        let mut store = Store::open(&path, "2026-02-02T00:00:00.000Z").unwrap();
        store.create_device("d1", "key", "2026-02-02T00:00:00.000Z", false).unwrap().unwrap();
        // Another connection holds the write lock for 300 ms, as a reader repairing the
        // wal-index header does for a moment.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (held, release) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            held.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            other.execute_batch("COMMIT").unwrap();
        });
        release.recv().unwrap();
        let tags = serde_json::json!({"ring": "canary"});
        // The PATCH reads the twin, then writes it: it must wait, not fail with "locked".
        let patched = store.patch_twin("d1", tags.as_object(), None, None).unwrap().unwrap();
        assert_eq!(patched.tags["ring"], "canary");
        holder.join().unwrap();
    }

    #[test]
    fn a_store_from_a_newer_otaforge_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.sqlite");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&path, "now"), Err(StoreError::TooNew { found: 99, .. })));
    }
}

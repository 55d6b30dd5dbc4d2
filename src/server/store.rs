//! The embedded service's SQLite store (WAL, `synchronous=FULL`).
//!
//! An import becomes visible in one transaction that inserts every update and file of the
//! request and marks the operation `Succeeded`; until then nothing of it can be read. At start,
//! operations left `NotStarted` or `Running` by a killed process are marked `Failed`, so a crash
//! at any moment leaves a consistent store.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use crate::service::{ErrorBody, OperationStatus, UpdateOperation};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored document does not parse.
    #[error("store: corrupt document: {0}")]
    Json(#[from] serde_json::Error),
}

/// The status as stored (`Succeeded`, ...).
fn status_name(op: &UpdateOperation) -> Result<String, StoreError> {
    Ok(serde_json::to_value(op.status)?.as_str().unwrap_or("Failed").to_owned())
}

/// Records an operation's final state inside a transaction.
fn finish_operation(
    tx: &rusqlite::Transaction<'_>,
    op: &UpdateOperation,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE operations SET status = ?2, body = ?3 WHERE id = ?1",
        params![op.operation_id, status_name(op)?, serde_json::to_string(op)?],
    )?;
    Ok(())
}

/// One imported update: its identity, the service's JSON, and its files.
#[derive(Debug, Clone)]
pub struct NewUpdate {
    /// Provider.
    pub provider: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The `Update` document.
    pub body: Value,
    /// `(fileId, UpdateFile document)`.
    pub files: Vec<(String, Value)>,
}

/// The store.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating) the database at `path` and fails interrupted operations.
    pub fn open(path: &Path, now: &str) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
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
        let store = Self { conn };
        store.fail_interrupted(now)?;
        Ok(store)
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
        let status = status_name(op)?;
        let body = serde_json::to_string(op)?;
        self.conn.execute(
            "INSERT INTO operations (id, seq, status, body, request)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM operations), ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, body = excluded.body,
                request = COALESCE(excluded.request, operations.request)",
            params![op.operation_id, status, body, request],
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
        Ok(n as usize)
    }

    /// Every update document, in import order.
    pub fn updates(&self) -> Result<Vec<Value>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT body FROM updates ORDER BY seq")?;
        let bodies: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        bodies.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
    }

    /// One update document.
    pub fn update(
        &self,
        provider: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<Value>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT body FROM updates WHERE provider = ?1 AND name = ?2 AND version = ?3",
                params![provider, name, version],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match body {
            Some(b) => Some(serde_json::from_str(&b)?),
            None => None,
        })
    }

    /// File ids of an update.
    pub fn file_ids(
        &self,
        provider: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT file_id FROM files WHERE provider = ?1 AND name = ?2 AND version = ?3 ORDER BY file_id")?;
        let ids = stmt
            .query_map(params![provider, name, version], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// One file document.
    pub fn file(
        &self,
        provider: &str,
        name: &str,
        version: &str,
        file_id: &str,
    ) -> Result<Option<Value>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM files WHERE provider = ?1 AND name = ?2 AND version = ?3 AND file_id = ?4", params![provider, name, version, file_id], |r| r.get(0))
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
            tx.execute(
                "INSERT INTO updates (provider, name, version, body, seq)
                 VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM updates))",
                params![u.provider, u.name, u.version, serde_json::to_string(&u.body)?],
            )?;
            for (id, f) in &u.files {
                tx.execute(
                    "INSERT INTO files (provider, name, version, file_id, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![u.provider, u.name, u.version, id, serde_json::to_string(f)?],
                )?;
            }
        }
        finish_operation(&tx, op)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes an update and its files, and records the operation's end, in one transaction.
    pub fn commit_delete(
        &mut self,
        provider: &str,
        name: &str,
        version: &str,
        op: &UpdateOperation,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM files WHERE provider = ?1 AND name = ?2 AND version = ?3",
            params![provider, name, version],
        )?;
        tx.execute(
            "DELETE FROM updates WHERE provider = ?1 AND name = ?2 AND version = ?3",
            params![provider, name, version],
        )?;
        finish_operation(&tx, op)?;
        tx.commit()?;
        Ok(())
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

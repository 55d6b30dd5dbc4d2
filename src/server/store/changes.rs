//! What the writes changed, for the views serve keeps in memory (`server::views::view_of`).
//!
//! Temporary triggers on the writer's connection call a function of ours for every row written
//! in the tables a Device Update view is made of: a device's row names the device (an update
//! only when its group or its agent's reported properties changed: a view reads nothing else
//! of it); a module's
//! row, an import (or a deleted update) and a class's friendly name each say which part of
//! every view they touch. The notes of a write call are
//! published when the call has finished (after its commit), before the store's generation
//! moves, so whoever reads the log's mark and then the rows never misses a committed change:
//! a change published later is seen by the next reader. A rolled-back write leaves notes of
//! rows that did not change; reading them again is harmless.
//!
//! The log keeps the last [`KEPT_CHANGES`] notes; a view older than that is rebuilt whole.
//! Temporary triggers live in this connection only: the schema on disk is not touched, and no
//! other program writing the file needs the function.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use super::StoreError;

/// Notes the log keeps.
pub const KEPT_CHANGES: usize = 65_536;

/// One note.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// A device's row was written (inserted, updated or deleted).
    Device(String),
    /// A module identity's row was written.
    Modules,
    /// The imported updates changed (an import, a deletion): every class's best update.
    Updates,
    /// A class's friendly name was written.
    ClassNames,
    /// More was written than the log keeps: every view is rebuilt.
    Everything,
}

/// What changed since a mark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Since {
    /// Devices whose rows were written.
    pub devices: BTreeSet<String>,
    /// Whether a module identity's row was written.
    pub modules: bool,
    /// Whether the imported updates changed.
    pub updates: bool,
    /// Whether a class's friendly name was written.
    pub class_names: bool,
}

/// The log of notes (see the module's doc).
#[derive(Debug, Default)]
pub struct ChangeLog {
    /// Notes of the write call under way.
    pending: Vec<Change>,
    /// Published notes, oldest first.
    log: VecDeque<Change>,
    /// The mark of `log[0]`.
    first: u64,
}

impl ChangeLog {
    fn note(&mut self, change: Change) {
        if self.pending.first() == Some(&Change::Everything) {
            // The write already changed what every view depends on: nothing to add.
            return;
        }
        if change == Change::Everything || self.pending.len() >= KEPT_CHANGES {
            // (A write touching more rows than the log keeps: a rebuild costs no more.)
            self.pending.clear();
            self.pending.push(Change::Everything);
            return;
        }
        if self.pending.last() != Some(&change) {
            self.pending.push(change);
        }
    }

    /// Publishes the notes of the write call that just finished.
    pub fn publish(&mut self) {
        for change in self.pending.drain(..) {
            if self.log.len() == KEPT_CHANGES {
                self.log.pop_front();
                self.first += 1;
            }
            self.log.push_back(change);
        }
    }

    /// The mark after the last published note: read it before reading the rows a view is made
    /// of, and keep it with the view.
    pub fn mark(&self) -> u64 {
        self.first + self.log.len() as u64
    }

    /// What changed after `mark`, or `None` when the log no longer reaches back to it (the
    /// view must be rebuilt whole).
    pub fn since(&self, mark: u64) -> Option<Since> {
        let skip = usize::try_from(mark.checked_sub(self.first)?).ok()?;
        let mut since = Since::default();
        for change in self.log.iter().skip(skip) {
            match change {
                Change::Device(id) => {
                    since.devices.insert(id.clone());
                }
                Change::Modules => since.modules = true,
                Change::Updates => since.updates = true,
                Change::ClassNames => since.class_names = true,
                Change::Everything => return None,
            }
        }
        Some(since)
    }
}

/// The log a writer connection fills.
pub type Changes = Arc<Mutex<ChangeLog>>;

/// Installs the function and the temporary triggers that note changes into `log`.
pub(super) fn watch(conn: &Connection, log: &Changes) -> Result<(), StoreError> {
    let sink = log.clone();
    conn.create_scalar_function(
        "otaforge_changed",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
        move |ctx| {
            let kind: String = ctx.get(0)?;
            let change = match kind.as_str() {
                "device" => Change::Device(ctx.get(1)?),
                "modules" => Change::Modules,
                "updates" => Change::Updates,
                "class_names" => Change::ClassNames,
                _ => Change::Everything,
            };
            sink.lock().unwrap_or_else(|p| p.into_inner()).note(change);
            Ok(0)
        },
    )?;
    let mut sql = String::new();
    for (table, kind, key) in [
        ("devices", "device", "device_id"),
        ("modules", "modules", "NULL"),
        ("updates", "updates", "NULL"),
        ("device_classes", "class_names", "NULL"),
    ] {
        let (new, old) = if key == "NULL" {
            ("NULL".to_owned(), "NULL".to_owned())
        } else {
            (format!("NEW.{key}"), format!("OLD.{key}"))
        };
        // A view reads a device's group and its agent's reported properties (the slim twin's
        // `properties.reported`), nothing else: a write of desired properties alone (every
        // device of a group, when a deployment starts) changes no view.
        let when = if table == "devices" {
            "WHEN OLD.group_id IS NOT NEW.group_id
               OR json_extract(OLD.slim, '$.properties.reported')
                  IS NOT json_extract(NEW.slim, '$.properties.reported')"
        } else {
            ""
        };
        sql.push_str(&format!(
            "CREATE TEMP TRIGGER IF NOT EXISTS otaforge_{table}_inserted AFTER INSERT ON main.{table}
               BEGIN SELECT otaforge_changed('{kind}', {new}); END;
             CREATE TEMP TRIGGER IF NOT EXISTS otaforge_{table}_updated AFTER UPDATE ON main.{table} {when}
               BEGIN SELECT otaforge_changed('{kind}', {old}); SELECT otaforge_changed('{kind}', {new}); END;
             CREATE TEMP TRIGGER IF NOT EXISTS otaforge_{table}_deleted AFTER DELETE ON main.{table}
               BEGIN SELECT otaforge_changed('{kind}', {old}); END;\n"
        ));
    }
    conn.execute_batch(&sql)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn notes_count_once_published_and_the_log_forgets_what_it_cannot_keep() {
        let mut log = ChangeLog::default();
        let start = log.mark();
        log.note(Change::Device("a".into()));
        assert_eq!(log.mark(), start, "unpublished notes are not behind any mark");
        assert_eq!(log.since(start).unwrap(), Since::default());
        log.publish();
        let after_a = log.mark();
        log.note(Change::Device("b".into()));
        log.note(Change::Modules);
        log.publish();
        assert_eq!(
            log.since(start).unwrap(),
            Since { devices: devices(&["a", "b"]), modules: true, ..Since::default() }
        );
        assert_eq!(log.since(after_a).unwrap().devices, devices(&["b"]));
        assert_eq!(log.since(log.mark()).unwrap(), Since::default());
        log.note(Change::Updates);
        log.publish();
        let since = log.since(after_a).unwrap();
        assert!(since.updates && !since.class_names, "an import is told apart from devices");
        log.note(Change::Everything);
        log.publish();
        assert_eq!(log.since(after_a), None, "a write too large for the log rebuilds views");
        let now = log.mark();
        for i in 0..=KEPT_CHANGES {
            log.note(Change::Device(i.to_string()));
            log.publish();
        }
        assert_eq!(log.since(now), None, "the log no longer reaches back");
        assert_eq!(log.since(log.mark() - 1).unwrap().devices.len(), 1);
    }

    #[test]
    fn a_write_of_more_rows_than_the_log_keeps_is_one_note_of_everything() {
        let mut log = ChangeLog::default();
        let start = log.mark();
        for i in 0..=KEPT_CHANGES {
            log.note(Change::Device(i.to_string()));
        }
        log.publish();
        assert_eq!(log.mark(), start + 1);
        assert_eq!(log.since(start), None);
    }

    #[test]
    fn the_triggers_note_rows_written_in_the_tables_a_view_is_made_of() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE devices (device_id TEXT PRIMARY KEY, v INTEGER, group_id TEXT, slim TEXT);
             CREATE TABLE modules (device_id TEXT, module_id TEXT);
             CREATE TABLE updates (body TEXT);
             CREATE TABLE device_classes (id TEXT);
             CREATE TABLE deployments (id TEXT);",
        )
        .unwrap();
        let log = Changes::default();
        watch(&conn, &log).unwrap();
        let since = |mark| log.lock().unwrap().since(mark);
        conn.execute_batch(
            "INSERT INTO devices VALUES ('d1', 1, NULL, '{}'), ('d2', 1, NULL, '{}');
             UPDATE devices SET v = 2, slim = '{\"properties\":{\"reported\":{\"a\":1}}}'
               WHERE device_id = 'd2';
             INSERT INTO deployments VALUES ('x');",
        )
        .unwrap();
        log.lock().unwrap().publish();
        assert_eq!(
            since(0).unwrap(),
            Since { devices: devices(&["d1", "d2"]), ..Since::default() }
        );
        // Desired properties alone (a deployment written into twins): no view changes.
        let mark = log.lock().unwrap().mark();
        conn.execute_batch(
            "UPDATE devices SET v = 3, slim = '{\"properties\":{\"reported\":{\"a\":1},
               \"desired\":{\"w\":1}}}' WHERE device_id = 'd2'",
        )
        .unwrap();
        log.lock().unwrap().publish();
        assert_eq!(since(mark).unwrap(), Since::default());
        // A group moved: it does.
        conn.execute_batch("UPDATE devices SET group_id = 'g' WHERE device_id = 'd2'").unwrap();
        log.lock().unwrap().publish();
        assert_eq!(since(mark).unwrap().devices, devices(&["d2"]));
        let mark = log.lock().unwrap().mark();
        conn.execute_batch("DELETE FROM devices WHERE device_id = 'd1'").unwrap();
        conn.execute_batch("INSERT INTO modules VALUES ('d2', 'm')").unwrap();
        log.lock().unwrap().publish();
        assert_eq!(
            since(mark).unwrap(),
            Since { devices: devices(&["d1"]), modules: true, ..Since::default() }
        );
        let mark = log.lock().unwrap().mark();
        conn.execute_batch("INSERT INTO updates VALUES ('{}')").unwrap();
        log.lock().unwrap().publish();
        assert_eq!(since(mark).unwrap(), Since { updates: true, ..Since::default() });
        let mark = log.lock().unwrap().mark();
        conn.execute_batch("INSERT INTO device_classes VALUES ('c')").unwrap();
        log.lock().unwrap().publish();
        assert_eq!(since(mark).unwrap(), Since { class_names: true, ..Since::default() });
    }
}

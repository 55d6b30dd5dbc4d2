//! Identities as IoT Hub has them, beyond the device rows: each identity's symmetric keys
//! (a device's secondary key, a module's primary and secondary), and what an MQTT session of
//! an identity keeps across connections (its subscriptions, when it connected with
//! CleanSession 0) — <https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub>.
//!
//! An identity is keyed as its MQTT client id: `device` or `device/module`.

use rusqlite::{OptionalExtension as _, params};
use serde_json::{Value, json};

use super::{Outcome, Refusal, Store, StoreError};
use crate::iothub::Twin;
use crate::iothub::limits::MAX_MODULES_PER_DEVICE;

pub(super) fn migrate_11(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS identity_keys (
            identity TEXT PRIMARY KEY, primary_key TEXT NOT NULL, secondary_key TEXT);
         CREATE TABLE IF NOT EXISTS mqtt_sessions (
            identity TEXT PRIMARY KEY, subscriptions INTEGER NOT NULL);",
    )?;
    Ok(())
}

/// An identity's symmetric keys (base64; secrets: the data dir is private).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The primary key.
    pub primary: String,
    /// The secondary key, when it has one.
    pub secondary: Option<String>,
}

impl Keys {
    /// Both keys, primary first.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary.as_str()).chain(self.secondary.as_deref())
    }
}

fn module_exists(
    conn: &rusqlite::Connection,
    device: &str,
    module: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM modules WHERE device_id = ?1 AND module_id = ?2",
            params![device, module],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn stored_keys(conn: &rusqlite::Connection, identity: &str) -> Result<Option<Keys>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT primary_key, secondary_key FROM identity_keys WHERE identity = ?1",
            [identity],
            |r| Ok(Keys { primary: r.get(0)?, secondary: r.get(1)? }),
        )
        .optional()?)
}

/// One device's (or module's) report, for [`Store::patch_reported_batch`].
#[derive(Debug, Clone)]
pub struct Report {
    /// The device.
    pub device: String,
    /// The module, for a module's report.
    pub module: Option<String>,
    /// Its reported properties (a merge patch).
    pub patch: serde_json::Map<String, Value>,
}

impl Store {
    /// Many reports in one transaction (one commit for every device that reported meanwhile,
    /// not one each): each merged as [`Store::patch_reported`] or
    /// [`Store::patch_module_reported`] does, each refused on its own.
    pub fn patch_reported_batch(
        &mut self,
        reports: &[Report],
    ) -> Result<Vec<Outcome<Twin>>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(reports.len());
        for r in reports {
            out.push(match &r.module {
                Some(m) => super::modules::module_reported_in(&tx, &r.device, m, &r.patch)?,
                None => super::patch_reported_in(&tx, &r.device, &r.patch)?,
            });
        }
        tx.commit()?;
        Ok(out)
    }

    /// The keys of a device (`module` None) or module identity; `None` when there is no such
    /// identity, or a module has no keys yet ([`Store::module_keys`] makes them).
    pub fn identity_keys(
        &self,
        device: &str,
        module: Option<&str>,
    ) -> Result<Option<Keys>, StoreError> {
        match module {
            None => {
                let primary: Option<String> = self
                    .conn
                    .query_row(
                        "SELECT device_key FROM devices WHERE device_id = ?1",
                        [device],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(primary) = primary else { return Ok(None) };
                let secondary = stored_keys(&self.conn, device)?.and_then(|k| k.secondary);
                Ok(Some(Keys { primary, secondary }))
            }
            Some(m) => {
                if !module_exists(&self.conn, device, m)? {
                    return Ok(None);
                }
                stored_keys(&self.conn, &format!("{device}/{m}"))
            }
        }
    }

    /// A device's secondary key, as the caller gave it on create.
    pub fn set_secondary_key(&mut self, device: &str, key: &str) -> Result<(), StoreError> {
        let primary: String = self.conn.query_row(
            "SELECT device_key FROM devices WHERE device_id = ?1",
            [device],
            |r| r.get(0),
        )?;
        self.conn.execute(
            "INSERT OR REPLACE INTO identity_keys (identity, primary_key, secondary_key)
             VALUES (?1, ?2, ?3)",
            params![device, primary, key],
        )?;
        Ok(())
    }

    /// A module identity's keys, made with `make` (and kept) when it has none yet, as IoT Hub
    /// gives the runtime's module identities of an Edge device their own keys; `NoModule` when
    /// there is no such module identity.
    pub fn module_keys(
        &mut self,
        device: &str,
        module: &str,
        make: impl FnOnce() -> Keys,
    ) -> Result<Outcome<Keys>, StoreError> {
        if !module_exists(&self.conn, device, module)? {
            return Ok(Err(Refusal::NoModule));
        }
        let identity = format!("{device}/{module}");
        if let Some(k) = stored_keys(&self.conn, &identity)? {
            return Ok(Ok(k));
        }
        let k = make();
        self.conn.execute(
            "INSERT INTO identity_keys (identity, primary_key, secondary_key) VALUES (?1, ?2, ?3)",
            params![identity, k.primary, k.secondary],
        )?;
        Ok(Ok(k))
    }

    /// Creates a module identity with `keys` and an empty twin; `Ok(None)` when it exists
    /// already, refused when the device is unknown or holds IoT Hub's most modules.
    pub fn create_module(
        &mut self,
        device: &str,
        module: &str,
        keys: &Keys,
    ) -> Result<Outcome<Option<Twin>>, StoreError> {
        let tx = self.conn.transaction()?;
        let exists = tx
            .query_row("SELECT 1 FROM devices WHERE device_id = ?1", [device], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Ok(Err(Refusal::NoDevice));
        }
        if module_exists(&tx, device, module)? {
            return Ok(Ok(None));
        }
        let users: i64 = tx.query_row(
            "SELECT COUNT(*) FROM modules WHERE device_id = ?1 AND module_id NOT LIKE '$%'",
            [device],
            |r| r.get(0),
        )?;
        if !module.starts_with('$')
            && usize::try_from(users).unwrap_or(usize::MAX) >= MAX_MODULES_PER_DEVICE
        {
            return Ok(Err(Refusal::TooManyModules(MAX_MODULES_PER_DEVICE)));
        }
        let mut twin = Twin::default();
        twin.properties.desired.insert("$version".into(), json!(1));
        twin.properties.reported.insert("$version".into(), json!(1));
        tx.execute(
            "INSERT INTO modules (device_id, module_id, seq, version, twin)
             VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM modules), 1, ?3)",
            params![device, module, serde_json::to_string(&twin)?],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO identity_keys (identity, primary_key, secondary_key)
             VALUES (?1, ?2, ?3)",
            params![format!("{device}/{module}"), keys.primary, keys.secondary],
        )?;
        tx.commit()?;
        Ok(Ok(self.module_twin(device, module)?))
    }

    /// Deletes a module identity, its twin and keys; false when there was none.
    pub fn delete_module(&mut self, device: &str, module: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let gone = tx.execute(
            "DELETE FROM modules WHERE device_id = ?1 AND module_id = ?2",
            params![device, module],
        )? > 0;
        let identity = format!("{device}/{module}");
        tx.execute("DELETE FROM identity_keys WHERE identity = ?1", [&identity])?;
        tx.execute("DELETE FROM mqtt_sessions WHERE identity = ?1", [&identity])?;
        tx.commit()?;
        Ok(gone)
    }

    /// Removes what a deleted device leaves in these tables (its keys, its modules' keys, the
    /// sessions of all of them).
    pub fn forget_identities(&mut self, device: &str) -> Result<(), StoreError> {
        let prefix = format!("{}/%", device.replace('%', "\\%").replace('_', "\\_"));
        for table in ["identity_keys", "mqtt_sessions"] {
            self.conn.execute(
                &format!("DELETE FROM {table} WHERE identity = ?1 OR identity LIKE ?2 ESCAPE '\\'"),
                params![device, prefix],
            )?;
        }
        Ok(())
    }

    /// The subscriptions an identity's session keeps (bits of `iothub::mqtt::Filter`), when it
    /// has a session.
    pub fn mqtt_session(&self, identity: &str) -> Result<Option<u8>, StoreError> {
        let subs: Option<i64> = self
            .conn
            .query_row(
                "SELECT subscriptions FROM mqtt_sessions WHERE identity = ?1",
                [identity],
                |r| r.get(0),
            )
            .optional()?;
        Ok(subs.map(|s| u8::try_from(s & 0xff).unwrap_or(0)))
    }

    /// Writes what MQTT connections changed, in one transaction: each identity's kept
    /// subscriptions (`None`: its session ended, a CleanSession 1 connection), and the model
    /// id each device or module connected with, into its twin (`modelId`) where it changed.
    pub fn save_mqtt_state(
        &mut self,
        sessions: &[(String, Option<u8>)],
        models: &[(String, Option<String>, String)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for (identity, subs) in sessions {
            match subs {
                Some(s) => tx.execute(
                    "INSERT OR REPLACE INTO mqtt_sessions (identity, subscriptions) VALUES (?1, ?2)",
                    params![identity, i64::from(*s)],
                )?,
                None => tx.execute("DELETE FROM mqtt_sessions WHERE identity = ?1", [identity])?,
            };
        }
        for (device, module, model) in models {
            set_model_id(&tx, device, module.as_deref(), model)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Writes `model_id` into a device's or module's twin (`modelId`) when it differs.
fn set_model_id(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    module: Option<&str>,
    model_id: &str,
) -> Result<(), StoreError> {
    let (read, write) = match module {
        None => (
            "SELECT twin FROM devices WHERE device_id = ?1 AND ?2 IS NULL",
            "UPDATE devices SET twin = ?3 WHERE device_id = ?1 AND ?2 IS NULL",
        ),
        Some(_) => (
            "SELECT twin FROM modules WHERE device_id = ?1 AND module_id = ?2",
            "UPDATE modules SET twin = ?3 WHERE device_id = ?1 AND module_id = ?2",
        ),
    };
    let text: Option<String> =
        tx.query_row(read, params![device, module], |r| r.get(0)).optional()?;
    let Some(text) = text else { return Ok(()) };
    let mut twin: Twin = serde_json::from_str(&text)?;
    if twin.extra.get("modelId").and_then(Value::as_str) == Some(model_id) {
        return Ok(());
    }
    twin.extra.insert("modelId".into(), json!(model_id));
    tx.execute(write, params![device, module, serde_json::to_string(&twin)?])?;
    Ok(())
}

//! How a simulated device talks to its hub: IoT Hub's device protocol over MQTT/TLS
//! ([`crate::iothub::mqtt::client`]), to `otaforge serve` or to Azure IoT Hub alike. An ADU
//! device connects as itself with the Device Update agent's model id and, on every connect,
//! reads its twin and reports its agent properties (as the agent's startup report does); an
//! IoT Edge device connects as its `$edgeAgent` and `$edgeHub` module identities. A broken
//! connection is dropped and made again on the device's next turn.

use serde_json::{Map, Value};

use super::{Device, Env, FleetError};
use crate::iothub::mqtt::Identity;
use crate::iothub::mqtt::client::{ClientError, Connection, Credentials, version_of};
use crate::iothub::sas::SasKey;

/// The Edge runtime's module identities a simulated Edge device connects as.
pub(super) const EDGE_AGENT: &str = "$edgeAgent";
/// See [`EDGE_AGENT`].
pub(super) const EDGE_HUB: &str = "$edgeHub";

/// The keys of an Edge device's runtime modules.
#[derive(Clone)]
pub(super) struct ModuleKeys {
    pub(super) agent: SasKey,
    pub(super) hub: SasKey,
}

impl Device {
    fn broken(&self, e: ClientError) -> FleetError {
        self.fail(e.to_string())
    }

    fn credentials(&self, env: &Env, module: Option<&str>, key: &SasKey) -> Credentials {
        let identity = Identity { device: self.id.clone(), module: module.map(str::to_owned) };
        Credentials {
            hub: env.hub_name.clone(),
            identity,
            key: key.clone(),
            model_id: module.is_none().then(|| crate::service::agent::MODEL_ID.to_owned()),
        }
    }

    /// The device's connection (its `$edgeAgent`'s for an Edge device), made when there is
    /// none: then the twin is read whole (its desired properties are news, see
    /// [`Device::desired_changed`]), and an ADU device reports its agent properties.
    pub(super) async fn connect(&mut self, env: &Env) -> Result<(), FleetError> {
        if self.link.is_some() {
            return Ok(());
        }
        let (module, key) = match &self.modules {
            Some(k) => (Some(EDGE_AGENT), k.agent.clone()),
            None => (None, self.key.clone()),
        };
        let who = self.credentials(env, module, &key);
        let mut c = Connection::open(&env.gateway, &who).await.map_err(|e| self.broken(e))?;
        let twin = c.twin().await.map_err(|e| self.broken(e))?;
        self.desired = twin.desired;
        self.reported_version = version_of(&twin.reported);
        self.last_reported = twin.reported;
        self.fresh = true;
        self.link = Some(c);
        if self.modules.is_none() {
            let startup = self.agent(env, crate::service::agent::STATE_IDLE, None, None);
            self.report_agent(startup).await?;
        }
        Ok(())
    }

    /// Reports `patch` on the device's connection; a failure drops the connection.
    pub(super) async fn report(&mut self, patch: Map<String, Value>) -> Result<(), FleetError> {
        let Some(c) = self.link.as_mut() else {
            return Err(self.fail("not connected"));
        };
        match c.report(&patch).await {
            Ok(v) => {
                self.reported_version = v;
                Ok(())
            }
            Err(e) => {
                self.link = None;
                Err(self.broken(e))
            }
        }
    }

    /// Waits up to `wait` for the desired properties to change; true when they did (or were
    /// read afresh on a new connection). `self.desired` is kept up to date, `$version`
    /// included.
    pub(super) async fn desired_changed(
        &mut self,
        env: &Env,
        wait: std::time::Duration,
    ) -> Result<bool, FleetError> {
        self.connect(env).await?;
        if std::mem::take(&mut self.fresh) {
            return Ok(true);
        }
        let Some(c) = self.link.as_mut() else { return Ok(false) };
        match c.next_desired(wait).await {
            Ok(Some(patch)) => {
                let version = version_of(&patch);
                // A change older than what the device read is not news (the reconnection
                // flow: notifications at or below the read version are ignored).
                if version.is_some_and(|v| version_of(&self.desired).is_some_and(|have| v <= have))
                {
                    return Ok(false);
                }
                crate::iothub::merge_patch(&mut self.desired, &patch);
                if let Some(v) = version {
                    self.desired.insert("$version".into(), v.into());
                }
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                self.link = None;
                Err(self.broken(e))
            }
        }
    }

    /// The desired `$version` the device last read.
    pub(super) fn desired_version(&self) -> i64 {
        version_of(&self.desired).unwrap_or(0)
    }

    /// An Edge device's `$edgeHub`: reads its desired `$version` and reports what edgeHub
    /// reports, on its own connection (made when there is none).
    pub(super) async fn edge_hub_report(&mut self, env: &Env) -> Result<(), FleetError> {
        let Some(keys) = self.modules.clone() else { return Ok(()) };
        if self.hub_link.is_none() {
            let who = self.credentials(env, Some(EDGE_HUB), &keys.hub);
            let c = Connection::open(&env.gateway, &who).await.map_err(|e| self.broken(e))?;
            self.hub_link = Some(c);
        }
        let result = async {
            let c = self
                .hub_link
                .as_mut()
                .ok_or(ClientError::Protocol("no $edgeHub connection".into()))?;
            let twin = c.twin().await?;
            let report = super::edge::hub_report(version_of(&twin.desired));
            c.report(&report).await
        }
        .await;
        if let Err(e) = result {
            self.hub_link = None;
            return Err(self.broken(e));
        }
        Ok(())
    }

    /// Closes the device's connections (the end of a run).
    pub(super) async fn disconnect(&mut self) {
        for c in [self.link.take(), self.hub_link.take()].into_iter().flatten() {
            c.close().await;
        }
    }
}

//! Device and module identities as IoT Hub's registry has them (the service REST API's
//! `Device` and `Module` documents, <https://learn.microsoft.com/rest/api/iothub/service/devices>):
//! shared by `otaforge serve`, the CLI and the fleet. Unknown fields are kept.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A device or module identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The device.
    #[serde(default)]
    pub device_id: String,
    /// The module, for a module identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// How it authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// What it is (`iotEdge`), for a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// `Connected` or `Disconnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// Everything else (etag, status, generationId, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `authentication` of an identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The symmetric keys of a `sas` identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKey>,
    /// Everything else (x509Thumbprint).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An identity's two keys (base64). Secrets: never printed unless asked for.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// The primary key.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// The secondary key.
    #[serde(default)]
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SymmetricKey(redacted)")
    }
}

/// `capabilities` of a device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// An IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

impl Identity {
    /// The primary key, when the identity has one.
    pub fn primary_key(&self) -> Option<&str> {
        self.authentication.as_ref()?.symmetric_key.as_ref()?.primary_key.as_deref()
    }

    /// The secondary key, when the identity has one.
    pub fn secondary_key(&self) -> Option<&str> {
        self.authentication.as_ref()?.symmetric_key.as_ref()?.secondary_key.as_deref()
    }

    /// Whether it is an IoT Edge device.
    pub fn is_edge(&self) -> bool {
        self.capabilities.as_ref().is_some_and(|c| c.iot_edge)
    }

    /// A `sas` identity with `keys` (primary, secondary; `None`: the hub makes them).
    pub fn with_keys(
        device: &str,
        module: Option<&str>,
        primary: Option<String>,
        secondary: Option<String>,
    ) -> Self {
        Self {
            device_id: device.to_owned(),
            module_id: module.map(str::to_owned),
            authentication: Some(Authentication {
                kind: Some("sas".into()),
                symmetric_key: Some(SymmetricKey {
                    primary_key: primary,
                    secondary_key: secondary,
                }),
                extra: Map::new(),
            }),
            ..Self::default()
        }
    }

    /// Its device connection string for `hub` (`HostName`), with `gateway` (a host name,
    /// no port) when devices connect elsewhere; `None` when it has no primary key.
    pub fn connection_string(&self, hub: &str, gateway: Option<&str>) -> Option<String> {
        let key = self.primary_key()?;
        let mut s = format!("HostName={hub};DeviceId={}", self.device_id);
        if let Some(m) = &self.module_id {
            s.push_str(";ModuleId=");
            s.push_str(m);
        }
        s.push_str(";SharedAccessKey=");
        s.push_str(key);
        if let Some(g) = gateway {
            s.push_str(";GatewayHostName=");
            s.push_str(g);
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_sdks_create_body_reads_and_round_trips() {
        let body = r#"{"deviceId":"d1","status":"enabled","authentication":{"symmetricKey":{"primaryKey":"cA==","secondaryKey":"cw=="},"type":"sas"},"capabilities":{"iotEdge":false}}"#;
        let id: Identity = serde_json::from_str(body).unwrap();
        assert_eq!(id.primary_key(), Some("cA=="));
        assert_eq!(id.secondary_key(), Some("cw=="));
        assert!(!id.is_edge());
        let back: Value = serde_json::to_value(&id).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(body).unwrap());
        assert_eq!(
            id.connection_string("hub", Some("localhost")).unwrap(),
            "HostName=hub;DeviceId=d1;SharedAccessKey=cA==;GatewayHostName=localhost"
        );
        assert!(!format!("{id:?}").contains("cA=="));
    }
}

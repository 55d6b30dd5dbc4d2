//! A device's side of IoT Hub's MQTT protocol
//! (<https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub>), as the official
//! SDKs speak it: TLS to the gateway (`otaforge serve`, trusting its CA, or Azure IoT Hub,
//! trusting the platform's roots) on port 8883 unless told otherwise, CONNECT with a SAS
//! token signed with the identity's key and CleanSession 0, the three subscriptions a device
//! needs (twin answers, desired changes, direct methods) made once per session, twin reads
//! and reports (QoS 1, acknowledged), desired-property changes as they come, and telemetry.
//!
//! One [`Connection`] is driven by its owner: packets are read while the owner waits for
//! something (a twin answer, a change), so no task or channel is spent per device. Methods
//! the owner does not answer are refused with 501.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeFilter,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

use super::{Filter, Identity, Outbound, Username, format_bag};
use crate::iothub::sas::{SasKey, token};

/// Why a device connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached, or the connection broke.
    #[error("{gateway}: {message}")]
    Io {
        /// The gateway (`host:port`).
        gateway: String,
        /// What failed.
        message: String,
    },
    /// The TLS settings are not usable (a CA file that holds no certificate, …).
    #[error("TLS: {0}")]
    Tls(String),
    /// The hub refused the CONNECT (1 protocol, 2 client id, 3 unavailable, 4 credentials,
    /// 5 not authorized).
    #[error("the hub refused the connection (CONNACK {0}; 4 or 5: check the device's id and key)")]
    Refused(u8),
    /// The hub answered a twin request with an error status.
    #[error("twin request answered {status}: {body}")]
    Twin {
        /// The status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// The hub sent something that is not IoT Hub's protocol, or nothing in time.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Where devices connect, and how they check it.
#[derive(Clone)]
pub struct Gateway {
    /// Host name or address to dial.
    pub host: String,
    /// Port (8883 for IoT Hub).
    pub port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gateway({}:{})", self.host, self.port)
    }
}

/// A TLS client configuration trusting the CA certificates in `ca_pem`, or the platform's
/// roots when there is none (Azure IoT Hub).
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let config = match ca_pem {
        Some(pem) => {
            use rustls_pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
                roots.add(cert).map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Tls("the CA file holds no certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt as _;
            builder
                .with_platform_verifier()
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .with_no_client_auth()
        }
    };
    Ok(config)
}

impl Gateway {
    /// `host[:port]` (port 8883 when not given), checked with `tls`.
    pub fn new(address: &str, tls: rustls::ClientConfig) -> Self {
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => {
                (h.to_owned(), p.parse().unwrap_or(8883))
            }
            _ => (address.to_owned(), 8883),
        };
        Self { host, port, tls: tokio_rustls::TlsConnector::from(Arc::new(tls)) }
    }

    fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Who a device is to the hub.
#[derive(Clone)]
pub struct Credentials {
    /// The hub's host name, as the device's connection string has it (`HostName`).
    pub hub: String,
    /// The device or module.
    pub identity: Identity,
    /// Its symmetric key.
    pub key: SasKey,
    /// The Plug and Play model id it announces.
    pub model_id: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} on {})", self.identity, self.hub)
    }
}

/// How long a device's token is valid (the SDKs' default); it connects again before then.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The keep-alive a device announces.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// How long a CONNECT, SUBSCRIBE or twin request may wait for its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A twin as the device reads it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TwinDocument {
    /// Desired properties, with `$version`.
    #[serde(default)]
    pub desired: Map<String, Value>,
    /// Reported properties, with `$version`.
    #[serde(default)]
    pub reported: Map<String, Value>,
}

/// A desired section's `$version`.
pub fn version_of(section: &Map<String, Value>) -> Option<i64> {
    section.get("$version").and_then(Value::as_i64)
}

/// A direct method call the device received.
#[derive(Debug, Clone)]
pub struct MethodRequest {
    /// The method.
    pub name: String,
    /// The request id to answer with.
    pub rid: String,
    /// The payload.
    pub payload: Bytes,
}

type Stream = TlsStream<tokio::net::TcpStream>;

/// One device connection.
pub struct Connection {
    gateway: String,
    stream: Stream,
    buf: BytesMut,
    next_pkid: u16,
    next_rid: u64,
    acked: Vec<u16>,
    desired: VecDeque<Map<String, Value>>,
    methods: VecDeque<MethodRequest>,
    last_write: Instant,
    /// Whether the hub kept the session (its subscriptions) from a connection before.
    pub session_present: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.gateway)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Connection {
    /// Connects `who` to `gateway`: TLS, CONNECT (CleanSession 0), and the device's three
    /// subscriptions when the hub has no session for it.
    pub async fn open(gateway: &Gateway, who: &Credentials) -> Result<Self, ClientError> {
        let name = gateway.name();
        let io = |e: &dyn std::fmt::Display| ClientError::Io {
            gateway: name.clone(),
            message: e.to_string(),
        };
        let tcp = tokio::time::timeout(
            ANSWER_TIMEOUT,
            tokio::net::TcpStream::connect((gateway.host.as_str(), gateway.port)),
        )
        .await
        .map_err(|_| io(&"connecting timed out"))?
        .map_err(|e| io(&e))?;
        let _ = tcp.set_nodelay(true);
        let server = rustls_pki_types::ServerName::try_from(gateway.host.clone())
            .map_err(|e| ClientError::Tls(format!("`{}`: {e}", gateway.host)))?;
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, gateway.tls.connect(server, tcp))
            .await
            .map_err(|_| io(&"the TLS handshake timed out"))?
            .map_err(|e| io(&e))?;
        let mut c = Self {
            gateway: name,
            stream,
            buf: BytesMut::with_capacity(2048),
            next_pkid: 0,
            next_rid: 0,
            acked: Vec::new(),
            desired: VecDeque::new(),
            methods: VecDeque::new(),
            last_write: Instant::now(),
            session_present: false,
        };
        let mut connect = Connect::new(who.identity.key());
        connect.keep_alive = KEEP_ALIVE.as_secs() as u16;
        connect.clean_session = false;
        let password = token(
            &who.identity.resource(&who.hub),
            &who.key,
            None,
            now_secs() + TOKEN_TTL.as_secs(),
        );
        connect.set_login(
            Username::format(&who.hub, &who.identity, who.model_id.as_deref()),
            password,
        );
        c.write(Packet::Connect(connect)).await?;
        let until = Instant::now() + ANSWER_TIMEOUT;
        let ack = match c.read(until).await? {
            Packet::ConnAck(a) => a,
            other => return Err(ClientError::Protocol(format!("{other:?} before CONNACK"))),
        };
        if ack.code != ConnectReturnCode::Success {
            return Err(ClientError::Refused(ack.code as u8));
        }
        c.session_present = ack.session_present;
        if !c.session_present {
            c.subscribe(&who.identity).await?;
        }
        Ok(c)
    }

    async fn subscribe(&mut self, who: &Identity) -> Result<(), ClientError> {
        let filters = [Filter::TwinResponses, Filter::DesiredPatches, Filter::Methods]
            .into_iter()
            .map(|f| SubscribeFilter::new(f.text(who), QoS::AtLeastOnce))
            .collect();
        let pkid = self.pkid();
        self.write(Packet::Subscribe(Subscribe { pkid, filters })).await?;
        let until = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Packet::SubAck(a) = self.read(until).await?
                && a.pkid == pkid
            {
                return Ok(());
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        format!("{:x}", self.next_rid)
    }

    async fn write(&mut self, p: Packet) -> Result<(), ClientError> {
        let mut out = BytesMut::with_capacity(p.size() + 8);
        p.write(&mut out, usize::MAX).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let gateway = self.gateway.clone();
        tokio::time::timeout(ANSWER_TIMEOUT, self.stream.write_all(&out))
            .await
            .map_err(|_| ClientError::Io {
                gateway: gateway.clone(),
                message: "a write timed out".into(),
            })?
            .map_err(|e| ClientError::Io { gateway, message: e.to_string() })?;
        self.last_write = Instant::now();
        Ok(())
    }

    /// The next packet, by `until`; a keep-alive ping goes out while waiting.
    async fn read(&mut self, until: Instant) -> Result<Packet, ClientError> {
        loop {
            match Packet::read(&mut self.buf, crate::iothub::limits::MAX_MQTT_PACKET * 2) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let ping = self.last_write + KEEP_ALIVE / 2;
            let wake = until.min(ping);
            match tokio::time::timeout_at(wake, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => {
                    return Err(ClientError::Io {
                        gateway: self.gateway.clone(),
                        message: "the hub closed the connection".into(),
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(ClientError::Io {
                        gateway: self.gateway.clone(),
                        message: e.to_string(),
                    });
                }
                Err(_) if Instant::now() >= until => {
                    return Err(ClientError::Protocol("no answer in time".into()));
                }
                Err(_) => self.write(Packet::PingReq).await?,
            }
        }
    }

    /// Reads one packet by `until` and files it: desired changes and method calls are kept
    /// for the owner; returns a twin answer `(status, rid, version, body)` when one came.
    async fn step(
        &mut self,
        until: Instant,
    ) -> Result<Option<(u16, String, Option<i64>, Bytes)>, ClientError> {
        let p = match self.read(until).await? {
            Packet::Publish(p) => p,
            Packet::PubAck(a) => {
                self.acked.push(a.pkid);
                return Ok(None);
            }
            _ => return Ok(None),
        };
        if p.qos == QoS::AtLeastOnce {
            self.write(Packet::PubAck(PubAck::new(p.pkid))).await?;
        }
        match Outbound::parse(&p.topic) {
            Some(Outbound::TwinResponse { status, rid, version }) => {
                Ok(Some((status, rid, version, p.payload)))
            }
            Some(Outbound::DesiredPatch { .. }) => {
                if let Ok(Value::Object(m)) = serde_json::from_slice(&p.payload) {
                    self.desired.push_back(m);
                }
                Ok(None)
            }
            Some(Outbound::MethodRequest { name, rid }) => {
                self.methods.push_back(MethodRequest { name, rid, payload: p.payload });
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Sends a twin request and waits for its answer.
    async fn twin_request(
        &mut self,
        topic: String,
        body: Bytes,
        rid: &str,
        qos: QoS,
    ) -> Result<(u16, Option<i64>, Bytes), ClientError> {
        let mut publish = Publish::from_bytes(topic, qos, body);
        let pkid = if qos == QoS::AtLeastOnce { self.pkid() } else { 0 };
        publish.pkid = pkid;
        self.write(Packet::Publish(publish)).await?;
        let until = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Some((status, got, version, body)) = self.step(until).await?
                && got == rid
            {
                self.acked.retain(|a| *a != pkid);
                return Ok((status, version, body));
            }
        }
    }

    /// The twin: desired and reported properties with their `$version`s.
    pub async fn twin(&mut self) -> Result<TwinDocument, ClientError> {
        let rid = self.rid();
        let topic = format!("$iothub/twin/GET/?$rid={rid}");
        let (status, _, body) =
            self.twin_request(topic, Bytes::from_static(b" "), &rid, QoS::AtMostOnce).await?;
        if status != 200 {
            return Err(ClientError::Twin {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(format!("twin: {e}")))
    }

    /// Reports properties (a merge patch); returns the reported `$version` the hub gave.
    /// It returns once the hub stored them.
    pub async fn report(&mut self, patch: &Map<String, Value>) -> Result<Option<i64>, ClientError> {
        let rid = self.rid();
        let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}");
        let body = Bytes::from(Value::Object(patch.clone()).to_string());
        let (status, version, body) =
            self.twin_request(topic, body, &rid, QoS::AtLeastOnce).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Twin {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(version)
    }

    /// The next desired-property change (with its `$version`), waiting up to `wait`; `None`
    /// when none came. Method calls that came meanwhile are refused (501).
    pub async fn next_desired(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Map<String, Value>>, ClientError> {
        let until = Instant::now() + wait;
        loop {
            while let Some(m) = self.methods.pop_front() {
                self.answer(
                    &m,
                    501,
                    &serde_json::json!({"message": "not implemented by this device"}),
                )
                .await?;
            }
            if let Some(d) = self.desired.pop_front() {
                return Ok(Some(d));
            }
            match self.step(until).await {
                Ok(_) => {}
                Err(ClientError::Protocol(m)) if m == "no answer in time" => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers a direct method call.
    pub async fn answer(
        &mut self,
        m: &MethodRequest,
        status: i32,
        payload: &Value,
    ) -> Result<(), ClientError> {
        let topic = format!("$iothub/methods/res/{status}/?$rid={}", m.rid);
        let p = Publish::from_bytes(topic, QoS::AtMostOnce, Bytes::from(payload.to_string()));
        self.write(Packet::Publish(p)).await
    }

    /// Sends telemetry (QoS 1) with `properties` (system ones as `$.ct`, …).
    pub async fn send_event(
        &mut self,
        who: &Identity,
        body: &[u8],
        properties: &[(String, Option<String>)],
    ) -> Result<(), ClientError> {
        let topic = format!("{}{}", who.events_prefix(), format_bag(properties));
        let mut p = Publish::from_bytes(topic, QoS::AtLeastOnce, Bytes::copy_from_slice(body));
        let pkid = self.pkid();
        p.pkid = pkid;
        self.write(Packet::Publish(p)).await?;
        let until = Instant::now() + ANSWER_TIMEOUT;
        while !self.acked.contains(&pkid) {
            self.step(until).await?;
        }
        self.acked.retain(|a| *a != pkid);
        Ok(())
    }

    /// Says goodbye (DISCONNECT) and closes.
    pub async fn close(mut self) {
        let _ = self.write(Packet::Disconnect).await;
        let _ = self.stream.shutdown().await;
    }
}

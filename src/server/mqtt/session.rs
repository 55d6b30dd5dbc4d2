//! One MQTT connection of a device or module, from the TLS handshake to its close, as IoT Hub
//! runs it (<https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub>):
//!
//! - CONNECT within [`CONNECT_DEADLINE`], authenticated as IoT Hub does: client id
//!   `{device}[/{module}]`, user name `{hub}/{client id}/?api-version=…`, password a SAS
//!   token for that identity signed with one of its keys (or with the hub's `iothubowner`
//!   key). A refusal is CONNACK 1 (protocol level), 2 (client id), 4 (no credentials), 5 (the
//!   credential is not valid for this identity) or 3 (serve cannot check it now).
//! - Then, one packet at a time: twin requests answered on `$iothub/twin/res/…`, reported
//!   properties stored before their PUBACK (so a report the device saw acknowledged survives
//!   a crash), method answers, telemetry; subscriptions to the five filters IoT Hub defines.
//!   Anything else a device publishes closes the connection; a filter it may not have is
//!   refused in the SUBACK. Both are logged.
//! - It ends at the token's expiry, after 1.5 × the keep-alive without a packet, when a
//!   write does not finish in [`WRITE_TIMEOUT`], when its queue overflows, or when a newer
//!   connection of the same identity authenticates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::server::TlsStream;

use super::{C2d, CONNECT_DEADLINE, MethodReply, Out, WRITE_TIMEOUT};
use crate::iothub::limits::{MAX_KEEPALIVE_WAIT_SECS, MAX_MQTT_PACKET, MAX_SUBSCRIPTIONS};
use crate::iothub::mqtt::{self, Filter, Identity, Inbound, Subscriptions, Username};
use crate::iothub::sas::{Claims, SasKey};
use crate::server::Shared;
use crate::server::store::{Refusal, StoreError};

type Stream = TlsStream<tokio::net::TcpStream>;

/// Why a connection ends (for the log).
#[derive(Debug)]
struct Close(String);

fn close(why: impl Into<String>) -> Close {
    Close(why.into())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the next packet, buffering in `buf`; `Ok(None)` when the peer closed.
async fn read_packet(stream: &mut Stream, buf: &mut BytesMut) -> Result<Option<Packet>, Close> {
    loop {
        match Packet::read(buf, MAX_MQTT_PACKET) {
            Ok(p) => return Ok(Some(p)),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(e) => return Err(close(format!("malformed packet: {e}"))),
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Writes one packet within [`WRITE_TIMEOUT`], or until `kick` says the connection is to
/// close (a write blocked on a device that does not read must not keep it open).
async fn write_or_kick(stream: &mut Stream, p: Packet, kick: &Notify) -> Result<(), Close> {
    tokio::select! {
        r = write(stream, p) => r,
        _ = kick.notified() => Err(close("told to close while writing (another connection, a full queue or a deletion)")),
    }
}

/// Writes one packet within [`WRITE_TIMEOUT`].
async fn write(stream: &mut Stream, p: Packet) -> Result<(), Close> {
    let mut out = BytesMut::with_capacity(p.size() + 8);
    p.write(&mut out, usize::MAX).map_err(|e| close(format!("encoding: {e}")))?;
    match timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
        Ok(Ok(())) => Ok(()),
        // The device went away (reset, broken pipe): nothing to log.
        Ok(Err(_)) => Err(close("")),
        Err(_) => Err(close("a write did not finish in time (the device does not read)")),
    }
}

/// A connection that passed CONNECT.
struct Authed {
    identity: Identity,
    expiry: u64,
    model_id: Option<String>,
}

/// Checks a CONNECT as IoT Hub does; the refusal is the CONNACK code and why.
async fn authenticate(
    s: &Shared,
    c: &rumqttc::mqttbytes::v4::Connect,
) -> Result<Authed, (ConnectReturnCode, String)> {
    use ConnectReturnCode as R;
    if c.protocol != Protocol::V4 {
        return Err((R::RefusedProtocolVersion, "MQTT 5 is not IoT Hub's protocol".into()));
    }
    let identity = Identity::parse(&c.client_id).map_err(|e| (R::BadClientId, e.to_string()))?;
    let login =
        c.login.as_ref().ok_or((R::BadUserNamePassword, "no user name and password".into()))?;
    let user = Username::parse(&login.username).map_err(|e| (R::NotAuthorized, e.to_string()))?;
    if user.identity != identity {
        return Err((R::NotAuthorized, "the user name names another identity".into()));
    }
    if !s.live.is_hub(&user.hub) {
        return Err((R::NotAuthorized, format!("the user name names another hub ({})", user.hub)));
    }
    let claims = Claims::parse(&login.password).map_err(|e| (R::NotAuthorized, e.to_string()))?;
    let refused = |why: &str| (R::NotAuthorized, why.to_owned());
    let keys: Vec<SasKey> = match claims.key_name.as_deref() {
        // A policy token with DeviceConnect connects as any device it covers; serve's only
        // policy is its owner key.
        Some(crate::server::HUB_KEY_NAME) => {
            let hub = claims.resource.split('/').next().unwrap_or_default();
            if !s.live.is_hub(hub)
                || !(claims.resource == hub || claims.covers(&identity.resource(hub)))
            {
                return Err(refused("the token is for another hub or identity"));
            }
            vec![s.hub_key.clone()]
        }
        Some(_) => return Err(refused("serve's only shared access policy is iothubowner")),
        None => {
            let (hub, path) = claims.resource.split_once('/').unwrap_or((&claims.resource, ""));
            let want = identity.resource("").trim_start_matches('/').to_lowercase();
            if !s.live.is_hub(hub) || path != want {
                return Err(refused("the token's resource is not this identity"));
            }
            let (d, m) = (identity.device.clone(), identity.module.clone());
            let found =
                s.db.read(move |st| st.identity_keys(&d, m.as_deref()))
                    .await
                    .map_err(|e| (R::ServiceUnavailable, e.to_string()))?
                    .ok_or_else(|| refused("no such identity, or it has no keys"))?;
            found.all().filter_map(|k| SasKey::from_base64(k).ok()).collect()
        }
    };
    let now = now_secs();
    let mut last = refused("no key");
    for k in &keys {
        match claims.verify(k, now) {
            Ok(()) => {
                return Ok(Authed { identity, expiry: claims.expiry, model_id: user.model_id });
            }
            Err(e) => last = refused(&e.to_string()),
        }
    }
    Err(last)
}

/// Serves one accepted TCP connection to its end.
pub(super) async fn run(s: Shared, tls: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream) {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let Ok(Ok(mut stream)) = timeout_at(deadline, tls.accept(tcp)).await else {
        return;
    };
    let mut buf = BytesMut::with_capacity(1024);
    let connect = match timeout_at(deadline, read_packet(&mut stream, &mut buf)).await {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Err(Close(why))) if why.contains("protocol level") => {
            let _ = write(
                &mut stream,
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false)),
            )
            .await;
            s.live.log(format!("mqtt: {peer}: refused: {why}"));
            return;
        }
        Ok(Ok(Some(other))) => {
            s.live.log(format!("mqtt: {peer}: closed: {:?} before CONNECT", kind(&other)));
            return;
        }
        Ok(Err(Close(why))) => {
            s.live.log(format!("mqtt: {peer}: closed before CONNECT: {why}"));
            return;
        }
        _ => return,
    };
    let authed = match authenticate(&s, &connect).await {
        Ok(a) => a,
        Err((code, why)) => {
            let _ = write(&mut stream, Packet::ConnAck(ConnAck::new(code, false))).await;
            s.live.log(format!(
                "mqtt: {peer} as `{}`: refused (CONNACK {}): {why}",
                connect.client_id.escape_debug(),
                code as u8
            ));
            return;
        }
    };
    let key = authed.identity.key();
    let restored = if connect.clean_session {
        s.live.save_later(&key, Some(None), None);
        None
    } else {
        match session_of(&s, &key).await {
            Ok(subs) => subs,
            Err(why) => {
                let _ = write(
                    &mut stream,
                    Packet::ConnAck(ConnAck::new(ConnectReturnCode::ServiceUnavailable, false)),
                )
                .await;
                s.live.log(format!("mqtt: {key}: refused (CONNACK 3): {why}"));
                return;
            }
        }
    };
    if let Some(model) = &authed.model_id {
        let id = &authed.identity;
        s.live.save_later(&key, None, Some((&id.device, id.module.as_deref(), model)));
    }
    let (conn_id, rx, kick, subs) = s.live.register(&key, restored.unwrap_or(0));
    let mut session = Session {
        s: s.clone(),
        identity: authed.identity,
        key: key.clone(),
        clean: connect.clean_session,
        subs,
        last_desired: 0,
        seen_desired: None,
        next_pkid: 0,
        stream,
        buf,
        kick: kick.clone(),
    };
    let keepalive = keepalive_wait(connect.keep_alive);
    let ack = ConnAck::new(ConnectReturnCode::Success, restored.is_some());
    let ended = match write(&mut session.stream, Packet::ConnAck(ack)).await {
        Ok(()) => {
            session.s.live.flush_c2d(&session.identity.device);
            session.serve(rx, keepalive, authed.expiry).await
        }
        Err(e) => e,
    };
    s.live.unregister(&key, conn_id);
    if !ended.0.is_empty() {
        s.live.log(format!("mqtt: {key}: closed: {}", ended.0));
    }
}

/// How long a connection may stay silent: 1.5 × its keep-alive, at most IoT Hub's 1,767 s
/// (keep-alive 0 gets the most).
fn keepalive_wait(keep_alive: u16) -> Duration {
    let most = Duration::from_secs(MAX_KEEPALIVE_WAIT_SECS);
    if keep_alive == 0 {
        return most;
    }
    (Duration::from_secs(u64::from(keep_alive)) * 3 / 2).min(most)
}

/// The subscriptions an identity's session keeps: a change not yet written first.
async fn session_of(s: &Shared, key: &str) -> Result<Option<u8>, StoreError> {
    if let Some(pending) = super::lock(&s.live.saves).sessions.get(key) {
        return Ok(*pending);
    }
    let k = key.to_owned();
    s.db.read(move |st| st.mqtt_session(&k)).await
}

fn kind(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// A connection after CONNACK.
struct Session {
    s: Shared,
    identity: Identity,
    key: String,
    clean: bool,
    subs: Arc<AtomicU8>,
    /// The newest desired `$version` this connection was sent.
    last_desired: i64,
    /// The desired properties as this connection last gave them to the device (without
    /// `$version`): a change is sent as the merge patch from them to the new ones, so that
    /// what serve replaced or removed is replaced or removed on the device too.
    seen_desired: Option<Map<String, Value>>,
    next_pkid: u16,
    stream: Stream,
    buf: BytesMut,
    /// Told to close (another connection of the identity, a full queue, a deletion).
    kick: Arc<Notify>,
}

impl Session {
    /// The main loop: packets in, queued packets out, until something ends the connection.
    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<Out>,
        keepalive: Duration,
        expiry: u64,
    ) -> Close {
        let expires = Instant::now() + Duration::from_secs(expiry.saturating_sub(now_secs()));
        let mut silent_until = Instant::now() + keepalive;
        let kick = self.kick.clone();
        loop {
            // Every complete packet already buffered, before reading more.
            loop {
                match Packet::read(&mut self.buf, MAX_MQTT_PACKET) {
                    Ok(p) => {
                        silent_until = Instant::now() + keepalive;
                        if let Err(e) = self.inbound(p).await {
                            return e;
                        }
                    }
                    Err(CodecError::InsufficientBytes(_)) => break,
                    Err(e) => return close(format!("malformed packet: {e}")),
                }
            }
            if self.buf.capacity() > 64 * 1024 && self.buf.is_empty() {
                // A large packet is done with: give its buffer back.
                self.buf = BytesMut::with_capacity(1024);
            }
            tokio::select! {
                biased;
                _ = kick.notified() => {
                    return close("another connection of this identity, a full queue or a deletion");
                }
                _ = tokio::time::sleep_until(expires) => return close("its SAS token expired"),
                _ = tokio::time::sleep_until(silent_until) => {
                    return close("nothing received within 1.5 × its keep-alive");
                }
                out = rx.recv() => {
                    let Some(out) = out else { return close("") };
                    if let Err(e) = self.outbound(out).await {
                        return e;
                    }
                }
                n = self.stream.read_buf(&mut self.buf) => match n {
                    Ok(0) | Err(_) => return close(""),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Writes one packet to the device ([`write_or_kick`]).
    async fn send(&mut self, p: Packet) -> Result<(), Close> {
        write_or_kick(&mut self.stream, p, &self.kick).await
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions(self.subs.load(Ordering::Relaxed))
    }

    fn refuse(&self, why: String) -> Close {
        close(format!("refused: {why}"))
    }

    /// One packet from the device.
    async fn inbound(&mut self, p: Packet) -> Result<(), Close> {
        match p {
            Packet::Publish(p) => self.publish(p).await,
            Packet::Subscribe(sub) => {
                let mut bits = self.subscriptions().0;
                let mut codes = Vec::with_capacity(sub.filters.len());
                for f in &sub.filters {
                    match Filter::parse(&f.path, &self.identity) {
                        Some(filter)
                            if Subscriptions(bits | filter.bit()).len() <= MAX_SUBSCRIPTIONS =>
                        {
                            bits |= filter.bit();
                            let qos = if f.qos == QoS::AtMostOnce {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            };
                            codes.push(SubscribeReasonCode::Success(qos));
                        }
                        _ => {
                            self.s.live.log(format!(
                                "mqtt: {}: refused subscription to `{}`",
                                self.key,
                                f.path.chars().take(200).collect::<String>().escape_debug()
                            ));
                            codes.push(SubscribeReasonCode::Failure);
                        }
                    }
                }
                self.set_subscriptions(bits);
                self.send(Packet::SubAck(SubAck::new(sub.pkid, codes))).await?;
                if Subscriptions(bits).has(Filter::Devicebound) {
                    self.s.live.flush_c2d(&self.identity.device);
                }
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                let mut bits = self.subscriptions().0;
                for t in &u.topics {
                    if let Some(f) = Filter::parse(t, &self.identity) {
                        bits &= !f.bit();
                    }
                }
                self.set_subscriptions(bits);
                self.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await
            }
            Packet::PingReq => self.send(Packet::PingResp).await,
            // Cloud-to-device messages are done with once sent; their PUBACK changes nothing.
            Packet::PubAck(_) => Ok(()),
            Packet::Disconnect => Err(close("")),
            other => Err(self.refuse(format!("a {} from a device", kind(&other)))),
        }
    }

    fn set_subscriptions(&mut self, bits: u8) {
        let before = self.subs.swap(bits, Ordering::Relaxed);
        if before != bits && !self.clean {
            self.s.live.save_later(&self.key, Some(Some(bits)), None);
        }
    }

    /// A PUBLISH from the device: handled, then acknowledged (QoS 1).
    async fn publish(&mut self, p: Publish) -> Result<(), Close> {
        if p.qos == QoS::ExactlyOnce {
            return Err(self.refuse("QoS 2, which IoT Hub does not support".into()));
        }
        let inbound =
            Inbound::parse(&p.topic, &self.identity).map_err(|e| self.refuse(e.to_string()))?;
        let answer = match inbound {
            Inbound::TwinGet { rid } => Some(self.twin_get(&rid).await),
            Inbound::TwinReport { rid } => Some(self.twin_report(&rid, &p.payload).await),
            Inbound::MethodResponse { status, rid } => {
                let payload = serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&p.payload).into_owned())
                });
                if !self.s.live.answer(&self.key, &rid, MethodReply { status, payload }) {
                    self.s
                        .live
                        .log(format!("mqtt: {}: an answer to no waiting call ({rid})", self.key));
                }
                None
            }
            Inbound::Telemetry { properties } => {
                let id = &self.identity;
                let e = super::events::Event::new(
                    &id.device,
                    id.module.as_deref(),
                    &properties,
                    &p.payload,
                );
                self.s.live.events.push(e, p.payload.len());
                None
            }
        };
        if p.qos == QoS::AtLeastOnce {
            self.send(Packet::PubAck(PubAck::new(p.pkid))).await?;
        }
        if let Some((topic, body)) = answer {
            let reply = Publish::from_bytes(topic, QoS::AtMostOnce, body);
            self.send(Packet::Publish(reply)).await?;
        }
        Ok(())
    }

    /// The identity's twin as the device sees it, with the `$version`s of its sections.
    async fn twin(&self) -> Result<Option<(Value, i64)>, StoreError> {
        let (d, m) = (self.identity.device.clone(), self.identity.module.clone());
        let twin = self
            .s
            .db
            .read(move |st| match &m {
                Some(m) => st.module_twin(&d, m),
                None => st.device(&d).map(|r| r.map(|r| r.twin)),
            })
            .await?;
        let Some(twin) = twin else { return Ok(None) };
        let mut desired = twin.properties.desired;
        let version = match self.identity.module {
            Some(_) => desired.get("$version").and_then(Value::as_i64).unwrap_or(1),
            None => twin.version.unwrap_or(1),
        };
        desired.insert("$version".into(), json!(version));
        let mut reported = twin.properties.reported;
        reported.entry("$version").or_insert(json!(1));
        Ok(Some((json!({"desired": desired, "reported": reported}), version)))
    }

    async fn twin_get(&mut self, rid: &str) -> (String, Bytes) {
        match self.twin().await {
            Ok(Some((doc, version))) => {
                self.last_desired = self.last_desired.max(version);
                let body = Bytes::from(doc.to_string());
                self.seen_desired = Some(without_version(desired_of(doc)));
                (mqtt::twin_response(200, rid, None), body)
            }
            Ok(None) => {
                (mqtt::twin_response(404, rid, None), error_body("the identity was deleted"))
            }
            Err(e) => (mqtt::twin_response(500, rid, None), error_body(&e.to_string())),
        }
    }

    async fn twin_report(&mut self, rid: &str, body: &[u8]) -> (String, Bytes) {
        let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
            return (
                mqtt::twin_response(400, rid, None),
                error_body("reported properties must be a JSON object"),
            );
        };
        let failed = crate::server::reconcile::reports_failure(&patch);
        let report = crate::server::store::Report {
            device: self.identity.device.clone(),
            module: self.identity.module.clone(),
            patch,
        };
        let twin = match self.s.live.report(report).await {
            Ok(Ok(t)) => t,
            Ok(Err(Refusal::Rules(e))) => {
                return (mqtt::twin_response(400, rid, None), error_body(&e.to_string()));
            }
            Ok(Err(r)) => return (mqtt::twin_response(404, rid, None), error_body(&r.to_string())),
            Err(e) => return (mqtt::twin_response(500, rid, None), error_body(&e.to_string())),
        };
        let version = twin.properties.reported.get("$version").and_then(Value::as_i64);
        if self.identity.module.is_none() {
            if twin.is_edge() {
                self.s.edge_changed.notify_one();
            }
            // The device gets its deployment; a failure can complete a rollback threshold.
            if let Err(e) =
                crate::server::reconcile::after_report(&self.s, &self.identity.device, failed).await
            {
                self.s.live.log(format!("mqtt: {}: after its report: {e}", self.key));
            }
        }
        (mqtt::twin_response(204, rid, version), Bytes::new())
    }

    /// Something queued for the device.
    async fn outbound(&mut self, out: Out) -> Result<(), Close> {
        let publish = match out {
            Out::Desired => {
                let Ok(Some((doc, version))) = self.twin().await else { return Ok(()) };
                if version <= self.last_desired {
                    return Ok(());
                }
                let now = without_version(desired_of(doc));
                let mut body = match &self.seen_desired {
                    Some(before) => crate::iothub::merge_patch_diff(before, &now),
                    None => now.clone(),
                };
                if body.is_empty() {
                    // Tags changed, not desired properties: nothing to tell.
                    return Ok(());
                }
                self.last_desired = version;
                self.seen_desired = Some(now);
                body.insert("$version".into(), json!(version));
                Publish::from_bytes(
                    mqtt::desired_patch(version),
                    QoS::AtMostOnce,
                    Bytes::from(Value::Object(body).to_string()),
                )
            }
            Out::Method { name, rid, payload } => {
                Publish::from_bytes(mqtt::method_request(&name, &rid), QoS::AtMostOnce, payload)
            }
            Out::Devicebound(C2d { properties, body }) => {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                let topic = format!(
                    "{}{}",
                    self.identity.devicebound_prefix(),
                    mqtt::format_bag(&properties)
                );
                let mut p = Publish::from_bytes(topic, QoS::AtLeastOnce, body);
                p.pkid = self.next_pkid;
                p
            }
        };
        self.send(Packet::Publish(publish)).await
    }
}

/// The desired section of a device view.
fn desired_of(doc: Value) -> Map<String, Value> {
    match doc {
        Value::Object(mut m) => match m.remove("desired") {
            Some(Value::Object(d)) => d,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}

/// A desired section without its `$version`.
fn without_version(mut desired: Map<String, Value>) -> Map<String, Value> {
    desired.remove("$version");
    desired
}

/// An error answer's body, as IoT Hub writes them.
fn error_body(message: &str) -> Bytes {
    Bytes::from(json!({"errorCode": 400000, "message": message}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keepalive_wait_is_one_and_a_half_times_and_capped() {
        assert_eq!(keepalive_wait(60), Duration::from_secs(90));
        assert_eq!(keepalive_wait(0), Duration::from_secs(1767));
        assert_eq!(keepalive_wait(1500), Duration::from_secs(1767));
    }
}

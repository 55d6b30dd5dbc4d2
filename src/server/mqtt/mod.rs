//! serve's device endpoint: IoT Hub's device protocol, MQTT 3.1.1
//! (<https://docs.oasis-open.org/mqtt/mqtt/v3.1.1/mqtt-v3.1.1.html>) over TLS, as IoT Hub
//! speaks it (<https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub>): the
//! official device SDKs, the Device Update agent and the simulated fleet connect here.
//!
//! - [`tls`]: serve's own CA and server certificate, made on first start;
//! - [`session`]: one connection, from CONNECT (authenticated as IoT Hub does) to its end;
//! - [`events`]: telemetry, kept in a bounded ring for `otaforge hub monitor`;
//! - [`Live`] (here): who is connected, each with a bounded outbound queue; what the rest of
//!   serve calls to reach a device (desired-property changes, direct methods,
//!   cloud-to-device messages).
//!
//! Packets are decoded and encoded by rumqttc's `mqttbytes::v4` codec (no client, no TLS of
//! its own). Nothing a device does can make serve wait on another: producers only `try_send`
//! to a connection's queue, and a connection whose queue is full is closed.

pub(super) mod events;
mod session;
pub(super) mod tls;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use super::Shared;
use crate::iothub::mqtt::{Filter, Subscriptions};

/// Packets one connection may have waiting to be written; a producer that finds the queue
/// full closes the connection (a device that does not read is not waited for).
pub const OUTBOUND_QUEUE: usize = 64;
/// How long one write to a device may take before the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection has for the TLS handshake and its CONNECT.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How often the subscriptions and model ids connections changed are written to the store,
/// all in one transaction (thousands of devices connecting make a few writes, not one each).
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// Reports written in one transaction at most.
const REPORT_BATCH: usize = 512;
/// Reports waiting for the writer at most (a device whose report cannot be queued waits).
const REPORT_QUEUE: usize = 8192;

/// A report waiting for the writer, and who waits for its outcome.
type ReportJob = (
    crate::server::store::Report,
    oneshot::Sender<Result<crate::server::store::Outcome<crate::iothub::Twin>, ReportError>>,
);

/// Why a device's report was not stored: the store failed (one error, shared by every report
/// of its batch), or the writer stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum ReportError {
    #[error("the report writer stopped")]
    WriterStopped,
    #[error(transparent)]
    Store(Arc<crate::server::store::StoreError>),
}

/// Where serve's MQTT endpoint writes its log lines (what a device was refused, why a
/// connection closed); the library never prints, so the CLI gives one that does.
#[derive(Clone)]
pub struct LogSink(pub Arc<dyn Fn(String) + Send + Sync>);

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

impl Default for LogSink {
    /// Lines go nowhere.
    fn default() -> Self {
        Self(Arc::new(|_| {}))
    }
}

/// Something for a connected device, queued on its connection.
#[derive(Debug)]
pub(super) enum Out {
    /// Its desired properties changed: the session sends what changed since the device last
    /// saw them.
    Desired,
    /// A direct method call.
    Method {
        /// The method.
        name: String,
        /// The request id to answer with.
        rid: String,
        /// The payload (JSON).
        payload: Bytes,
    },
    /// A cloud-to-device message.
    Devicebound(C2d),
}

/// A cloud-to-device message waiting for its device.
#[derive(Debug, Clone)]
pub(super) struct C2d {
    /// Its properties (system ones as `$.mid`, …).
    pub(super) properties: Vec<(String, Option<String>)>,
    /// Its body.
    pub(super) body: Bytes,
}

/// One live connection, as the rest of serve sees it.
#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    tx: mpsc::Sender<Out>,
    kick: Arc<Notify>,
    /// Whether it was told to close because its queue overflowed (logged once).
    overflowed: Arc<std::sync::atomic::AtomicBool>,
    subs: Arc<AtomicU8>,
}

/// What a device answered to a direct method.
#[derive(Debug)]
pub(super) struct MethodReply {
    /// Its status.
    pub(super) status: i32,
    /// Its payload (JSON; a body that is not JSON is given as a string).
    pub(super) payload: Value,
}

/// Why a direct method got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum MethodError {
    /// The identity is not connected, or not subscribed to methods.
    #[error("the device is not online, or has not subscribed to direct methods")]
    NotOnline,
    /// It did not answer in time.
    #[error("the device did not answer within {0} s")]
    Timeout(u64),
}

#[derive(Debug, Default)]
struct Saves {
    sessions: HashMap<String, Option<u8>>,
    models: HashMap<(String, Option<String>), String>,
}

/// Who is connected, and everything serve keeps for connected identities.
pub(super) struct Live {
    conns: Mutex<HashMap<String, Conn>>,
    next_conn: AtomicU64,
    next_rid: AtomicU64,
    calls: Mutex<HashMap<String, (String, oneshot::Sender<MethodReply>)>>,
    c2d: Mutex<HashMap<String, VecDeque<C2d>>>,
    saves: Mutex<Saves>,
    reports: mpsc::Sender<ReportJob>,
    reports_rx: Mutex<Option<mpsc::Receiver<ReportJob>>>,
    /// Telemetry.
    pub(super) events: events::Ring,
    /// The hub names a device's user name and SAS resource may give, lower case, without a
    /// port (the host of serve's base URL, `localhost`, `127.0.0.1`, the public URL's host).
    hub_names: Vec<String>,
    log: LogSink,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("connected", &self.connected()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// A registry accepting `hub_names`, logging to `log`.
    pub(super) fn new(hub_names: Vec<String>, log: LogSink) -> Self {
        let (reports, rx) = mpsc::channel(REPORT_QUEUE);
        Self {
            reports,
            reports_rx: Mutex::new(Some(rx)),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(1),
            next_rid: AtomicU64::new(1),
            calls: Mutex::default(),
            c2d: Mutex::default(),
            saves: Mutex::default(),
            events: events::Ring::default(),
            hub_names: hub_names.into_iter().map(|h| h.to_lowercase()).collect(),
            log,
        }
    }

    /// Writes a line to serve's log.
    pub(super) fn log(&self, line: String) {
        (self.log.0)(line);
    }

    /// Whether `hub` (as a device names it, maybe with a port) is this hub.
    pub(super) fn is_hub(&self, hub: &str) -> bool {
        let hub = hub.to_lowercase();
        let bare = match hub.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
            _ => hub.as_str(),
        };
        self.hub_names.iter().any(|n| *n == hub || *n == bare)
    }

    /// How many identities are connected.
    pub(super) fn connected(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Files a new connection of `identity`, closing the one before (IoT Hub keeps one
    /// connection per identity); returns its id, queue, kick signal and subscription bits.
    fn register(
        &self,
        identity: &str,
        subs: u8,
    ) -> (u64, mpsc::Receiver<Out>, Arc<Notify>, Arc<AtomicU8>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let kick = Arc::new(Notify::new());
        let bits = Arc::new(AtomicU8::new(subs));
        let overflowed = Arc::default();
        let conn = Conn { id, tx, kick: kick.clone(), overflowed, subs: bits.clone() };
        if let Some(old) = lock(&self.conns).insert(identity.to_owned(), conn) {
            old.kick.notify_one();
        }
        (id, rx, kick, bits)
    }

    /// Forgets connection `id` of `identity` (a newer one of the same identity stays).
    fn unregister(&self, identity: &str, id: u64) {
        let mut conns = lock(&self.conns);
        if conns.get(identity).is_some_and(|c| c.id == id) {
            conns.remove(identity);
        }
    }

    /// Whether `identity` is connected now.
    pub(super) fn is_connected(&self, identity: &str) -> bool {
        lock(&self.conns).contains_key(identity)
    }

    /// Closes `identity`'s connection, if it has one.
    pub(super) fn kick(&self, identity: &str) {
        if let Some(c) = self.conn(identity) {
            c.kick.notify_one();
        }
    }

    fn conn(&self, identity: &str) -> Option<Conn> {
        lock(&self.conns).get(identity).cloned()
    }

    /// Queues `out` for `identity` when it is connected and subscribed to `needs`; a full
    /// queue closes the connection. True when queued.
    fn offer(&self, identity: &str, needs: Filter, out: Out) -> bool {
        let Some(c) = self.conn(identity) else { return false };
        if !Subscriptions(c.subs.load(Ordering::Relaxed)).has(needs) {
            return false;
        }
        match c.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !c.overflowed.swap(true, Ordering::Relaxed) {
                    self.log(format!(
                        "mqtt: {identity}: closing: its outbound queue is full (it does not read)"
                    ));
                }
                c.kick.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// A twin's desired properties changed: the identity (`device` or `device/module`) hears
    /// of it if it is connected and subscribed.
    pub(super) fn desired_changed(&self, identity: &str) {
        self.offer(identity, Filter::DesiredPatches, Out::Desired);
    }

    /// Closes every connection of a device and its modules (it was deleted).
    pub(super) fn forget_device(&self, device: &str) {
        let prefix = format!("{device}/");
        let conns = lock(&self.conns);
        for (k, c) in conns.iter() {
            if k == device || k.starts_with(&prefix) {
                c.kick.notify_one();
            }
        }
        drop(conns);
        lock(&self.c2d).remove(device);
    }

    /// Calls direct method `name` on `identity`: waits up to `connect` for it to be online
    /// and subscribed to methods, then up to `response` for its answer.
    pub(super) async fn invoke(
        &self,
        identity: &str,
        name: &str,
        payload: Bytes,
        connect: Duration,
        response: Duration,
    ) -> Result<MethodReply, MethodError> {
        let online = || {
            self.conn(identity)
                .is_some_and(|c| Subscriptions(c.subs.load(Ordering::Relaxed)).has(Filter::Methods))
        };
        let until = tokio::time::Instant::now() + connect;
        while !online() {
            if tokio::time::Instant::now() >= until {
                return Err(MethodError::NotOnline);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&self.calls).insert(rid.clone(), (identity.to_owned(), tx));
        let out = Out::Method { name: name.to_owned(), rid: rid.clone(), payload };
        if !self.offer(identity, Filter::Methods, out) {
            lock(&self.calls).remove(&rid);
            return Err(MethodError::NotOnline);
        }
        let answer = tokio::time::timeout(response, rx).await;
        lock(&self.calls).remove(&rid);
        match answer {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(MethodError::Timeout(response.as_secs())),
        }
    }

    /// `identity` answered call `rid`; false when no such call of its is waiting.
    fn answer(&self, identity: &str, rid: &str, reply: MethodReply) -> bool {
        let mut calls = lock(&self.calls);
        if calls.get(rid).is_none_or(|(who, _)| who != identity) {
            return false;
        }
        calls.remove(rid).is_some_and(|(_, tx)| tx.send(reply).is_ok())
    }

    /// Queues a cloud-to-device message for `device`: sent at once when it is connected and
    /// subscribed, else kept (in memory, at most [`MAX_C2D_PENDING`] per device) until it
    /// subscribes. False when the device already has that many waiting.
    ///
    /// [`MAX_C2D_PENDING`]: crate::iothub::limits::MAX_C2D_PENDING
    pub(super) fn send_c2d(&self, device: &str, message: C2d) -> bool {
        let mut pending = lock(&self.c2d);
        let queue = pending.entry(device.to_owned()).or_default();
        if queue.len() >= crate::iothub::limits::MAX_C2D_PENDING {
            return false;
        }
        queue.push_back(message);
        drop(pending);
        self.flush_c2d(device);
        true
    }

    /// Sends `device` the messages waiting for it, if it is connected and subscribed.
    fn flush_c2d(&self, device: &str) {
        loop {
            let Some(m) = lock(&self.c2d).get_mut(device).and_then(VecDeque::pop_front) else {
                return;
            };
            if !self.offer(device, Filter::Devicebound, Out::Devicebound(m.clone())) {
                lock(&self.c2d).entry(device.to_owned()).or_default().push_front(m);
                return;
            }
        }
    }

    /// Stores a device's report with the others that came meanwhile ([`report_writer`]);
    /// returns once it is committed (or refused).
    pub(super) async fn report(
        &self,
        report: crate::server::store::Report,
    ) -> Result<crate::server::store::Outcome<crate::iothub::Twin>, ReportError> {
        let (tx, rx) = oneshot::channel();
        self.reports.send((report, tx)).await.map_err(|_| ReportError::WriterStopped)?;
        rx.await.map_err(|_| ReportError::WriterStopped)?
    }

    /// Notes what a connection changed for its store write ([`save_loop`]).
    fn save_later(
        &self,
        identity: &str,
        subs: Option<Option<u8>>,
        model: Option<(&str, Option<&str>, &str)>,
    ) {
        let mut s = lock(&self.saves);
        if let Some(subs) = subs {
            s.sessions.insert(identity.to_owned(), subs);
        }
        if let Some((d, m, model)) = model {
            s.models.insert((d.to_owned(), m.map(str::to_owned)), model.to_owned());
        }
    }
}

/// Writes what connections changed (sessions, model ids) every [`SAVE_EVERY`], in one
/// transaction each time.
async fn save_loop(s: Shared) {
    loop {
        tokio::time::sleep(SAVE_EVERY).await;
        let taken = std::mem::take(&mut *lock(&s.live.saves));
        if taken.sessions.is_empty() && taken.models.is_empty() {
            continue;
        }
        let sessions: Vec<(String, Option<u8>)> = taken.sessions.into_iter().collect();
        let models: Vec<(String, Option<String>, String)> =
            taken.models.into_iter().map(|((d, m), model)| (d, m, model)).collect();
        if let Err(e) = s.db.call(move |st| st.save_mqtt_state(&sessions, &models)).await {
            s.live.log(format!("mqtt: sessions not saved: {e}"));
        }
    }
}

/// Writes reports as they come, every report queued meanwhile in the same transaction (group
/// commit: a rollout's thousands of reports cost a few hundred commits, not one each).
async fn report_writer(s: Shared, mut rx: mpsc::Receiver<ReportJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < REPORT_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (reports, waiting): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        match s.db.call(move |st| st.patch_reported_batch(&reports)).await {
            Ok(outcomes) => {
                for (done, outcome) in waiting.into_iter().zip(outcomes) {
                    let _ = done.send(Ok(outcome));
                }
            }
            Err(e) => {
                let e = ReportError::Store(Arc::new(e));
                for done in waiting {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The MQTT listener, bound.
pub(super) struct Listener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl Listener {
    /// Binds `addr` and makes (or reads) the certificates for `names` in `data_dir`; returns
    /// the listener, its address and the CA file.
    pub(super) async fn bind(
        addr: SocketAddr,
        data_dir: &std::path::Path,
        names: &[String],
    ) -> Result<(Self, SocketAddr, std::path::PathBuf), super::ServerError> {
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            super::ServerError::Config(format!("MQTT endpoint: cannot listen on {addr}: {e}"))
        })?;
        let bound = tcp.local_addr()?;
        let (tls, ca) = tls::acceptor(data_dir, names)?;
        Ok((Self { tcp, tls }, bound, ca))
    }

    /// Accepts devices until the process ends (at most `cap` at once).
    pub(super) async fn serve(self, s: Shared, cap: usize) {
        tokio::spawn(save_loop(s.clone()));
        if let Some(rx) = lock(&s.live.reports_rx).take() {
            tokio::spawn(report_writer(s.clone(), rx));
        }
        let open = Arc::new(tokio::sync::Semaphore::new(cap));
        loop {
            let stream = match self.tcp.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (s, tls) = (s.clone(), self.tls.clone());
            tokio::spawn(async move {
                session::run(s, tls, stream).await;
                drop(permit);
            });
        }
    }
}

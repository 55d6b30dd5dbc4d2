//! `otaforge serve`: an embedded Device Update and IoT Hub service speaking the ADU data-plane
//! REST API (api-versions 2022-10-01 and 2026-06-01: update and device management) and IoT
//! Hub's service API (identities, twins, queries, configurations, module twins) over HTTP, with
//! a SQLite store and the `dir` blob backend served from the same process through signed,
//! expiring URLs.
//!
//! - [`routes`]: the HTTP surface, one router per surface; [`error`]: every error answer, in
//!   the shape of its surface; [`auth`]: who may call the IoT Hub routes, as extractors;
//!   [`guard`]: what keeps a web page from driving a tokenless service; [`listen`]: the
//!   accept loop's timeouts and connection cap.
//! - The domain, apart from the routes: [`import`] (what an import does, one function per
//!   stage), [`deploy`] (deployments' rules and status), [`devices`] (Device Update's view of
//!   the registry), [`desired`] (what a deployment writes into twins), [`reconcile`] (what
//!   serve does on its own), [`watch`] (long-poll).
//! - [`store`]: the typed, versioned SQLite store, reached off the async workers; [`state`]:
//!   what every route shares, and the data dir's secrets.
//!
//! Authentication: `Authorization: Bearer TOKEN` when started with a token. Without one, the
//! listener must be a loopback address (anything else is refused at start), and requests need
//! no token. Blob read URLs carry their own signature instead; IoT Hub routes take the hub's
//! SAS tokens too, and device routes only the device's own.
//!
//! This module depends on the library (manifest rules, service models, dir store); nothing in
//! the library depends on it.

mod auth;
mod deploy;
mod desired;
mod devices;
mod diagnostics;
mod error;
pub mod fetch;
pub(crate) mod guard;
mod import;
pub mod listen;
mod mqtt;
mod progress;
mod reconcile;
mod routes;
mod state;
pub mod store;
mod views;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fetch::{AllowedHost, FetchPolicy};
pub use guard::check as browser_check;
pub use mqtt::LogSink;
pub use mqtt::tls::CA_FILE as MQTT_CA_FILE;
pub use state::HUB_KEY_NAME;
use state::{
    AppState, Shared, hub_key, private_dir, private_file, remove_stray_temp_files, update_keys,
};
use store::{Db, Store};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file or socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A setting is unsafe or invalid.
    #[error("{0}")]
    Config(String),
    /// The blob store failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Database, blob store and imported content live here.
    pub data_dir: PathBuf,
    /// The Device Update instance name clients use.
    pub instance: String,
    /// Required bearer token; None is allowed only on loopback.
    pub token: Option<String>,
    /// Hosts beyond its own blob store that imports may fetch from ([`fetch`]).
    pub allow_fetch: Vec<AllowedHost>,
    /// A fetch that makes no progress for this long fails.
    pub stall_timeout: Duration,
    /// The base URL clients and devices reach this service at, when that is not the listen
    /// address (a host name on the LAN, a reverse proxy); read URLs of blobs start with it.
    pub public_url: Option<url::Url>,
    /// A connection that sends no complete request head for this long is closed (also while
    /// a kept-alive connection waits for its next request).
    pub header_timeout: Duration,
    /// The most connections open at once (lowered to leave [`listen::RESERVED_FILES`] of the
    /// open-file limit free).
    pub max_connections: usize,
    /// Where devices connect over MQTT/TLS (IoT Hub's device protocol; port 0: any free
    /// port); None: no MQTT endpoint.
    pub mqtt_listen: Option<SocketAddr>,
    /// Where the MQTT endpoint's log lines go.
    pub log: LogSink,
    /// Release reports and state files the dashboard shows under `/ui/releases/` (a folder:
    /// each `release-state.json` in it or one level below, found when the page is read).
    pub releases: Vec<PathBuf>,
}

impl Config {
    /// A loopback service at `listen` with its data in `data_dir`: instance `default`, no token,
    /// fetching only from its own store, stall timeout 30 s, header timeout 10 s, as many
    /// connections as the open-file limit leaves room for, and an MQTT endpoint on any free
    /// port of the same address.
    pub fn local(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            instance: "default".into(),
            token: None,
            allow_fetch: Vec::new(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            public_url: None,
            header_timeout: listen::HEADER_TIMEOUT,
            max_connections: MAX_OPEN_FILES as usize,
            mqtt_listen: Some(SocketAddr::new(listen.ip(), 0)),
            log: LogSink::default(),
            releases: Vec::new(),
        }
    }
}

/// How long a fetch may make no progress before it fails.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a single fetch may take, however steadily it progresses (2 GB at 3.5 MB/s).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// A running service.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The HTTP base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The blob store root (upload here with `--dir`).
    pub blob_dir: PathBuf,
    /// URL prefix of blob read URLs (`--base-url` for uploads).
    pub blob_url: String,
    /// The file holding the IoT Hub service connection string (mode 0600).
    pub iothub_connection_file: PathBuf,
    /// The MQTT endpoint's bound address, when it has one.
    pub mqtt_addr: Option<SocketAddr>,
    /// The CA certificate devices trust for the MQTT endpoint (`server_verification_cert`).
    pub mqtt_ca_file: Option<PathBuf>,
    /// Where devices connect (`GatewayHostName` of their connection strings: `host[:port]`,
    /// the port only when it is not 8883).
    pub gateway: Option<String>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Waits until the server stops (it runs until the process ends).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Runs `work` to its end as its own task, even when the request awaiting it is dropped (its
/// client went away: axum drops a handler's future at its next await). For a write followed
/// by what must follow it, such as telling devices their desired properties changed: a write
/// whose devices were never told leaves them waiting, and the next reconcile pass finds their
/// twins already written.
pub(crate) async fn to_the_end<F>(work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down, which drops this future too.
        Err(_) => std::future::pending().await,
    }
}

/// The current time as ADU writes it.
pub fn now_string() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The shortest token serve accepts: a token is the only defence of a service that is reachable
/// beyond loopback, so it must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// Refuses empty, blank, space-padded and short tokens.
pub fn check_token(token: &str) -> Result<(), ServerError> {
    let problem = if token.trim().is_empty() {
        "is empty or blank"
    } else if token.trim() != token {
        "starts or ends with whitespace"
    } else if token.chars().count() < MIN_TOKEN_LEN {
        "is shorter than 16 characters"
    } else if token.chars().any(|c| c.is_control() || c == ' ') {
        "contains spaces or control characters"
    } else {
        return Ok(());
    };
    Err(ServerError::Config(format!(
        "the token {problem}; use at least {MIN_TOKEN_LEN} random characters, e.g. \
         `openssl rand -hex 24`"
    )))
}

/// Refuses settings that are unsafe or out of range, before anything is touched.
fn check_config(config: &Config) -> Result<(), ServerError> {
    if let Some(t) = &config.token {
        check_token(t)?;
    }
    if config.token.is_none() && !config.listen.ip().is_loopback() {
        return Err(ServerError::Config(format!(
            "refusing to listen on {} without --token: only loopback addresses may serve without authentication",
            config.listen
        )));
    }
    crate::manifest::check_id_part("instance", &config.instance)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    if config.header_timeout.is_zero() || config.max_connections == 0 {
        return Err(ServerError::Config(
            "the header timeout and the connection limit must be above zero".into(),
        ));
    }
    if config.stall_timeout.is_zero() || config.stall_timeout >= FETCH_TIMEOUT {
        return Err(ServerError::Config(format!(
            "the stall timeout must be between 1 s and {} s",
            FETCH_TIMEOUT.as_secs() - 1
        )));
    }
    Ok(())
}

/// Opens (and migrates) the store in the data dir, recovering what a killed process left.
async fn open_store(data_dir: &std::path::Path) -> Result<Db, ServerError> {
    private_dir(data_dir)?;
    let db_path = data_dir.join("otaforge-serve.sqlite");
    private_file(&db_path)?;
    let now = now_string();
    let opened = db_path.clone();
    let store = tokio::task::spawn_blocking(move || {
        let store = Store::open(&opened, &now)?;
        store.prune_operations(&import::retention_cutoff(), crate::limits::KEPT_OPERATIONS)?;
        Ok::<_, store::StoreError>(store)
    })
    .await
    .map_err(|e| ServerError::Config(e.to_string()))??;
    Ok(Db::new(store, &db_path))
}

/// What clients use: the public URL, else the listen address, with 0.0.0.0 or [::] (which no
/// client can connect to) replaced by loopback.
fn base_url(public_url: Option<&url::Url>, addr: SocketAddr) -> String {
    match public_url {
        Some(u) => u.as_str().trim_end_matches('/').to_owned(),
        None if addr.ip().is_unspecified() => {
            let lo: std::net::IpAddr = if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            format!("http://{}", SocketAddr::new(lo, addr.port()))
        }
        None => format!("http://{addr}"),
    }
}

/// Writes the IoT Hub service connection string for `base_url` (mode 0600), naming the MQTT
/// endpoint as its gateway; returns its file.
fn write_connection_string(
    data_dir: &std::path::Path,
    base_url: &str,
    hub_key: &crate::iothub::sas::SasKey,
    gateway: Option<String>,
) -> Result<PathBuf, ServerError> {
    let hub_host = base_url.trim_start_matches("http://").trim_start_matches("https://");
    let conn = crate::iothub::ConnectionString::new(
        hub_host.trim_end_matches('/'),
        HUB_KEY_NAME,
        hub_key.clone(),
        base_url.starts_with("http://"),
    )
    .with_gateway(gateway);
    let file = data_dir.join("iothub.connection-string");
    crate::fsutil::write_output(
        &file,
        conn.to_secret_string().as_bytes(),
        crate::fsutil::Privacy::Private,
    )?;
    Ok(file)
}

/// Binds, recovers the store and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    check_config(&config)?;
    let db = open_store(&config.data_dir).await?;
    // Every simulated or real device long-polling its twin holds a connection: allow many
    // (as far as the hard limit lets; beyond it, connections are refused, not the start).
    let _ = crate::fsutil::raise_open_files(MAX_OPEN_FILES);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let base_url = base_url(config.public_url.as_ref(), addr);
    let blob_dir = config.data_dir.join("blobs");
    let blob_url = format!("{base_url}/blobs");
    let content_dir = config.data_dir.join("content");
    let incoming_dir = config.data_dir.join("incoming");
    for d in [&content_dir, &incoming_dir] {
        fs_err::create_dir_all(d)?;
        remove_stray_temp_files(d)?;
    }
    let mut fetch = FetchPolicy::new(addr.port(), config.allow_fetch.clone());
    if let Some(u) = &config.public_url {
        fetch = fetch.with_public_url(u);
    }
    let http = fetch
        .client(config.stall_timeout, FETCH_TIMEOUT)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let hub_key = hub_key(&config.data_dir)?;
    let (update_key, update_sjwk) = update_keys(&config.data_dir)?;
    let mqtt = match config.mqtt_listen {
        Some(at) => Some(bind_mqtt(&config, at).await?),
        None => None,
    };
    let gateway = mqtt.as_ref().map(|(_, addr, _)| gateway(config.public_url.as_ref(), *addr));
    let iothub_connection_file =
        write_connection_string(&config.data_dir, &base_url, &hub_key, gateway.clone())?;
    let state: Shared = Arc::new(AppState {
        db,
        instance: config.instance.clone(),
        releases: config.releases.clone(),
        token: config.token.clone(),
        port: addr.port(),
        blobs: crate::storage::dir::DirStore::open(&blob_dir, &blob_url)?.private(),
        files: crate::storage::dir::DirStore::open(&config.data_dir, &format!("{base_url}/files"))?
            .private(),
        content_dir,
        incoming_dir,
        http,
        fetch,
        hub_key,
        manifests: std::sync::Mutex::new(Default::default()),
        update_key,
        update_sjwk,
        twin_watch: Arc::default(),
        views: std::sync::Mutex::default(),
        edge_changed: tokio::sync::Notify::new(),
        deployment_created: tokio::sync::Notify::new(),
        live: mqtt::Live::new(hub_names(&base_url, config.public_url.as_ref()), config.log.clone()),
    });
    reconcile::spawn(&state);
    progress::spawn(&state);
    let state_for_mqtt = state.clone();
    let app = routes::router(state);
    let open_files = crate::fsutil::open_files_limit().unwrap_or(1024);
    let cap = listen::connection_cap(config.max_connections, open_files);
    let (mqtt_addr, mqtt_ca_file) = match mqtt {
        Some((listener, at, ca)) => {
            tokio::spawn(listener.serve(state_for_mqtt, cap));
            (Some(at), Some(ca))
        }
        None => (None, None),
    };
    let task = tokio::spawn(listen::serve(listener, app, config.header_timeout, cap));
    Ok(Running {
        addr,
        base_url,
        blob_dir,
        blob_url,
        iothub_connection_file,
        mqtt_addr,
        mqtt_ca_file,
        gateway,
        task,
    })
}

/// Binds the MQTT endpoint at `at`, with a server certificate for the names devices reach it
/// by.
async fn bind_mqtt(
    config: &Config,
    at: SocketAddr,
) -> Result<(mqtt::Listener, SocketAddr, PathBuf), ServerError> {
    let mut extra = vec![at.ip().to_string()];
    if let Some(h) = config.public_url.as_ref().and_then(url::Url::host_str) {
        extra.push(h.to_owned());
    }
    mqtt::Listener::bind(at, &config.data_dir, &mqtt::tls::names(&extra)).await
}

/// The host (and port, when not 8883) devices dial: the public URL's host when listening on
/// every interface, else the listen address.
fn gateway(public_url: Option<&url::Url>, at: SocketAddr) -> String {
    let host = match public_url.and_then(url::Url::host_str) {
        Some(h) if at.ip().is_unspecified() => h.to_owned(),
        _ if at.ip().is_unspecified() || at.ip().is_loopback() && at.is_ipv6() => {
            "localhost".to_owned()
        }
        _ => at.ip().to_string(),
    };
    if at.port() == 8883 { host } else { format!("{host}:{}", at.port()) }
}

/// The hub names devices may give in their user name and SAS resource, lower case, without
/// a port.
fn hub_names(base_url: &str, public_url: Option<&url::Url>) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let extra = [url::Url::parse(base_url).ok(), public_url.cloned()];
    for u in extra.iter().flatten() {
        if let Some(h) = u.host_str() {
            names.push(h.trim_start_matches('[').trim_end_matches(']').to_lowercase());
        }
    }
    names.dedup();
    names
}

/// The open files serve asks for (connections, mostly devices waiting for their twin).
const MAX_OPEN_FILES: u64 = 65_536;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn work_run_to_the_end_finishes_when_its_caller_is_dropped() {
        let told = Arc::new(AtomicBool::new(false));
        let t = told.clone();
        // The caller (a request whose client went away) is dropped while the work waits.
        let caller = super::to_the_end(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.store(true, Ordering::SeqCst);
        });
        assert!(tokio::time::timeout(Duration::from_millis(5), caller).await.is_err());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(told.load(Ordering::SeqCst), "what follows the write still ran");
    }
}

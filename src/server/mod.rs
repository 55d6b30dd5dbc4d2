//! `otaforge serve`: an embedded Device Update service speaking the ADU data-plane REST API
//! (api-versions 2022-10-01 and 2026-06-01, update management) over HTTP, with a SQLite store and
//! the `dir` blob backend served from the same process through signed, expiring URLs.
//!
//! - [`routes`]: the HTTP surface (paths, status codes, headers, the ADU error envelope);
//! - [`import`]: what an import does (fetch, check, build the documents), one function per stage;
//! - [`store`]: the typed, versioned SQLite store, reached off the async workers.
//!
//! Authentication: `Authorization: Bearer TOKEN` when started with a token. Without one, the
//! listener must be a loopback address (anything else is refused at start), and requests need
//! no token. Blob read URLs carry their own signature instead.
//!
//! This module depends on the library (manifest rules, service models, dir store); nothing in
//! the library depends on it.

mod configs;
mod deploy;
mod desired;
mod devices;
pub mod fetch;
mod guard;
mod hub;
mod import;
pub mod listen;
mod modules;
mod routes;
pub mod store;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::service::{ErrorBody, ImportItem, OperationStatus, UpdateInfo, UpdateOperation};
use crate::storage::dir::DirStore;
use fetch::{AllowedHost, FetchPolicy};
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
}

impl Config {
    /// A loopback service at `listen` with its data in `data_dir`: instance `default`, no token,
    /// fetching only from its own store, stall timeout 30 s, header timeout 10 s, as many
    /// connections as the open-file limit leaves room for.
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
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Waits until the server stops (it runs until the process ends).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// What every route shares.
struct AppState {
    db: Db,
    instance: String,
    token: Option<String>,
    /// The port it listens on (a request's own `Origin` names it).
    port: u16,
    blobs: DirStore,
    /// Imported content as devices download it: the data dir as a store whose only container
    /// URLs are minted for is `content` (`/files/content/SHA256HEX?se=…&sig=…`).
    files: DirStore,
    content_dir: PathBuf,
    incoming_dir: PathBuf,
    http: reqwest::Client,
    fetch: FetchPolicy,
    /// The IoT Hub `iothubowner` key service requests are signed with.
    hub_key: crate::iothub::sas::SasKey,
    /// Update manifests and their file URLs by update id, with when they were made.
    manifests: std::sync::Mutex<ManifestCache>,
    /// The key that signs update manifests, and `sjwk` (it, signed by the root key).
    update_key: crate::sign::adu::RsaKey,
    update_sjwk: String,
    /// Devices waiting for their twin to change (long-poll).
    twin_watch: Arc<watch::TwinWatch>,
    /// Device Update views by group (`""`: the whole registry), each with the store
    /// generation it was built at, behind its own lock (see `routes::view_of`).
    views: std::sync::Mutex<std::collections::HashMap<String, Arc<ViewSlot>>>,
    /// Something that can change which Edge deployments apply to which device happened.
    edge_changed: tokio::sync::Notify,
}

/// Update manifests with file URLs, by update id, with when they were made.
type ManifestCache =
    std::collections::HashMap<String, (std::time::Instant, desired::DesiredUpdate)>;

type Shared = Arc<AppState>;

/// A kept view and the store generation it was read at.
type ViewSlot = tokio::sync::Mutex<Option<(u64, Arc<devices::View>)>>;

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

/// Creates `dir` (and its parents) and makes it 0700: the store holds imported content and
/// the signing key of read URLs, which other users of the machine must not read.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    fs_err::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates `path` empty with mode 0600 when missing, and makes an existing one 0600; SQLite
/// gives its `-wal` and `-shm` files the database file's mode.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut o = fs_err::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    fs_err::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let f = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Removes the temp files a killed process left in `dir`; nothing refers to them.
fn remove_stray_temp_files(dir: &std::path::Path) -> Result<(), std::io::Error> {
    for entry in fs_err::read_dir(dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".otaforge-") {
            let _ = fs_err::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Binds, recovers the store and starts serving in the background.
pub async fn start(config: Config) -> Result<Running, ServerError> {
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
    private_dir(&config.data_dir)?;
    let db_path = config.data_dir.join("otaforge-serve.sqlite");
    private_file(&db_path)?;
    let now = now_string();
    let opened = db_path.clone();
    let store = tokio::task::spawn_blocking(move || {
        let store = Store::open(&opened, &now)?;
        store.prune_operations(&retention_cutoff(), crate::limits::KEPT_OPERATIONS)?;
        Ok::<_, store::StoreError>(store)
    })
    .await
    .map_err(|e| ServerError::Config(e.to_string()))??;
    // Every simulated or real device long-polling its twin holds a connection: allow many
    // (as far as the hard limit lets; beyond it, connections are refused, not the start).
    let _ = crate::fsutil::raise_open_files(MAX_OPEN_FILES);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    // What clients use: the public URL, else the listen address, with 0.0.0.0 or [::] (which
    // no client can connect to) replaced by loopback.
    let base_url = match &config.public_url {
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
    };
    let blob_dir = config.data_dir.join("blobs");
    let blob_url = format!("{base_url}/blobs");
    let blobs = DirStore::open(&blob_dir, &blob_url)?.private();
    let files = DirStore::open(&config.data_dir, &format!("{base_url}/files"))?.private();
    let content_dir = config.data_dir.join("content");
    let incoming_dir = config.data_dir.join("incoming");
    for d in [&content_dir, &incoming_dir] {
        fs_err::create_dir_all(d)?;
        remove_stray_temp_files(d)?;
    }
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
    let mut fetch = FetchPolicy::new(addr.port(), config.allow_fetch.clone());
    if let Some(u) = &config.public_url {
        fetch = fetch.with_public_url(u);
    }
    let http = fetch
        .client(config.stall_timeout, FETCH_TIMEOUT)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let hub_key = hub_key(&config.data_dir)?;
    let (update_key, update_sjwk) = update_keys(&config.data_dir)?;
    let hub_host = base_url.trim_start_matches("http://").trim_start_matches("https://");
    let conn = crate::iothub::ConnectionString::new(
        hub_host.trim_end_matches('/'),
        HUB_KEY_NAME,
        hub_key.clone(),
        base_url.starts_with("http://"),
    );
    let iothub_connection_file = config.data_dir.join("iothub.connection-string");
    crate::fsutil::write_output(
        &iothub_connection_file,
        conn.to_secret_string().as_bytes(),
        crate::fsutil::Privacy::Private,
    )?;
    let state: Shared = Arc::new(AppState {
        db: Db::new(store, &db_path),
        instance: config.instance.clone(),
        token: config.token.clone(),
        port: addr.port(),
        blobs,
        files,
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
    });
    // One pass at the start catches up with whatever changed while serve was down.
    state.edge_changed.notify_one();
    tokio::spawn(modules::edge_pass(state.clone()));
    let app = routes::router(state.clone());
    // Deployments reach devices (and scheduled ones start) through this loop as well as right
    // after each change, so a restart or a missed event only delays them.
    tokio::spawn(async move {
        loop {
            let _ = reconcile_all(&state).await;
            tokio::time::sleep(RECONCILE_EVERY).await;
        }
    });
    let open_files = crate::fsutil::open_files_limit().unwrap_or(1024);
    let cap = listen::connection_cap(config.max_connections, open_files);
    let task = tokio::spawn(listen::serve(listener, app, config.header_timeout, cap));
    Ok(Running { addr, base_url, blob_dir, blob_url, iothub_connection_file, task })
}

fn new_operation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new operation with a fresh id, created now.
fn new_operation(status: OperationStatus, update: Option<UpdateInfo>) -> UpdateOperation {
    let id = new_operation_id();
    let now = now_string();
    UpdateOperation {
        operation_id: id.clone(),
        status,
        update,
        resource_location: None,
        error: None,
        trace_id: Some(id.replace('-', "")),
        last_action_date_time: Some(now.clone()),
        created_date_time: Some(now.clone()),
        etag: Some(import::etag(&format!("{id}{now}"))),
        extra: Default::default(),
    }
}

/// How often every group's deployment is written to its devices again.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// How long a file URL written into a device's twin is valid.
const FILE_URL_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Reconciles every group that has a deployment.
async fn reconcile_all(s: &Shared) -> Result<(), ServerError> {
    let groups = s.db.read(|st| st.deployment_groups()).await?;
    for g in groups {
        reconcile(s, &g).await?;
    }
    Ok(())
}

/// Writes a group's current deployment into its devices' desired properties where they do not
/// already say it: the update manifest and file URLs for devices of a subgroup the deployment
/// covers (once its start time has come), `Cancel` for a canceled subgroup, and the retry's
/// timestamp after a retry.
async fn reconcile(s: &Shared, group: &str) -> Result<(), ServerError> {
    reconcile_devices(s, group, None).await
}

/// [`reconcile`] for every device of the group, or only for `only`.
async fn reconcile_devices(s: &Shared, group: &str, only: Option<&str>) -> Result<(), ServerError> {
    let g = group.to_owned();
    let current =
        s.db.read(move |st| st.deployments(&g)).await?.into_iter().find(|d| d.state != "Inactive");
    let Some(current) = current else { return Ok(()) };
    let d = &current.deployment;
    let started = humantime::parse_rfc3339_weak(d.start_date_time.trim_end_matches('Z'))
        .map(|t| t <= SystemTime::now())
        .unwrap_or(true);
    if !started {
        return Ok(());
    }
    let twins = match only {
        Some(id) => {
            let id = id.to_owned();
            let row = s.db.read(move |st| st.device(&id)).await?;
            row.map(|r| vec![(r.twin, r.created)]).unwrap_or_default()
        }
        None => {
            let g = group.to_owned();
            s.db.read(move |st| st.group_twins(&g)).await?
        }
    };
    let updates = s.db.read(|st| st.updates()).await?;
    let view = devices::View::build(&twins, &updates);
    let by_id: std::collections::HashMap<&str, &crate::iothub::Twin> =
        twins.iter().map(|(t, _)| (t.device_id.as_str(), t)).collect();
    let mut manifest: Option<desired::DesiredUpdate> = None;
    let mut patches = Vec::new();
    for dev in view.devices.iter().filter(|x| x.device.group_id.as_deref() == Some(group)) {
        let class = &dev.device.device_class_id;
        if !d.device_class_subgroups.iter().flatten().any(|c| c == class) {
            continue;
        }
        let actions = current.subgroups.get(class).cloned().unwrap_or_default();
        let action = if actions.canceled || current.state == "Canceled" {
            desired::ACTION_CANCEL
        } else {
            desired::ACTION_PROCESS
        };
        let twin = by_id.get(dev.device.device_id.as_str());
        let workflow = twin.and_then(|t| {
            t.properties.desired.get("deviceUpdate")?.get("service")?.get("workflow").cloned()
        });
        let want = serde_json::json!({"action": action, "id": d.deployment_id});
        let same = workflow.as_ref().is_some_and(|w| {
            w.get("action") == want.get("action")
                && w.get("id") == want.get("id")
                && w.get("retryTimestamp").and_then(Value::as_str)
                    == actions.retry_timestamp.as_deref()
        });
        if same {
            continue;
        }
        if action == desired::ACTION_PROCESS && manifest.is_none() {
            manifest = Some(cached_manifest(s, &d.update.update_id).await?);
        }
        let property = desired::service_property(
            &d.deployment_id,
            action,
            actions.retry_timestamp.as_deref(),
            manifest.as_ref().filter(|_| action == desired::ACTION_PROCESS),
        );
        let Value::Object(patch) = property else { continue };
        patches.push((dev.device.device_id.clone(), patch));
    }
    if patches.is_empty() {
        return Ok(());
    }
    let patched = s.db.call(move |st| st.patch_desired_many(&patches)).await?;
    for (id, version) in patched {
        s.twin_watch.changed(&id, version);
    }
    Ok(())
}

/// [`manifest_and_urls`], kept for a day per update (its URLs are valid for seven), so a
/// rollout does not rebuild and re-sign it for every device.
async fn cached_manifest(
    s: &Shared,
    id: &crate::manifest::UpdateId,
) -> Result<desired::DesiredUpdate, ServerError> {
    let key = id.to_string();
    let fresh = |at: &std::time::Instant| at.elapsed() < Duration::from_secs(86_400);
    if let Some((at, m)) = s.manifests.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
        && fresh(at)
    {
        return Ok(m.clone());
    }
    let m = manifest_and_urls(s, id).await?;
    s.manifests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, (std::time::Instant::now(), m.clone()));
    Ok(m)
}

/// The update manifest of an update and a signed URL for each file it names.
async fn manifest_and_urls(
    s: &Shared,
    id: &crate::manifest::UpdateId,
) -> Result<desired::DesiredUpdate, ServerError> {
    use crate::storage::BlobStore as _;
    let key = id.clone();
    let (update, files) =
        s.db.read(move |st| {
            let update = st.update(&key)?;
            let mut files = Vec::new();
            for f in st.file_ids(&key)? {
                files.extend(st.file(&key, &f)?);
            }
            Ok((update, files))
        })
        .await?;
    let Some(update) = update else {
        return Err(ServerError::Config(format!("update {id} is gone")));
    };
    let (manifest, content) = desired::update_manifest(&update, &files);
    let container: crate::storage::ContainerName = "content"
        .parse()
        .map_err(|e: crate::storage::NameError| ServerError::Config(e.to_string()))?;
    let mut urls = Map::new();
    for (file_id, sha) in content {
        let hex = sha.parse::<crate::Sha256>().map(|h| h.to_hex()).unwrap_or_default();
        let blob: crate::storage::BlobName = hex
            .parse()
            .map_err(|e: crate::storage::NameError| ServerError::Config(e.to_string()))?;
        let url = s.files.read_url(&container, &blob, FILE_URL_TTL).await?;
        urls.insert(file_id, Value::String(url));
    }
    let signature =
        crate::sign::adu::sign_update_manifest(&manifest, &s.update_key, &s.update_sjwk)
            .map_err(|e| ServerError::Config(e.to_string()))?;
    Ok(desired::DesiredUpdate { manifest, signature, file_urls: urls })
}

/// After a device reported: it gets its group's deployment if it has not (a device that joins
/// or comes online later); and when it reported a failure, its group's active deployment is
/// checked against its cloud rollback policy, and the rollback deployment created, superseding
/// it (once: the rollback has no policy of its own). Only a failure can complete a failure
/// threshold, so a successful report costs one device, not the whole group.
async fn after_report(s: &Shared, device_id: &str, failed: bool) -> Result<(), ServerError> {
    let id = device_id.to_owned();
    let Some(row) = s.db.read(move |st| st.device(&id)).await? else { return Ok(()) };
    let group = row.twin.group().unwrap_or(devices::DEFAULT_GROUP).to_owned();
    reconcile_devices(s, &group, Some(device_id)).await?;
    if !failed {
        return Ok(());
    }
    let g = group.clone();
    let twins = s.db.read(move |st| st.group_twins(&g)).await?;
    let updates = s.db.read(|st| st.updates()).await?;
    let view = devices::View::build(&twins, &updates);
    let g = group.clone();
    let active =
        s.db.read(move |st| st.deployments(&g)).await?.into_iter().find(|d| d.state == "Active");
    let Some(active) = active else { return Ok(()) };
    if !deploy::rollback_due(&active, &view) {
        return Ok(());
    }
    let Some(rollback) = deploy::rollback_of(&active, &now_string()) else { return Ok(()) };
    let id = rollback.deployment_id.clone();
    let rollback = match deploy::prepare(rollback, &group, &id, &view, &updates) {
        Ok(r) => r,
        // The rollback update fits no subgroup any more: nothing to roll back to.
        Err(_) => return Ok(()),
    };
    s.db.call(move |st| st.put_deployment(&rollback, deploy::MAX_DEPLOYMENTS).map(drop)).await?;
    reconcile(s, &group).await
}

/// The open files serve asks for (connections, mostly devices waiting for their twin).
const MAX_OPEN_FILES: u64 = 65_536;

/// The shared access policy name of the hub key.
pub const HUB_KEY_NAME: &str = "iothubowner";

/// The update manifest keys: the root key and the signing key (PKCS#8, mode 0600, made on first
/// start), `sjwk` for the signing key, and the root's public JWK in `update-root.jwk.json` for
/// devices to trust.
fn update_keys(
    data_dir: &std::path::Path,
) -> Result<(crate::sign::adu::RsaKey, String), ServerError> {
    use crate::sign::adu::RsaKey;
    let load = |file: &str, kid: &str| -> Result<RsaKey, ServerError> {
        let der = secret_file(&data_dir.join(file), || RsaKey::generate(kid)?.to_pkcs8())?;
        RsaKey::from_pkcs8(&der, kid)
            .map_err(|e| ServerError::Config(format!("{}: {e}", data_dir.join(file).display())))
    };
    let root = load("update-root.key", "otaforge.root.1")?;
    let signing = load("update-signing.key", "otaforge.signing.1")?;
    let sjwk = crate::sign::adu::signing_key_jws(&root, &signing)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let jwk = serde_json::to_vec_pretty(&root.public_jwk())
        .map_err(|e| ServerError::Config(e.to_string()))?;
    // Public, but the data dir is private and so is every file in it (see docs/serve.md).
    crate::fsutil::write_output(
        &data_dir.join("update-root.jwk.json"),
        &jwk,
        crate::fsutil::Privacy::Private,
    )?;
    Ok((signing, sjwk))
}

/// The hub's owner key: read from the data dir, made on first start (mode 0600).
fn hub_key(data_dir: &std::path::Path) -> Result<crate::iothub::sas::SasKey, ServerError> {
    use crate::iothub::sas::SasKey;
    let path = data_dir.join("iothub-owner.key");
    let text = secret_file(&path, || SasKey::generate().map(|k| k.to_base64().into_bytes()))?;
    SasKey::from_base64(&String::from_utf8_lossy(&text))
        .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
}

/// A secret file of the data dir: its bytes, or, on first start, what `make` gives, written
/// with mode 0600.
fn secret_file<E: std::fmt::Display>(
    path: &std::path::Path,
    make: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, ServerError> {
    match fs_err::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes =
                make().map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
            crate::fsutil::write_output(path, &bytes, crate::fsutil::Privacy::Private)?;
            Ok(bytes)
        }
        Err(e) => Err(e.into()),
    }
}

/// Finished operations last acted on before this time are dropped.
fn retention_cutoff() -> String {
    let days = Duration::from_secs(crate::limits::OPERATION_DAYS * 86_400);
    let cutoff = SystemTime::now().checked_sub(days).unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(cutoff).to_string()
}

/// An error as it is stored and listed: its message and each detail's cut to
/// [`crate::limits::ERROR_MESSAGE_CHARS`], at most [`crate::limits::ERROR_DETAILS`] details
/// (the last says how many more there were), so no request can make operations grow without
/// bound.
fn bounded(mut e: ErrorBody) -> ErrorBody {
    use crate::limits::{ERROR_DETAILS, ERROR_MESSAGE_CHARS};
    fn cut(s: &mut String) {
        if let Some((i, _)) = s.char_indices().nth(ERROR_MESSAGE_CHARS) {
            s.truncate(i);
            s.push_str(" [cut]");
        }
    }
    cut(&mut e.message);
    let more = e.details.len().saturating_sub(ERROR_DETAILS);
    e.details.truncate(ERROR_DETAILS);
    for d in &mut e.details {
        cut(&mut d.message);
    }
    if more > 0 {
        e.details.push(ErrorBody::new("MoreDetails", format!("{more} more not shown")));
    }
    e
}

/// Runs an accepted import to its end and records the result.
async fn run_import(s: Shared, mut op: UpdateOperation, items: Vec<ImportItem>) {
    op.status = OperationStatus::Running;
    op.last_action_date_time = Some(now_string());
    let running = op.clone();
    if s.db.call(move |st| st.put_operation(&running, None)).await.is_err() {
        return;
    }
    let existing = s.db.read(|st| st.updates()).await.unwrap_or_default();
    let now = now_string();
    let result = import::prepare(&s.http, &items, &existing, &now, &s.content_dir).await;
    op.last_action_date_time = Some(now_string());
    let fail = |mut op: UpdateOperation, error: ErrorBody| {
        op.status = OperationStatus::Failed;
        op.update = None;
        op.resource_location = None;
        op.error = Some(bounded(error));
        op
    };
    let prepared = match result {
        Ok(p) => p,
        Err(error) => {
            let op = fail(op, error);
            let _ = s.db.call(move |st| st.put_operation(&op, None)).await;
            return;
        }
    };
    // Content first (content-addressed, invisible until the commit refers to it).
    let content_dir = s.content_dir.clone();
    let content = prepared.content;
    let stored = tokio::task::spawn_blocking(move || {
        content
            .into_iter()
            .try_for_each(|(hex, file)| file.commit_to(&content_dir.join(&hex), true))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r);
    if let Err(e) = stored {
        let op =
            fail(op, ErrorBody::new("InternalServerError", format!("cannot store content: {e}")));
        let _ = s.db.call(move |st| st.put_operation(&op, None)).await;
        return;
    }
    let updates = prepared.updates;
    let first = &updates[0].update;
    op.status = OperationStatus::Succeeded;
    op.update = Some(UpdateInfo {
        update_id: first.update_id.clone(),
        description: first.description.clone(),
        friendly_name: first.friendly_name.clone(),
        extra: Default::default(),
    });
    op.resource_location = Some(routes::update_location(&s.instance, &first.update_id));
    let _ =
        s.db.call(move |st| {
            // The store may have changed while fetching: re-check duplicates in the same lock.
            let mut dup = None;
            for u in &updates {
                if st.update(&u.update.update_id)?.is_some() {
                    dup = Some(u.update.update_id.clone());
                    break;
                }
            }
            if let Some(id) = dup {
                let op = fail(
                    op,
                    ErrorBody::new(
                        "UpdateAlreadyExists",
                        format!("update {id} is already imported"),
                    ),
                );
                return st.put_operation(&op, None);
            }
            if let Err(e) = st.commit_import(&updates, &op) {
                let op = fail(op, ErrorBody::new("InternalServerError", e.to_string()));
                return st.put_operation(&op, None);
            }
            Ok(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_are_bounded() {
        let mut e = ErrorBody::new("CannotProcessImportManifest", "x".repeat(10_000));
        e.details =
            (0..250).map(|i| ErrorBody::new("rule", format!("{i}{}", "y".repeat(5_000)))).collect();
        let b = bounded(e);
        assert!(b.message.chars().count() <= crate::limits::ERROR_MESSAGE_CHARS + 6);
        assert_eq!(b.details.len(), crate::limits::ERROR_DETAILS + 1);
        assert_eq!(b.details.last().unwrap().message, "150 more not shown");
        assert!(
            b.details
                .iter()
                .all(|d| d.message.chars().count() <= crate::limits::ERROR_MESSAGE_CHARS + 6)
        );
    }
}

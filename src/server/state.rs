//! What every route and background task of serve shares ([`AppState`]), and the data dir's
//! secrets it is made from: the hub's owner key, the update manifest keys (each made on first
//! start, mode 0600), and the private folders and files they live in.

use std::path::PathBuf;
use std::sync::Arc;

use super::ServerError;
use super::store::Db;
use super::{desired, devices, fetch::FetchPolicy, watch};
use crate::storage::dir::DirStore;

/// What every route and background task shares.
pub(super) struct AppState {
    /// The store.
    pub(super) db: Db,
    /// The Device Update instance name clients use.
    pub(super) instance: String,
    /// Release reports, state files and folders of them, for the dashboard.
    pub(super) releases: Vec<std::path::PathBuf>,
    /// The bearer token every API request needs, when serve has one.
    pub(super) token: Option<String>,
    /// The port it listens on (a request's own `Origin` names it).
    pub(super) port: u16,
    /// Uploaded blobs, served through signed read URLs (`/blobs/…`).
    pub(super) blobs: DirStore,
    /// Imported content as devices download it: the data dir as a store whose only container
    /// URLs are minted for is `content` (`/files/content/SHA256HEX?se=…&sig=…`).
    pub(super) files: DirStore,
    /// Imported content, by SHA-256.
    pub(super) content_dir: PathBuf,
    /// Uploads and fetches on their way in.
    pub(super) incoming_dir: PathBuf,
    /// The client imports fetch with ([`FetchPolicy::client`]).
    pub(super) http: reqwest::Client,
    /// What imports may fetch.
    pub(super) fetch: FetchPolicy,
    /// The IoT Hub `iothubowner` key service requests are signed with.
    pub(super) hub_key: crate::iothub::sas::SasKey,
    /// Update manifests and their file URLs by update id, with when they were made.
    pub(super) manifests: std::sync::Mutex<ManifestCache>,
    /// The key that signs update manifests, and `sjwk` (it, signed by the root key).
    pub(super) update_key: crate::sign::adu::RsaKey,
    pub(super) update_sjwk: String,
    /// Devices waiting for their twin to change (long-poll).
    pub(super) twin_watch: Arc<watch::TwinWatch>,
    /// Device Update views by group (`""`: the whole registry), each with the store
    /// generation it was built at, behind its own lock (see `views::view_of`).
    pub(super) views: std::sync::Mutex<std::collections::HashMap<String, Arc<ViewSlot>>>,
    /// Something that can change which Edge deployments apply to which device happened.
    pub(super) edge_changed: tokio::sync::Notify,
    /// A deployment was created (its start is recorded at once: `progress`).
    pub(super) deployment_created: tokio::sync::Notify,
    /// The devices and modules connected over MQTT, and what serve keeps for them.
    pub(super) live: super::mqtt::Live,
}

impl AppState {
    /// A twin's desired properties changed (`identity`: `device` or `device/module`): wakes
    /// its long-polls and tells it over MQTT.
    pub(super) fn desired_changed(&self, identity: &str, version: i64) {
        self.twin_watch.changed(identity, version);
        self.live.desired_changed(identity);
    }
}

/// Update manifests with file URLs, by update id, with when they were made.
pub(super) type ManifestCache =
    std::collections::HashMap<String, (std::time::Instant, desired::DesiredUpdate)>;

/// The state, shared.
pub(super) type Shared = Arc<AppState>;

/// A kept view, as of a store generation and change-log mark.
pub(super) struct KeptView {
    /// The store generation it was read at: it is current while the generation is still this.
    pub(super) at: u64,
    /// The change log's mark it was read at (what changed since is applied to it).
    pub(super) mark: u64,
    /// The imported updates it was computed against.
    pub(super) updates: Arc<Vec<crate::service::Update>>,
    /// The view.
    pub(super) view: Arc<devices::View>,
}

/// A kept view behind its own lock (see `views::view_of`).
pub(super) type ViewSlot = tokio::sync::Mutex<Option<KeptView>>;

/// The shared access policy name of the hub key.
pub const HUB_KEY_NAME: &str = "iothubowner";

/// The update manifest keys: the root key and the signing key (PKCS#8, mode 0600, made on first
/// start), `sjwk` for the signing key, and the root's public JWK in `update-root.jwk.json` for
/// devices to trust.
pub(super) fn update_keys(
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
pub(super) fn hub_key(
    data_dir: &std::path::Path,
) -> Result<crate::iothub::sas::SasKey, ServerError> {
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

/// Creates `dir` (and its parents) and makes it 0700: the store holds imported content and
/// the signing key of read URLs, which other users of the machine must not read.
pub(super) fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
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
pub(super) fn private_file(path: &std::path::Path) -> std::io::Result<()> {
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
pub(super) fn remove_stray_temp_files(dir: &std::path::Path) -> Result<(), std::io::Error> {
    for entry in fs_err::read_dir(dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".otaforge-") {
            let _ = fs_err::remove_file(entry.path());
        }
    }
    Ok(())
}

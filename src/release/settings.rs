//! What a release runs with, resolved before it starts (as ripgrep resolves its arguments
//! before searching): the checked `otaforge.toml`, what the caller decides over it
//! ([`Overrides`]: the command line's options), and the [`Environment`] (`SOURCE_DATE_EPOCH`,
//! `OTAFORGE_ADU_TOKEN`, `IOTHUB_CONNECTION_STRING`, read once). For a real run this gives the
//! Device Update client (endpoint and authentication), the storage backend and, when a stage is
//! an IoT Edge stage, the IoT Hub; a dry run has none of them and makes no network call.

use std::path::PathBuf;
use std::time::Duration;

use super::config::Checked;
use super::{Options, ReleaseError, STATE_FILE};
use crate::iothub::IotHubClient;
use crate::service::{AduClient, Auth};
use crate::storage::AnyStore;

/// The environment variables a release reads (named in [`crate::env`]), read once.
#[derive(Clone, Default)]
pub struct Environment {
    /// `SOURCE_DATE_EPOCH`: the manifest's and metadata's time.
    pub source_date_epoch: Option<String>,
    /// `OTAFORGE_ADU_TOKEN`: the bearer token for Device Update (never printed).
    pub adu_token: Option<String>,
    /// `IOTHUB_CONNECTION_STRING`: the IoT Hub for Edge stages (never printed).
    pub iothub_connection_string: Option<String>,
}

impl Environment {
    /// Reads this process's environment; an empty variable counts as unset.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            source_date_epoch: crate::env::source_date_epoch(),
            adu_token: var(crate::env::OTAFORGE_ADU_TOKEN),
            iothub_connection_string: var(crate::env::IOTHUB_CONNECTION_STRING),
        }
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "(set)" } else { "(unset)" };
        f.debug_struct("Environment")
            .field("source_date_epoch", &self.source_date_epoch)
            .field("adu_token", &set(&self.adu_token))
            .field("iothub_connection_string", &set(&self.iothub_connection_string))
            .finish()
    }
}

/// What the caller decides over `otaforge.toml`.
#[derive(Default)]
pub struct Overrides {
    /// Build and check offline only.
    pub dry_run: bool,
    /// Continue a stopped release; an error when there is none.
    pub resume: bool,
    /// Stop after this stage.
    pub until: Option<String>,
    /// How often a stage's status is read (default 2 s).
    pub poll: Option<Duration>,
    /// Threads for hashing and deltas (default: the machine's).
    pub jobs: Option<usize>,
    /// The Device Update endpoint instead of `[service] endpoint`.
    pub endpoint: Option<String>,
    /// How to authenticate to Device Update (e.g. Entra ID); else `OTAFORGE_ADU_TOKEN`, else
    /// no token (serve on loopback).
    pub auth: Option<Auth>,
    /// A blob store opened from the caller's storage options; else `[storage] dir`, else the
    /// service's own store.
    pub store: Option<AnyStore>,
}

/// The service side of a real run.
pub struct Remote {
    /// Device Update, authenticated.
    pub client: AduClient,
    /// Where the files go: a store already opened (`[storage] dir`, or the caller's), or with
    /// none, the Device Update service's own store (`otaforge serve`), found when the run
    /// starts.
    pub store: Option<AnyStore>,
    /// The IoT Hub, when a stage is an IoT Edge stage.
    pub hub: Option<IotHubClient>,
}

/// Everything a release runs with.
pub struct Settings {
    /// The checked description.
    pub checked: Checked,
    /// Times, threads, `--until`.
    pub options: Options,
    /// The service side; none for a dry run.
    pub remote: Option<Remote>,
}

impl Settings {
    /// Resolves the settings of a release of `checked`: `--resume` and `--until` checked, then
    /// for a real run the client, the store and the hub.
    pub fn resolve(
        checked: Checked,
        o: Overrides,
        env: &Environment,
    ) -> Result<Self, ReleaseError> {
        let dir = checked.output.join(checked.update_id.version().as_str());
        if o.resume && !dir.join(STATE_FILE).is_file() {
            return Err(ReleaseError::NothingToResume { dir });
        }
        if let Some(u) = &o.until
            && !checked.config.stages.iter().any(|s| &s.name.value == u)
        {
            return Err(ReleaseError::UnknownStage { name: u.clone() });
        }
        let options = Options {
            source_date_epoch: env.source_date_epoch.clone(),
            until: o.until.clone(),
            jobs: o.jobs.unwrap_or_else(crate::hash::default_jobs),
            poll: o.poll,
        };
        let remote = if o.dry_run { None } else { Some(remote(&checked, o, env)?) };
        Ok(Self { checked, options, remote })
    }

    /// The secrets a message about the store could hold (an account key, a SAS), to redact.
    pub fn secrets(&self) -> Vec<String> {
        match &self.remote {
            Some(Remote { store: Some(s), .. }) => s.secrets(),
            _ => Vec::new(),
        }
    }
}

/// The client, the store and the hub of a real run.
fn remote(c: &Checked, o: Overrides, env: &Environment) -> Result<Remote, ReleaseError> {
    let endpoint = o.endpoint.unwrap_or_else(|| c.config.service.endpoint.clone());
    let auth = match (o.auth, &env.adu_token) {
        (Some(a), _) => a,
        (None, Some(t)) => Auth::Static(t.clone()),
        (None, None) => Auth::None,
    };
    let client = AduClient::new(&endpoint, &c.config.service.instance, auth)
        .map_err(super::service(format!("connect to {endpoint}")))?;
    let store = match (o.store, &c.config.storage.dir) {
        (Some(s), _) => Some(s),
        (None, Some(dir)) => {
            let base =
                c.config.storage.base_url.as_deref().unwrap_or("http://127.0.0.1:8080/blobs");
            Some(AnyStore::Dir(crate::storage::dir::DirStore::open(&c.root.join(dir), base)?))
        }
        (None, None) => None,
    };
    Ok(Remote { client, store, hub: hub(c, env)? })
}

/// The IoT Hub, when a stage is an Edge stage: `service.iothub-connection-file`, else
/// `IOTHUB_CONNECTION_STRING`.
fn hub(c: &Checked, env: &Environment) -> Result<Option<IotHubClient>, ReleaseError> {
    if !c.config.stages.iter().any(|s| s.edge_target.is_some()) {
        return Ok(None);
    }
    let text = match &c.config.service.iothub_connection_file {
        Some(f) => {
            let path: PathBuf = c.root.join(f);
            fs_err::read(&path).map_err(super::io(&path))?
        }
        None => env.iothub_connection_string.clone().ok_or(ReleaseError::NoHub)?.into_bytes(),
    };
    let hub_err = |what: &str| super::hub_error(what.to_owned());
    let conn = String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .map_err(hub_err("the IoT Hub connection string"))?;
    Ok(Some(IotHubClient::new(conn).map_err(hub_err("the IoT Hub"))?))
}

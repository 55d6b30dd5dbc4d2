//! Simulated devices: each one an ADU agent in goal-state mode (adu.md §5.4) that talks to its
//! IoT Hub — `otaforge serve`, or Azure IoT Hub given its connection string — over IoT Hub's
//! device protocol (MQTT/TLS, [`link`]) with its own credential, as the Device Update agent
//! does: model id `dtmi:azure:iot:deviceUpdateModel;3`, the `deviceUpdate` component with its
//! agent properties, the acknowledgement of each desired `service` (`value`, `ac`, `ad`,
//! `av`), and install results as agent 1.1 writes them (`extendedResultCodes`,
//! `stepResults`). A device reports its agent
//! properties, reads its twin, and on a new deployment checks the update manifest signature
//! against its root keys (when given), reports `DeploymentInProgress`, downloads what it needs
//! (streamed and hashed as it arrives, stopped as soon as it runs past the manifest's
//! `sizeInBytes`), applies a real delta (`delta::apply`) when its installed image is the
//! related file's source, else downloads the full file, and reports `Idle` with result 700 and
//! the new `installedUpdateId`, or `Failed` with the result codes the agent reports for what
//! went wrong (module `erc`). It answers log collections (`logs`). A manifest
//! it cannot read fails the deployment at once with the agent's parser codes. Injected failures
//! are drawn from the seed, the device and the deployment, so a run is reproducible.
//!
//! Every device runs as its own task and holds one MQTT connection, on which the hub publishes
//! its desired-property changes, so a fleet of thousands costs the hub one idle connection per
//! device, not a poll loop; `parallel` bounds how many install at once. Devices that install the same image
//! share its bytes.
//!
//! With `edge`, the devices are IoT Edge devices instead (`capabilities.iotEdge`), each the
//! edgeAgent of [`edge`]: connected as its `$edgeAgent` and `$edgeHub` module identities, they
//! deploy what the `$edgeAgent` module twin asks for and report the runtime's reported
//! properties, with injected image pull failures and crash loops.
//!
//! Not yet: cancel handling beyond not starting.

mod edge;
mod link;
mod logs;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::Sha256;
use crate::iothub::mqtt::client::{Connection, Gateway};
use crate::iothub::sas::SasKey;
use crate::iothub::{ConnectionString, GROUP_TAG, IotHubClient, IotHubError};
use crate::manifest::UpdateId;
use crate::service::agent::{
    AgentReport, CONTRACT_MODEL_ID, DesiredComponent, ReportedComponent, STATE_FAILED, STATE_IDLE,
    STATE_IN_PROGRESS, ServiceProperty, UpdateManifest, Workflow,
};
use crate::service::model::InstallResult;

/// The longest a device waits for a change before it looks again.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// `Apply_Success`.
const APPLY_SUCCESS: i64 = 700;

/// The extended result codes a simulated device reports, each the one the Device Update agent
/// reports for the same failure (facility, component and code as `result.h` packs them; see
/// `service::result_code` and the adu-coverage notes §4.5), as the signed number the twin
/// carries.
mod erc {
    const fn code(bits: u32) -> i64 {
        bits as i32 as i64
    }
    /// `DO_E_DOWNLOAD_NO_PROGRESS` through Delivery Optimization (facility 0xD): injected
    /// download failures, and a download that broke off.
    pub(super) const DOWNLOAD: i64 = code(0xD0D0_2002);
    /// `ADUC_ERC_VALIDATION_FILE_HASH_INVALID_HASH`: a file whose size or SHA-256 is not the
    /// manifest's.
    pub(super) const FILE: i64 = code(0x0010_0003);
    /// `ADUC_ERC_CONTENT_DOWNLOADER_INVALID_DOWNLOAD_URI`: no URL for a file.
    pub(super) const NO_URL: i64 = code(0x4000_0007);
    /// `ADUC_ERC_UPDATE_CONTENT_HANDLER_INSTALL_FAILURE_MISSING_PRIMARY_FILE`.
    pub(super) const NO_FILES: i64 = code(0x3000_012E);
    /// An injected install failure, as the step's handler reports it: the script exiting
    /// with 1 (`ADUC_ERC_SCRIPT_HANDLER_CHILD_PROCESS_FAILURE_EXITCODE(1)`), apt-get failing
    /// (`ADUC_ERC_APT_HANDLER_PACKAGE_INSTALL_FAILURE`), swupdate's child exiting with 1,
    /// else `ADUC_ERC_UPDATE_CONTENT_HANDLER_INSTALL_FAILURE_UNKNOWNEXCEPTION`.
    pub(super) fn install(handler: Option<&str>) -> i64 {
        code(match handler {
            Some("microsoft/script:1") => 0x3050_1001,
            Some("microsoft/apt:1") => 0x3020_0200,
            Some("microsoft/swupdate:1" | "microsoft/swupdate:2") => 0x3010_1001,
            _ => 0x3000_0130,
        })
    }
    /// A download answered an HTTP error, as Delivery Optimization maps it
    /// (`HTTP_E_STATUS_*`, facility 0xD).
    pub(super) fn http(status: u16) -> i64 {
        code(match status {
            401 => 0xD019_0191,
            403 => 0xD019_0193,
            404 | 410 => 0xD019_0194,
            408 => 0xD019_0198,
            500 | 503 => 0xD019_01F4,
            _ => 0xD019_0001,
        })
    }
    /// A delta that did not apply (the delta processor's error, component 0x90A), reported
    /// beside a success when the full file was downloaded instead.
    pub(super) const DELTA: i64 = code(0x90A0_7530);
    /// `JWSResult_InvalidSignature` of the update manifest's check
    /// (`ADUC_COMPONENT_JWS_UPDATE_MANIFEST_VALIDATION`).
    pub(super) const SIGNATURE: i64 = code(0xA020_0004);
    /// `ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_NO_UPDATE_ID`: the manifest names no update.
    pub(super) const NO_UPDATE_ID: i64 = code(0x8030_0003);
    /// `ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_NO_UPDATE_MANIFEST`: the twin has no manifest.
    pub(super) const NO_UPDATE_MANIFEST: i64 = code(0x8030_0008);
    /// `ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_BAD_UPDATE_MANIFEST`: the manifest is not a JSON
    /// object the agent can read.
    pub(super) const BAD_UPDATE_MANIFEST: i64 = code(0x8030_0009);
}

/// How an image was made: downloaded whole, rebuilt from a delta, or downloaded whole after
/// a delta failed to apply (which the agent reports beside its success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Full,
    Delta,
    FullAfterDelta,
}

/// Why a device did not install a deployment, as it reports it: the extended result code and
/// words for `resultDetails`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: i64,
    why: String,
}

impl Refusal {
    fn new(code: i64, why: impl Into<String>) -> Self {
        Self { code, why: why.into() }
    }

    /// A file that could not be fetched or checked.
    fn file(why: impl Into<String>) -> Self {
        Self::new(erc::FILE, why)
    }
}

/// The largest buffer reserved up front for a download: `sizeInBytes` comes from the twin, so a
/// huge claim must not become a huge allocation before a byte has arrived.
const MAX_RESERVE: u64 = 64 << 20;

/// Why the fleet stopped.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The hub refused or failed.
    #[error(transparent)]
    Hub(#[from] IotHubError),
    /// A device request failed.
    #[error("device {device}: {message}")]
    Device {
        /// The device.
        device: String,
        /// What failed.
        message: String,
    },
}

/// Shares of deployments that fail at each stage (0.0-1.0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Failures {
    /// A download fails.
    pub download: f64,
    /// The install fails after the download.
    pub install: f64,
    /// (IoT Edge) a module's image fails to pull, per device and image.
    pub pull: f64,
    /// (IoT Edge) a module crash-loops after it starts, per device and image.
    pub crash: f64,
}

/// What the fleet looks like.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The hub's service connection string: to register the devices, and where they connect
    /// (its `GatewayHostName`, which serve writes, else its host on port 8883).
    pub hub: ConnectionString,
    /// The CA certificate(s) (PEM) the devices trust for their MQTT connection: serve's
    /// `mqtt-ca.pem`; none: the platform's roots, as for Azure IoT Hub.
    pub ca: Option<Arc<Vec<u8>>>,
    /// Device ids are `PREFIX-0000`, `PREFIX-0001`, ….
    pub prefix: String,
    /// How many devices.
    pub devices: usize,
    /// Their compat properties (`manufacturer`, `model`, …).
    pub class: Map<String, Value>,
    /// Their `ADUGroup`, if any.
    pub group: Option<String>,
    /// What they run at the start, and its image (shared by every device that runs it).
    pub installed: Option<(UpdateId, Arc<Vec<u8>>)>,
    /// Injected failures.
    pub failures: Failures,
    /// Seed of the injected failures.
    pub seed: u64,
    /// The longest one read of a device's twin waits for it to change (long-poll; at most
    /// two minutes).
    pub poll: Duration,
    /// Devices that install at once (download, apply, verify: each holds its image and the
    /// download in memory); the others wait their turn. Waiting for the twin is not limited:
    /// every device holds one connection, as a real one holds its MQTT connection.
    pub parallel: usize,
    /// Keys a signed delta must verify against (a signed delta without them is refused and
    /// the full file downloaded instead, as `delta apply` fails closed).
    pub trusted: Option<Arc<crate::sign::TrustedKeys>>,
    /// Root keys (public JWKs) the update manifest signature must chain to, as an ADU agent's
    /// built-in roots; none: the signature is not checked.
    pub roots: Option<Arc<Vec<Value>>>,
    /// IoT Edge devices (edgeAgents) instead of ADU agents.
    pub edge: bool,
}

/// What one device did, for the run's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Deployments installed.
    pub installed: u64,
    /// Of those, through a delta.
    pub through_delta: u64,
    /// Deployments that failed.
    pub failed: u64,
    /// Looks at the twin that did not get through (serve down, a connection lost); the device
    /// tries again at its next poll.
    pub unreachable: u64,
}

/// A deterministic number in [0, 1) from the seed, the device and the deployment
/// (SplitMix64 over a SHA-256 of the three).
fn draw(seed: u64, device: &str, deployment: &str, stage: &str) -> f64 {
    let d = Sha256::digest(format!("{seed}\n{device}\n{deployment}\n{stage}").as_bytes());
    let mut x = u64::from_le_bytes(d.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// What a device runs: the update, its image (shared by every device that runs it) and the
/// image's SHA-256 (base64), computed once.
#[derive(Clone)]
struct Installed {
    id: UpdateId,
    image: Arc<Vec<u8>>,
    sha: String,
}

impl Installed {
    fn new(id: UpdateId, image: Arc<Vec<u8>>) -> Self {
        let sha = Sha256::digest(&image).to_base64();
        Self { id, image, sha }
    }
}

/// Images by SHA-256: devices that install the same image keep one copy of it.
#[derive(Default)]
struct Images(std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Vec<u8>>>>);

impl Images {
    fn intern(&self, sha: &str, bytes: Vec<u8>) -> Arc<Vec<u8>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = map.get(sha).and_then(std::sync::Weak::upgrade) {
            return known;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let image = Arc::new(bytes);
        map.insert(sha.to_owned(), Arc::downgrade(&image));
        image
    }
}

/// The running totals every device adds to.
#[derive(Default)]
struct Counters {
    installed: AtomicU64,
    through_delta: AtomicU64,
    failed: AtomicU64,
    unreachable: AtomicU64,
}

impl Counters {
    fn tally(&self) -> Tally {
        Tally {
            installed: self.installed.load(Ordering::Relaxed),
            through_delta: self.through_delta.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
        }
    }
}

/// What the devices of a fleet share.
struct Env {
    /// Where the devices connect.
    gateway: Gateway,
    /// The hub's name in their credentials (the connection string's `HostName`).
    hub_name: String,
    /// Downloads.
    http: reqwest::Client,
    class: Map<String, Value>,
    trusted: Option<Arc<crate::sign::TrustedKeys>>,
    roots: Option<Arc<Vec<Value>>>,
    failures: Failures,
    seed: u64,
    poll: Duration,
    edge: bool,
    /// Installs (download, apply, verify) under way at once.
    slots: tokio::sync::Semaphore,
    counters: Counters,
    images: Images,
}

/// One simulated device.
struct Device {
    id: String,
    key: SasKey,
    installed: Option<Installed>,
    /// The last deployment (and retry) acted on.
    done: Option<String>,
    /// Its desired properties as last read or changed, `$version` included.
    desired: Map<String, Value>,
    /// The reported `$version` the hub last acknowledged.
    reported_version: Option<i64>,
    /// Its reported properties as last read, with what it reported since (Edge devices
    /// report relative to them).
    last_reported: Map<String, Value>,
    /// Its MQTT connection (an Edge device's `$edgeAgent`'s), when connected.
    link: Option<Connection>,
    /// The desired properties were read afresh (on connecting) and not acted on yet.
    fresh: bool,
    /// An Edge device's `$edgeHub` connection.
    hub_link: Option<Connection>,
    /// An Edge device's runtime module keys.
    modules: Option<link::ModuleKeys>,
    /// The log collection the twin asks for (`diagnosticInformation.service`), as last read.
    log_request: Option<crate::service::diagnostics::DiagnosticsRequest>,
    /// The log collection last answered.
    logs_answered: Option<String>,
}

impl Device {
    fn fail(&self, message: impl Into<String>) -> FleetError {
        FleetError::Device { device: self.id.clone(), message: message.into() }
    }

    /// Reports the agent's `deviceUpdate` component on the device's connection.
    async fn report_agent(&mut self, agent: AgentReport) -> Result<(), FleetError> {
        self.report(ReportedComponent::new(agent).to_patch()).await
    }

    /// The acknowledgement of the desired `service` property the device read, as the agent
    /// sends it (`{"value", "ac", "ad", "av"}`).
    fn acknowledge(&self, service: &ServiceProperty) -> Map<String, Value> {
        let mut component = ReportedComponent {
            marker: Some(crate::service::agent::COMPONENT_MARKER.into()),
            ..ReportedComponent::default()
        };
        component.extra.insert(
            "service".into(),
            crate::service::agent::acknowledgement(service, self.desired_version()),
        );
        component.to_patch()
    }

    /// What the agent reports about itself in `state`, with what it last worked on.
    fn agent(
        &self,
        env: &Env,
        state: i64,
        workflow: Option<Workflow>,
        result: Option<InstallResult>,
    ) -> AgentReport {
        // As agent 1.1 orders them: the compat properties, `interfaceId` null, the contract
        // model, the agent's version.
        let mut props = env.class.clone();
        props.insert("interfaceId".into(), Value::Null);
        props.insert("contractModelId".into(), json!(CONTRACT_MODEL_ID));
        props.insert("aduVer".into(), json!(ADU_VERSION));
        let names: Vec<&str> = env.class.keys().map(String::as_str).collect();
        AgentReport {
            device_properties: Some(props),
            compat_property_names: Some(names.join(",")),
            state: Some(state),
            workflow,
            installed_update_id: self
                .installed
                .as_ref()
                .and_then(|i| serde_json::to_string(&i.id).ok()),
            last_install_result: result.as_ref().map(agent_result),
            extra: Map::new(),
        }
    }

    /// The desired `service` property (`None` when there is no deployment), and the log
    /// collection the twin asks for, from the desired properties as last read or changed.
    fn service(&mut self) -> Option<ServiceProperty> {
        self.log_request = crate::service::diagnostics::DiagnosticsComponent::of(&self.desired)
            .and_then(|c| c.service);
        DesiredComponent::of(&self.desired).and_then(|c| c.service)
    }

    /// Downloads `url`, streaming: the body is hashed as it arrives and the download stops
    /// as soon as it runs past `size` (a twin's `fileUrls` are outside the manifest signature,
    /// so whoever can write a twin could otherwise feed a device an endless body). The bytes
    /// are returned only when they are exactly `size` long and their SHA-256 is `sha`.
    async fn download(
        &self,
        env: &Env,
        url: &str,
        size: u64,
        sha: &str,
    ) -> Result<Vec<u8>, Refusal> {
        use sha2::Digest as _;
        let broke = |e: reqwest::Error| Refusal::new(erc::DOWNLOAD, e.to_string());
        let mut resp = env.http.get(url).send().await.map_err(broke)?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(Refusal::new(
                erc::http(status.as_u16()),
                format!("download answered {status}"),
            ));
        }
        let too_long = || {
            Refusal::file(format!(
                "the download runs past the manifest's sizeInBytes ({size}); stopped there"
            ))
        };
        if resp.content_length().is_some_and(|n| n > size) {
            return Err(too_long());
        }
        let mut bytes = Vec::with_capacity(size.min(MAX_RESERVE) as usize);
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = resp.chunk().await.map_err(broke)? {
            if bytes.len() as u64 + chunk.len() as u64 > size {
                return Err(too_long());
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        let digest = Sha256::from_bytes(hasher.finalize().into());
        if bytes.len() as u64 != size || digest.to_base64() != sha {
            return Err(Refusal::file(
                "the downloaded file does not match the manifest's size and sha256",
            ));
        }
        Ok(bytes)
    }

    /// Installs what the manifest names: returns the new image, its SHA-256, and whether a
    /// delta made it.
    async fn install(
        &self,
        env: &Env,
        manifest: &UpdateManifest,
        urls: &std::collections::BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, String, Via), Refusal> {
        let no_files = || Refusal::new(erc::NO_FILES, "the manifest has no files");
        let mut image: Option<(u64, Vec<u8>, String, Via)> = None;
        for (id, f) in &manifest.files {
            let size = f.size_in_bytes;
            let sha = f.sha256().unwrap_or_default();
            let mut bytes = None;
            let mut via = Via::Full;
            // A delta whose source is the installed image.
            if let Some(installed) = &self.installed {
                for r in &f.related_files {
                    if r.source_sha256() != Some(installed.sha.as_str()) {
                        continue;
                    }
                    let rsha = r.sha256().unwrap_or_default();
                    let rid = crate::iothub::related_file_id(rsha);
                    let Some(url) = urls.get(&rid) else { continue };
                    let rsize = r.size_in_bytes;
                    let delta = self.download(env, url, rsize, rsha).await?;
                    let mut out = Vec::with_capacity(size.min(MAX_RESERVE) as usize);
                    let old = &installed.image;
                    // A delta that would build more than the manifest's size stops there (and
                    // the full file is downloaded instead).
                    if crate::delta::apply(old, &delta, env.trusted.as_deref(), &mut |b| {
                        if out.len() as u64 + b.len() as u64 > size {
                            return Err(std::io::Error::other("longer than sizeInBytes"));
                        }
                        out.extend_from_slice(b);
                        Ok(())
                    })
                    .is_ok()
                        && Sha256::digest(&out).to_base64() == sha
                    {
                        bytes = Some(out);
                        via = Via::Delta;
                    } else {
                        via = Via::FullAfterDelta;
                    }
                    break;
                }
            }
            let bytes = match bytes {
                Some(b) => b,
                None => {
                    let url = urls.get(id).ok_or_else(|| {
                        Refusal::new(erc::NO_URL, format!("no URL for file {id}"))
                    })?;
                    self.download(env, url, size, sha).await?
                }
            };
            // The largest file is the device's image.
            if image.as_ref().is_none_or(|(s, ..)| size > *s) {
                image = Some((size, bytes, sha.to_owned(), via));
            }
        }
        let (_, bytes, sha, via) = image.ok_or_else(no_files)?;
        Ok((bytes, sha, via))
    }

    /// The deployment (and retry) the desired `service` property asks the device to install,
    /// when it has not acted on it yet.
    fn work(&self, service: &ServiceProperty) -> Option<String> {
        let workflow = &service.workflow;
        let retry = workflow.retry_timestamp.as_deref().unwrap_or_default();
        let key = format!("{}\n{retry}", workflow.id);
        let process = workflow.action == Some(crate::service::agent::ACTION_PROCESS);
        (!workflow.id.is_empty() && process && self.done.as_deref() != Some(key.as_str()))
            .then_some(key)
    }

    /// Tries what a deployment asks, after its manifest was read: the signature chain, the
    /// downloads, the install. Returns the new image, its SHA-256 and whether a delta made it.
    async fn attempt(
        &self,
        env: &Env,
        service: &ServiceProperty,
        manifest: &UpdateManifest,
        stage: &str,
    ) -> Result<(Vec<u8>, String, Via), Refusal> {
        // The agent checks the signature chain before anything else (adu.md §5.3).
        if let Some(roots) = &env.roots {
            crate::sign::adu::verify_update_manifest(
                service.update_manifest.as_deref().unwrap_or_default(),
                service.update_manifest_signature.as_deref().unwrap_or_default(),
                roots,
            )
            .map_err(|e| Refusal::new(erc::SIGNATURE, e.to_string()))?;
        }
        let (failures, seed) = (env.failures, env.seed);
        if draw(seed, &self.id, stage, "download") < failures.download {
            return Err(Refusal::new(erc::DOWNLOAD, "injected download failure"));
        }
        let installed = self.install(env, manifest, &service.file_urls).await?;
        if draw(seed, &self.id, stage, "install") < failures.install {
            let handler = manifest.instructions.steps.first().and_then(|s| s.handler.as_deref());
            return Err(Refusal::new(erc::install(handler), "injected install failure"));
        }
        Ok(installed)
    }

    /// Acts on a new deployment (`key` from [`Device::work`]).
    async fn act(
        &mut self,
        env: &Env,
        service: &ServiceProperty,
        key: String,
    ) -> Result<(), FleetError> {
        let flow = Workflow { extra: Map::new(), ..service.workflow.clone() };
        let (id, retry) = (flow.id.clone(), flow.retry_timestamp.clone());
        // A manifest the agent cannot read fails the deployment at once: there is nothing to
        // start, and a device that said nothing would leave it in progress forever.
        let outcome = match read_manifest(service) {
            Err(refusal) => Err(refusal),
            Ok((manifest, update)) => {
                let busy = self.agent(env, STATE_IN_PROGRESS, Some(flow.clone()), None);
                self.report_agent(busy).await?;
                self.report(self.acknowledge(service)).await?;
                let stage = format!("{id}{}", retry.as_deref().unwrap_or_default());
                self.attempt(env, service, &manifest, &stage).await.map(|done| (done, update))
            }
        };
        match outcome {
            Ok(((image, sha, via), update)) => {
                let image = env.images.intern(&sha, image);
                let before = self.installed.replace(Installed { id: update, image, sha });
                let last = match via {
                    Via::Delta => result(APPLY_SUCCESS, 0, "delta"),
                    Via::Full => result(APPLY_SUCCESS, 0, "full"),
                    // The agent reports the delta's failure beside its success.
                    Via::FullAfterDelta => {
                        result(APPLY_SUCCESS, erc::DELTA, "full (the delta did not apply)")
                    }
                };
                let done = self.agent(env, STATE_IDLE, Some(flow), Some(last));
                if let Err(e) = self.report_agent(done).await {
                    // Not reported: as after a crash, the device still runs what it ran.
                    self.installed = before;
                    return Err(e);
                }
                env.counters.installed.fetch_add(1, Ordering::Relaxed);
                env.counters
                    .through_delta
                    .fetch_add(u64::from(via == Via::Delta), Ordering::Relaxed);
            }
            Err(Refusal { code, why }) => {
                let done = self.agent(env, STATE_FAILED, Some(flow), Some(result(0, code, &why)));
                self.report_agent(done).await?;
                env.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.done = Some(key);
        Ok(())
    }

    /// The device's life: read the twin (long-poll), act, again, until told to stop. A device
    /// that cannot reach serve backs off and tries again, reading its twin at once.
    async fn live(
        mut self,
        env: Arc<Env>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        deadline: tokio::time::Instant,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let now = tokio::time::Instant::now();
            if *stop.borrow() || now >= deadline {
                self.disconnect().await;
                return;
            }
            let wait = env.poll.min(deadline - now);
            let step = async {
                if env.edge {
                    return self.edge_turn(&env, wait).await;
                }
                if !self.desired_changed(&env, wait).await? {
                    return Ok(());
                }
                let service = self.service();
                self.answer_log_request(&env).await?;
                let Some(service) = service else { return Ok(()) };
                let Some(key) = self.work(&service) else { return Ok(()) };
                // Installs take turns; waiting for the twin does not.
                let _slot = env.slots.acquire().await;
                self.act(&env, &service, key).await
            };
            let result = tokio::select! {
                r = step => r,
                _ = stop.changed() => {
                    self.disconnect().await;
                    return;
                }
            };
            if result.is_ok() {
                backoff = Duration::from_millis(100);
                continue;
            }
            env.counters.unreachable.fetch_add(1, Ordering::Relaxed);
            // Connect again and read the twin whole: whatever was read is not trusted to have
            // been acted on.
            self.link = None;
            self.hub_link = None;
            let jitter = draw(env.seed, &self.id, "backoff", &backoff.as_millis().to_string());
            let pause = backoff.mul_f64(0.5 + jitter);
            backoff = (backoff * 2).min(Duration::from_secs(2));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The update manifest of a desired `service` property and the update it names, or the
/// agent's refusal when the twin carries none or one it cannot read (not JSON, not an object,
/// no valid `updateId`, not an update manifest).
fn read_manifest(service: &ServiceProperty) -> Result<(UpdateManifest, UpdateId), Refusal> {
    /// Only the part of a manifest that names its update, to tell a manifest without a valid
    /// `updateId` from one that is otherwise malformed, as the agent's parser does.
    #[derive(serde::Deserialize)]
    struct Names {
        #[serde(rename = "updateId")]
        update_id: UpdateId,
    }
    let text = service.update_manifest.as_deref().ok_or_else(|| {
        Refusal::new(erc::NO_UPDATE_MANIFEST, "the deployment carries no updateManifest")
    })?;
    let manifest: Value = serde_json::from_str(text).map_err(|e| {
        Refusal::new(erc::BAD_UPDATE_MANIFEST, format!("the update manifest is not JSON: {e}"))
    })?;
    if !manifest.is_object() {
        return Err(Refusal::new(
            erc::BAD_UPDATE_MANIFEST,
            "the update manifest is not a JSON object",
        ));
    }
    let Names { update_id } = serde_json::from_value(manifest.clone()).map_err(|e| {
        Refusal::new(erc::NO_UPDATE_ID, format!("the update manifest has no valid updateId: {e}"))
    })?;
    let manifest = serde_json::from_value(manifest).map_err(|e| {
        Refusal::new(erc::BAD_UPDATE_MANIFEST, format!("the update manifest is not readable: {e}"))
    })?;
    Ok((manifest, update_id))
}

/// An install result as the agent reports it.
fn result(code: i64, extended: i64, details: &str) -> InstallResult {
    InstallResult {
        result_code: code,
        extended_result_code: extended,
        result_details: Some(details.to_owned()),
        step_results: None,
        extra: Map::new(),
    }
}

/// The `aduVer` the simulated agents report.
const ADU_VERSION: &str = "DU;agent/1.1.0;otaforge-fleet";

/// An install result as agent 1.1 writes it into the twin: `extendedResultCodes` as `%08X`
/// text, one step (`step_0`) with the same result.
fn agent_result(r: &InstallResult) -> Value {
    use crate::service::agent::{AgentInstallResult, AgentStepResult, format_result_codes};
    let codes = format_result_codes(&[r.extended_result_code]);
    let step = AgentStepResult {
        result_code: r.result_code,
        extended_result_codes: Some(codes.clone()),
        result_details: r.result_details.clone(),
    };
    let written = AgentInstallResult {
        result_code: r.result_code,
        extended_result_codes: Some(codes),
        result_details: r.result_details.clone(),
        step_results: Some(std::iter::once(("step_0".to_owned(), step)).collect()),
        extra: Map::new(),
    };
    serde_json::to_value(written).unwrap_or(Value::Null)
}

/// Registers one device (or finds it registered): its key and, for an Edge device, its
/// runtime modules' keys.
async fn register_one(
    hub: &IotHubClient,
    id: &str,
    edge: bool,
) -> Result<(SasKey, Option<link::ModuleKeys>), FleetError> {
    use crate::iothub::identity::{Capabilities, Identity};
    let mut want = Identity::with_keys(id, None, None, None);
    want.capabilities = Some(Capabilities { iot_edge: edge });
    let identity = match hub.create_identity(&want).await {
        Ok(v) => v,
        Err(IotHubError::Api { status: 409, .. }) => hub.identity(id, None).await?,
        Err(e) => return Err(e.into()),
    };
    let key_of = |i: &Identity| {
        SasKey::from_base64(i.primary_key().unwrap_or_default()).map_err(FleetError::from)
    };
    let key = key_of(&identity)?;
    if !edge {
        return Ok((key, None));
    }
    let agent = key_of(&hub.identity(id, Some(link::EDGE_AGENT)).await?)?;
    let hub_key = key_of(&hub.identity(id, Some(link::EDGE_HUB)).await?)?;
    Ok((key, Some(link::ModuleKeys { agent, hub: hub_key })))
}

/// A registered fleet, ready to run.
pub struct Fleet {
    devices: Vec<Device>,
    env: Arc<Env>,
}

/// Devices registered at once.
const REGISTER_AT_ONCE: usize = 16;

impl Fleet {
    /// Registers the devices (or finds them registered), tags their group, and reports each
    /// one's agent properties.
    pub async fn register(spec: FleetSpec) -> Result<Self, FleetError> {
        use futures::StreamExt as _;
        let hub = IotHubClient::new(spec.hub.clone())?;
        let http = reqwest::Client::builder()
            .timeout(MAX_WAIT + Duration::from_secs(30))
            .build()
            .map_err(|e| FleetError::Device {
            device: String::new(),
            message: e.to_string(),
        })?;
        let tls = crate::iothub::mqtt::client::tls_config(spec.ca.as_deref().map(Vec::as_slice))
            .map_err(|e| FleetError::Device { device: String::new(), message: e.to_string() })?;
        let gateway_address = spec.hub.gateway.clone().unwrap_or_else(|| spec.hub.host.clone());
        // Each device holds its connection from here on (an Edge device two), and downloads
        // need some more.
        let per_device = if spec.edge { 2 } else { 1 };
        let want = (spec.devices * per_device + spec.parallel + 64) as u64;
        crate::fsutil::raise_open_files(want).map_err(|e| FleetError::Device {
            device: String::new(),
            message: format!("{} devices need {want} open files: {e}", spec.devices),
        })?;
        let env = Arc::new(Env {
            gateway: Gateway::new(&gateway_address, tls),
            // What the device SDKs put in their user name and SAS resource.
            hub_name: spec.hub.host.clone(),
            http,
            class: spec.class.clone(),
            trusted: spec.trusted.clone(),
            roots: spec.roots.clone(),
            failures: spec.failures,
            seed: spec.seed,
            poll: spec.poll.min(MAX_WAIT),
            edge: spec.edge,
            slots: tokio::sync::Semaphore::new(spec.parallel.max(1)),
            counters: Counters::default(),
            images: Images::default(),
        });
        let installed = spec.installed.map(|(id, image)| Installed::new(id, image));
        let (hub, group, prefix) = (&hub, &spec.group, &spec.prefix);
        let one = |i: usize| {
            let env = env.clone();
            let installed = installed.clone();
            async move {
                let id = format!("{prefix}-{i:04}");
                let (key, modules) = register_one(hub, &id, env.edge).await?;
                if let Some(g) = group {
                    let mut tags = Map::new();
                    tags.insert(GROUP_TAG.into(), json!(g));
                    hub.patch_tags(&id, tags, None).await?;
                }
                let mut d = Device {
                    id,
                    key,
                    installed,
                    done: None,
                    desired: Map::new(),
                    reported_version: None,
                    last_reported: Map::new(),
                    link: None,
                    fresh: false,
                    hub_link: None,
                    modules,
                    log_request: None,
                    logs_answered: None,
                };
                // Connected, with its agent properties reported, before the run starts.
                d.connect(&env).await?;
                Ok::<_, FleetError>(d)
            }
        };
        let mut devices: Vec<Device> = futures::stream::iter(0..spec.devices)
            .map(one)
            .buffer_unordered(REGISTER_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Self { devices, env })
    }

    /// Runs every device, each its own task, for `duration` or until `stop` says so; returns
    /// the totals. Each running device holds a connection: the process's open-file limit is
    /// raised to fit, or the run refused naming the limit. A zero duration runs nothing (the
    /// devices stay registered).
    pub async fn run(
        self,
        duration: Duration,
        stop: &(dyn Fn(&Tally) -> bool + Sync),
    ) -> Result<Tally, FleetError> {
        if duration.is_zero() {
            return Ok(self.env.counters.tally());
        }
        let deadline = tokio::time::Instant::now() + duration;
        let (tell, told) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for d in self.devices {
            tasks.spawn(d.live(self.env.clone(), told.clone(), deadline));
        }
        loop {
            let total = self.env.counters.tally();
            if stop(&total) || tokio::time::Instant::now() >= deadline {
                let _ = tell.send(true);
                while tasks.join_next().await.is_some() {}
                return Ok(self.env.counters.tally());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl crate::error::ErrorCode for FleetError {
    fn code(&self) -> String {
        match self {
            FleetError::Hub(h) => crate::error::ErrorCode::code(h),
            FleetError::Device { .. } => "fleet".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_the_agent_cannot_read_is_refused_with_the_agents_code() {
        let service = |manifest: Option<&str>| ServiceProperty {
            update_manifest: manifest.map(str::to_owned),
            ..ServiceProperty::default()
        };
        let refused = |manifest: Option<&str>| read_manifest(&service(manifest)).unwrap_err().code;
        assert_eq!(refused(None), erc::NO_UPDATE_MANIFEST);
        assert_eq!(refused(Some("{\"files\": ")), erc::BAD_UPDATE_MANIFEST);
        assert_eq!(refused(Some("[1, 2]")), erc::BAD_UPDATE_MANIFEST);
        assert_eq!(refused(Some("{\"files\": {}}")), erc::NO_UPDATE_ID);
        let id = r#""updateId": {"provider": "c", "name": "t", "version": "1.0"}"#;
        assert_eq!(refused(Some(&format!("{{{id}}}"))), erc::BAD_UPDATE_MANIFEST, "no files");
        let good = format!(
            r#"{{"manifestVersion": "4", {id}, "compatibility": [], "instructions": {{"steps": []}},
                "files": {{}}, "createdDateTime": "2026-12-01T00:00:00Z"}}"#
        );
        let (_, id) = read_manifest(&service(Some(&good))).unwrap();
        assert_eq!(id.to_string(), "c/t/1.0");
        assert_eq!(erc::BAD_UPDATE_MANIFEST, -2_144_337_911);
    }

    #[test]
    fn draws_are_reproducible_and_spread() {
        assert_eq!(draw(7, "d1", "x", "install"), draw(7, "d1", "x", "install"));
        assert_ne!(draw(7, "d1", "x", "install"), draw(8, "d1", "x", "install"));
        let below: usize = (0..1000).filter(|i| draw(1, &format!("d{i}"), "x", "s") < 0.1).count();
        assert!((60..140).contains(&below), "{below}");
    }
}

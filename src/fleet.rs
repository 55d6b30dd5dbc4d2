//! Simulated devices: each one an ADU agent in goal-state mode (adu.md §5.4) that talks to
//! `otaforge serve`'s IoT Hub surface with its own credential. A device reports its agent
//! properties, reads its twin, and on a new deployment checks the update manifest signature
//! against its root keys (when given), reports `DeploymentInProgress`, downloads
//! what it needs, checks every size and SHA-256, applies a real delta (`delta::apply`) when its
//! installed image is the related file's source, else downloads the full file, and reports
//! `Idle` with result 700 and the new `installedUpdateId`, or `Failed` with the result codes of
//! what went wrong. Injected failures are drawn from the seed, the device and the deployment, so
//! a run is reproducible.
//!
//! Not yet: cancel handling beyond not starting, and backoff beyond polling again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::Sha256;
use crate::iothub::sas::{SasKey, token};
use crate::iothub::{ConnectionString, GROUP_TAG, IotHubClient, IotHubError};
use crate::manifest::UpdateId;

/// Agent states (adu.md §5.1).
const IDLE: u64 = 0;
const IN_PROGRESS: u64 = 6;
const FAILED: u64 = 255;
/// `Apply_Success`.
const APPLY_SUCCESS: i64 = 700;

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
}

/// What the fleet looks like.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// serve's base URL.
    pub endpoint: String,
    /// The hub's service connection string (to register the devices).
    pub hub: ConnectionString,
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
    /// How often a device reads its twin.
    pub poll: Duration,
    /// Keys a signed delta must verify against (a signed delta without them is refused and
    /// the full file downloaded instead, as `delta apply` fails closed).
    pub trusted: Option<Arc<crate::sign::TrustedKeys>>,
    /// Root keys (public JWKs) the update manifest signature must chain to, as an ADU agent's
    /// built-in roots; none: the signature is not checked.
    pub roots: Option<Arc<Vec<Value>>>,
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

/// One simulated device.
struct Device {
    id: String,
    key: SasKey,
    host: String,
    endpoint: String,
    http: reqwest::Client,
    class: Map<String, Value>,
    installed: Option<(UpdateId, Arc<Vec<u8>>)>,
    trusted: Option<Arc<crate::sign::TrustedKeys>>,
    roots: Option<Arc<Vec<Value>>>,
    done: Option<String>,
    tally: Tally,
}

impl Device {
    fn auth(&self) -> String {
        token(&format!("{}/devices/{}", self.host, self.id), &self.key, None, 4_000_000_000)
    }

    fn fail(&self, message: impl Into<String>) -> FleetError {
        FleetError::Device { device: self.id.clone(), message: message.into() }
    }

    async fn report(&self, reported: Value) -> Result<(), FleetError> {
        let url = format!("{}/devices/{}/twin/reported", self.endpoint, self.id);
        let resp = self
            .http
            .patch(url)
            .header("authorization", self.auth())
            .header("content-type", "application/json")
            .body(reported.to_string())
            .send()
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(self.fail(format!("report answered {}", resp.status())));
        }
        Ok(())
    }

    fn agent(&self, state: u64, extra: Value) -> Value {
        let mut props = self.class.clone();
        props.insert("contractModelId".into(), json!("dtmi:azure:iot:deviceUpdateContractModel;3"));
        props.insert("aduVer".into(), json!("DU;agent/otaforge-fleet"));
        let names: Vec<&str> = self.class.keys().map(String::as_str).collect();
        let mut agent = json!({
            "deviceProperties": props,
            "compatPropertyNames": names.join(","),
            "state": state,
        });
        if let Some((id, _)) = &self.installed {
            agent["installedUpdateId"] = json!(serde_json::to_string(id).unwrap_or_default());
        }
        if let (Value::Object(a), Value::Object(e)) = (&mut agent, extra) {
            a.extend(e);
        }
        json!({"deviceUpdate": {"__t": "c", "agent": agent}})
    }

    async fn desired(&self) -> Result<Value, FleetError> {
        let url = format!("{}/devices/{}/twin", self.endpoint, self.id);
        let resp = self
            .http
            .get(url)
            .header("authorization", self.auth())
            .send()
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        let bytes = resp.bytes().await.map_err(|e| self.fail(e.to_string()))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| self.fail(e.to_string()))?;
        Ok(v["desired"]["deviceUpdate"]["service"].clone())
    }

    async fn download(&self, url: &str, size: u64, sha: &str) -> Result<Vec<u8>, String> {
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("download answered {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        if bytes.len() as u64 != size || Sha256::digest(&bytes).to_base64() != sha {
            return Err("the downloaded file does not match the manifest's size and sha256".into());
        }
        Ok(bytes)
    }

    /// Installs what the manifest names: returns the new image and whether a delta made it.
    async fn install(&self, manifest: &Value, urls: &Value) -> Result<(Vec<u8>, bool), String> {
        let files = manifest["files"].as_object().ok_or("the manifest has no files")?;
        let mut image: Option<(u64, Vec<u8>, bool)> = None;
        for (id, f) in files {
            let size = f["sizeInBytes"].as_u64().unwrap_or(0);
            let sha = f["hashes"]["sha256"].as_str().unwrap_or_default();
            let mut bytes = None;
            let mut by_delta = false;
            // A delta whose source is the installed image.
            if let Some((_, old)) = &self.installed {
                let old_sha = Sha256::digest(old).to_base64();
                for r in f["relatedFiles"].as_array().into_iter().flatten() {
                    if r["properties"]["microsoft.sourceFileHash"].as_str()
                        != Some(old_sha.as_str())
                    {
                        continue;
                    }
                    let rsha = r["hashes"]["sha256"].as_str().unwrap_or_default();
                    let rid = crate::iothub::related_file_id(rsha);
                    let Some(url) = urls[&rid].as_str() else { continue };
                    let delta =
                        self.download(url, r["sizeInBytes"].as_u64().unwrap_or(0), rsha).await?;
                    let mut out = Vec::with_capacity(size as usize);
                    if crate::delta::apply(old, &delta, self.trusted.as_deref(), &mut |b| {
                        out.extend_from_slice(b);
                        Ok(())
                    })
                    .is_ok()
                        && Sha256::digest(&out).to_base64() == sha
                    {
                        bytes = Some(out);
                        by_delta = true;
                    }
                    break;
                }
            }
            let bytes = match bytes {
                Some(b) => b,
                None => {
                    let url = urls[id.as_str()].as_str().ok_or("no URL for a file")?;
                    self.download(url, size, sha).await?
                }
            };
            // The largest file is the device's image.
            if image.as_ref().is_none_or(|(s, _, _)| size > *s) {
                image = Some((size, bytes, by_delta));
            }
        }
        let (_, bytes, by_delta) = image.ok_or("the manifest has no files")?;
        Ok((bytes, by_delta))
    }

    /// One look at the twin; acts on a new deployment.
    async fn step(&mut self, failures: Failures, seed: u64) -> Result<(), FleetError> {
        let service = self.desired().await?;
        let workflow = &service["workflow"];
        let Some(id) = workflow["id"].as_str().map(str::to_owned) else { return Ok(()) };
        let retry = workflow["retryTimestamp"].as_str().map(str::to_owned);
        let key = format!("{id}\n{}", retry.as_deref().unwrap_or_default());
        if self.done.as_deref() == Some(key.as_str()) || workflow["action"].as_u64() != Some(3) {
            return Ok(());
        }
        let manifest_text = service["updateManifest"].as_str().unwrap_or_default();
        let Ok(manifest) = serde_json::from_str::<Value>(manifest_text) else {
            return Ok(());
        };
        let update: Option<UpdateId> = serde_json::from_value(manifest["updateId"].clone()).ok();
        let flow = json!({"action": 3, "id": id, "retryTimestamp": retry});
        self.report(self.agent(IN_PROGRESS, json!({"workflow": flow}))).await?;
        let stage = format!("{id}{}", retry.as_deref().unwrap_or_default());
        // The agent checks the signature chain before anything else (adu.md §5.3).
        let signature = match &self.roots {
            Some(roots) => crate::sign::adu::verify_update_manifest(
                manifest_text,
                service["updateManifestSignature"].as_str().unwrap_or_default(),
                roots,
            )
            .map_err(|e| (0x8040_0001_u32 as i32 as i64, e.to_string())),
            None => Ok(()),
        };
        let result = if let Err(e) = signature {
            Err(e)
        } else if draw(seed, &self.id, &stage, "download") < failures.download {
            // Delivery Optimization's "download failed" facility code.
            Err((0x80D0_2002_u32 as i32 as i64, "injected download failure".to_owned()))
        } else {
            match self.install(&manifest, &service["fileUrls"]).await {
                Err(e) => Err((0x8010_0001_u32 as i32 as i64, e)),
                Ok(_) if draw(seed, &self.id, &stage, "install") < failures.install => {
                    Err((0x8030_0001_u32 as i32 as i64, "injected install failure".to_owned()))
                }
                Ok(ok) => Ok(ok),
            }
        };
        match (result, update) {
            (Ok((image, by_delta)), Some(update)) => {
                let before = self.installed.replace((update, Arc::new(image)));
                let last = json!({"resultCode": APPLY_SUCCESS, "extendedResultCode": 0, "resultDetails": if by_delta { "delta" } else { "full" }});
                let done = json!({"workflow": flow, "lastInstallResult": last});
                if let Err(e) = self.report(self.agent(IDLE, done)).await {
                    // Not reported: as after a crash, the device still runs what it ran.
                    self.installed = before;
                    return Err(e);
                }
                self.tally.installed += 1;
                self.tally.through_delta += u64::from(by_delta);
            }
            (result, _) => {
                let (ext, why) =
                    result.err().unwrap_or((0, "the manifest has no update id".into()));
                let last =
                    json!({"resultCode": 0, "extendedResultCode": ext, "resultDetails": why});
                let done = json!({"workflow": flow, "lastInstallResult": last});
                self.report(self.agent(FAILED, done)).await?;
                self.tally.failed += 1;
            }
        }
        self.done = Some(key);
        Ok(())
    }
}

/// A registered fleet, ready to run.
pub struct Fleet {
    devices: Vec<Device>,
    spec: FleetSpec,
}

impl Fleet {
    /// Registers the devices (or finds them registered), tags their group, and reports each
    /// one's agent properties.
    pub async fn register(spec: FleetSpec) -> Result<Self, FleetError> {
        let hub = IotHubClient::new(spec.hub.clone())?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| FleetError::Device { device: String::new(), message: e.to_string() })?;
        let host = spec
            .endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_lowercase();
        let mut devices = Vec::with_capacity(spec.devices);
        for i in 0..spec.devices {
            let id = format!("{}-{i:04}", spec.prefix);
            let identity = match hub.create_device(&id).await {
                Ok(v) => v,
                Err(IotHubError::Api { status: 409, .. }) => hub.get_device(&id).await?,
                Err(e) => return Err(e.into()),
            };
            let key = identity["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .unwrap_or_default();
            let key = SasKey::from_base64(key)?;
            if let Some(g) = &spec.group {
                let mut tags = Map::new();
                tags.insert(GROUP_TAG.into(), json!(g));
                hub.patch_tags(&id, tags, None).await?;
            }
            let d = Device {
                id,
                key,
                host: host.clone(),
                endpoint: spec.endpoint.clone(),
                http: http.clone(),
                class: spec.class.clone(),
                installed: spec.installed.clone(),
                trusted: spec.trusted.clone(),
                roots: spec.roots.clone(),
                done: None,
                tally: Tally::default(),
            };
            d.report(d.agent(IDLE, json!({}))).await?;
            devices.push(d);
        }
        Ok(Self { devices, spec })
    }

    /// Runs every device for `duration`, or until `stop` says so; returns the totals.
    pub async fn run(
        self,
        duration: Duration,
        stop: &(dyn Fn(&Tally) -> bool + Sync),
    ) -> Result<Tally, FleetError> {
        let deadline = tokio::time::Instant::now() + duration;
        let (failures, seed, poll) = (self.spec.failures, self.spec.seed, self.spec.poll);
        let mut devices = self.devices;
        loop {
            let mut total = Tally::default();
            for d in &mut devices {
                // A device that cannot reach serve tries again at its next poll.
                if d.step(failures, seed).await.is_err() {
                    d.tally.unreachable += 1;
                }
                total.installed += d.tally.installed;
                total.through_delta += d.tally.through_delta;
                total.failed += d.tally.failed;
                total.unreachable += d.tally.unreachable;
            }
            if stop(&total) || tokio::time::Instant::now() >= deadline {
                return Ok(total);
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_and_spread() {
        assert_eq!(draw(7, "d1", "x", "install"), draw(7, "d1", "x", "install"));
        assert_ne!(draw(7, "d1", "x", "install"), draw(8, "d1", "x", "install"));
        let below: usize = (0..1000).filter(|i| draw(1, &format!("d{i}"), "x", "s") < 0.1).count();
        assert!((60..140).contains(&below), "{below}");
    }
}

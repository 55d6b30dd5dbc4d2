//! The blob store of `otaforge serve`, reached over its own HTTP API, so that `otaforge import
//! --endpoint http://127.0.0.1:PORT` needs no storage options and the client and the service need
//! not share a disk.
//!
//! The service says where it takes uploads (`GET /deviceUpdate/{instance}/otaforge/storage`);
//! a file is sent with `PUT .../otaforge/blobs/{container}/{blob}` carrying its SHA-256 in
//! `x-otaforge-sha256`, which the service checks before the blob becomes visible; a read URL
//! comes from `GET .../otaforge/urls/{container}/{blob}?ttl=SECONDS`. Requests are
//! authenticated exactly like the Device Update API (see `docs/serve.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BlobName, BlobStore, ContainerName, Source, StorageError, UploadOptions, Uploaded};
use crate::Reporter;
use crate::service::{API_VERSION, AduClient};

/// Header that carries the base64 SHA-256 of an upload.
pub const SHA256_HEADER: &str = "x-otaforge-sha256";

/// What the service answers to the discovery request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageInfo {
    /// Path prefix of uploads (`/deviceUpdate/{instance}/otaforge/blobs`).
    pub upload_path: String,
    /// Path prefix of read-URL requests.
    pub url_path: String,
}

/// What the service answers to an upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobReceipt {
    /// Size stored.
    pub size_in_bytes: u64,
    /// SHA-256 stored (base64).
    pub sha256: crate::Sha256,
    /// The blob already held these bytes.
    pub already_present: bool,
}

/// A read URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadUrl {
    /// The URL.
    pub url: String,
}

/// `otaforge serve`'s blob store, through its API.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    client: AduClient,
    info: StorageInfo,
}

fn service_err(operation: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Service { operation: operation.to_owned(), status: None, message: e.to_string() }
}

async fn json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    operation: &str,
) -> Result<T, StorageError> {
    let bytes = resp.bytes().await.map_err(|e| service_err(operation, e))?;
    serde_json::from_slice(&bytes).map_err(|e| service_err(operation, e))
}

impl EmbeddedStore {
    /// Asks the service behind `client` where it takes uploads. Fails with a clear message when
    /// the endpoint is not `otaforge serve` (Azure's Device Update has no such store).
    pub async fn discover(client: &AduClient) -> Result<Self, StorageError> {
        let url = client.url(&["otaforge", "storage"]);
        let req = client
            .authorize(client.http().get(url.clone()))
            .await
            .map_err(|e| service_err("ask the service for its blob store", e))?;
        let resp =
            req.send().await.map_err(|e| service_err("ask the service for its blob store", e))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(StorageError::Config(format!(
                "{} has no built-in blob store (only otaforge serve has one): pass --dir, a connection string or other Azure storage options",
                client.endpoint()
            )));
        }
        if status == 401 || status == 403 {
            return Err(StorageError::Forbidden {
                operation: "use the service's blob store".into(),
                hint: "the service wants a token: set OTAFORGE_ADU_TOKEN".into(),
            });
        }
        if status != 200 {
            return Err(StorageError::Service {
                operation: "ask the service for its blob store".into(),
                status: Some(status),
                message: format!("{url} answered {status}"),
            });
        }
        let info: StorageInfo = json(resp, "read the service's blob store answer").await?;
        Ok(Self { client: client.clone(), info })
    }

    fn url(&self, prefix: &str, container: &ContainerName, blob: &BlobName) -> url::Url {
        let mut u = self.client.endpoint().clone();
        u.set_path(&format!("{}/{}/{}", prefix.trim_end_matches('/'), container, blob.url_path()));
        u.query_pairs_mut().append_pair("api-version", API_VERSION);
        u
    }

    async fn check(
        operation: &str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, StorageError> {
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<crate::service::ErrorResponse>(&body)
            .map(|e| e.error.describe())
            .unwrap_or_else(|_| body.chars().take(300).collect());
        Err(if status == 401 || status == 403 {
            StorageError::Forbidden { operation: operation.into(), hint: message }
        } else {
            StorageError::Service { operation: operation.into(), status: Some(status), message }
        })
    }
}

impl BlobStore for EmbeddedStore {
    fn describe(&self) -> String {
        format!("the blob store of {}", self.client.endpoint())
    }

    async fn ensure_container(&self, _container: &ContainerName) -> Result<(), StorageError> {
        // The service creates containers as blobs arrive.
        Ok(())
    }

    async fn upload(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        source: &Source,
        _options: &UploadOptions,
        reporter: &dyn Reporter,
    ) -> Result<Uploaded, StorageError> {
        let op = format!("upload {blob}");
        let file = tokio::fs::File::open(&source.path).await?;
        let stream = futures::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let label = blob.to_string();
        reporter.start(&label, Some(source.size));
        let req = self
            .client
            .http()
            .put(self.url(&self.info.upload_path, container, blob))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, source.size)
            .header(SHA256_HEADER, source.sha256.to_base64())
            .body(reqwest::Body::wrap_stream(stream));
        let req = self.client.authorize(req).await.map_err(|e| service_err(&op, e))?;
        let resp = req.send().await.map_err(|e| service_err(&op, e))?;
        let receipt: BlobReceipt = json(Self::check(&op, resp).await?, &op).await?;
        reporter.advance(&label, source.size);
        reporter.finish(&label);
        source.check_unchanged()?;
        if receipt.size_in_bytes != source.size || receipt.sha256 != source.sha256 {
            return Err(StorageError::Integrity {
                blob: blob.to_string(),
                reason: format!(
                    "the service stored {} bytes with sha256 {}",
                    receipt.size_in_bytes, receipt.sha256
                ),
            });
        }
        let mut done = Uploaded::new(blob, source);
        done.already_present = receipt.already_present;
        done.blocks_sent = u64::from(!receipt.already_present);
        Ok(done)
    }

    async fn read_url(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        ttl: Duration,
    ) -> Result<String, StorageError> {
        let op = format!("get a read URL for {blob}");
        let mut url = self.url(&self.info.url_path, container, blob);
        url.query_pairs_mut().append_pair("ttl", &ttl.as_secs().to_string());
        let req = self
            .client
            .authorize(self.client.http().get(url))
            .await
            .map_err(|e| service_err(&op, e))?;
        let resp = req.send().await.map_err(|e| service_err(&op, e))?;
        let r: ReadUrl = json(Self::check(&op, resp).await?, &op).await?;
        Ok(r.url)
    }
}

/// Any of the stores, chosen at run time.
#[derive(Debug)]
pub enum AnyStore {
    /// Azure Blob Storage.
    Azure(super::azure::AzureStore),
    /// A local directory.
    Dir(super::dir::DirStore),
    /// `otaforge serve`'s own store.
    Embedded(EmbeddedStore),
}

impl AnyStore {
    /// Secrets to redact from anything printed.
    pub fn secrets(&self) -> Vec<String> {
        match self {
            AnyStore::Azure(s) => s.secrets(),
            AnyStore::Dir(_) | AnyStore::Embedded(_) => Vec::new(),
        }
    }
}

impl BlobStore for AnyStore {
    fn describe(&self) -> String {
        match self {
            AnyStore::Azure(s) => s.describe(),
            AnyStore::Dir(s) => s.describe(),
            AnyStore::Embedded(s) => s.describe(),
        }
    }

    async fn ensure_container(&self, c: &ContainerName) -> Result<(), StorageError> {
        match self {
            AnyStore::Azure(s) => s.ensure_container(c).await,
            AnyStore::Dir(s) => s.ensure_container(c).await,
            AnyStore::Embedded(s) => s.ensure_container(c).await,
        }
    }

    async fn upload(
        &self,
        c: &ContainerName,
        b: &BlobName,
        src: &Source,
        o: &UploadOptions,
        r: &dyn Reporter,
    ) -> Result<Uploaded, StorageError> {
        match self {
            AnyStore::Azure(s) => s.upload(c, b, src, o, r).await,
            AnyStore::Dir(s) => s.upload(c, b, src, o, r).await,
            AnyStore::Embedded(s) => s.upload(c, b, src, o, r).await,
        }
    }

    async fn read_url(
        &self,
        c: &ContainerName,
        b: &BlobName,
        ttl: Duration,
    ) -> Result<String, StorageError> {
        match self {
            AnyStore::Azure(s) => s.read_url(c, b, ttl).await,
            AnyStore::Dir(s) => s.read_url(c, b, ttl).await,
            AnyStore::Embedded(s) => s.read_url(c, b, ttl).await,
        }
    }
}

//! The Azure Blob Storage backend, on the official `azure_storage_blob` SDK.
//!
//! The SDK authenticates with Entra ID tokens or with a SAS in the URL; it has no shared-key
//! authentication. With an account key, otaforge therefore signs a short-lived account SAS
//! (containers and objects, read/create/write, one hour) for its own requests and a read-only
//! service SAS for the URLs it hands out.
//!
//! Retries are the SDK's exponential policy (408, 429, 500, 502, 503, 504 and connection errors,
//! honouring `Retry-After` and `x-ms-retry-after-ms`) on a reqwest client whose read timeout
//! turns a stalled connection into a retryable error. A 403 is not retried: it becomes
//! [`StorageError::Forbidden`] naming the permission that is missing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, Transport};
use azure_core::http::{ExponentialRetryOptions, RetryOptions};
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders as _, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientStageBlockOptions, BlockListType, BlockLookupList,
};
use azure_storage_blob::{
    BlobClient, BlobContainerClient, BlobContainerClientOptions, BlobServiceClient,
    BlobServiceClientOptions, BlockBlobClient,
};
use futures::StreamExt as _;
use md5::Digest as _;

use super::sas::{self, AccountKey, Protocol, SasUrl, ServiceSas};
use super::{
    BlobName, BlobStore, ContainerName, Source, StorageError, UploadOptions, Uploaded, block_id,
};
use crate::Reporter;

/// How otaforge proves who it is to the storage account.
#[derive(Clone)]
pub enum Credential {
    /// The account key (connection string, or account name + key).
    SharedKey(AccountKey),
    /// A SAS for one container, as the query of a container URL.
    ContainerSas {
        /// The container it is valid for.
        container: ContainerName,
        /// The SAS query (without `?`).
        query: String,
    },
    /// A Microsoft Entra ID identity.
    Entra(Arc<dyn TokenCredential>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::SharedKey(_) => "SharedKey(redacted)",
            Credential::ContainerSas { .. } => "ContainerSas(redacted)",
            Credential::Entra(_) => "Entra",
        })
    }
}

/// The first line of each message in an SDK error's chain that says something, each once: the
/// SDK's own words about retrying are left out.
fn sdk_message(e: &azure_core::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let line = first_line(&err.to_string()).to_owned();
        let generic = line.starts_with("retry policy expired")
            || line.starts_with("non-transport error occurred");
        if !generic && !line.is_empty() && !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Network behaviour.
#[derive(Debug, Clone)]
pub struct Network {
    /// A read or connect that makes no progress for this long fails (and is retried).
    pub io_timeout: Duration,
    /// Retries: the policy every otaforge client shares.
    pub retry: crate::retry::RetryPolicy,
    /// Told about each failed try that will be retried (for progress on stderr).
    pub on_retry: Option<RetryNotice>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            io_timeout: Duration::from_secs(30),
            retry: crate::retry::RetryPolicy::default(),
            on_retry: None,
        }
    }
}

pub use crate::retry::RetryNotice;

/// Runs on every try, after the SDK's retry policy: a failure that retrying cannot cure
/// (connection refused, a name that does not resolve, TLS) is turned into one the retry policy
/// does not retry, with the host and the cause in words, so it is reported at once; any other
/// failure is announced to [`Network::on_retry`] and left to the retry policy.
#[derive(Debug)]
struct TransportFailures {
    notice: Option<RetryNotice>,
}

// The trait is declared with an elided `Context` lifetime, which the impl must repeat.
#[allow(elided_lifetimes_in_paths)]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
impl azure_core::http::policies::Policy for TransportFailures {
    async fn send(
        &self,
        ctx: &azure_core::http::Context,
        request: &mut azure_core::http::Request,
        next: &[Arc<dyn azure_core::http::policies::Policy>],
    ) -> azure_core::http::policies::PolicyResult {
        use azure_core::error::ErrorKind;
        let host = crate::retry::host_of(request.url());
        let result = next[0].send(ctx, request, &next[1..]).await;
        match result {
            Err(e) if matches!(e.kind(), ErrorKind::Io | ErrorKind::Connection) => {
                let cause = crate::retry::TransportCause::of(&e);
                if cause.is_permanent() {
                    return Err(azure_core::Error::with_message(
                        ErrorKind::Other,
                        cause.describe(&host),
                    ));
                }
                if let Some(n) = &self.notice {
                    (n.0)(&format!("{} (will retry)", cause.describe(&host)));
                }
                Err(e)
            }
            Ok(r) if crate::retry::RetryPolicy::retryable_status(u16::from(r.status())) => {
                if let Some(n) = &self.notice {
                    (n.0)(&format!("{host} answered {} (will retry)", u16::from(r.status())));
                }
                Ok(r)
            }
            other => other,
        }
    }
}

/// An Azure storage account's blob endpoint and a credential for it.
#[derive(Debug, Clone)]
pub struct AzureStore {
    endpoint: url::Url,
    account: String,
    credential: Credential,
    network: Network,
    http: Arc<reqwest::Client>,
}

impl AzureStore {
    /// A store for `endpoint` (the account's blob endpoint: `https://ACCOUNT.blob.core.windows.net`
    /// or Azurite's `http://127.0.0.1:10000/devstoreaccount1`).
    pub fn new(
        endpoint: &str,
        account: &str,
        credential: Credential,
        network: Network,
    ) -> Result<Self, StorageError> {
        let mut endpoint = url::Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| StorageError::Config(format!("blob endpoint `{endpoint}`: {e}")))?;
        endpoint.set_query(None);
        if account.is_empty() {
            return Err(StorageError::Config("the storage account name is empty".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(network.io_timeout.min(Duration::from_secs(10)))
            .read_timeout(network.io_timeout)
            .build()
            .map_err(|e| StorageError::Config(format!("http client: {e}")))?;
        Ok(Self {
            endpoint,
            account: account.to_owned(),
            credential,
            network,
            http: Arc::new(http),
        })
    }

    /// From a connection string (`AccountName=...;AccountKey=...;BlobEndpoint=...` or
    /// `DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=...`).
    pub fn from_connection_string(cs: &str, network: Network) -> Result<Self, StorageError> {
        let mut fields: HashMap<String, String> = HashMap::new();
        for part in cs.split(';').filter(|p| !p.trim().is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(StorageError::Config(
                    "the connection string is not KEY=VALUE pairs separated by `;`".into(),
                ));
            };
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let account = fields.get("accountname").cloned().ok_or_else(|| {
            StorageError::Config("the connection string has no AccountName".into())
        })?;
        let key = fields
            .get("accountkey")
            .ok_or_else(|| {
                StorageError::Config(
                    "the connection string has no AccountKey (SAS connection strings: use --container-sas-url)"
                        .into(),
                )
            })
            .and_then(|k| AccountKey::from_base64(k))?;
        let endpoint = match fields.get("blobendpoint") {
            Some(e) => e.clone(),
            None => {
                let proto = fields.get("defaultendpointsprotocol").map_or("https", String::as_str);
                let suffix =
                    fields.get("endpointsuffix").map_or("core.windows.net", String::as_str);
                format!("{proto}://{account}.blob.{suffix}")
            }
        };
        Self::new(&endpoint, &account, Credential::SharedKey(key), network)
    }

    /// From a container URL carrying a SAS (`https://ACCOUNT.blob.core.windows.net/C?sv=...`).
    pub fn from_container_sas_url(url: &SasUrl, network: Network) -> Result<Self, StorageError> {
        // url's parse errors never quote the input, so no signature reaches the message.
        let parsed = url::Url::parse(url.expose())
            .map_err(|e| StorageError::Config(format!("container SAS URL: {e}")))?;
        let query = parsed.query().unwrap_or_default().to_owned();
        if !query.contains("sig=") {
            return Err(StorageError::Config(
                "the container SAS URL has no `sig` parameter".into(),
            ));
        }
        let mut segs: Vec<String> =
            parsed.path_segments().map(|s| s.map(str::to_owned).collect()).unwrap_or_default();
        segs.retain(|s| !s.is_empty());
        let container_str = segs.pop().ok_or_else(|| {
            StorageError::Config("the container SAS URL does not name a container".into())
        })?;
        let container: ContainerName = container_str.parse()?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        // Path-style endpoints (Azurite) carry the account as the first path segment.
        let account = segs
            .first()
            .cloned()
            .unwrap_or_else(|| host.split('.').next().unwrap_or_default().to_owned());
        let mut endpoint = parsed.clone();
        endpoint.set_query(None);
        endpoint.set_path(&segs.join("/"));
        Self::new(
            endpoint.as_str(),
            &account,
            Credential::ContainerSas { container, query },
            network,
        )
    }

    /// The secrets this store must never print.
    pub fn secrets(&self) -> Vec<String> {
        match &self.credential {
            Credential::SharedKey(k) => vec![k.to_base64()],
            Credential::ContainerSas { query, .. } => vec![query.clone()],
            Credential::Entra(_) => Vec::new(),
        }
    }

    fn client_options(&self) -> ClientOptions {
        let n = &self.network;
        let ms = |d: Duration| time::Duration::milliseconds(d.as_millis() as i64);
        let http: Arc<dyn azure_core::http::HttpClient> = self.http.clone();
        ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: ms(n.retry.initial_delay),
                max_retries: n.retry.max_retries,
                max_total_elapsed: ms(n.retry.max_total),
                max_delay: ms(n.retry.max_delay),
            }),
            transport: Some(Transport::new(http)),
            per_try_policies: vec![Arc::new(TransportFailures { notice: n.on_retry.clone() })],
            ..ClientOptions::default()
        }
    }

    fn container_url(&self, container: &ContainerName) -> url::Url {
        let mut u = self.endpoint.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.pop_if_empty().push(container.as_str());
        }
        u
    }

    fn container_client(
        &self,
        container: &ContainerName,
    ) -> Result<BlobContainerClient, StorageError> {
        let mut url = self.container_url(container);
        let token = match &self.credential {
            Credential::SharedKey(key) => {
                let now = SystemTime::now();
                url.set_query(Some(&sas::account_sas(
                    &self.account,
                    key,
                    "rcw",
                    "co",
                    now - sas::CLOCK_SKEW,
                    now + Duration::from_secs(3600),
                    Protocol::for_endpoint(&self.endpoint),
                )));
                None
            }
            Credential::ContainerSas { container: allowed, query } => {
                if allowed != container {
                    return Err(StorageError::Config(format!(
                        "the container SAS is for container `{allowed}`, not `{container}`"
                    )));
                }
                url.set_query(Some(query));
                None
            }
            Credential::Entra(c) => Some(c.clone()),
        };
        let options = BlobContainerClientOptions {
            client_options: self.client_options(),
            ..BlobContainerClientOptions::default()
        };
        BlobContainerClient::new(url, token, Some(options))
            .map_err(|e| self.fail("connect to the container", e))
    }

    /// The blocks an interrupted upload left staged (uncommitted), by id, with their sizes.
    async fn staged_blocks(
        &self,
        block_blob: &BlockBlobClient,
        operation: &str,
    ) -> Result<HashMap<Vec<u8>, u64>, StorageError> {
        let mut staged = HashMap::new();
        match block_blob.get_block_list(BlockListType::Uncommitted, None).await {
            Ok(r) => {
                let list = r.into_model().map_err(|e| self.fail(operation, e))?;
                for b in list.uncommitted_blocks.unwrap_or_default() {
                    if let (Some(name), Some(size)) = (b.name, b.size) {
                        staged.insert(name, size as u64);
                    }
                }
            }
            Err(e) if e.http_status().map(u16::from) == Some(404) => {}
            Err(e) => return Err(self.fail(operation, e)),
        }
        Ok(staged)
    }

    /// Commits the staged blocks in order, with the digest as metadata, then reads back what
    /// the service holds and refuses anything but `source`'s size and digest.
    async fn commit_and_check(
        &self,
        client: &BlobClient,
        block_blob: &BlockBlobClient,
        ids: Vec<Vec<u8>>,
        blob: &BlobName,
        source: &Source,
        op: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<(), StorageError> {
        let mut metadata = HashMap::new();
        metadata.insert("sha256".to_owned(), source.sha256.to_base64());
        let list = BlockLookupList { latest: Some(ids), ..Default::default() };
        let body: RequestContent<_, _> =
            list.try_into().map_err(|e| self.fail(&op("commit"), e))?;
        let opts = BlockBlobClientCommitBlockListOptions {
            metadata: Some(metadata),
            ..Default::default()
        };
        block_blob
            .commit_block_list(body, Some(opts))
            .await
            .map_err(|e| self.fail(&op("commit the block list of"), e))?;
        let p = client
            .get_properties(None)
            .await
            .map_err(|e| self.fail(&op("read the properties of"), e))?;
        let now = stored(&p);
        if !now.holds(source) {
            return Err(StorageError::Integrity {
                blob: blob.to_string(),
                reason: format!(
                    "after commit the blob has {:?} bytes and sha256 {:?}, expected {} bytes and {}",
                    now.size, now.sha256, source.size, source.sha256
                ),
            });
        }
        Ok(())
    }

    /// Turns an SDK error into a [`StorageError`], naming the missing permission on 403 and
    /// redacting secrets.
    fn fail(&self, operation: &str, e: azure_core::Error) -> StorageError {
        let secrets = self.secrets();
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let status = e.http_status().map(u16::from);
        let code = match e.kind() {
            azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code.clone(),
            _ => None,
        }
        .unwrap_or_default();
        if status == Some(403) {
            let code_note = if code.is_empty() { String::new() } else { format!(" ({code})") };
            let hint = match &self.credential {
                // otaforge signed this request itself with the full permissions it needs, so
                // the key (or the clock) is what the service refused.
                Credential::SharedKey(_) => format!(
                    "the service refused a signature made with the account key{code_note}: the key is wrong for account {}, or this machine's clock is off by more than 15 minutes",
                    self.account
                ),
                _ if code == "AuthenticationFailed" => format!(
                    "the service refused the credential{code_note}: the SAS expired or was altered, the token is for another tenant, or the clock is off"
                ),
                _ => {
                    let need = match operation {
                        o if o.contains("create the container") => {
                            "Create (c) on containers: an account SAS with srt=c, or the Storage Blob Data Contributor role; or create the container beforehand"
                        }
                        o if o.contains("read") || o.contains("list") => {
                            "Read (r) on blobs: sp=r, or the Storage Blob Data Reader role"
                        }
                        _ => {
                            "Write (w) and Create (c) on blobs: sp=cw (or racw), or the Storage Blob Data Contributor role"
                        }
                    };
                    format!("the credential lacks {need}{code_note}")
                }
            };
            return StorageError::Forbidden { operation: operation.to_owned(), hint };
        }
        // The SDK wraps the cause in words about its retry policy; say what happened instead.
        let cause = crate::retry::TransportCause::of(&e);
        let text = if status.is_none() && cause != crate::retry::TransportCause::Other {
            cause.describe(&crate::retry::host_of(&self.endpoint))
        } else {
            sdk_message(&e)
        };
        let message = sas::redact(
            &format!("{}{text}", if code.is_empty() { String::new() } else { format!("{code}: ") }),
            &refs,
        );
        StorageError::Service { operation: operation.to_owned(), status, message }
    }

    async fn user_delegation_key(
        &self,
        ttl: Duration,
    ) -> Result<sas::UserDelegationKey, StorageError> {
        let Credential::Entra(cred) = &self.credential else {
            return Err(StorageError::Config(
                "a user delegation key needs an Entra ID credential".into(),
            ));
        };
        let options = BlobServiceClientOptions {
            client_options: self.client_options(),
            ..Default::default()
        };
        let svc = BlobServiceClient::new(self.endpoint.clone(), Some(cred.clone()), Some(options))
            .map_err(|e| self.fail("connect to the account", e))?;
        let now = time::OffsetDateTime::now_utc();
        let info = azure_storage_blob::models::KeyInfo {
            start: Some(now - time::Duration::minutes(5)),
            expiry: Some(now + time::Duration::seconds(ttl.as_secs() as i64 + 60)),
            ..Default::default()
        };
        let body: RequestContent<_, _> =
            info.try_into().map_err(|e| self.fail("get a user delegation key", e))?;
        let key = svc
            .get_user_delegation_key(body, None)
            .await
            .map_err(|e| self.fail("get a user delegation key", e))?
            .into_model()
            .map_err(|e| self.fail("get a user delegation key", e))?;
        let t = |o: Option<time::OffsetDateTime>| {
            o.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_default()
        };
        Ok(sas::UserDelegationKey {
            signed_oid: key.signed_oid.unwrap_or_default(),
            signed_tid: key.signed_tid.unwrap_or_default(),
            signed_start: t(key.signed_start),
            signed_expiry: t(key.signed_expiry),
            signed_service: key.signed_service.unwrap_or_default(),
            signed_version: key.signed_version.unwrap_or_default(),
            value: key.value.unwrap_or_default(),
        })
    }
}

/// A blob's size and `sha256` metadata, as its properties report them.
struct Stored {
    size: Option<u64>,
    sha256: Option<String>,
}

impl Stored {
    /// The blob holds exactly `source`'s bytes.
    fn holds(&self, source: &Source) -> bool {
        self.size == Some(source.size)
            && self.sha256.as_deref() == Some(source.sha256.to_base64().as_str())
    }
}

fn stored(
    p: &azure_core::http::Response<
        azure_storage_blob::models::BlobClientGetPropertiesResult,
        azure_core::http::NoFormat,
    >,
) -> Stored {
    Stored {
        size: p.content_length().ok().flatten(),
        sha256: p.metadata().ok().and_then(|m| m.get("sha256").cloned()),
    }
}

/// A block of a mapped file, owned so it can travel as a request body.
struct MapSlice {
    map: Arc<crate::fsutil::Mapped>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

impl BlobStore for AzureStore {
    fn describe(&self) -> String {
        format!("{} (account {})", self.endpoint, self.account)
    }

    async fn ensure_container(&self, container: &ContainerName) -> Result<(), StorageError> {
        let client = self.container_client(container)?;
        match client.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            // A credential scoped to one container may not create it; if the container exists,
            // the upload goes on, and if not, the first write says so.
            Err(e)
                if e.http_status().map(u16::from) == Some(403)
                    && matches!(self.credential, Credential::ContainerSas { .. }) =>
            {
                Ok(())
            }
            Err(e) => Err(self.fail(&format!("create the container {container}"), e)),
        }
    }

    async fn upload(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        source: &Source,
        options: &UploadOptions,
        reporter: &dyn Reporter,
    ) -> Result<Uploaded, StorageError> {
        let client = self.container_client(container)?.blob_client(blob.as_str());
        let op = |what: &str| format!("{what} {container}/{blob}");
        let mut result = Uploaded::new(blob, source);
        // Same size and digest already there: nothing to send.
        match client.get_properties(None).await {
            Ok(p) => {
                if stored(&p).holds(source) {
                    result.already_present = true;
                    return Ok(result);
                }
            }
            Err(e) if e.http_status().map(u16::from) == Some(404) => {}
            Err(e) => return Err(self.fail(&op("read the properties of"), e)),
        }
        let block_blob = client.block_blob_client();
        let bs = options.block_size_for(source.size);
        let count = source.size.div_ceil(bs);
        let ids: Vec<Vec<u8>> = (0..count).map(|i| block_id(&source.sha256, bs, i)).collect();
        // Blocks an interrupted run staged with the same ids and sizes are kept.
        let staged = self.staged_blocks(&block_blob, &op("list the blocks of")).await?;
        let label = blob.to_string();
        reporter.start(&label, Some(source.size));
        // The file is mapped once: blocks are checksummed and sent straight from the page cache,
        // without copying them into buffers first.
        let map = Arc::new(crate::fsutil::map_file(&source.path)?);
        if map.len() as u64 != source.size {
            return Err(StorageError::Integrity {
                blob: blob.to_string(),
                reason: format!("{} changed size since it was hashed", source.path.display()),
            });
        }
        let block_len = |i: u64| bs.min(source.size - i * bs);
        let todo: Vec<u64> = (0..count)
            .filter(|&i| {
                let reused = staged.get(&ids[i as usize]) == Some(&block_len(i));
                if reused {
                    reporter.advance(&label, block_len(i));
                }
                !reused
            })
            .collect();
        result.blocks_reused = count - todo.len() as u64;
        let stage = |i: u64| {
            let map = map.clone();
            let block_blob = &block_blob;
            let ids = &ids;
            let op = &op;
            let label = &label;
            async move {
                let len = block_len(i);
                let checksum = options.checksum;
                // Reading and checksumming run on the blocking pool, so blocks are hashed on
                // every core while others are on the wire.
                let (data, sum) = tokio::task::spawn_blocking(move || {
                    let start = (i * bs) as usize;
                    let slice = MapSlice { map, range: start..start + len as usize };
                    let sum = match checksum {
                        super::Checksum::Md5 => md5::Md5::digest(slice.as_ref()).to_vec(),
                        super::Checksum::Crc64 => super::crc64(slice.as_ref()).to_vec(),
                    };
                    (azure_core::Bytes::from_owner(slice), sum)
                })
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
                // The service recomputes this and refuses a block that changed on the way.
                let opts = match checksum {
                    super::Checksum::Md5 => BlockBlobClientStageBlockOptions {
                        transactional_content_md5: Some(sum),
                        ..Default::default()
                    },
                    super::Checksum::Crc64 => BlockBlobClientStageBlockOptions {
                        transactional_content_crc64: Some(sum),
                        ..Default::default()
                    },
                };
                let body: RequestContent<azure_core::Bytes, _> = data.into();
                block_blob
                    .stage_block(&ids[i as usize], len, body, Some(opts))
                    .await
                    .map_err(|e| self.fail(&op("upload a block of"), e))?;
                reporter.advance(label, len);
                Ok::<u64, StorageError>(i)
            }
        };
        let mut running = futures::stream::iter(todo.iter().copied().map(stage))
            .buffer_unordered(options.concurrency.max(1));
        while let Some(r) = running.next().await {
            r?;
            result.blocks_sent += 1;
        }
        drop(running);
        source.check_unchanged()?;
        self.commit_and_check(&client, &block_blob, ids, blob, source, &op).await?;
        reporter.finish(&label);
        Ok(result)
    }

    async fn read_url(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        ttl: Duration,
    ) -> Result<String, StorageError> {
        let mut url = self.container_url(container);
        url.set_path(&format!("{}/{}", url.path().trim_end_matches('/'), blob.url_path()));
        let resource = sas::blob_resource(&self.account, container.as_str(), blob.as_str());
        let sas =
            ServiceSas::read_blob(SystemTime::now(), ttl, Protocol::for_endpoint(&self.endpoint));
        let query = match &self.credential {
            Credential::SharedKey(key) => sas.sign(key, &resource),
            Credential::ContainerSas { query, .. } => query.clone(),
            Credential::Entra(_) => {
                let key = self.user_delegation_key(ttl).await?;
                sas.sign_user_delegation(&key, &resource)
            }
        };
        url.set_query(Some(&query));
        Ok(url.to_string())
    }
}

/// Where an Entra ID token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntraSource {
    /// The developer's `az login` or `azd auth login`.
    DeveloperTools,
    /// The machine's managed identity (Azure VMs, build agents).
    ManagedIdentity,
    /// Workload identity federation (GitHub Actions, Kubernetes), from the standard
    /// `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` and `AZURE_FEDERATED_TOKEN_FILE` variables.
    WorkloadIdentity,
}

/// An Entra ID token credential from `source`.
pub fn entra_credential(source: EntraSource) -> Result<Arc<dyn TokenCredential>, StorageError> {
    let fail = |e: azure_core::Error| StorageError::Config(format!("Entra ID credential: {e}"));
    Ok(match source {
        EntraSource::DeveloperTools => {
            azure_identity::DeveloperToolsCredential::new(None).map_err(fail)?
        }
        EntraSource::ManagedIdentity => {
            azure_identity::ManagedIdentityCredential::new(None).map_err(fail)?
        }
        EntraSource::WorkloadIdentity => {
            azure_identity::WorkloadIdentityCredential::new(None).map_err(fail)?
        }
    })
}

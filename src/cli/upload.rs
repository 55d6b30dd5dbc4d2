//! `otaforge upload`: put artifacts in Azure Blob Storage (or a local directory) and print
//! least-privilege read URLs for them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use otaforge::pipeline;
use otaforge::storage::azure::{AzureStore, Credential, EntraSource, Network};
use otaforge::storage::dir::DirStore;
use otaforge::storage::sas::{AccountKey, redact};
use otaforge::storage::{AnyStore, BlobStore as _, ContainerName, UploadOptions, parse_ttl};

use super::{Outcome, Output};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum EntraArg {
    /// `az login` / `azd auth login`.
    Cli,
    /// The machine's managed identity.
    ManagedIdentity,
    /// Workload identity federation (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE).
    WorkloadIdentity,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ChecksumArg {
    Md5,
    Crc64,
}

/// Arguments of `otaforge upload`.
#[derive(Debug, clap::Args)]
pub(crate) struct UploadArgs {
    /// Files to upload; each becomes blob PREFIX/FILENAME.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Container (created when missing, if the credential may).
    #[arg(long)]
    container: ContainerName,
    /// Blob name prefix (a virtual directory such as `contoso/toaster/1.2`).
    #[arg(long)]
    prefix: Option<String>,
    /// How long the printed read URLs stay valid (at most 7d).
    #[arg(long, default_value = "4h", value_parser = parse_ttl)]
    sas_expiry: Duration,
    #[command(flatten)]
    storage: StorageArgs,
}

/// Where artifacts go and how uploads behave (shared by `upload` and `import`).
#[derive(Debug, clap::Args)]
pub(crate) struct StorageArgs {
    /// Block size, e.g. 8MiB (grown automatically to stay within 50,000 blocks).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    block_size: u64,
    /// Blocks in flight at once.
    #[arg(long, default_value_t = otaforge::storage::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Per-block checksum the service verifies: md5 (default) or crc64 (less client CPU).
    #[arg(long, value_enum, default_value = "md5")]
    checksum: ChecksumArg,
    /// A read that makes no progress for this long is retried.
    #[arg(long, default_value = "30s", value_parser = super::stall_duration)]
    io_timeout: Duration,
    /// Retries per request (408, 429, 5xx, resets and stalls), with exponential backoff.
    #[arg(long, default_value_t = 8)]
    max_retries: u32,
    /// Connection string (default: $AZURE_STORAGE_CONNECTION_STRING). Prefer the variable: a
    /// command line is visible to other users of the machine.
    #[arg(long, value_name = "STRING")]
    connection_string: Option<String>,
    /// Storage account name (default: $AZURE_STORAGE_ACCOUNT); the key comes from
    /// $AZURE_STORAGE_KEY, or use --entra.
    #[arg(long)]
    account: Option<String>,
    /// Blob endpoint, when not https://ACCOUNT.blob.core.windows.net (Azurite:
    /// http://127.0.0.1:10000/devstoreaccount1).
    #[arg(long, value_name = "URL")]
    blob_endpoint: Option<String>,
    /// A container URL with a SAS; read URLs then carry that same SAS.
    #[arg(long, value_name = "URL")]
    container_sas_url: Option<String>,
    /// Authenticate with Microsoft Entra ID (read URLs are user delegation SAS).
    #[arg(long, value_enum, value_name = "SOURCE")]
    entra: Option<EntraArg>,
    /// Store in this local directory instead of Azure (what `otaforge serve` publishes).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["connection_string", "account", "container_sas_url", "entra"])]
    dir: Option<PathBuf>,
    /// With --dir: the URL prefix the read URLs start with.
    #[arg(
        long,
        value_name = "URL",
        requires = "dir",
        default_value = "http://127.0.0.1:8080/blobs"
    )]
    base_url: String,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("K", 1 << 10),
        ("M", 1 << 20),
        ("G", 1 << 30),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((t, 1));
    let n: u64 = num.trim().parse().map_err(|_| format!("`{s}` is not a size such as 8MiB"))?;
    let v = n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))?;
    if !(64 << 10..=4000 << 20).contains(&v) {
        return Err(format!("`{s}`: a block is 64KiB to 4000MiB"));
    }
    Ok(v)
}

impl StorageArgs {
    /// Whether any storage option (or variable) names a store.
    /// The storage account to use when none was given (a release description's).
    pub(crate) fn default_account(&mut self, account: &str) {
        if self.account.is_none() && self.dir.is_none() && self.connection_string.is_none() {
            self.account = Some(account.to_owned());
        }
    }

    pub(crate) fn is_configured(&self) -> bool {
        use otaforge::env::{AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_CONNECTION_STRING};
        let env = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
        self.dir.is_some()
            || self.connection_string.is_some()
            || self.account.is_some()
            || self.container_sas_url.is_some()
            || self.entra.is_some()
            || env(AZURE_STORAGE_CONNECTION_STRING)
            || env(AZURE_STORAGE_ACCOUNT)
    }

    /// The upload options.
    pub(crate) fn options(&self) -> UploadOptions {
        UploadOptions {
            block_size: self.block_size,
            concurrency: self.concurrency.max(1),
            checksum: match self.checksum {
                ChecksumArg::Md5 => otaforge::storage::Checksum::Md5,
                ChecksumArg::Crc64 => otaforge::storage::Checksum::Crc64,
            },
        }
    }

    /// Opens the configured store.
    pub(crate) fn open(&self) -> anyhow::Result<AnyStore> {
        if let Some(dir) = &self.dir {
            return Ok(AnyStore::Dir(DirStore::open(dir, &self.base_url)?));
        }
        let network = Network {
            io_timeout: self.io_timeout,
            retry: otaforge::retry::RetryPolicy {
                max_retries: self.max_retries,
                ..Default::default()
            },
            // Each failed try on stderr as it happens, so a slow failure is never silent.
            on_retry: Some(otaforge::storage::azure::RetryNotice(std::sync::Arc::new(
                |m: &str| {
                    let _ = std::io::Write::write_fmt(
                        &mut std::io::stderr(),
                        format_args!("upload: {m}\n"),
                    );
                },
            ))),
        };
        Ok(AnyStore::Azure(self.azure_store(network)?))
    }

    fn azure_store(&self, network: Network) -> anyhow::Result<AzureStore> {
        use otaforge::env::{
            AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY,
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(url) = &self.container_sas_url {
            return Ok(AzureStore::from_container_sas_url(url, network)?);
        }
        let account = self.account.clone().or_else(|| env(AZURE_STORAGE_ACCOUNT));
        let endpoint = |account: &str| {
            self.blob_endpoint
                .clone()
                .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
        };
        if let Some(source) = self.entra {
            let account = account.context("--entra needs --account (or AZURE_STORAGE_ACCOUNT)")?;
            let cred = otaforge::storage::azure::entra_credential(source.into())?;
            return Ok(AzureStore::new(
                &endpoint(&account),
                &account,
                Credential::Entra(cred),
                network,
            )?);
        }
        if let Some(cs) =
            self.connection_string.clone().or_else(|| env(AZURE_STORAGE_CONNECTION_STRING))
        {
            if self.blob_endpoint.is_some() || self.account.is_some() {
                bail!(
                    "--account and --blob-endpoint conflict with a connection string; put BlobEndpoint= in the string"
                );
            }
            return Ok(AzureStore::from_connection_string(&cs, network)?);
        }
        if let Some(account) = account {
            let key = env(AZURE_STORAGE_KEY).with_context(|| {
                format!("account {account}: set {AZURE_STORAGE_KEY} to its key, or use --entra")
            })?;
            let key = AccountKey::from_base64(&key)
                .map_err(|e| anyhow::anyhow!("{AZURE_STORAGE_KEY}: {e}"))?;
            return Ok(AzureStore::new(
                &endpoint(&account),
                &account,
                Credential::SharedKey(key),
                network,
            )?);
        }
        bail!(
            "no storage configured: pass --dir DIR for a local store, or give Azure credentials (--connection-string or {AZURE_STORAGE_CONNECTION_STRING}; --account/{AZURE_STORAGE_ACCOUNT} with {AZURE_STORAGE_KEY} or --entra; or --container-sas-url)"
        )
    }
}

impl From<EntraArg> for EntraSource {
    fn from(e: EntraArg) -> Self {
        match e {
            EntraArg::Cli => EntraSource::DeveloperTools,
            EntraArg::ManagedIdentity => EntraSource::ManagedIdentity,
            EntraArg::WorkloadIdentity => EntraSource::WorkloadIdentity,
        }
    }
}

pub(crate) fn run(
    a: UploadArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let sources = pipeline::blob_names(a.prefix.as_deref(), &a.files)?;
    let store = a.storage.open()?;
    let opts = a.storage.options();
    let secrets = store.secrets();
    rt.block_on(async {
        let reporter = out.progress("upload");
        let plan = pipeline::UploadPlan {
            container: a.container.clone(),
            options: opts,
            url_ttl: a.sas_expiry,
        };
        let entries = pipeline::upload_files(&store, &plan, &sources, &reporter).await;
        drop(reporter);
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let entries = entries.map_err(|e| anyhow::anyhow!("{}", redact(&e.to_string(), &refs)))?;
        if out.json() {
            out.json_value(&entries)?;
        } else {
            for e in &entries {
                let how = if e.already_present {
                    "already present, not sent".to_owned()
                } else if e.blocks_reused > 0 {
                    format!(
                        "{} blocks sent, {} reused from an interrupted run",
                        e.blocks_sent, e.blocks_reused
                    )
                } else {
                    format!("{} blocks sent", e.blocks_sent)
                };
                out.line(format!(
                    "{} -> {}/{} ({} bytes, {how})",
                    e.file.display(),
                    a.container,
                    e.blob,
                    e.size_in_bytes
                ))?;
                out.line(format!("  {}", redact(&e.url, &refs)))?;
            }
            out.notice(format!(
                "uploaded {} files to {}; read URLs valid for {} (full URLs: --format json)",
                entries.len(),
                store.describe(),
                humantime::format_duration(a.sas_expiry)
            ));
        }
        Ok(Outcome::Ok)
    })
}

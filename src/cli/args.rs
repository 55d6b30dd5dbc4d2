//! The argument groups several commands share, each with how it becomes a client, a store or a
//! key: the Device Update service ([`AduArgs`]), the IoT Hub ([`HubArgs`]), blob storage
//! ([`StorageArgs`]), signing keys ([`SignerArgs`]) and trusted keys ([`TrustArgs`]).
//!
//! Where a service is comes from, in order: the command's flags; the context `--context` or
//! `$OTAFORGE_CONTEXT` names; the environment (`OTAFORGE_ADU_TOKEN`, `IOTHUB_CONNECTION_STRING`);
//! the current context (`super::context`). Flags that name the service themselves
//! (`--endpoint`, `--iothub-connection-file`, `--iothub-host`) keep the current context out
//! entirely, so a context's token never goes to another service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use otaforge::iothub::{ConnectionString, IotHubClient};
use otaforge::service::{AduClient, Auth};
use otaforge::sign::{CommandSigner, KeySigner, PublicKey, Signer, TrustedKeys};
use otaforge::storage::azure::{AzureStore, Credential, Network};
use otaforge::storage::dir::DirStore;
use otaforge::storage::sas::{AccountKey, SasUrl};
use otaforge::storage::{AnyStore, UploadOptions};

use super::Output;
pub(crate) use super::context::EntraArg;
use super::context::{self, Chosen};

/// A non-empty environment variable.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where the Device Update service is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AduArgs {
    /// Device Update endpoint: https://ACCOUNT.api.adu.microsoft.com, or otaforge serve's URL
    /// (default: the context's).
    #[arg(long)]
    pub(crate) endpoint: Option<String>,
    /// Instance name (default: the context's).
    #[arg(long)]
    pub(crate) instance: Option<String>,
    /// Authenticate with Microsoft Entra ID (Azure).
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub(crate) adu_entra: Option<EntraArg>,
}

/// A Device Update service, resolved: where it is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AduTarget {
    /// Its endpoint.
    pub(crate) endpoint: String,
    /// The instance.
    pub(crate) instance: String,
    /// Entra ID, else a bearer token, else none (serve on loopback).
    entra: Option<EntraArg>,
    token: Option<String>,
}

impl AduArgs {
    /// Where the service is: the flags, filled in from a context; the token from
    /// `$OTAFORGE_ADU_TOKEN` or the context, the context's only for the context's own endpoint.
    pub(crate) fn target(&self, out: &Output) -> anyhow::Result<AduTarget> {
        let chosen = context::choose(out, self.endpoint.is_some())?;
        let ctx = chosen.as_ref().map(|c| &c.context);
        let endpoint = self.endpoint.clone().or_else(|| ctx?.endpoint.clone()).context(
            "no Device Update endpoint: pass --endpoint URL --instance NAME, or use a context \
             (`otaforge serve` records one; see `otaforge context list`)",
        )?;
        let instance = self
            .instance
            .clone()
            .or_else(|| ctx?.instance.clone())
            .with_context(|| format!("no instance for {endpoint}: pass --instance NAME"))?;
        let own = ctx
            .and_then(|c| c.adu_token.clone().filter(|_| c.endpoint.as_ref() == Some(&endpoint)));
        let env = env_value(otaforge::env::OTAFORGE_ADU_TOKEN);
        let named = chosen.as_ref().is_some_and(|c| c.named);
        // A context the user named beats the environment; the environment beats a context that
        // is merely current.
        let token = if named { own.or(env) } else { env.or(own) };
        let entra = self.adu_entra.or_else(|| ctx?.adu_entra);
        Ok(AduTarget { endpoint, instance, entra, token })
    }

    /// A client for the service (with the global `--request-timeout`), telling each retried
    /// try on stderr unless `--quiet`.
    pub(crate) fn client(&self, out: &Output) -> anyhow::Result<AduClient> {
        let t = self.target(out)?;
        let auth = match (t.entra, t.token) {
            (Some(src), _) => Auth::Entra(otaforge::storage::azure::entra_credential(src.into())?),
            (None, Some(token)) => Auth::Static(token),
            (None, None) => Auth::None,
        };
        let notices = out.clone();
        let notice = otaforge::retry::RetryNotice(std::sync::Arc::new(move |m: &str| {
            notices.notice(format!("service: {m}"));
        }));
        Ok(AduClient::new(&t.endpoint, &t.instance, auth)?
            .with_retry_notice(notice)
            .with_deadline(out.globals().request_timeout))
    }
}

/// Where the IoT Hub is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HubArgs {
    /// A file holding the hub's service connection string (`otaforge serve` writes
    /// `iothub.connection-string` in its data dir); default: $IOTHUB_CONNECTION_STRING, else the
    /// context's.
    #[arg(long, value_name = "FILE")]
    pub(crate) iothub_connection_file: Option<PathBuf>,
    /// Authenticate to the hub with Microsoft Entra ID instead of a connection string (needs
    /// --iothub-host and an IoT Hub data role).
    #[arg(long, value_enum, value_name = "SOURCE", requires = "iothub_host")]
    pub(crate) iothub_entra: Option<EntraArg>,
    /// The hub's host name (myhub.azure-devices.net), with --iothub-entra.
    #[arg(long, value_name = "HOST", requires = "iothub_entra")]
    pub(crate) iothub_host: Option<String>,
}

/// An IoT Hub, resolved.
#[derive(Debug, Clone)]
pub(crate) enum HubTarget {
    /// A service connection string.
    Connection(ConnectionString),
    /// Entra ID for this host.
    Entra(EntraArg, String),
}

impl HubArgs {
    /// Whether the flags name a hub themselves.
    pub(crate) fn given(&self) -> bool {
        self.iothub_connection_file.is_some() || self.iothub_host.is_some()
    }

    /// Where the hub is: the flags; else a named context; else `$IOTHUB_CONNECTION_STRING`;
    /// else the current context, unless `elsewhere` (the command's other flags named the
    /// service, so the current context is not its).
    pub(crate) fn target(&self, out: &Output, elsewhere: bool) -> anyhow::Result<HubTarget> {
        if let (Some(src), Some(host)) = (self.iothub_entra, &self.iothub_host) {
            return Ok(HubTarget::Entra(src, host.clone()));
        }
        if let Some(f) = &self.iothub_connection_file {
            return Ok(HubTarget::Connection(read_connection(f)?));
        }
        let env = || -> anyhow::Result<Option<HubTarget>> {
            env_value(otaforge::env::IOTHUB_CONNECTION_STRING)
                .map(|s| Ok(HubTarget::Connection(s.parse()?)))
                .transpose()
        };
        let chosen = context::choose(out, self.given() || elsewhere)?;
        if !chosen.as_ref().is_some_and(|c| c.named)
            && let Some(t) = env()?
        {
            return Ok(t);
        }
        match chosen {
            Some(Chosen { context: c, .. })
                if c.iothub_host.is_some() || c.iothub_connection_file.is_some() =>
            {
                match (c.iothub_entra, c.iothub_host, c.iothub_connection_file) {
                    (Some(src), Some(host), _) => Ok(HubTarget::Entra(src, host)),
                    (_, _, Some(f)) => Ok(HubTarget::Connection(read_connection(&f)?)),
                    _ => bail!("the context names an IoT Hub host without --iothub-entra"),
                }
            }
            _ => bail!(
                "no IoT Hub given: pass --iothub-connection-file FILE or set {} (the hub's \
                 service connection string), or use a context (`otaforge context list`)",
                otaforge::env::IOTHUB_CONNECTION_STRING
            ),
        }
    }

    /// The client for the hub (with the global `--request-timeout`).
    pub(crate) fn client(&self, out: &Output) -> anyhow::Result<IotHubClient> {
        let client = match self.target(out, false)? {
            HubTarget::Entra(src, host) => {
                let credential = otaforge::storage::azure::entra_credential(src.into())?;
                IotHubClient::with_entra(&host, credential)?
            }
            HubTarget::Connection(c) => IotHubClient::new(c)?,
        };
        Ok(client.with_deadline(out.globals().request_timeout))
    }

    /// The hub's connection string (commands that sign for devices need the key itself);
    /// `elsewhere` as for [`HubArgs::target`].
    pub(crate) fn connection(
        &self,
        out: &Output,
        elsewhere: bool,
    ) -> anyhow::Result<ConnectionString> {
        match self.target(out, elsewhere)? {
            HubTarget::Connection(c) => Ok(c),
            HubTarget::Entra(..) => {
                bail!("this command needs the hub's connection string, not an Entra ID login")
            }
        }
    }
}

/// A connection string from a file.
fn read_connection(f: &Path) -> anyhow::Result<ConnectionString> {
    Ok(fs_err::read_to_string(f)?.trim().parse()?)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ChecksumArg {
    Md5,
    Crc64,
}

/// `--block-size`: a size as [`otaforge::size::parse_size`] reads it, within Azure's block
/// limits.
fn block_size(s: &str) -> Result<u64, otaforge::size::SizeError> {
    otaforge::size::parse_size_within(s, otaforge::storage::BLOCK_SIZES)
}

/// Where artifacts go and how uploads behave (shared by `upload`, `import` and `release`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StorageArgs {
    /// Block size, e.g. 8MiB (grown automatically to stay within 50,000 blocks).
    #[arg(long, default_value = "8MiB", value_parser = block_size)]
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
    container_sas_url: Option<SasUrl>,
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

impl StorageArgs {
    /// The storage account to use when none was given (a release description's).
    pub(crate) fn default_account(&mut self, account: &str) {
        if self.account.is_none() && self.dir.is_none() && self.connection_string.is_none() {
            self.account = Some(account.to_owned());
        }
    }

    /// Whether any storage option (or variable) names a store.
    pub(crate) fn is_configured(&self) -> bool {
        use otaforge::env::{AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_CONNECTION_STRING};
        self.dir.is_some()
            || self.connection_string.is_some()
            || self.account.is_some()
            || self.container_sas_url.is_some()
            || self.entra.is_some()
            || env_value(AZURE_STORAGE_CONNECTION_STRING).is_some()
            || env_value(AZURE_STORAGE_ACCOUNT).is_some()
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

    /// Opens the configured store; each retried try is told on stderr unless `--quiet`.
    pub(crate) fn open(&self, out: &Output) -> anyhow::Result<AnyStore> {
        if let Some(dir) = &self.dir {
            return Ok(AnyStore::Dir(DirStore::open(dir, &self.base_url)?));
        }
        let notices = out.clone();
        let network = Network {
            io_timeout: self.io_timeout,
            retry: otaforge::retry::RetryPolicy {
                max_retries: self.max_retries,
                ..Default::default()
            },
            // Each failed try as it happens, so a slow failure is never silent.
            on_retry: Some(otaforge::storage::azure::RetryNotice(std::sync::Arc::new(
                move |m: &str| notices.notice(format!("upload: {m}")),
            ))),
        };
        Ok(AnyStore::Azure(self.azure_store(network)?))
    }

    fn azure_store(&self, network: Network) -> anyhow::Result<AzureStore> {
        use otaforge::env::{
            AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY,
        };
        if let Some(url) = &self.container_sas_url {
            return Ok(AzureStore::from_container_sas_url(url, network)?);
        }
        let account = self.account.clone().or_else(|| env_value(AZURE_STORAGE_ACCOUNT));
        let endpoint = |account: &str| {
            self.blob_endpoint
                .clone()
                .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
        };
        if let Some(source) = self.entra {
            let account = account
                .with_context(|| format!("--entra needs --account (or {AZURE_STORAGE_ACCOUNT})"))?;
            let cred = otaforge::storage::azure::entra_credential(source.into())?;
            return Ok(AzureStore::new(
                &endpoint(&account),
                &account,
                Credential::Entra(cred),
                network,
            )?);
        }
        if let Some(cs) =
            self.connection_string.clone().or_else(|| env_value(AZURE_STORAGE_CONNECTION_STRING))
        {
            if self.blob_endpoint.is_some() || self.account.is_some() {
                bail!(
                    "--account and --blob-endpoint conflict with a connection string; put BlobEndpoint= in the string"
                );
            }
            return Ok(AzureStore::from_connection_string(&cs, network)?);
        }
        if let Some(account) = account {
            let key = env_value(AZURE_STORAGE_KEY).with_context(|| {
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

/// Where a signing key comes from: a PEM file, `env:VAR`, or an external command.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SignerArgs {
    /// Private key: a PKCS#8 PEM file, or env:VAR for a PEM held in an environment variable.
    /// Default: the PEM in $OTAFORGE_SIGNING_KEY. Repeat to sign with several keys where the
    /// command allows it.
    #[arg(long, value_name = "FILE|env:VAR")]
    pub(crate) key: Vec<String>,
    /// Sign with an external command instead (HSM, KMS): it reads the message on stdin and
    /// prints the 64-byte Ed25519 signature (raw or base64) on stdout. Needs --signer-pub.
    #[arg(long, value_name = "COMMAND", requires = "signer_pub")]
    pub(crate) sign_command: Option<String>,
    /// The public key of the external signer's key.
    #[arg(long, value_name = "PUB.pem", requires = "sign_command")]
    pub(crate) signer_pub: Option<PathBuf>,
}

impl SignerArgs {
    /// The configured signers; with `required`, falls back to $OTAFORGE_SIGNING_KEY and fails
    /// when nothing is configured.
    pub(crate) fn signers(&self, required: bool) -> anyhow::Result<Vec<Box<dyn Signer>>> {
        let mut signers: Vec<Box<dyn Signer>> = Vec::new();
        for k in &self.key {
            signers.push(key_signer(k)?);
        }
        if let (Some(cmd), Some(p)) = (&self.sign_command, &self.signer_pub) {
            signers.push(Box::new(CommandSigner::new(cmd.clone(), PublicKey::from_file(p)?)));
        }
        if signers.is_empty() && required {
            if std::env::var_os(otaforge::env::OTAFORGE_SIGNING_KEY).is_some() {
                signers.push(Box::new(KeySigner::from_env(otaforge::env::OTAFORGE_SIGNING_KEY)?));
            } else {
                bail!(
                    "no signing key: pass --key FILE, --key env:VAR or --sign-command, or set {}",
                    otaforge::env::OTAFORGE_SIGNING_KEY
                );
            }
        }
        Ok(signers)
    }

    /// Exactly one signer (commands whose output holds one signature).
    pub(crate) fn one(&self, required: bool) -> anyhow::Result<Option<Box<dyn Signer>>> {
        let mut s = self.signers(required)?;
        if s.len() > 1 {
            bail!("this command signs with one key; {} were given", s.len());
        }
        Ok(s.pop())
    }
}

/// A signer from `FILE` or `env:VAR`.
pub(crate) fn key_signer(spec: &str) -> anyhow::Result<Box<dyn Signer>> {
    Ok(match spec.strip_prefix("env:") {
        Some(var) => Box::new(KeySigner::from_env(var)?),
        None => Box::new(
            KeySigner::from_file(Path::new(spec)).with_context(|| format!("signing key {spec}"))?,
        ),
    })
}

/// The public keys a verification trusts.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TrustArgs {
    /// A trusted public key (PEM); repeatable.
    #[arg(long = "pub", value_name = "PUB.pem")]
    pub(crate) public: Vec<PathBuf>,
    /// A directory whose *.pub.pem files are all trusted.
    #[arg(long, value_name = "DIR")]
    pub(crate) trusted_keys: Option<PathBuf>,
}

impl TrustArgs {
    /// The trusted set, empty when no key was given.
    pub(crate) fn keys(&self) -> anyhow::Result<TrustedKeys> {
        let mut keys = TrustedKeys::new();
        for p in &self.public {
            keys.add_file(p)?;
        }
        if let Some(d) = &self.trusted_keys {
            keys.add_dir(d)?;
        }
        Ok(keys)
    }
}

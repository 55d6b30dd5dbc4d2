//! Putting artifacts where ADU can fetch them: Azure Blob Storage, or a local directory that
//! `otaforge serve` publishes.
//!
//! One [`BlobStore`] trait, two backends:
//! - [`azure::AzureStore`]: block blobs through the official `azure_storage_blob` SDK. Blocks
//!   have deterministic ids (derived from the file's SHA-256, the block index and size), so a
//!   re-run after a crash stages only the blocks the service does not already hold; each block
//!   carries a transactional MD5 or CRC-64 ([`Checksum`]); the block list is committed only after every block is staged,
//!   together with the file's SHA-256 as blob metadata `sha256`. A blob that already has the
//!   same size and `sha256` is not sent again.
//! - [`dir::DirStore`]: a directory tree with the same semantics and HMAC-signed, expiring read
//!   URLs.
//!
//! Read URLs are least-privilege service SAS URLs ([`sas`]): `sp=r` on one blob, valid from five
//! minutes ago (clock skew) for four hours by default. Secrets (account keys, SAS signatures)
//! never reach an error message: [`StorageError`] text is redacted when it is built.

pub mod azure;
pub mod dir;
pub mod embedded;
pub mod sas;

pub use embedded::AnyStore;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::{Reporter, Sha256};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A local file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Credentials or settings are missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The service refused the credential's permission.
    #[error("403 forbidden while trying to {operation}: {hint}")]
    Forbidden {
        /// What otaforge was doing.
        operation: String,
        /// Which permission is missing and how to grant it.
        hint: String,
    },
    /// The service answered with an error that retries did not cure.
    #[error("{operation} failed: {message}")]
    Service {
        /// What otaforge was doing.
        operation: String,
        /// HTTP status, when there was a response.
        status: Option<u16>,
        /// The service's message (redacted).
        message: String,
    },
    /// What was uploaded does not match what was read.
    #[error("integrity check failed for {blob}: {reason}")]
    Integrity {
        /// The blob.
        blob: String,
        /// Expected and found.
        reason: String,
    },
    /// A signed read URL was refused (dir backend).
    #[error("url refused: {0}")]
    BadUrl(String),
    /// A container or blob name breaks Azure's naming rules.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Why a container or blob name, or a read URL's lifetime, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not 3-63 characters of a-z, 0-9 and single hyphens.
    #[error(
        "container name `{0}` is invalid: 3-63 characters of a-z, 0-9 and single hyphens, \
         starting and ending with a letter or digit"
    )]
    Container(String),
    /// A blob name that breaks one of [`BlobRule`].
    #[error("blob name `{name}` is invalid: {rule}")]
    Blob {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        rule: BlobRule,
    },
    /// A path whose last component is missing or not UTF-8 cannot name a blob.
    #[error("{0} has no UTF-8 file name to use as a blob name")]
    NoFileName(PathBuf),
    /// A read URL's lifetime that is unreadable or outside 1 second..7 days.
    #[error("`{text}`: {reason}")]
    Ttl {
        /// The value as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The rules of a blob name, each a reason [`NameError::Blob`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlobRule {
    /// 1 to 1024 characters.
    #[error("it must have 1 to 1024 characters")]
    Length,
    /// No control characters, no backslash.
    #[error("control characters and backslashes are not allowed")]
    Characters,
    /// No empty, `.` or `..` segment.
    #[error("segments between `/` must not be empty, `.` or `..`")]
    Segments,
    /// `.otaforge…` is the dir backend's own.
    #[error("names starting with .otaforge are reserved")]
    Reserved,
}

impl StorageError {
    /// A stable camelCase name, for `--format json`.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::Io(_) => "io",
            StorageError::Config(_) => "config",
            StorageError::Forbidden { .. } => "forbidden",
            StorageError::Service { .. } => "service",
            StorageError::Integrity { .. } => "integrity",
            StorageError::BadUrl(_) => "badUrl",
            StorageError::Name(_) => "invalidName",
        }
    }
}

/// A container name: 3 to 63 lowercase letters, digits and single hyphens, starting and ending
/// with a letter or digit (Azure's rule, which the dir backend keeps too).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerName(String);

impl FromStr for ContainerName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let ok = (3..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.contains("--");
        if ok { Ok(Self(s.to_owned())) } else { Err(NameError::Container(s.to_owned())) }
    }
}

impl ContainerName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob name: 1 to 1024 characters, `/`-separated segments that are neither empty, `.` nor
/// `..`, no backslash or control characters. Safe as a relative path in the dir backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobName(String);

impl FromStr for BlobName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let rule = if s.is_empty() || s.len() > 1024 {
            BlobRule::Length
        } else if s.chars().any(|c| c.is_control() || c == '\\') {
            BlobRule::Characters
        } else if s.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            BlobRule::Segments
        } else if s.starts_with(".otaforge") || s.contains("/.otaforge") {
            BlobRule::Reserved
        } else {
            return Ok(Self(s.to_owned()));
        };
        Err(NameError::Blob { name: s.to_owned(), rule })
    }
}

impl BlobName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name percent-encoded for a URL path (each segment encoded, `/` kept).
    pub fn url_path(&self) -> String {
        self.0
            .split('/')
            .map(|seg| {
                url::form_urlencoded::byte_serialize(seg.as_bytes())
                    .collect::<String>()
                    .replace('+', "%20")
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `prefix` + file name of `path`.
    pub fn for_file(prefix: Option<&str>, path: &Path) -> Result<Self, NameError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| NameError::NoFileName(path.to_owned()))?;
        let full = match prefix.map(|p| p.trim_end_matches('/')) {
            Some(p) if !p.is_empty() => format!("{p}/{name}"),
            _ => name.to_owned(),
        };
        full.parse()
    }
}

impl fmt::Display for BlobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The transactional checksum sent with each block; the service recomputes it and refuses a
/// block that changed on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// `Content-MD5`: Azure and Azurite both check it natively (the default).
    #[default]
    Md5,
    /// `x-ms-content-crc64`: a small fraction of MD5's client CPU; Azure checks it natively,
    /// Azurite in JavaScript (slowly).
    Crc64,
}

/// The CRC-64 Azure Storage checks in `x-ms-content-crc64`, as the header carries it (8 bytes,
/// little endian). Azure's polynomial 0x9A6C9329AC4BC9B5, reflected, with all-ones initial value
/// and final XOR, is the catalogue's CRC-64/NVME; `crc64fast-nvme` computes it with carry-less
/// multiplication where the CPU has it (7.5 GiB/s here, against 1.4 GiB/s for the table-driven
/// code it replaced; docs/benchmarks.md).
pub fn crc64(data: &[u8]) -> [u8; 8] {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64().to_le_bytes()
}

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Block size in bytes (at least 64 KiB, at most 4000 MiB).
    pub block_size: u64,
    /// Blocks in flight at once.
    pub concurrency: usize,
    /// Per-block checksum.
    pub checksum: Checksum,
}

/// Default block size, chosen by `cargo xtask bench upload` (docs/benchmarks.md).
pub const DEFAULT_BLOCK_SIZE: u64 = 8 << 20;
/// Default number of blocks in flight.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// At most this many blocks per blob (Azure's committed-block limit).
pub const MAX_BLOCKS: u64 = 50_000;
/// The block sizes otaforge uploads with: 64 KiB (smaller blocks only multiply requests) to
/// 4000 MiB, Azure's largest block (Put Block, service version 2019-12-12 and later).
pub const BLOCK_SIZES: std::ops::RangeInclusive<u64> = (64 << 10)..=(4000 << 20);

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            checksum: Checksum::Md5,
        }
    }
}

impl UploadOptions {
    /// The block size actually used for a file of `len` bytes: the configured one, grown so the
    /// file needs at most [`MAX_BLOCKS`] blocks.
    pub fn block_size_for(&self, len: u64) -> u64 {
        let min = len.div_ceil(MAX_BLOCKS);
        self.block_size.max(min).max(1)
    }
}

/// What an upload did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    /// The blob.
    pub blob: String,
    /// File size.
    pub size_in_bytes: u64,
    /// File SHA-256 (base64), also stored as blob metadata `sha256`.
    pub sha256: Sha256,
    /// The blob already held these exact bytes; nothing was sent.
    pub already_present: bool,
    /// Blocks sent in this run.
    pub blocks_sent: u64,
    /// Blocks a previous, interrupted run had already staged.
    pub blocks_reused: u64,
}

impl Uploaded {
    /// Nothing sent yet.
    pub fn new(blob: &BlobName, source: &Source) -> Self {
        Self {
            blob: blob.to_string(),
            size_in_bytes: source.size,
            sha256: source.sha256,
            already_present: false,
            blocks_sent: 0,
            blocks_reused: 0,
        }
    }
}

/// A local file to upload, hashed once.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: Sha256,
    /// Its modification time when it was hashed, to notice a change before committing.
    pub modified: Option<std::time::SystemTime>,
}

impl Source {
    /// Hashes `path`, reading it through a memory map (the upload then sends from the same
    /// pages, so the file is never copied into buffers).
    pub fn hash(path: &Path, reporter: &dyn Reporter) -> Result<Self, StorageError> {
        use sha2::Digest as _;
        // Opened first, so a missing file is reported as one ("failed to open file").
        let map = crate::fsutil::map_file(path)?;
        let modified = fs_err::metadata(path)?.modified().ok();
        let label = path.display().to_string();
        reporter.start(&label, Some(map.len() as u64));
        let mut h = sha2::Sha256::new();
        for chunk in map.chunks(4 << 20) {
            h.update(chunk);
            reporter.advance(&label, chunk.len() as u64);
        }
        reporter.finish(&label);
        Ok(Self {
            path: path.to_path_buf(),
            size: map.len() as u64,
            sha256: Sha256::from_bytes(h.finalize().into()),
            modified,
        })
    }

    /// Fails when the file's size or modification time changed since it was hashed: what was
    /// sent might then not be what the SHA-256 describes.
    pub fn check_unchanged(&self) -> Result<(), StorageError> {
        let m = fs_err::metadata(&self.path)?;
        if m.len() != self.size || m.modified().ok() != self.modified {
            return Err(StorageError::Integrity {
                blob: self.path.display().to_string(),
                reason: "the file changed while it was being uploaded; nothing was committed, run the upload again".into(),
            });
        }
        Ok(())
    }
}

/// The deterministic id of block `index` of a file: 16 bytes of the file's SHA-256, the block
/// size and the index. Same file, same block size: same ids, so a re-run finds what an
/// interrupted run staged; any change to the file changes every id.
pub fn block_id(sha256: &Sha256, block_size: u64, index: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(32);
    id.extend_from_slice(&sha256.as_bytes()[..16]);
    id.extend_from_slice(&block_size.to_be_bytes());
    id.extend_from_slice(&index.to_be_bytes());
    id
}

/// A place blobs are uploaded to and read from.
pub trait BlobStore: Send + Sync {
    /// Where blobs go, for messages (no secrets).
    fn describe(&self) -> String;

    /// Creates the container if it does not exist.
    fn ensure_container(
        &self,
        container: &ContainerName,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Uploads one hashed file; skips it when the blob already has the same size and SHA-256.
    fn upload(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        source: &Source,
        options: &UploadOptions,
        reporter: &dyn Reporter,
    ) -> impl Future<Output = Result<Uploaded, StorageError>> + Send;

    /// A URL that lets its holder read one blob, and nothing else, until `ttl` from now.
    fn read_url(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        ttl: Duration,
    ) -> impl Future<Output = Result<String, StorageError>> + Send;
}

/// The longest a read URL stays valid: a user delegation key's limit, and a sane bound for a URL
/// that anyone holding it can use. Longer requests are cut to it.
pub const MAX_URL_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Parses `4h`, `30m`, `7d` into a duration for SAS expiry; at most [`MAX_URL_TTL`].
pub fn parse_ttl(s: &str) -> Result<Duration, NameError> {
    let err = |reason: String| NameError::Ttl { text: s.to_owned(), reason };
    let d = humantime::parse_duration(s).map_err(|e| err(e.to_string()))?;
    if d.is_zero() || d > MAX_URL_TTL {
        return Err(err("must be between 1 second and 7 days".to_owned()));
    }
    Ok(d)
}

impl crate::error::ErrorCode for StorageError {
    fn code(&self) -> String {
        self.kind().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!("firmware".parse::<ContainerName>().is_ok());
        for bad in ["ab", "Firmware", "-abc", "abc-", "a--b", "a_b"] {
            assert!(bad.parse::<ContainerName>().is_err(), "{bad}");
        }
        assert!("v1.2/app.bin".parse::<BlobName>().is_ok());
        for bad in ["", "a//b", "../x", "a/./b", "a\\b", "x/..", ".otaforge-key"] {
            assert!(bad.parse::<BlobName>().is_err(), "{bad}");
        }
        assert_eq!("a b/c+d".parse::<BlobName>().unwrap().url_path(), "a%20b/c%2Bd");
        let rule = |s: &str| match s.parse::<BlobName>() {
            Err(NameError::Blob { rule, .. }) => Some(rule),
            _ => None,
        };
        assert_eq!(rule(&"x".repeat(1025)), Some(BlobRule::Length));
        assert_eq!(rule("a\u{7}b"), Some(BlobRule::Characters));
        assert_eq!(rule("a/../b"), Some(BlobRule::Segments));
        assert_eq!(rule("v1/.otaforge-keys"), Some(BlobRule::Reserved));
        assert!(matches!(parse_ttl("8d"), Err(NameError::Ttl { .. })));
        assert!(matches!(parse_ttl("soon"), Err(NameError::Ttl { .. })));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn crc64_matches_the_value_azurite_computes() {
        use base64::Engine as _;
        // Azurite's Crc64Mismatch response for the body "hello\n" names this value.
        let b64 = base64::engine::general_purpose::STANDARD.encode(crc64(b"hello\n"));
        assert_eq!(b64, "B1ZarUv7Q2o=");
        // Bit-at-a-time definition, on a length that exercises every tail.
        let data: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 256) as u8).collect();
        let mut r = !0u64;
        for &b in &data {
            r ^= u64::from(b);
            for _ in 0..8 {
                r = if r & 1 == 1 { (r >> 1) ^ 0x9A6C_9329_AC4B_C9B5 } else { r >> 1 };
            }
        }
        assert_eq!(crc64(&data), (!r).to_le_bytes());
    }

    #[test]
    fn block_ids_have_one_length_and_block_size_grows_for_huge_files() {
        let s = Sha256::digest(b"x");
        assert_eq!(block_id(&s, 8 << 20, 0).len(), block_id(&s, 8 << 20, 49_999).len());
        assert_ne!(block_id(&s, 8 << 20, 1), block_id(&s, 4 << 20, 1));
        let o = UploadOptions::default();
        assert_eq!(o.block_size_for(1 << 30), 8 << 20);
        assert!((1u64 << 40).div_ceil(o.block_size_for(1 << 40)) <= MAX_BLOCKS);
    }
}

//! The local-directory backend: the embedded default that `otaforge serve` publishes over HTTP.
//!
//! Layout under the root: `CONTAINER/BLOB` holds the bytes, `CONTAINER/.otaforge-meta/BLOB.json`
//! the size and SHA-256, and `.otaforge-url-key` (mode 0600) the 32-byte key that signs read
//! URLs. A blob appears only complete: it is copied to a temp file, checked, and renamed.
//!
//! Read URLs look like `BASE/CONTAINER/BLOB?se=2026-11-23T15:00:00Z&sp=r&sig=...`, where `sig` is
//! the unpadded base64url HMAC-SHA256 of `r\n{se}\n/CONTAINER/BLOB` under the root's key.
//! [`DirStore::resolve`] checks one and maps it to the file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};

use super::{
    BlobName, BlobStore, ContainerName, NameError, Source, StorageError, UploadOptions, Uploaded,
};
use crate::{Reporter, Sha256};

const KEY_FILE: &str = ".otaforge-url-key";
const META_DIR: &str = ".otaforge-meta";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A directory of containers.
#[derive(Clone)]
pub struct DirStore {
    root: PathBuf,
    base_url: String,
    key: [u8; 32],
    /// Mode of committed blobs: 0644 for a folder a web server publishes, 0600 for serve's own.
    file_mode: u32,
}

impl std::fmt::Debug for DirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirStore({}, {})", self.root.display(), self.base_url)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Meta {
    size_in_bytes: u64,
    sha256: Sha256,
}

impl DirStore {
    /// Opens (creating if needed) a store at `root` whose read URLs start with `base_url`
    /// (for example `http://127.0.0.1:8080/blobs`).
    pub fn open(root: &Path, base_url: &str) -> Result<Self, StorageError> {
        fs_err::create_dir_all(root)?;
        let key_path = root.join(KEY_FILE);
        let key = match fs_err::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => {
                return Err(StorageError::Config(format!(
                    "{} is not a 32-byte key; delete it to make a new one (old URLs stop working)",
                    key_path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut f = crate::fsutil::AtomicFile::new(&key_path)?;
                f.set_mode(0o600)?;
                f.write_all(&k)?;
                match f.commit(false) {
                    Ok(()) => k.to_vec(),
                    // Another process made one first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        fs_err::read(&key_path)?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let mut k = [0u8; 32];
        k.copy_from_slice(&key[..32]);
        Ok(Self {
            root: root.to_path_buf(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            key: k,
            file_mode: 0o644,
        })
    }

    /// This store with blobs only their owner can read (0600): for a store inside a private
    /// data folder, such as `otaforge serve`'s.
    pub fn private(mut self) -> Self {
        self.file_mode = 0o600;
        self
    }

    /// Makes `file` (already written and checked: `size` bytes with `sha256`) the blob.
    /// Metadata is removed first and written last: a crash in between leaves a blob without
    /// metadata, which the next upload sends again, never metadata describing other bytes.
    fn commit(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        file: crate::fsutil::AtomicFile,
        size: u64,
        sha256: Sha256,
    ) -> Result<(), StorageError> {
        let dest = self.blob_path(container, blob);
        let meta_path = self.meta_path(container, blob);
        for p in [&dest, &meta_path] {
            if let Some(parent) = p.parent() {
                fs_err::create_dir_all(parent)?;
            }
        }
        let meta = serde_json::to_vec(&Meta { size_in_bytes: size, sha256 })
            .map_err(|e| StorageError::Config(e.to_string()))?;
        let _ = fs_err::remove_file(&meta_path);
        file.commit_to(&dest, true)?;
        crate::fsutil::write_atomic(&meta_path, &meta, true)?;
        Ok(())
    }

    /// Whether the blob already holds `size` bytes with `sha256`.
    fn holds(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        size: u64,
        sha256: &Sha256,
    ) -> bool {
        let meta = fs_err::read(self.meta_path(container, blob))
            .ok()
            .and_then(|t| serde_json::from_slice::<Meta>(&t).ok());
        meta.is_some_and(|m| m.size_in_bytes == size && m.sha256 == *sha256)
            && fs_err::metadata(self.blob_path(container, blob)).is_ok_and(|d| d.len() == size)
    }

    /// Stores a file that was received and hashed elsewhere (`otaforge serve`'s upload route),
    /// by renaming it into place: no second copy. `file` must be on the store's file system.
    /// Returns true when the blob already held these bytes (the file is then dropped).
    pub fn put_received(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        mut file: crate::fsutil::AtomicFile,
        size: u64,
        sha256: Sha256,
    ) -> Result<bool, StorageError> {
        if self.holds(container, blob, size, &sha256) {
            return Ok(true);
        }
        file.set_mode(self.file_mode)?;
        self.commit(container, blob, file, size, sha256)?;
        Ok(false)
    }

    /// The file that holds a blob.
    pub fn blob_path(&self, container: &ContainerName, blob: &BlobName) -> PathBuf {
        self.root.join(container.as_str()).join(blob.as_str())
    }

    fn meta_path(&self, container: &ContainerName, blob: &BlobName) -> PathBuf {
        self.root.join(container.as_str()).join(META_DIR).join(format!("{}.json", blob.as_str()))
    }

    fn sign(&self, expiry: &str, container: &str, blob: &str) -> String {
        // HMAC accepts any key length.
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(format!("r\n{expiry}\n/{container}/{blob}").as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// Checks a read URL's path (`/CONTAINER/BLOB`, percent-encoded) and query at time `now`,
    /// and returns the file it grants.
    pub fn resolve(
        &self,
        path: &str,
        query: &str,
        now: SystemTime,
    ) -> Result<PathBuf, StorageError> {
        let decoded: String = percent_decode(path)
            .ok_or_else(|| StorageError::BadUrl("the path is not valid UTF-8".into()))?;
        let rest = decoded.trim_start_matches('/');
        let (c, b) = rest
            .split_once('/')
            .ok_or_else(|| StorageError::BadUrl("the path names no blob".into()))?;
        let container: ContainerName =
            c.parse().map_err(|e: NameError| StorageError::BadUrl(e.to_string()))?;
        let blob: BlobName =
            b.parse().map_err(|e: NameError| StorageError::BadUrl(e.to_string()))?;
        let mut se = None;
        let mut sig = None;
        let mut sp = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "se" => se = Some(v.into_owned()),
                "sig" => sig = Some(v.into_owned()),
                "sp" => sp = Some(v.into_owned()),
                _ => {}
            }
        }
        let (Some(se), Some(sig)) = (se, sig) else {
            return Err(StorageError::BadUrl("the URL has no se and sig parameters".into()));
        };
        if sp.as_deref() != Some("r") {
            return Err(StorageError::BadUrl("the URL does not grant read (sp=r)".into()));
        }
        let expected = self.sign(&se, container.as_str(), blob.as_str());
        if !super::sas::constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
            return Err(StorageError::BadUrl("the signature does not match".into()));
        }
        let expiry = humantime::parse_rfc3339(&se)
            .map_err(|_| StorageError::BadUrl("se is not an RFC 3339 time".into()))?;
        if now >= expiry {
            return Err(StorageError::BadUrl(format!("the URL expired at {se}")));
        }
        Ok(self.blob_path(&container, &blob))
    }
}

impl DirStore {
    fn sign_container(&self, expiry: &str, container: &str) -> String {
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        // `cw` first: never the same text as a read grant's (`r\n…`).
        mac.update(format!("cw\n{expiry}\n/{container}").as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// A container URL that lets its holder create and write blobs in `container` (Azure's
    /// Put Blob under a container SAS, `sr=c&sp=cw`) for `ttl`: what a device is given to
    /// upload its logs to (`BASE/CONTAINER?se=…&sr=c&sp=cw&sig=…`).
    pub fn write_url(&self, container: &ContainerName, ttl: Duration) -> String {
        let se = super::sas::sas_time(SystemTime::now() + ttl.min(super::MAX_URL_TTL));
        let sig = self.sign_container(&se, container.as_str());
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("se", &se);
        q.append_pair("sr", "c");
        q.append_pair("sp", "cw");
        q.append_pair("sig", &sig);
        format!("{}/{}?{}", self.base_url, container, q.finish())
    }

    /// Checks a Put Blob request's path (`/CONTAINER/BLOB`, percent-encoded) and query (a
    /// [`DirStore::write_url`]'s) at time `now`, and returns the blob it may write.
    pub fn resolve_write(
        &self,
        path: &str,
        query: &str,
        now: SystemTime,
    ) -> Result<(ContainerName, BlobName), StorageError> {
        let decoded: String = percent_decode(path)
            .ok_or_else(|| StorageError::BadUrl("the path is not valid UTF-8".into()))?;
        let (c, b) = decoded
            .trim_start_matches('/')
            .split_once('/')
            .ok_or_else(|| StorageError::BadUrl("the path names no blob".into()))?;
        let container: ContainerName =
            c.parse().map_err(|e: NameError| StorageError::BadUrl(e.to_string()))?;
        let blob: BlobName =
            b.parse().map_err(|e: NameError| StorageError::BadUrl(e.to_string()))?;
        let (mut se, mut sig, mut sp, mut sr) = (None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let v = Some(v.into_owned());
            match k.as_ref() {
                "se" => se = v,
                "sig" => sig = v,
                "sp" => sp = v,
                "sr" => sr = v,
                _ => {}
            }
        }
        let (Some(se), Some(sig)) = (se, sig) else {
            return Err(StorageError::BadUrl("the URL has no se and sig parameters".into()));
        };
        if sr.as_deref() != Some("c") || sp.as_deref() != Some("cw") {
            return Err(StorageError::BadUrl(
                "the URL does not grant writing to the container (sr=c, sp=cw)".into(),
            ));
        }
        let expected = self.sign_container(&se, container.as_str());
        if !super::sas::constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
            return Err(StorageError::BadUrl("the signature does not match".into()));
        }
        let expiry = humantime::parse_rfc3339(&se)
            .map_err(|_| StorageError::BadUrl("se is not an RFC 3339 time".into()))?;
        if now >= expiry {
            return Err(StorageError::BadUrl(format!("the URL expired at {se}")));
        }
        Ok((container, blob))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl BlobStore for DirStore {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    async fn ensure_container(&self, container: &ContainerName) -> Result<(), StorageError> {
        fs_err::create_dir_all(self.root.join(container.as_str()))?;
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
        let dest = self.blob_path(container, blob);
        let mut result = Uploaded::new(blob, source);
        if self.holds(container, blob, source.size, &source.sha256) {
            result.already_present = true;
            return Ok(result);
        }
        if let Some(parent) = dest.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let label = blob.to_string();
        reporter.start(&label, Some(source.size));
        // Copy while hashing what was written, so a file that changed since it was hashed is
        // caught before the blob becomes visible.
        let mut tmp = crate::fsutil::AtomicFile::new(&dest)?;
        tmp.set_mode(self.file_mode)?;
        let mut input = fs_err::File::open(&source.path)?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = std::io::Read::read(&mut input, &mut buf)?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut hasher, &buf[..n]);
            tmp.write_all(&buf[..n])?;
            total += n as u64;
            reporter.advance(&label, n as u64);
        }
        let actual = Sha256::from_bytes(sha2::Digest::finalize(hasher).into());
        if total != source.size || actual != source.sha256 {
            return Err(StorageError::Integrity {
                blob: blob.to_string(),
                reason: format!(
                    "{} changed while uploading ({total} bytes, sha256 {actual})",
                    source.path.display()
                ),
            });
        }
        self.commit(container, blob, tmp, source.size, source.sha256)?;
        reporter.finish(&label);
        result.blocks_sent = 1;
        Ok(result)
    }

    async fn read_url(
        &self,
        container: &ContainerName,
        blob: &BlobName,
        ttl: Duration,
    ) -> Result<String, StorageError> {
        let se = super::sas::sas_time(SystemTime::now() + ttl.min(super::MAX_URL_TTL));
        let sig = self.sign(&se, container.as_str(), blob.as_str());
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("se", &se);
        q.append_pair("sp", "r");
        q.append_pair("sig", &sig);
        Ok(format!("{}/{}/{}?{}", self.base_url, container, blob.url_path(), q.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_grant_writes_only_its_container_and_a_read_grant_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), "http://h/blobs").unwrap();
        let logs: ContainerName = "logs".parse().unwrap();
        let url = store.write_url(&logs, Duration::from_secs(60));
        let query = url.split_once('?').unwrap().1;
        let now = SystemTime::now();
        let (c, b) = store.resolve_write("/logs/d1/op/adu/aduc.log", query, now).unwrap();
        assert_eq!((c.as_str(), b.as_str()), ("logs", "d1/op/adu/aduc.log"));
        // Another container, a later time, a changed signature: refused.
        assert!(store.resolve_write("/other/d1/x", query, now).is_err());
        let later = now + Duration::from_secs(120);
        assert!(store.resolve_write("/logs/d1/x", query, later).is_err());
        assert!(store.resolve_write("/logs/d1/x", &query.replace("sig=", "sig=x"), now).is_err());
        // A read URL of a blob in the container grants no write, and a write grant no read.
        let blob: BlobName = "d1/x".parse().unwrap();
        let read = store.read_url(&logs, &blob, Duration::from_secs(60)).await.unwrap();
        let read_query = read.split_once('?').unwrap().1;
        assert!(store.resolve_write("/logs/d1/x", read_query, now).is_err());
        assert!(store.resolve("/logs/d1/x", query, now).is_err());
    }
}

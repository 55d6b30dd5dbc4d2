//! SHA-256 digests of files, streamed, in the two encodings the ecosystem uses.
//!
//! ADU import manifests and the import REST API carry **base64** of the raw 32-byte digest
//! (<https://learn.microsoft.com/azure/iot-hub-device-update/import-schema>); `sha256sum` and most
//! humans use lower-case **hex**. [`Sha256`] holds the raw digest and renders either.
//!
//! Files are read in fixed-size buffers, so memory stays constant whatever the file size, and
//! several files are hashed on separate threads.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest as _;

use crate::reporter::Reporter;

/// Size of one read. Large enough that syscall overhead vanishes next to hashing, small enough
/// to stay in L2 cache while the hasher walks it.
const READ_BUFFER: usize = 256 * 1024;

/// Errors from hashing files or parsing digests.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The text is a hex digest where base64 was expected.
    #[error(
        "'{value}' is a hex SHA-256 digest, but ADU expects base64 of the raw digest \
         (otaforge hash prints both; or: xxd -r -p <<< HEX | base64)"
    )]
    HexNotBase64 {
        /// The offending text.
        value: String,
    },
    /// The text is not valid base64.
    #[error("'{value}' is not base64: {reason}")]
    NotBase64 {
        /// The offending text.
        value: String,
        /// Why the decoder refused it.
        reason: String,
    },
    /// The text decodes to something other than 32 bytes.
    #[error("'{value}' decodes to {len} bytes; a SHA-256 digest is 32 bytes")]
    WrongLength {
        /// The offending text.
        value: String,
        /// Decoded length in bytes.
        len: usize,
    },
    /// The text is not a 64-character hex digest.
    #[error("'{value}' is not a 64-character hex SHA-256 digest")]
    NotHex {
        /// The offending text.
        value: String,
    },
}

/// A SHA-256 digest. Parsed from and displayed as base64 (the ADU encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Digest of an in-memory buffer.
    pub fn digest(data: &[u8]) -> Self {
        Self(sha2::Sha256::digest(data).into())
    }

    /// Base64 (standard alphabet, padded) of the raw digest, as ADU wants it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Lower-case hex, as `sha256sum` prints it.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        out
    }

    /// Parses a 64-character hex digest (either case).
    pub fn from_hex(s: &str) -> Result<Self, HashError> {
        let not_hex = || HashError::NotHex { value: s.to_owned() };
        if s.len() != 64 {
            return Err(not_hex());
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(not_hex)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(not_hex)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Self(out))
    }

    /// True when `s` has the shape of a hex SHA-256 digest (64 hex characters).
    pub fn looks_like_hex(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

impl FromStr for Sha256 {
    type Err = HashError;

    /// Parses base64 of a 32-byte digest; a hex digest gets an error that says so.
    fn from_str(s: &str) -> Result<Self, HashError> {
        if Self::looks_like_hex(s) {
            return Err(HashError::HexNotBase64 { value: s.to_owned() });
        }
        let bytes = BASE64
            .decode(s)
            .map_err(|e| HashError::NotBase64 { value: s.to_owned(), reason: e.to_string() })?;
        let len = bytes.len();
        let arr: [u8; 32] =
            bytes.try_into().map_err(|_| HashError::WrongLength { value: s.to_owned(), len })?;
        Ok(Self(arr))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Size and digest of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// The file as it was named by the caller.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents.
    pub sha256: Sha256,
}

/// Streams `reader` through SHA-256, reporting progress under `label`.
pub fn hash_reader<R: Read>(
    mut reader: R,
    label: &str,
    reporter: &dyn Reporter,
) -> std::io::Result<(u64, Sha256)> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        reporter.advance(label, n as u64);
    }
    Ok((size, Sha256(hasher.finalize().into())))
}

/// Streams `reader` through SHA-256 with reading and hashing on two threads.
///
/// Copying a file out of the page cache costs about half as much CPU as hashing it with SHA-NI;
/// done in turn on one thread the copy adds straight to the wall time. A reader thread fills a
/// few recycled buffers while this thread hashes, so one file runs at hashing speed.
pub fn hash_reader_pipelined<R: Read + Send>(
    reader: R,
    label: &str,
    reporter: &dyn Reporter,
) -> std::io::Result<(u64, Sha256)> {
    use std::sync::mpsc::sync_channel;
    const BUFFERS: usize = 4;
    let (full_tx, full_rx) = sync_channel::<std::io::Result<(Vec<u8>, usize)>>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = empty_tx.send(vec![0u8; READ_BUFFER]);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut reader = reader;
            // Ends when the file ends, on an error, or when the hashing side has gone away
            // (its channels are dropped, so recv and send fail).
            while let Ok(mut buf) = empty_rx.recv() {
                let n = loop {
                    match reader.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let done = !matches!(n, Ok(n) if n > 0);
                if matches!(n, Ok(0)) || full_tx.send(n.map(|n| (buf, n))).is_err() || done {
                    break;
                }
            }
        });
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        for msg in full_rx {
            let (buf, n) = msg?;
            hasher.update(&buf[..n]);
            size += n as u64;
            reporter.advance(label, n as u64);
            let _ = empty_tx.send(buf);
        }
        Ok((size, Sha256(hasher.finalize().into())))
    })
}

/// Hashes one file with constant memory.
pub fn hash_file(path: &Path, reporter: &dyn Reporter) -> Result<FileDigest, HashError> {
    let read_err = |source| HashError::Read { path: path.to_owned(), source };
    // The error variant names the path itself, so plain std::fs is fine here.
    #[allow(clippy::disallowed_types)]
    let file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().ok().map(|m| m.len());
    let label = path.display().to_string();
    reporter.start(&label, total);
    let (size, sha256) = hash_reader_pipelined(file, &label, reporter).map_err(read_err)?;
    reporter.finish(&label);
    Ok(FileDigest { path: path.to_owned(), size, sha256 })
}

/// Hashes several files on up to `jobs` threads; results come back in input order.
///
/// Each file is read by one thread from start to end, so one large file is limited by one core
/// (SHA-256 is sequential) while several files use several cores.
pub fn hash_files(
    paths: &[PathBuf],
    jobs: usize,
    reporter: &dyn Reporter,
) -> Vec<Result<FileDigest, HashError>> {
    let jobs = jobs.clamp(1, paths.len().max(1));
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<FileDigest, HashError>>>> =
        paths.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let result = hash_file(path, reporter);
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                }
            });
        }
    });
    slots
        .into_iter()
        .zip(paths)
        .map(|(slot, path)| {
            slot.into_inner().unwrap_or_else(|p| p.into_inner()).unwrap_or_else(|| {
                Err(HashError::Read {
                    path: path.clone(),
                    source: std::io::Error::other("hashing thread ended without a result"),
                })
            })
        })
        .collect()
}

/// Number of worker threads to use by default: the machine's available parallelism.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_the_well_known_digest() {
        let d = Sha256::digest(b"");
        assert_eq!(d.to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(d.to_base64(), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    }

    #[test]
    fn hex_where_base64_is_expected_is_named_as_hex() {
        let hex = Sha256::digest(b"x").to_hex();
        let err = hex.parse::<Sha256>().unwrap_err();
        assert!(matches!(err, HashError::HexNotBase64 { .. }), "{err}");
        assert!(err.to_string().contains("hex SHA-256 digest"), "{err}");
    }

    #[test]
    fn short_base64_is_refused_with_its_length() {
        let err = "AAAA".parse::<Sha256>().unwrap_err();
        assert!(matches!(err, HashError::WrongLength { len: 3, .. }), "{err}");
    }

    #[test]
    fn garbage_is_not_base64() {
        let err = "not*base64".parse::<Sha256>().unwrap_err();
        assert!(matches!(err, HashError::NotBase64 { .. }), "{err}");
    }

    /// A reader that fails after some bytes.
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn read_errors_reach_the_caller_from_the_reader_thread() {
        let err = hash_reader_pipelined(Failing(READ_BUFFER * 3 + 5), "t", &crate::NoReporter)
            .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = hash_file(Path::new("/nonexistent/otaforge"), &crate::NoReporter).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/otaforge"), "{err}");
    }

    proptest::proptest! {
        // Few cases: each hashes up to half a megabyte, slowly in debug builds.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        #[test]
        fn base64_and_hex_round_trip(bytes in proptest::array::uniform32(0u8..)) {
            let d = Sha256::from_bytes(bytes);
            proptest::prop_assert_eq!(d.to_base64().parse::<Sha256>().unwrap(), d);
            proptest::prop_assert_eq!(Sha256::from_hex(&d.to_hex()).unwrap(), d);
            proptest::prop_assert_eq!(Sha256::from_hex(&d.to_hex().to_uppercase()).unwrap(), d);
        }

        #[test]
        fn streaming_equals_one_shot(data in proptest::collection::vec(0u8.., 0..(READ_BUFFER * 2 + 7))) {
            let (size, d) = hash_reader(&data[..], "t", &crate::NoReporter).unwrap();
            proptest::prop_assert_eq!(size, data.len() as u64);
            proptest::prop_assert_eq!(d, Sha256::digest(&data));
            // Small reads exercise the buffer hand-over between the two threads.
            let trickle = std::io::BufReader::with_capacity(4093, &data[..]);
            let (size, p) = hash_reader_pipelined(trickle, "t", &crate::NoReporter).unwrap();
            proptest::prop_assert_eq!(size, data.len() as u64);
            proptest::prop_assert_eq!(p, d);
        }
    }
}

/// A hash algorithm as ADU documents name it: the key of every `hashes` map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgorithm {
    /// `sha256`, the one ADU requires.
    Sha256,
    /// Any other name, kept as written.
    Other(String),
}

impl HashAlgorithm {
    /// The name as written in JSON.
    pub fn as_str(&self) -> &str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Other(s) => s,
        }
    }
}

impl From<&str> for HashAlgorithm {
    fn from(s: &str) -> Self {
        if s == "sha256" { HashAlgorithm::Sha256 } else { HashAlgorithm::Other(s.to_owned()) }
    }
}

impl std::fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for HashAlgorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for HashAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(HashAlgorithm::from(<String as serde::Deserialize>::deserialize(d)?.as_str()))
    }
}

//! Ed25519 key files: PKCS#8 private keys, SubjectPublicKeyInfo public keys, key ids.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use super::SignError;
use crate::Sha256;
use crate::fsutil::AtomicFile;

/// A key's identity: the SHA-256 of its SubjectPublicKeyInfo DER, printed as 64 hex digits.
///
/// The same value `openssl pkey -pubin -outform DER | sha256sum` prints, and the value MCUboot's
/// KEYHASH TLV holds for Ed25519 keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(Sha256);

impl KeyId {
    /// A key id from its raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Sha256::from_bytes(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 {
            return Err(format!("a key id is 64 hex digits, `{s}` has {}", s.len()));
        }
        Sha256::from_hex(s).map(KeyId).map_err(|e| e.to_string())
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An Ed25519 public key with its [`KeyId`].
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
    spki_der: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    /// Wraps a verifying key; refuses the small-order ("weak") keys that verify forged
    /// signatures.
    pub fn new(key: VerifyingKey) -> Result<Self, String> {
        if key.is_weak() {
            return Err("the public key is a small-order point that any signature matches".into());
        }
        Ok(Self::from_verifying(key))
    }

    fn from_verifying(key: VerifyingKey) -> Self {
        // RFC 8410 §4: an Ed25519 SubjectPublicKeyInfo is this fixed prefix and the 32 raw bytes.
        const SPKI_PREFIX: [u8; 12] =
            [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        let mut spki_der = SPKI_PREFIX.to_vec();
        spki_der.extend_from_slice(key.as_bytes());
        let id = KeyId(Sha256::digest(&spki_der));
        Self { key, id, spki_der }
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The 32 raw public key bytes.
    pub fn raw(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The SubjectPublicKeyInfo DER (44 bytes).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The SubjectPublicKeyInfo PEM text.
    pub fn to_pem(&self) -> String {
        use base64::Engine as _;
        // 44 DER bytes are 60 base64 characters: one line, within PEM's 64.
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.spki_der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// Reads a public key from PEM text (a `PUBLIC KEY` block). A private key is refused: where
    /// a public key is asked for, the file is going somewhere verification happens, and a
    /// private key must not travel there. `source_name` names the file in errors.
    pub fn from_pem(pem: &str, source_name: &str) -> Result<Self, SignError> {
        let bad = |reason: String| SignError::BadKey { source_name: source_name.into(), reason };
        if pem.contains("PRIVATE KEY-----") {
            return Err(bad(
                "is a private key, where a public key is needed; give its .pub.pem (or make one \
                 with `otaforge key show KEY.pem`), and keep the private key where signing happens"
                    .into(),
            ));
        }
        if !pem.contains("-----BEGIN PUBLIC KEY-----") {
            return Err(bad("no `-----BEGIN PUBLIC KEY-----` PEM block".into()));
        }
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| bad(format!("not an Ed25519 public key ({e})")))?;
        Self::new(key).map_err(bad)
    }

    /// Reads a public key file.
    pub fn from_file(path: &Path) -> Result<Self, SignError> {
        let text = read_key_text(path)?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// Reads a public key file, or takes the public half of a private key file (`key show`).
    pub fn public_half_of_file(path: &Path) -> Result<Self, SignError> {
        let text = read_key_text(path)?;
        if text.contains("PRIVATE KEY-----") {
            return Ok(PrivateKey::from_pem(&text, &path.display().to_string())?.public_key());
        }
        Self::from_pem(&text, &path.display().to_string())
    }

    /// Checks a signature over a message given in pieces.
    pub fn verify(&self, message: &super::Message<'_>, sig: &super::Signature) -> bool {
        let Ok(mut v) = self.key.verify_stream(sig) else { return false };
        message.for_each_chunk(&mut |c| v.update(c));
        v.finalize_and_verify().is_ok()
    }
}

/// A key file's text, kept in memory that is wiped when dropped. A file that is not UTF-8 text
/// (a DER key, a binary) is a [`SignError::BadKey`] that says so.
fn read_key_text(path: &Path) -> Result<Zeroizing<String>, SignError> {
    let bytes = Zeroizing::new(fs_err::read(path)?);
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(SignError::BadKey {
            source_name: path.display().to_string(),
            reason: "is not a PEM text file (binary content; otaforge reads PKCS#8 PEM keys, \
                     `-----BEGIN PRIVATE KEY-----` / `-----BEGIN PUBLIC KEY-----`)"
                .into(),
        }),
    }
}

/// An Ed25519 private key. Never printed: `Debug` shows only the key id, and the bytes are
/// wiped when dropped.
pub struct PrivateKey {
    key: SigningKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, secret not shown)", self.public_key().id())
    }
}

impl PrivateKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, SignError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self { key: SigningKey::from_bytes(&seed) })
    }

    /// A key from its 32-byte seed (tests and vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(seed) }
    }

    /// Reads a PKCS#8 `PRIVATE KEY` PEM (v1, or v2 with a public key that must match).
    pub fn from_pem(pem: &str, source_name: &str) -> Result<Self, SignError> {
        let bad = |reason: String| SignError::BadKey { source_name: source_name.into(), reason };
        if pem.contains("ENCRYPTED PRIVATE KEY") {
            return Err(bad("encrypted private keys are not supported; decrypt it into a file \
                 only the build can read, or use --sign-command"
                .into()));
        }
        if !pem.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(bad(
                "no `-----BEGIN PRIVATE KEY-----` PEM block (PKCS#8 Ed25519 expected, \
                 as `otaforge key generate` or `openssl genpkey -algorithm ed25519` write)"
                    .into(),
            ));
        }
        // The parser's message never contains key bytes.
        let key = SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| bad(format!("not an Ed25519 PKCS#8 private key ({e})")))?;
        Ok(Self { key })
    }

    /// Reads a private key file.
    pub fn from_file(path: &Path) -> Result<Self, SignError> {
        let text = read_key_text(path)?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        // A key derived from a secret scalar is never a small-order point.
        PublicKey::from_verifying(self.key.verifying_key())
    }

    /// The PKCS#8 v1 PEM (what `openssl genpkey` writes), wiped when dropped.
    pub fn to_pem(&self) -> Result<Zeroizing<String>, SignError> {
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        bytes
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| SignError::BadKey { source_name: "new key".into(), reason: e.to_string() })
    }

    /// Signs a message given in pieces. Each piece is read twice (Ed25519 hashes the message
    /// twice), so large files are never held in memory.
    pub(crate) fn sign(&self, message: &super::Message<'_>) -> Result<super::Signature, SignError> {
        let esk = ed25519_dalek::hazmat::ExpandedSecretKey::from(&self.key.to_bytes());
        let vk = self.key.verifying_key();
        let signed = ed25519_dalek::hazmat::raw_sign_byupdate::<sha2::Sha512, _>(
            &esk,
            |d| {
                use sha2::Digest as _;
                message.for_each_chunk(&mut |c| d.update(c));
                Ok(())
            },
            &vk,
        );
        // raw_sign_byupdate fails only when the closure does, which this one never does; the
        // error is still passed on rather than papered over.
        signed.map_err(|e| SignError::Malformed { what: "signature".into(), reason: e.to_string() })
    }
}

/// Writes `NAME.pem` (private, mode 0600) and `NAME.pub.pem` (public), refusing to replace
/// either. Returns the two paths and the public key.
pub fn generate_key_files(name: &Path) -> Result<(PathBuf, PathBuf, PublicKey), SignError> {
    let base = name.to_string_lossy();
    let base = base.strip_suffix(".pem").unwrap_or(&base);
    let private = PathBuf::from(format!("{base}.pem"));
    let public = PathBuf::from(format!("{base}.pub.pem"));
    for p in [&private, &public] {
        if p.exists() {
            return Err(SignError::KeyExists(p.clone()));
        }
    }
    let key = PrivateKey::generate()?;
    let pub_key = key.public_key();
    let mut priv_file = AtomicFile::new(&private)?;
    priv_file.set_mode(0o600)?;
    priv_file.write_all(key.to_pem()?.as_bytes())?;
    // The public key gets the umask's mode, like any file a tool creates.
    let mut pub_file = AtomicFile::new_with_mode(&public, Some(0o666))?;
    pub_file.write_all(pub_key.to_pem().as_bytes())?;
    let exists = |e: std::io::Error, p: &Path| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            SignError::KeyExists(p.to_owned())
        } else {
            SignError::Io(e)
        }
    };
    priv_file.commit(false).map_err(|e| exists(e, &private))?;
    if let Err(e) = pub_file.commit(false) {
        // Leave no half of a pair behind.
        let _ = fs_err::remove_file(&private);
        return Err(exists(e, &public));
    }
    Ok((private, public, pub_key))
}

/// The public keys a verification accepts, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key.
    pub fn add(&mut self, key: PublicKey) {
        self.keys.insert(key.id(), key);
    }

    /// Adds a key file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), SignError> {
        self.add(PublicKey::from_file(path)?);
        Ok(())
    }

    /// Adds every `*.pub.pem` file of a directory (private keys there are ignored: a trust
    /// directory should never hold them).
    pub fn add_dir(&mut self, dir: &Path) -> Result<usize, SignError> {
        let mut n = 0;
        let mut entries: Vec<_> = fs_err::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".pub.pem")) {
                self.add_file(&p)?;
                n += 1;
            }
        }
        if n == 0 {
            return Err(SignError::BadKey {
                source_name: dir.display().to_string(),
                reason: "holds no *.pub.pem public key files".into(),
            });
        }
        Ok(n)
    }

    /// True when no key was added.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key with this id.
    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    /// Every trusted key.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// The trusted ids, comma separated, for error messages.
    pub fn ids(&self) -> String {
        self.keys.keys().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Finds the key a signature names, or says the id is unknown.
    pub fn require(&self, kid: &str) -> Result<&PublicKey, SignError> {
        let unknown = || SignError::UnknownKey { kid: kid.to_owned(), trusted: self.ids() };
        let id: KeyId = kid.parse().map_err(|_| unknown())?;
        self.get(&id).ok_or_else(unknown)
    }
}

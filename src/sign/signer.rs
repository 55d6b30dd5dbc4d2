//! Where signatures come from: a key in memory, or an external command.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use zeroize::Zeroizing;

use super::{PrivateKey, PublicKey, SignError, Signature};

/// The bytes to sign or verify, as a list of pieces. A piece is either raw or base64url-encoded
/// on the fly (the JWS signing input), so a multi-gigabyte image is neither copied nor encoded
/// whole.
#[derive(Debug, Default)]
pub struct Message<'a> {
    parts: Vec<Part<'a>>,
}

#[derive(Debug)]
enum Part<'a> {
    Raw(&'a [u8]),
    Base64Url(&'a [u8]),
}

/// Input bytes per base64url chunk: a multiple of 3, so chunks never need padding.
const B64_CHUNK: usize = 3 * 16 * 1024;

impl<'a> Message<'a> {
    /// A message of these bytes.
    pub fn raw(bytes: &'a [u8]) -> Self {
        Self { parts: vec![Part::Raw(bytes)] }
    }

    /// Appends bytes as they are.
    pub fn push_raw(&mut self, bytes: &'a [u8]) -> &mut Self {
        self.parts.push(Part::Raw(bytes));
        self
    }

    /// Appends the unpadded base64url encoding of `bytes`.
    pub fn push_base64url(&mut self, bytes: &'a [u8]) -> &mut Self {
        self.parts.push(Part::Base64Url(bytes));
        self
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Raw(b) => b.len() as u64,
                Part::Base64Url(b) => (b.len() as u64 * 4).div_ceil(3),
            })
            .sum()
    }

    /// True when the message has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with consecutive chunks that together are the message.
    pub fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8])) {
        let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut buf = Vec::new();
        for part in &self.parts {
            match part {
                Part::Raw(b) => f(b),
                Part::Base64Url(b) => {
                    for chunk in b.chunks(B64_CHUNK) {
                        // Unpadded output is never longer than this, so encoding cannot fail.
                        buf.resize(chunk.len().div_ceil(3) * 4, 0);
                        let n = engine.encode_slice(chunk, &mut buf).unwrap_or(0);
                        f(&buf[..n]);
                    }
                }
            }
        }
    }
}

/// Something that produces Ed25519 signatures for one public key.
pub trait Signer {
    /// The public key the signatures verify with.
    fn public_key(&self) -> &PublicKey;
    /// Signs `message`.
    fn sign(&self, message: &Message<'_>) -> Result<Signature, SignError>;
}

/// Signs with a private key held in memory (from a file or an environment variable).
#[derive(Debug)]
pub struct KeySigner {
    key: PrivateKey,
    public: PublicKey,
}

impl KeySigner {
    /// Wraps a key.
    pub fn new(key: PrivateKey) -> Self {
        let public = key.public_key();
        Self { key, public }
    }

    /// Reads a PKCS#8 PEM file.
    pub fn from_file(path: &Path) -> Result<Self, SignError> {
        Ok(Self::new(PrivateKey::from_file(path)?))
    }

    /// Reads the PEM held by environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, SignError> {
        let pem = Zeroizing::new(std::env::var(var).map_err(|_| SignError::BadKey {
            source_name: format!("${var}"),
            reason: "is not set or not valid UTF-8".into(),
        })?);
        Ok(Self::new(PrivateKey::from_pem(&pem, &format!("${var}"))?))
    }
}

impl Signer for KeySigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &Message<'_>) -> Result<Signature, SignError> {
        self.key.sign(message)
    }
}

/// Signs by running a command: the message goes to its stdin, and it prints the raw 64-byte
/// signature (or its base64) on stdout. The command runs through `sh -c`, so it may carry
/// arguments: `pkcs11-tool --sign --mechanism EDDSA ...`, `az keyvault key sign ...` wrappers.
///
/// Each signature is checked against the configured public key before it is used, so a signer
/// holding the wrong key fails here and not on a device.
#[derive(Debug)]
pub struct CommandSigner {
    command: String,
    public: PublicKey,
}

impl CommandSigner {
    /// A signer running `command` whose key's public half is `public`.
    pub fn new(command: impl Into<String>, public: PublicKey) -> Self {
        Self { command: command.into(), public }
    }

    fn fail(&self, reason: impl Into<String>) -> SignError {
        SignError::ExternalSigner { command: self.command.clone(), reason: reason.into() }
    }
}

impl Signer for CommandSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, message: &Message<'_>) -> Result<Signature, SignError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| self.fail(format!("cannot start: {e}")))?;
        let mut stdout = child.stdout.take().ok_or_else(|| self.fail("no stdout"))?;
        // Read stdout on a second thread so a signer that answers before reading all of its
        // input cannot deadlock against a full pipe.
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).map(|_| out)
        });
        let mut write_err = None;
        if let Some(mut stdin) = child.stdin.take() {
            message.for_each_chunk(&mut |c| {
                if write_err.is_none()
                    && let Err(e) = stdin.write_all(c)
                {
                    write_err = Some(e);
                }
            });
        }
        let status = child.wait().map_err(|e| self.fail(e.to_string()))?;
        let out = reader
            .join()
            .map_err(|_| self.fail("reading its output failed"))?
            .map_err(|e| self.fail(format!("reading its output: {e}")))?;
        if !status.success() {
            return Err(self.fail(format!("exited with {status}")));
        }
        if let Some(e) = write_err {
            return Err(self.fail(format!("did not read the whole message: {e}")));
        }
        let raw: Vec<u8> = if out.len() == 64 {
            out
        } else {
            let text = String::from_utf8_lossy(&out);
            let text = text.trim();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map_err(|_| {
                    self.fail(format!(
                        "printed {} bytes; expected a raw 64-byte signature or its base64",
                        out.len()
                    ))
                })?
        };
        let raw: [u8; 64] = raw.as_slice().try_into().map_err(|_| {
            self.fail(format!("returned {} bytes; an Ed25519 signature is 64", raw.len()))
        })?;
        let sig = Signature::from_bytes(&raw);
        if !self.public.verify(message, &sig) {
            return Err(self.fail(format!(
                "its signature does not verify with public key {}; is it using another key?",
                self.public.id()
            )));
        }
        Ok(sig)
    }
}

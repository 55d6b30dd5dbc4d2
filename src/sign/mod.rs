//! Ed25519 keys, signers and the signatures built on them.
//!
//! - Keys are PKCS#8 (private, RFC 5958 v1) and SubjectPublicKeyInfo (public, RFC 8410) PEM
//!   files, the forms `openssl genpkey -algorithm ed25519` writes and reads. A key is named by its
//!   [`KeyId`]: the hex SHA-256 of its SubjectPublicKeyInfo DER.
//! - [`Signer`] hides where the private key lives: a PEM file, a PEM in an environment variable,
//!   or an external command (an HSM or KMS front end) that signs what it reads on stdin.
//! - [`jws`] writes and checks detached JWS (RFC 7515 appendix F, `EdDSA` per RFC 8037).
//! - [`meta`] writes and checks signed release metadata (version, security counter, expiry,
//!   artifacts).
//!
//! Verification fails closed: every way a check can fail is a distinct [`SignError`] variant,
//! and nothing downstream runs until a check has passed.

pub mod adu;
pub mod jws;
mod key;
pub mod meta;
mod signer;

pub use key::{KeyId, PrivateKey, PublicKey, TrustedKeys, generate_key_files};
pub use signer::{CommandSigner, KeySigner, Message, Signer};

use std::path::PathBuf;

/// A raw Ed25519 signature (64 bytes).
pub type Signature = ed25519_dalek::Signature;

/// Why signing or verification failed. Each refusal a pipeline must tell apart has its own
/// variant; [`SignError::kind`] gives a stable name for JSON output.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `key generate` refuses to replace a key.
    #[error(
        "{0} already exists; otaforge never overwrites a key (pick another name or move it away)"
    )]
    KeyExists(PathBuf),
    /// A key file or variable does not hold a usable Ed25519 key.
    #[error("{source_name}: {reason}")]
    BadKey {
        /// The file or environment variable the key came from.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The external signer failed or returned something that is not a valid signature.
    #[error("external signer `{command}`: {reason}")]
    ExternalSigner {
        /// The command as configured.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// A signature was required and there is none.
    #[error("signature missing: {what}")]
    SignatureMissing {
        /// What should have been signed, and where the signature was looked for.
        what: String,
    },
    /// The input is signed but no key to check it was given.
    #[error("{what} is signed but no key is configured to verify it (pass a public key)")]
    NoKeyConfigured {
        /// What is signed.
        what: String,
    },
    /// The signature names a key that is not trusted.
    #[error("unknown key id {kid}: not among the trusted keys ({trusted})")]
    UnknownKey {
        /// The key id the signature names.
        kid: String,
        /// The trusted key ids, comma separated.
        trusted: String,
    },
    /// The signature does not match the signed bytes and the key.
    #[error("bad signature: {what} was not signed by key {kid}, or was changed after signing")]
    BadSignature {
        /// What was checked.
        what: String,
        /// The key it was checked against.
        kid: KeyId,
    },
    /// A signature or metadata document is not well formed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The metadata's `expires` is in the past.
    #[error("expired: the metadata expired at {expires} (checked at {now})")]
    Expired {
        /// RFC 3339 expiry.
        expires: String,
        /// RFC 3339 time of the check.
        now: String,
    },
    /// The check time is before the metadata was signed: a clock that is wrong, or metadata from
    /// the future.
    #[error(
        "not yet valid: the metadata was signed at {created}, after the check time {now}; check \
         the clock (or --at)"
    )]
    NotYetValid {
        /// RFC 3339 time of signing.
        created: String,
        /// RFC 3339 time of the check.
        now: String,
    },
    /// `meta sign` was asked for an expiry that is not after the signing time.
    #[error(
        "--expires {expires} is not after the signing time {created}; give a later time or a duration such as 90d"
    )]
    ExpiryNotAfterCreated {
        /// The requested expiry.
        expires: String,
        /// The signing time.
        created: String,
    },
    /// The metadata expires within the warning window.
    #[error("expiring: the metadata expires at {expires}, within {days} days of {now}; re-sign it")]
    ExpiringSoon {
        /// RFC 3339 expiry.
        expires: String,
        /// The warning window.
        days: u64,
        /// RFC 3339 time of the check.
        now: String,
    },
    /// The release version is below the accepted floor.
    #[error("rollback: release version {version} is below the minimum {floor}")]
    VersionRollback {
        /// The metadata's version.
        version: String,
        /// The floor.
        floor: String,
    },
    /// The security counter is below the accepted floor.
    #[error("rollback: security counter {counter} is below the minimum {floor}")]
    CounterRollback {
        /// The metadata's counter.
        counter: u64,
        /// The floor.
        floor: u64,
    },
    /// An artifact listed in the metadata is not present.
    #[error("missing artifact: {name} is listed in the metadata but {path} does not exist")]
    MissingArtifact {
        /// The artifact's name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// An artifact's size or digest differs from the metadata.
    #[error("artifact mismatch: {name}: {reason}")]
    ArtifactMismatch {
        /// The artifact's name.
        name: String,
        /// Expected and found values.
        reason: String,
    },
}

impl SignError {
    /// A stable camelCase name of the failure, for `--format json`.
    pub fn kind(&self) -> &'static str {
        match self {
            SignError::Io(_) => "io",
            SignError::KeyExists(_) => "keyExists",
            SignError::BadKey { .. } => "badKey",
            SignError::ExternalSigner { .. } => "externalSigner",
            SignError::SignatureMissing { .. } => "signatureMissing",
            SignError::NoKeyConfigured { .. } => "noKeyConfigured",
            SignError::UnknownKey { .. } => "unknownKey",
            SignError::BadSignature { .. } => "badSignature",
            SignError::Malformed { .. } => "malformed",
            SignError::Expired { .. } => "expired",
            SignError::ExpiringSoon { .. } => "expiringSoon",
            SignError::NotYetValid { .. } => "notYetValid",
            SignError::ExpiryNotAfterCreated { .. } => "expiryNotAfterCreated",
            SignError::VersionRollback { .. } => "versionRollback",
            SignError::CounterRollback { .. } => "counterRollback",
            SignError::MissingArtifact { .. } => "missingArtifact",
            SignError::ArtifactMismatch { .. } => "artifactMismatch",
        }
    }

    /// True when a check ran and refused its input (exit code 1), false for I/O and setup
    /// problems (exit code 2).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            SignError::Io(_)
                | SignError::KeyExists(_)
                | SignError::BadKey { .. }
                | SignError::ExternalSigner { .. }
                | SignError::ExpiryNotAfterCreated { .. }
        )
    }
}

impl crate::error::ErrorCode for SignError {
    fn code(&self) -> String {
        self.kind().into()
    }

    fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            SignError::Io(e) => Some(e.kind()),
            _ => None,
        }
    }
}

//! Signed release metadata: what a release contains (artifact names, sizes, SHA-256), its
//! version, a monotonic security counter and an expiry, signed by one or more keys.
//!
//! The file is a JWS in the general JSON serialization (RFC 7515 §7.2.1) whose payload is the
//! [`Release`] document, so standard JOSE libraries verify it and no JSON canonicalization is
//! needed: the signed bytes are the payload bytes. `docs/signing.md` specifies it.
//!
//! Verification refuses, each with its own [`SignError`]: a missing or bad signature, an unknown
//! key, expired metadata (or, on request, metadata expiring soon), a version or security
//! counter below a floor (rollback), and a missing or changed artifact.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{KeyId, SignError, Signer, TrustedKeys, jws};
use crate::Sha256;
use crate::manifest::Version;
pub use crate::time::Timestamp;

/// The `type` every release document carries.
pub const RELEASE_TYPE: &str = "otaforge.release/1";

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// File name (no directories), unique within the release.
    pub name: String,
    /// Size in bytes.
    pub size_in_bytes: u64,
    /// SHA-256, base64 (as in ADU import manifests).
    pub sha256: Sha256,
}

/// The signed content of release metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    /// Always [`RELEASE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Release version (2 to 4 numbers, as ADU update versions).
    pub version: Version,
    /// Monotonic counter; devices refuse anything below the highest they have seen.
    pub security_counter: u64,
    /// When it was signed.
    pub created: Timestamp,
    /// From this moment on the metadata is refused.
    pub expires: Timestamp,
    /// The keys that sign it.
    pub key_ids: Vec<String>,
    /// The files.
    pub artifacts: Vec<Artifact>,
}

/// What a verification accepts besides good signatures.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Refuse versions below this one.
    pub min_version: Option<Version>,
    /// Refuse security counters below this one.
    pub min_security_counter: Option<u64>,
    /// Refuse metadata that expires within this many days.
    pub warn_expiring_days: Option<u64>,
    /// How many distinct trusted keys must have signed (at least 1).
    pub threshold: usize,
}

/// Formats a time as RFC 3339 in UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Builds the release document for files on disk, hashing each.
pub fn describe(
    files: &[&Path],
    version: &Version,
    security_counter: u64,
    created: Timestamp,
    expires: Timestamp,
    signers: &[&dyn Signer],
) -> Result<Release, SignError> {
    let mut artifacts: Vec<Artifact> = Vec::with_capacity(files.len());
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SignError::Malformed {
                what: path.display().to_string(),
                reason: "has no UTF-8 file name".into(),
            })?
            .to_owned();
        if artifacts.iter().any(|a| a.name == name) {
            return Err(SignError::Malformed {
                what: path.display().to_string(),
                reason: format!("two artifacts are named {name}; names must be unique"),
            });
        }
        let d = crate::hash::hash_file(path, &crate::NoReporter).map_err(hash_io)?;
        artifacts.push(Artifact { name, size_in_bytes: d.size, sha256: d.sha256 });
    }
    if expires <= created {
        return Err(SignError::ExpiryNotAfterCreated {
            expires: expires.to_string(),
            created: created.to_string(),
        });
    }
    Ok(Release {
        kind: RELEASE_TYPE.into(),
        version: version.clone(),
        security_counter,
        created,
        expires,
        key_ids: signers.iter().map(|s| s.public_key().id().to_string()).collect(),
        artifacts,
    })
}

fn hash_io(e: crate::HashError) -> SignError {
    match e {
        crate::HashError::Read { path, source } => {
            SignError::Io(crate::fsutil::annotate(source, &path))
        }
        other => SignError::Io(std::io::Error::other(other.to_string())),
    }
}

/// Signs a release document with every signer; returns the metadata file's text.
pub fn sign(release: &Release, signers: &[&dyn Signer]) -> Result<String, SignError> {
    let payload = serde_json::to_vec_pretty(release)
        .map_err(|e| SignError::Malformed { what: "release".into(), reason: e.to_string() })?;
    let doc = jws::sign_json(&payload, signers)?;
    let mut text = serde_json::to_string_pretty(&doc)
        .map_err(|e| SignError::Malformed { what: "release".into(), reason: e.to_string() })?;
    text.push('\n');
    Ok(text)
}

/// Checks signatures, expiry and rollback floors at time `now`; returns the release and the keys
/// that signed it. Artifacts are checked separately by [`verify_artifacts`].
pub fn verify(
    text: &str,
    keys: &TrustedKeys,
    policy: &Policy,
    now: SystemTime,
) -> Result<(Release, Vec<KeyId>), SignError> {
    let what = "release metadata";
    let doc: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| SignError::Malformed { what: what.into(), reason: e.to_string() })?;
    let repeated = |bytes: &[u8]| {
        crate::finding::duplicate_keys(bytes).iter().next().map(|d| SignError::Malformed {
            what: what.into(),
            reason: format!("{}: {}", d.path, d.message),
        })
    };
    if let Some(e) = repeated(text.as_bytes()) {
        return Err(e);
    }
    if keys.is_empty() {
        return Err(SignError::NoKeyConfigured { what: what.into() });
    }
    let (payload, signed_by) = jws::verify_json(&doc, keys, policy.threshold, what)?;
    if let Some(e) = repeated(&payload) {
        return Err(e);
    }
    let release: Release = serde_json::from_slice(&payload).map_err(|e| SignError::Malformed {
        what: what.into(),
        reason: format!("signed payload: {e}"),
    })?;
    if release.kind != RELEASE_TYPE {
        return Err(SignError::Malformed {
            what: what.into(),
            reason: format!("type is `{}`, expected `{RELEASE_TYPE}`", release.kind),
        });
    }
    if now < release.created.system_time() {
        return Err(SignError::NotYetValid {
            created: release.created.to_string(),
            now: rfc3339(now),
        });
    }
    let expires = release.expires.system_time();
    if now >= expires {
        return Err(SignError::Expired { expires: release.expires.to_string(), now: rfc3339(now) });
    }
    if let Some(days) = policy.warn_expiring_days
        && now
            .checked_add(Duration::from_secs(days.saturating_mul(86_400)))
            .is_none_or(|soon| soon >= expires)
    {
        return Err(SignError::ExpiringSoon {
            expires: release.expires.to_string(),
            days,
            now: rfc3339(now),
        });
    }
    if let Some(floor) = &policy.min_version
        && release.version < *floor
    {
        return Err(SignError::VersionRollback {
            version: release.version.to_string(),
            floor: floor.to_string(),
        });
    }
    if let Some(floor) = policy.min_security_counter
        && release.security_counter < floor
    {
        return Err(SignError::CounterRollback { counter: release.security_counter, floor });
    }
    Ok((release, signed_by))
}

/// Checks that every artifact exists in `dir` with the listed size and SHA-256.
pub fn verify_artifacts(release: &Release, dir: &Path) -> Result<(), SignError> {
    for a in &release.artifacts {
        // Names come from signed metadata, but a name with a separator could still point
        // outside `dir`; such metadata is refused rather than followed.
        if a.name.contains(['/', '\\']) || a.name == ".." || a.name == "." || a.name.is_empty() {
            return Err(SignError::Malformed {
                what: "release metadata".into(),
                reason: format!("artifact name `{}` is not a plain file name", a.name),
            });
        }
        let path = dir.join(&a.name);
        if !path.is_file() {
            return Err(SignError::MissingArtifact { name: a.name.clone(), path });
        }
        let d = crate::hash::hash_file(&path, &crate::NoReporter).map_err(hash_io)?;
        if d.size != a.size_in_bytes {
            return Err(SignError::ArtifactMismatch {
                name: a.name.clone(),
                reason: format!("size is {} bytes, the metadata says {}", d.size, a.size_in_bytes),
            });
        }
        if d.sha256 != a.sha256 {
            return Err(SignError::ArtifactMismatch {
                name: a.name.clone(),
                reason: format!("sha256 is {}, the metadata says {}", d.sha256, a.sha256),
            });
        }
    }
    Ok(())
}

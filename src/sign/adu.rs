//! The update manifest signature ADU writes into a device's twin and its agent verifies
//! (adu.md §5.3): `updateManifestSignature` is a compact JWS, `RS256`, whose payload is
//! `{"sha256": base64(SHA-256 of the exact updateManifest string)}` and whose protected header
//! carries `sjwk`: itself a compact JWS, signed by a root key (`kid`), whose payload is the
//! RSA signing key as a JWK. A device trusts root keys only; the signing key it learns from
//! `sjwk` and believes because a root key signed it.
//!
//! serve keeps one root key and one signing key per data dir (PKCS#8, mode 0600) and hands
//! devices the root key's public JWK.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine as _;
use serde_json::{Value, json};

use super::SignError;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn malformed(reason: impl Into<String>) -> SignError {
    SignError::Malformed { what: "update manifest signature".into(), reason: reason.into() }
}

/// An RSA key that signs (a root key or a signing key), with its key id.
pub struct RsaKey {
    pair: KeyPair,
    /// Its key id (`kid`).
    pub kid: String,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKey({})", self.kid)
    }
}

impl RsaKey {
    /// A new 2048-bit key with id `kid`.
    pub fn generate(kid: &str) -> Result<Self, SignError> {
        let pair = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| SignError::Io(std::io::Error::other("RSA key generation failed")))?;
        Ok(Self { pair, kid: kid.to_owned() })
    }

    /// Reads a key from its PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8], kid: &str) -> Result<Self, SignError> {
        let pair = KeyPair::from_pkcs8(der).map_err(|e| SignError::BadKey {
            source_name: kid.to_owned(),
            reason: format!("not an RSA PKCS#8 key ({e})"),
        })?;
        Ok(Self { pair, kid: kid.to_owned() })
    }

    /// The key as PKCS#8 DER (a secret: for a 0600 file only).
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, SignError> {
        let der = self
            .pair
            .as_der()
            .map_err(|_| SignError::Io(std::io::Error::other("cannot encode the RSA key")))?;
        Ok(der.as_ref().to_vec())
    }

    /// The public key as a JWK (`kty`, `n`, `e`, `alg`, `kid`).
    pub fn public_jwk(&self) -> Value {
        let (n, e) = rsa_public_key_parts(self.pair.public_key().as_ref()).unwrap_or_default();
        json!({
            "kty": "RSA",
            "n": B64URL.encode(n),
            "e": B64URL.encode(e),
            "alg": "RS256",
            "kid": self.kid,
        })
    }

    /// A compact JWS of `payload` with the protected `header`.
    fn jws(&self, header: &Value, payload: &[u8]) -> Result<String, SignError> {
        let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(payload));
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
            .map_err(|_| SignError::Io(std::io::Error::other("RSA signing failed")))?;
        Ok(format!("{input}.{}", B64URL.encode(sig)))
    }
}

/// `n` and `e` of a DER `RSAPublicKey` (RFC 8017: SEQUENCE { INTEGER n, INTEGER e }), without
/// leading zero bytes.
fn rsa_public_key_parts(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    // One DER element: tag, length (short or long form), contents; returns contents and rest.
    fn element(tag: u8, b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = b.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    let strip = |x: &[u8]| {
        let start = x.iter().position(|&b| b != 0).unwrap_or(x.len());
        x[start..].to_vec()
    };
    let (seq, _) = element(0x30, der)?;
    let (n, rest) = element(0x02, seq)?;
    let (e, _) = element(0x02, rest)?;
    Some((strip(n), strip(e)))
}

/// `sjwk`: the signing key's public JWK, signed by the root key.
pub fn signing_key_jws(root: &RsaKey, signing: &RsaKey) -> Result<String, SignError> {
    root.jws(&json!({"alg": "RS256", "kid": root.kid}), signing.public_jwk().to_string().as_bytes())
}

/// `updateManifestSignature` for the exact `manifest` string.
pub fn sign_update_manifest(
    manifest: &str,
    signing: &RsaKey,
    sjwk: &str,
) -> Result<String, SignError> {
    let digest = crate::Sha256::digest(manifest.as_bytes());
    let payload = json!({"sha256": B64.encode(digest.as_bytes())});
    signing.jws(&json!({"alg": "RS256", "sjwk": sjwk}), payload.to_string().as_bytes())
}

/// The protected header of ADU's JWS: the algorithm, the signing key's JWS (`sjwk`, on the
/// manifest signature) and the key id (on `sjwk` itself).
#[derive(Debug, serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    sjwk: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// The parts of an RSA JWK a verifier reads.
#[derive(Debug, serde::Deserialize)]
struct RsaJwk {
    #[serde(default)]
    kid: Option<String>,
    n: String,
    e: String,
}

/// The claim of the manifest signature: the manifest's SHA-256, base64.
#[derive(Debug, serde::Deserialize)]
struct Claim {
    sha256: String,
}

/// A compact JWS split and decoded: (header, payload, signed input, signature).
fn split(jws: &str) -> Result<(Header, Vec<u8>, String, Vec<u8>), SignError> {
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let header: Header = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("the header is not base64url JSON with an alg"))?;
    if header.alg != "RS256" {
        return Err(malformed(format!("alg is {:?}, not RS256", header.alg)));
    }
    let payload = B64URL.decode(p).map_err(|_| malformed("the payload is not base64url"))?;
    let sig = B64URL.decode(s).map_err(|_| malformed("the signature is not base64url"))?;
    Ok((header, payload, format!("{h}.{p}"), sig))
}

fn verify_with(jwk: &RsaJwk, input: &str, sig: &[u8]) -> bool {
    let (Ok(n), Ok(e)) = (B64URL.decode(&jwk.n), B64URL.decode(&jwk.e)) else {
        return false;
    };
    PublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), sig)
        .is_ok()
}

/// What an agent checks: the root key (one of `roots`, by `kid`) signed the signing key in
/// `sjwk`, the signing key signed the JWS, and the JWS's `sha256` is the manifest's.
pub fn verify_update_manifest(manifest: &str, jws: &str, roots: &[Value]) -> Result<(), SignError> {
    let (header, payload, input, sig) = split(jws)?;
    let sjwk = header.sjwk.ok_or_else(|| malformed("no sjwk in the header"))?;
    let (sj_header, sj_payload, sj_input, sj_sig) = split(&sjwk)?;
    let kid = sj_header.kid.unwrap_or_default();
    // Roots that are not RSA JWKs cannot have signed anything here.
    let roots: Vec<RsaJwk> =
        roots.iter().filter_map(|r| serde_json::from_value(r.clone()).ok()).collect();
    let root = roots.iter().find(|r| r.kid.as_deref() == Some(kid.as_str())).ok_or_else(|| {
        SignError::UnknownKey {
            kid: kid.clone(),
            trusted: roots.iter().filter_map(|r| r.kid.as_deref()).collect::<Vec<_>>().join(", "),
        }
    })?;
    let bad = |what: &str| SignError::Malformed {
        what: "update manifest signature".into(),
        reason: format!("bad signature: {what}"),
    };
    if !verify_with(root, &sj_input, &sj_sig) {
        return Err(bad("the signing key (sjwk) was not signed by the root key"));
    }
    let signing: RsaJwk = serde_json::from_slice(&sj_payload)
        .map_err(|_| malformed("sjwk's payload is not an RSA JWK"))?;
    if !verify_with(&signing, &input, &sig) {
        return Err(bad("the update manifest signature"));
    }
    let claimed: Claim = serde_json::from_slice(&payload)
        .map_err(|_| malformed("the payload is not JSON with a sha256"))?;
    let digest = B64.encode(crate::Sha256::digest(manifest.as_bytes()).as_bytes());
    if claimed.sha256 != digest {
        return Err(bad("the update manifest (its sha256 differs from the signed one)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_signed_under_a_root_verifies_and_every_tamper_is_refused() {
        let root = RsaKey::generate("root.1").unwrap();
        let signing = RsaKey::generate("signing.1").unwrap();
        let sjwk = signing_key_jws(&root, &signing).unwrap();
        let manifest = r#"{"manifestVersion":"4"}"#;
        let sig = sign_update_manifest(manifest, &signing, &sjwk).unwrap();
        let roots = [root.public_jwk()];
        verify_update_manifest(manifest, &sig, &roots).unwrap();
        // Another manifest, another root, a signing key the root did not sign.
        assert!(verify_update_manifest(r#"{"manifestVersion":"5"}"#, &sig, &roots).is_err());
        let other = RsaKey::generate("root.1").unwrap();
        assert!(verify_update_manifest(manifest, &sig, &[other.public_jwk()]).is_err());
        let rogue = RsaKey::generate("signing.1").unwrap();
        let forged = sign_update_manifest(manifest, &rogue, &sjwk).unwrap();
        assert!(verify_update_manifest(manifest, &forged, &roots).is_err());
        assert!(matches!(
            verify_update_manifest(
                manifest,
                &sig,
                &[RsaKey::generate("other").unwrap().public_jwk()]
            ),
            Err(SignError::UnknownKey { .. })
        ));
        // Round trip through PKCS#8.
        let again = RsaKey::from_pkcs8(&root.to_pkcs8().unwrap(), "root.1").unwrap();
        assert_eq!(again.public_jwk(), root.public_jwk());
    }
}

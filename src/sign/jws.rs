//! JSON Web Signatures with Ed25519: compact form with a detached payload (RFC 7515 §7.1 and
//! appendix F) for files, and the general JSON serialization (RFC 7515 §7.2.1) for documents
//! that several keys sign. `alg` is `EdDSA` (RFC 8037 §3.1) and every protected header names its
//! key with `kid` (the hex [`KeyId`](super::KeyId)).
//!
//! The checks fail closed: a header must say `EdDSA`, carry a `kid`, and list no `crit`
//! extension (none is understood here), or the signature is refused as malformed.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{KeyId, Message, PublicKey, SignError, Signature, Signer, TrustedKeys};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The protected header otaforge writes.
fn protected_header(kid: KeyId) -> String {
    B64.encode(format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#))
}

/// Signs `payload` and returns the compact JWS with the payload left out:
/// `BASE64URL(header)..BASE64URL(signature)`.
pub fn sign_detached(payload: &[u8], signer: &dyn Signer) -> Result<String, SignError> {
    let header = protected_header(signer.public_key().id());
    let mut msg = Message::raw(header.as_bytes());
    msg.push_raw(b".").push_base64url(payload);
    let sig = signer.sign(&msg)?;
    Ok(format!("{header}..{}", B64.encode(sig.to_bytes())))
}

/// Checks a compact detached JWS over `payload` against the trusted keys and returns the key
/// that signed. `what` names the payload in errors.
pub fn verify_detached(
    jws: &str,
    payload: &[u8],
    keys: &TrustedKeys,
    what: &str,
) -> Result<KeyId, SignError> {
    let malformed = |reason: &str| SignError::Malformed {
        what: format!("signature of {what}"),
        reason: reason.to_owned(),
    };
    let jws = jws.trim();
    let mut parts = jws.split('.');
    let (Some(header), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a compact JWS has three dot-separated parts"));
    };
    if !body.is_empty() {
        return Err(malformed(
            "the payload is embedded; otaforge signatures are detached (header..signature)",
        ));
    }
    let key = check_header(header, keys, &malformed)?;
    let sig = decode_signature(sig, &malformed)?;
    let mut msg = Message::raw(header.as_bytes());
    msg.push_raw(b".").push_base64url(payload);
    if !key.verify(&msg, &sig) {
        return Err(SignError::BadSignature { what: what.to_owned(), kid: key.id() });
    }
    Ok(key.id())
}

/// Signs `payload` with every signer and returns the general JWS JSON serialization.
pub fn sign_json(payload: &[u8], signers: &[&dyn Signer]) -> Result<Value, SignError> {
    let encoded_payload = B64.encode(payload);
    let mut signatures = Vec::with_capacity(signers.len());
    for s in signers {
        let header = protected_header(s.public_key().id());
        let mut msg = Message::raw(header.as_bytes());
        msg.push_raw(b".").push_raw(encoded_payload.as_bytes());
        let sig = s.sign(&msg)?;
        signatures.push(serde_json::json!({
            "protected": header,
            "signature": B64.encode(sig.to_bytes()),
        }));
    }
    Ok(serde_json::json!({ "payload": encoded_payload, "signatures": signatures }))
}

/// Checks a general JWS JSON document: at least `threshold` signatures by distinct trusted
/// keys must verify. Returns the payload and the keys that signed.
///
/// Signatures by keys that are not trusted are skipped (another party may co-sign); a signature
/// by a trusted key that does not verify refuses the whole document, because it means the
/// document or that signature was changed.
pub fn verify_json(
    doc: &Value,
    keys: &TrustedKeys,
    threshold: usize,
    what: &str,
) -> Result<(Vec<u8>, Vec<KeyId>), SignError> {
    let malformed =
        |reason: &str| SignError::Malformed { what: what.to_owned(), reason: reason.to_owned() };
    let obj = doc.as_object().ok_or_else(|| malformed("not a JSON object"))?;
    let payload_b64 = obj
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("`payload` is missing or not a string"))?;
    let payload =
        B64.decode(payload_b64).map_err(|_| malformed("`payload` is not unpadded base64url"))?;
    let sigs = match obj.get("signatures") {
        None => return Err(SignError::SignatureMissing { what: what.to_owned() }),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(SignError::SignatureMissing { what: what.to_owned() });
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(malformed("`signatures` is not an array")),
    };
    let mut good: Vec<KeyId> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for (i, s) in sigs.iter().enumerate() {
        let sig_malformed = |reason: &str| SignError::Malformed {
            what: what.to_owned(),
            reason: format!("signatures[{i}]: {reason}"),
        };
        let entry = s.as_object().ok_or_else(|| sig_malformed("not an object"))?;
        if entry.contains_key("header") {
            return Err(sig_malformed(
                "has an unprotected `header`; every header parameter must be protected",
            ));
        }
        let header = entry
            .get("protected")
            .and_then(Value::as_str)
            .ok_or_else(|| sig_malformed("`protected` is missing"))?;
        let key = match check_header(header, keys, &sig_malformed) {
            Ok(k) => k,
            Err(SignError::UnknownKey { kid, .. }) => {
                unknown.push(kid);
                continue;
            }
            Err(e) => return Err(e),
        };
        let sig = entry
            .get("signature")
            .and_then(Value::as_str)
            .ok_or_else(|| sig_malformed("`signature` is missing"))?;
        let sig = decode_signature(sig, &sig_malformed)?;
        let mut msg = Message::raw(header.as_bytes());
        msg.push_raw(b".").push_raw(payload_b64.as_bytes());
        if !key.verify(&msg, &sig) {
            return Err(SignError::BadSignature { what: what.to_owned(), kid: key.id() });
        }
        if !good.contains(&key.id()) {
            good.push(key.id());
        }
    }
    if good.len() < threshold.max(1) {
        if good.is_empty() && !unknown.is_empty() {
            return Err(SignError::UnknownKey { kid: unknown.join(", "), trusted: keys.ids() });
        }
        return Err(SignError::SignatureMissing {
            what: format!(
                "{what} needs {} signatures by distinct trusted keys, it has {}",
                threshold.max(1),
                good.len()
            ),
        });
    }
    Ok((payload, good))
}

/// Decodes and checks a protected header, returning the trusted key it names.
fn check_header<'k>(
    header_b64: &str,
    keys: &'k TrustedKeys,
    malformed: &dyn Fn(&str) -> SignError,
) -> Result<&'k PublicKey, SignError> {
    let bytes = B64.decode(header_b64).map_err(|_| malformed("the header is not base64url"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| malformed("the header is not a JSON object"))?;
    if let Some(d) = crate::finding::duplicate_keys(&bytes).iter().next() {
        return Err(malformed(&format!("the header repeats a key ({}: {})", d.path, d.message)));
    }
    match header.get("alg").and_then(Value::as_str) {
        Some("EdDSA") => {}
        Some(other) => return Err(malformed(&format!("alg is {other}; only EdDSA is accepted"))),
        None => return Err(malformed("the header has no alg")),
    }
    if header.contains_key("crit") {
        return Err(malformed("the header lists `crit` extensions, which are not understood"));
    }
    if header.get("b64").is_some_and(|v| v != &Value::Bool(true)) {
        return Err(malformed("unencoded payloads (b64: false) are not accepted"));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("the header has no kid naming the key"))?;
    keys.require(kid)
}

fn decode_signature(
    sig_b64: &str,
    malformed: &dyn Fn(&str) -> SignError,
) -> Result<Signature, SignError> {
    let raw = B64.decode(sig_b64).map_err(|_| malformed("the signature is not base64url"))?;
    let raw: [u8; 64] = raw
        .as_slice()
        .try_into()
        .map_err(|_| malformed(&format!("the signature is {} bytes, not 64", raw.len())))?;
    Ok(Signature::from_bytes(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{KeySigner, PrivateKey};

    fn signer(seed: u8) -> KeySigner {
        KeySigner::new(PrivateKey::from_seed(&[seed; 32]))
    }

    fn trust(s: &KeySigner) -> TrustedKeys {
        let mut t = TrustedKeys::new();
        t.add(s.public_key().clone());
        t
    }

    #[test]
    fn detached_round_trip_and_refusals() {
        let s = signer(1);
        let payload = vec![7u8; 100_003];
        let jws = sign_detached(&payload, &s).unwrap();
        assert_eq!(verify_detached(&jws, &payload, &trust(&s), "f").unwrap(), s.public_key().id());
        let mut other = payload.clone();
        other[50_000] ^= 1;
        assert!(matches!(
            verify_detached(&jws, &other, &trust(&s), "f"),
            Err(SignError::BadSignature { .. })
        ));
        assert!(matches!(
            verify_detached(&jws, &payload, &trust(&signer(2)), "f"),
            Err(SignError::UnknownKey { .. })
        ));
    }

    #[test]
    fn streamed_message_matches_one_shot_signing() {
        // The chunked base64url encoder must produce exactly the JWS signing input.
        use ed25519_dalek::Signer as _;
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let jws = sign_detached(&payload, &signer(3)).unwrap();
        let header = jws.split('.').next().unwrap();
        let input = format!("{header}.{}", B64.encode(&payload));
        let expected = key.sign(input.as_bytes());
        assert_eq!(jws.rsplit('.').next().unwrap(), B64.encode(expected.to_bytes()));
    }
}

//! IoT Hub shared access signatures: `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`.
//!
//! The string signed is the URL-encoded resource URI (lower case), a newline, and the expiry in
//! Unix seconds; the signature is HMAC-SHA256 with the base64-decoded key, base64-encoded and then
//! URL-encoded in the token (<https://learn.microsoft.com/azure/iot-hub/authenticate-authorize-sas>).
//! Keys never reach `Debug`, `Display` or an error message.

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};

use super::IotHubError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A symmetric key (the base64 text of a shared access policy or device key).
#[derive(Clone, PartialEq, Eq)]
pub struct SasKey(Vec<u8>);

impl std::fmt::Debug for SasKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SasKey(redacted)")
    }
}

impl SasKey {
    /// Decodes a base64 key.
    pub fn from_base64(s: &str) -> Result<Self, IotHubError> {
        let key = B64
            .decode(s.trim())
            .map_err(|_| IotHubError::Config("the shared access key is not base64".into()))?;
        if key.is_empty() {
            return Err(IotHubError::Config("the shared access key is empty".into()));
        }
        Ok(Self(key))
    }

    /// A new random 32-byte key.
    pub fn generate() -> Result<Self, IotHubError> {
        let mut k = vec![0u8; 32];
        getrandom::fill(&mut k).map_err(|e| IotHubError::Config(format!("random key: {e}")))?;
        Ok(Self(k))
    }

    /// The key as base64, for a connection string file (never for printing).
    pub fn to_base64(&self) -> String {
        B64.encode(&self.0)
    }

    fn sign(&self, text: &str) -> String {
        // HMAC takes keys of any length; an empty signature would never verify anyway.
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(text.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }
}

/// The URL-encoded, lower-cased resource URI a token is scoped to (`host` or `host/devices/id`).
pub fn resource(uri: &str) -> String {
    url::form_urlencoded::byte_serialize(uri.to_lowercase().as_bytes()).collect()
}

/// A token for `resource_uri` valid until `expiry` (Unix seconds); `key_name` is the shared
/// access policy (`skn`), absent for a device key.
pub fn token(resource_uri: &str, key: &SasKey, key_name: Option<&str>, expiry: u64) -> String {
    let sr = resource(resource_uri);
    let sig = key.sign(&format!("{sr}\n{expiry}"));
    let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
    let mut t = format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}");
    if let Some(n) = key_name {
        t.push_str("&skn=");
        t.extend(url::form_urlencoded::byte_serialize(n.as_bytes()));
    }
    t
}

/// What a token claims, read before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The resource URI, decoded and lower case.
    pub resource: String,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// The policy name, when given.
    pub key_name: Option<String>,
    sr: String,
    sig: String,
}

impl Claims {
    /// Reads a `SharedAccessSignature …` header value.
    pub fn parse(header: &str) -> Result<Self, IotHubError> {
        let bad = |why: &str| IotHubError::Unauthorized(format!("malformed SAS token: {why}"));
        let rest = header
            .strip_prefix("SharedAccessSignature ")
            .ok_or_else(|| bad("it must start with `SharedAccessSignature `"))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(rest.as_bytes()) {
            match k.as_ref() {
                "sr" => sr = Some(v.into_owned()),
                "sig" => sig = Some(v.into_owned()),
                "se" => se = Some(v.into_owned()),
                "skn" => skn = Some(v.into_owned()),
                _ => {}
            }
        }
        let sr = sr.ok_or_else(|| bad("no sr"))?;
        let expiry = se.and_then(|s| s.parse().ok()).ok_or_else(|| bad("no numeric se"))?;
        Ok(Self {
            resource: sr.to_lowercase(),
            expiry,
            key_name: skn,
            sr: resource(&sr),
            sig: sig.ok_or_else(|| bad("no sig"))?,
        })
    }

    /// Checks the signature with `key` and the expiry against `now` (Unix seconds): not past,
    /// and not further than [`super::limits::MAX_SAS_LIFETIME_SECS`] ahead.
    pub fn verify(&self, key: &SasKey, now: u64) -> Result<(), IotHubError> {
        let want = key.sign(&format!("{}\n{}", self.sr, self.expiry));
        if !crate::storage::sas::constant_time_eq(want.as_bytes(), self.sig.as_bytes()) {
            return Err(IotHubError::Unauthorized("the SAS token's signature is not valid".into()));
        }
        if now >= self.expiry {
            return Err(IotHubError::Unauthorized("the SAS token has expired".into()));
        }
        let most = super::limits::MAX_SAS_LIFETIME_SECS;
        if self.expiry - now > most {
            return Err(IotHubError::Unauthorized(format!(
                "the SAS token expires more than {} years from now; sign tokens that expire \
                 within that (the SDKs renew theirs every hour)",
                most / (365 * 86_400)
            )));
        }
        Ok(())
    }

    /// Whether the token's resource covers `uri` (a hub-wide token covers every device).
    pub fn covers(&self, uri: &str) -> bool {
        let uri = uri.to_lowercase();
        uri == self.resource || uri.starts_with(&format!("{}/", self.resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_its_key_only_and_until_it_expires() {
        let key = SasKey::from_base64("c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg=").unwrap();
        let other = SasKey::generate().unwrap();
        let t = token("Hub.azure-devices.net/devices/Dev-1", &key, None, 2_000_000_000);
        assert!(
            t.starts_with("SharedAccessSignature sr=hub.azure-devices.net%2Fdevices%2Fdev-1&sig=")
        );
        let c = Claims::parse(&t).unwrap();
        assert_eq!(c.resource, "hub.azure-devices.net/devices/dev-1");
        assert!(c.verify(&key, 1_999_999_999).is_ok());
        assert!(c.verify(&key, 2_000_000_000).is_err());
        assert!(c.verify(&other, 1).is_err());
        // A token that never expires (se near 2^64) is refused, signature and all.
        let forever = Claims::parse(&token("hub/devices/d", &key, None, u64::MAX - 1)).unwrap();
        let e = forever.verify(&key, 1_999_999_999).unwrap_err();
        assert!(e.to_string().contains("more than 10 years"), "{e}");
        assert!(c.covers("hub.azure-devices.net/devices/dev-1"));
        assert!(!c.covers("hub.azure-devices.net/devices/dev-10"));
        let hub =
            Claims::parse(&token("hub.azure-devices.net", &key, Some("iothubowner"), 9)).unwrap();
        assert_eq!(hub.key_name.as_deref(), Some("iothubowner"));
        assert!(hub.covers("hub.azure-devices.net/devices/anything"));
        assert!(!format!("{key:?}").contains("c2Vj"));
    }
}

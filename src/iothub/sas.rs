//! IoT Hub shared access signatures: `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`.
//!
//! The string signed is the URL-encoded resource URI, a newline, and the expiry in Unix seconds;
//! the signature is HMAC-SHA256 with the base64-decoded key, base64-encoded and then URL-encoded
//! in the token (<https://learn.microsoft.com/azure/iot-hub/authenticate-authorize-sas>). The
//! docs ask for the lower-cased URI, but the official SDKs sign the `sr` text as they send it
//! (Python's keeps the case of the hub and device names and escapes `*`, `:`, `$`, `+`), and the
//! hub accepts that: a token is checked against its own `sr` text, and its resource compared
//! decoded and ignoring case.
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

/// A token field percent-decoded (`+` as a space, as form encoding writes it).
fn decoded(v: &str) -> String {
    url::form_urlencoded::parse(format!("v={v}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// What a token claims, read before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The resource URI, percent-decoded and lower case.
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
        // Fields as sent (`sr` is signed as it is written), in any order.
        for part in rest.split('&') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "sr" => sr = Some(v),
                "sig" => sig = Some(decoded(v)),
                "se" => se = Some(v),
                "skn" => skn = Some(decoded(v)),
                _ => {}
            }
        }
        let sr = sr.ok_or_else(|| bad("no sr"))?;
        let expiry = se.and_then(|s| s.parse().ok()).ok_or_else(|| bad("no numeric se"))?;
        Ok(Self {
            resource: decoded(sr).to_lowercase(),
            expiry,
            key_name: skn,
            sr: sr.to_owned(),
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

    /// The Python device SDK signs `sr` as it sends it: case kept, `*`, `:`, `$` escaped
    /// (`urllib.parse.quote(uri, safe="")`).
    #[test]
    fn a_token_signed_over_the_sr_as_sent_verifies() {
        let key = SasKey::generate().unwrap();
        let sr = "Hub.Local%3A8883%2Fdevices%2FDev%2A1%2Fmodules%2F%24edgeAgent";
        let sig = key.sign(&format!("{sr}\n2000000000"));
        let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
        let t = format!("SharedAccessSignature sr={sr}&sig={sig}&se=2000000000");
        let c = Claims::parse(&t).unwrap();
        assert_eq!(c.resource, "hub.local:8883/devices/dev*1/modules/$edgeagent");
        assert!(c.verify(&key, 1_999_999_000).is_ok());
        // The same resource written otherwise is another signed text.
        let lower = t.replace("Hub.Local", "hub.local");
        let e = Claims::parse(&lower).unwrap().verify(&key, 1_999_999_000).unwrap_err();
        assert!(e.to_string().contains("signature is not valid"), "{e}");
    }
}

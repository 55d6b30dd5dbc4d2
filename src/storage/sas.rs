//! Shared access signatures for Azure Blob Storage, signed locally.
//!
//! - **Service SAS** for one blob or container, signed with the account key: the 16-field
//!   string-to-sign of service version 2020-12-06 and later
//!   (<https://learn.microsoft.com/rest/api/storageservices/create-service-sas>).
//! - **User delegation SAS**, signed with a user delegation key that an Entra ID identity
//!   obtained from the service (24 fields for versions 2020-12-06 up to 2025-07-05;
//!   <https://learn.microsoft.com/rest/api/storageservices/create-user-delegation-sas>).
//! - **Account SAS** (10 fields plus a trailing newline), which otaforge uses only to authorize
//!   its own upload requests when it holds an account key: the official Rust SDK has no
//!   shared-key authentication, so each upload gets a short-lived account SAS instead.
//!
//! Every value is signed exactly as it appears (URL-decoded) in the query. The signature is
//! `base64(HMAC-SHA256(base64decode(key), string_to_sign))`.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};

/// The service version otaforge signs (16-field layout; Azurite and Azure accept it).
pub const SAS_VERSION: &str = "2022-11-02";

/// How far back `st` is set, so a client whose clock runs ahead of Azure's still gets a URL that
/// is valid at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A storage account key (base64 of 64 bytes). Never printed: `Debug` and `Display` hide it.
#[derive(Clone)]
pub struct AccountKey(Vec<u8>);

impl AccountKey {
    /// Decodes a base64 account key.
    pub fn from_base64(s: &str) -> Result<Self, super::StorageError> {
        let bad = |why: &str| super::StorageError::Config(format!("the account key is {why}"));
        let key = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| bad("not base64"))?;
        if key.is_empty() {
            return Err(bad("empty"));
        }
        Ok(Self(key))
    }

    /// The same key in base64, for redaction.
    pub(crate) fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    fn sign(&self, string_to_sign: &str) -> String {
        hmac_b64(&self.0, string_to_sign)
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(redacted)")
    }
}

fn hmac_b64(key: &[u8], msg: &str) -> String {
    // HMAC accepts keys of any length, so construction cannot fail.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Formats a time the way SAS fields carry it: `2026-11-23T09:39:53Z`.
pub fn sas_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whether a SAS may be used over plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `spr=https`: production endpoints.
    HttpsOnly,
    /// `spr=https,http`: loopback endpoints (Azurite) only.
    HttpsAndHttp,
}

impl Protocol {
    /// HTTPS only, unless the endpoint is loopback.
    pub fn for_endpoint(url: &url::Url) -> Self {
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if loopback { Protocol::HttpsAndHttp } else { Protocol::HttpsOnly }
    }

    fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpsOnly => "https",
            Protocol::HttpsAndHttp => "https,http",
        }
    }
}

/// The fields of a service SAS.
#[derive(Debug, Clone)]
pub struct ServiceSas {
    /// `sp`: permission letters in the canonical order `racwdxltmeop`.
    pub permissions: String,
    /// `st`: start (usually now minus [`CLOCK_SKEW`]).
    pub start: Option<SystemTime>,
    /// `se`: expiry.
    pub expiry: SystemTime,
    /// `spr`.
    pub protocol: Protocol,
    /// `sr`: `b` for a blob, `c` for a container.
    pub resource: &'static str,
}

impl ServiceSas {
    /// A read-only blob SAS valid from [`CLOCK_SKEW`] ago for `ttl` (at most
    /// [`super::MAX_URL_TTL`]).
    pub fn read_blob(now: SystemTime, ttl: Duration, protocol: Protocol) -> Self {
        Self {
            permissions: "r".into(),
            start: Some(now - CLOCK_SKEW),
            expiry: now + ttl.min(super::MAX_URL_TTL),
            protocol,
            resource: "b",
        }
    }

    /// The 16-line string-to-sign for `canonical_resource` (`/blob/ACCOUNT/CONTAINER[/BLOB]`).
    pub fn string_to_sign(&self, canonical_resource: &str) -> String {
        let mut lines = self.head(canonical_resource);
        lines.push(String::new()); // si: no stored access policy
        self.finish(lines)
    }

    /// `sp`, `st`, `se` and the resource: how both layouts start.
    fn head(&self, canonical_resource: &str) -> Vec<String> {
        let st = self.start.map(sas_time).unwrap_or_default();
        vec![self.permissions.clone(), st, sas_time(self.expiry), canonical_resource.to_owned()]
    }

    /// Appends what both layouts end with (`sip` to `rsct`) and joins the lines.
    fn finish(&self, mut lines: Vec<String>) -> String {
        lines.extend(
            [
                "", // sip
                self.protocol.as_str(),
                SAS_VERSION,
                self.resource,
                "", // snapshot time
                "", // ses: encryption scope
                "", // rscc
                "", // rscd
                "", // rsce
                "", // rscl
                "", // rsct
            ]
            .map(str::to_owned),
        );
        lines.join("\n")
    }

    /// Signs with the account key and returns the query string (without `?`).
    pub fn sign(&self, key: &AccountKey, canonical_resource: &str) -> String {
        let sig = key.sign(&self.string_to_sign(canonical_resource));
        self.query(&sig)
    }

    fn query(&self, sig: &str) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("sv", SAS_VERSION);
        if let Some(st) = self.start {
            q.append_pair("st", &sas_time(st));
        }
        q.append_pair("se", &sas_time(self.expiry));
        q.append_pair("sr", self.resource);
        q.append_pair("sp", &self.permissions);
        q.append_pair("spr", self.protocol.as_str());
        q.append_pair("sig", sig);
        q.finish()
    }
}

/// The canonicalized resource of a blob: `/blob/ACCOUNT/CONTAINER/BLOB`.
pub fn blob_resource(account: &str, container: &str, blob: &str) -> String {
    format!("/blob/{account}/{container}/{blob}")
}

/// An account SAS for the blob service, signed with the account key; returns the query string.
pub fn account_sas(
    account: &str,
    key: &AccountKey,
    permissions: &str,
    resource_types: &str,
    start: SystemTime,
    expiry: SystemTime,
    protocol: Protocol,
) -> String {
    let (st, se) = (sas_time(start), sas_time(expiry));
    // account, sp, ss, srt, st, se, sip, spr, sv, ses, each followed by a newline.
    let to_sign = format!(
        "{account}\n{permissions}\nb\n{resource_types}\n{st}\n{se}\n\n{}\n{SAS_VERSION}\n\n",
        protocol.as_str()
    );
    let sig = key.sign(&to_sign);
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("sv", SAS_VERSION);
    q.append_pair("ss", "b");
    q.append_pair("srt", resource_types);
    q.append_pair("sp", permissions);
    q.append_pair("st", &st);
    q.append_pair("se", &se);
    q.append_pair("spr", protocol.as_str());
    q.append_pair("sig", &sig);
    q.finish()
}

/// A user delegation key as the service returns it (Get User Delegation Key).
#[derive(Clone)]
pub struct UserDelegationKey {
    /// `skoid`.
    pub signed_oid: String,
    /// `sktid`.
    pub signed_tid: String,
    /// `skt`.
    pub signed_start: String,
    /// `ske`.
    pub signed_expiry: String,
    /// `sks`.
    pub signed_service: String,
    /// `skv`.
    pub signed_version: String,
    /// The key value (base64-decoded).
    pub value: Vec<u8>,
}

impl fmt::Debug for UserDelegationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UserDelegationKey(oid {}, expires {}, value redacted)",
            self.signed_oid, self.signed_expiry
        )
    }
}

impl ServiceSas {
    /// The 24-line user delegation string-to-sign (versions 2020-12-06 to 2025-01-05).
    pub fn user_delegation_string_to_sign(
        &self,
        key: &UserDelegationKey,
        canonical_resource: &str,
    ) -> String {
        let mut lines = self.head(canonical_resource);
        lines.extend([
            key.signed_oid.clone(),
            key.signed_tid.clone(),
            key.signed_start.clone(),
            key.signed_expiry.clone(),
            key.signed_service.clone(),
            key.signed_version.clone(),
            String::new(), // saoid
            String::new(), // suoid
            String::new(), // scid
        ]);
        self.finish(lines)
    }

    /// Signs with a user delegation key; returns the query string.
    pub fn sign_user_delegation(
        &self,
        key: &UserDelegationKey,
        canonical_resource: &str,
    ) -> String {
        let sig =
            hmac_b64(&key.value, &self.user_delegation_string_to_sign(key, canonical_resource));
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("sv", SAS_VERSION);
        if let Some(st) = self.start {
            q.append_pair("st", &sas_time(st));
        }
        q.append_pair("se", &sas_time(self.expiry));
        q.append_pair("skoid", &key.signed_oid);
        q.append_pair("sktid", &key.signed_tid);
        q.append_pair("skt", &key.signed_start);
        q.append_pair("ske", &key.signed_expiry);
        q.append_pair("sks", &key.signed_service);
        q.append_pair("skv", &key.signed_version);
        q.append_pair("sr", self.resource);
        q.append_pair("sp", &self.permissions);
        q.append_pair("spr", self.protocol.as_str());
        q.append_pair("sig", &sig);
        q.finish()
    }
}

/// A URL that may carry a SAS: `Display` and `Debug` show it with its `sig` replaced by
/// `REDACTED`, so it can go into logs, errors and text output as it is; the signed URL itself
/// comes out only through [`SasUrl::expose`] and `Serialize` (the one place a SAS is printed is
/// the JSON a user asked for).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SasUrl(String);

impl SasUrl {
    /// The whole URL, signature included: for a request or a document that needs it, never for
    /// a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the URL carries a SAS signature (a `sig` query parameter).
    pub fn is_signed(&self) -> bool {
        url::Url::parse(&self.0).is_ok_and(|u| u.query_pairs().any(|(k, _)| k == "sig"))
    }
}

impl From<String> for SasUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::str::FromStr for SasUrl {
    type Err = super::StorageError;

    /// An absolute URL (the parse error never quotes it, so no signature leaks through it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        url::Url::parse(s.trim())
            .map(|_| Self(s.trim().to_owned()))
            .map_err(|e| super::StorageError::Config(format!("not a URL: {e}")))
    }
}

impl fmt::Display for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0, &[]))
    }
}

impl fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SasUrl({})", redact(&self.0, &[]))
    }
}

/// Compares two secrets (signatures, tokens) without stopping at the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Replaces every SAS `sig` value and the given secrets in `text` with `REDACTED`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        // Only a query parameter: preceded by `?` or `&` (or a URL-encoded `&`).
        let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b';' | b' ' | b'"');
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        if boundary {
            let end = rest
                .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
                .unwrap_or(rest.len());
            out.push_str("REDACTED");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(s, "REDACTED");
        let enc: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
        out = out.replace(&enc, "REDACTED");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_sas_matches_the_published_vector() {
        // reference/storage.md §3.1: the vector from the legacy crate's unit test.
        let key = AccountKey::from_base64("RZfi3m1W7eyQ5zD4ymSmGANVdJ2SDQmg4sE89SW104s=").unwrap();
        let sas = ServiceSas {
            permissions: "r".into(),
            start: None,
            expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(7 * 86_400),
            protocol: Protocol::HttpsOnly,
            resource: "b",
        };
        let mut to_sign = sas.string_to_sign("/blob/STORAGE_ACCOUNT_NAME/CONTAINER_NAME/");
        // The vector leaves `spr` empty.
        to_sign = to_sign.replacen("\nhttps\n", "\n\n", 1);
        assert_eq!(to_sign.split('\n').count(), 16);
        assert_eq!(key.sign(&to_sign), "VRZjVZ1c/Lz7IXCp17Sdx9+R9JDrnJdzE3NW56DMjNs=");
    }

    #[test]
    fn redaction_hides_signatures_and_keys() {
        let t = "GET http://h/c/b?sv=1&sig=abc%2Bdef%3D&sp=r failed; key Eby8vdM02xNOcqFl";
        let r = redact(t, &["Eby8vdM02xNOcqFl"]);
        assert_eq!(r, "GET http://h/c/b?sv=1&sig=REDACTED&sp=r failed; key REDACTED");
        assert_eq!(redact("design=x", &[]), "design=x");
    }

    #[test]
    fn a_sas_url_shows_no_signature_but_serializes_whole() {
        let text = "https://a.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&sig=abc%2Bdef%3D";
        let url: SasUrl = text.parse().unwrap();
        assert!(url.is_signed());
        assert_eq!(
            url.to_string(),
            "https://a.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&sig=REDACTED"
        );
        assert!(!format!("{url:?}").contains("abc"));
        assert_eq!(serde_json::to_value(&url).unwrap(), text);
        assert_eq!(url.expose(), text);
        let e = "not a url?sig=secret".parse::<SasUrl>().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(!"https://h/c".parse::<SasUrl>().unwrap().is_signed());
    }

    #[test]
    fn loopback_endpoints_allow_http() {
        let p = |u: &str| Protocol::for_endpoint(&url::Url::parse(u).unwrap());
        assert_eq!(p("http://127.0.0.1:10000/devstoreaccount1"), Protocol::HttpsAndHttp);
        assert_eq!(p("http://localhost:10000/x"), Protocol::HttpsAndHttp);
        assert_eq!(p("https://acct.blob.core.windows.net"), Protocol::HttpsOnly);
    }
}

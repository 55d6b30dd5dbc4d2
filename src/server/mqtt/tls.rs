//! TLS for serve's MQTT endpoint with no ceremony: on first start serve makes its own CA
//! (ECDSA P-256, ten years) and a server certificate it signs (two years) for the names it
//! answers — `localhost`, `127.0.0.1`, the MQTT listen address when it is a specific one, and
//! the host of `--public-url` — and keeps them in the data dir (keys mode 0600). A device
//! trusts `mqtt-ca.pem` (the Python SDK's `server_verification_cert`). When the names change,
//! the server certificate is made again with the same CA. X.509 certificates per RFC 5280,
//! TLS 1.2 and 1.3 (<https://www.rfc-editor.org/rfc/rfc8446>) through rustls on aws-lc-rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::fsutil::{Privacy, write_output};
use crate::server::ServerError;

/// The CA certificate devices trust, in the data dir.
pub const CA_FILE: &str = "mqtt-ca.pem";
const CA_KEY_FILE: &str = "mqtt-ca.key";
const CERT_FILE: &str = "mqtt-server.pem";
const KEY_FILE: &str = "mqtt-server.key";
const NAMES_FILE: &str = "mqtt-server.names";

fn cfg(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Config(format!("MQTT certificate: {what}: {e}"))
}

/// The CA's parameters: the same every time, so that an issuer rebuilt from them and the
/// kept key signs certificates that chain to the kept CA certificate.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "otaforge serve MQTT CA");
    dn.push(DnType::OrganizationName, "otaforge");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A random serial number, so that a certificate made again is not mistaken for the old one.
fn serial() -> Result<rcgen::SerialNumber, ServerError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| cfg("random serial", e))?;
    b[0] &= 0x7f;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
}

/// The CA key and certificate: read, or made and written on first start.
fn ca(dir: &Path) -> Result<(KeyPair, bool), ServerError> {
    let key_path = dir.join(CA_KEY_FILE);
    match fs_err::read_to_string(&key_path) {
        Ok(pem) => Ok((KeyPair::from_pem(&pem).map_err(|e| cfg("reading the CA key", e))?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate().map_err(|e| cfg("a CA key", e))?;
            let mut p = ca_params();
            validity(&mut p, 3650);
            p.serial_number = Some(serial()?);
            let cert = p.self_signed(&key).map_err(|e| cfg("the CA certificate", e))?;
            write_output(&key_path, key.serialize_pem().as_bytes(), Privacy::Private)?;
            write_output(&dir.join(CA_FILE), cert.pem().as_bytes(), Privacy::Private)?;
            Ok((key, true))
        }
        Err(e) => Err(e.into()),
    }
}

/// The server certificate and key for `names`, made (again) when the kept one covers other
/// names or the CA is new.
fn leaf(dir: &Path, names: &[String], ca_key: KeyPair, ca_new: bool) -> Result<(), ServerError> {
    let wanted = names.join("\n");
    let kept = fs_err::read_to_string(dir.join(NAMES_FILE)).ok();
    if !ca_new && kept.as_deref() == Some(wanted.as_str()) && dir.join(KEY_FILE).is_file() {
        return Ok(());
    }
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().map_err(|e| cfg("a server key", e))?;
    let mut p = CertificateParams::new(names.to_vec()).map_err(|e| cfg("server names", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("localhost"));
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Python 3.13's default context (VERIFY_X509_STRICT) refuses a leaf without it.
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, 730);
    p.serial_number = Some(serial()?);
    let cert = p.signed_by(&key, &issuer).map_err(|e| cfg("the server certificate", e))?;
    write_output(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), Privacy::Private)?;
    write_output(&dir.join(CERT_FILE), cert.pem().as_bytes(), Privacy::Private)?;
    write_output(&dir.join(NAMES_FILE), wanted.as_bytes(), Privacy::Private)?;
    Ok(())
}

/// The names the server certificate covers: `localhost`, `127.0.0.1`, then `extra` (the
/// listen address, the public URL's host), each once.
pub(crate) fn names(extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for n in extra {
        let n = n.trim_start_matches('[').trim_end_matches(']').to_lowercase();
        if !n.is_empty() && !out.contains(&n) && n != "0.0.0.0" && n != "::" {
            out.push(n);
        }
    }
    out
}

/// Makes (or reads) the CA and server certificate in `dir` for `names`; returns the TLS
/// acceptor and the CA file.
pub(crate) fn acceptor(
    dir: &Path,
    names: &[String],
) -> Result<(tokio_rustls::TlsAcceptor, PathBuf), ServerError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (ca_key, ca_new) = ca(dir)?;
    leaf(dir, names, ca_key, ca_new)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join(CERT_FILE))
        .map_err(|e| cfg("reading the server certificate", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| cfg("reading the server certificate", e))?;
    let key = PrivateKeyDer::from_pem_file(dir.join(KEY_FILE))
        .map_err(|e| cfg("reading the server key", e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| cfg("the server certificate", e))?;
    // Devices reconnect with a new handshake; tickets would only cost memory per connection.
    config.send_tls13_tickets = 0;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), dir.join(CA_FILE)))
}

//! `otaforge sign` and `otaforge verify`: detached JWS signatures (`FILE.sig`) for any file.

use std::path::{Path, PathBuf};

use otaforge::sign::{SignError, jws};
use serde::Serialize;

use super::args::{SignerArgs, TrustArgs};
use super::{Failure, Outcome, Output};

/// Arguments of `otaforge sign`.
#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// Files to sign; each gets FILE.sig, a compact JWS (EdDSA) with a detached payload.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    signer: SignerArgs,
}

/// Arguments of `otaforge verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Files to check against FILE.sig.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
}

fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

pub(crate) fn sign(a: SignArgs, out: &Output) -> anyhow::Result<Outcome> {
    let Some(signer) = a.signer.one(true)? else { anyhow::bail!("no signing key") };
    let mut done = Vec::new();
    for f in &a.files {
        let data = otaforge::fsutil::map_file(f)?;
        let jws = jws::sign_detached(&data, signer.as_ref())?;
        let sig = sig_path(f);
        otaforge::fsutil::write_output(
            &sig,
            format!("{jws}\n").as_bytes(),
            otaforge::fsutil::Privacy::Public,
        )?;
        done.push(serde_json::json!({
            "file": f.display().to_string(),
            "signature": sig.display().to_string(),
            "keyId": signer.public_key().id(),
        }));
        if !out.json() {
            out.line(format!("{}: signed by {}", sig.display(), signer.public_key().id()))?;
        }
    }
    if out.json() {
        out.json_value(&done)?;
    }
    Ok(Outcome::Ok)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

pub(crate) fn verify(a: VerifyArgs, out: &Output) -> anyhow::Result<Outcome> {
    let keys = a.trust.keys()?;
    let mut verdicts = Vec::new();
    for f in &a.files {
        let result = verify_one(f, &keys);
        let v = match result {
            Ok(kid) => Verdict {
                file: f.display().to_string(),
                valid: true,
                key_id: Some(kid),
                error: None,
                message: None,
            },
            Err(e) if e.is_refusal() => Verdict {
                file: f.display().to_string(),
                valid: false,
                key_id: None,
                error: Some(e.kind()),
                message: Some(e.to_string()),
            },
            Err(e) => return Err(e.into()),
        };
        if !out.json() && v.valid {
            out.line(format!(
                "{}: valid, signed by {}",
                v.file,
                v.key_id.as_deref().unwrap_or("")
            ))?;
        }
        verdicts.push(v);
    }
    // A failure is reported as every command reports one: the first refusal's code and file,
    // every file's verdict in details.
    let refused: Vec<&Verdict> = verdicts.iter().filter(|v| !v.valid).collect();
    let Some(first) = refused.first() else {
        if out.json() {
            out.json_value(&verdicts)?;
        }
        return Ok(Outcome::Ok);
    };
    if !out.json() {
        for v in &refused[1..] {
            out.error(format!("{}: {}", v.file, v.message.as_deref().unwrap_or_default()));
        }
    }
    let message = first.message.clone().unwrap_or_default();
    let message = match refused.len() {
        1 => message,
        n => format!("{message} ({n} of {} files refused)", verdicts.len()),
    };
    out.failure(
        &Failure::new(first.error.unwrap_or("refused"), message)
            .file(&first.file)
            .details(&verdicts),
    )?;
    Ok(Outcome::CheckFailed)
}

fn verify_one(file: &Path, keys: &otaforge::sign::TrustedKeys) -> Result<String, SignError> {
    let sig = sig_path(file);
    let what = file.display().to_string();
    if !sig.exists() {
        return Err(SignError::SignatureMissing {
            what: format!("{} does not exist", sig.display()),
        });
    }
    if keys.is_empty() {
        return Err(SignError::NoKeyConfigured { what });
    }
    let text = fs_err::read_to_string(&sig)?;
    let data = otaforge::fsutil::map_file(file)?;
    Ok(jws::verify_detached(&text, &data, keys, &what)?.to_string())
}

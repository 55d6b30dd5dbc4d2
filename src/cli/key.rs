//! `otaforge key generate|show`, and how the signing commands report a refusal.

use std::path::PathBuf;

use otaforge::sign::{PublicKey, SignError};

use super::{Failure, Outcome, Output};

/// `otaforge key` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Create an Ed25519 key pair: NAME.pem (private, mode 0600) and NAME.pub.pem (public).
    /// Never overwrites.
    Generate(GenerateArgs),
    /// Print a key's id (hex SHA-256 of its SubjectPublicKeyInfo DER) and its public key.
    Show(ShowArgs),
}

/// Arguments of `otaforge key generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// Base name of the two files (a trailing .pem is dropped).
    #[arg(short, long, value_name = "NAME")]
    output: PathBuf,
}

/// Arguments of `otaforge key show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// A public or private key PEM file; only the public half is shown.
    key: PathBuf,
}

pub(crate) fn run(cmd: KeyCommand, out: &Output) -> anyhow::Result<Outcome> {
    match cmd {
        KeyCommand::Generate(a) => {
            let (private, public, key) = otaforge::sign::generate_key_files(&a.output)?;
            if out.json() {
                out.json_value(&serde_json::json!({
                    "privateKey": private.display().to_string(),
                    "publicKey": public.display().to_string(),
                    "keyId": key.id(),
                }))?;
            } else {
                out.line(format!("private key  {} (mode 0600)", private.display()))?;
                out.line(format!("public key   {}", public.display()))?;
                out.line(format!("key id       {}", key.id()))?;
            }
            Ok(Outcome::Ok)
        }
        KeyCommand::Show(a) => {
            let key = PublicKey::public_half_of_file(&a.key)?;
            if out.json() {
                out.json_value(&serde_json::json!({
                    "file": a.key.display().to_string(),
                    "algorithm": "ed25519",
                    "keyId": key.id(),
                    "publicKeyPem": key.to_pem(),
                }))?;
            } else {
                out.line(format!("key id     {}", key.id()))?;
                out.line("algorithm  ed25519")?;
                out.line(key.to_pem().trim_end())?;
            }
            Ok(Outcome::Ok)
        }
    }
}

/// Prints a refusal (JSON on stdout, a line on stderr) and returns exit 1; setup problems
/// (unreadable files, bad keys) become errors with exit 2.
pub(crate) fn refused(out: &Output, subject: &str, e: SignError) -> anyhow::Result<Outcome> {
    if !e.is_refusal() {
        return Err(e.into());
    }
    out.failure(&Failure::new(e.kind(), e.to_string()).file(subject))?;
    Ok(Outcome::CheckFailed)
}

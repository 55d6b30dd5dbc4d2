//! `otaforge key generate|show`, and the key options the signing commands share.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use otaforge::sign::{CommandSigner, KeySigner, PublicKey, SignError, Signer, TrustedKeys};

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

/// Where a signing key comes from: a PEM file, `env:VAR`, or an external command.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SignerArgs {
    /// Private key: a PKCS#8 PEM file, or env:VAR for a PEM held in an environment variable.
    /// Default: the PEM in $OTAFORGE_SIGNING_KEY. Repeat to sign with several keys where the
    /// command allows it.
    #[arg(long, value_name = "FILE|env:VAR")]
    pub(crate) key: Vec<String>,
    /// Sign with an external command instead (HSM, KMS): it reads the message on stdin and
    /// prints the 64-byte Ed25519 signature (raw or base64) on stdout. Needs --signer-pub.
    #[arg(long, value_name = "COMMAND", requires = "signer_pub")]
    pub(crate) sign_command: Option<String>,
    /// The public key of the external signer's key.
    #[arg(long, value_name = "PUB.pem", requires = "sign_command")]
    pub(crate) signer_pub: Option<PathBuf>,
}

impl SignerArgs {
    /// The configured signers; with `required`, falls back to $OTAFORGE_SIGNING_KEY and fails
    /// when nothing is configured.
    pub(crate) fn signers(&self, required: bool) -> anyhow::Result<Vec<Box<dyn Signer>>> {
        let mut signers: Vec<Box<dyn Signer>> = Vec::new();
        for k in &self.key {
            signers.push(key_signer(k)?);
        }
        if let (Some(cmd), Some(p)) = (&self.sign_command, &self.signer_pub) {
            signers.push(Box::new(CommandSigner::new(cmd.clone(), PublicKey::from_file(p)?)));
        }
        if signers.is_empty() && required {
            if std::env::var_os(otaforge::env::OTAFORGE_SIGNING_KEY).is_some() {
                signers.push(Box::new(KeySigner::from_env(otaforge::env::OTAFORGE_SIGNING_KEY)?));
            } else {
                bail!(
                    "no signing key: pass --key FILE, --key env:VAR or --sign-command, or set {}",
                    otaforge::env::OTAFORGE_SIGNING_KEY
                );
            }
        }
        Ok(signers)
    }

    /// Exactly one signer (commands whose output holds one signature).
    pub(crate) fn one(&self, required: bool) -> anyhow::Result<Option<Box<dyn Signer>>> {
        let mut s = self.signers(required)?;
        if s.len() > 1 {
            bail!("this command signs with one key; {} were given", s.len());
        }
        Ok(s.pop())
    }
}

/// A signer from `FILE` or `env:VAR`.
pub(crate) fn key_signer(spec: &str) -> anyhow::Result<Box<dyn Signer>> {
    Ok(match spec.strip_prefix("env:") {
        Some(var) => Box::new(KeySigner::from_env(var)?),
        None => Box::new(
            KeySigner::from_file(Path::new(spec)).with_context(|| format!("signing key {spec}"))?,
        ),
    })
}

/// The public keys a verification trusts.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TrustArgs {
    /// A trusted public key (PEM); repeatable.
    #[arg(long = "pub", value_name = "PUB.pem")]
    pub(crate) public: Vec<PathBuf>,
    /// A directory whose *.pub.pem files are all trusted.
    #[arg(long, value_name = "DIR")]
    pub(crate) trusted_keys: Option<PathBuf>,
}

impl TrustArgs {
    /// The trusted set, empty when no key was given.
    pub(crate) fn keys(&self) -> anyhow::Result<TrustedKeys> {
        let mut keys = TrustedKeys::new();
        for p in &self.public {
            keys.add_file(p)?;
        }
        if let Some(d) = &self.trusted_keys {
            keys.add_dir(d)?;
        }
        Ok(keys)
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

//! `otaforge mcuboot sign|verify|info`: MCUboot images that imgtool and the bootloader accept.

use std::path::PathBuf;

use anyhow::Context as _;
use otaforge::mcuboot::{self, ImageVersion, McubootError, SecurityCounter, SignOptions};

use super::args::{SignerArgs, TrustArgs};
use super::{Failure, Outcome, Output};

/// `otaforge mcuboot` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum McubootCommand {
    /// Add the MCUboot header and TLVs (SHA256, KEYHASH, ED25519) to a raw binary.
    Sign(SignArgs),
    /// Check an image's hash and Ed25519 signature (exit 1 if refused).
    Verify(VerifyArgs),
    /// Describe any MCUboot image: header, version, TLVs, key id, hash check, trailer.
    Info(InfoArgs),
}

/// Arguments of `otaforge mcuboot sign`.
#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// The raw application binary.
    image: PathBuf,
    /// Where to write the signed image.
    #[arg(short, long)]
    output: PathBuf,
    /// Version: major.minor.revision+build (later parts optional).
    #[arg(short = 'v', long)]
    version: ImageVersion,
    /// Header size in bytes (0x200 for most Zephyr boards).
    #[arg(short = 'H', long, value_parser = parse_u16, default_value = "0x20")]
    header_size: u16,
    /// Prepend the header space instead of requiring the input to start with zeros.
    #[arg(long)]
    pad_header: bool,
    /// Slot size in bytes; the image plus trailer must fit.
    #[arg(short = 'S', long, value_parser = parse_u32, default_value = "0")]
    slot_size: u32,
    /// Pad to the slot size and write the trailer's boot magic (needs --slot-size).
    #[arg(long)]
    pad: bool,
    /// With --pad: mark the image confirmed.
    #[arg(long, requires = "pad")]
    confirm: bool,
    /// Security counter (protected TLV): a number, or auto to derive it from the version.
    #[arg(short = 's', long, value_name = "N|auto")]
    security_counter: Option<String>,
    /// Flash write alignment.
    #[arg(long, default_value_t = 1, value_parser = parse_align)]
    align: u8,
    /// Embed the full public key instead of its hash.
    #[arg(long)]
    public_key_full: bool,
    #[command(flatten)]
    signer: SignerArgs,
}

/// Arguments of `otaforge mcuboot verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The image.
    image: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
}

/// Arguments of `otaforge mcuboot info`.
#[derive(Debug, clap::Args)]
pub(crate) struct InfoArgs {
    /// The image.
    image: PathBuf,
}

fn parse_num(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    };
    r.map_err(|_| format!("`{s}` is not a number (decimal or 0x hex)"))
}
fn parse_align(s: &str) -> Result<u8, String> {
    match s {
        "1" | "2" | "4" | "8" => s.parse().map_err(|_| String::new()),
        _ => Err(format!("alignment {s} is not 1, 2, 4 or 8")),
    }
}
fn parse_u16(s: &str) -> Result<u16, String> {
    u16::try_from(parse_num(s)?).map_err(|_| format!("{s} is above 0xffff"))
}
fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_num(s)?).map_err(|_| format!("{s} is above 0xffffffff"))
}

pub(crate) fn run(cmd: McubootCommand, out: &Output) -> anyhow::Result<Outcome> {
    match cmd {
        McubootCommand::Sign(a) => sign(a, out),
        McubootCommand::Verify(a) => verify(a, out),
        McubootCommand::Info(a) => info(a, out),
    }
}

fn sign(a: SignArgs, out: &Output) -> anyhow::Result<Outcome> {
    let security_counter = match a.security_counter.as_deref() {
        None => None,
        Some("auto") => Some(SecurityCounter::Auto),
        Some(n) => Some(SecurityCounter::Value(
            parse_u32(n).map_err(anyhow::Error::msg).context("--security-counter")?,
        )),
    };
    let opts = SignOptions {
        version: a.version,
        header_size: a.header_size,
        pad_header: a.pad_header,
        slot_size: a.slot_size,
        pad: a.pad,
        confirm: a.confirm,
        security_counter,
        align: a.align,
        full_public_key: a.public_key_full,
        ..SignOptions::default()
    };
    let Some(signer) = a.signer.one(true)? else { anyhow::bail!("no signing key") };
    let input = fs_err::read(&a.image)?;
    let image = match mcuboot::sign(&input, &opts, signer.as_ref()) {
        Ok(i) => i,
        Err(McubootError::Usage(m)) => anyhow::bail!("{}: {m}", a.image.display()),
        Err(e) => return Err(e.into()),
    };
    otaforge::fsutil::write_output(&a.output, &image, otaforge::fsutil::Privacy::Public)?;
    let out = &out.for_payload(&a.output);
    let info = mcuboot::parse(&image)?;
    if out.json() {
        out.json_value(&serde_json::json!({"file": a.output.display().to_string(), "sizeInBytes": image.len(), "info": info}))?;
    } else {
        out.line(format!(
            "{}: {} bytes, version {}, security counter {}, signed by {}",
            a.output.display(),
            image.len(),
            info.version,
            info.security_counter.map_or_else(|| "none".into(), |c| c.to_string()),
            signer.public_key().id()
        ))?;
    }
    Ok(Outcome::Ok)
}

fn verify(a: VerifyArgs, out: &Output) -> anyhow::Result<Outcome> {
    let keys = a.trust.keys()?;
    let bytes = otaforge::fsutil::map_file(&a.image)?;
    let subject = a.image.display().to_string();
    match mcuboot::verify(&bytes, &keys) {
        Ok(v) => {
            if out.json() {
                out.json_value(&serde_json::json!({"file": subject, "valid": true, "keyId": v.key_id, "version": v.info.version, "securityCounter": v.info.security_counter}))?;
            } else {
                out.line(format!(
                    "{subject}: valid, version {}, signed by {}",
                    v.info.version, v.key_id
                ))?;
            }
            Ok(Outcome::Ok)
        }
        Err(McubootError::Signature(e)) if !e.is_refusal() => Err(e.into()),
        Err(e) => {
            out.failure(&Failure::new(e.kind(), e.to_string()).file(subject))?;
            Ok(Outcome::CheckFailed)
        }
    }
}

fn info(a: InfoArgs, out: &Output) -> anyhow::Result<Outcome> {
    let bytes = otaforge::fsutil::map_file(&a.image)?;
    let info = match mcuboot::parse(&bytes) {
        Ok(i) => i,
        Err(e) => {
            out.failure(&Failure::new(e.kind(), e.to_string()).file(a.image.display()))?;
            return Ok(Outcome::CheckFailed);
        }
    };
    if out.json() {
        out.json_value(&info)?;
        return Ok(Outcome::Ok);
    }
    out.line(format!("version           {}", info.version))?;
    out.line(format!("header size       {:#x}", info.header_size))?;
    out.line(format!("image size        {:#x} ({} bytes)", info.image_size, info.image_size))?;
    out.line(format!("flags             {:#x}", info.flags))?;
    out.line(format!("load address      {:#x}", info.load_addr))?;
    out.line(format!(
        "security counter  {}",
        info.security_counter.map_or_else(|| "none".into(), |c| c.to_string())
    ))?;
    out.line(format!("key id            {}", info.key_id.as_deref().unwrap_or("none")))?;
    out.line(format!(
        "hash              {}",
        match info.hash_valid {
            Some(true) => "matches",
            Some(false) => "DOES NOT MATCH (changed after signing)",
            None => "no hash TLV",
        }
    ))?;
    out.line(format!(
        "trailer           {} bytes after the TLVs{}",
        info.trailing_bytes,
        if info.boot_magic { ", ends with the boot magic" } else { "" }
    ))?;
    for t in &info.tlvs {
        let v = if t.value.len() > 64 { format!("{}…", &t.value[..64]) } else { t.value.clone() };
        out.line(format!(
            "  {:<11} {:<16} {:#06x} {:>4} B  {v}",
            t.area, t.name, t.kind, t.length
        ))?;
    }
    Ok(Outcome::Ok)
}

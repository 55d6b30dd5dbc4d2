//! `otaforge delta create|apply|info`: binary deltas between firmware or OS images.

use std::path::PathBuf;

use anyhow::Context as _;
use otaforge::Sha256;
use otaforge::delta::{
    self, Compression, CreateOptions, DeltaError, DeltaFormat, MethodChoice, Profile,
};
use otaforge::fsutil::Privacy;
use serde::Serialize;

use super::{Failure, Outcome, Output};

/// `otaforge delta` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeltaCommand {
    /// Create a delta that rebuilds NEW from OLD (verified by applying it before writing).
    Create(CreateArgs),
    /// Rebuild NEW from OLD and a delta; checks old, payload and result, writes nothing on error.
    Apply(ApplyArgs),
    /// Describe a delta: format, method, compression, sizes, digests, decoder RAM.
    Info(InfoArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Otadelta,
    Bsdiff40,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    /// Try what is promising, keep the smallest.
    Auto,
    /// Suffix-array matching: the op stream, interleaved or in five parts.
    Bsdiff,
    /// The op stream in five separately compressed parts (Linux).
    Split,
    /// zstd patch-from (Linux: the decoder holds old in memory).
    Zstd,
    /// Old as the start of the decoder's window: zstd for Linux; for --profile mcu, LZMA
    /// whose window a device reads back from flash (A/B slots only).
    PatchFrom,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProfileArg {
    /// Linux gateways: large windows, smallest of zstd and LZMA.
    Linux,
    /// Microcontrollers: LZMA with a 4 KiB dictionary, or (A/B) LZMA primed with old whose
    /// window the device reads back from flash (about 10 KiB decoder RAM either way).
    Mcu,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExecArg {
    /// Detect from NEW (ELF header, Cortex-M or ARM vector table); keep the smaller of with and
    /// without.
    Auto,
    /// ARM Thumb-2 BL.
    Thumb2,
    /// AArch64 BL and ADRP.
    Aarch64,
    /// x86-64 CALL/JMP rel32.
    #[value(name = "x86-64")]
    X86_64,
    /// ARM-state (A32) BL and BLX.
    A32,
    /// No transform.
    None,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Zstd,
    Lzma,
    None,
}

/// Arguments of `otaforge delta create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The image the device has.
    old: PathBuf,
    /// The image the device should end up with.
    new: PathBuf,
    /// Where to write the delta.
    #[arg(short, long)]
    output: PathBuf,
    /// File format: otadelta (verified, streamable) or bsdiff40 (Debian bspatch, PyPI bsdiff4).
    #[arg(long = "delta-format", value_enum, default_value = "otadelta")]
    delta_format: FormatArg,
    /// Method: auto keeps the smallest of what it tries.
    #[arg(long, value_enum, default_value = "auto")]
    method: MethodArg,
    /// Device class that applies the delta.
    #[arg(long, value_enum, default_value = "linux")]
    profile: ProfileArg,
    /// Force the compression of the op stream.
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// Effort 1 (fastest) to 9 (smallest).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=9))]
    level: u32,
    /// Threads (default: available cores).
    #[arg(long, short)]
    jobs: Option<usize>,
    /// Predict the branches of machine code, so that moved code costs almost nothing.
    #[arg(long, value_enum, default_value = "auto")]
    exec: ExecArg,
    /// With the Thumb-2 and A32 transforms, predict absolute pointers too (literal pools,
    /// vector and function tables): auto (guess where old lies in memory; kept when smaller),
    /// none, or old's base address (e.g. 0x08008000).
    #[arg(long, default_value = "auto", value_parser = parse_abs, value_name = "auto|none|ADDRESS")]
    abs_pointers: delta::AbsChoice,
    /// Make a delta the device applies inside the old image's own flash slot, one segment at
    /// a time, resumable after a power cut (needs --segment-size and --memory-size).
    #[arg(long, requires_all = ["segment_size", "memory_size"])]
    in_place: bool,
    /// In place: the segment size, a power of two and a multiple of the flash erase unit
    /// (e.g. 4096, 4K, 0x20000).
    #[arg(long, value_parser = otaforge::size::parse_size, requires = "in_place")]
    segment_size: Option<u64>,
    /// In place: the slot's size; old moves up by the whole segments that fit beside it,
    /// which lets new grow without overwriting old bytes it still needs.
    #[arg(long, value_parser = otaforge::size::parse_size, requires = "in_place")]
    memory_size: Option<u64>,
    /// Sign the delta (its header and payload digest) with this private key: a PEM file or
    /// env:VAR.
    #[arg(long, value_name = "FILE|env:VAR")]
    sign_key: Option<String>,
}

/// Arguments of `otaforge delta apply`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApplyArgs {
    /// The image the delta was made from.
    old: PathBuf,
    /// The delta (otadelta or BSDIFF40).
    delta: PathBuf,
    /// Where to write the rebuilt image.
    #[arg(short, long)]
    output: PathBuf,
    /// Also require this SHA-256 (base64 or hex) of the result; the only result check BSDIFF40
    /// patches can have.
    #[arg(long, value_name = "SHA256")]
    expect_sha256: Option<String>,
    /// Require a signature by this public key (repeatable); checked before anything is
    /// written. Without a key, a signed delta is refused.
    #[arg(long, value_name = "PUB.pem")]
    verify_key: Vec<PathBuf>,
    /// Require a signature by one of the *.pub.pem keys in this directory.
    #[arg(long, value_name = "DIR")]
    trusted_keys: Option<PathBuf>,
}

/// Arguments of `otaforge delta info`.
#[derive(Debug, clap::Args)]
pub(crate) struct InfoArgs {
    /// The delta file.
    delta: PathBuf,
}

pub(crate) fn run(cmd: DeltaCommand, out: &Output) -> anyhow::Result<Outcome> {
    match cmd {
        DeltaCommand::Create(a) => create(a, out),
        DeltaCommand::Apply(a) => apply(a, out),
        DeltaCommand::Info(a) => info(a, out),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedJson<'a> {
    file: String,
    #[serde(flatten)]
    info: &'a delta::DeltaInfo,
    percent_of_new: f64,
    candidates: Vec<serde_json::Value>,
}

/// `--abs-pointers`: auto, none, or an address.
fn parse_abs(text: &str) -> Result<delta::AbsChoice, String> {
    match text {
        "auto" => Ok(delta::AbsChoice::Auto),
        "none" => Ok(delta::AbsChoice::None),
        t => otaforge::size::parse_size(t).map(delta::AbsChoice::Base).map_err(|e| e.to_string()),
    }
}

fn create(a: CreateArgs, out: &Output) -> anyhow::Result<Outcome> {
    let old = otaforge::fsutil::map_file(&a.old)?;
    let new = otaforge::fsutil::map_file(&a.new)?;
    let opts = CreateOptions {
        format: match a.delta_format {
            FormatArg::Otadelta => DeltaFormat::Otadelta,
            FormatArg::Bsdiff40 => DeltaFormat::Bsdiff40,
        },
        method: match a.method {
            MethodArg::Auto => MethodChoice::Auto,
            MethodArg::Bsdiff => MethodChoice::Bsdiff,
            MethodArg::Split => MethodChoice::Split,
            MethodArg::Zstd => MethodChoice::Zstd,
            MethodArg::PatchFrom => MethodChoice::PatchFrom,
        },
        profile: match a.profile {
            ProfileArg::Linux => Profile::Linux,
            ProfileArg::Mcu => Profile::Mcu,
        },
        level: a.level,
        threads: a.jobs.unwrap_or_else(otaforge::hash::default_jobs).max(1),
        compression: a.compression.map(|c| match c {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Lzma => Compression::Lzma,
            CompressionArg::None => Compression::None,
        }),
        exec: match a.exec {
            ExecArg::Auto => delta::ExecChoice::Auto,
            ExecArg::None => delta::ExecChoice::None,
            ExecArg::Thumb2 => delta::ExecChoice::Isa(delta::Isa::Thumb2),
            ExecArg::Aarch64 => delta::ExecChoice::Isa(delta::Isa::Aarch64),
            ExecArg::X86_64 => delta::ExecChoice::Isa(delta::Isa::X86_64),
            ExecArg::A32 => delta::ExecChoice::Isa(delta::Isa::A32),
        },
        abs: a.abs_pointers,
        in_place: match (a.in_place, a.segment_size, a.memory_size) {
            (true, Some(segment_size), Some(memory_size)) => {
                Some(delta::InPlaceOptions { segment_size, memory_size })
            }
            _ => None,
        },
    };
    if matches!(opts.method, MethodChoice::Zstd) && opts.profile == Profile::Mcu {
        anyhow::bail!(
            "--method zstd needs the old image in RAM; it is not available with --profile mcu"
        );
    }
    let signer = a.sign_key.as_deref().map(super::args::key_signer).transpose()?;
    if signer.is_some() && opts.format == DeltaFormat::Bsdiff40 {
        anyhow::bail!("{}", DeltaError::UnsignableFormat);
    }
    let reporter = out.progress("delta");
    let created = delta::create(&old, &new, &opts, &reporter);
    drop(reporter);
    let mut created =
        created.with_context(|| format!("creating a delta from {}", a.old.display()))?;
    if let Some(signer) = &signer {
        created.bytes = delta::sign(&created.bytes, signer.as_ref())?;
        created.info = delta::info(&created.bytes)?;
    }
    otaforge::fsutil::write_output(&a.output, &created.bytes, Privacy::Public)?;
    let out = &out.for_payload(&a.output);
    let pct = 100.0 * created.bytes.len() as f64 / (new.len().max(1)) as f64;
    let i = &created.info;
    if out.json() {
        out.json_value(&CreatedJson {
            file: a.output.display().to_string(),
            info: i,
            percent_of_new: (pct * 1000.0).round() / 1000.0,
            candidates: created
                .candidates
                .iter()
                .map(|(m, c, f, s)| {
                    let exec = f.map(|i| i.name());
                    serde_json::json!({"method": m, "compression": c, "exec": exec, "size": s})
                })
                .collect(),
        })?;
    } else {
        out.line(format!(
            "{}: {} bytes ({pct:.2}% of new), {} method {} compression {}{}, decoder RAM {}",
            a.output.display(),
            created.bytes.len(),
            name(&i.format),
            name(&i.method),
            i.compression,
            i.exec.map(|e| format!(" exec {}", e.name())).unwrap_or_default(),
            human_bytes(i.decoder_ram),
        ))?;
        if let Some(ip) = &i.in_place {
            out.line(format!(
                "in place: {}-byte segments, old shifted by {} bytes; slot of at least {} bytes",
                ip.segment, ip.shift, ip.slot_needed
            ))?;
        }
    }
    Ok(Outcome::Ok)
}

fn apply(a: ApplyArgs, out: &Output) -> anyhow::Result<Outcome> {
    let expect = a
        .expect_sha256
        .as_deref()
        .map(|s| if Sha256::looks_like_hex(s) { Sha256::from_hex(s) } else { s.parse() })
        .transpose()
        .context("--expect-sha256")?;
    let trust = super::args::TrustArgs {
        public: a.verify_key.clone(),
        trusted_keys: a.trusted_keys.clone(),
    };
    let keys = trust.keys()?;
    let keys = (!keys.is_empty()).then_some(&keys);
    let streaming = otaforge::fsutil::streams_to(&a.output);
    let out = &out.for_payload(&a.output);
    match delta::apply_file(&a.old, &a.delta, &a.output, expect, keys) {
        Ok(applied) => {
            if applied.format == DeltaFormat::Bsdiff40 && expect.is_none() {
                out.notice(
                    "warning: a BSDIFF40 patch holds no digest of the old or new file, so neither \
                     was checked; pass --expect-sha256 with the new file's SHA-256",
                );
            }
            if out.json() {
                out.json_value(&serde_json::json!({
                    "file": a.output.display().to_string(),
                    "format": applied.format,
                    "sizeInBytes": applied.new_size,
                    "sha256": applied.new_sha256,
                    "sha256Hex": applied.new_sha256.to_hex(),
                }))?;
            } else {
                out.line(format!(
                    "{}: {} bytes, sha256 {}",
                    a.output.display(),
                    applied.new_size,
                    applied.new_sha256
                ))?;
            }
            Ok(Outcome::Ok)
        }
        // Unreadable files and internal failures are unexpected errors (exit 2); everything else
        // is a check that failed (exit 1).
        Err(e @ DeltaError::Io { .. }) => Err(e.into()),
        Err(DeltaError::Signature(e)) if !e.is_refusal() => Err(e.into()),
        Err(e) => {
            let outcome = if streaming {
                "the bytes made before the check failed were already written to the output"
            } else {
                "nothing was written"
            };
            let message = format!("{e}; {outcome}");
            out.failure(&Failure::new(error_kind(&e), message).file(a.delta.display()))?;
            Ok(Outcome::CheckFailed)
        }
    }
}

fn info(a: InfoArgs, out: &Output) -> anyhow::Result<Outcome> {
    let bytes = otaforge::fsutil::map_file(&a.delta)?;
    let i = match delta::info(&bytes) {
        Ok(i) => i,
        Err(e) => {
            out.failure(&Failure::new(error_kind(&e), e.to_string()).file(a.delta.display()))?;
            return Ok(Outcome::CheckFailed);
        }
    };
    if out.json() {
        out.json_value(&i)?;
        return Ok(Outcome::Ok);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "not recorded".into());
    out.line(format!("format       {}", name(&i.format)))?;
    out.line(format!("method       {}", name(&i.method)))?;
    out.line(format!("compression  {}", i.compression))?;
    out.line(format!("window       {}", human_bytes(u64::from(i.window))))?;
    out.line(format!("decoder RAM  {}", human_bytes(i.decoder_ram)))?;
    let refs = match i.exec {
        Some(delta::Isa::Aarch64) => ", address pairs",
        _ => ", Jcc and RIP-relative operands",
    };
    let abs = match (i.abs_pointers, i.extended_refs) {
        (true, true) => format!(", absolute pointers{refs}"),
        (true, false) => ", absolute pointers".into(),
        (false, true) => refs.into(),
        (false, false) => String::new(),
    };
    out.line(format!("exec         {}{abs}", i.exec.map_or("none", |e| e.name())))?;
    if let Some(ip) = &i.in_place {
        out.line(format!(
            "in place     {}-byte segments, old shifted by {} bytes, slot of at least {} bytes",
            ip.segment, ip.shift, ip.slot_needed
        ))?;
    }
    out.line(format!("old size     {}", opt(i.old_size.map(|v| v.to_string()))))?;
    out.line(format!("old sha256   {}", opt(i.old_sha256.map(|v| v.to_string()))))?;
    out.line(format!("new size     {}", i.new_size))?;
    out.line(format!("new sha256   {}", opt(i.new_sha256.map(|v| v.to_string()))))?;
    out.line(format!("delta size   {}", i.delta_size))?;
    match &i.key_id {
        Some(k) => out.line(format!("signed by    {k}"))?,
        None if i.signed => out.line("signed       yes (signature block missing)")?,
        None => out.line("signed       no")?,
    }
    Ok(Outcome::Ok)
}

/// A stable name for each refusal, for `--format json`.
fn error_kind(e: &DeltaError) -> &'static str {
    match e {
        DeltaError::Io { .. } | DeltaError::Write(_) => "io",
        DeltaError::UnknownFormat => "unknownFormat",
        DeltaError::Header(_) | DeltaError::Bsdiff40(_) => "badHeader",
        DeltaError::Length { .. } => "badLength",
        DeltaError::Digest { .. } => "corruptDelta",
        DeltaError::WrongOld { .. } => "wrongOld",
        DeltaError::Decompress(_) | DeltaError::Bsdiff40Apply(_) => "corruptDelta",
        DeltaError::Patch(_) | DeltaError::StreamLength { .. } => "corruptPatch",
        DeltaError::WrongNew { .. } => "wrongNew",
        DeltaError::Index(_) | DeltaError::Compress(_) | DeltaError::SelfCheck(_) => "internal",
        DeltaError::Signature(s) => s.kind(),
        DeltaError::UnsignableFormat => "unsignableFormat",
        DeltaError::InPlace(_) | DeltaError::Flash(_) => "inPlace",
        DeltaError::Unsupported(_) => "unsupported",
    }
}

/// The serialized (lower-case) name of an enum value.
fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

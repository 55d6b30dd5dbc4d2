//! MCUboot images: sign, verify and describe them, with Ed25519 keys.
//!
//! Layout (all little endian; MCUboot `docs/design.md`, "Image format"):
//!
//! ```text
//! 0        32-byte header: magic 0x96f3b83d, load address, header size, protected TLV size,
//!          image size, flags, version (u8 major, u8 minor, u16 revision, u32 build), pad
//! 32       zero (or erased) padding up to the header size
//! hdr      the image body, `image size` bytes
//! ...      protected TLV area (magic 0x6908, total size), covered by hash and signature:
//!          SEC_CNT (0x50, u32 security counter)
//! ...      TLV area (magic 0x6907, total size): SHA256 (0x10) of everything before this area,
//!          KEYHASH (0x01, SHA-256 of the SubjectPublicKeyInfo DER) or PUBKEY (0x02),
//!          ED25519 (0x24) signature over the SHA-256 (or over the whole region with SIG_PURE)
//! ...      with --pad: erased bytes up to the slot's trailer, whose last 16 bytes are the boot
//!          magic
//! ```
//!
//! Each TLV is a u16 type, a u16 length and the value. The SHA-256 of the SubjectPublicKeyInfo
//! DER is also otaforge's [`KeyId`], so `mcuboot info` names the key that signed an image in the
//! same terms as `key show`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::Sha256;
use crate::sign::{KeyId, Message, PublicKey, SignError, Signer, TrustedKeys};

/// First four bytes of every MCUboot image header.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Magic of the unprotected TLV area.
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// Magic of the protected TLV area.
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
/// The boot magic MCUboot expects at the end of a slot whose write alignment is at most 8.
pub const BOOT_MAGIC: [u8; 16] = [
    0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80,
];

/// TLV types otaforge writes or reads.
pub mod tlv {
    /// SHA-256 of the public key's SubjectPublicKeyInfo DER.
    pub const KEYHASH: u16 = 0x01;
    /// The full public key (SubjectPublicKeyInfo DER).
    pub const PUBKEY: u16 = 0x02;
    /// SHA-256 of header, body and protected TLVs.
    pub const SHA256: u16 = 0x10;
    /// SHA-384 of the same.
    pub const SHA384: u16 = 0x11;
    /// SHA-512 of the same.
    pub const SHA512: u16 = 0x12;
    /// Ed25519 signature.
    pub const ED25519: u16 = 0x24;
    /// The signature covers the whole region, not its hash.
    pub const SIG_PURE: u16 = 0x25;
    /// Security counter (u32).
    pub const SEC_CNT: u16 = 0x50;

    /// A readable name for a TLV type.
    pub fn name(t: u16) -> &'static str {
        match t {
            KEYHASH => "KEYHASH",
            PUBKEY => "PUBKEY",
            SHA256 => "SHA256",
            SHA384 => "SHA384",
            SHA512 => "SHA512",
            0x20 => "RSA2048",
            0x22 => "ECDSASIG",
            0x23 => "RSA3072",
            ED25519 => "ED25519",
            SIG_PURE => "SIG_PURE",
            0x30 => "ENCRSA2048",
            0x31 => "ENCKW",
            0x32 => "ENCEC256",
            0x33 => "ENCX25519",
            0x34 => "ENCX25519_SHA512",
            0x40 => "DEPENDENCY",
            SEC_CNT => "SEC_CNT",
            0x60 => "BOOT_RECORD",
            0x70 => "DECOMP_SIZE",
            0x71 => "DECOMP_SHA",
            0x72 => "DECOMP_SIGNATURE",
            0x73 => "COMP_DEC_SIZE",
            0x74 => "UUID_VID",
            0x75 => "UUID_CID",
            0xa0..=0xfffe => "VENDOR",
            _ => "UNKNOWN",
        }
    }
}

/// Why an MCUboot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum McubootError {
    /// An option or input cannot produce a valid image.
    #[error("{0}")]
    Usage(String),
    /// The image is not a well-formed MCUboot image.
    #[error("not a valid MCUboot image: {0}")]
    Format(String),
    /// The hash TLV does not match the image.
    #[error(
        "hash mismatch: the image hashes to {actual}, its SHA256 TLV says {expected}; it was changed after signing"
    )]
    HashMismatch {
        /// Hex digest in the TLV.
        expected: String,
        /// Hex digest computed.
        actual: String,
    },
    /// A signature check refused the image.
    #[error(transparent)]
    Signature(#[from] SignError),
}

impl McubootError {
    /// A stable camelCase name, for `--format json`.
    pub fn kind(&self) -> &'static str {
        match self {
            McubootError::Usage(_) => "usage",
            McubootError::Format(_) => "badImage",
            McubootError::HashMismatch { .. } => "hashMismatch",
            McubootError::Signature(s) => s.kind(),
        }
    }
}

/// An image version `major.minor.revision+build` (later parts optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ImageVersion {
    /// 0..=255.
    pub major: u8,
    /// 0..=255.
    pub minor: u8,
    /// 0..=65535.
    pub revision: u16,
    /// 0..=4294967295.
    pub build: u32,
}

impl ImageVersion {
    /// The security counter `--security-counter auto` derives, as imgtool does:
    /// `major << 24 | minor << 16 | revision`.
    pub fn auto_security_counter(&self) -> u32 {
        (u32::from(self.major) << 24) | (u32::from(self.minor) << 16) | u32::from(self.revision)
    }
}

impl FromStr for ImageVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "version `{s}` is not major.minor.revision+build (later parts optional, each a number without leading zeros in range)"
            )
        };
        let (main, build) = match s.split_once('+') {
            Some((m, b)) => (m, Some(b)),
            None => (s, None),
        };
        let num = |t: &str| -> Result<u64, String> {
            let ok = !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t == "0" || !t.starts_with('0'))
                && t.len() <= 10;
            if ok { t.parse::<u64>().map_err(|_| bad()) } else { Err(bad()) }
        };
        let parts: Vec<&str> = main.split('.').collect();
        if parts.is_empty() || parts.len() > 3 || (build.is_some() && parts.len() != 3) {
            return Err(bad());
        }
        let get = |i: usize| parts.get(i).map_or(Ok(0), |p| num(p));
        let (major, minor, revision) = (get(0)?, get(1)?, get(2)?);
        let build = build.map_or(Ok(0), num)?;
        Ok(Self {
            major: u8::try_from(major).map_err(|_| bad())?,
            minor: u8::try_from(minor).map_err(|_| bad())?,
            revision: u16::try_from(revision).map_err(|_| bad())?,
            build: u32::try_from(build).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}+{}", self.major, self.minor, self.revision, self.build)
    }
}

impl Serialize for ImageVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The security counter to embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityCounter {
    /// This value.
    Value(u32),
    /// Derived from the version ([`ImageVersion::auto_security_counter`]).
    Auto,
}

/// Options of [`sign`], mirroring `imgtool sign`.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// Image version.
    pub version: ImageVersion,
    /// Header size (at least 32); the body starts here.
    pub header_size: u16,
    /// Prepend `header_size` erased bytes instead of requiring the input to start with zeros.
    pub pad_header: bool,
    /// Slot size; 0 means unchecked.
    pub slot_size: u32,
    /// Pad to the slot size and write the trailer's boot magic.
    pub pad: bool,
    /// With `pad`: mark the image confirmed (image_ok = 1).
    pub confirm: bool,
    /// Security counter TLV, if any.
    pub security_counter: Option<SecurityCounter>,
    /// Flash write alignment: 1, 2, 4 or 8.
    pub align: u8,
    /// Value of erased flash.
    pub erased_val: u8,
    /// Sectors MCUboot's swap status may track (imgtool's default 128).
    pub max_sectors: u32,
    /// Embed the full public key (PUBKEY) instead of its hash (KEYHASH).
    pub full_public_key: bool,
}

impl Default for SignOptions {
    fn default() -> Self {
        Self {
            version: ImageVersion::default(),
            header_size: 32,
            pad_header: false,
            slot_size: 0,
            pad: false,
            confirm: false,
            security_counter: None,
            align: 1,
            erased_val: 0xff,
            max_sectors: 128,
            full_public_key: false,
        }
    }
}

/// Size of the swap-mode trailer at the end of a slot (no encryption), as imgtool computes it.
pub fn trailer_size(align: u8, max_sectors: u32) -> u32 {
    let max_align = u32::from(align).max(8);
    let magic_aligned = 16u32.div_ceil(max_align) * max_align;
    max_sectors * 3 * u32::from(align) + max_align * 4 + magic_aligned
}

fn push_tlv(area: &mut Vec<u8>, kind: u16, value: &[u8]) {
    area.extend_from_slice(&kind.to_le_bytes());
    area.extend_from_slice(&(value.len() as u16).to_le_bytes());
    area.extend_from_slice(value);
}

fn tlv_area(magic: u16, body: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + body.len());
    a.extend_from_slice(&magic.to_le_bytes());
    a.extend_from_slice(&((4 + body.len()) as u16).to_le_bytes());
    a.extend_from_slice(body);
    a
}

/// Builds a signed MCUboot image from a raw application binary.
pub fn sign(
    input: &[u8],
    opts: &SignOptions,
    signer: &dyn Signer,
) -> Result<Vec<u8>, McubootError> {
    let usage = |m: String| McubootError::Usage(m);
    if usize::from(opts.header_size) < HEADER_LEN {
        return Err(usage(format!(
            "header size {:#x} is below the 32-byte header",
            opts.header_size
        )));
    }
    if ![1, 2, 4, 8].contains(&opts.align) {
        return Err(usage(format!("alignment {} is not 1, 2, 4 or 8", opts.align)));
    }
    let hs = usize::from(opts.header_size);
    let mut img = Vec::with_capacity(hs + input.len() + 256);
    if opts.pad_header {
        img.resize(hs, opts.erased_val);
        img.extend_from_slice(input);
    } else {
        if input.len() < hs || input[..hs].iter().any(|b| *b != 0) {
            return Err(usage(format!(
                "the image does not start with {hs:#x} zero bytes for the header; pass --pad-header to prepend them"
            )));
        }
        img.extend_from_slice(input);
    }
    let image_size = u32::try_from(img.len() - hs)
        .map_err(|_| usage("the image is larger than 4 GiB".into()))?;

    let mut prot = Vec::new();
    if let Some(sc) = opts.security_counter {
        let v = match sc {
            SecurityCounter::Value(v) => v,
            SecurityCounter::Auto => opts.version.auto_security_counter(),
        };
        push_tlv(&mut prot, tlv::SEC_CNT, &v.to_le_bytes());
    }
    let prot = if prot.is_empty() { Vec::new() } else { tlv_area(TLV_PROT_INFO_MAGIC, &prot) };

    let v = &opts.version;
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
    // load address 0, flags 0: an image executed in place from its slot.
    h[8..10].copy_from_slice(&opts.header_size.to_le_bytes());
    h[10..12].copy_from_slice(&(prot.len() as u16).to_le_bytes());
    h[12..16].copy_from_slice(&image_size.to_le_bytes());
    h[20] = v.major;
    h[21] = v.minor;
    h[22..24].copy_from_slice(&v.revision.to_le_bytes());
    h[24..28].copy_from_slice(&v.build.to_le_bytes());
    img[..HEADER_LEN].copy_from_slice(&h);
    img.extend_from_slice(&prot);

    let digest = Sha256::digest(&img);
    let public = signer.public_key();
    let sig = signer.sign(&Message::raw(digest.as_bytes()))?;
    let mut tlvs = Vec::new();
    push_tlv(&mut tlvs, tlv::SHA256, digest.as_bytes());
    if opts.full_public_key {
        push_tlv(&mut tlvs, tlv::PUBKEY, public.spki_der());
    } else {
        push_tlv(&mut tlvs, tlv::KEYHASH, public.id().as_bytes());
    }
    push_tlv(&mut tlvs, tlv::ED25519, &sig.to_bytes());
    img.extend_from_slice(&tlv_area(TLV_INFO_MAGIC, &tlvs));

    if opts.slot_size > 0 {
        let trailer = trailer_size(opts.align, opts.max_sectors) as usize;
        if img.len() + trailer > opts.slot_size as usize {
            return Err(usage(format!(
                "image size ({:#x}) + trailer ({trailer:#x}) exceeds the slot size {:#x}",
                img.len(),
                opts.slot_size
            )));
        }
        if opts.pad {
            let slot = opts.slot_size as usize;
            img.resize(slot - BOOT_MAGIC.len(), opts.erased_val);
            img.extend_from_slice(&BOOT_MAGIC);
            if opts.confirm {
                // image_ok sits one max-align unit before the (aligned) magic.
                let max_align = usize::from(opts.align).max(8);
                let magic_aligned = 16usize.div_ceil(max_align) * max_align;
                img[slot - magic_aligned - max_align] = 0x01;
            }
        }
    } else if opts.pad {
        return Err(usage("--pad needs --slot-size".into()));
    }
    Ok(img)
}

/// One TLV found in an image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tlv {
    /// `protected` or `unprotected`.
    pub area: &'static str,
    /// Numeric type.
    #[serde(rename = "type")]
    pub kind: u16,
    /// Readable type name.
    pub name: &'static str,
    /// Offset of the value in the file.
    pub offset: usize,
    /// Value length.
    pub length: usize,
    /// The value in hex.
    pub value: String,
}

/// A parsed MCUboot image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    /// Load address (0 for execute-in-place).
    pub load_addr: u32,
    /// Header size.
    pub header_size: u16,
    /// Protected TLV area size.
    pub protected_tlv_size: u16,
    /// Body size.
    pub image_size: u32,
    /// Header flags.
    pub flags: u32,
    /// Version.
    pub version: ImageVersion,
    /// Security counter TLV value.
    pub security_counter: Option<u32>,
    /// Every TLV, protected first.
    pub tlvs: Vec<Tlv>,
    /// Bytes covered by the hash: header, body, protected TLVs.
    pub hashed_len: usize,
    /// End of the TLV area.
    pub tlv_end: usize,
    /// The key the image names as an otaforge key id (a SHA-256 KEYHASH, or the hash of
    /// PUBKEY).
    pub key_id: Option<String>,
    /// The KEYHASH TLV in hex, whatever its hash (SHA-512 in imgtool's pure mode).
    pub key_hash: Option<String>,
    /// The hash TLV (SHA256, SHA384 or SHA512) matches the image.
    pub hash_valid: Option<bool>,
    /// Bytes after the TLV area (padding and trailer).
    pub trailing_bytes: usize,
    /// The last 16 bytes are the boot magic (a padded image).
    pub boot_magic: bool,
}

/// The digest a hash TLV of type `kind` should hold for `region`.
fn region_hash(kind: u16, region: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    match kind {
        tlv::SHA384 => sha2::Sha384::digest(region).to_vec(),
        tlv::SHA512 => sha2::Sha512::digest(region).to_vec(),
        _ => sha2::Sha256::digest(region).to_vec(),
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_area(
    b: &[u8],
    at: usize,
    magic: u16,
    area: &'static str,
    out: &mut Vec<Tlv>,
) -> Result<usize, McubootError> {
    let fmt = |m: String| McubootError::Format(m);
    if at + 4 > b.len() {
        return Err(fmt(format!("the {area} TLV area at {at:#x} is past the end of the file")));
    }
    let got = u16_at(b, at);
    if got != magic {
        return Err(fmt(format!(
            "expected the {area} TLV magic {magic:#06x} at {at:#x}, found {got:#06x}"
        )));
    }
    let total = usize::from(u16_at(b, at + 2));
    let end = at + total;
    if total < 4 || end > b.len() {
        return Err(fmt(format!(
            "the {area} TLV area at {at:#x} claims {total} bytes, past the end of the file"
        )));
    }
    let mut o = at + 4;
    while o < end {
        if o + 4 > end {
            return Err(fmt(format!("a TLV header at {o:#x} crosses the end of the {area} area")));
        }
        let kind = u16_at(b, o);
        let len = usize::from(u16_at(b, o + 2));
        if o + 4 + len > end {
            return Err(fmt(format!(
                "TLV {} at {o:#x} ({len} bytes) crosses the end of the {area} area",
                tlv::name(kind)
            )));
        }
        out.push(Tlv {
            area,
            kind,
            name: tlv::name(kind),
            offset: o + 4,
            length: len,
            value: hex(&b[o + 4..o + 4 + len]),
        });
        o += 4 + len;
    }
    Ok(end)
}

/// Parses an image's header and TLV areas and checks its hash TLV. Works for any signature type;
/// only the structure is checked here.
pub fn parse(b: &[u8]) -> Result<ImageInfo, McubootError> {
    let fmt = |m: String| McubootError::Format(m);
    if b.len() < HEADER_LEN {
        return Err(fmt(format!("{} bytes is shorter than the 32-byte header", b.len())));
    }
    let magic = u32_at(b, 0);
    if magic != IMAGE_MAGIC {
        return Err(fmt(format!("header magic is {magic:#010x}, expected {IMAGE_MAGIC:#010x}")));
    }
    let header_size = u16_at(b, 8);
    let protected_tlv_size = u16_at(b, 10);
    let image_size = u32_at(b, 12);
    if usize::from(header_size) < HEADER_LEN {
        return Err(fmt(format!("header size {header_size:#x} is below 32")));
    }
    let body_end = usize::from(header_size) + image_size as usize;
    if body_end > b.len() {
        return Err(fmt(format!(
            "header size + image size ({body_end:#x}) is past the end of the file ({:#x})",
            b.len()
        )));
    }
    let mut tlvs = Vec::new();
    let mut at = body_end;
    if protected_tlv_size > 0 {
        let end = read_area(b, at, TLV_PROT_INFO_MAGIC, "protected", &mut tlvs)?;
        if end - at != usize::from(protected_tlv_size) {
            return Err(fmt(format!(
                "the header says the protected TLV area is {protected_tlv_size} bytes, the area says {}",
                end - at
            )));
        }
        at = end;
    }
    let hashed_len = at;
    let tlv_end = read_area(b, at, TLV_INFO_MAGIC, "unprotected", &mut tlvs)?;
    let value = |t: &Tlv| &b[t.offset..t.offset + t.length];
    let security_counter = tlvs
        .iter()
        .find(|t| t.kind == tlv::SEC_CNT && t.area == "protected" && t.length == 4)
        .map(|t| u32_at(b, t.offset));
    let key_id = tlvs.iter().find_map(|t| match t.kind {
        tlv::KEYHASH if t.length == 32 => Some(hex(value(t))),
        tlv::PUBKEY => Some(Sha256::digest(value(t)).to_hex()),
        _ => None,
    });
    let key_hash = tlvs.iter().find(|t| t.kind == tlv::KEYHASH).map(|t| t.value.clone());
    let hash_valid = tlvs
        .iter()
        .find(|t| {
            matches!(t.kind, tlv::SHA256 | tlv::SHA384 | tlv::SHA512) && t.area == "unprotected"
        })
        .map(|t| value(t) == region_hash(t.kind, &b[..hashed_len]).as_slice());
    Ok(ImageInfo {
        load_addr: u32_at(b, 4),
        header_size,
        protected_tlv_size,
        image_size,
        flags: u32_at(b, 16),
        version: ImageVersion {
            major: b[20],
            minor: b[21],
            revision: u16_at(b, 22),
            build: u32_at(b, 24),
        },
        security_counter,
        tlvs,
        hashed_len,
        tlv_end,
        key_id,
        key_hash,
        hash_valid,
        trailing_bytes: b.len() - tlv_end,
        boot_magic: b.len() >= tlv_end + 16 && b[b.len() - 16..] == BOOT_MAGIC,
    })
}

/// What [`verify`] established.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The parsed image.
    pub info: ImageInfo,
    /// The trusted key whose signature verified.
    pub key_id: KeyId,
}

/// Checks an image: structure, SHA-256 TLV, and an Ed25519 signature by one of `keys`.
pub fn verify(b: &[u8], keys: &TrustedKeys) -> Result<Verified, McubootError> {
    let info = parse(b)?;
    let what = "the MCUboot image";
    // With SIG_PURE the signature covers the region itself and there is no hash TLV.
    let pure = info.tlvs.iter().any(|t| t.kind == tlv::SIG_PURE);
    match info.hash_valid {
        Some(true) => {}
        Some(false) => {
            let t = info
                .tlvs
                .iter()
                .find(|t| matches!(t.kind, tlv::SHA256 | tlv::SHA384 | tlv::SHA512))
                .map(|t| (t.value.clone(), t.kind));
            let (expected, kind) = t.unwrap_or_default();
            return Err(McubootError::HashMismatch {
                expected,
                actual: hex(&region_hash(kind, &b[..info.hashed_len])),
            });
        }
        None if pure => {}
        None => return Err(McubootError::Format("the image has no SHA256/384/512 TLV".into())),
    }
    let sigs: Vec<&Tlv> =
        info.tlvs.iter().filter(|t| t.kind == tlv::ED25519 && t.area == "unprotected").collect();
    if sigs.is_empty() {
        let other: Vec<&str> = info
            .tlvs
            .iter()
            .filter(|t| matches!(t.kind, 0x20 | 0x22 | 0x23))
            .map(|t| t.name)
            .collect();
        return Err(SignError::SignatureMissing {
            what: if other.is_empty() {
                format!("{what} has no ED25519 signature TLV")
            } else {
                format!(
                    "{what} has no ED25519 signature TLV (it carries {}; otaforge checks Ed25519)",
                    other.join(", ")
                )
            },
        }
        .into());
    }
    if keys.is_empty() {
        return Err(SignError::NoKeyConfigured { what: what.into() }.into());
    }
    let key: &PublicKey = match (&info.key_id, &info.key_hash) {
        (Some(kid), _) => keys.require(kid)?,
        // A SHA-512 key hash (imgtool's pure mode): find the trusted key it hashes.
        (None, Some(h)) => {
            use sha2::Digest as _;
            keys.iter().find(|k| hex(&sha2::Sha512::digest(k.spki_der())) == *h).ok_or_else(
                || SignError::UnknownKey { kid: format!("sha512:{h}"), trusted: keys.ids() },
            )?
        }
        (None, None) => {
            return Err(McubootError::Format(
                "the image names no key (no KEYHASH or PUBKEY TLV)".into(),
            ));
        }
    };
    // imgtool signs the SHA-256 digest, or with SIG_PURE the region itself.
    let digest = Sha256::digest(&b[..info.hashed_len]);
    let message = if pure { &b[..info.hashed_len] } else { digest.as_bytes().as_slice() };
    for t in sigs {
        let Ok(raw) = <[u8; 64]>::try_from(&b[t.offset..t.offset + t.length]) else { continue };
        if key.verify(&Message::raw(message), &crate::sign::Signature::from_bytes(&raw)) {
            return Ok(Verified { key_id: key.id(), info });
        }
    }
    Err(SignError::BadSignature { what: what.into(), kid: key.id() }.into())
}

impl crate::error::ErrorCode for McubootError {
    fn code(&self) -> String {
        self.kind().into()
    }
}

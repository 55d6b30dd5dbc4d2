//! Byte counts as people write them: `4096`, `0x1000`, `4K`, `4KiB`, `8MiB`, `1G`. Multiples
//! are binary and suffixes may be in any case (`k`, `KiB`, `mib`); `K`/`M`/`G` mean KiB, MiB and
//! GiB, as in flash and block sizes. One rule for every option that takes a size
//! (`upload --block-size`, `delta create --segment-size` and `--memory-size`).

use std::ops::RangeInclusive;

/// A size that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error("`{0}` is not a size (e.g. 4096, 0x1000, 4K, 8MiB, 1G)")]
    NotASize(String),
    /// More than 2^64 - 1 bytes.
    #[error("`{0}` is too large")]
    TooLarge(String),
    /// Outside what the option allows.
    #[error("`{text}`: must be {} to {}", human(*.min), human(*.max))]
    OutOfRange {
        /// What was given.
        text: String,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
}

/// The units, longest spelling first so `KiB` is not read as `K` followed by `iB`.
const UNITS: [(&str, u64); 6] = [
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
];

/// Reads a byte count: decimal or `0x` hex, then an optional unit (see the module).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let (digits, mul) = UNITS
        .iter()
        .find_map(|(unit, mul)| lower.strip_suffix(unit).map(|d| (d.trim_end(), *mul)))
        .unwrap_or((lower.as_str(), 1));
    let not = || SizeError::NotASize(text.to_owned());
    let n = match digits.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).map_err(|_| SizeError::TooLarge(text.to_owned()))?
        }
        Some(_) => return Err(not()),
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse().map_err(|_| SizeError::TooLarge(text.to_owned()))?
        }
        None => return Err(not()),
    };
    n.checked_mul(mul).ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}

/// [`parse_size`], refusing a size outside `range`.
pub fn parse_size_within(text: &str, range: RangeInclusive<u64>) -> Result<u64, SizeError> {
    let n = parse_size(text)?;
    if !range.contains(&n) {
        return Err(SizeError::OutOfRange {
            text: text.to_owned(),
            min: *range.start(),
            max: *range.end(),
        });
    }
    Ok(n)
}

/// A size in the largest binary unit that divides it (`64KiB`, `4000MiB`).
fn human(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

impl crate::error::ErrorCode for SizeError {
    fn code(&self) -> String {
        "invalidValue".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_one_way() {
        for (text, want) in [
            ("4096", 4096),
            ("0x1000", 4096),
            ("0X1000", 4096),
            ("4K", 4096),
            ("4k", 4096),
            ("4KiB", 4096),
            ("4 kib", 4096),
            ("8MiB", 8 << 20),
            ("8M", 8 << 20),
            ("0x2M", 2 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            (" 12 ", 12),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "K", "0x", "0xZ", "-1", "1.5M", "1T", "1 K B", "+4"] {
            assert_eq!(parse_size(bad), Err(SizeError::NotASize(bad.into())), "{bad}");
        }
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(SizeError::TooLarge("99999999999999999999".into()))
        );
        assert_eq!(parse_size("17179869184G"), Err(SizeError::TooLarge("17179869184G".into())));
        let e = parse_size_within("4K", (64 << 10)..=(4000 << 20)).unwrap_err();
        assert_eq!(e.to_string(), "`4K`: must be 64KiB to 4000MiB");
    }
}

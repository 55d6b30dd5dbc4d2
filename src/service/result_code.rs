//! The Device Update agent's result codes, decoded for people: an `extendedResultCode` is a
//! packed 32-bit value — facility (4 bits), component (8 bits), code (20 bits), as
//! `MAKE_ADUC_EXTENDEDRESULTCODE` in the agent's `src/inc/aduc/result.h` makes it — that users
//! otherwise decode by hand from that header.
//!
//! The facts come from two tables compiled in:
//! - `result_codes/adu.tsv`: every facility, component and code `result.h` defines, generated
//!   from the header by `cargo xtask result-codes` (which `cargo xtask ci` runs with `--check`);
//! - `result_codes/extra.tsv`: what decoding needs beside the header, each with its source:
//!   Linux errno names, Delivery Optimization's results as the agent reports them (facility
//!   0xD), `JWSResult`, the parameterised codes (a script's or swupdate's exit code), the
//!   `resultCode` values, and a meaning in words for codes people meet.
//!
//! [`decode`] takes one code; [`parse_codes`] reads what agents report: an integer (agents
//! before 1.1, and the REST API's `extendedResultCode`, signed) or a string of comma-separated
//! `%08X` values (agents from 1.1, `extendedResultCodes`: the first is the result's, the others
//! are codes soft failures added on the way, such as a delta that fell back to the full file).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Serialize;

const ADU: &str = include_str!("result_codes/adu.tsv");
const EXTRA: &str = include_str!("result_codes/extra.tsv");

/// One row of a table.
#[derive(Debug, Clone)]
struct Row {
    kind: String,
    value: i64,
    name: String,
    doc: String,
}

fn rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("kind\t") && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            let kind = f.next()?.to_owned();
            let value = f.next()?;
            let value = match value.strip_prefix("0x") {
                Some(hex) => i64::from_str_radix(hex, 16).ok()?,
                None => value.parse().ok()?,
            };
            Some(Row {
                kind,
                value,
                name: f.next()?.to_owned(),
                doc: f.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// The tables, indexed.
struct Tables {
    /// `(kind, value)` → row, for every kind.
    by_value: HashMap<(String, i64), Row>,
    /// Code name → meaning in words.
    meanings: HashMap<String, String>,
    /// The parameterised code bases.
    ranges: Vec<Row>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let all: Vec<Row> = rows(ADU).into_iter().chain(rows(EXTRA)).collect();
        let meanings = all
            .iter()
            .filter(|r| r.kind == "meaning")
            .map(|r| (r.name.clone(), r.doc.clone()))
            .collect();
        let ranges = all.iter().filter(|r| r.kind == "range").cloned().collect();
        let by_value = all.into_iter().map(|r| ((r.kind.clone(), r.value), r)).collect();
        Tables { by_value, meanings, ranges }
    })
}

fn row(kind: &str, value: i64) -> Option<&'static Row> {
    tables().by_value.get(&(kind.to_owned(), value))
}

/// A facility or component: its number and its name in `result.h`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// The number.
    pub code: u32,
    /// Its name (`ADUC_FACILITY_…`, `ADUC_COMPONENT_…`, `ERRNO`); `None` when `result.h`
    /// defines none for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An extended result code, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decoded {
    /// The code as the agent writes it in hex (`%08X`).
    pub hex: String,
    /// Facility: bits 31-28.
    pub facility: Part,
    /// Component: bits 27-20 (Delivery Optimization codes and legacy errnos have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<Part>,
    /// The name of the code (`result.h`, an errno, a Delivery Optimization or JWS result, or a
    /// parameterised code with its parameter: `…_EXITCODE(1)`); `None` when nothing names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it means, in words, as far as the sources say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
}

impl std::fmt::Display for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{}", self.hex)?;
        match (&self.name, &self.meaning) {
            (Some(n), Some(m)) => write!(f, " {n}: {m}"),
            (Some(n), None) => write!(f, " {n}"),
            (None, Some(m)) => write!(f, " {m}"),
            (None, None) => Ok(()),
        }
    }
}

/// The name and meaning of an errno value (Linux).
fn errno(n: u32) -> (Option<String>, Option<String>) {
    match row("errno", i64::from(n)) {
        Some(r) => (Some(r.name.clone()), Some(r.doc.clone())),
        None => (None, None),
    }
}

/// Decodes one extended result code.
pub fn decode(code: u32) -> Decoded {
    let f = code >> 28;
    let c = (code >> 20) & 0xFF;
    let facility =
        Part { code: f, name: row("facility", i64::from(f << 28)).map(|r| r.name.clone()) };
    let component_row = row("component", i64::from(code & 0xFFF0_0000));
    let component = Some(Part { code: c, name: component_row.map(|r| r.name.clone()) });
    let mut d =
        Decoded { hex: format!("{code:08X}"), facility, component, name: None, meaning: None };
    let exact = row("code", i64::from(code));
    if let Some(r) = exact {
        d.name = Some(r.name.clone());
        d.meaning = tables().meanings.get(&r.name).cloned();
    }
    match (f, c) {
        // Errno: facility 0, component 0, the number itself (agents from 0.8).
        (0, 0) => {
            let (name, meaning) = errno(code & 0xFFFFF);
            d.name = d.name.or(name);
            d.meaning = meaning;
        }
        // Errno as agents before 0.8 reported it (the facility was then ADUC_FACILITY_ERRNO).
        (0xE, _) => {
            let (name, meaning) = errno(code & 0x0FFF_FFFF);
            d.component = None;
            d.name = name;
            d.meaning = meaning.map(|m| format!("{m} (errno, as agents before 0.8 report it)"));
        }
        // Delivery Optimization: its HRESULT's low 28 bits, no component.
        (0xD, _) => {
            d.component = None;
            if let Some(r) = row("do", i64::from(code)) {
                d.name = Some(r.name.clone());
                d.meaning = Some(r.doc.clone()).filter(|m| !m.is_empty());
            } else if code & 0x0FFF_FFFF < 0x1000 {
                let (name, meaning) = errno(code & 0x0FFF_FFFF);
                d.name = name.map(|n| format!("{n} (from Delivery Optimization)"));
                d.meaning = meaning;
            }
        }
        // JWSResult of the update manifest's signature check.
        (0xA, 2) => {
            if let Some(r) = row("jws", i64::from(code)) {
                d.name = Some(r.name.clone());
                d.meaning = Some(format!("update manifest signature: {}", r.doc));
            }
        }
        // The delta processor's own error number.
        (9, 10) if exact.is_none() => {
            d.meaning = Some(format!("delta processor error {}", code & 0xFFFFF));
        }
        _ => {}
    }
    if d.name.is_none() {
        decode_parameterised(code, &mut d);
    }
    if d.meaning.is_none() && d.name.is_some() {
        // The component's doc comment says at least where it came from.
        d.meaning = component_row.map(|r| r.doc.clone()).filter(|m| !m.is_empty());
    }
    d
}

/// A code one of `result.h`'s macros makes from a base and a parameter, or one of the
/// extension codes (0-7) every component reserves.
fn decode_parameterised(code: u32, d: &mut Decoded) {
    for r in &tables().ranges {
        let base = r.value as u32;
        if (base..base + 0x1000).contains(&code) {
            let x = code - base;
            d.name = Some(format!("{}({x})", r.name));
            d.meaning = Some(r.doc.replace("the code in the low 12 bits", &x.to_string()));
            return;
        }
    }
    const EXTENSION: [&str; 8] = [
        "ADUC_ERC_EXTENSION_ERROR_NONE",
        "ADUC_ERC_EXTENSION_CREATE_FAILURE_INVALID_ARG",
        "ADUC_ERC_EXTENSION_CREATE_FAILURE_UNKNOWN",
        "ADUC_ERC_EXTENSION_CREATE_FAILURE_NOT_FOUND",
        "ADUC_ERC_EXTENSION_CREATE_FAILURE_VALIDATE",
        "ADUC_ERC_EXTENSION_CREATE_FAILURE_LOAD",
        "ADUC_ERC_EXTENSION_FAILURE_REQUIRED_FUNCTION_NOTIMPL",
        "ADUC_ERC_EXTENSION_CREATE_FAILURE_CREATE",
    ];
    if let Some(name) = EXTENSION.get((code & 0xFFFFF) as usize)
        && d.component.as_ref().is_some_and(|c| c.name.is_some())
    {
        d.name = Some((*name).to_owned());
    }
}

/// The name and meaning of a `resultCode` (`ADUC_Result_…`): > 0 is success.
pub fn result_name(result_code: i64) -> Option<(&'static str, &'static str)> {
    row("result", result_code).map(|r| (r.name.as_str(), r.doc.as_str()))
}

/// Why a reported code could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an extended result code (an integer, or comma-separated %08X hex values)")]
pub struct BadCode(pub String);

/// The codes of what an agent reported: an integer (signed or not) or a string of
/// comma-separated hex values with or without `0x` (`"D0D02002"`, `"00000000,90A07539"`).
pub fn parse_codes(reported: &serde_json::Value) -> Result<Vec<u32>, BadCode> {
    use serde_json::Value;
    let bad = || BadCode(reported.to_string());
    match reported {
        Value::Number(n) => {
            let v = n.as_i64().ok_or_else(bad)?;
            // Signed int32 (as agents and the REST API write it) or unsigned.
            u32::try_from(v)
                .or_else(|_| i32::try_from(v).map(|s| s as u32))
                .map(|c| vec![c])
                .map_err(|_| bad())
        }
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let hex = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")).unwrap_or(p);
                u32::from_str_radix(hex, 16).map_err(|_| bad())
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// The signed value the REST API's `extendedResultCode` (an int32) holds for a code.
pub fn as_signed(code: u32) -> i64 {
    i64::from(code as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_every_code_consistently() {
        let codes: Vec<&Row> = tables().by_value.values().filter(|r| r.kind == "code").collect();
        // result.h of agent 1.1.0 defines 286 codes, 16 facilities and 31 components; `cargo
        // xtask result-codes --check` compares the table with the header itself.
        assert_eq!(codes.len(), 286);
        let count = |k: &str| tables().by_value.values().filter(|r| r.kind == k).count();
        assert_eq!((count("facility"), count("component")), (16, 31));
        for r in codes {
            let v = r.value as u32;
            let d = decode(v);
            assert_eq!(d.name.as_deref(), Some(r.name.as_str()), "{:08X}", v);
            assert!(d.facility.name.is_some(), "{} names no facility", r.name);
            assert!(d.component.as_ref().and_then(|c| c.name.as_ref()).is_some(), "{}", r.name);
        }
        for (name, _) in tables().meanings.iter() {
            assert!(
                tables().by_value.values().any(|r| r.kind == "code" && r.name == *name),
                "{name}"
            );
        }
    }

    #[test]
    fn errnos_delivery_optimization_and_parameterised_codes_decode() {
        // EINVAL as ADUC_ERC_INVAL (facility 0, component 0) and as a plain errno.
        let d = decode(0x16);
        assert_eq!(d.name.as_deref(), Some("ADUC_ERC_INVAL"));
        assert_eq!(d.meaning.as_deref(), Some("Invalid argument"));
        let d = decode(0x6F);
        assert_eq!(
            (d.name.as_deref(), d.meaning.as_deref()),
            (Some("ECONNREFUSED"), Some("Connection refused"))
        );
        // The legacy errno facility: 131 is ENOTRECOVERABLE on Linux (the docs call it ENOLCK).
        assert_eq!(decode(0xE000_0083).name.as_deref(), Some("ENOTRECOVERABLE"));
        let d = decode(0xD0D0_2002);
        assert_eq!(d.name.as_deref(), Some("DO_E_DOWNLOAD_NO_PROGRESS"));
        assert_eq!(d.facility.name.as_deref(), Some("ADUC_FACILITY_DELIVERY_OPTIMIZATION"));
        assert!(d.component.is_none());
        assert_eq!(decode(0xD000_006E).name.as_deref(), Some("std::errc::timed_out (ETIMEDOUT)"));
        assert_eq!(
            decode(0xD000_0071).name.as_deref(),
            Some("EHOSTUNREACH (from Delivery Optimization)")
        );
        let d = decode(0x3050_1001);
        assert_eq!(
            d.name.as_deref(),
            Some("ADUC_ERC_SCRIPT_HANDLER_CHILD_PROCESS_FAILURE_EXITCODE(1)")
        );
        assert_eq!(d.meaning.as_deref(), Some("the update's script exited with 1"));
        assert_eq!(decode(0xA020_0004).name.as_deref(), Some("JWSResult_InvalidSignature"));
        assert_eq!(decode(0x90A0_7539).meaning.as_deref(), Some("delta processor error 30009"));
        let d = decode(0x0010_0003);
        assert_eq!(d.name.as_deref(), Some("ADUC_ERC_VALIDATION_FILE_HASH_INVALID_HASH"));
        assert!(d.meaning.as_deref().is_some_and(|m| m.contains("SHA-256")));
        assert_eq!(
            decode(0x0010_0003).to_string(),
            "0x00100003 ADUC_ERC_VALIDATION_FILE_HASH_INVALID_HASH: a downloaded file's SHA-256 is not the one the update manifest gives (content changed after import, or a corrupt download)"
        );
        // Nothing names it: facility and component only.
        let d = decode(0x3020_0999);
        assert_eq!(
            (d.name, d.component.unwrap().name.as_deref()),
            (None, Some("ADUC_CONTENT_HANDLER_APT"))
        );
        assert_eq!(result_name(700).map(|r| r.0), Some("ADUC_Result_Apply_Success"));
    }

    #[test]
    fn reported_codes_parse_in_every_shape_agents_write() {
        use serde_json::json;
        assert_eq!(parse_codes(&json!(-791666686)).unwrap(), [0xD0D0_2002]);
        assert_eq!(parse_codes(&json!(3503300610u32)).unwrap(), [0xD0D0_2002]);
        assert_eq!(parse_codes(&json!("D0D02002")).unwrap(), [0xD0D0_2002]);
        assert_eq!(parse_codes(&json!("00000000,90A07539")).unwrap(), [0, 0x90A0_7539]);
        assert_eq!(parse_codes(&json!("0x30501001")).unwrap(), [0x3050_1001]);
        assert!(parse_codes(&json!("xyz")).is_err());
        assert!(parse_codes(&json!(1u64 << 40)).is_err());
        assert_eq!(as_signed(0xD0D0_2002), -791666686);
    }
}

//! `cargo xtask result-codes [--check] [--header FILE]`: regenerates
//! `src/service/result_codes/adu.tsv`, the Device Update agent's extended result codes, from
//! the agent's own `src/inc/aduc/result.h` (Azure/iot-hub-device-update), and with `--check`
//! fails when the committed table differs from what the header defines.
//!
//! The header is the pinned commit's ([`COMMIT`], the same file as tag 1.1.0), fetched with
//! curl from GitHub and checked against [`HEADER_SHA256`]; `--header FILE` reads another copy
//! (a newer agent: regenerate, then move the pins). Only facts are taken from it: each
//! facility's, component's and code's name, number and doc comment.
//!
//! Why an xtask and not a `cargo test`: the plain test suite must pass on a fresh clone without
//! the network, so the unit tests of `service::result_code` check the committed table's
//! consistency (every code's bits name a facility and component of the table, errno and
//! Delivery Optimization decoding), and this check, which needs the header, runs in `cargo
//! xtask ci` (and says so when the header cannot be fetched, as the advisory check does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The agent commit the table comes from (HEAD of 2024; `result.h` is unchanged since 1.1.0).
pub(crate) const COMMIT: &str = "b96895bb37409a393895dd4d7834eb6793244050";
/// SHA-256 of `src/inc/aduc/result.h` at [`COMMIT`].
const HEADER_SHA256: &str = "4d31697138865f83a12d510754dfcce369a9d52723aa61fca262f5a3943129fb";
/// The table, relative to the workspace root.
const TABLE: &str = "src/service/result_codes/adu.tsv";

/// Whether the check ran.
pub(crate) enum Checked {
    /// The committed table holds exactly what the header defines.
    Yes,
    /// The header could not be fetched (no network).
    NotRun(String),
}

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let mut check = false;
    let mut header = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--check" => check = true,
            "--header" => header = Some(PathBuf::from(it.next().context("--header FILE")?)),
            other => {
                bail!("unknown argument {other}; usage: result-codes [--check] [--header FILE]")
            }
        }
    }
    let text = match &header {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        None => fetch()?,
    };
    // A copy of the pinned header reads as the pinned one.
    let pinned = sha256_hex(text.as_bytes()) == HEADER_SHA256;
    let table = generate(&text, pinned)?;
    let path = crate::root().join(TABLE);
    if check {
        return compare(&path, &table);
    }
    std::fs::create_dir_all(path.parent().context("table path")?)?;
    std::fs::write(&path, table).with_context(|| format!("write {}", path.display()))?;
    eprintln!("result-codes: wrote {}", path.display());
    Ok(())
}

/// The check `cargo xtask ci` runs.
pub(crate) fn check_in_ci() -> anyhow::Result<Checked> {
    let text = match fetch() {
        Ok(t) => t,
        Err(e) => return Ok(Checked::NotRun(format!("{e:#}"))),
    };
    compare(&crate::root().join(TABLE), &generate(&text, true)?)?;
    Ok(Checked::Yes)
}

fn compare(path: &Path, table: &str) -> anyhow::Result<()> {
    let committed =
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    if committed != table {
        let ours: Vec<&str> = committed.lines().collect();
        let diff: Vec<String> = table
            .lines()
            .filter(|l| !ours.contains(l))
            .take(5)
            .map(|l| format!("  + {l}"))
            .chain(
                committed
                    .lines()
                    .filter(|l| !table.contains(l))
                    .take(5)
                    .map(|l| format!("  - {l}")),
            )
            .collect();
        bail!(
            "{} does not hold exactly what result.h defines:\n{}\nrun `cargo xtask result-codes`",
            path.display(),
            diff.join("\n")
        );
    }
    eprintln!("result-codes: {} holds every code result.h defines", path.display());
    Ok(())
}

/// The pinned header, fetched (curl) into the target dir once and checked against its pin.
fn fetch() -> anyhow::Result<String> {
    let cache = crate::target_dir().join("adu-result-h").join(format!("{COMMIT}.h"));
    if !cache.is_file() {
        std::fs::create_dir_all(cache.parent().context("cache")?)?;
        let url = format!(
            "https://raw.githubusercontent.com/Azure/iot-hub-device-update/{COMMIT}/src/inc/aduc/result.h"
        );
        let tmp = cache.with_extension("part");
        let status = std::process::Command::new("curl")
            .args(["-fsSL", "--max-time", "60", "-o"])
            .arg(&tmp)
            .arg(&url)
            .status()
            .context("run curl")?;
        if !status.success() {
            bail!("cannot fetch {url} (curl {status})");
        }
        std::fs::rename(&tmp, &cache)?;
    }
    let bytes = std::fs::read(&cache)?;
    let got = sha256_hex(&bytes);
    if got != HEADER_SHA256 {
        let _ = std::fs::remove_file(&cache);
        bail!("result.h at {COMMIT} has sha256 {got}, not the pinned {HEADER_SHA256}");
    }
    String::from_utf8(bytes).context("result.h is not UTF-8")
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().map(|mut s| s.write_all(bytes)).transpose()?;
            c.wait_with_output()
        });
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_owned()
    })
    .unwrap_or_default()
}

/// One `//!< NAME : N, doc` enum entry.
fn entry(line: &str) -> Option<(String, u32, String)> {
    let (_, comment) = line.split_once("//!<")?;
    let (name, rest) = comment.split_once(':')?;
    let (num, doc) = rest.split_once(',').unwrap_or((rest, ""));
    Some((name.trim().to_owned(), num.trim().parse().ok()?, doc.trim().to_owned()))
}

/// The table's text from the header's: facilities, components and codes, each a row.
fn generate(header: &str, pinned: bool) -> anyhow::Result<String> {
    let mut facilities: BTreeMap<u32, (String, String)> = BTreeMap::new();
    let mut components: BTreeMap<(u32, u32), (String, String)> = BTreeMap::new();
    // Which enum the lines belong to: the facilities, or one facility's components.
    let mut block: Option<Option<u32>> = None;
    let mut pending: Option<String> = None;
    for line in header.lines() {
        let t = line.trim();
        if t.starts_with("typedef enum tagADUC_Facility") {
            block = Some(None);
            continue;
        }
        if let Some(f) = t
            .strip_prefix("typedef enum tagADUC_FACILITY_")
            .and_then(|r| r.strip_suffix("_Components"))
        {
            let code = facilities
                .iter()
                .find(|(_, (n, _))| n == &format!("ADUC_FACILITY_{f}"))
                .map(|(c, _)| *c);
            block =
                Some(Some(code.with_context(|| format!("components of unknown facility {f}"))?));
            continue;
        }
        if t.starts_with('}') {
            block = None;
            continue;
        }
        let Some(which) = block else { continue };
        // clang-format breaks a long entry after `=`: join it with its next line.
        let joined = match pending.take() {
            Some(p) => format!("{p} {t}"),
            None => t.to_owned(),
        };
        if joined.ends_with('=') {
            pending = Some(joined);
            continue;
        }
        let Some((name, n, doc)) = entry(&joined) else { continue };
        match which {
            None => facilities.insert(n, (name, doc)),
            Some(f) => components.insert((f, n), (name, doc)),
        };
    }
    let codes = codes(header, &components)?;
    if facilities.len() != 16 {
        bail!("result.h defines {} facilities; 16 expected", facilities.len());
    }
    let mut out = String::new();
    out.push_str("# The Device Update agent's extended result codes: every facility, component and code that\n");
    out.push_str("# src/inc/aduc/result.h of Azure/iot-hub-device-update defines (names, numbers and doc comments;\n");
    if pinned {
        out.push_str(&format!(
            "# commit {COMMIT}, the same file as tag 1.1.0, sha256 {HEADER_SHA256}).\n"
        ));
    } else {
        out.push_str("# from a header given with --header).\n");
    }
    out.push_str("# Generated by `cargo xtask result-codes`; `cargo xtask ci` checks it against the header.\n");
    out.push_str("# value: facility << 28 | component << 20 | code, hex. The header has no per-code comments.\n");
    out.push_str("kind\tvalue\tname\tdoc\n");
    for (f, (name, doc)) in &facilities {
        out.push_str(&format!("facility\t0x{:08X}\t{name}\t{doc}\n", f << 28));
    }
    for ((f, c), (name, doc)) in &components {
        out.push_str(&format!("component\t0x{:08X}\t{name}\t{doc}\n", (f << 28) | (c << 20)));
    }
    for (value, name) in &codes {
        out.push_str(&format!("code\t0x{value:08X}\t{name}\t\n"));
    }
    Ok(out)
}

/// Every `@brief NAME, ERC Value: DEC (0xHEX)` with the `#define NAME MAKE_…_FOR_COMPONENT_C(v)`
/// after it, checked against each other and the component enums; by value.
fn codes(
    header: &str,
    components: &BTreeMap<(u32, u32), (String, String)>,
) -> anyhow::Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = header.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix("* @brief ") else { continue };
        let Some((name, value)) = rest.split_once(", ERC Value: ") else { continue };
        let dec: u32 = value
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("{name}: value"))?;
        let at = (i..lines.len().min(i + 4))
            .find(|j| lines[*j].starts_with("#define "))
            .with_context(|| format!("{name}: no #define"))?;
        // A long #define continues on the next line.
        let define = match lines[at].strip_suffix('\\') {
            Some(head) => format!("{head} {}", lines.get(at + 1).unwrap_or(&"").trim()),
            None => lines[at].to_owned(),
        };
        let (defined, maker) = define["#define ".len()..]
            .split_once(' ')
            .map(|(d, m)| (d, m.trim()))
            .with_context(|| format!("{name}: #define"))?;
        let component = maker
            .split("FOR_COMPONENT_")
            .nth(1)
            .and_then(|r| r.split_once('('))
            .with_context(|| format!("{name}: maker"))?;
        let arg: u32 = component
            .1
            .trim_end_matches(')')
            .trim()
            .parse()
            .with_context(|| format!("{name}: argument"))?;
        let (f, c, code) = (dec >> 28, (dec >> 20) & 0xFF, dec & 0xFFFFF);
        let known = components.get(&(f, c)).map(|(n, _)| n.as_str());
        if defined != name || arg != code || known != Some(component.0) {
            bail!(
                "{name}: its comment, #define and component disagree ({defined}, {maker}, {known:?})"
            );
        }
        if out.insert(dec, name.to_owned()).is_some() {
            bail!("{name}: value 0x{dec:08X} defined twice");
        }
    }
    if out.len() < 200 {
        bail!("only {} codes found in result.h; has its format changed?", out.len());
    }
    Ok(out)
}

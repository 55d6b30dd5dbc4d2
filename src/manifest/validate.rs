//! Validation of import manifests v5: every rule of the official JSON schema
//! (SchemaStore `azure-deviceupdate-import-manifest-5.0.json` and its definitions), implemented
//! here, plus the rules the schema misses but the service or the device agent enforce.
//!
//! Validation walks the raw JSON rather than a typed model so that it can report **every**
//! problem of a broken document, each with its JSON path, instead of stopping at the first
//! field serde cannot read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::id::{UpdateId, VERSION_PART_MAX};
use super::model::{ImportManifest, MANIFEST_VERSION};
use crate::finding::{Findings, JsonPath};
use crate::hash::{HashError, Sha256, hash_files};
use crate::reporter::Reporter;

pub use crate::limits::{
    MAX_FILES, MAX_IMPORT_ITEMS, MAX_RELATED_FILES, MAX_STEPS, MAX_TOTAL_BYTES,
};
/// Handlers that fail on the device when `installedCriteria` is missing.
pub const HANDLERS_REQUIRING_CRITERIA: [&str; 3] =
    ["microsoft/apt:1", "microsoft/swupdate:1", "microsoft/swupdate:2"];
/// Related-file property naming the source file's hash algorithm.
pub const SOURCE_HASH_ALGORITHM: &str = "microsoft.sourceFileHashAlgorithm";
/// Related-file property carrying the source file's base64 SHA-256.
pub const SOURCE_HASH: &str = "microsoft.sourceFileHash";

const TOP_LEVEL_KEYS: [&str; 9] = [
    "$schema",
    "updateId",
    "description",
    "isDeployable",
    "compatibility",
    "instructions",
    "files",
    "manifestVersion",
    "createdDateTime",
];

/// Parses manifest bytes as JSON; a syntax error becomes a finding at `$` with line and column.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Findings> {
    serde_json::from_slice(bytes).map_err(|e| {
        let mut f = Findings::new();
        f.error_hint(
            "json-syntax",
            &JsonPath::root(),
            format!("not valid JSON: {e}"),
            "fix the syntax at the line and column given; a trailing comma is a common cause",
        );
        f
    })
}

/// Checks one manifest document against every single-document rule.
pub fn validate_value(doc: &Value) -> Findings {
    let mut f = Findings::new();
    let root = JsonPath::root();
    let Some(obj) = doc.as_object() else {
        f.error("type", &root, format!("the manifest must be a JSON object, not {}", kind(doc)));
        return f;
    };

    for key in obj.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            f.warning(
                "unknown-property",
                &root.key(key),
                format!("unknown top-level property '{key}'"),
                "the ADU documentation says additional properties are not allowed; check the spelling",
            );
        }
    }
    for key in ["updateId", "compatibility", "instructions", "manifestVersion", "createdDateTime"] {
        if !obj.contains_key(key) {
            f.error("required", &root.key(key), format!("required property '{key}' is missing"));
        }
    }
    if let Some(v) = obj.get("$schema") {
        expect_string(&mut f, v, &root.key("$schema"));
    }
    if let Some(v) = obj.get("updateId") {
        check_update_id(&mut f, v, &root.key("updateId"));
    }
    if let Some(v) = obj.get("description") {
        check_text(&mut f, v, &root.key("description"), 1, 512);
    }
    if let Some(v) = obj.get("isDeployable")
        && !v.is_boolean()
    {
        f.error(
            "type",
            &root.key("isDeployable"),
            format!("must be true or false, not {}", kind(v)),
        );
    }
    if let Some(v) = obj.get("compatibility") {
        check_compatibility(&mut f, v, &root.key("compatibility"));
    }
    if let Some(v) = obj.get("manifestVersion")
        && v.as_str() != Some(MANIFEST_VERSION)
    {
        f.error_hint(
            "manifest-version",
            &root.key("manifestVersion"),
            format!("must be the string \"5.0\", not {v}"),
            "this validator implements import manifest v5 only",
        );
    }
    if let Some(v) = obj.get("createdDateTime")
        && let Some(s) = expect_string(&mut f, v, &root.key("createdDateTime"))
        && humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).is_err()
        && humantime::parse_rfc3339(s).is_err()
    {
        f.error_hint(
            "date-time",
            &root.key("createdDateTime"),
            format!("'{s}' is not an ISO 8601 date and time"),
            "use the form 2024-05-01T12:00:00Z",
        );
    }

    let files = obj.get("files");
    let payload_names =
        files.map(|v| check_files(&mut f, v, &root.key("files"))).unwrap_or_default();
    if let Some(v) = obj.get("instructions") {
        let used = check_instructions(&mut f, v, &root.key("instructions"), &payload_names, obj);
        for (i, name) in payload_names.iter().enumerate() {
            if let Some(name) = name
                && !used.contains(name.as_str())
            {
                f.warning(
                        "file-unused",
                        &root.key("files").index(i).key("filename"),
                        format!("file '{name}' is not used by any step"),
                        "list it in a step's 'files' or remove it; unused files still count against the 10-file and 2 GB limits",
                    );
            }
        }
    }
    f
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expect_string<'a>(f: &mut Findings, v: &'a Value, path: &JsonPath) -> Option<&'a str> {
    let s = v.as_str();
    if s.is_none() {
        f.error("type", path, format!("must be a string, not {}", kind(v)));
    }
    s
}

fn expect_object<'a>(
    f: &mut Findings,
    v: &'a Value,
    path: &JsonPath,
) -> Option<&'a Map<String, Value>> {
    let o = v.as_object();
    if o.is_none() {
        f.error("type", path, format!("must be an object, not {}", kind(v)));
    }
    o
}

fn expect_array<'a>(f: &mut Findings, v: &'a Value, path: &JsonPath) -> Option<&'a Vec<Value>> {
    let a = v.as_array();
    if a.is_none() {
        f.error("type", path, format!("must be an array, not {}", kind(v)));
    }
    a
}

/// A string with a length between `min` and `max` characters (JSON Schema counts characters).
fn check_text<'a>(
    f: &mut Findings,
    v: &'a Value,
    path: &JsonPath,
    min: usize,
    max: usize,
) -> Option<&'a str> {
    let s = expect_string(f, v, path)?;
    let n = s.chars().count();
    if n < min {
        f.error(
            "length",
            path,
            if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters")
            },
        );
    } else if n > max {
        f.error("length", path, format!("is {n} characters long; at most {max} are allowed"));
    }
    Some(s)
}

fn check_count(f: &mut Findings, len: usize, path: &JsonPath, what: &str, min: usize, max: usize) {
    if len < min {
        f.error("count", path, format!("needs at least {min} {what}, has {len}"));
    } else if len > max {
        f.error_hint(
            "count",
            path,
            format!("has {len} {what}; at most {max} are allowed"),
            format!("ADU accepts at most {max} {what} here"),
        );
    }
}

fn check_unknown_keys(
    f: &mut Findings,
    obj: &Map<String, Value>,
    path: &JsonPath,
    allowed: &[&str],
    what: &str,
) {
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            f.error_hint(
                "additional-property",
                &path.key(key),
                format!("'{key}' is not allowed in {what}"),
                format!("allowed: {}", allowed.join(", ")),
            );
        }
    }
}

/// `^\S+/\S+:\d{1,5}$` with length 5..32, the pattern of step handlers and download handlers.
pub fn is_handler_id(s: &str) -> bool {
    let n = s.chars().count();
    if !(5..=32).contains(&n) || s.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((prefix, digits)) = s.rsplit_once(':') else { return false };
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // The regex needs a '/' with at least one character on each side, and both `\S+` may
    // themselves contain '/' or ':'.
    let chars: Vec<char> = prefix.chars().collect();
    chars.len() >= 3 && chars[1..chars.len() - 1].contains(&'/')
}

fn check_handler_id(f: &mut Findings, v: &Value, path: &JsonPath) -> Option<String> {
    let s = expect_string(f, v, path)?;
    if !is_handler_id(s) {
        f.error_hint(
            "handler-id",
            path,
            format!("'{s}' is not a handler id"),
            "use vendor/name:version with 5-32 characters and no spaces, e.g. microsoft/swupdate:2",
        );
    }
    Some(s.to_owned())
}

/// Checks an `updateId` object; returns it when it is entirely valid.
fn check_update_id(f: &mut Findings, v: &Value, path: &JsonPath) -> Option<UpdateId> {
    let obj = expect_object(f, v, path)?;
    check_unknown_keys(f, obj, path, &["provider", "name", "version"], "an updateId");
    let before = f.error_count();
    for key in ["provider", "name"] {
        match obj.get(key) {
            None => {
                f.error("required", &path.key(key), format!("required property '{key}' is missing"))
            }
            Some(v) => {
                if let Some(s) = check_text(f, v, &path.key(key), 1, 64)
                    && !s.is_empty()
                    && !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                {
                    f.error_hint(
                        "id-characters",
                        &path.key(key),
                        format!("'{s}' has characters other than letters, digits, '.' and '-'"),
                        "ADU update ids allow only [a-zA-Z0-9.-]",
                    );
                }
            }
        }
    }
    match obj.get("version") {
        None => f.error("required", &path.key("version"), "required property 'version' is missing"),
        Some(v) => {
            if let Some(s) = expect_string(f, v, &path.key("version")) {
                check_version(f, s, &path.key("version"));
            }
        }
    }
    if f.error_count() > before {
        return None;
    }
    serde_json::from_value(v.clone()).ok()
}

fn check_version(f: &mut Findings, s: &str, path: &JsonPath) {
    use super::id::VersionProblem;
    for p in super::Version::problems(s) {
        match p {
            VersionProblem::Format | VersionProblem::Parts(0 | 1) => f.error_hint(
                "version-format",
                path,
                format!("'{s}' is not a dot-separated numeric version"),
                "use two to four numbers separated by dots, e.g. 1.0 or 2024.11.3",
            ),
            VersionProblem::Parts(n) => f.error_hint(
                "version-parts",
                path,
                format!("'{s}' has {n} parts; ADU accepts 2 to 4"),
                "drop or merge parts, e.g. 1.2.3.4",
            ),
            VersionProblem::Range(part) => f.error(
                "version-range",
                path,
                format!("part {part} of '{s}' is above the maximum {VERSION_PART_MAX}"),
            ),
        }
    }
}

fn check_compatibility(f: &mut Findings, v: &Value, path: &JsonPath) {
    let Some(items) = expect_array(f, v, path) else { return };
    check_count(f, items.len(), path, "compatibility entries", 1, 10);
    let mut seen: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let Some(obj) = expect_object(f, item, &p) else { continue };
        check_count(f, obj.len(), &p, "properties", 1, 5);
        for (k, val) in obj {
            let n = k.chars().count();
            if n == 0 || n > 32 {
                f.error(
                    "length",
                    &p.key(k),
                    format!("property name '{k}' must be 1-32 characters"),
                );
            }
            check_text(f, val, &p.key(k), 1, 64);
        }
        let mut key: Vec<(String, String)> =
            obj.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        key.sort();
        if let Some(first) = seen.insert(key, i) {
            f.warning(
                "compatibility-duplicate",
                &p,
                format!("same properties as compatibility[{first}]"),
                "remove the duplicate entry",
            );
        }
    }
}

/// Checks `files`; returns each payload file's name (None where it is unreadable).
fn check_files(f: &mut Findings, v: &Value, path: &JsonPath) -> Vec<Option<String>> {
    if v.is_null() {
        return Vec::new();
    }
    let Some(items) = expect_array(f, v, path) else { return Vec::new() };
    check_count(f, items.len(), path, "files", 0, MAX_FILES);
    let mut names = Vec::new();
    let mut seen: HashMap<String, JsonPath> = HashMap::new();
    let mut total: u64 = 0;
    let mut note_name = |f: &mut Findings, name: &str, p: &JsonPath| {
        if let Some(first) = seen.get(name) {
            f.error_hint(
                "filename-unique",
                p,
                format!("file name '{name}' is used twice (first at {first})"),
                "every payload and related file needs its own name; rename one of them",
            );
        } else {
            seen.insert(name.to_owned(), p.clone());
        }
    };
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let Some(obj) = expect_object(f, item, &p) else {
            names.push(None);
            continue;
        };
        let (name, size) = check_base_file(f, obj, &p, true);
        if let Some(n) = &name {
            note_name(f, n, &p.key("filename"));
        }
        total = total.saturating_add(size.unwrap_or(0));
        names.push(name);

        let related =
            obj.get("relatedFiles").and_then(|r| expect_array(f, r, &p.key("relatedFiles")));
        let handler = obj.get("downloadHandler").and_then(|h| {
            let hp = p.key("downloadHandler");
            let ho = expect_object(f, h, &hp)?;
            match ho.get("id") {
                None => {
                    f.error("required", &hp.key("id"), "required property 'id' is missing");
                    None
                }
                Some(id) => check_handler_id(f, id, &hp.key("id")),
            }
        });
        if let Some(related) = related {
            let rp = p.key("relatedFiles");
            check_count(f, related.len(), &rp, "related files", 0, MAX_RELATED_FILES);
            if !related.is_empty() && !obj.contains_key("downloadHandler") {
                f.error_hint(
                    "download-handler-required",
                    &p.key("downloadHandler"),
                    "a file with related files needs a downloadHandler",
                    "add \"downloadHandler\": {\"id\": \"otaforge/delta:1\"} (or the handler that consumes the related files)",
                );
            }
            let is_delta_handler = handler.as_deref().is_some_and(|h| h.contains("/delta:"));
            for (j, r) in related.iter().enumerate() {
                let p = rp.index(j);
                let Some(robj) = expect_object(f, r, &p) else { continue };
                let (rname, rsize) = check_base_file(f, robj, &p, false);
                if let Some(n) = &rname {
                    note_name(f, n, &p.key("filename"));
                }
                total = total.saturating_add(rsize.unwrap_or(0));
                check_delta_properties(f, robj, &p, is_delta_handler);
            }
        }
    }
    if total > MAX_TOTAL_BYTES {
        f.error_hint(
            "total-size",
            path,
            format!("files add up to {total} bytes; ADU accepts at most {MAX_TOTAL_BYTES} (2 GB) per update"),
            "use a delta, compress the payload, or split the update into a parent with children",
        );
    }
    names
}

/// Checks the fields every payload and related file has; returns its name and size.
fn check_base_file(
    f: &mut Findings,
    obj: &Map<String, Value>,
    path: &JsonPath,
    payload: bool,
) -> (Option<String>, Option<u64>) {
    let known: &[&str] = if payload {
        &["filename", "sizeInBytes", "hashes", "properties", "relatedFiles", "downloadHandler"]
    } else {
        &["filename", "sizeInBytes", "hashes", "properties"]
    };
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            f.warning(
                "unknown-property",
                &path.key(key),
                format!("unknown file property '{key}'"),
                format!("known properties: {}", known.join(", ")),
            );
        }
    }
    for key in ["filename", "sizeInBytes", "hashes"] {
        if !obj.contains_key(key) {
            f.error("required", &path.key(key), format!("required property '{key}' is missing"));
        }
    }
    let name = obj.get("filename").and_then(|v| check_text(f, v, &path.key("filename"), 1, 255));
    if let Some(n) = name
        && let Err(e) = super::FileName::new(n)
    {
        f.error_hint(
            "filename-unsafe",
            &path.key("filename"),
            e.to_string(),
            "ADU file names are plain names (no '/', '\\', '..' or NUL); the import request maps each name to a URL",
        );
    }
    let size = obj.get("sizeInBytes").and_then(|v| check_size(f, v, &path.key("sizeInBytes")));
    if let Some(h) = obj.get("hashes") {
        check_hashes(f, h, &path.key("hashes"));
    }
    if let Some(props) = obj.get("properties") {
        check_file_properties(f, props, &path.key("properties"));
    }
    (name.map(str::to_owned), size)
}

fn check_size(f: &mut Findings, v: &Value, path: &JsonPath) -> Option<u64> {
    let Value::Number(n) = v else {
        f.error("type", path, format!("must be a number, not {}", kind(v)));
        return None;
    };
    let Some(size) = n.as_u64() else {
        if n.as_f64().is_some_and(|x| x < 1.0) {
            f.error_hint(
                "size-range",
                path,
                format!("{n} is below the minimum 1"),
                "ADU refuses empty files",
            );
        } else {
            f.error("size-integer", path, format!("{n} is not a whole number of bytes"));
        }
        return None;
    };
    if size < 1 {
        f.error_hint("size-range", path, "0 is below the minimum 1", "ADU refuses empty files");
    } else if size > MAX_TOTAL_BYTES {
        f.error_hint(
            "size-range",
            path,
            format!("{size} bytes is above the 2 GB maximum ({MAX_TOTAL_BYTES})"),
            "use a delta or split the payload",
        );
    }
    Some(size)
}

fn check_hashes(f: &mut Findings, v: &Value, path: &JsonPath) {
    let Some(obj) = expect_object(f, v, path) else { return };
    if obj.len() > 2 {
        f.error("count", path, format!("has {} hashes; at most 2 are allowed", obj.len()));
    }
    match obj.get("sha256") {
        None => f.error_hint(
            "required",
            &path.key("sha256"),
            "required property 'sha256' is missing",
            "otaforge hash FILE prints it",
        ),
        Some(s) => {
            if let Some(s) = expect_string(f, s, &path.key("sha256")) {
                check_sha256(f, s, &path.key("sha256"));
            }
        }
    }
    for (k, val) in obj {
        if k.chars().count() > 10 {
            f.error(
                "length",
                &path.key(k),
                format!("hash algorithm name '{k}' is longer than 10 characters"),
            );
        }
        if k != "sha256" {
            expect_string(f, val, &path.key(k));
        }
    }
}

fn check_sha256(f: &mut Findings, s: &str, path: &JsonPath) -> Option<Sha256> {
    match s.parse::<Sha256>() {
        Ok(d) => Some(d),
        Err(e) => {
            let hint = match e {
                HashError::HexNotBase64 { .. } => format!(
                    "replace it with the base64 form: {}",
                    Sha256::from_hex(s).map(|d| d.to_base64()).unwrap_or_default()
                ),
                _ => "otaforge hash FILE prints the base64 SHA-256".to_owned(),
            };
            f.error_hint("sha256-base64", path, e.to_string(), hint);
            None
        }
    }
}

fn check_file_properties(f: &mut Findings, v: &Value, path: &JsonPath) {
    let Some(obj) = expect_object(f, v, path) else { return };
    if obj.len() > 5 {
        f.error(
            "count",
            path,
            format!("has {} properties; ADU passes at most 5 to the device", obj.len()),
        );
    }
    for (k, val) in obj {
        if k.len() > 64 || !k.is_ascii() {
            f.error(
                "property-key",
                &path.key(k),
                "property names must be ASCII and at most 64 characters",
            );
        }
        match val {
            Value::String(s) if s.len() > 256 || !s.is_ascii() => f.error(
                "property-value",
                &path.key(k),
                "property values must be ASCII and at most 256 characters",
            ),
            Value::String(_) => {}
            other => f.warning(
                "property-type",
                &path.key(k),
                format!("property value is {}, not a string", kind(other)),
                "the device agent reads file properties as strings",
            ),
        }
    }
}

fn check_delta_properties(
    f: &mut Findings,
    obj: &Map<String, Value>,
    path: &JsonPath,
    delta_handler: bool,
) {
    let props = obj.get("properties").and_then(Value::as_object);
    let alg = props.and_then(|p| p.get(SOURCE_HASH_ALGORITHM));
    let hash = props.and_then(|p| p.get(SOURCE_HASH));
    if !delta_handler && alg.is_none() && hash.is_none() {
        return;
    }
    let pp = path.key("properties");
    let hint = "otaforge manifest init --related-file TARGET=DELTA,source=OLD_IMAGE fills both";
    match alg {
        None => f.error_hint(
            "delta-source-hash",
            &pp.key(SOURCE_HASH_ALGORITHM),
            "a delta related file needs microsoft.sourceFileHashAlgorithm",
            hint,
        ),
        Some(Value::String(s)) if s == "sha256" => {}
        Some(other) => f.error(
            "delta-source-hash",
            &pp.key(SOURCE_HASH_ALGORITHM),
            format!("must be \"sha256\", not {other}"),
        ),
    }
    match hash {
        None => f.error_hint(
            "delta-source-hash",
            &pp.key(SOURCE_HASH),
            "a delta related file needs microsoft.sourceFileHash",
            hint,
        ),
        Some(Value::String(s)) => {
            check_sha256(f, s, &pp.key(SOURCE_HASH));
        }
        Some(other) => {
            f.error("type", &pp.key(SOURCE_HASH), format!("must be a string, not {}", kind(other)))
        }
    }
}

/// Checks `instructions`; returns the names of payload files the steps use.
fn check_instructions<'a>(
    f: &mut Findings,
    v: &'a Value,
    path: &JsonPath,
    payload_names: &[Option<String>],
    root: &Map<String, Value>,
) -> HashSet<&'a str> {
    let mut used = HashSet::new();
    let Some(obj) = expect_object(f, v, path) else { return used };
    check_unknown_keys(f, obj, path, &["steps"], "instructions");
    let Some(steps) = obj.get("steps") else {
        f.error("required", &path.key("steps"), "required property 'steps' is missing");
        return used;
    };
    let sp = path.key("steps");
    let Some(steps) = expect_array(f, steps, &sp) else { return used };
    check_count(f, steps.len(), &sp, "steps", 1, MAX_STEPS);
    let known: HashSet<&str> = payload_names.iter().flatten().map(String::as_str).collect();
    let version = root.get("updateId").and_then(|u| u.get("version")).and_then(Value::as_str);
    for (i, step) in steps.iter().enumerate() {
        let p = sp.index(i);
        let Some(s) = expect_object(f, step, &p) else { continue };
        if let Some(d) = s.get("description") {
            check_text(f, d, &p.key("description"), 1, 64);
        }
        match s.get("type").map(|t| t.as_str()) {
            Some(Some("reference")) => {
                check_unknown_keys(
                    f,
                    s,
                    &p,
                    &["type", "description", "updateId"],
                    "a reference step",
                );
                match s.get("updateId") {
                    None => {
                        f.error("required", &p.key("updateId"), "a reference step needs 'updateId'")
                    }
                    Some(u) => {
                        check_update_id(f, u, &p.key("updateId"));
                    }
                }
            }
            None | Some(Some("inline")) => {
                check_unknown_keys(
                    f,
                    s,
                    &p,
                    &["type", "description", "handler", "files", "handlerProperties"],
                    "an inline step",
                );
                let handler = match s.get("handler") {
                    None => {
                        f.error_hint(
                            "required",
                            &p.key("handler"),
                            "an inline step needs 'handler'",
                            "e.g. microsoft/swupdate:2, microsoft/apt:1, microsoft/script:1",
                        );
                        None
                    }
                    Some(h) => check_handler_id(f, h, &p.key("handler")),
                };
                let mut step_files = Vec::new();
                match s.get("files") {
                    None => f.error("required", &p.key("files"), "an inline step needs 'files'"),
                    Some(list) => {
                        if let Some(list) = expect_array(f, list, &p.key("files")) {
                            check_count(f, list.len(), &p.key("files"), "files", 1, 10);
                            for (j, name) in list.iter().enumerate() {
                                let fp = p.key("files").index(j);
                                let Some(name) = check_text(f, name, &fp, 1, 255) else { continue };
                                step_files.push(name);
                                used.insert(name);
                                if !known.contains(name) {
                                    f.error_hint(
                                        "step-file-unknown",
                                        &fp,
                                        format!("step uses file '{name}', which is not in the manifest's files"),
                                        format!("add a files[] entry for '{name}' (otaforge manifest init --file PATH) or fix the name"),
                                    );
                                }
                            }
                        }
                    }
                }
                let props = s.get("handlerProperties");
                if let Some(hp) = props {
                    expect_object(f, hp, &p.key("handlerProperties"));
                }
                if let Some(h) = &handler {
                    check_handler_properties(
                        f,
                        h,
                        props.and_then(Value::as_object),
                        &p,
                        &step_files,
                        version,
                    );
                }
            }
            Some(other) => f.error_hint(
                "step-type",
                &p.key("type"),
                format!(
                    "step type must be \"inline\" or \"reference\", not {}",
                    other.map_or_else(|| s["type"].to_string(), |t| format!("'{t}'"))
                ),
                "omit 'type' for an inline step",
            ),
        }
    }
    used
}

fn check_handler_properties(
    f: &mut Findings,
    handler: &str,
    props: Option<&Map<String, Value>>,
    path: &JsonPath,
    step_files: &[&str],
    version: Option<&str>,
) {
    let hp = path.key("handlerProperties");
    let criteria = props.and_then(|p| p.get("installedCriteria"));
    let criteria_ok = matches!(criteria, Some(Value::String(s)) if !s.is_empty());
    if HANDLERS_REQUIRING_CRITERIA.contains(&handler) && !criteria_ok {
        let hint = if handler == "microsoft/apt:1" {
            "set it to '<apt manifest name>-<apt manifest version>'; otaforge manifest init does this from the APT manifest".to_owned()
        } else {
            format!(
                "set it to the version the device reports once installed, e.g. \"{}\"",
                version.unwrap_or("1.0")
            )
        };
        f.error_hint(
            "installed-criteria",
            &hp.key("installedCriteria"),
            format!("handler {handler} fails on the device without a non-empty installedCriteria"),
            hint,
        );
    } else if handler == "microsoft/script:1" && !criteria_ok {
        f.warning(
            "installed-criteria",
            &hp.key("installedCriteria"),
            "microsoft/script:1 without installedCriteria cannot tell whether the step already ran",
            "set installedCriteria to the version the script installs",
        );
    }
    if let Some(c) = criteria
        && !c.is_string()
    {
        f.error("type", &hp.key("installedCriteria"), format!("must be a string, not {}", kind(c)));
    }
    let names: &[&str] = match handler {
        "microsoft/script:1" => &["scriptFileName"],
        "microsoft/swupdate:2" => &["scriptFileName", "swuFileName"],
        _ => &[],
    };
    for key in names {
        if let Some(v) = props.and_then(|p| p.get(*key)) {
            match v.as_str() {
                Some(name) if step_files.contains(&name) => {}
                Some(name) => f.error_hint(
                    "handler-file",
                    &hp.key(key),
                    format!("{key} '{name}' is not one of this step's files"),
                    "add it to the step's files or fix the name",
                ),
                None => f.error("type", &hp.key(key), format!("must be a string, not {}", kind(v))),
            }
        }
    }
}

/// A manifest as read from disk, for checks across several manifests.
#[derive(Debug)]
pub struct Loaded<'a> {
    /// Where it was read from (for messages).
    pub source: &'a Path,
    /// The typed manifest (only manifests without errors take part in set checks).
    pub manifest: &'a ImportManifest,
}

/// Checks a parent together with its children: every referenced update is among them, children
/// have no reference steps, update ids are unique and the set fits one import request.
///
/// Returns findings per manifest, in input order.
pub fn validate_set(set: &[Loaded<'_>]) -> Vec<Findings> {
    let mut out: Vec<Findings> = set.iter().map(|_| Findings::new()).collect();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in set.iter().enumerate() {
        let id = m.manifest.update_id.to_string();
        if let Some(first) = by_id.get(&id) {
            out[i].error(
                "update-id-duplicate",
                &JsonPath::root().key("updateId"),
                format!("update {id} is also defined by {}", set[*first].source.display()),
            );
        } else {
            by_id.insert(id, i);
        }
    }
    let mut referenced: HashSet<usize> = HashSet::new();
    for (i, m) in set.iter().enumerate() {
        for (s, step) in m.manifest.instructions.steps.iter().enumerate() {
            let super::model::Step::Reference(r) = step else { continue };
            let path = JsonPath::root().key("instructions").key("steps").index(s).key("updateId");
            match by_id.get(&r.update_id.to_string()) {
                Some(j) => {
                    referenced.insert(*j);
                }
                None => out[i].error_hint(
                    "reference-missing",
                    &path,
                    format!(
                        "references update {}, which is not among the manifests given",
                        r.update_id
                    ),
                    "pass the child's import manifest too, or fix provider/name/version",
                ),
            }
        }
    }
    for j in referenced {
        let child = set[j].manifest;
        for (s, step) in child.instructions.steps.iter().enumerate() {
            if matches!(step, super::model::Step::Reference(_)) {
                out[j].error_hint(
                    "child-reference",
                    &JsonPath::root().key("instructions").key("steps").index(s),
                    format!("child update {} has a reference step; ADU allows only one level of children", child.update_id),
                    "move the step into the parent",
                );
            }
        }
        if child.is_deployable != Some(false) {
            out[j].warning(
                "child-deployable",
                &JsonPath::root().key("isDeployable"),
                format!("child update {} is deployable on its own", child.update_id),
                "set \"isDeployable\": false (otaforge manifest init --not-deployable) unless it may be deployed alone",
            );
        }
    }
    // The same compatibility set may belong to only one provider/name pair in an instance.
    let mut compat_owner: HashMap<String, (String, usize)> = HashMap::new();
    for (i, m) in set.iter().enumerate() {
        let pn = format!("{}/{}", m.manifest.update_id.provider(), m.manifest.update_id.name());
        for (c, compat) in m.manifest.compatibility.iter().enumerate() {
            let mut pairs: Vec<String> = compat.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.sort();
            let key = pairs.join(",");
            match compat_owner.get(&key) {
                Some((owner, _)) if *owner != pn => out[i].warning(
                    "compatibility-owner",
                    &JsonPath::root().key("compatibility").index(c),
                    format!("compatibility {{{key}}} is also used by {owner}"),
                    "ADU refuses to import the same compatibility set under two provider/name pairs; make them differ",
                ),
                Some(_) => {}
                None => {
                    compat_owner.insert(key, (pn.clone(), i));
                }
            }
        }
    }
    if set.len() > MAX_IMPORT_ITEMS {
        out[0].warning(
            "import-items",
            &JsonPath::root(),
            format!(
                "{} manifests do not fit one import request (at most {MAX_IMPORT_ITEMS})",
                set.len()
            ),
            "import a parent with at most 10 children per request",
        );
    }
    out
}

/// Recomputes the size and SHA-256 of every payload and related file found in `dir` and compares
/// them with what the manifest declares.
pub fn check_payloads(
    manifest: &ImportManifest,
    dir: &Path,
    jobs: usize,
    reporter: &dyn Reporter,
) -> Findings {
    let mut f = Findings::new();
    let mut entries: Vec<(JsonPath, &str, u64, &Sha256)> = Vec::new();
    for (i, file) in manifest.files.iter().enumerate() {
        let p = JsonPath::root().key("files").index(i);
        entries.push((p.clone(), &file.filename, file.size_in_bytes, &file.hashes.sha256));
        for (j, r) in file.related_files.iter().enumerate() {
            entries.push((
                p.key("relatedFiles").index(j),
                &r.filename,
                r.size_in_bytes,
                &r.hashes.sha256,
            ));
        }
    }
    let paths: Vec<PathBuf> = entries.iter().map(|(_, name, _, _)| dir.join(name)).collect();
    let results = hash_files(&paths, jobs, reporter);
    for ((p, name, size, sha), result) in entries.into_iter().zip(results) {
        match result {
            Err(HashError::Read { path, source })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                f.error_hint(
                    "payload-missing",
                    &p.key("filename"),
                    format!("payload file {} does not exist", path.display()),
                    format!("put '{name}' in {} or pass the right --payload-dir", dir.display()),
                )
            }
            Err(e) => f.error("payload-read", &p.key("filename"), e.to_string()),
            Ok(d) => {
                if d.size != size {
                    f.error_hint(
                        "payload-size",
                        &p.key("sizeInBytes"),
                        format!("manifest says {size} bytes, {} has {}", d.path.display(), d.size),
                        "regenerate the manifest with otaforge manifest init, or use the file it was made from",
                    );
                }
                if d.sha256 != *sha {
                    f.error_hint(
                        "payload-sha256",
                        &p.key("hashes").key("sha256"),
                        format!("manifest says {sha}, {} has {}", d.path.display(), d.sha256),
                        "the file changed after the manifest was made; regenerate the manifest",
                    );
                }
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_ids_follow_the_schema_pattern() {
        for ok in ["microsoft/swupdate:2", "a/b:1", "a/b/c:12345", "x:y/z:9"] {
            assert!(is_handler_id(ok), "{ok}");
        }
        for bad in [
            "microsoft/swupdate",
            "/ab:1",
            "ab/:1",
            "a b/c:1",
            "a/b:123456",
            "a/b:x",
            "m/x:",
            "a/b:1 ",
        ] {
            assert!(!is_handler_id(bad), "{bad}");
        }
        assert!(!is_handler_id("averyveryverylongvendor/handler:1"));
    }
}

//! Payload and related files: names, sizes, hashes, and the properties of delta updates.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ids::check_handler_id;
use super::{SOURCE_HASH, SOURCE_HASH_ALGORITHM};
use crate::finding::{Findings, JsonPath, json_kind};
use crate::hash::{HashError, Sha256};
use crate::limits::{MAX_FILES, MAX_RELATED_FILES, MAX_TOTAL_BYTES};
use crate::manifest::FileName;

/// Checks `files`; returns each payload file's name (None where it is unreadable).
pub(super) fn check_files(f: &mut Findings, v: &Value, path: &JsonPath) -> Vec<Option<String>> {
    if v.is_null() {
        return Vec::new();
    }
    let Some(items) = f.expect_array(v, path) else { return Vec::new() };
    f.count(items.len(), path, "files", 0, MAX_FILES);
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
        let Some(obj) = f.expect_object(item, &p) else {
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
            obj.get("relatedFiles").and_then(|r| f.expect_array(r, &p.key("relatedFiles")));
        let handler = obj.get("downloadHandler").and_then(|h| {
            let hp = p.key("downloadHandler");
            let ho = f.expect_object(h, &hp)?;
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
            f.count(related.len(), &rp, "related files", 0, MAX_RELATED_FILES);
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
                let Some(robj) = f.expect_object(r, &p) else { continue };
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
    let name = obj.get("filename").and_then(|v| f.text(v, &path.key("filename"), 1, 255));
    if let Some(n) = name
        && let Err(e) = FileName::new(n)
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
        f.error("type", path, format!("must be a number, not {}", json_kind(v)));
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
    let Some(obj) = f.expect_object(v, path) else { return };
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
            if let Some(s) = f.expect_string(s, &path.key("sha256")) {
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
            f.expect_string(val, &path.key(k));
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
    let Some(obj) = f.expect_object(v, path) else { return };
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
                format!("property value is {}, not a string", json_kind(other)),
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
        Some(other) => f.error(
            "type",
            &pp.key(SOURCE_HASH),
            format!("must be a string, not {}", json_kind(other)),
        ),
    }
}

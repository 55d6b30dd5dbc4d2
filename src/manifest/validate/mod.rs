//! Validation of import manifests v5: every rule of the official JSON schema
//! (SchemaStore `azure-deviceupdate-import-manifest-5.0.json` and its definitions), implemented
//! here, plus the rules the schema misses but the service or the device agent enforce.
//!
//! Validation walks the raw JSON rather than a typed model so that it can report **every**
//! problem of a broken document, each with its JSON path, instead of stopping at the first
//! field serde cannot read.
//!
//! The rules live by concern: `ids` (update ids, versions, handler ids, compatibility), `files`
//! (payload and related files, sizes, hashes, delta properties), `steps` (instructions and handler
//! properties), `set` (a parent with its children, and payloads on disk) and `agent` (what the
//! agent on the device would refuse: handlers its release does not register, deltas that save
//! nothing).

mod agent;
mod files;
mod ids;
mod set;
mod steps;

use serde_json::Value;

use super::model::MANIFEST_VERSION;
use crate::finding::{Findings, JsonPath, json_kind};

use files::check_files;
use ids::{check_compatibility, check_update_id};
use steps::check_instructions;

pub use agent::{AGENT_RULES, AgentVersion, check_agent_support};
pub use ids::is_handler_id;
pub use set::{Loaded, check_payloads, validate_set};

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
    let mut f = Findings::new();
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        f.error_hint(
            "json-bom",
            &JsonPath::root(),
            "the file starts with a UTF-8 byte order mark (EF BB BF), which JSON does not allow",
            "save it as UTF-8 without BOM (most editors call it \"UTF-8\", not \"UTF-8 with BOM\")",
        );
        return Err(f);
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        let hint = if text.contains("trailing comma") {
            "remove the comma before the closing bracket or brace"
        } else {
            "fix the syntax at the line and column given"
        };
        f.error_hint("json-syntax", &JsonPath::root(), format!("not valid JSON: {text}"), hint);
        f
    })
}

/// Checks one manifest document against every single-document rule.
pub fn validate_value(doc: &Value) -> Findings {
    let mut f = Findings::new();
    let root = JsonPath::root();
    let Some(obj) = doc.as_object() else {
        f.error(
            "type",
            &root,
            format!("the manifest must be a JSON object, not {}", json_kind(doc)),
        );
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
        f.expect_string(v, &root.key("$schema"));
    }
    if let Some(v) = obj.get("updateId") {
        check_update_id(&mut f, v, &root.key("updateId"));
    }
    if let Some(v) = obj.get("description") {
        f.text(v, &root.key("description"), 1, 512);
    }
    if let Some(v) = obj.get("isDeployable")
        && !v.is_boolean()
    {
        f.error(
            "type",
            &root.key("isDeployable"),
            format!("must be true or false, not {}", json_kind(v)),
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
        && let Some(s) = f.expect_string(v, &root.key("createdDateTime"))
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
    // What the agent would refuse later, for any agent version (`agent`).
    f.extend(check_agent_support(doc, None));
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

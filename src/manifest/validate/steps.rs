//! Instructions: inline and reference steps, and the properties each handler reads.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::HANDLERS_REQUIRING_CRITERIA;
use super::ids::{check_handler_id, check_update_id};
use crate::finding::{Findings, JsonPath, json_kind};
use crate::limits::MAX_STEPS;

/// Checks `instructions`; returns the names of payload files the steps use.
pub(super) fn check_instructions<'a>(
    f: &mut Findings,
    v: &'a Value,
    path: &JsonPath,
    payload_names: &[Option<String>],
    root: &Map<String, Value>,
) -> HashSet<&'a str> {
    let mut used = HashSet::new();
    let Some(obj) = f.expect_object(v, path) else { return used };
    f.unknown_keys(obj, path, &["steps"], "instructions");
    let Some(steps) = obj.get("steps") else {
        f.error("required", &path.key("steps"), "required property 'steps' is missing");
        return used;
    };
    let sp = path.key("steps");
    let Some(steps) = f.expect_array(steps, &sp) else { return used };
    f.count(steps.len(), &sp, "steps", 1, MAX_STEPS);
    let known: HashSet<&str> = payload_names.iter().flatten().map(String::as_str).collect();
    let version = root.get("updateId").and_then(|u| u.get("version")).and_then(Value::as_str);
    for (i, step) in steps.iter().enumerate() {
        let p = sp.index(i);
        let Some(s) = f.expect_object(step, &p) else { continue };
        if let Some(d) = s.get("description") {
            f.text(d, &p.key("description"), 1, 64);
        }
        match s.get("type").map(|t| t.as_str()) {
            Some(Some("reference")) => {
                f.unknown_keys(s, &p, &["type", "description", "updateId"], "a reference step");
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
                f.unknown_keys(
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
                        if let Some(list) = f.expect_array(list, &p.key("files")) {
                            f.count(list.len(), &p.key("files"), "files", 1, 10);
                            for (j, name) in list.iter().enumerate() {
                                let fp = p.key("files").index(j);
                                let Some(name) = f.text(name, &fp, 1, 255) else { continue };
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
                    f.expect_object(hp, &p.key("handlerProperties"));
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
        f.error(
            "type",
            &hp.key("installedCriteria"),
            format!("must be a string, not {}", json_kind(c)),
        );
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
                None => {
                    f.error("type", &hp.key(key), format!("must be a string, not {}", json_kind(v)))
                }
            }
        }
    }
}

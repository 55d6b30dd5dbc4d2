//! Install results as people read them: every place the CLI shows a device's last install
//! result (`device show|list`, `deploy status [--watch]`) decodes its extended result codes
//! with `otaforge::service::result_code`. In JSON the result keeps `resultCode`,
//! `extendedResultCode` and (agents from 1.1) `extendedResultCodes` as given, and gains
//! `decoded`: one `{hex, facility, component, name, meaning}` per code, on the result and on
//! each step.

use otaforge::service::model::{Device, InstallResult, StepResult};
use otaforge::service::result_code::{Decoded, decode, parse_codes, result_name};
use serde_json::Value;

/// The codes of a result: its `extendedResultCodes` as the agent wrote them when there, else
/// its `extendedResultCode`.
fn codes(extended: i64, extra: &serde_json::Map<String, Value>) -> Vec<u32> {
    extra
        .get("extendedResultCodes")
        .and_then(|v| parse_codes(v).ok())
        .unwrap_or_else(|| parse_codes(&Value::from(extended)).unwrap_or_default())
}

/// The decoded codes of a result.
pub(crate) fn decoded(r: &InstallResult) -> Vec<Decoded> {
    codes(r.extended_result_code, &r.extra).into_iter().map(decode).collect()
}

fn decoded_step(s: &StepResult) -> Vec<Decoded> {
    codes(s.extended_result_code, &s.extra).into_iter().map(decode).collect()
}

/// The device with `decoded` added to its last install result and each of its steps.
pub(crate) fn annotate(mut d: Device) -> Device {
    if let Some(r) = d.last_install_result.as_mut() {
        let list = serde_json::to_value(decoded(r)).unwrap_or(Value::Null);
        r.extra.insert("decoded".into(), list);
        for s in r.step_results.iter_mut().flatten() {
            let list = serde_json::to_value(decoded_step(s)).unwrap_or(Value::Null);
            s.extra.insert("decoded".into(), list);
        }
    }
    d
}

/// `700 (ADUC_Result_Apply_Success)`.
pub(crate) fn result_code(code: i64) -> String {
    match result_name(code) {
        Some((name, _)) => format!("{code} ({name})"),
        None => code.to_string(),
    }
}

/// Whether a result is a failure (the agent's rule: a result code > 0 is success).
pub(crate) fn failed(r: &InstallResult) -> bool {
    r.result_code <= 0
}

/// Lines describing a result: the result code, then each code decoded, then each failed step.
pub(crate) fn lines(r: &InstallResult) -> Vec<String> {
    let mut out = vec![format!("result      {}", result_code(r.result_code))];
    for d in decoded(r) {
        // A success's zero code says nothing.
        if d.hex != "00000000" || failed(r) {
            out.push(format!("  code      {d}"));
        }
    }
    if let Some(details) = r.result_details.as_deref().filter(|s| !s.is_empty()) {
        out.push(format!("  details   {details}"));
    }
    for (i, s) in r.step_results.iter().flatten().enumerate() {
        if s.result_code > 0 {
            continue;
        }
        let name = s.extra.get("step").and_then(Value::as_str).map_or(i.to_string(), str::to_owned);
        for d in decoded_step(s) {
            out.push(format!("  {name:<9} {} {d}", result_code(s.result_code)));
        }
    }
    out
}

/// One line for a failed result: its first decoded code.
pub(crate) fn short(r: &InstallResult) -> String {
    decoded(r).first().map_or_else(|| result_code(r.result_code), ToString::to_string)
}

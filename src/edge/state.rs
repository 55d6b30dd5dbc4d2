//! Where a device is with the deployment applied to it, read from its `$edgeAgent` module twin
//! by the procedure of the runtime's `reported_states_during_deployment.md` (edge.md §5.3):
//! the desired properties the service wrote against what edgeAgent reported.

use serde::Serialize;
use serde_json::Value;

/// A device's state with its desired deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceState {
    /// edgeAgent has not reported on the current desired properties yet.
    Pending,
    /// Reported on them with code 200, and every module runs the desired image in the desired
    /// status.
    Succeeded,
    /// The desired properties were refused (code 400 or 412).
    Invalid,
    /// Deployed (code 200, images as desired), but a module is not in its desired status
    /// (crashed, backing off, unhealthy).
    ModuleFailed,
    /// The deployment did not complete (code 500 or another): an image pull failed or is
    /// still under way.
    Failed,
}

impl DeviceState {
    /// The name as `--format json` and the text output spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Invalid => "invalid",
            Self::ModuleFailed => "moduleFailed",
            Self::Failed => "failed",
        }
    }
}

/// Modules that are not as desired: `(name, why)`, for the report.
pub type Problems = Vec<(String, String)>;

/// The state of a device from its `$edgeAgent` module twin (`properties.desired` with
/// `$version`, `properties.reported`), and the modules that are not as desired.
pub fn device_state(agent_twin: &Value) -> (DeviceState, Problems) {
    let desired = &agent_twin["properties"]["desired"];
    let reported = &agent_twin["properties"]["reported"];
    if desired["$version"].is_null() || desired["$version"] != reported["lastDesiredVersion"] {
        return (DeviceState::Pending, Vec::new());
    }
    let code = reported["lastDesiredStatus"]["code"].as_i64().unwrap_or(0);
    if matches!(code, 400 | 412) {
        let why = reported["lastDesiredStatus"]["description"].as_str().unwrap_or_default();
        return (DeviceState::Invalid, vec![("$edgeAgent".into(), format!("code {code}: {why}"))]);
    }
    let mut images_differ = Vec::new();
    let mut status_differs = Vec::new();
    let mut check = |name: &str, want: &Value, got: &Value, image_too: bool| {
        let want_status = want["status"].as_str().unwrap_or("running");
        let image = want["settings"]["image"].as_str().unwrap_or_default();
        if got.is_null() {
            images_differ.push((name.to_owned(), format!("not created yet ({image})")));
            return;
        }
        if image_too && got["settings"]["image"].as_str().unwrap_or_default() != image {
            let running = got["settings"]["image"].as_str().unwrap_or("?");
            images_differ.push((name.to_owned(), format!("runs {running}, not {image}")));
            return;
        }
        let status = got["runtimeStatus"].as_str().unwrap_or("unknown");
        if status != want_status {
            let exit =
                got["exitCode"].as_i64().map(|c| format!(", exit code {c}")).unwrap_or_default();
            status_differs.push((name.to_owned(), format!("{status}, not {want_status}{exit}")));
        }
    };
    check(
        "edgeHub",
        &desired["systemModules"]["edgeHub"],
        &reported["systemModules"]["edgeHub"],
        false,
    );
    for (name, want) in desired["modules"].as_object().into_iter().flatten() {
        check(name, want, &reported["modules"][name], true);
    }
    if code != 200 {
        let why = reported["lastDesiredStatus"]["description"].as_str().unwrap_or_default();
        let mut problems = vec![("$edgeAgent".to_owned(), format!("code {code}: {why}"))];
        problems.extend(images_differ);
        problems.extend(status_differs);
        return (DeviceState::Failed, problems);
    }
    if !images_differ.is_empty() {
        // Code 200 with an image not yet running: the agent has not caught up.
        return (DeviceState::Pending, images_differ);
    }
    if !status_differs.is_empty() {
        return (DeviceState::ModuleFailed, status_differs);
    }
    (DeviceState::Succeeded, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn twin(desired_v: i64, reported: Value) -> Value {
        json!({"properties": {
            "desired": {"$version": desired_v,
                "systemModules": {"edgeHub": {"status": "running", "settings": {"image": "hub:1.5"}}},
                "modules": {"sensor": {"status": "running", "settings": {"image": "sensor:2"}}}},
            "reported": reported}})
    }

    #[test]
    fn the_states_follow_the_runtime_procedure() {
        let ok = |sensor: Value| {
            json!({"lastDesiredVersion": 3, "lastDesiredStatus": {"code": 200},
                   "systemModules": {"edgeHub": {"runtimeStatus": "running"}},
                   "modules": {"sensor": sensor}})
        };
        let running = json!({"runtimeStatus": "running", "settings": {"image": "sensor:2"}});
        assert_eq!(device_state(&twin(3, ok(running.clone()))).0, DeviceState::Succeeded);
        assert_eq!(device_state(&twin(4, ok(running))).0, DeviceState::Pending, "a newer desired");
        let crashed =
            json!({"runtimeStatus": "backoff", "exitCode": 139, "settings": {"image": "sensor:2"}});
        let (state, why) = device_state(&twin(3, ok(crashed)));
        assert_eq!(state, DeviceState::ModuleFailed);
        assert_eq!(why[0].0, "sensor");
        assert!(why[0].1.contains("backoff") && why[0].1.contains("139"), "{why:?}");
        let old = json!({"runtimeStatus": "running", "settings": {"image": "sensor:1"}});
        let mut r = ok(old);
        r["lastDesiredStatus"] = json!({"code": 500, "description": "pull failed"});
        let (state, why) = device_state(&twin(3, r));
        assert_eq!(state, DeviceState::Failed);
        assert!(why.iter().any(|(m, w)| m == "sensor" && w.contains("runs sensor:1")), "{why:?}");
        let r = json!({"lastDesiredVersion": 3, "lastDesiredStatus": {"code": 412}});
        assert_eq!(device_state(&twin(3, r)).0, DeviceState::Invalid);
        assert_eq!(device_state(&twin(3, json!({}))).0, DeviceState::Pending, "never reported");
    }
}

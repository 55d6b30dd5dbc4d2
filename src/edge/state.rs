//! Where a device is with the deployment applied to it, read from its `$edgeAgent` module twin
//! by the procedure of the runtime's `reported_states_during_deployment.md` (edge.md §5.3):
//! the desired properties the service wrote against what edgeAgent reported.

use serde::Serialize;

use super::agent::{AgentDesired, AgentReported, DesiredModule, ReportedModule};

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

/// The state of a device from its `$edgeAgent` module twin's desired properties (with
/// `$version`) and reported properties, and the modules that are not as desired.
pub fn device_state(desired: &AgentDesired, reported: &AgentReported) -> (DeviceState, Problems) {
    if desired.version.is_none() || desired.version != reported.last_desired_version {
        return (DeviceState::Pending, Vec::new());
    }
    let (code, why) = reported
        .last_desired_status
        .as_ref()
        .map_or((0, ""), |s| (s.code, s.description.as_deref().unwrap_or_default()));
    if matches!(code, 400 | 412) {
        return (DeviceState::Invalid, vec![("$edgeAgent".into(), format!("code {code}: {why}"))]);
    }
    let mut images_differ = Vec::new();
    let mut status_differs = Vec::new();
    let mut check =
        |name: &str, want: &DesiredModule, got: Option<&ReportedModule>, image_too: bool| {
            let want_status = want.desired_status();
            let image = want.settings.image.as_deref().unwrap_or_default();
            let Some(got) = got else {
                images_differ.push((name.to_owned(), format!("not created yet ({image})")));
                return;
            };
            if image_too && got.settings.image.as_deref().unwrap_or_default() != image {
                let running = got.settings.image.as_deref().unwrap_or("?");
                images_differ.push((name.to_owned(), format!("runs {running}, not {image}")));
                return;
            }
            let status = got.runtime_status();
            if status != want_status {
                let exit = got.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default();
                status_differs
                    .push((name.to_owned(), format!("{status}, not {want_status}{exit}")));
            }
        };
    let no_module = DesiredModule::default();
    check(
        "edgeHub",
        desired.system_module("edgeHub").unwrap_or(&no_module),
        reported.system_module("edgeHub"),
        false,
    );
    for (name, want) in desired.user_modules() {
        check(name, want, reported.module(name), true);
    }
    if code != 200 {
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

/// [`device_state`] of a `$edgeAgent` module twin.
pub fn of_twin(agent: &crate::iothub::Twin) -> (DeviceState, Problems) {
    device_state(
        &AgentDesired::of(&agent.properties.desired),
        &AgentReported::of(&agent.properties.reported),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn twin(desired_v: i64, reported: Value) -> crate::iothub::Twin {
        serde_json::from_value(json!({"deviceId": "d", "properties": {
            "desired": {"$version": desired_v,
                "systemModules": {"edgeHub": {"status": "running", "settings": {"image": "hub:1.5"}}},
                "modules": {"sensor": {"status": "running", "settings": {"image": "sensor:2"}}}},
            "reported": reported}}))
        .unwrap()
    }

    fn device_state(twin: &crate::iothub::Twin) -> (DeviceState, Problems) {
        of_twin(twin)
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

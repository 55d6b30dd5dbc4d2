//! Simulated IoT Edge devices: the part of edgeAgent a deployment is watched through. The
//! device long-polls its `$edgeAgent` module twin; on new desired properties it "pulls" each
//! module's image and "starts" it, then reports what the runtime reports (edge.md §5.1):
//! `lastDesiredVersion`, `lastDesiredStatus` (200, or 500 when a pull failed; 412 for a schema
//! version edgeAgent does not accept; 417 for an empty deployment), the system modules, and per
//! module its `runtimeStatus`, `exitCode`, `restartCount` and `settings.image`. It reports
//! `$edgeHub`'s `lastDesiredVersion` and status as well.
//!
//! Injected failures are drawn from the seed, the device and the image: an image that fails to
//! pull on a device fails there every time (the module keeps its old image, or is not created),
//! and a crash-looping image reports `backoff` with a non-zero exit code. A new image tag draws
//! again, as a fixed release would.

use serde_json::{Map, Value};

use super::{Device, Env, FleetError, draw};
use crate::edge::agent::{
    AgentDesired, AgentReported, DesiredStatus, HubReported, ModuleSettings, ReportedModule,
};

/// The edgeAgent `schemaVersion`s the simulated runtime accepts (1.5 accepts up to 1.1).
const SCHEMAS: [&str; 2] = ["1.0", "1.1"];

fn status(code: i64, description: &str) -> Option<DesiredStatus> {
    Some(DesiredStatus { code, description: Some(description.to_owned()) })
}

/// A module running `image` in `runtime_status`.
fn running(image: Option<String>, runtime_status: &str) -> ReportedModule {
    ReportedModule {
        runtime_status: Some(runtime_status.to_owned()),
        exit_code: Some(0),
        restart_count: Some(0),
        settings: ModuleSettings { image, ..ModuleSettings::default() },
        ..ReportedModule::default()
    }
}

/// What edgeAgent reports for `desired` (its module twin's desired properties, with
/// `$version`), given what it reported before; `fails(image, what)` says whether an injected
/// failure (`pull`, `crash`) hits an image. Modules no longer desired are reported `null`
/// (removed). Returns the report and whether the deployment succeeded (code 200 and every
/// module in its desired status).
pub(super) fn agent_report(
    desired: &AgentDesired,
    before: &AgentReported,
    fails: &dyn Fn(&str, &str) -> bool,
) -> (AgentReported, bool) {
    let schema = desired.schema_version.as_deref().unwrap_or_default();
    let mut report = AgentReported {
        schema_version: Some("1.1".into()),
        version: Some(
            serde_json::json!({"version": "1.5.0", "build": "otaforge-fleet", "commit": ""}),
        ),
        last_desired_version: desired.version,
        runtime: Some(
            serde_json::json!({"type": "docker", "platform": {"os": "linux", "architecture": "x86_64"}}),
        ),
        ..AgentReported::default()
    };
    if !desired.has_deployment() {
        report.last_desired_status = status(417, "the device has no deployment");
        return (report, false);
    }
    if !SCHEMAS.contains(&schema) {
        let why = format!("schemaVersion {schema:?} is not one this edgeAgent accepts (1.0, 1.1)");
        report.last_desired_status = status(412, &why);
        return (report, false);
    }
    for name in ["edgeAgent", "edgeHub"] {
        let image = desired.system_module(name).and_then(|m| m.settings.image.clone());
        report.system_modules.insert(name.into(), Some(running(image, "running")));
    }
    let mut pull_failed = Vec::new();
    let mut healthy = true;
    for (name, want) in desired.user_modules() {
        let image = want.settings.image.clone().unwrap_or_default();
        let want_status = want.desired_status();
        if fails(&image, "pull") {
            // The module keeps what it ran (or is not created): edge.md §5.3.
            pull_failed.push(image);
            if let Some(old) = before.module(name) {
                report.modules.insert(name.clone(), Some(old.clone()));
            }
            continue;
        }
        let crashed = want_status == "running" && fails(&image, "crash");
        healthy &= !crashed;
        let mut m = running(Some(image), if crashed { "backoff" } else { want_status });
        m.status = Some(want_status.to_owned());
        m.restart_policy = want.restart_policy.clone();
        m.version = want.version.clone();
        m.settings.create_options = want.settings.create_options.clone();
        if crashed {
            m.exit_code = Some(139);
            m.restart_count = Some(5);
            m.status_description =
                Some("the module exited with code 139 and is backing off".into());
        }
        report.modules.insert(name.clone(), Some(m));
    }
    // Modules no longer desired are removed.
    let wanted: Vec<&String> = desired.user_modules().map(|(n, _)| n).collect();
    for name in before.modules.keys() {
        if !wanted.contains(&name) && !report.modules.contains_key(name) {
            report.modules.insert(name.clone(), None);
        }
    }
    if pull_failed.is_empty() {
        report.last_desired_status = status(200, "");
        (report, healthy)
    } else {
        let why = format!(
            "Error pulling {}: manifest unknown. The operation was canceled.",
            pull_failed.join(", ")
        );
        report.last_desired_status = status(500, &why);
        (report, false)
    }
}

/// What edgeHub reports for its module twin's desired `$version`.
pub(super) fn hub_report(desired_version: Option<i64>) -> Map<String, Value> {
    let mut report = HubReported {
        last_desired_version: desired_version,
        last_desired_status: status(200, ""),
        extra: Map::new(),
    };
    report.extra.insert("schemaVersion".into(), Value::String("1.1".into()));
    report.extra.insert("clients".into(), Value::Object(Map::new()));
    match serde_json::to_value(report) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

impl Device {
    /// One turn of an Edge device: wait for its `$edgeAgent` twin to change, and when its
    /// desired properties are new, deploy them and report (`$edgeAgent`, then `$edgeHub`).
    pub(super) async fn edge_turn(
        &mut self,
        env: &Env,
        wait: std::time::Duration,
    ) -> Result<(), FleetError> {
        self.desired_changed(env, wait).await?;
        let desired = AgentDesired::of(&self.desired);
        let key = format!("{:?}", desired.version);
        if self.done.as_deref() == Some(key.as_str()) {
            return Ok(());
        }
        let (seed, failures, id) = (env.seed, env.failures, self.id.clone());
        let fails = |image: &str, what: &str| {
            let share = if what == "pull" { failures.pull } else { failures.crash };
            share > 0.0 && draw(seed, &id, image, what) < share
        };
        let (report, ok) = agent_report(&desired, &AgentReported::of(&self.last_reported), &fails);
        let report = match serde_json::to_value(&report) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        self.report(report.clone()).await?;
        crate::iothub::merge_patch(&mut self.last_reported, &report);
        self.edge_hub_report(env).await?;
        // An empty deployment (the device before its first) is not a deployment.
        if desired.has_deployment() {
            let counter = if ok { &env.counters.installed } else { &env.counters.failed };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.done = Some(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_follows_what_failed() {
        use serde_json::json;
        let desired_doc = json!({"$version": 4, "schemaVersion": "1.1",
            "systemModules": {"edgeAgent": {"settings": {"image": "agent:1.5"}},
                              "edgeHub": {"status": "running", "settings": {"image": "hub:1.5"}}},
            "modules": {"a": {"status": "running", "settings": {"image": "a:2"}},
                        "b": {"status": "running", "settings": {"image": "b:2"}}}});
        let desired = AgentDesired::of(desired_doc.as_object().unwrap());
        let before: AgentReported = serde_json::from_value(json!({"modules": {
            "a": {"runtimeStatus": "running", "settings": {"image": "a:1"}},
            "gone": {"runtimeStatus": "running"}}}))
        .unwrap();
        let (r, ok) = agent_report(&desired, &before, &|_, _| false);
        assert!(ok);
        assert_eq!(r.last_desired_version, Some(4));
        assert_eq!(r.last_desired_status.as_ref().map(|s| s.code), Some(200));
        assert_eq!(r.module("a").unwrap().settings.image.as_deref(), Some("a:2"));
        assert_eq!(r.modules.get("gone"), Some(&None), "removed");
        assert_eq!(r.to_patch()["modules"]["gone"], Value::Null, "written as null");
        assert_eq!(
            crate::edge::state::device_state(&desired, &r).0,
            crate::edge::state::DeviceState::Succeeded
        );

        let code = |r: &AgentReported| r.last_desired_status.as_ref().map(|s| s.code);
        let (r, ok) =
            agent_report(&desired, &before, &|image, what| image == "a:2" && what == "pull");
        assert!(!ok);
        assert_eq!(code(&r), Some(500));
        assert_eq!(
            r.module("a").unwrap().settings.image.as_deref(),
            Some("a:1"),
            "keeps the old image"
        );
        let (r, ok) =
            agent_report(&desired, &before, &|image, what| image == "b:2" && what == "crash");
        assert!(!ok);
        assert_eq!((code(&r), r.module("b").unwrap().runtime_status()), (Some(200), "backoff"));
        let mut old = desired.clone();
        old.schema_version = Some("1.3".into());
        assert_eq!(code(&agent_report(&old, &before, &|_, _| false).0), Some(412));
        let empty = AgentDesired { version: Some(1), ..AgentDesired::default() };
        assert_eq!(
            code(&agent_report(&empty, &AgentReported::default(), &|_, _| false).0),
            Some(417)
        );
    }
}

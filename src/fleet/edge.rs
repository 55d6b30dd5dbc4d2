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

use serde_json::{Map, Value, json};

use super::{Device, Env, FleetError, draw};

/// The edgeAgent `schemaVersion`s the simulated runtime accepts (1.5 accepts up to 1.1).
const SCHEMAS: [&str; 2] = ["1.0", "1.1"];

/// What edgeAgent reports for `desired` (its module twin's desired properties, with
/// `$version`), given what it reported before; `fails(image, what)` says whether an injected
/// failure (`pull`, `crash`) hits an image. Modules no longer desired are reported `null`
/// (removed). Returns the report and whether the deployment succeeded (code 200 and every
/// module in its desired status).
pub(super) fn agent_report(
    desired: &Value,
    before: &Value,
    fails: &dyn Fn(&str, &str) -> bool,
) -> (Value, bool) {
    let version = desired["$version"].clone();
    let schema = desired["schemaVersion"].as_str().unwrap_or_default();
    let mut report = json!({
        "schemaVersion": "1.1",
        "version": {"version": "1.5.0", "build": "otaforge-fleet", "commit": ""},
        "lastDesiredVersion": version,
        "runtime": {"type": "docker", "platform": {"os": "linux", "architecture": "x86_64"}},
    });
    let status = |code: i64, description: &str| json!({"code": code, "description": description});
    if desired["modules"].is_null() && desired["systemModules"].is_null() {
        report["lastDesiredStatus"] = status(417, "the device has no deployment");
        return (report, false);
    }
    if !SCHEMAS.contains(&schema) {
        let why = format!("schemaVersion {schema:?} is not one this edgeAgent accepts (1.0, 1.1)");
        report["lastDesiredStatus"] = status(412, &why);
        return (report, false);
    }
    let system = |name: &str| {
        let want = &desired["systemModules"][name];
        json!({"runtimeStatus": "running", "exitCode": 0, "restartCount": 0,
               "settings": {"image": want["settings"]["image"].clone()}})
    };
    report["systemModules"] =
        json!({"edgeAgent": system("edgeAgent"), "edgeHub": system("edgeHub")});
    let mut modules = Map::new();
    let mut pull_failed = Vec::new();
    let mut healthy = true;
    for (name, want) in desired["modules"].as_object().into_iter().flatten() {
        let image = want["settings"]["image"].as_str().unwrap_or_default();
        let want_status = want["status"].as_str().unwrap_or("running");
        if fails(image, "pull") {
            // The module keeps what it ran (or is not created): edge.md §5.3.
            pull_failed.push(image.to_owned());
            if let Some(old) = before["modules"].get(name).filter(|m| !m.is_null()) {
                modules.insert(name.clone(), old.clone());
            }
            continue;
        }
        let crashed = want_status == "running" && fails(image, "crash");
        healthy &= !crashed;
        let mut m = json!({
            "runtimeStatus": if crashed { "backoff" } else { want_status },
            "exitCode": if crashed { 139 } else { 0 },
            "restartCount": if crashed { 5 } else { 0 },
            "status": want_status,
            "restartPolicy": want["restartPolicy"].clone(),
            "version": want["version"].clone(),
            "settings": {"image": image, "createOptions": want["settings"]["createOptions"].clone()},
        });
        if crashed {
            m["statusDescription"] = json!("the module exited with code 139 and is backing off");
        }
        modules.insert(name.clone(), m);
    }
    // Modules no longer desired are removed.
    for name in before["modules"].as_object().into_iter().flatten().map(|(k, _)| k) {
        if desired["modules"].get(name).is_none_or(Value::is_null) && !modules.contains_key(name) {
            modules.insert(name.clone(), Value::Null);
        }
    }
    report["modules"] = Value::Object(modules);
    if pull_failed.is_empty() {
        report["lastDesiredStatus"] = status(200, "");
        (report, healthy)
    } else {
        let why = format!(
            "Error pulling {}: manifest unknown. The operation was canceled.",
            pull_failed.join(", ")
        );
        report["lastDesiredStatus"] = status(500, &why);
        (report, false)
    }
}

/// What edgeHub reports for its module twin's desired `$version`.
pub(super) fn hub_report(desired_version: Option<i64>) -> Map<String, Value> {
    let report = json!({
        "schemaVersion": "1.1", "lastDesiredVersion": desired_version,
        "lastDesiredStatus": {"code": 200, "description": ""},
        "clients": {},
    });
    match report {
        Value::Object(m) => m,
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
        let key = self.desired_version().to_string();
        if self.done.as_deref() == Some(key.as_str()) {
            return Ok(());
        }
        let desired = Value::Object(self.desired.clone());
        let reported = Value::Object(self.last_reported.clone());
        let (seed, failures, id) = (env.seed, env.failures, self.id.clone());
        let fails = |image: &str, what: &str| {
            let share = if what == "pull" { failures.pull } else { failures.crash };
            share > 0.0 && draw(seed, &id, image, what) < share
        };
        let (report, ok) = agent_report(&desired, &reported, &fails);
        let Value::Object(report) = report else { return Ok(()) };
        self.report(report.clone()).await?;
        crate::iothub::merge_patch(&mut self.last_reported, &report);
        self.edge_hub_report(env).await?;
        // An empty deployment (the device before its first) is not a deployment.
        if self.desired.contains_key("modules") || self.desired.contains_key("systemModules") {
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
        let desired = json!({"$version": 4, "schemaVersion": "1.1",
            "systemModules": {"edgeAgent": {"settings": {"image": "agent:1.5"}},
                              "edgeHub": {"status": "running", "settings": {"image": "hub:1.5"}}},
            "modules": {"a": {"status": "running", "settings": {"image": "a:2"}},
                        "b": {"status": "running", "settings": {"image": "b:2"}}}});
        let before = json!({"modules": {"a": {"runtimeStatus": "running", "settings": {"image": "a:1"}},
                                        "gone": {"runtimeStatus": "running"}}});
        let (r, ok) = agent_report(&desired, &before, &|_, _| false);
        assert!(ok);
        assert_eq!(r["lastDesiredVersion"], 4);
        assert_eq!(r["lastDesiredStatus"]["code"], 200);
        assert_eq!(r["modules"]["a"]["settings"]["image"], "a:2");
        assert_eq!(r["modules"]["gone"], Value::Null, "removed");
        let twin = json!({"properties": {"desired": desired, "reported": r}});
        assert_eq!(
            crate::edge::state::device_state(&twin).0,
            crate::edge::state::DeviceState::Succeeded
        );

        let (r, ok) =
            agent_report(&desired, &before, &|image, what| image == "a:2" && what == "pull");
        assert!(!ok);
        assert_eq!(r["lastDesiredStatus"]["code"], 500);
        assert_eq!(r["modules"]["a"]["settings"]["image"], "a:1", "keeps the old image");
        let (r, ok) =
            agent_report(&desired, &before, &|image, what| image == "b:2" && what == "crash");
        assert!(!ok);
        assert_eq!(
            (r["lastDesiredStatus"]["code"].as_i64(), r["modules"]["b"]["runtimeStatus"].as_str()),
            (Some(200), Some("backoff"))
        );
        let mut old = desired.clone();
        old["schemaVersion"] = json!("1.3");
        assert_eq!(agent_report(&old, &before, &|_, _| false).0["lastDesiredStatus"]["code"], 412);
        let empty = json!({"$version": 1});
        assert_eq!(
            agent_report(&empty, &json!({}), &|_, _| false).0["lastDesiredStatus"]["code"],
            417
        );
    }
}

//! `otaforge edge`: a template built into a manifest that validates (and that the official
//! schema accepts, in `cargo xtask ci`), and every negative fixture of
//! `testdata/edge/negative.json` refused with exit 1 and its path or position.

use std::path::Path;

use serde_json::{Value, json};

use crate::otaforge;

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.shift_remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Builds the template into `dir/deployment.json` and returns it.
fn built(dir: &Path) -> Value {
    let td = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/edge");
    fs_err::write(
        dir.join(".env"),
        "# registry\nCONTAINER_REGISTRY_USERNAME=contoso\nexport CONTAINER_REGISTRY_PASSWORD='${KV_SECRET}'\n",
    )
    .unwrap();
    let out = otaforge()
        .current_dir(dir)
        .env("RELEASE", "2026.11")
        .args(["--format", "json", "edge", "manifest", "build"])
        .arg(td.join("deployment.template.json"))
        .args(["--env-file", ".env", "--image", "filter=contoso.azurecr.io/filter:1.4.2"])
        .args(["-o", "deployment.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true, "{report}");
    serde_json::from_slice(&fs_err::read(dir.join("deployment.json")).unwrap()).unwrap()
}

fn validate(dir: &Path, doc: &Value, layered: bool) -> (i32, Value) {
    let f = dir.join("case.json");
    fs_err::write(&f, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let mut cmd = otaforge();
    cmd.args(["--format", "json", "edge", "manifest", "validate"]).arg(&f);
    if layered {
        cmd.arg("--layered");
    }
    let out = cmd.output().unwrap();
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), reports[0].clone())
}

fn fixtures() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/edge/negative.json");
    serde_json::from_slice(&fs_err::read(p).unwrap()).unwrap()
}

#[test]
fn a_built_manifest_validates_and_every_negative_manifest_fails_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let base = built(dir.path());
    assert_eq!(
        base["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]["registryCredentials"]
            ["contoso"]["password"],
        "${KV_SECRET}",
        "the env file's quoted value, kept literally"
    );
    let (code, report) = validate(dir.path(), &base, false);
    assert_eq!((code, report["errors"].as_u64()), (0, Some(0)), "{report}");
    // `cargo xtask ci` checks it against the official schemas.
    if let Some(out) = std::env::var_os("OTAFORGE_MANIFEST_OUT") {
        fs_err::create_dir_all(&out).unwrap();
        let path = Path::new(&out).join("built.edgedeployment.json");
        fs_err::write(path, serde_json::to_vec_pretty(&base).unwrap()).unwrap();
    }
    let cases = fixtures();
    for case in cases["manifests"].as_array().unwrap() {
        let mut doc = base.clone();
        merge(&mut doc, &case["patch"]);
        let (code, report) = validate(dir.path(), &doc, false);
        let hit = report["findings"].as_array().unwrap().iter().any(|f| {
            f["severity"] == "error" && f["path"] == case["path"] && f["rule"] == case["rule"]
        });
        assert!(code == 1 && hit, "{}: exit {code}, {report:#}", case["name"]);
    }
    for case in cases["layered"].as_array().unwrap() {
        let (code, report) = validate(dir.path(), &case["manifest"], true);
        let hit = report["findings"].as_array().unwrap().iter().any(|f| {
            f["severity"] == "error" && f["path"] == case["path"] && f["rule"] == case["rule"]
        });
        assert!(code == 1 && hit, "{}: exit {code}, {report:#}", case["name"]);
    }
    // A valid layer passes.
    let layer = json!({"modulesContent": {
        "$edgeAgent": {"properties.desired.modules.logger": {
            "type": "docker", "status": "running", "settings": {"image": "contoso/logger:2"}}},
        "$edgeHub": {"properties.desired.routes.logs": "FROM /messages/modules/logger/* INTO $upstream"},
        "logger": {"properties.desired.layeredProperties": {"level": "debug"}},
    }});
    let (code, report) = validate(dir.path(), &layer, true);
    assert_eq!(code, 0, "{report:#}");
}

#[test]
fn every_negative_route_and_condition_fails_at_its_position() {
    let cases = fixtures();
    let check = |verb: &str, text: &str, position: &Value| {
        let out = otaforge().args(["--format", "json", "edge", verb, text]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}: {v}");
        assert_eq!((&v["valid"], &v["position"]), (&json!(false), position), "{text}: {v}");
    };
    for c in cases["routes"].as_array().unwrap() {
        check("route", c["route"].as_str().unwrap(), &c["position"]);
    }
    for c in cases["conditions"].as_array().unwrap() {
        check("condition", c["condition"].as_str().unwrap(), &c["position"]);
    }
}

#[test]
fn a_condition_targets_the_twins_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let twins = json!([
        {"deviceId": "a", "tags": {"environment": "prod", "ring": 1}, "capabilities": {"iotEdge": true}},
        {"deviceId": "b", "tags": {"environment": "prod", "ring": 2}, "capabilities": {"iotEdge": true}},
        {"deviceId": "c", "tags": {"environment": "test"}},
    ]);
    fs_err::write(dir.path().join("twins.json"), twins.to_string()).unwrap();
    let out = otaforge()
        .current_dir(dir.path())
        .args(["--format", "json", "edge", "condition"])
        .args(["tags.environment = 'prod' AND tags.ring IN [2, 3]", "--twin", "twins.json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["targeted"], json!(["b"]));
}

#[test]
fn what_if_names_every_device_that_would_change_and_those_left_unmanaged() {
    let dir = tempfile::tempdir().unwrap();
    let twin = |id: &str, env: &str| json!({"deviceId": id, "tags": {"environment": env}, "capabilities": {"iotEdge": true}});
    let twins =
        json!([twin("p1", "prod"), twin("p2", "prod"), twin("t1", "test"), twin("d1", "dev")]);
    let base = |id: &str, cond: &str, priority: i64| {
        json!({"id": id, "targetCondition": cond, "priority": priority,
               "createdTimeUtc": "2026-11-01T00:00:00Z",
               "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {}}}}})
    };
    let configs = json!([
        base("prod", "tags.environment = 'prod'", 10),
        base("fallback", "tags.environment IN ['prod', 'test']", 1),
        {"id": "debug-layer", "targetCondition": "tags.environment = 'test'", "priority": 5,
         "createdTimeUtc": "2026-11-02T00:00:00Z",
         "content": {"modulesContent": {"$edgeAgent": {"properties.desired.modules.dbg": {}}}}},
    ]);
    fs_err::write(dir.path().join("twins.json"), twins.to_string()).unwrap();
    fs_err::write(dir.path().join("configs.json"), configs.to_string()).unwrap();
    let run = |args: &[&str]| -> Value {
        let out = otaforge()
            .current_dir(dir.path())
            .args(["--format", "json", "edge", "what-if", "--twins", "twins.json"])
            .args(["--configurations", "configs.json"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Deleting `prod`: both prod devices fall back to `fallback`.
    let v = run(&["--delete", "prod"]);
    assert_eq!(v["changed"], 2, "{v:#}");
    assert_eq!(v["devices"][0]["before"]["base"], "prod");
    assert_eq!(v["devices"][0]["after"]["base"], "fallback");
    // Retargeting `fallback` to prod only: t1 loses its base, so its layer stops applying too,
    // and it is left unmanaged.
    let v = run(&["--update", "fallback", "--target-condition", "tags.environment = 'prod'"]);
    assert_eq!(v["changed"], 1, "{v:#}");
    let t1 = &v["devices"][0];
    assert_eq!(t1["deviceId"], "t1");
    assert_eq!(t1["before"], json!({"base": "fallback", "layers": ["debug-layer"]}));
    assert_eq!((&t1["after"]["layers"], &t1["leftUnmanaged"]), (&json!([]), &json!(true)));
    // Lowering `prod` to 0 puts it below `fallback` (1): both prod devices switch.
    let v = run(&["--update", "prod", "--priority", "0"]);
    assert_eq!(v["changed"], 2, "{v:#}");
    // An unknown deployment is a usage error, and a bad condition names its position.
    let out = otaforge()
        .current_dir(dir.path())
        .args(["edge", "what-if", "--twins", "twins.json", "--configurations", "configs.json"])
        .args(["--update", "prod", "--target-condition", "tags.a = "])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("position"));
}

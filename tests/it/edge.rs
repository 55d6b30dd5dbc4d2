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

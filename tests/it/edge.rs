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

/// Edge deployments on serve's IoT Hub configurations, through the client and the CLI: metrics,
/// immutability, ETags, refusals before any call, and what-if checked against what happens
/// when the change is then made.
#[test]
fn edge_deployments_on_serve_what_if_matches_what_then_happens() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, data, hub, rt) = hub_on_serve(dir.path());
    rt.block_on(async {
        for (id, env, edge) in [
            ("gw-1", "prod", true),
            ("gw-2", "prod", true),
            ("gw-3", "test", true),
            ("cam-1", "prod", false),
        ] {
            hub.create_device_as(id, edge).await.unwrap();
            let mut tags = serde_json::Map::new();
            tags.insert("environment".into(), json!(env));
            hub.patch_tags(id, tags, None).await.unwrap();
        }
    });
    let base = built(dir.path());
    fs_err::write(dir.path().join("base.json"), base.to_string()).unwrap();
    let layer = json!({"modulesContent": {
        "$edgeAgent": {"properties.desired.modules.logger": {
            "type": "docker", "status": "running", "settings": {"image": "contoso/logger:2"}}}}});
    fs_err::write(dir.path().join("layer.json"), layer.to_string()).unwrap();
    let conn = data.join("iothub.connection-string");
    let cli = |args: &[&str]| {
        let (code, out, err) = edge_cli(dir.path(), &conn, args);
        (code, serde_json::from_str::<Value>(&out).unwrap_or(Value::Null), err)
    };
    let create = |id: &str, content: &str, cond: &str, prio: &str, extra: &[&str]| {
        let mut a = vec![
            "deploy",
            "create",
            id,
            "--content",
            content,
            "--target-condition",
            cond,
            "--priority",
            prio,
        ];
        a.extend_from_slice(extra);
        cli(&a)
    };
    let (code, _, err) = create(
        "prod-base",
        "base.json",
        "tags.environment = 'prod'",
        "10",
        &["--metric", "prodTwins=SELECT deviceId FROM devices WHERE tags.environment = 'prod'"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(create("fallback", "base.json", "*", "1", &[]).0, 0);
    let (code, _, err) =
        create("test-logs", "layer.json", "tags.environment = 'test'", "5", &["--layered"]);
    assert_eq!(code, 0, "{err}");
    // IoT Hub applies deployments in a pass after a change (serve's: within a second); a
    // metric is read until it shows what the pass wrote.
    let settled = |id: &str, metric: &str, want: i64| -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, shown, _) = cli(&["deploy", "show", id]);
            let got = shown["systemMetrics"]["results"][metric].as_i64();
            if got == Some(want) || std::time::Instant::now() > deadline {
                assert_eq!(got, Some(want), "{id} {metric}: {shown:#}");
                return shown;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let shown = settled("prod-base", "appliedCount", 2);
    let sys = &shown["systemMetrics"];
    assert_eq!(sys["results"]["targetedCount"], 2, "{shown:#}");
    assert_eq!(sys["results"]["appliedCount"], 2);
    assert!(
        sys["queries"]["appliedCount"]
            .as_str()
            .unwrap()
            .contains("configurations.[[prod-base]].status = 'Applied'")
    );
    assert_eq!(
        shown["metrics"]["results"]["prodTwins"], 3,
        "cam-1 is not an Edge device but is a prod twin"
    );
    settled("test-logs", "appliedCount", 1);

    // The devices behind each metric.
    let (code, st, err) = cli(&["deploy", "status", "prod-base"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(st["devices"]["targetedCount"], json!(["gw-1", "gw-2"]), "{st:#}");
    assert_eq!(st["devices"]["appliedCount"], json!(["gw-1", "gw-2"]));
    assert_eq!(st["devices"]["prodTwins"], json!(["gw-1", "gw-2", "cam-1"]));
    assert_eq!(st["hubResults"]["system"]["appliedCount"], 2, "the hub counts the same");

    // A device's view: what targets it, what applies, the merged modules.
    let (code, dev, err) = cli(&["device", "show", "gw-3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (&dev["base"], &dev["layers"]),
        (&json!("fallback"), &json!(["test-logs"])),
        "{dev:#}"
    );
    let modules = dev["desired"]["$edgeAgent"]["modules"].as_object().unwrap();
    assert!(
        modules.contains_key("filter") && modules.contains_key("logger"),
        "base + layer: {modules:?}"
    );
    let (_, dev, _) = cli(&["device", "show", "gw-1"]);
    let statuses: Vec<(&str, &str)> = dev["targeted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert!(
        statuses.contains(&("prod-base", "Applied"))
            && statuses.contains(&("fallback", "Targeted")),
        "{statuses:?}"
    );
    let (_, cam, _) = cli(&["device", "show", "cam-1"]);
    assert_eq!((&cam["iotEdge"], &cam["targeted"]), (&json!(false), &json!([])));

    // What-if of deleting prod-base, read from serve; then delete it and compare.
    let (code, what, err) = cli(&["what-if", "--delete", "prod-base"]);
    assert_eq!(code, 0, "{err}");
    let moved: Vec<&str> = what["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(moved, ["gw-1", "gw-2"]);
    assert!(what["devices"].as_array().unwrap().iter().all(|d| d["after"]["base"] == "fallback"));
    let (_, before, _) = cli(&["deploy", "show", "fallback"]);
    assert_eq!(cli(&["deploy", "delete", "prod-base"]).0, 0);
    let applied = |v: &Value| v["systemMetrics"]["results"]["appliedCount"].as_i64().unwrap();
    settled("fallback", "appliedCount", applied(&before) + moved.len() as i64);

    // Content is immutable; a stale ETag is refused; what may change, changes.
    rt.block_on(async {
        let mut c = hub.get_configuration("fallback").await.unwrap();
        let etag = c.etag.clone();
        c.priority = 2;
        let updated = hub.put_configuration(&c, etag.as_deref()).await.unwrap();
        assert_eq!(updated.priority, 2);
        let stale = hub.put_configuration(&c, etag.as_deref()).await.unwrap_err();
        assert!(stale.to_string().contains("PreconditionFailed"), "{stale}");
        c.content.insert("modulesContent".into(), json!({"$edgeAgent": {}}));
        let changed = hub.put_configuration(&c, None).await.unwrap_err();
        assert!(changed.to_string().contains("cannot change"), "{changed}");
        let t = hub.test_queries("tags.a = ", &Default::default()).await.unwrap();
        assert!(t["targetConditionError"].as_str().unwrap().contains("position 10"), "{t}");
    });
    // Refused before any call: a bad id, a bad condition (usage, exit 2); a bad manifest (exit 1).
    assert_eq!(create("Prod", "base.json", "*", "1", &[]).0, 2);
    let (code, _, err) = create("x", "base.json", "tags.a = \"b\"", "1", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("position"), "{err}");
    let (code, v, _) = create("x", "layer.json", "*", "1", &[]);
    assert_eq!((code, &v["valid"]), (1, &json!(false)), "a layer is not a base deployment");
    drop(serve);
}

#[test]
#[ignore = "needs PyPI azure-iot-hub"]
fn the_official_iot_hub_sdk_manages_configurations_and_twins_on_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, data, hub, rt) = hub_on_serve(dir.path());
    rt.block_on(async {
        for id in ["gw-1", "gw-2", "gw-3"] {
            hub.create_device_as(id, true).await.unwrap();
        }
    });
    let conn = fs_err::read_to_string(data.join("iothub.connection-string")).unwrap();
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let got =
        crate::python_json("iothub_sdk_configurations.py", &[conn.trim().as_ref(), host.as_ref()]);
    assert_eq!(got["prodTwins"], json!(["gw-1", "gw-2"]));
    assert_eq!((&got["created"], &got["createdEtag"]), (&json!("sdk-prod"), &json!(true)));
    assert_eq!(got["listed"], json!(["sdk-prod"]));
    assert_eq!((got["targeted"].as_i64(), got["applied"].as_i64()), (Some(2), Some(2)), "{got}");
    assert_eq!(got["customProd"], 2);
    assert_eq!(
        (got["updatedPriority"].as_i64(), got["targetedAfterUpdate"].as_i64()),
        (Some(20), Some(1))
    );
    assert_eq!(got["afterDelete"], json!([]));
    assert_eq!(got["agentModules"], json!(["sensor"]), "{got}");
    assert_eq!(got["appliedAgents"], json!(["gw-1", "gw-2"]));
    assert_eq!(got["setModules"], json!(["mine"]));
    // The SDK's tag writes are on the twins.
    let twin = rt.block_on(hub.get_twin("gw-3")).unwrap();
    assert_eq!(twin.tags["environment"], "test");
}

/// `otaforge --format json edge ARGS --iothub-connection-file CONN` in `dir`: exit code, stdout,
/// stderr.
fn edge_cli(dir: &Path, conn: &Path, args: &[&str]) -> (i32, String, String) {
    let out = otaforge()
        .current_dir(dir)
        .args(["--format", "json", "edge"])
        .args(args)
        .arg("--iothub-connection-file")
        .arg(conn)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap(), text(&out.stdout), text(&out.stderr))
}

/// serve on `dir/data`, a client of its IoT Hub surface, and a runtime to drive it.
fn hub_on_serve(
    dir: &Path,
) -> (
    crate::service::Serve,
    std::path::PathBuf,
    otaforge::iothub::IotHubClient,
    tokio::runtime::Runtime,
) {
    let data = dir.join("data");
    let serve = crate::service::Serve::start(&data, None);
    let hub = otaforge::iothub::IotHubClient::new(crate::hub_connection(&data)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    (serve, data, hub, rt)
}

/// A base deployment whose user modules are `modules` (name → image).
pub(crate) fn base_content(modules: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    for (name, image) in modules {
        m.insert(
            (*name).into(),
            json!({"type": "docker", "status": "running", "restartPolicy": "always",
                   "settings": {"image": image}}),
        );
    }
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5"}}},
            "modules": m}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /messages/* INTO $upstream"}}}}})
}

/// A layered deployment adding one module.
pub(crate) fn layer_content(name: &str, image: &str) -> Value {
    json!({"modulesContent": {"$edgeAgent": {
        format!("properties.desired.modules.{name}"): {
            "type": "docker", "status": "running", "restartPolicy": "always",
            "settings": {"image": image}}}}})
}

/// Waits (20 s at most) until `f` gives `Some`.
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "waited 20 s for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Simulated IoT Edge devices (`fleet run --edge`) on serve: deployments reach their
/// `$edgeAgent` twins with IoT Hub's rules (priority, most recent on a tie, layers above their
/// base only, fallback on retarget and delete, unmanaged devices keep their modules), the
/// devices deploy and report, and injected pull failures and crash loops move the metrics and
/// the device states.
#[test]
fn simulated_edge_devices_follow_priority_layers_and_fallback_and_failures_move_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, data, hub, rt) = hub_on_serve(dir.path());
    let conn = data.join("iothub.connection-string");
    let mut fleet = std::process::Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
        .args(["fleet", "run", "--edge", "--devices", "12"])
        .args(["--prefix", "gw", "--group", "line-1", "--fail", "pull=0.2,crash=0.2"])
        .args(["--seed", "3", "--for", "300s", "--iothub-connection-file"])
        .arg(&conn)
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let write = |name: &str, v: &Value| {
        fs_err::write(dir.path().join(name), v.to_string()).unwrap();
    };
    write(
        "base.json",
        &base_content(&[("sensor", "contoso/sensor:1.0"), ("filter", "contoso/filter:1.0")]),
    );
    write(
        "base-b.json",
        &base_content(&[("sensor", "contoso/sensor:1.1"), ("filter", "contoso/filter:1.0")]),
    );
    write("fallback.json", &base_content(&[("sensor", "contoso/sensor:0.9")]));
    write("top.json", &layer_content("logger", "contoso/logger:2"));
    write("low.json", &layer_content("debug", "contoso/debug:1"));
    let edge = |args: &[&str]| edge_cli(dir.path(), &conn, args);
    let create = |id: &str, file: &str, cond: &str, prio: &str, layered: bool| {
        let mut a = vec!["deploy", "create", id, "--content", file, "--target-condition", cond];
        a.extend(["--priority", prio]);
        if layered {
            a.push("--layered");
        }
        let (code, _, err) = edge(&a);
        assert_eq!(code, 0, "{id}: {err}");
    };
    let line = "tags.ADUGroup = 'line-1'";
    create("fallback", "fallback.json", line, "1", false);
    create("base", "base.json", line, "10", false);
    create("low-layer", "low.json", line, "5", true);
    create(
        "top-layer",
        "top.json",
        &format!("{line} AND deviceId IN ['gw-0000', 'gw-0001']"),
        "20",
        true,
    );

    // Every device deploys `base` and reports; the watch ends once all have, with exit 1
    // because injected failures hit some.
    let (code, out, err) = edge(&["deploy", "status", "base", "--watch", "--timeout", "60s"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let watched: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(watched["settled"], true, "{watched:#}");
    // The layers' pass may land after the base's (they were created one after the other), and
    // the hub's counts are read a moment before the twins: read again until both are still.
    let last = until("a settled status whose lists match the hub's counts", || {
        let (_, out, _) = edge(&["deploy", "status", "base"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let same =
            ["appliedCount", "reportedSuccessfulCount", "reportedFailedCount"].iter().all(|m| {
                v["hubResults"]["system"][m].as_u64()
                    == v["devices"][m].as_array().map(|a| a.len() as u64)
            });
        (v["settled"] == true
            && same
            && v["devices"]["reportedFailedCount"].as_array()?.len()
                + v["devices"]["reportedSuccessfulCount"].as_array()?.len()
                == 12)
            .then_some(v)
    });
    let n = |m: &str| last["devices"][m].as_array().map_or(0, Vec::len);
    assert_eq!((n("targetedCount"), n("appliedCount")), (12, 12), "{last:#}");
    let states = |s: &str| last["states"][s].as_array().map_or(0, Vec::len);
    assert!(
        states("failed") > 0 && states("moduleFailed") > 0 && states("succeeded") > 0,
        "{last:#}"
    );
    assert_eq!(states("failed") + states("moduleFailed") + states("succeeded"), 12);
    // The hub's own queries: a pull failure reports code 500 (failed); a crash loop reports
    // 200 and counts as reported successful, which only the per-device state tells apart.
    assert_eq!(n("reportedFailedCount"), states("failed"), "{last:#}");
    assert_eq!(n("reportedSuccessfulCount"), states("succeeded") + states("moduleFailed"));
    for m in ["appliedCount", "reportedSuccessfulCount", "reportedFailedCount"] {
        assert_eq!(last["hubResults"]["system"][m].as_u64(), Some(n(m) as u64), "{m}: {last:#}");
    }
    let problem =
        last["problems"].as_object().unwrap().values().flat_map(|v| v.as_array().unwrap().clone());
    let whys: Vec<String> = problem.map(|p| p["why"].as_str().unwrap().to_owned()).collect();
    assert!(
        whys.iter().any(|w| w.contains("backoff")) && whys.iter().any(|w| w.contains("code 500")),
        "{whys:?}"
    );

    let agent = |device: &str| -> Value {
        serde_json::to_value(rt.block_on(hub.get_module_twin(device, "$edgeAgent")).unwrap())
            .unwrap()
    };
    let statuses = |t: &Value| -> Vec<(String, String)> {
        t["configurations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v["status"].as_str().unwrap().to_owned()))
            .collect()
    };
    let modules = |t: &Value| -> Vec<String> {
        let mut m: Vec<String> = t["properties"]["desired"]["modules"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        m.sort();
        m
    };
    // Layers: the one above the base applies; the one below it does not.
    let a0 = until("gw-0000's layer", || {
        let a = agent("gw-0000");
        (modules(&a) == ["filter", "logger", "sensor"]).then_some(a)
    });
    let s0 = statuses(&a0);
    for (id, want) in [
        ("base", "Applied"),
        ("top-layer", "Applied"),
        ("low-layer", "Targeted"),
        ("fallback", "Targeted"),
    ] {
        assert!(s0.contains(&(id.into(), want.into())), "{id} {want}: {s0:?}");
    }
    assert_eq!(modules(&agent("gw-0005")), ["filter", "sensor"]);

    // Tie-break: on equal priority the most recently created wins.
    create("base-b", "base-b.json", "deviceId = 'gw-0002'", "10", false);
    let image = |t: &Value| {
        t["properties"]["desired"]["modules"]["sensor"]["settings"]["image"]
            .as_str()
            .map(str::to_owned)
    };
    until("gw-0002 on base-b", || {
        (image(&agent("gw-0002")).as_deref() == Some("contoso/sensor:1.1")).then_some(())
    });
    assert!(statuses(&agent("gw-0002")).contains(&("base".into(), "Targeted".into())));
    // Retarget base-b away: gw-0002 falls back to base.
    let (code, _, err) =
        edge(&["deploy", "update", "base-b", "--target-condition", "deviceId = 'none'"]);
    assert_eq!(code, 0, "{err}");
    until("gw-0002 back on base", || {
        (image(&agent("gw-0002")).as_deref() == Some("contoso/sensor:1.0")).then_some(())
    });

    // Delete base: every device falls back to `fallback` (priority 1), and the low layer
    // (priority 5), below the old base, is now above the new one and applies.
    assert_eq!(edge(&["deploy", "delete", "base"]).0, 0);
    until("fallback everywhere", || {
        (modules(&agent("gw-0005")) == ["debug", "sensor"]
            && modules(&agent("gw-0000")) == ["debug", "logger", "sensor"])
        .then_some(())
    });
    assert_eq!(image(&agent("gw-0005")).as_deref(), Some("contoso/sensor:0.9"));
    // Delete fallback too: nothing applies; the devices keep their modules, unmanaged.
    let before = agent("gw-0005")["properties"]["desired"].clone();
    assert_eq!(edge(&["deploy", "delete", "fallback"]).0, 0);
    until("gw-0005 unmanaged", || {
        let t = agent("gw-0005");
        t["configurations"].as_object().is_some_and(|c| !c.contains_key("fallback")).then_some(t)
    });
    assert_eq!(agent("gw-0005")["properties"]["desired"], before, "modules are not removed");
    assert!(
        statuses(&agent("gw-0000")).contains(&("top-layer".into(), "Targeted".into())),
        "a layer without a base"
    );

    // set-modules on the unmanaged device: its edgeAgent deploys it and reports.
    write("mine.json", &base_content(&[("mine", "contoso/mine:1")]));
    let (code, _, err) = edge(&["set-modules", "gw-0005", "--content", "mine.json"]);
    assert_eq!(code, 0, "{err}");
    let shown = until("gw-0005 reports its own modules", || {
        let (_, out, _) = edge(&["device", "show", "gw-0005"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        (v["desired"]["$edgeAgent"]["modules"].get("mine").is_none()
            && v["state"].is_string()
            && v["state"] != "pending"
            && v["reported"].get("mine").is_some())
        .then_some(v)
    });
    assert_eq!((&shown["base"], &shown["layers"]), (&Value::Null, &json!([])), "{shown:#}");
    let _ = fleet.kill();
    let _ = fleet.wait();
    drop(serve);
}

/// The Edge status rule has one home (`edge::assign::statuses`): on random fleets and
/// deployments, what `otaforge edge device show` says applies to each device is what serve's
/// Edge pass wrote into its `$edgeAgent` twin.
#[test]
fn edge_device_show_and_serve_agree_on_random_fleets() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let (_serve, data, hub, rt) = hub_on_serve(dir.path());
    let conn = data.join("iothub.connection-string");
    // Devices: (environment, IoT Edge?); deployments: (condition, priority, layered, empty
    // `$edgeAgent`, created second).
    let devices = proptest::collection::vec((0..3u8, any::<bool>()), 1..5);
    let conditions = ["*", "tags.env = 'e0'", "tags.env IN ['e1', 'e2']", "tags.env != 'e0'", ""];
    let deployments = proptest::collection::vec(
        (0..conditions.len(), 0..3i64, any::<bool>(), any::<bool>()),
        0..5,
    );
    let mut runner = TestRunner::new(Config { cases: 16, ..Config::default() });
    let cases = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&(devices, deployments), |(devices, deployments)| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut edge_ids = Vec::new();
            rt.block_on(async {
                for c in hub.list_configurations(100).await.unwrap() {
                    hub.delete_configuration(&c.id, None).await.unwrap();
                }
                for (i, (env, edge)) in devices.iter().enumerate() {
                    let id = format!("c{case}-d{i}");
                    hub.create_device_as(&id, *edge).await.unwrap();
                    let mut tags = serde_json::Map::new();
                    tags.insert("env".into(), json!(format!("e{env}")));
                    hub.patch_tags(&id, tags, None).await.unwrap();
                    if *edge {
                        edge_ids.push(id);
                    }
                }
                for (j, (cond, priority, layered, empty)) in deployments.iter().enumerate() {
                    let content = match (layered, empty) {
                        (true, true) => json!({"modulesContent": {"$edgeAgent": {}}}),
                        (true, false) => layer_content(&format!("l{j}"), "mcr.microsoft.com/l:1"),
                        _ => base_content(&[(&format!("m{j}"), "mcr.microsoft.com/m:1")]),
                    };
                    let c: otaforge::iothub::config::Configuration =
                        serde_json::from_value(json!({
                            "id": format!("c{case}-dep{j}"), "targetCondition": conditions[*cond],
                            "priority": priority, "content": content,
                        }))
                        .unwrap();
                    hub.put_configuration(&c, None).await.unwrap();
                }
            });
            for id in &edge_ids {
                let shown = || {
                    let (code, out, err) = edge_cli(dir.path(), &conn, &["device", "show", id]);
                    assert_eq!(code, 0, "{err}");
                    let v: Value = serde_json::from_str(&out).unwrap();
                    let mut pairs: Vec<(String, String)> = v["targeted"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| {
                            (t["id"].as_str().unwrap().into(), t["status"].as_str().unwrap().into())
                        })
                        .collect();
                    pairs.sort();
                    pairs
                };
                let written = || {
                    let agent = rt.block_on(hub.get_module_twin(id, "$edgeAgent")).unwrap();
                    let mut pairs: Vec<(String, String)> = agent
                        .configurations
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k, v.status))
                        .collect();
                    pairs.sort();
                    pairs
                };
                let want = shown();
                // serve's pass runs within moments of the last change.
                until(&format!("serve's pass to agree on {id}: {want:?}"), || {
                    (written() == want).then_some(())
                });
            }
            Ok(())
        })
        .unwrap();
}

//! serve's MQTT endpoint (IoT Hub's device protocol) with clients nobody here wrote: the
//! official Python device SDK, driven by the official service SDK, and a raw MQTT client
//! (paho-mqtt and hand-made packets) trying what an SDK never sends.

use std::path::Path;

use serde_json::{Value, json};

use crate::service::Serve;

/// A loopback address nobody else here uses, on port 8883: the official device SDKs dial
/// 8883 and cannot be told another port, so tests that run side by side each take their own
/// address in 127.0.0.0/8.
fn own_8883() -> String {
    let n = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            as u64;
    format!("127.{}.{}.{}:8883", 10 + n % 200, (n >> 8) % 250, 2 + (n >> 16) % 250)
}

fn start(data: &Path, mqtt: &str) -> Serve {
    Serve::start_with(data, &["--mqtt-listen", mqtt])
}

fn info(serve: &Serve, key: &str) -> String {
    serve.info[key].as_str().unwrap_or_else(|| panic!("serve printed no {key}")).to_owned()
}

fn conn_file(data: &Path) -> std::path::PathBuf {
    data.join("iothub.connection-string")
}

#[test]
#[ignore = "needs azure-iot-device: cargo xtask ci provisions it"]
fn the_official_python_device_sdk_talks_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let at = own_8883();
    let serve = start(&data, &at);
    let gateway = info(&serve, "gatewayHostName");
    assert_eq!(format!("{gateway}:8883"), at);
    let conn = fs_err::read_to_string(conn_file(&data)).unwrap();
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let ca = info(&serve, "mqttCaFile");
    let seen = crate::python_json(
        "iothub_device_sdk.py",
        &[conn.trim().as_ref(), host.as_ref(), ca.as_ref(), gateway.as_ref()],
    );
    let exercised = |by: &str| {
        json!({
            "twinVersions": [1, 1],
            "patch": {"interval": 7, "mode": {"fast": true}},
            "patchVersionNewer": true,
            "reportedByService": "1.2.3",
            "method": {"status": 200, "payload": {"echo": {"delay": 2}, "by": by}, "name": "reboot"},
        })
    };
    assert_eq!(seen["device"], exercised("device"), "{seen}");
    assert_eq!(seen["module"], exercised("module"), "{seen}");
    assert_eq!(seen["keptGivenKey"], true, "serve must use the key the caller gives");
    assert_eq!(seen["c2d"], json!({"body": "hello device", "color": "blue"}));
    assert_eq!(seen["offline"], 404, "a device that is not connected is DeviceNotOnline");
    assert_eq!(seen["connectionState"], "Connected");

    // The model id the device connected with is on its twin.
    let twin = crate::otaforge()
        .env("XDG_CONFIG_HOME", crate::config_home())
        .args(["--format", "json", "hub", "device", "show", "Py-Dev*1", "--iothub-connection-file"])
        .arg(conn_file(&data))
        .output()
        .unwrap();
    assert!(twin.status.success(), "{}", String::from_utf8_lossy(&twin.stderr));
    // serve writes what connections changed (sessions, model ids) a quarter second at a time,
    // in one transaction for all of them: the model id is there within a second.
    let hub = crate::hub_connection(&data);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = otaforge::iothub::IotHubClient::new(hub).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let model = loop {
        let t = rt.block_on(client.get_twin("Py-Dev*1")).unwrap();
        let model = t.extra.get("modelId").cloned();
        if model.is_some() || std::time::Instant::now() > deadline {
            break model;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(model, Some(json!("dtmi:azure:iot:deviceUpdateModel;3")));

    // `hub monitor` shows the telemetry of both, as sent.
    let out = crate::otaforge()
        .env("XDG_CONFIG_HOME", crate::config_home())
        .args(["hub", "monitor", "--from-start", "--count", "2", "--timeout", "20s"])
        .arg("--iothub-connection-file")
        .arg(conn_file(&data))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    for (e, by) in events.iter().zip(["device", "module"]) {
        assert_eq!(e["deviceId"], "Py-Dev*1");
        assert_eq!(e["payload"], json!({"temp": 21.5, "by": by}));
        assert_eq!(e["properties"]["system"]["content-type"], "application/json");
    }
    assert_eq!(events[1]["moduleId"], "Sensor-1");
}

#[test]
#[ignore = "needs paho-mqtt: cargo xtask ci provisions it"]
fn what_an_sdk_never_sends_is_refused_and_serve_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = start(&data, "127.0.0.1:0");
    let at: std::net::SocketAddr = info(&serve, "mqttListen").parse().unwrap();
    let conn = fs_err::read_to_string(conn_file(&data)).unwrap();
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let ca = info(&serve, "mqttCaFile");
    let seen = crate::python_json(
        "mqtt_hostile.py",
        &[
            conn.trim().as_ref(),
            host.as_ref(),
            ca.as_ref(),
            at.ip().to_string().as_ref(),
            at.port().to_string().as_ref(),
        ],
    );
    for case in ["foreignSas", "wrongKey", "expired", "garbagePassword", "otherUser"] {
        assert_eq!(seen[case], json!({"connack": 5, "closed": true}), "{case}: {seen}");
    }
    assert_eq!(
        (&seen["level3"], &seen["level5"], &seen["emptyClientId"]),
        (&json!(1), &json!(1), &json!(2))
    );
    assert_eq!(
        seen["forbiddenSubscriptions"],
        json!({"granted": [128, 128, 128, 128], "delivered": []}),
        "{seen}"
    );
    for case in [
        "otherDevicesEvents",
        "desiredFromDevice",
        "qos2",
        "oversize300KiB",
        "oversize256MiB",
        "fiveByteLength",
        "topicPastFrame",
        "invalidUtf8Topic",
        "subscribeNoFilter",
        "secondConnect",
        "type0",
        "type15",
        "publishBeforeConnect",
        "garbageInsteadOfTls",
    ] {
        assert_eq!(seen[case], true, "{case} was not disconnected: {seen}");
    }
    assert_eq!(seen["badReports"], json!({"notJson": "400", "over32KB": "400"}));
    let slow = &seen["slow"];
    for (case, most) in [
        ("keepalive2", 4),
        ("expiresIn3", 5),
        ("tcpOnly", 12),
        ("tlsNoConnect", 12),
        ("dripConnect", 12),
    ] {
        assert_eq!(slow[case]["closed"], true, "{case}: {slow}");
        assert!(slow[case]["after"].as_u64().unwrap() <= most, "{case} closed late: {slow}");
    }
    assert_eq!(seen["secondConnection"], json!({"firstClosed": true, "secondAnswers": true}));
    let lazy = seen["neverReads"]["closedAfter"].as_u64();
    assert!(lazy.is_some_and(|s| s <= 30), "a client that never reads stayed connected: {seen}");
    assert!(seen["goodClient"]["answers"].as_u64().unwrap() > 10, "{seen}");
    assert!(seen["goodClient"]["slowestSeconds"].as_f64().unwrap() < 2.0, "{seen}");
    assert_eq!(seen["nothingStored"], json!({"events": true, "reported": true}));
}

/// otaforge's own device client (the fleet's) against serve: CONNECT, the twin, a report the
/// hub acknowledges with its `$version`, a desired change as it happens, the session (its
/// subscriptions) kept across connections, a wrong key refused with CONNACK 5.
#[test]
fn our_device_client_reads_reports_and_hears_desired_changes() {
    use otaforge::iothub::identity::Identity as Registered;
    use otaforge::iothub::mqtt::Identity;
    use otaforge::iothub::mqtt::client::{
        ClientError, Connection, Credentials, Gateway, tls_config,
    };
    use otaforge::iothub::sas::SasKey;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = start(&data, "127.0.0.1:0");
    let ca = fs_err::read(info(&serve, "mqttCaFile")).unwrap();
    let gateway = Gateway::new(&info(&serve, "mqttListen"), tls_config(Some(&ca)).unwrap());
    let conn = crate::hub_connection(&data);
    let hub = otaforge::iothub::IotHubClient::new(conn.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let made =
            hub.create_identity(&Registered::with_keys("Cli-1", None, None, None)).await.unwrap();
        let key = SasKey::from_base64(made.primary_key().unwrap()).unwrap();
        let who = Credentials {
            hub: conn.host.clone(),
            identity: Identity::device("Cli-1"),
            key,
            model_id: Some("dtmi:azure:iot:deviceUpdateModel;3".into()),
        };
        let mut c = Connection::open(&gateway, &who).await.unwrap();
        assert!(!c.session_present);
        let twin = c.twin().await.unwrap();
        assert_eq!(twin.desired.get("$version"), Some(&json!(1)));
        let patch = json!({"agent": {"state": 0}}).as_object().unwrap().clone();
        assert_eq!(c.report(&patch).await.unwrap(), Some(2));
        let mut want = serde_json::Map::new();
        want.insert("interval".into(), json!(5));
        hub.patch_desired("Cli-1", want.clone(), None).await.unwrap();
        let got = c.next_desired(std::time::Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(got.get("interval"), Some(&json!(5)));
        assert!(got.get("$version").and_then(Value::as_i64).unwrap() > 1);
        c.close().await;
        // A new connection finds its session: no SUBSCRIBE, and changes still arrive.
        let mut c = Connection::open(&gateway, &who).await.unwrap();
        assert!(c.session_present, "the subscriptions were not kept");
        want.insert("interval".into(), json!(6));
        hub.patch_desired("Cli-1", want, None).await.unwrap();
        let got = c.next_desired(std::time::Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(got.get("interval"), Some(&json!(6)));
        assert_eq!(
            hub.get_twin("Cli-1").await.unwrap().properties.reported.get("agent"),
            Some(&json!({"state": 0}))
        );
        let wrong = Credentials { key: SasKey::generate().unwrap(), ..who.clone() };
        let e = Connection::open(&gateway, &wrong).await.unwrap_err();
        assert!(matches!(e, ClientError::Refused(5)), "{e}");
    });
}

/// serve killed (SIGKILL) with devices connected: every report the hub acknowledged before the
/// kill is in the twin after the restart, and the devices connect again with their sessions
/// (subscriptions) kept.
#[test]
fn acknowledged_reports_survive_a_kill_9_and_devices_reconnect_to_their_sessions() {
    use otaforge::iothub::identity::Identity as Registered;
    use otaforge::iothub::mqtt::Identity;
    use otaforge::iothub::mqtt::client::{Connection, Credentials, Gateway, tls_config};
    use otaforge::iothub::sas::SasKey;
    const DEVICES: usize = 50;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = start(&data, "127.0.0.1:0");
    let ca = fs_err::read(info(&serve, "mqttCaFile")).unwrap();
    let gateway = Gateway::new(&info(&serve, "mqttListen"), tls_config(Some(&ca)).unwrap());
    let conn = crate::hub_connection(&data);
    let hub = otaforge::iothub::IotHubClient::new(conn.clone()).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let who: Vec<Credentials> = rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..DEVICES {
            let id = format!("k-{i:03}");
            let made =
                hub.create_identity(&Registered::with_keys(&id, None, None, None)).await.unwrap();
            out.push(Credentials {
                hub: conn.host.clone(),
                identity: Identity::device(&id),
                key: SasKey::from_base64(made.primary_key().unwrap()).unwrap(),
                model_id: None,
            });
        }
        out
    });
    // Every device reports in a loop; the reports acknowledged when serve dies are noted.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(vec![0u64; DEVICES]));
    let tasks: Vec<_> = who
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (w, gateway, acked) = (w.clone(), gateway.clone(), acked.clone());
            rt.spawn(async move {
                let mut c = Connection::open(&gateway, &w).await.unwrap();
                for n in 1u64.. {
                    let patch = json!({"counter": n}).as_object().unwrap().clone();
                    if c.report(&patch).await.is_err() {
                        break;
                    }
                    acked.lock().unwrap()[i] = n;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    serve.kill();
    let at_kill = acked.lock().unwrap().clone();
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert!(at_kill.iter().all(|n| *n > 0), "some devices never reported: {at_kill:?}");
    serve.restart();
    rt.block_on(async {
        for (i, w) in who.iter().enumerate() {
            let twin = hub.get_twin(&w.identity.device).await.unwrap();
            let stored = twin.properties.reported.get("counter").and_then(Value::as_u64).unwrap();
            assert!(
                stored >= at_kill[i],
                "{}: acknowledged {} but stored {stored}",
                w.identity,
                at_kill[i]
            );
            let c = Connection::open(&gateway, w).await.unwrap();
            assert!(c.session_present, "{}: the session was lost", w.identity);
            c.close().await;
        }
    });
}

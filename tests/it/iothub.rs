//! The IoT Hub client against `otaforge serve`'s IoT Hub surface: device identities, twin tags
//! patched with an ETag, twin queries across pages, device credentials that reach only their own
//! twin; and the SAS signature checked against openssl.

use std::path::Path;
use std::sync::Arc;

use otaforge::iothub::sas::{SasKey, token};
use otaforge::iothub::{ConnectionString, IotHubClient, IotHubError};
use serde_json::{Map, Value, json};

use crate::service::Serve;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn connection(data: &Path) -> ConnectionString {
    crate::hub_connection(data)
}

fn tag(group: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ADUGroup".into(), json!(group));
    m
}

#[test]
fn twins_are_tagged_with_etags_and_queried_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some("hub-test-token-0123456789"));
    let conn = connection(&data);
    assert!(
        !format!("{conn:?}")
            .contains(&conn.to_secret_string()[conn.to_secret_string().len() - 10..])
    );
    let hub = IotHubClient::new(conn.clone()).unwrap();
    rt().block_on(async {
        for i in 0..25 {
            hub.create_device(&format!("dev-{i:02}")).await.unwrap();
        }
        let again = hub.create_device("dev-00").await.unwrap_err();
        assert!(matches!(&again, IotHubError::Api { code, status: 409, .. } if code == "DeviceAlreadyExists"), "{again}");

        // Tag with the ETag just read; a second patch with the same (now stale) ETag is refused.
        let twin = hub.get_twin("dev-03").await.unwrap();
        let etag = twin.etag.clone().unwrap();
        let tagged = hub.patch_tags("dev-03", tag("canary"), Some(&etag)).await.unwrap();
        assert_eq!(tagged.group(), Some("canary"));
        assert_ne!(tagged.etag.as_deref(), Some(etag.as_str()));
        let stale = hub.patch_tags("dev-03", tag("prod"), Some(&etag)).await.unwrap_err();
        assert!(matches!(&stale, IotHubError::Api { code, status: 412, .. } if code == "PreconditionFailed"), "{stale}");
        assert_eq!(hub.get_twin("dev-03").await.unwrap().group(), Some("canary"));
        // ADU's group rules are checked where the tag is written.
        let reserved = hub.patch_tags("dev-04", tag("$default"), None).await.unwrap_err();
        assert!(matches!(reserved, IotHubError::Api { status: 400, .. }));

        for i in (10..25).step_by(2) {
            hub.patch_tags(&format!("dev-{i:02}"), tag("prod"), None).await.unwrap();
        }
        // Every page followed: 25 devices in pages of 4.
        let all = hub.query_twins_by("SELECT * FROM devices", 4).await.unwrap();
        assert_eq!(all.len(), 25);
        assert_eq!(all[24].device_id, "dev-24");
        let prod = hub
            .query_twins_by("SELECT * FROM devices WHERE tags.ADUGroup = 'prod'", 3)
            .await
            .unwrap();
        let ids: Vec<&str> = prod.iter().map(|t| t.device_id.as_str()).collect();
        assert_eq!(ids, ["dev-10", "dev-12", "dev-14", "dev-16", "dev-18", "dev-20", "dev-22", "dev-24"]);
        let bad = hub.query_twins("SELECT deviceId FROM devices").await.unwrap_err();
        assert!(matches!(&bad, IotHubError::Api { code, .. } if code == "SqlQueryInvalid"), "{bad}");

        // A connection string with another key is refused.
        let wrong = ConnectionString::new(&conn.host, "iothubowner", SasKey::generate().unwrap(), true);
        let e = IotHubClient::new(wrong).unwrap().get_twin("dev-00").await.unwrap_err();
        assert!(matches!(e, IotHubError::Unauthorized(_)), "{e}");
    });
    drop(serve);
}

#[test]
fn a_device_reads_and_reports_only_its_own_twin_and_never_sees_tags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let conn = connection(&data);
    let hub = IotHubClient::new(conn.clone()).unwrap();
    let (k1, _k2) = rt().block_on(async {
        let a = hub.create_device("sensor-1").await.unwrap();
        let b = hub.create_device("sensor-10").await.unwrap();
        hub.patch_tags("sensor-1", tag("prod"), None).await.unwrap();
        let key = |v: &otaforge::iothub::DeviceIdentity| v.primary_key().unwrap().to_owned();
        (key(&a), key(&b))
    });
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let key1 = SasKey::from_base64(&k1).unwrap();
    let device_token = |id: &str, key: &SasKey| {
        token(&format!("{host}/devices/{id}"), key, None, crate::token_expiry())
    };
    let call = |method: reqwest::Method, id: &str, path: &str, auth: &str| -> (u16, Value) {
        rt().block_on(async {
            let mut req = reqwest::Client::new()
                .request(method, format!("{}/devices/{id}/{path}", serve.endpoint))
                .header("authorization", auth)
                .header("content-type", "application/json");
            if path.ends_with("reported") {
                req = req.body(r#"{"deviceUpdate":{"__t":"c","agent":{"state":0}}}"#);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        })
    };
    let report = |id: &str, auth: &str| call(reqwest::Method::PATCH, id, "twin/reported", auth).0;
    assert_eq!(report("sensor-1", &device_token("sensor-1", &key1)), 200);
    // sensor-1's key, or a token for sensor-1, reaches nothing of sensor-10.
    assert_eq!(report("sensor-10", &device_token("sensor-10", &key1)), 401);
    assert_eq!(report("sensor-10", &device_token("sensor-1", &key1)), 401);
    assert_eq!(report("sensor-1", ""), 401);
    let (status, twin) =
        call(reqwest::Method::GET, "sensor-1", "twin", &device_token("sensor-1", &key1));
    assert_eq!(status, 200);
    assert_eq!(twin["reported"]["deviceUpdate"]["agent"]["state"], 0);
    assert!(twin.get("tags").is_none() && !twin.to_string().contains("prod"), "{twin}");
    // The back end sees the report.
    let seen = rt().block_on(hub.get_twin("sensor-1")).unwrap();
    assert_eq!(seen.properties.reported["deviceUpdate"]["agent"]["state"], 0);
}

#[test]
#[ignore = "needs openssl"]
fn sas_signatures_match_openssl_hmac() {
    let key = SasKey::from_base64("bXktaHViLXNoYXJlZC1hY2Nlc3Mta2V5LWZvci10ZXN0cw==").unwrap();
    let t =
        token("MyHub.azure-devices.net/devices/Dev 1", &key, Some("iothubowner"), 1_900_000_000);
    let fields: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(t.strip_prefix("SharedAccessSignature ").unwrap().as_bytes())
            .into_owned()
            .collect();
    let sr: String = url::form_urlencoded::byte_serialize(fields["sr"].as_bytes()).collect();
    assert_eq!(sr, "myhub.azure-devices.net%2Fdevices%2Fdev+1");
    let hex_key: String =
        b"my-hub-shared-access-key-for-tests".iter().map(|b| format!("{b:02x}")).collect();
    let out = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex_key}"),
            "-binary",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(format!("{sr}\n1900000000").as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl");
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode(out.stdout);
    assert_eq!(fields["sig"], expected);
    assert_eq!(fields["skn"], "iothubowner");
}

#[test]
fn group_tag_moves_devices_between_groups_through_their_twins() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _serve = Serve::start(&data, None);
    let hub = IotHubClient::new(connection(&data)).unwrap();
    rt().block_on(async {
        for d in ["cam-1", "cam-2"] {
            hub.create_device(d).await.unwrap();
        }
    });
    let file = data.join("iothub.connection-string");
    let group = |args: &[&str]| {
        crate::otaforge()
            .args(["--format", "json", "group"])
            .args(args)
            .arg("--iothub-connection-file")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = group(&["tag", "cam-1", "cam-2", "--group", "lobby"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json = crate::stdout_json(&out);
    assert_eq!(
        (json[0]["group"].as_str(), json[1]["previousGroup"].as_str()),
        (Some("lobby"), None)
    );
    let out = group(&["tag", "cam-2", "--group", "garage"]);
    assert_eq!(crate::stdout_json(&out)[0]["previousGroup"], "lobby");
    let out = group(&["untag", "cam-1"]);
    assert_eq!(out.status.code(), Some(0));
    let twins = rt().block_on(hub.query_twins("SELECT * FROM devices")).unwrap();
    let groups: Vec<Option<&str>> = twins.iter().map(|t| t.group()).collect();
    assert_eq!(groups, [None, Some("garage")]);
    // A device that does not exist: the hub's code, exit 1; a bad group: a usage error.
    let out = group(&["tag", "cam-9", "--group", "lobby"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(crate::stdout_json(&out)["error"], "DeviceNotFound");
    let out = group(&["tag", "cam-1", "--group", "no spaces"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_device_waiting_on_its_twin_wakes_for_a_desired_change_not_for_its_own_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let hub = IotHubClient::new(connection(&data)).unwrap();
    let identity = rt().block_on(hub.create_device("waiter")).unwrap();
    let key = identity.primary_key().unwrap();
    let key = SasKey::from_base64(key).unwrap();
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let auth = token(&format!("{host}/devices/waiter"), &key, None, crate::token_expiry());
    let endpoint = serve.endpoint.clone();
    let read = move |query: &str| -> (Value, std::time::Duration) {
        let t = std::time::Instant::now();
        let v = rt().block_on(async {
            let resp = reqwest::Client::new()
                .get(format!("{endpoint}/devices/waiter/twin{query}"))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).unwrap()
        });
        (v, t.elapsed())
    };
    let (first, _) = read("");
    let v = first["$version"].as_i64().unwrap();
    let waiting = {
        let read = read.clone();
        std::thread::spawn(move || read(&format!("?after={v}&wait=30")))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The device's own report does not move the version: the waiter sleeps on.
    let patch = |path: &str, body: &str| {
        let status = rt().block_on(async {
            let mut req = reqwest::Client::new()
                .patch(format!("{}/{path}", serve.endpoint))
                .header("content-type", "application/json")
                .body(body.to_owned());
            if path.ends_with("reported") {
                let auth =
                    token(&format!("{host}/devices/waiter"), &key, None, crate::token_expiry());
                req = req.header("authorization", auth);
            }
            req.send().await.unwrap().status().as_u16()
        });
        assert_eq!(status, 200, "{path}");
    };
    patch("devices/waiter/twin/reported", r#"{"battery": 80}"#);
    std::thread::sleep(std::time::Duration::from_millis(300));
    patch("twins/waiter", r#"{"properties": {"desired": {"interval": 5}}}"#);
    let (woke, took) = waiting.join().unwrap();
    assert!(woke["$version"].as_i64().unwrap() > v, "{woke}");
    assert_eq!(woke["desired"]["interval"], 5, "woke with the change, not before it: {woke}");
    assert_eq!(woke["reported"]["battery"], 80);
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    // Nothing changes: the answer comes when the wait runs out, with the twin as it is.
    let now = woke["$version"].as_i64().unwrap();
    let (same, took) = read(&format!("?after={now}&wait=1"));
    assert_eq!(same["$version"].as_i64(), Some(now));
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
}

/// A credential that hands out a fixed token and records the scopes it was asked for.
#[derive(Debug)]
struct FixedToken {
    token: String,
    scopes: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for FixedToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        self.scopes.lock().unwrap().extend(scopes.iter().map(|s| (*s).to_owned()));
        Ok(azure_core::credentials::AccessToken::new(
            self.token.clone(),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

/// The client with a Microsoft Entra ID credential: it asks for IoT Hub's scope and sends the
/// token as a bearer token, which serve (standing in for Entra) checks against its --token.
#[test]
fn an_entra_credential_reaches_the_hub_with_a_bearer_token_for_the_iot_hub_scope() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), Some("entra-stand-in-token-1"));
    let rt = rt();
    let client = |token: &str| {
        let cred =
            std::sync::Arc::new(FixedToken { token: token.into(), scopes: Default::default() });
        (IotHubClient::with_entra(&serve.endpoint, cred.clone()).unwrap(), cred)
    };
    let (hub, cred) = client("entra-stand-in-token-1");
    rt.block_on(async {
        hub.create_device_as("gw-1", true).await.unwrap();
        assert_eq!(hub.get_twin("gw-1").await.unwrap().device_id, "gw-1");
        let agent = hub.get_module_twin("gw-1", "$edgeAgent").await.unwrap();
        assert_eq!(agent.module_id.as_deref(), Some("$edgeAgent"));
    });
    assert!(cred.scopes.lock().unwrap().iter().all(|s| s == otaforge::iothub::ENTRA_SCOPE));
    let (wrong, _) = client("not-the-serve-token");
    let e = rt.block_on(wrong.get_twin("gw-1")).unwrap_err();
    assert!(matches!(e, IotHubError::Unauthorized(_)), "{e}");
    assert!(IotHubClient::with_entra("myhub.azure-devices.net/x", Arc::clone(&cred) as _).is_err());
}

//! `otaforge serve`, `import` and `update` end to end: imports through the CLI, ADU error codes
//! for bad imports (checked on the raw REST API), the official Python SDK against the embedded
//! service, and kill -9 at random moments of imports leaving a consistent store.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{otaforge, stdout_json};

/// A running `otaforge serve` child process, killed (SIGKILL) when dropped.
pub(crate) struct Serve {
    child: Child,
    pub(crate) endpoint: String,
    /// What serve printed at start (`mqttListen`, `mqttCaFile`, `gatewayHostName`, …).
    pub(crate) info: Value,
    data: PathBuf,
    extra: Vec<String>,
}

impl Serve {
    pub(crate) fn start(data: &Path, token: Option<&str>) -> Self {
        Self::start_on(data, token, "127.0.0.1:0", &[])
    }

    /// With more `serve` options (`--allow-fetch`, `--stall-timeout`).
    pub(crate) fn start_with(data: &Path, extra: &[&str]) -> Self {
        Self::start_on(data, None, "127.0.0.1:0", extra)
    }

    /// The same addresses again after a restart (HTTP and MQTT), so URLs handed out before
    /// stay valid and devices find it where it was.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        let mut extra = self.extra.clone();
        if let Some(mqtt) = self.info["mqttListen"].as_str() {
            // Where it listened, not `:0` again.
            match extra.iter().position(|e| e == "--mqtt-listen") {
                Some(i) if i + 1 < extra.len() => extra[i + 1] = mqtt.to_owned(),
                _ => extra.extend(["--mqtt-listen".to_owned(), mqtt.to_owned()]),
            }
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        *self = Self::start_on(&self.data.clone(), None, &addr, &extra);
    }

    pub(crate) fn start_on(data: &Path, token: Option<&str>, listen: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("otaforge"));
        cmd.args(["--format", "json", "serve", "--listen", listen, "--data-dir"]).arg(data);
        cmd.args(extra);
        cmd.env_remove("OTAFORGE_ADU_TOKEN").env("XDG_CONFIG_HOME", crate::config_home());
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("otaforge serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("serve printed {line:?}: {e}"));
        Serve {
            child,
            endpoint: info["endpoint"].as_str().unwrap().to_owned(),
            info,
            data: data.to_path_buf(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The serve process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn blob_args(&self) -> Vec<String> {
        vec![
            "--dir".into(),
            self.data.join("blobs").display().to_string(),
            "--base-url".into(),
            format!("{}/blobs", self.endpoint),
        ]
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a script update (install.sh + payload.bin) and its manifest; returns the manifest.
pub(crate) fn make_update(dir: &Path, name: &str, version: &str, payload: &[u8]) -> PathBuf {
    let d = dir.join(format!("{name}-{version}"));
    fs_err::create_dir_all(&d).unwrap();
    fs_err::write(d.join("install.sh"), format!("#!/bin/sh\necho {name} {version}\n")).unwrap();
    fs_err::write(d.join("payload.bin"), payload).unwrap();
    otaforge()
        .current_dir(&d)
        .args(["manifest", "init", "--provider", "contoso", "--name", name, "--version", version])
        .args(["--compat", &format!("manufacturer=contoso,model={name}"), "--template", "script"])
        .args(["--file", "install.sh", "--file", "payload.bin", "--out-dir", "."])
        .assert()
        .success();
    d.join(format!("contoso.{name}.{version}.importmanifest.json"))
}

pub(crate) fn import(
    serve: &Serve,
    manifests: &[&Path],
    token: Option<&str>,
) -> (i32, Value, String) {
    let mut cmd = otaforge();
    cmd.args(["--format", "json", "import"]);
    for m in manifests {
        cmd.arg(m);
    }
    // No storage options: the import uploads into serve's own store.
    cmd.args(["--endpoint", &serve.endpoint, "--instance", "default", "--container", "imports"]);
    match token {
        Some(t) => cmd.env("OTAFORGE_ADU_TOKEN", t),
        None => cmd.env_remove("OTAFORGE_ADU_TOKEN"),
    };
    let out = cmd.output().unwrap();
    let json = if out.stdout.is_empty() { Value::Null } else { stdout_json(&out) };
    (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The URL of an API path of instance `default`, with the api-version.
pub(crate) fn api(serve: &Serve, path: &str) -> String {
    format!("{}/deviceUpdate/default/{path}?api-version=2022-10-01", serve.endpoint)
}

/// One HTTP request (no outside tool): status, JSON body (Null when not JSON), and the
/// response headers as `name: value` lines with lowercase names.
pub(crate) fn curl(
    method: &str,
    url: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> (u16, Value, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let head: String = resp
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
            .collect();
        let bytes = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), head)
    })
}

/// Uploads files to the service's blob store; returns `filename -> (url, size, sha256)`.
fn upload(serve: &Serve, files: &[PathBuf]) -> Vec<(String, String, u64, String)> {
    // Each directory gets its own prefix: update directories all hold install.sh.
    let prefix = files[0]
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = otaforge()
        .args(["--format", "json", "upload"])
        .args(files)
        .args(["--container", "raw", "--prefix", &prefix])
        .args(serve.blob_args())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    stdout_json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = Path::new(e["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                name,
                e["url"].as_str().unwrap().to_owned(),
                e["sizeInBytes"].as_u64().unwrap(),
                e["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// An import request body for one update directory.
fn request_for(serve: &Serve, manifest: &Path) -> Value {
    let dir = manifest.parent().unwrap();
    let up =
        upload(serve, &[manifest.to_path_buf(), dir.join("install.sh"), dir.join("payload.bin")]);
    json!([{
        "importManifest": {"url": up[0].1, "sizeInBytes": up[0].2, "hashes": {"sha256": up[0].3}},
        "files": up[1..].iter().map(|(n, u, _, _)| json!({"filename": n, "url": u})).collect::<Vec<_>>()
    }])
}

/// Posts an import and waits for the operation; returns it.
pub(crate) fn raw_import(serve: &Serve, body: &Value) -> Value {
    let (status, json, head) = curl("POST", &api(serve, "updates:import"), Some(body), None);
    assert_eq!(status, 202, "{json} {head}");
    let loc = head
        .lines()
        .find_map(|l| l.strip_prefix("operation-location: "))
        .unwrap()
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, op, _) = curl("GET", &format!("{}{loc}", serve.endpoint), None, None);
        if op["status"] == "Succeeded" || op["status"] == "Failed" {
            return op;
        }
        assert!(Instant::now() < deadline, "operation never finished: {op}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn import_through_the_cli_is_idempotent_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), Some("t0ken-for-tests-0123"));
    let child = make_update(dir.path(), "sensor", "1.0", &[7u8; 5000]);
    let (code, json, err) = import(&serve, &[&child], Some("t0ken-for-tests-0123"));
    assert_eq!(code, 0, "{json} {err}");
    assert_eq!(json["status"], "Succeeded");
    assert_eq!(json["imported"], json!(["contoso/sensor/1.0"]));
    // The same again: reported as already imported, not as a failure.
    let (code, json, _) = import(&serve, &[&child], Some("t0ken-for-tests-0123"));
    assert_eq!((code, json["status"].as_str()), (0, Some("AlreadyImported")));
    // Same id, other bytes: a conflict, not "already imported".
    let changed = make_update(&dir.path().join("v2"), "sensor", "1.0", &[8u8; 5000]);
    let (code, json, err) = import(&serve, &[&changed], Some("t0ken-for-tests-0123"));
    assert_eq!((code, json["error"].as_str()), (1, Some("UpdateAlreadyExists")), "{json} {err}");
    assert!(err.contains("different content"), "{err}");
    // Without the token the service refuses.
    let (code, json, err) = import(&serve, &[&child], None);
    assert_eq!(code, 1, "{json} {err}");
    assert_eq!(json["error"], "Unauthorized");
    assert_eq!(json["details"]["serviceError"]["code"], "Unauthorized");
    let out = otaforge()
        .env("OTAFORGE_ADU_TOKEN", "t0ken-for-tests-0123")
        .args([
            "--format",
            "json",
            "update",
            "list",
            "--endpoint",
            &serve.endpoint,
            "--instance",
            "default",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = stdout_json(&out);
    assert_eq!(
        list[0]["updateId"],
        json!({"provider": "contoso", "name": "sensor", "version": "1.0"})
    );
    let out = otaforge()
        .env("OTAFORGE_ADU_TOKEN", "t0ken-for-tests-0123")
        .args([
            "--format",
            "json",
            "update",
            "show",
            "contoso/sensor/1.0",
            "--files",
            "--endpoint",
            &serve.endpoint,
            "--instance",
            "default",
        ])
        .output()
        .unwrap();
    let shown = stdout_json(&out);
    assert_eq!(shown["files"].as_array().unwrap().len(), 2);
    // Delete is a long-running operation; afterwards the update is gone.
    otaforge()
        .env("OTAFORGE_ADU_TOKEN", "t0ken-for-tests-0123")
        .args([
            "update",
            "delete",
            "contoso/sensor/1.0",
            "--endpoint",
            &serve.endpoint,
            "--instance",
            "default",
        ])
        .assert()
        .success();
    let out = otaforge()
        .env("OTAFORGE_ADU_TOKEN", "t0ken-for-tests-0123")
        .args([
            "update",
            "show",
            "contoso/sensor/1.0",
            "--endpoint",
            &serve.endpoint,
            "--instance",
            "default",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn invalid_manifests_are_refused_before_anything_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), None);
    let m = make_update(dir.path(), "cam", "2.0", b"payload");
    fs_err::write(m.parent().unwrap().join("payload.bin"), b"changed").unwrap();
    let (code, json, err) = import(&serve, &[&m], None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(json["error"], "invalidManifest");
    assert!(err.contains("payload-sha256") && err.contains("nothing was uploaded"), "{err}");
    assert!(
        !serve.data.join("blobs/imports").exists(),
        "files were uploaded for an invalid manifest"
    );
}

#[test]
fn bad_imports_fail_with_adu_error_codes_naming_the_file_or_field() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), None);
    let m = make_update(dir.path(), "gw", "1.0", &[1u8; 3000]);
    let good = request_for(&serve, &m);
    let code_of = |op: &Value| op["error"]["code"].as_str().unwrap_or("").to_owned();

    // The manifest's size or hash in the request is wrong.
    let mut b = good.clone();
    b[0]["importManifest"]["hashes"]["sha256"] =
        json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let op = raw_import(&serve, &b);
    assert_eq!(code_of(&op), "CannotProcessImportManifest", "{op}");
    assert_eq!(op["error"]["details"][0]["code"], "HashMismatch");
    // A file the manifest names has no URL.
    let mut b = good.clone();
    b[0]["files"].as_array_mut().unwrap().retain(|f| f["filename"] != "payload.bin");
    let op = raw_import(&serve, &b);
    assert_eq!(
        (code_of(&op).as_str(), op["error"]["target"].as_str()),
        ("CannotProcessUpdateFile", Some("payload.bin")),
        "{op}"
    );
    assert_eq!(op["error"]["details"][0]["code"], "MissingFile");
    // A file at its URL differs from the manifest.
    let other = dir.path().join("other.bin");
    fs_err::write(&other, [2u8; 3000]).unwrap();
    let up = upload(&serve, &[other]);
    let mut b = good.clone();
    for f in b[0]["files"].as_array_mut().unwrap() {
        if f["filename"] == "payload.bin" {
            f["url"] = json!(up[0].1);
        }
    }
    let op = raw_import(&serve, &b);
    assert_eq!(code_of(&op), "CannotProcessUpdateFile", "{op}");
    assert!(op["error"]["message"].as_str().unwrap().contains("payload.bin"));
    // A URL that does not download (expired or forged signature).
    let mut b = good.clone();
    let url = b[0]["files"][0]["url"].as_str().unwrap().replace("sig=", "sig=x");
    b[0]["files"][0]["url"] = json!(url);
    let op = raw_import(&serve, &b);
    assert_eq!(code_of(&op), "ContentFileCannotDownload", "{op}");
    // A manifest that breaks the rules: every problem is listed with its JSON path.
    let bad_manifest = dir.path().join("bad.importmanifest.json");
    let mut doc: Value = serde_json::from_slice(&fs_err::read(&m).unwrap()).unwrap();
    doc["updateId"]["version"] = json!("1.0.0.0.0");
    doc["compatibility"] = json!([]);
    fs_err::write(&bad_manifest, doc.to_string()).unwrap();
    let up = upload(&serve, &[bad_manifest]);
    let mut b = good.clone();
    b[0]["importManifest"] =
        json!({"url": up[0].1, "sizeInBytes": up[0].2, "hashes": {"sha256": up[0].3}});
    let op = raw_import(&serve, &b);
    assert_eq!(code_of(&op), "CannotProcessImportManifest", "{op}");
    let targets: Vec<&str> = op["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["target"].as_str())
        .collect();
    assert!(
        targets.contains(&"$.updateId.version") && targets.contains(&"$.compatibility"),
        "{targets:?}"
    );
    // The good request imports; a second time it is a duplicate.
    assert_eq!(raw_import(&serve, &good)["status"], "Succeeded");
    let op = raw_import(&serve, &good);
    assert_eq!(code_of(&op), "UpdateAlreadyExists", "{op}");
    // Another provider/name may not reuse the same compatibility.
    let m2 = make_update(dir.path(), "gw2", "1.0", &[3u8; 10]);
    let mut doc: Value = serde_json::from_slice(&fs_err::read(&m2).unwrap()).unwrap();
    doc["compatibility"] = json!([{"manufacturer": "contoso", "model": "gw"}]);
    fs_err::write(&m2, doc.to_string()).unwrap();
    let op = raw_import(&serve, &request_for(&serve, &m2));
    assert_eq!(code_of(&op), "CompatibilityConflict", "{op}");

    // Request-shape limits are refused at once with 400.
    let import_url = api(&serve, "updates:import");
    let twelve = Value::Array((0..12).map(|_| good[0].clone()).collect());
    let (status, json, _) = curl("POST", &import_url, Some(&twelve), None);
    assert_eq!((status, json["error"]["code"].as_str()), (400, Some("InvalidImportRequest")));
    let mut eleven_files = good.clone();
    eleven_files[0]["files"] = Value::Array(
        (0..11).map(|i| json!({"filename": format!("f{i}"), "url": "http://x"})).collect(),
    );
    let (status, json, _) = curl("POST", &import_url, Some(&eleven_files), None);
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (400, Some("InvalidImportRequest")),
        "{json}"
    );
    let (status, json, _) = curl(
        "GET",
        &format!("{}/deviceUpdate/default/updates?api-version=2021-06-01-preview", serve.endpoint),
        None,
        None,
    );
    assert_eq!((status, json["error"]["code"].as_str()), (400, Some("UnsupportedApiVersion")));
    let (status, _, _) = curl(
        "GET",
        &format!("{}/deviceUpdate/other/updates?api-version=2022-10-01", serve.endpoint),
        None,
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = otaforge()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without --token"));
}

#[test]
#[ignore = "needs PyPI azure-iot-deviceupdate"]
fn the_official_python_sdk_drives_the_embedded_service() {
    let ok = Command::new("python3")
        .args(["-c", "import azure.iot.deviceupdate"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "PyPI azure-iot-deviceupdate is required: python3 -m pip install azure-iot-deviceupdate==1.1.0 (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), Some("sdk-token-for-tests-01"));
    let m = make_update(dir.path(), "probe", "3.2.1", &[9u8; 4096]);
    let body = request_for(&serve, &m);
    let body_path = dir.path().join("import.json");
    fs_err::write(&body_path, body.to_string()).unwrap();
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let result = crate::python_json(
        "adu_sdk_compat.py",
        &[
            host.as_ref(),
            "default".as_ref(),
            "sdk-token-for-tests-01".as_ref(),
            body_path.as_os_str(),
        ],
    );
    assert_eq!(result, json!({"operation": "Succeeded", "updates": 1, "files": 2, "left": 0}));
}

/// A file server for the soak test that stalls one chosen file at a chosen byte, so that a kill
/// lands at a known moment of an import (a fake server is fine for injecting faults).
struct StallServer {
    base: String,
    stalled: std::sync::mpsc::Receiver<()>,
}

impl StallServer {
    /// Serves `files` (name → bytes); a request for `stall.0` sends `stall.1` bytes, then says so
    /// on `stalled` and holds the connection open until the process that asked goes away.
    fn start(files: Vec<(String, Vec<u8>)>, stall: (String, usize)) -> Self {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let path = crate::read_request_path(&mut conn);
                let path = path.trim_start_matches('/');
                let mut buf = [0u8; 64];
                let Some((name, bytes)) = files.iter().find(|(n, _)| n == path) else {
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                    continue;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = conn.write_all(head.as_bytes());
                if *name == stall.0 {
                    let _ = conn.write_all(&bytes[..stall.1]);
                    let _ = conn.flush();
                    let _ = tx.send(());
                    // Hold the connection until the client dies (its reads then fail here).
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                    let _ = conn.read(&mut buf);
                } else {
                    let _ = conn.write_all(bytes);
                }
            }
        });
        StallServer { base, stalled: rx }
    }
}

#[test]
fn kill_9_at_fixed_moments_of_imports_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The stalling server is on loopback at a port of its own, which serve fetches from only
    // when told to.
    let mut serve = Serve::start_with(&data, &["--allow-fetch", "127.0.0.1:*"]);
    // Every kill point: which file of the import is stalled, and after how many bytes.
    let points: [(&str, f64); 6] = [
        ("manifest", 0.0),
        ("manifest", 0.5),
        ("install.sh", 0.0),
        ("payload.bin", 0.0),
        ("payload.bin", 0.5),
        ("payload.bin", 0.999),
    ];
    for (i, (file, share)) in points.iter().enumerate() {
        let m = make_update(dir.path(), &format!("dev{i}"), "1.0", &vec![i as u8; 256 << 10]);
        let d = m.parent().unwrap();
        let names = ["manifest", "install.sh", "payload.bin"];
        let files: Vec<(String, Vec<u8>)> =
            [m.clone(), d.join("install.sh"), d.join("payload.bin")]
                .iter()
                .zip(names)
                .map(|(p, n)| (n.to_owned(), fs_err::read(p).unwrap()))
                .collect();
        let len = files.iter().find(|(n, _)| n == file).unwrap().1.len();
        let stall_at = ((len as f64) * share) as usize;
        let fake = StallServer::start(files.clone(), ((*file).to_owned(), stall_at));
        let manifest = &files[0].1;
        let body = json!([{
            "importManifest": {
                "url": format!("{}/manifest", fake.base),
                "sizeInBytes": manifest.len(),
                "hashes": {"sha256": otaforge::Sha256::digest(manifest).to_base64()},
            },
            "files": [
                {"filename": "install.sh", "url": format!("{}/install.sh", fake.base)},
                {"filename": "payload.bin", "url": format!("{}/payload.bin", fake.base)},
            ],
        }]);
        let (status, _, _) = curl("POST", &api(&serve, "updates:import"), Some(&body), None);
        assert_eq!(status, 202);
        fake.stalled
            .recv_timeout(Duration::from_secs(60))
            .expect("the import reached the kill point");
        serve.restart();
        // Half-done downloads are cleaned up at start.
        let stray: Vec<_> = fs_err::read_dir(data.join("content"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".otaforge-"))
            .collect();
        assert!(stray.is_empty(), "temp files left after kill {i}: {stray:?}");
        // After a restart nothing is left running, and the interrupted import says so.
        let (_, ops, _) = curl("GET", &api(&serve, "updates/operations"), None, None);
        let ops = ops["value"].as_array().unwrap().clone();
        assert!(
            ops.iter().all(|o| o["status"] == "Succeeded" || o["status"] == "Failed"),
            "{ops:?}"
        );
        assert_eq!(
            ops[0]["error"]["code"], "OperationInterrupted",
            "kill {i} at {file}+{stall_at}: {}",
            ops[0]
        );
        // Nothing of the interrupted import is visible.
        let (status, _, _) = curl(
            "GET",
            &api(&serve, &format!("updates/providers/contoso/names/dev{i}/versions/1.0")),
            None,
            None,
        );
        assert_eq!(status, 404, "kill {i} left a visible update");
        // Every visible update is complete: both files are there.
        let (_, list, _) = curl("GET", &api(&serve, "updates"), None, None);
        for u in list["value"].as_array().unwrap() {
            let id = &u["updateId"];
            let (_, files, _) = curl(
                "GET",
                &api(
                    &serve,
                    &format!(
                        "updates/providers/{}/names/{}/versions/{}/files",
                        id["provider"].as_str().unwrap(),
                        id["name"].as_str().unwrap(),
                        id["version"].as_str().unwrap()
                    ),
                ),
                None,
                None,
            );
            assert_eq!(
                files["value"].as_array().map(Vec::len),
                Some(2),
                "update {id} is incomplete after kill {i}"
            );
        }
        // Re-running the import (from serve's own store) succeeds.
        let op = raw_import(&serve, &request_for(&serve, &m));
        assert_eq!(op["status"], "Succeeded", "rerun after kill {i}: {op}");
    }
    let (_, list, _) = curl("GET", &api(&serve, "updates"), None, None);
    assert_eq!(list["value"].as_array().unwrap().len(), points.len());
}

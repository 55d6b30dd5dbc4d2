//! The typed core: every example of the Device Update specification round-trips through the
//! service types; the library's import pipeline against `otaforge serve` with the local blob
//! store, with and without its signing stage; file names that would leave the manifest's folder refused everywhere; and the ADU
//! client's retry and paging paths against a stub that answers 429/503 and several pages.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otaforge::pipeline::{self, UploadPlan};
use otaforge::service::model::{
    Deployment, DeploymentDeviceState, DeploymentStatus, Device, DeviceClass, DeviceClassSubgroup,
    Group, Page, UpdateCompliance,
};
use otaforge::service::{AduClient, Auth, ImportItem, Update, UpdateOperation};
use otaforge::storage::dir::DirStore;
use serde_json::{Value, json};

use crate::{otaforge, stdout_json};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn shared_examples() -> PathBuf {
    let dir = std::env::var_os("OTAFORGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    dir.join("specs/deviceupdate-2022-10-01/examples")
}

/// Reads `v` as `T` and writes it again; the JSON must be the same document.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(what: &str, v: &Value) {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{what} does not read as {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, v, "{what} changed in a round trip through {}", std::any::type_name::<T>());
}

#[test]
#[ignore = "needs ../shared/specs (cargo xtask ci checks it is there)"]
fn every_spec_example_round_trips_through_the_service_types() {
    let dir = shared_examples();
    let mut checked = 0;
    let mut files: Vec<_> = fs_err::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 16, "{} holds {} examples", dir.display(), files.len());
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let doc: Value = serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
        let body = doc["responses"]["200"]["body"].clone();
        let params = &doc["parameters"];
        let what = |part: &str| format!("{name} {part}");
        match name.as_str() {
            "DeviceUpdate_ImportUpdate" => {
                round_trip::<Vec<ImportItem>>(&what("request"), &params["updateToImport"]);
                round_trip::<Update>(&what("200"), &body);
            }
            "DeviceUpdate_GetUpdate" => round_trip::<Update>(&what("200"), &body),
            "DeviceUpdate_ListUpdates" => round_trip::<Page<Update>>(&what("200"), &body),
            "DeviceUpdate_GetOperation" => round_trip::<UpdateOperation>(&what("200"), &body),
            "DeviceUpdate_DeleteUpdate" => {
                let loc = doc["responses"]["202"]["headers"]["Operation-Location"].as_str();
                assert!(loc.is_some_and(|l| l.contains("/operations/")), "{name}");
            }
            "DeviceManagement_CreateOrUpdateDeployment" => {
                round_trip::<Deployment>(&what("request"), &params["deployment"]);
                round_trip::<Deployment>(&what("200"), &body);
            }
            "DeviceManagement_StopDeployment" | "DeviceManagement_RetryDeployment" => {
                round_trip::<Deployment>(&what("200"), &body)
            }
            "DeviceManagement_GetDeploymentStatus" => {
                round_trip::<DeploymentStatus>(&what("200"), &body)
            }
            "DeviceManagement_GetGroup" => round_trip::<Group>(&what("200"), &body),
            "DeviceManagement_ListGroups" => round_trip::<Page<Group>>(&what("200"), &body),
            "DeviceManagement_GetUpdateCompliance" => {
                round_trip::<UpdateCompliance>(&what("200"), &body)
            }
            "DeviceManagement_ListDeviceClassSubgroupsForGroup" => {
                round_trip::<Page<DeviceClassSubgroup>>(&what("200"), &body)
            }
            "DeviceManagement_ListDeviceClasses" => {
                round_trip::<Page<DeviceClass>>(&what("200"), &body)
            }
            "DeviceManagement_ListDevices" => round_trip::<Page<Device>>(&what("200"), &body),
            "DeviceManagement_ListDeviceStatesForDeviceClassSubgroupDeployment" => {
                round_trip::<Page<DeploymentDeviceState>>(&what("200"), &body)
            }
            other => panic!("example {other} has no type mapped: add it here"),
        }
        checked += 1;
    }
    assert!(checked >= 16);
}

/// A running `otaforge serve`, killed when dropped.
struct Serve {
    child: std::process::Child,
    endpoint: String,
}

impl Serve {
    fn start(data: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
            .args(["--format", "json", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env_remove("OTAFORGE_ADU_TOKEN")
            .env("XDG_CONFIG_HOME", crate::config_home())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: Value = serde_json::from_str(&line).unwrap();
        Serve { child, endpoint: info["endpoint"].as_str().unwrap().to_owned() }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script_update(dir: &Path, name: &str, payload: &[u8]) -> PathBuf {
    fs_err::create_dir_all(dir).unwrap();
    fs_err::write(dir.join("install.sh"), "#!/bin/sh\n").unwrap();
    fs_err::write(dir.join("payload.bin"), payload).unwrap();
    otaforge()
        .current_dir(dir)
        .args(["manifest", "init", "--provider", "contoso", "--name", name, "--version", "1.0"])
        .args(["--compat", &format!("model={name}"), "--template", "script"])
        .args(["--file", "install.sh", "--file", "payload.bin", "--out-dir", "."])
        .assert()
        .success();
    dir.join(format!("contoso.{name}.1.0.importmanifest.json"))
}

#[test]
fn the_library_pipeline_imports_into_serve_through_the_local_blob_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data);
    let m = script_update(&dir.path().join("u"), "pipe", &[5u8; 10_000]);
    let client = AduClient::new(&serve.endpoint, "default", Auth::None).unwrap();
    // The dir store that serve publishes: the same folder, read URLs under serve's /blobs.
    let store = DirStore::open(&data.join("blobs"), &format!("{}/blobs", serve.endpoint)).unwrap();
    let plan = UploadPlan {
        container: "lib".parse().unwrap(),
        options: Default::default(),
        url_ttl: Duration::from_secs(600),
    };
    rt().block_on(async {
        let checked = pipeline::check(std::slice::from_ref(&m), 2, &otaforge::NoReporter).unwrap();
        assert_eq!(checked.updates.len(), 1);
        let planned = pipeline::plan(checked.clone(), &client).await.unwrap();
        assert_eq!((planned.todo.len(), planned.already.len()), (1, 0));
        let uploaded =
            pipeline::upload(planned, &store, &plan, &otaforge::NoReporter).await.unwrap();
        assert_eq!(uploaded.items.len(), 1);
        assert_eq!(uploaded.items[0].files.len(), 2);
        assert_eq!(uploaded.files.len(), 3, "manifest and two files");
        let started = pipeline::start(uploaded, &client).await.unwrap();
        let done =
            pipeline::wait(started, &client, Duration::from_secs(60), &mut |_| {}).await.unwrap();
        assert!(done.succeeded(), "{:?}", done.operation.error);
        assert_eq!(done.ids[0].to_string(), "contoso/pipe/1.0");
        // The same manifest again: planned as already imported, nothing to upload.
        let again = pipeline::plan(checked, &client).await.unwrap();
        assert_eq!((again.todo.len(), again.already.len()), (0, 1));
        let got = client.get_update(&done.ids[0]).await.unwrap().unwrap();
        assert_eq!(got.update_id, done.ids[0]);
        assert_eq!(client.update_files(&done.ids[0]).await.unwrap().len(), 2);
    });
}

#[test]
fn the_signing_stage_signs_what_is_uploaded_and_a_changed_payload_fails_verification() {
    use otaforge::sign::meta::{self, Policy, Timestamp};
    use otaforge::sign::{KeySigner, PrivateKey, Signer as _, TrustedKeys};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data);
    let m = script_update(&dir.path().join("u"), "signed", &[7u8; 4_000]);
    let client = AduClient::new(&serve.endpoint, "default", Auth::None).unwrap();
    let store = DirStore::open(&data.join("blobs"), &format!("{}/blobs", serve.endpoint)).unwrap();
    let signer = KeySigner::new(PrivateKey::from_seed(&[3u8; 32]));
    let created = Timestamp::parse("2026-11-29T00:00:00Z").unwrap();
    let sign_plan = pipeline::SignPlan {
        signers: vec![&signer],
        security_counter: 9,
        created,
        expires: created.checked_add(Duration::from_secs(30 * 86_400)).unwrap(),
        out_dir: dir.path().join("out"),
    };
    let upload_plan = UploadPlan {
        container: "signed".parse().unwrap(),
        options: Default::default(),
        url_ttl: Duration::from_secs(600),
    };
    let (signed, uploaded) = rt().block_on(async {
        let checked = pipeline::check(std::slice::from_ref(&m), 2, &otaforge::NoReporter).unwrap();
        let planned = pipeline::plan(checked, &client).await.unwrap();
        let signed = pipeline::sign(planned, &sign_plan).unwrap();
        let uploaded =
            pipeline::upload(signed.clone(), &store, &upload_plan, &otaforge::NoReporter)
                .await
                .unwrap();
        (signed, uploaded)
    });
    assert_eq!(signed.releases.len(), 1);
    let r = &signed.releases[0];
    assert_eq!(r.path, dir.path().join("out/contoso.signed.1.0.release.json"));
    assert_eq!(r.release.version.as_str(), "1.0");
    let names: Vec<&str> = r.release.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["contoso.signed.1.0.importmanifest.json", "install.sh", "payload.bin"]);
    // The metadata went up beside the update, but is not a file of the import.
    assert_eq!(uploaded.files.len(), 4);
    assert!(uploaded.files[3].blob.ends_with("contoso/signed/1.0/contoso.signed.1.0.release.json"));
    assert_eq!(uploaded.items[0].files.len(), 2);
    let stored = fs_err::read(data.join("blobs/signed").join(&uploaded.files[3].blob)).unwrap();
    assert_eq!(stored, fs_err::read(&r.path).unwrap());

    // A device with the public key accepts it, and the files it names are the files uploaded.
    let mut keys = TrustedKeys::new();
    keys.add(signer.public_key().clone());
    let text = String::from_utf8(stored).unwrap();
    let policy = Policy { threshold: 1, ..Policy::default() };
    let at = created.checked_add(Duration::from_secs(60)).unwrap().system_time();
    let (release, by) = meta::verify(&text, &keys, &policy, at).unwrap();
    assert_eq!((release.security_counter, by.len()), (9, 1));
    meta::verify_artifacts(&release, &dir.path().join("u")).unwrap();
    fs_err::write(dir.path().join("u/payload.bin"), [8u8; 4_000]).unwrap();
    let err = meta::verify_artifacts(&release, &dir.path().join("u")).unwrap_err();
    assert_eq!(err.kind(), "artifactMismatch", "{err}");
}

/// Rewrites the first file name of a manifest (and its step) to `name`.
fn rename_file(manifest: &Path, name: &str) {
    let mut doc: Value = serde_json::from_slice(&fs_err::read(manifest).unwrap()).unwrap();
    let old = doc["files"][0]["filename"].as_str().unwrap().to_owned();
    doc["files"][0]["filename"] = json!(name);
    for step in doc["instructions"]["steps"].as_array_mut().unwrap() {
        for f in step["files"].as_array_mut().unwrap() {
            if f == &json!(old) {
                *f = json!(name);
            }
        }
    }
    fs_err::write(manifest, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

#[test]
fn file_names_that_leave_the_manifest_folder_fail_validate_import_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data);
    // A secret beside the update folder that a "../secret" name would reach.
    fs_err::write(dir.path().join("secret"), b"do not read").unwrap();
    for (i, bad) in ["../secret", "a/b", "x\u{0}y"].iter().enumerate() {
        let m = script_update(&dir.path().join(format!("u{i}")), &format!("bad{i}"), b"p");
        rename_file(&m, bad);
        let out =
            otaforge().args(["--format", "json", "manifest", "validate"]).arg(&m).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "validate accepted {bad:?}");
        let report = stdout_json(&out);
        let rules: Vec<&str> = report[0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["rule"].as_str())
            .collect();
        assert!(rules.contains(&"filename-unsafe"), "{bad:?}: {rules:?}");
        let out = otaforge()
            .args(["--format", "json", "import"])
            .arg(&m)
            .args(["--endpoint", &serve.endpoint, "--instance", "default"])
            .env_remove("OTAFORGE_ADU_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "import accepted {bad:?}");
        assert_eq!(stdout_json(&out)["error"], "invalidManifest");
    }
    assert!(!data.join("blobs/adu-imports").exists(), "something was uploaded");
    // serve: an import request naming such a file is refused as a bad request.
    let body = json!([{
        "importManifest": {"url": "http://127.0.0.1:9/m.json", "sizeInBytes": 1, "hashes": {"sha256": "AAAA"}},
        "files": [{"filename": "../etc/passwd", "url": "http://127.0.0.1:9/x"}]
    }]);
    let rt = rt();
    let (status, answer) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/deviceUpdate/default/updates:import?api-version=2022-10-01",
                serve.endpoint
            ))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    });
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("InvalidImportRequest")));
    assert!(answer["error"]["message"].as_str().unwrap().contains("path separator"), "{answer}");
}

#[test]
fn a_manifest_with_an_unsafe_name_is_refused_by_serve_with_adu_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data);
    let m = script_update(&dir.path().join("u"), "srv", b"payload");
    rename_file(&m, "../payload.bin");
    // Upload the manifest to serve's store and point an import at it.
    let out = otaforge()
        .args(["--format", "json", "upload"])
        .arg(&m)
        .args(["--container", "raw", "--dir"])
        .arg(data.join("blobs"))
        .args(["--base-url", &format!("{}/blobs", serve.endpoint)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let up = &stdout_json(&out)[0];
    let body = json!([{
        "importManifest": {"url": up["url"], "sizeInBytes": up["sizeInBytes"], "hashes": {"sha256": up["sha256"]}},
        "files": []
    }]);
    let client = AduClient::new(&serve.endpoint, "default", Auth::None).unwrap();
    let items: Vec<ImportItem> = serde_json::from_value(body).unwrap();
    let op = rt().block_on(async {
        let id = client.import(&items).await.unwrap();
        client.wait_operation(&id, Duration::from_secs(30), &mut |_| {}).await.unwrap()
    });
    let err = op.error.expect("the import failed");
    assert_eq!(err.code, "CannotProcessImportManifest");
    assert!(err.details.iter().any(|d| d.code == "filename-unsafe"), "{err:?}");
}

/// A stub Device Update endpoint: answers each request with the next canned response and
/// records the paths it was asked for.
fn stub(responses: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut responses = responses.into_iter();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            log.lock().unwrap().push(crate::read_request_path(&mut conn));
            let Some(r) = responses.next() else { return };
            let _ = conn.write_all(r.as_bytes());
        }
    });
    (base, seen)
}

fn http(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
}

fn update_json(version: &str) -> Value {
    json!({"updateId": {"provider": "p", "name": "n", "version": version}, "compatibility": [{"m": "x"}],
           "manifestVersion": "5.0", "importedDateTime": "2026-01-01T00:00:00Z", "createdDateTime": "2026-01-01T00:00:00Z"})
}

#[test]
fn the_adu_client_retries_429_and_503_with_retry_after_and_follows_every_page() {
    let page1 = json!({"value": [update_json("1.0"), update_json("1.1")], "nextLink": "/deviceUpdate/i/updates?api-version=2022-10-01&skip=2"});
    let page2 = json!({"value": [update_json("1.2")], "nextLink": "/deviceUpdate/i/updates?api-version=2022-10-01&skip=3"});
    let page3 = json!({"value": [update_json("1.3")]});
    let (base, seen) = stub(vec![
        http(
            "429 Too Many Requests",
            "retry-after: 1\r\n",
            r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#,
        ),
        http("503 Service Unavailable", "x-ms-retry-after-ms: 50\r\n", ""),
        http("200 OK", "", &page1.to_string()),
        http("503 Service Unavailable", "retry-after: 0\r\n", ""),
        http("200 OK", "", &page2.to_string()),
        http("200 OK", "", &page3.to_string()),
    ]);
    let client = AduClient::new(&base, "i", Auth::None).unwrap();
    let started = std::time::Instant::now();
    let updates = rt().block_on(client.list_updates()).unwrap();
    let versions: Vec<String> = updates.iter().map(|u| u.update_id.version().to_string()).collect();
    assert_eq!(versions, ["1.0", "1.1", "1.2", "1.3"]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen[4].contains("skip=2") && seen[5].contains("skip=3"), "{seen:?}");
    // Retry-After: 1 was honoured (the exponential delay alone would be shorter).
    assert!(started.elapsed() >= Duration::from_millis(1000), "{:?}", started.elapsed());
}

#[test]
fn the_adu_client_gives_up_after_its_retries_with_the_service_error() {
    let busy = || {
        http(
            "503 Service Unavailable",
            "retry-after: 0\r\n",
            r#"{"error":{"code":"ServiceBusy","message":"busy"}}"#,
        )
    };
    let (base, seen) = stub(vec![busy(), busy(), busy(), busy(), busy()]);
    let client = AduClient::new(&base, "i", Auth::None)
        .unwrap()
        .with_retry(otaforge::retry::RetryPolicy { max_retries: 2, ..Default::default() });
    let err = rt().block_on(client.list_updates()).unwrap_err();
    assert_eq!(err.code(), Some("ServiceBusy"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 3, "one try and two retries");
    // A 404 is not retried.
    let (base, seen) = stub(vec![http(
        "404 Not Found",
        "",
        r#"{"error":{"code":"UpdateNotFound","message":"no"}}"#,
    )]);
    let client = AduClient::new(&base, "i", Auth::None).unwrap();
    let id = "p/n/1.0".parse().unwrap();
    assert!(rt().block_on(client.get_update(&id)).unwrap().is_none());
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn the_command_line_announces_each_retry_on_stderr() {
    let (base, _) = stub(vec![
        http("503 Service Unavailable", "x-ms-retry-after-ms: 20\r\n", ""),
        http("200 OK", "", &json!({"value": [update_json("1.0")]}).to_string()),
    ]);
    let out = otaforge()
        .args(["--format", "json", "update", "list", "--endpoint", &base, "--instance", "i"])
        .env_remove("OTAFORGE_ADU_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("answered 503; retrying in"), "{err}");
    assert_eq!(stdout_json(&out).as_array().map(Vec::len), Some(1));
}

//! A simulated fleet against `otaforge serve`: devices that really download, verify and install
//! (through a delta when their image is the delta's source), a deployment that completes, and
//! injected install failures that trigger the cloud rollback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use otaforge::fleet::{Failures, Fleet, FleetSpec};
use otaforge::iothub::ConnectionString;
use otaforge::manifest::UpdateId;
use otaforge::service::model::{Deployment, DeploymentState};
use otaforge::service::{AduClient, Auth};
use serde_json::{Map, Value, json};

use crate::otaforge;
use crate::service::{Serve, import};

const TOKEN: &str = "fleet-test-token-0123456";

pub(crate) fn image(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// A script update whose payload is `payload`; with `delta_from`, the payload also gets a delta
/// from that old image as a related file.
pub(crate) fn update(
    dir: &Path,
    version: &str,
    payload: &[u8],
    delta_from: Option<&[u8]>,
) -> std::path::PathBuf {
    let d = dir.join(format!("toaster-{version}"));
    fs_err::create_dir_all(&d).unwrap();
    fs_err::write(d.join("install.sh"), "#!/bin/sh\n").unwrap();
    fs_err::write(d.join("payload.bin"), payload).unwrap();
    let mut cmd = otaforge();
    cmd.current_dir(&d)
        .args([
            "manifest",
            "init",
            "--provider",
            "contoso",
            "--name",
            "toaster",
            "--version",
            version,
        ])
        .args([
            "--compat",
            "manufacturer=contoso,model=toaster",
            "--template",
            "script",
            "--file",
            "install.sh",
        ]);
    match delta_from {
        Some(old) => {
            fs_err::write(d.join("old.bin"), old).unwrap();
            otaforge()
                .current_dir(&d)
                .args(["delta", "create", "old.bin", "payload.bin", "-o", "payload.delta"])
                .assert()
                .success();
            cmd.args(["--file", "payload.bin,downloadHandler=otaforge/delta:1"])
                .args(["--related-file", "payload.bin=payload.delta,source=old.bin"]);
        }
        None => {
            cmd.args(["--file", "payload.bin"]);
        }
    }
    cmd.args(["--out-dir", "."]).assert().success();
    d.join(format!("contoso.toaster.{version}.importmanifest.json"))
}

pub(crate) fn spec(
    serve: &Serve,
    data: &Path,
    prefix: &str,
    devices: usize,
    group: &str,
) -> FleetSpec {
    let hub: ConnectionString = crate::hub_connection(data);
    let mut class = Map::new();
    class.insert("manufacturer".into(), json!("contoso"));
    class.insert("model".into(), json!("toaster"));
    FleetSpec {
        ca: Some(Arc::new(fs_err::read(serve.info["mqttCaFile"].as_str().unwrap()).unwrap())),
        hub,
        prefix: prefix.into(),
        devices,
        class,
        group: Some(group.into()),
        installed: None,
        failures: Failures::default(),
        seed: 7,
        poll: Duration::from_secs(20),
        parallel: 16,
        trusted: None,
        roots: Some(Arc::new(vec![
            serde_json::from_slice(&fs_err::read(data.join("update-root.jwk.json")).unwrap())
                .unwrap(),
        ])),
        edge: false,
    }
}

pub(crate) fn deployment(
    id: &str,
    group: &str,
    version: &str,
    rollback: Option<Value>,
) -> Deployment {
    let update = otaforge::manifest::UpdateId::new("contoso", "toaster", version).unwrap();
    let mut d = Deployment::new(
        id.parse().unwrap(),
        group.parse().unwrap(),
        update,
        "2026-11-29T00:00:00Z",
    );
    d.rollback_policy = rollback.map(|r| serde_json::from_value(r).unwrap());
    d
}

#[test]
fn a_fleet_installs_a_deployment_some_through_deltas_and_failures_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    let old = image(1, 64 << 10);
    let mut new = old.clone();
    new[1000..1200].fill(9);
    new.extend_from_slice(&image(2, 4096));
    for m in [update(dir.path(), "1.0", &old, None), update(dir.path(), "1.1", &new, Some(&old))] {
        let (code, json, err) = import(&serve, &[&m], Some(TOKEN));
        assert_eq!(code, 0, "{json} {err}");
    }
    let v10: UpdateId = "contoso/toaster/1.0".parse().unwrap();
    let client = AduClient::new(&serve.endpoint, "default", Auth::Static(TOKEN.into())).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Six devices run 1.0 (their image is the delta's source), four have nothing yet.
        let mut on_old = spec(&serve, &data, "lab-old", 6, "lab");
        on_old.installed = Some((v10.clone(), Arc::new(old.clone())));
        let fresh = spec(&serve, &data, "lab-new", 4, "lab");
        let a = Fleet::register(on_old).await.unwrap();
        let b = Fleet::register(fresh).await.unwrap();
        client
            .create_or_update_deployment(&deployment("lab-1-1", "lab", "1.1", None))
            .await
            .unwrap();
        let (ta, tb) = tokio::join!(
            a.run(Duration::from_secs(60), &|t| t.installed == 6),
            b.run(Duration::from_secs(60), &|t| t.installed == 4),
        );
        let (ta, tb) = (ta.unwrap(), tb.unwrap());
        assert_eq!((ta.installed, ta.through_delta, ta.failed), (6, 6, 0), "the 1.0 devices patch");
        assert_eq!(
            (tb.installed, tb.through_delta, tb.failed),
            (4, 0, 0),
            "the new devices download in full"
        );
        let status = client.deployment_status("lab", "lab-1-1").await.unwrap();
        assert_eq!(status.deployment_state, DeploymentState::Active);
        assert_eq!(status.subgroup_status[0].devices_completed_succeeded_count, Some(10));
        let c = client.update_compliance(Some("lab")).await.unwrap();
        assert_eq!((c.total_device_count, c.on_latest_update_device_count), (10, 10));

        // A canary group whose installs fail: at 2 failures and 50 % the rollback to 1.0 starts.
        let mut canary = spec(&serve, &data, "canary", 4, "canary");
        canary.installed = Some((v10.clone(), Arc::new(old.clone())));
        canary.failures = Failures { install: 1.0, ..Failures::default() };
        let c = Fleet::register(canary).await.unwrap();
        let policy = json!({
            "update": {"updateId": {"provider": "contoso", "name": "toaster", "version": "1.0"}},
            "failure": {"devicesFailedPercentage": 50, "devicesFailedCount": 2},
        });
        client
            .create_or_update_deployment(&deployment("canary-1-1", "canary", "1.1", Some(policy)))
            .await
            .unwrap();
        let tc = c.run(Duration::from_secs(60), &|t| t.failed >= 2).await.unwrap();
        assert!(tc.failed >= 2, "{tc:?}");
        let list = client.list_deployments("canary").await.unwrap();
        assert_eq!(list[0].deployment_id, "canary-1-1-rollback", "{list:?}");
        assert_eq!(list[0].is_cloud_initiated_rollback, Some(true));
        assert_eq!(
            client.deployment_status("canary", "canary-1-1").await.unwrap().deployment_state,
            DeploymentState::Inactive
        );
    });
}

#[test]
fn fleet_run_from_the_command_line_installs_what_is_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    let m = update(dir.path(), "2.0", &image(5, 8192), None);
    assert_eq!(import(&serve, &[&m], Some(TOKEN)).0, 0);
    let fleet = |run_for: &str| {
        otaforge()
            .args(["--format", "json", "fleet", "run"])
            .arg("--iothub-connection-file")
            .arg(data.join("iothub.connection-string"))
            .args(["--devices", "3", "--prefix", "cli", "--group", "cli"])
            .args(["--class", "manufacturer=contoso,model=toaster", "--for", run_for])
            .output()
            .unwrap()
    };
    // First run: the devices register (and join group `cli`); nothing is deployed yet.
    let out = fleet("1s");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(crate::stdout_json(&out)["installed"], 0);
    let client = AduClient::new(&serve.endpoint, "default", Auth::Static(TOKEN.into())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(client.create_or_update_deployment(&deployment("cli-2-0", "cli", "2.0", None)))
        .unwrap();
    // Second run: the same devices (found registered) install it.
    let out = fleet("4s");
    let json = crate::stdout_json(&out);
    assert_eq!((json["installed"].as_u64(), json["failed"].as_u64()), (Some(3), Some(0)), "{json}");
    let c = rt.block_on(client.update_compliance(Some("cli"))).unwrap();
    assert_eq!(c.on_latest_update_device_count, 3);
    // A share outside 0..1 is a usage error.
    let out = otaforge()
        .args(["fleet", "run", "--class", "model=x", "--fail", "install=2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// serve, the 1.0 (payload `old`) and 1.1 updates imported, and a client.
fn setup(dir: &Path) -> (Serve, std::path::PathBuf, AduClient, Vec<u8>) {
    let data = dir.join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    let old = image(3, 16 << 10);
    let new = image(4, 16 << 10);
    for m in [update(dir, "1.0", &old, None), update(dir, "1.1", &new, None)] {
        assert_eq!(import(&serve, &[&m], Some(TOKEN)).0, 0);
    }
    let client = AduClient::new(&serve.endpoint, "default", Auth::Static(TOKEN.into())).unwrap();
    (serve, data, client, new)
}

#[test]
fn a_scheduled_deployment_waits_and_a_device_that_joins_later_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, data, client, _) = setup(dir.path());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let first = Fleet::register(spec(&serve, &data, "early", 2, "sched")).await.unwrap();
        // Starts in 5 seconds: until then no device is told anything.
        let start =
            otaforge::time::Timestamp::now().unwrap().checked_add(Duration::from_secs(3)).unwrap();
        let mut d = deployment("later", "sched", "1.1", None);
        d.start_date_time = start.to_string();
        client.create_or_update_deployment(&d).await.unwrap();
        let early = first.run(Duration::from_millis(1500), &|_| false).await.unwrap();
        assert_eq!(early.installed, 0, "a deployment scheduled for later was acted on");
        // After the start time the serve loop writes it; a device that joins the group only now
        // gets it too (deployments are dynamic).
        let again = Fleet::register(spec(&serve, &data, "early", 2, "sched")).await.unwrap();
        let joiner = Fleet::register(spec(&serve, &data, "joiner", 1, "sched")).await.unwrap();
        let (a, b) = tokio::join!(
            again.run(Duration::from_secs(30), &|t| t.installed == 2),
            joiner.run(Duration::from_secs(30), &|t| t.installed == 1),
        );
        assert_eq!((a.unwrap().installed, b.unwrap().installed), (2, 1));
        let s = client.deployment_status("sched", "later").await.unwrap();
        assert_eq!(s.subgroup_status[0].devices_completed_succeeded_count, Some(3));
    });
}

#[test]
fn a_corrupted_blob_fails_the_device_with_a_hash_error() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, data, client, new) = setup(dir.path());
    // The stored 1.1 payload changes on disk after the import.
    let hex = otaforge::Sha256::digest(&new).to_hex();
    let stored = data.join("content").join(&hex);
    let mut bytes = fs_err::read(&stored).unwrap();
    bytes[100] ^= 0xff;
    fs_err::write(&stored, bytes).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let fleet = Fleet::register(spec(&serve, &data, "victim", 1, "corrupt")).await.unwrap();
        client
            .create_or_update_deployment(&deployment("bad-blob", "corrupt", "1.1", None))
            .await
            .unwrap();
        let t = fleet.run(Duration::from_secs(30), &|t| t.failed == 1).await.unwrap();
        assert_eq!((t.installed, t.failed), (0, 1));
        let device = client.get_device("victim-0000").await.unwrap().unwrap();
        let result = device.last_install_result.unwrap();
        assert_eq!(
            (result.result_code, result.extended_result_code),
            (0, 0x0010_0003),
            "ADUC_ERC_VALIDATION_FILE_HASH_INVALID_HASH, as the agent reports a hash mismatch"
        );
        assert!(result.result_details.unwrap_or_default().contains("sha256"));
        let s = client.deployment_status("corrupt", "bad-blob").await.unwrap();
        assert_eq!(s.deployment_state, DeploymentState::ActiveWithSubgroupFailures);
    });
}

#[test]
fn kill_9_of_serve_during_a_deployment_loses_and_doubles_nothing() {
    const DEVICES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = Serve::start(&data, None);
    let m = update(dir.path(), "1.1", &image(8, 32 << 10), None);
    assert_eq!(import(&serve, &[&m], None).0, 0);
    let client = AduClient::new(&serve.endpoint, "default", Auth::None).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fleet = rt.block_on(Fleet::register(spec(&serve, &data, "k9", DEVICES, "k9"))).unwrap();
    rt.block_on(client.create_or_update_deployment(&deployment("k9-1-1", "k9", "1.1", None)))
        .unwrap();
    let run = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(fleet.run(Duration::from_secs(300), &|t| t.installed == DEVICES as u64))
    });
    // Kill serve once some devices have reported, while others are still installing.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = rt.block_on(client.deployment_status("k9", "k9-1-1")).unwrap();
        if s.subgroup_status[0].devices_completed_succeeded_count.unwrap_or(0) >= 100 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no device installed");
        std::thread::sleep(Duration::from_millis(50));
    }
    serve.kill();
    std::thread::sleep(Duration::from_millis(1500));
    serve.restart();
    let tally = run.join().unwrap().unwrap();
    assert_eq!((tally.installed, tally.failed), (DEVICES as u64, 0), "{tally:?}");
    assert!(tally.unreachable > 0, "the devices never lost serve: {tally:?}");
    let s = rt.block_on(client.deployment_status("k9", "k9-1-1")).unwrap();
    let g = &s.subgroup_status[0];
    assert_eq!(
        (g.total_devices, g.devices_completed_succeeded_count, g.devices_in_progress_count),
        (Some(DEVICES as u64), Some(DEVICES as u64), Some(0))
    );
}

#[test]
fn deploy_watch_exits_0_when_every_device_succeeds_and_1_on_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, data, _, _) = setup(dir.path());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let good = rt.block_on(Fleet::register(spec(&serve, &data, "w", 3, "watched"))).unwrap();
    let mut bad_spec = spec(&serve, &data, "wb", 2, "watched-bad");
    bad_spec.failures = Failures { install: 1.0, ..Failures::default() };
    let bad = rt.block_on(Fleet::register(bad_spec)).unwrap();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            tokio::join!(
                good.run(Duration::from_secs(60), &|t| t.installed == 3),
                // Each device fails 1.1, then (install failures are certain) the rollback to
                // 1.0 too: stop once both failed at least once.
                bad.run(Duration::from_secs(60), &|t| t.failed >= 2),
            )
        })
    });
    let watch = |args: &[&str]| watch_deploy(&serve, Some(TOKEN), args);
    let (code, lines) = watch(&["create", "watched", "contoso/toaster/1.1", "--id", "w-1"]);
    assert_eq!(code, Some(0), "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["subgroupStatus"][0]["devicesCompletedSucceededCount"], 3, "{lines:?}");
    let (code, lines) = watch(&[
        "create",
        "watched-bad",
        "contoso/toaster/1.1",
        "--id",
        "wb-1",
        "--rollback-to",
        "contoso/toaster/1.0",
        "--rollback-failed-percent",
        "50",
        "--rollback-failed-count",
        "1",
    ]);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.last().unwrap()["rolledBack"], true, "{lines:?}");
    let (a, b) = runner.join().unwrap();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.installed, 3);
    assert!((2..=4).contains(&b.failed), "two devices, 1.1 and perhaps the rollback: {b:?}");
}

#[test]
fn devices_that_trust_another_root_refuse_the_update_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, data, client, _) = setup(dir.path());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut s = spec(&serve, &data, "wary", 2, "wary");
        // Same key id as serve's root, another key: the chain does not verify.
        let impostor = otaforge::sign::adu::RsaKey::generate("otaforge.root.1").unwrap();
        s.roots = Some(Arc::new(vec![impostor.public_jwk()]));
        let fleet = Fleet::register(s).await.unwrap();
        client
            .create_or_update_deployment(&deployment("wary-1", "wary", "1.1", None))
            .await
            .unwrap();
        let t = fleet.run(Duration::from_secs(30), &|t| t.failed == 2).await.unwrap();
        assert_eq!((t.installed, t.failed), (0, 2));
        let d = client.get_device("wary-0000").await.unwrap().unwrap();
        let r = d.last_install_result.unwrap();
        // JWSResult_InvalidSignature, packed as the agent packs it.
        assert_eq!(r.extended_result_code, 0xA020_0004_u32 as i32 as i64);
        assert!(
            r.result_details.unwrap_or_default().contains("root key"),
            "signature refusal named"
        );
    });
}

#[test]
fn serve_with_a_fleet_in_one_command_installs_what_is_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start_with(
        &data,
        &[
            "--fleet",
            "3",
            "--fleet-class",
            "manufacturer=contoso,model=toaster",
            "--fleet-group",
            "bench",
            "--fleet-prefix",
            "one",
        ],
    );
    let m = update(dir.path(), "1.0", &image(4, 8 << 10), None);
    let (code, json, err) = import(&serve, &[&m], None);
    assert_eq!(code, 0, "{json} {err}");
    // The devices may still be registering when the deployment is made: it reaches devices
    // that join later. --watch exits 0 once all three reported success.
    let (code, lines) =
        watch_deploy(&serve, None, &["create", "bench", "contoso/toaster/1.0", "--id", "one-cmd"]);
    assert_eq!(code, Some(0), "{lines:?}");
    let v = lines.last().unwrap();
    assert_eq!(v["subgroupStatus"][0]["devicesCompletedSucceededCount"], 3, "{v}");
}

/// `otaforge deploy ARGS --watch` against serve (60 s at most): its exit code and the JSON line
/// it printed for each change.
fn watch_deploy(serve: &Serve, token: Option<&str>, args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let mut cmd = otaforge();
    if let Some(t) = token {
        cmd.env("OTAFORGE_ADU_TOKEN", t);
    }
    let out = cmd
        .args(["--format", "json", "deploy"])
        .args(args)
        .args(["--watch", "--timeout", "60s", "--endpoint", &serve.endpoint])
        .args(["--instance", "default"])
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.code(), lines)
}

//! Device Update's device management read side in `otaforge serve`: devices that reported an
//! agent become Device Update devices, with classes from their compat properties, groups from
//! their `ADUGroup` tags, the best update of each class and compliance; read through otaforge's
//! client and through the official Python SDK.

use otaforge::iothub::sas::{SasKey, token};
use otaforge::iothub::{ConnectionString, IotHubClient};
use otaforge::service::{AduClient, Auth};
use serde_json::{Map, Value, json};

use crate::service::{Serve, import, make_update};

pub(crate) const TOKEN: &str = "management-token-0123456";

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A device's agent reporting itself as ADU agents do (adu.md §5.1).
pub(crate) fn agent_report(model: &str, installed: Option<&str>) -> Value {
    let mut agent = json!({
        "deviceProperties": {
            "manufacturer": "contoso", "model": model,
            "contractModelId": "dtmi:azure:iot:deviceUpdateContractModel;3", "aduVer": "DU;agent/1.1.0",
        },
        "compatPropertyNames": "manufacturer,model",
        "state": 0,
    });
    if let Some(v) = installed {
        agent["installedUpdateId"] =
            json!(json!({"provider": "contoso", "name": model, "version": v}).to_string());
    }
    json!({"deviceUpdate": {"__t": "c", "agent": agent}})
}

/// `serve`'s IoT Hub client.
pub(crate) fn hub(data: &std::path::Path) -> IotHubClient {
    let conn: ConnectionString = crate::hub_connection(data);
    IotHubClient::new(conn).unwrap()
}

/// A device's own report (with its own key), as its agent would send it.
pub(crate) async fn report(serve: &Serve, data: &std::path::Path, id: &str, reported: &Value) {
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let identity = hub(data).get_device(id).await.unwrap();
    let key = SasKey::from_base64(identity.primary_key().unwrap()).unwrap();
    let resp = reqwest::Client::new()
        .patch(format!("{}/devices/{id}/twin/reported", serve.endpoint))
        .header(
            "authorization",
            token(&format!("{host}/devices/{id}"), &key, None, crate::token_expiry()),
        )
        .header("content-type", "application/json")
        .body(reported.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Registers devices (id, model, installed version, group) in `serve`, each reporting as an agent.
pub(crate) fn register(
    serve: &Serve,
    data: &std::path::Path,
    devices: &[(&str, &str, Option<&str>, Option<&str>)],
) {
    let hub = hub(data);
    rt().block_on(async {
        for (id, model, installed, group) in devices {
            hub.create_device(id).await.unwrap();
            report(serve, data, id, &agent_report(model, *installed)).await;
            if let Some(g) = group {
                let mut tags = Map::new();
                tags.insert("ADUGroup".into(), json!(g));
                hub.patch_tags(id, tags, None).await.unwrap();
            }
        }
        // A registered device whose agent never reported is not a Device Update device.
        hub.create_device("no-agent").await.unwrap();
    });
}

pub(crate) fn fleet(serve: &Serve, data: &std::path::Path) {
    register(
        serve,
        data,
        &[
            ("t1", "toaster", Some("1.1"), Some("kitchen")),
            ("t2", "toaster", Some("1.0"), Some("kitchen")),
            ("t3", "toaster", Some("1.1"), None),
            ("k1", "kettle", None, Some("kitchen")),
        ],
    );
}

#[test]
fn devices_classes_groups_and_compliance_follow_the_twins_and_the_updates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    fleet(&serve, &data);
    for v in ["1.0", "1.1"] {
        let m = make_update(dir.path(), "toaster", v, v.as_bytes());
        let (code, json, err) = import(&serve, &[&m], Some(TOKEN));
        assert_eq!(code, 0, "{json} {err}");
    }
    let client = AduClient::new(&serve.endpoint, "default", Auth::Static(TOKEN.into())).unwrap();
    rt().block_on(async {
        let groups = client.list_groups().await.unwrap();
        let ids: Vec<(&str, Option<u64>)> =
            groups.iter().map(|g| (g.group_id.as_str(), g.device_count)).collect();
        assert_eq!(ids, [("kitchen", Some(3)), ("$default", Some(1))]);
        assert_eq!(groups[1].group_type.as_str(), "DefaultNoTag");
        assert!(client.get_group("garage").await.unwrap().is_none());

        let classes = client.list_device_classes().await.unwrap();
        assert_eq!(classes.len(), 2, "toaster and kettle");
        let toaster = classes
            .iter()
            .find(|c| c.device_class_properties.compat_properties["model"] == "toaster")
            .unwrap();
        assert_eq!(
            toaster.best_compatible_update.as_ref().map(|u| u.update_id.to_string()),
            Some("contoso/toaster/1.1".to_owned())
        );
        let kettle = classes.iter().find(|c| c.device_class_id != toaster.device_class_id).unwrap();
        assert!(kettle.best_compatible_update.is_none());

        let all = client.list_devices(None).await.unwrap();
        assert_eq!(all.len(), 4, "the device without an agent is not listed");
        let kitchen = client.list_devices(Some("groupId eq 'kitchen'")).await.unwrap();
        assert_eq!(
            kitchen.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(),
            ["t1", "t2", "k1"]
        );
        let filter =
            format!("groupId eq 'kitchen' and deviceClassId eq '{}'", toaster.device_class_id);
        assert_eq!(client.list_devices(Some(&filter)).await.unwrap().len(), 2);
        let t2 = client.get_device("t2").await.unwrap().unwrap();
        assert!(!t2.on_latest_update);
        assert_eq!(t2.installed_update.unwrap().update_id.to_string(), "contoso/toaster/1.0");
        assert!(client.get_device("t1").await.unwrap().unwrap().on_latest_update);
        assert!(client.get_device("no-agent").await.unwrap().is_none());

        // What each class can install, newest first; the best update per class of a group.
        let installable = client.installable_updates(&toaster.device_class_id).await.unwrap();
        let versions: Vec<String> =
            installable.iter().map(|u| u.update_id.version().to_string()).collect();
        assert_eq!(versions, ["1.1", "1.0"]);
        assert!(client.installable_updates(&kettle.device_class_id).await.unwrap().is_empty());
        let best = client.best_updates("kitchen").await.unwrap();
        assert_eq!(best.len(), 1, "no update fits the kettle: it is not listed");
        let toaster_best =
            best.iter().find(|b| b.device_class_id == toaster.device_class_id).unwrap();
        assert_eq!(
            (toaster_best.update.update_id.version().to_string(), toaster_best.device_count),
            ("1.1".to_owned(), 2)
        );
        // A class gets a friendly name; a bad one and a class with devices are refused.
        let named = client.name_device_class(&toaster.device_class_id, "toaster.v2").await.unwrap();
        assert_eq!(named.friendly_name.as_deref(), Some("toaster.v2"));
        let again = client.get_device_class(&toaster.device_class_id).await.unwrap().unwrap();
        assert_eq!(again.friendly_name.as_deref(), Some("toaster.v2"));
        let bad = client.name_device_class(&toaster.device_class_id, "no spaces").await.unwrap_err();
        assert!(matches!(bad, otaforge::service::ServiceError::Api { status: 400, .. }), "{bad}");
        let busy = client.delete_device_class(&toaster.device_class_id).await.unwrap_err();
        assert!(matches!(&busy, otaforge::service::ServiceError::Api { status: 409, error, .. } if error.code == "DeviceClassNotEmpty"), "{busy}");

        // Groups with devices, and the default group, cannot be deleted.
        let refused = |e: otaforge::service::ServiceError| match e {
            otaforge::service::ServiceError::Api { status, error, .. } => {
                (status, error.code.clone())
            }
            other => panic!("{other}"),
        };
        assert_eq!(
            refused(client.delete_group("kitchen").await.unwrap_err()),
            (400, "NotEmptyGroupCannotBeDeleted".to_owned())
        );
        assert_eq!(
            refused(client.delete_group("$default").await.unwrap_err()),
            (409, "CannotDeleteDefaultGroup".to_owned())
        );
        assert_eq!(
            refused(client.delete_group("nowhere").await.unwrap_err()),
            (404, "NotFound".to_owned())
        );

        // t1, t3 on 1.1 (latest), k1 with nothing to install: on latest; t2 behind.
        let c = client.update_compliance(None).await.unwrap();
        assert_eq!(
            (
                c.total_device_count,
                c.on_latest_update_device_count,
                c.new_updates_available_device_count
            ),
            (4, 3, 1)
        );
        let c = client.update_compliance(Some("kitchen")).await.unwrap();
        assert_eq!((c.total_device_count, c.new_updates_available_device_count), (3, 1));
    });
    // A bad filter is the service's error, not an empty list.
    let (status, json, _) = crate::service::curl(
        "GET",
        &format!(
            "{}/deviceUpdate/default/management/devices?api-version=2022-10-01&filter=model%20eq%20'x'",
            serve.endpoint
        ),
        None,
        Some(TOKEN),
    );
    assert_eq!((status, json["error"]["code"].as_str()), (400, Some("InvalidFilter")));
}

#[test]
#[ignore = "needs PyPI azure-iot-deviceupdate"]
fn the_official_python_sdk_reads_the_fleet_and_creates_a_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    fleet(&serve, &data);
    let m = make_update(dir.path(), "toaster", "1.1", b"1.1");
    let (code, json, err) = import(&serve, &[&m], Some(TOKEN));
    assert_eq!(code, 0, "{json} {err}");
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let got = crate::python_json(
        "adu_sdk_devices.py",
        &[host.as_ref(), "default".as_ref(), TOKEN.as_ref(), "kitchen".as_ref()],
    );
    assert_eq!(got["groups"], json!(["$default", "kitchen"]));
    assert_eq!(
        (got["groupDevices"].as_u64(), got["classes"].as_u64(), got["devices"].as_u64()),
        (Some(3), Some(2), Some(4))
    );
    assert_eq!(
        got["bestUpdate"],
        json!({"provider": "contoso", "name": "toaster", "version": "1.1"})
    );
    assert_eq!(got["inGroup"], json!(["k1", "t1", "t2"]));
    assert_eq!(got["compliance"]["totalDeviceCount"], 4);
    assert_eq!(got["compliance"]["newUpdatesAvailableDeviceCount"], 1);
    assert_eq!(got["groupCompliance"]["totalDeviceCount"], 3);
    assert_eq!(
        (got["deployment"].as_str(), got["deploymentState"].as_str()),
        (Some("sdk-rollout"), Some("Active"))
    );
    // t1 runs the deployed 1.1 already; t2 has not reported 1.1 yet.
    assert_eq!(got["deviceStates"], json!([["t1", "Succeeded"], ["t2", "InProgress"]]));
    assert_eq!((got["retried"].as_bool(), got["canceled"].as_bool()), (Some(true), Some(true)));
    assert_eq!(got["afterCancel"], "Canceled");
}

#[test]
fn the_cli_lists_groups_devices_and_compliance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    fleet(&serve, &data);
    let m = make_update(dir.path(), "toaster", "1.1", b"1.1");
    assert_eq!(import(&serve, &[&m], Some(TOKEN)).0, 0);
    let run = |args: &[&str]| {
        let out = crate::otaforge()
            .env("OTAFORGE_ADU_TOKEN", TOKEN)
            .args(["--format", "json"])
            .args(args)
            .args(["--endpoint", &serve.endpoint, "--instance", "default"])
            .output()
            .unwrap();
        (out.status.code(), crate::stdout_json(&out))
    };
    let (code, groups) = run(&["group", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(groups.as_array().unwrap().len(), 2);
    let (_, kitchen) = run(&["group", "show", "kitchen"]);
    assert_eq!(
        (
            kitchen["group"]["deviceCount"].as_u64(),
            kitchen["compliance"]["newUpdatesAvailableDeviceCount"].as_u64()
        ),
        (Some(3), Some(1))
    );
    let (_, devices) = run(&["device", "list", "--group", "kitchen"]);
    assert_eq!(devices.as_array().unwrap().len(), 3);
    let (_, t2) = run(&["device", "show", "t2"]);
    assert_eq!(
        (t2["deviceId"].as_str(), t2["onLatestUpdate"].as_bool()),
        (Some("t2"), Some(false))
    );
    let (code, missing) = run(&["device", "show", "nobody"]);
    assert_eq!((code, missing["error"].as_str()), (Some(1), Some("NotFound")));
    let (code, missing) = run(&["group", "show", "garage"]);
    assert_eq!((code, missing["error"].as_str()), (Some(1), Some("NotFound")));
    // Deployments from the command line.
    let (code, d) =
        run(&["deploy", "create", "kitchen", "contoso/toaster/1.1", "--id", "rollout-1"]);
    assert_eq!((code, d["deploymentId"].as_str()), (Some(0), Some("rollout-1")), "{d}");
    assert_eq!(d["deviceClassSubgroups"].as_array().map(Vec::len), Some(1));
    let (_, status) = run(&["deploy", "status", "kitchen", "rollout-1"]);
    assert_eq!(status["deploymentState"], "Active");
    let (_, list) = run(&["deploy", "list", "kitchen"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (code, e) = run(&["deploy", "create", "kitchen", "contoso/toaster/7.0"]);
    assert_eq!((code, e["error"].as_str()), (Some(1), Some("UpdateNotFound")));
    let (code, _) = run(&[
        "deploy",
        "create",
        "kitchen",
        "contoso/toaster/1.1",
        "--rollback-to",
        "contoso/toaster/1.0",
    ]);
    assert_eq!(code, Some(2), "rollback needs both thresholds");
    let (code, r) = run(&["deploy", "retry", "kitchen", "rollout-1"]);
    assert_eq!((code, r["deployment"]["isRetried"].as_bool()), (Some(0), Some(true)), "{r}");
    let (code, c) = run(&["deploy", "cancel", "kitchen", "rollout-1"]);
    assert_eq!((code, c["deployment"]["isCanceled"].as_bool()), (Some(0), Some(true)), "{c}");
    let (_, status) = run(&["deploy", "status", "kitchen", "rollout-1"]);
    assert_eq!(status["deploymentState"], "Canceled");
    let (code, e) = run(&["deploy", "retry", "kitchen", "rollout-1"]);
    assert_eq!((code, e["error"].as_str()), (Some(1), Some("DeploymentNotActive")));
    let (code, _) = run(&["deploy", "delete", "kitchen", "rollout-1"]);
    assert_eq!(code, Some(0));
    let (code, e) = run(&["deploy", "status", "kitchen", "rollout-1"]);
    assert_eq!((code, e["error"].as_str()), (Some(1), Some("NotFound")));
    let (_, c) = run(&["compliance"]);
    assert_eq!(
        (c["totalDeviceCount"].as_u64(), c["onLatestUpdateDeviceCount"].as_u64()),
        (Some(4), Some(3))
    );
}

#[test]
fn deployments_fan_out_to_compatible_subgroups_supersede_and_report_device_states() {
    use otaforge::service::model::{Deployment, DeploymentState, DeviceDeploymentState};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    fleet(&serve, &data);
    for v in ["1.0", "1.1"] {
        let m = make_update(dir.path(), "toaster", v, v.as_bytes());
        assert_eq!(import(&serve, &[&m], Some(TOKEN)).0, 0);
    }
    let client = AduClient::new(&serve.endpoint, "default", Auth::Static(TOKEN.into())).unwrap();
    let deployment = |id: &str, group: &str, version: &str| -> Deployment {
        Deployment::new(
            id.parse().unwrap(),
            group.parse().unwrap(),
            otaforge::manifest::UpdateId::new("contoso", "toaster", version).unwrap(),
            "2026-11-29T00:00:00Z",
        )
    };
    rt().block_on(async {
        let created = client.create_or_update_deployment(&deployment("d1", "kitchen", "1.1")).await.unwrap();
        // The kettle in the group is not a subgroup: the update does not fit its class.
        let subgroups = created.device_class_subgroups.clone().unwrap();
        assert_eq!(subgroups.len(), 1);
        let toaster = subgroups[0].clone();
        let status = client.deployment_status("kitchen", "d1").await.unwrap();
        assert_eq!(status.deployment_state, DeploymentState::Active);

        // What a device's agent reads: the workflow, the update manifest, and a URL per file that
        // serves exactly the bytes the manifest's hashes name.
        let twin = hub(&data).get_twin("t2").await.unwrap();
        let service = &twin.properties.desired["deviceUpdate"]["service"];
        assert_eq!(service["workflow"], json!({"action": 3, "id": "d1"}));
        let manifest: Value = serde_json::from_str(service["updateManifest"].as_str().unwrap()).unwrap();
        assert_eq!(manifest["updateId"]["version"], "1.1");
        if let Some(dir) = std::env::var_os("OTAFORGE_MANIFEST_OUT") {
            fs_err::create_dir_all(&dir).unwrap();
            let path = std::path::Path::new(&dir).join("deployment.t2.updatemanifest.json");
            fs_err::write(path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        }
        let files = manifest["files"].as_object().unwrap();
        assert_eq!(files.len(), 2, "install.sh and payload.bin");
        for (id, f) in files {
            let url = service["fileUrls"][id].as_str().unwrap();
            let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
            assert_eq!(bytes.len() as u64, f["sizeInBytes"].as_u64().unwrap());
            assert_eq!(otaforge::Sha256::digest(&bytes).to_base64(), f["hashes"]["sha256"].as_str().unwrap());
            // A changed signature is refused.
            let tampered = url.replace("sig=", "sig=x");
            assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);
        }
        let step_files = manifest["instructions"]["steps"][0]["files"].as_array().unwrap();
        assert!(step_files.iter().all(|id| files.contains_key(id.as_str().unwrap())));
        // The kettle is in the group but not in the deployment: nothing is written for it.
        let kettle = hub(&data).get_twin("k1").await.unwrap();
        assert!(kettle.properties.desired.get("deviceUpdate").is_none());
        let sg = &status.subgroup_status[0];
        // t1 already runs 1.1; t2 is on its way.
        assert_eq!((sg.total_devices, sg.devices_completed_succeeded_count, sg.devices_in_progress_count), (Some(2), Some(1), Some(1)));

        // t2's agent fails the deployment: the subgroup (nobody left in progress) has failed.
        report(&serve, &data, "t2", &json!({"deviceUpdate": {"agent": {"state": 255, "workflow": {"action": 3, "id": "d1"}}}})).await;
        let status = client.deployment_status("kitchen", "d1").await.unwrap();
        assert_eq!(status.deployment_state, DeploymentState::ActiveWithSubgroupFailures);
        let states = client.device_states("kitchen", &toaster, "d1").await.unwrap();
        let t2 = states.iter().find(|s| s.device_id == "t2").unwrap();
        assert_eq!(t2.device_state, DeviceDeploymentState::Failed);

        // Retry: the failure was for the try before, so t2 is back in progress.
        let retried = client.retry_subgroup("kitchen", &toaster, "d1").await.unwrap();
        assert_eq!(retried.is_retried, Some(true));
        assert_eq!(client.deployment_status("kitchen", "d1").await.unwrap().deployment_state, DeploymentState::Active);
        let states = client.device_states("kitchen", &toaster, "d1").await.unwrap();
        let t2 = states.iter().find(|s| s.device_id == "t2").unwrap();
        assert_eq!((t2.device_state.clone(), t2.retry_count), (DeviceDeploymentState::InProgress, 1));

        // A new deployment to the group supersedes the first.
        client.create_or_update_deployment(&deployment("d2", "kitchen", "1.0")).await.unwrap();
        assert_eq!(client.deployment_status("kitchen", "d1").await.unwrap().deployment_state, DeploymentState::Inactive);
        assert_eq!(client.deployment_status("kitchen", "d2").await.unwrap().deployment_state, DeploymentState::Active);
        let ids: Vec<String> = client.list_deployments("kitchen").await.unwrap().into_iter().map(|d| d.deployment_id.to_string()).collect();
        assert_eq!(ids, ["d2", "d1"]);

        // Refusals, each with its code; nothing is stored.
        let code = |e: otaforge::service::ServiceError| match e {
            otaforge::service::ServiceError::Api { status, error, .. } => (status, error.code.clone()),
            other => panic!("{other}"),
        };
        let e = client.create_or_update_deployment(&deployment("d3", "garage", "1.1")).await.unwrap_err();
        assert_eq!(code(e), (404, "GroupNotFound".to_owned()));
        let e = client.create_or_update_deployment(&deployment("d3", "kitchen", "9.9")).await.unwrap_err();
        assert_eq!(code(e), (400, "UpdateNotFound".to_owned()));
        // An id the rule refuses cannot even be made (DeploymentId), so it is sent as text.
        assert!("d 3".parse::<otaforge::service::model::DeploymentId>().is_err());
        let body = json!({"deploymentId": "d 3", "groupId": "kitchen",
            "startDateTime": "2026-11-29T00:00:00Z",
            "update": {"updateId": {"provider": "contoso", "name": "toaster", "version": "1.1"}}});
        let url = format!(
            "{}/deviceUpdate/default/management/groups/kitchen/deployments/d%203?api-version=2022-10-01",
            serve.endpoint
        );
        let resp = reqwest::Client::new()
            .put(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("InvalidDeploymentId")), "{v}");
        // A group of kettles only: the toaster update fits no subgroup.
        let mut tags = Map::new();
        tags.insert("ADUGroup".into(), json!("kettles"));
        hub(&data).patch_tags("k1", tags, None).await.unwrap();
        let e = client.create_or_update_deployment(&deployment("d4", "kettles", "1.1")).await.unwrap_err();
        assert_eq!(code(e), (400, "NoCompatibleSubgroup".to_owned()));
        assert_eq!(client.list_deployments("kitchen").await.unwrap().len(), 2);

        // Cancel d2's only subgroup: the deployment is canceled, devices not done are canceled,
        // and a canceled deployment cannot be retried.
        let canceled = client.cancel_subgroup("kitchen", &toaster, "d2").await.unwrap();
        assert_eq!(canceled.is_canceled, Some(true));
        let status = client.deployment_status("kitchen", "d2").await.unwrap();
        assert_eq!(status.deployment_state, DeploymentState::Canceled);
        assert_eq!(
            (status.subgroup_status[0].devices_canceled_count, status.subgroup_status[0].devices_completed_succeeded_count),
            (Some(1), Some(1)),
            "t2 already runs 1.0; t1 did not get it"
        );
        let e = client.retry_subgroup("kitchen", &toaster, "d2").await.unwrap_err();
        assert_eq!(code(e), (409, "DeploymentNotActive".to_owned()));

        client.delete_deployment("kitchen", "d1").await.unwrap();
        assert!(client.get_deployment("kitchen", "d1").await.unwrap().is_none());
    });
}

#[test]
fn a_cloud_rollback_starts_when_both_thresholds_are_met_and_not_one_failure_before() {
    use otaforge::service::model::{Deployment, DeploymentState};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    register(
        &serve,
        &data,
        &[
            ("r1", "toaster", Some("1.0"), Some("lab")),
            ("r2", "toaster", Some("1.0"), Some("lab")),
            ("r3", "toaster", Some("1.0"), Some("lab")),
            ("r4", "toaster", Some("1.0"), Some("lab")),
        ],
    );
    for v in ["1.0", "1.1"] {
        let m = make_update(dir.path(), "toaster", v, v.as_bytes());
        assert_eq!(import(&serve, &[&m], Some(TOKEN)).0, 0);
    }
    let client = AduClient::new(&serve.endpoint, "default", Auth::Static(TOKEN.into())).unwrap();
    // Count 1 and 50 %: one failure meets the count but not the share.
    let d: Deployment = serde_json::from_value(json!({
        "deploymentId": "risky", "groupId": "lab", "startDateTime": "2026-11-29T00:00:00Z",
        "update": {"updateId": {"provider": "contoso", "name": "toaster", "version": "1.1"}},
        "rollbackPolicy": {
            "update": {"updateId": {"provider": "contoso", "name": "toaster", "version": "1.0"}},
            "failure": {"devicesFailedPercentage": 50, "devicesFailedCount": 1},
        },
    }))
    .unwrap();
    rt().block_on(async {
        client.create_or_update_deployment(&d).await.unwrap();
        let fail = json!({"deviceUpdate": {"agent": {"state": 255, "workflow": {"action": 3, "id": "risky"}}}});
        report(&serve, &data, "r1", &fail).await;
        // One below the share (25 % < 50 %): no rollback.
        assert_eq!(client.list_deployments("lab").await.unwrap().len(), 1);
        assert_eq!(client.deployment_status("lab", "risky").await.unwrap().deployment_state, DeploymentState::Active);
        report(&serve, &data, "r2", &fail).await;
        // Exactly 50 % and at least 1: the rollback deployment takes over.
        let list = client.list_deployments("lab").await.unwrap();
        assert_eq!(list.len(), 2);
        let rollback = &list[0];
        assert_eq!(rollback.deployment_id, "risky-rollback");
        assert_eq!(rollback.is_cloud_initiated_rollback, Some(true));
        assert_eq!(rollback.update.update_id.to_string(), "contoso/toaster/1.0");
        assert_eq!(client.deployment_status("lab", "risky").await.unwrap().deployment_state, DeploymentState::Inactive);
        let status = client.deployment_status("lab", "risky-rollback").await.unwrap();
        assert_eq!(status.deployment_state, DeploymentState::Active);
        // Every device already runs 1.0, so the rollback has succeeded everywhere.
        assert_eq!(status.subgroup_status[0].devices_completed_succeeded_count, Some(4));
        // Further failures of the old deployment do not roll back twice.
        report(&serve, &data, "r3", &fail).await;
        assert_eq!(client.list_deployments("lab").await.unwrap().len(), 2);
    });
}

//! The whole Device Update surface of `otaforge serve` as the official Python SDK
//! (`azure-iot-deviceupdate`) reaches it: every request its operations build, counted by
//! `tests/python/adu_sdk_coverage.py` against the package's own request builders.

use otaforge::service::{AduClient, Auth};
use serde_json::{Value, json};

use crate::management::{TOKEN, fleet, rt};
use crate::service::{Serve, import, make_update};

/// The fixture the coverage script's calls name: a group, its toaster class, a device, a
/// deployment and an update serve holds (the module and log collection do not exist yet:
/// a 404 for a resource still proves the route).
fn fixture(serve: &Serve, dir: &std::path::Path) -> std::path::PathBuf {
    let client = AduClient::new(&serve.endpoint, "default", Auth::Static(TOKEN.into())).unwrap();
    let classes = rt().block_on(client.list_device_classes()).unwrap();
    let toaster = classes
        .iter()
        .find(|c| c.device_class_properties.compat_properties["model"] == "toaster")
        .unwrap();
    let doc = json!({
        "groupId": "kitchen",
        "deviceClassId": toaster.device_class_id,
        "deviceId": "t2",
        "moduleId": "adu",
        "update": {"provider": "contoso", "name": "toaster", "version": "1.1"},
        "deploymentId": "coverage",
        "logCollectionId": "coverage-logs",
        "importBody": [],
    });
    let path = dir.join("fixture.json");
    fs_err::write(&path, doc.to_string()).unwrap();
    path
}

#[test]
#[ignore = "needs PyPI azure-iot-deviceupdate: cargo xtask ci provisions it"]
fn the_official_python_sdk_reaches_every_route_in_both_api_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, Some(TOKEN));
    fleet(&serve, &data);
    let m = make_update(dir.path(), "toaster", "1.1", b"1.1");
    let (code, out, err) = import(&serve, &[&m], Some(TOKEN));
    assert_eq!(code, 0, "{out} {err}");
    let fixture = fixture(&serve, dir.path());
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    for version in otaforge::service::SUPPORTED_API_VERSIONS {
        let got: Value = crate::python_json(
            "adu_sdk_coverage.py",
            &[
                host.as_ref(),
                "default".as_ref(),
                TOKEN.as_ref(),
                version.as_ref(),
                fixture.as_os_str(),
            ],
        );
        // The script fails (and python_json with it) on any gap; the numbers are checked too,
        // so a package with fewer operations cannot pass unnoticed.
        assert_eq!((got["covered"].as_u64(), got["total"].as_u64()), (Some(50), Some(50)), "{got}");
        assert_eq!(got["missing"], json!([]), "{version}");
    }
}

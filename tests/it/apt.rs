//! `otaforge apt init|validate`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{otaforge, stdout_json, testdata};

#[test]
fn every_invalid_apt_fixture_fails_with_its_rule_and_path() {
    let dir = testdata("apt-invalid");
    let expected: BTreeMap<String, Value> =
        serde_json::from_slice(&fs_err::read(dir.join("expected.json")).unwrap()).unwrap();
    assert_eq!(
        fs_err::read_dir(&dir).unwrap().count(),
        expected.len() + 1,
        "expected.json must list every fixture"
    );
    for (name, exp) in &expected {
        let out = otaforge()
            .args(["apt", "validate", "--format", "json"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let report = &stdout_json(&out)[0];
        let hit = report["findings"].as_array().unwrap().iter().any(|f| {
            f["rule"] == exp["rule"] && f["path"] == exp["path"] && f["severity"] == "error"
        });
        assert!(hit, "{name}: expected {exp} in {}", report["findings"]);
    }
}

#[test]
fn valid_apt_manifest_reports_its_installed_criteria() {
    let out = otaforge()
        .args(["apt", "validate", "--format", "json"])
        .arg(testdata("apt/apt-manifest.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    assert_eq!(v[0]["installedCriteria"], "toaster-tools-1.0.3");
}

#[test]
fn init_reads_dpkg_query_output_from_stdin() {
    let out = otaforge()
        .args([
            "apt",
            "init",
            "--name",
            "base",
            "--version",
            "2024.1",
            "--packages-from",
            "-",
            "--agent-restart-required",
        ])
        .write_stdin("bash\t5.2.15-2+b2\nlibssl3:arm64\t3.0.11-1~deb12u2\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = stdout_json(&out);
    assert_eq!(
        v,
        serde_json::json!({
            "name": "base", "version": "2024.1",
            "packages": [{"name": "bash", "version": "5.2.15-2+b2"}, {"name": "libssl3", "version": "3.0.11-1~deb12u2"}],
            "agentRestartRequired": true
        })
    );
}

#[test]
fn init_refuses_bad_packages_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apt.json");
    let out = otaforge()
        .args([
            "apt",
            "init",
            "--name",
            "n",
            "--version",
            "1",
            "--package",
            "Bad_Name=1.0",
            "--package",
            "curl=>=7",
            "-o",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("$.packages[0].name") && err.contains("$.packages[1].version"), "{err}");
    assert!(!path.exists());
}

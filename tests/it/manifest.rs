//! `otaforge manifest init|validate` and the manifest library, against `testdata/`.

use std::collections::BTreeMap;
use std::path::Path;

use otaforge::manifest::{self, ImportManifest};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{export_manifest, otaforge, stdout_json, testdata};

const EPOCH: &str = "1700000000";

/// Runs `manifest init` with `args`, writing into `out_dir`; returns the written path.
fn init(out_dir: &Path, args: &[&str]) -> std::path::PathBuf {
    let out = otaforge()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["manifest", "init", "--format", "json", "--out-dir"])
        .arg(out_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
    let v = stdout_json(&out);
    std::path::PathBuf::from(v["file"].as_str().unwrap())
}

fn td(rel: &str) -> String {
    testdata(rel).display().to_string()
}

#[test]
fn regenerating_testdata_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let swu = init(
        dir.path(),
        &[
            "--provider=contoso",
            "--name=toaster",
            "--version=1.2",
            "--description=Toaster firmware 1.2",
            "--compat=manufacturer=contoso,model=toaster",
            "--template=swupdate",
            &format!("--file={},downloadHandler=otaforge/delta:1", td("swupdate/image-1.2.swu")),
            &format!("--file={}", td("swupdate/install.sh")),
            &format!(
                "--related-file=image-1.2.swu={},source={}",
                td("swupdate/image-1.1-to-1.2.delta"),
                td("swupdate/image-1.1.swu")
            ),
        ],
    );
    let apt_out = dir.path().join("apt-manifest.json");
    otaforge()
        .args(["apt", "init", "--name", "toaster-tools", "--version", "1.0.3", "--packages-from"])
        .arg(testdata("apt/packages.txt"))
        .args(["--package", "jq=1.6-2.1", "-o"])
        .arg(&apt_out)
        .assert()
        .code(0);
    let apt = init(
        dir.path(),
        &[
            "--provider=contoso",
            "--name=toaster-tools",
            "--version=1.0.3",
            "--compat=manufacturer=contoso,model=toaster",
            "--template=apt",
            &format!("--file={}", apt_out.display()),
        ],
    );
    let parent = init(
        dir.path(),
        &[
            "--provider=contoso",
            "--name=toaster-bundle",
            "--version=2.0",
            "--description=Bundle: pre-install, MCU firmware, tools",
            "--compat=manufacturer=contoso,model=toaster-bundle",
            "--template=parent",
            &format!("--file={}", td("multistep/pre-install.sh")),
            "--step-ref=contoso/toaster-mcu/3.1",
            "--step-ref=contoso/toaster-tools/1.0.3",
        ],
    );
    let mcu = init(
        dir.path(),
        &[
            "--provider=contoso",
            "--name=toaster-mcu",
            "--version=3.1",
            "--not-deployable",
            "--compat=manufacturer=contoso,model=toaster-mcu",
            "--template=script",
            &format!("--file={}", td("multistep/flash.sh")),
            &format!("--file={}", td("multistep/mcu-3.1.bin")),
        ],
    );
    for (made, committed) in [
        (swu, "swupdate/contoso.toaster.1.2.importmanifest.json"),
        (apt_out, "apt/apt-manifest.json"),
        (apt, "apt/contoso.toaster-tools.1.0.3.importmanifest.json"),
        (parent, "multistep/contoso.toaster-bundle.2.0.importmanifest.json"),
        (mcu, "multistep/contoso.toaster-mcu.3.1.importmanifest.json"),
    ] {
        let a = fs_err::read(&made).unwrap();
        let b = fs_err::read(testdata(committed)).unwrap();
        assert!(
            a == b,
            "{} differs from testdata/{committed}:\n{}",
            made.display(),
            String::from_utf8_lossy(&a)
        );
        if committed.ends_with(".importmanifest.json") {
            export_manifest(&made, "regenerated");
        }
    }
}

#[test]
fn every_construct_of_v5_can_be_expressed_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for (name, body) in [
        ("image.swu", "image v2\n"),
        ("image-v1.swu", "image v1\n"),
        ("v1-v2.delta", "delta\n"),
        ("install.sh", "#!/bin/sh\n"),
        ("notes.txt", "release notes\n"),
    ] {
        fs_err::write(p.join(name), body).unwrap();
    }
    fs_err::write(
        p.join("props.json"),
        r#"{"scriptFileName":"install.sh","arguments":"--a, --b","installedCriteria":"2.0"}"#,
    )
    .unwrap();
    let path = p.join("everything.importmanifest.json");
    let pj = |n: &str| p.join(n).display().to_string();
    let out = otaforge()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["manifest", "init", "--provider", "contoso", "--name", "toaster", "--version", "2.0.0.1"])
        .args(["--description", "All constructs", "--not-deployable"])
        .args(["--compat", "manufacturer=contoso,model=toaster", "--compat", "manufacturer=contoso,model=toaster-xl,rev=2"])
        .args(["--step-ref", "contoso/sensor/1.0"])
        .arg("--step")
        .arg(format!("handler=microsoft/script:1,files=install.sh;notes.txt,properties=@{},description=Run the script", pj("props.json")))
        .args(["--step", r#"handler=microsoft/swupdate:2,files=image.swu;install.sh,properties={"swuFileName":"image.swu","scriptFileName":"install.sh","installedCriteria":"2.0"}"#])
        .args(["--step-ref", "contoso/camera/1.2.3"])
        .arg("--file").arg(format!("{},downloadHandler=otaforge/delta:1", pj("image.swu")))
        .arg("--file").arg(pj("install.sh"))
        .arg("--file").arg(pj("notes.txt"))
        .arg("--related-file").arg(format!("image.swu={},source={},note=from v1", pj("v1-v2.delta"), pj("image-v1.swu")))
        .arg("-o").arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    export_manifest(&path, "constructs");
    let v: Value = serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
    let steps = v["instructions"]["steps"].as_array().unwrap();
    let kinds: Vec<String> = steps
        .iter()
        .map(|s| {
            s["type"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| s["handler"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        kinds,
        ["reference", "microsoft/script:1", "microsoft/swupdate:2", "reference"],
        "steps keep command-line order"
    );
    assert_eq!(v["isDeployable"], false);
    assert_eq!(v["compatibility"].as_array().unwrap().len(), 2);
    assert_eq!(steps[1]["description"], "Run the script");
    assert_eq!(steps[1]["handlerProperties"]["arguments"], "--a, --b");
    let related = &v["files"][0]["relatedFiles"][0];
    assert_eq!(related["properties"]["microsoft.sourceFileHashAlgorithm"], "sha256");
    assert_eq!(
        related["properties"]["microsoft.sourceFileHash"],
        otaforge::Sha256::digest(b"image v1\n").to_base64()
    );
    assert_eq!(related["properties"]["note"], "from v1");
    assert_eq!(v["files"][0]["downloadHandler"]["id"], "otaforge/delta:1");
    otaforge().args(["manifest", "validate", "--payload-dir"]).arg(p).arg(&path).assert().code(0);
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let args = [
        "--provider=contoso",
        "--name=toaster",
        "--version=1.0",
        "--compat=manufacturer=contoso,model=toaster",
        "--template=script",
    ];
    let file = format!("--file={}", td("multistep/flash.sh"));
    let pa = init(&a, &[&args[..], &[file.as_str()]].concat());
    let pb = init(&b, &[&args[..], &[file.as_str()]].concat());
    assert_eq!(fs_err::read(pa).unwrap(), fs_err::read(pb).unwrap());
}

#[test]
fn created_comes_from_flag_then_source_date_epoch() {
    let args = |extra: &[&str]| {
        let mut cmd = otaforge();
        cmd.args([
            "manifest",
            "init",
            "--provider=c",
            "--name=n",
            "--version=1.0",
            "--compat=a=b",
            "--step-ref=c/m/1.0",
        ]);
        cmd.args(extra);
        cmd
    };
    let v: Value = serde_json::from_slice(
        &args(&["--created", "2024-05-01T12:00:00Z"])
            .env("SOURCE_DATE_EPOCH", "0")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(v["createdDateTime"], "2024-05-01T12:00:00Z");
    let v: Value =
        serde_json::from_slice(&args(&[]).env("SOURCE_DATE_EPOCH", "0").output().unwrap().stdout)
            .unwrap();
    assert_eq!(v["createdDateTime"], "1970-01-01T00:00:00Z");
    args(&["--created", "last tuesday"]).assert().code(2);
}

#[test]
fn defaults_for_installed_criteria_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let out = otaforge()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["manifest", "init", "--provider=c", "--name=n", "--version=4.5", "--compat=a=b"])
        .arg(format!("--step=handler=microsoft/swupdate:1,files={}", "image-1.2.swu"))
        .arg(format!("--file={}", td("swupdate/image-1.2.swu")))
        .arg("-o")
        .arg(dir.path().join("m.importmanifest.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("using the update version '4.5'"), "{err}");
    let v: Value =
        serde_json::from_slice(&fs_err::read(dir.path().join("m.importmanifest.json")).unwrap())
            .unwrap();
    assert_eq!(v["instructions"]["steps"][0]["handlerProperties"]["installedCriteria"], "4.5");
    export_manifest(&dir.path().join("m.importmanifest.json"), "criteria-default");
}

#[test]
fn init_refuses_inconsistent_files_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.importmanifest.json");
    let base = |cmd: &mut assert_cmd::Command| {
        cmd.args([
            "manifest",
            "init",
            "--provider=c",
            "--name=n",
            "--version=1.0",
            "--compat=a=b",
            "-o",
        ])
        .arg(&out);
    };
    let cases: [(&[String], &str); 5] = [
        (
            &[format!("--file={}", td("multistep/flash.sh")), "--step-ref=c/m/1.0".into()],
            "is not used by any step",
        ),
        (&["--step=handler=microsoft/script:1,files=flash.sh".into()], "no --file has that name"),
        (
            &[
                "--step=handler=microsoft/script:1,files=flash.sh".into(),
                format!("--file={}", td("multistep/flash.sh")),
                format!("--related-file=image.swu={}", td("swupdate/install.sh")),
            ],
            "is not a --file",
        ),
        (
            &[
                "--step=handler=microsoft/apt:1,files=flash.sh".into(),
                format!("--file={}", td("multistep/flash.sh")),
            ],
            "cannot derive installedCriteria",
        ),
        (&["--template=nope".into()], "available: swupdate, apt, script, parent"),
    ];
    for (extra, words) in cases {
        let mut cmd = otaforge();
        base(&mut cmd);
        let o = cmd.args(extra).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(words), "{extra:?}: expected '{words}' in: {err}");
        assert!(!out.exists(), "{extra:?} left a file behind");
    }
    // A manifest that breaks a rule is a failed check (exit 1), listing every problem.
    let mut cmd = otaforge();
    base(&mut cmd);
    let o = cmd
        .args(["--step-ref=c/m/1.0", "--description", &"x".repeat(600), "--compat=k="])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("$.description") && err.contains("$.compatibility[1].k"), "{err}");
    assert!(!out.exists());
}

#[test]
fn every_invalid_fixture_fails_with_its_rule_and_path() {
    let dir = testdata("manifests/invalid");
    let expected: BTreeMap<String, Value> =
        serde_json::from_slice(&fs_err::read(dir.join("expected.json")).unwrap()).unwrap();
    let mut on_disk: Vec<String> = fs_err::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "expected.json")
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        expected.keys().cloned().collect::<Vec<_>>(),
        "expected.json must list every fixture"
    );
    for (name, exp) in &expected {
        let out = otaforge()
            .args(["manifest", "validate", "--format", "json"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {}", String::from_utf8_lossy(&out.stdout));
        let report = &stdout_json(&out)[0];
        assert_eq!(report["valid"], false, "{name}");
        let hit = report["findings"].as_array().unwrap().iter().any(|f| {
            f["rule"] == exp["rule"]
                && f["path"] == exp["path"]
                && f["severity"] == "error"
                && !f["message"].as_str().unwrap().is_empty()
        });
        assert!(hit, "{name}: expected {exp} in {}", report["findings"]);
    }
}

#[test]
fn validate_reports_in_text_with_path_and_hint() {
    let out = otaforge()
        .args(["manifest", "validate"])
        .arg(testdata("manifests/invalid/hash-hex.json"))
        .arg(testdata("manifests/invalid/related-without-download-handler.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).replace(env!("CARGO_MANIFEST_DIR"), "[ROOT]");
    insta::assert_snapshot!("validate_text", text);
}

#[test]
fn scenarios_validate_with_their_payloads() {
    for (dir, files) in [
        ("swupdate", vec!["contoso.toaster.1.2.importmanifest.json"]),
        ("apt", vec!["contoso.toaster-tools.1.0.3.importmanifest.json"]),
        (
            "multistep",
            vec![
                "contoso.toaster-bundle.2.0.importmanifest.json",
                "contoso.toaster-mcu.3.1.importmanifest.json",
                "contoso.toaster-tools.1.0.3.importmanifest.json",
            ],
        ),
    ] {
        let out = otaforge()
            .args(["manifest", "validate", "--format", "json", "--payload-dir"])
            .arg(testdata(dir))
            .args(files.iter().map(|f| testdata(&format!("{dir}/{f}"))))
            .output()
            .unwrap();
        let v = stdout_json(&out);
        assert_eq!(out.status.code(), Some(0), "{dir}: {v}");
        for r in v.as_array().unwrap() {
            assert_eq!(r["findings"], serde_json::json!([]), "{dir}: {r}");
        }
    }
}

#[test]
fn changed_or_missing_payloads_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "contoso.toaster.1.2.importmanifest.json",
        "image-1.2.swu",
        "install.sh",
        "image-1.1-to-1.2.delta",
    ] {
        fs_err::copy(testdata(&format!("swupdate/{f}")), dir.path().join(f)).unwrap();
    }
    fs_err::write(dir.path().join("install.sh"), "#!/bin/sh\nrm -rf /\n").unwrap();
    fs_err::remove_file(dir.path().join("image-1.1-to-1.2.delta")).unwrap();
    let out = otaforge()
        .args(["manifest", "validate", "--format", "json", "--payload-dir"])
        .arg(dir.path())
        .arg(dir.path().join("contoso.toaster.1.2.importmanifest.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    let got: Vec<(String, String)> = v[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["rule"].as_str().unwrap().to_owned(), f["path"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        got,
        [
            ("payload-missing".to_owned(), "$.files[0].relatedFiles[0].filename".to_owned()),
            ("payload-size".to_owned(), "$.files[1].sizeInBytes".to_owned()),
            ("payload-sha256".to_owned(), "$.files[1].hashes.sha256".to_owned()),
        ]
    );
}

#[test]
fn a_parent_is_checked_with_its_children() {
    let out = otaforge()
        .args(["manifest", "validate", "--format", "json"])
        .args(
            ["parent.json", "child.json", "grandchild.json"]
                .map(|f| testdata(&format!("manifests/set-invalid/{f}"))),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    let rules = |i: usize| -> Vec<String> {
        v[i]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{} {}", f["rule"].as_str().unwrap(), f["path"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(rules(0), ["reference-missing $.instructions.steps[1].updateId"]);
    assert_eq!(rules(1), ["child-reference $.instructions.steps[1]"]);
    assert_eq!(rules(2), Vec::<String>::new());
}

#[test]
fn reading_and_writing_round_trips_bytes_and_unknown_fields() {
    for rel in [
        "swupdate/contoso.toaster.1.2.importmanifest.json",
        "multistep/contoso.toaster-bundle.2.0.importmanifest.json",
        "apt/contoso.toaster-tools.1.0.3.importmanifest.json",
    ] {
        let bytes = fs_err::read(testdata(rel)).unwrap();
        let m: ImportManifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m.to_json_bytes().unwrap(), bytes, "{rel}");
    }
    let mut v: Value = serde_json::from_slice(
        &fs_err::read(testdata("manifests/valid/minimal.importmanifest.json")).unwrap(),
    )
    .unwrap();
    v["futureField"] = serde_json::json!({"x": [1, 2]});
    v["files"][0]["vendorTag"] = Value::String("keep me".into());
    let m: ImportManifest = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&m).unwrap(), v);
}

/// Any JSON value, up to a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(Value::from),
        "[a-zA-Z0-9./:=+ -]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("updateId".to_owned()),
                    Just("files".to_owned()),
                    Just("handler".to_owned()),
                    Just("sha256".to_owned()),
                    Just("steps".to_owned()),
                    "[a-z]{1,6}".prop_map(|s| s)
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a pseudo-random place in `doc` with `new`.
fn graft(doc: &mut Value, mut choice: usize, new: Value) {
    let mut cur = doc;
    loop {
        let n = match cur {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if n == 0 || choice.is_multiple_of(3) {
            *cur = new;
            return;
        }
        let i = (choice / 3) % n;
        choice /= 7;
        cur = match cur {
            Value::Object(m) => m.values_mut().nth(i).unwrap(),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn validation_never_panics_and_its_ok_means_the_model_reads_it(
        choice in any::<usize>(),
        new in arb_json(),
        base in prop_oneof![
            Just("manifests/valid/minimal.importmanifest.json"),
            Just("swupdate/contoso.toaster.1.2.importmanifest.json"),
            Just("multistep/contoso.toaster-bundle.2.0.importmanifest.json"),
        ],
    ) {
        let mut doc: Value = serde_json::from_slice(&fs_err::read(testdata(base)).unwrap()).unwrap();
        graft(&mut doc, choice, new);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let checked = manifest::check_bytes(Path::new("fuzz.json"), &bytes);
        // Whenever the validator reports no error, the typed model must read the document.
        prop_assert_eq!(checked.findings.has_errors(), checked.manifest.is_none(), "{:?}", checked.findings);
        for f in checked.findings.iter() {
            prop_assert!(f.path.to_string().starts_with('$'));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let checked = manifest::check_bytes(Path::new("x"), &bytes);
        prop_assert!(checked.manifest.is_none() || !checked.findings.has_errors());
    }
}

/// What the agent on the device would refuse is caught when the manifest is checked: a step
/// handler agent 1.1 no longer registers is a warning, and an error once the devices' agent
/// is given (every device would fail the step); a delta no smaller than its file is a warning.
#[test]
fn handlers_the_devices_agent_does_not_register_are_caught_before_import() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc: Value = serde_json::from_slice(
        &fs_err::read(td("manifests/valid/minimal.importmanifest.json")).unwrap(),
    )
    .unwrap();
    doc["instructions"]["steps"][0]["handler"] = json!("microsoft/swupdate:1");
    doc["instructions"]["steps"][0]["handlerProperties"] = json!({"installedCriteria": "1.0"});
    let path = dir.path().join("old-handler.importmanifest.json");
    fs_err::write(&path, doc.to_string()).unwrap();
    let validate = |extra: &[&str]| {
        let out = otaforge()
            .args(["--format", "json", "manifest", "validate"])
            .args(extra)
            .arg(&path)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rules: Vec<(String, String)> = v[0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (f["severity"].as_str().unwrap().to_owned(), f["rule"].as_str().unwrap().to_owned())
            })
            .collect();
        (out.status.code(), rules)
    };
    let warn = ("warning".to_owned(), "handler-removed".to_owned());
    assert_eq!(validate(&[]), (Some(0), vec![warn]));
    let (code, rules) = validate(&["--agent-version", "DU;agent/1.1.0"]);
    assert_eq!(
        (code, rules),
        (Some(1), vec![("error".to_owned(), "handler-not-registered".to_owned())])
    );
    assert_eq!(validate(&["--agent-version", "1.0.2"]), (Some(0), vec![]));
    let out = otaforge()
        .args(["manifest", "validate", "--agent-version", "1.1"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ADUC_ERC_UPDATE_CONTENT_HANDLER_CREATE_FAILURE_NOT_FOUND (0x30000003)"),
        "{text}"
    );
}

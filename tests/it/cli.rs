//! The exit-code contract and global options.

use crate::otaforge;

#[test]
fn usage_errors_exit_2() {
    otaforge().assert().code(2);
    otaforge().arg("frobnicate").assert().code(2);
    otaforge().args(["manifest", "init", "--provider", "a"]).assert().code(2);
    otaforge().args(["hash", "--format", "yaml", "x"]).assert().code(2);
}

#[test]
fn help_and_version_exit_0() {
    let out = otaforge().arg("--help").assert().code(0).get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("SOURCE_DATE_EPOCH") && text.contains("Exit codes"), "{text}");
    otaforge().arg("--version").assert().code(0);
    otaforge().args(["manifest", "init", "--help"]).assert().code(0);
}

#[test]
fn unreadable_input_exits_2_and_names_the_file() {
    let out = otaforge().args(["manifest", "validate", "/nonexistent/x.json"]).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("/nonexistent/x.json"), "{err}");
}

#[test]
fn templates_are_listed_in_text_and_json() {
    let out = otaforge().args(["manifest", "templates", "--format", "json"]).output().unwrap();
    assert!(out.status.success());
    let v = crate::stdout_json(&out);
    let names: Vec<&str> =
        v.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["swupdate", "apt", "script", "parent"]);
    let text = otaforge().args(["manifest", "templates"]).output().unwrap();
    insta::assert_snapshot!("templates", String::from_utf8_lossy(&text.stdout));
}

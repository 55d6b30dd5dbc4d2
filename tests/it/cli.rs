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

#[test]
fn help_examples_are_printed_as_written_and_paste_into_a_shell() {
    for args in [
        &["manifest", "init", "--help"][..],
        &["--help"][..],
        &["edge", "manifest", "build", "--help"][..],
        &["edge", "what-if", "--help"][..],
        &["edge", "deploy", "create", "--help"][..],
    ] {
        let out = otaforge().args(args).env("COLUMNS", "80").output().unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        let tail = help
            .split_once("Examples:")
            .or_else(|| help.split_once("Example:"))
            .or_else(|| help.split_once("Environment:"))
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{args:?}: no examples or environment section"));
        for line in tail.lines() {
            assert!(line.chars().count() <= 80, "{args:?}: wider than 80 columns: {line}");
        }
    }
    // The first example, run by a shell with `otaforge` standing for printf, passes the long
    // --step as one argument.
    let out = otaforge().args(["manifest", "init", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let example: String =
        help.split_once("Examples:\n").unwrap().1.split("\n\n").next().unwrap().replacen(
            "otaforge",
            "printf '%s\\n'",
            1,
        );
    let out = std::process::Command::new("sh").arg("-c").arg(&example).output().unwrap();
    let args = String::from_utf8(out.stdout).unwrap();
    assert!(
        args.lines().any(|a| a
            == r#"handler=microsoft/swupdate:2,files=image.swu;install.sh,properties={"installedCriteria":"1.2"}"#),
        "{args}"
    );
}

#[test]
fn global_options_come_after_a_commands_own() {
    let out = otaforge().args(["hash", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let own = help.find("--jobs").unwrap();
    let global = help.find("Global options:").unwrap();
    assert!(own < global && help[global..].contains("--format"), "{help}");
}

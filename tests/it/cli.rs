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

// ---------------------------------------------------------------------------------------------
// The shared argument groups (issue 23, item 6): contexts, retry notices, the environment list,
// one size rule, SAS URLs that hide their signature.
// ---------------------------------------------------------------------------------------------

mod contexts {
    use std::io::{BufRead as _, Read as _, Write as _};
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use serde_json::Value;

    use crate::{otaforge, stdout_json};

    const TOKEN: &str = "context-test-token-0123456789";

    /// `otaforge serve` with its own config directory, killed when dropped.
    struct Served {
        child: Child,
        endpoint: String,
        info: Value,
    }

    impl Served {
        fn start(xdg: &Path, data: &Path, extra: &[&str]) -> Self {
            let mut child = Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
                .args(["--format", "json"])
                .args(extra)
                .args(["serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir"])
                .arg(data)
                .env("XDG_CONFIG_HOME", xdg)
                .env_remove("OTAFORGE_ADU_TOKEN")
                .env_remove("OTAFORGE_CONTEXT")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let info: Value = serde_json::from_str(&line).unwrap();
            let endpoint = info["endpoint"].as_str().unwrap().to_owned();
            Served { child, endpoint, info }
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `otaforge ARGS` with this config directory (and no token in the environment).
    fn with(xdg: &Path, args: &[&str]) -> std::process::Output {
        otaforge()
            .env("XDG_CONFIG_HOME", xdg)
            .env_remove("OTAFORGE_ADU_TOKEN")
            .env_remove("IOTHUB_CONNECTION_STRING")
            .args(args)
            .output()
            .unwrap()
    }

    /// A one-shot HTTP server: answers `answer` to one request and hands back its head.
    fn one_request(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(answer.as_bytes());
            String::from_utf8_lossy(&head).into_owned()
        });
        (url, handle)
    }

    #[test]
    fn serve_records_a_context_that_every_command_uses_and_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().join("config");
        let serve = Served::start(&xdg, &dir.path().join("data"), &[]);
        assert_eq!(serve.info["context"], "local");

        // The file is private, and so is its folder.
        let file = xdg.join("otaforge/contexts.json");
        let mode = |p: &Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&file), mode(&xdg.join("otaforge"))), (0o600, 0o700));
        let saved: Value = serde_json::from_slice(&fs_err::read(&file).unwrap()).unwrap();
        assert_eq!(saved["current"], "local");
        let local = &saved["contexts"]["local"];
        assert_eq!(local["endpoint"], serve.endpoint.as_str());
        assert!(
            local["iothubConnectionFile"].as_str().unwrap().ends_with("iothub.connection-string")
        );
        assert!(local["rootKey"].as_str().unwrap().ends_with("update-root.jwk.json"));

        // No --endpoint, --instance or token: the context gives them, to ADU and IoT Hub calls.
        let out = with(&xdg, &["--format", "json", "update", "list"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout_json(&out), serde_json::json!([]));
        let out = with(&xdg, &["--format", "json", "group", "tag", "nosuch", "--group", "lab"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stdout_json(&out)["error"], "DeviceNotFound");

        // Secrets are shown redacted.
        for args in [&["context", "list"][..], &["context", "show"], &["context", "show", "local"]]
        {
            for format in ["text", "json"] {
                let out = with(&xdg, &[&["--format", format][..], args].concat());
                let text = String::from_utf8_lossy(&out.stdout);
                assert_eq!(out.status.code(), Some(0), "{args:?}");
                assert!(text.contains(&serve.endpoint), "{text}");
                // Text lists only names and endpoints; everything else shows the token's place.
                let listing = args == ["context", "list"] && format == "text";
                assert!(listing || text.contains("REDACTED"), "{args:?} {format}: {text}");
                assert!(!text.contains(TOKEN), "{args:?} printed the token: {text}");
            }
        }

        // Flags that name another service keep the current context out: its token is not sent.
        let (url, request) = one_request(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\nconnection: close\r\n\r\n{\"value\": []}",
        );
        let out = with(&xdg, &["update", "list", "--endpoint", &url, "--instance", "default"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let head = request.join().unwrap();
        assert!(!head.to_lowercase().contains("authorization"), "{head}");
        // Nor when the context is named but the flags point elsewhere.
        let (url, request) = one_request(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\nconnection: close\r\n\r\n{\"value\": []}",
        );
        let out = with(&xdg, &["--context", "local", "update", "list", "--endpoint", &url]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let head = request.join().unwrap();
        assert!(head.contains("/deviceUpdate/default/"), "the context's instance: {head}");
        assert!(!head.to_lowercase().contains("authorization"), "{head}");

        // A context that does not exist is an error, named by flag or environment.
        let out = with(&xdg, &["--context", "nosuch", "update", "list"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no context named `nosuch`"));
        let out = otaforge()
            .env("XDG_CONFIG_HOME", &xdg)
            .env("OTAFORGE_CONTEXT", "nosuch")
            .args(["update", "list"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let out = with(&xdg, &["--format", "json", "context", "use", "nosuch"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stdout_json(&out)["error"], "notFound");
    }

    #[test]
    fn azure_contexts_are_set_by_hand_and_one_is_current_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().join("config");
        let serve = Served::start(&xdg, &dir.path().join("data"), &["--context", "lab"]);
        assert_eq!(serve.info["context"], "lab");
        let azure = [
            "context",
            "set",
            "prod",
            "--endpoint",
            "https://contoso.api.adu.microsoft.com",
            "--instance",
            "fleet",
            "--adu-entra",
            "cli",
            "--iothub-host",
            "contoso.azure-devices.net",
            "--iothub-entra",
            "cli",
        ];
        assert_eq!(with(&xdg, &azure).status.code(), Some(0));
        let list = |xdg: &Path| stdout_json(&with(xdg, &["--format", "json", "context", "list"]));
        let names = |v: &Value| -> Vec<(String, bool)> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| (c["name"].as_str().unwrap().to_owned(), c["current"] == true))
                .collect()
        };
        assert_eq!(names(&list(&xdg)), [("lab".into(), true), ("prod".into(), false)]);
        let out = with(&xdg, &["--format", "json", "context", "use", "prod"]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(names(&list(&xdg)), [("lab".into(), false), ("prod".into(), true)]);
        let shown = stdout_json(&with(&xdg, &["--format", "json", "context", "show"]));
        assert_eq!(shown["endpoint"], "https://contoso.api.adu.microsoft.com");
        assert_eq!(
            (&shown["aduEntra"], &shown["iothubHost"]),
            (&"cli".into(), &"contoso.azure-devices.net".into())
        );
        // The context named for one command beats the current one, and carries serve's token.
        let out = with(&xdg, &["--format", "json", "--context", "lab", "update", "list"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let out = with(&xdg, &["--format", "json", "context", "delete", "prod"]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(names(&list(&xdg)), [("lab".into(), false)]);

        // Without XDG_CONFIG_HOME, contexts live under ~/.config.
        let home = dir.path().join("home");
        fs_err::create_dir_all(&home).unwrap();
        let out = otaforge()
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", &home)
            .args(["context", "set", "x", "--endpoint", "http://127.0.0.1:1", "--instance", "i"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(home.join(".config/otaforge/contexts.json").is_file());
    }

    #[test]
    fn with_no_context_and_no_flags_the_error_says_what_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let out = with(dir.path(), &["--format", "json", "update", "list"]);
        assert_eq!(out.status.code(), Some(2));
        let message = stdout_json(&out)["message"].as_str().unwrap().to_owned();
        assert!(message.contains("--endpoint") && message.contains("context"), "{message}");
    }
}

#[test]
fn retry_notices_respect_quiet() {
    // A service that is unavailable once (Retry-After: 0), then answers.
    let run = |quiet: bool| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            use std::io::Write as _;
            for answer in [
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\nconnection: close\r\n\r\n{\"value\": []}",
            ] {
                let (mut conn, _) = listener.accept().unwrap();
                crate::read_request_path(&mut conn);
                conn.write_all(answer.as_bytes()).unwrap();
            }
        });
        let mut cmd = otaforge();
        cmd.args(["update", "list", "--endpoint", &url, "--instance", "i"]);
        if quiet {
            cmd.arg("--quiet");
        }
        let out = cmd.output().unwrap();
        server.join().unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(false).contains("503; retrying"), "the retry was not announced");
    let quiet = run(true);
    assert!(quiet.is_empty(), "--quiet printed: {quiet}");
}

#[test]
fn the_help_names_every_environment_variable_otaforge_reads() {
    let help = String::from_utf8(otaforge().arg("--help").output().unwrap().stdout).unwrap();
    let env = include_str!("../../src/env.rs");
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(names.len() >= 12 && names.contains(&"IOTHUB_CONNECTION_STRING"), "{names:?}");
    let listed = help.split_once("Environment:").unwrap().1;
    for name in names {
        assert!(listed.contains(name), "--help does not list {name}");
    }
}

#[test]
fn every_size_option_reads_sizes_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    // Whether clap took the value: a refused one is a usage error that names it.
    let refused = |args: &[&str], value: &str| {
        let out = otaforge().current_dir(dir.path()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        err.contains("invalid value") && err.contains(value)
    };
    let upload = |v: &str| {
        refused(
            &["upload", "missing.bin", "--container", "fw1", "--dir", "d", "--block-size", v],
            v,
        )
    };
    let delta = |v: &str| {
        let args = ["delta", "create", "a", "b", "-o", "c", "--in-place", "--memory-size", "4M"];
        refused(&[&args[..], &["--segment-size", v]].concat(), v)
    };
    for v in ["1M", "1MiB", "1m", "1 mib", "0x100000", "1048576", "1024K", "1024KiB", "1024k"] {
        assert_eq!((upload(v), delta(v)), (false, false), "{v} was refused");
    }
    for v in ["1.5M", "1T", "M", "0x", "1MB", "eight", "+1M"] {
        assert_eq!((upload(v), delta(v)), (true, true), "{v} was taken");
    }
    // Only the range is the option's own: a block is 64 KiB to 4000 MiB.
    assert!(upload("4K") && !delta("4K"));
}

#[test]
fn read_urls_hide_their_signature_in_text_and_keep_it_in_json() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("fw.bin"), b"firmware").unwrap();
    let upload = |format: &str| {
        otaforge()
            .current_dir(dir.path())
            .args(["--format", format, "upload", "fw.bin", "--container", "fw1", "--dir", "store"])
            .output()
            .unwrap()
    };
    let text = upload("text");
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(shown.contains("sig=REDACTED"), "{shown}");
    let json = crate::stdout_json(&upload("json"));
    let url = json[0]["url"].as_str().unwrap();
    assert!(url.contains("sig=") && !url.contains("REDACTED"), "{url}");
}

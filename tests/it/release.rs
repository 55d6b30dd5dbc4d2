//! `otaforge release` end to end against `serve` with simulated devices: the quickstart
//! example (`testdata/release/quickstart`) released twice (1.1.0, then 1.2.0 with a delta from
//! 1.1.0), a canary stage that passes and a later stage whose injected failures fail its gate
//! and roll the group back; re-runs that change nothing; bad descriptions refused with the line
//! and field before anything is sent; a dry run that makes no network call.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::otaforge;
use crate::service::Serve;

/// Deterministic firmware: `len` bytes of a small LCG, with `edits` regions changed.
fn firmware(len: usize, edits: &[(usize, usize)]) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8 & 0x3f
        })
        .collect();
    for &(at, n) in edits {
        for b in &mut v[at..at + n] {
            *b = b.wrapping_add(7);
        }
    }
    v
}

/// The quickstart copied into `dir`, with a signing key and firmware `version`.
fn repo(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/release/quickstart");
    let root = dir.join("fw");
    fs_err::create_dir_all(root.join("build")).unwrap();
    fs_err::create_dir_all(root.join("keys")).unwrap();
    fs_err::copy(src.join("otaforge.toml"), root.join("otaforge.toml")).unwrap();
    let out = otaforge()
        .current_dir(&root)
        .args(["key", "generate", "-o", "keys/release"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    root
}

fn set_version(root: &Path, version: &str, image: &[u8]) {
    fs_err::write(root.join("VERSION"), format!("{version}\n")).unwrap();
    fs_err::write(root.join("build/firmware.bin"), image).unwrap();
}

/// `otaforge --format json release ARGS` in `root`: exit code, the JSON report, stderr.
fn release(root: &Path, serve: Option<&Serve>, args: &[&str]) -> (i32, Value, String) {
    let mut cmd = otaforge();
    cmd.current_dir(root)
        .env("SOURCE_DATE_EPOCH", "1764460800")
        .args(["--format", "json", "release", "--poll", "200ms"]);
    if let Some(s) = serve {
        cmd.args(["--endpoint", &s.endpoint]);
    }
    let out = cmd.args(args).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `otaforge --format json ARGS --endpoint SERVE --instance default`: its JSON output.
fn adu_json(serve: &Serve, args: &[&str]) -> Value {
    let out = otaforge()
        .args(["--format", "json"])
        .args(args)
        .args(["--endpoint", &serve.endpoint, "--instance", "default"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// `otaforge fleet run ARGS` against serve in the background (300 s at most).
fn spawn_fleet(serve: &Serve, data: &Path, args: &[&str]) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
        .args(["fleet", "run", "--for", "300s", "--mqtt-ca"])
        .arg(serve.info["mqttCaFile"].as_str().unwrap())
        .args(args)
        .arg("--iothub-connection-file")
        .arg(data.join("iothub.connection-string"))
        .env("CI", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A simulated fleet: `n` devices in `group` running 1.1.0 with `image`.
fn fleet(serve: &Serve, data: &Path, group: &str, n: usize, image: &Path, fail: &str) -> Child {
    let (n, image) = (n.to_string(), image.display().to_string());
    spawn_fleet(
        serve,
        data,
        &[
            "--devices",
            &n,
            "--prefix",
            group,
            "--group",
            group,
            "--class",
            "manufacturer=contoso,model=toaster",
            "--installed",
            "contoso/toaster/1.1.0",
            "--image",
            &image,
            "--fail",
            fail,
            "--seed",
            "5",
        ],
    )
}

fn without_delta(root: &Path) {
    let text = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    let start = text.find("[delta]").unwrap();
    let end = text[start..].find("[signing]").unwrap() + start;
    fs_err::write(root.join("otaforge.toml"), format!("{}{}", &text[..start], &text[end..]))
        .unwrap();
}

#[test]
fn the_quickstart_releases_through_a_canary_and_a_failed_gate_rolls_the_fleet_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let v11 = firmware(96 * 1024, &[]);
    let v12 = firmware(96 * 1024, &[(1000, 300), (40_000, 2000), (90_000, 64)]);

    // 1.1.0, the first release: no base yet, no stages.
    let toml = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    without_delta(&root);
    set_version(&root, "1.1.0", &v11);
    let (code, v, err) = release(&root, Some(&serve), &["--until", "canary", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["result"], "built", "{v:#}");
    let text = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    let stages_at = text.find("[[stage]]").unwrap();
    fs_err::write(root.join("otaforge.toml"), &text[..stages_at]).unwrap();
    let (code, v, err) = release(&root, Some(&serve), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (&v["imported"], &v["result"]),
        (&Value::Bool(true), &Value::from("passed")),
        "{v:#}"
    );
    let base_image = root.join("out/release/1.1.0/files/firmware.bin");
    assert_eq!(fs_err::read(&base_image).unwrap(), v11);

    // A stage naming a group the service does not have yet: refused before anything is sent.
    fs_err::write(root.join("otaforge.toml"), &toml).unwrap();
    set_version(&root, "1.2.0", &v12);
    let (code, v, err) = release(&root, Some(&serve), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("otaforge.toml:28: stage[0].group: group `canary` does not exist"),
        "{err}"
    );
    assert_eq!(v["error"], "invalidConfig");
    let listed = adu_json(&serve, &["update", "list"]);
    assert!(!listed.to_string().contains("1.2.0"), "nothing imported: {listed}");

    // Devices run 1.1.0: three canaries, and a fleet group whose installs fail.
    let mut canary = fleet(&serve, &data, "canary", 3, &base_image, "install=0");
    let mut rest = fleet(&serve, &data, "fleet", 4, &base_image, "install=1");

    // 1.2.0 with a delta from 1.1.0 and both stages.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The groups exist once the devices registered.
    let (code, v, err) = loop {
        let r = release(&root, Some(&serve), &[]);
        if !r.2.contains("does not exist on the service") || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(code, 1, "the fleet's gate fails: {err}\n{v:#}");
    let deltas = v["deltas"].as_array().unwrap();
    assert_eq!(deltas.len(), 1, "{v:#}");
    assert_eq!(deltas[0]["baseVersion"], "1.1.0");
    assert!(deltas[0]["file"]["sizeInBytes"].as_u64().unwrap() < 96 * 1024 / 4, "{v:#}");
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages[0]["result"], "passed", "{v:#}");
    assert_eq!(
        (stages[0]["succeeded"].as_u64(), stages[0]["devices"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(stages[1]["result"], "failed");
    assert_eq!(stages[1]["action"], "rolledBack to 1.1.0");
    assert_eq!(
        (&v["result"], &v["failedStage"]),
        (&Value::from("gateFailed"), &Value::from("fleet"))
    );
    // What is printed is the library's report, field for field.
    let report: otaforge::release::Report = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&report).unwrap(), v);
    assert!(stages[1]["reason"].as_str().unwrap().contains("of 4 devices failed"), "{v:#}");
    assert!(v["metadata"]["sha256"].is_string(), "signed release metadata: {v:#}");
    let uploaded = walk(&data);
    assert!(
        uploaded.iter().any(|p| p.ends_with("contoso/toaster/1.2.0/release.meta.json")),
        "the metadata is uploaded beside the update"
    );

    // The canaries installed 1.2.0 through the delta from their 1.1.0 image.
    let hub = otaforge::iothub::IotHubClient::new(crate::hub_connection(&data)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for i in 0..3 {
        let twin = rt.block_on(hub.get_twin(&format!("canary-{i:04}"))).unwrap();
        let agent = &twin.properties.reported["deviceUpdate"]["agent"];
        assert_eq!(agent["lastInstallResult"]["resultDetails"], "delta", "{agent:#}");
        assert!(agent["installedUpdateId"].as_str().unwrap().contains("1.2.0"), "{agent:#}");
    }
    // The rollback deployment is on the fleet group.
    let list = adu_json(&serve, &["deploy", "list", "fleet"]);
    assert!(list.to_string().contains("1-2-0-fleet-rollback"), "{list:#}");

    // A re-run changes nothing: same outputs, the same gate failure, no second import.
    let manifest = fs_err::read(
        root.join("out/release/1.2.0/files").join(v["manifest"]["name"].as_str().unwrap()),
    )
    .unwrap();
    let (code, again, err) = release(&root, Some(&serve), &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(again, v, "a re-run reports the same");
    assert_eq!(
        fs_err::read(
            root.join("out/release/1.2.0/files").join(v["manifest"]["name"].as_str().unwrap())
        )
        .unwrap(),
        manifest
    );
    let ops = adu_json(&serve, &["update", "operation"]);
    let imports = ops.as_array().map_or(0, Vec::len);
    assert_eq!(imports, 2, "one import per release: {ops:#}");
    let _ = canary.kill();
    let _ = rest.kill();
    let _ = canary.wait();
    let _ = rest.wait();
}

/// Every case of `testdata/release/negative.json` (a change to the quickstart's otaforge.toml)
/// is refused with exit 1 and `otaforge.toml:LINE: FIELD:`, before any network call (the
/// endpoint is a closed port) and without writing the release.
#[test]
fn every_bad_release_description_names_its_line_and_field_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    let good = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    // The base, 1.1.0, built offline.
    without_delta(&root);
    set_version(&root, "1.1.0", &firmware(4096, &[]));
    let (code, _, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    fs_err::write(root.join("otaforge.toml"), &good).unwrap();
    set_version(&root, "1.2.0", &firmware(4096, &[(10, 10)]));
    fs_err::write(root.join("build/other.bin"), b"x").unwrap();
    let (code, v, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "the unchanged quickstart is fine: {err}\n{v}");
    fs_err::remove_dir_all(root.join("out/release/1.2.0")).unwrap();
    let cases: Value = serde_json::from_slice(
        &fs_err::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/release/negative.json"))
            .unwrap(),
    )
    .unwrap();
    for c in cases.as_array().unwrap() {
        let name = c["case"].as_str().unwrap();
        let [from, to] = [&c["replace"][0], &c["replace"][1]].map(|v| v.as_str().unwrap());
        assert!(good.contains(from), "{name}: `{from}` is not in the quickstart");
        fs_err::write(root.join("otaforge.toml"), good.replacen(from, to, 1)).unwrap();
        let (code, v, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9"]);
        assert_eq!(code, 1, "{name}: {err}");
        let want = format!("otaforge.toml:{}: {}:", c["line"], c["field"].as_str().unwrap());
        assert!(err.contains(&want), "{name}: wanted `{want}` in:\n{err}");
        assert_eq!(v["error"], "invalidConfig", "{name}: {v}");
        assert!(!root.join("out/release/1.2.0").exists(), "{name}: nothing is written");
    }
}

/// `--dry-run` builds everything offline (the endpoint is a closed port) and writes only in the
/// output folder; the same inputs and SOURCE_DATE_EPOCH give byte-identical outputs.
#[test]
fn a_dry_run_sends_nothing_and_builds_byte_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    without_delta(&root);
    set_version(&root, "1.2.0", &firmware(64 * 1024, &[]));
    let before: Vec<_> = walk(&root);
    let (code, v, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["imported"], false);
    let after = walk(&root);
    let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(new.iter().all(|p| p.starts_with(root.join("out/release/1.2.0"))), "{new:?}");
    let manifest =
        root.join("out/release/1.2.0/files").join(v["manifest"]["name"].as_str().unwrap());
    let first = fs_err::read(&manifest).unwrap();
    fs_err::remove_dir_all(root.join("out")).unwrap();
    let (code, again, _) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(again, v);
    assert_eq!(fs_err::read(&manifest).unwrap(), first, "byte-identical");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// What the state file says was done when the process was killed.
/// Where a killed release was: from its state file, and for a release built but not recorded
/// as imported, from serve (its blobs for 1.2.0, its import operations).
fn reached(root: &Path, serve: &Serve, data: &Path) -> &'static str {
    let Ok(text) = fs_err::read_to_string(root.join("out/release/1.2.0/release-state.json")) else {
        return "nothing";
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if v["stages"].as_array().is_some_and(|s| !s.is_empty()) {
        "after a stage"
    } else if v["imported"] == true {
        "imported (mid-stage)"
    } else if v["metadata"].is_object() {
        let uploaded =
            walk(data).iter().any(|p| p.to_string_lossy().contains("contoso/toaster/1.2.0/"));
        let importing =
            adu_json(serve, &["update", "operation"]).as_array().is_some_and(|a| !a.is_empty());
        match (uploaded, importing) {
            (_, true) => "mid-import",
            (true, false) => "mid-upload",
            (false, false) => "built, before upload",
        }
    } else if v["artifacts"].as_array().is_some_and(|a| !a.is_empty()) {
        "mid-build"
    } else {
        "nothing"
    }
}

/// A release killed (SIGKILL) at ten moments, each on its own serve and devices, then run
/// again: the outputs and the report are the uninterrupted run's, and the update is imported
/// once.
#[test]
fn a_release_killed_at_any_moment_resumes_to_the_same_outputs_and_imports_once() {
    let dir = tempfile::tempdir().unwrap();
    let template = repo(dir.path());
    let toml = fs_err::read_to_string(template.join("otaforge.toml")).unwrap();
    without_delta(&template);
    set_version(&template, "1.1.0", &firmware(256 * 1024, &[]));
    let (code, _, err) =
        release(&template, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    // One stage (the canaries, all succeed).
    let one_stage = &toml[..toml.rfind("[[stage]]").unwrap()];
    fs_err::write(template.join("otaforge.toml"), one_stage).unwrap();
    set_version(&template, "1.2.0", &firmware(256 * 1024, &[(5000, 4000), (100_000, 300)]));
    let base_image = template.join("out/release/1.1.0/files/firmware.bin");

    let run = |n: usize, kill_after: Option<u64>| -> (Value, &'static str) {
        let root = dir.path().join(format!("run-{n}"));
        copy_dir(&template, &root);
        let data = dir.path().join(format!("data-{n}"));
        let serve = Serve::start(&data, None);
        let mut devices = fleet(&serve, &data, "canary", 3, &base_image, "install=0");
        let ready = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !group_exists(&serve, "canary") {
            assert!(std::time::Instant::now() < ready, "the canary group never appeared");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut at = "not killed";
        if let Some(ms) = kill_after {
            let mut child = Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
                .current_dir(&root)
                .env("SOURCE_DATE_EPOCH", "1764460800")
                .env("CI", "1")
                .args([
                    "--format",
                    "json",
                    "release",
                    "--poll",
                    "200ms",
                    "--endpoint",
                    &serve.endpoint,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let _ = child.kill();
            let _ = child.wait();
            at = reached(&root, &serve, &data);
        }
        let (code, v, err) = release(&root, Some(&serve), &[]);
        assert_eq!(code, 0, "run {n} (killed {at}): {err}");
        let ops = adu_json(&serve, &["update", "operation"]);
        assert_eq!(
            ops.as_array().map(Vec::len),
            Some(1),
            "run {n} (killed {at}): imported once: {ops:#}"
        );
        let _ = devices.kill();
        let _ = devices.wait();
        drop(serve);
        (v, at)
    };
    let (reference, _) = run(0, None);
    assert_eq!(reference["stages"][0]["result"], "passed", "{reference:#}");
    let mut seen = std::collections::BTreeMap::new();
    for (n, ms) in
        [0, 60, 120, 200, 250, 300, 350, 450, 600, 900, 1300, 2500].into_iter().enumerate()
    {
        let (v, at) = run(n + 1, Some(ms));
        let mut v = v;
        v["output"] = reference["output"].clone();
        v["files"] = reference["files"].clone();
        assert_eq!(v, reference, "killed after {ms} ms ({at})");
        *seen.entry(at).or_insert(0) += 1;
    }
    // The distribution depends on the machine's speed; each step a kill can land in must
    // resume, and at least three different ones are hit.
    assert!(seen.len() >= 3, "the kills landed in too few steps: {seen:?}");
}

fn group_exists(serve: &Serve, group: &str) -> bool {
    adu_json(serve, &["group", "list"]).to_string().contains(&format!("\"{group}\""))
}

fn copy_dir(from: &Path, to: &Path) {
    fs_err::create_dir_all(to).unwrap();
    for e in fs_err::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            fs_err::copy(&p, &target).unwrap();
        }
    }
}

/// `otaforge new` for each template, scaffolded into a small firmware repository (an MCU
/// application binary; a Yocto-style `.swu`; an APT manifest) and released end to end against
/// serve with simulated devices, up to the first stage: the examples a team copies cannot rot.
#[test]
fn every_new_template_releases_end_to_end_against_serve() {
    let dir = tempfile::tempdir().unwrap();
    let td = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    // Each template on its own serve: the Linux and APT examples share a compatibility, which
    // Device Update allows for one update name only.
    for (template, first_stage) in [("mcu", "canary"), ("linux", "lab"), ("apt", "lab")] {
        let data = dir.path().join(format!("data-{template}"));
        let serve = Serve::start(&data, None);
        let start_fleet = |group: &str, model: &str| {
            let class = format!("manufacturer=contoso,model={model}");
            spawn_fleet(
                &serve,
                &data,
                &["--devices", "2", "--prefix", group, "--group", group, "--class", &class],
            )
        };
        let mut fleets = if template == "mcu" {
            [start_fleet("canary", "sensor-v2")]
        } else {
            [start_fleet("lab", "gateway")]
        };
        // The small firmware repositories of testdata/release: a Zephyr-style MCU app and a
        // Yocto-style Linux gateway (an SWUpdate image and an APT manifest).
        let root = dir.path().join(template);
        let repo = if template == "mcu" { "zephyr-app" } else { "yocto-gateway" };
        copy_dir(&td.join("release").join(repo), &root);
        let out = otaforge()
            .args(["--format", "json", "new", "--xtask", "--template", template])
            .arg(&root)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{template}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(said["next"].as_str().unwrap().contains("otaforge release --dry-run"), "{said}");
        assert!(root.join("xtask/src/release.rs").is_file() && root.join("otaforge.mk").is_file());
        // A second `new` refuses to overwrite.
        let again = otaforge().args(["new", "--template", template]).arg(&root).output().unwrap();
        assert_eq!(again.status.code(), Some(2), "{template}");
        let key = |dir: &Path, name: &str| {
            let k =
                otaforge().current_dir(dir).args(["key", "generate", "-o", name]).output().unwrap();
            assert_eq!(k.status.code(), Some(0));
        };
        let mut env_key = None;
        let toml = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
        // Short waits for a test: the templates soak and time out in minutes and hours.
        let mut toml = toml.replace("soak = \"10m\"", "soak = \"1s\"");
        match template {
            "mcu" => {
                key(&root, "keys/release");
                // The release before, from the build history, is the delta base.
                let current = fs_err::read(root.join("build/zephyr/zephyr.bin")).unwrap();
                fs_err::copy(
                    root.join("history/1.3.0/zephyr.bin"),
                    root.join("build/zephyr/zephyr.bin"),
                )
                .unwrap();
                fs_err::write(root.join("VERSION"), "1.3.0\n").unwrap();
                fs_err::write(root.join("otaforge.toml"), &toml).unwrap();
                let (code, _, err) =
                    release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
                assert_eq!(code, 0, "{err}");
                fs_err::write(root.join("build/zephyr/zephyr.bin"), current).unwrap();
                fs_err::write(root.join("VERSION"), "1.4.0\n").unwrap();
                toml = toml.replace("bases = []", "bases = [\"out/release/1.3.0\"]");
            }
            "linux" => {
                key(dir.path(), "linux-ci");
                env_key = Some(fs_err::read_to_string(dir.path().join("linux-ci.pem")).unwrap());
            }
            _ => key(&root, "keys/release"),
        }
        fs_err::write(root.join("otaforge.toml"), &toml).unwrap();
        let ready = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !group_exists(&serve, first_stage) {
            assert!(std::time::Instant::now() < ready, "{first_stage} never appeared");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut cmd = otaforge();
        cmd.current_dir(&root).env("SOURCE_DATE_EPOCH", "1764460800");
        if let Some(k) = &env_key {
            cmd.env("OTAFORGE_SIGNING_KEY", k);
        }
        let out = cmd
            .args(["--format", "json", "release", "--poll", "200ms", "--until", first_stage])
            .args(["--endpoint", &serve.endpoint])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{template}: {}\n{v:#}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            (&v["result"], &v["stages"][0]["result"]),
            (&Value::from("passed"), &Value::from("passed")),
            "{template}: {v:#}"
        );
        assert_eq!(v["stages"].as_array().unwrap().len(), 1, "--until {first_stage}");
        if template == "mcu" {
            // An MCU delta from 1.3.0, between the two signed images.
            assert_eq!(v["deltas"][0]["baseVersion"], "1.3.0", "{v:#}");
            assert!(v["deltas"][0]["file"]["sizeInBytes"].as_u64().unwrap() < 4096, "{v:#}");
            // The shipped file is an MCUboot image imgtool's rules accept, signed by the key.
            let image = root.join("out/release/1.4.0/files/zephyr.bin");
            let verify = otaforge()
                .args(["mcuboot", "verify", "--pub"])
                .arg(root.join("keys/release.pub.pem"))
                .arg(&image)
                .output()
                .unwrap();
            assert_eq!(
                verify.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&verify.stderr)
            );
        }
        for f in &mut fleets {
            let _ = f.kill();
            let _ = f.wait();
        }
    }
}

/// otaforge.toml's JSON Schema (`release --schema`, generated from the same types the parser
/// uses) accepts the quickstart and every `otaforge new` template, refuses an unknown key, and
/// every field it names is documented in docs/release.md.
#[test]
fn the_generated_schema_accepts_the_examples_and_every_field_is_documented() {
    let out = otaforge().args(["release", "--schema"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = [
        "testdata/release/quickstart/otaforge.toml",
        "templates/new/mcu.toml",
        "templates/new/linux.toml",
        "templates/new/apt.toml",
    ];
    for e in examples {
        let doc: toml::Table =
            toml::from_str(&fs_err::read_to_string(root.join(e)).unwrap()).unwrap();
        let doc = serde_json::to_value(doc).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{e}: {errors:?}");
        let mut bad = doc.clone();
        bad["update"]["colour"] = Value::from("red");
        assert!(!validator.is_valid(&bad), "{e}: an unknown key is refused");
    }
    // Every property the schema names is in the field reference.
    let docs = fs_err::read_to_string(root.join("docs/release.md")).unwrap();
    let mut names = Vec::new();
    collect_properties(&schema, &mut names);
    let documented = |n: &str| {
        ["`{n}`", "`[{n}]`", "`[[{n}]]`"].iter().any(|f| docs.contains(&f.replace("{n}", n)))
    };
    let missing: Vec<&String> = names.iter().filter(|n| !documented(n)).collect();
    assert!(missing.is_empty(), "docs/release.md does not document {missing:?}");
}

fn collect_properties(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                for k in props.keys() {
                    if !out.contains(k) {
                        out.push(k.clone());
                    }
                }
            }
            for x in m.values() {
                collect_properties(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_properties(x, out)),
        _ => {}
    }
}

/// The `cargo xtask release` example a firmware team copies (`templates/new/xtask_release.rs`),
/// compiled here as it is and run against serve: the library entry point needs no subprocess.
#[path = "../../templates/new/xtask_release.rs"]
mod xtask_release;

#[test]
fn the_xtask_example_releases_through_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    without_delta(&root);
    let text = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    fs_err::write(root.join("otaforge.toml"), &text[..text.find("[[stage]]").unwrap()]).unwrap();
    set_version(&root, "1.1.0", &firmware(8 * 1024, &[]));
    let serve = Serve::start(&dir.path().join("data"), None);
    assert_eq!(xtask_release::run(&root.join("otaforge.toml"), Some(&serve.endpoint)), Ok(true));
    let state = fs_err::read_to_string(root.join("out/release/1.1.0/release-state.json")).unwrap();
    assert!(state.contains("\"imported\": true"), "{state}");
    // A bad description comes back as its lines, nothing sent.
    fs_err::write(root.join("VERSION"), "1.x\n").unwrap();
    let e = xtask_release::run(&root.join("otaforge.toml"), Some(&serve.endpoint)).unwrap_err();
    assert!(e.contains("otaforge.toml:7: update.version-file"), "{e}");
}

/// An IoT Edge release: `[edge]` names a deployment manifest and the stages target Edge devices
/// by condition. Against serve with simulated Edge devices: the canary stage passes; the next
/// stage's modules crash-loop, which IoT Hub's own reportedSuccessfulCount would count as
/// success but the device states do not, so its gate fails and its deployment is deleted: the
/// devices fall back to the previous release's deployment.
#[test]
fn an_edge_release_stops_on_crash_looping_modules_and_its_devices_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let conn = data.join("iothub.connection-string");
    let root = dir.path().join("edge-repo");
    fs_err::create_dir_all(&root).unwrap();
    let manifest = |image: &str| crate::edge::base_content(&[("sensor", image)]);
    fs_err::write(root.join("deployment.json"), manifest("contoso/sensor:2.0").to_string())
        .unwrap();
    fs_err::write(root.join("previous.json"), manifest("contoso/sensor:1.0").to_string()).unwrap();
    fs_err::write(
        root.join("otaforge.toml"),
        format!(
            r#"[update]
provider = "contoso"
name = "gateway-modules"
version = "2.0.0"
compatibility = [{{ manufacturer = "contoso", model = "gateway" }}]

[edge]
manifest = "deployment.json"
priority = 10

[service]
iothub-connection-file = "{}"

[[stage]]
name = "canary"
edge-target = "tags.ADUGroup = 'edge-canary'"
timeout = "1m"

[[stage]]
name = "fleet"
edge-target = "tags.ADUGroup = 'edge-fleet'"
timeout = "1m"
on-failure = "rollback"
"#,
            conn.display()
        ),
    )
    .unwrap();
    let edge_fleet = |group: &str, fail: &str| {
        spawn_fleet(
            &serve,
            &data,
            &["--edge", "--devices", "2", "--prefix", group, "--group", group, "--fail", fail],
        )
    };
    let mut fleets = [edge_fleet("edge-canary", "crash=0"), edge_fleet("edge-fleet", "crash=1")];
    // The previous release, below this one, on every gateway.
    let previous = otaforge()
        .current_dir(&root)
        .args(["edge", "deploy", "create", "gateway-modules-1-0-0", "--content", "previous.json"])
        .args([
            "--target-condition",
            "tags.ADUGroup IN ['edge-canary', 'edge-fleet']",
            "--priority",
            "5",
        ])
        .arg("--iothub-connection-file")
        .arg(&conn)
        .output()
        .unwrap();
    assert_eq!(previous.status.code(), Some(0), "{}", String::from_utf8_lossy(&previous.stderr));
    let hub = otaforge::iothub::IotHubClient::new(crate::hub_connection(&data)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Wait for the four devices to be tagged.
    let ready = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rt
        .block_on(hub.query_twins("SELECT * FROM devices WHERE IS_DEFINED(tags.ADUGroup)"))
        .unwrap()
        .len()
        < 4
    {
        assert!(std::time::Instant::now() < ready, "the Edge devices never registered");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, v, err) = release(&root, Some(&serve), &[]);
    assert_eq!(code, 1, "{err}\n{v:#}");
    assert_eq!(v["imported"], false, "an Edge-only release imports nothing");
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(
        (&stages[0]["result"], stages[0]["succeeded"].as_u64()),
        (&Value::from("passed"), Some(2)),
        "{v:#}"
    );
    assert_eq!(stages[0]["deploymentId"], "gateway-modules-2-0-0-canary");
    assert_eq!(
        (&stages[1]["result"], stages[1]["failed"].as_u64()),
        (&Value::from("failed"), Some(2)),
        "{v:#}"
    );
    assert!(stages[1]["action"].as_str().unwrap().starts_with("deleted"), "{v:#}");
    // The failed stage's deployment is gone; its devices are back on the previous release.
    assert!(rt.block_on(hub.get_configuration("gateway-modules-2-0-0-fleet")).is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let agent = rt.block_on(hub.get_module_twin("edge-fleet-0000", "$edgeAgent")).unwrap();
        let image = agent.properties.desired["modules"]["sensor"]["settings"]["image"].clone();
        if image == "contoso/sensor:1.0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "edge-fleet-0000 still wants {image}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let canary = rt.block_on(hub.get_module_twin("edge-canary-0000", "$edgeAgent")).unwrap();
    assert_eq!(
        canary.properties.desired["modules"]["sensor"]["settings"]["image"],
        "contoso/sensor:2.0"
    );
    for f in &mut fleets {
        let _ = f.kill();
        let _ = f.wait();
    }
}

/// `[storage] dir` stores the files in a local folder (here serve's own blob folder, which it
/// publishes) instead of the service's upload route.
#[test]
fn storage_dir_in_otaforge_toml_is_where_the_files_go() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    without_delta(&root);
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let text = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    let head = &text[..text.find("[[stage]]").unwrap()];
    let storage = format!(
        "[storage]\ndir = \"{}\"\nbase-url = \"{}/blobs\"\ncontainer = \"firmware\"\n\n",
        data.join("blobs").display(),
        serve.endpoint
    );
    fs_err::write(root.join("otaforge.toml"), format!("{storage}{head}")).unwrap();
    set_version(&root, "1.1.0", &firmware(8 * 1024, &[]));
    let (code, v, err) = release(&root, Some(&serve), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["imported"], true);
    assert!(
        data.join("blobs/firmware/contoso/toaster/1.1.0/firmware.bin").is_file(),
        "{:?}",
        walk(&data.join("blobs"))
    );
}

/// A delta base named `storage:VERSION` is read back from the storage container the earlier
/// release was uploaded to (a fresh CI checkout has no local outputs), checked against that
/// release's manifest, and the delta is made from it; a dry run cannot read it and says so.
#[test]
fn a_delta_base_is_read_back_from_the_storage_container() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    let serve = Serve::start(&dir.path().join("data"), None);
    let toml = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    let head = toml[..toml.find("[[stage]]").unwrap()].to_owned();
    let start = head.find("[delta]").unwrap();
    let end = head.find("[signing]").unwrap();
    fs_err::write(root.join("otaforge.toml"), format!("{}{}", &head[..start], &head[end..]))
        .unwrap();
    let v11 = firmware(64 * 1024, &[]);
    set_version(&root, "1.1.0", &v11);
    let (code, _, err) = release(&root, Some(&serve), &[]);
    assert_eq!(code, 0, "{err}");
    // A fresh checkout: no local outputs.
    fs_err::remove_dir_all(root.join("out")).unwrap();
    fs_err::write(
        root.join("otaforge.toml"),
        head.replace("bases = [\"out/release/1.1.0\"]", "bases = [\"storage:1.1.0\"]"),
    )
    .unwrap();
    set_version(&root, "1.2.0", &firmware(64 * 1024, &[(100, 50)]));
    let (code, v, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 1, "{v}");
    assert!(err.contains("storage:1.1.0 is not read yet"), "{err}");
    let (code, v, err) = release(&root, Some(&serve), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("delta base 1.1.0 read from the storage container"), "{err}");
    assert_eq!(v["deltas"][0]["baseVersion"], "1.1.0", "{v:#}");
    assert_eq!(fs_err::read(root.join("out/release/bases/1.1.0/files/firmware.bin")).unwrap(), v11);
}

/// A failed gate with `on-failure = "stop"` leaves the stage's deployment as it is; with
/// `"cancel"` it cancels it. Either way the report names the gate and the counts, and exit is 1.
#[test]
fn a_failed_gate_stops_or_cancels_as_the_plan_says() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    without_delta(&root);
    let no_delta = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    let first = &no_delta[..no_delta.find("[[stage]]").unwrap()];
    fs_err::write(root.join("otaforge.toml"), first).unwrap();
    set_version(&root, "1.1.0", &firmware(16 * 1024, &[]));
    assert_eq!(release(&root, Some(&serve), &[]).0, 0);
    let image = root.join("out/release/1.1.0/files/firmware.bin");
    let mut canary = fleet(&serve, &data, "canary", 2, &image, "install=0");
    let mut rest = fleet(&serve, &data, "fleet", 3, &image, "install=1");
    let ready = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(group_exists(&serve, "canary") && group_exists(&serve, "fleet")) {
        assert!(std::time::Instant::now() < ready, "the groups never appeared");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let client = otaforge::service::AduClient::new(
        &serve.endpoint,
        "default",
        otaforge::service::Auth::None,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (version, action) in [("1.2.0", "stop"), ("1.3.0", "cancel")] {
        let text =
            no_delta.replace("on-failure = \"rollback\"", &format!("on-failure = \"{action}\""));
        fs_err::write(root.join("otaforge.toml"), text).unwrap();
        set_version(
            &root,
            version,
            &firmware(16 * 1024, &[(version.len() * 100, 10 + version.len())]),
        );
        let (code, v, err) = release(&root, Some(&serve), &[]);
        assert_eq!(code, 1, "{err}");
        let stage = &v["stages"][1];
        assert_eq!(stage["result"], "failed", "{v:#}");
        assert_eq!(stage["action"], if action == "stop" { "stopped" } else { "canceled" });
        assert!(stage["reason"].as_str().unwrap().contains("of 3 devices failed"), "{v:#}");
        let id = format!("{}-fleet", version.replace('.', "-"));
        let d = rt
            .block_on(client.get_deployment("fleet", &id))
            .unwrap()
            .expect("the stage's deployment");
        let status = rt.block_on(client.deployment_status("fleet", &id)).unwrap();
        if action == "stop" {
            assert_ne!(d.is_canceled, Some(true), "stop leaves it");
        } else {
            assert!(
                !status.subgroup_status.is_empty()
                    && status
                        .subgroup_status
                        .iter()
                        .all(|g| g.deployment_state.as_str() == "Canceled"),
                "{status:?}"
            );
        }
    }
    for f in [&mut canary, &mut rest] {
        let _ = f.kill();
        let _ = f.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 28, hardening round 2: what a release must refuse or bound.
// ---------------------------------------------------------------------------------------------

/// `otaforge --format json release --dry-run` (offline) in `root`, killed after `secs`.
fn dry_run_within(root: &Path, secs: u64) -> (Option<i32>, Value, String, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = otaforge()
        .current_dir(root)
        .env("SOURCE_DATE_EPOCH", "1764460800")
        .args(["--format", "json", "release", "--endpoint", "http://127.0.0.1:9", "--dry-run"])
        .timeout(std::time::Duration::from_secs(secs))
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), v, err, started.elapsed())
}

/// Item 10: the signing key named as an artifact, and files that resolve outside the
/// repository (`../x`, an absolute path, a symlink to a file or through a folder leading out)
/// are refused with the artifact's line and field; any other private key (PKCS#8 PEM, the same
/// key as DER, an OpenSSH key in PEM and binary, a key inside a firmware image) is refused by
/// its content. Nothing is written. `outside-repository = true` lets a file outside be shipped.
#[test]
fn a_release_ships_no_private_key_and_nothing_from_outside_the_repository() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    without_delta(&root);
    set_version(&root, "1.2.0", &firmware(4096, &[]));
    let good = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    let with_path = |path: &str, extra: &str| {
        let toml =
            good.replace("path = \"build/firmware.bin\"", &format!("path = \"{path}\"{extra}"));
        fs_err::write(root.join("otaforge.toml"), toml).unwrap();
    };
    let outside = dir.path().join("outside.bin");
    fs_err::write(&outside, firmware(2048, &[(5, 5)])).unwrap();
    std::os::unix::fs::symlink("../../outside.bin", root.join("build/link.bin")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("build/linked-dir")).unwrap();
    let real_root = fs_err::canonicalize(&root).unwrap();
    let real_outside = fs_err::canonicalize(&outside).unwrap();
    let outside_text = outside.display().to_string();
    let cases = [
        ("keys/release.pem", "`keys/release.pem` is the signing key ([signing] key); a release never ships a private key".to_owned()),
        ("../outside.bin", format!("`../outside.bin` resolves to {}, outside the repository {}; move the file into it, or set outside-repository = true", real_outside.display(), real_root.display())),
        (&outside_text, format!("`{outside_text}` resolves to {}, outside the repository", real_outside.display())),
        ("build/link.bin", format!("`build/link.bin` resolves to {}, outside the repository", real_outside.display())),
        ("build/linked-dir/outside.bin", format!("`build/linked-dir/outside.bin` resolves to {}, outside", real_outside.display())),
        ("build/*/outside.bin", format!("`build/*/outside.bin` resolves to {}, outside", real_outside.display())),
    ];
    for (path, want) in &cases {
        with_path(path, "");
        let (code, v, err) =
            release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
        assert_eq!(code, 1, "{path}: {err}");
        let want = format!("otaforge.toml:12: artifact[0].path: {want}");
        assert!(err.contains(&want), "{path}: wanted `{want}` in:\n{err}");
        assert_eq!(v["error"], "invalidConfig", "{path}: {v}");
        assert!(!root.join("out").exists(), "{path}: nothing is written");
    }

    // Private keys by their content, wherever they are in the file.
    let k = otaforge()
        .current_dir(&root)
        .args(["key", "generate", "-o", "keys/other"])
        .output()
        .unwrap();
    assert_eq!(k.status.code(), Some(0));
    let pem = fs_err::read_to_string(root.join("keys/other.pem")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    fs_err::write(root.join("build/other.der"), b64.decode(&body).unwrap()).unwrap();
    let mut openssh = b"openssh-key-v1\0".to_vec();
    openssh.extend_from_slice(&[
        0, 0, 0, 4, b'n', b'o', b'n', b'e', 0, 0, 0, 4, b'n', b'o', b'n', b'e',
    ]);
    openssh.extend_from_slice(&[0x11; 80]);
    fs_err::write(root.join("build/id_raw"), &openssh).unwrap();
    let wrapped: Vec<String> = b64
        .encode(&openssh)
        .as_bytes()
        .chunks(70)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    fs_err::write(
        root.join("build/id_ed25519"),
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            wrapped.join("\n")
        ),
    )
    .unwrap();
    let mut bundle = firmware(3000, &[]);
    bundle.extend_from_slice(pem.as_bytes());
    bundle.extend_from_slice(&firmware(1000, &[]));
    fs_err::write(root.join("build/bundle.bin"), bundle).unwrap();
    for (path, what) in [
        ("keys/other.pem", "a PEM \"PRIVATE KEY\" block"),
        ("build/other.der", "a PKCS#8 private key (DER)"),
        ("build/id_ed25519", "a PEM \"OPENSSH PRIVATE KEY\" block"),
        ("build/id_raw", "an OpenSSH private key"),
        ("build/bundle.bin", "a PEM \"PRIVATE KEY\" block"),
    ] {
        with_path(path, "");
        let (code, v, err) =
            release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
        assert_eq!(code, 1, "{path}: {err}");
        // Paths are shown as otaforge.toml's folder (`.`, as the release runs there) joins them.
        let want = format!(
            "./{path}: holds {what}; a release never ships a private key: take it out of [[artifact]]"
        );
        assert!(err.contains(&want), "{path}: wanted `{want}` in:\n{err}");
        assert_eq!(v["error"], "buildFailed", "{path}: {v}");
        assert!(!root.join("out").exists(), "{path}: nothing is written");
    }

    // An explicit opt-in ships a file from outside.
    with_path("../outside.bin", "\noutside-repository = true");
    let (code, v, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["artifacts"][0]["name"], "outside.bin", "{v:#}");
    assert_eq!(
        fs_err::read(root.join("out/release/1.2.0/files/outside.bin")).unwrap(),
        fs_err::read(&outside).unwrap()
    );
}

/// Low: a `**` glob through folders that link back to themselves ends (each folder is read
/// once) and matches the one file; before, it followed the links until the path was too long,
/// 2^40 times.
#[test]
fn a_double_star_glob_does_not_follow_a_symlink_loop() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    without_delta(&root);
    set_version(&root, "1.2.0", &firmware(4096, &[]));
    fs_err::create_dir_all(root.join("build/zephyr")).unwrap();
    fs_err::rename(root.join("build/firmware.bin"), root.join("build/zephyr/firmware.bin"))
        .unwrap();
    std::os::unix::fs::symlink(".", root.join("build/again")).unwrap();
    std::os::unix::fs::symlink("..", root.join("build/zephyr/up")).unwrap();
    let toml = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    fs_err::write(
        root.join("otaforge.toml"),
        toml.replace("build/firmware.bin", "build/**/firmware.bin"),
    )
    .unwrap();
    let (code, v, err, took) = dry_run_within(&root, 60);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["artifacts"][0]["name"], "firmware.bin", "{v:#}");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

/// Low: `version-command` may print at most 4 KiB and run at most `version-command-timeout`
/// (its children included); either is an error with the line and field, and nothing is built.
#[test]
fn a_version_command_is_bounded_in_time_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    without_delta(&root);
    set_version(&root, "1.2.0", &firmware(4096, &[]));
    let good = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    let too_long = "otaforge.toml:7: update.version-command: printed more than 4096 bytes; it must print only the version";
    for (command, extra, want, max_secs) in [
        (r#"head -c 50000000 /dev/zero | tr "\0" 7"#, "", too_long, 30),
        ("yes 1.2.3", "", too_long, 30),
        (
            "sleep 30; echo 1.2.3",
            "\nversion-command-timeout = \"1s\"",
            "otaforge.toml:7: update.version-command: did not finish within 1s; it must print the version and exit",
            20,
        ),
    ] {
        let toml = good.replace(
            "version-file = \"VERSION\"",
            &format!("version-command = '{command}'{extra}"),
        );
        fs_err::write(root.join("otaforge.toml"), toml).unwrap();
        let (code, v, err, took) = dry_run_within(&root, 60);
        assert_eq!(code, Some(1), "{command}: {err}");
        assert!(err.contains(want), "{command}: wanted `{want}` in:\n{err}");
        assert_eq!(v["error"], "invalidConfig");
        assert!(took < std::time::Duration::from_secs(max_secs), "{command}: took {took:?}");
        assert!(!root.join("out").exists(), "{command}: nothing is built");
    }
    let toml = good.replace("version-file = \"VERSION\"", "version-command = 'cat VERSION'");
    fs_err::write(root.join("otaforge.toml"), toml).unwrap();
    let (code, v, err, _) = dry_run_within(&root, 60);
    assert_eq!((code, &v["updateId"]), (Some(0), &Value::from("contoso/toaster/1.2.0")), "{err}");
}

/// Item 9: a recorded stage result is believed only when the service confirms it. A
/// hand-edited state file saying the canary stage passed (5 of 5) while the service has no
/// canary deployment does not skip the stage: it deploys and waits on its own devices. One of
/// the same id that deploys another update is not this release's either: refused (exit 1),
/// and the record is dropped.
#[test]
fn a_stage_recorded_as_passed_runs_unless_the_service_confirms_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    without_delta(&root);
    let toml = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    fs_err::write(root.join("otaforge.toml"), &toml[..toml.find("[[stage]]").unwrap()]).unwrap();
    set_version(&root, "1.1.0", &firmware(16 * 1024, &[]));
    assert_eq!(release(&root, Some(&serve), &[]).0, 0);
    let image = root.join("out/release/1.1.0/files/firmware.bin");
    let mut canary = fleet(&serve, &data, "canary", 3, &image, "install=0");
    let ready = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !group_exists(&serve, "canary") {
        assert!(std::time::Instant::now() < ready, "the canary group never appeared");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fs_err::write(root.join("otaforge.toml"), &toml).unwrap();
    let forge = |version: &str| {
        set_version(&root, version, &firmware(16 * 1024, &[(100, version.len() * 10)]));
        let (code, _, err) = release(&root, Some(&serve), &["--dry-run"]);
        assert_eq!(code, 0, "{err}");
        let path = root.join(format!("out/release/{version}/release-state.json"));
        let mut state: Value = serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
        state["stages"] = serde_json::json!([{
            "name": "canary", "group": "canary",
            "deploymentId": format!("{}-canary", version.replace('.', "-")),
            "result": "passed", "devices": 5, "succeeded": 5, "failed": 0
        }]);
        fs_err::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
        path
    };

    // No deployment: the stage runs against the three real canaries.
    forge("1.2.0");
    let (code, v, err) = release(&root, Some(&serve), &["--until", "canary"]);
    assert_eq!(code, 0, "{err}\n{v:#}");
    assert!(
        err.contains("stage canary: the state file says passed, but the service has no deployment 1-2-0-canary; running the stage"),
        "{err}"
    );
    let stage = &v["stages"][0];
    assert_eq!(
        (&stage["result"], stage["devices"].as_u64(), stage["succeeded"].as_u64()),
        (&Value::from("passed"), Some(3), Some(3)),
        "{v:#}"
    );
    let list = adu_json(&serve, &["deploy", "list", "canary"]);
    assert!(list.to_string().contains("1-2-0-canary"), "{list:#}");
    // Confirmed now: a re-run reports the same and says nothing about the record.
    let (code, again, err) = release(&root, Some(&serve), &["--until", "canary"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, v);
    assert!(!err.contains("state file says"), "{err}");

    // The stage's id taken by a deployment of 1.1.0: not this release's, and refused.
    let state_path = forge("1.3.0");
    let taken = otaforge()
        .args(["deploy", "create", "canary", "contoso/toaster/1.1.0", "--id", "1-3-0-canary"])
        .args(["--endpoint", &serve.endpoint, "--instance", "default"])
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(0), "{}", String::from_utf8_lossy(&taken.stderr));
    let (code, v, err) = release(&root, Some(&serve), &["--until", "canary"]);
    assert_eq!(code, 1, "{err}\n{v:#}");
    assert!(
        err.contains("stage canary: the state file says passed, but deployment 1-3-0-canary deploys contoso/toaster/1.1.0, not contoso/toaster/1.3.0; running the stage"),
        "{err}"
    );
    assert_eq!(v["error"], "deploymentConflict", "{v:#}");
    assert!(
        err.contains("deployment 1-3-0-canary already exists and deploys contoso/toaster/1.1.0, not contoso/toaster/1.3.0"),
        "{err}"
    );
    let state: Value = serde_json::from_slice(&fs_err::read(&state_path).unwrap()).unwrap();
    assert_eq!(state["stages"], serde_json::json!([]), "the unconfirmed record is gone");
    let _ = canary.kill();
    let _ = canary.wait();
}

/// Low: `--dry-run` refuses a tampered output folder as the real run does, with the same
/// check (the import manifest against every file it names) and the same error; nothing is
/// imported. An artifact changed by hand together with its record is made again from its
/// input, in both.
#[test]
fn a_dry_run_refuses_a_tampered_output_folder_as_the_real_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo(dir.path());
    let serve = Serve::start(&dir.path().join("data"), None);
    let toml = fs_err::read_to_string(root.join("otaforge.toml")).unwrap();
    without_delta(&root);
    set_version(&root, "1.1.0", &firmware(32 * 1024, &[]));
    let (code, _, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    fs_err::write(root.join("otaforge.toml"), &toml).unwrap();
    let v12 = firmware(32 * 1024, &[(500, 100)]);
    set_version(&root, "1.2.0", &v12);
    let (code, v, err) = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let out = root.join("out/release/1.2.0");
    let state_path = out.join("release-state.json");
    let pristine = fs_err::read(&state_path).unwrap();
    let edit_state = |edit: &dyn Fn(&mut Value)| {
        let mut state: Value = serde_json::from_slice(&fs_err::read(&state_path).unwrap()).unwrap();
        edit(&mut state);
        fs_err::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    };
    let record = |bytes: &[u8]| {
        let sha = otaforge::Sha256::digest(bytes).to_base64();
        serde_json::json!({"sizeInBytes": bytes.len(), "sha256": sha})
    };

    // The delta replaced, and its record with it.
    let delta = out.join("files").join(v["deltas"][0]["file"]["name"].as_str().unwrap());
    let mut tampered = fs_err::read(&delta).unwrap();
    tampered.extend_from_slice(b"tampered");
    fs_err::write(&delta, &tampered).unwrap();
    let r = record(&tampered);
    edit_state(&|s| {
        s["deltas"][0]["file"]["sizeInBytes"] = r["sizeInBytes"].clone();
        s["deltas"][0]["file"]["sha256"] = r["sha256"].clone();
    });
    let dry = release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    let real = release(&root, Some(&serve), &[]);
    for (what, (code, v, err)) in [("dry run", &dry), ("real run", &real)] {
        assert_eq!(*code, 1, "{what}: {err}\n{v:#}");
        assert_eq!(v["error"], "buildFailed", "{what}: {v:#}");
        let want = "out/release/1.2.0: the output folder was changed after it was built (";
        assert!(err.contains(want), "{what}: wanted `{want}` in:\n{err}");
        assert!(err.contains("delete it and run otaforge release again"), "{what}: {err}");
    }
    assert_eq!(dry.1["message"], real.1["message"], "one check, one error");
    let listed = adu_json(&serve, &["update", "list"]);
    assert!(!listed.to_string().contains("1.2.0"), "nothing imported: {listed}");

    // The artifact replaced with its record, and the manifest record dropped so that a new
    // manifest would list it: made again from the input instead.
    fs_err::write(&state_path, &pristine).unwrap();
    fs_err::write(&delta, fs_err::read(&delta).unwrap().strip_suffix(b"tampered").unwrap())
        .unwrap();
    let shipped = out.join("files/firmware.bin");
    let evil = firmware(32 * 1024, &[(0, 64)]);
    fs_err::write(&shipped, &evil).unwrap();
    let r = record(&evil);
    edit_state(&|s| {
        s["artifacts"][0]["sizeInBytes"] = r["sizeInBytes"].clone();
        s["artifacts"][0]["sha256"] = r["sha256"].clone();
        s["manifest"] = Value::Null;
    });
    let (code, again, err) =
        release(&root, None, &["--endpoint", "http://127.0.0.1:9", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs_err::read(&shipped).unwrap(), v12, "the input is shipped, not the edit");
    assert_eq!(again, v, "the same outputs as before the edit");
}

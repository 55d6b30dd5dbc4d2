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

/// A simulated fleet: `n` devices in `group` running 1.1.0 with `image`.
fn fleet(serve: &Serve, data: &Path, group: &str, n: usize, image: &Path, fail: &str) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
        .args(["fleet", "run", "--endpoint", &serve.endpoint, "--devices", &n.to_string()])
        .args([
            "--prefix",
            group,
            "--group",
            group,
            "--class",
            "manufacturer=contoso,model=toaster",
        ])
        .args(["--installed", "contoso/toaster/1.1.0", "--image"])
        .arg(image)
        .args(["--fail", fail, "--seed", "5", "--for", "300s", "--iothub-connection-file"])
        .arg(data.join("iothub.connection-string"))
        .env("CI", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

    // Devices run 1.1.0: three canaries, and a fleet group whose installs fail.
    let mut canary = fleet(&serve, &data, "canary", 3, &base_image, "install=0");
    let mut rest = fleet(&serve, &data, "fleet", 4, &base_image, "install=1");

    // 1.2.0 with a delta from 1.1.0 and both stages.
    fs_err::write(root.join("otaforge.toml"), &toml).unwrap();
    set_version(&root, "1.2.0", &v12);
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
    assert!(stages[1]["reason"].as_str().unwrap().contains("of 4 devices failed"), "{v:#}");
    assert!(v["metadata"]["sha256"].is_string(), "signed release metadata: {v:#}");

    // The rollback deployment is on the fleet group.
    let out = otaforge()
        .args([
            "--format",
            "json",
            "deploy",
            "list",
            "fleet",
            "--endpoint",
            &serve.endpoint,
            "--instance",
            "default",
        ])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    let ops = otaforge()
        .args([
            "--format",
            "json",
            "update",
            "operation",
            "--endpoint",
            &serve.endpoint,
            "--instance",
            "default",
        ])
        .output()
        .unwrap();
    let ops: Value = serde_json::from_slice(&ops.stdout).unwrap_or(Value::Null);
    let imports = ops.as_array().map_or(0, Vec::len);
    assert_eq!(imports, 2, "one import per release: {ops:#}");
    let _ = canary.kill();
    let _ = rest.kill();
    let _ = canary.wait();
    let _ = rest.wait();
}

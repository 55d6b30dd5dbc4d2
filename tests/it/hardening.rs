//! What an attacker or a demanding user tried and the first versions got wrong, one test per
//! class: outputs that replaced what they should have written through (devices, FIFOs,
//! symlinks) or lost a file's mode; a tokenless local service that a web page could drive
//! (cross-site requests, DNS rebinding) and tokens that were too weak; times and durations that
//! panicked; inputs two parsers could read differently.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::otaforge;

/// An old file, a new one and a delta between them, in a temp dir.
struct Pair {
    dir: tempfile::TempDir,
    old: PathBuf,
    new_bytes: Vec<u8>,
    delta: PathBuf,
}

fn pair() -> Pair {
    let c = crate::delta::case("otadelta");
    let new_bytes = fs_err::read(c.dir.path().join("new.bin")).unwrap();
    Pair { dir: c.dir, old: c.old, new_bytes, delta: c.delta }
}

fn apply_to(p: &Pair, out: &Path) -> std::process::Output {
    otaforge()
        .args(["delta", "apply"])
        .arg(&p.old)
        .arg(&p.delta)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    fs_err::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn an_existing_output_keeps_its_mode_and_a_new_one_gets_the_umask() {
    let p = pair();
    // An executable rebuilt in place stays executable; a group-writable file stays so.
    for m in [0o755, 0o664, 0o600] {
        let out = p.dir.path().join(format!("existing-{m:o}"));
        fs_err::write(&out, b"previous").unwrap();
        fs_err::set_permissions(&out, std::fs::Permissions::from_mode(m)).unwrap();
        assert!(apply_to(&p, &out).status.success());
        assert_eq!(fs_err::read(&out).unwrap(), p.new_bytes);
        assert_eq!(mode(&out), m, "mode of a replaced file");
    }
    // A new file: the umask decides (0666 & ~027 = 0640), as for any file a tool creates.
    let out = p.dir.path().join("fresh.bin");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 027 && exec \"$0\" delta apply \"$1\" \"$2\" -o \"$3\"")
        .arg(assert_cmd::cargo::cargo_bin("otaforge"))
        .arg(&p.old)
        .arg(&p.delta)
        .arg(&out)
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(mode(&out), 0o640);
    // Key pairs: the private key 0600 whatever the umask, the public key by the umask.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 022 && cd \"$1\" && exec \"$0\" key generate -o k")
        .arg(assert_cmd::cargo::cargo_bin("otaforge"))
        .arg(p.dir.path())
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        (mode(&p.dir.path().join("k.pem")), mode(&p.dir.path().join("k.pub.pem"))),
        (0o600, 0o644)
    );
}

#[test]
fn a_symlink_output_is_followed_and_stays_a_symlink() {
    let p = pair();
    let real_dir = p.dir.path().join("real");
    fs_err::create_dir(&real_dir).unwrap();
    let target = real_dir.join("firmware.bin");
    fs_err::write(&target, b"old contents").unwrap();
    fs_err::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = p.dir.path().join("current.bin");
    std::os::unix::fs::symlink("real/firmware.bin", &link).unwrap();
    // Two links deep, and a dangling one whose target gets created.
    let link2 = p.dir.path().join("latest.bin");
    std::os::unix::fs::symlink("current.bin", &link2).unwrap();
    assert!(apply_to(&p, &link2).status.success());
    assert!(fs_err::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(fs_err::symlink_metadata(&link2).unwrap().file_type().is_symlink());
    assert_eq!(fs_err::read(&target).unwrap(), p.new_bytes);
    assert_eq!(mode(&target), 0o640);
    let dangling = p.dir.path().join("next.bin");
    std::os::unix::fs::symlink("real/next-target.bin", &dangling).unwrap();
    assert!(apply_to(&p, &dangling).status.success());
    assert!(fs_err::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    assert_eq!(fs_err::read(real_dir.join("next-target.bin")).unwrap(), p.new_bytes);
    // No temp file is left in either folder.
    for d in [p.dir.path(), real_dir.as_path()] {
        for e in fs_err::read_dir(d).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".otaforge-"), "temp file left: {name}");
        }
    }
}

#[test]
fn a_fifo_and_a_device_are_written_through_and_stdout_takes_dash() {
    let p = pair();
    // A FIFO: a reader gets the bytes, and the FIFO is still a FIFO afterwards.
    let fifo = p.dir.path().join("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs_err::read(&fifo).unwrap())
    };
    let out = apply_to(&p, &fifo);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(reader.join().unwrap(), p.new_bytes);
    assert!(fs_err::metadata(&fifo).unwrap().file_type().is_fifo());

    // A character device node (made where mknod is permitted, as root in CI): written
    // through, still a device node afterwards.
    let null = p.dir.path().join("null");
    let made = std::process::Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // Only root may make device nodes; as root (cargo xtask ci) this case must run.
    let root = std::os::unix::fs::MetadataExt::uid(&fs_err::metadata("/proc/self").unwrap()) == 0;
    assert!(made || !root, "mknod failed as root");
    if made {
        assert!(apply_to(&p, &null).status.success());
        assert!(fs_err::metadata(&null).unwrap().file_type().is_char_device());
    }

    // `-o -`: the payload on stdout, the report on stderr.
    let out = apply_to(&p, Path::new("-"));
    assert!(out.status.success());
    assert_eq!(out.stdout, p.new_bytes);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256"));

    // A directory is refused, and left alone.
    let out = apply_to(&p, p.dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
}

/// Sends one raw HTTP/1.1 request (so `Host` and `Origin` are exactly as given) and returns the
/// status code and body.
fn raw(endpoint: &str, head: &str, body: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let addr = endpoint.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let req =
        format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    c.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

const API: &str = "api-version=2022-10-01";

#[test]
fn a_web_page_cannot_drive_the_tokenless_service() {
    let dir = tempfile::tempdir().unwrap();
    let serve = crate::service::Serve::start(&dir.path().join("data"), None);
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let port = host.rsplit_once(':').unwrap().1.to_owned();
    let import = format!("POST /deviceUpdate/default/updates:import?{API} HTTP/1.1");
    let body = r#"[{"importManifest":{"url":"http://127.0.0.1:1/x","sizeInBytes":1,"hashes":{"sha256":"x"}},"files":[]}]"#;
    // The form a page can send without a preflight: text/plain, a foreign Origin.
    let (status, text) = raw(
        &serve.endpoint,
        &format!(
            "{import}\r\nHost: {host}\r\nContent-Type: text/plain\r\nOrigin: https://evil.example"
        ),
        body,
    );
    assert_eq!(status, 415, "{text}");
    // Right media type, but a foreign Origin.
    let (status, text) = raw(
        &serve.endpoint,
        &format!(
            "{import}\r\nHost: {host}\r\nContent-Type: application/json\r\nOrigin: https://evil.example"
        ),
        body,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("ForbiddenOrigin"), "{text}");
    // DNS rebinding: the page's own name, resolved to 127.0.0.1; reads are refused too.
    let list = format!("GET /deviceUpdate/default/updates?{API} HTTP/1.1");
    let (status, text) =
        raw(&serve.endpoint, &format!("{list}\r\nHost: rebind.example:{port}"), "");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("ForbiddenHost"), "{text}");
    // The service's own origin and loopback names are fine.
    for h in [host.clone(), format!("localhost:{port}")] {
        let (status, text) =
            raw(&serve.endpoint, &format!("{list}\r\nHost: {h}\r\nOrigin: http://{h}"), "");
        assert_eq!(status, 200, "{h}: {text}");
    }
}

#[test]
fn tokens_are_long_enough_and_the_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "   ", "short-token", " padded-token-0123456789 "] {
        let out = otaforge()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("d"))
            .args(["--token", bad])
            .env_remove("OTAFORGE_ADU_TOKEN")
            .timeout(std::time::Duration::from_secs(20))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "token {bad:?} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("token"), "{bad:?}");
    }
    let token = "a-token-long-enough-0123";
    let serve = crate::service::Serve::start(&dir.path().join("data"), Some(token));
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let list = format!("GET /deviceUpdate/default/updates?{API} HTTP/1.1\r\nHost: {host}");
    for (auth, want) in [("Bearer", 200), ("bearer", 200), ("BEARER", 200), ("Basic", 401)] {
        let (status, _) =
            raw(&serve.endpoint, &format!("{list}\r\nAuthorization: {auth} {token}"), "");
        assert_eq!(status, want, "{auth}");
    }
    // With a token, any Host may be used (behind a proxy or on a LAN address).
    let (status, _) = raw(
        &serve.endpoint,
        &format!(
            "GET /deviceUpdate/default/updates?{API} HTTP/1.1\r\nHost: ota.example\r\nAuthorization: Bearer {token}"
        ),
        "",
    );
    assert_eq!(status, 200);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    /// Every time and duration parser refuses or accepts; what it accepts formats and parses
    /// back to itself.
    #[test]
    fn time_and_duration_parsers_never_panic(
        s in proptest::prop_oneof![
            "[0-9]{1,25}[a-z]{0,6}",
            "[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}T[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{1,9})?Z?",
            "\\PC{0,30}",
        ],
        now in 0u64..253_402_300_799,
    ) {
        use otaforge::time::{Timestamp, parse_duration, parse_time_or_duration};
        let now = Timestamp::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(now)).unwrap();
        if let Ok(t) = Timestamp::parse(&s) {
            proptest::prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        }
        if let Ok(t) = parse_time_or_duration(&s, now) {
            proptest::prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        }
        let _ = parse_duration(&s, std::time::Duration::from_secs(86_400));
        let _ = otaforge::storage::parse_ttl(&s);
    }
}

#[test]
fn out_of_range_times_and_durations_are_usage_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    otaforge().current_dir(d).args(["key", "generate", "-o", "k"]).assert().success();
    fs_err::write(d.join("app.bin"), b"app").unwrap();
    let sign = |expires: &str| {
        otaforge()
            .current_dir(d)
            .args([
                "meta",
                "sign",
                "app.bin",
                "--release-version",
                "1.0",
                "--security-counter",
                "1",
            ])
            .args(["--key", "k.pem", "-o", "release.json", "--expires", expires])
            .output()
            .unwrap()
    };
    for (bad, words) in [
        ("8000y", "past 9999"),
        ("10000000000000000000s", "duration"),
        ("2001-01-01T00:00:00Z", "not after the signing time"),
        ("soon", "not a duration"),
        ("99999-01-01T00:00:00Z", "RFC 3339"),
    ] {
        let out = sign(bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(words), "{bad}: {err}");
        assert!(!d.join("release.json").exists());
    }
    assert!(sign("30d").status.success());
    // A check time before the metadata was signed is refused, not accepted.
    let out = otaforge()
        .current_dir(d)
        .args(["--format", "json", "meta", "verify", "release.json", "--pub", "k.pub.pem"])
        .args(["--at", "2001-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(crate::stdout_json(&out)["error"], "notYetValid");
    // Waits are bounded too.
    for args in [
        &[
            "import",
            "x.json",
            "--endpoint",
            "http://127.0.0.1:1",
            "--instance",
            "i",
            "--timeout",
            "999999999y",
        ][..],
        &["upload", "app.bin", "--container", "cc1", "--io-timeout", "2h", "--dir", "."][..],
    ] {
        let out = otaforge().current_dir(d).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the most this option allows"),
            "{args:?}"
        );
    }
}

/// A script update made by `manifest init` in `dir`; returns the manifest's path.
fn script_manifest(dir: &Path) -> PathBuf {
    fs_err::write(dir.join("install.sh"), "#!/bin/sh\n").unwrap();
    otaforge()
        .current_dir(dir)
        .args(["manifest", "init", "--provider", "contoso", "--name", "dup", "--version", "1.0"])
        .args(["--compat", "model=dup", "--template", "script", "--file", "install.sh"])
        .args(["--out-dir", "."])
        .assert()
        .success();
    dir.join("contoso.dup.1.0.importmanifest.json")
}

#[test]
fn repeated_json_keys_and_dot_only_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = script_manifest(dir.path());
    let text = fs_err::read_to_string(&m).unwrap();
    // A second sha256 in the file's hashes: serde_json would keep the last, others the first.
    let doubled = text.replacen("\"sha256\": \"", "\"sha256\": \"AAAA\", \"sha256\": \"", 1);
    assert_ne!(doubled, text);
    fs_err::write(&m, doubled).unwrap();
    let out =
        otaforge().args(["--format", "json", "manifest", "validate"]).arg(&m).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json = crate::stdout_json(&out);
    let findings = json.to_string();
    assert!(
        findings.contains("duplicate-key") && findings.contains("$.files[0].hashes.sha256"),
        "{findings}"
    );

    // An APT manifest too.
    let apt = dir.path().join("apt.json");
    fs_err::write(&apt, r#"{"name":"a","version":"1","name":"b","packages":[{"name":"curl"}]}"#)
        .unwrap();
    let out = otaforge().args(["apt", "validate"]).arg(&apt).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("duplicate-key"));

    // Dot-only provider or name: refused when made, and when validated.
    for (provider, name) in [("..", "fw"), ("contoso", ".")] {
        let out = otaforge()
            .current_dir(dir.path())
            .args(["manifest", "init", "--provider", provider, "--name", name, "--version", "1.0"])
            .args(["--compat", "model=x", "--template", "script", "--file", "install.sh"])
            .args(["-o", "dots.json"])
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{provider}/{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("only dots"), "{provider}/{name}");
    }
    let dots = text.replace("\"provider\": \"contoso\"", "\"provider\": \"..\"");
    fs_err::write(&m, dots).unwrap();
    let out = otaforge().args(["manifest", "validate"]).arg(&m).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("id-dots-only"));
}

#[test]
fn serve_refuses_an_import_request_with_a_repeated_key() {
    let dir = tempfile::tempdir().unwrap();
    let serve = crate::service::Serve::start(&dir.path().join("data"), None);
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let body = r#"[{"importManifest":{"url":"http://127.0.0.1:1/a","url":"http://127.0.0.1:1/b","sizeInBytes":1,"hashes":{"sha256":"x"}},"files":[]}]"#;
    let (status, text) = raw(
        &serve.endpoint,
        &format!(
            "POST /deviceUpdate/default/updates:import?{API} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
        ),
        body,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("InvalidImportRequest") && text.contains("more than once"), "{text}");
}

#[test]
fn a_bsdiff40_patch_applied_without_a_digest_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    fs_err::write(&old, vec![1u8; 5000]).unwrap();
    fs_err::write(&new, vec![2u8; 5000]).unwrap();
    let patch = dir.path().join("p.bsdiff");
    otaforge()
        .args(["delta", "create"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(&patch)
        .args(["--delta-format", "bsdiff40"])
        .assert()
        .success();
    let apply = |extra: &[&str]| {
        otaforge()
            .args(["delta", "apply"])
            .arg(&old)
            .arg(&patch)
            .arg("-o")
            .arg(dir.path().join("out"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = apply(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expect-sha256"));
    // A wrong digest: refused, and the message says once that nothing was written.
    let wrong = otaforge::Sha256::digest(b"other").to_hex();
    let out = apply(&["--expect-sha256", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("nothing was written").count(), 1, "{err}");
    let hex = otaforge::Sha256::digest(&[2u8; 5000]).to_hex();
    let out = apply(&["--expect-sha256", &hex]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn serve_keeps_its_data_private_and_stores_no_url_signature() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = crate::service::Serve::start(&data, None);
    let m = crate::service::make_update(&dir.path().join("u"), "private", "1.0", &[9u8; 3000]);
    let (code, json, err) = crate::service::import(&serve, &[&m], None);
    assert_eq!(code, 0, "{json} {err}");
    // Everything under the data dir: folders 0700 at the top, files 0600.
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in fs_err::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                assert_eq!(mode(&p) & 0o077, 0, "{} is readable by others", p.display());
            }
        }
    }
    assert!(files >= 5, "the import stored blobs, content and the database");
    // The stored import request keeps its URLs, without their signatures.
    let db = rusqlite::Connection::open(data.join("otaforge-serve.sqlite")).unwrap();
    let requests: Vec<String> = db
        .prepare("SELECT request FROM operations WHERE request IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(r.contains("sig=REDACTED"), "{r}");
        assert_eq!(r.matches("sig=").count(), r.matches("sig=REDACTED").count(), "{r}");
    }
}

/// A loopback HTTP server that answers each path with a fixed response, counts connections,
/// and for one path sends its head and a byte, then stalls.
struct FakeHttp {
    base: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeHttp {
    fn start(routes: Vec<(&'static str, String)>) -> Self {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let path = crate::read_request_path(&mut conn);
                let answer = routes.iter().find(|(p, _)| *p == path).map(|(_, a)| a.clone());
                let answer = answer.unwrap_or_else(|| {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into()
                });
                if answer == "STALL" {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nx");
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_secs(120));
                        drop(conn);
                    });
                    continue;
                }
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        FakeHttp { base, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn ok_body(body: &[u8]) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    )
}

fn redirect_to(url: &str) -> String {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {url}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
}

fn import_body(manifest_url: &str, size: usize, sha: &str) -> serde_json::Value {
    serde_json::json!([{
        "importManifest": {"url": manifest_url, "sizeInBytes": size, "hashes": {"sha256": sha}},
        "files": [],
    }])
}

#[test]
fn serve_fetches_only_from_its_store_and_allowed_hosts() {
    use crate::service::{api, curl, raw_import};
    let dir = tempfile::tempdir().unwrap();
    let internal = FakeHttp::start(vec![("/secret", ok_body(b"internal admin page"))]);
    let serve = crate::service::Serve::start(&dir.path().join("data"), None);
    // Refused before anything is fetched: metadata address, another loopback port, a file URL,
    // credentials in a URL (even to an allowed-looking host).
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("{}/secret", internal.base),
        "file:///etc/passwd".to_owned(),
        format!("{}/blobs/c/x", serve.endpoint.replace("http://", "http://user:pass@")),
    ] {
        let (status, json, _) =
            curl("POST", &api(&serve, "updates:import"), Some(&import_body(&url, 19, "x")), None);
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (400, Some("UrlNotAllowed")),
            "{url}: {json}"
        );
    }
    assert_eq!(internal.hits(), 0, "a refused URL was fetched");

    // An allowed host that redirects to one that is not: the redirect is not followed.
    let internal_port = internal.base.rsplit(':').next().unwrap().to_owned();
    let mirror = FakeHttp::start(vec![
        ("/to-internal", redirect_to(&format!("{}/secret", internal.base))),
        ("/to-metadata", redirect_to("http://169.254.169.254/latest/meta-data/")),
        ("/wrong", ok_body(b"not the manifest you declared")),
        ("/slow", "STALL".into()),
    ]);
    let mirror_host = mirror.base.trim_start_matches("http://").to_owned();
    assert_ne!(mirror_host.rsplit(':').next().unwrap(), internal_port);
    let serve = crate::service::Serve::start_with(
        &dir.path().join("data2"),
        &["--allow-fetch", &mirror_host, "--stall-timeout", "2s"],
    );
    for path in ["/to-internal", "/to-metadata"] {
        let op = raw_import(&serve, &import_body(&format!("{}{path}", mirror.base), 19, "x"));
        assert_eq!(op["status"], "Failed", "{op}");
        assert_eq!(op["error"]["code"], "CannotDownload", "{op}");
    }
    assert_eq!(internal.hits(), 0, "a redirect reached a host serve must not fetch");

    // What an allowed URL returned is not echoed back: only what was declared.
    let returned = otaforge::Sha256::digest(b"not the manifest you declared").to_base64();
    let op = raw_import(&serve, &import_body(&format!("{}/wrong", mirror.base), 10, "AAAA"));
    let text = op["error"].to_string();
    assert!(!text.contains(&returned) && !text.contains("29 bytes"), "{text}");
    assert!(text.contains("does not match"), "{text}");

    // A URL that trickles: the fetch fails at the stall timeout, not after the whole-fetch cap.
    let op = raw_import(&serve, &import_body(&format!("{}/slow", mirror.base), 100, "AAAA"));
    assert_eq!(op["status"], "Failed", "{op}");
    assert_eq!(op["error"]["code"], "CannotDownload", "{op}");
}

#[test]
fn serve_bounds_requests_and_answers_every_error_in_the_adu_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let serve = crate::service::Serve::start(&dir.path().join("data"), None);
    let host = serve.endpoint.trim_start_matches("http://").to_owned();
    let post = |path: &str, body: &str| {
        raw(
            &serve.endpoint,
            &format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"),
            body,
        )
    };
    let envelope = |status: u16, text: &str, want_status: u16, want_code: &str| {
        assert_eq!(status, want_status, "{text}");
        let v: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["error"]["code"], want_code, "{text}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
    };
    let import = format!("/deviceUpdate/default/updates:import?{API}");
    // A body over the limit: 413, before it is stored.
    let (status, text) = post(&import, &format!("[\"{}\"]", "a".repeat(1_100_000)));
    envelope(status, &text, 413, "RequestEntityTooLarge");
    // A URL over the limit.
    let long = format!("{}/blobs/c/{}", serve.endpoint, "a".repeat(5000));
    let body = import_body(&long, 1, "x").to_string();
    let (status, text) = post(&import, &body);
    envelope(status, &text, 400, "InvalidImportRequest");
    assert!(text.contains("at most 4096"), "{text}");
    // Errors the HTTP layer makes: an unknown method, an unknown route, a path that is not UTF-8.
    let get = |line: &str| raw(&serve.endpoint, &format!("{line} HTTP/1.1\r\nHost: {host}"), "");
    let (status, text) = post(&format!("/deviceUpdate/default/updates/providers?{API}"), "{}");
    envelope(status, &text, 405, "MethodNotAllowed");
    let (status, text) = get(&format!("GET /deviceUpdate/default/nothing-here?{API}"));
    envelope(status, &text, 404, "NotFound");
    let (status, text) =
        get(&format!("GET /deviceUpdate/default/updates/providers/%FF/names/b/versions/1.0?{API}"));
    assert!(status == 400 || status == 404, "{status} {text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v["error"]["code"].is_string(), "{text}");
}

#[test]
fn every_failure_prints_one_json_error_of_one_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs_err::write(d.join("fw.bin"), b"firmware").unwrap();
    fs_err::write(d.join("junk.delta"), b"not a delta at all").unwrap();
    fs_err::write(d.join("junk.img"), b"not an image").unwrap();
    otaforge().current_dir(d).args(["key", "generate", "-o", "k"]).assert().success();
    script_manifest(d);
    let cases: Vec<(i32, &str, Vec<&str>)> = vec![
        (2, "usage", vec!["delta", "apply"]),
        (2, "notFound", vec!["delta", "create", "fw.bin", "fw.bin", "-o", "/nonexistent/d.delta"]),
        (2, "usage", vec!["hash", "--no-such-option"]),
        (2, "notFound", vec!["manifest", "validate", "missing.json"]),
        (2, "notFound", vec!["key", "show", "missing.pem"]),
        (2, "badKey", vec!["sign", "fw.bin", "--key", "k.pub.pem"]),
        (1, "signatureMissing", vec!["verify", "fw.bin", "--pub", "k.pub.pem"]),
        (1, "unknownFormat", vec!["delta", "apply", "fw.bin", "junk.delta", "-o", "out.bin"]),
        (1, "unknownFormat", vec!["delta", "info", "junk.delta"]),
        (
            2,
            "invalidValue",
            vec![
                "meta",
                "sign",
                "fw.bin",
                "--release-version",
                "1.0",
                "--security-counter",
                "1",
                "--key",
                "k.pem",
                "-o",
                "m.json",
                "--expires",
                "8000y",
            ],
        ),
        (
            2,
            "error",
            vec!["serve", "--token", "short", "--data-dir", "sd", "--listen", "127.0.0.1:0"],
        ),
        (
            2,
            "service",
            vec![
                "import",
                "contoso.dup.1.0.importmanifest.json",
                "--endpoint",
                "http://127.0.0.1:1",
                "--instance",
                "i",
                "--dir",
                "blobs",
                "--base-url",
                "http://127.0.0.1:1/b",
            ],
        ),
        (
            1,
            "invalidManifest",
            vec!["import", "fw.bin", "--endpoint", "http://127.0.0.1:1", "--instance", "i"],
        ),
    ];
    for (code, error, args) in cases {
        let out =
            otaforge().current_dir(d).args(["--format", "json"]).args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut docs = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
        let doc = docs.next().unwrap_or_else(|| panic!("{args:?}: no JSON on stdout")).unwrap();
        assert!(docs.next().is_none(), "{args:?}: more than one JSON document: {text}");
        assert_eq!(doc["error"], error, "{args:?}: {doc}");
        let message =
            doc["message"].as_str().unwrap_or_else(|| panic!("{args:?}: no message: {doc}"));
        assert!(!message.is_empty());
        assert!(!message.contains(".otaforge-"), "{args:?}: a temp file's name: {message}");
        // No cause repeated ("...: No such file or directory: No such file or directory").
        for part in message.split(": ") {
            if part.len() > 12 {
                assert_eq!(
                    message.matches(part).count(),
                    1,
                    "{args:?}: repeated `{part}` in {message}"
                );
            }
        }
    }
}

#[test]
fn nothing_listening_is_reported_at_once_with_the_endpoint_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs_err::write(d.join("fw.bin"), vec![1u8; 1000]).unwrap();
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let key =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
    );
    let out = otaforge()
        .current_dir(d)
        .env("AZURE_STORAGE_CONNECTION_STRING", &conn)
        .args([
            "--format",
            "json",
            "upload",
            "fw.bin",
            "--container",
            "firmware",
            "--max-retries",
            "8",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let json = crate::stdout_json(&out);
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains("connection refused") && message.contains(&format!("127.0.0.1:{port}")),
        "{message}"
    );
    assert!(!message.contains("retry policy"), "{message}");
    // Refused is not retried: no try was announced as one to repeat.
    assert!(!err.contains("will retry"), "{err}");

    // The Device Update client the same way.
    let m = script_manifest(d);
    let out = otaforge()
        .current_dir(d)
        .args(["--format", "json", "import"])
        .arg(&m)
        .args(["--endpoint", &format!("http://127.0.0.1:{port}"), "--instance", "i"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = crate::stdout_json(&out)["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("connection refused") && message.contains(&format!("127.0.0.1:{port}")),
        "{message}"
    );
}

#[test]
fn a_byte_order_mark_and_a_trailing_comma_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let m = script_manifest(dir.path());
    let text = fs_err::read(&m).unwrap();
    let validate = |bytes: &[u8]| {
        fs_err::write(&m, bytes).unwrap();
        let out = otaforge().args(["manifest", "validate"]).arg(&m).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bom = validate(&[&[0xEF, 0xBB, 0xBF][..], &text].concat());
    assert!(
        bom.contains("json-bom") && bom.contains("byte order mark") && !bom.contains("comma"),
        "{bom}"
    );
    let comma = validate(b"{\"updateId\": 1,}");
    assert!(comma.contains("trailing comma") && comma.contains("remove the comma"), "{comma}");
}

#[test]
fn serve_on_all_interfaces_prints_a_usable_url_and_the_token_variable() {
    let dir = tempfile::tempdir().unwrap();
    let token = "all-interfaces-token-0123";
    let serve =
        crate::service::Serve::start_on(&dir.path().join("data"), Some(token), "0.0.0.0:0", &[]);
    assert!(serve.endpoint.starts_with("http://127.0.0.1:"), "{}", serve.endpoint);
    // The endpoint works, and so do the blob URLs it hands out (an import from its own store).
    let m = crate::service::make_update(&dir.path().join("u"), "wide", "1.0", &[3u8; 2000]);
    let (code, json, err) = crate::service::import(&serve, &[&m], Some(token));
    assert_eq!(code, 0, "{json} {err}");
    // The text banner says how other machines reach it and how to pass the token.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data2"))
        .env("OTAFORGE_ADU_TOKEN", token)
        .env("XDG_CONFIG_HOME", crate::config_home())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    {
        use std::io::BufRead as _;
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        while !banner.contains("import with") {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            banner.push_str(&line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(banner.contains("http://127.0.0.1:") && !banner.contains("http://0.0.0.0"), "{banner}");
    assert!(banner.contains("all interfaces") && banner.contains("--public-url"), "{banner}");
    assert!(banner.contains("OTAFORGE_ADU_TOKEN=<the token>"), "{banner}");
    assert!(!banner.contains(token), "the token was printed: {banner}");
}

// ---- Hardening, round 2 (issue 28): one request must not kill serve, and no input grows its
// memory without bound. ----

/// One request to serve with the `Authorization` header given verbatim (a device SAS token),
/// or none: status and JSON body (Null when not JSON).
fn call(
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
    auth: Option<&str>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    })
}

/// Creates a device on serve (an IoT Edge one with `edge`) and gives a SAS token for it.
fn device(serve: &crate::service::Serve, id: &str, edge: bool) -> String {
    let body = serde_json::json!({"deviceId": id, "capabilities": {"iotEdge": edge}});
    let (status, v) = call("PUT", &format!("{}/devices/{id}", serve.endpoint), Some(&body), None);
    assert_eq!(status, 200, "{v}");
    let key = v["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap();
    let key = otaforge::iothub::sas::SasKey::from_base64(key).unwrap();
    let host = serve.endpoint.trim_start_matches("http://");
    otaforge::iothub::sas::token(&format!("{host}/devices/{id}"), &key, None, crate::token_expiry())
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

/// serve answers a trivial request (it is alive and not stuck).
fn alive(serve: &crate::service::Serve) {
    let (status, _) = call("GET", &format!("{}/configurations", serve.endpoint), None, None);
    assert_eq!(status, 200, "serve stopped answering");
}

#[test]
fn long_flat_conditions_and_routes_neither_kill_serve_nor_stay_to_kill_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = crate::service::Serve::start(&data, None);
    device(&serve, "edge-1", true);
    let query = format!("{}/devices/query", serve.endpoint);
    // 7,000 ORs once aborted serve with a stack overflow; 10,000 ANDs and 20,000 `+` too.
    for cond in [
        chain("tags.a = 1", " OR ", 7_000),
        chain("tags.a = 1", " AND ", 10_000),
        format!("{} = 3", chain("tags.a", " + ", 20_000)),
    ] {
        let body = serde_json::json!({"query": format!("SELECT * FROM devices WHERE {cond}")});
        let (status, v) = call("POST", &query, Some(&body), None);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v, serde_json::json!([]));
    }
    // Stored: an Edge deployment and an ADM configuration whose conditions are 20,000 terms,
    // and an Edge route of 200,000. serve evaluates the first two in its Edge pass and on
    // every read of the configurations.
    let long = chain("tags.environment = 'x'", " or ", 20_000);
    let mut routed = crate::edge::base_content(&[("m", "mcr.microsoft.com/a:1")]);
    routed["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["long"] =
        format!("FROM /messages/* WHERE {} INTO $upstream", chain("a=1", " OR ", 200_000)).into();
    let body = serde_json::json!({"id": "route-long", "targetCondition": "*", "content": routed});
    let url = format!("{}/configurations/route-long", serve.endpoint);
    // Refused: a route is a twin value, and IoT Hub keeps those within 4 KB.
    let (status, v) = call("PUT", &url, Some(&body), None);
    assert_eq!(status, 400, "{v}");
    alive(&serve);
    let edge = crate::edge::base_content(&[("m", "mcr.microsoft.com/a:1")]);
    for (id, content) in [
        ("edge-long", edge),
        ("adm-long", serde_json::json!({"deviceContent": {"properties.desired.x": 1}})),
    ] {
        let body = serde_json::json!({"id": id, "targetCondition": long, "priority": 1, "content": content});
        let url = format!("{}/configurations/{id}", serve.endpoint);
        let (status, v) = call("PUT", &url, Some(&body), None);
        assert_eq!(status, 200, "{id}: {v}");
    }
    let (status, v) = call("GET", &format!("{}/configurations", serve.endpoint), None, None);
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(2)), "{v}");
    // The Edge pass runs shortly after each change; then serve starts again on that store.
    std::thread::sleep(std::time::Duration::from_secs(2));
    alive(&serve);
    serve.restart();
    std::thread::sleep(std::time::Duration::from_secs(2));
    alive(&serve);
    for id in ["edge-long", "adm-long"] {
        let url = format!("{}/configurations/{id}", serve.endpoint);
        assert_eq!(call("DELETE", &url, None, None).0, 204);
    }
    // The same inputs through the CLI: what-if and manifest validation end with an exit code.
    let twins =
        serde_json::json!([{"deviceId": "d", "tags": {}, "capabilities": {"iotEdge": true}}]);
    let configs = serde_json::json!([{"id": "c", "targetCondition": long, "priority": 1,
        "createdTimeUtc": "2026-11-01T00:00:00Z",
        "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {}}}}}]);
    fs_err::write(dir.path().join("twins.json"), twins.to_string()).unwrap();
    fs_err::write(dir.path().join("configs.json"), configs.to_string()).unwrap();
    let out = otaforge()
        .current_dir(dir.path())
        .args(["edge", "what-if", "--twins", "twins.json", "--configurations", "configs.json"])
        .args(["--delete", "c"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut manifest = crate::edge::base_content(&[("m", "mcr.microsoft.com/a:1")]);
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["long"] =
        format!("FROM /messages/* WHERE {} INTO $upstream", chain("a = 1", " OR ", 200_000)).into();
    fs_err::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let out = otaforge()
        .current_dir(dir.path())
        .args(["edge", "manifest", "validate", "manifest.json"])
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{:?}", out.status);
}

/// Answers every request on a loopback port with a chunked body that never ends.
fn endless_body_server() -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if c.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 65_536, " ".repeat(65_536));
                while c.write_all(chunk.as_bytes()).is_ok() {}
            });
        }
    });
    port
}

fn vm_hwm_mib(pid: u32) -> u64 {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[test]
fn an_import_manifest_that_never_ends_is_cut_at_its_cap() {
    let port = endless_body_server();
    let dir = tempfile::tempdir().unwrap();
    let allow = format!("127.0.0.1:{port}");
    let serve =
        crate::service::Serve::start_with(&dir.path().join("data"), &["--allow-fetch", &allow]);
    let url = format!("http://127.0.0.1:{port}/m.importmanifest.json");
    let body = serde_json::json!([{"importManifest": {"url": url, "sizeInBytes": 100,
        "hashes": {"sha256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}, "files": []}]);
    let op = crate::service::raw_import(&serve, &body);
    assert_eq!(op["status"], "Failed", "{op:#}");
    let text = op["error"].to_string();
    assert!(text.contains("larger than"), "{text}");
    // The cap is 2 MiB; before the fix serve read the body whole (13 GB in 26 s).
    assert!(vm_hwm_mib(serve.pid()) < 300, "serve grew to {} MiB", vm_hwm_mib(serve.pid()));
}

#[test]
fn twins_and_configurations_keep_iot_hubs_limits() {
    let dir = tempfile::tempdir().unwrap();
    let serve = crate::service::Serve::start(&dir.path().join("data"), None);
    let auth = device(&serve, "d1", false);
    let report = format!("{}/devices/d1/twin/reported", serve.endpoint);
    let refused = |(status, v): (u16, serde_json::Value), what: &str| {
        assert_eq!(status, 400, "{what}: {v}");
        assert!(
            v["Message"].as_str().unwrap().starts_with("ErrorCode:ArgumentInvalid;"),
            "{what}: {v}"
        );
    };
    // One report over 32 KB, and a twin grown report by report past it.
    refused(
        call(
            "PATCH",
            &report,
            Some(&serde_json::json!({"big": "x".repeat(4000), "more": "y".repeat(4097)})),
            Some(&auth),
        ),
        "a 4 KB string",
    );
    let mut stopped = None;
    for i in 0..60 {
        let patch = serde_json::json!({format!("k{i}"): "v".repeat(1000)});
        let (status, _) = call("PATCH", &report, Some(&patch), Some(&auth));
        if status != 200 {
            assert_eq!(status, 400);
            stopped = Some(i);
            break;
        }
    }
    let stopped = stopped.expect("the reported properties grew past 32 KB");
    assert!((30..=33).contains(&stopped), "refused at report {stopped}");
    let (_, twin) = call("GET", &format!("{}/twins/d1", serve.endpoint), None, None);
    let reported = twin["properties"]["reported"].as_object().unwrap();
    assert!(otaforge::iothub::limits::size(reported) <= 32 * 1024);
    // A small read of another twin is not held up by any of it.
    let other = device(&serve, "d2", false);
    let t = std::time::Instant::now();
    assert_eq!(
        call("GET", &format!("{}/devices/d2/twin", serve.endpoint), None, Some(&other)).0,
        200
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    // The service side: 100,000 tags, 120 levels, keys IoT Hub refuses.
    let twin_url = format!("{}/twins/d1", serve.endpoint);
    let many: serde_json::Map<String, serde_json::Value> =
        (0..100_000).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    refused(
        call("PATCH", &twin_url, Some(&serde_json::json!({"tags": many})), None),
        "100,000 tags",
    );
    let mut deep = serde_json::json!(1);
    for _ in 0..120 {
        deep = serde_json::json!({"d": deep});
    }
    refused(
        call("PATCH", &twin_url, Some(&serde_json::json!({"properties": {"desired": deep}})), None),
        "120 levels",
    );
    refused(
        call("PATCH", &twin_url, Some(&serde_json::json!({"tags": {"a.b": 1}})), None),
        "a dotted key",
    );
    let (status, v) = call("GET", &twin_url, None, None);
    assert_eq!(
        (status, v["tags"].as_object().map(serde_json::Map::len)),
        (200, Some(0)),
        "nothing was stored: {v}"
    );
    // Configurations: 1.6 MB of labels or of device content.
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..400).map(|i| (format!("l{i}"), serde_json::json!("x".repeat(4000)))).collect();
    let big_content: serde_json::Map<String, serde_json::Value> = (0..400)
        .map(|i| (format!("properties.desired.p{i}"), serde_json::json!("x".repeat(4000))))
        .collect();
    for (what, body) in [
        (
            "labels",
            serde_json::json!({"id": "c1", "targetCondition": "*", "labels": labels, "content": {"deviceContent": {"properties.desired.x": 1}}}),
        ),
        (
            "device content",
            serde_json::json!({"id": "c1", "targetCondition": "*", "content": {"deviceContent": big_content}}),
        ),
    ] {
        refused(
            call("PUT", &format!("{}/configurations/c1", serve.endpoint), Some(&body), None),
            what,
        );
    }
    // A device token that never expires is refused, however well signed.
    let key = {
        let (_, v) = call("GET", &format!("{}/devices/d2", serve.endpoint), None, None);
        otaforge::iothub::sas::SasKey::from_base64(
            v["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap(),
        )
        .unwrap()
    };
    let host = serve.endpoint.trim_start_matches("http://");
    let forever =
        otaforge::iothub::sas::token(&format!("{host}/devices/d2"), &key, None, u64::MAX - 1);
    assert_eq!(
        call("GET", &format!("{}/devices/d2/twin", serve.endpoint), None, Some(&forever)).0,
        401
    );
}

#[test]
fn module_twins_exist_only_for_identities_the_hub_made() {
    let dir = tempfile::tempdir().unwrap();
    let serve = crate::service::Serve::start(&dir.path().join("data"), None);
    let plain = device(&serve, "plain", false);
    let edge = device(&serve, "gw", true);
    let report = |dev: &str, module: &str, auth: &str| {
        let url = format!("{}/devices/{dev}/modules/{module}/twin/reported", serve.endpoint);
        call("PATCH", &url, Some(&serde_json::json!({"x": 1})), Some(auth))
    };
    let long = "m".repeat(3000);
    for module in ["%24edgeHub", "%24edgeAgent", "%00", "a%0Ab", long.as_str(), "m1"] {
        let (status, v) = report("plain", module, &plain);
        assert_eq!(status, 404, "{module}: {v}");
        assert!(v["Message"].as_str().unwrap().contains("ModuleNotFound"), "{v}");
    }
    // `..` as a module id, sent as it is (an HTTP client library would resolve it away).
    let head = format!(
        "PATCH /devices/plain/modules/../twin/reported HTTP/1.1\r\nHost: {}\r\nAuthorization: {plain}\r\nContent-Type: application/json",
        serve.endpoint.trim_start_matches("http://")
    );
    let (status, body) = raw(&serve.endpoint, &head, "{\"x\": 1}");
    assert_eq!(status, 404, "{body}");
    for module in ["m1", "%00", long.as_str()] {
        assert_eq!(report("gw", module, &edge).0, 404, "{module}");
    }
    assert_eq!(report("gw", "%24edgeAgent", &edge).0, 200);
    // Nothing was created: the plain device has no modules, the Edge device the runtime's two.
    let list = |dev: &str| {
        let (_, v) = call("GET", &format!("{}/devices/{dev}/modules", serve.endpoint), None, None);
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["moduleId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(list("plain"), Vec::<String>::new());
    assert_eq!(list("gw"), ["$edgeAgent", "$edgeHub"]);
    // The service cannot create one by patching, nor give a plain device the runtime's.
    let url = format!("{}/twins/plain/modules/m1", serve.endpoint);
    let patch = serde_json::json!({"properties": {"desired": {"a": 1}}});
    assert_eq!(call("PATCH", &url, Some(&patch), None).0, 404);
    let content = crate::edge::base_content(&[]);
    let url = format!("{}/devices/plain/applyConfigurationContent", serve.endpoint);
    assert_eq!(call("POST", &url, Some(&content), None).0, 400);
    assert_eq!(list("plain"), Vec::<String>::new());
}

#[test]
fn half_open_and_idle_connections_are_closed_and_their_number_capped() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let serve = crate::service::Serve::start_with(
        &dir.path().join("data"),
        &["--header-timeout", "1s", "--max-connections", "32"],
    );
    let addr = serve.endpoint.trim_start_matches("http://").to_owned();
    // A slow-loris: 32 connections that send half a request head and wait.
    let held: Vec<std::net::TcpStream> = (0..32)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /configurations HTTP/1.1\r\nHost: x\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Over the cap, a connection is closed at once rather than left to wait.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)), "a connection over the cap was kept");
    // Within about the header timeout, each held connection is closed by serve.
    let started = std::time::Instant::now();
    for mut c in held {
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let n = c.read(&mut buf);
        assert!(matches!(n, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408"), "{n:?}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "{:?}", started.elapsed());
    // Then clients are served; a kept-alive connection left idle is closed the same way.
    alive(&serve);
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET /configurations HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let mut rest = Vec::new();
    let t = std::time::Instant::now();
    let _ = c.read_to_end(&mut rest);
    assert!(t.elapsed() < std::time::Duration::from_secs(4), "idle for {:?}", t.elapsed());
}

// ================================================================================================
// Hardening, round 2 (issue 28, items 5 and 11 and the total deadline): what a simulated device
// and the HTTP clients must survive. A device's `fileUrls` are outside the manifest signature,
// so whoever can write a twin can point a device at an endless body; a garbled update manifest
// must fail the deployment as the agent fails it, not leave it in progress; a service that
// accepts the connection and never answers must fail a call within its deadline, naming the
// host.
// ================================================================================================

mod round2 {
    use std::io::Write as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use otaforge::fleet::{Failures, Fleet, FleetSpec};
    use otaforge::iothub::{ConnectionString, IotHubClient};
    use serde_json::{Map, Value, json};

    use crate::service::Serve;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    /// One simulated device (no group, no root keys: the manifest is not signature-checked).
    fn one_device(serve: &Serve, hub: &ConnectionString, prefix: &str) -> FleetSpec {
        let mut class = Map::new();
        class.insert("manufacturer".into(), json!("contoso"));
        class.insert("model".into(), json!("toaster"));
        let ca = fs_err::read(serve.info["mqttCaFile"].as_str().unwrap()).unwrap();
        FleetSpec {
            ca: Some(std::sync::Arc::new(ca)),
            hub: hub.clone(),
            prefix: prefix.into(),
            devices: 1,
            class,
            group: None,
            installed: None,
            failures: Failures::default(),
            seed: 1,
            poll: Duration::from_secs(5),
            parallel: 1,
            trusted: None,
            roots: None,
            edge: false,
        }
    }

    /// Writes the desired `deviceUpdate.service` property of a device's twin, as whoever holds
    /// the hub's service credential can.
    async fn desire(serve: &Serve, hub: &ConnectionString, device: &str, service: Value) {
        let body =
            json!({"properties": {"desired": {"deviceUpdate": {"__t": "c", "service": service}}}});
        let resp = reqwest::Client::new()
            .patch(format!("{}/twins/{device}?api-version=2021-04-12", serve.endpoint))
            .header("authorization", hub.token(Duration::from_secs(600)))
            .header("content-type", "application/json")
            .header("if-match", "*")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    /// The agent properties a device reported.
    async fn agent(hub: &ConnectionString, device: &str) -> Value {
        let twin = IotHubClient::new(hub.clone()).unwrap().get_twin(device).await.unwrap();
        twin.properties.reported["deviceUpdate"]["agent"].clone()
    }

    /// A loopback server that answers every request with an endless chunked body, 64 KiB at a
    /// time, and stops after 64 MiB; counts what it sent.
    struct Endless {
        url: String,
        sent: Arc<AtomicU64>,
    }

    impl Endless {
        const CAP: u64 = 64 << 20;

        fn start() -> Self {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/fw.bin", listener.local_addr().unwrap());
            let sent = Arc::new(AtomicU64::new(0));
            let count = sent.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { return };
                    crate::read_request_path(&mut conn);
                    let count = count.clone();
                    std::thread::spawn(move || {
                        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                        if conn.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        let chunk = vec![7u8; 64 << 10];
                        while count.load(Ordering::SeqCst) < Self::CAP {
                            let framed =
                                [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"]
                                    .concat();
                            if conn.write_all(&framed).is_err() {
                                return;
                            }
                            count.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        }
                    });
                }
            });
            Endless { url, sent }
        }
    }

    #[test]
    fn a_device_stops_an_endless_download_at_size_in_bytes_and_reports_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let serve = Serve::start(&data, None);
        let hub = crate::hub_connection(&data);
        let endless = Endless::start();
        let payload = vec![7u8; 1000];
        let manifest = json!({
            "manifestVersion": "5",
            "updateId": {"provider": "contoso", "name": "toaster", "version": "6.6"},
            "compatibility": [{"manufacturer": "contoso", "model": "toaster"}],
            "instructions": {"steps": [{"handler": "microsoft/swupdate:2", "files": ["f1"]}]},
            "files": {"f1": {"filename": "fw.bin", "sizeInBytes": 1000,
                             "hashes": {"sha256": otaforge::Sha256::digest(&payload).to_base64()}}},
            "createdDateTime": "2026-12-01T00:00:00Z",
        });
        runtime().block_on(async {
            let fleet = Fleet::register(one_device(&serve, &hub, "endless")).await.unwrap();
            let service = json!({
                "workflow": {"action": 3, "id": "endless-1"},
                "updateManifest": manifest.to_string(),
                "fileUrls": {"f1": endless.url},
            });
            desire(&serve, &hub, "endless-0000", service).await;
            let t = fleet.run(Duration::from_secs(30), &|t| t.installed + t.failed > 0).await;
            assert_eq!((t.as_ref().unwrap().installed, t.unwrap().failed), (0, 1));
            let agent = agent(&hub, "endless-0000").await;
            assert_eq!(agent["state"], 255, "{agent}");
            let last = &agent["lastInstallResult"];
            assert_eq!(last["resultCode"], 0, "{agent}");
            // As agents from 1.1 report it: hex, in a string.
            assert_eq!(last["extendedResultCodes"], "00100003", "{agent}");
            assert!(last["resultDetails"].as_str().unwrap().contains("sizeInBytes"), "{agent}");
            assert_eq!(agent["workflow"]["id"], "endless-1");
        });
        // The device hung up after the first piece; only what the socket buffers held was sent.
        let sent = endless.sent.load(Ordering::SeqCst);
        assert!(sent < 16 << 20, "the device read {sent} bytes of a 1000-byte file");
    }

    #[test]
    fn a_garbled_update_manifest_fails_the_deployment_with_the_agents_code() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let serve = Serve::start(&data, None);
        let hub = crate::hub_connection(&data);
        runtime().block_on(async {
            let fleet = Fleet::register(one_device(&serve, &hub, "garbled")).await.unwrap();
            let service = json!({
                "workflow": {"action": 3, "id": "garbled-1"},
                "updateManifest": "{\"updateId\": {\"provider\": \"contoso\", ",
                "fileUrls": {},
            });
            desire(&serve, &hub, "garbled-0000", service).await;
            let t = fleet.run(Duration::from_secs(20), &|t| t.installed + t.failed > 0).await;
            let t = t.unwrap();
            assert_eq!((t.installed, t.failed), (0, 1), "no report for a garbled manifest");
            let agent = agent(&hub, "garbled-0000").await;
            assert_eq!(agent["state"], 255, "{agent}");
            let last = &agent["lastInstallResult"];
            assert_eq!(last["resultCode"], 0, "{agent}");
            // ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_BAD_UPDATE_MANIFEST.
            assert_eq!(last["extendedResultCodes"], "80300009", "{agent}");
            assert!(last["resultDetails"].as_str().unwrap().contains("not JSON"), "{agent}");
            assert_eq!(agent["workflow"]["id"], "garbled-1", "{agent}");
        });
    }

    /// A loopback port that accepts connections and never answers.
    fn silent_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                held.push(conn);
            }
        });
        port
    }

    #[test]
    fn a_service_that_never_answers_fails_each_call_within_its_deadline_naming_the_host() {
        let port = silent_port();
        let host = format!("127.0.0.1:{port}");
        let rt = runtime();
        // The Device Update client: every try is cut to what is left of the call's deadline.
        let policy = otaforge::retry::RetryPolicy {
            max_total: Duration::from_secs(2),
            ..otaforge::retry::RetryPolicy::default()
        };
        let adu = otaforge::service::AduClient::new(
            &format!("http://{host}"),
            "default",
            otaforge::service::Auth::None,
        )
        .unwrap()
        .with_retry(policy);
        let started = Instant::now();
        let err = rt.block_on(adu.list_updates()).unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "the call took {took:?}");
        let message = err.to_string();
        assert!(message.contains(&host) && message.contains("within 2s"), "{message}");

        // The IoT Hub client the same way, the answer's body included.
        let key = otaforge::iothub::sas::SasKey::from_base64(&"A".repeat(44)).unwrap();
        let conn = ConnectionString::new(&host, "iothubowner", key, true);
        let hub = IotHubClient::new(conn).unwrap().with_deadline(Duration::from_secs(2));
        let started = Instant::now();
        let err = rt.block_on(hub.get_twin("d1")).unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "the call took {took:?}");
        let message = err.to_string();
        assert!(message.contains(&host) && message.contains("within 2s"), "{message}");
    }

    #[test]
    fn the_command_line_gives_every_call_the_request_timeout() {
        let port = silent_port();
        let host = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let conn = dir.path().join("hub");
        let key = "A".repeat(44);
        let text = format!(
            "HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={key};UseHttp=true"
        );
        fs_err::write(&conn, text).unwrap();
        let conn = conn.display().to_string();
        let endpoint = format!("http://{host}");
        for args in [
            &["update", "list", "--endpoint", &endpoint, "--instance", "i"][..],
            &["group", "tag", "d1", "--group", "lab", "--iothub-connection-file", &conn],
        ] {
            let started = Instant::now();
            let out = crate::otaforge()
                .args(["--format", "json", "--request-timeout", "2s"])
                .args(args)
                .output()
                .unwrap();
            let took = started.elapsed();
            assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let message = crate::stdout_json(&out)["message"].as_str().unwrap().to_owned();
            assert!(message.contains(&host) && message.contains("within 2s"), "{message}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 28, round 2 (release area): `otaforge new` and private files.
// ---------------------------------------------------------------------------------------------

/// `otaforge new` writes nothing through a symlink: a dangling link where a file goes, a link
/// to a folder elsewhere on the way to one, a dangling link where a folder is created; each is
/// refused (exit 2) before anything is written, here or where the link points.
#[test]
fn new_writes_nothing_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let elsewhere = dir.path().join("elsewhere");
    fs_err::create_dir_all(&repo).unwrap();
    fs_err::create_dir_all(&elsewhere).unwrap();
    let new = || otaforge().args(["new", "--template", "mcu"]).arg(&repo).output().unwrap();
    let cases: [(&str, PathBuf, &str); 3] = [
        (
            "otaforge.toml",
            elsewhere.join("otaforge.toml"),
            "is a symlink; otaforge new never writes through one",
        ),
        (".github", elsewhere.clone(), "is a symlink; otaforge new never writes through one"),
        (
            "keys",
            elsewhere.join("keys"),
            "is a symlink to nothing; otaforge new never creates through one",
        ),
    ];
    for (name, target, want) in &cases {
        std::os::unix::fs::symlink(target, repo.join(name)).unwrap();
        let out = new();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(&format!("{}/{name} {want}", repo.display())), "{name}: {err}");
        let mut left: Vec<_> =
            fs_err::read_dir(&repo).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(
            left,
            [std::ffi::OsString::from(*name)],
            "{name}: nothing written in the repository"
        );
        assert!(
            fs_err::read_dir(&elsewhere).unwrap().next().is_none(),
            "{name}: nothing written elsewhere"
        );
        fs_err::remove_file(repo.join(name)).unwrap();
    }
    let out = new();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(repo.join(".github/workflows/otaforge-release.yml").is_file());
}

/// A private file otaforge writes again keeps no loose mode it had: serve's IoT Hub connection
/// string and root JWK, found 0644 in the data dir at a restart (restored from a backup, say),
/// are 0600 once it runs.
#[test]
fn private_files_found_with_a_loose_mode_are_written_0600() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = crate::service::Serve::start(&data, None);
    let files = ["iothub.connection-string", "update-root.jwk.json"];
    for f in files {
        assert_eq!(mode(&data.join(f)), 0o600, "{f} when made");
        fs_err::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    serve.restart();
    for f in files {
        assert_eq!(mode(&data.join(f)), 0o600, "{f} after a start that found it 0644");
    }
}

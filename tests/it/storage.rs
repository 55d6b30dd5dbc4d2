//! Blob storage: one conformance suite for both backends, the Azure backend against real Azurite
//! (found through `OTAFORGE_TEST_AZURITE`, e.g. `http://127.0.0.1:10000/devstoreaccount1`, which
//! `cargo xtask ci` and `.ci/run` set after starting it), fault injection through a loopback
//! proxy, kill -9 and resume, and a scan of all output for secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use otaforge::storage::azure::{AzureStore, Credential, Network};
use otaforge::storage::dir::DirStore;
use otaforge::storage::sas::AccountKey;
use otaforge::storage::{BlobName, BlobStore, ContainerName, Source, StorageError, UploadOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{otaforge, stdout_json};

/// Azurite's well-known development account key (public; documented by Microsoft).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const ACCOUNT: &str = "devstoreaccount1";

/// The Azurite blob endpoint. The tests that call this are `#[ignore]`d (plain `cargo test`
/// lists them as not run); `cargo xtask ci` starts Azurite and runs them, and then a missing or
/// unreachable endpoint fails the test, never skips it.
fn azurite() -> String {
    let url = std::env::var("OTAFORGE_TEST_AZURITE").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "OTAFORGE_TEST_AZURITE is not set: run the tests through `cargo xtask ci`, which starts Azurite, or start one with `cargo xtask azurite` and export what it prints"
    );
    let probe = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{url}?comp=list")])
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&probe.stdout).into_owned();
    assert!(
        code == "403" || code == "200",
        "OTAFORGE_TEST_AZURITE={url} is set but Azurite does not answer (got `{code}`); start it with `cargo xtask azurite`"
    );
    url
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn quick_network() -> Network {
    Network {
        io_timeout: Duration::from_secs(2),
        retry: otaforge::retry::RetryPolicy {
            max_retries: 10,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(30),
            max_total: Duration::from_secs(120),
        },
        on_retry: None,
    }
}

fn azure_store(endpoint: &str) -> AzureStore {
    AzureStore::new(
        endpoint,
        ACCOUNT,
        Credential::SharedKey(AccountKey::from_base64(AZURITE_KEY).unwrap()),
        quick_network(),
    )
    .unwrap()
}

fn connection_string(endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
    )
}

/// A fresh container name per test (tests share one Azurite).
fn container(tag: &str) -> ContainerName {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("t-{tag}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
        .parse()
        .unwrap()
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

fn curl_get(url: &str) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("body");
    let r = Command::new("curl")
        .args(["-s", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}", url])
        .output()
        .unwrap();
    (String::from_utf8_lossy(&r.stdout).into_owned(), fs_err::read(&out).unwrap_or_default())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs_err::write(&p, bytes).unwrap();
    p
}

/// The suite every backend passes. `fetch` downloads a read URL.
async fn conformance<S: BlobStore>(store: &S, c: &ContainerName, fetch: &dyn Fn(&str) -> Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = UploadOptions { block_size: 64 << 10, concurrency: 4, ..UploadOptions::default() };
    store.ensure_container(c).await.unwrap();
    store.ensure_container(c).await.unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.bin", Vec::new()),
        ("small.bin", b"hello, device".to_vec()),
        ("exact.bin", data(1, 128 << 10)),
        ("dir/odd size.bin", data(2, (300 << 10) + 17)),
    ];
    for (name, bytes) in &cases {
        let path = write(dir.path(), &name.replace('/', "_"), bytes);
        let blob: BlobName = name.parse().unwrap();
        let src = Source::hash(&path, &otaforge::NoReporter).unwrap();
        let up = store.upload(c, &blob, &src, &opts, &otaforge::NoReporter).await.unwrap();
        assert!(!up.already_present, "{name}");
        assert_eq!(
            (up.size_in_bytes, up.sha256),
            (bytes.len() as u64, otaforge::Sha256::digest(bytes))
        );
        let url = store.read_url(c, &blob, Duration::from_secs(600)).await.unwrap();
        assert_eq!(&fetch(&url), bytes, "{name}: downloaded bytes differ");
        // The same bytes again: nothing is sent.
        let again = store.upload(c, &blob, &src, &opts, &otaforge::NoReporter).await.unwrap();
        assert!(again.already_present && again.blocks_sent == 0, "{name}: re-sent identical bytes");
    }
    // Different bytes under the same name replace the blob.
    let path = write(dir.path(), "v2", &data(3, 70_000));
    let blob: BlobName = "small.bin".parse().unwrap();
    let src = Source::hash(&path, &otaforge::NoReporter).unwrap();
    let up = store.upload(c, &blob, &src, &opts, &otaforge::NoReporter).await.unwrap();
    assert!(!up.already_present);
    let url = store.read_url(c, &blob, Duration::from_secs(600)).await.unwrap();
    assert_eq!(fetch(&url), data(3, 70_000));
}

#[test]
fn dir_backend_conforms_and_its_urls_are_checked() {
    let root = tempfile::tempdir().unwrap();
    let store = DirStore::open(root.path(), "http://127.0.0.1:9/blobs").unwrap();
    let fetch = |url: &str| {
        let u = url::Url::parse(url).unwrap();
        let path = u.path().strip_prefix("/blobs").unwrap();
        let file = store.resolve(path, u.query().unwrap(), SystemTime::now()).unwrap();
        fs_err::read(file).unwrap()
    };
    let c = container("dir");
    rt().block_on(conformance(&store, &c, &fetch));
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        fs_err::metadata(root.path().join(".otaforge-url-key")).unwrap().permissions().mode()
            & 0o777;
    assert_eq!(mode, 0o600);

    let blob: BlobName = "exact.bin".parse().unwrap();
    let url = rt().block_on(store.read_url(&c, &blob, Duration::from_secs(60))).unwrap();
    let u = url::Url::parse(&url).unwrap();
    let path = u.path().strip_prefix("/blobs").unwrap().to_owned();
    let q = u.query().unwrap().to_owned();
    let refused = |path: &str, q: &str, now: SystemTime| {
        matches!(store.resolve(path, q, now), Err(StorageError::BadUrl(_)))
    };
    assert!(!refused(&path, &q, SystemTime::now()));
    assert!(
        refused(&path, &q, SystemTime::now() + Duration::from_secs(61)),
        "expired URL accepted"
    );
    let sig_at = q.find("sig=").unwrap() + 4;
    let mut tampered = q.clone();
    let c0 = if &q[sig_at..sig_at + 1] == "A" { "B" } else { "A" };
    tampered.replace_range(sig_at..sig_at + 1, c0);
    assert!(refused(&path, &tampered, SystemTime::now()), "tampered sig accepted");
    assert!(
        refused(&path.replace("exact", "small"), &q, SystemTime::now()),
        "sig valid for another blob"
    );
    assert!(refused(&path, &q.replace("sp=r", "sp=w"), SystemTime::now()));
    assert!(refused(&format!("/{c}/../x"), &q, SystemTime::now()), "path traversal accepted");
    // Another store (another key) does not accept this store's URLs.
    let other = DirStore::open(tempfile::tempdir().unwrap().path(), "http://x").unwrap();
    assert!(other.resolve(&path, &q, SystemTime::now()).is_err());
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn azure_backend_conforms_against_azurite_and_sas_urls_are_least_privilege() {
    let endpoint = azurite();
    let store = azure_store(&endpoint);
    let c = container("az");
    let fetch = |url: &str| {
        let (code, body) = curl_get(url);
        assert_eq!(code, "200", "GET {url}");
        body
    };
    rt().block_on(conformance(&store, &c, &fetch));
    // CRC-64 block checksums: Azurite recomputes and checks each one.
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4, (5 << 16) + 3);
    let path = write(dir.path(), "crc", &bytes);
    let crc_opts = UploadOptions {
        block_size: 64 << 10,
        concurrency: 2,
        checksum: otaforge::storage::Checksum::Crc64,
    };
    let crc_blob: BlobName = "crc.bin".parse().unwrap();
    let src = Source::hash(&path, &otaforge::NoReporter).unwrap();
    let up =
        rt().block_on(store.upload(&c, &crc_blob, &src, &crc_opts, &otaforge::NoReporter)).unwrap();
    assert_eq!(up.blocks_sent, 6);
    assert_eq!(
        fetch(&rt().block_on(store.read_url(&c, &crc_blob, Duration::from_secs(60))).unwrap()),
        bytes
    );

    let blob: BlobName = "exact.bin".parse().unwrap();
    let url = rt().block_on(store.read_url(&c, &blob, Duration::from_secs(600))).unwrap();
    assert!(
        url.contains("sp=r&") && url.contains("sr=b") && url.contains("sv=2022-11-02"),
        "{url}"
    );
    // A tampered signature, another blob, and writing are all refused.
    let sig_at = url.find("sig=").unwrap() + 4;
    let mut tampered = url.clone();
    let c0 = if &url[sig_at..sig_at + 1] == "A" { "B" } else { "A" };
    tampered.replace_range(sig_at..sig_at + 1, c0);
    assert_eq!(curl_get(&tampered).0, "403");
    assert_eq!(curl_get(&url.replace("exact.bin", "empty.bin")).0, "403");
    let put = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-H",
            "x-ms-blob-type: BlockBlob",
            "--data-binary",
            "evil",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&put.stdout), "403", "a read SAS could write");
    // An expired SAS.
    let short = rt().block_on(store.read_url(&c, &blob, Duration::from_secs(1))).unwrap();
    assert_eq!(curl_get(&short).0, "200");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(curl_get(&short).0, "403", "an expired SAS still works");
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn a_wrong_key_is_a_clear_403_without_retries_or_leaks() {
    let endpoint = azurite();
    let wrong = base64_key(&[7u8; 64]);
    let proxy = FaultProxy::start(&endpoint, 0, 0);
    let store = AzureStore::new(
        &proxy.endpoint,
        ACCOUNT,
        Credential::SharedKey(AccountKey::from_base64(&wrong).unwrap()),
        quick_network(),
    )
    .unwrap();
    let err = rt().block_on(store.ensure_container(&container("forbid"))).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::Forbidden { .. }), "{err:?}");
    assert!(
        text.contains("403") && text.contains("the key is wrong for account devstoreaccount1"),
        "{text}"
    );
    assert!(!text.contains(&wrong) && !text.contains("sig="), "{text}");
    assert_eq!(proxy.stats.requests.load(Ordering::Relaxed), 1, "a 403 was retried");
}

fn base64_key(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn uploads_complete_through_ten_percent_injected_faults() {
    let endpoint = azurite();
    // One request in ten fails: a 503 with Retry-After, a connection reset, or a stall longer
    // than the client's 2 s read timeout.
    let proxy = FaultProxy::start(&endpoint, 10, 0);
    let store = azure_store(&proxy.endpoint);
    let c = container("faults");
    let dir = tempfile::tempdir().unwrap();
    let opts = UploadOptions { block_size: 64 << 10, concurrency: 4, ..UploadOptions::default() };
    rt().block_on(async {
        store.ensure_container(&c).await.unwrap();
        for i in 0..3u64 {
            let bytes = data(10 + i, 1_000_000 + i as usize * 12_345);
            let path = write(dir.path(), &format!("f{i}"), &bytes);
            let blob: BlobName = format!("f{i}").parse().unwrap();
            let src = Source::hash(&path, &otaforge::NoReporter).unwrap();
            let up = store.upload(&c, &blob, &src, &opts, &otaforge::NoReporter).await.unwrap();
            assert_eq!(up.sha256, otaforge::Sha256::digest(&bytes));
            let url =
                azure_store(&endpoint).read_url(&c, &blob, Duration::from_secs(600)).await.unwrap();
            let (code, body) = curl_get(&url);
            assert_eq!(code, "200");
            assert!(body == bytes, "f{i}: downloaded bytes differ");
        }
    });
    let s = &proxy.stats;
    let (e503, resets, stalls) = (
        s.e503.load(Ordering::Relaxed),
        s.resets.load(Ordering::Relaxed),
        s.stalls.load(Ordering::Relaxed),
    );
    assert!(
        e503 > 0 && resets > 0 && stalls > 0,
        "faults injected: 503 {e503}, resets {resets}, stalls {stalls}"
    );
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn an_interrupted_upload_resumes_without_resending_staged_blocks() {
    let endpoint = azurite();
    // The proxy lets 5 block uploads through, then resets every connection.
    let proxy = FaultProxy::start(&endpoint, 0, 5);
    let c = container("resume");
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(42, (20 << 16) + 99);
    let path = write(dir.path(), "big", &bytes);
    let blob: BlobName = "big".parse().unwrap();
    let opts = UploadOptions { block_size: 64 << 10, concurrency: 1, ..UploadOptions::default() };
    let src = Source::hash(&path, &otaforge::NoReporter).unwrap();
    rt().block_on(async {
        azure_store(&endpoint).ensure_container(&c).await.unwrap();
        let mut net = quick_network();
        net.retry.max_retries = 1;
        let flaky = AzureStore::new(
            &proxy.endpoint,
            ACCOUNT,
            Credential::SharedKey(AccountKey::from_base64(AZURITE_KEY).unwrap()),
            net,
        )
        .unwrap();
        assert!(flaky.upload(&c, &blob, &src, &opts, &otaforge::NoReporter).await.is_err());
        // Nothing is committed: the blob does not exist yet.
        let url =
            azure_store(&endpoint).read_url(&c, &blob, Duration::from_secs(60)).await.unwrap();
        assert_eq!(curl_get(&url).0, "404", "a half-done upload became visible");
        let up = azure_store(&endpoint)
            .upload(&c, &blob, &src, &opts, &otaforge::NoReporter)
            .await
            .unwrap();
        assert_eq!((up.blocks_reused, up.blocks_sent), (5, 21 - 5));
        let (code, body) = curl_get(&url);
        assert!(code == "200" && body == bytes);
    });
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn kill_9_mid_upload_then_rerun_reuses_staged_blocks() {
    let endpoint = azurite();
    // A slow link: every request through the proxy waits 150 ms, so the kill lands mid-upload.
    let proxy = FaultProxy::start_with_delay(&endpoint, Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(77, 3 << 20);
    write(dir.path(), "image.bin", &bytes);
    let c = container("kill");
    let args = |ep: &str| {
        let mut cmd = otaforge();
        cmd.current_dir(dir.path())
            .env("AZURE_STORAGE_CONNECTION_STRING", connection_string(ep))
            .args([
                "--format",
                "json",
                "upload",
                "image.bin",
                "--container",
                c.as_str(),
                "--block-size",
                "64KiB",
                "--concurrency",
                "1",
            ]);
        cmd
    };
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
        .current_dir(dir.path())
        .env("AZURE_STORAGE_CONNECTION_STRING", connection_string(&proxy.endpoint))
        .args([
            "--format",
            "json",
            "upload",
            "image.bin",
            "--container",
            c.as_str(),
            "--block-size",
            "64KiB",
            "--concurrency",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.stats.blocks.load(Ordering::Relaxed) < 8 {
        assert!(std::time::Instant::now() < deadline, "the upload made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let staged = proxy.stats.blocks.load(Ordering::Relaxed);
    let out = args(&endpoint).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = stdout_json(&out);
    let reused = json[0]["blocksReused"].as_u64().unwrap();
    // Every block the proxy saw Azurite accept is reused (one more may have landed after the
    // count was read).
    assert!(reused >= staged && reused <= staged + 1, "reused {reused}, {staged} were staged");
    assert_eq!(json[0]["blocksSent"].as_u64().unwrap() + reused, 48);
    let (code, body) = curl_get(json[0]["url"].as_str().unwrap());
    assert!(code == "200" && body == bytes);
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn cli_output_never_shows_the_account_key_and_shows_sas_only_in_json_urls() {
    let endpoint = azurite();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.bin", &data(5, 200_000));
    let c = container("secrets");
    let key_enc: String = url::form_urlencoded::byte_serialize(AZURITE_KEY.as_bytes()).collect();
    let run = |cs: &str, format: &str| {
        let out = otaforge()
            .current_dir(dir.path())
            .env("AZURE_STORAGE_CONNECTION_STRING", cs)
            .args(["--format", format, "upload", "a.bin", "--container", c.as_str()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&connection_string(&endpoint), "text");
    assert_eq!(code, Some(0), "{stderr}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(AZURITE_KEY) && !text.contains(&key_enc));
        for (i, _) in text.match_indices("sig=") {
            assert!(
                text[i + 4..].starts_with("REDACTED"),
                "a SAS signature in text output: {text}"
            );
        }
    }
    let (code, stdout, stderr) = run(&connection_string(&endpoint), "json");
    assert_eq!(code, Some(0));
    assert!(
        !stdout.contains(AZURITE_KEY) && !stderr.contains(AZURITE_KEY) && !stderr.contains("sig=")
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut without_urls = json.clone();
    without_urls[0]["url"] = serde_json::Value::Null;
    assert!(!without_urls.to_string().contains("sig="));
    assert!(json[0]["url"].as_str().unwrap().contains("sig="));
    // Failures too: a wrong key.
    let wrong = connection_string(&endpoint).replace(AZURITE_KEY, &base64_key(&[9u8; 64]));
    for format in ["text", "json"] {
        let (code, stdout, stderr) = run(&wrong, format);
        assert_eq!(code, Some(2));
        assert!(stderr.contains("403"), "{stderr}");
        let all = format!("{stdout}{stderr}");
        assert!(!all.contains(&base64_key(&[9u8; 64])), "{all}");
        for (i, _) in all.match_indices("sig=") {
            assert!(all[i + 4..].starts_with("REDACTED"), "{all}");
        }
    }
}

// ---- a loopback HTTP proxy that injects faults --------------------------------------------------

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    blocks: AtomicU64,
    e503: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
}

struct FaultProxy {
    endpoint: String,
    stats: Arc<Stats>,
    _rt: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// `percent` of requests fail (rotating 503, reset, stall); after `allow_blocks` block
    /// uploads (0: unlimited) every further request is reset.
    fn start(upstream_endpoint: &str, percent: u64, allow_blocks: u64) -> Self {
        Self::spawn(upstream_endpoint, percent, allow_blocks, Duration::ZERO)
    }

    fn start_with_delay(upstream_endpoint: &str, delay: Duration) -> Self {
        Self::spawn(upstream_endpoint, 0, 0, delay)
    }

    fn spawn(upstream_endpoint: &str, percent: u64, allow_blocks: u64, delay: Duration) -> Self {
        let up = url::Url::parse(upstream_endpoint).unwrap();
        let upstream: SocketAddr =
            format!("{}:{}", up.host_str().unwrap(), up.port().unwrap()).parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        rt.spawn(async move {
            let counter = Arc::new(AtomicU64::new(0));
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let (s, counter) = (s.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ =
                        handle(client, upstream, &s, &counter, percent, allow_blocks, delay).await;
                });
            }
        });
        let mut endpoint = up.clone();
        endpoint.set_port(Some(addr.port())).unwrap();
        Self { endpoint: endpoint.to_string().trim_end_matches('/').to_owned(), stats, _rt: rt }
    }
}

async fn read_request(c: &mut tokio::net::TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await?;
    Ok(Some((head, body)))
}

fn without_connection_headers(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end()
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("connection:") && !l.starts_with("keep-alive:")
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

async fn handle(
    mut client: tokio::net::TcpStream,
    upstream: SocketAddr,
    stats: &Stats,
    counter: &AtomicU64,
    percent: u64,
    allow_blocks: u64,
    delay: Duration,
) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut client).await? else { return Ok(()) };
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let is_block =
        head.starts_with("PUT ") && head.lines().next().unwrap_or("").contains("comp=block&");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let over_budget =
        allow_blocks > 0 && is_block && stats.blocks.load(Ordering::Relaxed) >= allow_blocks;
    // A fixed pseudo-random sequence: the same faults on every run.
    let roll = n.wrapping_mul(2_654_435_761) % 100;
    if over_budget || (percent > 0 && roll < percent) {
        match if over_budget { 1 } else { n % 3 } {
            0 => {
                stats.e503.fetch_add(1, Ordering::Relaxed);
                client.write_all(b"HTTP/1.1 503 Server Busy\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
            }
            1 => {
                stats.resets.fetch_add(1, Ordering::Relaxed);
                client.set_zero_linger()?;
            }
            _ => {
                stats.stalls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        }
        return Ok(());
    }
    let mut up = tokio::net::TcpStream::connect(upstream).await?;
    up.write_all(without_connection_headers(&head).as_bytes()).await?;
    up.write_all(&body).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    if is_block && response.starts_with(b"HTTP/1.1 201") {
        stats.blocks.fetch_add(1, Ordering::Relaxed);
    }
    let split =
        response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 4);
    let rhead = String::from_utf8_lossy(&response[..split]).into_owned();
    client.write_all(without_connection_headers(&rhead).as_bytes()).await?;
    client.write_all(&response[split..]).await?;
    client.shutdown().await?;
    Ok(())
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn a_container_sas_credential_uploads_and_a_read_only_one_names_the_missing_permission() {
    use otaforge::storage::sas::{Protocol, ServiceSas};
    let endpoint = azurite();
    let c = container("csas");
    rt().block_on(azure_store(&endpoint).ensure_container(&c)).unwrap();
    let key = AccountKey::from_base64(AZURITE_KEY).unwrap();
    let sas_for = |perms: &str| {
        let now = SystemTime::now();
        let sas = ServiceSas {
            permissions: perms.into(),
            start: Some(now - Duration::from_secs(300)),
            expiry: now + Duration::from_secs(3600),
            protocol: Protocol::HttpsAndHttp,
            resource: "c",
        };
        format!("{endpoint}/{c}?{}", sas.sign(&key, &format!("/blob/{ACCOUNT}/{c}")))
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x.bin", &data(8, 100_000));
    let run = |url: &str| {
        otaforge()
            .current_dir(dir.path())
            .args([
                "--format",
                "json",
                "upload",
                "x.bin",
                "--container",
                c.as_str(),
                "--container-sas-url",
                url,
            ])
            .output()
            .unwrap()
    };
    let out = run(&sas_for("rcw"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = stdout_json(&out);
    let (code, body) = curl_get(json[0]["url"].as_str().unwrap());
    assert!(code == "200" && body == data(8, 100_000));
    write(dir.path(), "x.bin", &data(9, 100_000));
    let out = run(&sas_for("r"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") && err.contains("Write (w) and Create (c) on blobs"), "{err}");
    assert!(!err.contains("sig=") || err.contains("sig=REDACTED"), "{err}");
}

#[test]
#[ignore = "needs Azurite (cargo xtask ci starts it)"]
fn a_file_changed_during_upload_is_not_committed() {
    let endpoint = azurite();
    let store = azure_store(&endpoint);
    let c = container("changed");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "f.bin", &data(31, 300_000));
    let src = Source::hash(&path, &otaforge::NoReporter).unwrap();
    // The file changes after it was hashed (same size, new contents and time).
    std::thread::sleep(Duration::from_millis(20));
    write(dir.path(), "f.bin", &data(32, 300_000));
    let blob: BlobName = "f.bin".parse().unwrap();
    let opts = UploadOptions { block_size: 64 << 10, ..UploadOptions::default() };
    let err = rt()
        .block_on(async {
            store.ensure_container(&c).await?;
            store.upload(&c, &blob, &src, &opts, &otaforge::NoReporter).await
        })
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Integrity { .. }) && err.to_string().contains("changed while"),
        "{err}"
    );
    let url = rt().block_on(store.read_url(&c, &blob, Duration::from_secs(60))).unwrap();
    assert_eq!(curl_get(&url).0, "404", "a blob was committed from a changing file");
}

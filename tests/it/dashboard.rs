//! The rollout dashboard (`/ui/`) of serve and of `otaforge dashboard`: every page against a
//! simulated fleet mid-rollout shows the numbers the REST API gives, a failed device's decoded
//! code, hostile text as text, a strict CSP; in a real browser (chromium through chromedriver,
//! WebDriver from Rust), axe-core finds no serious or critical violation, a live update
//! arrives within 2 s, and a screenshot of each page lands in `target/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otaforge::fleet::{Failures, Fleet};
use otaforge::service::model::DeviceDeploymentState;
use otaforge::service::{AduClient, Auth};
use serde_json::{Value, json};

use crate::fleet::{deployment, image, spec, update};
use crate::service::{Serve, import};

/// A compat property no update fits, with markup and quotes in it.
const HOSTILE: &str = "<script>window.pwned=1</script>\"'&";

/// Serve with 1.0 and 1.1 imported; group `lab` mid-rollout of 1.1 (8 devices, half of them
/// failing the install; a rollback policy not yet reached); one hostile device class.
struct Rollout {
    _dir: tempfile::TempDir,
    serve: Serve,
    data: PathBuf,
    client: AduClient,
    rt: tokio::runtime::Runtime,
    failed_device: String,
}

fn rollout() -> Rollout {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let old = image(11, 16 << 10);
    let new = image(12, 16 << 10);
    for m in [update(dir.path(), "1.0", &old, None), update(dir.path(), "1.1", &new, None)] {
        let (code, json, err) = import(&serve, &[&m], None);
        assert_eq!(code, 0, "{json} {err}");
    }
    let client = AduClient::new(&serve.endpoint, "default", Auth::None).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let v10: otaforge::manifest::UpdateId = "contoso/toaster/1.0".parse().unwrap();
    let failed_device = rt.block_on(async {
        let mut lab = spec(&serve, &data, "lab", 8, "lab");
        lab.installed = Some((v10.clone(), Arc::new(old.clone())));
        lab.failures = Failures { install: 0.5, ..Failures::default() };
        let fleet = Fleet::register(lab).await.unwrap();
        let mut hostile = spec(&serve, &data, "odd", 1, "odd");
        hostile.class.insert("manufacturer".into(), json!(HOSTILE));
        let odd = Fleet::register(hostile).await.unwrap();
        let policy = json!({
            "update": {"updateId": {"provider": "contoso", "name": "toaster", "version": "1.0"}},
            "failure": {"devicesFailedPercentage": 90, "devicesFailedCount": 50},
        });
        client
            .create_or_update_deployment(&deployment("lab-1-1", "lab", "1.1", Some(policy)))
            .await
            .unwrap();
        let (t, _) = tokio::join!(
            fleet.run(Duration::from_secs(60), &|t| t.installed + t.failed >= 8),
            odd.run(Duration::from_secs(3), &|_| false),
        );
        let t = t.unwrap();
        assert!(t.failed > 0 && t.installed > 0, "a rollout with both outcomes: {t:?}");
        let classes = client.list_device_classes().await.unwrap();
        let class = classes
            .iter()
            .find(|c| c.device_class_properties.compat_properties["manufacturer"] == "contoso")
            .unwrap();
        let states = client.device_states("lab", &class.device_class_id, "lab-1-1").await.unwrap();
        states
            .iter()
            .find(|s| s.device_state == DeviceDeploymentState::Failed)
            .expect("a failed device")
            .device_id
            .clone()
    });
    Rollout { _dir: dir, serve, data, client, rt, failed_device }
}

/// GET `path` of `base`: status, headers, body.
fn get(base: &str, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.text().await.unwrap())
    })
}

/// The text of the first element of `html` whose opening tag contains `marker` (its content
/// up to the next `<`).
fn text_after(html: &str, marker: &str) -> String {
    let at = html.find(marker).unwrap_or_else(|| panic!("no {marker} in the page"));
    let rest = &html[at..];
    let start = rest.find('>').unwrap() + 1;
    rest[start..].split('<').next().unwrap().trim().to_owned()
}

#[test]
fn every_page_shows_what_the_rest_api_gives_with_hostile_text_as_text() {
    let r = rollout();
    let base = &r.serve.endpoint;
    let (compliance, status, groups) = r.rt.block_on(async {
        (
            r.client.update_compliance(None).await.unwrap(),
            r.client.deployment_status("lab", "lab-1-1").await.unwrap(),
            r.client.list_groups().await.unwrap(),
        )
    });

    let (code, headers, fleet) = get(base, "/ui/");
    assert_eq!(code, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        text_after(&fleet, "data-metric=\"total\""),
        compliance.total_device_count.to_string()
    );
    assert_eq!(
        text_after(&fleet, "data-metric=\"onLatest\""),
        compliance.on_latest_update_device_count.to_string()
    );
    for g in &groups {
        let row = &fleet[fleet.find(&format!("data-group=\"{}\"", g.group_id)).unwrap()..];
        let c = r.rt.block_on(r.client.update_compliance(Some(&g.group_id))).unwrap();
        assert_eq!(text_after(row, "data-metric=\"devices\""), c.total_device_count.to_string());
        assert_eq!(
            text_after(row, "data-metric=\"onLatest\""),
            c.on_latest_update_device_count.to_string(),
            "group {}",
            g.group_id
        );
    }
    assert!(fleet.contains("contoso/toaster/1.1"), "updates imported are listed");
    assert!(!fleet.contains("<script>window.pwned"), "markup from a device is escaped");
    assert!(
        fleet.contains("&#60;script&#62;window.pwned=1")
            || fleet.contains("&lt;script&gt;window.pwned=1")
    );
    assert!(
        !fleet.contains("style=") && !fleet.contains("<script>\n") && !fleet.contains("onclick")
    );

    let (code, _, page) = get(base, "/ui/groups/lab");
    assert_eq!(code, 200);
    assert!(page.contains("/ui/groups/lab/deployments/lab-1-1"));

    let (code, _, page) = get(base, "/ui/groups/lab/deployments/lab-1-1");
    assert_eq!(code, 200, "{page}");
    let sg = &status.subgroup_status[0];
    let row = &page[page.find(&format!("data-subgroup=\"{}\"", sg.device_class_id)).unwrap()..];
    assert_eq!(
        text_after(row, "data-metric=\"failed\""),
        sg.devices_completed_failed_count.unwrap().to_string()
    );
    assert_eq!(
        text_after(row, "data-metric=\"succeeded\""),
        sg.devices_completed_succeeded_count.unwrap().to_string()
    );
    assert_eq!(text_after(row, "data-metric=\"total\""), sg.total_devices.unwrap().to_string());
    assert!(page.contains("Roll back to <strong>contoso/toaster/1.0</strong>"), "{page}");
    assert!(page.contains("more failures reach it"), "the distance to the threshold");
    assert!(
        page.contains(&format!("data-device=\"{}\"", r.failed_device)),
        "failing devices listed"
    );

    // Progress over time: serve's recorder writes a row within a second of a change, so the
    // subgroup's timeline starts before now.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (_, _, page) = get(base, "/ui/groups/lab/deployments/lab-1-1");
        if !page.contains("Nothing recorded yet") || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let timelines = &page[page.find("id=\"timelines\"").expect("a progress-over-time section")..];
    let chart =
        &timelines[timelines.find(&format!("data-subgroup=\"{}\"", sg.device_class_id)).unwrap()..];
    assert!(!page.contains("Nothing recorded yet"), "the recorder wrote the rollout's progress");
    let needle = "class=\"area failed\" points=\"";
    let failed_line = &chart[chart.find(needle).unwrap() + needle.len()..];
    let failed_line = &failed_line[..failed_line.find('"').unwrap()];
    assert!(failed_line.split(' ').count() >= 4, "a band of failures: {failed_line}");
    // The deployment's start was recorded at once: devices in progress at the left edge (the
    // band's top and bottom there differ).
    let needle = "class=\"area busy\" points=\"";
    let busy = &chart[chart.find(needle).unwrap() + needle.len()..];
    let busy: Vec<&str> = busy[..busy.find('"').unwrap()].split(' ').collect();
    let y = |p: &str| p.split(',').nth(1).unwrap().parse::<f64>().unwrap();
    let (first, last) = (busy[0], busy[busy.len() - 1]);
    assert!(first.starts_with("0.0,") && last.starts_with("0.0,"), "{busy:?}");
    assert!(y(first) < y(last), "devices in progress when the deployment started: {busy:?}");
    assert!(chart.contains(&format!("failed {}", sg.devices_completed_failed_count.unwrap())));

    let (code, _, page) = get(base, &format!("/ui/devices/{}", r.failed_device));
    assert_eq!(code, 200);
    assert!(page.contains("ADUC_"), "a decoded code names result.h's constant: {page}");
    assert!(page.contains("255 (Failed)"), "the twin's agent state");
    // Its history: the deployment it worked on, in progress and then failed, decoded.
    let history = &page[page.find("id=\"history\"").expect("a history of results")..];
    assert!(history.contains("/ui/groups/lab/deployments/lab-1-1"), "{history}");
    assert!(history.contains("6 (DeploymentInProgress)"), "{history}");
    let failed_row = &history[history.find("255 (Failed)").expect(history)..];
    assert!(failed_row.contains("ADUC_"), "the failure's code decoded: {failed_row}");

    let (code, _, page) = get(base, "/ui/devices/%3Cscript%3Ealert(1)%3C%2Fscript%3E%22'");
    assert_eq!(code, 404);
    assert!(!page.contains("<script>alert") && page.contains("alert(1)"), "{page}");

    for path in [
        "/ui/edge/deployments",
        "/ui/releases/",
        "/ui/audit",
        "/ui/static/live.js",
        "/ui/static/dashboard.css",
    ] {
        let (code, headers, _) = get(base, path);
        assert_eq!(code, 200, "{path}");
        assert!(headers.contains_key("content-security-policy"), "{path}");
    }
    let _ = &r.data;
}

// ---- the browser ------------------------------------------------------------------------

/// A chromedriver and one headless chromium session, over W3C WebDriver (JSON over HTTP on
/// loopback: a client of a few calls, with the HTTP client the crate already has).
struct Browser {
    driver: Child,
    url: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver): cargo xtask ci provisions it");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
        ];
        let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": args},
        }}});
        let r = send(http.post(format!("{base}/session")), Some(caps)).await;
        let id = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {r}"));
        Self { driver, url: format!("{base}/session/{id}"), http, _profile: profile }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let v = send(self.http.request(method, format!("{}{path}", self.url)), body).await;
        assert!(v["value"].get("error").is_none(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn js_async(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self, to: &Path) {
        use base64::Engine as _;
        let png = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        fs_err::write(to, bytes).unwrap();
    }

    /// The text of the first element `selector` finds (empty when none).
    async fn text(&self, selector: &str) -> String {
        let v = self
            .js("var e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : '';", json!([selector]))
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn quit(mut self) {
        let _ = self.http.delete(&self.url).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Sends a WebDriver command with its JSON body; its JSON answer.
async fn send(req: reqwest::RequestBuilder, body: Option<Value>) -> Value {
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(b.to_string()),
        None => req,
    };
    let bytes = req.send().await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("WebDriver answered {bytes:?}: {e}"))
}

/// axe-core's script: `OTAFORGE_AXE_JS`, else where `cargo xtask ci` installs it.
fn axe_js() -> String {
    let path = std::env::var_os("OTAFORGE_AXE_JS").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/axe-core/node_modules/axe-core/axe.min.js")
    });
    fs_err::read_to_string(&path)
        .unwrap_or_else(|e| panic!("axe-core (npm): cargo xtask ci provisions it: {e}"))
}

/// Where the screenshots go.
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    fs_err::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[ignore = "needs chromium: cargo xtask ci provisions it"]
fn in_a_browser_every_page_is_accessible_hostile_text_is_inert_and_updates_arrive_live() {
    let r = rollout();
    let base = r.serve.endpoint.clone();
    let axe = axe_js();
    let shots = screenshots();
    let pages = [
        ("fleet", "/ui/".to_owned()),
        ("group", "/ui/groups/lab".to_owned()),
        ("deployment", "/ui/groups/lab/deployments/lab-1-1".to_owned()),
        ("device", format!("/ui/devices/{}", r.failed_device)),
        ("edge", "/ui/edge/deployments".to_owned()),
        ("releases", "/ui/releases/".to_owned()),
        ("audit", "/ui/audit".to_owned()),
    ];
    r.rt.block_on(async {
        let b = Browser::start().await;
        for (name, path) in &pages {
            b.goto(&format!("{base}{path}")).await;
            let page = b.js("return document.querySelector('main').dataset.page;", json!([])).await;
            assert!(page.is_string(), "{path} rendered its main: {page}");
            b.js(&axe, json!([])).await;
            let found = b
                .js_async(
                    "var done = arguments[arguments.length - 1];
                     axe.run(document, {resultTypes: ['violations']}).then(function (r) {
                       done(r.violations.filter(function (v) {
                         return v.impact === 'serious' || v.impact === 'critical';
                       }).map(function (v) { return v.id + ': ' + v.help + ' (' + v.nodes.length + ')'; }));
                     });",
                )
                .await;
            assert_eq!(found, json!([]), "axe-core on {path}");
            let pwned = b.js("return window.pwned === undefined;", json!([])).await;
            assert_eq!(pwned, json!(true), "no script from a device ran on {path}");
            b.screenshot(&shots.join(format!("{name}.png"))).await;
        }
        // The hostile class is on the fleet page as text.
        b.goto(&format!("{base}/ui/")).await;
        let classes = b.text("#classes").await;
        assert!(classes.contains(HOSTILE), "{classes}");

        // The failed device's page names its decoded code.
        b.goto(&format!("{base}/ui/devices/{}", r.failed_device)).await;
        assert!(b.text("#result").await.contains("ADUC_"));

        // Live: a device that joins the group shows on the open deployment page within 2 s of
        // serve knowing it.
        b.goto(&format!("{base}/ui/groups/lab/deployments/lab-1-1")).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.js("return document.body.dataset.live || '';", json!([])).await != json!("on") {
            assert!(Instant::now() < deadline, "the event stream did not open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before: u64 = b.text("[data-subgroup] [data-metric=total]").await.parse().unwrap();
        let mut late = spec(&r.serve, &r.data, "late", 1, "lab");
        late.installed = Some(("contoso/toaster/1.0".parse().unwrap(), Arc::new(image(11, 16 << 10))));
        let late = Fleet::register(late).await.unwrap();
        let runner = tokio::spawn(late.run(Duration::from_secs(20), &|t| t.installed + t.failed >= 1));
        let seen_on_serve = loop {
            let s = r.client.deployment_status("lab", "lab-1-1").await.unwrap();
            if s.subgroup_status[0].total_devices == Some(before + 1) {
                break Instant::now();
            }
            assert!(seen_on_serve_deadline(deadline), "serve never saw the device");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            let now: u64 = b.text("[data-subgroup] [data-metric=total]").await.parse().unwrap_or(0);
            if now == before + 1 {
                break;
            }
            assert!(seen_on_serve.elapsed() < Duration::from_secs(2), "the page did not update within 2 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        b.screenshot(&shots.join("deployment-live.png")).await;
        let _ = runner.await;
        b.quit().await;
    });
}

fn seen_on_serve_deadline(deadline: Instant) -> bool {
    Instant::now() < deadline + Duration::from_secs(20)
}

/// `otaforge dashboard` against `endpoint`, on a free loopback port; its process and URL.
fn dashboard(endpoint: &str, data: &Path, extra: &[&str]) -> (Child, String) {
    use std::io::BufRead as _;
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
        .args(["--format", "json", "dashboard", "--endpoint", endpoint, "--instance", "default"])
        .arg("--iothub-connection-file")
        .arg(data.join("iothub.connection-string"))
        .args(["--listen", "127.0.0.1:0", "--poll", "2s"])
        .args(extra)
        .env("XDG_CONFIG_HOME", crate::config_home())
        .env_remove("OTAFORGE_ADU_TOKEN")
        .env_remove("OTAFORGE_CONTEXT")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    let url = info["dashboard"].as_str().unwrap().trim_end_matches("/ui/").to_owned();
    (child, url)
}

/// POST `path` with `content_type` and `origin` (when given); the status.
fn post(base: &str, path: &str, content_type: &str, origin: Option<&str>) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("content-type", content_type)
            .body("{}");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().await.unwrap().status().as_u16()
    })
}

#[test]
fn otaforge_dashboard_serves_the_same_pages_through_the_clients_and_guards_its_actions() {
    let r = rollout();
    let (serve_code, _, on_serve) = get(&r.serve.endpoint, "/ui/groups/lab/deployments/lab-1-1");
    assert_eq!(serve_code, 200);
    // A release report as `otaforge release --format json` writes it.
    let report = r.data.parent().unwrap().join("release-report.json");
    let stage = |name: &str,
                 group: &str,
                 result: &str,
                 ok: u64,
                 failed: u64,
                 reason: Option<&str>| {
        json!({"name": name, "group": group, "deploymentId": format!("{group}-1-2"), "result": result,
               "devices": ok + failed, "succeeded": ok, "failed": failed, "reason": reason})
    };
    let out = |name: &str, size: u64| json!({"name": name, "sizeInBytes": size, "sha256": "AAAA"});
    let doc = json!({
        "updateId": "contoso/toaster/1.2", "output": "out/1.2", "files": "out/1.2/files",
        "artifacts": [out("firmware.bin", 131072)],
        "deltas": [{"artifact": "firmware.bin", "baseVersion": "1.1", "file": out("firmware.bin.from-1.1.delta", 246), "sourceSha256": "BBBB"}],
        "skippedDeltas": [], "manifest": null, "metadata": null, "imported": true,
        "stages": [stage("canary", "canary", "passed", 5, 0, None),
                   stage("fleet", "lab", "failed", 15, 5, Some("5 of 20 devices failed (at most 0 allowed)"))],
        "result": "gateFailed", "failedStage": "fleet",
    });
    fs_err::write(&report, doc.to_string()).unwrap();
    let report_arg = report.display().to_string();
    let (mut child, base) =
        dashboard(&r.serve.endpoint, &r.data, &["--allow-actions", "--release", &report_arg]);
    let (code, _, release) = get(&base, "/ui/releases/0");
    assert_eq!(code, 200, "{release}");
    for text in [
        "gateFailed",
        "5 of 20 devices failed (at most 0 allowed)",
        "firmware.bin.from-1.1.delta",
        "246",
    ] {
        assert!(release.contains(text), "{text} on the release page: {release}");
    }
    assert!(
        release.find(">canary<").unwrap() < release.find(">fleet<").unwrap(),
        "stages in order"
    );
    let (code, headers, page) = get(&base, "/ui/groups/lab/deployments/lab-1-1");
    assert_eq!(code, 200, "{page}");
    assert!(headers.contains_key("content-security-policy"));
    for metric in ["total", "succeeded", "failed", "inProgress"] {
        let m = format!("data-metric=\"{metric}\"");
        assert_eq!(text_after(&page, &m), text_after(&on_serve, &m), "{metric} as serve shows it");
    }
    assert!(page.contains(&format!("data-device=\"{}\"", r.failed_device)));
    let (code, _, device) = get(&base, &format!("/ui/devices/{}", r.failed_device));
    assert_eq!(code, 200);
    assert!(device.contains("ADUC_") && device.contains("255 (Failed)"), "{device}");
    // Device Update keeps no history: the dashboard shows what it saw since it started.
    let history = &device[device.find("id=\"history\"").expect(&device)..];
    assert!(history.contains("lab-1-1") && history.contains("ADUC_"), "{history}");
    assert!(page.contains("id=\"timelines\""), "a timeline from what it polled");
    let (code, _, fleet) = get(&base, "/ui/");
    assert_eq!(code, 200);
    assert!(
        fleet.contains("&#60;script&#62;window.pwned")
            || fleet.contains("&lt;script&gt;window.pwned")
    );

    // Actions: a form post (no preflight) and another site's page are refused; a JSON POST
    // from the page's own origin cancels the subgroup on serve.
    let class =
        r.rt.block_on(r.client.deployment_status("lab", "lab-1-1")).unwrap().subgroup_status[0]
            .device_class_id
            .clone();
    let cancel = format!("/ui/groups/lab/deployments/lab-1-1/actions/cancel?class={class}");
    assert_eq!(post(&base, &cancel, "application/x-www-form-urlencoded", None), 415);
    assert_eq!(post(&base, &cancel, "application/json", Some("http://evil.example")), 403);
    assert_eq!(post(&base, &cancel, "application/json", Some(&base)), 204);
    let status = r.rt.block_on(r.client.deployment_status("lab", "lab-1-1")).unwrap();
    assert_eq!(status.subgroup_status[0].deployment_state.as_str(), "Canceled");
    // serve's audit trail has the create and the cancel, newest first, with the subgroup.
    let (code, _, audit) = get(&r.serve.endpoint, "/ui/audit");
    assert_eq!(code, 200);
    let (cancel_at, create_at) = (
        audit.find("<td>cancel</td>").expect(&audit),
        audit.find("<td>create</td>").expect(&audit),
    );
    assert!(cancel_at < create_at, "newest first: {audit}");
    assert!(audit.contains(&class) && audit.contains("loopback (no token)"), "{audit}");
    let _ = child.kill();
    let _ = child.wait();

    // Read-only by default, and serve's own pages take no action.
    let (mut ro, base) = dashboard(&r.serve.endpoint, &r.data, &[]);
    assert_eq!(post(&base, &cancel, "application/json", Some(&base)), 403);
    assert_eq!(post(&r.serve.endpoint, &cancel, "application/json", None), 403);
    let _ = ro.kill();
    let _ = ro.wait();
}

#[test]
fn a_cloud_rollback_is_marked_on_both_deployments_and_in_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let old = image(21, 16 << 10);
    for m in [
        update(dir.path(), "1.0", &old, None),
        update(dir.path(), "1.1", &image(22, 16 << 10), None),
    ] {
        assert_eq!(import(&serve, &[&m], None).0, 0);
    }
    let client = AduClient::new(&serve.endpoint, "default", Auth::None).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut canary = spec(&serve, &data, "canary", 4, "canary");
        canary.installed = Some(("contoso/toaster/1.0".parse().unwrap(), Arc::new(old.clone())));
        canary.failures = Failures { install: 1.0, ..Failures::default() };
        let fleet = Fleet::register(canary).await.unwrap();
        let policy = json!({
            "update": {"updateId": {"provider": "contoso", "name": "toaster", "version": "1.0"}},
            "failure": {"devicesFailedPercentage": 50, "devicesFailedCount": 2},
        });
        client
            .create_or_update_deployment(&deployment("canary-1-1", "canary", "1.1", Some(policy)))
            .await
            .unwrap();
        fleet.run(Duration::from_secs(60), &|t| t.failed >= 2).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.list_deployments("canary").await.unwrap()[0].deployment_id
            != "canary-1-1-rollback"
        {
            assert!(Instant::now() < deadline, "no cloud rollback");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (code, _, page) = get(&serve.endpoint, "/ui/groups/canary/deployments/canary-1-1");
    assert_eq!(code, 200);
    assert!(page.contains("id=\"rolled-back\""), "{page}");
    assert!(page.contains("/ui/groups/canary/deployments/canary-1-1-rollback"));
    // (How near the failures are is not asserted here: once the rollback reaches a device, it
    // no longer counts as failed in this deployment, as serve's status says.)
    assert!(page.contains("Roll back to <strong>contoso/toaster/1.0</strong>"), "{page}");
    let (_, _, rollback) =
        get(&serve.endpoint, "/ui/groups/canary/deployments/canary-1-1-rollback");
    assert!(rollback.contains("id=\"is-rollback\""), "{rollback}");
    let (_, _, audit) = get(&serve.endpoint, "/ui/audit");
    assert!(
        audit.contains("<td>rollback</td>") && audit.contains("serve (cloud-initiated rollback)"),
        "{audit}"
    );
}

#[test]
fn edge_pages_show_the_hubs_counts_and_each_modules_runtime_status() {
    use otaforge::iothub::config::Configuration;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, None);
    let mut fleet = Command::new(assert_cmd::cargo::cargo_bin("otaforge"))
        .args(["fleet", "run", "--edge", "--devices", "4", "--prefix", "gw", "--group", "line-1"])
        .args(["--for", "120s", "--iothub-connection-file"])
        .arg(data.join("iothub.connection-string"))
        .env("CI", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hub = otaforge::iothub::IotHubClient::new(crate::hub_connection(&data)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = |id: &str, content: Value, priority: i64| Configuration {
        id: id.into(),
        content: content.as_object().unwrap().clone(),
        target_condition: "tags.ADUGroup = 'line-1'".into(),
        priority,
        ..Configuration::default()
    };
    let base = crate::edge::base_content(&[("sensor", "contoso/sensor:1.0")]);
    let layer = crate::edge::layer_content("logger", "contoso/logger:2");
    let counts = rt.block_on(async {
        hub.put_configuration(&config("base", base, 10), None).await.unwrap();
        hub.put_configuration(&config("logging", layer, 20), None).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = hub.list_configurations(10).await.unwrap();
            let m = |id: &str, k: &str| {
                all.iter()
                    .find(|c| c.id == id)
                    .and_then(|c| c.system_metrics.results.get(k).copied())
            };
            if m("base", "reportedSuccessfulCount") == Some(4)
                && m("logging", "appliedCount") == Some(4)
            {
                break all;
            }
            assert!(Instant::now() < deadline, "the Edge devices did not report: {all:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (code, _, list) = get(&serve.endpoint, "/ui/edge/deployments");
    assert_eq!(code, 200);
    assert!(list.find("id=\"bases\"").unwrap() < list.find("data-edge=\"base\"").unwrap());
    assert!(
        list.find("id=\"layers\"").unwrap() < list.find("data-edge=\"logging\"").unwrap(),
        "{list}"
    );
    for c in &counts {
        let row = &list[list.find(&format!("data-edge=\"{}\"", c.id)).unwrap()..];
        for (metric, key) in [
            ("targeted", "targetedCount"),
            ("applied", "appliedCount"),
            ("success", "reportedSuccessfulCount"),
        ] {
            assert_eq!(
                text_after(row, &format!("data-metric=\"{metric}\"")),
                c.system_metrics.results.get(key).copied().unwrap_or(0).to_string(),
                "{} {key}",
                c.id
            );
        }
    }
    let (code, _, one) = get(&serve.endpoint, "/ui/edge/deployments/logging");
    assert_eq!(code, 200);
    assert!(one.contains("<li>logger</li>") && one.contains("layered"), "{one}");
    let (code, _, device) = get(&serve.endpoint, "/ui/devices/gw-0000");
    assert_eq!(code, 200, "{device}");
    for module in ["edgeHub", "sensor", "logger"] {
        let row = &device[device.find(&format!("data-module=\"{module}\"")).expect(module)..];
        assert_eq!(text_after(row, "data-metric=\"runtimeStatus\""), "running", "{module}");
    }
    assert!(device.contains("data-edge=\"base\"") && device.contains("data-edge=\"logging\""));
    let _ = fleet.kill();
    let _ = fleet.wait();
}

#[test]
fn serve_shows_the_releases_of_an_output_folder_as_their_state_files_grow() {
    use otaforge::release::{DeltaOutput, Output, STATE_FILE, StageOutput, State};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let serve = Serve::start_with(&dir.path().join("data"), &["--release", out.to_str().unwrap()]);
    let (code, _, page) = get(&serve.endpoint, "/ui/releases/");
    assert_eq!(code, 200);
    assert!(page.contains("No release found yet in"), "a folder not made yet: {page}");
    // A release under way: built and imported, its canary stage passed (as `otaforge release`
    // writes OUTPUT/VERSION/release-state.json after each step).
    let file = |name: &str, size: u64| Output {
        name: name.into(),
        size_in_bytes: size,
        sha256: "AAAA".into(),
    };
    let stage = |name: &str, result: &str, failed: u64, reason: Option<&str>| StageOutput {
        name: name.into(),
        group: name.into(),
        deployment_id: format!("{name}-1-2"),
        result: result.into(),
        devices: 10,
        succeeded: 10 - failed,
        failed,
        action: None,
        reason: reason.map(str::to_owned),
    };
    let mut state = State {
        update_id: "contoso/toaster/1.2".into(),
        artifacts: vec![file("firmware.bin", 131_072)],
        deltas: vec![DeltaOutput {
            artifact: "firmware.bin".into(),
            base_version: "1.1".into(),
            file: file("firmware.bin.from-1.1.delta", 246),
            source_sha256: "BBBB".into(),
        }],
        imported: true,
        stages: vec![stage("canary", "passed", 0, None)],
        ..State::default()
    };
    let write = |state: &State| {
        fs_err::create_dir_all(out.join("1.2")).unwrap();
        fs_err::write(out.join("1.2").join(STATE_FILE), serde_json::to_vec(state).unwrap())
            .unwrap();
    };
    write(&state);
    let (_, _, list) = get(&serve.endpoint, "/ui/releases/");
    assert!(list.contains("1.2") && list.contains("/ui/releases/0"), "{list}");
    let (code, _, page) = get(&serve.endpoint, "/ui/releases/0");
    assert_eq!(code, 200, "{page}");
    for text in ["contoso/toaster/1.2", "1 stages passed so far", "firmware.bin.from-1.1.delta"] {
        assert!(page.contains(text), "{text}: {page}");
    }
    // The next stage's gate fails: the page shows it with the measured values, without a restart.
    state.stages.push(stage(
        "fleet",
        "failed",
        3,
        Some("3 of 10 devices failed (at most 1 allowed)"),
    ));
    write(&state);
    let (_, _, page) = get(&serve.endpoint, "/ui/releases/0");
    assert!(page.contains("stage fleet failed"), "{page}");
    assert!(page.contains("3 of 10 devices failed (at most 1 allowed)"), "{page}");
    assert!(page.find(">canary<").unwrap() < page.find(">fleet<").unwrap(), "stages in order");
    let (code, _, _) = get(&serve.endpoint, "/ui/releases/1");
    assert_eq!(code, 404);
}

//! `cargo xtask demo`: the README's run command. First the main job, `otaforge release` on the
//! quickstart against the embedded service with simulated devices (a staged rollout: the canary
//! passes, a later stage's failures roll it back); then, command by command, what a release
//! pipeline does with otaforge, on the payloads in `testdata/`, with no cloud account: a key pair, a signed
//! delta created, applied and refused on the wrong old image or without a key, an MCUboot image,
//! signed release metadata and a refused rollback, an upload to the local store, an APT manifest,
//! imports into the embedded Device Update service (`otaforge serve`), an SWUpdate import manifest with a delta
//! related file, a parent with two children, validation of all of them against their payloads,
//! a deployment to a simulated fleet in two groups (delta installs; injected failures and the
//! cloud rollback), and a tampered payload being caught.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// Where the demo's commands keep their contexts (`XDG_CONFIG_HOME`): beside their data, never
/// in the user's config directory, so a demo's serve does not stay the user's current context
/// after the demo has stopped it.
pub(crate) fn config_home() -> std::path::PathBuf {
    crate::target_dir().join("demo").join("config")
}

/// `otaforge serve` in the background, stopped when dropped. It records itself as the current
/// context (in `config/` beside its data dir), so the commands that follow name no endpoint.
pub(crate) struct Serve {
    pub(crate) child: std::process::Child,
    pub(crate) endpoint: String,
    pub(crate) data: std::path::PathBuf,
}

impl Serve {
    pub(crate) fn start(bin: &Path, data: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, data, &[])
    }

    /// With more `serve` options (`--release DIR`).
    pub(crate) fn start_with(bin: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        println!(
            "\n$ otaforge serve --listen 127.0.0.1:0 --data-dir {}{}{} &",
            data.display(),
            if extra.is_empty() { "" } else { " " },
            extra.join(" ")
        );
        let config = data.parent().map_or_else(config_home, |p| p.join("config"));
        let mut child = Command::new(bin)
            .args(["--format", "json", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("XDG_CONFIG_HOME", config)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting otaforge serve")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let info: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("otaforge serve printed {line:?}"))?;
        let endpoint = info["endpoint"].as_str().context("no endpoint")?.to_owned();
        println!("{line}");
        Ok(Self { child, endpoint, data: data.to_path_buf() })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn otaforge(bin: &Path, args: &[&str], expect: i32) -> anyhow::Result<()> {
    println!("\n$ otaforge {}", args.join(" "));
    let status = Command::new(bin)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("XDG_CONFIG_HOME", config_home())
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if status.code() != Some(expect) {
        bail!("otaforge {} exited with {status}, expected {expect}", args.join(" "));
    }
    Ok(())
}

/// Past import: the toaster release deployed to a simulated fleet in two groups. `kitchen`
/// (150 devices on 1.1) takes 1.2 through the signed delta; `canary` (100 devices) has injected
/// install failures, so its cloud rollback to 1.1 starts; then compliance. `_serve` runs, and
/// its context is current: no command names an endpoint.
fn deploy(bin: &Path, _serve: &Serve, w: &dyn Fn(&str) -> String, out: &str) -> anyhow::Result<()> {
    println!("\n# The release before (1.1), to roll back to:");
    otaforge(
        bin,
        &[
            "manifest",
            "init",
            "--provider",
            "contoso",
            "--name",
            "toaster",
            "--version",
            "1.1",
            "--compat",
            "manufacturer=contoso,model=toaster",
            "--template",
            "swupdate",
            "--file",
            &w("image-1.1.swu"),
            "--file",
            &w("install.sh"),
            "--out-dir",
            out,
        ],
        0,
    )?;
    // serve's context gives every command below its endpoint, instance, IoT Hub and root key.
    let v11 = w("contoso.toaster.1.1.importmanifest.json");
    otaforge(bin, &["import", v11.as_str()], 0)?;

    println!("\n# A simulated fleet: 150 devices in group kitchen, 100 in canary, all on 1.1:");
    let (image, key) = (w("image-1.1.swu"), w("release.pub.pem"));
    let fleet = |group: &str, devices: &str, fail: &str, run_for: &str| -> Vec<String> {
        [
            "fleet",
            "run",
            "--devices",
            devices,
            "--prefix",
            group,
            "--group",
            group,
            "--class",
            "manufacturer=contoso,model=toaster",
            "--installed",
            "contoso/toaster/1.1",
            "--image",
            &image,
            "--verify-key",
            &key,
            "--fail",
            fail,
            "--seed",
            "7",
            "--for",
            run_for,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        otaforge(bin, &args, 0)
    };
    run(fleet("kitchen", "150", "install=0", "1s"))?;
    run(fleet("canary", "100", "install=0.5", "1s"))?;
    otaforge(bin, &["group", "list"], 0)?;

    println!("\n# Deploy 1.2 to both; canary rolls back to 1.1 when 10 devices and 20 % failed:");
    otaforge(
        bin,
        &["deploy", "create", "kitchen", "contoso/toaster/1.2", "--id", "kitchen-1-2"],
        0,
    )?;
    let create = [
        "deploy",
        "create",
        "canary",
        "contoso/toaster/1.2",
        "--id",
        "canary-1-2",
        "--rollback-to",
        "contoso/toaster/1.1",
        "--rollback-failed-percent",
        "20",
        "--rollback-failed-count",
        "10",
    ];
    otaforge(bin, &create, 0)?;
    run(fleet("kitchen", "150", "install=0", "6s"))?;
    run(fleet("canary", "100", "install=0.5", "6s"))?;
    for (group, id) in [("kitchen", "kitchen-1-2"), ("canary", "canary-1-2")] {
        otaforge(bin, &["deploy", "status", group, id], 0)?;
    }
    otaforge(bin, &["deploy", "list", "canary"], 0)?;
    for group in ["kitchen", "canary"] {
        otaforge(bin, &["compliance", "--group", group], 0)?;
    }
    Ok(())
}

/// Deterministic firmware bytes, with `edits` regions changed.
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

/// A simulated fleet in the background: `n` devices in `group` running 1.1.0, against `_serve`
/// (its context is current).
fn fleet(
    bin: &Path,
    _serve: &Serve,
    group: &str,
    n: &str,
    image: &Path,
    fail: &str,
) -> anyhow::Result<std::process::Child> {
    println!(
        "
$ otaforge fleet run --group {group} --devices {n} --installed contoso/toaster/1.1.0 --fail {fail} ... &"
    );
    // serve's context names the endpoint, the hub and the root key.
    Ok(Command::new(bin)
        .args(["fleet", "run", "--devices", n, "--prefix", group])
        .args(["--group", group, "--class", "manufacturer=contoso,model=toaster"])
        .args(["--installed", "contoso/toaster/1.1.0", "--image"])
        .arg(image)
        .args(["--fail", fail, "--for", "300s"])
        .env("XDG_CONFIG_HOME", config_home())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

/// The main job: `otaforge release` on the quickstart (`testdata/release/quickstart`) against
/// the embedded service with simulated devices. 1.1.0 is released first (no base, no stages);
/// then 1.2.0 with a delta from it: the canary stage passes, the `fleet` stage's injected
/// failures fail its gate and roll the group back to 1.1.0 (exit 1, as a pipeline would see it).
fn release(bin: &Path, work: &Path) -> anyhow::Result<Serve> {
    println!(
        "
# The release pipeline in one command: otaforge release (testdata/release/quickstart)"
    );
    let repo = work.join("firmware-repo");
    std::fs::create_dir_all(repo.join("build"))?;
    std::fs::create_dir_all(repo.join("keys"))?;
    let toml =
        std::fs::read_to_string(crate::root().join("testdata/release/quickstart/otaforge.toml"))?;
    std::fs::write(repo.join("otaforge.toml"), &toml)?;
    let run_in = |args: &[&str], expect: i32| -> anyhow::Result<()> {
        println!(
            "
$ otaforge {}",
            args.join(" ")
        );
        let status = Command::new(bin)
            .current_dir(&repo)
            .args(args)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("XDG_CONFIG_HOME", config_home())
            .status()?;
        if status.code() != Some(expect) {
            bail!("otaforge {} exited with {status}, expected {expect}", args.join(" "));
        }
        Ok(())
    };
    run_in(&["key", "generate", "-o", "keys/release"], 0)?;
    // serve's dashboard shows each release as its state file grows (`/ui/releases/`).
    let releases = repo.join("out/release");
    let releases = releases.to_str().context("a UTF-8 work folder")?;
    let serve = Serve::start_with(bin, &work.join("release-serve"), &["--release", releases])?;
    // 1.1.0: the first release has no base and no stages.
    let first = {
        let start = toml.find("[delta]").context("quickstart has [delta]")?;
        let end = toml.find("[signing]").context("quickstart has [signing]")?;
        let stages = toml.find("[[stage]]").context("quickstart has stages")?;
        format!("{}{}", &toml[..start], &toml[end..stages])
    };
    std::fs::write(repo.join("otaforge.toml"), first)?;
    std::fs::write(repo.join("VERSION"), "1.1.0\n")?;
    std::fs::write(repo.join("build/firmware.bin"), firmware(128 * 1024, &[]))?;
    run_in(&["release", "--endpoint", &serve.endpoint], 0)?;
    let image = repo.join("out/release/1.1.0/files/firmware.bin");
    let mut fleets = [
        fleet(bin, &serve, "canary", "5", &image, "install=0")?,
        fleet(bin, &serve, "fleet", "20", &image, "install=0.3")?,
    ];
    // The groups exist once their devices registered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = Command::new(bin)
            .args(["--format", "json", "group", "list"])
            .env("XDG_CONFIG_HOME", config_home())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("\"canary\"") && text.contains("\"fleet\"") {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("the simulated groups did not appear");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // 1.2.0: a delta from 1.1.0, then the staged rollout.
    std::fs::write(repo.join("otaforge.toml"), &toml)?;
    std::fs::write(repo.join("VERSION"), "1.2.0\n")?;
    std::fs::write(
        repo.join("build/firmware.bin"),
        firmware(128 * 1024, &[(1000, 300), (60_000, 2000)]),
    )?;
    println!(
        "
# canary passes; the fleet stage's injected failures fail its gate and roll it back (exit 1):"
    );
    let result = run_in(&["release", "--endpoint", &serve.endpoint, "--poll", "500ms"], 1);
    for f in &mut fleets {
        let _ = f.kill();
        let _ = f.wait();
    }
    result?;
    println!(
        "
# Run again: nothing is rebuilt, imported or deployed twice; the same report:"
    );
    run_in(&["release", "--endpoint", &serve.endpoint], 1)?;
    dashboard(bin, &serve)?;
    Ok(serve)
}

/// Prints where the rollout dashboard shows the release, and with Debian's chromium at hand
/// keeps `docs/dashboard.png` (the README's picture) current: the rolled-back stage's page.
fn dashboard(bin: &Path, serve: &Serve) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["--format", "json", "deploy", "list", "fleet", "--endpoint", &serve.endpoint])
        .args(["--instance", "default"])
        .env("XDG_CONFIG_HOME", config_home())
        .output()?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let id = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["deploymentId"].as_str())
        .find(|id| !id.ends_with("-rollback"))
        .map(str::to_owned);
    let page = match &id {
        Some(id) => format!("{}/ui/groups/fleet/deployments/{id}", serve.endpoint),
        None => format!("{}/ui/", serve.endpoint),
    };
    println!(
        "
# The rollout dashboard (live while serve runs): open {}/ui/ — the rolled-back stage: {page}
# — the releases, their stages and gates: {}/ui/releases/",
        serve.endpoint, serve.endpoint
    );
    let shot = crate::root().join("docs/dashboard.png");
    let profile = crate::target_dir().join("demo/chromium-profile");
    let taken = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .args(["--hide-scrollbars", "--window-size=1280,1100"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&page)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if taken {
        println!("# its screenshot: {}", shot.display());
    } else {
        println!(
            "# (no chromium: docs/dashboard.png not refreshed; `cargo xtask ci` provisions it)"
        );
    }
    Ok(())
}

/// `keep`: leave the release's serve (and its dashboard) running at the end, until Ctrl-C.
pub(crate) fn run(keep: bool) -> anyhow::Result<()> {
    let mut build = crate::cargo();
    build.args(["build", "--quiet", "--bin", "otaforge"]);
    crate::run(build)?;
    let bin = crate::target_dir().join("debug/otaforge");
    let td = crate::root().join("testdata");
    let work = crate::target_dir().join("demo");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    for (dir, files) in [
        (
            "swupdate",
            &["image-1.1.swu", "image-1.2.swu", "install.sh", "image-1.1-to-1.2.delta"][..],
        ),
        ("apt", &["packages.txt"][..]),
        ("multistep", &["pre-install.sh", "flash.sh", "mcu-3.1.bin"][..]),
    ] {
        for f in files {
            std::fs::copy(td.join(dir).join(f), work.join(f))?;
        }
    }
    let w = |f: &str| work.join(f).display().to_string();
    let out = work.display().to_string();
    let release_serve = release(&bin, &work)?;
    println!("\n# The same, command by command:");

    otaforge(&bin, &["hash", &w("image-1.2.swu"), &w("mcu-3.1.bin")], 0)?;
    println!(
        "\n# A delta from 1.1 to 1.2, verified by applying it; then applied as a device would:"
    );
    let (old, new, delta) = (w("image-1.1.swu"), w("image-1.2.swu"), w("image-1.1-to-1.2.delta"));
    println!("\n# A signing key pair (private key mode 0600; never overwritten):");
    let key = w("release");
    otaforge(&bin, &["key", "generate", "-o", &key], 0)?;
    let (private, public) = (w("release.pem"), w("release.pub.pem"));
    otaforge(&bin, &["delta", "create", &old, &new, "-o", &delta, "--sign-key", &private], 0)?;
    otaforge(&bin, &["delta", "info", &delta], 0)?;
    otaforge(
        &bin,
        &["delta", "apply", &old, &delta, "-o", &w("rebuilt-1.2.swu"), "--verify-key", &public],
        0,
    )?;
    println!("\n# The same delta on the wrong old image is refused and writes nothing:");
    otaforge(
        &bin,
        &["delta", "apply", &new, &delta, "-o", &w("wrong.swu"), "--verify-key", &public],
        1,
    )?;
    println!("\n# A signed delta without a key to check it is refused too (fail closed):");
    otaforge(&bin, &["delta", "apply", &old, &delta, "-o", &w("wrong.swu")], 1)?;
    if work.join("wrong.swu").exists() {
        bail!("a refused delta left an output file");
    }
    println!("\n# The MCU image as an MCUboot image (imgtool-compatible), and its check:");
    let mcu = w("mcu-3.1.signed.bin");
    otaforge(
        &bin,
        &[
            "mcuboot",
            "sign",
            &w("mcu-3.1.bin"),
            "-o",
            &mcu,
            "--key",
            &private,
            "--version",
            "3.1.0+7",
            "--header-size",
            "0x200",
            "--pad-header",
            "--slot-size",
            "0x20000",
            "--security-counter",
            "auto",
        ],
        0,
    )?;
    otaforge(&bin, &["mcuboot", "verify", "--pub", &public, &mcu], 0)?;
    println!("\n# Signed release metadata over the artifacts, and a rollback refused:");
    let meta = w("release.json");
    otaforge(
        &bin,
        &[
            "meta",
            "sign",
            &new,
            &delta,
            &mcu,
            "--release-version",
            "1.2",
            "--security-counter",
            "12",
            "--expires",
            "30d",
            "--key",
            &private,
            "-o",
            &meta,
        ],
        0,
    )?;
    otaforge(&bin, &["meta", "verify", &meta, "--pub", &public, "--warn-expiring", "7"], 0)?;
    otaforge(
        &bin,
        &["meta", "verify", &meta, "--pub", &public, "--min-security-counter", "13"],
        1,
    )?;
    otaforge(
        &bin,
        &[
            "apt",
            "init",
            "--name",
            "toaster-tools",
            "--version",
            "1.0.3",
            "--packages-from",
            &w("packages.txt"),
            "-o",
            &w("apt-manifest.json"),
        ],
        0,
    )?;
    otaforge(&bin, &["apt", "validate", &w("apt-manifest.json")], 0)?;
    otaforge(
        &bin,
        &[
            "manifest",
            "init",
            "--provider",
            "contoso",
            "--name",
            "toaster",
            "--version",
            "1.2",
            "--compat",
            "manufacturer=contoso,model=toaster",
            "--template",
            "swupdate",
            "--file",
            &format!("{},downloadHandler=otaforge/delta:1", w("image-1.2.swu")),
            "--file",
            &w("install.sh"),
            "--related-file",
            &format!("image-1.2.swu={},source={}", w("image-1.1-to-1.2.delta"), w("image-1.1.swu")),
            "--out-dir",
            &out,
        ],
        0,
    )?;
    otaforge(
        &bin,
        &[
            "manifest",
            "init",
            "--provider",
            "contoso",
            "--name",
            "toaster-tools",
            "--version",
            "1.0.3",
            "--not-deployable",
            "--compat",
            "manufacturer=contoso,model=toaster-tools",
            "--template",
            "apt",
            "--file",
            &w("apt-manifest.json"),
            "--out-dir",
            &out,
        ],
        0,
    )?;
    otaforge(
        &bin,
        &[
            "manifest",
            "init",
            "--provider",
            "contoso",
            "--name",
            "toaster-mcu",
            "--version",
            "3.1",
            "--not-deployable",
            "--compat",
            "manufacturer=contoso,model=toaster-mcu",
            "--template",
            "script",
            "--file",
            &w("flash.sh"),
            "--file",
            &w("mcu-3.1.bin"),
            "--out-dir",
            &out,
        ],
        0,
    )?;
    otaforge(
        &bin,
        &[
            "manifest",
            "init",
            "--provider",
            "contoso",
            "--name",
            "toaster-bundle",
            "--version",
            "2.0",
            "--compat",
            "manufacturer=contoso,model=toaster-bundle",
            "--template",
            "parent",
            "--file",
            &w("pre-install.sh"),
            "--step-ref",
            "contoso/toaster-mcu/3.1",
            "--step-ref",
            "contoso/toaster-tools/1.0.3",
            "--out-dir",
            &out,
        ],
        0,
    )?;
    let manifests = [
        "contoso.toaster.1.2.importmanifest.json",
        "contoso.toaster-bundle.2.0.importmanifest.json",
        "contoso.toaster-mcu.3.1.importmanifest.json",
        "contoso.toaster-tools.1.0.3.importmanifest.json",
    ]
    .map(w);
    let mut args = vec!["manifest", "validate", "--payload-dir", &out];
    args.extend(manifests.iter().map(String::as_str));
    otaforge(&bin, &args, 0)?;

    println!("\n# The embedded Device Update service: start it, import, wait, list (no cloud):");
    let serve = Serve::start(&bin, &work.join("serve"))?;
    // No storage options: import uploads into serve's own store; no --endpoint or --instance:
    // serve recorded itself as the current context.
    otaforge(&bin, &["import", manifests[0].as_str()], 0)?;
    let import = ["import", manifests[1].as_str(), manifests[2].as_str(), manifests[3].as_str()];
    otaforge(&bin, &import, 0)?;
    println!("\n# Importing the same release again is reported, not failed:");
    otaforge(&bin, &import, 0)?;
    otaforge(&bin, &["update", "list"], 0)?;
    deploy(&bin, &serve, &w, &out)?;
    drop(serve);

    println!("\n# Now a payload changes after the manifest was made; validation must catch it:");
    std::fs::write(work.join("install.sh"), "#!/bin/sh\necho tampered\n")?;
    otaforge(&bin, &["manifest", "validate", "--payload-dir", &out, &manifests[0]], 1)?;
    println!(
        "\ndemo: manifests are in {out}; five updates imported into the embedded service; 1.2 deployed to 250 simulated devices (kitchen through the signed delta, canary rolled back to 1.1 by its failures); the tampered payload was refused as expected"
    );
    println!("\ndemo: the release's rollout dashboard: {}/ui/", release_serve.endpoint);
    if keep {
        println!("demo: --keep: serve and its dashboard keep running; Ctrl-C stops them");
        let mut serve = release_serve;
        serve.child.wait()?;
    }
    Ok(())
}

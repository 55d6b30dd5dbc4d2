//! `cargo xtask demo`: the README's run command. Walks through what a release pipeline does with
//! otaforge today, on the payloads in `testdata/`, with no cloud account: a key pair, a signed
//! delta created, applied and refused on the wrong old image or without a key, an MCUboot image,
//! signed release metadata and a refused rollback, an upload to the local store, an APT manifest,
//! imports into the embedded Device Update service (`otaforge serve`), an SWUpdate import manifest with a delta
//! related file, a parent with two children, validation of all of them against their payloads,
//! and a tampered payload being caught.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// `otaforge serve` in the background, stopped when dropped.
struct Serve {
    child: std::process::Child,
    endpoint: String,
}

impl Serve {
    fn start(bin: &Path, data: &Path) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        println!("\n$ otaforge serve --listen 127.0.0.1:0 --data-dir {} &", data.display());
        let mut child = Command::new(bin)
            .args(["--format", "json", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting otaforge serve")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let info: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("otaforge serve printed {line:?}"))?;
        let endpoint = info["endpoint"].as_str().context("no endpoint")?.to_owned();
        println!("{line}");
        Ok(Self { child, endpoint })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn otaforge(bin: &Path, args: &[&str], expect: i32) -> anyhow::Result<()> {
    println!("\n$ otaforge {}", args.join(" "));
    let status = Command::new(bin)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if status.code() != Some(expect) {
        bail!("otaforge {} exited with {status}, expected {expect}", args.join(" "));
    }
    Ok(())
}

pub(crate) fn run() -> anyhow::Result<()> {
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
    // No storage options: import uploads into serve's own store.
    let adu = ["--endpoint", serve.endpoint.as_str(), "--instance", "default"];
    let mut import = vec!["import", manifests[0].as_str()];
    import.extend(adu);
    otaforge(&bin, &import, 0)?;
    let mut import =
        vec!["import", manifests[1].as_str(), manifests[2].as_str(), manifests[3].as_str()];
    import.extend(adu);
    otaforge(&bin, &import, 0)?;
    println!("\n# Importing the same release again is reported, not failed:");
    otaforge(&bin, &import, 0)?;
    let mut list = vec!["update", "list"];
    list.extend(adu);
    otaforge(&bin, &list, 0)?;
    drop(serve);

    println!("\n# Now a payload changes after the manifest was made; validation must catch it:");
    std::fs::write(work.join("install.sh"), "#!/bin/sh\necho tampered\n")?;
    otaforge(&bin, &["manifest", "validate", "--payload-dir", &out, &manifests[0]], 1)?;
    println!(
        "\ndemo: manifests are in {out}; four updates imported into the embedded service; the tampered payload was refused as expected"
    );
    Ok(())
}

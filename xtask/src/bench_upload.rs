//! `bench upload`: otaforge against the official Python SDK (`azure-storage-blob`
//! `upload_blob`, same block size and concurrency) and a single curl Put Blob (the server's
//! ceiling), uploading the same file to the same Azurite, side by side. Reports throughput and
//! client CPU seconds (user + system) per tool, median of the runs, and a sweep of otaforge's
//! block size and concurrency (how the defaults were chosen).

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::bench_delta::{Run, run_measured_env};

const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The Python SDK version compared against (pinned).
const PY_SDK: &str = "12.27.1";

const PY_UPLOAD: &str = r#"
import sys
from azure.storage.blob import BlobClient
cs, container, blob, path, block, conc = sys.argv[1:7]
c = BlobClient.from_connection_string(cs, container, blob, max_block_size=int(block), max_single_put_size=int(block))
with open(path, 'rb') as f:
    c.upload_blob(f, overwrite=True, max_concurrency=int(conc))
"#;

const PY_SAS: &str = r#"
import base64, hashlib, hmac, sys, datetime
account, key, container, blob = sys.argv[1:5]
now = datetime.datetime.now(datetime.timezone.utc)
f = lambda t: t.strftime('%Y-%m-%dT%H:%M:%SZ')
st, se = f(now - datetime.timedelta(minutes=5)), f(now + datetime.timedelta(hours=2))
res = f'/blob/{account}/{container}/{blob}'
from urllib.parse import urlencode
if blob == '-':
    # An account SAS that may delete containers (to free Azurite's memory between runs).
    to_sign = f"{account}\nd\nb\nc\n{st}\n{se}\n\nhttps,http\n2022-11-02\n\n"
    sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
    print(urlencode({'sv': '2022-11-02', 'ss': 'b', 'srt': 'c', 'sp': 'd', 'st': st, 'se': se, 'spr': 'https,http', 'sig': sig}))
    sys.exit(0)
to_sign = '\n'.join(['cw', st, se, res, '', '', 'https,http', '2022-11-02', 'b', '', '', '', '', '', '', ''])
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
print(urlencode({'sv': '2022-11-02', 'st': st, 'se': se, 'sr': 'b', 'sp': 'cw', 'spr': 'https,http', 'sig': sig}))
"#;

fn median(mut v: Vec<Run>) -> Run {
    v.sort_by_key(|r| r.wall);
    v.swap_remove(v.len() / 2)
}

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let mut size_mib = 512u64;
    let mut runs = 3usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--size-mib" => size_mib = it.next().context("--size-mib N")?.parse()?,
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            other => bail!("unknown option {other}; usage: bench upload [--size-mib N] [--runs N]"),
        }
    }
    let probe =
        std::process::Command::new("python3").args(["-c", "import azure.storage.blob"]).status()?;
    if !probe.success() {
        let mut pip = std::process::Command::new("python3");
        pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("azure-storage-blob=={PY_SDK}"));
        crate::run(pip)?;
    }
    let bin = crate::bench::release_binary()?;
    let work = crate::target_dir().join("bench-upload");
    std::fs::create_dir_all(&work)?;
    let file = work.join(format!("payload-{size_mib}MiB.bin"));
    crate::bench::make_file(&file, size_mib << 20, 0x5eed)?;
    let bytes = (size_mib << 20) as f64;
    let s = |p: &Path| p.display().to_string();
    let report = |name: &str, r: &Run| {
        let mbps = bytes / r.wall.as_secs_f64() / 1e6;
        println!(
            "{name:<46} {:>7.2} s  {:>7.1} MB/s  CPU {:>6.2} s  RSS {:>5} MiB",
            r.wall.as_secs_f64(),
            mbps,
            r.cpu.as_secs_f64(),
            r.max_rss_kib / 1024
        );
        mbps
    };
    // Each row gets a fresh Azurite: an in-memory Azurite slows down and eventually fails as
    // gigabytes of earlier runs accumulate, even after their containers are deleted.
    // `cmd(url, connection string, run index)` builds one run's command line.
    let row = |cmd: &dyn Fn(&str, &str, usize) -> Vec<String>| -> anyhow::Result<Run> {
        let az = crate::azurite::start(0)?;
        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={};",
            az.url
        );
        // A container for the peers (otaforge creates its own).
        run_measured_env(
            &[
                s(&bin),
                "upload".into(),
                s(&file),
                "--container".into(),
                "peers".into(),
                "-q".into(),
            ],
            &[("AZURE_STORAGE_CONNECTION_STRING", cs.as_str())],
        )?;
        let mut v = Vec::new();
        for i in 0..runs {
            v.push(run_measured_env(
                &cmd(&az.url, &cs, i),
                &[("AZURE_STORAGE_CONNECTION_STRING", cs.as_str())],
            )?);
        }
        Ok(median(v))
    };
    // otaforge skips blobs that already hold the same bytes: each run uses a new container.
    let ota = |block: &'static str, conc: usize, checksum: &'static str| {
        let bin = s(&bin);
        let file = s(&file);
        move |_: &str, _: &str, i: usize| -> Vec<String> {
            vec![
                bin.clone(),
                "upload".into(),
                file.clone(),
                "--container".into(),
                format!("ota-{i}"),
                "--block-size".into(),
                block.into(),
                "--concurrency".into(),
                conc.to_string(),
                "--checksum".into(),
                checksum.into(),
                "-q".into(),
            ]
        }
    };
    println!(
        "bench upload: {size_mib} MiB to Azurite {} (in memory), median of {runs} runs\n",
        crate::azurite::VERSION
    );
    let ours = row(&ota("8MiB", 8, "md5"))?;
    let m_ours = report("otaforge upload (8 MiB x 8, md5)", &ours);
    let crc = row(&ota("8MiB", 8, "crc64"))?;
    report("otaforge upload (8 MiB x 8, crc64)", &crc);
    let py = row(&|_: &str, cs: &str, i: usize| {
        vec![
            "python3".into(),
            "-c".into(),
            PY_UPLOAD.into(),
            cs.into(),
            "peers".into(),
            format!("py-{i}.bin"),
            s(&file),
            (8u64 << 20).to_string(),
            "8".into(),
        ]
    })?;
    let m_py = report(&format!("python azure-storage-blob {PY_SDK} (8 MiB x 8)"), &py);
    let curl = row(&|url: &str, _: &str, i: usize| {
        let blob = format!("curl-{i}.bin");
        let sas = sas_query("peers", &blob).unwrap_or_default();
        vec![
            "curl".into(),
            "-sf".into(),
            "-o".into(),
            "/dev/null".into(),
            "-X".into(),
            "PUT".into(),
            "-H".into(),
            "x-ms-blob-type: BlockBlob".into(),
            "-T".into(),
            s(&file),
            format!("{url}/peers/{blob}?{sas}"),
        ]
    })?;
    let m_curl = report("curl, one Put Blob", &curl);
    println!();
    println!("throughput otaforge / python SDK: {:.2}  (goal >= 1.0)", m_ours / m_py);
    println!("throughput otaforge / curl:       {:.2}  (goal >= 0.95)", m_ours / m_curl);
    println!(
        "client CPU otaforge / python SDK: {:.2}  (goal <= 0.3)",
        ours.cpu.as_secs_f64() / py.cpu.as_secs_f64()
    );
    println!("\nsweep (otaforge block size x concurrency, md5):");
    for (block, conc) in
        [("4MiB", 4), ("4MiB", 8), ("8MiB", 4), ("16MiB", 4), ("16MiB", 8), ("32MiB", 4)]
    {
        let r = row(&ota(block, conc, "md5"))?;
        report(&format!("  {block} x {conc}"), &r);
    }
    Ok(())
}

/// A SAS query from the Python helper: a write SAS for one blob, or (`-`) a container-delete
/// account SAS.
fn sas_query(container: &str, blob: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", PY_SAS, "devstoreaccount1", KEY, container, blob])
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

//! `otaforge new`: a commented `otaforge.toml` for an MCU, Linux or APT release, the folders
//! it expects, a make fragment and a CI workflow (and with `--xtask` a `cargo xtask release`);
//! never overwrites a file.

use std::path::PathBuf;

use super::{Outcome, Output};

/// Which kind of firmware repository.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Template {
    /// A Zephyr-style MCU image, signed as an MCUboot image, with MCU deltas.
    Mcu,
    /// An embedded Linux (Yocto-style) SWUpdate image with deltas.
    Linux,
    /// Debian packages through the APT handler.
    Apt,
}

/// `otaforge new`.
#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The kind of release.
    #[arg(long, value_enum, default_value = "mcu")]
    template: Template,
    /// Also write `xtask/src/release.rs`: a `cargo xtask release` through the otaforge
    /// library, for a Rust firmware workspace.
    #[arg(long)]
    xtask: bool,
    /// The repository to write into.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

pub(crate) fn run(a: NewArgs, out: &Output) -> anyhow::Result<Outcome> {
    let (toml, folders, build): (&str, &[&str], &str) = match a.template {
        Template::Mcu => (
            include_str!("../../templates/new/mcu.toml"),
            &["build/zephyr", "keys", "out"],
            "build your firmware to build/zephyr/zephyr.bin and write its version to VERSION",
        ),
        Template::Linux => (
            include_str!("../../templates/new/linux.toml"),
            &["build/deploy/images", "out"],
            "build your image to build/deploy/images/*.swu, write its version to VERSION and put the signing key PEM in $OTAFORGE_SIGNING_KEY",
        ),
        Template::Apt => (
            include_str!("../../templates/new/apt.toml"),
            &["apt", "keys", "out"],
            "write apt/apt-manifest.json (otaforge apt init) and the version to VERSION",
        ),
    };
    let mut files = vec![
        ("otaforge.toml", toml),
        ("otaforge.mk", include_str!("../../templates/new/otaforge.mk")),
        (".github/workflows/otaforge-release.yml", include_str!("../../templates/new/release.yml")),
    ];
    if a.xtask {
        files.push(("xtask/src/release.rs", include_str!("../../templates/new/xtask_release.rs")));
    }
    let existing: Vec<String> = files
        .iter()
        .map(|(name, _)| a.dir.join(name))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        anyhow::bail!("{} already exist(s); otaforge new never overwrites", existing.join(", "));
    }
    for f in folders {
        fs_err::create_dir_all(a.dir.join(f))?;
    }
    let mut written = Vec::new();
    for (name, text) in files {
        let path = a.dir.join(name);
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        otaforge::fsutil::write_output(&path, text.as_bytes(), otaforge::fsutil::Privacy::Public)?;
        written.push(path.display().to_string());
    }
    let key_step = matches!(a.template, Template::Mcu | Template::Apt);
    let next = format!(
        "{}{build}; then: otaforge release --dry-run",
        if key_step { "otaforge key generate -o keys/release; " } else { "" }
    );
    if out.json() {
        out.json_value(&serde_json::json!({"written": written, "next": next}))?;
    } else {
        for w in &written {
            out.line(format!("wrote {w}"))?;
        }
        out.line(format!("next: {next}"))?;
    }
    Ok(Outcome::Ok)
}

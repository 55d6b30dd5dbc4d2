//! `otaforge new`: a commented `otaforge.toml` for an MCU, Linux or APT release, the folders
//! it expects, a make fragment and a CI workflow (and with `--xtask` a `cargo xtask release`);
//! never overwrites a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use otaforge::fsutil::AtomicFile;

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
    // Everything is checked before anything is written: a file that exists (a dangling
    // symlink included) or a symlink on the way to one stops `new` with nothing written.
    let mut existing = Vec::new();
    for (name, _) in &files {
        if let Some(p) = blocked(&a.dir, Path::new(name))? {
            existing.push(p.display().to_string());
        }
    }
    if !existing.is_empty() {
        anyhow::bail!("{} already exist(s); otaforge new never overwrites", existing.join(", "));
    }
    for f in folders {
        no_dangling_link(&a.dir, Path::new(f))?;
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
        // A new file only: the umask's mode, and never a rename over something that appeared
        // since the check.
        let mut file = AtomicFile::new_with_mode(&path, Some(0o666))?;
        file.write_all(text.as_bytes())?;
        file.commit(false).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!("{} already exists; otaforge new never overwrites", path.display())
            } else {
                e.into()
            }
        })?;
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

/// Where `new` must not write `rel` (a path below `dir`): `Some(path)` when the file exists; an
/// error when it or a folder on the way is a symlink, dangling or not (writing through it would
/// put the file somewhere else), or a folder on the way is not one.
fn blocked(dir: &Path, rel: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut path = dir.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs_err::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if meta.file_type().is_symlink() {
            anyhow::bail!(
                "{} is a symlink; otaforge new never writes through one (remove it, or give another folder)",
                path.display()
            );
        }
        if i + 1 == parts.len() {
            return Ok(Some(path));
        }
        if !meta.is_dir() {
            anyhow::bail!("{} is not a folder", path.display());
        }
    }
    Ok(None)
}

/// Refuses a dangling symlink among the folders of `rel` below `dir` (creating the folder would
/// create its target somewhere else).
fn no_dangling_link(dir: &Path, rel: &Path) -> anyhow::Result<()> {
    let mut path = dir.to_path_buf();
    for part in rel.components() {
        path.push(part);
        match fs_err::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() && !path.exists() => anyhow::bail!(
                "{} is a symlink to nothing; otaforge new never creates through one (remove it, or give another folder)",
                path.display()
            ),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

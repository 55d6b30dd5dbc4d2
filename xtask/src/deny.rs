//! `cargo deny` over the whole build graph with the policy in `.cargo/deny.toml`: permissive
//! licences only, crates.io only, no second version of a crate beyond the listed upstream ones,
//! and no crate with a RustSec advisory or a yanked release.
//!
//! The advisory database is a git repository on github.com. Where that host cannot be reached
//! (this project's CI network reaches the package registries only), a local copy is used: the one
//! `OTAFORGE_ADVISORY_DB` names, a mirror beside the project at
//! `../.mirror/rustsec+advisory-db/repo`, or the snapshot in the shared folder
//! (`../shared/advisory-db`, files without git metadata, dated by its `SNAPSHOT` file; it is
//! made a one-commit repository under target/ for cargo-deny). With none, the advisory check is
//! reported as not run, loudly, and the other three checks still gate the build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Environment variable naming a local copy (a clone or a bare mirror) of the RustSec database.
pub(crate) const DB_ENV: &str = "OTAFORGE_ADVISORY_DB";

/// What the advisory step did, for the closing line of `cargo xtask ci`.
pub(crate) enum Advisories {
    /// Checked against the database fetched from github.com.
    Fetched,
    /// Checked against a local copy (its last commit date).
    Local(String),
    /// Not checked: no database could be reached or found.
    NotRun,
}

fn deny() -> Command {
    let mut c = Command::new(crate::tools::venv().join("bin/cargo-deny"));
    c.current_dir(crate::root()).arg("--config").arg(crate::root().join(".cargo/deny.toml"));
    c
}

/// Runs the licence, ban and source checks, then the advisory check.
pub(crate) fn run() -> anyhow::Result<Advisories> {
    let mut c = deny();
    c.args(["check", "bans", "licenses", "sources"]);
    crate::run(c).context("cargo deny: a licence, duplicate-version or source rule failed")?;

    let mut c = deny();
    c.args(["check", "advisories"]);
    let out = c.output().context("cannot run cargo-deny")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprint!("{err}");
        return Ok(Advisories::Fetched);
    }
    if !is_fetch_failure(&err) {
        eprint!("{err}");
        bail!("cargo deny check advisories: a dependency has an advisory (above)");
    }
    let Some(copy) = local_copy() else {
        eprintln!(
            "cargo deny: ADVISORIES NOT CHECKED: github.com (the RustSec database) is unreachable \
             and no local copy was found; set {DB_ENV} to a clone of \
             https://github.com/rustsec/advisory-db to check them"
        );
        return Ok(Advisories::NotRun);
    };
    let date = check_with_local(&copy)?;
    Ok(Advisories::Local(date))
}

fn is_fetch_failure(stderr: &str) -> bool {
    ["failed to fetch", "Could not resolve host", "unable to access", "failed to open advisory"]
        .iter()
        .any(|s| stderr.contains(s))
}

fn local_copy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(DB_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = crate::root().parent()?.join(".mirror/rustsec+advisory-db/repo");
    if beside.exists() {
        return Some(beside);
    }
    let snapshot = crate::shared().ok()?.join("advisory-db");
    snapshot.join("crates").is_dir().then_some(snapshot)
}

/// Puts the database at `copy` into `dest` as a git repository: a clone of a repository, or a
/// copy of a files-only snapshot committed once.
fn materialize(copy: &Path, dest: &Path) -> anyhow::Result<()> {
    if copy.join(".git").exists() || copy.join("HEAD").exists() {
        let mut clone = Command::new("git");
        clone.args(["clone", "--quiet"]).arg(copy).arg(dest);
        return crate::run(clone).with_context(|| format!("cannot clone {}", copy.display()));
    }
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(copy).arg(dest);
    crate::run(cp).with_context(|| format!("cannot copy {}", copy.display()))?;
    for args in [
        &["init", "--quiet"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=otaforge",
            "-c",
            "user.email=ci@otaforge.invalid",
            "commit",
            "--quiet",
            "-m",
            "snapshot",
        ],
    ] {
        let mut git = Command::new("git");
        git.arg("-C").arg(dest).args(args);
        crate::run(git).with_context(|| format!("cannot make {} a repository", dest.display()))?;
    }
    Ok(())
}

/// The date of a database copy: its last commit's, or the snapshot's as its `SNAPSHOT` says.
fn copy_date(copy: &Path) -> String {
    if let Ok(text) = std::fs::read_to_string(copy.join("SNAPSHOT")) {
        let date = text.split(['(', ')']).nth(1).unwrap_or_default().trim().to_owned();
        if !date.is_empty() {
            return format!("{date} (snapshot)");
        }
    }
    Command::new("git")
        .arg("-C")
        .arg(copy)
        .args(["log", "-1", "--format=%cs"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Clones `copy` into a database directory under target/ and checks against it offline; returns
/// the copy's last commit date, so the log says how current the check was.
fn check_with_local(copy: &Path) -> anyhow::Result<String> {
    let dbs = crate::target_dir().join("advisory-dbs");
    // cargo-deny names the directory after the database URL; it is found by asking it once with
    // an empty db-path and reading the name from its error.
    let config = std::fs::read_to_string(crate::root().join(".cargo/deny.toml"))?;
    let local_config = crate::target_dir().join("deny-local.toml");
    let db_path = dbs.display().to_string().replace('\\', "/");
    let config =
        config.replacen("[advisories]\n", &format!("[advisories]\ndb-path = {db_path:?}\n"), 1);
    std::fs::create_dir_all(&dbs)?;
    std::fs::write(&local_config, config)?;
    let offline = || {
        let mut c = Command::new(crate::tools::venv().join("bin/cargo-deny"));
        c.current_dir(crate::root())
            .arg("--offline")
            .arg("--config")
            .arg(&local_config)
            .args(["check", "advisories"]);
        c
    };
    let probe = offline().output().context("cannot run cargo-deny")?;
    if !probe.status.success() {
        let err = String::from_utf8_lossy(&probe.stderr);
        let name = err
            .split(|c: char| c == '/' || c == '\'' || c == '"' || c.is_whitespace())
            .find(|w| w.starts_with("advisory-db-"))
            .map(str::to_owned)
            .with_context(|| format!("cargo-deny did not name its database directory:\n{err}"))?;
        let dest = dbs.join(&name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        materialize(copy, &dest)?;
        crate::run(offline()).context("cargo deny check advisories (local database)")?;
    }
    let date = copy_date(copy);
    eprintln!("cargo deny: advisories checked against a local RustSec copy of {date}");
    Ok(date)
}

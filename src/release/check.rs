//! The rules of `otaforge.toml` beyond its types (`docs/release.md`, field by field), one
//! function per section. Each adds every problem it finds, with the line and field, and returns
//! what it worked out (files, bases, durations). Nothing here runs a command or writes: the
//! version is found afterwards (`version::resolve`), and only for a description that
//! passed.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::{
    Artifact, ArtifactKind, At, Config, ConfigError, MAX_BASES, OnFailure, line_of,
};
use super::inputs;

/// A duration in otaforge.toml that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration like 30s, 10m, 2h or 365d ({message})")]
pub struct DurationError {
    /// What was written.
    pub text: String,
    /// Why it is not a duration.
    pub message: String,
}

/// A duration like `30m`, `10s`, `365d`.
pub fn duration(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text.trim())
        .map_err(|e| DurationError { text: text.to_owned(), message: e.to_string() })
}

/// Every problem of a parsed file, each with its line.
pub(super) struct Problems<'a> {
    file: &'a Path,
    text: &'a str,
    /// The problems so far.
    pub(super) list: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    /// None yet, in `file` (whose text is `text`).
    pub(super) fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text, list: Vec::new() }
    }

    /// A problem at `span` (an empty span at 0 has no line).
    pub(super) fn add(
        &mut self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = if span.end == 0 { 0 } else { line_of(self.text, span.start) };
        self.list.push(ConfigError {
            file: self.file.to_owned(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    /// `t` as a duration, or `default` after adding the problem.
    fn duration(&mut self, t: Option<&At<String>>, field: &str, default: Duration) -> Duration {
        match t.map(|t| (t, duration(&t.value))) {
            Some((_, Ok(d))) => d,
            Some((t, Err(e))) => {
                self.add(&t.span, field, e.to_string());
                default
            }
            None => default,
        }
    }
}

/// What the checks worked out from a file, before its version is known.
#[derive(Debug, Clone, Default)]
pub(super) struct Draft {
    /// Each artifact's file.
    pub(super) files: Vec<PathBuf>,
    /// The IoT Edge deployment manifest, validated.
    pub(super) edge_manifest: Option<PathBuf>,
    /// Earlier releases' output folders.
    pub(super) bases: Vec<PathBuf>,
    /// Bases named `storage:VERSION`, with their folders.
    pub(super) remote_bases: Vec<(String, PathBuf)>,
    /// The metadata's validity.
    pub(super) expires_in: Duration,
    /// The import's timeout.
    pub(super) import_timeout: Duration,
    /// Each stage's timeout and soak.
    pub(super) stage_times: Vec<(Duration, Duration)>,
    /// How long `version-command` may run.
    pub(super) version_timeout: Duration,
}

/// Checks every section of `config` (its paths relative to `root`).
pub(super) fn check(p: &mut Problems<'_>, root: &Path, config: &Config) -> Draft {
    Draft {
        version_timeout: update(p, config),
        files: artifacts(p, root, config),
        edge_manifest: edge(p, root, config),
        bases: Vec::new(),
        remote_bases: Vec::new(),
        expires_in: signing(p, root, config),
        import_timeout: storage_and_service(p, config),
        stage_times: stages(p, config),
    }
    .with_bases(delta(p, root, config))
}

impl Draft {
    fn with_bases(mut self, (bases, remote): (Vec<PathBuf>, Vec<(String, PathBuf)>)) -> Self {
        self.bases = bases;
        self.remote_bases = remote;
        self
    }
}

/// `[update]`: one version source, compatibility sets. Returns the version command's time
/// limit.
fn update(p: &mut Problems<'_>, config: &Config) -> Duration {
    let u = &config.update;
    if let (Some(t), None) = (&u.version_command_timeout, &u.version_command) {
        p.add(&t.span, "update.version-command-timeout", "only with version-command");
    }
    let sources = [u.version.is_some(), u.version_file.is_some(), u.version_command.is_some()];
    match sources.iter().filter(|s| **s).count() {
        0 => p.add(
            &u.name.span,
            "update",
            "no version: give version, version-file or version-command",
        ),
        1 => {}
        _ => p.add(&u.name.span, "update", "give one of version, version-file and version-command"),
    }
    if u.compatibility.value.is_empty() {
        p.add(
            &u.compatibility.span,
            "update.compatibility",
            "give at least one set, e.g. [{ manufacturer = \"contoso\", model = \"toaster\" }]",
        );
    }
    for (i, set) in u.compatibility.value.iter().enumerate() {
        if set.is_empty() {
            p.add(
                &u.compatibility.span,
                format!("update.compatibility[{i}]"),
                "an empty set matches no device",
            );
        }
    }
    let timeout = u.version_command_timeout.as_ref();
    p.duration(timeout, "update.version-command-timeout", super::config::DEFAULT_VERSION_TIMEOUT)
}

/// `[[artifact]]`: each path matches one file, which may be shipped; handlers. Returns the
/// files.
fn artifacts(p: &mut Problems<'_>, root: &Path, config: &Config) -> Vec<PathBuf> {
    if config.artifacts.is_empty() && config.edge.is_none() {
        p.add(
            &(0..0),
            "artifact",
            "no [[artifact]]: a release needs at least one file (or an [edge] manifest)",
        );
    }
    let signing_key = config
        .signing
        .as_ref()
        .and_then(|s| s.key.as_ref())
        .filter(|k| !k.value.starts_with("env:"))
        .and_then(|k| fs_err::canonicalize(root.join(&k.value)).ok());
    let mut files = Vec::new();
    for (i, a) in config.artifacts.iter().enumerate() {
        let field = format!("artifact[{i}].path");
        let matches = match inputs::expand(root, &a.path.value) {
            Ok(m) => m,
            Err(e) => {
                p.add(&a.path.span, &field, e.to_string());
                continue;
            }
        };
        match matches.as_slice() {
            [one] => match shippable(root, a, one, signing_key.as_deref()) {
                Ok(()) => files.push(one.clone()),
                Err(e) => p.add(&a.path.span, &field, e.to_string()),
            },
            [] => p.add(
                &a.path.span,
                &field,
                format!(
                    "`{}` matches no file (relative to {}); build it first",
                    a.path.value,
                    root.display()
                ),
            ),
            many => p.add(
                &a.path.span,
                &field,
                format!("`{}` matches {} files; it must name one", a.path.value, many.len()),
            ),
        }
        handler(p, config, i, a);
    }
    files
}

/// An artifact's handler, and what signing an MCUboot artifact needs.
fn handler(p: &mut Problems<'_>, config: &Config, i: usize, a: &Artifact) {
    let field = format!("artifact[{i}].handler");
    if a.handler.is_none() && a.kind.default_handler().is_none() {
        let kind = format!("{:?}", a.kind).to_lowercase();
        p.add(
            &a.path.span,
            &field,
            format!(
                "a {kind} artifact needs handler = \"vendor/name:1\" (the step handler on the device)"
            ),
        );
    }
    if let Some(h) = &a.handler
        && !h.value.contains('/')
    {
        p.add(&h.span, &field, "a handler id is vendor/name:version, e.g. microsoft/swupdate:2");
    }
    if a.kind == ArtifactKind::Mcuboot
        && config.signing.as_ref().is_some_and(|s| s.mcuboot.is_some())
        && config.signing.is_none()
    {
        p.add(
            &a.path.span,
            format!("artifact[{i}]"),
            "signing an MCUboot image needs [signing] key",
        );
    }
}

/// Whether the artifact file `file` may be shipped: inside the repository (unless the artifact
/// allows otherwise) and not the signing key.
fn shippable(
    root: &Path,
    a: &Artifact,
    file: &Path,
    signing_key: Option<&Path>,
) -> Result<(), inputs::InputError> {
    let resolved = if a.outside_repository {
        fs_err::canonicalize(file)
            .map_err(|source| inputs::InputError::Io { path: file.to_owned(), source })?
    } else {
        inputs::inside(root, &a.path.value, file)?
    };
    if Some(resolved.as_path()) == signing_key {
        return Err(inputs::InputError::SigningKey { written: a.path.value.clone() });
    }
    Ok(())
}

/// `[edge]`: the manifest is in the repository and valid as the runtime reads it. Returns it.
fn edge(p: &mut Problems<'_>, root: &Path, config: &Config) -> Option<PathBuf> {
    let e = config.edge.as_ref()?;
    let path = root.join(&e.manifest.value);
    let written = e.manifest.value.to_string_lossy();
    let read = match inputs::inside(root, &written, &path) {
        Err(err @ inputs::InputError::Outside { .. }) if !e.outside_repository => {
            Err(err.to_string())
        }
        _ => fs_err::read(&path).map_err(|e| e.to_string()),
    };
    let bytes = match read {
        Ok(b) => b,
        Err(err) => {
            p.add(&e.manifest.span, "edge.manifest", err);
            return None;
        }
    };
    use crate::edge::manifest::{Kind, validate};
    match validate(&bytes, Kind::Base) {
        Err(err) => p.add(&e.manifest.span, "edge.manifest", err.to_string()),
        Ok(f) if f.has_errors() => {
            let errors = f.iter().filter(|x| x.severity == crate::finding::Severity::Error);
            for x in errors.take(5) {
                p.add(&e.manifest.span, "edge.manifest", format!("{}: {x}", path.display()));
            }
        }
        Ok(_) => return Some(path),
    }
    None
}

/// `[delta]`: at most [`MAX_BASES`] bases, each an earlier release's folder or
/// `storage:VERSION`; the share. Returns the bases' folders and the remote ones.
fn delta(
    p: &mut Problems<'_>,
    root: &Path,
    config: &Config,
) -> (Vec<PathBuf>, Vec<(String, PathBuf)>) {
    let (mut bases, mut remote) = (Vec::new(), Vec::new());
    let Some(d) = &config.delta else { return (bases, remote) };
    if d.bases.value.len() > MAX_BASES {
        p.add(
            &d.bases.span,
            "delta.bases",
            format!(
                "{} bases; ADU takes at most {MAX_BASES} related files per file",
                d.bases.value.len()
            ),
        );
    }
    let out_root = root.join(config.output.clone().unwrap_or_else(|| PathBuf::from("out/release")));
    for (i, b) in d.bases.value.iter().enumerate() {
        let field = format!("delta.bases[{i}]");
        // `storage:VERSION`: an earlier release read back from the storage container.
        if let Some(version) = b.to_str().and_then(|t| t.strip_prefix("storage:")) {
            if !crate::manifest::Version::problems(version).is_empty() {
                let m = format!("`{version}` is not a version of 2 to 4 numbers");
                p.add(&d.bases.span, field, m);
                continue;
            }
            let dir = out_root.join("bases").join(version);
            remote.push((version.to_owned(), dir.clone()));
            bases.push(dir);
            continue;
        }
        let dir = root.join(b);
        if !dir.join(super::STATE_FILE).is_file() {
            let m = format!(
                "{} holds no {} (an earlier release's output folder)",
                dir.display(),
                super::STATE_FILE
            );
            p.add(&d.bases.span, field, m);
        }
        bases.push(dir);
    }
    if !(0.0..=1.0).contains(&d.max_share.value) {
        p.add(&d.max_share.span, "delta.max-share", "a share from 0 to 1");
    }
    (bases, remote)
}

/// `[signing]`: a key or a command with its public key; expiry; MCUboot alignment. Returns
/// the metadata's validity.
fn signing(p: &mut Problems<'_>, root: &Path, config: &Config) -> Duration {
    let year = Duration::from_secs(365 * 86_400);
    let Some(s) = &config.signing else { return year };
    let expires_in = p.duration(s.expires_in.as_ref(), "signing.expires-in", year);
    match (&s.key, &s.command, &s.public_key) {
        (Some(k), None, None) => {
            if !k.value.starts_with("env:") && !root.join(&k.value).is_file() {
                p.add(
                    &k.span,
                    "signing.key",
                    format!(
                        "{} does not exist (a PEM file, or env:VAR)",
                        root.join(&k.value).display()
                    ),
                );
            }
        }
        (None, Some(_), Some(pk)) => {
            if let Err(e) = crate::sign::PublicKey::from_file(&root.join(&pk.value)) {
                p.add(&pk.span, "signing.public-key", e.to_string());
            }
        }
        (None, Some(c), None) => p.add(
            &c.span,
            "signing.public-key",
            "an external signer needs public-key (its PEM), to check each signature",
        ),
        _ => {
            p.add(&(0..0), "signing", "give key (a PEM file or env:VAR), or command and public-key")
        }
    }
    if let Some(m) = &s.mcuboot
        && ![1, 2, 4, 8].contains(&m.align.value)
    {
        p.add(&m.align.span, "signing.mcuboot.align", "1, 2, 4 or 8");
    }
    expires_in
}

/// `[storage]` and `[service]`: the container's name; the import's timeout, returned.
fn storage_and_service(p: &mut Problems<'_>, config: &Config) -> Duration {
    if let Some(container) = &config.storage.container
        && let Err(e) = container.value.parse::<crate::storage::ContainerName>()
    {
        p.add(&container.span, "storage.container", e.to_string());
    }
    let timeout = config.service.import_timeout.as_ref();
    p.duration(timeout, "service.import-timeout", Duration::from_secs(30 * 60))
}

/// `[[stage]]`: unique names, one target each, shares, times, rollback. Returns each stage's
/// timeout and soak.
fn stages(p: &mut Problems<'_>, config: &Config) -> Vec<(Duration, Duration)> {
    let mut names = std::collections::HashSet::new();
    let mut times = Vec::new();
    for (i, s) in config.stages.iter().enumerate() {
        if !names.insert(s.name.value.clone()) {
            p.add(
                &s.name.span,
                format!("stage[{i}].name"),
                format!("`{}` names an earlier stage too", s.name.value),
            );
        }
        stage_target(p, config, i, s);
        for (share, field) in [
            (Some(&s.min_succeeded), "min-succeeded"),
            (s.max_failed_share.as_ref(), "max-failed-share"),
        ] {
            if let Some(x) = share
                && !(0.0..=1.0).contains(&x.value)
            {
                p.add(&x.span, format!("stage[{i}].{field}"), "a share from 0 to 1");
            }
        }
        let field = format!("stage[{i}].timeout");
        let timeout = p.duration(s.timeout.as_ref(), &field, Duration::from_secs(30 * 60));
        let soak = p.duration(s.soak.as_ref(), &format!("stage[{i}].soak"), Duration::ZERO);
        times.push((timeout, soak));
        if let Some(r) = &s.rollback_to {
            let field = format!("stage[{i}].rollback-to");
            if s.on_failure != OnFailure::Rollback {
                p.add(&r.span, &field, "only with on-failure = \"rollback\"");
            }
            if !crate::manifest::Version::problems(&r.value).is_empty() {
                p.add(&r.span, &field, format!("`{}` is not a version of 2 to 4 numbers", r.value));
            }
        }
    }
    times
}

/// A stage's target: a valid group, or an Edge target condition with `[edge]`.
fn stage_target(p: &mut Problems<'_>, config: &Config, i: usize, s: &super::config::Stage) {
    match (&s.group, &s.edge_target) {
        (Some(g), None) => {
            if let Err(e) = crate::iothub::check_group_id(&g.value) {
                p.add(&g.span, format!("stage[{i}].group"), e.to_string());
            }
        }
        (None, Some(t)) => {
            let field = format!("stage[{i}].edge-target");
            if let Err(e) = crate::iothub::condition::Target::parse(&t.value) {
                p.add(&t.span, &field, format!("position {}: {}", e.position, e.message));
            }
            if config.edge.is_none() {
                p.add(&t.span, &field, "an Edge stage needs [edge] manifest");
            }
            if let Some(r) = &s.rollback_to {
                p.add(
                    &r.span,
                    format!("stage[{i}].rollback-to"),
                    "an Edge stage rolls back by deleting its deployment (devices fall back to their next one)",
                );
            }
        }
        _ => p.add(
            &s.name.span,
            format!("stage[{i}]"),
            "give one of group (Device Update) and edge-target (IoT Edge)",
        ),
    }
    if s.group.is_some() && config.artifacts.is_empty() {
        p.add(
            &s.name.span,
            format!("stage[{i}].group"),
            "a Device Update stage needs an [[artifact]]",
        );
    }
}

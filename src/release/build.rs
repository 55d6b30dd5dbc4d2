//! Step 2 of a release, offline: the inputs read (and refused when one is a private key), the
//! artifacts copied or signed as MCUboot images into `OUTPUT/VERSION/files/`, one delta per
//! artifact and base (kept when smaller than `max-share` of the file), the IoT Edge manifest,
//! the import manifest (ADU import manifest v5) and the signed release metadata
//! (`docs/signing.md`). Each step records its outputs with their SHA-256 in the state file and
//! is skipped when they are there and verify.

use std::path::{Path, PathBuf};

use super::config::{self, Checked};
use super::{Built, DeltaOutput, Options, Output, ReleaseError, STATE_FILE, State, inputs, io};
use crate::Sha256;
use crate::manifest::{FileSpec, ManifestSpec, RelatedSpec, StepSpec};
use crate::reporter::Reporter;
use crate::sign::Signer;

/// A build in progress: what it reads, and the state it brings up to date.
struct Build<'a> {
    c: &'a Checked,
    opts: &'a Options,
    reporter: &'a dyn Reporter,
    /// `OUTPUT/VERSION`.
    dir: PathBuf,
    /// `OUTPUT/VERSION/files`.
    files: PathBuf,
    /// The SHA-256 of each input: the artifacts' files, then the Edge manifest.
    inputs: Vec<String>,
    signer: Option<Box<dyn Signer>>,
    state: State,
    made: Vec<String>,
}

/// Step 2: the files, deltas, manifest and metadata, offline.
pub fn build(c: &Checked, opts: &Options, reporter: &dyn Reporter) -> Result<Built, ReleaseError> {
    let dir = c.output.join(c.update_id.version().as_str());
    let files = dir.join("files");
    // Read before anything is written: an input that is a private key stops the release here.
    let inputs = read_inputs(c)?;
    fs_err::create_dir_all(&files).map_err(io(&files))?;
    let state = start_state(c, &dir, &inputs, opts)?;
    for (version, base) in &c.remote_bases {
        if !base.join(STATE_FILE).is_file() {
            return Err(ReleaseError::BaseNotRead { path: base.clone(), version: version.clone() });
        }
    }
    let signer = signer(c)?;
    let mut b = Build { c, opts, reporter, dir, files, inputs, signer, state, made: Vec::new() };
    b.artifacts()?;
    b.deltas()?;
    b.edge_manifest()?;
    // An IoT Edge-only release has no update to import.
    let mut checked = None;
    if !b.state.artifacts.is_empty() {
        b.manifest()?;
        b.metadata()?;
        checked = Some(b.verify()?);
    }
    Ok(Built { dir: b.dir, state: b.state, made: b.made, checked })
}

/// The SHA-256 of each input (the artifacts' files, then the Edge manifest), each refused when
/// it holds a private key.
fn read_inputs(c: &Checked) -> Result<Vec<String>, ReleaseError> {
    c.files
        .iter()
        .chain(c.edge_manifest.iter())
        .map(|f| {
            let bytes = fs_err::read(f).map_err(io(f))?;
            if let Some(key) = inputs::private_key(&bytes) {
                return Err(ReleaseError::PrivateKey { path: f.clone(), key });
            }
            Ok(Sha256::digest(&bytes).to_base64())
        })
        .collect()
}

/// The state file of `dir`, or a new one when it is another release's or its inputs changed
/// (nothing recorded then holds).
fn start_state(
    c: &Checked,
    dir: &Path,
    inputs: &[String],
    opts: &Options,
) -> Result<State, ReleaseError> {
    let state = State::read(dir).unwrap_or_default();
    let id = c.update_id.to_string();
    if state.update_id == id && state.inputs == inputs {
        return Ok(state);
    }
    let created = crate::manifest::created_date_time(None, opts.source_date_epoch.as_deref())?;
    Ok(State { update_id: id, created, inputs: inputs.to_vec(), ..State::default() })
}

/// The signer of `[signing]`: a key (file or `env:VAR`) or an external command.
fn signer(c: &Checked) -> Result<Option<Box<dyn Signer>>, ReleaseError> {
    let Some(s) = &c.config.signing else { return Ok(None) };
    if let (Some(command), Some(public)) = (&s.command, &s.public_key) {
        let public = crate::sign::PublicKey::from_file(&c.root.join(&public.value))?;
        return Ok(Some(Box::new(crate::sign::CommandSigner::new(command.value.clone(), public))));
    }
    let Some(key) = &s.key else { return Ok(None) };
    let signer = match key.value.strip_prefix("env:") {
        Some(var) => crate::sign::KeySigner::from_env(var),
        None => crate::sign::KeySigner::from_file(&c.root.join(&key.value)),
    }?;
    Ok(Some(Box::new(signer)))
}

impl Build<'_> {
    /// Writes `bytes` to `files/NAME` (or `NAME` in the release folder) and records it.
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<Output, ReleaseError> {
        crate::fsutil::write_output(path, bytes, crate::fsutil::Privacy::Public)
            .map_err(io(path))?;
        Output::of(path)
    }

    /// Records that a step made its outputs, in the state file.
    fn done(&mut self, step: &str) -> Result<(), ReleaseError> {
        self.made.push(step.to_owned());
        self.state.write(&self.dir)
    }

    /// The artifacts, as shipped: copied, or signed as MCUboot images.
    fn artifacts(&mut self) -> Result<(), ReleaseError> {
        let c = self.c;
        let current = self.state.artifacts.len() == c.files.len()
            && self.state.artifacts.iter().enumerate().all(|(i, a)| self.derives(i, a));
        if current {
            return Ok(());
        }
        self.state.artifacts.clear();
        for (i, (a, input)) in c.config.artifacts.iter().zip(&c.files).enumerate() {
            let name =
                input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = fs_err::read(input).map_err(io(input))?;
            // What is shipped is what was checked for private keys.
            if self.inputs.get(i) != Some(&Sha256::digest(&bytes).to_base64()) {
                return Err(ReleaseError::InputChanged { path: input.clone() });
            }
            let bytes = self.ship(a, &name, bytes)?;
            let out = self.write(&self.files.join(&name), &bytes)?;
            self.state.artifacts.push(out);
        }
        self.state.deltas.clear();
        self.state.manifest = None;
        self.state.metadata = None;
        self.done("artifacts")
    }

    /// Whether the recorded artifact `i` is in `files/` with its recorded content and is what
    /// its input makes: the input itself, or an MCUboot image of it the signer's key verifies.
    /// An output folder changed by hand (file and state file alike) is made again.
    fn derives(&self, i: usize, art: &Output) -> bool {
        let (Some(a), Some(input)) = (self.c.config.artifacts.get(i), self.inputs.get(i)) else {
            return false;
        };
        if !art.verifies(&self.files) {
            return false;
        }
        let signed = a.kind == config::ArtifactKind::Mcuboot
            && self.c.config.signing.as_ref().is_some_and(|s| s.mcuboot.is_some());
        let Some(signer) = self.signer.as_ref().filter(|_| signed) else {
            return art.sha256 == *input;
        };
        let Ok(image) = fs_err::read(self.files.join(&art.name)) else { return false };
        let mut keys = crate::sign::TrustedKeys::new();
        keys.add(signer.public_key().clone());
        let Ok(v) = crate::mcuboot::verify(&image, &keys) else { return false };
        let start = usize::from(v.info.header_size);
        let end = start.saturating_add(v.info.image_size as usize);
        image.get(start..end).is_some_and(|body| Sha256::digest(body).to_base64() == *input)
    }

    /// What is shipped of an artifact's `bytes`: an MCUboot image signed when `[signing]`
    /// asks for it, else the bytes.
    fn ship(
        &self,
        a: &config::Artifact,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, ReleaseError> {
        let c = self.c;
        let mcuboot = c.config.signing.as_ref().and_then(|s| s.mcuboot.as_ref());
        let (config::ArtifactKind::Mcuboot, Some(m), Some(signer)) =
            (a.kind, mcuboot, &self.signer)
        else {
            return Ok(bytes);
        };
        let parts = c.update_id.version().parts();
        let version =
            format!("{}.{}.{}", parts[0], parts.get(1).unwrap_or(&0), parts.get(2).unwrap_or(&0));
        let opts = crate::mcuboot::SignOptions {
            version: version.parse().map_err(|message| ReleaseError::McubootVersion {
                version: version.clone(),
                message,
            })?,
            header_size: m.header_size,
            pad_header: true,
            slot_size: m.slot_size,
            align: m.align.value,
            ..Default::default()
        };
        crate::mcuboot::sign(&bytes, &opts, signer.as_ref())
            .map_err(|source| ReleaseError::Mcuboot { artifact: name.to_owned(), source })
    }

    /// Deltas, one per artifact and base.
    fn deltas(&mut self) -> Result<(), ReleaseError> {
        let s = &self.state;
        let made = !s.deltas.is_empty() || !s.skipped_deltas.is_empty() || self.c.bases.is_empty();
        if made && s.deltas.iter().all(|d| d.file.verifies(&self.files)) {
            return Ok(());
        }
        self.state.deltas.clear();
        self.state.skipped_deltas.clear();
        for base in &self.c.bases {
            self.deltas_from(base)?;
        }
        self.state.manifest = None;
        self.state.metadata = None;
        self.done("deltas")
    }

    /// The deltas of each artifact from the release in `base`.
    fn deltas_from(&mut self, base: &Path) -> Result<(), ReleaseError> {
        let b = State::read(base)
            .ok_or_else(|| ReleaseError::NotAState { path: base.join(STATE_FILE) })?;
        let base_version = b.update_id.rsplit('/').next().unwrap_or_default().to_owned();
        let artifacts = self.state.artifacts.clone();
        for (i, (a, art)) in self.c.config.artifacts.iter().zip(artifacts).enumerate() {
            let Some(old) = b.artifacts.get(i).filter(|_| a.delta) else { continue };
            let old_path = base.join("files").join(&old.name);
            let old_bytes = fs_err::read(&old_path).map_err(io(&old_path))?;
            self.delta(&art, old, &old_bytes, &base_version)?;
        }
        Ok(())
    }

    /// The delta of `art` from `old` (of release `base_version`), kept when small enough.
    fn delta(
        &mut self,
        art: &Output,
        old: &Output,
        old_bytes: &[u8],
        base_version: &str,
    ) -> Result<(), ReleaseError> {
        let (share, profile) = self
            .c
            .config
            .delta
            .as_ref()
            .map_or((0.8, config::DeltaProfile::Linux), |d| (d.max_share.value, d.profile));
        let new_path = self.files.join(&art.name);
        let new_bytes = fs_err::read(&new_path).map_err(io(&new_path))?;
        let delta_opts = crate::delta::CreateOptions {
            profile: match profile {
                config::DeltaProfile::Mcu => crate::delta::Profile::Mcu,
                config::DeltaProfile::Linux => crate::delta::Profile::Linux,
            },
            threads: self.opts.jobs.max(1),
            ..Default::default()
        };
        let created = crate::delta::create(old_bytes, &new_bytes, &delta_opts, self.reporter)
            .map_err(|source| ReleaseError::Delta {
                artifact: art.name.clone(),
                base: base_version.to_owned(),
                source: Box::new(source),
            })?;
        let limit = (new_bytes.len() as f64 * share) as usize;
        if created.bytes.len() >= limit {
            self.state.skipped_deltas.push(format!(
                "{} from {base_version}: {} bytes is not below {:.0} % of {} bytes",
                art.name,
                created.bytes.len(),
                share * 100.0,
                new_bytes.len()
            ));
            return Ok(());
        }
        let name = format!("{}.from-{base_version}.delta", art.name);
        let file = self.write(&self.files.join(&name), &created.bytes)?;
        self.state.deltas.push(DeltaOutput {
            artifact: art.name.clone(),
            base_version: base_version.to_owned(),
            file,
            source_sha256: old.sha256.clone(),
        });
        Ok(())
    }

    /// The IoT Edge deployment manifest, as the Edge stages deploy it.
    fn edge_manifest(&mut self) -> Result<(), ReleaseError> {
        let Some(m) = &self.c.edge_manifest else { return Ok(()) };
        if self.state.edge_manifest.as_ref().is_some_and(|o| o.verifies(&self.files)) {
            return Ok(());
        }
        let bytes = fs_err::read(m).map_err(io(m))?;
        self.state.edge_manifest =
            Some(self.write(&self.files.join("deployment.edge.json"), &bytes)?);
        self.done("edge manifest")
    }

    /// The import manifest.
    fn manifest(&mut self) -> Result<(), ReleaseError> {
        if self.state.manifest.as_ref().is_some_and(|m| m.verifies(&self.files)) {
            return Ok(());
        }
        let u = &self.c.config.update;
        let spec = ManifestSpec {
            update_id: self.c.update_id.clone(),
            description: u.description.clone(),
            deployable: true,
            compatibility: u
                .compatibility
                .value
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect()
                })
                .collect(),
            steps: self.steps(),
            files: self.file_specs(),
            related: self.related(),
            created: self.state.created.clone(),
            template: None,
            jobs: self.opts.jobs.max(1),
        };
        let built = crate::manifest::build(spec, self.reporter)?;
        let bytes = built.manifest.to_json_bytes().map_err(ReleaseError::ManifestJson)?;
        let path = self.files.join(built.manifest.default_file_name());
        self.state.manifest = Some(self.write(&path, &bytes)?);
        self.state.metadata = None;
        self.done("manifest")
    }

    /// One inline step per artifact, with its handler and `installedCriteria`.
    fn steps(&self) -> Vec<StepSpec> {
        let c = self.c;
        c.config
            .artifacts
            .iter()
            .zip(&self.state.artifacts)
            .map(|(a, art)| {
                let handler = a
                    .handler
                    .as_ref()
                    .map(|h| h.value.clone())
                    .or(a.kind.default_handler().map(str::to_owned))
                    .unwrap_or_default();
                let mut props = serde_json::Map::new();
                let criteria = a
                    .installed_criteria
                    .clone()
                    .unwrap_or_else(|| c.update_id.version().as_str().to_owned());
                props.insert("installedCriteria".into(), serde_json::Value::String(criteria));
                if a.kind == config::ArtifactKind::Script {
                    props.insert(
                        "scriptFileName".into(),
                        serde_json::Value::String(art.name.clone()),
                    );
                }
                StepSpec::Inline {
                    handler,
                    files: vec![art.name.clone()],
                    properties: Some(props),
                    description: None,
                }
            })
            .collect()
    }

    /// The artifacts as the manifest's files; one with deltas takes the delta handler.
    fn file_specs(&self) -> Vec<FileSpec> {
        self.state
            .artifacts
            .iter()
            .map(|art| FileSpec {
                path: self.files.join(&art.name),
                download_handler: self
                    .state
                    .deltas
                    .iter()
                    .any(|d| d.artifact == art.name)
                    .then(|| "microsoft/delta:1".to_owned()),
            })
            .collect()
    }

    /// The deltas as related files, each with its base file for the source hash (read from
    /// the base's folder, not uploaded).
    fn related(&self) -> Vec<RelatedSpec> {
        let bases: Vec<(&PathBuf, State)> =
            self.c.bases.iter().filter_map(|b| State::read(b).map(|s| (b, s))).collect();
        self.state
            .deltas
            .iter()
            .map(|d| {
                let suffix = format!("/{}", d.base_version);
                let source = bases.iter().find(|(_, s)| s.update_id.ends_with(&suffix)).and_then(
                    |(b, s)| {
                        let old = s.artifacts.iter().find(|o| o.sha256 == d.source_sha256)?;
                        Some(b.join("files").join(&old.name))
                    },
                );
                RelatedSpec {
                    target: d.artifact.clone(),
                    path: self.files.join(&d.file.name),
                    properties: Vec::new(),
                    source,
                }
            })
            .collect()
    }

    /// Signed release metadata over the files (`release.meta.json`).
    fn metadata(&mut self) -> Result<(), ReleaseError> {
        let c = self.c;
        let Some(signing) = c.config.signing.as_ref().filter(|s| s.metadata) else { return Ok(()) };
        if self.state.metadata.as_ref().is_some_and(|m| m.verifies(&self.dir)) {
            return Ok(());
        }
        let signer = self.signer.as_deref().ok_or(ReleaseError::NoSigner)?;
        let created = crate::time::Timestamp::parse(&self.state.created)?;
        let expires = created.checked_add(c.expires_in).ok_or(ReleaseError::ExpiryOutOfRange)?;
        let mut paths: Vec<PathBuf> =
            self.state.artifacts.iter().map(|a| self.files.join(&a.name)).collect();
        paths.extend(self.state.deltas.iter().map(|d| self.files.join(&d.file.name)));
        let path_refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let release = crate::sign::meta::describe(
            &path_refs,
            c.update_id.version(),
            signing.security_counter,
            created,
            expires,
            &[signer],
        )?;
        let text = crate::sign::meta::sign(&release, &[signer])?;
        self.state.metadata =
            Some(self.write(&self.dir.join("release.meta.json"), text.as_bytes())?);
        self.done("metadata")
    }

    /// The check the real run makes before uploading (`pipeline::check`: the import manifest
    /// against every file it names, in its folder), made here so that a dry run refuses what
    /// the real run would.
    fn verify(&self) -> Result<crate::pipeline::Checked, ReleaseError> {
        let manifest = self.state.manifest.as_ref().ok_or(ReleaseError::NoManifest)?;
        let path = self.files.join(&manifest.name);
        let jobs = self.opts.jobs.max(1);
        match crate::pipeline::check(std::slice::from_ref(&path), jobs, self.reporter) {
            Err(crate::pipeline::PipelineError::Invalid(reports)) => {
                let problems = reports
                    .iter()
                    .flat_map(|r| r.findings.iter())
                    .filter(|f| f.severity == crate::finding::Severity::Error)
                    .map(|f| format!("{}: {}", f.path, f.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(ReleaseError::Tampered { dir: self.dir.clone(), problems })
            }
            r => Ok(r?),
        }
    }
}

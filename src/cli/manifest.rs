//! `otaforge manifest init|validate|templates`: ADU import manifests v5.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::ArgMatches;
use otaforge::Findings;
use otaforge::hash::default_jobs;
use otaforge::manifest::{
    self, FileSpec, ManifestSpec, RelatedSpec, StepSpec, UpdateId, builtin_templates, find_template,
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Outcome, Output};

/// Import manifest commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ManifestCommand {
    /// Write an import manifest v5 (what `az iot du update init v5` does, checked).
    Init(Box<InitArgs>),
    /// Check import manifests against every schema, service and agent rule.
    Validate(ValidateArgs),
    /// List the built-in templates for --template.
    Templates,
}

/// Arguments of `otaforge manifest init`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = INIT_EXAMPLES)]
pub(crate) struct InitArgs {
    /// Update provider, e.g. a company name ([a-zA-Z0-9.-], 1-64).
    #[arg(long)]
    provider: String,
    /// Update name, e.g. a device model ([a-zA-Z0-9.-], 1-64).
    #[arg(long)]
    name: String,
    /// Update version: 2 to 4 numbers, e.g. 1.2.3.
    #[arg(long = "version")]
    update_version: String,
    /// Update description (1-512 characters).
    #[arg(long)]
    description: Option<String>,
    /// Mark the update as a child that can only be installed through a parent.
    #[arg(long)]
    not_deployable: bool,
    /// One compatibility set: key=value[,key=value...]; repeat for more device classes.
    #[arg(long = "compat", value_name = "KEY=VALUE,...", required = true)]
    compat: Vec<String>,
    /// Inline step: handler=H[,files=a;b][,properties=JSON|@file.json][,description=TEXT].
    #[arg(long = "step", value_name = "SPEC")]
    step: Vec<String>,
    /// Reference step to a child update: provider/name/version.
    #[arg(long = "step-ref", value_name = "PROVIDER/NAME/VERSION")]
    step_ref: Vec<String>,
    /// Payload file: PATH[,downloadHandler=ID]; its base name must be in a step's files.
    #[arg(long = "file", value_name = "PATH[,downloadHandler=ID]")]
    file: Vec<String>,
    /// Related file of payload TARGET_NAME: TARGET_NAME=PATH[,source=OLD][,key=value...].
    #[arg(long = "related-file", value_name = "TARGET=PATH[,...]")]
    related_file: Vec<String>,
    /// Start from a template (see `otaforge manifest templates`).
    #[arg(long)]
    template: Option<String>,
    /// createdDateTime: RFC 3339 or Unix seconds (default: SOURCE_DATE_EPOCH, else now).
    #[arg(long)]
    created: Option<String>,
    /// Write the manifest to FILE instead of stdout.
    #[arg(long, short = 'o', conflicts_with = "out_dir")]
    output: Option<PathBuf>,
    /// Write <provider>.<name>.<version>.importmanifest.json into DIR.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

/// Every line under 80 columns, so clap prints them as written and they paste into a shell
/// (the long step is two quoted halves joined by a line continuation).
const INIT_EXAMPLES: &str = "\
Examples:
  otaforge manifest init --provider contoso --name toaster --version 1.2 \\
    --compat manufacturer=contoso,model=toaster \\
    --step 'handler=microsoft/swupdate:2,files=image.swu;install.sh,'\\
'properties={\"installedCriteria\":\"1.2\"}' \\
    --file build/image.swu --file build/install.sh --out-dir build

  otaforge manifest init --provider contoso --name toaster --version 1.2 \\
    --compat manufacturer=contoso,model=toaster --template swupdate \\
    --file image.swu,downloadHandler=otaforge/delta:1 --file install.sh \\
    --related-file image.swu=image-1.1-1.2.delta,source=image-1.1.swu \\
    -o out.importmanifest.json";

/// Arguments of `otaforge manifest validate`.
#[derive(Debug, clap::Args)]
pub(crate) struct ValidateArgs {
    /// Manifests to check; several are also checked together as a parent and its children.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Recompute sizes and hashes of the payload files found in DIR.
    #[arg(long)]
    payload_dir: Option<PathBuf>,
    /// The Device Update agent the devices run (`1.1`, `1.0.2`, `DU;agent/1.1.0`): a step
    /// handler that release does not register becomes an error (every device would fail the
    /// step), not a warning.
    #[arg(long, value_name = "VERSION")]
    agent_version: Option<otaforge::manifest::validate::AgentVersion>,
}

pub(crate) fn run(
    cmd: ManifestCommand,
    matches: Option<&ArgMatches>,
    out: &Output,
) -> anyhow::Result<Outcome> {
    match cmd {
        ManifestCommand::Init(args) => init(*args, matches, out),
        ManifestCommand::Validate(args) => validate(args, out),
        ManifestCommand::Templates => templates(out),
    }
}

/// Splits `a=1,b={"x":1,"y":2},c=3` at the commas that start a new `key=`, outside JSON
/// brackets and quotes, so values may contain commas.
pub(crate) fn split_kv(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let (mut depth, mut in_str, mut escaped) = (0i32, false, false);
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' if depth > 0 => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b',' if depth <= 0 && starts_key(&s[i + 1..]) => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn starts_key(rest: &str) -> bool {
    let Some((key, _)) = rest.split_once('=') else { return false };
    !key.is_empty()
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_compat(s: &str) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    for part in split_kv(s) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--compat '{s}': '{part}' is not key=value"))?;
        if map.insert(k.trim().to_owned(), Value::String(v.trim().to_owned())).is_some() {
            bail!("--compat '{s}': key '{k}' appears twice");
        }
    }
    Ok(map)
}

fn parse_step(s: &str) -> anyhow::Result<StepSpec> {
    let (mut handler, mut files, mut properties, mut description) = (None, Vec::new(), None, None);
    for part in split_kv(s) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--step '{s}': '{part}' is not key=value"))?;
        match k {
            "handler" => handler = Some(v.to_owned()),
            "files" => files = v.split(';').filter(|f| !f.is_empty()).map(str::to_owned).collect(),
            "properties" => {
                properties = Some(parse_properties(v).with_context(|| format!("--step '{s}'"))?)
            }
            "description" | "desc" => description = Some(v.to_owned()),
            other => bail!(
                "--step '{s}': unknown key '{other}' (known: handler, files, properties, description)"
            ),
        }
    }
    let handler = handler.with_context(|| {
        format!("--step '{s}' needs handler=...; for a child update use --step-ref provider/name/version")
    })?;
    Ok(StepSpec::Inline { handler, files, properties, description })
}

fn parse_properties(v: &str) -> anyhow::Result<Map<String, Value>> {
    let (text, origin) = match v.strip_prefix('@') {
        Some(path) => (fs_err::read_to_string(path)?, path.to_owned()),
        None => (v.to_owned(), "properties".to_owned()),
    };
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{origin} is not valid JSON"))?;
    match value {
        Value::Object(map) => Ok(map),
        other => bail!("{origin} must be a JSON object, not {other}"),
    }
}

fn parse_file(s: &str) -> anyhow::Result<FileSpec> {
    let parts = split_kv(s);
    let mut spec = FileSpec { path: PathBuf::from(parts[0]), download_handler: None };
    for part in &parts[1..] {
        match part.split_once('=') {
            Some(("downloadHandler", id)) => spec.download_handler = Some(id.to_owned()),
            _ => bail!("--file '{s}': unknown option '{part}' (known: downloadHandler=ID)"),
        }
    }
    Ok(spec)
}

fn parse_related(s: &str) -> anyhow::Result<RelatedSpec> {
    let parts = split_kv(s);
    let (target, path) = parts[0]
        .split_once('=')
        .with_context(|| format!("--related-file '{s}' must start with TARGET_NAME=PATH"))?;
    let mut spec = RelatedSpec {
        target: target.to_owned(),
        path: path.into(),
        properties: Vec::new(),
        source: None,
    };
    for part in &parts[1..] {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--related-file '{s}': '{part}' is not key=value"))?;
        if k == "source" {
            spec.source = Some(v.into());
        } else {
            spec.properties.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok(spec)
}

/// Inline and reference steps in the order given on the command line.
fn ordered_steps(args: &InitArgs, matches: Option<&ArgMatches>) -> anyhow::Result<Vec<StepSpec>> {
    let indices = |id: &str| -> Vec<usize> {
        matches.and_then(|m| m.indices_of(id)).map(Iterator::collect).unwrap_or_default()
    };
    let mut steps: Vec<(usize, StepSpec)> = Vec::new();
    let step_idx = indices("step");
    for (i, s) in args.step.iter().enumerate() {
        steps.push((step_idx.get(i).copied().unwrap_or(i), parse_step(s)?));
    }
    let ref_idx = indices("step_ref");
    for (i, s) in args.step_ref.iter().enumerate() {
        let update_id: UpdateId = s.parse().with_context(|| format!("--step-ref '{s}'"))?;
        steps.push((
            ref_idx.get(i).copied().unwrap_or(usize::MAX / 2 + i),
            StepSpec::Reference { update_id, description: None },
        ));
    }
    steps.sort_by_key(|(i, _)| *i);
    Ok(steps.into_iter().map(|(_, s)| s).collect())
}

/// Summary printed by `init --format json` when the manifest goes to a file.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Written<'a> {
    file: String,
    update_id: &'a UpdateId,
    size_in_bytes: usize,
    sha256: String,
    notices: &'a [String],
}

fn init(args: InitArgs, matches: Option<&ArgMatches>, out: &Output) -> anyhow::Result<Outcome> {
    let update_id = UpdateId::new(&args.provider, &args.name, &args.update_version)?;
    let compatibility =
        args.compat.iter().map(|c| parse_compat(c)).collect::<anyhow::Result<Vec<_>>>()?;
    let steps = ordered_steps(&args, matches)?;
    let files = args.file.iter().map(|f| parse_file(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let related =
        args.related_file.iter().map(|r| parse_related(r)).collect::<anyhow::Result<Vec<_>>>()?;
    let template = match &args.template {
        Some(name) => Some((name.clone(), find_template(name)?)),
        None => None,
    };
    if steps.is_empty() && template.is_none() {
        bail!(
            "no steps: give --step, --step-ref or --template (see otaforge manifest init --help)"
        );
    }
    let created = manifest::created_date_time(
        args.created.as_deref(),
        otaforge::env::source_date_epoch().as_deref(),
    )?;
    let spec = ManifestSpec {
        update_id,
        description: args.description,
        deployable: !args.not_deployable,
        compatibility,
        steps,
        files,
        related,
        created,
        template,
        jobs: default_jobs(),
    };
    let reporter = out.progress("hashing");
    let built = match manifest::build(spec, &reporter) {
        Ok(b) => b,
        Err(manifest::ManifestError::Invalid(findings)) => {
            drop(reporter);
            out.rejected("the manifest", &findings)?;
            return Ok(Outcome::CheckFailed);
        }
        Err(e) => return Err(e.into()),
    };
    drop(reporter);
    for n in &built.notices {
        out.notice(format!("note: {n}"));
    }
    let bytes = built.manifest.to_json_bytes()?;
    let target = match (&args.output, &args.out_dir) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(dir)) => {
            fs_err::create_dir_all(dir)?;
            Some(dir.join(built.manifest.default_file_name()))
        }
        (None, None) => None,
    };
    match target {
        None => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(&bytes)?;
        }
        Some(path) => {
            otaforge::fsutil::write_output(&path, &bytes, otaforge::fsutil::Privacy::Public)?;
            let out = &out.for_payload(&path);
            if out.json() {
                out.json_value(&Written {
                    file: path.display().to_string(),
                    update_id: &built.manifest.update_id,
                    size_in_bytes: bytes.len(),
                    sha256: otaforge::Sha256::digest(&bytes).to_base64(),
                    notices: &built.notices,
                })?;
            } else {
                out.notice(format!("wrote {} ({})", path.display(), built.manifest.update_id));
            }
        }
    }
    Ok(Outcome::Ok)
}

/// One manifest in `validate --format json` output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_id: Option<String>,
    errors: usize,
    warnings: usize,
    findings: Findings,
}

/// Replaces the version-less agent findings of a manifest with those for agent `v`.
fn agent_findings(
    findings: &mut otaforge::Findings,
    path: &std::path::Path,
    v: otaforge::manifest::validate::AgentVersion,
) {
    use otaforge::manifest::validate::{AGENT_RULES, check_agent_support};
    let Ok(doc) = fs_err::read(path).map(|b| serde_json::from_slice::<serde_json::Value>(&b))
    else {
        return;
    };
    let Ok(doc) = doc else { return };
    findings.retain(|f| !AGENT_RULES.contains(&f.rule));
    findings.extend(check_agent_support(&doc, Some(v)));
}

fn validate(args: ValidateArgs, out: &Output) -> anyhow::Result<Outcome> {
    let checked = match &args.payload_dir {
        Some(_) => {
            let reporter = out.progress("hashing");
            manifest::check_files(
                &args.files,
                args.files.len() > 1,
                &|_| args.payload_dir.clone(),
                default_jobs(),
                &reporter,
            )?
        }
        None => manifest::check_files(
            &args.files,
            args.files.len() > 1,
            &|_| None,
            default_jobs(),
            &otaforge::NoReporter,
        )?,
    };
    let mut reports = Vec::new();
    for c in checked {
        let mut findings = c.findings();
        if let Some(v) = args.agent_version {
            agent_findings(&mut findings, &c.checked.path, v);
        }
        let errors = findings.error_count();
        reports.push(Report {
            file: c.checked.path.display().to_string(),
            valid: errors == 0,
            update_id: c.checked.manifest.map(|m| m.update_id.to_string()),
            errors,
            warnings: findings.len() - errors,
            findings,
        });
    }
    let failed = reports.iter().any(|r| !r.valid);
    if out.json() {
        out.json_value(&reports)?;
    } else {
        for r in &reports {
            let status = if r.valid { "ok" } else { "INVALID" };
            let id = r.update_id.as_deref().map(|i| format!(" ({i})")).unwrap_or_default();
            out.line(format!(
                "{status}: {}{id}: {} errors, {} warnings",
                r.file, r.errors, r.warnings
            ))?;
            out.finding_lines(&r.findings)?;
        }
    }
    Ok(if failed { Outcome::CheckFailed } else { Outcome::Ok })
}

fn templates(out: &Output) -> anyhow::Result<Outcome> {
    #[derive(Serialize)]
    struct Entry {
        name: &'static str,
        summary: String,
    }
    let mut entries = Vec::new();
    for (name, t) in builtin_templates() {
        let t = t.with_context(|| format!("built-in template {name} is broken"))?;
        entries.push(Entry { name, summary: t.summary });
    }
    if out.json() {
        out.json_value(&entries)?;
    } else {
        for e in entries {
            out.line(format!("{:<10} {}", e.name, e.summary))?;
        }
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_split_keeps_json_and_prose_together() {
        let s = r#"handler=microsoft/script:1,files=a.sh;b.bin,properties={"arguments":"-a,-b","n":[1,2]},description=Install, then reboot"#;
        assert_eq!(
            split_kv(s),
            vec![
                "handler=microsoft/script:1",
                "files=a.sh;b.bin",
                r#"properties={"arguments":"-a,-b","n":[1,2]}"#,
                "description=Install, then reboot",
            ]
        );
    }

    #[test]
    fn steps_parse() {
        let step = parse_step(r#"handler=microsoft/apt:1,files=apt.json,desc=pkgs"#).unwrap();
        assert_eq!(
            step,
            StepSpec::Inline {
                handler: "microsoft/apt:1".into(),
                files: vec!["apt.json".into()],
                properties: None,
                description: Some("pkgs".into())
            }
        );
        let err = parse_step("files=a.sh").unwrap_err().to_string();
        assert!(err.contains("needs handler"), "{err}");
        let err = parse_step("handler=a/b:1,colour=red").unwrap_err().to_string();
        assert!(err.contains("unknown key 'colour'"), "{err}");
    }

    #[test]
    fn related_files_parse() {
        let r = parse_related("image.swu=d/x.delta,source=old.swu,note=a,b").unwrap();
        assert_eq!(r.target, "image.swu");
        assert_eq!(r.path, PathBuf::from("d/x.delta"));
        assert_eq!(r.source, Some(PathBuf::from("old.swu")));
        assert_eq!(r.properties, vec![("note".to_owned(), "a,b".to_owned())]);
    }
}

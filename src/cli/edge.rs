//! `otaforge edge`: IoT Edge deployment manifests (build from a template, validate), target
//! conditions and routes (check, and evaluate conditions against twins). See
//! `otaforge::edge`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use otaforge::edge::manifest::{self, Kind};
use otaforge::edge::route::Route;
use otaforge::fsutil::Privacy;
use otaforge::iothub::condition::Target;
use serde::Serialize;
use serde_json::Value;

use super::args::HubArgs;
use super::{Outcome, Output};

mod status;

// Examples: every line under 80 columns, so clap prints them as written and they paste into a
// shell.
const BUILD_EXAMPLE: &str = "\
Example:
  otaforge edge manifest build deployment.template.json --env-file .env \\
    --image filter=contoso.azurecr.io/filter:1.4.2 -o deployment.json";

const WHAT_IF_EXAMPLE: &str = "\
Examples:
  otaforge edge what-if --twins twins.json --configurations deployments.json \\
    --delete prod-base-2
  otaforge edge what-if --iothub-connection-file data/iothub.connection-string \\
    --update fallback --target-condition \"tags.environment='test'\"";

const CREATE_EXAMPLE: &str = "\
Example:
  otaforge edge deploy create prod-base-2 --content deployment.json \\
    --target-condition \"tags.environment='prod'\" --priority 10";

/// `otaforge edge ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EdgeCommand {
    /// Build and validate deployment manifests.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Check a target condition; with --twin, list the twins it targets (exit 1 if it does not
    /// parse).
    Condition(ConditionArgs),
    /// Check an edgeHub route as the runtime compiles it (exit 1 if it does not).
    Route(RouteArgs),
    /// What a change to the Edge deployments would do: every device whose base deployment or
    /// layers would change, from what to what, and the devices left unmanaged. Reads twins and
    /// configurations (as `az iot hub query` and `az iot edge deployment list` write them);
    /// changes nothing.
    #[command(name = "what-if", after_help = WHAT_IF_EXAMPLE)]
    WhatIf(WhatIfArgs),
    /// Edge deployments on IoT Hub (configurations): create, list, show, update, delete.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// One IoT Edge device: the deployments that target it, which apply (base and layers),
    /// and the desired state they merge into.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Set a device's modules directly (az iot edge set-modules): the whole manifest becomes
    /// its desired state until its at-scale deployments change. Validated before it is sent.
    #[command(name = "set-modules")]
    SetModules(SetModulesArgs),
}

/// `otaforge edge set-modules`.
#[derive(Debug, clap::Args)]
pub(crate) struct SetModulesArgs {
    /// The IoT Edge device.
    device: String,
    /// The deployment manifest (`{"modulesContent": ...}` or a configuration with `content`).
    #[arg(long)]
    content: PathBuf,
    #[command(flatten)]
    hub: HubArgs,
}

/// `otaforge edge device ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeviceCommand {
    /// Which deployments target and apply to a device, and its merged desired modules and
    /// routes.
    Show(IdArgs),
}

/// `otaforge edge deploy ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeployCommand {
    /// Create a deployment: the manifest is validated and the id and condition checked before
    /// anything is sent.
    #[command(after_help = CREATE_EXAMPLE)]
    Create(CreateArgs),
    /// List the deployments with their targeted and applied counts.
    List(HubOnly),
    /// One deployment: metrics (system and custom) and its settings.
    Show(IdArgs),
    /// The devices behind each metric of a deployment (system and custom), and each applied
    /// device's state (pending, succeeded, failed, module failed, invalid) with the modules
    /// that are not as desired; --watch follows it until every device has reported.
    Status(status::StatusArgs),
    /// Change what may change: target condition, priority, labels, metrics (content cannot).
    Update(UpdateArgs),
    /// Delete a deployment (devices fall back to their next one; modules stay otherwise).
    Delete(IdArgs),
}

/// Only the hub.
#[derive(Debug, clap::Args)]
pub(crate) struct HubOnly {
    #[command(flatten)]
    hub: HubArgs,
}

/// A deployment id and the hub.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    /// The deployment id.
    id: String,
    #[command(flatten)]
    hub: HubArgs,
}

/// `otaforge edge deploy create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The deployment id (1-128 lower-case letters, digits and - : + % _ # * ? ! ( ) , = @ ; ').
    id: String,
    /// The deployment manifest ({"modulesContent": …}).
    #[arg(long, value_name = "FILE")]
    content: PathBuf,
    /// Which devices: a target condition, `*` for every Edge device.
    #[arg(long)]
    target_condition: String,
    /// Higher wins.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// A layered deployment (dot-path content, applied above the base).
    #[arg(long)]
    layered: bool,
    /// A custom metric: NAME=SELECT deviceId FROM devices WHERE … (at most 5).
    #[arg(long, value_name = "NAME=QUERY")]
    metric: Vec<String>,
    /// A label: KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    label: Vec<String>,
    #[command(flatten)]
    hub: HubArgs,
}

/// `otaforge edge deploy update`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpdateArgs {
    /// The deployment id.
    id: String,
    /// A new target condition.
    #[arg(long)]
    target_condition: Option<String>,
    /// A new priority.
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i64>,
    /// Labels to set: KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Custom metrics to set: NAME=QUERY.
    #[arg(long, value_name = "NAME=QUERY")]
    metric: Vec<String>,
    #[command(flatten)]
    hub: HubArgs,
}

/// `otaforge edge what-if`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("change").required(true).args(["create", "update", "delete"]))]
pub(crate) struct WhatIfArgs {
    /// Device twins: a JSON array (or one twin); without it, read from the hub.
    #[arg(long, value_name = "FILE", requires = "configurations")]
    twins: Option<PathBuf>,
    /// The deployments now: a JSON array of IoT Hub configurations; without it, read from
    /// the hub.
    #[arg(long, value_name = "FILE", requires = "twins")]
    configurations: Option<PathBuf>,
    /// Creating this configuration (a JSON file: id, targetCondition, priority, content).
    #[arg(long, value_name = "FILE")]
    create: Option<PathBuf>,
    /// Updating this deployment's --target-condition and/or --priority.
    #[arg(long, value_name = "ID")]
    update: Option<String>,
    /// Deleting this deployment.
    #[arg(long, value_name = "ID")]
    delete: Option<String>,
    /// The new target condition (with --update).
    #[arg(long, requires = "update")]
    target_condition: Option<String>,
    /// The new priority (with --update).
    #[arg(long, requires = "update", allow_negative_numbers = true)]
    priority: Option<i64>,
    #[command(flatten)]
    hub: HubArgs,
}

/// `otaforge edge manifest ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ManifestCommand {
    /// Build a deployment manifest from a deployment.template.json: ${VAR} from --env-file and
    /// the environment, ${MODULES.NAME} from --image, createOptions objects serialized and cut
    /// into the runtime's 512-character pieces.
    #[command(after_help = BUILD_EXAMPLE)]
    Build(BuildArgs),
    /// Validate deployment manifests as IoT Hub and the Edge runtime read them: every problem
    /// with its JSON path (exit 1 if any manifest has an error).
    Validate(ValidateArgs),
}

/// `otaforge edge manifest build`.
#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// The template.
    template: PathBuf,
    /// Where to write the manifest (`-` for stdout).
    #[arg(short, long)]
    output: PathBuf,
    /// NAME=value lines (`#` comments, blank lines); the environment fills what it lacks.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// The image of a module for ${MODULES.NAME} (or NAME.PLATFORM): NAME=REFERENCE.
    #[arg(long, value_name = "NAME=REF")]
    image: Vec<String>,
}

/// `otaforge edge manifest validate`.
#[derive(Debug, clap::Args)]
pub(crate) struct ValidateArgs {
    /// Manifests (`{"modulesContent": …}`, or a configuration with `content`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// They are layered deployments (dot paths: properties.desired.modules.NAME, …).
    #[arg(long)]
    layered: bool,
}

/// `otaforge edge condition`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConditionArgs {
    /// The target condition, e.g. "tags.environment='prod' AND properties.reported.fw >= 2".
    condition: String,
    /// Twins to evaluate it on: JSON files, each a twin or an array of twins.
    #[arg(long, value_name = "FILE")]
    twin: Vec<PathBuf>,
}

/// `otaforge edge route`.
#[derive(Debug, clap::Args)]
pub(crate) struct RouteArgs {
    /// The route, e.g. "FROM /messages/modules/filter/outputs/* INTO $upstream".
    route: String,
}

pub(crate) fn run(
    cmd: EdgeCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    match cmd {
        EdgeCommand::Manifest(ManifestCommand::Build(a)) => build(a, out),
        EdgeCommand::Manifest(ManifestCommand::Validate(a)) => validate(a, out),
        EdgeCommand::Condition(a) => condition(a, out),
        EdgeCommand::Route(a) => route(a, out),
        EdgeCommand::WhatIf(a) => what_if(a, rt, out),
        EdgeCommand::Deploy(c) => deploy(c, rt, out),
        EdgeCommand::Device(DeviceCommand::Show(a)) => device_show(a, rt, out),
        EdgeCommand::SetModules(a) => set_modules(a, rt, out),
    }
}

/// NAME=value lines of an env file.
fn env_file(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = fs_err::read_to_string(path)?;
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .with_context(|| format!("{}:{}: not NAME=value", path.display(), n + 1))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        vars.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(vars)
}

fn build(a: BuildArgs, out: &Output) -> anyhow::Result<Outcome> {
    let template = fs_err::read_to_string(&a.template)?;
    let file_vars = match &a.env_file {
        Some(p) => env_file(p)?,
        None => BTreeMap::new(),
    };
    let mut images = BTreeMap::new();
    for i in &a.image {
        let (k, v) =
            i.split_once('=').with_context(|| format!("--image `{i}` is not NAME=REFERENCE"))?;
        images.insert(k.to_owned(), v.to_owned());
    }
    let vars = |name: &str| file_vars.get(name).cloned().or_else(|| std::env::var(name).ok());
    let (doc, warnings) = manifest::build(&template, &vars, &images)
        .with_context(|| format!("{} cannot be built", a.template.display()))?;
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    // Built manifests hold registry passwords: written private.
    otaforge::fsutil::write_output(&a.output, text.as_bytes(), Privacy::Private)?;
    let mut findings = manifest::validate(text.as_bytes(), Kind::Base)?;
    findings.extend(warnings);
    let errors = findings.error_count();
    if out.json() {
        out.json_value(&Report {
            file: a.output.display().to_string(),
            valid: errors == 0,
            errors,
            warnings: findings.len() - errors,
            findings: findings.clone(),
        })?;
    } else {
        out.notice(format!("wrote {}", a.output.display()));
        out.finding_lines(&findings)?;
    }
    Ok(if errors > 0 { Outcome::CheckFailed } else { Outcome::Ok })
}

/// One manifest in `--format json` output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    file: String,
    valid: bool,
    errors: usize,
    warnings: usize,
    findings: otaforge::Findings,
}

fn validate(a: ValidateArgs, out: &Output) -> anyhow::Result<Outcome> {
    let kind = if a.layered { Kind::Layered } else { Kind::Base };
    let mut reports = Vec::new();
    for f in &a.files {
        let bytes = fs_err::read(f)?;
        let findings = manifest::validate(&bytes, kind)
            .with_context(|| format!("{} is not a manifest", f.display()))?;
        let errors = findings.error_count();
        reports.push(Report {
            file: f.display().to_string(),
            valid: errors == 0,
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
            out.line(format!(
                "{status}: {}: {} errors, {} warnings",
                r.file, r.errors, r.warnings
            ))?;
            out.finding_lines(&r.findings)?;
        }
    }
    Ok(if failed { Outcome::CheckFailed } else { Outcome::Ok })
}

/// A condition or route that does not parse: the position, with a caret under it.
fn refused(out: &Output, text: &str, position: usize, message: &str) -> anyhow::Result<Outcome> {
    if out.json() {
        out.json_value(
            &serde_json::json!({"valid": false, "position": position, "message": message}),
        )?;
    } else {
        out.line(format!("INVALID at position {position}: {message}"))?;
        out.line(format!("  {}", manifest::caret(text, position).replace('\n', "\n  ")))?;
    }
    Ok(Outcome::CheckFailed)
}

fn condition(a: ConditionArgs, out: &Output) -> anyhow::Result<Outcome> {
    let target = match Target::parse(&a.condition) {
        Ok(t) => t,
        Err(e) => return refused(out, &a.condition, e.position, &e.message),
    };
    let mut twins = Vec::new();
    for p in &a.twin {
        let v: Value = serde_json::from_slice(&fs_err::read(p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?;
        match v {
            Value::Array(list) => twins.extend(list),
            one => twins.push(one),
        }
    }
    let started = std::time::Instant::now();
    let hits: Vec<&Value> = twins.iter().filter(|t| target.matches(t)).collect();
    let seconds = started.elapsed().as_secs_f64();
    let targeted: Vec<String> =
        hits.iter().map(|t| t["deviceId"].as_str().unwrap_or("?").to_owned()).collect();
    if out.json() {
        out.json_value(&serde_json::json!({
            "valid": true, "twins": twins.len(), "targeted": targeted,
            "evaluationSeconds": seconds,
        }))?;
    } else if a.twin.is_empty() {
        out.line("ok")?;
    } else {
        out.line(format!("{} of {} twins targeted", targeted.len(), twins.len()))?;
        for d in &targeted {
            out.line(format!("  {d}"))?;
        }
    }
    Ok(Outcome::Ok)
}

fn route(a: RouteArgs, out: &Output) -> anyhow::Result<Outcome> {
    let r = match Route::parse(&a.route) {
        Ok(r) => r,
        Err(e) => return refused(out, &a.route, e.position, &e.message),
    };
    let warnings: Vec<String> =
        r.warnings.iter().map(|w| format!("position {}: {}", w.position, w.message)).collect();
    if out.json() {
        out.json_value(&serde_json::json!({
            "valid": true,
            "sourceModule": r.source_module(),
            "sinkModule": r.sink_module(),
            "warnings": warnings,
        }))?;
    } else {
        out.line("ok")?;
        for w in &warnings {
            out.line(format!("  warning: {w}"))?;
        }
    }
    Ok(Outcome::Ok)
}

fn json_list(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let v: Value = serde_json::from_slice(&fs_err::read(path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(match v {
        Value::Array(list) => list,
        one => vec![one],
    })
}

/// Configurations from a file: one, or a list.
fn configurations(
    path: &std::path::Path,
) -> anyhow::Result<Vec<otaforge::iothub::config::Configuration>> {
    json_list(path)?
        .into_iter()
        .map(|c| {
            serde_json::from_value(c)
                .with_context(|| format!("{}: not a list of configurations", path.display()))
        })
        .collect()
}

fn what_if(a: WhatIfArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    use otaforge::edge::assign::{self, Change, Deployment};
    let (twins, configs, source) = match (&a.twins, &a.configurations) {
        (Some(t), Some(c)) => (json_list(t)?, configurations(c)?, c.display().to_string()),
        _ => {
            // Read, never write: twins and configurations as the hub has them.
            let hub = a.hub.client(out)?;
            let (twins, configs) = rt.block_on(async {
                let twins = hub.query_twins("SELECT * FROM devices").await?;
                let configs = hub.list_configurations(100).await?;
                Ok::<_, otaforge::iothub::IotHubError>((twins, configs))
            })?;
            let twins = twins.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?;
            let configs = configs.into_iter().filter(|c| c.is_edge()).collect();
            (twins, configs, "the hub".to_owned())
        }
    };
    let mut deployments = Vec::new();
    for c in configs {
        let d = Deployment::from_configuration(&c)
            .with_context(|| format!("{source}: deployment {}: target condition", c.id))?;
        deployments.push(d);
    }
    let change = if let Some(f) = &a.create {
        let c: otaforge::iothub::config::Configuration = serde_json::from_slice(&fs_err::read(f)?)
            .with_context(|| format!("{} is not a configuration", f.display()))?;
        let mut d = Deployment::from_configuration(&c)
            .with_context(|| format!("{}: targetCondition", f.display()))?;
        if d.created.is_empty() {
            // Not created yet: it would be the newest.
            d.created = "9999-12-31T23:59:59Z".into();
        }
        Change::Create(d)
    } else if let Some(id) = &a.update {
        let target = match &a.target_condition {
            Some(t) => {
                Some(Target::parse(t).map_err(|e| anyhow::anyhow!("--target-condition: {e}"))?)
            }
            None => None,
        };
        Change::Update { id: id.clone(), target, priority: a.priority }
    } else {
        Change::Delete(a.delete.clone().unwrap_or_default())
    };
    let started = std::time::Instant::now();
    let diff = assign::what_if(&twins, &deployments, &change).map_err(anyhow::Error::msg)?;
    let seconds = started.elapsed().as_secs_f64();
    let unmanaged = diff.iter().filter(|d| d.left_unmanaged).count();
    if out.json() {
        out.json_value(&serde_json::json!({
            "twins": twins.len(), "deployments": deployments.len(), "changed": diff.len(),
            "leftUnmanaged": unmanaged, "seconds": seconds, "devices": diff,
        }))?;
    } else {
        let show = |x: &assign::Assignment| {
            let mut s = x.base.clone().unwrap_or_else(|| "(unmanaged)".into());
            for l in &x.layers {
                s.push_str(&format!(" + {l}"));
            }
            s
        };
        out.line(format!(
            "{} of {} devices would change ({unmanaged} left unmanaged)",
            diff.len(),
            twins.len()
        ))?;
        for d in &diff {
            out.line(format!("  {}: {} -> {}", d.device_id, show(&d.before), show(&d.after)))?;
        }
    }
    Ok(Outcome::Ok)
}

fn pairs(list: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    list.iter()
        .map(|p| {
            let (k, v) =
                p.split_once('=').with_context(|| format!("--{what} `{p}` is not NAME=VALUE"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Checks a target condition before it is sent; the error names the position.
fn condition_ok(c: &str) -> anyhow::Result<()> {
    Target::parse(c).map(drop).map_err(|e| {
        anyhow::anyhow!(
            "--target-condition: {e}\n  {}",
            manifest::caret(c, e.position).replace('\n', "\n  ")
        )
    })
}

fn metrics_ok(metrics: &BTreeMap<String, String>) -> anyhow::Result<()> {
    use otaforge::iothub::config::MAX_CUSTOM_METRICS;
    anyhow::ensure!(
        metrics.len() <= MAX_CUSTOM_METRICS,
        "{} metrics: a deployment has at most {MAX_CUSTOM_METRICS}",
        metrics.len()
    );
    Ok(())
}

fn show_config(out: &Output, c: &otaforge::iothub::config::Configuration) -> anyhow::Result<()> {
    if out.json() {
        return out.json_value(c);
    }
    let layered = c
        .modules_content()
        .and_then(|m| m.get("$edgeAgent"))
        .and_then(Value::as_object)
        .is_some_and(|a| !a.contains_key("properties.desired"));
    out.line(format!(
        "{}  priority {}{}  target: {}",
        c.id,
        c.priority,
        if layered { " (layered)" } else { "" },
        if c.target_condition.is_empty() { "(none)" } else { &c.target_condition }
    ))?;
    for (k, v) in &c.system_metrics.results {
        out.line(format!("  {k:<24} {v}"))?;
    }
    for (k, v) in &c.metrics.results {
        out.line(format!("  {k:<24} {v}  (custom)"))?;
    }
    Ok(())
}

fn deploy(
    cmd: DeployCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    use otaforge::iothub::config::{Configuration, check_id};
    match cmd {
        DeployCommand::Create(a) => {
            check_id(&a.id).map_err(anyhow::Error::msg)?;
            condition_ok(&a.target_condition)?;
            let metrics = pairs(&a.metric, "metric")?;
            metrics_ok(&metrics)?;
            let bytes = fs_err::read(&a.content)?;
            let kind = if a.layered { Kind::Layered } else { Kind::Base };
            let findings = manifest::validate(&bytes, kind)
                .with_context(|| format!("{} is not a manifest", a.content.display()))?;
            if findings.has_errors() {
                out.rejected(&format!("deployment {}", a.id), &findings)?;
                return Ok(Outcome::CheckFailed);
            }
            let doc: Value = serde_json::from_slice(&bytes)?;
            let content = match doc.get("content") {
                Some(c) => c.clone(),
                None => doc,
            };
            let c = Configuration {
                id: a.id.clone(),
                schema_version: Some("1.0".into()),
                labels: pairs(&a.label, "label")?,
                content: content.as_object().cloned().unwrap_or_default(),
                target_condition: a.target_condition.clone(),
                priority: a.priority,
                metrics: otaforge::iothub::config::Metrics {
                    queries: metrics,
                    results: BTreeMap::new(),
                },
                ..Default::default()
            };
            let hub = a.hub.client(out)?;
            let made = rt.block_on(hub.put_configuration(&c, None))?;
            show_config(out, &made)?;
        }
        DeployCommand::List(a) => {
            let hub = a.hub.client(out)?;
            let all = rt.block_on(hub.list_configurations(100))?;
            let edge: Vec<_> = all.into_iter().filter(Configuration::is_edge).collect();
            if out.json() {
                out.json_value(&edge)?;
            } else {
                for c in &edge {
                    show_config(out, c)?;
                }
            }
        }
        DeployCommand::Status(a) => return status::run(a, rt, out),
        DeployCommand::Show(a) => {
            let hub = a.hub.client(out)?;
            show_config(out, &rt.block_on(hub.get_configuration(&a.id))?)?;
        }
        DeployCommand::Update(a) => {
            if let Some(t) = &a.target_condition {
                condition_ok(t)?;
            }
            let hub = a.hub.client(out)?;
            let mut c = rt.block_on(hub.get_configuration(&a.id))?;
            if let Some(t) = a.target_condition {
                c.target_condition = t;
            }
            if let Some(p) = a.priority {
                c.priority = p;
            }
            c.labels.extend(pairs(&a.label, "label")?);
            c.metrics.queries.extend(pairs(&a.metric, "metric")?);
            metrics_ok(&c.metrics.queries)?;
            let etag = c.etag.clone();
            let made = rt.block_on(hub.put_configuration(&c, etag.as_deref()))?;
            show_config(out, &made)?;
        }
        DeployCommand::Delete(a) => {
            let hub = a.hub.client(out)?;
            rt.block_on(hub.delete_configuration(&a.id, None))?;
            out.notice(format!("deleted {}", a.id));
            if out.json() {
                out.json_value(&serde_json::json!({"deleted": a.id}))?;
            }
        }
    }
    Ok(Outcome::Ok)
}

fn device_show(a: IdArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    use otaforge::edge::agent::{AgentDesired, AgentReported, HubDesired};
    use otaforge::edge::assign::{Deployment, Plan, merged};
    let hub = a.hub.client(out)?;
    let (twin, configs, agent) = rt.block_on(async {
        let twin = hub.get_twin(&a.id).await?;
        let configs = hub.list_configurations(100).await?;
        // A device that is not an Edge device, or a hub without module twins, has none.
        let agent = hub.get_module_twin(&a.id, "$edgeAgent").await.ok();
        Ok::<_, otaforge::iothub::IotHubError>((twin, configs, agent))
    })?;
    let (state, problems) = match &agent {
        Some(t) => {
            let (s, p) = otaforge::edge::state::of_twin(t);
            (Some(s), p)
        }
        None => (None, Vec::new()),
    };
    let reported = agent.as_ref().map(|t| AgentReported::of(&t.properties.reported));
    let edge: Vec<&otaforge::iothub::config::Configuration> =
        configs.iter().filter(|c| c.is_edge()).collect();
    let mut deployments = Vec::new();
    for c in &edge {
        deployments.push(
            Deployment::from_configuration(c)
                .with_context(|| format!("deployment {}: target condition", c.id))?,
        );
    }
    let iot_edge = twin.is_edge();
    let twin = serde_json::to_value(&twin)?;
    let assignment = Plan::new(&deployments).assign(&twin);
    let targeted: Vec<Value> = otaforge::edge::assign::statuses(&deployments, &assignment, &twin)
        .into_iter()
        .map(|(d, status)| {
            serde_json::json!({
                "id": d.id, "priority": d.priority, "layered": d.layered,
                "status": status.as_str(),
            })
        })
        .collect();
    let contents: Vec<(&str, Value)> = edge
        .iter()
        .filter_map(|c| Some((c.id.as_str(), Value::Object(c.modules_content()?.clone()))))
        .collect();
    let order: Vec<&Value> = assignment
        .base
        .iter()
        .chain(assignment.layers.iter())
        .filter_map(|id| contents.iter().find(|(c, _)| c == id).map(|(_, mc)| mc))
        .collect();
    let desired = merged(&order);
    if out.json() {
        let problems: Vec<Value> =
            problems.iter().map(|(m, w)| serde_json::json!({"module": m, "why": w})).collect();
        out.json_value(&serde_json::json!({
            "deviceId": a.id, "iotEdge": iot_edge, "base": assignment.base,
            "layers": assignment.layers, "targeted": targeted, "desired": desired,
            "state": state.map(otaforge::edge::state::DeviceState::name),
            "reported": reported.as_ref().map(|r| &r.modules), "problems": problems,
        }))?;
        return Ok(Outcome::Ok);
    }
    if !iot_edge {
        out.line(format!("{}: not an IoT Edge device (capabilities.iotEdge is not true); Edge deployments do not target it", a.id))?;
        return Ok(Outcome::Ok);
    }
    match &assignment.base {
        Some(b) => out.line(format!(
            "{}: base {b}{}",
            a.id,
            assignment.layers.iter().map(|l| format!(" + {l}")).collect::<String>()
        ))?,
        None => {
            out.line(format!("{}: unmanaged (no deployment applies; it keeps its modules)", a.id))?
        }
    }
    for (d, status) in otaforge::edge::assign::statuses(&deployments, &assignment, &twin) {
        out.line(format!(
            "  {:<10} {} (priority {}{})",
            status.as_str(),
            d.id,
            d.priority,
            if d.layered { ", layered" } else { "" }
        ))?;
    }
    let section = |module: &str| desired.get(module).and_then(Value::as_object).cloned();
    let agent = AgentDesired::of(&section("$edgeAgent").unwrap_or_default());
    for (name, m) in agent.user_modules() {
        let now = match reported.as_ref().and_then(|r| r.module(name)) {
            Some(r) => format!(
                "; reported {}, {}",
                r.runtime_status(),
                r.settings.image.as_deref().unwrap_or("?")
            ),
            None => "; not reported".to_owned(),
        };
        out.line(format!(
            "  module {name}: {} ({}{now})",
            m.settings.image.as_deref().unwrap_or("?"),
            m.desired_status()
        ))?;
    }
    if let Some(s) = state {
        out.line(format!("  state: {}", s.name()))?;
        for (m, why) in &problems {
            out.line(format!("    {m}: {why}"))?;
        }
    }
    for (name, r) in HubDesired::of(&section("$edgeHub").unwrap_or_default()).routes {
        out.line(format!("  route {name}: {}", r.text()))?;
    }
    Ok(Outcome::Ok)
}

fn set_modules(
    a: SetModulesArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    let bytes = fs_err::read(&a.content)?;
    let findings = manifest::validate(&bytes, Kind::Base)
        .with_context(|| format!("{} is not a manifest", a.content.display()))?;
    if findings.has_errors() {
        out.rejected(&format!("modules of {}", a.device), &findings)?;
        return Ok(Outcome::CheckFailed);
    }
    let doc: Value = serde_json::from_slice(&bytes)?;
    let content = doc.get("content").unwrap_or(&doc);
    let modules = content.get("modulesContent").cloned().unwrap_or(Value::Null);
    let hub = a.hub.client(out)?;
    rt.block_on(hub.apply_configuration_content(&a.device, &modules))?;
    out.notice(format!("set the modules of {}", a.device));
    if out.json() {
        out.json_value(&serde_json::json!({"deviceId": a.device, "applied": true}))?;
    }
    Ok(Outcome::Ok)
}

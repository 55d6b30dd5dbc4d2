//! Contexts, as `az` and `kubectl` have them: named sets of connection settings (a Device
//! Update endpoint and instance and how to authenticate to it, an IoT Hub, the update root key
//! devices trust), kept in `contexts.json` in the user's config directory
//! (`$XDG_CONFIG_HOME/otaforge/`, else `~/.config/otaforge/`), mode 0600 because a context may
//! hold serve's token.
//!
//! `otaforge serve` records one for itself and makes it current; `otaforge context set` writes
//! one for a real instance and hub. A command that connects takes what its flags leave out from
//! the context `--context NAME` or `$OTAFORGE_CONTEXT` names, else from the current one; flags
//! that name the service themselves keep the current context out (see `super::args`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Failure, Outcome, Output};
use otaforge::storage::azure::EntraSource;

/// Where a Microsoft Entra ID credential comes from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum EntraArg {
    /// `az login` / `azd auth login`.
    Cli,
    /// The machine's managed identity.
    ManagedIdentity,
    /// Workload identity federation (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE).
    WorkloadIdentity,
}

impl From<EntraArg> for EntraSource {
    fn from(e: EntraArg) -> Self {
        match e {
            EntraArg::Cli => EntraSource::DeveloperTools,
            EntraArg::ManagedIdentity => EntraSource::ManagedIdentity,
            EntraArg::WorkloadIdentity => EntraSource::WorkloadIdentity,
        }
    }
}

/// The file, in the config directory.
const FILE: &str = "contexts.json";

/// The name `otaforge serve` records its context under when `--context` does not give one.
pub(crate) const SERVE_DEFAULT: &str = "local";

/// What `contexts.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Contexts {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<String>,
    /// Every context by name.
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
    /// Fields a later version wrote, kept.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// One context: where a Device Update instance and its IoT Hub are, and how to reach them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Context {
    /// The Device Update endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) endpoint: Option<String>,
    /// The instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) instance: Option<String>,
    /// The bearer token for the endpoint (serve's `--token`): a secret, never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) adu_token: Option<String>,
    /// Microsoft Entra ID for the endpoint (Azure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) adu_entra: Option<EntraArg>,
    /// A file holding the hub's service connection string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iothub_connection_file: Option<PathBuf>,
    /// The hub's host name, with `iothub_entra`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iothub_host: Option<String>,
    /// Microsoft Entra ID for the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iothub_entra: Option<EntraArg>,
    /// The update root key(s) (JWK) simulated devices trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) root_key: Option<PathBuf>,
    /// The CA certificate of serve's MQTT endpoint, which simulated devices trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt_ca: Option<PathBuf>,
    /// Fields a later version wrote, kept.
    #[serde(flatten)]
    pub(crate) extra: Map<String, Value>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Context({})", self.shown())
    }
}

impl Context {
    /// The context as it may be printed: the token redacted.
    fn shown(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if self.adu_token.is_some() {
            v["aduToken"] = Value::from("REDACTED");
        }
        v
    }
}

/// A context a command uses.
#[derive(Debug, Clone)]
pub(crate) struct Chosen {
    /// Its settings.
    pub(crate) context: Context,
    /// The user named it (`--context`, `$OTAFORGE_CONTEXT`) rather than it being current.
    pub(crate) named: bool,
}

/// The directory contexts live in: `$XDG_CONFIG_HOME/otaforge`, else `$HOME/.config/otaforge`.
pub(crate) fn config_dir() -> anyhow::Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = var(otaforge::env::XDG_CONFIG_HOME) {
        return Ok(xdg.join("otaforge"));
    }
    let home = var(otaforge::env::HOME).with_context(|| {
        format!(
            "no config directory: set {} or {} to an absolute path",
            otaforge::env::XDG_CONFIG_HOME,
            otaforge::env::HOME
        )
    })?;
    Ok(home.join(".config").join("otaforge"))
}

fn load_from(path: &Path) -> anyhow::Result<Contexts> {
    match fs_err::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a contexts file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
        Err(e) => Err(e.into()),
    }
}

fn load() -> anyhow::Result<Contexts> {
    load_from(&config_dir()?.join(FILE))
}

/// Writes the file: a private directory, the file itself 0600, replaced atomically.
fn save(all: &Contexts) -> anyhow::Result<PathBuf> {
    let dir = config_dir()?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(FILE);
    let mut text = serde_json::to_string_pretty(all)?;
    text.push('\n');
    // A new temp file is 0600 and the rename keeps that, whatever mode an older file had.
    otaforge::fsutil::write_atomic(&path, text.as_bytes(), true)?;
    Ok(path)
}

/// The context name the user gave: `--context`, else `$OTAFORGE_CONTEXT`.
fn named(out: &Output) -> Option<String> {
    out.globals()
        .context
        .clone()
        .or_else(|| std::env::var(otaforge::env::OTAFORGE_CONTEXT).ok())
        .filter(|n| !n.is_empty())
}

/// The context a command uses: the one the user named (an error when there is none of that
/// name); else, unless `flags_name_service`, the current one; else none. The file is read only
/// when a context can apply.
pub(crate) fn choose(out: &Output, flags_name_service: bool) -> anyhow::Result<Option<Chosen>> {
    if let Some(name) = named(out) {
        let mut all = load()?;
        let Some(context) = all.contexts.remove(&name) else {
            bail!("no context named `{name}` (`otaforge context list` shows them)");
        };
        return Ok(Some(Chosen { context, named: true }));
    }
    if flags_name_service {
        return Ok(None);
    }
    let mut all = load()?;
    let Some(name) = all.current.take() else { return Ok(None) };
    // A current context that was deleted by hand is as if there were none.
    Ok(all.contexts.remove(&name).map(|context| Chosen { context, named: false }))
}

/// Records `context` under `name` and makes it current; returns the file.
pub(crate) fn record(name: &str, context: Context) -> anyhow::Result<PathBuf> {
    let mut all = load()?;
    all.contexts.insert(name.to_owned(), context);
    all.current = Some(name.to_owned());
    save(&all)
}

/// An absolute form of `p` (contexts are used from any directory).
pub(crate) fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: no absolute path", p.display()))
}

/// `otaforge context ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContextCommand {
    /// List the contexts, the current one marked.
    List,
    /// Show a context (default: the one in use); secrets are shown redacted.
    Show(ShowArgs),
    /// Make a context the current one.
    Use(UseArgs),
    /// Create or change a context, e.g. for a Device Update instance and IoT Hub on Azure.
    Set(SetArgs),
    /// Delete a context.
    Delete(UseArgs),
}

/// `otaforge context show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// The context (default: --context, $OTAFORGE_CONTEXT, else the current one).
    name: Option<String>,
}

/// `otaforge context use|delete`.
#[derive(Debug, clap::Args)]
pub(crate) struct UseArgs {
    /// The context.
    name: String,
}

/// `otaforge context set`.
#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    /// The context (created when new; the options given replace its settings).
    name: String,
    /// Device Update endpoint (https://ACCOUNT.api.adu.microsoft.com, or serve's URL).
    #[arg(long)]
    endpoint: Option<String>,
    /// Instance name.
    #[arg(long)]
    instance: Option<String>,
    /// Authenticate to Device Update with Microsoft Entra ID.
    #[arg(long, value_enum, value_name = "SOURCE")]
    adu_entra: Option<EntraArg>,
    /// A file holding the hub's service connection string (kept as a path, not copied).
    #[arg(long, value_name = "FILE", conflicts_with = "iothub_host")]
    iothub_connection_file: Option<PathBuf>,
    /// The hub's host name (myhub.azure-devices.net), reached with --iothub-entra.
    #[arg(long, value_name = "HOST", requires = "iothub_entra")]
    iothub_host: Option<String>,
    /// Authenticate to the hub with Microsoft Entra ID.
    #[arg(long, value_enum, value_name = "SOURCE", requires = "iothub_host")]
    iothub_entra: Option<EntraArg>,
    /// The update root key(s) (JWK) simulated devices trust.
    #[arg(long, value_name = "FILE")]
    root_key: Option<PathBuf>,
    /// Make it the current context too.
    #[arg(long = "use")]
    make_current: bool,
}

/// One line of `context list`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    name: String,
    current: bool,
    #[serde(flatten)]
    settings: Value,
}

fn not_found(out: &Output, name: &str) -> anyhow::Result<Outcome> {
    let message = format!("no context named `{name}` (`otaforge context list` shows them)");
    out.failure(&Failure::new("notFound", message))?;
    Ok(Outcome::CheckFailed)
}

fn show(out: &Output, name: &str, c: &Context, current: bool) -> anyhow::Result<()> {
    if out.json() {
        return out.json_value(&Listed { name: name.to_owned(), current, settings: c.shown() });
    }
    let mut rows = vec![("name", format!("{name}{}", if current { " (current)" } else { "" }))];
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let entra = |e: Option<EntraArg>| e.map(|e| format!("Entra ID ({})", kebab(e)));
    for (label, value) in [
        ("endpoint", c.endpoint.clone()),
        ("instance", c.instance.clone()),
        (
            "ADU auth",
            entra(c.adu_entra).or_else(|| c.adu_token.as_ref().map(|_| "token (REDACTED)".into())),
        ),
        ("IoT Hub", path(&c.iothub_connection_file).or_else(|| c.iothub_host.clone())),
        ("hub auth", entra(c.iothub_entra)),
        ("root key", path(&c.root_key)),
    ] {
        if let Some(v) = value {
            rows.push((label, v));
        }
    }
    for (label, value) in rows {
        out.line(format!("{label:<10} {value}"))?;
    }
    Ok(())
}

fn kebab(e: EntraArg) -> String {
    serde_json::to_value(e).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

pub(crate) fn run(cmd: ContextCommand, out: &Output) -> anyhow::Result<Outcome> {
    match cmd {
        ContextCommand::List => {
            let all = load()?;
            let current = all.current.as_deref();
            if out.json() {
                let list: Vec<Listed> = all
                    .contexts
                    .iter()
                    .map(|(name, c)| Listed {
                        name: name.clone(),
                        current: Some(name.as_str()) == current,
                        settings: c.shown(),
                    })
                    .collect();
                out.json_value(&list)?;
            } else if all.contexts.is_empty() {
                out.notice("no contexts yet: `otaforge serve` records one, `otaforge context set` makes one");
            } else {
                for (name, c) in &all.contexts {
                    let mark = if Some(name.as_str()) == current { "*" } else { " " };
                    let at = c.endpoint.as_deref().unwrap_or("(no endpoint)");
                    let instance = c.instance.as_deref().map(|i| format!(" instance {i}"));
                    out.line(format!("{mark} {name:<16} {at}{}", instance.unwrap_or_default()))?;
                }
            }
            Ok(Outcome::Ok)
        }
        ContextCommand::Show(a) => {
            let all = load()?;
            let name = match a.name.or_else(|| named(out)).or(all.current.clone()) {
                Some(n) => n,
                None => return not_found(out, "(current)"),
            };
            match all.contexts.get(&name) {
                Some(c) => show(out, &name, c, all.current.as_deref() == Some(name.as_str()))?,
                None => return not_found(out, &name),
            }
            Ok(Outcome::Ok)
        }
        ContextCommand::Use(a) => {
            let mut all = load()?;
            if !all.contexts.contains_key(&a.name) {
                return not_found(out, &a.name);
            }
            all.current = Some(a.name.clone());
            save(&all)?;
            if out.json() {
                out.json_value(&serde_json::json!({"current": a.name}))?;
            } else {
                out.line(format!("current context: {}", a.name))?;
            }
            Ok(Outcome::Ok)
        }
        ContextCommand::Delete(a) => {
            let mut all = load()?;
            if all.contexts.remove(&a.name).is_none() {
                return not_found(out, &a.name);
            }
            if all.current.as_deref() == Some(a.name.as_str()) {
                all.current = None;
            }
            save(&all)?;
            if out.json() {
                out.json_value(&serde_json::json!({"deleted": a.name}))?;
            } else {
                out.line(format!("deleted context {}", a.name))?;
            }
            Ok(Outcome::Ok)
        }
        ContextCommand::Set(a) => set(a, out),
    }
}

fn set(a: SetArgs, out: &Output) -> anyhow::Result<Outcome> {
    let mut all = load()?;
    let c = all.contexts.entry(a.name.clone()).or_default();
    if a.endpoint.is_some() {
        // Another service: the old one's token must not follow it there.
        c.adu_token = None;
        c.endpoint = a.endpoint;
    }
    c.instance = a.instance.or(c.instance.take());
    c.adu_entra = a.adu_entra.or(c.adu_entra);
    if let Some(f) = &a.iothub_connection_file {
        c.iothub_connection_file = Some(absolute(f)?);
        (c.iothub_host, c.iothub_entra) = (None, None);
    }
    if a.iothub_host.is_some() {
        (c.iothub_host, c.iothub_entra) = (a.iothub_host, a.iothub_entra);
        c.iothub_connection_file = None;
    }
    if let Some(f) = &a.root_key {
        c.root_key = Some(absolute(f)?);
    }
    let shown = c.clone();
    if a.make_current {
        all.current = Some(a.name.clone());
    }
    let current = all.current.as_deref() == Some(a.name.as_str());
    let path = save(&all)?;
    show(out, &a.name, &shown, current)?;
    out.notice(format!("saved in {}", path.display()));
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_round_trips_and_its_token_is_never_shown() {
        let text = r#"{"current": "lab", "contexts": {"lab": {"endpoint": "http://127.0.0.1:1",
            "instance": "default", "aduToken": "s3cret-token-value", "aduEntra": "managed-identity",
            "later": 1}}, "version": 2}"#;
        let all: Contexts = serde_json::from_str(text).unwrap();
        let lab = &all.contexts["lab"];
        assert_eq!(lab.adu_entra, Some(EntraArg::ManagedIdentity));
        let again = serde_json::to_value(&all).unwrap();
        assert_eq!(again["version"], 2);
        assert_eq!(again["contexts"]["lab"]["later"], 1);
        assert_eq!(again["contexts"]["lab"]["aduToken"], "s3cret-token-value");
        assert_eq!(lab.shown()["aduToken"], "REDACTED");
        assert!(!format!("{lab:?}").contains("s3cret"));
    }
}

//! Command-line interface: one module per verb. Compiled only into the binary.

mod apt;
mod args;
mod context;
mod dashboard;
mod delta;
mod deploy;
mod device;
mod edge;
mod fleet;
mod group;
mod hash;
mod hub;
mod import;
mod key;
mod logs;
mod manifest;
mod mcuboot;
mod meta;
mod new;
mod output;
mod release;
mod results;
mod serve;
mod sign;
mod update;
mod upload;

use std::io::Write;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

pub(crate) use output::{Failure, Format, Output};

/// Environment variables otaforge reads (every name in `otaforge::env`), shown at the end of
/// `--help`; `cargo xtask tidy` checks that none is missing.
const ENV_HELP: &str = "\
Environment:
  SOURCE_DATE_EPOCH     Unix seconds for createdDateTime (reproducible builds)
  CI                    when set, progress bars are off
  NO_COLOR              when set, output has no colour
  OTAFORGE_SIGNING_KEY  PKCS#8 PEM private key for signing commands without --key
  AZURE_STORAGE_CONNECTION_STRING
                        storage connection string for upload
  AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY
                        storage account and key for upload (never printed)
  OTAFORGE_ADU_TOKEN    bearer token for import, update and serve (--token)
  IOTHUB_CONNECTION_STRING
                        IoT Hub service connection string for group, fleet
                        and edge (never printed)
  OTAFORGE_CONTEXT      the context to use instead of the current one
  XDG_CONFIG_HOME, HOME contexts are kept in $XDG_CONFIG_HOME/otaforge, else
                        in $HOME/.config/otaforge

Exit codes: 0 ok; 1 a check failed (invalid manifest, bad signature);
2 usage or unexpected error";

/// The heading of the options every command takes, listed after a command's own.
const GLOBAL: &str = "Global options";

/// Build, check, sign and ship over-the-air updates for Azure Device Update.
#[derive(Debug, Parser)]
#[command(name = "otaforge", version, after_long_help = ENV_HELP)]
pub(crate) struct Cli {
    /// Output format for data on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text, help_heading = GLOBAL)]
    format: Format,
    /// No progress bars or notices on stderr (errors are still printed).
    #[arg(long, short, global = true, help_heading = GLOBAL)]
    quiet: bool,
    /// Use this context for what the flags leave out (see `otaforge context`; default:
    /// $OTAFORGE_CONTEXT, else the current one).
    #[arg(long, global = true, value_name = "NAME", help_heading = GLOBAL)]
    context: Option<String>,
    /// Give up on one Device Update or IoT Hub request after this long, retries included.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "60s",
        value_parser = stall_duration,
        help_heading = GLOBAL
    )]
    request_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print size and SHA-256 (base64 for ADU, hex like sha256sum) of files.
    Hash(hash::HashArgs),
    /// Create and validate ADU import manifests (v5).
    #[command(subcommand)]
    Manifest(manifest::ManifestCommand),
    /// Create and validate APT manifests for the microsoft/apt:1 handler.
    #[command(subcommand)]
    Apt(apt::AptCommand),
    /// Create, apply and describe binary deltas (otadelta, BSDIFF40).
    #[command(subcommand)]
    Delta(delta::DeltaCommand),
    /// Create Ed25519 key pairs and show key ids.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Write FILE.sig: a detached JWS (EdDSA) that standard JOSE libraries verify.
    Sign(sign::SignArgs),
    /// Check FILE.sig signatures against trusted public keys (exit 1 if any is invalid).
    Verify(sign::VerifyArgs),
    /// Signed release metadata: artifacts, version, security counter, expiry.
    #[command(subcommand)]
    Meta(meta::MetaCommand),
    /// Sign, verify and describe MCUboot images (imgtool compatible).
    #[command(subcommand)]
    Mcuboot(mcuboot::McubootCommand),
    /// Upload artifacts to Azure Blob Storage (or a local directory) and print read URLs.
    Upload(upload::UploadArgs),
    /// Validate, upload and import updates into Device Update, and wait for the result.
    Import(import::ImportArgs),
    /// List, show and delete the updates of a Device Update instance.
    #[command(subcommand)]
    Update(update::UpdateCommand),
    /// Run an embedded Device Update service (same REST API, SQLite, local blob store).
    Serve(serve::ServeArgs),
    /// Device Update groups: tag devices into them (IoT Hub `ADUGroup`), list and show them.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Devices as Device Update knows them.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// How many devices run their best update (instance or group).
    Compliance(device::ComplianceArgs),
    /// Serve the rollout dashboard (the pages of `serve`'s /ui/) for any Device Update
    /// instance and IoT Hub, read through this process: the browser holds no credential.
    Dashboard(dashboard::DashboardArgs),
    /// Deploy an update to a group; read, list and delete deployments.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Device Update log collections: ask devices for their logs, and see how each did.
    #[command(subcommand)]
    Logs(logs::LogsCommand),
    /// Simulated devices that install deployments from `otaforge serve`.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// IoT Hub: device and module identities, connection strings, direct methods, telemetry,
    /// and automatic device management configurations (`hub config`).
    #[command(subcommand)]
    Hub(hub::HubCommand),
    /// IoT Edge: manifests, routes, target conditions, deployments on IoT Hub, what-if.
    #[command(subcommand)]
    Edge(edge::EdgeCommand),
    /// One release from otaforge.toml: files, deltas, manifest, signatures, upload, import,
    /// and a staged rollout whose gates stop it; resumable.
    Release(release::ReleaseArgs),
    /// Start a release description in a firmware repository: a commented otaforge.toml (MCU,
    /// Linux or APT), its folders, a make fragment and a CI workflow.
    New(new::NewArgs),
    /// Named connection settings (endpoint, instance, IoT Hub, root key) commands use for
    /// what their flags leave out; `otaforge serve` records one.
    #[command(subcommand)]
    Context(context::ContextCommand),
}

/// How a command ended when it did not fail unexpectedly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything was fine.
    Ok,
    /// A check ran and found problems (exit code 1).
    CheckFailed,
}

/// `--timeout` values: at most a week (longer waits belong to a scheduler, not a command).
fn wait_duration(s: &str) -> Result<std::time::Duration, otaforge::time::TimeError> {
    otaforge::time::parse_duration(s, std::time::Duration::from_secs(7 * 86_400))
}

/// `--io-timeout` and `--request-timeout` values: at most an hour.
fn stall_duration(s: &str) -> Result<std::time::Duration, otaforge::time::TimeError> {
    otaforge::time::parse_duration(s, std::time::Duration::from_secs(3_600))
}

/// `serve --header-timeout`: at most ten minutes.
fn header_duration(s: &str) -> Result<std::time::Duration, otaforge::time::TimeError> {
    otaforge::time::parse_duration(s, std::time::Duration::from_secs(600))
}

/// Parses arguments, runs the command and maps the outcome to an exit code.
pub(crate) fn main(rt: &tokio::runtime::Runtime) -> ExitCode {
    // https://no-color.org: any value of NO_COLOR turns colour off (clap colours help and errors).
    let mut command = Cli::command();
    if std::env::var_os(otaforge::env::NO_COLOR).is_some_and(|v| !v.is_empty()) {
        command = command.color(clap::ColorChoice::Never);
    }
    let matches = match command.try_get_matches() {
        Ok(m) => m,
        // clap uses 0 for --help and --version and 2 for usage errors, as we do.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(&e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let globals = output::Globals { context: cli.context, request_timeout: cli.request_timeout };
    let out = Output::new(cli.format, cli.quiet).with_globals(globals);
    let result = match cli.command {
        Command::Hash(args) => hash::run(args, &out),
        Command::Manifest(cmd) => manifest::run(cmd, sub_matches(&matches, &["manifest"]), &out),
        Command::Apt(cmd) => apt::run(cmd, &out),
        Command::Delta(cmd) => delta::run(cmd, &out),
        Command::Key(cmd) => key::run(cmd, &out),
        Command::Sign(args) => sign::sign(args, &out),
        Command::Verify(args) => sign::verify(args, &out),
        Command::Meta(cmd) => meta::run(cmd, &out),
        Command::Mcuboot(cmd) => mcuboot::run(cmd, &out),
        Command::Upload(args) => upload::run(args, rt, &out),
        Command::Import(args) => import::run(args, rt, &out),
        Command::Update(cmd) => update::run(cmd, rt, &out),
        Command::Serve(args) => serve::run(args, rt, &out),
        Command::Group(cmd) => group::run(cmd, rt, &out),
        Command::Device(cmd) => device::run(cmd, rt, &out),
        Command::Compliance(args) => device::compliance(args, rt, &out),
        Command::Deploy(cmd) => deploy::run(cmd, rt, &out),
        Command::Dashboard(args) => dashboard::run(args, rt, &out),
        Command::Logs(cmd) => logs::run(cmd, rt, &out),
        Command::Fleet(cmd) => fleet::run(cmd, rt, &out),
        Command::Hub(cmd) => hub::run(cmd, rt, &out),
        Command::Edge(cmd) => edge::run(cmd, rt, &out),
        Command::Release(args) => release::run(args, rt, &out),
        Command::New(args) => new::run(args, &out),
        Command::Context(cmd) => context::run(cmd, &out),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(e) => {
            let failure = Failure::new(error_code(&e), output::chain_message(&e));
            if out.failure(&failure).is_err() {
                let _ = writeln!(std::io::stderr(), "error: {}", failure.message);
            }
            ExitCode::from(2)
        }
    }
}

/// Whether the raw arguments ask for `--format json` (read directly, for failures that happen
/// before the arguments are parsed).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--format=json")
        || args.windows(2).any(|w| w[0] == "--format" && w[1] == "json")
}

/// A usage error: clap's message on stderr, and with `--format json` the failure object too.
fn usage_error(e: &clap::Error) -> ExitCode {
    if json_requested() {
        let text = e.render().to_string();
        let message = text.trim().strip_prefix("error: ").unwrap_or(text.trim()).to_owned();
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&Failure::new("usage", message)).unwrap_or_default()
        );
    }
    let _ = e.print();
    ExitCode::from(2)
}

/// A stable code for an unexpected error: what the file system said about a file that is
/// missing or unreadable, whichever layer met it; else the code of the first cause that has
/// one (`otaforge::error::ErrorCode`).
fn error_code(e: &anyhow::Error) -> String {
    use otaforge::error::ErrorCode;
    let coded: Vec<&dyn ErrorCode> = e.chain().filter_map(code_of).collect();
    let file = coded.iter().find_map(|c| {
        c.io_kind().filter(|k| {
            matches!(k, std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied)
        })
    });
    match file {
        Some(std::io::ErrorKind::NotFound) => "notFound".into(),
        Some(_) => "permissionDenied".into(),
        None => coded.first().map_or_else(|| "error".into(), |c| c.code()),
    }
}

/// The `ErrorCode` of `e` when it is one of the library's errors or an I/O error: the one list
/// of the library's error types, kept by the one caller that holds errors as `dyn Error`.
fn code_of<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a dyn otaforge::error::ErrorCode> {
    macro_rules! first_of {
        ($($t:ty),* $(,)?) => {
            $( if let Some(x) = e.downcast_ref::<$t>() { return Some(x); } )*
        };
    }
    first_of!(
        std::io::Error,
        otaforge::sign::SignError,
        otaforge::storage::StorageError,
        otaforge::mcuboot::McubootError,
        otaforge::iothub::IotHubError,
        otaforge::time::TimeError,
        otaforge::size::SizeError,
        otaforge::service::ServiceError,
        otaforge::fleet::FleetError,
        otaforge::release::ReleaseError,
    );
    None
}

/// The matches of a nested subcommand, for reading the order of repeated options.
fn sub_matches<'a>(matches: &'a ArgMatches, path: &[&str]) -> Option<&'a ArgMatches> {
    let mut m = matches;
    for name in path {
        m = m.subcommand_matches(name)?;
    }
    m.subcommand().map(|(_, sub)| sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_library_error_has_its_code_behind_dyn_error() {
        let code = |e: &(dyn std::error::Error + 'static)| code_of(e).map(|c| c.code());
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(code(&io).as_deref(), Some("notFound"));
        let hub = otaforge::iothub::IotHubError::Api {
            operation: "read".into(),
            status: 404,
            code: "DeviceNotFound".into(),
            message: "no such device".into(),
        };
        assert_eq!(code(&hub).as_deref(), Some("DeviceNotFound"));
        let fleet = otaforge::fleet::FleetError::Hub(hub);
        assert_eq!(code(&fleet).as_deref(), Some("DeviceNotFound"));
        let size = otaforge::size::parse_size("x").unwrap_err();
        assert_eq!(code(&size).as_deref(), Some("invalidValue"));
        let sign = otaforge::sign::SignError::Io(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        ));
        assert_eq!(
            code_of(&sign).and_then(otaforge::error::ErrorCode::io_kind),
            Some(std::io::ErrorKind::PermissionDenied)
        );
        let other: Box<dyn std::error::Error> = "plain".into();
        assert!(code_of(other.as_ref()).is_none());
    }
}

//! Every environment variable otaforge reads, in one place.
//!
//! The CLI's `--help` lists these; nothing else in the code spells a variable name.

/// Seconds since the Unix epoch used for `createdDateTime` in generated manifests, so that
/// builds are reproducible (<https://reproducible-builds.org/specs/source-date-epoch/>).
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// Set by most CI systems; progress bars are switched off when it is present.
pub const CI: &str = "CI";

/// When present (any value), output carries no colour (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";

/// Reads `SOURCE_DATE_EPOCH` if it is set and not empty.
pub fn source_date_epoch() -> Option<String> {
    std::env::var(SOURCE_DATE_EPOCH).ok().filter(|v| !v.is_empty())
}

/// A PKCS#8 PEM Ed25519 private key used by the signing commands when no `--key` is given (or
/// with `--key env:OTAFORGE_SIGNING_KEY`). Never printed or logged.
pub const OTAFORGE_SIGNING_KEY: &str = "OTAFORGE_SIGNING_KEY";

/// An Azure Storage connection string (`AccountName=...;AccountKey=...;...`) for `upload`.
pub const AZURE_STORAGE_CONNECTION_STRING: &str = "AZURE_STORAGE_CONNECTION_STRING";

/// The storage account name for `upload` when no connection string is given.
pub const AZURE_STORAGE_ACCOUNT: &str = "AZURE_STORAGE_ACCOUNT";

/// The storage account key (base64) that goes with `AZURE_STORAGE_ACCOUNT`. Read only from the
/// environment, never from the command line, where other users could see it; never printed.
pub const AZURE_STORAGE_KEY: &str = "AZURE_STORAGE_KEY";

/// The bearer token `import` and `update` send to the Device Update endpoint (for
/// `otaforge serve --token`); never printed.
pub const OTAFORGE_ADU_TOKEN: &str = "OTAFORGE_ADU_TOKEN";

/// An IoT Hub service connection string (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`)
/// for the commands that read or tag device twins; never printed.
pub const IOTHUB_CONNECTION_STRING: &str = "IOTHUB_CONNECTION_STRING";

/// The context (`otaforge context`) commands use when `--context` is not given, instead of the
/// current one.
pub const OTAFORGE_CONTEXT: &str = "OTAFORGE_CONTEXT";

/// The user's configuration directory (<https://specifications.freedesktop.org/basedir-spec/>):
/// contexts are kept in `$XDG_CONFIG_HOME/otaforge/`. Only an absolute path counts.
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";

/// The user's home directory: contexts are kept in `$HOME/.config/otaforge/` when
/// `XDG_CONFIG_HOME` is not set.
pub const HOME: &str = "HOME";

//! Output rules: data on stdout (text or JSON), notices and progress on stderr, progress bars
//! only on a terminal outside CI.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use otaforge::Reporter;
use serde::Serialize;

/// A failure as every command reports it: with `--format json`, this one object on stdout
/// (`error` a stable camelCase or ADU code, `message` for people, and where they apply the
/// `file`, the JSON `path` and `details`); in text, `error: [file: ]message` on stderr.
#[derive(Debug, Serialize)]
pub(crate) struct Failure {
    /// Stable code.
    pub(crate) error: String,
    /// What happened and what to do.
    pub(crate) message: String,
    /// The file it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) file: Option<String>,
    /// The JSON path it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    /// More: findings, the service's error document, per-file results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<serde_json::Value>,
}

impl Failure {
    /// A failure with a code and a message.
    pub(crate) fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error: error.into(), message: message.into(), file: None, path: None, details: None }
    }

    /// About this file.
    pub(crate) fn file(mut self, file: impl std::fmt::Display) -> Self {
        self.file = Some(file.to_string());
        self
    }

    /// With these details.
    pub(crate) fn details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).ok();
        self
    }
}

/// An error's message with its causes, each cause once: a cause whose text the message already
/// holds (an I/O error wrapped with its path, say) is not repeated.
pub(crate) fn chain_message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The format of data written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// For programs: one JSON document.
    Json,
}

/// The global options that are not about output, which every command that connects reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Globals {
    /// `--context NAME`.
    pub(crate) context: Option<String>,
    /// `--request-timeout`: one Device Update or IoT Hub call, retries included.
    pub(crate) request_timeout: Duration,
}

impl Default for Globals {
    fn default() -> Self {
        Self { context: None, request_timeout: otaforge::retry::DEFAULT_CALL_DEADLINE }
    }
}

/// Where and how a command writes, and the global options it was given.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    /// The requested data format.
    pub(crate) format: Format,
    quiet: bool,
    progress: bool,
    /// stdout carries a command's payload (`-o -`), so data lines go to stderr.
    data_to_stderr: bool,
    globals: Globals,
}

impl Output {
    /// Decides whether progress bars are drawn: only on a terminal, outside CI, and not quiet.
    pub(crate) fn new(format: Format, quiet: bool) -> Self {
        let progress = !quiet
            && std::io::stderr().is_terminal()
            && std::env::var_os(otaforge::env::CI).is_none();
        Self { format, quiet, progress, data_to_stderr: false, globals: Globals::default() }
    }

    /// This output, for a command given these global options.
    pub(crate) fn with_globals(self, globals: Globals) -> Self {
        Self { globals, ..self }
    }

    /// The global options.
    pub(crate) fn globals(&self) -> &Globals {
        &self.globals
    }

    /// This output for a command whose `-o` is `output`: when that is `-` (stdout), the
    /// command's report goes to stderr so it cannot corrupt the payload.
    pub(crate) fn for_payload(&self, output: &std::path::Path) -> Self {
        Self { data_to_stderr: output == std::path::Path::new("-"), ..self.clone() }
    }

    fn data(&self) -> Box<dyn Write> {
        if self.data_to_stderr {
            Box::new(std::io::stderr().lock())
        } else {
            Box::new(std::io::stdout().lock())
        }
    }

    /// True for `--format json`.
    pub(crate) fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Writes one line of data to stdout.
    pub(crate) fn line(&self, text: impl AsRef<str>) -> anyhow::Result<()> {
        let mut out = self.data();
        writeln!(out, "{}", text.as_ref())?;
        Ok(())
    }

    /// Writes a JSON document to stdout.
    pub(crate) fn json_value<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut out = self.data();
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
        Ok(())
    }

    /// Reports a failure: the JSON object on stdout with `--format json`, and always a line
    /// on stderr (even with `--quiet`).
    pub(crate) fn failure(&self, f: &Failure) -> anyhow::Result<()> {
        if self.json() {
            self.json_value(f)?;
        }
        match &f.file {
            Some(file) if !f.message.contains(file.as_str()) => {
                self.error(format!("{file}: {}", f.message))
            }
            _ => self.error(&f.message),
        }
        Ok(())
    }

    /// Writes an error line to stderr, even with `--quiet`.
    pub(crate) fn error(&self, text: impl AsRef<str>) {
        let _ = writeln!(std::io::stderr(), "error: {}", text.as_ref());
    }

    /// Writes a notice to stderr unless `--quiet`.
    pub(crate) fn notice(&self, text: impl AsRef<str>) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{}", text.as_ref());
        }
    }

    /// Reports a document that was not written because it breaks rules: JSON on stdout, or a
    /// headline and every finding on stderr.
    pub(crate) fn rejected(&self, what: &str, findings: &otaforge::Findings) -> anyhow::Result<()> {
        if self.json() {
            self.json_value(&serde_json::json!({ "valid": false, "findings": findings }))?;
        } else {
            self.notice(format!("error: {what} would be invalid; nothing was written"));
            for f in findings {
                self.notice(format!("  {f}"));
            }
        }
        Ok(())
    }

    /// Writes findings on stdout, one line each plus an indented hint, for `validate` commands.
    pub(crate) fn finding_lines(&self, findings: &otaforge::Findings) -> anyhow::Result<()> {
        for f in findings {
            self.line(format!("  {}: {}: {} [{}]", f.severity, f.path, f.message, f.rule))?;
            if let Some(h) = &f.hint {
                self.line(format!("    hint: {h}"))?;
            }
        }
        Ok(())
    }

    /// A progress reporter for work of unknown total size.
    pub(crate) fn progress(&self, what: &str) -> BarReporter {
        let bar = if self.progress {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        BarReporter { bar }
    }
}

/// Draws the library's progress as one bar across all files.
pub(crate) struct BarReporter {
    bar: ProgressBar,
}

impl Reporter for BarReporter {
    fn start(&self, _label: &str, total: Option<u64>) {
        if let Some(t) = total {
            self.bar.inc_length(t);
        }
    }
    fn advance(&self, _label: &str, bytes: u64) {
        self.bar.inc(bytes);
    }
}

impl Drop for BarReporter {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

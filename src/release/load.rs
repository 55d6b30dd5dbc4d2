//! Reading `otaforge.toml`: the file parsed into [`Config`] with every parse error's line and
//! field, then checked section by section (`check`), then its version found (`version`) once the
//! rest passed. The result is [`Checked`]: everything a release needs, resolved.

use std::path::{Path, PathBuf};

use super::check::Problems;
use super::config::{Checked, Config, ConfigError, line_of};

/// A table header line's name and whether it is an array of tables (`[[x]]`).
fn header(line: &str) -> Option<(String, bool)> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("[[") {
        return Some((rest.split("]]").next()?.trim().to_owned(), true));
    }
    let rest = t.strip_prefix('[')?;
    Some((rest.split(']').next()?.trim().to_owned(), false))
}

/// The field path (`stage[1].on-failure`) of the key written on 1-based `line`.
fn path_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(this) = line.checked_sub(1).and_then(|i| lines.get(i)) else { return "(file)".into() };
    if this.trim().is_empty() || this.trim_start().starts_with('#') {
        return "(file)".into();
    }
    if let Some((name, _)) = header(this) {
        return name;
    }
    let key = this.split('=').next().unwrap_or_default().trim().to_owned();
    for i in (0..line - 1).rev() {
        if let Some((name, array)) = header(lines[i]) {
            if array {
                let index = lines[..i]
                    .iter()
                    .filter(|l| header(l).is_some_and(|(n, a)| a && n == name))
                    .count();
                return format!("{name}[{index}].{key}");
            }
            return format!("{name}.{key}");
        }
    }
    key
}

/// A parse or type error, with its line and field path.
fn parse_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut line = e.span().map_or(0, |s| line_of(text, s.start));
    let message = e.message().trim().to_owned();
    let mut field = path_at(text, line);
    // A missing field is reported at its table (a top-level one has no line).
    if let Some(missing) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next())
    {
        if field == "(file)" {
            field = missing.to_owned();
            line = 0;
        } else {
            field = format!("{field}.{missing}");
        }
    }
    ConfigError { file: file.to_owned(), line, field, message }
}

/// Reads and checks `path`: every problem at once. The version is found (its file read, or its
/// command run) once the rest passed.
pub fn load(path: &Path) -> Result<Checked, Vec<ConfigError>> {
    let one = |line, field: &str, message: String| {
        vec![ConfigError { file: path.to_owned(), line, field: field.into(), message }]
    };
    let text = fs_err::read_to_string(path).map_err(|e| one(0, "(file)", e.to_string()))?;
    let config: Config = toml::from_str(&text).map_err(|e| vec![parse_error(path, &text, &e)])?;
    let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut p = Problems::new(path, &text);
    let draft = super::check::check(&mut p, root, &config);
    if !p.list.is_empty() {
        return Err(p.list);
    }
    let update_id = super::version::resolve(&mut p, &config.update, root, draft.version_timeout);
    let Some(update_id) = update_id.filter(|_| p.list.is_empty()) else { return Err(p.list) };
    let output = root.join(config.output.clone().unwrap_or_else(|| PathBuf::from("out/release")));
    let group_lines = config
        .stages
        .iter()
        .map(|s| {
            let span = s.group.as_ref().or(s.edge_target.as_ref()).map_or(0, |g| g.span.start);
            line_of(&text, span)
        })
        .collect();
    Ok(Checked {
        remote_bases: draft.remote_bases,
        edge_manifest: draft.edge_manifest,
        file: path.to_owned(),
        group_lines,
        root: root.to_owned(),
        config,
        update_id,
        files: draft.files,
        output,
        bases: draft.bases,
        import_timeout: draft.import_timeout,
        stage_times: draft.stage_times,
        expires_in: draft.expires_in,
    })
}

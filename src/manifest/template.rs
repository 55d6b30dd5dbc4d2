//! Manifest templates: presets of steps for common update shapes, stored as JSON in
//! `templates/` and compiled into the binary. Rendering does no I/O.
//!
//! A template step names the files it takes by glob (`*.swu`), and its `handlerProperties`
//! strings may hold `{version}` (the update version) and `{file:GLOB}` (the first matching file
//! name). A `{"slot": "steps"}` entry marks where the command line's own steps go; without one
//! they follow the template's steps.

use super::UpdateId;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::ManifestError;

/// One step as the user describes it.
#[derive(Debug, Clone, PartialEq)]
pub enum StepSpec {
    /// A handler run with some payload files.
    Inline {
        /// Handler id, e.g. `microsoft/swupdate:2`.
        handler: String,
        /// Base names of payload files, in order.
        files: Vec<String>,
        /// Handler properties.
        properties: Option<Map<String, Value>>,
        /// Step description.
        description: Option<String>,
    },
    /// A child update.
    Reference {
        /// The child's id.
        update_id: UpdateId,
        /// Step description.
        description: Option<String>,
    },
}

/// A template, as stored in `templates/NAME.json`. Our own format: unknown fields are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// What the template is for, shown by `otaforge manifest templates`.
    pub summary: String,
    /// Default description of the update, when none is given.
    #[serde(default)]
    pub description: Option<String>,
    /// Steps, in order.
    pub steps: Vec<TemplateStep>,
}

/// One step of a template.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum TemplateStep {
    /// Where the command line's steps go.
    Slot {
        /// Always `steps`.
        slot: String,
    },
    /// An inline step.
    Inline {
        /// Handler id.
        handler: String,
        /// Step description.
        #[serde(default)]
        description: Option<String>,
        /// Globs selecting payload files by base name.
        files: Vec<String>,
        /// Skip the step when no file matches, instead of failing.
        #[serde(default)]
        optional: bool,
        /// Handler properties with placeholders.
        #[serde(default, rename = "handlerProperties")]
        handler_properties: Option<Map<String, Value>>,
    },
}

const BUILTIN: [(&str, &str); 4] = [
    ("swupdate", include_str!("../../templates/swupdate.json")),
    ("apt", include_str!("../../templates/apt.json")),
    ("script", include_str!("../../templates/script.json")),
    ("parent", include_str!("../../templates/parent.json")),
];

/// Every built-in template by name.
pub fn builtin_templates() -> Vec<(&'static str, Result<Template, serde_json::Error>)> {
    BUILTIN.iter().map(|(name, text)| (*name, serde_json::from_str(text))).collect()
}

/// Looks up a built-in template.
pub fn find_template(name: &str) -> Result<Template, ManifestError> {
    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
    let (_, text) =
        BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| ManifestError::Template {
            template: name.to_owned(),
            message: format!("no such template; available: {}", names.join(", ")),
        })?;
    serde_json::from_str(text)
        .map_err(|e| ManifestError::Template { template: name.to_owned(), message: e.to_string() })
}

/// Matches `name` against a glob with `*` and `?`.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Template {
    /// Turns the template into steps for the given payload file names and version, placing
    /// `user_steps` at the slot.
    pub fn render(
        &self,
        name: &str,
        file_names: &[String],
        version: &str,
        user_steps: Vec<StepSpec>,
    ) -> Result<Vec<StepSpec>, ManifestError> {
        let err = |message: String| ManifestError::Template { template: name.to_owned(), message };
        let mut out = Vec::new();
        let mut user_steps = Some(user_steps);
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                TemplateStep::Slot { .. } => out.extend(user_steps.take().unwrap_or_default()),
                TemplateStep::Inline {
                    handler,
                    description,
                    files,
                    optional,
                    handler_properties,
                } => {
                    let matched: Vec<String> = file_names
                        .iter()
                        .filter(|f| files.iter().any(|g| glob_match(g, f)))
                        .cloned()
                        .collect();
                    if matched.is_empty() {
                        if *optional {
                            continue;
                        }
                        return Err(err(format!(
                            "step {} ({handler}) needs a --file matching {}",
                            i + 1,
                            files.join(" or ")
                        )));
                    }
                    let properties = match handler_properties {
                        None => None,
                        Some(map) => {
                            let mut rendered = Map::new();
                            for (k, v) in map {
                                rendered.insert(
                                    k.clone(),
                                    render_value(v, &matched, version).map_err(&err)?,
                                );
                            }
                            Some(rendered)
                        }
                    };
                    out.push(StepSpec::Inline {
                        handler: handler.clone(),
                        files: matched,
                        properties,
                        description: description.clone(),
                    });
                }
            }
        }
        out.extend(user_steps.take().unwrap_or_default());
        Ok(out)
    }
}

fn render_value(v: &Value, files: &[String], version: &str) -> Result<Value, String> {
    let Value::String(s) = v else { return Ok(v.clone()) };
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let key = &rest[start + 1..start + end];
        if key == "version" {
            out.push_str(version);
        } else if let Some(glob) = key.strip_prefix("file:") {
            let f = files
                .iter()
                .find(|f| glob_match(glob, f))
                .ok_or_else(|| format!("no file matches {glob} for placeholder {{{key}}}"))?;
            out.push_str(f);
        } else {
            out.push_str(&rest[start..=start + end]);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_template_parses() {
        for (name, t) in builtin_templates() {
            let t = t.unwrap_or_else(|e| panic!("template {name}: {e}"));
            assert!(!t.steps.is_empty(), "{name}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.swu", "image.swu"));
        assert!(!glob_match("*.swu", "image.swu.sig"));
        assert!(glob_match("pre-*.sh", "pre-install.sh"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn unknown_template_lists_the_available_ones() {
        let err = find_template("nope").unwrap_err().to_string();
        assert!(err.contains("swupdate") && err.contains("parent"), "{err}");
    }
}

//! APT manifests: the payload of ADU's `microsoft/apt:1` step handler.
//!
//! Shape (<https://learn.microsoft.com/azure/iot-hub-device-update/device-update-apt-manifest>):
//! `{ "name", "version", "packages": [{ "name", "version"? }], "agentRestartRequired"? }`.
//! The agent passes each package to apt-get as `name=version`; a name ending in `-` removes the
//! package. Package names and versions follow Debian policy §5.6.1 and §5.6.12
//! (<https://www.debian.org/doc/debian-policy/ch-controlfields.html>).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::finding::{Findings, JsonPath};

/// Errors from building APT manifests.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// A line of a package list could not be read.
    #[error("line {line}: {message}")]
    ListLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The manifest that would be written breaks a rule.
    #[error("the APT manifest would be invalid:\n{}", format_findings(.0))]
    Invalid(Findings),
}

fn format_findings(f: &Findings) -> String {
    f.iter().map(|x| format!("  {x}")).collect::<Vec<_>>().join("\n")
}

/// An APT manifest. Defined by ADU, so unknown fields are kept for round-tripping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AptManifest {
    /// Name of this package set; with `version` it forms the step's `installedCriteria`.
    pub name: String,
    /// Version of this package set.
    pub version: String,
    /// Packages to install (or remove, when the name ends in `-`).
    pub packages: Vec<AptPackage>,
    /// Asks the agent to restart after installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_restart_required: Option<bool>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One package entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptPackage {
    /// Debian package name; a trailing `-` means "remove".
    pub name: String,
    /// Exact Debian version; absent means the newest available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl AptManifest {
    /// The `installedCriteria` ADU's apt handler compares against: `<name>-<version>`.
    pub fn installed_criteria(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Parses one `--package` value: `name`, `name=version`, or `name-` (removal).
pub fn parse_package_spec(spec: &str) -> AptPackage {
    match spec.split_once('=') {
        Some((name, version)) => {
            AptPackage { name: name.trim().to_owned(), version: Some(version.trim().to_owned()) }
        }
        None => AptPackage { name: spec.trim().to_owned(), version: None },
    }
}

/// Parses a package list: `name=version` or `name` lines, or the output of `dpkg-query -W`
/// (`name[:arch]<TAB>version`). Blank lines and `#` comments are skipped.
pub fn parse_package_list(text: &str) -> Result<Vec<AptPackage>, AptError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pkg = if let Some((name, version)) = line.split_once('\t') {
            // dpkg-query -W prints the architecture qualifier for multi-arch packages; apt-get
            // accepts the bare name for the native architecture.
            let name = name.trim().split(':').next().unwrap_or_default();
            let version = version.trim();
            AptPackage {
                name: name.to_owned(),
                version: (!version.is_empty()).then(|| version.to_owned()),
            }
        } else if line.contains(char::is_whitespace) && !line.contains('=') {
            let mut it = line.split_whitespace();
            let (name, version) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            if it.next().is_some() {
                return Err(AptError::ListLine {
                    line: i + 1,
                    message: format!("'{line}' is neither 'name=version' nor 'name<TAB>version'"),
                });
            }
            AptPackage { name: name.to_owned(), version: Some(version.to_owned()) }
        } else {
            parse_package_spec(line)
        };
        out.push(pkg);
    }
    Ok(out)
}

/// Checks a Debian binary package name (policy §5.6.1): lower-case letters, digits, `+ - .`,
/// at least two characters, starting with a letter or digit.
pub fn check_package_name(name: &str) -> Result<(), String> {
    if name.len() < 2 {
        return Err(format!("package name '{name}' is shorter than 2 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(format!("package name '{name}' must start with a lower-case letter or digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')))
    {
        return Err(format!(
            "package name '{name}' contains '{c}'; Debian names use only a-z, 0-9, '+', '-' and '.'"
        ));
    }
    Ok(())
}

/// Checks a Debian version `[epoch:]upstream_version[-debian_revision]` (policy §5.6.12).
pub fn check_debian_version(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("version is empty".into());
    }
    if let Some(c) = v.chars().find(|c| c.is_whitespace()) {
        return Err(format!("version '{v}' contains whitespace {c:?}"));
    }
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) => (Some(e), r),
        None => (None, v),
    };
    if let Some(e) = epoch
        && (e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("epoch '{e}' of '{v}' must be a non-negative integer"));
    }
    if rest.contains(':') {
        return Err(format!(
            "version '{v}' has more than one ':'; only the epoch is separated by ':'"
        ));
    }
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (rest, None),
    };
    if upstream.is_empty() {
        return Err(format!("version '{v}' has an empty upstream version"));
    }
    if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("upstream version '{upstream}' of '{v}' must start with a digit"));
    }
    let upstream_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-');
    if let Some(c) = upstream.chars().find(|c| !upstream_ok(*c)) {
        return Err(format!(
            "upstream version '{upstream}' of '{v}' contains '{c}'; allowed are letters, digits and . + ~ -"
        ));
    }
    if let Some(r) = revision {
        if r.is_empty() {
            return Err(format!("version '{v}' ends with '-' but has no Debian revision"));
        }
        let revision_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~');
        if let Some(c) = r.chars().find(|c| !revision_ok(*c)) {
            return Err(format!(
                "Debian revision '{r}' of '{v}' contains '{c}'; allowed are letters, digits and . + ~"
            ));
        }
    }
    Ok(())
}

/// An exact Debian version: the apt handler takes no ranges or wildcards.
fn check_exact_version(f: &mut Findings, v: &str, path: &JsonPath) {
    if v.contains('=') || v.contains('*') || v.starts_with(['<', '>']) {
        f.error_hint(
            "package-version",
            path,
            format!("'{v}' is not an exact version"),
            "the apt handler supports only exact versions such as 1.2.3-1",
        );
    } else if let Err(e) = check_debian_version(v) {
        f.error_hint(
            "package-version",
            path,
            e,
            "see Debian policy §5.6.12: [epoch:]upstream[-revision]",
        );
    }
}

/// Checks an APT manifest document and reports every problem with its JSON path.
pub fn validate_value(doc: &Value) -> Findings {
    let mut f = Findings::new();
    let root = JsonPath::root();
    let Some(obj) = f.expect_object(doc, &root) else { return f };
    for key in obj.keys() {
        if !["name", "version", "packages", "agentRestartRequired"].contains(&key.as_str()) {
            f.warning(
                "unknown-property",
                &root.key(key),
                format!("unknown property '{key}'"),
                "the apt handler reads only name, version, packages and agentRestartRequired",
            );
        }
    }
    for key in ["name", "version"] {
        match obj.get(key) {
            None => f.error_hint(
                "required",
                &root.key(key),
                format!("required property '{key}' is missing"),
                "the apt handler fails without it; name-version becomes the installedCriteria",
            ),
            Some(Value::String(s)) if s.trim().is_empty() => {
                f.error("required", &root.key(key), format!("'{key}' must not be empty"))
            }
            Some(Value::String(s)) if s.contains(char::is_whitespace) => f.warning(
                "whitespace",
                &root.key(key),
                format!("'{s}' contains whitespace"),
                "installedCriteria comparisons are exact; avoid spaces",
            ),
            Some(v) => {
                f.expect_string(v, &root.key(key));
            }
        }
    }
    if let Some(v) = obj.get("agentRestartRequired")
        && !v.is_boolean()
    {
        f.error("type", &root.key("agentRestartRequired"), "must be true or false");
    }
    let pp = root.key("packages");
    let Some(packages) = obj.get("packages") else {
        f.error_hint("required", &pp, "'packages' is missing", "list at least one package");
        return f;
    };
    let Some(packages) = f.expect_array(packages, &pp) else { return f };
    if packages.is_empty() {
        f.error_hint(
            "empty",
            &pp,
            "'packages' is empty; the apt handler refuses it",
            "list at least one package",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, pkg) in packages.iter().enumerate() {
        let p = pp.index(i);
        let Some(pkg) = f.expect_object(pkg, &p) else { continue };
        for key in pkg.keys() {
            if key != "name" && key != "version" {
                f.warning(
                    "unknown-property",
                    &p.key(key),
                    format!("unknown package property '{key}'"),
                    "a package has only name and version",
                );
            }
        }
        let Some(name) = pkg.get("name") else {
            f.error("required", &p.key("name"), "a package needs a 'name'");
            continue;
        };
        let Some(name) = f.expect_string(name, &p.key("name")) else { continue };
        let (base, removal) = match name.strip_suffix('-') {
            Some(b) => (b, true),
            None => (name, false),
        };
        if let Err(e) = check_package_name(base) {
            f.error_hint(
                "package-name",
                &p.key("name"),
                e,
                "see Debian policy §5.6.1; append '-' only to remove a package",
            );
        }
        match pkg.get("version") {
            None => {}
            Some(_) if removal => f.error_hint(
                "removal-version",
                &p.key("version"),
                format!("'{name}' removes a package, so it takes no version"),
                "drop the version, or drop the trailing '-' to install",
            ),
            Some(v) => {
                if let Some(v) = f.expect_string(v, &p.key("version")) {
                    check_exact_version(&mut f, v, &p.key("version"));
                }
            }
        }
        if let Some(first) = seen.insert(base.to_owned(), i) {
            let other = packages[first]["name"].as_str().unwrap_or_default();
            let msg = if other.ends_with('-') != removal {
                format!(
                    "package '{base}' is both installed and removed (also at packages[{first}])"
                )
            } else {
                format!("package '{base}' is listed twice (also at packages[{first}])")
            };
            f.error_hint("package-duplicate", &p.key("name"), msg, "keep one entry per package");
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions() {
        for ok in ["1.0", "1:2.3-4", "2.30-1ubuntu1~22.04", "1.2.3+dfsg-1+b1", "0.9~rc1", "7"] {
            assert_eq!(check_debian_version(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("a1.0", "start with a digit"),
            ("1.0-", "no Debian revision"),
            ("x:1.0", "epoch"),
            ("1:2:3", "more than one ':'"),
            ("1.0_2", "contains '_'"),
            ("1.0-1_2", "Debian revision"),
            ("", "empty"),
            ("1.0 ", "whitespace"),
        ];
        for (bad, words) in cases {
            let err = check_debian_version(bad).unwrap_err();
            assert!(err.contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn package_names() {
        assert!(check_package_name("libc6").is_ok());
        assert!(check_package_name("g++-12").is_ok());
        assert!(check_package_name("a").unwrap_err().contains("shorter"));
        assert!(check_package_name("Foo").unwrap_err().contains("start with"));
        assert!(check_package_name("foo_bar").unwrap_err().contains("'_'"));
    }

    #[test]
    fn dpkg_query_output_parses() {
        let text = "libc6:amd64\t2.36-9+deb12u4\nbash\t5.2.15-2+b2\n\n# comment\ncurl=7.88.1-10\nvim\nold-pkg-\n";
        let pkgs = parse_package_list(text).unwrap();
        let got: Vec<(String, Option<String>)> =
            pkgs.into_iter().map(|p| (p.name, p.version)).collect();
        assert_eq!(
            got,
            vec![
                ("libc6".into(), Some("2.36-9+deb12u4".into())),
                ("bash".into(), Some("5.2.15-2+b2".into())),
                ("curl".into(), Some("7.88.1-10".into())),
                ("vim".into(), None),
                ("old-pkg-".into(), None),
            ]
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let doc = serde_json::json!({
            "name": "",
            "packages": [
                {"name": "Foo", "version": "1.0"},
                {"name": "bar-", "version": "1.0"},
                {"name": "bar", "version": ">=2"},
                {"name": "baz", "version": "x1"},
            ]
        });
        let f = validate_value(&doc);
        let rules: Vec<(&str, String)> = f.iter().map(|x| (x.rule, x.path.to_string())).collect();
        assert_eq!(
            rules,
            vec![
                ("required", "$.name".into()),
                ("required", "$.version".into()),
                ("package-name", "$.packages[0].name".into()),
                ("removal-version", "$.packages[1].version".into()),
                ("package-version", "$.packages[2].version".into()),
                ("package-duplicate", "$.packages[2].name".into()),
                ("package-version", "$.packages[3].version".into()),
            ]
        );
    }
}

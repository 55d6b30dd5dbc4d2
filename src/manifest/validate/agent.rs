//! What the Device Update agent on the device would refuse later, caught when the manifest is
//! checked: a step handler or download handler no agent release registers (or not the release
//! the devices run), and a delta that saves nothing.
//!
//! The handlers each release of the reference agent registers (its Debian package's
//! `postinst`, Azure/iot-hub-device-update tags 0.8.2, 1.0.2 and 1.1.0):
//!
//! | release | step handlers | download handlers |
//! |---|---|---|
//! | 0.8 | `microsoft/apt:1`, `microsoft/swupdate:1`, `microsoft/script:1`, `microsoft/steps:1` | none |
//! | 1.0 | those, and `microsoft/swupdate:2` | `microsoft/delta:1` |
//! | 1.1 | `microsoft/apt:1`, `microsoft/swupdate:2`, `microsoft/script:1`, `microsoft/steps:1` (`microsoft/swupdate:1` was removed) | `microsoft/delta:1` |
//!
//! A step whose handler the agent has not registered fails with
//! `ADUC_ERC_UPDATE_CONTENT_HANDLER_CREATE_FAILURE_NOT_FOUND` (0x30000003); a file whose
//! download handler it has not registered is downloaded whole (the related files are never
//! used). A device builder can register handlers of their own, so handlers outside the
//! `microsoft/` namespace are not judged, and without a known agent version these are
//! warnings; `manifest validate --agent-version V` (the devices' agent is known) makes an
//! unregistered step handler an error, since that agent would always fail the step.

use serde_json::Value;

use crate::finding::{Findings, JsonPath};

/// The rules [`check_agent_support`] reports under: a check for a known agent version
/// replaces the findings of these rules that the version-less check made.
pub const AGENT_RULES: [&str; 6] = [
    "handler-not-registered",
    "agent-too-old",
    "handler-unknown",
    "handler-removed",
    "download-handler-not-registered",
    "delta-not-smaller",
];

/// A release of the reference agent and the handlers it registers.
struct Release {
    version: (u64, u64),
    steps: &'static [&'static str],
    downloads: &'static [&'static str],
}

const RELEASES: [Release; 3] = [
    Release {
        version: (0, 8),
        steps: &[
            "microsoft/apt:1",
            "microsoft/swupdate:1",
            "microsoft/script:1",
            "microsoft/steps:1",
        ],
        downloads: &[],
    },
    Release {
        version: (1, 0),
        steps: &[
            "microsoft/apt:1",
            "microsoft/swupdate:1",
            "microsoft/swupdate:2",
            "microsoft/script:1",
            "microsoft/steps:1",
        ],
        downloads: &["microsoft/delta:1"],
    },
    Release {
        version: (1, 1),
        steps: &[
            "microsoft/apt:1",
            "microsoft/swupdate:2",
            "microsoft/script:1",
            "microsoft/steps:1",
        ],
        downloads: &["microsoft/delta:1"],
    },
];

/// An agent version: `1.1`, `1.1.0`, or as the agent reports it (`DU;agent/1.1.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgentVersion(pub u64, pub u64);

/// A text that is no agent version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent version `{0}` is not MAJOR.MINOR[.PATCH] (e.g. 1.1.0)")]
pub struct BadAgentVersion(pub String);

impl std::str::FromStr for AgentVersion {
    type Err = BadAgentVersion;
    fn from_str(s: &str) -> Result<Self, BadAgentVersion> {
        let v = s.rsplit_once("agent/").map_or(s, |(_, v)| v).trim();
        let mut parts = v.split('.');
        let major = parts.next().and_then(|p| p.parse().ok());
        let minor = parts.next().and_then(|p| p.parse().ok());
        match (major, minor) {
            (Some(a), Some(b)) => Ok(Self(a, b)),
            _ => Err(BadAgentVersion(s.to_owned())),
        }
    }
}

impl std::fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The release an agent version runs: the newest release at or before it (`None` before 0.8,
/// which knew no import manifest v5).
fn release(v: AgentVersion) -> Option<&'static Release> {
    RELEASES.iter().rev().find(|r| r.version <= (v.0, v.1))
}

/// The newest release.
fn newest() -> &'static Release {
    &RELEASES[RELEASES.len() - 1]
}

/// Checks what the agent would refuse later; with `agent`, for that agent version.
pub fn check_agent_support(doc: &Value, agent: Option<AgentVersion>) -> Findings {
    let mut f = Findings::new();
    let root = JsonPath::root();
    let steps = doc.get("instructions").and_then(|i| i.get("steps")).and_then(Value::as_array);
    for (i, step) in steps.into_iter().flatten().enumerate() {
        let Some(handler) = step.get("handler").and_then(Value::as_str) else { continue };
        let p = root.key("instructions").key("steps").index(i).key("handler");
        step_handler(&mut f, handler, &p, agent);
    }
    let files = doc.get("files").and_then(Value::as_array);
    for (i, file) in files.into_iter().flatten().enumerate() {
        let p = root.key("files").index(i);
        let handler = file.get("downloadHandler").and_then(|h| h.get("id")).and_then(Value::as_str);
        if let Some(h) = handler {
            download_handler(&mut f, h, &p.key("downloadHandler").key("id"), agent);
        }
        let size = file.get("sizeInBytes").and_then(Value::as_u64).unwrap_or(0);
        // Without a download handler the related files are never used (an error of its own).
        let related =
            file.get("relatedFiles").and_then(Value::as_array).filter(|_| handler.is_some());
        for (j, r) in related.into_iter().flatten().enumerate() {
            let rs = r.get("sizeInBytes").and_then(Value::as_u64).unwrap_or(0);
            if size > 0 && rs >= size {
                f.warning(
                    "delta-not-smaller",
                    &p.key("relatedFiles").index(j).key("sizeInBytes"),
                    format!("the related file ({rs} bytes) is not smaller than the file it rebuilds ({size} bytes)"),
                    "the download handler downloads it instead of the file and saves nothing; leave the related file out",
                );
            }
        }
    }
    f
}

fn step_handler(f: &mut Findings, handler: &str, p: &JsonPath, agent: Option<AgentVersion>) {
    if !handler.starts_with("microsoft/") {
        return;
    }
    let known_by: Vec<String> = RELEASES
        .iter()
        .filter(|r| r.steps.contains(&handler))
        .map(|r| format!("{}.{}", r.version.0, r.version.1))
        .collect();
    match agent.map(|v| (v, release(v))) {
        Some((v, Some(r))) if !r.steps.contains(&handler) => f.error_hint(
            "handler-not-registered",
            p,
            format!(
                "agent {v} registers no step handler {handler}: every device fails the step with ADUC_ERC_UPDATE_CONTENT_HANDLER_CREATE_FAILURE_NOT_FOUND (0x30000003)"
            ),
            format!("it registers {}", r.steps.join(", ")),
        ),
        Some((v, None)) => f.error(
            "agent-too-old",
            p,
            format!("agent {v} predates import manifest v5 (agents from 0.8 read it)"),
        ),
        _ if known_by.is_empty() => f.warning(
            "handler-unknown",
            p,
            format!(
                "no release of the Device Update agent registers {handler}: the step fails with ADUC_ERC_UPDATE_CONTENT_HANDLER_CREATE_FAILURE_NOT_FOUND (0x30000003) unless the devices register it themselves"
            ),
            format!("the agent's handlers are {}", newest().steps.join(", ")),
        ),
        _ if agent.is_none() && !newest().steps.contains(&handler) => f.warning(
            "handler-removed",
            p,
            format!(
                "agents from {} do not register {handler} (only {}): their devices fail the step with 0x30000003",
                newest_version(),
                known_by.join(", ")
            ),
            "use a handler current agents register (microsoft/swupdate:2 for SWUpdate images), or give --agent-version if the devices run an older agent",
        ),
        _ => {}
    }
}

fn newest_version() -> String {
    let (a, b) = newest().version;
    format!("{a}.{b}")
}

fn download_handler(f: &mut Findings, handler: &str, p: &JsonPath, agent: Option<AgentVersion>) {
    if !handler.starts_with("microsoft/") {
        return;
    }
    let registered = match agent.and_then(release) {
        Some(r) => r.downloads.contains(&handler),
        None => RELEASES.iter().any(|r| r.downloads.contains(&handler)),
    };
    if !registered {
        let who =
            agent.map_or_else(|| "no release of the agent".to_owned(), |v| format!("agent {v}"));
        f.warning(
            "download-handler-not-registered",
            p,
            format!(
                "{who} registers download handler {handler}: devices download the whole file, and its related files are never used"
            ),
            "microsoft/delta:1 is the one the agent registers (agents from 1.0)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(doc: &Value, agent: Option<&str>) -> Vec<(String, &'static str)> {
        let f = check_agent_support(doc, agent.map(|a| a.parse().unwrap()));
        f.iter().map(|x| (x.path.to_string(), x.rule)).collect()
    }

    #[test]
    fn handlers_the_agent_does_not_register_are_caught() {
        let doc = |handler: &str| json!({"instructions": {"steps": [{"handler": handler, "files": ["a"]}]}});
        assert!(rules(&doc("microsoft/swupdate:2"), None).is_empty());
        assert!(
            rules(&doc("contoso/flash:1"), Some("1.1")).is_empty(),
            "a custom handler is the device's own"
        );
        let p = "$.instructions.steps[0].handler".to_owned();
        assert_eq!(rules(&doc("microsoft/swupdate:1"), None), [(p.clone(), "handler-removed")]);
        assert!(rules(&doc("microsoft/swupdate:1"), Some("1.0.2")).is_empty());
        assert_eq!(
            rules(&doc("microsoft/swupdate:1"), Some("DU;agent/1.1.0")),
            [(p.clone(), "handler-not-registered")]
        );
        assert_eq!(
            rules(&doc("microsoft/swupdate:2"), Some("0.8")),
            [(p.clone(), "handler-not-registered")]
        );
        assert_eq!(rules(&doc("microsoft/apt:2"), None), [(p.clone(), "handler-unknown")]);
        assert_eq!(rules(&doc("microsoft/apt:1"), Some("0.7")), [(p, "agent-too-old")]);
        let f = check_agent_support(&doc("microsoft/swupdate:1"), Some("1.1".parse().unwrap()));
        assert!(f.has_errors());
        assert!(!check_agent_support(&doc("microsoft/swupdate:1"), None).has_errors());
    }

    #[test]
    fn download_handlers_and_deltas_that_save_nothing_are_warned_about() {
        let doc = |handler: &str, delta: u64| {
            json!({"files": [{"filename": "a.swu", "sizeInBytes": 100,
                "downloadHandler": {"id": handler},
                "relatedFiles": [{"filename": "a.delta", "sizeInBytes": delta}]}]})
        };
        assert!(rules(&doc("microsoft/delta:1", 10), Some("1.1")).is_empty());
        assert_eq!(
            rules(&doc("microsoft/delta:1", 10), Some("0.8")),
            [("$.files[0].downloadHandler.id".to_owned(), "download-handler-not-registered")]
        );
        assert_eq!(
            rules(&doc("microsoft/delta:2", 10), None),
            [("$.files[0].downloadHandler.id".to_owned(), "download-handler-not-registered")]
        );
        assert_eq!(
            rules(&doc("microsoft/delta:1", 100), None),
            [("$.files[0].relatedFiles[0].sizeInBytes".to_owned(), "delta-not-smaller")]
        );
        assert!("x.y".parse::<AgentVersion>().is_err());
    }
}

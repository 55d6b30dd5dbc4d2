//! Device diagnostics as Device Update has them, without HTTP: log collections (what a request
//! may ask, what serve writes into each agent's twin, and each agent's status read back from
//! its report) and the agent health checks (`deviceDiagnostics/deviceHealth`).
//!
//! A log collection (adu-coverage notes §5; the agent's `src/diagnostics_component`): serve
//! writes the desired `diagnosticInformation.service = {operationId, storageSasUrl}` (a
//! container SAS URL of serve's blob store that allows creating and writing blobs) into each
//! listed agent's twin; the agent uploads its logs as
//! `<deviceId>[/<moduleId>]/<operationId>/<component>/<file>` and reports
//! `diagnosticInformation.agent = {resultCode, operationId}`. An agent is `NotStarted` until it
//! reports for this collection, then `Succeeded` (result 200) or `Failed`; the collection is
//! `Succeeded` when every agent succeeded, `Failed` once every agent finished and one failed,
//! `Running` while some have finished and others not. ADU documents no timeout for an agent
//! that never answers; serve's collection then stays `Running` (or `NotStarted`).
//!
//! Health checks: the five checks ADU documents for its agent check, each made from the twin
//! (none needs anything serve does not have): the model id the device announced, the interface
//! id its agent reports, its compat property names and values, and its `ADUGroup` tag.

use serde_json::Value;

use crate::iothub::Twin;
use crate::service::agent::ReportedComponent;
use crate::service::diagnostics::{
    AgentId, DeviceHealth, DiagnosticsComponent, HealthCheck, HealthCheckResult, HealthState,
    LogCollection, LogCollectionDeviceStatus, RESULT_SUCCESS,
};
use crate::service::model::OperationStatus;

/// The most agents one log collection may name (ADU: "targeting up to 100 devices").
pub const MAX_LOG_COLLECTION_DEVICES: usize = 100;

/// The log collections serve keeps (the oldest go); ADU documents no number.
pub const KEPT_LOG_COLLECTIONS: usize = 1000;

/// The longest description of a log collection (spec: `maxLength` 512).
const MAX_DESCRIPTION: usize = 512;

/// A log collection request ADU would refuse, with its error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// The error code.
    pub code: &'static str,
    /// Why, for people.
    pub message: String,
}

fn invalid(code: &'static str, message: String) -> Invalid {
    Invalid { code, message }
}

/// Checks a log collection id: 1-256 characters (spec), and, since it names a folder of the
/// uploaded logs, no `/`, `\`, white space or control character, and not `.` or `..`.
pub fn check_id(id: &str) -> Result<(), Invalid> {
    let n = id.chars().count();
    let bad_char =
        id.chars().find(|c| *c == '/' || *c == '\\' || c.is_whitespace() || c.is_control());
    if !(1..=256).contains(&n) || bad_char.is_some() || id == "." || id == ".." {
        return Err(invalid(
            "InvalidLogCollectionId",
            format!(
                "log collection id `{id}` must have 1 to 256 characters and no `/`, `\\`, spaces or control characters"
            ),
        ));
    }
    Ok(())
}

/// Checks a new log collection against its path's id and fills in what the service sets:
/// the id, the times and `NotStarted`.
pub fn prepare(id: &str, mut c: LogCollection, now: &str) -> Result<LogCollection, Invalid> {
    check_id(id)?;
    if let Some(given) = c.operation_id.as_deref().filter(|g| *g != id) {
        return Err(invalid(
            "InvalidLogCollection",
            format!("the body's operationId `{given}` differs from the path's `{id}`"),
        ));
    }
    let n = c.device_list.len();
    if !(1..=MAX_LOG_COLLECTION_DEVICES).contains(&n) {
        return Err(invalid(
            "InvalidLogCollection",
            format!(
                "deviceList names {n} agents; a log collection names 1 to {MAX_LOG_COLLECTION_DEVICES}"
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = c.device_list.iter().find(|a| !seen.insert(*a)) {
        return Err(invalid(
            "InvalidLogCollection",
            format!("deviceList names `{}` twice", twice.path()),
        ));
    }
    if c.description.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        return Err(invalid(
            "InvalidLogCollection",
            format!("description has more than {MAX_DESCRIPTION} characters"),
        ));
    }
    c.operation_id = Some(id.to_owned());
    c.created_date_time = Some(now.to_owned());
    c.last_action_date_time = Some(now.to_owned());
    c.status = Some(OperationStatus::NotStarted);
    Ok(c)
}

/// Where an agent's logs of a collection are: `/blobs/CONTAINER/DEVICE[/MODULE]/ID` (ADU
/// writes `/ACCOUNT/CONTAINER/…`; serve's store is reached under `/blobs`).
pub fn log_location(container: &str, agent: &AgentId, id: &str) -> String {
    format!("/blobs/{container}/{}/{id}", agent.path())
}

/// One agent's status in collection `id`, from its twin's reported properties (`None`: no
/// such agent).
pub fn device_status(
    agent: &AgentId,
    twin: Option<&Twin>,
    id: &str,
    container: &str,
) -> LogCollectionDeviceStatus {
    let report = twin
        .and_then(|t| DiagnosticsComponent::of(&t.properties.reported))
        .and_then(|c| c.agent)
        .filter(|a| a.operation_id == id);
    let (status, result, extended) = match &report {
        Some(r) if r.result_code == RESULT_SUCCESS => (OperationStatus::Succeeded, Some(r), true),
        Some(r) => (OperationStatus::Failed, Some(r), true),
        None => (OperationStatus::NotStarted, None, false),
    };
    LogCollectionDeviceStatus {
        device_id: agent.device_id.clone(),
        module_id: agent.module_id.clone(),
        status,
        result_code: result.map(|r| r.result_code.to_string()),
        extended_result_code: extended
            .then(|| result.and_then(|r| r.extended_result_code).unwrap_or(0).to_string()),
        log_location: Some(log_location(container, agent, id)),
        extra: Default::default(),
    }
}

/// A collection's status from its agents': `Succeeded` when all succeeded, `Failed` once all
/// finished and one failed, `Running` while some finished, else `NotStarted`.
pub fn overall(devices: &[LogCollectionDeviceStatus]) -> OperationStatus {
    let done = |s: &LogCollectionDeviceStatus| s.status.is_terminal();
    let finished = devices.iter().filter(|s| done(s)).count();
    if finished == 0 {
        OperationStatus::NotStarted
    } else if finished < devices.len() {
        OperationStatus::Running
    } else if devices.iter().all(|s| s.status == OperationStatus::Succeeded) {
        OperationStatus::Succeeded
    } else {
        OperationStatus::Failed
    }
}

/// The model ids whose devices run a Device Update agent (`dtmi:azure:iot:deviceUpdateModel;N`).
const MODEL_PREFIX: &str = "dtmi:azure:iot:deviceUpdateModel;";
/// The interface the agent's component implements (`dtmi:azure:iot:deviceUpdate;N`).
const INTERFACE_PREFIX: &str = "dtmi:azure:iot:deviceUpdate;";

/// The names of the checks, in the order ADU's agent check documents them.
pub const CHECKS: [&str; 5] = [
    "PnP model id",
    "Interface id",
    "Compat property names",
    "Compat property values",
    "ADU group tag",
];

/// The model id the device announced when it connected (kept on its twin as `modelId`).
fn model_id(twin: &Twin) -> Option<&str> {
    twin.extra.get("modelId").and_then(Value::as_str)
}

/// An agent's health from its twin, or `None` when the twin has no Device Update agent.
pub fn health(twin: &Twin) -> Option<DeviceHealth> {
    let agent = ReportedComponent::of(&twin.properties.reported)?.agent?;
    let props = agent.device_properties.as_ref()?;
    let model = model_id(twin);
    let interface = props.get("interfaceId").and_then(Value::as_str);
    let names: Vec<&str> = agent
        .compat_property_names
        .as_deref()
        .unwrap_or("manufacturer,model")
        .split(',')
        .map(str::trim)
        .collect();
    let names_ok =
        (1..=5).contains(&names.len()) && names.iter().all(|n| (1..32).contains(&n.len()));
    let values_ok = names
        .iter()
        .all(|n| props.get(*n).and_then(Value::as_str).is_some_and(|v| v.chars().count() <= 64));
    let group_ok = match twin.tags.get(crate::iothub::GROUP_TAG) {
        None => true,
        Some(Value::String(g)) => crate::iothub::check_group_id(g).is_ok(),
        Some(_) => false,
    };
    let results = [
        model.is_some_and(|m| m.starts_with(MODEL_PREFIX)),
        interface.is_some_and(|i| i.starts_with(INTERFACE_PREFIX)),
        names_ok,
        values_ok,
        group_ok,
    ];
    let checks: Vec<HealthCheck> = CHECKS
        .iter()
        .zip(results)
        .map(|(name, ok)| HealthCheck {
            name: Some((*name).to_owned()),
            result: Some(if ok {
                HealthCheckResult::Success
            } else {
                HealthCheckResult::UserError
            }),
        })
        .collect();
    Some(DeviceHealth {
        device_id: twin.device_id.clone(),
        module_id: twin.module_id.clone(),
        state: if results.iter().all(|ok| *ok) {
            HealthState::Healthy
        } else {
            HealthState::Unhealthy
        },
        digital_twin_model_id: model.map(str::to_owned),
        health_checks: checks,
        extra: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::diagnostics::DiagnosticsResult;

    fn agent(id: &str, module: Option<&str>) -> AgentId {
        AgentId { device_id: id.into(), module_id: module.map(str::to_owned) }
    }

    #[test]
    fn a_log_collection_is_checked_and_its_status_follows_the_reports() {
        let body = |list: Vec<AgentId>| LogCollection {
            operation_id: None,
            device_list: list,
            description: None,
            created_date_time: None,
            last_action_date_time: None,
            status: None,
            extra: Default::default(),
        };
        let c =
            prepare("logs-1", body(vec![agent("a", None), agent("a", Some("m"))]), "t").unwrap();
        assert_eq!(
            (c.operation_id.as_deref(), c.status),
            (Some("logs-1"), Some(OperationStatus::NotStarted))
        );
        assert_eq!(
            prepare("a/b", body(vec![agent("a", None)]), "t").unwrap_err().code,
            "InvalidLogCollectionId"
        );
        let twice = prepare("x", body(vec![agent("a", None), agent("a", None)]), "t").unwrap_err();
        assert!(twice.message.contains("twice"), "{twice}");
        let many = (0..101).map(|i| agent(&format!("d{i}"), None)).collect();
        assert!(prepare("x", body(many), "t").unwrap_err().message.contains("1 to 100"));

        let mut twin = Twin { device_id: "a".into(), ..Default::default() };
        let s = device_status(&agent("a", None), Some(&twin), "logs-1", "default");
        assert_eq!(
            (s.status, s.log_location.as_deref()),
            (OperationStatus::NotStarted, Some("/blobs/default/a/logs-1"))
        );
        twin.properties.reported =
            DiagnosticsComponent::report("logs-1", DiagnosticsResult::Success).to_patch();
        let ok = device_status(&agent("a", None), Some(&twin), "logs-1", "default");
        assert_eq!(
            (ok.status, ok.result_code.as_deref()),
            (OperationStatus::Succeeded, Some("200"))
        );
        // A report for another collection does not count for this one.
        assert_eq!(
            device_status(&agent("a", None), Some(&twin), "logs-2", "c").status,
            OperationStatus::NotStarted
        );
        twin.properties.reported =
            DiagnosticsComponent::report("logs-1", DiagnosticsResult::NoLogsFound).to_patch();
        let failed = device_status(&agent("a", None), Some(&twin), "logs-1", "default");
        assert_eq!(
            (failed.status, failed.result_code.as_deref()),
            (OperationStatus::Failed, Some("-1"))
        );
        let waiting = device_status(&agent("b", None), None, "logs-1", "default");
        assert_eq!(overall(&[ok.clone(), waiting.clone()]), OperationStatus::Running);
        assert_eq!(overall(&[waiting]), OperationStatus::NotStarted);
        assert_eq!(overall(&[ok.clone(), ok.clone()]), OperationStatus::Succeeded);
        assert_eq!(overall(&[ok, failed]), OperationStatus::Failed);
    }

    #[test]
    fn health_checks_read_the_twin() {
        let mut twin: Twin = serde_json::from_value(serde_json::json!({
            "deviceId": "d", "modelId": "dtmi:azure:iot:deviceUpdateModel;3",
            "tags": {"ADUGroup": "lab"},
            "properties": {"reported": {"deviceUpdate": {"__t": "c", "agent": {
                "deviceProperties": {"manufacturer": "contoso", "model": "m",
                    "interfaceId": "dtmi:azure:iot:deviceUpdate;3"},
                "compatPropertyNames": "manufacturer,model"}}}}
        }))
        .unwrap();
        let h = health(&twin).unwrap();
        assert_eq!(h.state, HealthState::Healthy, "{h:?}");
        assert_eq!(h.health_checks.len(), 5);
        // No model id announced (a device that connected without one): unhealthy, and which
        // check failed is named.
        twin.extra.remove("modelId");
        let h = health(&twin).unwrap();
        assert_eq!(h.state, HealthState::Unhealthy);
        let failed: Vec<_> = h
            .health_checks
            .iter()
            .filter(|c| c.result == Some(HealthCheckResult::UserError))
            .filter_map(|c| c.name.as_deref())
            .collect();
        assert_eq!(failed, ["PnP model id"]);
        assert!(health(&Twin::default()).is_none());
    }
}

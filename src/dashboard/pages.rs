//! The pages: each reads what it shows through a [`DashboardSource`], shapes it into the
//! template's fields (counts, bars, decoded codes, links) and renders it. Templates escape
//! every value; the only markup inserted as is (`|safe`) is a [`Bar`] rendered by its own
//! escaping template.

use askama::Template;

use super::chart::{Bar, Timeline};
use super::{DashboardError, DashboardSource, Options, ProgressRecord, ResultRecord};
use crate::service::model::{InstallResult, UpdateCompliance};
use crate::service::result_code::{Decoded, decode, parse_codes, result_name};

/// Devices listed as failing on a deployment page, at most.
pub(super) const FAILING_SHOWN: usize = 50;

/// What every page shows around its content.
struct Chrome {
    title: String,
    instance: String,
    /// Which page (`fleet`, `deployment`, ...), for scripts and tests.
    page: &'static str,
}

fn chrome(o: &Options, title: String, page: &'static str) -> Chrome {
    Chrome { title, instance: o.title.clone(), page }
}

/// A path segment, percent-encoded: ids may hold any character.
pub(super) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn group_href(g: &str) -> String {
    format!("/ui/groups/{}", seg(g))
}

fn deployment_href(g: &str, d: &str) -> String {
    format!("/ui/groups/{}/deployments/{}", seg(g), seg(d))
}

fn device_href(d: &str) -> String {
    format!("/ui/devices/{}", seg(d))
}

fn render(t: &impl Template) -> Result<String, DashboardError> {
    t.render().map_err(|e| DashboardError::Render(e.to_string()))
}

#[derive(Template)]
#[template(path = "bar.html", config = "src/dashboard/askama.toml")]
struct BarView<'a> {
    title: &'a str,
    total: u64,
    segments: &'a [super::chart::Segment],
    marker: &'a Option<(String, String)>,
}

/// A bar as SVG markup (escaped by its own template).
fn svg(b: &Bar) -> String {
    let v = BarView { title: &b.title, total: b.total, segments: &b.segments, marker: &b.marker };
    v.render().unwrap_or_default()
}

#[derive(Template)]
#[template(path = "timeline.html", config = "src/dashboard/askama.toml")]
struct TimelineView<'a> {
    title: &'a str,
    total: u64,
    lines: &'a [super::chart::Line],
    from: &'a str,
    to: &'a str,
}

/// A timeline as SVG markup (escaped by its own template).
fn timeline_svg(t: &Timeline) -> String {
    let v =
        TimelineView { title: &t.title, total: t.total, lines: &t.lines, from: &t.from, to: &t.to };
    v.render().unwrap_or_default()
}

/// Seconds since the epoch of an RFC 3339 time (`None` when it is not one).
fn seconds(at: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(at).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// Each subgroup's progress over time: the recorded rows, then `now`'s counts.
fn progress_charts(recorded: &[ProgressRecord], now: &[ProgressRecord]) -> Vec<(String, String)> {
    const SERIES: [(&str, &str); 4] = [
        ("succeeded", "ok"),
        ("failed", "failed"),
        ("in progress", "busy"),
        ("canceled", "canceled"),
    ];
    now.iter()
        .map(|current| {
            let rows: Vec<&ProgressRecord> = recorded
                .iter()
                .filter(|r| r.class_id == current.class_id)
                .chain(std::iter::once(current))
                .collect();
            let samples: Vec<super::chart::Sample> = rows
                .iter()
                .filter_map(|r| {
                    let counts = vec![r.succeeded, r.failed, r.in_progress, r.canceled];
                    Some((seconds(&r.at)?, r.total, counts))
                })
                .collect();
            let from = rows.first().map(|r| r.at.clone()).unwrap_or_default();
            let title = format!("subgroup {}: progress over time", current.class_id);
            let t = Timeline::new(title, &SERIES, &samples, from, current.at.clone());
            (current.class_id.clone(), timeline_svg(&t))
        })
        .collect()
}

fn compliance_bar(title: &str, c: &UpdateCompliance) -> String {
    svg(&Bar::new(
        format!("{title}: compliance"),
        c.total_device_count,
        &[
            ("on latest update", "ok", c.on_latest_update_device_count),
            ("in progress", "busy", c.updates_in_progress_device_count),
            ("new update available", "idle", c.new_updates_available_device_count),
        ],
    ))
}

#[derive(Template)]
#[template(path = "error.html", config = "src/dashboard/askama.toml")]
struct ErrorPage {
    chrome: Chrome,
    message: String,
}

/// The page of an error.
pub(super) fn error_page(message: &str) -> String {
    let chrome = Chrome { title: "Not available".into(), instance: String::new(), page: "error" };
    ErrorPage { chrome, message: message.to_owned() }.render().unwrap_or_else(|_| message.into())
}

struct GroupRow {
    id: String,
    href: String,
    devices: u64,
    on_latest: u64,
    bar: String,
    deployments: Vec<(String, String)>,
}

struct ClassRow {
    id: String,
    name: String,
    compat: String,
    best: String,
}

#[derive(Template)]
#[template(path = "fleet.html", config = "src/dashboard/askama.toml")]
struct FleetPage {
    chrome: Chrome,
    compliance: UpdateCompliance,
    bar: String,
    groups: Vec<GroupRow>,
    classes: Vec<ClassRow>,
    updates: Vec<String>,
}

/// `/ui/`: compliance, groups, device classes, updates.
pub(super) async fn fleet(
    src: &dyn DashboardSource,
    o: &Options,
) -> Result<String, DashboardError> {
    let compliance = src.compliance(None).await?;
    let mut groups = Vec::new();
    let all = src.groups().await?;
    let by_group = src.compliance_by_group(&all).await?;
    for g in all {
        let c = by_group.get(&g.group_id).cloned().unwrap_or_else(|| UpdateCompliance {
            total_device_count: 0,
            on_latest_update_device_count: 0,
            new_updates_available_device_count: 0,
            updates_in_progress_device_count: 0,
            extra: Default::default(),
        });
        groups.push(GroupRow {
            href: group_href(&g.group_id),
            on_latest: c.on_latest_update_device_count,
            devices: g.device_count.unwrap_or(c.total_device_count),
            bar: compliance_bar(&g.group_id, &c),
            deployments: g
                .deployments
                .iter()
                .flatten()
                .map(|d| (d.clone(), deployment_href(&g.group_id, d)))
                .collect(),
            id: g.group_id,
        });
    }
    let classes = src
        .classes()
        .await?
        .into_iter()
        .map(|c| ClassRow {
            name: c.friendly_name.unwrap_or_default(),
            compat: c
                .device_class_properties
                .compat_properties
                .iter()
                .map(|(k, v)| {
                    format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                })
                .collect::<Vec<_>>()
                .join(", "),
            best: c.best_compatible_update.map(|u| u.update_id.to_string()).unwrap_or_default(),
            id: c.device_class_id,
        })
        .collect();
    let updates = src.updates().await?.into_iter().map(|u| u.update_id.to_string()).collect();
    render(&FleetPage {
        chrome: chrome(o, "Fleet".into(), "fleet"),
        bar: compliance_bar("all devices", &compliance),
        compliance,
        groups,
        classes,
        updates,
    })
}

struct DeploymentRow {
    id: String,
    href: String,
    update: String,
    start: String,
    notes: String,
}

#[derive(Template)]
#[template(path = "group.html", config = "src/dashboard/askama.toml")]
struct GroupPage {
    chrome: Chrome,
    compliance: UpdateCompliance,
    bar: String,
    deployments: Vec<DeploymentRow>,
}

/// Notes on a deployment: canceled, retried, a rollback.
fn notes(d: &crate::service::model::Deployment) -> String {
    let mut n = Vec::new();
    if d.is_canceled == Some(true) {
        n.push("canceled");
    }
    if d.is_retried == Some(true) {
        n.push("retried");
    }
    if d.is_cloud_initiated_rollback == Some(true) {
        n.push("cloud-initiated rollback");
    }
    if d.rollback_policy.is_some() {
        n.push("has a rollback policy");
    }
    n.join(", ")
}

/// `/ui/groups/{group}`: its compliance and deployments.
pub(super) async fn group(
    src: &dyn DashboardSource,
    o: &Options,
    g: &str,
) -> Result<String, DashboardError> {
    if !src.groups().await?.iter().any(|x| x.group_id == g) {
        return Err(DashboardError::NotFound { what: "group", id: g.to_owned() });
    }
    let compliance = src.compliance(Some(g)).await?;
    let deployments = src
        .deployments(g)
        .await?
        .into_iter()
        .map(|d| DeploymentRow {
            href: deployment_href(g, d.deployment_id.as_str()),
            id: d.deployment_id.to_string(),
            update: d.update.update_id.to_string(),
            start: d.start_date_time.clone(),
            notes: notes(&d),
        })
        .collect();
    render(&GroupPage {
        chrome: chrome(o, format!("Group {g}"), "group"),
        bar: compliance_bar(g, &compliance),
        compliance,
        deployments,
    })
}

struct SubgroupRow {
    class: String,
    state: String,
    total: u64,
    succeeded: u64,
    failed: u64,
    in_progress: u64,
    canceled: u64,
    bar: String,
    cancel: String,
    retry: String,
}

struct RollbackView {
    to: String,
    count: u64,
    percent: u32,
    failed: u64,
    total: u64,
    share: String,
    distance: String,
    bar: String,
}

/// One decoded code, as the tables show it.
pub(super) struct CodeRow {
    pub(super) hex: String,
    pub(super) facility: String,
    pub(super) component: String,
    pub(super) name: String,
    pub(super) meaning: String,
}

impl From<Decoded> for CodeRow {
    fn from(d: Decoded) -> Self {
        let part = |p: &crate::service::result_code::Part| match &p.name {
            Some(n) => format!("{} ({n})", p.code),
            None => p.code.to_string(),
        };
        Self {
            facility: part(&d.facility),
            component: d.component.as_ref().map(part).unwrap_or_default(),
            name: d.name.unwrap_or_default(),
            meaning: d.meaning.unwrap_or_default(),
            hex: d.hex,
        }
    }
}

struct FailingRow {
    device: String,
    href: String,
    result: String,
    codes: Vec<CodeRow>,
}

#[derive(Template)]
#[template(path = "deployment.html", config = "src/dashboard/askama.toml")]
struct DeploymentPage {
    chrome: Chrome,
    group: String,
    group_href: String,
    update: String,
    start: String,
    state: String,
    is_rollback: bool,
    rolled_back: Option<(String, String)>,
    superseded: Option<(String, String, String)>,
    subgroups: Vec<SubgroupRow>,
    timelines: Vec<(String, String)>,
    timelines_note: &'static str,
    rollback: Option<RollbackView>,
    failing: Vec<FailingRow>,
    failing_note: String,
    filter: String,
    actions: bool,
    delete: String,
}

/// The codes of a result: `extendedResultCodes` as the agent wrote them (agents from 1.1),
/// else `extendedResultCode` (as the CLI's `device show` reads them).
fn codes(extended: i64, extra: &serde_json::Map<String, serde_json::Value>) -> Vec<u32> {
    extra
        .get("extendedResultCodes")
        .and_then(|v| parse_codes(v).ok())
        .unwrap_or_else(|| parse_codes(&serde_json::Value::from(extended)).unwrap_or_default())
}

/// `700 (ADUC_Result_Apply_Success)`.
fn result_text(code: i64) -> String {
    match result_name(code) {
        Some((name, _)) => format!("{code} ({name})"),
        None => code.to_string(),
    }
}

/// A failed result's decoded codes: the result's own, then each failed step's.
fn failed_codes(r: &InstallResult) -> Vec<CodeRow> {
    let mut out: Vec<CodeRow> = codes(r.extended_result_code, &r.extra)
        .into_iter()
        .map(decode)
        .map(CodeRow::from)
        .collect();
    for s in r.step_results.iter().flatten().filter(|s| s.result_code <= 0) {
        out.extend(
            codes(s.extended_result_code, &s.extra).into_iter().map(decode).map(CodeRow::from),
        );
    }
    // A step's code is usually the result's own: each code once.
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|c| seen.insert(c.hex.clone()));
    out
}

/// The rollback policy, and how near `failed` of `total` devices are to it.
fn rollback_view(
    p: &crate::service::model::RollbackPolicy,
    failed: u64,
    total: u64,
) -> RollbackView {
    let (count, percent) = (p.failure.devices_failed_count, p.failure.devices_failed_percentage);
    let share = if total == 0 { 0.0 } else { failed as f64 * 100.0 / total as f64 };
    let need_share = (u64::from(percent) * total).div_ceil(100);
    let need = count.max(need_share);
    let distance = if failed >= need {
        "the threshold is reached".to_owned()
    } else {
        format!("{} more failures reach it", need - failed)
    };
    let bar = Bar::new(
        "failures against the rollback threshold".into(),
        total,
        &[("failed", "failed", failed)],
    )
    .with_marker(
        if total == 0 { 0.0 } else { need as f64 / total as f64 },
        format!("rollback at {need} failed"),
    );
    RollbackView {
        to: p.update.update_id.to_string(),
        count,
        percent,
        failed,
        total,
        share: format!("{share:.1}"),
        distance,
        bar: svg(&bar),
    }
}

/// A deployment's subgroups as the table shows them, each with its bar.
fn subgroup_rows(status: &crate::service::model::DeploymentStatus, base: &str) -> Vec<SubgroupRow> {
    let mut subgroups = Vec::new();
    for s in &status.subgroup_status {
        let n = |v: Option<u64>| v.unwrap_or(0);
        let row = SubgroupRow {
            state: s.deployment_state.as_str().to_owned(),
            total: n(s.total_devices),
            succeeded: n(s.devices_completed_succeeded_count),
            failed: n(s.devices_completed_failed_count),
            in_progress: n(s.devices_in_progress_count),
            canceled: n(s.devices_canceled_count),
            bar: String::new(),
            cancel: format!("{base}/actions/cancel?class={}", seg(&s.device_class_id)),
            retry: format!("{base}/actions/retry?class={}", seg(&s.device_class_id)),
            class: s.device_class_id.clone(),
        };
        let bar = Bar::new(
            format!("subgroup {}: progress", row.class),
            row.total,
            &[
                ("succeeded", "ok", row.succeeded),
                ("failed", "failed", row.failed),
                ("in progress", "busy", row.in_progress),
                ("canceled", "canceled", row.canceled),
            ],
        );
        subgroups.push(SubgroupRow { bar: svg(&bar), ..row });
    }
    subgroups
}

/// `/ui/groups/{group}/deployments/{id}`: progress by subgroup, the rollback policy and how
/// near the failures are to it, and the failing devices (`filter`: by id or code).
pub(super) async fn deployment(
    src: &dyn DashboardSource,
    o: &Options,
    g: &str,
    d: &str,
    filter: &str,
) -> Result<String, DashboardError> {
    let dep = src
        .deployment(g, d)
        .await?
        .ok_or_else(|| DashboardError::NotFound { what: "deployment", id: d.to_owned() })?;
    let status = src.deployment_status(g, d).await?;
    let base = deployment_href(g, d);
    let subgroups = subgroup_rows(&status, &base);
    let recorded = src.progress(g, d).await?;
    let timelines_note = if recorded.is_empty() {
        "Nothing recorded yet: each line starts when the counts were first seen."
    } else {
        ""
    };
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let current: Vec<ProgressRecord> =
        status.subgroup_status.iter().map(|s| ProgressRecord::of(g, d, &now, s)).collect();
    let timelines = progress_charts(&recorded, &current);
    let failed: u64 = subgroups.iter().map(|s| s.failed).sum();
    let total: u64 = subgroups.iter().map(|s| s.total).sum();
    let rollback = dep.rollback_policy.as_ref().map(|p| rollback_view(p, failed, total));
    let rollback_id = dep.deployment_id.rollback();
    let rolled_back = src
        .deployment(g, rollback_id.as_str())
        .await?
        .filter(|r| r.is_cloud_initiated_rollback == Some(true))
        .map(|r| (r.deployment_id.to_string(), deployment_href(g, r.deployment_id.as_str())));
    // An inactive deployment was superseded: by the group's newest other one (a release's
    // rollback stage, or the next release).
    let superseded = if status.deployment_state.as_str() == "Inactive" && rolled_back.is_none() {
        src.deployments(g).await?.into_iter().find(|x| x.deployment_id != dep.deployment_id).map(
            |x| {
                let href = deployment_href(g, x.deployment_id.as_str());
                (x.deployment_id.to_string(), href, x.update.update_id.to_string())
            },
        )
    } else {
        None
    };
    let mut failing = Vec::new();
    for dev in src.failed_devices(g, d, FAILING_SHOWN).await? {
        let Some(r) = dev.last_install_result.as_ref() else { continue };
        let row = FailingRow {
            href: device_href(&dev.device_id),
            result: result_text(r.result_code),
            codes: failed_codes(r),
            device: dev.device_id.clone(),
        };
        let wanted = filter.is_empty()
            || row.device.contains(filter)
            || row.codes.iter().any(|c| {
                c.hex.eq_ignore_ascii_case(filter.trim_start_matches("0x"))
                    || c.name.contains(filter)
                    || c.meaning.contains(filter)
            });
        if wanted {
            failing.push(row);
        }
    }
    let failing_note = if failed as usize > FAILING_SHOWN {
        format!("{failed} devices failed; the first {FAILING_SHOWN} are listed.")
    } else {
        format!("{failed} {} failed.", if failed == 1 { "device" } else { "devices" })
    };
    render(&DeploymentPage {
        chrome: chrome(o, format!("Deployment {d}"), "deployment"),
        group: g.to_owned(),
        group_href: group_href(g),
        update: dep.update.update_id.to_string(),
        start: dep.start_date_time.clone(),
        state: status.deployment_state.as_str().to_owned(),
        is_rollback: dep.is_cloud_initiated_rollback == Some(true),
        rolled_back,
        superseded,
        subgroups,
        timelines,
        timelines_note,
        rollback,
        failing,
        failing_note,
        filter: filter.to_owned(),
        actions: o.allow_actions,
        delete: format!("{base}/actions/delete"),
    })
}

struct StepRow {
    step: String,
    result: String,
    code: CodeRow,
}

struct ResultView {
    code: String,
    details: String,
    rows: Vec<StepRow>,
}

#[derive(Template)]
#[template(path = "device.html", config = "src/dashboard/askama.toml")]
struct DevicePage {
    chrome: Chrome,
    group: Option<(String, String)>,
    class: String,
    installed: String,
    attempted: String,
    on_latest: &'static str,
    deployment: Option<(String, String)>,
    deployment_state: String,
    agent_state: String,
    workflow: String,
    result: Option<ResultView>,
    history: Vec<HistoryRow>,
}

/// One of a device's past results, as its page lists them.
struct HistoryRow {
    at: String,
    deployment: Option<(String, String)>,
    state: String,
    installed: String,
    result: String,
    code: Option<CodeRow>,
    details: String,
}

/// Results a device's page lists, at most.
const HISTORY_SHOWN: usize = 32;

fn history_row(r: &ResultRecord, group: Option<&str>) -> HistoryRow {
    let installed = r.installed_update.as_deref().map_or_else(String::new, |u| {
        serde_json::from_str::<crate::manifest::UpdateId>(u)
            .map_or_else(|_| u.to_owned(), |id| id.to_string())
    });
    HistoryRow {
        at: r.at.clone(),
        deployment: r.workflow_id.as_ref().map(|w| {
            let href = group.map_or_else(String::new, |g| deployment_href(g, w));
            (w.clone(), href)
        }),
        state: r.state.map_or_else(String::new, agent_state),
        installed,
        result: r.result_code.map_or_else(String::new, result_text),
        code: r
            .extended_result_code
            .filter(|c| *c != 0)
            .and_then(|c| parse_codes(&serde_json::Value::from(c)).ok())
            .and_then(|c| c.into_iter().next())
            .map(|c| decode(c).into()),
        details: r.result_details.clone().unwrap_or_default(),
    }
}

/// The agent's state in words (`agent.state`: adu.md §5.1).
fn agent_state(s: i64) -> String {
    let name = match s {
        0 => "Idle",
        1 => "DownloadStarted",
        2 => "DownloadSucceeded",
        3 => "InstallStarted",
        4 => "InstallSucceeded",
        5 => "ApplyStarted",
        6 => "DeploymentInProgress",
        255 => "Failed",
        _ => return s.to_string(),
    };
    format!("{s} ({name})")
}

fn result_view(r: &InstallResult) -> ResultView {
    let mut rows: Vec<StepRow> = codes(r.extended_result_code, &r.extra)
        .into_iter()
        .map(|c| StepRow {
            step: "update".into(),
            result: result_text(r.result_code),
            code: decode(c).into(),
        })
        .collect();
    for (i, s) in r.step_results.iter().flatten().enumerate() {
        let name =
            s.extra.get("step").and_then(|v| v.as_str()).map_or(i.to_string(), str::to_owned);
        for c in codes(s.extended_result_code, &s.extra) {
            rows.push(StepRow {
                step: name.clone(),
                result: result_text(s.result_code),
                code: decode(c).into(),
            });
        }
    }
    ResultView {
        code: result_text(r.result_code),
        details: r.result_details.clone().unwrap_or_default(),
        rows,
    }
}

/// `/ui/devices/{device}`: what Device Update knows of it and what its twin says.
pub(super) async fn device(
    src: &dyn DashboardSource,
    o: &Options,
    id: &str,
) -> Result<String, DashboardError> {
    let twin = match src.twin(id).await {
        Ok(t) => t,
        Err(DashboardError::NoHub) => None,
        Err(e) => return Err(e),
    };
    let Some(dev) = src.device(id).await? else {
        // Not a Device Update device: an IoT Edge device has its modules' page.
        return match twin.filter(|t| t.capabilities.is_some_and(|c| c.iot_edge)) {
            Some(t) => edge_device(src, o, id, &t).await,
            None => Err(DashboardError::NotFound { what: "device", id: id.to_owned() }),
        };
    };
    let agent = twin
        .as_ref()
        .and_then(|t| crate::service::agent::ReportedComponent::of(&t.properties.reported))
        .and_then(|c| c.agent);
    let workflow = agent
        .as_ref()
        .and_then(|a| a.workflow.as_ref())
        .map(|w| match w.action {
            Some(a) => format!("{} (action {a})", w.id),
            None => w.id.clone(),
        })
        .unwrap_or_else(|| "none".into());
    let history = src
        .results(id, HISTORY_SHOWN)
        .await?
        .iter()
        .map(|r| history_row(r, dev.group_id.as_deref()))
        .collect();
    let upd = |u: &Option<crate::service::UpdateInfo>| {
        u.as_ref().map_or_else(|| "none".to_owned(), |u| u.update_id.to_string())
    };
    render(&DevicePage {
        chrome: chrome(o, format!("Device {id}"), "device"),
        group: dev.group_id.as_ref().map(|g| (g.clone(), group_href(g))),
        class: dev.device_class_id.clone(),
        installed: upd(&dev.installed_update),
        attempted: upd(&dev.last_attempted_update),
        on_latest: if dev.on_latest_update { "yes" } else { "no" },
        deployment: match (&dev.group_id, &dev.last_deployment_id) {
            (Some(g), Some(d)) => Some((d.clone(), deployment_href(g, d))),
            _ => None,
        },
        deployment_state: dev.deployment_status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        agent_state: agent
            .as_ref()
            .and_then(|a| a.state)
            .map_or_else(|| "unknown".into(), agent_state),
        workflow,
        result: dev.last_install_result.as_ref().map(result_view),
        history,
    })
}

struct ModuleRow {
    name: String,
    image: String,
    status: String,
    exit_code: String,
}

#[derive(Template)]
#[template(path = "edge_device.html", config = "src/dashboard/askama.toml")]
struct EdgeDevicePage {
    chrome: Chrome,
    deployments: Vec<(String, String, String)>,
    modules: Vec<ModuleRow>,
    reported: bool,
}

/// An IoT Edge device: the Edge deployments that target and apply to it (the `configurations`
/// of its `$edgeAgent` and device twins), and each module's runtime status as its `$edgeAgent`
/// reports it.
async fn edge_device(
    src: &dyn DashboardSource,
    o: &Options,
    id: &str,
    twin: &crate::iothub::Twin,
) -> Result<String, DashboardError> {
    let agent = src.module_twin(id, "$edgeAgent").await?;
    // IoT Hub records an Edge deployment's status on the `$edgeAgent` module twin; other
    // configurations on the device twin.
    let deployments = agent
        .iter()
        .chain(std::iter::once(twin))
        .flat_map(|t| t.configurations.iter().flatten())
        .map(|(c, s)| (c.clone(), format!("/ui/edge/deployments/{}", seg(c)), s.status.clone()))
        .collect();
    let reported = agent.as_ref().map(|t| &t.properties.reported);
    let mut modules = Vec::new();
    for section in ["systemModules", "modules"] {
        let list = reported.and_then(|r| r.get(section)).and_then(|m| m.as_object());
        for (name, m) in list.into_iter().flatten() {
            let text = |v: Option<&serde_json::Value>| match v {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            modules.push(ModuleRow {
                name: name.clone(),
                image: text(m.pointer("/settings/image")),
                status: text(m.get("runtimeStatus")),
                exit_code: text(m.get("exitCode")),
            });
        }
    }
    render(&EdgeDevicePage {
        chrome: chrome(o, format!("IoT Edge device {id}"), "edge-device"),
        deployments,
        reported: reported
            .is_some_and(|r| r.contains_key("modules") || r.contains_key("systemModules")),
        modules,
    })
}

struct EdgeRow {
    id: String,
    href: String,
    priority: i64,
    condition: String,
    targeted: i64,
    applied: i64,
    success: i64,
    failed: i64,
}

fn edge_row(c: &crate::iothub::config::Configuration) -> EdgeRow {
    let m = |k: &str| c.system_metrics.results.get(k).copied().unwrap_or(0);
    EdgeRow {
        id: c.id.clone(),
        href: format!("/ui/edge/deployments/{}", seg(&c.id)),
        priority: c.priority,
        condition: c.target_condition.clone(),
        targeted: m("targetedCount"),
        applied: m("appliedCount"),
        success: m("reportedSuccessfulCount"),
        failed: m("reportedFailedCount"),
    }
}

/// A layered deployment: its `$edgeAgent` content names paths, not the whole desired
/// properties (as `edge::assign` tells them apart).
fn layered(c: &crate::iothub::config::Configuration) -> bool {
    c.modules_content()
        .and_then(|m| m.get("$edgeAgent"))
        .and_then(|a| a.as_object())
        .is_some_and(|a| !a.contains_key("properties.desired"))
}

#[derive(Template)]
#[template(path = "edge_list.html", config = "src/dashboard/askama.toml")]
struct EdgeListPage {
    chrome: Chrome,
    sections: Vec<(&'static str, &'static str, Vec<EdgeRow>)>,
}

/// `/ui/edge/deployments`: bases by priority, then the layers that apply above them.
pub(super) async fn edge_list(
    src: &dyn DashboardSource,
    o: &Options,
) -> Result<String, DashboardError> {
    let mut all = src.edge_deployments().await?;
    all.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    let (layers, bases): (Vec<_>, Vec<_>) = all.iter().partition(|c| layered(c));
    render(&EdgeListPage {
        chrome: chrome(o, "IoT Edge deployments".into(), "edge"),
        sections: vec![
            ("Base deployments, by priority", "bases", bases.into_iter().map(edge_row).collect()),
            (
                "Layered deployments, applied above their base",
                "layers",
                layers.into_iter().map(edge_row).collect(),
            ),
        ],
    })
}

#[derive(Template)]
#[template(path = "edge_one.html", config = "src/dashboard/askama.toml")]
struct EdgeOnePage {
    chrome: Chrome,
    kind: &'static str,
    row: EdgeRow,
    created: String,
    bar: String,
    modules: Vec<String>,
    metrics: Vec<(String, i64)>,
}

/// `/ui/edge/deployments/{id}`: counts, modules, custom metrics.
pub(super) async fn edge_one(
    src: &dyn DashboardSource,
    o: &Options,
    id: &str,
) -> Result<String, DashboardError> {
    let all = src.edge_deployments().await?;
    let c = all
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| DashboardError::NotFound { what: "Edge deployment", id: id.to_owned() })?;
    let row = edge_row(c);
    let pending = (row.targeted - row.success - row.failed).max(0) as u64;
    let bar = svg(&Bar::new(
        format!("Edge deployment {id}: devices"),
        row.targeted.max(0) as u64,
        &[
            ("reported success", "ok", row.success.max(0) as u64),
            ("reported failed", "failed", row.failed.max(0) as u64),
            ("pending", "busy", pending),
        ],
    ));
    let mut modules = Vec::new();
    if let Some(agent) =
        c.modules_content().and_then(|m| m.get("$edgeAgent")).and_then(|a| a.as_object())
    {
        for (path, v) in agent {
            if path == "properties.desired" {
                let names = v.get("modules").and_then(|m| m.as_object());
                modules.extend(names.into_iter().flat_map(|m| m.keys().cloned()));
            } else if let Some(name) = path.strip_prefix("properties.desired.modules.") {
                modules.push(name.to_owned());
            }
        }
    }
    render(&EdgeOnePage {
        chrome: chrome(o, format!("Edge deployment {id}"), "edge-deployment"),
        kind: if layered(c) { "layered" } else { "base" },
        created: c.created_time_utc.clone().unwrap_or_default(),
        bar,
        modules,
        metrics: c.metrics.results.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        row,
    })
}

#[derive(Template)]
#[template(path = "releases.html", config = "src/dashboard/askama.toml")]
struct ReleasesPage {
    chrome: Chrome,
    files: Vec<(String, String)>,
    /// The paths given, when none holds a release yet.
    given: Vec<String>,
}

/// The release files `o` names: files as given; for a folder, its own state file, or else
/// its subfolders' (`OUTPUT/VERSION/release-state.json`), in name order. Folders are read at
/// each request, so a release that starts later shows up.
fn release_files(o: &Options) -> Vec<std::path::PathBuf> {
    use crate::release::STATE_FILE;
    let mut out = Vec::new();
    for p in &o.releases {
        if !p.exists() {
            // Not there yet (a release that has not run): listed once it is.
            continue;
        }
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        if p.join(STATE_FILE).is_file() {
            out.push(p.join(STATE_FILE));
            continue;
        }
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(STATE_FILE))
            .filter(|f| f.is_file())
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

/// What a release page shows, from a report or a state file.
struct Shown {
    update_id: String,
    result: String,
    imported: bool,
    stages: Vec<crate::release::StageOutput>,
    artifacts: Vec<crate::release::Output>,
    deltas: Vec<crate::release::DeltaOutput>,
}

/// Reads a report (`otaforge release --format json`) or a state file (`release-state.json`,
/// written as the release runs).
fn read_release(path: &std::path::Path) -> Result<Shown, DashboardError> {
    let text = fs_err::read_to_string(path).map_err(|e| DashboardError::Release(e.to_string()))?;
    let bad = |e: serde_json::Error| DashboardError::Release(format!("{}: {e}", path.display()));
    let value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
    if value.get("result").is_some() {
        let r: crate::release::report::Report = serde_json::from_value(value).map_err(bad)?;
        return Ok(Shown {
            result: serde_json::to_value(r.result)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            update_id: r.update_id,
            imported: r.imported,
            stages: r.stages,
            artifacts: r.artifacts,
            deltas: r.deltas,
        });
    }
    let st: crate::release::State = serde_json::from_value(value).map_err(bad)?;
    let result = match st.stages.iter().find(|s| s.result != "passed") {
        Some(s) => format!("stage {} {} (state file)", s.name, s.result),
        None if st.stages.is_empty() => "built, no stage run yet (state file)".to_owned(),
        None => format!("{} stages passed so far (state file)", st.stages.len()),
    };
    Ok(Shown {
        update_id: st.update_id,
        result,
        imported: st.imported,
        stages: st.stages,
        artifacts: st.artifacts,
        deltas: st.deltas,
    })
}

/// `/ui/releases/`: the release reports and state files given.
pub(super) fn releases(o: &Options) -> Result<String, DashboardError> {
    let files = release_files(o)
        .iter()
        .enumerate()
        .map(|(i, p)| (p.display().to_string(), format!("/ui/releases/{i}")))
        .collect();
    let given = o.releases.iter().map(|p| p.display().to_string()).collect();
    render(&ReleasesPage { chrome: chrome(o, "Releases".into(), "releases"), files, given })
}

struct StageRow {
    name: String,
    group: String,
    group_href: String,
    deployment: String,
    href: String,
    result: String,
    devices: u64,
    succeeded: u64,
    failed: u64,
    reason: String,
    action: String,
    bar: String,
}

#[derive(Template)]
#[template(path = "release.html", config = "src/dashboard/askama.toml")]
struct ReleasePage {
    chrome: Chrome,
    update: String,
    result: String,
    imported: bool,
    stages: Vec<StageRow>,
    files: Vec<(String, u64, String)>,
}

/// `/ui/releases/{n}`: a release's stages with their gates, and what it built.
pub(super) fn release(o: &Options, n: usize) -> Result<String, DashboardError> {
    let files = release_files(o);
    let path = files
        .get(n)
        .ok_or_else(|| DashboardError::NotFound { what: "release", id: n.to_string() })?;
    let report = read_release(path)?;
    let stages = report
        .stages
        .iter()
        .map(|s| StageRow {
            name: s.name.clone(),
            group_href: group_href(&s.group),
            href: deployment_href(&s.group, &s.deployment_id),
            group: s.group.clone(),
            deployment: s.deployment_id.clone(),
            result: s.result.clone(),
            devices: s.devices,
            succeeded: s.succeeded,
            failed: s.failed,
            reason: s.reason.clone().unwrap_or_else(|| "within the gate".into()),
            action: s.action.clone().unwrap_or_default(),
            bar: svg(&Bar::new(
                format!("stage {}: devices", s.name),
                s.devices,
                &[("succeeded", "ok", s.succeeded), ("failed", "failed", s.failed)],
            )),
        })
        .collect();
    let mut files: Vec<(String, u64, String)> =
        report.artifacts.iter().map(|a| (a.name.clone(), a.size_in_bytes, String::new())).collect();
    files.extend(
        report
            .deltas
            .iter()
            .map(|d| (d.file.name.clone(), d.file.size_in_bytes, d.base_version.clone())),
    );
    render(&ReleasePage {
        chrome: chrome(o, format!("Release {}", report.update_id), "release"),
        update: report.update_id.clone(),
        result: report.result.clone(),
        imported: report.imported,
        stages,
        files,
    })
}

struct AuditRow {
    at: String,
    actor: String,
    action: String,
    group: String,
    deployment: String,
    href: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html", config = "src/dashboard/askama.toml")]
struct AuditPage {
    chrome: Chrome,
    entries: Vec<AuditRow>,
}

/// Audit entries shown, at most.
const AUDIT_SHOWN: usize = 200;

/// `/ui/audit`: who created, canceled, retried or deleted which deployment, newest first.
pub(super) async fn audit(
    src: &dyn DashboardSource,
    o: &Options,
) -> Result<String, DashboardError> {
    let entries = src
        .audit(AUDIT_SHOWN)
        .await?
        .into_iter()
        .map(|e| AuditRow {
            href: deployment_href(&e.group, &e.deployment),
            detail: e.class.or(e.update).unwrap_or_default(),
            at: e.at,
            actor: e.actor,
            action: e.action,
            group: e.group,
            deployment: e.deployment,
        })
        .collect();
    render(&AuditPage { chrome: chrome(o, "Audit trail".into(), "audit"), entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_in_links() {
        assert_eq!(seg("a b/<c>\"'"), "a%20b%2F%3Cc%3E%22%27");
        assert_eq!(seg("dev-1_x.y~"), "dev-1_x.y~");
    }

    #[test]
    fn error_pages_escape_the_message() {
        let page = error_page("device `<script>alert(1)</script>` does not exist");
        assert!(page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>alert"));
    }
}

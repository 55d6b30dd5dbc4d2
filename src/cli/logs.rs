//! `otaforge logs collect|show|list`: Device Update log collections — ask agents for their
//! logs (each uploads them to the instance's storage through its twin's
//! `diagnosticInformation` component) and read how each did.

use otaforge::service::diagnostics::{
    AgentId, DiagnosticsResult, LogCollection, LogCollectionDetailedStatus,
};
use otaforge::service::model::OperationStatus;

use super::args::AduArgs;
use super::update::service_failure;
use super::{Failure, Outcome, Output};

/// `otaforge logs ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum LogsCommand {
    /// Ask up to 100 agents for their logs; with --wait, follow it until every agent answered
    /// (exit 1 when one failed).
    Collect(CollectArgs),
    /// A log collection: each agent's status, result and where its logs are.
    Show(ShowArgs),
    /// Every log collection, newest first.
    List(ListArgs),
}

/// `otaforge logs collect`.
#[derive(Debug, clap::Args)]
pub(crate) struct CollectArgs {
    /// Agents: `DEVICE`, or `DEVICE/MODULE` for an agent that runs as a module.
    #[arg(required = true)]
    agents: Vec<String>,
    /// The collection's id (default `logs-UNIXTIME`); a new collection needs a new id.
    #[arg(long)]
    id: Option<String>,
    /// Why the logs are wanted (at most 512 characters).
    #[arg(long)]
    description: Option<String>,
    /// Follow it until every agent answered.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (exit 1).
    #[arg(long, default_value = "10m", value_parser = super::wait_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge logs show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// The log collection id.
    id: String,
    #[command(flatten)]
    adu: AduArgs,
}

/// `otaforge logs list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    adu: AduArgs,
}

fn agent(s: &str) -> AgentId {
    match s.split_once('/') {
        Some((d, m)) => AgentId { device_id: d.to_owned(), module_id: Some(m.to_owned()) },
        None => AgentId { device_id: s.to_owned(), module_id: None },
    }
}

pub(crate) fn run(
    cmd: LogsCommand,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    match cmd {
        LogsCommand::Collect(a) => collect(a, rt, out),
        LogsCommand::Show(a) => {
            let client = a.adu.client(out)?;
            match rt.block_on(client.log_collection_status(&a.id)) {
                Ok(s) => {
                    print(&s, out)?;
                    Ok(Outcome::Ok)
                }
                Err(e) => service_failure(out, "read the log collection", e),
            }
        }
        LogsCommand::List(a) => {
            let client = a.adu.client(out)?;
            let list = match rt.block_on(client.list_log_collections()) {
                Ok(l) => l,
                Err(e) => return service_failure(out, "list log collections", e),
            };
            if out.json() {
                out.json_value(&list)?;
            } else {
                for c in &list {
                    out.line(format!(
                        "{}  {}  {} agents  {}",
                        c.operation_id.as_deref().unwrap_or("-"),
                        c.status.map_or("-", OperationStatus::as_str),
                        c.device_list.len(),
                        c.description.as_deref().unwrap_or("")
                    ))?;
                }
            }
            Ok(Outcome::Ok)
        }
    }
}

/// The agent's result code with its name (`-1 (NoLogsFound)`).
fn result(code: Option<&str>) -> String {
    let Some(code) = code else { return "-".into() };
    match code.parse::<i64>().ok().and_then(DiagnosticsResult::of) {
        Some(r) => format!("{code} ({})", r.name()),
        None => code.to_owned(),
    }
}

fn print(s: &LogCollectionDetailedStatus, out: &Output) -> anyhow::Result<()> {
    if out.json() {
        return out.json_value(s);
    }
    out.line(format!(
        "{}  {}  {}",
        s.operation_id.as_deref().unwrap_or("-"),
        s.status.map_or("-", OperationStatus::as_str),
        s.description.as_deref().unwrap_or("")
    ))?;
    for d in &s.device_status {
        let who = match &d.module_id {
            Some(m) => format!("{}/{m}", d.device_id),
            None => d.device_id.clone(),
        };
        out.line(format!(
            "  {who}  {}  {}  {}",
            d.status.as_str(),
            result(d.result_code.as_deref()),
            d.log_location.as_deref().unwrap_or("")
        ))?;
    }
    Ok(())
}

fn collect(a: CollectArgs, rt: &tokio::runtime::Runtime, out: &Output) -> anyhow::Result<Outcome> {
    let client = a.adu.client(out)?;
    let id = a.id.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("logs-{secs}")
    });
    let request = LogCollection {
        operation_id: Some(id.clone()),
        device_list: a.agents.iter().map(|s| agent(s)).collect(),
        description: a.description.clone(),
        created_date_time: None,
        last_action_date_time: None,
        status: None,
        extra: Default::default(),
    };
    let created = match rt.block_on(client.start_log_collection(&id, &request)) {
        Ok(c) => c,
        Err(e) => return service_failure(out, "start the log collection", e),
    };
    if !a.wait {
        if out.json() {
            out.json_value(&created)?;
        } else {
            out.line(format!("log collection {id} asked {} agents", created.device_list.len()))?;
        }
        return Ok(Outcome::Ok);
    }
    let deadline = std::time::Instant::now() + a.timeout;
    loop {
        let s = match rt.block_on(client.log_collection_status(&id)) {
            Ok(s) => s,
            Err(e) => return service_failure(out, "follow the log collection", e),
        };
        if let Some(done) = s.status.filter(|st| st.is_terminal()) {
            print(&s, out)?;
            return Ok(if done == OperationStatus::Succeeded {
                Outcome::Ok
            } else {
                Outcome::CheckFailed
            });
        }
        if std::time::Instant::now() >= deadline {
            if !out.json() {
                print(&s, out)?;
            }
            let why =
                format!("not every agent answered log collection {id} within {:?}", a.timeout);
            out.failure(&Failure::new("timeout", why).details(&s))?;
            return Ok(Outcome::CheckFailed);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

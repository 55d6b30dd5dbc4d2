//! `otaforge dashboard`: the rollout dashboard of `otaforge serve` (`/ui/`) for any Device
//! Update instance and IoT Hub, Azure's or serve's, read through the library's clients in this
//! process (`otaforge::dashboard::RemoteSource`): the browser gets pages, never a credential.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::args::{AduArgs, HubArgs};
use super::{Outcome, Output};

/// Arguments of `otaforge dashboard`.
#[derive(Debug, clap::Args)]
pub(crate) struct DashboardArgs {
    #[command(flatten)]
    adu: AduArgs,
    #[command(flatten)]
    hub: HubArgs,
    /// Where the pages are served (loopback only: the dashboard has no login).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Offer cancel, retry and delete on deployment pages (each a JSON POST from the page's
    /// own origin); read-only without it.
    #[arg(long)]
    allow_actions: bool,
    /// How often an open page looks for changes (at least 2 s).
    #[arg(long, default_value = "5s", value_parser = super::wait_duration)]
    poll: Duration,
    /// A release report (`otaforge release --format json`), state file, or folder of releases
    /// (`OUTPUT` of `otaforge.toml`: each VERSION/release-state.json) to show under
    /// /ui/releases/. Repeatable.
    #[arg(long = "release", value_name = "PATH")]
    releases: Vec<PathBuf>,
}

pub(crate) fn run(
    a: DashboardArgs,
    rt: &tokio::runtime::Runtime,
    out: &Output,
) -> anyhow::Result<Outcome> {
    if !a.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: the dashboard holds the service's credentials and has no login; \
             listen on loopback (127.0.0.1 or [::1]) and reach it through an SSH tunnel",
            a.listen
        );
    }
    let adu = a.adu.client(out)?;
    let target = a.adu.target(out)?;
    let hub = match a.hub.client(out) {
        Ok(c) => Some(c),
        Err(e) if !a.hub.given() => {
            out.notice(format!("no IoT Hub ({e:#}): device twins and IoT Edge pages are off"));
            None
        }
        Err(e) => return Err(e),
    };
    let source = Arc::new(otaforge::dashboard::RemoteSource::new(adu, hub, a.poll));
    let options = otaforge::dashboard::Options {
        allow_actions: a.allow_actions,
        title: target.instance.clone(),
        releases: a.releases.clone(),
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}/ui/");
        if out.json() {
            let info = serde_json::json!({
                "dashboard": url,
                "endpoint": target.endpoint,
                "instance": target.instance,
                "actions": a.allow_actions,
            });
            out.line(serde_json::to_string(&info)?)?;
        } else {
            out.line(format!(
                "otaforge dashboard: {url} ({} instance {}{})",
                target.endpoint,
                target.instance,
                if a.allow_actions { ", actions on" } else { ", read-only" }
            ))?;
        }
        otaforge::dashboard::serve(listener, source, options, otaforge::server::browser_check)
            .await?;
        Ok(Outcome::Ok)
    })
}
